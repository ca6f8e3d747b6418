//! The connection as its calls see it ([`Caller`]): the shared state, the session, where replies
//! go, when to stop waiting, the call tasks, and the job ids the connection is following. The
//! connection builds one after the hello; requests and call tasks only read it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::outbox::Outbox;
use crate::session::Session;

/// Everything a request or a call task needs from its connection.
#[derive(Debug)]
pub(crate) struct Caller {
    /// The shared state.
    pub(crate) app: Arc<App>,
    /// The connection's session (shared with the session's other connections).
    pub(crate) session: Arc<Session>,
    /// The tenant the hello named, if any (fair share: see `EXAI_FAIRNESS_KEY`).
    pub(crate) tenant: Option<String>,
    /// Where replies go.
    pub(crate) out: Outbox,
    /// Fires when the connection ends (or the daemon shuts down); call tasks stop waiting then.
    pub(crate) cancel: CancellationToken,
    /// The call tasks of this connection.
    pub(crate) tasks: TaskTracker,
    /// Job ids this connection is waiting on, so a repeated `call_tool` on the same connection
    /// re-acks instead of delivering the result twice. Held for a few instructions only.
    pub(crate) followed: Mutex<HashSet<String>>,
}

impl Caller {
    /// The caller of a connection of `session` that replies through `out`.
    pub(crate) fn new(app: Arc<App>, session: Arc<Session>, out: Outbox) -> Self {
        Self {
            cancel: app.shutdown.child_token(),
            app,
            session,
            tenant: None,
            out,
            tasks: TaskTracker::new(),
            followed: Mutex::new(HashSet::new()),
        }
    }

    /// The same caller, whose calls belong to `tenant`.
    pub(crate) fn with_tenant(mut self, tenant: Option<String>) -> Self {
        self.tenant = tenant;
        self
    }

    /// The fairness key of this caller's calls under `EXAI_FAIRNESS_KEY` (`None`: FIFO).
    pub(crate) fn fairness_key(&self) -> Option<&str> {
        self.app
            .config
            .ws
            .fairness
            .key
            .key_of(&self.session.id, self.tenant.as_deref())
    }

    /// Starts following `job_id` unless this connection already does; returns whether it did.
    pub(crate) fn start_following(&self, job_id: &str) -> bool {
        self.followed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job_id.to_owned())
    }

    /// Stops following `job_id`.
    pub(crate) fn stop_following(&self, job_id: &str) {
        self.followed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job_id);
    }

    /// Whether the connection waits on any call (an idle connection that does is kept open).
    pub(crate) fn following_any(&self) -> bool {
        !self
            .followed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

//! [`LeaseGuard`]: one granted lease, kept alive by a renewal task and given back on release or drop.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scripts::{self, Renewal};
use super::{Core, SemaphoreError};

/// The shortest pause between two renewal attempts after an error.
const RETRY_MIN: Duration = Duration::from_millis(10);

/// The longest pause between two renewal attempts after an error.
const RETRY_MAX: Duration = Duration::from_millis(500);

/// What a guard and its renewal task share.
#[derive(Debug)]
struct SemaphoreLease {
    /// The Redis connection, key layout and lease TTL of the [`Semaphores`](super::Semaphores)
    /// that granted the lease.
    core: Arc<Core>,
    /// The lease token: the member of every named sorted set.
    token: String,
    /// The fencing token of the grant: strictly greater than that of every earlier grant.
    fence: u64,
    /// The semaphore names this lease holds a permit of.
    names: Vec<String>,
    /// Cancelled once the lease is known to be lost (expired, removed, or unrenewable).
    lost: CancellationToken,
}

impl SemaphoreLease {
    /// One renewal round trip; cancels [`SemaphoreLease::lost`] when the lease turns out to be gone.
    async fn renew(&self) -> Result<Renewal, SemaphoreError> {
        let renewal = scripts::renew(
            &self.core.conn,
            &self.core.keys,
            &self.names,
            &self.token,
            self.core.lease,
        )
        .await?;
        if renewal == Renewal::Lost {
            self.mark_lost("the lease expired or was removed before it was renewed");
        }
        Ok(renewal)
    }

    fn mark_lost(&self, reason: &'static str) {
        if !self.lost.is_cancelled() {
            tracing::warn!(token = %self.token, fence = self.fence, names = ?self.names, reason, "semaphore lease lost");
            self.lost.cancel();
        }
    }
}

/// A granted lease on one or more semaphores.
///
/// While the guard lives, a background task renews the lease every third of the lease TTL. If a
/// renewal finds the lease gone, or Redis stays unreachable until the lease would have expired,
/// the guard's [`lost`](Self::lost) token is cancelled: the holder must then stop its work and
/// must not write its result, since another holder may already own the permit.
///
/// [`release`](Self::release) gives the permits back and wakes waiters fleet-wide. Dropping the
/// guard without releasing does the same from a spawned task, on a best-effort basis: should that
/// fail (no runtime, Redis down), the lease TTL bounds how long the permit stays taken.
#[derive(Debug)]
pub struct LeaseGuard {
    lease: Arc<SemaphoreLease>,
    /// The renewal task; aborted on release, on drop and by [`stop_renewal`](Self::stop_renewal).
    renewer: Option<JoinHandle<()>>,
    /// Set once the lease was explicitly released, so that drop does not release it again.
    released: bool,
}

impl LeaseGuard {
    /// Wraps a fresh grant and starts its renewal task.
    ///
    /// `requested_at` is the local instant just before the acquire call was sent: the lease runs
    /// for at least one TTL from then, which makes it a safe bound on its life without a renewal.
    pub(super) fn start(
        core: Arc<Core>,
        token: String,
        fence: u64,
        names: Vec<String>,
        requested_at: Instant,
    ) -> Self {
        let lease = Arc::new(SemaphoreLease {
            core,
            token,
            fence,
            names,
            lost: CancellationToken::new(),
        });
        let renewer = tokio::spawn(renew_loop(Arc::clone(&lease), requested_at));
        Self {
            lease,
            renewer: Some(renewer),
            released: false,
        }
    }

    /// The lease token (the member of each named sorted set, and the key of its holder info).
    pub fn token(&self) -> &str {
        &self.lease.token
    }

    /// The fencing token of this grant. Every grant takes a strictly greater value than all the
    /// grants before it, so a store that remembers the highest fence it has seen can refuse a
    /// write from a holder whose lease was lost and granted again to someone else.
    pub fn fence(&self) -> u64 {
        self.lease.fence
    }

    /// The semaphore names this lease holds a permit of.
    pub fn names(&self) -> &[String] {
        &self.lease.names
    }

    /// A token cancelled when the lease is lost. Select on `guard.lost().cancelled()` next to
    /// the work the lease protects, and cancel that work when it fires.
    pub fn lost(&self) -> &CancellationToken {
        &self.lease.lost
    }

    /// Whether the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.lease.lost.is_cancelled()
    }

    /// Renews the lease once, now. A [`Renewal::Lost`] answer also cancels [`lost`](Self::lost).
    ///
    /// The background task does this on its own; this is for tests and for callers that stopped
    /// it with [`stop_renewal`](Self::stop_renewal).
    pub async fn renew_once(&self) -> Result<Renewal, SemaphoreError> {
        self.lease.renew().await
    }

    /// Stops the background renewal: the lease now expires one TTL after its last renewal
    /// unless [`renew_once`](Self::renew_once) is called. Meant for tests of lease expiry.
    pub fn stop_renewal(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }

    /// Gives the permits back and wakes waiters. Returns whether the lease was still there to be
    /// removed (`false` when it had already expired and been purged, or been removed as lost).
    pub async fn release(mut self) -> Result<bool, SemaphoreError> {
        self.stop_renewal();
        self.released = true;
        let removed = scripts::release(
            &self.lease.core.conn,
            &self.lease.core.keys,
            &self.lease.names,
            &self.lease.token,
        )
        .await?;
        Ok(removed > 0)
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.stop_renewal();
        if self.released {
            return;
        }
        // Drop cannot wait: release from a task when a runtime is at hand. When there is none, or
        // the release fails, the lease simply expires after its TTL.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let lease = Arc::clone(&self.lease);
        runtime.spawn(async move {
            let released =
                scripts::release(&lease.core.conn, &lease.core.keys, &lease.names, &lease.token)
                    .await;
            if let Err(error) = released {
                tracing::warn!(token = %lease.token, %error, "semaphore lease not released on drop; it will expire");
            }
        });
    }
}

/// Renews `lease` every third of its TTL until it is lost or the task is aborted.
///
/// `valid_until` is a local instant before which the lease is certainly still live in Redis (one
/// TTL after the last successful grant or renewal was *sent*). Errors are retried with a short
/// pause until that instant; past it the lease may have expired, and it is reported lost.
async fn renew_loop(lease: Arc<SemaphoreLease>, requested_at: Instant) {
    let ttl = lease.core.lease;
    let period = ttl / 3;
    let retry = (ttl / 10).clamp(RETRY_MIN, RETRY_MAX);
    let mut valid_until = requested_at + ttl;
    let mut next = requested_at + period;
    loop {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        let Some(remaining) = valid_until
            .checked_duration_since(sent)
            .filter(|d| !d.is_zero())
        else {
            lease.mark_lost("redis was unreachable until the lease expired");
            return;
        };
        match tokio::time::timeout(remaining, lease.renew()).await {
            Ok(Ok(Renewal::Renewed)) => {
                valid_until = sent + ttl;
                next = sent + period;
            }
            Ok(Ok(Renewal::Lost)) => return,
            Ok(Err(error)) => {
                tracing::warn!(token = %lease.token, %error, "semaphore lease renewal failed; retrying");
                next = (Instant::now() + retry).min(valid_until);
            }
            Err(_elapsed) => {
                lease.mark_lost("redis did not answer before the lease expired");
                return;
            }
        }
    }
}

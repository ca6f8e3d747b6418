//! Which session a hello opens, and the resume secret that guards it.
//!
//! A session's calls are found by their job ids, which derive from the session id, so whoever
//! holds a session reads its results and cancels its calls. The `hello_ack` of a new session
//! issues a random resume secret; Redis keeps only its SHA-256 (`Keys::session_resume`), for
//! `EXAI_RESULT_TTL_SECS` + `EXAI_WS_CALL_TIMEOUT_SECS` after the session's last hello. A hello
//! resumes an existing session only with that secret; without it, or with a wrong one, it gets
//! a fresh session. A `session_id` no secret is kept for is taken as given (claimed atomically,
//! `SET NX`), so a client may still name its session.

use std::time::Duration;

use exai_shared::keys::Keys;
use exai_shared::protocol;
use redis::RedisError;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::App;

/// The session a hello opened and the secret that resumes it.
pub(crate) struct Opened {
    /// The session id.
    pub(crate) session_id: String,
    /// Its resume secret.
    pub(crate) secret: String,
    /// Whether an existing session was resumed (with its secret).
    pub(crate) resumed: bool,
}

/// Hex SHA-256 of a secret, as stored.
fn stored_form(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How long a session's secret is kept after its last hello: as long as its results are.
fn retention(app: &App) -> Duration {
    app.config.jobs.result_ttl + app.limits.call_timeout
}

/// Opens the session a hello asks for (`requested`, with `secret`): the existing session when
/// the secret matches, the named one when no session of that id exists, else a fresh one.
pub(crate) async fn open(
    app: &App,
    requested: Option<&str>,
    secret: Option<&str>,
) -> Result<Opened, RedisError> {
    let keys = Keys::new(app.config.redis.prefix.clone());
    let ttl = retention(app).as_secs().max(1);
    let mut conn = app.redis.clone();
    if let Some(id) = requested.filter(|s| protocol::valid_session_id(s)) {
        let key = keys.session_resume(id);
        if let Some(secret) = secret {
            let stored: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
            if let Some(stored) = stored
                && bool::from(stored.as_bytes().ct_eq(stored_form(secret).as_bytes()))
            {
                let _: bool = redis::cmd("EXPIRE")
                    .arg(&key)
                    .arg(ttl)
                    .query_async(&mut conn)
                    .await?;
                return Ok(Opened {
                    session_id: id.to_owned(),
                    secret: secret.to_owned(),
                    resumed: true,
                });
            }
        }
        let fresh = protocol::new_resume_secret();
        let claimed: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(stored_form(&fresh))
            .arg("NX")
            .arg("EX")
            .arg(ttl)
            .query_async(&mut conn)
            .await?;
        if claimed.is_some() {
            return Ok(Opened {
                session_id: id.to_owned(),
                secret: fresh,
                resumed: false,
            });
        }
    }
    let session_id = protocol::new_session_id();
    let fresh = protocol::new_resume_secret();
    let () = redis::cmd("SET")
        .arg(keys.session_resume(&session_id))
        .arg(stored_form(&fresh))
        .arg("EX")
        .arg(ttl)
        .query_async(&mut conn)
        .await?;
    Ok(Opened {
        session_id,
        secret: fresh,
        resumed: false,
    })
}

//! Session ids and the job ids of calls.

use sha2::{Digest, Sha256};

use super::*;

// ----- ids ------------------------------------------------------------------------------------

/// The prefix of the sessions the daemon keeps for MCP clients (`/mcp`): no WebSocket client
/// may name one.
pub const MCP_SESSION_PREFIX: &str = "mcp_";

/// Whether a client-chosen session id is acceptable: 3 to 64 of `[A-Za-z0-9_-]`, not starting
/// with [`MCP_SESSION_PREFIX`].
pub fn valid_session_id(s: &str) -> bool {
    (MIN_SESSION_ID_LEN..=MAX_SESSION_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !s.starts_with(MCP_SESSION_PREFIX)
}

/// A fresh, unguessable session id (32 hex digits).
pub fn new_session_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A fresh, unguessable resume secret for a new session (32 hex digits, 128 random bits).
pub fn new_resume_secret() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The job id of the call `request_id` of session `session_id` (streaming mode):
/// `call-` + the first 32 hex digits of `sha256(session_id "\n" request_id)`. Deterministic, so a
/// repeated call finds its job; distinct per session, so two sessions never share one.
pub fn call_job_id(session_id: &str, request_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(session_id.as_bytes());
    h.update(b"\n");
    h.update(request_id.as_bytes());
    let digest = h.finalize();
    let mut id = String::with_capacity(CALL_JOB_PREFIX.len() + 32);
    id.push_str(CALL_JOB_PREFIX);
    for b in &digest[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// A fresh, unguessable job id for a single-frame call (its client repeats one `id` on every
/// request, so the id cannot be derived from it).
pub fn fresh_call_job_id() -> String {
    format!("{CALL_JOB_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

/// Whether `s` has the shape of a call job id (`call-` + 32 lowercase hex digits).
pub fn is_call_job_id(s: &str) -> bool {
    s.strip_prefix(CALL_JOB_PREFIX).is_some_and(|rest| {
        rest.len() == 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

//! The Lua scripts behind the semaphores, and the decoding of their replies.
//!
//! Each script is one atomic step on the Redis side; the Rust side only builds KEYS and ARGV and
//! reads the reply. Every key a script touches is passed through KEYS and carries the `{P:sem}`
//! hash tag (see [`Keys`]), so each call runs on a single Redis Cluster slot. Expiry times are
//! always computed from Redis's own clock (`TIME`) inside the scripts, never from the client's.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, Value};

use super::{HolderInfo, SemaphoreError};
use crate::keys::Keys;
use crate::redis::RedisHandle;

/// At most this many expired leases are purged from one set by one acquire call. Counting only
/// looks at live leases, so a backlog of dead ones (after a mass crash) costs a few more calls to
/// clean up but never a wrong answer.
pub(super) const PURGE_BATCH: u32 = 64;

/// The acquire script: purge, check every limit, grant all or nothing.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("acquire.lua")));
/// The renew script: extend only a lease that is live in every set, else drop it everywhere.
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("renew.lua")));
/// The release script: remove the lease everywhere and announce it.
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("release.lua")));
/// The read-only inspection script.
static INSPECT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("inspect.lua")));
/// The runtime limit script (set or clear an override).
static LIMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("limit.lua")));
/// The adaptive concurrency script (one AIMD step).
static ADAPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("adapt.lua")));

/// The answer of the acquire script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AcquireReply {
    /// Every set had room; the lease is written with this fencing token.
    Granted {
        /// The value of the fencing counter taken by this grant.
        fence: u64,
    },
    /// At least one set was full; nothing was taken.
    Refused {
        /// How long until every full set has room through lease expiry alone, when known.
        retry_in: Option<Duration>,
        /// The names whose sets were full.
        full: Vec<String>,
    },
}

/// The answer of the renew script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease was live everywhere and now runs for another full TTL.
    Renewed,
    /// The lease had expired or vanished; it has been removed everywhere and must not be used.
    Lost,
}

/// One semaphore as read by the inspect script, before the holder JSON is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawState {
    /// The effective limit, or `None` when the name has neither override nor default.
    pub limit: Option<u32>,
    /// Whether the limit comes from the runtime overrides hash.
    pub overridden: bool,
    /// The effective limit (adaptive, at most `limit`), or `None` when there is no limit.
    pub effective: Option<u32>,
    /// `(token, ms until expiry, holder JSON)` of each live lease.
    pub leases: Vec<(String, u64, Option<String>)>,
}

/// A limit for ARGV: the default, or `-1` when the name has none.
fn limit_arg(limit: Option<u32>) -> i64 {
    limit.map_or(-1, i64::from)
}

/// The comma-separated list of names published on the release channel.
pub(super) fn names_payload(names: &[String]) -> String {
    names.join(",")
}

/// Runs the acquire script for `names` (validated, deduplicated) with their default limits.
pub(super) async fn acquire(
    conn: &RedisHandle,
    keys: &Keys,
    names: &[(String, Option<u32>)],
    token: &str,
    ttl: Duration,
    holder: &HolderInfo,
    adaptive: bool,
) -> Result<AcquireReply, SemaphoreError> {
    let mut invocation = ACQUIRE.prepare_invoke();
    invocation
        .key(keys.sem_holders())
        .key(keys.sem_limits())
        .key(keys.sem_fence())
        .key(keys.sem_names())
        .key(keys.sem_adaptive());
    for (name, _) in names {
        invocation.key(keys.sem_leases(name));
    }
    invocation
        .arg(token)
        .arg(ttl_millis(ttl))
        .arg(&holder.holder)
        .arg(&holder.job_id)
        .arg(holder.attempt)
        .arg(PURGE_BATCH)
        .arg(if adaptive { "1" } else { "0" });
    for (name, default) in names {
        invocation.arg(name).arg(limit_arg(*default));
    }
    let reply: Vec<Value> = invocation.invoke_async(&mut conn.clone()).await?;
    decode_acquire(reply)
}

/// Decodes the reply of the acquire script.
fn decode_acquire(reply: Vec<Value>) -> Result<AcquireReply, SemaphoreError> {
    let bad = |detail: &str| SemaphoreError::protocol("acquire", detail);
    let mut it = reply.into_iter();
    let status = int(it.next().ok_or_else(|| bad("empty reply"))?)
        .ok_or_else(|| bad("status is not an integer"))?;
    match status {
        1 => {
            let fence = it
                .next()
                .and_then(int)
                .and_then(|f| u64::try_from(f).ok())
                .ok_or_else(|| bad("fence is not a non-negative integer"))?;
            Ok(AcquireReply::Granted { fence })
        }
        0 => {
            let wait = it
                .next()
                .and_then(int)
                .ok_or_else(|| bad("wait is not an integer"))?;
            let retry_in = u64::try_from(wait).ok().map(Duration::from_millis);
            let full = it
                .map(|v| string(v).ok_or_else(|| bad("a full name is not a string")))
                .collect::<Result<_, _>>()?;
            Ok(AcquireReply::Refused { retry_in, full })
        }
        -1 => {
            let name = it
                .next()
                .and_then(string)
                .ok_or_else(|| bad("missing name"))?;
            Err(SemaphoreError::NoLimit(name))
        }
        other => Err(bad(&format!("unknown status {other}"))),
    }
}

/// Runs the renew script for `token` on `names`.
pub(super) async fn renew(
    conn: &RedisHandle,
    keys: &Keys,
    names: &[String],
    token: &str,
    ttl: Duration,
) -> Result<Renewal, SemaphoreError> {
    let mut invocation = RENEW.prepare_invoke();
    invocation.key(keys.sem_holders()).key(keys.budget_held());
    for name in names {
        invocation.key(keys.sem_leases(name));
    }
    invocation
        .arg(token)
        .arg(ttl_millis(ttl))
        .arg(keys.sem_released_channel())
        .arg(names_payload(names));
    let reply: Vec<i64> = invocation.invoke_async(&mut conn.clone()).await?;
    match reply.first() {
        Some(1) => Ok(Renewal::Renewed),
        Some(0) => Ok(Renewal::Lost),
        _ => Err(SemaphoreError::protocol(
            "renew",
            &format!("unexpected reply {reply:?}"),
        )),
    }
}

/// Runs the release script; returns how many lease entries were removed (0 when already gone).
pub(super) async fn release(
    conn: &RedisHandle,
    keys: &Keys,
    names: &[String],
    token: &str,
) -> Result<u32, SemaphoreError> {
    let mut invocation = RELEASE.prepare_invoke();
    invocation.key(keys.sem_holders());
    for name in names {
        invocation.key(keys.sem_leases(name));
    }
    invocation
        .arg(token)
        .arg(keys.sem_released_channel())
        .arg(names_payload(names));
    Ok(invocation.invoke_async(&mut conn.clone()).await?)
}

/// Sets (`Some`) or clears (`None`) the runtime limit of `name`.
pub(super) async fn set_limit(
    conn: &RedisHandle,
    keys: &Keys,
    name: &str,
    limit: Option<u32>,
) -> Result<(), SemaphoreError> {
    let _: i64 = LIMIT
        .key(keys.sem_limits())
        .key(keys.sem_names())
        .arg(name)
        .arg(limit.map(|l| l.to_string()).unwrap_or_default())
        .arg(keys.sem_released_channel())
        .invoke_async(&mut conn.clone())
        .await?;
    Ok(())
}

/// Which way one adaptive step pushes the effective limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AdaptOp {
    /// The provider answered a congestion error.
    Decrease,
    /// A provider call succeeded.
    Increase,
}

/// Runs the adapt script: one AIMD step for `name`. Returns `(change, effective, ceiling)` with
/// `change` -1, 0 or 1; `None` when the name has no limit.
pub(super) async fn adapt(
    conn: &RedisHandle,
    keys: &Keys,
    name: &str,
    default: Option<u32>,
    op: AdaptOp,
    aimd: &crate::config::AimdConfig,
) -> Result<Option<(i64, u32, u32)>, SemaphoreError> {
    let reply: Vec<i64> = ADAPT
        .key(keys.sem_limits())
        .key(keys.sem_adaptive())
        .arg(name)
        .arg(match op {
            AdaptOp::Decrease => "decrease",
            AdaptOp::Increase => "increase",
        })
        .arg(limit_arg(default))
        .arg(aimd.decrease_factor)
        .arg(u64::try_from(aimd.decrease_cooldown.as_millis()).unwrap_or(u64::MAX))
        .arg(aimd.increase_step)
        .arg(aimd.increase_every)
        .arg(keys.sem_released_channel())
        .invoke_async(&mut conn.clone())
        .await?;
    match reply.as_slice() {
        [_, -1, _] => Ok(None),
        [change, effective, ceiling] => Ok(Some((
            *change,
            u32::try_from(*effective).unwrap_or(0),
            u32::try_from(*ceiling).unwrap_or(0),
        ))),
        _ => Err(SemaphoreError::protocol(
            "adapt",
            &format!("unexpected reply {reply:?}"),
        )),
    }
}

/// Runs the inspect script for `names` with their default limits.
pub(super) async fn inspect(
    conn: &RedisHandle,
    keys: &Keys,
    names: &[(String, Option<u32>)],
) -> Result<Vec<RawState>, SemaphoreError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut invocation = INSPECT.prepare_invoke();
    invocation
        .key(keys.sem_holders())
        .key(keys.sem_limits())
        .key(keys.sem_adaptive());
    for (name, _) in names {
        invocation.key(keys.sem_leases(name));
    }
    for (name, default) in names {
        invocation.arg(name).arg(limit_arg(*default));
    }
    let reply: Vec<Value> = invocation.invoke_async(&mut conn.clone()).await?;
    reply.into_iter().map(decode_state).collect()
}

/// Decodes one entry of the inspect reply.
fn decode_state(entry: Value) -> Result<RawState, SemaphoreError> {
    let bad = |detail: &str| SemaphoreError::protocol("inspect", detail);
    let mut it = array(entry)
        .ok_or_else(|| bad("entry is not an array"))?
        .into_iter();
    let limit = it
        .next()
        .and_then(int)
        .ok_or_else(|| bad("limit is not an integer"))?;
    let overridden = it
        .next()
        .and_then(int)
        .ok_or_else(|| bad("override flag is not an integer"))?;
    let effective = it
        .next()
        .and_then(int)
        .ok_or_else(|| bad("effective limit is not an integer"))?;
    let leases = it
        .map(|lease| {
            let mut fields = array(lease)
                .ok_or_else(|| bad("lease is not an array"))?
                .into_iter();
            let token = fields
                .next()
                .and_then(string)
                .ok_or_else(|| bad("lease token is not a string"))?;
            let expires_in = fields
                .next()
                .and_then(int)
                .ok_or_else(|| bad("lease expiry is not an integer"))?;
            let holder = fields.next().and_then(string);
            Ok((token, u64::try_from(expires_in).unwrap_or(0), holder))
        })
        .collect::<Result<_, SemaphoreError>>()?;
    Ok(RawState {
        limit: u32::try_from(limit).ok(),
        overridden: overridden == 1,
        effective: u32::try_from(effective).ok(),
        leases,
    })
}

/// A TTL in whole milliseconds, at least one.
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// An integer reply (Lua numbers arrive as integers).
fn int(value: Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(i),
        Value::BulkString(bytes) => std::str::from_utf8(&bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// A string reply; `None` for nil (a Lua `false`).
fn string(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// An array reply.
fn array(value: Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_grant_carries_its_fence() {
        let reply = decode_acquire(vec![Value::Int(1), Value::Int(42)]).unwrap();
        assert_eq!(reply, AcquireReply::Granted { fence: 42 });
    }

    #[test]
    fn a_refusal_carries_the_wait_hint_and_the_full_names() {
        let reply = decode_acquire(vec![Value::Int(0), Value::Int(1500), bulk("kimi")]).unwrap();
        assert_eq!(
            reply,
            AcquireReply::Refused {
                retry_in: Some(Duration::from_millis(1500)),
                full: vec!["kimi".to_owned()],
            }
        );
        let unknown = decode_acquire(vec![Value::Int(0), Value::Int(-1), bulk("glm")]).unwrap();
        assert!(matches!(
            unknown,
            AcquireReply::Refused { retry_in: None, .. }
        ));
    }

    #[test]
    fn a_name_without_limit_is_an_error() {
        let err = decode_acquire(vec![Value::Int(-1), bulk("mystery")]).unwrap_err();
        assert!(matches!(err, SemaphoreError::NoLimit(name) if name == "mystery"));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        assert!(matches!(
            decode_acquire(vec![]),
            Err(SemaphoreError::Protocol { .. })
        ));
        assert!(matches!(
            decode_acquire(vec![Value::Int(7)]),
            Err(SemaphoreError::Protocol { .. })
        ));
    }

    #[test]
    fn inspect_entries_decode_with_and_without_holder_info() {
        let entry = Value::Array(vec![
            Value::Int(6),
            Value::Int(1),
            Value::Int(3),
            Value::Array(vec![bulk("job-1:1:abc"), Value::Int(900), bulk("{}")]),
            Value::Array(vec![bulk("job-2:1:def"), Value::Int(10), Value::Nil]),
        ]);
        let state = decode_state(entry).unwrap();
        assert_eq!(state.limit, Some(6));
        assert!(state.overridden);
        assert_eq!(state.effective, Some(3));
        assert_eq!(
            state.leases,
            vec![
                ("job-1:1:abc".to_owned(), 900, Some("{}".to_owned())),
                ("job-2:1:def".to_owned(), 10, None),
            ]
        );
        let no_limit = decode_state(Value::Array(vec![
            Value::Int(-1),
            Value::Int(0),
            Value::Int(-1),
        ]))
        .unwrap();
        assert_eq!(no_limit.limit, None);
    }

    #[test]
    fn ttl_is_whole_positive_milliseconds() {
        assert_eq!(ttl_millis(Duration::from_micros(10)), 1);
        assert_eq!(ttl_millis(Duration::from_secs(30)), 30_000);
    }
}

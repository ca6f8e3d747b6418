//! Reading the replies of the queue scripts (plain `redis::Value`s, parsed by hand on the hot
//! path so a fetch of a thousand jobs allocates only what it hands out).

use redis::Value;

use super::error::QueueError;

/// The elements of an array reply.
pub(crate) fn array(v: Value, what: &str) -> Result<Vec<Value>, QueueError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(QueueError::Protocol(format!(
            "{what}: expected an array, got {other:?}"
        ))),
    }
}

/// An integer reply (or a string holding one).
pub(crate) fn int(v: &Value, what: &str) -> Result<i64, QueueError> {
    opt_int(v)
        .ok_or_else(|| QueueError::Protocol(format!("{what}: expected an integer, got {v:?}")))
}

/// An integer reply, `None` for nil or anything else.
pub(crate) fn opt_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Double(d) => Some(*d as i64),
        _ => None,
    }
}

/// A non-negative integer, `None` for nil or a negative value.
pub(crate) fn opt_u64(v: &Value) -> Option<u64> {
    opt_int(v).and_then(|i| u64::try_from(i).ok())
}

/// A string reply as bytes, `None` for nil.
pub(crate) fn opt_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

/// A string reply, `None` for nil; invalid UTF-8 is replaced.
pub(crate) fn opt_string(v: Value) -> Option<String> {
    opt_bytes(v).map(|b| match String::from_utf8(b) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// A string reply that must be present.
pub(crate) fn string(v: Value, what: &str) -> Result<String, QueueError> {
    match v {
        Value::Nil => Err(QueueError::Protocol(format!("{what}: unexpected nil"))),
        other => opt_string(other)
            .ok_or_else(|| QueueError::Protocol(format!("{what}: expected a string"))),
    }
}

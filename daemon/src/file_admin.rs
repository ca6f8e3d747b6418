//! Which `kimi_manage_files` operations a client may run. Removing files (`delete`,
//! `cleanup_orphaned`, `cleanup_expired`) acts on every client's files, so it needs
//! `EXAI_CLIENT_FILE_ADMIN=true`; `list` is always allowed.

use exai_shared::protocol::{ErrorCode, WireError};
use exai_shared::tools;
use serde_json::{Value, json};

/// The `kimi_manage_files` operations that remove files.
const REMOVING: [&str; 3] = ["delete", "cleanup_orphaned", "cleanup_expired"];

/// The refusal of a call to `tool` with these (valid) `arguments` when clients may not
/// administer files (`allowed` false), naming the setting; `None` when the call may run.
pub(crate) fn refusal(allowed: bool, tool: &str, arguments: &Value) -> Option<WireError> {
    if allowed || tool != tools::KIMI_MANAGE_FILES {
        return None;
    }
    let operation = arguments.get("operation").and_then(Value::as_str)?;
    if !REMOVING.contains(&operation) {
        return None;
    }
    Some(
        WireError::new(
            ErrorCode::ValidationError,
            format!(
                "Invalid arguments for {tool}: /operation: `{operation}` removes files and \
                 needs EXAI_CLIENT_FILE_ADMIN=true on the daemon (only `list` is open to clients)"
            ),
        )
        .with_details(json!({"path": "/operation", "setting": "EXAI_CLIENT_FILE_ADMIN"})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listing_is_open_without_the_setting() {
        let manage = tools::KIMI_MANAGE_FILES;
        for op in REMOVING {
            let args = json!({"operation": op, "file_id": "f"});
            let refused = refusal(false, manage, &args).expect(op);
            assert_eq!(refused.code, ErrorCode::ValidationError);
            assert!(refused.message.contains("EXAI_CLIENT_FILE_ADMIN"));
            assert!(refusal(true, manage, &args).is_none());
        }
        assert!(refusal(false, manage, &json!({"operation": "list"})).is_none());
        assert!(refusal(false, tools::TEST_ECHO, &json!({"operation": "delete"})).is_none());
    }
}

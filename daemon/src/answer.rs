//! What a call's client is told at the end: the `call_tool_res` of a finished job (its outputs,
//! or the error), the error reply of a refused call, and the single-frame reply, cut to fit one
//! frame of the stdio shim.

use exai_shared::jobs::{ToolContent, ToolResult};
use exai_shared::protocol::{CallToolRes, ErrorCode, ReplyTo, ServerMessage, WireError};
use exai_shared::queue::{JobInfo, JobState};
use serde_json::{Value, json};

use crate::metrics::Outcome;

/// The largest frame a single-frame reply may be: under the stdio shim's 1 MiB message limit,
/// with room to spare.
pub const SINGLE_FRAME_MAX_BYTES: usize = 1_000_000;

/// What a call's `call_tool_res` carries: the result (outputs, and `structuredContent` when the
/// tool gave one), or the error.
pub(crate) type Answer = Result<ToolResult, WireError>;

/// An error reply to a call: a `call_tool_res` with `error`; a single-frame client also gets the
/// error as `result` text, since that is all the stdio shim reads.
pub(crate) fn call_error(reply_to: ReplyTo, single: bool, error: WireError) -> CallToolRes {
    let mut res = CallToolRes::failed(reply_to, error.clone());
    if single {
        let items = vec![ToolContent::text(format!(
            "Error: {}: {}",
            error.code, error.message
        ))];
        res.outputs = Some(items.clone());
        res.result = Some(items);
    }
    res
}

/// The outcome of a finished job: its outputs, or the error to send.
pub(crate) fn finished(info: &JobInfo) -> Option<(Answer, Outcome)> {
    let last_error = || {
        info.dead_reason
            .clone()
            .or_else(|| info.errors.last().map(|e| e.message.clone()))
    };
    match info.state {
        JobState::Completed => {
            let result = result_of(info.result.as_deref());
            if !result.is_error {
                return Some((Ok(result), Outcome::Completed));
            }
            // An upstream MCP tool that ran and reported a failure (`isError`).
            Some((
                Err(WireError::new(
                    ErrorCode::ToolExecutionError,
                    format!("Tool execution failed: {}", result.joined_text()),
                )
                .with_details(json!({"is_error": true, "outputs": result.outputs}))),
                Outcome::Failed,
            ))
        }
        JobState::Dead if interrupted(info) => Some((
            Err(WireError::new(
                ErrorCode::Interrupted,
                format!(
                    "The call was interrupted and not run again: {}",
                    last_error().unwrap_or_default()
                ),
            )
            .with_details(json!({"interrupted": true, "attempts": info.attempts}))),
            Outcome::Failed,
        )),
        JobState::Dead if expired(info) => Some((
            Err(WireError::new(
                ErrorCode::Timeout,
                format!(
                    "The call expired: it was still queued past its deadline and was not run ({})",
                    last_error().unwrap_or_default()
                ),
            )
            .with_details(json!({"expired": true, "attempts": info.attempts}))),
            Outcome::Failed,
        )),
        JobState::Dead => Some((
            Err(WireError::new(
                ErrorCode::ToolExecutionError,
                format!(
                    "Tool execution failed: {}",
                    last_error().unwrap_or_else(|| "unknown error".to_owned())
                ),
            )
            .with_details(json!({"attempts": info.attempts}))),
            Outcome::Failed,
        )),
        JobState::Cancelled => Some((
            Err(WireError::new(
                ErrorCode::Cancelled,
                match last_error() {
                    Some(e) => format!("The call was cancelled ({e})"),
                    None => "The call was cancelled".to_owned(),
                },
            )),
            Outcome::Cancelled,
        )),
        _ => None,
    }
}

/// Whether a dead job expired before it ran (see [`exai_shared::jobs::JobError::expired`]).
pub(crate) fn expired(info: &JobInfo) -> bool {
    info.dead_reason
        .as_deref()
        .or_else(|| info.errors.last().map(|e| e.message.as_str()))
        .is_some_and(exai_shared::jobs::is_expired_reason)
}

/// Whether a dead job's upstream MCP call was interrupted (see
/// [`exai_shared::jobs::JobError::interrupted`]).
pub(crate) fn interrupted(info: &JobInfo) -> bool {
    info.dead_reason
        .as_deref()
        .or_else(|| info.errors.last().map(|e| e.message.as_str()))
        .is_some_and(exai_shared::jobs::is_interrupted_reason)
}

/// A completed job's token usage, as its result records it.
pub(crate) fn usage_of(info: &JobInfo) -> Option<exai_shared::usage::Usage> {
    if info.state != JobState::Completed {
        return None;
    }
    result_of(info.result.as_deref()).usage
}

/// A stored result: a [`ToolResult`], or any other JSON as one text item.
fn result_of(stored: Option<&[u8]>) -> ToolResult {
    let Some(bytes) = stored else {
        return ToolResult {
            outputs: Vec::new(),
            structured_content: None,
            is_error: false,
            usage: None,
        };
    };
    if let Ok(r) = serde_json::from_slice::<ToolResult>(bytes) {
        return r;
    }
    let text = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    };
    ToolResult::text(text)
}

/// The single-frame reply (`result` and `outputs`, no `text`), cut to [`SINGLE_FRAME_MAX_BYTES`]
/// with a note saying how to fetch all of it.
pub(crate) fn single_frame(reply_to: ReplyTo, outputs: Vec<ToolContent>, job_id: &str) -> String {
    let frame = |items: Vec<ToolContent>, truncated: bool| {
        let mut res = CallToolRes::success(reply_to.clone(), items).with_job_id(job_id);
        res.text = None;
        res.truncated = truncated;
        ServerMessage::CallToolRes(res).to_json()
    };
    let whole = frame(outputs.clone(), false);
    if whole.len() <= SINGLE_FRAME_MAX_BYTES {
        return whole;
    }
    let full: String = outputs
        .iter()
        .map(|o| o.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let note = format!(
        "\n\n[Result cut to fit one frame: {} bytes in all. Fetch the whole result with {{\"op\":\"get_result\",\"request_id\":\"{job_id}\"}}]",
        full.len()
    );
    // The text appears twice (result and outputs); JSON escaping may grow it, so shrink until
    // the frame fits.
    let mut budget = SINGLE_FRAME_MAX_BYTES / 2;
    loop {
        let mut end = budget.min(full.len());
        while !full.is_char_boundary(end) {
            end -= 1;
        }
        let text = format!("{}{note}", &full[..end]);
        let out = frame(vec![ToolContent::text(text)], true);
        if out.len() <= SINGLE_FRAME_MAX_BYTES || end == 0 {
            return out;
        }
        let ratio = SINGLE_FRAME_MAX_BYTES as f64 / out.len() as f64;
        budget = ((end as f64) * ratio * 0.98) as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_single_frame_result_is_cut_under_the_limit_with_a_note() {
        let reply_to = ReplyTo {
            request_id: Some("call-x".into()),
            id: Some(json!("call_1")),
        };
        // Quotes double in JSON: the worst case for the size estimate.
        let long = "\"é".repeat(600_000);
        let out = single_frame(reply_to.clone(), vec![ToolContent::text(long)], "call-x");
        assert!(out.len() <= SINGLE_FRAME_MAX_BYTES, "{}", out.len());
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["truncated"], true);
        assert_eq!(v["id"], "call_1");
        let text = v["result"][0]["text"].as_str().unwrap();
        assert!(text.contains(r#"{"op":"get_result","request_id":"call-x"}"#));
        assert_eq!(v["result"], v["outputs"]);

        let short = single_frame(reply_to, vec![ToolContent::text("hi")], "call-x");
        let v: Value = serde_json::from_str(&short).unwrap();
        assert_eq!(v["result"][0]["text"], "hi");
        assert!(v.get("truncated").is_none());
        assert!(v.get("text").is_none());
    }

    #[test]
    fn stored_results_of_any_shape_become_outputs() {
        let r = serde_json::to_vec(&ToolResult::text("x")).unwrap();
        assert_eq!(result_of(Some(&r)).outputs, vec![ToolContent::text("x")]);
        assert_eq!(
            result_of(Some(br#"{"a":1}"#)).outputs,
            vec![ToolContent::text(r#"{"a":1}"#)]
        );
        assert_eq!(
            result_of(Some(b"\"s\"")).outputs,
            vec![ToolContent::text("s")]
        );
        assert!(result_of(None).outputs.is_empty());
    }
}

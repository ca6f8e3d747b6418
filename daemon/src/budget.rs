//! The session token budget (`EXAI_SESSION_TOKEN_BUDGET`): once the tokens recorded for a
//! session reach the budget, its new provider calls are refused with `BUDGET_EXCEEDED` before
//! anything is enqueued. Calls already admitted run to the end, so a session may overshoot the
//! budget by what its calls in flight consume.
//!
//! With no budget (0, the default) nothing is read: the call path costs no Redis round trip.

use exai_shared::protocol::{ErrorCode, WireError};
use serde_json::json;

use crate::app::App;

/// The error a call of `session` is refused with, when the session has spent its budget.
/// A failed read lets the call through (the budget is a cost guard, not an admission
/// dependency; the enqueue that follows reports an unreachable Redis).
pub(crate) async fn refusal(app: &App, session: &str) -> Option<WireError> {
    let budget = app.config.usage.session_token_budget;
    if budget == 0 {
        return None;
    }
    let spent = match app.usage.session_total(session).await {
        Ok(spent) => spent,
        Err(e) => {
            tracing::warn!(error = %e, "the session's token total could not be read");
            return None;
        }
    };
    (spent >= budget).then(|| {
        WireError::new(
            ErrorCode::BudgetExceeded,
            format!(
                "The session has spent its token budget ({spent} of {budget} tokens, \
                 EXAI_SESSION_TOKEN_BUDGET); no more provider calls are accepted"
            ),
        )
        .with_details(json!({"budget": budget, "spent": spent}))
    })
}

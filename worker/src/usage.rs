//! Cost accounting on the worker: each provider call's usage is recorded once its outcome is
//! known — added to the session's, tool's and model's sums in Redis
//! ([`exai_shared::usage::UsageLedger`]), counted in `exai_worker_tokens_total`, and summed into
//! the job's own usage, which [`crate::tools::run`] puts on the tool result.
//!
//! Recording never fails a call: a Redis error is logged and the answer still goes out (the
//! provider has already been paid).

use exai_shared::providers::{ChatCompletion, ProviderError};
use exai_shared::usage::{Usage, UsageCall};

use crate::tools::ToolCtx;

/// Records the usage of one provider call of `ctx`'s job, when the call succeeded and the
/// provider reported usage.
pub async fn record(ctx: &ToolCtx<'_>, outcome: &Result<ChatCompletion, ProviderError>) {
    let Ok(completion) = outcome else {
        return;
    };
    let Some(usage) = completion.usage.as_ref().and_then(Usage::from_provider) else {
        tracing::debug!(job_id = ctx.job_id(), "the provider reported no usage");
        return;
    };
    let provider = ctx.provider_semaphore().unwrap_or("unknown");
    ctx.add_usage(usage);
    ctx.state
        .metrics
        .tokens_used(provider, &completion.model, &usage);
    let call = UsageCall {
        session: &ctx.session_id,
        tool: ctx.tool.name,
        model: &completion.model,
        provider,
    };
    if let Err(e) = ctx.state.usage.record(call, &usage).await {
        tracing::warn!(
            job_id = ctx.job_id(),
            error = %exai_shared::error_chain(&e),
            "the call's usage could not be recorded"
        );
    }
}

//! Rate budgets around a chat call: reserve what the call will cost before it is sent, settle
//! what the provider counted after (see [`exai_shared::budget`]).
//!
//! A job whose turn — paced, or when a full window has room — is within its provider's permit
//! wait (`KIMI_SEMAPHORE_TIMEOUT`, …) is given that turn by the script, in order, and waits for
//! it keeping its place; beyond, it is put back ([`JobError::PutBack`]) until the windows make
//! room, without spending an attempt. One whose request alone exceeds a limit fails permanently
//! (no window can ever admit it).

use exai_shared::backend::RunningJob;
use exai_shared::budget::{self, Charge, Reservation};
use exai_shared::jobs::JobError;
use exai_shared::providers::{ChatCompletion, ChatRequest, ProviderError};

use crate::state::AppState;

/// A reservation made for one call, settled by [`settle`].
#[derive(Debug)]
pub struct Reserved {
    /// The lease token it is held under.
    token: String,
    /// The provider (`kimi`, `glm`).
    provider: &'static str,
    /// The tokens reserved.
    tokens: u64,
    /// The completion tokens of the reservation (the cap sent, or the provider's default).
    completion: u64,
}

/// The completion cap to send with a chat request to `provider`, when one is configured.
pub fn max_completion_tokens(state: &AppState, provider: Option<&str>) -> Option<u32> {
    let budgets = &state.config.semaphores.budgets;
    match provider? {
        "kimi" => budgets.kimi.max_completion_tokens,
        "glm" => budgets.glm.max_completion_tokens,
        _ => None,
    }
}

/// Reserves `request`'s cost (its prompt's estimate plus its completion cap) in `provider`'s
/// budget under lease `token`. `None` when the provider has no budget (or the call holds no
/// permit to hold a reservation under).
pub async fn reserve(
    state: &AppState,
    lease: &RunningJob,
    token: Option<&str>,
    provider: Option<&'static str>,
    request: &ChatRequest,
) -> Result<Option<Reserved>, JobError> {
    let (Some(token), Some(provider)) = (token, provider) else {
        return Ok(None);
    };
    let Some(limits) = state.budgets.of(provider) else {
        return Ok(None);
    };
    let completion = request
        .max_tokens
        .map_or_else(|| limits.completion_reserve(), u64::from);
    let prompt =
        budget::estimate_prompt_tokens(request.messages.iter().map(|m| m.content.as_str()));
    let tokens = prompt + completion;
    // A turn the provider's permit wait covers (paced, or when a full window has room) is
    // reserved by the script in the order the calls asked and waited here, keeping the job's
    // place; a longer wait is refused and puts the job back.
    let patience = state.config.semaphores.wait_for(Some(provider));
    let answer = state
        .budgets
        .reserve(provider, token, tokens, patience)
        .await
        .map_err(|e| {
            JobError::Transient(format!("rate budget: {}", exai_shared::error_chain(&e)))
        })?;
    let reserved = Reserved {
        token: token.to_owned(),
        provider,
        tokens,
        completion,
    };
    match answer {
        Reservation::Reserved => Ok(Some(reserved)),
        Reservation::Scheduled { after } => {
            // The turn is ours: wait for it. A cancel gives the reservation back.
            tokio::select! {
                _ = tokio::time::sleep(after) => Ok(Some(reserved)),
                _ = lease.cancel.cancelled() => {
                    let _ = state.budgets.settle(token, Charge::Refund).await;
                    Err(JobError::Cancelled(
                        "cancelled while waiting for its rate budget turn".into(),
                    ))
                }
            }
        }
        Reservation::TooLarge { limit, value } => Err(JobError::Permanent(format!(
            "the request needs {tokens} tokens, more than the {provider} {} limit of {value}",
            limit.as_str()
        ))),
        Reservation::Refused {
            retry_in,
            limit,
            value,
            current,
        } => {
            state.metrics.budget_refused(provider, limit.as_str());
            state
                .progress(
                    lease.id(),
                    "waiting",
                    format!(
                        "waiting for the {provider} rate budget ({} {current} of {value}): {} ms",
                        limit.as_str(),
                        retry_in.as_millis()
                    ),
                )
                .await;
            Err(JobError::PutBack {
                reason: format!(
                    "{provider} {} budget spent ({current} of {value})",
                    limit.as_str()
                ),
                after: retry_in,
            })
        }
    }
}

/// Settles `reserved` with what the provider counted for `outcome`: Moonshot counts the prompt
/// plus the completion cap at admission (its `usage.prompt_tokens` replaces the estimate), a
/// provider that counts actual usage is charged `usage.total_tokens`, a request the provider
/// answered with an error status is taken back, and a call that broke off without usage is
/// charged the reservation. A failure to settle is logged; the reservation then lapses with the
/// lease and is returned.
pub async fn settle(
    state: &AppState,
    reserved: Option<Reserved>,
    outcome: &Result<ChatCompletion, ProviderError>,
) {
    let Some(r) = reserved else {
        return;
    };
    let charge = match outcome {
        Err(e) if e.status.is_some() => Charge::Refund,
        Err(_) => Charge::Tokens(r.tokens),
        Ok(done) => {
            let usage = done.usage.as_ref();
            let field = |name: &str| {
                usage
                    .and_then(|u| u.get(name))
                    .and_then(serde_json::Value::as_u64)
            };
            let counted = if r.provider == "kimi" {
                field("prompt_tokens").map(|p| p + r.completion)
            } else {
                field("total_tokens")
            };
            Charge::Tokens(counted.unwrap_or(r.tokens))
        }
    };
    if let Err(e) = state.budgets.settle(&r.token, charge).await {
        tracing::warn!(provider = r.provider, error = %exai_shared::error_chain(&e), "rate budget settlement failed; the reservation lapses with the lease");
    }
}

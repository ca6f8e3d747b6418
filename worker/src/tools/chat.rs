//! `chat` and `kimi_chat_with_files`: one chat completion on the model's provider, streamed.
//!
//! The answer is always requested with `stream: true`; every piece of text is published as a
//! [`JobEvent::Chunk`](exai_shared::events::JobEvent) on the job's channel as it arrives (the
//! daemon relays them as `stream_chunk` frames), and the whole text is the tool's result. Files
//! (`file_ids`) are added the way the original daemon did: each file's extracted text as a
//! `system` message before the user's prompt. A file Moonshot no longer has is restored from its
//! durable copy in Supabase Storage and used under its new id.

use exai_shared::db;
use exai_shared::jobs::{JobError, ToolResult};
use exai_shared::providers::{ChatClient, ChatMessage, ChatRequest};
use exai_shared::tools::{self, Provider};
use serde::Deserialize;
use serde_json::json;

use super::{ToolCtx, json_result};
use crate::uploads;
use crate::{budget, permits, usage};

#[derive(Debug, Deserialize)]
struct ChatArgs {
    prompt: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    system_prompt: Option<String>,
    #[serde(default)]
    file_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ChatWithFilesArgs {
    prompt: String,
    file_ids: Vec<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    temperature: Option<f64>,
}

/// The chat client of the provider serving `model`.
fn client_for<'a>(ctx: &'a ToolCtx<'_>, model: &str) -> Result<&'a ChatClient, JobError> {
    match Provider::for_model(model) {
        Some(Provider::Kimi) => Ok(ctx.state.providers.moonshot.chat()),
        Some(Provider::Glm) => Ok(&ctx.state.providers.glm),
        None => Err(JobError::Permanent(format!(
            "model `{model}` belongs to no known provider (kimi-*, moonshot-*, glm-*)"
        ))),
    }
}

/// `chat`.
pub async fn chat(ctx: &ToolCtx<'_>) -> Result<ToolResult, JobError> {
    let args: ChatArgs = ctx.args()?;
    let model = args
        .model
        .unwrap_or_else(|| tools::DEFAULT_CHAT_MODEL.to_owned());
    let client = client_for(ctx, &model)?;
    if !args.file_ids.is_empty() && Provider::for_model(&model) != Some(Provider::Kimi) {
        return Err(JobError::Permanent(format!(
            "file_ids need a Kimi model (kimi-*, moonshot-*); `{model}` cannot read Moonshot files"
        )));
    }
    let guard = ctx.permits().await?;
    let token = guard.as_ref().map(|g| g.token().to_owned());
    permits::holding(ctx.state, guard, async {
        let mut messages = Vec::new();
        if let Some(system) = args.system_prompt.filter(|s| !s.is_empty()) {
            messages.push(ChatMessage::system(system));
        }
        let (file_messages, _) = file_messages(ctx, &args.file_ids).await?;
        messages.extend(file_messages);
        messages.push(ChatMessage::user(args.prompt));
        let provider = ctx.provider_semaphore();
        let request = ChatRequest {
            model,
            messages,
            temperature: args.temperature,
            max_tokens: budget::max_completion_tokens(ctx.state, provider),
        };
        let reserved =
            budget::reserve(ctx.state, ctx.lease, token.as_deref(), provider, &request).await?;
        let outcome = client.stream(&request, ctx.chunk_sink()).await;
        budget::settle(ctx.state, reserved, &outcome).await;
        permits::observe(ctx.state, ctx.provider_semaphore(), &outcome).await;
        usage::record(ctx, &outcome).await;
        Ok(ToolResult::text(outcome?.content))
    })
    .await
}

/// `kimi_chat_with_files`: returns `{"model", "content", "file_ids"}` (the ids actually read,
/// which differ from those asked for when a lost file was restored).
pub async fn chat_with_files(ctx: &ToolCtx<'_>) -> Result<ToolResult, JobError> {
    let args: ChatWithFilesArgs = ctx.args()?;
    let model = args
        .model
        .unwrap_or_else(|| tools::DEFAULT_FILES_MODEL.to_owned());
    if Provider::for_model(&model) != Some(Provider::Kimi) {
        return Err(JobError::Permanent(format!(
            "kimi_chat_with_files needs a Kimi model, not `{model}`"
        )));
    }
    let guard = ctx.permits().await?;
    let token = guard.as_ref().map(|g| g.token().to_owned());
    permits::holding(ctx.state, guard, async {
        let (mut messages, used) = file_messages(ctx, &args.file_ids).await?;
        messages.push(ChatMessage::user(args.prompt));
        let provider = ctx.provider_semaphore();
        let request = ChatRequest {
            model,
            messages,
            temperature: Some(args.temperature.unwrap_or(0.3)),
            max_tokens: budget::max_completion_tokens(ctx.state, provider),
        };
        let reserved =
            budget::reserve(ctx.state, ctx.lease, token.as_deref(), provider, &request).await?;
        let outcome = ctx
            .state
            .providers
            .moonshot
            .chat()
            .stream(&request, ctx.chunk_sink())
            .await;
        budget::settle(ctx.state, reserved, &outcome).await;
        permits::observe(ctx.state, ctx.provider_semaphore(), &outcome).await;
        usage::record(ctx, &outcome).await;
        let completion = outcome?;
        json_result(&json!({
            "model": completion.model,
            "content": completion.content,
            "file_ids": used,
        }))
    })
    .await
}

/// One `system` message per file, holding its extracted text, and the file ids used.
async fn file_messages(
    ctx: &ToolCtx<'_>,
    file_ids: &[String],
) -> Result<(Vec<ChatMessage>, Vec<String>), JobError> {
    let mut messages = Vec::with_capacity(file_ids.len());
    let mut used = Vec::with_capacity(file_ids.len());
    for id in file_ids {
        let (id, text) = file_text(ctx, id).await?;
        messages.push(ChatMessage::system(text));
        used.push(id);
    }
    Ok((messages, used))
}

/// The extracted text of Moonshot file `id`, restoring the file from storage if Moonshot lost
/// it. Returns the id the text was read from.
async fn file_text(ctx: &ToolCtx<'_>, id: &str) -> Result<(String, String), JobError> {
    let moonshot = &ctx.state.providers.moonshot;
    match moonshot.file_content(id).await {
        Ok(text) => return Ok((id.to_owned(), text)),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let db = &ctx.state.db;
    let row = db::find_by_provider_file_id(db, Provider::Kimi.as_str(), id)
        .await
        .map_err(JobError::from)?
        .ok_or_else(|| {
            JobError::Permanent(format!(
                "file {id} is not on Moonshot and no upload of it is recorded"
            ))
        })?;
    // Another live row may already hold the same bytes (restored earlier, or re-uploaded).
    if let Some(sha256) = row.sha256.as_deref()
        && let Some(live) = db::find_live(db, Provider::Kimi.as_str(), sha256)
            .await
            .map_err(JobError::from)?
        && live.provider_file_id != id
    {
        match moonshot.file_content(&live.provider_file_id).await {
            Ok(text) => return Ok((live.provider_file_id, text)),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    ctx.progress(format!("restoring file {id} from storage"))
        .await;
    let restored = uploads::restore_from_storage(ctx.state, &row, ctx.job_id()).await?;
    let text = moonshot.file_content(&restored.file_id).await?;
    Ok((restored.file_id, text))
}

//! An OpenAI-compatible chat-completions client (`POST {base}/chat/completions`), plain and
//! streamed (server-sent events). Moonshot and GLM both speak this dialect; [`ChatClient`] is
//! the one implementation both use.
//!
//! Streaming: `data: {chunk}` events separated by blank lines, ending with `data: [DONE]`. Each
//! chunk's `choices[0].delta.content` is handed to the caller as it arrives; the finish reason
//! and usage are read wherever the provider puts them (Moonshot puts `usage` inside the last
//! choice, OpenAI's `stream_options.include_usage` adds a chunk with top-level `usage`). A
//! stream that ends without `[DONE]` or a finish reason is a transient error: the answer is
//! incomplete.

use std::time::Duration;

use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::{ProviderError, classify_openai};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system".to_owned(),
            content: content.into(),
        }
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".to_owned(),
            content: content.into(),
        }
    }
}

/// What to ask the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The model name.
    pub model: String,
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature, when the caller chose one.
    pub temperature: Option<f64>,
    /// The most tokens to generate, when bounded.
    pub max_tokens: Option<u32>,
}

impl ChatRequest {
    fn body(&self, stream: bool) -> Value {
        let mut body = json!({
            "model": self.model,
            "messages": self.messages,
            "stream": stream,
        });
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = self.max_tokens {
            body["max_tokens"] = json!(m);
        }
        body
    }
}

/// A finished completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatCompletion {
    /// The model that answered (as the provider reports it).
    pub model: String,
    /// The assistant's text.
    pub content: String,
    /// `stop`, `length`, … when reported.
    pub finish_reason: Option<String>,
    /// The provider's usage object, when reported.
    pub usage: Option<Value>,
}

/// A chat-completions client for one OpenAI-compatible provider. Cheap to clone.
#[derive(Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    provider: &'static str,
    /// The base URL ending in the API version (`…/v1`), without a trailing slash.
    base: String,
    /// The bearer key; `None` makes every call a permanent "not configured" error.
    key: Option<SecretString>,
    /// The variable that holds the key, for the "not configured" message.
    key_var: &'static str,
    /// The longest a whole non-streamed call may take (`KIMI_TIMEOUT_SECS`,
    /// `GLM_TIMEOUT_SECS`).
    timeout: Duration,
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClient")
            .field("provider", &self.provider)
            .field("base", &self.base)
            .field("key_set", &self.key.is_some())
            .finish()
    }
}

impl ChatClient {
    /// A client for `provider` at `base` (e.g. `https://api.moonshot.ai/v1`), with the default
    /// whole-call timeout of [`ProviderTimeouts`](crate::config::ProviderTimeouts) (see
    /// [`Self::with_timeout`]).
    pub fn new(
        http: reqwest::Client,
        provider: &'static str,
        base: &str,
        key: Option<SecretString>,
        key_var: &'static str,
    ) -> Self {
        Self {
            http,
            provider,
            base: base.trim_end_matches('/').to_owned(),
            key,
            key_var,
            timeout: crate::config::ProviderTimeouts::default().kimi_chat,
        }
    }

    /// The same client whose non-streamed calls may take `timeout` in all (streamed ones are
    /// bounded by the HTTP client's read timeout between chunks instead).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The whole-call timeout of a non-streamed completion.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The provider's name (`moonshot`, `glm`).
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    fn key(&self, operation: &'static str) -> Result<&SecretString, ProviderError> {
        self.key.as_ref().ok_or_else(|| {
            ProviderError::permanent(
                self.provider,
                operation,
                format!("{} is not set", self.key_var),
            )
        })
    }

    async fn send(
        &self,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::Response, ProviderError> {
        let op = "chat";
        let key = self.key(op)?;
        let mut builder = self
            .http
            .post(format!("{}/chat/completions", self.base))
            .bearer_auth(key.expose_secret())
            .json(&req.body(stream));
        if !stream {
            builder = builder.timeout(self.timeout);
        }
        let resp = builder
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(self.provider, op, &e))?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        Err(classify_openai(self.provider, op, status, &headers, &body))
    }

    /// One completion, not streamed.
    pub async fn complete(&self, req: &ChatRequest) -> Result<ChatCompletion, ProviderError> {
        let resp = self.send(req, false).await?;
        let value: Value = resp
            .json()
            .await
            .map_err(|e| ProviderError::from_reqwest(self.provider, "chat", &e))?;
        let choice = value.pointer("/choices/0").ok_or_else(|| {
            ProviderError::transient(self.provider, "chat", "response without choices")
        })?;
        Ok(ChatCompletion {
            model: value
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or(&req.model)
                .to_owned(),
            content: choice
                .pointer("/message/content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            finish_reason: choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
            usage: value.get("usage").filter(|u| !u.is_null()).cloned(),
        })
    }

    /// One completion, streamed: `on_chunk` is called with each piece of text as it arrives
    /// (awaited before the next is read, so a slow consumer slows the read, never buffers it
    /// all). Returns the whole answer.
    pub async fn stream<F, Fut>(
        &self,
        req: &ChatRequest,
        mut on_chunk: F,
    ) -> Result<ChatCompletion, ProviderError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let op = "chat";
        let resp = self.send(req, true).await?;
        let mut completion = ChatCompletion {
            model: req.model.clone(),
            content: String::new(),
            finish_reason: None,
            usage: None,
        };
        let mut decoder = SseDecoder::default();
        let mut body = resp.bytes_stream();
        let mut done = false;
        while !done {
            let Some(chunk) = body.next().await else {
                break;
            };
            let chunk = chunk.map_err(|e| ProviderError::from_reqwest(self.provider, op, &e))?;
            for data in decoder.push(&chunk) {
                if data.trim() == "[DONE]" {
                    done = true;
                    break;
                }
                let event: Value = serde_json::from_str(&data).map_err(|e| {
                    ProviderError::transient(self.provider, op, format!("bad stream event: {e}"))
                })?;
                if let Some(err) = event.get("error") {
                    return Err(ProviderError::transient(
                        self.provider,
                        op,
                        format!("error inside the stream: {err}"),
                    ));
                }
                if let Some(model) = event.get("model").and_then(Value::as_str) {
                    completion.model = model.to_owned();
                }
                if let Some(usage) = event.get("usage").filter(|u| !u.is_null()) {
                    completion.usage = Some(usage.clone());
                }
                let Some(choice) = event.pointer("/choices/0") else {
                    continue;
                };
                if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                    completion.finish_reason = Some(reason.to_owned());
                }
                if let Some(usage) = choice.get("usage").filter(|u| !u.is_null()) {
                    completion.usage = Some(usage.clone());
                }
                if let Some(text) = choice.pointer("/delta/content").and_then(Value::as_str)
                    && !text.is_empty()
                {
                    completion.content.push_str(text);
                    on_chunk(text.to_owned()).await;
                }
            }
        }
        if !done && completion.finish_reason.is_none() {
            return Err(ProviderError::transient(
                self.provider,
                op,
                "the stream ended before the answer was complete",
            ));
        }
        Ok(completion)
    }
}

/// Splits a server-sent-events byte stream into the `data` of each event.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of an unfinished line.
    line: Vec<u8>,
    /// The `data` lines of the event being read, joined by `\n`.
    data: Option<String>,
}

impl SseDecoder {
    /// Feeds bytes; returns the data of every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = std::mem::take(&mut self.line);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    events.push(data);
                }
                continue;
            }
            let line = String::from_utf8_lossy(&line);
            if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                }
            }
            // `event:`, `id:`, `retry:` and `:` comments carry nothing we use.
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_arbitrary_chunk_boundaries() {
        let stream =
            b"data: {\"a\":1}\n\n: comment\r\ndata: {\"b\":\r\ndata: 2}\r\n\r\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut d = SseDecoder::default();
            let mut events = d.push(&stream[..split]);
            events.extend(d.push(&stream[split..]));
            assert_eq!(
                events,
                ["{\"a\":1}", "{\"b\":\n2}", "[DONE]"],
                "split at {split}"
            );
        }
    }
}

//! Zhipu GLM: an OpenAI-compatible chat-completions API (`GLM_API_URL`, `GLM_API_KEY`), served
//! by the same [`ChatClient`] as Moonshot's chat. GLM's file API is not used: uploads go to
//! Moonshot only.

use super::openai::ChatClient;
use crate::config::ProviderConfig;

/// A chat client for GLM.
pub fn chat_client(http: reqwest::Client, config: &ProviderConfig) -> ChatClient {
    ChatClient::new(
        http,
        "glm",
        &config.api_url,
        config.api_key.clone(),
        "GLM_API_KEY",
    )
}

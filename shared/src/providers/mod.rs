//! HTTP clients of the providers the workers call: Moonshot (files and chat), GLM (chat) and
//! Supabase Storage. `reqwest` with streaming bodies in both directions: an upload streams the
//! file from disk in [`STREAM_CHUNK`] pieces, a download is handed over as a byte stream, chat
//! answers are read as server-sent events. Nothing here reads a whole file into memory.
//!
//! - [`error`]: [`ProviderError`], classified transient or permanent where the response is read,
//!   and mapped onto [`JobError`](crate::jobs::JobError).
//! - [`openai`]: the OpenAI-compatible [`ChatClient`] (plain and SSE), used by Moonshot and GLM.
//! - [`moonshot`]: [`MoonshotClient`], the files API and chat.
//! - [`glm`]: GLM's chat client.
//! - [`supabase`]: [`SupabaseStorage`], one bucket's objects.
//!
//! Keys are `SecretString`s, exposed only while a request header is built; no `Debug` output or
//! error message carries one. Every timeout is a setting
//! ([`ProviderTimeouts`](crate::config::ProviderTimeouts), `KIMI_SUPABASE_TIMEOUT` for Supabase).

pub mod error;
pub mod glm;
pub mod moonshot;
pub mod openai;
pub mod supabase;

pub use error::{ErrorKind, ProviderError};
pub use moonshot::{FileObject, MoonshotClient};
pub use openai::{ChatClient, ChatCompletion, ChatMessage, ChatRequest};
pub use supabase::{ListedObject, StoredObject, SupabaseStorage};

use crate::config::{Config, ProviderTimeouts};

/// The piece size of streamed request bodies (files read from disk).
pub const STREAM_CHUNK: usize = 64 * 1024;

/// The HTTP client every provider client shares (one connection pool per process), with the
/// connect timeout (`EXAI_PROVIDER_CONNECT_TIMEOUT_SECS`) and the longest pause between two
/// reads of a response (`EXAI_PROVIDER_READ_TIMEOUT_SECS`).
pub fn http_client(timeouts: &ProviderTimeouts) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .read_timeout(timeouts.read)
        .user_agent(concat!("exai-queue/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::permanent("http", "client", e.to_string()))
}

/// The MIME type of a file by its name's extension; `application/octet-stream` when unknown.
pub fn guess_mime(filename: &str) -> String {
    mime_guess::from_path(filename)
        .first_raw()
        .unwrap_or("application/octet-stream")
        .to_owned()
}

/// Every provider client of a process.
#[derive(Debug, Clone)]
pub struct Providers {
    /// Moonshot: files and chat.
    pub moonshot: MoonshotClient,
    /// GLM: chat.
    pub glm: ChatClient,
    /// Supabase Storage; `None` when `SUPABASE_URL` or `SUPABASE_SERVICE_ROLE_KEY` is unset.
    pub supabase: Option<SupabaseStorage>,
}

impl Providers {
    /// The clients the configuration describes, with its timeouts.
    pub fn from_config(config: &Config) -> Result<Self, ProviderError> {
        let timeouts = &config.provider_timeouts;
        let http = http_client(timeouts)?;
        Ok(Self {
            moonshot: MoonshotClient::new(http.clone(), &config.kimi).with_timeouts(timeouts),
            glm: glm::chat_client(http.clone(), &config.glm).with_timeout(timeouts.glm_chat),
            supabase: SupabaseStorage::from_config(http, &config.supabase),
        })
    }
}

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
//! error message carries one.

pub mod error;
pub mod glm;
pub mod moonshot;
pub mod openai;
pub mod supabase;

use std::time::Duration;

pub use error::{ErrorKind, ProviderError};
pub use moonshot::{FileObject, MoonshotClient};
pub use openai::{ChatClient, ChatCompletion, ChatMessage, ChatRequest};
pub use supabase::{ListedObject, StoredObject, SupabaseStorage};

use crate::config::Config;

/// The piece size of streamed request bodies (files read from disk).
pub const STREAM_CHUNK: usize = 64 * 1024;

/// How long establishing a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest pause between two reads of a response: a stalled stream fails after it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// The whole-request timeout of small JSON calls (list, get, delete).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The whole-request timeout of reading a file's extracted text.
pub const CONTENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The whole-request timeout of a non-streamed chat completion (streamed ones are bounded by
/// [`READ_TIMEOUT`] between chunks instead).
pub const CHAT_TIMEOUT: Duration = Duration::from_secs(600);

/// The HTTP client every provider client shares (one connection pool per process).
pub fn http_client() -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
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
    /// The clients the configuration describes.
    pub fn from_config(config: &Config) -> Result<Self, ProviderError> {
        let http = http_client()?;
        Ok(Self {
            moonshot: MoonshotClient::new(http.clone(), &config.kimi),
            glm: glm::chat_client(http.clone(), &config.glm),
            supabase: SupabaseStorage::from_config(http, &config.supabase),
        })
    }
}

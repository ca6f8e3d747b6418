//! HTTP clients of the providers the workers call: Moonshot (files and chat), GLM (chat) and
//! Supabase Storage. `reqwest` with streaming bodies in both directions: an upload streams the
//! file from disk in [`STREAM_CHUNK`] pieces ([`file_body`]; a file of one piece or less is read
//! in one go), a download is handed over as a byte stream, chat answers are read as server-sent
//! events. Nothing here reads more than one piece of a file into memory.
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

/// The piece size of streamed request bodies (files read from disk): each piece is one read on
/// the blocking pool, so a 100 MiB upload takes 400 of them; the piece is also the most of a
/// file an upload holds in memory.
pub const STREAM_CHUNK: usize = 256 * 1024;

/// The bytes of the file at `path`, which must have `size` bytes, as a request body: a file of
/// at most [`STREAM_CHUNK`] bytes is read in one blocking call and sent from memory; a larger
/// one is streamed from disk in [`STREAM_CHUNK`] pieces. A file that cannot be opened, or whose
/// size is not `size`, is a permanent error of `provider`'s `op`.
pub async fn file_body(
    provider: &'static str,
    op: &'static str,
    path: &std::path::Path,
    size: u64,
) -> Result<reqwest::Body, ProviderError> {
    let mismatch = |on_disk: u64| {
        ProviderError::permanent(
            provider,
            op,
            format!("{} has {on_disk} bytes, expected {size}", path.display()),
        )
    };
    let cannot_open = |e: std::io::Error| {
        ProviderError::permanent(provider, op, format!("cannot open {}: {e}", path.display()))
    };
    if size <= STREAM_CHUNK as u64 {
        // One read of at most one piece more than expected tells a file that grew.
        let owned = path.to_owned();
        let read = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut bytes = Vec::with_capacity(size as usize + 1);
            std::fs::File::open(&owned)?
                .take(size + 1)
                .read_to_end(&mut bytes)?;
            Ok::<_, std::io::Error>(bytes)
        })
        .await
        .map_err(|e| ProviderError::transient(provider, op, format!("read task: {e}")))?;
        let bytes = read.map_err(cannot_open)?;
        if bytes.len() as u64 != size {
            return Err(mismatch(bytes.len() as u64));
        }
        return Ok(reqwest::Body::from(bytes));
    }
    let file = tokio::fs::File::open(path).await.map_err(cannot_open)?;
    let on_disk = file
        .metadata()
        .await
        .map_err(|e| {
            ProviderError::transient(provider, op, format!("stat {}: {e}", path.display()))
        })?
        .len();
    if on_disk != size {
        return Err(mismatch(on_disk));
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file, STREAM_CHUNK);
    Ok(reqwest::Body::wrap_stream(stream))
}

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

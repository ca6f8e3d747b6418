//! The Moonshot (Kimi) API: files (`/files` upload, list, retrieve, content, delete) and chat
//! completions (through [`ChatClient`]).
//!
//! An upload streams the file from disk as the multipart part `file` (with its filename and
//! length, so the request has a `Content-Length`), next to the form field `purpose`; the file is
//! never read into memory. File ids are opaque (historic ids are 20 base32 characters, newer ones
//! may start with `file_`): they are percent-encoded as one path segment.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ProviderError, classify_openai};
use super::openai::ChatClient;
use crate::config::{ProviderConfig, ProviderTimeouts};

const PROVIDER: &str = "moonshot";

/// What a file id may be before it goes into a URL: 1 to 128 of `[A-Za-z0-9_-]`. The tools'
/// schemas use [`FILE_ID_PATTERN`], so the daemon refuses anything else before it is enqueued;
/// [`is_valid_file_id`] checks the same again here, so an id such as `.` or `..` can never
/// rewrite a files URL (`DELETE /v1/files/..` is `DELETE /v1/files`).
pub const FILE_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,128}$";

/// Whether `id` matches [`FILE_ID_PATTERN`].
pub fn is_valid_file_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The purpose whose files chat can read (`/content` returns their extracted text).
pub const PURPOSE_FILE_EXTRACT: &str = "file-extract";

/// The purposes Moonshot accepts on upload; anything else is a 400 "Invalid purpose".
pub const PURPOSES: [&str; 4] = ["file-extract", "image", "video", "batch"];

/// A file as Moonshot describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileObject {
    /// The opaque file id.
    pub id: String,
    /// Size in bytes.
    #[serde(default)]
    pub bytes: u64,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: i64,
    /// The uploaded part's filename.
    #[serde(default)]
    pub filename: String,
    /// The purpose it was uploaded with.
    #[serde(default)]
    pub purpose: String,
    /// `ok` (or `ready` in some documentation).
    #[serde(default)]
    pub status: String,
}

/// A client of the Moonshot API. Cheap to clone.
#[derive(Clone)]
pub struct MoonshotClient {
    http: reqwest::Client,
    /// `KIMI_API_URL` without a trailing slash (`…/v1`).
    base: String,
    key: Option<SecretString>,
    chat: ChatClient,
    /// The files API's timeouts (`EXAI_PROVIDER_REQUEST_TIMEOUT_SECS`,
    /// `KIMI_FILES_FETCH_TIMEOUT_SECS`, `KIMI_FILES_UPLOAD_TIMEOUT_SECS`,
    /// `KIMI_FILES_UPLOAD_MIN_BYTES_PER_SEC`).
    timeouts: ProviderTimeouts,
}

impl std::fmt::Debug for MoonshotClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoonshotClient")
            .field("base", &self.base)
            .field("key_set", &self.key.is_some())
            .finish()
    }
}

impl MoonshotClient {
    /// A client for `KIMI_API_URL` / `KIMI_API_KEY`, with the default timeouts (see
    /// [`Self::with_timeouts`]).
    pub fn new(http: reqwest::Client, config: &ProviderConfig) -> Self {
        let base = config.api_url.trim_end_matches('/').to_owned();
        Self {
            chat: ChatClient::new(
                http.clone(),
                PROVIDER,
                &base,
                config.api_key.clone(),
                "KIMI_API_KEY",
            ),
            http,
            base,
            key: config.api_key.clone(),
            timeouts: ProviderTimeouts::default(),
        }
    }

    /// The same client with these timeouts (the files API's, and `kimi_chat` for chat).
    pub fn with_timeouts(mut self, timeouts: &ProviderTimeouts) -> Self {
        self.chat = self.chat.with_timeout(timeouts.kimi_chat);
        self.timeouts = *timeouts;
        self
    }

    /// Chat completions on Moonshot.
    pub fn chat(&self) -> &ChatClient {
        &self.chat
    }

    fn key(&self, operation: &'static str) -> Result<&str, ProviderError> {
        self.key
            .as_ref()
            .map(|k| k.expose_secret())
            .ok_or_else(|| ProviderError::permanent(PROVIDER, operation, "KIMI_API_KEY is not set"))
    }

    /// `{base}/files[/{id}[/{tail}]]`, the id percent-encoded as one segment; an id that does
    /// not match [`FILE_ID_PATTERN`] is a permanent error and no request is made.
    fn files_url(
        &self,
        id: Option<&str>,
        tail: Option<&str>,
    ) -> Result<reqwest::Url, ProviderError> {
        if let Some(id) = id
            && !is_valid_file_id(id)
        {
            return Err(ProviderError::permanent(
                PROVIDER,
                "url",
                "file_id must match ^[A-Za-z0-9_-]{1,128}$",
            ));
        }
        let mut url = reqwest::Url::parse(&format!("{}/files", self.base)).map_err(|e| {
            ProviderError::permanent(
                PROVIDER,
                "url",
                format!("KIMI_API_URL is not a valid URL: {e}"),
            )
        })?;
        {
            let mut segments = url.path_segments_mut().map_err(|()| {
                ProviderError::permanent(PROVIDER, "url", "KIMI_API_URL cannot be a base URL")
            })?;
            if let Some(id) = id {
                segments.push(id);
            }
            if let Some(tail) = tail {
                segments.push(tail);
            }
        }
        Ok(url)
    }

    /// Sends `builder`; a non-success status becomes a classified error.
    async fn send(
        &self,
        operation: &'static str,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        let resp = builder
            .bearer_auth(self.key(operation)?)
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(PROVIDER, operation, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        Err(classify_openai(
            PROVIDER, operation, status, &headers, &body,
        ))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        operation: &'static str,
        resp: reqwest::Response,
    ) -> Result<T, ProviderError> {
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ProviderError::from_reqwest(PROVIDER, operation, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ProviderError::transient(
                PROVIDER,
                operation,
                format!(
                    "unexpected response ({e}): {}",
                    super::error::snippet(&String::from_utf8_lossy(&bytes))
                ),
            )
        })
    }

    /// Uploads the file at `path` (exactly `size` bytes, checked) as `filename`, streamed from
    /// disk ([`file_body`](super::file_body)). Moonshot's own limits (0 bytes, over 100 MB, 1,000 files) come back as permanent
    /// errors.
    pub async fn upload_file(
        &self,
        path: &Path,
        filename: &str,
        size: u64,
        purpose: &str,
        mime_type: Option<&str>,
    ) -> Result<FileObject, ProviderError> {
        let op = "upload";
        let body = super::file_body(PROVIDER, op, path, size).await?;
        let mut part =
            reqwest::multipart::Part::stream_with_length(body, size).file_name(filename.to_owned());
        if let Some(mime) = mime_type {
            part = part.mime_str(mime).map_err(|e| {
                ProviderError::permanent(PROVIDER, op, format!("bad MIME type `{mime}`: {e}"))
            })?;
        }
        let form = reqwest::multipart::Form::new()
            .text("purpose", purpose.to_owned())
            .part("file", part);
        let builder = self
            .http
            .post(self.files_url(None, None)?)
            .timeout(self.timeouts.upload(size))
            .multipart(form);
        let resp = self.send(op, builder).await?;
        let object: FileObject = Self::json(op, resp).await?;
        if object.id.is_empty() {
            return Err(ProviderError::transient(
                PROVIDER,
                op,
                "the response names no file id",
            ));
        }
        Ok(object)
    }

    /// Every file of the account (`GET /files`; Moonshot documents no pagination).
    pub async fn list_files(&self) -> Result<Vec<FileObject>, ProviderError> {
        let op = "list files";
        let builder = self
            .http
            .get(self.files_url(None, None)?)
            .timeout(self.timeouts.request);
        let value: Value = Self::json(op, self.send(op, builder).await?).await?;
        let data = value
            .get("data")
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        serde_json::from_value(data).map_err(|e| {
            ProviderError::transient(PROVIDER, op, format!("unexpected file list: {e}"))
        })
    }

    /// One file's description; a missing file is a permanent error whose
    /// [`is_not_found`](ProviderError::is_not_found) is true.
    pub async fn get_file(&self, id: &str) -> Result<FileObject, ProviderError> {
        let op = "get file";
        let builder = self
            .http
            .get(self.files_url(Some(id), None)?)
            .timeout(self.timeouts.request);
        Self::json(op, self.send(op, builder).await?).await
    }

    /// A `file-extract` file's extracted text. Real responses are JSON with `content` (the
    /// documentation says plain text): JSON with a string `content` gives that, anything else
    /// the body as it is.
    pub async fn file_content(&self, id: &str) -> Result<String, ProviderError> {
        let op = "file content";
        let builder = self
            .http
            .get(self.files_url(Some(id), Some("content"))?)
            .timeout(self.timeouts.file_content);
        let text = self
            .send(op, builder)
            .await?
            .text()
            .await
            .map_err(|e| ProviderError::from_reqwest(PROVIDER, op, &e))?;
        Ok(extracted_text(text))
    }

    /// Deletes a file; `false` when Moonshot did not have it (404), which is what a delete
    /// wants anyway.
    pub async fn delete_file(&self, id: &str) -> Result<bool, ProviderError> {
        let op = "delete file";
        let builder = self
            .http
            .delete(self.files_url(Some(id), None)?)
            .timeout(self.timeouts.request);
        match self.send(op, builder).await {
            Ok(resp) => {
                let value: Value = Self::json(op, resp).await?;
                Ok(value
                    .get("deleted")
                    .and_then(Value::as_bool)
                    .unwrap_or(true))
            }
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The text of a `/content` answer: `content` of a JSON document, else the body itself.
fn extracted_text(body: String) -> String {
    match serde_json::from_str::<Value>(&body) {
        Ok(Value::Object(map)) => match map.get("content") {
            Some(Value::String(s)) => s.clone(),
            _ => body,
        },
        _ => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_read_from_json_or_taken_as_text() {
        let json = r#"{"content":"hello","file_type":"text/plain","filename":"a.txt","title":"","type":"file"}"#;
        assert_eq!(extracted_text(json.to_owned()), "hello");
        assert_eq!(extracted_text("plain text".to_owned()), "plain text");
        assert_eq!(
            extracted_text(r#"{"other":1}"#.to_owned()),
            r#"{"other":1}"#
        );
    }

    #[test]
    fn file_ids_are_one_encoded_path_segment() {
        let c = MoonshotClient::new(
            reqwest::Client::new(),
            &ProviderConfig {
                api_key: None,
                api_url: "http://h:1/v1/".to_owned(),
            },
        );
        assert_eq!(
            c.files_url(Some("file_A-9"), Some("content"))
                .unwrap()
                .as_str(),
            "http://h:1/v1/files/file_A-9/content"
        );
        let long = "a".repeat(129);
        for bad in [".", "..", "a/b?c", "", "a b", long.as_str()] {
            assert!(c.files_url(Some(bad), None).is_err(), "{bad:?}");
        }
        assert!(is_valid_file_id(&"a".repeat(128)));
        assert_eq!(
            c.files_url(None, None).unwrap().as_str(),
            "http://h:1/v1/files"
        );
    }

    #[test]
    fn configured_timeouts_reach_the_files_api_and_chat() {
        let config = ProviderConfig {
            api_key: None,
            api_url: "http://h:1/v1".to_owned(),
        };
        let c = MoonshotClient::new(reqwest::Client::new(), &config);
        assert_eq!(c.timeouts, ProviderTimeouts::default());
        let timeouts = ProviderTimeouts {
            kimi_chat: std::time::Duration::from_secs(40),
            upload_base: std::time::Duration::from_secs(90),
            ..ProviderTimeouts::default()
        };
        let c = c.with_timeouts(&timeouts);
        assert_eq!(c.timeouts, timeouts);
        assert_eq!(c.chat().timeout(), std::time::Duration::from_secs(40));
    }
}

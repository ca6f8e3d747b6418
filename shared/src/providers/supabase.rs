//! Supabase Storage (`{SUPABASE_URL}/storage/v1`): the durable copy of every uploaded file.
//!
//! Objects are written with a **raw body** streamed from disk (`Content-Type` = the file's MIME
//! type, an explicit `Content-Length`, `x-upsert: true`), so a re-run of the same push overwrites
//! its own object instead of failing with `Duplicate`, and the file is never read into memory.
//! Every request carries the service-role key as `Authorization: Bearer` and as `apikey` (the
//! hosted gateway checks the latter). Handled errors arrive as HTTP 400 with the real status in
//! the body (see [`classify_supabase`](super::error)).

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::error::{ProviderError, classify_supabase};
use crate::config::SupabaseConfig;

const PROVIDER: &str = "supabase";

/// The folder of the bucket that holds the copies of Moonshot uploads.
pub const KIMI_UPLOADS_PREFIX: &str = "kimi-uploads";

/// The object path of a Moonshot file's copy: `kimi-uploads/{provider_file_id}`.
pub fn kimi_object_path(provider_file_id: &str) -> String {
    format!("{KIMI_UPLOADS_PREFIX}/{provider_file_id}")
}

/// How many objects one list request asks for (the server's default page).
pub const LIST_PAGE: usize = 100;

/// An object as the list call describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// The object's full path inside the bucket (`folder/name`).
    pub path: String,
    /// Size in bytes (`metadata.size`; 0 when the server gives none).
    pub size: u64,
    /// When it was created.
    pub created_at: Option<DateTime<Utc>>,
    /// When it was last written.
    pub updated_at: Option<DateTime<Utc>>,
}

impl ListedObject {
    /// The later of its creation and last write: how recent the object is.
    pub fn last_written(&self) -> Option<DateTime<Utc>> {
        self.created_at.max(self.updated_at)
    }
}

/// What an upload stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The object's id (`Id`), or its `Key` when the server returns no id.
    pub id: String,
    /// The path inside the bucket.
    pub path: String,
}

/// A client of one Supabase Storage bucket. Cheap to clone.
#[derive(Clone)]
pub struct SupabaseStorage {
    http: reqwest::Client,
    /// `{SUPABASE_URL}/storage/v1`.
    base: String,
    key: SecretString,
    bucket: String,
    /// The per-attempt timeout of a whole request (`KIMI_SUPABASE_TIMEOUT`).
    timeout: Duration,
}

impl std::fmt::Debug for SupabaseStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupabaseStorage")
            .field("base", &self.base)
            .field("bucket", &self.bucket)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SupabaseStorage {
    /// A client for `SUPABASE_URL`, `SUPABASE_SERVICE_ROLE_KEY` and `SUPABASE_BUCKET`; `None`
    /// when the URL or the key is not set.
    pub fn from_config(http: reqwest::Client, config: &SupabaseConfig) -> Option<Self> {
        let url = config.url.as_ref()?;
        let key = config.service_role_key.clone()?;
        Some(Self {
            http,
            base: format!("{}/storage/v1", url.trim_end_matches('/')),
            key,
            bucket: config.bucket.clone(),
            timeout: config.timeout,
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `{base}/{segments…}`, each segment percent-encoded; `path` is split on `/`.
    fn url(&self, head: &[&str], path: Option<&str>) -> Result<reqwest::Url, ProviderError> {
        let mut url = reqwest::Url::parse(&self.base).map_err(|e| {
            ProviderError::permanent(
                PROVIDER,
                "url",
                format!("SUPABASE_URL is not a valid URL: {e}"),
            )
        })?;
        {
            let mut segments = url.path_segments_mut().map_err(|()| {
                ProviderError::permanent(PROVIDER, "url", "SUPABASE_URL cannot be a base URL")
            })?;
            segments.pop_if_empty();
            segments.extend(head);
            if let Some(path) = path {
                segments.extend(path.split('/'));
            }
        }
        Ok(url)
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let key = self.key.expose_secret();
        builder.bearer_auth(key).header("apikey", key)
    }

    async fn send(
        &self,
        operation: &'static str,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        let resp = self
            .authorized(builder)
            .send()
            .await
            .map_err(|e| ProviderError::from_reqwest(PROVIDER, operation, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        Err(classify_supabase(operation, status, &headers, &body))
    }

    /// Creates the bucket, private, unless it exists. Returns whether it was created.
    pub async fn ensure_bucket(&self) -> Result<bool, ProviderError> {
        let get = self
            .http
            .get(self.url(&["bucket", &self.bucket], None)?)
            .timeout(self.timeout);
        match self.send("get bucket", get).await {
            Ok(_) => return Ok(false),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let create = self
            .http
            .post(self.url(&["bucket"], None)?)
            .timeout(self.timeout)
            .json(&json!({"id": self.bucket, "name": self.bucket, "public": false}));
        match self.send("create bucket", create).await {
            Ok(_) => Ok(true),
            // Another worker created it in the meantime.
            Err(e) if e.status == Some(409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes the file at `path_on_disk` (exactly `size` bytes) to `object_path`, streamed,
    /// overwriting any object there (`x-upsert: true`), within the per-attempt timeout.
    pub async fn upload_file(
        &self,
        object_path: &str,
        path_on_disk: &Path,
        size: u64,
        mime_type: &str,
    ) -> Result<StoredObject, ProviderError> {
        let op = "upload";
        let body = super::file_body(PROVIDER, op, path_on_disk, size).await?;
        let builder = self
            .http
            .post(self.url(&["object", &self.bucket], Some(object_path))?)
            .timeout(self.timeout)
            .header("x-upsert", "true")
            .header(reqwest::header::CONTENT_TYPE, mime_type)
            .header(reqwest::header::CONTENT_LENGTH, size)
            .header(reqwest::header::CACHE_CONTROL, "max-age=3600")
            .body(body);
        let resp = self.send(op, builder).await?;
        let value: Value = resp
            .json()
            .await
            .map_err(|e| ProviderError::from_reqwest(PROVIDER, op, &e))?;
        let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
        let id = field("Id")
            .or_else(|| field("id"))
            .or_else(|| field("Key"))
            .unwrap_or_else(|| format!("{}/{object_path}", self.bucket));
        Ok(StoredObject {
            id,
            path: object_path.to_owned(),
        })
    }

    /// Starts reading an object: the response, whose body the caller streams (with
    /// `bytes_stream`). The whole-request timeout is left to the caller, since a large object
    /// may legitimately take longer than one push attempt.
    pub async fn download(&self, object_path: &str) -> Result<reqwest::Response, ProviderError> {
        let builder = self
            .http
            .get(self.url(&["object", &self.bucket], Some(object_path))?);
        self.send("download", builder).await
    }

    /// Every object directly inside `folder` (`POST /object/list/{bucket}`, paged by
    /// [`LIST_PAGE`] in name order); sub-folders are left out. Paths come back whole
    /// (`folder/name`).
    pub async fn list_objects(&self, folder: &str) -> Result<Vec<ListedObject>, ProviderError> {
        let op = "list";
        let folder = folder.trim_end_matches('/');
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            let body = json!({
                "prefix": folder,
                "limit": LIST_PAGE,
                "offset": offset,
                "sortBy": {"column": "name", "order": "asc"},
            });
            let builder = self
                .http
                .post(self.url(&["object", "list", &self.bucket], None)?)
                .timeout(self.timeout)
                .json(&body);
            let resp = self.send(op, builder).await?;
            let page: Vec<Value> = resp.json().await.map_err(|e| {
                ProviderError::transient(PROVIDER, op, format!("unexpected object list: {e}"))
            })?;
            let rows = page.len();
            for row in page {
                let Some(name) = row.get("name").and_then(Value::as_str) else {
                    continue;
                };
                // Sub-folders come back with a null id.
                if row.get("id").is_none_or(Value::is_null) {
                    continue;
                }
                let time = |field: &str| {
                    row.get(field)
                        .and_then(Value::as_str)
                        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                        .map(|t| t.with_timezone(&Utc))
                };
                out.push(ListedObject {
                    path: if folder.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{folder}/{name}")
                    },
                    size: row
                        .pointer("/metadata/size")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    created_at: time("created_at"),
                    updated_at: time("updated_at"),
                });
            }
            if rows < LIST_PAGE {
                return Ok(out);
            }
            offset += rows;
        }
    }

    /// Deletes an object; `false` when it was not there.
    pub async fn delete(&self, object_path: &str) -> Result<bool, ProviderError> {
        let builder = self
            .http
            .delete(self.url(&["object", &self.bucket], Some(object_path))?)
            .timeout(self.timeout);
        match self.send("delete", builder).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_urls_keep_the_folder_and_encode_each_segment() {
        let s = SupabaseStorage::from_config(
            reqwest::Client::new(),
            &SupabaseConfig {
                url: Some("http://h:1/".to_owned()),
                service_role_key: Some("k".to_owned().into()),
                bucket: "user-files".to_owned(),
                upload_enabled: true,
                timeout: Duration::from_secs(1),
                retry_max_attempts: 1,
                retry_max: Duration::from_secs(1),
                retry_base: Duration::from_secs(1),
            },
        )
        .unwrap();
        assert_eq!(
            s.url(&["object", "user-files"], Some("kimi-uploads/a b"))
                .unwrap()
                .as_str(),
            "http://h:1/storage/v1/object/user-files/kimi-uploads/a%20b"
        );
        assert_eq!(
            s.url(&["bucket", "user-files"], None).unwrap().as_str(),
            "http://h:1/storage/v1/bucket/user-files"
        );
        assert_eq!(kimi_object_path("abc"), "kimi-uploads/abc");
    }
}

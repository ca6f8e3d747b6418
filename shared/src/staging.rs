//! The staging store: upload bytes between the moment they are received (by the daemon, or by a
//! worker reading an allowed path) and the moment they are safely in Moonshot and Supabase
//! Storage. Content-addressed by sha256, in a directory every process can read
//! (`EXAI_STAGING_DIR`, shared by default).
//!
//! # Layout and atomicity
//! ```text
//! {EXAI_STAGING_DIR}/blobs/ab/abcdef…(64 hex)   one blob per content, immutable once there
//! {EXAI_STAGING_DIR}/tmp/<uuid>.part            a blob being written
//! ```
//! A blob is written to a temporary file in `tmp/` while its sha256 is computed from the same
//! bytes (one pass, bounded memory), then `fsync`ed, renamed into `blobs/` (atomic on one file
//! system) and the directory `fsync`ed. A reader therefore sees a whole blob or none; a crash
//! leaves at most a `.part` file, never a torn blob. Staging the same content twice keeps the
//! first blob. Sizes are bounded while writing: a source that grows past the limit is cut off
//! and nothing is staged.
//!
//! # Lifetime of a blob
//! A blob is written by whoever receives the bytes: the daemon for `kimi_upload_bytes` (its job
//! then carries only the blob's sha256, see [`crate::jobs::StagedRef`]), a worker for an upload
//! by path or a file restored from Supabase Storage. It is read by the Moonshot upload and again
//! by the row's `storage_push` (every retry of it, and every re-drive), so it must outlive both.
//! The upload pipeline therefore never removes a blob (a concurrent job of the same content may
//! still be reading it); the orphan sweep removes those no pending job refers to, once older than
//! `EXAI_ORPHAN_GRACE_SECS`; staging content that is already there refreshes the blob's
//! modification time, so the grace period counts from the latest staging. The daemon and the workers must see the same `EXAI_STAGING_DIR`
//! (one machine, or a shared volume).
//!
//! # Inline bytes
//! [`plain_filename`] and [`decode_inline`] are the checks of `kimi_upload_bytes`: the file name
//! is reduced to its last component, and the size is checked against the limit from the length
//! of the base64 text, before anything is decoded or written.
//!
//! # Upload paths
//! [`validate_upload_path`] is the gate for uploads by path: the path must be absolute, resolve
//! (symlinks followed, [`std::fs::canonicalize`]) inside one of `EXAI_UPLOAD_ROOTS` (also
//! resolved), name a regular file, and have a size (from its metadata, before any byte is read)
//! between 1 byte and the limit (`EXAI_MAX_UPLOAD_BYTES`, 100 MiB, Moonshot's).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::config::UploadConfig;
use crate::jobs::JobError;

/// The piece size in which files are read while staging.
const READ_CHUNK: usize = 64 * 1024;

/// Why staging or validating an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// No upload roots are configured, so no path may be uploaded.
    #[error("uploads by path are disabled: EXAI_UPLOAD_ROOTS is not set")]
    NoRoots,
    /// The path is relative.
    #[error("path `{path}` must be absolute")]
    NotAbsolute {
        /// The path as given.
        path: String,
    },
    /// The path does not exist (or a component cannot be resolved).
    #[error("path `{path}` cannot be resolved: {reason}")]
    NotFound {
        /// The path as given.
        path: String,
        /// What the resolution said.
        reason: String,
    },
    /// The path resolves outside every upload root (`..`, or a symlink pointing out).
    #[error("path `{path}` is outside the allowed upload roots (EXAI_UPLOAD_ROOTS)")]
    OutsideRoots {
        /// The path as given.
        path: String,
    },
    /// The path is a directory, device, socket or FIFO.
    #[error("path `{path}` is not a regular file")]
    NotAFile {
        /// The path as given.
        path: String,
    },
    /// The content has no bytes (Moonshot refuses empty files).
    #[error("`{name}` is empty (0 bytes); empty files cannot be uploaded")]
    Empty {
        /// The file's name.
        name: String,
    },
    /// The content is larger than the limit.
    #[error("`{name}` is {size} bytes, over the upload limit of {limit} bytes")]
    TooLarge {
        /// The file's name.
        name: String,
        /// Its size (or the bytes read before giving up).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A string that is not 64 lowercase hex characters.
    #[error("`{0}` is not a sha256 (64 lowercase hex characters)")]
    InvalidHash(String),
    /// No blob with this hash is staged.
    #[error("staged blob {sha256} is missing")]
    Missing {
        /// The hash asked for.
        sha256: String,
    },
    /// The staged bytes do not have the size or hash they should have.
    #[error("staged content does not match: {0}")]
    Mismatch(String),
    /// The file system failed.
    #[error("staging I/O failed: {context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The source stream failed (a download cut short, a client gone).
    #[error("reading the content failed: {0}")]
    Source(String),
    /// A client's file name that names no file (empty, `.`, `..`, control characters).
    #[error("filename `{0}` is not a usable file name")]
    InvalidName(String),
    /// Inline content that is not base64.
    #[error("content_base64 is not valid base64: {0}")]
    InvalidBase64(String),
}

impl StagingError {
    fn io(context: impl fmt::Display, source: io::Error) -> Self {
        Self::Io {
            context: context.to_string(),
            source,
        }
    }

    /// Whether another attempt may succeed (I/O and source failures); validation failures are
    /// final.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Source(_))
    }

    /// The [`JobError`] for this failure.
    pub fn into_job_error(self) -> JobError {
        let message = crate::error_chain(&self);
        if self.is_transient() {
            JobError::Transient(message)
        } else {
            JobError::Permanent(message)
        }
    }
}

impl From<StagingError> for JobError {
    fn from(e: StagingError) -> Self {
        e.into_job_error()
    }
}

/// A staged blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedBlob {
    /// Lowercase hex sha256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Where it is.
    pub path: PathBuf,
}

/// The staging store in one directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Staging {
    dir: PathBuf,
    max_bytes: u64,
}

/// Whether `s` is a sha256 in the store's spelling.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Staging {
    /// A store in `dir` accepting blobs of 1 to `max_bytes` bytes. Directories are created on
    /// first write.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        Self {
            dir: dir.into(),
            max_bytes,
        }
    }

    /// The store of `EXAI_STAGING_DIR` with the `EXAI_MAX_UPLOAD_BYTES` limit.
    pub fn from_config(config: &UploadConfig) -> Self {
        Self::new(config.staging_dir.clone(), config.max_bytes)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The largest blob accepted.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Where the blob of `sha256` lives (whether or not it is there).
    pub fn blob_path(&self, sha256: &str) -> Result<PathBuf, StagingError> {
        if !is_sha256(sha256) {
            return Err(StagingError::InvalidHash(sha256.to_owned()));
        }
        Ok(self.dir.join("blobs").join(&sha256[..2]).join(sha256))
    }

    /// The staged blob of `sha256`, checked to have `expected_size` bytes when given.
    pub async fn get(
        &self,
        sha256: &str,
        expected_size: Option<u64>,
    ) -> Result<StagedBlob, StagingError> {
        let path = self.blob_path(sha256)?;
        let size = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StagingError::Missing {
                    sha256: sha256.to_owned(),
                });
            }
            Err(e) => return Err(StagingError::io(format!("stat {}", path.display()), e)),
        };
        if let Some(expected) = expected_size
            && expected != size
        {
            return Err(StagingError::Mismatch(format!(
                "blob {sha256} has {size} bytes, expected {expected}"
            )));
        }
        Ok(StagedBlob {
            sha256: sha256.to_owned(),
            size,
            path,
        })
    }

    /// Removes the blob of `sha256`; whether it was there.
    pub async fn remove(&self, sha256: &str) -> Result<bool, StagingError> {
        let path = self.blob_path(sha256)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StagingError::io(format!("remove {}", path.display()), e)),
        }
    }

    /// Stages `bytes` (named `name` in error messages).
    pub async fn stage_bytes(&self, name: &str, bytes: Bytes) -> Result<StagedBlob, StagingError> {
        self.stage_stream(
            name,
            futures::stream::once(async move { Ok::<_, io::Error>(bytes) }),
            None,
        )
        .await
    }

    /// Stages the file at `path` (already validated), streamed from disk.
    pub async fn stage_file(&self, name: &str, path: &Path) -> Result<StagedBlob, StagingError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StagingError::io(format!("open {}", path.display()), e))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK);
        self.stage_stream(name, stream, None).await
    }

    /// Stages whatever `stream` yields, hashing it on the way; when `expected_sha256` is given
    /// the content must hash to it (e.g. a copy read back from Supabase Storage) or nothing is
    /// staged.
    pub async fn stage_stream<S, E>(
        &self,
        name: &str,
        stream: S,
        expected_sha256: Option<&str>,
    ) -> Result<StagedBlob, StagingError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: fmt::Display,
    {
        let tmp_dir = self.dir.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|e| StagingError::io(format!("create {}", tmp_dir.display()), e))?;
        let tmp = TempFile(tmp_dir.join(format!("{}.part", uuid::Uuid::new_v4().simple())));
        let mut file = tokio::fs::File::create(&tmp.0)
            .await
            .map_err(|e| StagingError::io(format!("create {}", tmp.0.display()), e))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StagingError::Source(e.to_string()))?;
            size += chunk.len() as u64;
            if size > self.max_bytes {
                return Err(StagingError::TooLarge {
                    name: name.to_owned(),
                    size,
                    limit: self.max_bytes,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| StagingError::io(format!("write {}", tmp.0.display()), e))?;
        }
        if size == 0 {
            return Err(StagingError::Empty {
                name: name.to_owned(),
            });
        }
        file.flush()
            .await
            .map_err(|e| StagingError::io("flush", e))?;
        file.sync_all()
            .await
            .map_err(|e| StagingError::io(format!("fsync {}", tmp.0.display()), e))?;
        drop(file);
        let sha256 = hex(&hasher.finalize());
        if let Some(expected) = expected_sha256
            && expected != sha256
        {
            return Err(StagingError::Mismatch(format!(
                "content hashes to {sha256}, expected {expected}"
            )));
        }
        let path = self.blob_path(&sha256)?;
        let parent = path.parent().expect("blob paths have a parent").to_owned();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| StagingError::io(format!("create {}", parent.display()), e))?;
        match tokio::fs::metadata(&path).await {
            // The same content is already staged (same hash, same size): keep that blob, and
            // make it recent again, so the orphan sweep's grace period counts from now.
            Ok(m) if m.len() == size => touch(&path).await,
            _ => {
                tokio::fs::rename(&tmp.0, &path)
                    .await
                    .map_err(|e| StagingError::io(format!("rename into {}", path.display()), e))?;
                sync_dir(&parent).await?;
            }
        }
        Ok(StagedBlob { sha256, size, path })
    }
}

/// Sets a file's modification time to now. Best effort: a blob that cannot be touched keeps
/// its older time (the sweep's grace period still protects it from its first staging).
async fn touch(path: &Path) {
    let owned = path.to_owned();
    let touched = tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&owned)?
            .set_modified(std::time::SystemTime::now())
    })
    .await;
    match touched {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot refresh a staged blob's time")
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot refresh a staged blob's time")
        }
    }
}

/// One file of the staging store, as [`Staging::entries`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagingEntry {
    /// Where it is.
    pub path: PathBuf,
    /// The blob's sha256; `None` for a partial write (`tmp/*.part`) or a stray file.
    pub sha256: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Last modification: when it was staged (or staged again).
    pub modified: std::time::SystemTime,
}

impl Staging {
    /// Every blob (`blobs/ab/<sha256>`) and partial write (`tmp/*.part`) in the store. A store
    /// that was never written to has none.
    pub async fn entries(&self) -> Result<Vec<StagingEntry>, StagingError> {
        let mut out = Vec::new();
        let blobs = self.dir.join("blobs");
        for shard in read_dir(&blobs).await? {
            if !shard.1.is_dir() {
                continue;
            }
            for (path, meta) in read_dir(&shard.0).await? {
                if !meta.is_file() {
                    continue;
                }
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                out.push(StagingEntry {
                    sha256: is_sha256(name).then(|| name.to_owned()),
                    size: meta.len(),
                    modified: modified(&path, &meta)?,
                    path,
                });
            }
        }
        for (path, meta) in read_dir(&self.dir.join("tmp")).await? {
            if meta.is_file() && path.extension().is_some_and(|e| e == "part") {
                out.push(StagingEntry {
                    sha256: None,
                    size: meta.len(),
                    modified: modified(&path, &meta)?,
                    path,
                });
            }
        }
        Ok(out)
    }

    /// Removes one listed entry if it has not been modified since it was listed (a blob staged
    /// again in the meantime is kept); whether it was removed.
    pub async fn remove_entry(&self, entry: &StagingEntry) -> Result<bool, StagingError> {
        let meta = match tokio::fs::metadata(&entry.path).await {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(StagingError::io(
                    format!("stat {}", entry.path.display()),
                    e,
                ));
            }
        };
        if modified(&entry.path, &meta)? != entry.modified {
            return Ok(false);
        }
        match tokio::fs::remove_file(&entry.path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StagingError::io(
                format!("remove {}", entry.path.display()),
                e,
            )),
        }
    }
}

/// The entries of a directory with their metadata; none when it does not exist.
async fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>, StagingError> {
    let mut rd = match tokio::fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StagingError::io(format!("read {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    loop {
        match rd.next_entry().await {
            Ok(Some(entry)) => match entry.metadata().await {
                Ok(meta) => out.push((entry.path(), meta)),
                // Removed while listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StagingError::io(
                        format!("stat {}", entry.path().display()),
                        e,
                    ));
                }
            },
            Ok(None) => return Ok(out),
            Err(e) => return Err(StagingError::io(format!("read {}", dir.display()), e)),
        }
    }
}

fn modified(path: &Path, meta: &std::fs::Metadata) -> Result<std::time::SystemTime, StagingError> {
    meta.modified()
        .map_err(|e| StagingError::io(format!("mtime of {}", path.display()), e))
}

/// A temporary file removed when dropped (after a successful rename there is nothing left to
/// remove, and the error is ignored).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Makes a rename in `dir` durable.
async fn sync_dir(dir: &Path) -> Result<(), StagingError> {
    let d = tokio::fs::File::open(dir)
        .await
        .map_err(|e| StagingError::io(format!("open {}", dir.display()), e))?;
    d.sync_all()
        .await
        .map_err(|e| StagingError::io(format!("fsync {}", dir.display()), e))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A client's file name reduced to its last component (after `/` or `\\`); empty, `.`, `..`
/// and names with control characters are refused.
pub fn plain_filename(raw: &str) -> Result<String, StagingError> {
    let name = raw.rsplit(['/', '\\']).next().unwrap_or("").trim();
    if name.is_empty() || name == "." || name == ".." || name.chars().any(char::is_control) {
        return Err(StagingError::InvalidName(raw.escape_default().to_string()));
    }
    Ok(name.to_owned())
}

/// Decodes the inline content of `name` (standard base64, surrounding whitespace ignored). The
/// size is checked first, from the length of the text (3 bytes per 4 characters), so content
/// over `max_bytes` is refused without being decoded; empty content is refused too.
pub fn decode_inline(name: &str, encoded: &str, max_bytes: u64) -> Result<Bytes, StagingError> {
    use base64::Engine as _;
    let encoded = encoded.trim();
    let padding = encoded
        .bytes()
        .rev()
        .take_while(|b| *b == b'=')
        .count()
        .min(2) as u64;
    let decoded_len = (encoded.len() as u64).div_ceil(4) * 3 - padding;
    if decoded_len > max_bytes {
        return Err(StagingError::TooLarge {
            name: name.to_owned(),
            size: decoded_len,
            limit: max_bytes,
        });
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| StagingError::InvalidBase64(e.to_string()))?;
    if bytes.is_empty() {
        return Err(StagingError::Empty {
            name: name.to_owned(),
        });
    }
    Ok(bytes.into())
}

/// A path accepted for upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedFile {
    /// The resolved path (symlinks followed): the one to read.
    pub path: PathBuf,
    /// The file name to upload it as: the last component of the path as given.
    pub filename: String,
    /// Its size, from its metadata.
    pub size: u64,
}

/// Checks an upload path (see the [module docs](self)) without reading the file. Blocking
/// (file-system calls); see [`validate_upload_path`] for async callers.
pub fn resolve_upload_path(
    raw: &str,
    roots: &[PathBuf],
    max_bytes: u64,
) -> Result<ValidatedFile, StagingError> {
    if roots.is_empty() {
        return Err(StagingError::NoRoots);
    }
    let given = Path::new(raw);
    if !given.is_absolute() {
        return Err(StagingError::NotAbsolute {
            path: raw.to_owned(),
        });
    }
    let resolved = std::fs::canonicalize(given).map_err(|e| StagingError::NotFound {
        path: raw.to_owned(),
        reason: e.to_string(),
    })?;
    let inside = roots
        .iter()
        .filter_map(|root| std::fs::canonicalize(root).ok())
        .any(|root| resolved.starts_with(&root));
    if !inside {
        return Err(StagingError::OutsideRoots {
            path: raw.to_owned(),
        });
    }
    let meta = std::fs::metadata(&resolved).map_err(|e| StagingError::NotFound {
        path: raw.to_owned(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(StagingError::NotAFile {
            path: raw.to_owned(),
        });
    }
    let filename = given
        .file_name()
        .or_else(|| resolved.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let size = meta.len();
    if size == 0 {
        return Err(StagingError::Empty { name: filename });
    }
    if size > max_bytes {
        return Err(StagingError::TooLarge {
            name: filename,
            size,
            limit: max_bytes,
        });
    }
    Ok(ValidatedFile {
        path: resolved,
        filename,
        size,
    })
}

/// [`resolve_upload_path`] on the blocking pool.
pub async fn validate_upload_path(
    raw: &str,
    roots: &[PathBuf],
    max_bytes: u64,
) -> Result<ValidatedFile, StagingError> {
    let raw = raw.to_owned();
    let roots = roots.to_vec();
    tokio::task::spawn_blocking(move || resolve_upload_path(&raw, &roots, max_bytes))
        .await
        .map_err(|e| StagingError::io("path validation task", io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("exai-staging-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn blobs_are_content_addressed_and_written_once() {
        let dir = scratch();
        let staging = Staging::new(dir.join("staging"), 1024);
        let a = staging
            .stage_bytes("a", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(
            a.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(a.size, 5);
        assert_eq!(std::fs::read(&a.path).unwrap(), b"hello");
        let again = staging
            .stage_bytes("b", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(again, a);
        assert_eq!(staging.get(&a.sha256, Some(5)).await.unwrap(), a);
        assert!(staging.get(&a.sha256, Some(6)).await.is_err());
        // No temporary file is left behind.
        assert_eq!(
            std::fs::read_dir(dir.join("staging/tmp")).unwrap().count(),
            0
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn empty_oversized_and_mismatched_content_is_not_staged() {
        let dir = scratch();
        let staging = Staging::new(dir.join("staging"), 4);
        assert!(matches!(
            staging.stage_bytes("e", Bytes::new()).await,
            Err(StagingError::Empty { .. })
        ));
        assert!(matches!(
            staging
                .stage_bytes("big", Bytes::from_static(b"12345"))
                .await,
            Err(StagingError::TooLarge { .. })
        ));
        let stream = futures::stream::iter([Ok::<_, io::Error>(Bytes::from_static(b"abc"))]);
        assert!(matches!(
            staging
                .stage_stream("x", stream, Some(&"0".repeat(64)))
                .await,
            Err(StagingError::Mismatch(_))
        ));
        assert!(
            !dir.join("staging/blobs").exists()
                || std::fs::read_dir(dir.join("staging/blobs"))
                    .unwrap()
                    .count()
                    == 0
        );
        assert_eq!(
            std::fs::read_dir(dir.join("staging/tmp")).unwrap().count(),
            0
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn client_file_names_keep_only_their_last_component() {
        assert_eq!(plain_filename("a.txt").unwrap(), "a.txt");
        assert_eq!(plain_filename("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(plain_filename("C:\\x\\y.pdf").unwrap(), "y.pdf");
        assert!(plain_filename("dir/").is_err());
        assert!(plain_filename("..").is_err());
        assert!(plain_filename("a\nb").is_err());
    }

    #[test]
    fn inline_content_is_bounded_before_it_is_decoded() {
        assert_eq!(&decode_inline("a", "aGVsbG8=", 5).unwrap()[..], b"hello");
        assert_eq!(&decode_inline("a", " aGk= ", 2).unwrap()[..], b"hi");
        assert!(matches!(
            decode_inline("a", "aGVsbG8=", 4),
            Err(StagingError::TooLarge {
                size: 5,
                limit: 4,
                ..
            })
        ));
        // Far over the limit and not even base64: refused for its size, never decoded.
        assert!(matches!(
            decode_inline("a", &"!".repeat(4000), 100),
            Err(StagingError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_inline("a", "not base64!", 100),
            Err(StagingError::InvalidBase64(_))
        ));
        assert!(matches!(
            decode_inline("a", "", 100),
            Err(StagingError::Empty { .. })
        ));
    }

    #[test]
    fn paths_must_resolve_inside_a_root() {
        let dir = scratch();
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/ok.txt"), b"data").unwrap();
        std::fs::write(dir.join("secret.txt"), b"secret").unwrap();
        std::fs::write(root.join("empty.txt"), b"").unwrap();
        std::fs::write(root.join("big.txt"), b"0123456789").unwrap();
        std::os::unix::fs::symlink(dir.join("secret.txt"), root.join("escape.txt")).unwrap();
        std::os::unix::fs::symlink(root.join("sub/ok.txt"), root.join("inside.txt")).unwrap();
        let roots = vec![root.clone()];
        let check = |p: &Path| resolve_upload_path(p.to_str().unwrap(), &roots, 8);

        let ok = check(&root.join("sub/ok.txt")).unwrap();
        assert_eq!(ok.size, 4);
        assert_eq!(ok.filename, "ok.txt");
        let via_link = check(&root.join("inside.txt")).unwrap();
        assert_eq!(via_link.filename, "inside.txt");
        assert_eq!(via_link.path, ok.path);

        assert!(matches!(
            check(&root.join("sub/../../secret.txt")),
            Err(StagingError::OutsideRoots { .. })
        ));
        assert!(matches!(
            check(&root.join("escape.txt")),
            Err(StagingError::OutsideRoots { .. })
        ));
        assert!(matches!(
            check(&root.join("empty.txt")),
            Err(StagingError::Empty { .. })
        ));
        assert!(matches!(
            check(&root.join("big.txt")),
            Err(StagingError::TooLarge {
                size: 10,
                limit: 8,
                ..
            })
        ));
        assert!(matches!(
            check(&root.join("sub")),
            Err(StagingError::NotAFile { .. })
        ));
        assert!(matches!(
            check(&root.join("missing.txt")),
            Err(StagingError::NotFound { .. })
        ));
        assert!(matches!(
            resolve_upload_path("sub/ok.txt", &roots, 8),
            Err(StagingError::NotAbsolute { .. })
        ));
        assert!(matches!(
            resolve_upload_path(root.join("sub/ok.txt").to_str().unwrap(), &[], 8),
            Err(StagingError::NoRoots)
        ));
        // A sibling whose name merely starts with the root's is outside it.
        std::fs::create_dir_all(dir.join("rootx")).unwrap();
        std::fs::write(dir.join("rootx/f.txt"), b"x").unwrap();
        assert!(matches!(
            check(&dir.join("rootx/f.txt")),
            Err(StagingError::OutsideRoots { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

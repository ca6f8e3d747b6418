//! The content-addressed blob store (see the [staging docs](super) for its layout, atomicity and
//! the lifetime of a blob): [`Staging`] writes, finds, lists and removes blobs.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::StagingError;
use crate::config::UploadConfig;

/// The piece size in which files are read while staging.
const READ_CHUNK: usize = 64 * 1024;

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

    /// Stages the content of an open file (an upload path opened by
    /// [`open_upload_path`](super::open_upload_path)), read from that descriptor only.
    pub async fn stage_file(
        &self,
        name: &str,
        file: std::fs::File,
    ) -> Result<StagedBlob, StagingError> {
        let file = tokio::fs::File::from_std(file);
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
        create_private_dir(&tmp_dir).await?;
        let tmp = TempFile(tmp_dir.join(format!("{}.part", uuid::Uuid::new_v4().simple())));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(BLOB_MODE)
            .open(&tmp.0)
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
        create_private_dir(&parent).await?;
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

/// The mode of the staging directories: the owner's only (uploads may be private files).
const DIR_MODE: u32 = 0o700;

/// The mode of a staged blob (and of its partial write): readable and writable by the owner
/// only.
const BLOB_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents with [`DIR_MODE`] (an existing directory keeps its
/// mode: the operator's choice).
async fn create_private_dir(dir: &Path) -> Result<(), StagingError> {
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .await
        .map_err(|e| StagingError::io(format!("create {}", dir.display()), e))
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
    async fn the_store_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch();
        let staging = Staging::new(dir.join("staging"), 1024);
        let blob = staging
            .stage_bytes("a", Bytes::from_static(b"private"))
            .await
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for d in [
            dir.join("staging"),
            dir.join("staging/tmp"),
            dir.join("staging/blobs"),
            blob.path.parent().unwrap().to_owned(),
        ] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        assert_eq!(mode(&blob.path), 0o600);
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
}

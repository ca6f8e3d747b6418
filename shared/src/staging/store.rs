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

/// The piece size in which a file (or inline bytes) is read, hashed and written while staging:
/// a 100 MiB file takes 400 reads, and the buffer is the only memory staging holds.
const STAGE_CHUNK: usize = 256 * 1024;

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
        let store = self.clone();
        let name = name.to_owned();
        blocking(move || store.stage_reader_blocking(&name, &bytes[..], None)).await
    }

    /// Stages the content of an open file (an upload path opened by
    /// [`open_upload_path`](super::open_upload_path)), read from that descriptor only.
    ///
    /// The whole staging — temporary file, reads, hashing, writes, `fsync`, rename and the
    /// directory's `fsync` — runs as one blocking task: one hand-off to the blocking pool per
    /// file rather than one per system call.
    pub async fn stage_file(
        &self,
        name: &str,
        file: std::fs::File,
    ) -> Result<StagedBlob, StagingError> {
        let store = self.clone();
        let name = name.to_owned();
        blocking(move || store.stage_reader_blocking(&name, file, None)).await
    }

    /// Stages whatever `source` yields (blocking), hashing it on the way; see
    /// [`Self::stage_stream`] for `expected_sha256`.
    fn stage_reader_blocking(
        &self,
        name: &str,
        mut source: impl io::Read,
        expected_sha256: Option<&str>,
    ) -> Result<StagedBlob, StagingError> {
        let (tmp, mut file) = self.create_temp_blocking()?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buf = vec![0u8; STAGE_CHUNK];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StagingError::Source(e.to_string())),
            };
            size += n as u64;
            self.check_size(name, size)?;
            hasher.update(&buf[..n]);
            io::Write::write_all(&mut file, &buf[..n])
                .map_err(|e| StagingError::io(format!("write {}", tmp.0.display()), e))?;
        }
        let sha256 = hex(&hasher.finalize());
        self.commit_blocking(name, tmp, file, size, sha256, expected_sha256)
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
        let store = self.clone();
        let (tmp, file) = blocking(move || store.create_temp_blocking()).await?;
        let mut file = tokio::fs::File::from_std(file);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StagingError::Source(e.to_string()))?;
            size += chunk.len() as u64;
            self.check_size(name, size)?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| StagingError::io(format!("write {}", tmp.0.display()), e))?;
        }
        file.flush()
            .await
            .map_err(|e| StagingError::io("flush", e))?;
        let file = file.into_std().await;
        let sha256 = hex(&hasher.finalize());
        let store = self.clone();
        let name = name.to_owned();
        let expected = expected_sha256.map(str::to_owned);
        blocking(move || store.commit_blocking(&name, tmp, file, size, sha256, expected.as_deref()))
            .await
    }

    /// A new temporary file in `tmp/` (the directory created if missing), removed when the
    /// returned guard is dropped unless it was renamed into place.
    fn create_temp_blocking(&self) -> Result<(TempFile, std::fs::File), StagingError> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp_dir = self.dir.join("tmp");
        create_private_dir_blocking(&tmp_dir)?;
        let tmp = TempFile(tmp_dir.join(format!("{}.part", uuid::Uuid::new_v4().simple())));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(BLOB_MODE)
            .open(&tmp.0)
            .map_err(|e| StagingError::io(format!("create {}", tmp.0.display()), e))?;
        Ok((tmp, file))
    }

    /// Fails once `size` bytes of `name` are past the store's limit.
    fn check_size(&self, name: &str, size: u64) -> Result<(), StagingError> {
        if size > self.max_bytes {
            return Err(StagingError::TooLarge {
                name: name.to_owned(),
                size,
                limit: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Makes the written temporary file the blob of `sha256`: checks it is not empty and hashes
    /// to `expected_sha256` when given, `fsync`s it, renames it into `blobs/` and `fsync`s that
    /// directory. Content already staged (same hash, same size) keeps its blob, made recent
    /// again so the orphan sweep's grace period counts from now.
    fn commit_blocking(
        &self,
        name: &str,
        tmp: TempFile,
        file: std::fs::File,
        size: u64,
        sha256: String,
        expected_sha256: Option<&str>,
    ) -> Result<StagedBlob, StagingError> {
        if size == 0 {
            return Err(StagingError::Empty {
                name: name.to_owned(),
            });
        }
        if let Some(expected) = expected_sha256
            && expected != sha256
        {
            return Err(StagingError::Mismatch(format!(
                "content hashes to {sha256}, expected {expected}"
            )));
        }
        let path = self.blob_path(&sha256)?;
        let parent = path.parent().expect("blob paths have a parent").to_owned();
        create_private_dir_blocking(&parent)?;
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == size => {
                drop(file);
                touch_blocking(&path);
            }
            _ => {
                file.sync_all()
                    .map_err(|e| StagingError::io(format!("fsync {}", tmp.0.display()), e))?;
                drop(file);
                std::fs::rename(&tmp.0, &path)
                    .map_err(|e| StagingError::io(format!("rename into {}", path.display()), e))?;
                tmp.persisted();
                sync_dir_blocking(&parent)?;
            }
        }
        Ok(StagedBlob { sha256, size, path })
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StagingError> + Send + 'static,
) -> Result<T, StagingError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StagingError::io("staging task", io::Error::other(e)))?
}

/// The mode of the staging directories: the owner's only (uploads may be private files).
const DIR_MODE: u32 = 0o700;

/// The mode of a staged blob (and of its partial write): readable and writable by the owner
/// only.
const BLOB_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents with [`DIR_MODE`] (an existing directory keeps its
/// mode: the operator's choice).
fn create_private_dir_blocking(dir: &Path) -> Result<(), StagingError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| StagingError::io(format!("create {}", dir.display()), e))
}

/// Sets a file's modification time to now. Best effort: a blob that cannot be touched keeps
/// its older time (the sweep's grace period still protects it from its first staging).
fn touch_blocking(path: &Path) {
    let touched = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    if let Err(e) = touched {
        tracing::warn!(path = %path.display(), error = %e, "cannot refresh a staged blob's time")
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

/// A temporary file removed when dropped, unless [`TempFile::persisted`] says it was renamed
/// into place.
struct TempFile(PathBuf);

impl TempFile {
    /// The file was renamed into place: there is nothing left to remove.
    fn persisted(self) {
        std::mem::forget(self);
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir_blocking(dir: &Path) -> Result<(), StagingError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
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

//! The upload-path gate: a path is uploaded only if it is absolute, resolves (symlinks
//! followed) inside one of `EXAI_UPLOAD_ROOTS`, names a regular file and has a size between 1
//! byte and the limit, all checked before any byte is read.

use std::io;
use std::path::{Path, PathBuf};

use super::StagingError;

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

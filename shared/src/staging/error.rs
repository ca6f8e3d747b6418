//! [`StagingError`]: why staging bytes, checking inline content or validating an upload path
//! failed, and whether another attempt may succeed.

use std::fmt;
use std::io;

use crate::jobs::JobError;

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
    /// The path beneath a root does not exist (or a component cannot be opened).
    #[error("path `{path}` cannot be resolved: {reason}")]
    NotFound {
        /// The path as given.
        path: String,
        /// What the resolution said.
        reason: String,
    },
    /// The path is not beneath any upload root, or climbs out with `..`. Decided from the path
    /// as given, so a path outside gets this whether or not it exists.
    #[error("path `{path}` is outside the allowed upload roots (EXAI_UPLOAD_ROOTS)")]
    OutsideRoots {
        /// The path as given.
        path: String,
    },
    /// A component beneath the upload root is a symbolic link.
    #[error(
        "path `{path}` passes through a symbolic link beneath its upload root; symlinks are refused"
    )]
    Symlink {
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
    pub(super) fn io(context: impl fmt::Display, source: io::Error) -> Self {
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

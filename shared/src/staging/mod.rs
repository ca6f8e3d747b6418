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
//! [`open_upload_path`] is the gate for uploads by path: the path must be absolute, lie beneath
//! one of `EXAI_UPLOAD_ROOTS` with no `..` and no symbolic link at any component beneath the
//! root, name a regular file, and have a size between 1 byte and the limit
//! (`EXAI_MAX_UPLOAD_BYTES`, 100 MiB, Moonshot's). It opens the file once and hands back the
//! descriptor, its type and size from `fstat`; [`Staging::stage_file`] copies that descriptor, so
//! the path is never opened by name a second time (see [`paths`]).
//!
//! The store is [`store`], the checks of inline bytes are [`inline`], the upload-path gate is
//! [`paths`]; [`StagingError`] (in [`error`]) is what all three fail with.

pub mod error;
pub mod inline;
pub mod paths;
pub mod store;

pub use error::StagingError;
pub use inline::{decode_inline, plain_filename};
pub use paths::{OpenedUpload, open_upload_path, open_upload_path_blocking};
pub use store::{StagedBlob, Staging, StagingEntry, hex, is_sha256};

//! Group commit for the storage push's two row writes: [`PushWrites`].
//!
//! Every push attempt counts itself on its row before it starts ([`record_storage_attempt`]) and
//! links the row to its object when it succeeds ([`mark_completed`]): two commits per file, and
//! a commit is a WAL flush (milliseconds on a virtual disk). When many pushes run at once in one
//! process, their writes of each kind are gathered and made in one statement, one commit: a
//! write waits at most for the statement in flight, and the batch is whatever came meanwhile —
//! one write when the process is quiet, and never more than the pushes running (each waits for
//! its own answer), so there is no batch size to configure.
//!
//! Each caller gets the answer the one-row function would have given: its row, or the refusal
//! ([`DbError::InvalidTransition`], [`DbError::NotFound`]). A row asked for twice in one batch
//! and a batch whose statement fails are written one row at a time, so one bad row never fails
//! the others.

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::DbError;
use super::uploads::{
    self, FileUpload, UploadStatus, mark_completed, mark_completed_many, record_storage_attempt,
    record_storage_attempts,
};

/// One write waiting for its batch, and where its answer goes.
struct Request<T> {
    item: T,
    reply: oneshot::Sender<Result<FileUpload, DbError>>,
}

/// The object a completed push links its row to: `(row id, supabase_file_id, storage_path)`.
type Link = (Uuid, String, String);

/// The group-committed push writes of one process. Cheap to clone; the two writer tasks end when
/// the last clone is dropped.
#[derive(Debug, Clone)]
pub struct PushWrites {
    /// Attempts to count; the writer task gathers what is waiting. Unbounded: a sender is a push
    /// attempt awaiting its answer, so the queue never holds more than the pushes running.
    attempts: mpsc::UnboundedSender<Request<Uuid>>,
    /// Completions to record, likewise.
    completions: mpsc::UnboundedSender<Request<Link>>,
}

impl PushWrites {
    /// Starts the two writer tasks on `pool` (on the current tokio runtime).
    pub fn spawn(pool: PgPool) -> Self {
        let (attempts, mut attempt_rx) = mpsc::unbounded_channel();
        let (completions, mut completion_rx) = mpsc::unbounded_channel();
        let attempt_pool = pool.clone();
        tokio::spawn(async move {
            while let Some(batch) = next_batch(&mut attempt_rx).await {
                write_attempts(&attempt_pool, batch).await;
            }
        });
        tokio::spawn(async move {
            while let Some(batch) = next_batch(&mut completion_rx).await {
                write_completions(&pool, batch).await;
            }
        });
        Self {
            attempts,
            completions,
        }
    }

    /// [`record_storage_attempt`] of row `id` (no error recorded), group-committed.
    pub async fn record_storage_attempt(&self, id: Uuid) -> Result<FileUpload, DbError> {
        ask(&self.attempts, id).await
    }

    /// [`mark_completed`] of row `id`, group-committed.
    pub async fn mark_completed(
        &self,
        id: Uuid,
        supabase_file_id: &str,
        storage_path: &str,
    ) -> Result<FileUpload, DbError> {
        let link = (id, supabase_file_id.to_owned(), storage_path.to_owned());
        ask(&self.completions, link).await
    }
}

/// Sends one write to its writer and waits for the answer.
async fn ask<T>(to: &mpsc::UnboundedSender<Request<T>>, item: T) -> Result<FileUpload, DbError> {
    let (reply, answer) = oneshot::channel();
    to.send(Request { item, reply })
        .map_err(|_| DbError::WriterGone)?;
    answer.await.map_err(|_| DbError::WriterGone)?
}

/// The next batch: the first write to arrive and every one waiting behind it; `None` once every
/// sender is gone.
async fn next_batch<T>(rx: &mut mpsc::UnboundedReceiver<Request<T>>) -> Option<Vec<Request<T>>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while let Ok(next) = rx.try_recv() {
        batch.push(next);
    }
    Some(batch)
}

/// Splits `batch` into the first request of each row and the repeats, by `id_of`.
fn firsts_and_repeats<T>(
    batch: Vec<Request<T>>,
    id_of: impl Fn(&T) -> Uuid,
) -> (Vec<Request<T>>, Vec<Request<T>>) {
    let mut seen = HashSet::with_capacity(batch.len());
    batch.into_iter().partition(|r| seen.insert(id_of(&r.item)))
}

/// Answers each request of `firsts` with its row in `rows`, or with the refusal of its write.
async fn answer<T>(
    pool: &PgPool,
    firsts: Vec<Request<T>>,
    rows: Vec<FileUpload>,
    id_of: impl Fn(&T) -> Uuid,
    to: UploadStatus,
) {
    let mut by_id: HashMap<Uuid, FileUpload> = rows.into_iter().map(|r| (r.id, r)).collect();
    for r in firsts {
        let id = id_of(&r.item);
        let result = match by_id.remove(&id) {
            Some(row) => Ok(row),
            None => Err(uploads::refused(pool, id, to).await),
        };
        let _ = r.reply.send(result);
    }
}

async fn write_attempts(pool: &PgPool, batch: Vec<Request<Uuid>>) {
    let (firsts, repeats) = firsts_and_repeats(batch, |id| *id);
    let one_by_one = if firsts.len() == 1 {
        firsts
    } else {
        let ids: Vec<Uuid> = firsts.iter().map(|r| r.item).collect();
        match record_storage_attempts(pool, &ids).await {
            Ok(rows) => {
                answer(pool, firsts, rows, |id| *id, UploadStatus::StoragePending).await;
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), rows = ids.len(), "batched storage attempts failed; writing them one by one");
                firsts
            }
        }
    };
    for r in one_by_one.into_iter().chain(repeats) {
        let _ = r
            .reply
            .send(record_storage_attempt(pool, r.item, None).await);
    }
}

async fn write_completions(pool: &PgPool, batch: Vec<Request<Link>>) {
    let (firsts, repeats) = firsts_and_repeats(batch, |l| l.0);
    let one_by_one = if firsts.len() == 1 {
        firsts
    } else {
        let links: Vec<Link> = firsts.iter().map(|r| r.item.clone()).collect();
        match mark_completed_many(pool, &links).await {
            Ok(rows) => {
                answer(pool, firsts, rows, |l| l.0, UploadStatus::Completed).await;
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), rows = links.len(), "batched completions failed; writing them one by one");
                firsts
            }
        }
    };
    for r in one_by_one.into_iter().chain(repeats) {
        let (id, object, path) = &r.item;
        let _ = r.reply.send(mark_completed(pool, *id, object, path).await);
    }
}

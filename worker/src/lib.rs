//! `exai-worker`, the library behind the binary: the worker runtime that serves our Redis queues
//! through apalis, the job handlers, and (later) the operator commands.
//!
//! - [`runtime`]: builds one apalis worker per queue on [`RedisBackend`](exai_shared::backend::RedisBackend),
//!   plus the cron scheduler of the `cleanup` queue, and runs them under one `Monitor` until
//!   shutdown.
//! - [`handlers`]: what each queue's jobs do.
#![warn(missing_docs)]

pub mod handlers;
pub mod runtime;

//! `exai-shared` owns every contract between the processes of EXAI Queue.
//!
//! The daemon and the workers never hand-build a Redis key, a SQL statement or an
//! environment variable name: they ask this crate. The modules:
//!
//! - [`config`]: the typed [`Config`](config::Config) read from the environment (and `.env`),
//!   validated at start-up; secrets are wrapped so they never reach a log line.
//! - [`telemetry`]: the one `tracing` subscriber set-up, human or JSON output.
//! - [`shutdown`]: SIGINT and SIGTERM folded into one `CancellationToken`.
//! - [`redis`]: connecting to a single Redis or a Redis Cluster behind one handle.
//! - [`keys`]: the Redis key layout under `EXAI_REDIS_PREFIX` ([`Keys`](keys::Keys), and
//!   [`QueueKeys`](keys::QueueKeys) for one queue), each script's keys under one hash tag.
//! - [`subscriber`]: the one Redis pub/sub connection of a process, with a route per channel,
//!   shared by the semaphore wake-ups, the queue's waker and the daemon's relay.
//! - [`semaphore`]: fleet-wide leased semaphores (Redis sorted sets of TTL leases).
//! - [`queue`]: the durable job queue's Redis protocol (enqueue, leased fetch, fenced acks,
//!   sweep, inspection) and the push wake-up of idle workers.
//! - [`backend`]: the queue as an apalis 1.0 backend: the driver (batched fetch and fenced
//!   acknowledgement), hand-offs, heartbeat, sweeper, cancellation and the lease layer (see its
//!   module docs for where it steps outside apalis).
//! - [`cleanup_report`]: the orphan cleanup's report and its storage in Redis, written by the
//!   worker and read by the daemon's admin API.
//! - [`events`]: job events (started, progress, chunks, finished) on each job's channel.
//! - [`fleet_metrics`]: the fleet-wide Prometheus gauges (queue depth, semaphores) the daemon and
//!   the workers read from Redis at scrape time.
//! - [`inspect`]: the operator views (queue counts, semaphore holders) with the one JSON shape
//!   the CLI, the admin API and the admin page share.
//! - [`jobs`]: job payloads and [`JobError`](jobs::JobError), whose variant is the retry policy.
//! - [`tools`]: the tool registry: names, descriptions, input schemas, providers, semaphores.
//! - [`protocol`]: the daemon's WebSocket messages, error and close codes, call job ids.
//! - [`db`]: Postgres access (sqlx) for `provider_file_uploads`, and the migrations.
//! - [`redact`]: key-like strings and the configured secrets taken out of provider error text.
//! - [`providers`]: HTTP clients of Moonshot (files, chat), GLM (chat) and Supabase Storage,
//!   streaming, with errors classified transient or permanent.
//! - [`staging`]: the content-addressed staging store of upload bytes, and the upload-path gate
//!   (`EXAI_UPLOAD_ROOTS`, symlinks followed, sizes checked before any read).
//! - [`usage`]: cost accounting: each provider call's token usage, and its sums per session,
//!   tool and model in Redis (with bounded retention).
//! - [`worker_registry`]: the registry of live worker processes (heartbeat with a TTL) that
//!   `/health` lists.
//! - [`error_chain()`]: an error with its sources on one line, for log lines.
#![warn(missing_docs)]

pub mod backend;
pub mod budget;
pub mod cleanup_report;
pub mod config;
pub mod db;
mod error_chain;
pub mod events;
pub mod fleet_metrics;
pub mod inspect;
pub mod jobs;
pub mod keys;
pub mod protocol;
pub mod providers;
pub mod queue;
pub mod redact;
pub mod redis;
pub mod semaphore;
pub mod shutdown;
pub mod staging;
pub mod subscriber;
pub mod telemetry;
pub mod tools;
pub mod upstream;
pub mod usage;
pub mod worker_registry;

pub use config::Config;
pub use error_chain::error_chain;

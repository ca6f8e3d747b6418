//! `exai-worker`, the library behind the binary: the worker runtime that serves our Redis queues
//! through apalis, the job handlers, and the operator commands.
//!
//! - [`runtime`]: builds one apalis worker per queue on [`RedisBackend`](exai_shared::backend::RedisBackend),
//!   plus the cron scheduler of the `cleanup` queue, and runs them under one `Monitor` until
//!   shutdown.
//! - [`handlers`]: what each queue's jobs do.
//! - [`state`]: [`AppState`](state::AppState), what every handler can reach (database,
//!   semaphores, provider clients, staging, events, the push queue); state only, no policy.
//! - [`permits`]: taking and holding the fleet-wide semaphore permits around provider calls.
//! - [`budget`]: reserving and settling the providers' rate budgets around chat calls.
//! - [`tools`]: the tools `tool_calls` jobs run (chat, uploads, downloads, file management).
//! - [`upstream`]: the sessions with the upstream MCP servers of `EXAI_MCP_SERVERS` (supervised,
//!   their tools published to the catalogue) and the calls of their tools.
//! - [`usage`]: cost accounting: each provider call's usage recorded in Redis, in the metrics
//!   and on the job's result.
//! - [`uploads`]: staged bytes → Moonshot → `provider_file_uploads` row → storage push job.
//! - [`storage`]: the `storage_push` job (Supabase Storage, retried by the queue), its retry
//!   policy and push queue ([`storage::policy`]), and re-drive.
//! - [`cleanup`]: the orphan cleanup (the scheduled job, and the runs of `exai-worker cleanup`
//!   and `kimi_manage_files`): snapshot, plan, act. Its report is `exai_shared::cleanup_report`.
//! - [`metrics`]: the Prometheus metrics of `exai-worker run` (`EXAI_WORKER_METRICS_ADDR`).
//! - [`cli`]: the operator commands (`cleanup`, `queue …`, `sem`, `usage`, `storage retry-failed`,
//!   `files list`).
#![warn(missing_docs)]

pub mod budget;
pub mod cleanup;
pub mod cli;
pub mod handlers;
pub mod metrics;
pub mod permits;
pub mod runtime;
pub mod state;
pub mod storage;
pub mod tools;
pub mod uploads;
pub mod upstream;
pub mod usage;

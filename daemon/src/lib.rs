//! `exai-daemon`: the WebSocket + HTTP server of EXAI Queue.
//!
//! The daemon never runs a tool, calls a provider or holds a semaphore. For each call it
//! validates the tool name and arguments against the shared tool registry, enqueues a
//! [`ToolCallJob`](exai_shared::jobs::ToolCallJob) on the `tool_calls` queue, acknowledges once
//! the job is durable in Redis, and relays what the workers publish until the result. The wire
//! protocol is docs/protocol.md; its types live in [`exai_shared::protocol`].
//!
//! Modules, in layers: each imports only the layers below it.
//! - [`server`]: one port for WebSocket upgrades (any path), the HTTP routes (`/health`,
//!   `/ready`, `/metrics`, `/admin`); [`run`] and graceful shutdown.
//! - `origin`: the `Origin` (`EXAI_WS_ALLOWED_ORIGINS`) and `Host` checks a request passes
//!   before the upgrade or an HTTP route.
//! - [`app`]: the shared [`App`], the token check, the time helpers.
//! - `health`: the `/health` and `/ready` answers, and the `health` and `queue_stats` reports.
//! - [`admin`]: the operator's JSON API under `/admin/api` and the `/admin` web page.
//! - [`connection`]: one socket — connection limits, the hello, the read loop, the writer task;
//!   [`connection::serve`] takes any [`Transport`](connection::Transport), so a test can drive
//!   a connection in process.
//! - `calls`: the requests — `call_tool` (validate, stage, enqueue, ack, then follow the job),
//!   `get_result`, `job_status`, `cancel`, and the simple ops; a call's outcome is recorded in
//!   one place.
//! - `caller`: the connection as its requests and calls see it.
//! - `follow`: the follower of one call, until its result; `answer`: what the client is told.
//! - `outbox`: the queue of frames to a connection's writer.
//! - [`relay`]: one Redis pub/sub connection per daemon carrying job events to waiting calls.
//! - `session`: the per-session count of calls in flight.
//! - [`limits`]: the connection counter; the limits it enforces (`EXAI_WS_MAX_CONNECTIONS`,
//!   …) are read with the rest of the configuration.
//! - [`metrics`]: Prometheus metrics.
//! - [`mcp`]: MCP at `/mcp` (Streamable HTTP, rmcp), answered by the calls layer, and the stdio
//!   bridge of `exai-mcp`.
//! - `resume`: the session's resume secret, issued by the hello and required to resume.
//! - `session_calls`: a session's unfinished calls in Redis, capped at `EXAI_SESSION_MAX_QUEUED`.
//! - `budget`: the session token budget (`EXAI_SESSION_TOKEN_BUDGET`), checked before a
//!   provider call is enqueued.
//! - `file_admin`: which `kimi_manage_files` operations need `EXAI_CLIENT_FILE_ADMIN`.
//! - `tls`: the rustls acceptor for `wss://` (`EXAI_WS_TLS_CERT`, `EXAI_WS_TLS_KEY`).
//! - `error`: [`DaemonError`], why the daemon could not start.
#![warn(missing_docs)]

pub mod admin;
mod answer;
pub mod app;
mod budget;
mod caller;
mod calls;
pub mod connection;
mod error;
mod file_admin;
mod follow;
mod health;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub(crate) mod origin;
mod outbox;
pub mod relay;
mod resume;
pub mod server;
mod session;
mod session_calls;
mod tls;

pub use app::App;
pub use error::DaemonError;
pub use limits::DaemonLimits;
pub use server::run;

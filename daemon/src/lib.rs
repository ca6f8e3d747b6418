//! `exai-daemon`: the WebSocket + HTTP server of EXAI Queue.
//!
//! The daemon never runs a tool, calls a provider or holds a semaphore. For each call it
//! validates the tool name and arguments against the shared tool registry, enqueues a
//! [`ToolCallJob`](exai_shared::jobs::ToolCallJob) on the `tool_calls` queue, acknowledges once
//! the job is durable in Redis, and relays what the workers publish until the result. The wire
//! protocol is docs/protocol.md; its types live in [`exai_shared::protocol`].
//!
//! Modules:
//! - [`server`]: one port for WebSocket upgrades (any path) and `GET /health`, `/ready`,
//!   `/metrics`; the shared [`App`](server::App); [`run`] and graceful shutdown.
//! - `connection`: one socket — connection limits, the hello, the read loop, the writer task.
//! - `calls`: the requests — `call_tool` (validate, enqueue, ack, follow the job), `get_result`,
//!   `job_status`, `cancel`, and the simple ops.
//! - [`relay`]: one Redis pub/sub connection per daemon carrying job events to waiting calls.
//! - `session`: the per-session count of calls in flight.
//! - [`limits`]: the connection counter; the limits it enforces (`EXAI_WS_MAX_CONNECTIONS`,
//!   …) are read with the rest of the configuration.
//! - [`metrics`]: Prometheus metrics.
//! - [`admin`]: the operator's JSON API under `/admin/api` and the `/admin` web page.
#![warn(missing_docs)]

pub mod admin;
mod calls;
mod connection;
pub mod limits;
pub mod metrics;
pub mod relay;
pub mod server;
mod session;

pub use limits::DaemonLimits;
pub use server::{DaemonError, run};

//! The daemon's Prometheus metrics, served as text on `GET /metrics`: its own counters
//! (connections, frames, calls by tool and outcome, enqueue latency) and the fleet-wide gauges
//! read from Redis at each scrape ([`FleetGauges`]: jobs per queue and state, paused queues,
//! semaphore permits in use and limits).
//!
//! Label values come from closed sets (the registered tool names plus `unknown`, and the
//! [`Outcome`] names), so no client input can grow the number of series.

use std::sync::Arc;

use exai_shared::fleet_metrics::FleetGauges;
use exai_shared::queue::Queue;
use exai_shared::semaphore::Semaphores;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a call ended, as far as the daemon saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A result was delivered.
    Completed,
    /// The tool failed (the job is dead).
    Failed,
    /// The call was cancelled.
    Cancelled,
    /// The call's deadline (or a single-frame client's wait) ran out.
    Timeout,
    /// Refused before enqueue: unknown tool or invalid arguments.
    Invalid,
    /// Refused before enqueue: too many calls in flight for the session.
    OverCapacity,
    /// Redis refused the enqueue or a read.
    Error,
    /// The client left before the result; the job goes on and its result is kept.
    Detached,
    /// The job vanished (expired or removed) while the daemon waited for it.
    Lost,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Timeout => "timeout",
            Self::Invalid => "invalid",
            Self::OverCapacity => "over_capacity",
            Self::Error => "error",
            Self::Detached => "detached",
            Self::Lost => "lost",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    tool: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// The daemon's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    fleet: FleetGauges,
    connections: Gauge,
    connections_opened: Counter,
    connections_refused: Family<ReasonLabels, Counter>,
    frames: Family<DirectionLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    calls_in_flight: Gauge,
    enqueue_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("exai_daemon");
        let fleet = FleetGauges::register(&mut registry);
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        let connections_opened = Counter::default();
        registry.register(
            "connections_opened",
            "WebSocket connections accepted (before the hello)",
            connections_opened.clone(),
        );
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "WebSocket connections closed by a limit or a failed handshake, by reason",
            connections_refused.clone(),
        );
        let frames = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "frames",
            "WebSocket text frames, by direction (in, out)",
            frames.clone(),
        );
        let calls = Family::<CallLabels, Counter>::default();
        registry.register("calls", "Tool calls by tool and outcome", calls.clone());
        let calls_in_flight = Gauge::default();
        registry.register(
            "calls_in_flight",
            "Calls whose result the daemon is waiting for",
            calls_in_flight.clone(),
        );
        let enqueue_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register(
            "enqueue_seconds",
            "Time to make a call durable in Redis",
            enqueue_seconds.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                fleet,
                connections,
                connections_opened,
                connections_refused,
                frames,
                calls,
                calls_in_flight,
                enqueue_seconds,
            }),
        }
    }

    /// A connection was accepted; the returned guard counts it as open until dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.inner.connections_opened.inc();
        self.inner.connections.inc();
        OpenConnection(self.clone())
    }

    /// A connection was closed by a limit or a failed handshake (`reason` is a fixed name).
    pub fn connection_refused(&self, reason: &'static str) {
        self.inner
            .connections_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A text frame came in.
    pub fn frame_in(&self) {
        self.frame("in");
    }

    /// A text frame went out.
    pub fn frame_out(&self) {
        self.frame("out");
    }

    fn frame(&self, direction: &'static str) {
        self.inner
            .frames
            .get_or_create(&DirectionLabels {
                direction: direction.to_owned(),
            })
            .inc();
    }

    /// A call to `tool` (the name of a built-in or upstream tool, or `unknown`: never a name a
    /// client made up, which would grow the label set without bound) ended with `outcome`.
    pub fn call(&self, tool: &str, outcome: Outcome) {
        self.inner
            .calls
            .get_or_create(&CallLabels {
                tool: tool.to_owned(),
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
    }

    /// A call is now awaited; the guard counts it until dropped.
    pub fn call_in_flight(&self) -> InFlightCall {
        self.inner.calls_in_flight.inc();
        InFlightCall(self.clone())
    }

    /// An enqueue took `seconds`.
    pub fn enqueue_took(&self, seconds: f64) {
        self.inner.enqueue_seconds.observe(seconds);
    }

    /// Reads the fleet-wide gauges (queue depth per state, paused queues, semaphore permits in
    /// use and limits) from Redis, for the scrape about to be rendered.
    pub async fn refresh(&self, queues: &[Queue], semaphores: &Semaphores) {
        self.inner.fleet.refresh(queues, semaphores).await;
    }

    /// The metrics in the Prometheus/OpenMetrics text format.
    pub fn render(&self) -> String {
        exai_shared::fleet_metrics::encode_text(&self.inner.registry)
    }
}

/// Counts one open connection while it lives.
#[derive(Debug)]
pub struct OpenConnection(Metrics);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.inner.connections.dec();
    }
}

/// Counts one awaited call while it lives.
#[derive(Debug)]
pub struct InFlightCall(Metrics);

impl Drop for InFlightCall {
    fn drop(&mut self) {
        self.0.inner.calls_in_flight.dec();
    }
}

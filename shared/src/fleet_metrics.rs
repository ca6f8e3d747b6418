//! The fleet-wide Prometheus gauges, read from Redis at scrape time: jobs per queue and state,
//! paused queues, and every semaphore's permits in use and limit. They describe the deployment,
//! not the process that serves them, so the daemon and every worker report the same values
//! (aggregate with `max`, not `sum`). Each process registers them in its own registry (prefix
//! `exai_daemon` or `exai_worker`) and calls [`FleetGauges::refresh`] before it encodes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::error_chain;
use crate::inspect::{QueuesReport, SemaphoresReport};
use crate::queue::{JobState, Queue};
use crate::semaphore::Semaphores;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueStateLabels {
    queue: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SemaphoreLabels {
    semaphore: String,
}

/// The scrape-time gauges of one registry.
#[derive(Debug, Clone, Default)]
pub struct FleetGauges {
    queue_jobs: Family<QueueStateLabels, Gauge>,
    queue_paused: Family<QueueLabels, Gauge>,
    semaphore_in_use: Family<SemaphoreLabels, Gauge>,
    semaphore_limit: Family<SemaphoreLabels, Gauge>,
    semaphore_effective_limit: Family<SemaphoreLabels, Gauge>,
    scrape_errors: Counter,
}

impl FleetGauges {
    /// Registers `queue_jobs{queue,state}`, `queue_paused{queue}`, `semaphore_in_use{semaphore}`,
    /// `semaphore_limit{semaphore}`, `semaphore_effective_limit{semaphore}` and `scrape_errors`
    /// in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let g = Self::default();
        registry.register(
            "queue_jobs",
            "Jobs per queue and state, read from Redis at scrape time (completed and cancelled: since the queue was created)",
            g.queue_jobs.clone(),
        );
        registry.register(
            "queue_paused",
            "1 while the queue is paused, read at scrape time",
            g.queue_paused.clone(),
        );
        registry.register(
            "semaphore_in_use",
            "Permits held by live leases, read at scrape time",
            g.semaphore_in_use.clone(),
        );
        registry.register(
            "semaphore_limit",
            "The configured permit limit (the ceiling of adaptive concurrency), read at scrape time",
            g.semaphore_limit.clone(),
        );
        registry.register(
            "semaphore_effective_limit",
            "The permit limit acquisitions use now (adaptive concurrency keeps it at or below the configured one), read at scrape time",
            g.semaphore_effective_limit.clone(),
        );
        registry.register(
            "scrape_errors",
            "Scrapes whose Redis reads (queue counts, semaphores) failed",
            g.scrape_errors.clone(),
        );
        g
    }

    /// Reads the queue counts and the semaphores from Redis into the gauges. A failed read
    /// clears its gauges (no stale values) and counts a scrape error.
    pub async fn refresh(&self, queues: &[Queue], semaphores: &Semaphores) {
        match QueuesReport::collect(queues).await {
            Ok(report) => {
                for (name, s) in report.queues {
                    let states = [
                        (JobState::Queued, s.queued),
                        (JobState::Scheduled, s.scheduled),
                        (JobState::Running, s.running),
                        (JobState::Retrying, s.retrying),
                        (JobState::Dead, s.dead),
                        (JobState::Completed, s.completed),
                        (JobState::Cancelled, s.cancelled),
                    ];
                    for (state, n) in states {
                        self.queue_jobs
                            .get_or_create(&QueueStateLabels {
                                queue: name.clone(),
                                state: state.as_str().to_owned(),
                            })
                            .set(gauge_value(n));
                    }
                    self.queue_paused
                        .get_or_create(&QueueLabels { queue: name })
                        .set(i64::from(s.paused));
                }
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "metrics: queue counts unreadable");
                self.queue_jobs.clear();
                self.queue_paused.clear();
                self.scrape_errors.inc();
            }
        }
        match SemaphoresReport::collect(semaphores).await {
            Ok(report) => {
                for (name, s) in report.semaphores {
                    let l = SemaphoreLabels { semaphore: name };
                    self.semaphore_in_use
                        .get_or_create(&l)
                        .set(gauge_value(s.in_use as u64));
                    match s.limit {
                        Some(limit) => {
                            self.semaphore_limit.get_or_create(&l).set(i64::from(limit));
                        }
                        None => {
                            self.semaphore_limit.remove(&l);
                        }
                    }
                    match s.effective_limit {
                        Some(limit) => {
                            self.semaphore_effective_limit
                                .get_or_create(&l)
                                .set(i64::from(limit));
                        }
                        None => {
                            self.semaphore_effective_limit.remove(&l);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "metrics: semaphores unreadable");
                self.semaphore_in_use.clear();
                self.semaphore_limit.clear();
                self.semaphore_effective_limit.clear();
                self.scrape_errors.inc();
            }
        }
    }
}

/// `registry` in the Prometheus/OpenMetrics text format (an encoding error is logged and
/// yields what was encoded so far).
pub fn encode_text(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "metrics could not be encoded");
    }
    out
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

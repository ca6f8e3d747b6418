//! The worker's Prometheus metrics, served as text on `GET /metrics` at
//! `EXAI_WORKER_METRICS_ADDR` while `exai-worker run` runs.
//!
//! Two kinds of series:
//! - **read at scrape time** from Redis: queue depth per queue and state, paused queues, and
//!   every semaphore's permits in use and limit. They describe the deployment, not this
//!   process, so every worker reports the same values (aggregate with `max`, not `sum`);
//! - **counted by this process**: job durations per queue and outcome (from the lease layer,
//!   through [`AttemptObserver`]), retries, dead jobs, semaphore waits and lost leases,
//!   storage push outcomes, cleanup removals, and the tokens of this process's provider calls
//!   (`exai_worker_tokens_total{provider,model,kind}`, kind = `prompt`, `completion`, `cached`).
//!
//! Label values come from closed sets (queue names, semaphore names, fixed outcome names), so
//! no job input can grow the number of series. Model names are the one open set: the first
//! [`MAX_MODEL_SERIES`] models get their own series, later ones are counted as `other`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use exai_shared::backend::{AttemptObserver, AttemptOutcome};
use exai_shared::fleet_metrics::FleetGauges;
use exai_shared::queue::Queue;
use exai_shared::semaphore::Semaphores;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueOutcomeLabels {
    queue: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SemaphoreLabels {
    semaphore: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    provider: String,
    limit: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SemaphoreOutcomeLabels {
    semaphore: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    provider: String,
    model: String,
    kind: String,
}

/// The most distinct model names the token counters label; calls of further models are counted
/// under `model="other"`.
pub const MAX_MODEL_SERIES: usize = 64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SweepLabels {
    sweep: String,
}

/// How a wait for semaphore permits ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The permits came within the wait.
    Acquired,
    /// The wait ran out; the job was put back.
    TimedOut,
    /// The job was cancelled while waiting.
    Cancelled,
}

impl WaitOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Acquired => "acquired",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }
}

/// How one storage push attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushAttempt {
    /// The bytes reached Supabase Storage; the row is completed.
    Pushed,
    /// A transient failure; the queue retries the push.
    Retry,
    /// The push gave up (budget spent, permanent error, storage off); the row is
    /// `storage_failed`.
    Failed,
    /// Nothing to push (the row was completed, deleted or failed meanwhile).
    Skipped,
}

impl PushAttempt {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pushed => "pushed",
            Self::Retry => "retry",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The worker's metrics. Cheap to clone.
#[derive(Clone)]
pub struct WorkerMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    fleet: FleetGauges,
    job_duration: HistogramFamily<QueueOutcomeLabels>,
    job_retries: Family<QueueLabels, Counter>,
    jobs_dead: Family<QueueLabels, Counter>,
    semaphore_waits: Family<SemaphoreOutcomeLabels, Counter>,
    semaphore_leases_lost: Family<SemaphoreLabels, Counter>,
    semaphore_limit_decreases: Family<SemaphoreLabels, Counter>,
    semaphore_limit_increases: Family<SemaphoreLabels, Counter>,
    budget_refusals: Family<BudgetLabels, Counter>,
    storage_pushes: Family<OutcomeLabels, Counter>,
    cleanup_sweeps: Family<SweepLabels, Counter>,
    cleanup_removed: Family<SweepLabels, Counter>,
    cleanup_removed_bytes: Family<SweepLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    /// The model names that have their own token series (at most [`MAX_MODEL_SERIES`]).
    token_models: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerMetrics")
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn job_duration_histogram() -> Histogram {
    // 1 ms to ~524 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

impl WorkerMetrics {
    /// A fresh registry with every metric registered (prefix `exai_worker`).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("exai_worker");
        let fleet = FleetGauges::register(&mut registry);
        let job_duration: HistogramFamily<QueueOutcomeLabels> =
            Family::new_with_constructor(job_duration_histogram);
        registry.register(
            "job_duration_seconds",
            "Time from an attempt's start to its settled outcome, by queue and outcome",
            job_duration.clone(),
        );
        let job_retries = Family::<QueueLabels, Counter>::default();
        registry.register(
            "job_retries",
            "Attempts that failed transiently and were scheduled for a retry",
            job_retries.clone(),
        );
        let jobs_dead = Family::<QueueLabels, Counter>::default();
        registry.register(
            "jobs_dead",
            "Jobs this process's attempts made dead (permanent error or attempts exhausted)",
            jobs_dead.clone(),
        );
        let semaphore_waits = Family::<SemaphoreOutcomeLabels, Counter>::default();
        registry.register(
            "semaphore_waits",
            "Jobs that found no free permit at once and waited, by semaphore and how the wait ended",
            semaphore_waits.clone(),
        );
        let semaphore_leases_lost = Family::<SemaphoreLabels, Counter>::default();
        registry.register(
            "semaphore_leases_lost",
            "Permit leases lost while a job held them (its provider work was stopped)",
            semaphore_leases_lost.clone(),
        );
        let semaphore_limit_decreases = Family::<SemaphoreLabels, Counter>::default();
        registry.register(
            "semaphore_limit_decreases",
            "Adaptive concurrency decreases of a semaphore's effective limit made by this process (provider congestion)",
            semaphore_limit_decreases.clone(),
        );
        let semaphore_limit_increases = Family::<SemaphoreLabels, Counter>::default();
        registry.register(
            "semaphore_limit_increases",
            "Adaptive concurrency increases of a semaphore's effective limit made by this process (successes)",
            semaphore_limit_increases.clone(),
        );
        let budget_refusals = Family::<BudgetLabels, Counter>::default();
        registry.register(
            "budget_refusals",
            "Chat calls put back by this process because a provider's rate budget (rpm, tpm, tpd) was spent",
            budget_refusals.clone(),
        );
        let storage_pushes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "storage_pushes",
            "Supabase Storage push attempts by outcome (pushed, retry, failed, skipped)",
            storage_pushes.clone(),
        );
        let cleanup_sweeps = Family::<SweepLabels, Counter>::default();
        registry.register(
            "cleanup_sweeps",
            "Cleanup sweeps run, by sweep",
            cleanup_sweeps.clone(),
        );
        let cleanup_removed = Family::<SweepLabels, Counter>::default();
        registry.register(
            "cleanup_removed",
            "Items removed by cleanup sweeps, by sweep",
            cleanup_removed.clone(),
        );
        let cleanup_removed_bytes = Family::<SweepLabels, Counter>::default();
        registry.register(
            "cleanup_removed_bytes",
            "Bytes freed by cleanup sweeps, by sweep",
            cleanup_removed_bytes.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens of this process's provider calls, by provider, model and kind (prompt, completion, cached)",
            tokens.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                fleet,
                job_duration,
                job_retries,
                jobs_dead,
                semaphore_waits,
                semaphore_leases_lost,
                semaphore_limit_decreases,
                semaphore_limit_increases,
                budget_refusals,
                storage_pushes,
                cleanup_sweeps,
                cleanup_removed,
                cleanup_removed_bytes,
                tokens,
                token_models: Default::default(),
            }),
        }
    }

    /// Creates the counted series of `queues` and `semaphores` at zero, so that they exist
    /// before the first event.
    pub fn register_names(&self, queues: &[&str], semaphores: &[&str]) {
        for q in queues {
            let l = QueueLabels {
                queue: (*q).to_owned(),
            };
            let _ = self.inner.job_retries.get_or_create(&l);
            let _ = self.inner.jobs_dead.get_or_create(&l);
        }
        for s in semaphores {
            let l = SemaphoreLabels {
                semaphore: (*s).to_owned(),
            };
            let _ = self.inner.semaphore_leases_lost.get_or_create(&l);
            let _ = self.inner.semaphore_limit_decreases.get_or_create(&l);
            let _ = self.inner.semaphore_limit_increases.get_or_create(&l);
        }
    }

    /// A job of `queue` waited for the permits of `semaphores`; the wait ended with `outcome`.
    pub fn semaphore_wait(&self, semaphores: &[&str], outcome: WaitOutcome) {
        for s in semaphores {
            self.inner
                .semaphore_waits
                .get_or_create(&SemaphoreOutcomeLabels {
                    semaphore: (*s).to_owned(),
                    outcome: outcome.as_str().to_owned(),
                })
                .inc();
        }
    }

    /// Adaptive concurrency changed the effective limit of `semaphore`.
    pub fn semaphore_limit_changed(&self, semaphore: &str, decreased: bool) {
        let family = if decreased {
            &self.inner.semaphore_limit_decreases
        } else {
            &self.inner.semaphore_limit_increases
        };
        family
            .get_or_create(&SemaphoreLabels {
                semaphore: semaphore.to_owned(),
            })
            .inc();
    }

    /// A chat call to `provider` found its `limit` budget (`rpm`, `tpm`, `tpd`) spent.
    pub fn budget_refused(&self, provider: &str, limit: &str) {
        self.inner
            .budget_refusals
            .get_or_create(&BudgetLabels {
                provider: provider.to_owned(),
                limit: limit.to_owned(),
            })
            .inc();
    }

    /// A provider call of `provider`'s `model` consumed `usage`.
    pub fn tokens_used(&self, provider: &str, model: &str, usage: &exai_shared::usage::Usage) {
        let model = {
            let mut models = self
                .inner
                .token_models
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if models.contains(model) || models.len() < MAX_MODEL_SERIES {
                models.insert(model.to_owned());
                model
            } else {
                "other"
            }
        };
        for (kind, n) in [
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("cached", usage.cached_tokens),
        ] {
            self.inner
                .tokens
                .get_or_create(&TokenLabels {
                    provider: provider.to_owned(),
                    model: model.to_owned(),
                    kind: kind.to_owned(),
                })
                .inc_by(n);
        }
    }

    /// A lease on `semaphores` was lost while its job held it.
    pub fn semaphore_lease_lost<S: AsRef<str>>(&self, semaphores: &[S]) {
        for s in semaphores {
            self.inner
                .semaphore_leases_lost
                .get_or_create(&SemaphoreLabels {
                    semaphore: s.as_ref().to_owned(),
                })
                .inc();
        }
    }

    /// A storage push attempt ended with `outcome`.
    pub fn storage_push(&self, outcome: PushAttempt) {
        self.inner
            .storage_pushes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
    }

    /// A cleanup sweep named `sweep` (a fixed name such as `supabase_objects`) ran and removed
    /// `removed` items holding `bytes` bytes.
    pub fn record_cleanup(&self, sweep: &str, removed: u64, bytes: u64) {
        let l = SweepLabels {
            sweep: sweep.to_owned(),
        };
        self.inner.cleanup_sweeps.get_or_create(&l).inc();
        self.inner.cleanup_removed.get_or_create(&l).inc_by(removed);
        self.inner
            .cleanup_removed_bytes
            .get_or_create(&l)
            .inc_by(bytes);
    }

    /// An attempt of a job of `queue` was settled with `outcome` after `elapsed`.
    pub fn job_settled(&self, queue: &str, outcome: AttemptOutcome, elapsed: Duration) {
        self.inner
            .job_duration
            .get_or_create(&QueueOutcomeLabels {
                queue: queue.to_owned(),
                outcome: outcome.as_str().to_owned(),
            })
            .observe(elapsed.as_secs_f64());
        let l = QueueLabels {
            queue: queue.to_owned(),
        };
        match outcome {
            AttemptOutcome::Retrying => self.inner.job_retries.get_or_create(&l).inc(),
            AttemptOutcome::Dead => self.inner.jobs_dead.get_or_create(&l).inc(),
            _ => 0,
        };
    }

    /// Reads the queue counts and the semaphores from Redis into the scrape-time gauges. A
    /// failed read clears its gauges (no stale values) and counts a scrape error.
    pub async fn refresh(&self, queues: &[Queue], semaphores: &Semaphores) {
        self.inner.fleet.refresh(queues, semaphores).await;
    }

    /// The metrics in the Prometheus/OpenMetrics text format.
    pub fn render(&self) -> String {
        exai_shared::fleet_metrics::encode_text(&self.inner.registry)
    }
}

impl AttemptObserver for WorkerMetrics {
    fn attempt_settled(&self, queue: &str, outcome: AttemptOutcome, elapsed: Duration) {
        self.job_settled(queue, outcome, elapsed);
    }
}

/// What `GET /metrics` reads at scrape time.
#[derive(Clone, Debug)]
struct Scrape {
    metrics: WorkerMetrics,
    queues: Arc<Vec<Queue>>,
    semaphores: Semaphores,
}

/// Binds `addr` and serves `GET /metrics` until `shutdown` fires; returns the bound address
/// (port 0 picks a free port). The queue gauges cover `queues`.
pub async fn serve(
    addr: SocketAddr,
    metrics: WorkerMetrics,
    queues: Vec<Queue>,
    semaphores: Semaphores,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("EXAI_WORKER_METRICS_ADDR: bind {addr}"))?;
    let bound = listener.local_addr()?;
    let scrape = Scrape {
        metrics,
        queues: Arc::new(queues),
        semaphores,
    };
    let app = axum::Router::new()
        .route("/metrics", get(render))
        .with_state(scrape);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "metrics on /metrics");
    Ok(bound)
}

async fn render(
    axum::extract::State(scrape): axum::extract::State<Scrape>,
) -> impl axum::response::IntoResponse {
    scrape
        .metrics
        .refresh(&scrape.queues, &scrape.semaphores)
        .await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        scrape.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    #[test]
    fn counted_series_render_with_their_labels() {
        let m = WorkerMetrics::new();
        m.register_names(&["uploads"], &["kimi"]);
        m.record_cleanup("supabase_objects", 3, 3000);
        m.record_cleanup("supabase_objects", 1, 500);
        m.record_cleanup("staging_blobs", 0, 0);
        m.storage_push(PushAttempt::Pushed);
        m.storage_push(PushAttempt::Pushed);
        m.storage_push(PushAttempt::Failed);
        m.semaphore_wait(&["global", "kimi"], WaitOutcome::TimedOut);
        m.semaphore_lease_lost(&["kimi"]);
        m.semaphore_limit_changed("kimi", true);
        m.semaphore_limit_changed("kimi", true);
        m.semaphore_limit_changed("kimi", false);
        m.budget_refused("kimi", "tpm");
        m.job_settled(
            "uploads",
            AttemptOutcome::Retrying,
            Duration::from_millis(20),
        );
        m.job_settled("uploads", AttemptOutcome::Dead, Duration::from_millis(30));
        let text = m.render();
        for (series, value) in [
            (
                r#"exai_worker_cleanup_sweeps_total{sweep="supabase_objects"}"#,
                2.0,
            ),
            (
                r#"exai_worker_cleanup_removed_total{sweep="supabase_objects"}"#,
                4.0,
            ),
            (
                r#"exai_worker_cleanup_removed_bytes_total{sweep="supabase_objects"}"#,
                3500.0,
            ),
            (
                r#"exai_worker_cleanup_sweeps_total{sweep="staging_blobs"}"#,
                1.0,
            ),
            (r#"exai_worker_storage_pushes_total{outcome="pushed"}"#, 2.0),
            (r#"exai_worker_storage_pushes_total{outcome="failed"}"#, 1.0),
            (
                r#"exai_worker_semaphore_waits_total{semaphore="kimi",outcome="timed_out"}"#,
                1.0,
            ),
            (
                r#"exai_worker_semaphore_waits_total{semaphore="global",outcome="timed_out"}"#,
                1.0,
            ),
            (
                r#"exai_worker_semaphore_leases_lost_total{semaphore="kimi"}"#,
                1.0,
            ),
            (
                r#"exai_worker_semaphore_limit_decreases_total{semaphore="kimi"}"#,
                2.0,
            ),
            (
                r#"exai_worker_budget_refusals_total{provider="kimi",limit="tpm"}"#,
                1.0,
            ),
            (
                r#"exai_worker_semaphore_limit_increases_total{semaphore="kimi"}"#,
                1.0,
            ),
            (r#"exai_worker_job_retries_total{queue="uploads"}"#, 1.0),
            (r#"exai_worker_jobs_dead_total{queue="uploads"}"#, 1.0),
            (
                r#"exai_worker_job_duration_seconds_count{queue="uploads",outcome="dead"}"#,
                1.0,
            ),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
    }

    #[test]
    fn tokens_are_counted_by_provider_model_and_kind_with_models_capped() {
        let m = WorkerMetrics::new();
        let usage = exai_shared::usage::Usage {
            prompt_tokens: 10,
            completion_tokens: 4,
            cached_tokens: 6,
            total_tokens: 14,
            calls: 1,
        };
        m.tokens_used("kimi", "kimi-k2", &usage);
        m.tokens_used("kimi", "kimi-k2", &usage);
        for i in 0..MAX_MODEL_SERIES {
            m.tokens_used("glm", &format!("glm-{i}"), &usage);
        }
        let text = m.render();
        for (series, value) in [
            (
                r#"exai_worker_tokens_total{provider="kimi",model="kimi-k2",kind="prompt"}"#,
                20.0,
            ),
            (
                r#"exai_worker_tokens_total{provider="kimi",model="kimi-k2",kind="completion"}"#,
                8.0,
            ),
            (
                r#"exai_worker_tokens_total{provider="kimi",model="kimi-k2",kind="cached"}"#,
                12.0,
            ),
            (
                r#"exai_worker_tokens_total{provider="glm",model="other",kind="prompt"}"#,
                10.0,
            ),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
    }
}

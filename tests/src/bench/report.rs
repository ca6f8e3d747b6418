//! The results of a run, printed as a Markdown table (ready for the README) or one JSON object.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::measure::{Machine, RunLoad, Usage};

/// How a row's value reads, and which ratios apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A rate; compared with both raw PING rates.
    PerSec(&'static str),
    /// A latency in milliseconds; compared with one sequential PING round trip.
    Millis,
    /// A plain ratio.
    Ratio,
    /// An amount in the given unit (MiB, KiB, …), compared with nothing.
    Amount(&'static str),
}

/// One measured quantity.
#[derive(Debug, Clone)]
pub struct Row {
    /// Its name in the JSON output.
    pub key: String,
    /// What it is, for the table.
    pub label: String,
    /// The value, in `unit`.
    pub value: f64,
    /// The unit.
    pub unit: Unit,
    /// What the phase cost, and over how many operations.
    pub cost: Option<(Usage, u64)>,
}

/// The raw Redis rates every ratio is taken against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Baseline {
    /// Sequential PING round trips per second on one connection.
    pub sequential_per_s: f64,
    /// PINGs per second from concurrent tasks on one multiplexed connection.
    pub pipelined_per_s: f64,
}

impl Baseline {
    /// One round trip, in milliseconds.
    fn rtt_ms(&self) -> f64 {
        if self.sequential_per_s > 0.0 {
            1e3 / self.sequential_per_s
        } else {
            0.0
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The machine and the Redis server.
    pub machine: Machine,
    /// The run's parameters, echoed.
    pub params: Value,
    /// The raw Redis rates.
    pub baseline: Baseline,
    /// The measurements, in table order.
    pub rows: Vec<Row>,
    /// Where the machine's CPU went during the run.
    pub load: Option<RunLoad>,
    /// Remarks about this run (anomalies worth knowing when reading it).
    pub notes: Vec<String>,
    /// The table's first line.
    pub title: String,
    /// How this mode's numbers were taken, printed after [`COLUMNS_LEGEND`].
    pub legend: &'static [&'static str],
}

/// What the table's columns mean, in every mode.
const COLUMNS_LEGEND: &[&str] = &[
    "× raw RT: a rate ÷ the sequential PING round trips/s (1 connection), a latency ÷ one such round trip. \
     × raw pipelined: a rate ÷ the PINGs/s of `concurrency` tasks on one multiplexed connection.",
    "Redis CPU/job: the Redis server's used_cpu_user + used_cpu_sys (INFO cpu) over the phase ÷ jobs; \
     it includes every client of that server, the bench's own polling included. \
     in scripts: the part of it spent executing EVAL/EVALSHA (their `usec` in INFO commandstats); the rest is \
     networking and the event loop. Redis busy: that CPU ÷ the phase's wall time (100 % = one core saturated). \
     cmds/job: commands Redis executed (total_commands_processed, commands inside scripts included) ÷ jobs; \
     scripts/job: EVAL/EVALSHA calls ÷ jobs, i.e. 1 ÷ the average batch.",
    "client CPU/job: utime + stime (/proc/<pid>/stat, 10 ms ticks) of whoever did the work ÷ jobs: the bench \
     process for enqueue and in-process rows, the exai-worker processes for worker rows (cold: start-up included).",
];

/// How the numbers of `exai-bench queue` were taken.
pub const QUEUE_LEGEND: &[&str] = &[
    "enqueue: fresh ids (UUIDv7), payload = the ToolCallJob {tool: test_echo, arguments: {}} as JSON, \
     the queue empty of workers. Bulk: one enqueue_bulk call per batch, one call in flight per producer.",
    "process cold: the backlog enqueued first, timed from spawning the exai-worker processes (process start-up, \
     Redis connect and subscribe included) until the last completion. Warm: workers idle, queue paused, \
     the backlog enqueued, timed from RESUME until the last completion. The last completion is when the \
     invalidation push of the queue's stats hash (CLIENT TRACKING BCAST, RESP3) reached the bench.",
    "latency: one job at a time on idle workers, each enqueued once the previous completed, 20 warm-up jobs \
     unreported; t0 just before the enqueue call. completed = Redis ran its completion, timed by the arrival \
     of the invalidation push of the queue's completed index, which only a completion writes (so the bench \
     is pushed nothing while the job is on its way); handler start = the in-process handler's first line.",
    "relay floor: the four hops of enqueue → completed with one plain command each and no queue: the bench \
     PUBLISHes a key name, an `exai-bench relay` process (RESP3 subscription, its reader hands the message \
     to a task, like a worker's wake-ups) SETs it, timed by the key's invalidation like the latency rows, \
     one at a time, 20 warm-up rounds; measured just before our latency phase, with the worker processes idle.",
    "protocol only: the queue API called directly, no apalis and no handler: each task fetches up to B jobs \
     and completes them with one complete_many, until the backlog (enqueued untimed) is empty; the row with \
     one task per worker process and B = concurrency is the protocol's ceiling for the process rows.",
    "BullMQ Rust port: bullmq-official 1.4.4 on the same Redis, same payload (as JSON data), same batch, same \
     number of worker processes and concurrency (exai-bench bullmq-worker: a Worker with a no-op processor, \
     default options otherwise); its latency is timed like ours, by the invalidation of its completed set \
     (then the job's finishedOn checked). The EXAI ÷ BullMQ rows divide our worker-process rows by these.",
    "retention: chunks of 10,000 jobs enqueued in bulk, then fetched and completed by the protocol loop, on \
     a queue whose results are kept 1 s; Redis used_memory (INFO memory) above its value before the phase, \
     sampled after each chunk (median of each half of the jobs, and the peak), and once DBSIZE is back to \
     where it was (give or take the queue's own keys) or stops falling. Flat: the second half's median \
     about the first's.",
    "history cost (--history-cost): first the engine-shaped protocol loop (one task per worker process, \
     fetch ≤ concurrency + complete_many) on fresh backlogs of protocol-jobs, each round once on a queue \
     that writes the per-minute history and once on one that does not: Redis CPU and script time per job \
     each way, free of process scheduling. Then the cold process phase again on fresh backlogs, each round \
     once with EXAI_QUEUE_HISTORY=true and once with false (alternating which goes first), new worker \
     processes each time; each mode's rate is its jobs over its summed drain times, and the ratio on ÷ off \
     is what the history costs (1.0 = nothing). Each drain's own figures are printed as it ends.",
    "backlog ratios: per-job time (1 / warm rate) and Redis CPU per job at the large backlog ÷ the same at \
     the small one; 1.0 means the per-job cost does not depend on the backlog. The small rounds include \
     each round's ramp-up and ramp-down, and their rate is the noisier of the two.",
];

impl Report {
    /// A report with no rows yet.
    pub fn new(machine: Machine, params: Value) -> Self {
        Self {
            machine,
            params,
            baseline: Baseline::default(),
            rows: Vec::new(),
            load: None,
            notes: Vec::new(),
            title: "exai-bench queue — EXAI Queue against raw Redis, one run".to_owned(),
            legend: QUEUE_LEGEND,
        }
    }

    /// Sets the table's first line and the mode's legend.
    pub fn with_heading(mut self, title: &str, legend: &'static [&'static str]) -> Self {
        self.title = title.to_owned();
        self.legend = legend;
        self
    }

    /// Adds a rate: `ops` operations in `secs`.
    pub fn rate(
        &mut self,
        key: &str,
        label: String,
        unit: &'static str,
        ops: u64,
        secs: f64,
        cost: Option<Usage>,
    ) -> f64 {
        let value = if secs > 0.0 { ops as f64 / secs } else { 0.0 };
        self.rows.push(Row {
            key: key.to_owned(),
            label,
            value,
            unit: Unit::PerSec(unit),
            cost: cost.map(|c| (c, ops)),
        });
        value
    }

    /// Adds a latency in milliseconds.
    pub fn millis(&mut self, key: &str, label: String, ms: f64) {
        self.rows.push(Row {
            key: key.to_owned(),
            label,
            value: ms,
            unit: Unit::Millis,
            cost: None,
        });
    }

    /// Adds an amount in `unit`.
    pub fn amount(&mut self, key: &str, label: String, unit: &'static str, value: f64) {
        self.rows.push(Row {
            key: key.to_owned(),
            label,
            value,
            unit: Unit::Amount(unit),
            cost: None,
        });
    }

    /// Adds a plain ratio.
    pub fn ratio(&mut self, key: &str, label: String, value: f64) {
        self.rows.push(Row {
            key: key.to_owned(),
            label,
            value,
            unit: Unit::Ratio,
            cost: None,
        });
    }

    /// The value of the row named `key`, if there is one.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.key == key).map(|r| r.value)
    }

    /// The table, its header and its legend.
    pub fn to_table(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        let _ = writeln!(
            out,
            "machine: {} CPUs (nproc), {}; Redis {} (load before the run: {:.1} % of a core)",
            m.nproc, m.cpu_model, m.redis_version, m.redis_background_pct
        );
        if let Some(l) = &self.load {
            let _ = writeln!(
                out,
                "CPU during the run ({:.0} s, load average {:.2} before): {:.2} of {} cores busy — \
                 Redis {:.2}, bench {:.2}, worker processes {:.2}, other processes {:.2}",
                l.wall_s,
                l.load_average_before,
                l.busy_cores,
                m.nproc,
                l.redis_cores,
                l.bench_cores,
                l.workers_cores,
                l.other_cores
            );
        }
        let _ = writeln!(out, "run: {}", params_line(&self.params));
        let _ = writeln!(out);
        let header = [
            "metric",
            "value",
            "unit",
            "× raw RT",
            "× raw pipelined",
            "Redis CPU/job",
            "in scripts",
            "Redis busy",
            "cmds/job",
            "scripts/job",
            "client CPU/job",
        ];
        let rows: Vec<Vec<String>> = self.rows.iter().map(|r| self.cells(r).into()).collect();
        out.push_str(&markdown_table(&header, &rows, &[0, 2]));
        let _ = writeln!(out);
        for l in COLUMNS_LEGEND.iter().chain(self.legend) {
            let _ = writeln!(out, "- {l}");
        }
        for n in &self.notes {
            let _ = writeln!(out, "- note: {n}");
        }
        out
    }

    /// The cells of one row.
    fn cells(&self, r: &Row) -> [String; 11] {
        let b = &self.baseline;
        let ratio = |v: f64, base: f64| {
            if base > 0.0 {
                format!("{:.2}", v / base)
            } else {
                String::new()
            }
        };
        let (value, unit, rt, piped) = match r.unit {
            Unit::PerSec(u) => (
                thousands(r.value),
                u.to_owned(),
                ratio(r.value, b.sequential_per_s),
                ratio(r.value, b.pipelined_per_s),
            ),
            Unit::Millis => (
                format!("{:.3}", r.value),
                "ms".to_owned(),
                ratio(r.value, b.rtt_ms()),
                String::new(),
            ),
            Unit::Ratio => (
                format!("{:.2}", r.value),
                "×".to_owned(),
                String::new(),
                String::new(),
            ),
            Unit::Amount(u) => (
                format!("{:.1}", r.value),
                u.to_owned(),
                String::new(),
                String::new(),
            ),
        };
        let [redis, script, busy, cmds, calls, client] = match &r.cost {
            Some((u, ops)) => [
                format!("{:.2} µs", u.redis_us_per(*ops)),
                format!("{:.2} µs", u.script_us_per(*ops)),
                format!("{:.0} %", u.redis_busy_pct()),
                format!("{:.2}", u.commands_per(*ops)),
                format!("{:.3}", u.script_calls_per(*ops)),
                format!("{:.2} µs", u.client_us_per(*ops)),
            ],
            None => Default::default(),
        };
        [
            r.label.clone(),
            value,
            unit,
            rt,
            piped,
            redis,
            script,
            busy,
            cmds,
            calls,
            client,
        ]
    }

    /// One JSON object: every row under its key, with — when its cost was measured, and
    /// `<base>` being the key without `_per_s` — `<base>_redis_cpu_us_per_job`,
    /// `<base>_redis_script_us_per_job`, `<base>_redis_cmds_per_job`,
    /// `<base>_redis_script_calls_per_job`, `<base>_client_cpu_us_per_job` and
    /// `<base>_redis_busy_pct`; then the round-trip time, the machine, the run's CPU load, the
    /// parameters and the notes.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        let round = |v: f64, places: i32| {
            let f = 10f64.powi(places);
            (v * f).round() / f
        };
        for r in &self.rows {
            let places = match r.unit {
                Unit::PerSec(_) => 1,
                Unit::Millis => 4,
                Unit::Ratio => 3,
                Unit::Amount(_) => 2,
            };
            o.insert(r.key.clone(), json!(round(r.value, places)));
            if let Some((u, ops)) = &r.cost {
                let base = r.key.strip_suffix("_per_s").unwrap_or(&r.key);
                let per_job = [
                    ("redis_cpu_us_per_job", u.redis_us_per(*ops)),
                    ("redis_script_us_per_job", u.script_us_per(*ops)),
                    ("redis_cmds_per_job", u.commands_per(*ops)),
                    ("redis_script_calls_per_job", u.script_calls_per(*ops)),
                    ("client_cpu_us_per_job", u.client_us_per(*ops)),
                ];
                for (name, v) in per_job {
                    o.insert(format!("{base}_{name}"), json!(round(v, 4)));
                }
                o.insert(
                    format!("{base}_redis_busy_pct"),
                    json!(round(u.redis_busy_pct(), 1)),
                );
            }
        }
        o.insert(
            "redis_rtt_ms".to_owned(),
            json!(round(self.baseline.rtt_ms(), 4)),
        );
        o.insert(
            "machine".to_owned(),
            serde_json::to_value(&self.machine).unwrap_or(Value::Null),
        );
        o.insert(
            "run_load".to_owned(),
            serde_json::to_value(self.load).unwrap_or(Value::Null),
        );
        o.insert("params".to_owned(), self.params.clone());
        o.insert("notes".to_owned(), json!(self.notes));
        Value::Object(o)
    }
}

/// A Markdown table: `header`, then `rows`; the columns in `left` are aligned left, the others
/// (numbers) right, and every cell is padded to its column's width.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>], left: &[usize]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        out.push('|');
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - c.chars().count();
            if left.contains(&i) {
                let _ = write!(out, " {c}{} |", " ".repeat(pad));
            } else {
                let _ = write!(out, " {}{c} |", " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    let head: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    line(&head, &mut out);
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if left.contains(&i) {
                "-".repeat(*w)
            } else {
                format!("{}:", "-".repeat(w - 1))
            }
        })
        .collect();
    line(&rule, &mut out);
    for r in rows {
        line(r, &mut out);
    }
    out
}

/// `key value, key value, …` from the parameters object.
pub fn params_line(params: &Value) -> String {
    match params {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k} {s}"),
                other => format!("{k} {other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// A rate rounded to an integer, with thousands separators.
pub fn thousands(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// What every benchmark's report can do: print itself as a table, or as one JSON object.
pub trait Printable: Send {
    /// The table, its header and its legend.
    fn table(&self) -> String;
    /// One JSON object of every number.
    fn json(&self) -> Value;
}

impl Printable for Report {
    fn table(&self) -> String {
        self.to_table()
    }
    fn json(&self) -> Value {
        self.to_json()
    }
}

/// The rows `exai-bench all` repeats in its summary, by JSON key.
const HEADLINES: &[&str] = &[
    "redis_roundtrips_per_s",
    "enqueue_per_s",
    "enqueue_bulk_per_s",
    "process_per_s",
    "process_warm_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "relay_p50_ms",
    "relay_p99_ms",
    "vs_relay_latency_p50_ratio",
    "vs_relay_latency_p99_ratio",
    "bullmq_enqueue_bulk_per_s",
    "bullmq_process_per_s",
    "bullmq_latency_p50_ms",
    "bullmq_latency_p99_ms",
    "vs_bullmq_enqueue_bulk_ratio",
    "vs_bullmq_process_ratio",
    "vs_bullmq_latency_p50_ratio",
    "vs_bullmq_latency_p99_ratio",
    "backlog_cost_ratio",
    "backlog_redis_cpu_ratio",
    "retention_first_half_median_mib",
    "retention_second_half_median_mib",
    "retention_peak_mib",
    "retention_after_expiry_mib",
    "retention_keys_left",
    "sem_acquire_release_per_s",
    "sem_wakeup_p50_ms",
    "sem_wakeup_p99_ms",
    "ws_calls_per_s",
    "ws_latency_p50_ms",
    "ws_latency_p99_ms",
    "queue_latency_p50_ms",
    "queue_latency_p99_ms",
    "small_files_per_s",
    "large_mb_per_s",
    "worker_idle_rss_mb",
    "worker_peak_rss_mb_100mb",
    "daemon_rss_idle_mib",
    "daemon_rss_idle_connections_mib",
    "daemon_rss_per_connection_kib",
    "vs_baseline_ws_calls_ratio",
    "silent_before_hello_spread_rss_peak_mib",
    "silent_after_hello_spread_rss_peak_mib",
    "silent_after_hello_spread_rss_after_mib",
    "silent_after_hello_spread_closed_s",
    "idle_tcp_rss_peak_mib",
    "idle_tcp_rss_after_mib",
    "idle_tcp_closed_s",
];

/// The headline numbers of several runs in one Markdown table (run, metric, value), taken from
/// their JSON by key; the key's suffix says the unit (`_per_s`, `_ms`, `_mb`, `_mib`, `_kib`).
pub fn summary(reports: &[(&str, Box<dyn Printable>)]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let jsons: Vec<(&str, Value)> = reports.iter().map(|(n, r)| (*n, r.json())).collect();
    for key in HEADLINES {
        for (run, json) in &jsons {
            if let Some(v) = json.get(*key).and_then(Value::as_f64) {
                let shown = if key.ends_with("_per_s") {
                    thousands(v)
                } else if key.ends_with("_ms") {
                    format!("{v:.3}")
                } else {
                    format!("{v:.2}")
                };
                rows.push(vec![(*run).to_owned(), (*key).to_owned(), shown]);
            }
        }
    }
    let mut out = String::from("exai-bench all — the headline numbers of this run\n\n");
    out.push_str(&markdown_table(&["run", "metric", "value"], &rows, &[0, 1]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.4), "1,234,567");
    }
}

//! `exai-bench uploads`: the upload pipeline against direct uploads to the emulator, in one run.
//!
//! The run starts `exai-sim` (Moonshot + Supabase Storage) and `exai-worker run` processes from
//! the same build, on a fresh Postgres database (created on `EXAI_TEST_PG_ADMIN_URL`, migrated,
//! dropped at the end), a temporary upload root and staging directory, and a key prefix of its
//! own on `REDIS_URL`. Every file holds distinct bytes, so no upload is answered by dedup.
//!
//! 1. **Small files**: `small_files` files of `small_bytes`, one `kimi_upload_files` tool call
//!    each, enqueued on `tool_calls` in one bulk call — the job a client's `call_tool` becomes.
//!    Timed from the enqueue until every row is `completed` (on Moonshot, and pushed to Supabase
//!    Storage); the time until every row exists (Moonshot has the file: the call's answer) is
//!    reported too.
//! 2. **Large files**: the same with `large_files` files of `large_bytes`, as MB/s
//!    (MB = 10⁶ bytes).
//! 3. **Direct** (the baseline of the ratio column): the same files POSTed straight to the
//!    emulator's `/v1/files` with reqwest — streamed from disk, `baseline_concurrency` at a time
//!    (by default the `kimi` semaphore's 6 permits, which bound the queue path too) — with no
//!    queue, staging, database or storage push.
//! 4. **Memory**: a fresh worker uploads one small file (warm-up); its resident set then is its
//!    idle RSS (`VmRSS`). It then uploads one `rss_bytes` file to the end (storage push
//!    included); its peak RSS (`VmHWM`) afterwards is what streaming that file cost.
//!
//! Completion is read from Postgres every few milliseconds, which bounds the resolution of each
//! time; every phase lasts seconds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use exai_shared::Config;
use exai_shared::jobs::ToolCallJob;
use exai_shared::keys::Keys;
use exai_shared::queue::{JobState, NewJob, Queue, QueuePolicy, TOOL_CALLS};
use exai_shared::redis::RedisHandle;
use exai_tests::TestDb;
use futures::StreamExt;
use serde_json::{Map, Value, json};
use sqlx::PgPool;

use super::measure::{self, Machine};
use super::procs::WorkerProcs;
use super::report::{markdown_table, params_line, thousands};

/// The bearer key the emulator is started with and the workers use.
const SIM_KEY: &str = "sk-exai-bench";

/// One MB, for rates (10⁶ bytes).
const MB: f64 = 1_000_000.0;

/// One MiB, for memory.
const MIB: f64 = 1024.0 * 1024.0;

/// How often completion is read from Postgres.
const POLL: Duration = Duration::from_millis(5);

/// What to run (see the flags of `exai-bench uploads`).
#[derive(Debug, Clone)]
pub struct Options {
    /// The Redis server.
    pub redis_url: String,
    /// Files of the small-file phase.
    pub small_files: u64,
    /// Size of each small file.
    pub small_bytes: u64,
    /// Files of the large-file phase.
    pub large_files: u64,
    /// Size of each large file.
    pub large_bytes: u64,
    /// Size of the file of the memory phase.
    pub rss_bytes: u64,
    /// `--concurrency` of the worker processes.
    pub concurrency: usize,
    /// `exai-worker` processes of the throughput phases.
    pub workers: usize,
    /// Uploads in flight at once in the direct baseline.
    pub baseline_concurrency: usize,
    /// The `exai-worker` binary.
    pub worker_bin: PathBuf,
    /// The `exai-sim` binary.
    pub sim_bin: PathBuf,
}

/// One measured quantity, with its direct-upload counterpart when there is one.
#[derive(Debug, Clone)]
struct Row {
    key: &'static str,
    label: String,
    value: f64,
    unit: &'static str,
    direct: Option<f64>,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    machine: Machine,
    params: Value,
    rows: Vec<Row>,
    notes: Vec<String>,
}

const LEGEND: &[&str] = &[
    "queue path: kimi_upload_files tool calls enqueued on tool_calls in one bulk call, run by the worker \
     processes (stage by sha256, dedup check, Moonshot upload under the global+kimi permits, row, \
     storage_push job, Supabase upload), timed from the enqueue until every row is completed; \
     \"on Moonshot\" stops when every row exists (the call's answer).",
    "direct: the same files POSTed to exai-sim's /v1/files with reqwest (multipart, streamed from disk), \
     as many at once as the kimi semaphore allows the queue path; no queue, staging, database or storage. \
     × direct = queue path ÷ direct.",
    "RSS: VmRSS of a fresh worker after one small upload (idle), and its VmHWM (peak) after staging, \
     uploading and pushing one large file. The emulator runs on the same machine and shares its CPUs.",
];

impl Report {
    fn push(
        &mut self,
        key: &'static str,
        label: String,
        value: f64,
        unit: &'static str,
        direct: Option<f64>,
    ) {
        self.rows.push(Row {
            key,
            label,
            value,
            unit,
            direct,
        });
    }

    /// The table, its header and its legend.
    pub fn to_table(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        out.push_str("exai-bench uploads — the upload pipeline against direct uploads, one run\n");
        out.push_str(&format!(
            "machine: {} CPUs (nproc), {}; Redis {}\n",
            m.nproc, m.cpu_model, m.redis_version
        ));
        out.push_str(&format!("run: {}\n\n", params_line(&self.params)));
        let number = |v: f64, unit: &str| {
            if unit == "files/s" && v >= 100.0 {
                thousands(v)
            } else {
                format!("{v:.1}")
            }
        };
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                let (direct, ratio) = match r.direct {
                    Some(d) if d > 0.0 => (number(d, r.unit), format!("{:.2}", r.value / d)),
                    _ => (String::new(), String::new()),
                };
                vec![
                    r.label.clone(),
                    number(r.value, r.unit),
                    r.unit.to_owned(),
                    direct,
                    ratio,
                ]
            })
            .collect();
        out.push_str(&markdown_table(
            &["metric", "value", "unit", "direct", "× direct"],
            &rows,
            &[0, 2],
        ));
        out.push('\n');
        for l in LEGEND {
            out.push_str(&format!("- {l}\n"));
        }
        for n in &self.notes {
            out.push_str(&format!("- note: {n}\n"));
        }
        out
    }

    /// One JSON object: every row under its key, with `<key>_direct` and `<key>_x_direct` where
    /// there is a baseline; then the machine, the parameters and the notes.
    pub fn to_json(&self) -> Value {
        let round = |v: f64| (v * 100.0).round() / 100.0;
        let mut o = Map::new();
        for r in &self.rows {
            o.insert(r.key.to_owned(), json!(round(r.value)));
            if let Some(d) = r.direct {
                o.insert(format!("{}_direct", r.key), json!(round(d)));
                if d > 0.0 {
                    o.insert(format!("{}_x_direct", r.key), json!(round(r.value / d)));
                }
            }
        }
        o.insert(
            "machine".to_owned(),
            serde_json::to_value(&self.machine).unwrap_or(Value::Null),
        );
        o.insert("params".to_owned(), self.params.clone());
        o.insert("notes".to_owned(), json!(self.notes));
        Value::Object(o)
    }
}

/// Prints progress to stderr (stdout carries only the table or the JSON).
fn progress(what: &str) {
    eprintln!("exai-bench: {what}");
}

/// The run's resources: removed when dropped (the database by [`TestDb`], processes by their
/// guards, the directory here).
struct Scratch {
    dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs every phase under key prefix `prefix`; keys are left for the caller's cleanup.
pub async fn run(opts: Options, prefix: String) -> anyhow::Result<Report> {
    for (bin, what) in [
        (&opts.worker_bin, "--worker-bin"),
        (&opts.sim_bin, "--sim-bin"),
    ] {
        anyhow::ensure!(
            bin.exists(),
            "{} does not exist: build it first (cargo build --release -p exai-worker -p exai-tests) \
             or pass {what}",
            bin.display()
        );
    }
    let config = Config::from_vars([
        ("REDIS_URL", opts.redis_url.as_str()),
        ("EXAI_REDIS_PREFIX", prefix.as_str()),
    ])?;
    let mut conn = RedisHandle::connect(&config.redis)
        .await
        .context("connect to redis")?;
    let machine = measure::machine(&mut conn).await?;
    let queue = Queue::new(
        conn,
        &Keys::new(&prefix),
        TOOL_CALLS,
        QueuePolicy::from_config(&config.jobs),
    );

    progress("database, emulator and directories");
    let db = TestDb::try_new().await?;
    let pool = db.pool().await;
    exai_shared::db::migrate(&pool)
        .await
        .context("migrate the benchmark's database")?;
    let scratch = Scratch {
        dir: std::env::temp_dir().join(format!("exai-bench-{prefix}")),
    };
    let root = scratch.dir.join("root");
    let staging = scratch.dir.join("staging");
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    // Room for every file of a run, whatever its flags (Moonshot's own cap is 1,000).
    let (mut sim, sim_url) = super::procs::spawn_sim(
        &opts.sim_bin,
        &["--key", SIM_KEY, "--max-files", "1000000"],
        &prefix,
    )
    .await?;
    let http = reqwest::Client::new();
    let moonshot_url = format!("{sim_url}/v1");
    let worker_env: Vec<(String, String)> = [
        ("REDIS_URL", opts.redis_url.clone()),
        ("EXAI_REDIS_PREFIX", prefix.clone()),
        ("DATABASE_URL", db.url.clone()),
        ("EXAI_AUTO_MIGRATE", "false".to_owned()),
        ("KIMI_API_URL", moonshot_url.clone()),
        ("KIMI_API_KEY", SIM_KEY.to_owned()),
        ("SUPABASE_URL", sim_url.clone()),
        ("SUPABASE_SERVICE_ROLE_KEY", SIM_KEY.to_owned()),
        ("EXAI_UPLOAD_ROOTS", root.display().to_string()),
        ("EXAI_STAGING_DIR", staging.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let params = json!({
        "small_files": opts.small_files,
        "small_bytes": opts.small_bytes,
        "large_files": opts.large_files,
        "large_bytes": opts.large_bytes,
        "rss_bytes": opts.rss_bytes,
        "workers": opts.workers,
        "concurrency": opts.concurrency,
        "baseline_concurrency": opts.baseline_concurrency,
        "prefix": prefix,
    });
    let mut report = Report {
        machine,
        params,
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let load_before = measure::load_average();
    let busy_before = measure::machine_busy_secs();
    let run_started = Instant::now();

    progress("writing the files");
    let small = write_files(&root, "small", 0, opts.small_files, opts.small_bytes).await?;
    let large = write_files(&root, "large", 1, opts.large_files, opts.large_bytes).await?;
    let warm = write_files(&root, "warm", 2, 2, opts.small_bytes).await?;
    let big = write_files(&root, "rss", 3, 1, opts.rss_bytes).await?;

    let mut workers = spawn_workers(
        &opts,
        &worker_env,
        opts.workers,
        &format!("{prefix}-worker"),
    )?;
    let mut pipeline = Pipeline {
        queue,
        pool: pool.clone(),
        done: 0,
        calls: 0,
    };
    progress("warm-up upload");
    pipeline
        .upload(&warm[..1], &mut [&mut workers, &mut sim])
        .await?;

    progress("small files through the queue");
    let t = pipeline
        .upload(&small, &mut [&mut workers, &mut sim])
        .await?;
    let n = small.len() as f64;
    let small_rate = n / t.stored;
    let small_answer_rate = n / t.answered;

    progress("large files through the queue");
    let t = pipeline
        .upload(&large, &mut [&mut workers, &mut sim])
        .await?;
    let large_mb = (opts.large_files * opts.large_bytes) as f64 / MB;
    let large_rate = large_mb / t.stored;
    let large_answer_rate = large_mb / t.answered;
    workers.stop(Duration::from_secs(10)).await?;

    progress("the same files POSTed straight to exai-sim");
    let direct_small = direct(&http, &moonshot_url, &small, opts.baseline_concurrency).await?;
    let direct_large = direct(&http, &moonshot_url, &large, opts.baseline_concurrency).await?;
    let direct_small_rate = n / direct_small;
    let direct_large_rate = large_mb / direct_large;

    progress("worker memory: idle, then one large file");
    let mut fresh = spawn_workers(&opts, &worker_env, 1, &format!("{prefix}-rss-worker"))?;
    pipeline
        .upload(&warm[1..], &mut [&mut fresh, &mut sim])
        .await?;
    let pid = fresh.pids().first().copied().context("the worker's pid")?;
    let idle = measure::proc_status_bytes(pid, "VmRSS").context("read the worker's VmRSS")?;
    let t = pipeline.upload(&big, &mut [&mut fresh, &mut sim]).await?;
    let peak = measure::proc_status_bytes(pid, "VmHWM").context("read the worker's VmHWM")?;
    let big_rate = opts.rss_bytes as f64 / MB / t.stored;
    fresh.stop(Duration::from_secs(10)).await?;
    sim.stop(Duration::from_secs(5)).await?;

    let small_label = format!(
        "{} small files ({}) via tool calls, until all rows completed",
        opts.small_files,
        size(opts.small_bytes)
    );
    report.push(
        "small_files_per_s",
        small_label,
        small_rate,
        "files/s",
        Some(direct_small_rate),
    );
    report.push(
        "small_files_on_moonshot_per_s",
        "  the same, until every file is on Moonshot".to_owned(),
        small_answer_rate,
        "files/s",
        Some(direct_small_rate),
    );
    report.push(
        "large_mb_per_s",
        format!(
            "{} large files ({}) via tool calls, until all rows completed",
            opts.large_files,
            size(opts.large_bytes)
        ),
        large_rate,
        "MB/s",
        Some(direct_large_rate),
    );
    report.push(
        "large_on_moonshot_mb_per_s",
        "  the same, until every file is on Moonshot".to_owned(),
        large_answer_rate,
        "MB/s",
        Some(direct_large_rate),
    );
    report.push(
        "rss_file_mb_per_s",
        format!(
            "one {} file on a fresh worker, until completed",
            size(opts.rss_bytes)
        ),
        big_rate,
        "MB/s",
        None,
    );
    report.push(
        "worker_idle_rss_mb",
        "worker RSS, idle after one small upload".to_owned(),
        idle as f64 / MIB,
        "MiB",
        None,
    );
    report.push(
        "worker_peak_rss_mb_100mb",
        format!("worker peak RSS after the {} file", size(opts.rss_bytes)),
        peak as f64 / MIB,
        "MiB",
        None,
    );
    let wall = run_started.elapsed().as_secs_f64();
    let busy = (measure::machine_busy_secs() - busy_before) / wall;
    report.notes.push(format!(
        "CPU during the run ({wall:.0} s, load average {load_before:.2} before): {busy:.2} of {} cores busy, \
         the emulator, Postgres and Redis included",
        report.machine.nproc
    ));
    pool.close().await;
    drop(db);
    drop(scratch);
    Ok(report)
}

/// `n` bytes as `4 KiB`, `20 MiB`, or plain bytes.
fn size(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

/// Writes `count` files of `bytes` each under `root` (`<stem>-<i>.bin`), every one with
/// distinct content: a pseudo-random block stamped with (`seed`, file, block).
async fn write_files(
    root: &Path,
    stem: &str,
    seed: u64,
    count: u64,
    bytes: u64,
) -> anyhow::Result<Vec<PathBuf>> {
    let root = root.to_owned();
    let stem = stem.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        const BLOCK: usize = 1 << 20;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed;
        let block: Vec<u8> = (0..BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect();
        let mut paths = Vec::with_capacity(count as usize);
        for i in 0..count {
            let path = root.join(format!("{stem}-{i}.bin"));
            let file = std::fs::File::create(&path)
                .with_context(|| format!("create {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let mut left = bytes;
            let mut piece = block.clone();
            let mut b: u64 = 0;
            while left > 0 {
                let stamp = [seed, i, b];
                for (k, v) in stamp.iter().enumerate() {
                    piece[k * 8..k * 8 + 8].copy_from_slice(&v.to_le_bytes());
                }
                let take = left.min(BLOCK as u64) as usize;
                w.write_all(&piece[..take])?;
                left -= take as u64;
                b += 1;
            }
            w.flush()?;
            paths.push(path);
        }
        Ok(paths)
    })
    .await?
}

/// The times of one batch of uploads through the queue, in seconds from the enqueue.
struct Times {
    /// Every file has its row (Moonshot has it: the call's answer).
    answered: f64,
    /// Every row is `completed` (the storage push is done).
    stored: f64,
}

/// `n` × `exai-worker run --concurrency <concurrency>` (every queue) with `env`.
fn spawn_workers(
    opts: &Options,
    env: &[(String, String)],
    n: usize,
    log_stem: &str,
) -> anyhow::Result<WorkerProcs> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let concurrency = opts.concurrency.to_string();
    WorkerProcs::spawn_with(
        &opts.worker_bin,
        n,
        &["run", "--concurrency", &concurrency],
        &env,
        log_stem,
    )
}

/// Uploads through the queue, counting what earlier batches left in the table.
struct Pipeline {
    queue: Queue,
    pool: PgPool,
    /// Rows completed by earlier batches.
    done: i64,
    /// Calls enqueued so far (their ids).
    calls: u64,
}

impl Pipeline {
    /// Enqueues one `kimi_upload_files` call per file in one bulk call and waits until every
    /// file's row is `completed`, watching `procs` for early exits and the queue for dead calls.
    async fn upload(
        &mut self,
        files: &[PathBuf],
        procs: &mut [&mut WorkerProcs],
    ) -> anyhow::Result<Times> {
        let jobs = files
            .iter()
            .map(|path| {
                self.calls += 1;
                NewJob::json(&ToolCallJob {
                    tool: exai_shared::tools::KIMI_UPLOAD_FILES.to_owned(),
                    arguments: json!({"files": [path.display().to_string()]}),
                    session_id: "bench".to_owned(),
                    request_id: None,
                    deadline_ms: None,
                    staged: None,
                })
                .map(|j| j.with_id(format!("bench-upload-{}", self.calls)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let target = self.done + files.len() as i64;
        let limit = Duration::from_secs(120 + files.len() as u64);
        let started = Instant::now();
        for chunk in jobs.chunks(1000) {
            self.queue.enqueue_bulk(chunk).await?;
        }
        let mut answered = None;
        let mut checked = Instant::now();
        loop {
            let (rows, completed): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE upload_status = 'completed') \
                 FROM provider_file_uploads",
            )
            .fetch_one(&self.pool)
            .await?;
            if answered.is_none() && rows >= target {
                answered = Some(started.elapsed().as_secs_f64());
            }
            if completed >= target {
                let stored = started.elapsed().as_secs_f64();
                self.done = target;
                return Ok(Times {
                    answered: answered.unwrap_or(stored),
                    stored,
                });
            }
            if checked.elapsed() > Duration::from_millis(200) {
                checked = Instant::now();
                for p in procs.iter_mut() {
                    p.check()?;
                }
                if self.queue.counts().await?.dead > 0 {
                    let dead = self.queue.list(JobState::Dead, 0, 1).await?;
                    let why = dead
                        .first()
                        .and_then(|j| j.dead_reason.clone())
                        .unwrap_or_default();
                    anyhow::bail!("an upload call failed: {why}");
                }
                anyhow::ensure!(
                    started.elapsed() < limit,
                    "the uploads did not complete within {} s ({completed} of {target} rows completed)",
                    limit.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// POSTs every file to `{moonshot_url}/files` (purpose `file-extract`, streamed from disk),
/// `concurrency` at a time; returns the seconds it took.
async fn direct(
    http: &reqwest::Client,
    moonshot_url: &str,
    files: &[PathBuf],
    concurrency: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut uploads = futures::stream::iter(files.to_vec())
        .map(|path| post_file(http.clone(), format!("{moonshot_url}/files"), path))
        .buffer_unordered(concurrency.max(1));
    while let Some(r) = uploads.next().await {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// One direct upload: the multipart form Moonshot takes, the file streamed with its length.
async fn post_file(http: reqwest::Client, url: String, path: PathBuf) -> anyhow::Result<()> {
    let file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("open {}", path.display()))?;
    let len = file.metadata().await?.len();
    let body =
        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let part = reqwest::multipart::Part::stream_with_length(body, len).file_name(name);
    let form = reqwest::multipart::Form::new()
        .text("purpose", "file-extract")
        .part("file", part);
    let resp = http
        .post(url)
        .bearer_auth(SIM_KEY)
        .multipart(form)
        .send()
        .await?;
    let status = resp.status();
    anyhow::ensure!(
        status.is_success(),
        "direct upload of {} answered {status}: {}",
        path.display(),
        resp.text().await.unwrap_or_default()
    );
    Ok(())
}

impl super::report::Printable for Report {
    fn table(&self) -> String {
        self.to_table()
    }
    fn json(&self) -> Value {
        self.to_json()
    }
}

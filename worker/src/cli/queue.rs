//! `exai-worker queue …`: counts, listing, history, one job, retry, kill, pause and resume.
//! Redis only.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use exai_shared::Config;
use exai_shared::inspect::{HistoryReport, Percentiles, QueuesReport, find_job, queue_named};
use exai_shared::queue::history::MAX_MINUTES;
use exai_shared::queue::{CancelOutcome, JobInfo, JobState, MAX_PAGE, Queue};
use serde::Serialize;

use super::{
    Progress, finish_table, format_duration_ms, format_ms, or_dash, print_json, print_table, table,
};

/// The subcommands of `exai-worker queue`.
#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Jobs per state of every queue, and whether it is paused. `completed` and `cancelled`
    /// count since the queue was created; the others are current sizes.
    Stats(JsonArg),
    /// One page of a queue's jobs in one state (default: queued, in the order they will run).
    List(ListArgs),
    /// A queue's last minutes, one line per minute (UTC): attempts completed, failed, retried
    /// and dead, and the p50 and p95 of wait (last due → start) and run time.
    History(HistoryArgs),
    /// Everything known about one job, in whichever queue holds it: attempts, errors, lease
    /// holder, timings, result.
    Show(ShowArgs),
    /// Put a dead job (or every dead job of a queue) back in its queue with a fresh attempt
    /// budget.
    #[command(override_usage = "exai-worker queue retry <JOB_ID> | --all-dead <QUEUE>  [--json]")]
    Retry(RetryArgs),
    /// Cancel a job: a waiting one (queued, scheduled, retrying) ends cancelled at once; a
    /// running one is told to stop and ends cancelled when its worker lets go (or its lease
    /// expires).
    Kill(JobArgs),
    /// Stop workers from taking jobs from a queue (enqueues go on; running jobs finish).
    Pause(QueueArgs),
    /// Let workers take jobs from a paused queue again.
    Resume(QueueArgs),
}

/// `--json` alone.
#[derive(Args, Debug)]
pub struct JsonArg {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `queue list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// The queue (tool_calls, uploads, storage_push, cleanup).
    pub queue: String,
    /// The state: queued, scheduled, running, retrying, dead, completed or cancelled.
    #[arg(long, default_value = "queued", value_parser = listable_state)]
    pub state: JobState,
    /// The most jobs to print.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=MAX_PAGE as i64))]
    pub limit: u32,
    /// Skip this many jobs first (the next page starts at offset + limit).
    #[arg(long, default_value_t = 0)]
    pub offset: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `queue history`.
#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The queue (tool_calls, uploads, storage_push, cleanup).
    pub queue: String,
    /// How many minutes, up to now (at most a day).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=MAX_MINUTES as i64))]
    pub minutes: u32,
    /// Print JSON (the admin API's shape) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `queue show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The job id.
    pub job_id: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `queue retry`.
#[derive(Args, Debug)]
pub struct RetryArgs {
    /// The dead job to retry.
    #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
    pub job_id: Option<String>,
    /// Retry every dead job of this queue.
    #[arg(long, value_name = "QUEUE")]
    pub all_dead: Option<String>,
    /// Print JSON instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// A job id and `--json`.
#[derive(Args, Debug)]
pub struct JobArgs {
    /// The job id.
    pub job_id: String,
    /// Print JSON instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// A queue name and `--json`.
#[derive(Args, Debug)]
pub struct QueueArgs {
    /// The queue (tool_calls, uploads, storage_push, cleanup).
    pub queue: String,
    /// Print JSON instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// Parses a `--state` value.
fn listable_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s).ok_or_else(|| {
        format!(
            "unknown state `{s}` (states: {})",
            JobState::ALL.map(JobState::as_str).join(", ")
        )
    })
}

/// Runs one `queue` subcommand.
pub async fn run(config: &Config, command: QueueCommand) -> anyhow::Result<()> {
    let queues = super::queues(config).await?;
    match command {
        QueueCommand::Stats(a) => stats(&queues, a.json).await,
        QueueCommand::List(a) => list(&queues, &a).await,
        QueueCommand::History(a) => history(named(&queues, &a.queue)?, a.minutes, a.json).await,
        QueueCommand::Show(a) => show(&queues, &a.job_id, a.json).await,
        QueueCommand::Retry(a) => match (&a.job_id, &a.all_dead) {
            (Some(id), _) => retry_one(&queues, id, a.json).await,
            (None, Some(q)) => retry_all_dead(named(&queues, q)?, a.json).await,
            (None, None) => bail!("name a job id or --all-dead QUEUE"),
        },
        QueueCommand::Kill(a) => kill(&queues, &a.job_id, a.json).await,
        QueueCommand::Pause(a) => pause(named(&queues, &a.queue)?, true, a.json).await,
        QueueCommand::Resume(a) => pause(named(&queues, &a.queue)?, false, a.json).await,
    }
}

fn named<'a>(queues: &'a [Queue], name: &str) -> anyhow::Result<&'a Queue> {
    queue_named(queues, name).map_err(anyhow::Error::msg)
}

/// The job `id` in whichever queue holds it, or an error naming it.
async fn find(queues: &[Queue], id: &str) -> anyhow::Result<JobInfo> {
    find_job(queues, id)
        .await
        .context("read the job")?
        .ok_or_else(|| {
            anyhow::anyhow!("no job `{id}` in any queue (never enqueued, removed, or expired)")
        })
}

/// `queue stats`: prints [`QueuesReport`].
async fn stats(queues: &[Queue], json: bool) -> anyhow::Result<()> {
    let report = QueuesReport::collect(queues)
        .await
        .context("read the queue counts")?;
    if json {
        return print_json(&report);
    }
    let mut t = table([
        "QUEUE",
        "QUEUED",
        "SCHEDULED",
        "RUNNING",
        "RETRYING",
        "DEAD",
        "COMPLETED",
        "CANCELLED",
        "PAUSED",
    ]);
    for (name, s) in &report.queues {
        t.add_row([
            name.clone(),
            s.queued.to_string(),
            s.scheduled.to_string(),
            s.running.to_string(),
            s.retrying.to_string(),
            s.dead.to_string(),
            s.completed.to_string(),
            s.cancelled.to_string(),
            if s.paused { "yes" } else { "no" }.to_owned(),
        ]);
    }
    finish_table(&mut t, &[1, 2, 3, 4, 5, 6, 7]);
    print_table(&t);
    Ok(())
}

/// `queue list --json`: `{"queue":..,"state":..,"offset":n,"jobs":[JobInfo..]}`.
#[derive(Serialize)]
struct ListReport<'a> {
    queue: &'a str,
    state: JobState,
    offset: u32,
    jobs: Vec<JobInfo>,
}

/// `queue list`.
async fn list(queues: &[Queue], a: &ListArgs) -> anyhow::Result<()> {
    let q = named(queues, &a.queue)?;
    let jobs = q
        .list(a.state, a.offset as usize, a.limit as usize)
        .await
        .context("list the jobs")?;
    if a.json {
        return print_json(&ListReport {
            queue: q.name(),
            state: a.state,
            offset: a.offset,
            jobs,
        });
    }
    if jobs.is_empty() {
        say!("no {} jobs in {}", a.state, q.name());
        return Ok(());
    }
    let mut t = table([
        "ID",
        "STATE",
        "ATTEMPTS",
        "ENQUEUED",
        "DUE",
        "STARTED",
        "WORKER",
        "LAST ERROR",
    ]);
    for j in &jobs {
        t.add_row([
            j.id.clone(),
            j.state.to_string(),
            format!("{}/{}", j.attempts, j.max_attempts),
            format_ms(j.enqueued_at_ms),
            or_dash(j.run_at_ms.map(format_ms)),
            or_dash(j.started_at_ms.map(format_ms)),
            or_dash(j.worker.as_deref()),
            or_dash(last_error(j).map(|e| one_line(&e, 60))),
        ]);
    }
    finish_table(&mut t, &[2]);
    print_table(&t);
    Ok(())
}

/// `queue history`: prints [`HistoryReport`], one row per minute, oldest first.
async fn history(q: &Queue, minutes: u32, json: bool) -> anyhow::Result<()> {
    let report = HistoryReport::collect(q, minutes)
        .await
        .context("read the queue history")?;
    if json {
        return print_json(&report);
    }
    let mut t = table([
        "MINUTE (UTC)",
        "COMPLETED",
        "FAILED",
        "RETRIED",
        "DEAD",
        "WAIT P50",
        "WAIT P95",
        "RUN P50",
        "RUN P95",
    ]);
    let ms = |p: Option<u64>| or_dash(p.map(format_duration_ms));
    let both = |p: &Percentiles| [ms(p.p50), ms(p.p95)];
    for m in &report.history {
        let [wait50, wait95] = both(&m.wait_ms);
        let [run50, run95] = both(&m.run_ms);
        t.add_row([
            m.minute.trim_end_matches(":00Z").replace('T', " "),
            m.completed.to_string(),
            m.failed.to_string(),
            m.retried.to_string(),
            m.dead.to_string(),
            wait50,
            wait95,
            run50,
            run95,
        ]);
    }
    finish_table(&mut t, &[1, 2, 3, 4, 5, 6, 7, 8]);
    print_table(&t);
    let total = |f: fn(&exai_shared::inspect::HistoryEntry) -> u64| -> u64 {
        report.history.iter().map(f).sum()
    };
    say!(
        "{} minutes of {}: {} completed, {} failed ({} retried, {} dead)",
        report.minutes,
        q.name(),
        total(|m| m.completed),
        total(|m| m.failed),
        total(|m| m.retried),
        total(|m| m.dead)
    );
    Ok(())
}

/// The most telling error of a job: why it is dead, else its last failed attempt.
fn last_error(j: &JobInfo) -> Option<String> {
    j.dead_reason
        .clone()
        .or_else(|| j.errors.last().map(|e| e.message.clone()))
}

/// `s` on one line, cut to `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// Bytes as compact JSON when they are JSON, else as (lossy) text.
fn bytes_as_text(b: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(b) {
        Ok(v) => v.to_string(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// `queue show`: prints [`JobInfo`].
async fn show(queues: &[Queue], id: &str, json: bool) -> anyhow::Result<()> {
    let j = find(queues, id).await?;
    if json {
        return print_json(&j);
    }
    let mut t = table(["FIELD", "VALUE"]);
    let mut row = |k: &str, v: String| {
        t.add_row([k.to_owned(), v]);
    };
    row("id", j.id.clone());
    row("queue", j.queue.clone());
    row("state", j.state.to_string());
    row("attempts", format!("{}/{}", j.attempts, j.max_attempts));
    row("enqueued", format_ms(j.enqueued_at_ms));
    row("due", or_dash(j.run_at_ms.map(format_ms)));
    row("started", or_dash(j.started_at_ms.map(format_ms)));
    row("finished", or_dash(j.finished_at_ms.map(format_ms)));
    let ran = j
        .started_at_ms
        .zip(j.finished_at_ms)
        .map(|(s, f)| format_duration_ms(f.saturating_sub(s)));
    row("ran for", or_dash(ran));
    row("worker", or_dash(j.worker.as_deref()));
    row("fence", or_dash(j.fence));
    row("lease until", or_dash(j.lease_until_ms.map(format_ms)));
    row(
        "cancel requested",
        if j.cancel_requested { "yes" } else { "no" }.to_owned(),
    );
    row("dead reason", or_dash(j.dead_reason.as_deref()));
    row("payload", one_line(&bytes_as_text(&j.payload), 200));
    row(
        "result",
        or_dash(
            j.result
                .as_deref()
                .map(|r| one_line(&bytes_as_text(r), 200)),
        ),
    );
    finish_table(&mut t, &[]);
    print_table(&t);
    if !j.errors.is_empty() {
        say!();
        let mut e = table(["ATTEMPT", "AT", "KIND", "ERROR"]);
        for err in &j.errors {
            e.add_row([
                err.attempt.to_string(),
                format_ms(err.at_ms),
                err.kind.clone(),
                one_line(&err.message, 200),
            ]);
        }
        finish_table(&mut e, &[0]);
        print_table(&e);
    }
    Ok(())
}

/// `queue retry --json`: `{"queue":..,"retried":[ids]}`.
#[derive(Serialize)]
struct RetryReport<'a> {
    queue: &'a str,
    retried: Vec<String>,
}

/// `queue retry <job-id>`.
async fn retry_one(queues: &[Queue], id: &str, json: bool) -> anyhow::Result<()> {
    let j = find(queues, id).await?;
    if j.state != JobState::Dead {
        bail!(
            "job `{id}` is {}: only dead jobs are retried",
            j.state.as_str()
        );
    }
    let q = named(queues, &j.queue)?;
    if !q.retry_dead(id).await.context("retry the job")? {
        bail!("job `{id}` left the dead state meanwhile: nothing retried");
    }
    if json {
        return print_json(&RetryReport {
            queue: q.name(),
            retried: vec![id.to_owned()],
        });
    }
    say!("retried {id} ({} queue)", q.name());
    Ok(())
}

/// `queue retry --all-dead <queue>`: every dead job of the queue, listed first (page by page,
/// as many as the dead count said), then retried one by one.
async fn retry_all_dead(q: &Queue, json: bool) -> anyhow::Result<()> {
    let dead = q.counts().await.context("read the queue counts")?.dead as usize;
    let mut ids = Vec::with_capacity(dead);
    let mut offset = 0;
    while offset < dead {
        let page = q
            .list(JobState::Dead, offset, MAX_PAGE)
            .await
            .context("list the dead jobs")?;
        ids.extend(page.into_iter().map(|j| j.id));
        offset += MAX_PAGE;
    }
    let progress = Progress::new(ids.len() as u64, "retrying dead jobs", json);
    let mut retried = Vec::with_capacity(ids.len());
    for id in ids {
        let ok = q.retry_dead(&id).await.context("retry a dead job")?;
        progress.item(|| {
            if ok {
                format!("retried {id}")
            } else {
                format!("skipped {id} (no longer dead)")
            }
        });
        if ok {
            retried.push(id);
        }
    }
    progress.finish();
    if json {
        return print_json(&RetryReport {
            queue: q.name(),
            retried,
        });
    }
    say!("retried {} dead jobs of {}", retried.len(), q.name());
    Ok(())
}

/// `queue kill --json`: `{"job_id":..,"queue":..,"was":state,"outcome":"cancelled"|"stopping"}`.
#[derive(Serialize)]
struct KillReport<'a> {
    job_id: &'a str,
    queue: &'a str,
    was: JobState,
    outcome: &'static str,
}

/// `queue kill <job-id>`.
async fn kill(queues: &[Queue], id: &str, json: bool) -> anyhow::Result<()> {
    let j = find(queues, id).await?;
    let q = named(queues, &j.queue)?;
    let outcome = match q.cancel(id).await.context("cancel the job")? {
        CancelOutcome::Removed => "cancelled",
        CancelOutcome::Signalled => "stopping",
        CancelOutcome::AlreadyFinished => bail!(
            "job `{id}` already finished ({}): nothing to kill",
            j.state.as_str()
        ),
        CancelOutcome::NotFound => bail!("job `{id}` vanished before it could be killed"),
    };
    if json {
        return print_json(&KillReport {
            job_id: id,
            queue: q.name(),
            was: j.state,
            outcome,
        });
    }
    match outcome {
        "cancelled" => say!("cancelled {id} (was {})", j.state),
        _ => say!(
            "stopping {id}: its worker was told to stop; it ends cancelled when the worker lets go or its lease expires"
        ),
    }
    Ok(())
}

/// `queue pause` / `queue resume --json`: `{"queue":..,"paused":bool}`.
#[derive(Serialize)]
struct PauseReport<'a> {
    queue: &'a str,
    paused: bool,
}

/// `queue pause` and `queue resume`.
async fn pause(q: &Queue, paused: bool, json: bool) -> anyhow::Result<()> {
    if paused {
        q.pause().await.context("pause the queue")?;
    } else {
        q.resume().await.context("resume the queue")?;
    }
    if json {
        return print_json(&PauseReport {
            queue: q.name(),
            paused,
        });
    }
    say!("{} {}", if paused { "paused" } else { "resumed" }, q.name());
    Ok(())
}

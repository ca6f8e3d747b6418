//! The queue protocol (`exai_shared::queue`) against a real Redis, called directly as a worker
//! and a producer would (the process-level SIGKILL tests live with the worker binary):
//!
//! - enqueue is idempotent by id, single and bulk, and bulk keeps order;
//! - delayed jobs are not fetched before they are due; fetch never returns more than asked;
//! - an expired lease is rescued by sweep and the crash counts as an attempt; a heartbeat keeps
//!   the lease; a job that crashes every time ends dead with a reason;
//! - acks are fenced: a rescued job's old worker cannot overwrite the new attempt; one
//!   complete-and-fetch call acknowledges a batch and refills exactly the freed slots;
//! - a queue asked to announce job events publishes `started` at the fetch and `finished` with
//!   the result, and one not asked publishes nothing;
//! - transient failures retry with backoff then die, permanent ones die at once, release does
//!   not burn an attempt; cancel, pause/resume, retry of dead jobs, removal;
//! - counts and pages match reality after a mixed workload; results expire after their ttl and
//!   memory stays flat over many completed jobs;
//! - 20,000 jobs drain through concurrent workers, each completed exactly once;
//! - an idle worker is woken by a push within milliseconds; an enqueue wakes one idle worker
//!   and a fetch that fills its batch wakes the next; a cron tick fires once;
//! - an idle worker that takes hand-offs is handed a lone new job already leased to it, once
//!   per registration, never behind queued jobs, and never when nobody hears the hand-off.
//!
//! Each test works under its own key prefix and deletes it at the end, even when it fails.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use exai_shared::queue::{
    Ack, Backoff, CancelOutcome, CancelSignal, Enqueued, FailKind, FailOutcome, Fetched, JobLease,
    JobState, LeaseState, NewJob, Queue, QueuePolicy, TOOL_CALLS, Wake, Waker,
};
use exai_tests::{TestStack, wait_for, wait_until};

/// A poll fallback far above any push wake-up, so a fast wake-up can only come from the push.
const SLOW_POLL: Duration = Duration::from_secs(10);

/// How long a condition may take before a test gives up on it.
const DEADLINE: Duration = Duration::from_secs(10);

/// A waker of worker `w` on `tool_calls`, with a subscriber of its own.
async fn waker(ctx: &TestStack) -> Waker {
    Waker::new(&ctx.subscriber().await, &ctx.keys, &[(TOOL_CALLS, "w")])
        .await
        .expect("subscribe")
}

/// A test's stack and its `tool_calls` queue with the [`fast_policy`].
async fn fast_queue(test: &str) -> (TestStack, Queue) {
    let ctx = TestStack::start(test).await;
    let q = ctx.queue_with(TOOL_CALLS, fast_policy());
    (ctx, q)
}

/// A policy with short timings, so leases expire and retries come due within a test.
fn fast_policy() -> QueuePolicy {
    QueuePolicy {
        max_attempts: 3,
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

/// `n` jobs with payload `payload` and ids `<prefix>0`, `<prefix>1`, …
fn numbered(payload: &str, prefix: &str, n: usize) -> Vec<NewJob> {
    (0..n)
        .map(|i| NewJob::new(payload).with_id(format!("{prefix}{i}")))
        .collect()
}

/// Each fetched job's lease with its id as the result, as a batch for `complete_many`.
fn id_results(fetched: &[Fetched]) -> Vec<(JobLease, Vec<u8>)> {
    fetched
        .iter()
        .map(|f| (f.lease.clone(), f.id().as_bytes().to_vec()))
        .collect()
}

/// Fetches one job as soon as there is one, sweeping meanwhile as a live worker would.
async fn fetch_one(q: &Queue, worker: &str) -> Fetched {
    wait_for(DEADLINE, || async {
        q.sweep(100).await.expect("sweep");
        q.fetch(worker, 1).await.expect("fetch").pop()
    })
    .await
    .expect("a job became available")
}

/// The Redis clock at the moment of a fetch: the lease end minus the lease.
fn fetched_at(q: &Queue, job: &Fetched) -> u64 {
    job.lease_until_ms - q.policy().lease.as_millis() as u64
}

#[tokio::test]
async fn enqueue_is_idempotent_single_and_bulk() {
    let (_ctx, q) = fast_queue("q-idem").await;

    let first = q.enqueue(&NewJob::new("a").with_id("job-a")).await.unwrap();
    assert_eq!(first, Enqueued::Created("job-a".into()));
    let again = q
        .enqueue(&NewJob::new("other").with_id("job-a"))
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Duplicate("job-a".into()));

    let bulk = q
        .enqueue_bulk(&[
            NewJob::new("b").with_id("job-b"),
            NewJob::new("a2").with_id("job-a"),
            NewJob::new("c").with_id("job-c"),
            NewJob::new("b2").with_id("job-b"),
            NewJob::new("anon"),
        ])
        .await
        .unwrap();
    assert_eq!(bulk[0], Enqueued::Created("job-b".into()));
    assert_eq!(bulk[1], Enqueued::Duplicate("job-a".into()));
    assert_eq!(bulk[2], Enqueued::Created("job-c".into()));
    assert_eq!(bulk[3], Enqueued::Duplicate("job-b".into()));
    assert!(bulk[4].is_created() && !bulk[4].id().is_empty());

    let counts = q.counts().await.unwrap();
    assert_eq!(counts.queued, 4, "{counts:?}");
    // The duplicate left the first payload alone.
    let job = q.job("job-a").await.unwrap().expect("job-a exists");
    assert_eq!(job.payload, b"a");
    assert_eq!(job.state, JobState::Queued);

    // A second bulk of the same ids is all duplicates.
    let again = q
        .enqueue_bulk(&[
            NewJob::new("x").with_id("job-c"),
            NewJob::new("y").with_id("job-b"),
        ])
        .await
        .unwrap();
    assert!(again.iter().all(|e| !e.is_created()), "{again:?}");
    assert_eq!(q.counts().await.unwrap().queued, 4);
}

#[tokio::test]
async fn a_group_caps_its_unfinished_jobs_in_the_enqueue_and_forgets_finished_ones() {
    let (_ctx, q) = fast_queue("q-group").await;
    let ttl = Duration::from_secs(60);
    let put = |id: &str| NewJob::new("g").with_id(id);
    for id in ["g1", "g2"] {
        let e = q
            .enqueue_in_group(&put(id), "s1", 2, ttl, None)
            .await
            .unwrap();
        assert_eq!(e, Some(Enqueued::Created(id.into())));
    }
    // A duplicate changes nothing, and is not refused.
    assert_eq!(
        q.enqueue_in_group(&put("g1"), "s1", 2, ttl, None)
            .await
            .unwrap(),
        Some(Enqueued::Duplicate("g1".into()))
    );
    // Full: the third is not enqueued; another group is not affected.
    assert_eq!(
        q.enqueue_in_group(&put("g3"), "s1", 2, ttl, None)
            .await
            .unwrap(),
        None
    );
    assert!(
        q.job("g3").await.unwrap().is_none(),
        "a refused job is not enqueued"
    );
    assert!(
        q.enqueue_in_group(&put("h1"), "s2", 2, ttl, None)
            .await
            .unwrap()
            .is_some()
    );
    // Once one of the group's jobs finished, there is room again (pruned at the cap).
    let done = fetch_one(&q, "w1").await;
    let finished = done.lease.id.clone();
    q.complete(&done.lease, b"ok").await.unwrap();
    assert_eq!(
        q.enqueue_in_group(&put("g3"), "s1", 2, ttl, None)
            .await
            .unwrap(),
        Some(Enqueued::Created("g3".into())),
        "{finished} finished and stopped counting"
    );
    // Counted before a plain enqueue, and forgotten when it is not enqueued after all.
    assert!(!q.admit_to_group("s1", "g4", 2, ttl).await.unwrap(), "full");
    q.leave_group("s1", "g3").await.unwrap();
    assert!(q.admit_to_group("s1", "g4", 2, ttl).await.unwrap());
    assert!(!q.admit_to_group("s1", "g5", 2, ttl).await.unwrap());
    q.leave_group("s1", "g4").await.unwrap();
    assert!(q.admit_to_group("s1", "g5", 2, ttl).await.unwrap());
}

#[tokio::test]
async fn bulk_enqueue_keeps_order_and_fetch_is_fifo_and_bounded() {
    let (_ctx, q) = fast_queue("q-bulk").await;

    // More than one script call's worth, so the pipelined path is exercised too.
    let jobs: Vec<NewJob> = (0..2500)
        .map(|i| NewJob::new(format!("{i}")).with_id(format!("j{i:05}")))
        .collect();
    let out = q.enqueue_bulk(&jobs).await.unwrap();
    assert_eq!(out.len(), 2500);
    for (i, e) in out.iter().enumerate() {
        assert_eq!(e, &Enqueued::Created(format!("j{i:05}")));
    }
    assert_eq!(q.counts().await.unwrap().queued, 2500);

    let mut seen = Vec::new();
    loop {
        let batch = q.fetch("w1", 300).await.unwrap();
        assert!(batch.len() <= 300);
        if batch.is_empty() {
            break;
        }
        for job in batch {
            assert_eq!(job.attempt(), 1);
            let n: usize = job.id()[1..].parse().unwrap();
            assert_eq!(
                job.payload,
                n.to_string().into_bytes(),
                "payload of {}",
                job.id()
            );
            seen.push(job.lease.id);
        }
    }
    let expected: Vec<String> = (0..2500).map(|i| format!("j{i:05}")).collect();
    assert_eq!(seen, expected, "fetch order is enqueue order");
    // A fetch asking for more than a script call handles is capped.
    let more: Vec<NewJob> = (0..1500).map(|i| NewJob::new(format!("{i}"))).collect();
    q.enqueue_bulk(&more).await.unwrap();
    let big = q.fetch("w1", 5000).await.unwrap();
    assert_eq!(big.len(), exai_shared::queue::MAX_BATCH);
    let counts = q.counts().await.unwrap();
    assert_eq!(counts.running, 2500 + 1000);
    assert_eq!(counts.queued, 500);
}

#[tokio::test]
async fn fetch_returns_at_most_max() {
    let (_ctx, q) = fast_queue("q-max").await;
    let jobs: Vec<NewJob> = (0..25).map(|i| NewJob::new(format!("{i}"))).collect();
    q.enqueue_bulk(&jobs).await.unwrap();
    let sizes = [
        q.fetch("w", 10).await.unwrap().len(),
        q.fetch("w", 10).await.unwrap().len(),
        q.fetch("w", 10).await.unwrap().len(),
        q.fetch("w", 10).await.unwrap().len(),
    ];
    assert_eq!(sizes, [10, 10, 5, 0]);
    assert!(q.fetch("w", 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn delayed_job_is_not_fetched_before_due() {
    let (_ctx, q) = fast_queue("q-delay").await;
    let delay = Duration::from_millis(400);
    q.enqueue(&NewJob::new("later").with_id("d1").with_delay(delay))
        .await
        .unwrap();
    q.enqueue(&NewJob::new("now").with_id("n1")).await.unwrap();

    let first = q.fetch_batch("w", 10).await.unwrap();
    assert_eq!(first.jobs.len(), 1);
    assert_eq!(first.jobs[0].id(), "n1");
    let due_in = first
        .next_due_in
        .expect("the delayed job's due time is reported");
    assert!(due_in <= delay, "{due_in:?}");
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.scheduled, counts.queued), (1, 0));
    let info = q.job("d1").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Scheduled);
    let run_at = info.run_at_ms.expect("run_at stored");
    assert_eq!(run_at, info.enqueued_at_ms + delay.as_millis() as u64);

    let job = wait_for(DEADLINE, || async { q.fetch("w", 10).await.unwrap().pop() })
        .await
        .expect("the delayed job is fetched once due");
    assert_eq!(job.id(), "d1");
    assert!(
        fetched_at(&q, &job) >= run_at,
        "fetched before its due time"
    );
}

#[tokio::test]
async fn expired_lease_is_rescued_by_sweep_and_counts_an_attempt() {
    let (_ctx, q) = fast_queue("q-rescue").await;
    q.enqueue(&NewJob::new("x").with_id("r1")).await.unwrap();

    let first = q.fetch("dead-worker", 1).await.unwrap().pop().unwrap();
    assert_eq!(first.attempt(), 1);
    let running = q.job("r1").await.unwrap().unwrap();
    assert_eq!(running.state, JobState::Running);
    assert_eq!(running.worker.as_deref(), Some("dead-worker"));
    assert!(running.lease_until_ms.is_some());
    // Not expired yet: a sweep leaves it alone.
    assert_eq!(q.sweep(100).await.unwrap().rescued, 0);

    // No heartbeat: the lease runs out and any live worker's sweep puts the job back.
    assert!(
        wait_until(DEADLINE, || async {
            q.sweep(100).await.unwrap().rescued == 1
        })
        .await,
        "the expired lease was rescued"
    );
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.queued, counts.running), (1, 0), "{counts:?}");

    let second = q.fetch("live-worker", 1).await.unwrap().pop().unwrap();
    assert_eq!(second.id(), "r1");
    assert_eq!(second.attempt(), 2, "the crashed run counted as an attempt");
    assert_ne!(second.lease.fence, first.lease.fence);
    let info = q.job("r1").await.unwrap().unwrap();
    assert_eq!(info.errors.len(), 1);
    assert_eq!(info.errors[0].kind, "lease");
    assert!(
        info.errors[0].message.contains("dead-worker"),
        "{:?}",
        info.errors
    );
}

#[tokio::test]
async fn heartbeat_keeps_the_lease() {
    let ctx = TestStack::start("q-heartbeat").await;
    let q = ctx.queue_with(TOOL_CALLS, fast_policy()); // lease 300 ms
    q.enqueue(&NewJob::new("x").with_id("h1")).await.unwrap();
    let job = q.fetch("w", 1).await.unwrap().pop().unwrap();

    // Renew at a third of the lease for four leases' worth of time, sweeping all along.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        tick.tick().await;
        let states = q.heartbeat(std::slice::from_ref(&job.lease)).await.unwrap();
        assert_eq!(states, vec![LeaseState::Held]);
        assert_eq!(
            q.sweep(100).await.unwrap().rescued,
            0,
            "a renewed lease was rescued"
        );
    }
    assert_eq!(q.counts().await.unwrap().running, 1);
    assert_eq!(q.complete(&job.lease, b"ok").await.unwrap(), Ack::Done);
    // A heartbeat for a finished job reports the lease gone.
    assert_eq!(
        q.heartbeat(std::slice::from_ref(&job.lease)).await.unwrap(),
        vec![LeaseState::Lost]
    );
}

#[tokio::test]
async fn job_that_crashes_every_time_ends_dead_with_a_reason() {
    let ctx = TestStack::start("q-crash").await;
    let q = ctx.queue_with(
        TOOL_CALLS,
        QueuePolicy {
            lease: Duration::from_millis(100),
            ..fast_policy()
        },
    );
    q.enqueue(&NewJob::new("boom").with_id("c1")).await.unwrap();

    for attempt in 1..=3 {
        let job = fetch_one(&q, &format!("worker-{attempt}")).await;
        assert_eq!(job.attempt(), attempt);
        // The worker "dies": no ack, no heartbeat.
    }
    let dead = wait_for(DEADLINE, || async {
        q.sweep(100).await.unwrap();
        let info = q.job("c1").await.unwrap()?;
        (info.state == JobState::Dead).then_some(info)
    })
    .await
    .expect("the job ended dead");
    assert_eq!(dead.attempts, 3);
    let reason = dead.dead_reason.expect("a dead reason");
    assert!(reason.contains("lease expired"), "{reason}");
    assert!(reason.contains("attempt 3 of 3"), "{reason}");
    assert_eq!(dead.errors.len(), 3);
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.dead, counts.queued, counts.running), (1, 0, 0));
    let result = q
        .result("c1")
        .await
        .unwrap()
        .expect("a dead job has an outcome");
    assert_eq!(result.state, JobState::Dead);
    assert!(q.fetch("w", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn stale_fence_cannot_overwrite_the_new_attempt() {
    let (_ctx, q) = fast_queue("q-fence").await;
    q.enqueue(&NewJob::new("x").with_id("f1")).await.unwrap();

    let old = q.fetch("slow-worker", 1).await.unwrap().pop().unwrap();
    assert!(
        wait_until(DEADLINE, || async {
            q.sweep(100).await.unwrap().rescued == 1
        })
        .await
    );
    // Between the rescue and the next fetch, the old worker already lost the job.
    assert_eq!(
        q.complete(&old.lease, b"old").await.unwrap(),
        Ack::LeaseLost
    );

    let new = q.fetch("fast-worker", 1).await.unwrap().pop().unwrap();
    assert_eq!(new.attempt(), 2);
    assert_eq!(
        q.heartbeat(&[old.lease.clone(), new.lease.clone()])
            .await
            .unwrap(),
        vec![LeaseState::Lost, LeaseState::Held]
    );
    assert_eq!(
        q.complete(&old.lease, b"old").await.unwrap(),
        Ack::LeaseLost
    );
    assert_eq!(
        q.fail(&old.lease, "late", FailKind::Permanent)
            .await
            .unwrap(),
        FailOutcome::LeaseLost
    );
    assert_eq!(
        q.release(&old.lease, Duration::ZERO).await.unwrap(),
        Ack::LeaseLost
    );
    assert_eq!(q.complete(&new.lease, b"new").await.unwrap(), Ack::Done);
    // After completion, neither attempt can write again.
    assert_eq!(
        q.complete(&old.lease, b"old").await.unwrap(),
        Ack::LeaseLost
    );
    assert_eq!(
        q.complete(&new.lease, b"again").await.unwrap(),
        Ack::LeaseLost
    );

    let result = q.result("f1").await.unwrap().expect("a result");
    assert_eq!(result.state, JobState::Completed);
    assert_eq!(result.result.as_deref(), Some(&b"new"[..]));
    assert_eq!(result.attempts, 2);
}

#[tokio::test]
async fn complete_many_is_fenced_per_job() {
    let (_ctx, q) = fast_queue("q-many").await;
    let jobs = numbered("p", "m", 5);
    q.enqueue_bulk(&jobs).await.unwrap();
    let fetched = q.fetch("w", 5).await.unwrap();
    let mut items = id_results(&fetched);
    // One stale fence in the middle of the batch.
    items[2].0.fence += 1_000_000;
    let acks = q.complete_many(&items).await.unwrap();
    assert_eq!(
        acks,
        vec![Ack::Done, Ack::Done, Ack::LeaseLost, Ack::Done, Ack::Done]
    );
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.completed, counts.running), (4, 1));
    let r = q.result("m3").await.unwrap().unwrap();
    assert_eq!(r.result.as_deref(), Some(&b"m3"[..]));
}

#[tokio::test]
async fn complete_and_fetch_refills_the_completed_slots_in_one_call() {
    let (_ctx, q) = fast_queue("q-cycle").await;
    let jobs = numbered("p", "c", 6);
    q.enqueue_bulk(&jobs).await.unwrap();
    let fetched = q.fetch("w", 3).await.unwrap();
    let mut items = id_results(&fetched);
    // A stale fence: that attempt is not completed and its slot is not counted as free.
    items[1].0.fence += 1_000_000;
    let cycle = q
        .complete_and_fetch(&items, "w", 1, SLOW_POLL)
        .await
        .unwrap();
    assert_eq!(cycle.acks, vec![Ack::Done, Ack::LeaseLost, Ack::Done]);
    // One free slot plus the two completed attempts' slots, oldest first.
    let ids: Vec<&str> = cycle.batch.jobs.iter().map(|j| j.id()).collect();
    assert_eq!(ids, vec!["c3", "c4", "c5"]);
    assert!(cycle.batch.jobs.iter().all(|j| j.lease.attempt == 1));
    assert!(!cycle.more && !cycle.batch.paused);
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.completed, counts.running, counts.queued), (2, 4, 0));
    assert_eq!(
        q.result("c2").await.unwrap().unwrap().result.as_deref(),
        Some(&b"c2"[..])
    );

    // Nothing left to fetch: the short fetch says so and still acknowledges.
    let items: Vec<_> = cycle
        .batch
        .jobs
        .iter()
        .map(|f| (f.lease.clone(), b"r".to_vec()))
        .collect();
    let cycle = q
        .complete_and_fetch(&items, "w", 5, SLOW_POLL)
        .await
        .unwrap();
    assert_eq!(cycle.acks, vec![Ack::Done; 3]);
    assert!(cycle.batch.jobs.is_empty());
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.completed, counts.running), (5, 1));
}

#[tokio::test]
async fn fetch_and_complete_announce_started_and_finished_only_when_asked() {
    use exai_shared::events::JobEvent;
    use futures::StreamExt;

    let ctx = TestStack::start("q-events").await;
    let plain = ctx.queue_with(TOOL_CALLS, fast_policy());
    let announcing = plain.with_job_events(ctx.keys.job_events(""));
    let client = redis::Client::open(exai_tests::redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    for id in ["e1", "e2"] {
        pubsub.subscribe(ctx.keys.job_events(id)).await.unwrap();
    }
    let mut messages = pubsub.into_on_message();
    let mut next = async || {
        let msg = tokio::time::timeout(DEADLINE, messages.next())
            .await
            .expect("an event within the deadline")
            .expect("the subscription is open");
        let payload: String = msg.get_payload().unwrap();
        let event: JobEvent = serde_json::from_str(&payload).unwrap();
        (msg.get_channel_name().to_owned(), event)
    };
    let publish = async |id: &str| {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(ctx.keys.job_events(id))
            .arg(serde_json::to_string(&JobEvent::Finished).unwrap())
            .query_async(&mut ctx.conn.clone())
            .await
            .unwrap();
    };

    // Without events asked for, a fetch and a completion publish nothing: the next message
    // is the marker published after them.
    plain
        .enqueue_bulk(&[NewJob::new("p").with_id("e1")])
        .await
        .unwrap();
    let job = plain.fetch("w", 1).await.unwrap().pop().unwrap();
    assert_eq!(plain.complete(&job.lease, b"r").await.unwrap(), Ack::Done);
    publish("e2").await;
    assert_eq!(next().await.0, ctx.keys.job_events("e2"));

    // With them: `started` with the attempt at the fetch, `finished` with the result.
    announcing
        .enqueue_bulk(&[NewJob::new("p").with_id("e2")])
        .await
        .unwrap();
    let cycle = announcing
        .complete_and_fetch::<exai_shared::queue::JobLease, &[u8]>(&[], "w", 1, SLOW_POLL)
        .await
        .unwrap();
    let job = &cycle.batch.jobs[0];
    assert_eq!(
        next().await,
        (ctx.keys.job_events("e2"), JobEvent::Started { attempt: 1 })
    );
    let cycle = announcing
        .complete_and_fetch(&[(job.lease.clone(), b"r".as_slice())], "w", 0, SLOW_POLL)
        .await
        .unwrap();
    assert_eq!(cycle.acks, vec![Ack::Done]);
    assert_eq!(
        next().await,
        (ctx.keys.job_events("e2"), JobEvent::Finished)
    );
    let r = announcing.result("e2").await.unwrap().unwrap();
    assert_eq!(r.state, JobState::Completed);
}

#[tokio::test]
async fn transient_failures_back_off_then_die_after_max_attempts() {
    let ctx = TestStack::start("q-retry").await;
    let q = ctx.queue_with(TOOL_CALLS, fast_policy()); // 3 attempts, backoff 50 ms × 2ⁿ, no jitter
    q.enqueue(&NewJob::new("x").with_id("t1")).await.unwrap();

    let mut expected_delay = 50;
    for attempt in 1..=2u32 {
        let job = fetch_one(&q, "w").await;
        assert_eq!(job.attempt(), attempt);
        let failed_at = fetched_at(&q, &job);
        let outcome = q
            .fail(
                &job.lease,
                &format!("timeout {attempt}"),
                FailKind::Transient,
            )
            .await
            .unwrap();
        let FailOutcome::Retrying { at_ms } = outcome else {
            panic!("expected a retry, got {outcome:?}");
        };
        assert!(
            at_ms >= failed_at + expected_delay,
            "retry at {at_ms} too early"
        );
        let counts = q.counts().await.unwrap();
        assert_eq!((counts.retrying, counts.running), (1, 0), "{counts:?}");
        assert_eq!(
            q.job("t1").await.unwrap().unwrap().state,
            JobState::Retrying
        );
        let next = fetch_one(&q, "w").await;
        assert!(
            fetched_at(&q, &next) >= at_ms,
            "retried before its backoff ended"
        );
        // Give the attempt back so the loop's fetch sees it again (release keeps the count).
        assert_eq!(
            q.release(&next.lease, Duration::ZERO).await.unwrap(),
            Ack::Done
        );
        expected_delay *= 2;
    }
    let last = fetch_one(&q, "w").await;
    assert_eq!(last.attempt(), 3);
    assert!(last.is_last_attempt());
    assert_eq!(
        q.fail(&last.lease, "timeout 3", FailKind::Transient)
            .await
            .unwrap(),
        FailOutcome::Dead
    );
    let info = q.job("t1").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Dead);
    assert!(
        info.dead_reason
            .unwrap()
            .contains("attempts exhausted (3 of 3)")
    );
    let messages: Vec<_> = info.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, ["timeout 1", "timeout 2", "timeout 3"]);
    assert_eq!(q.counts().await.unwrap().dead, 1);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (_ctx, q) = fast_queue("q-retry-after").await;
    q.enqueue(&NewJob::new("x").with_id("ra")).await.unwrap();
    let job = q.fetch("w", 1).await.unwrap().pop().unwrap();
    let outcome = q
        .fail(
            &job.lease,
            "429",
            FailKind::RetryAfter(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let FailOutcome::Retrying { at_ms } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(at_ms >= fetched_at(&q, &job) + 60_000);
    let batch = q.fetch_batch("w", 1).await.unwrap();
    assert!(batch.jobs.is_empty());
    assert!(batch.next_due_in.unwrap() > Duration::from_secs(50));
}

#[tokio::test]
async fn permanent_failure_is_dead_at_once() {
    let (_ctx, q) = fast_queue("q-permanent").await;
    q.enqueue(&NewJob::new("x").with_id("p1")).await.unwrap();
    let job = q.fetch("w", 1).await.unwrap().pop().unwrap();
    assert_eq!(
        q.fail(&job.lease, "401 unauthorized", FailKind::Permanent)
            .await
            .unwrap(),
        FailOutcome::Dead
    );
    let info = q.job("p1").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Dead);
    assert_eq!(info.attempts, 1);
    assert_eq!(
        info.dead_reason.as_deref(),
        Some("permanent error: 401 unauthorized")
    );
    let result = q.result("p1").await.unwrap().unwrap();
    assert_eq!(
        result.error.as_deref(),
        Some("permanent error: 401 unauthorized")
    );
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.dead, counts.retrying, counts.running), (1, 0, 0));
}

#[tokio::test]
async fn release_does_not_burn_an_attempt() {
    let ctx = TestStack::start("q-release").await;
    let q = ctx.queue_with(
        TOOL_CALLS,
        QueuePolicy {
            max_attempts: 1,
            ..fast_policy()
        },
    );
    q.enqueue(&NewJob::new("x").with_id("rel")).await.unwrap();
    q.enqueue(&NewJob::new("y").with_id("other")).await.unwrap();

    let job = q.fetch("w", 1).await.unwrap().pop().unwrap();
    assert_eq!(job.id(), "rel");
    assert_eq!(
        q.release(&job.lease, Duration::ZERO).await.unwrap(),
        Ack::Done
    );
    // Released without delay: back at the head, same attempt number.
    let again = q.fetch("w", 1).await.unwrap().pop().unwrap();
    assert_eq!((again.id(), again.attempt()), ("rel", 1));

    // Released with a delay: scheduled, then runs again still on its first attempt.
    assert_eq!(
        q.release(&again.lease, Duration::from_millis(200))
            .await
            .unwrap(),
        Ack::Done
    );
    assert_eq!(q.counts().await.unwrap().scheduled, 1);
    assert_eq!(
        q.release(&again.lease, Duration::ZERO).await.unwrap(),
        Ack::LeaseLost
    );
    let other = q.fetch("w", 1).await.unwrap().pop().unwrap();
    assert_eq!(other.id(), "other");
    let third = fetch_one(&q, "w").await;
    assert_eq!((third.id(), third.attempt()), ("rel", 1));
    assert!(third.is_last_attempt());
    assert_eq!(q.complete(&third.lease, b"done").await.unwrap(), Ack::Done);
}

#[tokio::test]
async fn cancel_a_queued_job() {
    let (_ctx, q) = fast_queue("q-cancel-queued").await;
    for id in ["a", "b", "c"] {
        q.enqueue(&NewJob::new(id).with_id(id)).await.unwrap();
    }
    q.enqueue(
        &NewJob::new("s")
            .with_id("s")
            .with_delay(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert_eq!(q.cancel("b").await.unwrap(), CancelOutcome::Removed);
    assert_eq!(q.cancel("s").await.unwrap(), CancelOutcome::Removed);
    assert_eq!(q.cancel("b").await.unwrap(), CancelOutcome::AlreadyFinished);
    assert_eq!(q.cancel("nope").await.unwrap(), CancelOutcome::NotFound);
    let counts = q.counts().await.unwrap();
    assert_eq!(
        (counts.queued, counts.scheduled, counts.cancelled),
        (2, 0, 2),
        "{counts:?}"
    );
    let listed: Vec<_> = q
        .list(JobState::Queued, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(listed, ["a", "c"]);

    let fetched: Vec<_> = q
        .fetch("w", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.lease.id)
        .collect();
    assert_eq!(fetched, ["a", "c"], "the cancelled job is never fetched");
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.queued, counts.running), (0, 2), "{counts:?}");
    assert_eq!(
        q.job("b").await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    // The id stays taken while the cancelled job is kept.
    assert!(
        !q.enqueue(&NewJob::new("b").with_id("b"))
            .await
            .unwrap()
            .is_created()
    );
}

#[tokio::test]
async fn mass_cancel_does_not_hide_later_jobs() {
    let (_ctx, q) = fast_queue("q-ghosts").await;
    let jobs = numbered("g", "g", 3000);
    q.enqueue_bulk(&jobs).await.unwrap();
    for i in 0..3000 {
        assert_eq!(
            q.cancel(&format!("g{i}")).await.unwrap(),
            CancelOutcome::Removed
        );
    }
    q.enqueue(&NewJob::new("live").with_id("live"))
        .await
        .unwrap();
    assert_eq!(q.counts().await.unwrap().queued, 1);
    // One fetch of one job skips 3000 stale ids in bounded steps and still finds it.
    let got = q.fetch("w", 1).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id(), "live");
    let counts = q.counts().await.unwrap();
    assert_eq!(
        (counts.queued, counts.running, counts.cancelled),
        (0, 1, 3000)
    );
}

#[tokio::test]
async fn cancel_a_running_job_signals_its_worker() {
    let (ctx, q) = fast_queue("q-cancel-running").await;
    let waker = waker(&ctx).await;
    let mut cancels = waker.cancellations();
    q.enqueue(&NewJob::new("x").with_id("run")).await.unwrap();
    let job = q.fetch("w", 1).await.unwrap().pop().unwrap();

    assert_eq!(q.cancel("run").await.unwrap(), CancelOutcome::Signalled);
    let signal = tokio::time::timeout(DEADLINE, cancels.recv())
        .await
        .expect("the cancel signal arrives")
        .expect("cancel channel open");
    assert_eq!(
        (signal.queue.as_str(), signal.job_id.as_str()),
        (TOOL_CALLS, "run")
    );
    assert_eq!(
        q.heartbeat(std::slice::from_ref(&job.lease)).await.unwrap(),
        vec![LeaseState::CancelRequested]
    );
    assert!(q.job("run").await.unwrap().unwrap().cancel_requested);
    // The handler stops and reports; the job ends cancelled, not retried.
    assert_eq!(
        q.fail(&job.lease, "cancelled", FailKind::Transient)
            .await
            .unwrap(),
        FailOutcome::Cancelled
    );
    let result = q.result("run").await.unwrap().unwrap();
    assert_eq!(result.state, JobState::Cancelled);
    let counts = q.counts().await.unwrap();
    assert_eq!(
        (counts.running, counts.cancelled, counts.retrying),
        (0, 1, 0)
    );
}

#[tokio::test]
async fn pause_stops_fetch_but_not_enqueue() {
    let (ctx, q) = fast_queue("q-pause").await;
    let waker = waker(&ctx).await;
    let mut signal = waker.signal(TOOL_CALLS).expect("subscribed");

    q.pause().await.unwrap();
    assert!(q.is_paused().await.unwrap());
    assert!(
        q.enqueue(&NewJob::new("x").with_id("p"))
            .await
            .unwrap()
            .is_created()
    );
    let batch = q.fetch_batch("w", 10).await.unwrap();
    assert!(batch.paused && batch.jobs.is_empty());
    let counts = q.counts().await.unwrap();
    assert!(counts.paused);
    assert_eq!(counts.queued, 1);

    signal.mark_seen();
    q.resume().await.unwrap();
    assert_eq!(
        signal.wait(SLOW_POLL).await,
        Wake::Notified,
        "resume wakes idle workers"
    );
    assert!(!q.is_paused().await.unwrap());
    let got = q.fetch("w", 10).await.unwrap();
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn counts_and_pages_match_reality_after_a_mixed_workload() {
    let ctx = TestStack::start("q-mixed").await;
    let q = ctx.queue_with(
        TOOL_CALLS,
        QueuePolicy {
            backoff: Backoff {
                min: Duration::from_secs(60),
                ..fast_policy().backoff
            },
            lease: Duration::from_secs(60),
            ..fast_policy()
        },
    );
    let ready = numbered("r", "r", 10);
    q.enqueue_bulk(&ready).await.unwrap();
    let later: Vec<NewJob> = (0..3)
        .map(|i| {
            NewJob::new("l")
                .with_id(format!("l{i}"))
                .with_delay(Duration::from_secs(600))
        })
        .collect();
    q.enqueue_bulk(&later).await.unwrap();

    let fetched = q.fetch("w", 6).await.unwrap();
    assert_eq!(fetched.len(), 6);
    let done: Vec<_> = fetched[..2]
        .iter()
        .map(|f| (&f.lease, &b"ok"[..]))
        .collect();
    assert_eq!(q.complete_many(&done).await.unwrap(), vec![Ack::Done; 2]);
    assert!(matches!(
        q.fail(&fetched[2].lease, "flaky", FailKind::Transient)
            .await
            .unwrap(),
        FailOutcome::Retrying { .. }
    ));
    assert_eq!(
        q.fail(&fetched[3].lease, "bad input", FailKind::Permanent)
            .await
            .unwrap(),
        FailOutcome::Dead
    );
    assert_eq!(q.cancel("r9").await.unwrap(), CancelOutcome::Removed);
    assert!(q.remove("r8").await.unwrap());
    assert!(!q.remove("r8").await.unwrap());

    let c = q.counts().await.unwrap();
    let expected = [
        (JobState::Queued, 2u64), // r6, r7
        (JobState::Scheduled, 3),
        (JobState::Running, 2),
        (JobState::Retrying, 1),
        (JobState::Dead, 1),
        (JobState::Completed, 2),
    ];
    assert_eq!(
        [
            c.queued,
            c.scheduled,
            c.running,
            c.retrying,
            c.dead,
            c.completed
        ],
        expected.map(|(_, n)| n),
        "{c:?}"
    );
    assert_eq!(c.cancelled, 1);
    for (state, n) in expected {
        let page = q.list(state, 0, 100).await.unwrap();
        assert_eq!(page.len() as u64, n, "list({state})");
        assert!(page.iter().all(|j| j.state == state));
    }
    let running = q.list(JobState::Running, 0, 10).await.unwrap();
    assert!(
        running
            .iter()
            .all(|j| j.worker.as_deref() == Some("w") && j.lease_until_ms.is_some())
    );
    let queued: Vec<_> = q
        .list(JobState::Queued, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(queued, ["r6", "r7"]);
}

#[tokio::test]
async fn list_pages_through_jobs() {
    let ctx = TestStack::start("q-list").await;
    let q = ctx.queue_with(
        TOOL_CALLS,
        QueuePolicy {
            max_attempts: 1,
            ..fast_policy()
        },
    );
    let jobs: Vec<NewJob> = (0..25)
        .map(|i| NewJob::new(format!("{{\"n\":{i}}}")).with_id(format!("j{i:02}")))
        .collect();
    q.enqueue_bulk(&jobs).await.unwrap();
    let mut ids = Vec::new();
    for (offset, len) in [(0, 10), (10, 10), (20, 5), (30, 0)] {
        let page = q.list(JobState::Queued, offset, 10).await.unwrap();
        assert_eq!(page.len(), len, "page at {offset}");
        ids.extend(page.into_iter().map(|j| j.id));
    }
    let expected: Vec<_> = (0..25).map(|i| format!("j{i:02}")).collect();
    assert_eq!(ids, expected);

    // Dead jobs page newest first.
    for _ in 0..4 {
        let job = q.fetch("w", 1).await.unwrap().pop().unwrap();
        q.fail(&job.lease, "no", FailKind::Permanent).await.unwrap();
    }
    let dead: Vec<_> = q
        .list(JobState::Dead, 0, 3)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(dead.len(), 3);
    assert!(!dead.contains(&"j00".to_owned()), "newest first: {dead:?}");
    let rest = q.list(JobState::Dead, 3, 3).await.unwrap();
    assert_eq!(rest.len(), 1);
    // The payload serializes as JSON for the HTTP API.
    let json = serde_json::to_value(&rest[0]).unwrap();
    assert_eq!(json["payload"]["n"], 0);
    assert_eq!(json["state"], "dead");
}

#[tokio::test]
async fn retry_dead_brings_the_job_back() {
    let (_ctx, q) = fast_queue("q-retry-dead").await;
    q.enqueue(&NewJob::new("x").with_id("rd")).await.unwrap();
    let job = q.fetch("w", 1).await.unwrap().pop().unwrap();
    q.fail(&job.lease, "broken", FailKind::Permanent)
        .await
        .unwrap();
    assert!(!q.retry_dead("missing").await.unwrap());

    assert!(q.retry_dead("rd").await.unwrap());
    assert!(!q.retry_dead("rd").await.unwrap(), "no longer dead");
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.dead, counts.queued), (0, 1));
    let again = q.fetch("w", 1).await.unwrap().pop().unwrap();
    assert_eq!(
        (again.id(), again.attempt()),
        ("rd", 1),
        "a fresh attempt budget"
    );
    assert_eq!(q.complete(&again.lease, b"fixed").await.unwrap(), Ack::Done);
    let info = q.job("rd").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Completed);
    assert_eq!(info.errors.len(), 1, "the history is kept");
    assert_eq!(info.result.as_deref(), Some(&b"fixed"[..]));
}

#[tokio::test]
async fn dead_set_and_completed_index_are_bounded() {
    let ctx = TestStack::start("q-bounds").await;
    let q = ctx.queue_with(
        TOOL_CALLS,
        QueuePolicy {
            dead_max: 2,
            completed_index_max: 3,
            ..fast_policy()
        },
    );
    let jobs = numbered("b", "b", 10);
    q.enqueue_bulk(&jobs).await.unwrap();
    for _ in 0..4 {
        let job = q.fetch("w", 1).await.unwrap().pop().unwrap();
        q.fail(&job.lease, "no", FailKind::Permanent).await.unwrap();
    }
    assert_eq!(q.counts().await.unwrap().dead, 2);
    assert!(
        q.job("b0").await.unwrap().is_none(),
        "the oldest dead job was trimmed"
    );
    assert_eq!(q.job("b3").await.unwrap().unwrap().state, JobState::Dead);

    for job in q.fetch("w", 6).await.unwrap() {
        q.complete(&job.lease, b"ok").await.unwrap();
    }
    let counts = q.counts().await.unwrap();
    assert_eq!(counts.completed, 6, "the counter counts all completions");
    assert_eq!(q.list(JobState::Completed, 0, 100).await.unwrap().len(), 3);
}

#[tokio::test]
async fn results_expire_after_their_ttl() {
    let ctx = TestStack::start("q-ttl").await;
    let q = ctx.queue_with(
        TOOL_CALLS,
        QueuePolicy {
            result_ttl: Duration::from_millis(300),
            ..fast_policy()
        },
    );
    q.enqueue(&NewJob::new("x").with_id("ttl")).await.unwrap();
    let job = q.fetch("w", 1).await.unwrap().pop().unwrap();
    assert!(
        q.result("ttl").await.unwrap().is_none(),
        "no result while running"
    );
    q.complete(&job.lease, b"value").await.unwrap();
    let r = q.result("ttl").await.unwrap().expect("result kept for now");
    assert_eq!(r.result.as_deref(), Some(&b"value"[..]));
    assert!(
        wait_until(DEADLINE, || async {
            q.result("ttl").await.unwrap().is_none()
        })
        .await,
        "the result expired"
    );
    assert!(q.job("ttl").await.unwrap().is_none());
    assert_eq!(q.counts().await.unwrap().completed, 1);
}

#[tokio::test]
async fn redis_memory_stays_flat_over_many_completed_jobs() {
    let ctx = TestStack::start("q-flat").await;
    let q = ctx.queue_with(
        TOOL_CALLS,
        QueuePolicy {
            result_ttl: Duration::from_millis(200),
            completed_index_max: 50,
            ..fast_policy()
        },
    );
    for _ in 0..5 {
        let jobs: Vec<NewJob> = (0..1000).map(|_| NewJob::new("x")).collect();
        q.enqueue_bulk(&jobs).await.unwrap();
        let fetched = q.fetch("w", 1000).await.unwrap();
        let items: Vec<_> = fetched.iter().map(|j| (&j.lease, &b"result"[..])).collect();
        assert!(
            q.complete_many(&items)
                .await
                .unwrap()
                .iter()
                .all(|a| *a == Ack::Done)
        );
    }
    assert_eq!(q.counts().await.unwrap().completed, 5000);
    assert!(q.list(JobState::Completed, 0, 1000).await.unwrap().len() <= 50);
    // Once the results expire, what is left of 5,000 completed jobs is a few constant-size keys:
    // the counters, the capped completed index, and the history's hash of each minute the jobs
    // ended in (one or two: they expire after a day, whatever the number of jobs).
    let mut conn = redis::Client::open(exai_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let flat = wait_until(DEADLINE, || {
        let mut conn = conn.clone();
        let pattern = format!("*{}*", ctx.prefix);
        async move {
            let mut keys: Vec<String> = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            let history = keys.iter().filter(|k| k.contains(":history:")).count();
            keys.len() - history <= 2 && (1..=2).contains(&history)
        }
    })
    .await;
    let list_len: usize = redis::cmd("LLEN")
        .arg(ctx.keys.queue(TOOL_CALLS).completed())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(flat, "job hashes were left behind");
    assert_eq!(list_len, 50);
}

#[tokio::test]
async fn sweep_promotes_due_jobs() {
    let (_ctx, q) = fast_queue("q-promote").await;
    q.enqueue(
        &NewJob::new("x")
            .with_id("due")
            .with_delay(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    assert_eq!(q.counts().await.unwrap().scheduled, 1);
    assert!(
        wait_until(DEADLINE, || async {
            q.sweep(100).await.unwrap().promoted == 1
        })
        .await
    );
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.scheduled, counts.queued), (0, 1));
}

#[tokio::test]
async fn removing_a_running_job_loses_its_lease() {
    let (_ctx, q) = fast_queue("q-remove").await;
    q.enqueue(&NewJob::new("x").with_id("rm")).await.unwrap();
    let job = q.fetch("w", 1).await.unwrap().pop().unwrap();
    assert!(q.remove("rm").await.unwrap());
    assert_eq!(
        q.complete(&job.lease, b"late").await.unwrap(),
        Ack::LeaseLost
    );
    assert!(q.job("rm").await.unwrap().is_none());
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.running, counts.completed), (0, 0));
    // The id is free again.
    assert!(
        q.enqueue(&NewJob::new("x").with_id("rm"))
            .await
            .unwrap()
            .is_created()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_jobs_drain_exactly_once_through_concurrent_workers() {
    const JOBS: usize = 20_000;
    const WORKERS: usize = 4;
    let ctx = TestStack::start("q-drain").await;
    let q = ctx.queue_with(
        TOOL_CALLS,
        QueuePolicy {
            lease: Duration::from_secs(60),
            ..fast_policy()
        },
    );
    let jobs: Vec<NewJob> = (0..JOBS).map(|i| NewJob::new(format!("{i}"))).collect();
    let created = q.enqueue_bulk(&jobs).await.unwrap();
    assert!(created.iter().all(Enqueued::is_created));
    let all_ids: HashSet<String> = created.iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(all_ids.len(), JOBS);
    assert_eq!(q.counts().await.unwrap().queued, JOBS as u64);

    let seen = Arc::new(Mutex::new(HashSet::with_capacity(JOBS)));
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let q = q.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut acks = 0usize;
            loop {
                let batch = q.fetch(&worker, 100).await.expect("fetch");
                if batch.is_empty() {
                    return acks;
                }
                {
                    let mut seen = seen.lock().unwrap();
                    for job in &batch {
                        assert!(
                            seen.insert(job.id().to_owned()),
                            "{} fetched twice",
                            job.id()
                        );
                    }
                }
                let items: Vec<_> = batch
                    .iter()
                    .map(|j| (&j.lease, j.payload.as_slice()))
                    .collect();
                let result = q.complete_many(&items).await.expect("complete");
                assert!(result.iter().all(|a| *a == Ack::Done));
                acks += result.len();
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("worker task");
    }
    assert_eq!(total, JOBS);
    assert_eq!(*seen.lock().unwrap(), all_ids);
    let counts = q.counts().await.unwrap();
    assert_eq!(
        (counts.completed, counts.queued, counts.running),
        (JOBS as u64, 0, 0),
        "{counts:?}"
    );
    // Every job's own result, spot-checked.
    for e in created.iter().step_by(997) {
        let r = q.result(e.id()).await.unwrap().expect("result");
        assert_eq!(r.state, JobState::Completed);
        let info = q.job(e.id()).await.unwrap().unwrap();
        assert_eq!(r.result.unwrap(), info.payload);
        assert_eq!(info.attempts, 1);
    }
}

#[tokio::test]
async fn an_enqueue_wakes_one_idle_worker_and_a_full_fetch_wakes_the_next() {
    let (ctx, q) = fast_queue("q-wake-one").await;
    // Two worker processes: a subscriber each.
    let subscriber = || async { ctx.subscriber().await };
    let (a, b) = (
        Waker::new(&subscriber().await, &ctx.keys, &[(TOOL_CALLS, "a")])
            .await
            .unwrap(),
        Waker::new(&subscriber().await, &ctx.keys, &[(TOOL_CALLS, "b")])
            .await
            .unwrap(),
    );
    let mut signals = [a.signal(TOOL_CALLS).unwrap(), b.signal(TOOL_CALLS).unwrap()];
    let mut cancels = [a.cancellations(), b.cancellations()];
    let names = ["a", "b"];
    // Both idle: their fetches came back empty.
    for name in names {
        go_idle(&q, name).await;
    }
    // Everything published before it has reached both wakers once this marker has.
    let settle = async |cancels: &mut [tokio::sync::broadcast::Receiver<CancelSignal>; 2],
                        tag: &str| {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(ctx.keys.queue(TOOL_CALLS).cancel_channel())
            .arg(tag)
            .query_async(&mut ctx.conn.clone())
            .await
            .unwrap();
        for rx in cancels.iter_mut() {
            let got = tokio::time::timeout(DEADLINE, rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.job_id, tag);
        }
    };

    // Three jobs: exactly one idle worker hears about them.
    let jobs = numbered("p", "w", 3);
    q.enqueue_bulk(&jobs).await.unwrap();
    settle(&mut cancels, "marker-1").await;
    let woken: Vec<usize> = (0..2).filter(|&i| signals[i].woken()).collect();
    assert_eq!(woken.len(), 1, "exactly one idle worker woken: {woken:?}");
    let (first, other) = (woken[0], 1 - woken[0]);
    signals[first].mark_seen();

    // It takes one job, a full batch, with jobs left behind: the other idle worker is woken.
    let got = q
        .fetch_batch_idle(names[first], 1, SLOW_POLL)
        .await
        .unwrap();
    assert_eq!(got.jobs.len(), 1);
    let start = Instant::now();
    assert_eq!(signals[other].wait(SLOW_POLL).await, Wake::Notified);
    assert!(start.elapsed() < SLOW_POLL / 10);
    let got = q
        .fetch_batch_idle(names[other], 5, SLOW_POLL)
        .await
        .unwrap();
    assert_eq!(got.jobs.len(), 2);
    settle(&mut cancels, "marker-2").await;
    assert!(!signals[first].woken(), "the first worker was woken twice");
}

/// Fetches from the empty queue as `worker`, which registers it idle.
async fn go_idle(q: &Queue, worker: &str) {
    let got = q.fetch_batch_idle(worker, 5, SLOW_POLL).await.unwrap();
    assert!(got.jobs.is_empty(), "the queue was expected empty");
}

/// The state of job `id`, if it exists.
async fn state(q: &Queue, id: &str) -> Option<JobState> {
    q.job(id).await.unwrap().map(|j| j.state)
}

/// A waker for worker `worker` whose hand-offs arrive on the returned receiver.
async fn hand_off_waker(
    ctx: &TestStack,
    worker: &str,
) -> (Waker, tokio::sync::mpsc::UnboundedReceiver<Fetched>) {
    let subscriber = ctx.subscriber().await;
    let waker = Waker::new(&subscriber, &ctx.keys, &[(TOOL_CALLS, worker)])
        .await
        .expect("subscribe");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    assert!(waker.on_hand_off(TOOL_CALLS, move |job| {
        let _ = tx.send(job);
    }));
    (waker, rx)
}

/// Enqueues job `id` and returns it as the hand-off `handed` received (failing after
/// [`DEADLINE`] or when another job arrives).
async fn enqueue_handed_off(
    producer: &Queue,
    handed: &mut tokio::sync::mpsc::UnboundedReceiver<Fetched>,
    id: &str,
    payload: &str,
) -> Fetched {
    producer
        .enqueue(&NewJob::new(payload).with_id(id))
        .await
        .unwrap();
    let job = tokio::time::timeout(DEADLINE, handed.recv())
        .await
        .expect("handed off in time")
        .unwrap();
    assert_eq!(job.id(), id);
    job
}

#[tokio::test]
async fn an_idle_worker_that_takes_hand_offs_is_handed_a_lone_job_already_leased() {
    let ctx = TestStack::start("q-hand-off").await;
    let producer = ctx.queue_with(TOOL_CALLS, fast_policy());
    let worker = producer.with_hand_offs();
    let (waker, mut handed) = hand_off_waker(&ctx, "w").await;
    let mut signal = waker.signal(TOOL_CALLS).unwrap();
    go_idle(&worker, "w").await;

    // The lone job arrives leased: running, first attempt, held by the worker.
    let job = enqueue_handed_off(&producer, &mut handed, "h1", "payload\nwith a newline").await;
    assert_eq!(job.id(), "h1");
    assert_eq!(job.attempt(), 1);
    assert_eq!(job.payload, b"payload\nwith a newline");
    assert_eq!(job.max_attempts, fast_policy().max_attempts);
    let info = producer.job("h1").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Running);
    assert_eq!(info.attempts, 1);
    assert_eq!(info.worker.as_deref(), Some("w"));
    assert_eq!(info.fence, Some(job.lease.fence));
    assert_eq!(info.lease_until_ms, Some(job.lease_until_ms));
    waker.sync().await.unwrap();
    assert!(!signal.woken(), "a hand-off is not also a wake-up");
    // Its lease is the worker's to complete, fenced like a fetched one.
    assert_eq!(
        worker.complete(&job.lease, b"done").await.unwrap(),
        Ack::Done
    );

    // The hand-off used the registration up: the next job waits in the queue and wakes the
    // worker, which fetches it (and so registers again).
    producer
        .enqueue(&NewJob::new("p").with_id("h2"))
        .await
        .unwrap();
    assert_eq!(signal.wait(SLOW_POLL).await, Wake::Notified);
    assert_eq!(state(&producer, "h2").await, Some(JobState::Queued));
    let got = worker.fetch_batch_idle("w", 5, SLOW_POLL).await.unwrap();
    assert_eq!(got.jobs.len(), 1);
    assert_eq!(got.jobs[0].id(), "h2");

    // Registered again, but a job queued ahead (the queue is paused) keeps its place: the
    // next enqueue goes behind it, not to the worker.
    producer.pause().await.unwrap();
    producer
        .enqueue(&NewJob::new("p").with_id("h3"))
        .await
        .unwrap();
    producer.resume().await.unwrap();
    producer
        .enqueue(&NewJob::new("p").with_id("h4"))
        .await
        .unwrap();
    assert_eq!(state(&producer, "h3").await, Some(JobState::Queued));
    assert_eq!(state(&producer, "h4").await, Some(JobState::Queued));
    let got = worker.fetch_batch_idle("w", 5, SLOW_POLL).await.unwrap();
    let ids: Vec<&str> = got.jobs.iter().map(Fetched::id).collect();
    assert_eq!(ids, ["h3", "h4"]);
    waker.sync().await.unwrap();
    assert!(handed.try_recv().is_err(), "nothing else was handed off");

    // A worker whose registration a hand-off used up registers again without fetching.
    for id in ["h5", "h6"] {
        enqueue_handed_off(&producer, &mut handed, id, "p").await;
        worker.register_idle("w", SLOW_POLL).await.unwrap();
    }

    // Leaving withdraws the hand-off terms with the registration.
    let terms = ctx.keys.queue(TOOL_CALLS).hand_offs();
    let held = async || -> bool {
        redis::cmd("HEXISTS")
            .arg(&terms)
            .arg("w")
            .query_async(&mut ctx.conn.clone())
            .await
            .unwrap()
    };
    assert!(held().await);
    worker.leave_idle("w").await.unwrap();
    assert!(!held().await);
}

#[tokio::test]
async fn a_hand_off_nobody_hears_is_not_made() {
    let ctx = TestStack::start("q-hand-off-deaf").await;
    let producer = ctx.queue_with(TOOL_CALLS, fast_policy());
    // Registered idle and taking hand-offs, but not listening (it died, or its subscription
    // is reconnecting).
    go_idle(&producer.with_hand_offs(), "gone").await;
    producer
        .enqueue(&NewJob::new("p").with_id("d1"))
        .await
        .unwrap();
    let info = producer.job("d1").await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Queued);
    assert_eq!(info.attempts, 0);
    // Anyone else fetches it at once, as its first attempt.
    let got = producer.fetch("other", 5).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attempt(), 1);
}

#[tokio::test]
async fn idle_registration_follows_the_fetches_and_is_withdrawn_on_leave() {
    let (ctx, q) = fast_queue("q-idle-reg").await;
    let idle = ctx.keys.queue(TOOL_CALLS).idle();
    let until = async |worker: &str| -> Option<u64> {
        redis::cmd("ZSCORE")
            .arg(&idle)
            .arg(worker)
            .query_async(&mut ctx.conn.clone())
            .await
            .unwrap()
    };
    let before = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // A short fetch registers the worker for as long as it will wait, plus a second.
    assert!(
        q.fetch_batch_idle("w", 5, Duration::from_secs(3))
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
    let registered = until("w").await.expect("registered idle");
    assert!(
        registered >= before + 4_000 && registered < before + 4_000 + DEADLINE.as_millis() as u64,
        "registered until {registered}, fetched at about {before}"
    );
    // A fetch that fills its batch is not idle.
    q.enqueue_bulk(&[
        NewJob::new("p").with_id("r1"),
        NewJob::new("p").with_id("r2"),
    ])
    .await
    .unwrap();
    assert_eq!(
        q.fetch_batch_idle("w", 1, Duration::from_secs(3))
            .await
            .unwrap()
            .jobs
            .len(),
        1
    );
    assert_eq!(until("w").await, None);
    // Idle again, then leaving: no registration remains for enqueues to wake.
    assert_eq!(
        q.fetch_batch_idle("w", 5, Duration::from_secs(3))
            .await
            .unwrap()
            .jobs
            .len(),
        1
    );
    assert!(until("w").await.is_some());
    q.leave_idle("w").await.unwrap();
    assert_eq!(until("w").await, None);
}

#[tokio::test]
async fn an_idle_worker_is_woken_by_an_enqueue_not_by_its_poll() {
    let (ctx, q) = fast_queue("q-wake").await;
    let waker = waker(&ctx).await;
    let mut signal = waker.signal(TOOL_CALLS).expect("subscribed");

    // An idle worker: its fetch came back empty, it waits with a long poll fallback.
    assert!(q.fetch("w", 10).await.unwrap().is_empty());
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let woke = signal.wait(SLOW_POLL).await;
            let job = q.fetch("w", 10).await.unwrap().pop();
            (woke, start.elapsed(), job)
        })
    };
    // Let the waiter block first; even if it had not, the signal would remember the push.
    tokio::task::yield_now().await;
    q.enqueue(&NewJob::new("x").with_id("wake")).await.unwrap();
    let (woke, elapsed, job) = waiter.await.unwrap();
    assert_eq!(woke, Wake::Notified);
    assert!(
        elapsed < SLOW_POLL / 10,
        "woken after {elapsed:?}, the poll fallback is {SLOW_POLL:?}"
    );
    assert_eq!(job.expect("the job is there").id(), "wake");

    // A push published while the worker was busy (between its fetch and its wait) is not lost.
    let mut signal = waker.signal(TOOL_CALLS).unwrap();
    q.enqueue(&NewJob::new("y").with_id("busy")).await.unwrap();
    let start = Instant::now();
    assert_eq!(signal.wait(SLOW_POLL).await, Wake::Notified);
    assert!(start.elapsed() < SLOW_POLL / 10);
    assert_eq!(q.fetch("w", 10).await.unwrap().len(), 1);

    // A delayed job due sooner than anything else wakes idle workers too, so they shorten
    // their wait to its due time instead of sleeping through it.
    signal.mark_seen();
    q.enqueue(
        &NewJob::new("z")
            .with_id("soon")
            .with_delay(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let start = Instant::now();
    assert_eq!(signal.wait(SLOW_POLL).await, Wake::Notified);
    assert!(start.elapsed() < SLOW_POLL / 10);
    let batch = q.fetch_batch("w", 10).await.unwrap();
    assert!(batch.jobs.is_empty());
    let due_in = batch.next_due_in.expect("the delayed job is reported");
    assert!(due_in <= Duration::from_millis(300), "{due_in:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cron_tick_fires_once_across_many_callers() {
    let ctx = TestStack::start("q-cron").await;
    let q = ctx.queue_with(
        TOOL_CALLS,
        QueuePolicy {
            cron_dedup_window: Duration::from_secs(7200),
            ..fast_policy()
        },
    );
    let tick = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            q.enqueue_tick("orphans", tick, b"{}".to_vec())
                .await
                .unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        let e = t.await.unwrap();
        assert_eq!(e.id(), "cron:orphans:1700000000");
        created += usize::from(e.is_created());
    }
    assert_eq!(created, 1, "exactly one caller created the tick's job");
    assert_eq!(q.counts().await.unwrap().queued, 1);

    // The job runs and its data goes (as after a short result_ttl): the tick still does not
    // fire again.
    let job = q.fetch("w", 1).await.unwrap().pop().unwrap();
    q.complete(&job.lease, b"").await.unwrap();
    assert!(q.remove(job.id()).await.unwrap());
    assert!(
        !q.enqueue_tick("orphans", tick, b"{}".to_vec())
            .await
            .unwrap()
            .is_created()
    );
    // The next tick fires; a tick older than the window is refused.
    let next = tick + Duration::from_secs(3600);
    assert!(
        q.enqueue_tick("orphans", next, b"{}".to_vec())
            .await
            .unwrap()
            .is_created()
    );
    let ancient = tick - Duration::from_secs(5 * 3600);
    assert!(
        !q.enqueue_tick("orphans", ancient, b"{}".to_vec())
            .await
            .unwrap()
            .is_created()
    );
    // Another schedule has its own ticks.
    assert!(
        q.enqueue_tick("reports", tick, b"{}".to_vec())
            .await
            .unwrap()
            .is_created()
    );
}

//! Fair share in the queue (`Queue::enqueue_in_group` with a fairness key) against a real
//! Redis, called directly as the daemon and a worker would:
//!
//! - keyed jobs are taken round-robin across keys, after the wait list's unkeyed jobs, and a
//!   key of weight w gives w jobs per turn;
//! - a job put back (release), rescued (lease expired) or due again (retry) keeps its place at
//!   the head of its key's list;
//! - counts, pages and positions (within the key, keys ahead) see the key lists;
//! - a cancelled or removed keyed job is skipped by the fetch and leaves the counts exact;
//! - a paused queue keeps keyed jobs and a resume serves them; a lone keyed job with nothing
//!   queued is still handed to an idle worker;
//! - a fetch costs the same Redis commands with 10,000 keys waiting as with 2 (counted by the
//!   command statistics of a Redis server of the test's own).
//!
//! Each test works under its own key prefix and deletes it at the end, even when it fails.

use std::time::Duration;

use exai_shared::queue::{
    FailKind, FailOutcome, Fairness, JobState, NewJob, Queue, QueuePolicy, TOOL_CALLS, Waker,
};
use exai_tests::{RedisServer, TestStack, wait_for};

/// How long a condition may take before a test gives up on it.
const DEADLINE: Duration = Duration::from_secs(10);

/// A group large enough never to refuse a job here.
const GROUP_MAX: usize = 100_000;

/// A test's stack and its `tool_calls` queue with short leases and retries.
async fn fair_queue(test: &str) -> (TestStack, Queue) {
    let ctx = TestStack::start(test).await;
    let q = ctx.queue_with(TOOL_CALLS, policy());
    (ctx, q)
}

fn policy() -> QueuePolicy {
    QueuePolicy {
        max_attempts: 3,
        lease: Duration::from_millis(200),
        ..QueuePolicy::default()
    }
}

/// [`policy`] without the history, whose per-call writes depend on how long jobs waited.
fn policy_without_history() -> QueuePolicy {
    QueuePolicy {
        history: false,
        ..policy()
    }
}

/// Enqueues job `id` under fairness key `key` of weight `weight`.
async fn put(q: &Queue, id: &str, key: &str, weight: u32) {
    let created = q
        .enqueue_in_group(
            &NewJob::new(id).with_id(id),
            "g",
            GROUP_MAX,
            Duration::from_secs(60),
            Some(Fairness { key, weight }),
        )
        .await
        .unwrap();
    assert!(created.is_some_and(|e| e.is_created()), "{id}");
}

/// The ids of the next `n` jobs fetched, in the order the fetch took them.
async fn take(q: &Queue, n: usize) -> Vec<String> {
    q.fetch("w", n)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.lease.id)
        .collect()
}

/// The ids of the next `n` jobs fetched, in the order the fetch took them, each completed.
async fn take_done(q: &Queue, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for f in q.fetch("w", n).await.unwrap() {
        q.complete(&f.lease, b"ok").await.unwrap();
        ids.push(f.lease.id);
    }
    ids
}

#[tokio::test]
async fn keyed_jobs_are_taken_round_robin_after_unkeyed_ones() {
    let (_ctx, q) = fair_queue("fair-rr").await;
    for i in 0..5 {
        put(&q, &format!("a{i}"), "a", 1).await;
    }
    for i in 0..3 {
        put(&q, &format!("b{i}"), "b", 1).await;
    }
    put(&q, "c0", "c", 1).await;
    q.enqueue(&NewJob::new("x").with_id("x")).await.unwrap();
    assert_eq!(
        take(&q, 4).await,
        ["x", "a0", "b0", "c0"],
        "the wait list first, then one job per key"
    );
    // A key that had nothing waiting goes before the keys with backlogs (the new-flow rule),
    // once; the backlogged keys keep their round.
    put(&q, "d0", "d", 1).await;
    put(&q, "d1", "d", 1).await;
    assert_eq!(
        take(&q, 100).await,
        ["d0", "a1", "b1", "d1", "a2", "b2", "a3", "a4"]
    );
    assert!(take(&q, 10).await.is_empty());
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.queued, counts.fair_keys), (0, 0), "{counts:?}");
}

#[tokio::test]
async fn a_key_of_weight_three_gives_three_jobs_per_turn() {
    let (_ctx, q) = fair_queue("fair-weight").await;
    for i in 0..6 {
        put(&q, &format!("a{i}"), "heavy", 3).await;
    }
    for i in 0..3 {
        put(&q, &format!("b{i}"), "light", 1).await;
    }
    let mut order = Vec::new();
    // One job per fetch: the credit lives in Redis between fetches.
    for _ in 0..9 {
        order.extend(take(&q, 1).await);
    }
    // Each key's first job arrived fresh (one each, in arrival order); then the ring: three of
    // heavy's per turn, one of light's.
    assert_eq!(
        order,
        ["a0", "b0", "a1", "a2", "a3", "b1", "a4", "a5", "b2"]
    );
}

#[tokio::test]
async fn a_job_put_back_rescued_or_retried_keeps_its_place_in_its_key() {
    let (_ctx, q) = fair_queue("fair-putback").await;
    for i in 0..3 {
        put(&q, &format!("a{i}"), "a", 1).await;
    }
    put(&q, "b0", "b", 1).await;
    put(&q, "b1", "b", 1).await;

    // Released: back to the head of its key, which keeps its turn in the ring.
    let first = q.fetch("w", 1).await.unwrap().pop().unwrap();
    assert_eq!(first.lease.id, "a0");
    q.release(&first.lease, Duration::ZERO).await.unwrap();
    assert_eq!(take_done(&q, 2).await, ["b0", "a0"]);

    // Rescued after its lease expired: the head of its key again.
    let lost = q.fetch("w", 1).await.unwrap().pop().unwrap();
    assert_eq!(lost.lease.id, "b1");
    put(&q, "b2", "b", 1).await;
    let rescued = wait_for(DEADLINE, || async {
        let r = q.sweep(100).await.unwrap();
        (r.rescued == 1).then_some(())
    })
    .await;
    assert!(rescued.is_some(), "the expired lease was rescued");
    // Key b had emptied, so b2 made it fresh again: its (rescued) head goes first.
    assert_eq!(take_done(&q, 2).await, ["b1", "a1"]);

    // Failed and due again: promoted to the head of its key.
    assert_eq!(take_done(&q, 1).await, ["b2"]);
    let failing = q.fetch("w", 1).await.unwrap().pop().unwrap();
    assert_eq!(failing.lease.id, "a2");
    let outcome = q
        .fail(
            &failing.lease,
            "flaky",
            FailKind::RetryAfter(Duration::from_millis(20)),
        )
        .await
        .unwrap();
    assert!(
        matches!(outcome, FailOutcome::Retrying { .. }),
        "{outcome:?}"
    );
    put(&q, "a3", "a", 1).await;
    let due = wait_for(DEADLINE, || async {
        q.sweep(100).await.unwrap();
        (q.job("a2").await.unwrap().unwrap().state == JobState::Queued).then_some(())
    })
    .await;
    assert!(due.is_some(), "the retry came due");
    // a3 made key a fresh again; a2 was put at its head, a3 follows.
    assert_eq!(take_done(&q, 3).await, ["a2", "a3"]);
}

#[tokio::test]
async fn counts_pages_and_positions_see_the_key_lists() {
    let (_ctx, q) = fair_queue("fair-counts").await;
    q.enqueue(&NewJob::new("x").with_id("x")).await.unwrap();
    for i in 0..3 {
        put(&q, &format!("a{i}"), "a", 1).await;
    }
    for i in 0..2 {
        put(&q, &format!("b{i}"), "b", 1).await;
    }
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.queued, counts.fair_keys), (6, 2), "{counts:?}");

    // Run order: x, a0, b0, a1, b1, a2.
    let x = q.position("x").await.unwrap().unwrap();
    assert_eq!((x.position, x.in_key, x.keys_ahead), (1, None, None));
    let b1 = q.position("b1").await.unwrap().unwrap();
    assert_eq!(
        (b1.position, b1.in_key, b1.keys_ahead),
        (5, Some(2), Some(1))
    );
    let a2 = q.position("a2").await.unwrap().unwrap();
    assert_eq!(
        (a2.position, a2.in_key, a2.keys_ahead),
        (6, Some(3), Some(0))
    );
    assert_eq!(q.wait_position("a0").await.unwrap(), Some(2));

    // Pages: the wait list, then key by key from the ring's head.
    let ids =
        |jobs: Vec<exai_shared::queue::JobInfo>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(
        ids(q.list(JobState::Queued, 0, 10).await.unwrap()),
        ["x", "a0", "a1", "a2", "b0", "b1"]
    );
    assert_eq!(
        ids(q.list(JobState::Queued, 3, 2).await.unwrap()),
        ["a2", "b0"]
    );
    let found = q
        .search("b1", Some(JobState::Queued), 100, 10)
        .await
        .unwrap();
    assert!(found.jobs.iter().any(|j| j.id == "b1"), "{found:?}");
    let found = q
        .search("a", Some(JobState::Queued), 100, 10)
        .await
        .unwrap();
    assert_eq!(
        found.jobs.len(),
        3,
        "payload search reads the key lists: {found:?}"
    );

    take(&q, 2).await;
    let b1 = q.position("b1").await.unwrap().unwrap();
    assert_eq!(
        (b1.position, b1.in_key, b1.keys_ahead),
        (3, Some(2), Some(0))
    );
    assert_eq!(q.position("x").await.unwrap(), None, "running, not waiting");
}

#[tokio::test]
async fn a_cancelled_or_removed_keyed_job_is_skipped_and_the_counts_stay_exact() {
    let (_ctx, q) = fair_queue("fair-cancel").await;
    for i in 0..2 {
        put(&q, &format!("a{i}"), "a", 1).await;
    }
    put(&q, "b0", "b", 1).await;
    put(&q, "c0", "c", 1).await;
    q.cancel("a0").await.unwrap();
    assert!(q.remove("b0").await.unwrap());
    assert_eq!(q.counts().await.unwrap().queued, 2);
    assert_eq!(
        q.list(JobState::Queued, 0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect::<Vec<_>>(),
        ["a1", "c0"]
    );
    assert_eq!(take(&q, 10).await, ["c0", "a1"]);
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.queued, counts.fair_keys), (0, 0), "{counts:?}");
    assert_eq!(
        q.job("a0").await.unwrap().unwrap().state,
        JobState::Cancelled
    );
}

#[tokio::test]
async fn a_paused_queue_keeps_keyed_jobs_and_resume_serves_them() {
    let (_ctx, q) = fair_queue("fair-pause").await;
    q.pause().await.unwrap();
    put(&q, "a0", "a", 1).await;
    put(&q, "b0", "b", 1).await;
    assert!(take(&q, 10).await.is_empty(), "paused");
    assert_eq!(q.counts().await.unwrap().queued, 2);
    q.resume().await.unwrap();
    assert_eq!(take(&q, 10).await, ["a0", "b0"]);
}

/// The calls of every command Redis served since its statistics were reset, except `INFO`.
async fn commands_served(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split([':', ','])
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// The Redis commands one fetch of 2 jobs costs (script included) once `keys` keys wait with
/// `per_key` jobs each.
async fn fetch_cost(redis: &RedisServer, test: &str, keys: usize, per_key: usize) -> u64 {
    let ctx = TestStack::builder(test).redis(&redis.url()).start().await;
    let q = ctx.queue_with(TOOL_CALLS, policy_without_history());
    let mut ids = Vec::new();
    for k in 0..keys {
        for j in 0..per_key {
            ids.push((format!("k{k}-{j}"), format!("k{k}")));
        }
    }
    for chunk in ids.chunks(200) {
        let puts = chunk.iter().map(|(id, key)| put(&q, id, key, 1));
        futures::future::join_all(puts).await;
    }
    // Warm the script cache, so the measured call is one EVALSHA; it also serves every key's
    // first job (each key arrived fresh), so the measured fetch takes its turns from the ring.
    let mut served = 0;
    while served < keys {
        let n = take(&q, keys - served).await.len();
        assert!(n > 0, "the keys' first jobs ran out after {served}");
        served += n;
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = commands_served(&mut conn).await;
    assert_eq!(take(&q, 2).await.len(), 2);
    commands_served(&mut conn).await - before
}

#[tokio::test]
async fn a_fetch_costs_the_same_commands_with_ten_thousand_keys_waiting_as_with_two() {
    let redis = RedisServer::start(false).await;
    let few = fetch_cost(&redis, "fair-o1-few", 2, 4).await;
    let many = fetch_cost(&redis, "fair-o1-many", 10_000, 2).await;
    assert!(few > 0);
    assert_eq!(
        few, many,
        "commands per fetch: {few} with 2 keys, {many} with 10,000"
    );
}

#[tokio::test]
async fn a_lone_keyed_job_with_nothing_queued_is_handed_to_an_idle_worker() {
    let (ctx, q) = fair_queue("fair-handoff").await;
    let q = q.with_hand_offs();
    let subscriber = ctx.subscriber().await;
    let waker = Waker::new(&subscriber, &ctx.keys, &[(TOOL_CALLS, "w")])
        .await
        .expect("subscribe");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    assert!(waker.on_hand_off(TOOL_CALLS, move |job| {
        let _ = tx.send(job.id().to_owned());
    }));
    // An empty fetch registers the worker idle.
    assert!(take(&q, 1).await.is_empty());
    put(&q, "solo", "a", 1).await;
    let got = tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap();
    assert_eq!(got.as_deref(), Some("solo"));
    assert_eq!(
        q.job("solo").await.unwrap().unwrap().state,
        JobState::Running
    );
    assert_eq!(q.counts().await.unwrap().queued, 0);
}

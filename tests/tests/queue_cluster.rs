//! Every queue script on a 3-master Redis Cluster started by the test on loopback ports: all
//! keys of a queue share one hash tag, so no script, pipeline or inspection call fails with
//! CROSSSLOT; pub/sub wake-ups and cancel signals cross nodes; scripts Redis forgot are loaded
//! again, in pipelines too. The cluster being the test's own, Redis's command statistics also
//! prove that a batch (enqueue, fetch, heartbeat, complete) is one script call.

use std::time::{Duration, UNIX_EPOCH};

use exai_shared::queue::{
    Ack, CancelOutcome, FailKind, FailOutcome, Fairness, JobState, LeaseState, NewJob, QueuePolicy,
    TOOL_CALLS, Wake, Waker,
};
use exai_shared::redis::RedisHandle;
use exai_tests::{RedisCluster, TestStack, wait_until};

const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_operation_runs_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let ctx = TestStack::builder("q-cluster")
        .env("REDIS_CLUSTER_NODES", &cluster.nodes_env())
        .start()
        .await;
    assert!(matches!(ctx.conn, RedisHandle::Cluster(_)));
    let keys = &ctx.keys;
    let q = ctx.queue_with(
        TOOL_CALLS,
        QueuePolicy {
            lease: Duration::from_millis(200),
            max_attempts: 2,
            ..QueuePolicy::default()
        },
    );
    let subscriber = ctx.subscriber().await;
    let waker = Waker::new(&subscriber, keys, &[(TOOL_CALLS, "w")])
        .await
        .expect("subscribe");
    let mut signal = waker.signal(TOOL_CALLS).expect("subscribed");
    let mut cancels = waker.cancellations();

    // Enqueue: single, bulk over one script call (a pipeline), delayed, cron tick.
    assert!(
        q.enqueue(&NewJob::new("a").with_id("a"))
            .await
            .unwrap()
            .is_created()
    );
    assert_eq!(
        signal.wait(DEADLINE).await,
        Wake::Notified,
        "wake-up across the cluster"
    );
    // A Redis that forgot the scripts (restart, failover) gets them again, pipelines included.
    for node in cluster.seeds() {
        let client = redis::Client::open(node).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let bulk: Vec<NewJob> = (0..1500)
        .map(|i| NewJob::new("b").with_id(format!("b{i}")))
        .collect();
    let out = q.enqueue_bulk(&bulk).await.unwrap();
    assert!(out.iter().all(|e| e.is_created()));
    q.enqueue(
        &NewJob::new("d")
            .with_id("delayed")
            .with_delay(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let tick = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert!(
        q.enqueue_tick("hourly", tick, b"{}".to_vec())
            .await
            .unwrap()
            .is_created()
    );
    assert!(
        !q.enqueue_tick("hourly", tick, b"{}".to_vec())
            .await
            .unwrap()
            .is_created()
    );
    assert_eq!(q.list(JobState::Queued, 0, 5).await.unwrap().len(), 5);
    let ttl = Duration::from_secs(60);
    let grouped = NewJob::new("g").with_id("grouped");
    assert!(
        q.enqueue_in_group(&grouped, "s", 1, ttl, None)
            .await
            .unwrap()
            .is_some()
    );
    assert!(!q.admit_to_group("s", "other", 1, ttl).await.unwrap());
    q.leave_group("s", "grouped").await.unwrap();
    assert!(q.admit_to_group("s", "other", 1, ttl).await.unwrap());

    // A batch is one script call: the cluster is the test's own, so Redis's own command
    // statistics count exactly the calls made here.
    let before = script_calls(&cluster).await;
    let more: Vec<NewJob> = (0..500)
        .map(|i| NewJob::new("c").with_id(format!("c{i}")))
        .collect();
    q.enqueue_bulk(&more).await.unwrap();
    assert_eq!(
        script_calls(&cluster).await - before,
        1,
        "500 jobs, one EVALSHA"
    );

    // Cancel and remove queued jobs; pause and resume.
    assert_eq!(q.cancel("b0").await.unwrap(), CancelOutcome::Removed);
    assert!(q.remove("b1").await.unwrap());
    q.pause().await.unwrap();
    assert!(q.fetch_batch("w", 10).await.unwrap().paused);
    q.resume().await.unwrap();
    assert!(!q.is_paused().await.unwrap());

    // Fetch, heartbeat, complete one and a batch.
    let before = script_calls(&cluster).await;
    let jobs = q.fetch("w", 1000).await.unwrap();
    assert_eq!(jobs.len(), 1000);
    let leases: Vec<_> = jobs.iter().map(|j| j.lease.clone()).collect();
    assert!(
        q.heartbeat(&leases)
            .await
            .unwrap()
            .iter()
            .all(|s| *s == LeaseState::Held)
    );
    assert_eq!(q.complete(&jobs[0].lease, b"r").await.unwrap(), Ack::Done);
    let items: Vec<_> = jobs[1..990].iter().map(|j| (&j.lease, &b"r"[..])).collect();
    assert!(
        q.complete_many(&items)
            .await
            .unwrap()
            .iter()
            .all(|a| *a == Ack::Done)
    );
    assert_eq!(
        script_calls(&cluster).await - before,
        4,
        "one call each: fetch of 1000, heartbeat of 1000, complete, complete of 989"
    );
    assert_eq!(
        q.result(jobs[0].id()).await.unwrap().unwrap().state,
        JobState::Completed
    );

    // Fail (transient, permanent), release, retry_dead, cancel a running job.
    assert!(matches!(
        q.fail(&jobs[990].lease, "flaky", FailKind::Transient)
            .await
            .unwrap(),
        FailOutcome::Retrying { .. }
    ));
    assert_eq!(
        q.fail(&jobs[991].lease, "bad", FailKind::Permanent)
            .await
            .unwrap(),
        FailOutcome::Dead
    );
    assert!(q.retry_dead(jobs[991].id()).await.unwrap());
    assert_eq!(
        q.release(&jobs[992].lease, Duration::ZERO).await.unwrap(),
        Ack::Done
    );
    assert_eq!(
        q.cancel(jobs[993].id()).await.unwrap(),
        CancelOutcome::Signalled
    );
    let sig = tokio::time::timeout(DEADLINE, cancels.recv())
        .await
        .expect("cancel signal across the cluster")
        .unwrap();
    assert_eq!(sig.job_id, jobs[993].id());

    // The rest of the leases expire; sweep rescues them and promotes the delayed job.
    assert!(
        wait_until(DEADLINE, || async {
            q.sweep(1000).await.unwrap().rescued > 0
        })
        .await,
        "sweep on the cluster"
    );
    assert!(
        wait_until(DEADLINE, || async {
            // Due after 300 ms: on a slow machine the fetch above may already have promoted
            // (and leased) it, so "promoted" means only that it left the scheduled set.
            q.sweep(1000).await.unwrap();
            q.job("delayed").await.unwrap().unwrap().state != JobState::Scheduled
        })
        .await,
        "the delayed job was promoted"
    );
    let counts = q.counts().await.unwrap();
    assert_eq!(counts.completed, 990);
    assert_eq!(counts.running, 0, "{counts:?}");
    assert_eq!(q.list(JobState::Completed, 0, 3).await.unwrap().len(), 3);
    // The cluster is the test's own: its servers and data go when it is dropped.
}

/// Successful `EVALSHA` calls served by all nodes of the cluster so far.
async fn script_calls(cluster: &RedisCluster) -> u64 {
    let mut total = 0;
    for node in cluster.seeds() {
        let client = redis::Client::open(node).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .unwrap();
        let Some(line) = stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        else {
            continue;
        };
        let field = |name: &str| {
            line.split(',')
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // A first use answered NOSCRIPT (then loaded and rerun) is a failed call: not counted.
        total += field("calls=") - field("failed_calls=");
    }
    total
}

/// Fair share's scripts on a Redis Cluster: the key lists, the ring, the weights and the
/// credits are built in the scripts from a prefix under the queue's hash tag, so enqueue,
/// round-robin fetch, release, rescue, retry, counts, pages, positions and cancel run without
/// CROSSSLOT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_share_runs_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let ctx = TestStack::builder("q-cluster-fair")
        .env("REDIS_CLUSTER_NODES", &cluster.nodes_env())
        .start()
        .await;
    assert!(matches!(ctx.conn, RedisHandle::Cluster(_)));
    let q = ctx.queue_with(
        TOOL_CALLS,
        QueuePolicy {
            lease: Duration::from_millis(200),
            max_attempts: 3,
            ..QueuePolicy::default()
        },
    );
    let ttl = Duration::from_secs(60);
    let put = |id: &'static str, key: &'static str, weight: u32| {
        let q = q.clone();
        async move {
            q.enqueue_in_group(
                &NewJob::new(id).with_id(id),
                "g",
                100,
                ttl,
                Some(Fairness { key, weight }),
            )
            .await
            .unwrap()
            .expect("admitted")
        }
    };
    for (id, key, w) in [
        ("a0", "a", 2),
        ("a1", "a", 2),
        ("a2", "a", 2),
        ("b0", "b", 1),
        ("b1", "b", 1),
        ("c0", "c", 1),
    ] {
        assert!(put(id, key, w).await.is_created());
    }
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.queued, counts.fair_keys), (6, 3), "{counts:?}");
    let pos = q.position("c0").await.unwrap().unwrap();
    assert_eq!((pos.in_key, pos.keys_ahead), (Some(1), Some(2)));
    assert_eq!(q.list(JobState::Queued, 0, 10).await.unwrap().len(), 6);
    assert_eq!(q.cancel("b1").await.unwrap(), CancelOutcome::Removed);

    // Each key's first job arrived fresh: one each in arrival order; then the ring, where a
    // (weight 2) gives two in a row (b1 was cancelled).
    let ids = |batch: &[exai_shared::queue::Fetched]| {
        batch.iter().map(|f| f.lease.id.clone()).collect::<Vec<_>>()
    };
    let first = q.fetch("w", 4).await.unwrap();
    assert_eq!(ids(&first), ["a0", "b0", "c0", "a1"]);
    // Release one, fail one for a retry, let two leases expire: all come back.
    q.release(&first[0].lease, Duration::ZERO).await.unwrap();
    q.fail(
        &first[1].lease,
        "flaky",
        FailKind::RetryAfter(Duration::from_millis(10)),
    )
    .await
    .unwrap();
    let back = wait_until(DEADLINE, || async {
        q.sweep(100).await.unwrap();
        q.counts().await.unwrap().queued == 5
    })
    .await;
    assert!(back, "{:?}", q.counts().await.unwrap());
    let rest = q.fetch("w", 10).await.unwrap();
    let mut got = ids(&rest);
    got.sort();
    assert_eq!(got, ["a0", "a1", "a2", "b0", "c0"]);
    for f in &rest {
        q.complete(&f.lease, b"ok").await.unwrap();
    }
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.queued, counts.fair_keys), (0, 0), "{counts:?}");
}

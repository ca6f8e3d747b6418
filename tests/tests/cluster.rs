//! The queue and the semaphores against a 3-master Redis Cluster that the test starts itself on
//! loopback ports: every script declares keys of one hash tag, so none fails with CROSSSLOT, and
//! `REDIS_CLUSTER_NODES` switches a worker process to cluster mode.

use std::time::Duration;

use exai_shared::jobs::ToolCallJob;
use exai_shared::queue::{self, FailKind, FailOutcome, JobState, NewJob, Queue, QueuePolicy};
use exai_shared::redis::RedisHandle;
use exai_shared::semaphore::{Acquire, HolderInfo, Semaphores};
use exai_shared::subscriber::Subscriber;
use exai_tests::{RedisCluster, TestStack, spawn_bin, wait_until};
use tokio_util::sync::CancellationToken;

fn echo(n: u64) -> NewJob {
    NewJob::json(&ToolCallJob {
        tool: "test_echo".into(),
        arguments: serde_json::json!({ "n": n }),
        session_id: "s".into(),
        request_id: None,
        deadline_ms: None,
        staged: None,
    })
    .unwrap()
}

#[tokio::test]
async fn queues_semaphores_and_workers_run_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let nodes = cluster.nodes_env();
    let ctx = TestStack::builder("cluster")
        .envs(&[
            ("REDIS_CLUSTER_NODES", nodes.as_str()),
            ("EXAI_SEMAPHORE_LEASE_MS", "2000"),
            ("EXAI_JOB_LEASE_MS", "1000"),
        ])
        .start()
        .await;
    let (config, conn, keys) = (ctx.config(), ctx.conn.clone(), ctx.keys.clone());
    assert!(matches!(conn, RedisHandle::Cluster(_)));
    let policy = QueuePolicy::from_config(&config.jobs);

    // Every queue's scripts, on whichever master owns the queue's slot.
    for name in queue::ALL_QUEUES {
        let q = Queue::new(conn.clone(), &keys, name, policy.clone());
        assert!(q.enqueue(&echo(1).with_id("a")).await.unwrap().is_created());
        assert!(!q.enqueue(&echo(1).with_id("a")).await.unwrap().is_created());
        q.enqueue_bulk(&[echo(2), echo(3)]).await.unwrap();
        q.enqueue(&echo(4).with_delay(Duration::from_millis(1)))
            .await
            .unwrap();
        let jobs = q.fetch("w", 10).await.unwrap();
        assert!(jobs.len() >= 3, "{name}: fetched {}", jobs.len());
        q.heartbeat(&[jobs[0].lease.clone()]).await.unwrap();
        q.complete(&jobs[0].lease, b"{}").await.unwrap();
        let retried = q
            .fail(&jobs[1].lease, "boom", FailKind::Permanent)
            .await
            .unwrap();
        assert_eq!(retried, FailOutcome::Dead);
        q.sweep(100).await.unwrap();
        q.pause().await.unwrap();
        assert!(q.fetch("w", 10).await.unwrap().is_empty());
        q.resume().await.unwrap();
        let counts = q.counts().await.unwrap();
        assert_eq!(counts.completed, 1, "{name}: {counts:?}");
        assert_eq!(counts.dead, 1, "{name}: {counts:?}");
        assert!(!q.list(JobState::Dead, 0, 10).await.unwrap().is_empty());
        assert!(q.retry_dead(&jobs[1].lease.id).await.unwrap());
    }

    // Semaphores: all-or-nothing over global + kimi, limits and wake-ups.
    let subscriber = Subscriber::connect(RedisHandle::pubsub_client(&config.redis).unwrap())
        .await
        .expect("subscriber on the cluster");
    let sems = Semaphores::new(conn.clone(), &subscriber, keys.clone(), &config.semaphores)
        .await
        .expect("semaphores on the cluster");
    sems.set_limit("kimi", 1).await.unwrap();
    let holder = HolderInfo::new("w", "j1", 1);
    let first = sems
        .try_acquire(&["global", "kimi"], &holder)
        .await
        .unwrap()
        .expect("room for one");
    assert!(
        sems.try_acquire(&["global", "kimi"], &holder)
            .await
            .unwrap()
            .is_none()
    );
    let waiter = {
        let sems = sems.clone();
        tokio::spawn(async move {
            sems.acquire(
                &["global", "kimi"],
                &HolderInfo::new("w", "j2", 1),
                Duration::from_secs(10),
                &CancellationToken::new(),
            )
            .await
            .unwrap()
        })
    };
    assert!(wait_until(Duration::from_secs(5), || async { sems.waiters() == 1 }).await);
    first.release().await.unwrap();
    match waiter.await.unwrap() {
        Acquire::Acquired(guard) => {
            guard.release().await.unwrap();
        }
        other => panic!("the waiter should get the permit: {other:?}"),
    }
    // Adaptive concurrency: one script per step, on the semaphores' slot.
    sems.clear_limit("kimi").await.unwrap();
    let lowered = sems.congestion("kimi").await.unwrap().expect("lowered");
    assert_eq!((lowered.effective, lowered.ceiling), (3, 6));
    assert_eq!(sems.effective_limit("kimi").await.unwrap(), Some(3));

    // Rate budgets: reserve (returning a lapsed reservation of another provider on the way),
    // renew with the lease, settle, on the semaphores' slot.
    let mut budgets = config.semaphores.budgets.clone();
    budgets.kimi.tpm = Some(100);
    budgets.glm.rpm = Some(10);
    let b = exai_shared::budget::Budgets::new(
        conn.clone(),
        keys.clone(),
        budgets,
        Duration::from_millis(200),
    );
    use exai_shared::budget::{Charge, Reservation};
    assert_eq!(
        b.reserve("glm", "lapsing", 5, Duration::ZERO)
            .await
            .unwrap(),
        Reservation::Reserved
    );
    assert_eq!(
        b.reserve("kimi", "t1", 60, Duration::ZERO).await.unwrap(),
        Reservation::Reserved
    );
    assert!(matches!(
        b.reserve("kimi", "t2", 60, Duration::ZERO).await.unwrap(),
        Reservation::Refused { .. }
    ));
    assert!(b.settle("t1", Charge::Tokens(30)).await.unwrap());
    assert_eq!(
        b.reserve("kimi", "t2", 60, Duration::ZERO).await.unwrap(),
        Reservation::Reserved
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            // The next reservation (of any provider) returns what lapsed.
            b.reserve("kimi", "probe", 1, Duration::ZERO).await.is_ok()
                && b.usage("glm").await.unwrap().requests_per_minute.used == 0
                && !b.settle("lapsing", Charge::Refund).await.unwrap()
        })
        .await,
        "the lapsed glm reservation was not returned"
    );

    // Cost accounting: the record script and the report's pipeline, on the usage slot.
    let ledger =
        exai_shared::usage::UsageLedger::new(conn.clone(), keys.clone(), config.usage.retention);
    let call = exai_shared::usage::UsageCall {
        session: "s",
        tool: "chat",
        model: "glm-4.5",
        provider: "glm",
    };
    let usage = exai_shared::usage::Usage {
        prompt_tokens: 5,
        completion_tokens: 6,
        cached_tokens: 1,
        total_tokens: 11,
        calls: 1,
    };
    assert_eq!(ledger.record(call, &usage).await.unwrap(), 11);
    let report = ledger.report(10).await.unwrap();
    assert_eq!(report.total, usage);
    assert_eq!(report.sessions.len(), 1);
    assert_eq!(ledger.session_total("s").await.unwrap(), 11);

    // A worker process in cluster mode, woken through pub/sub, processes a batch of jobs.
    let q = Queue::new(conn.clone(), &keys, queue::TOOL_CALLS, policy.clone());
    let before = q.counts().await.unwrap().completed;
    let _worker = spawn_bin(
        "exai-worker",
        &["run", "--queues", "tool_calls", "--concurrency", "8"],
        &[
            ("REDIS_CLUSTER_NODES", nodes.clone()),
            ("EXAI_REDIS_PREFIX", ctx.prefix.clone()),
            ("EXAI_AUTO_MIGRATE", "false".to_owned()),
        ],
    );
    let jobs: Vec<NewJob> = (0..200).map(echo).collect();
    q.enqueue_bulk(&jobs).await.unwrap();
    let done = wait_until(Duration::from_secs(60), || async {
        let c = q.counts().await.unwrap();
        c.queued == 0 && c.running == 0 && c.completed >= before + 200
    })
    .await;
    assert!(
        done,
        "worker drained the cluster queue: {:?}",
        q.counts().await.unwrap()
    );
}

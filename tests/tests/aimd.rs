//! Adaptive concurrency (AIMD) of the provider semaphores against a real Redis, and with worker
//! processes calling exai-sim where the claim is about the provider's 429s:
//!
//! - the controller's arithmetic: multiplicative decrease (at least one less, never below 1),
//!   one decrease per cooldown, additive increase every N successes, never above the ceiling;
//! - a limit lowered while leases are held lets them finish (they renew and release normally)
//!   and holds new grants back until fewer are live;
//! - worker processes whose provider answers Moonshot's concurrency 429s lower the effective
//!   limit, no permit is ever held above the configured ceiling, and successes bring the limit
//!   back to the ceiling; `exai-worker sem --json` shows both limits.
//!
//! Each test works under its own key prefix and deletes it at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use exai_shared::jobs::ToolCallJob;
use exai_shared::queue::{self, NewJob, Queue};
use exai_shared::semaphore::{HolderInfo, Renewal, Semaphores};
use exai_tests::{TestStack, wait_until};
use serde_json::json;

async fn semaphores(stack: &TestStack) -> Semaphores {
    Semaphores::from_config(&stack.config())
        .await
        .expect("set up semaphores")
}

fn holder(job: &str) -> HolderInfo {
    HolderInfo::new("aimd-test", job, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrease_is_multiplicative_and_increase_additive_within_one_and_the_ceiling() {
    let stack = TestStack::builder("aimd-arith")
        .envs(&[
            ("EXAI_WS_KIMI_MAX_INFLIGHT", "8"),
            ("EXAI_AIMD_DECREASE_COOLDOWN_MS", "0"),
            ("EXAI_AIMD_INCREASE_EVERY", "2"),
            ("EXAI_AIMD_INCREASE_STEP", "3"),
        ])
        .start()
        .await;
    let sems = semaphores(&stack).await;
    assert_eq!(sems.effective_limit("kimi").await.unwrap(), Some(8));

    // 8 → 4 → 2 → 1, then it stays at 1.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let change = sems.congestion("kimi").await.unwrap();
        seen.push(change.map(|c| (c.effective, c.decreased)));
    }
    assert_eq!(
        seen,
        vec![Some((4, true)), Some((2, true)), Some((1, true)), None]
    );
    assert_eq!(sems.effective_limit("kimi").await.unwrap(), Some(1));

    // Every second success adds 3, capped at the ceiling of 8: 1 → 4 → 7 → 8.
    let mut raised = Vec::new();
    for _ in 0..8 {
        if let Some(c) = sems.success("kimi").await.unwrap() {
            assert!(!c.decreased);
            assert_eq!(c.ceiling, 8);
            raised.push(c.effective);
        }
    }
    assert_eq!(raised, vec![4, 7, 8]);
    assert_eq!(sems.effective_limit("kimi").await.unwrap(), Some(8));

    // A lowered runtime ceiling caps the effective limit, and a decrease starts from it: 3 → 1.
    sems.set_limit("kimi", 3).await.unwrap();
    assert_eq!(sems.effective_limit("kimi").await.unwrap(), Some(3));
    let change = sems.congestion("kimi").await.unwrap().expect("decreased");
    assert_eq!((change.effective, change.ceiling), (1, 3));
    sems.clear_limit("kimi").await.unwrap();
    // The global semaphore is untouched by kimi's steps.
    assert_eq!(sems.effective_limit("global").await.unwrap(), Some(24));
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_burst_of_congestion_within_the_cooldown_decreases_once() {
    let stack = TestStack::builder("aimd-cooldown")
        .envs(&[
            ("EXAI_WS_KIMI_MAX_INFLIGHT", "16"),
            ("EXAI_AIMD_DECREASE_COOLDOWN_MS", "60000"),
            ("EXAI_AIMD_DECREASE_FACTOR", "0.75"),
        ])
        .start()
        .await;
    let sems = semaphores(&stack).await;
    let mut decreases = 0;
    for _ in 0..20 {
        if sems.congestion("kimi").await.unwrap().is_some() {
            decreases += 1;
        }
    }
    assert_eq!(decreases, 1);
    assert_eq!(sems.effective_limit("kimi").await.unwrap(), Some(12));
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_adaptive_concurrency_never_moves_the_limit_and_ignores_a_lowered_one() {
    let stack = TestStack::builder("aimd-off")
        .envs(&[
            ("EXAI_WS_KIMI_MAX_INFLIGHT", "6"),
            ("EXAI_AIMD_ENABLED", "false"),
        ])
        .start()
        .await;
    let sems = semaphores(&stack).await;
    assert!(sems.congestion("kimi").await.unwrap().is_none());
    assert_eq!(sems.effective_limit("kimi").await.unwrap(), Some(6));
    // A limit lowered while adaptive concurrency was on (here: by a process with it on) does
    // not bind a process with it off: it grants up to the configured limit.
    let mut on = stack.config();
    on.semaphores.aimd.enabled = true;
    on.semaphores.aimd.decrease_cooldown = Duration::ZERO;
    let on = Semaphores::from_config(&on).await.unwrap();
    assert_eq!(on.congestion("kimi").await.unwrap().unwrap().effective, 3);
    assert_eq!(on.effective_limit("kimi").await.unwrap(), Some(3));
    assert_eq!(sems.effective_limit("kimi").await.unwrap(), Some(6));
    let mut held = Vec::new();
    for i in 0..6 {
        held.push(
            sems.try_acquire(&["kimi"], &holder(&format!("off-{i}")))
                .await
                .unwrap()
                .expect("the configured limit applies"),
        );
    }
    assert!(
        sems.try_acquire(&["kimi"], &holder("off-7"))
            .await
            .unwrap()
            .is_none()
    );
    // With 3 live leases, the process with it on sees the lowered limit (3) and waits; the one
    // with it off still grants.
    for _ in 0..3 {
        held.pop().unwrap().release().await.unwrap();
    }
    assert!(
        on.try_acquire(&["kimi"], &holder("on-1"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        sems.try_acquire(&["kimi"], &holder("off-8"))
            .await
            .unwrap()
            .is_some()
    );
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_held_above_a_lowered_limit_finish_and_new_grants_wait() {
    let stack = TestStack::builder("aimd-held")
        .envs(&[
            ("EXAI_WS_KIMI_MAX_INFLIGHT", "4"),
            ("EXAI_AIMD_DECREASE_COOLDOWN_MS", "0"),
        ])
        .start()
        .await;
    let sems = semaphores(&stack).await;
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            sems.try_acquire(&["kimi"], &holder(&format!("held-{i}")))
                .await
                .unwrap()
                .expect("room below the ceiling"),
        );
    }
    let change = sems.congestion("kimi").await.unwrap().expect("decreased");
    assert_eq!(change.effective, 2);
    // The four holders keep their permits: they renew as before.
    for guard in &held {
        assert_eq!(guard.renew_once().await.unwrap(), Renewal::Renewed);
    }
    let state = sems.inspect().await.unwrap();
    let kimi = state.iter().find(|s| s.name == "kimi").unwrap();
    assert_eq!(
        (kimi.limit, kimi.effective_limit, kimi.in_use()),
        (Some(4), Some(2), 4)
    );
    // New grants wait until fewer than 2 are live.
    assert!(
        sems.try_acquire(&["kimi"], &holder("new"))
            .await
            .unwrap()
            .is_none()
    );
    held.pop().unwrap().release().await.unwrap();
    held.pop().unwrap().release().await.unwrap();
    assert!(
        sems.try_acquire(&["kimi"], &holder("new"))
            .await
            .unwrap()
            .is_none()
    );
    held.pop().unwrap().release().await.unwrap();
    let granted = sems.try_acquire(&["kimi"], &holder("new")).await.unwrap();
    assert!(
        granted.is_some(),
        "one live lease under an effective limit of 2"
    );
    stack.cleanup().await;
}

fn chat_job(id: &str) -> NewJob {
    NewJob::json(&ToolCallJob {
        tool: "chat".to_owned(),
        arguments: json!({"prompt": format!("question {id}")}),
        session_id: "aimd".to_owned(),
        request_id: Some(id.to_owned()),
        deadline_ms: None,
        staged: None,
    })
    .unwrap()
    .with_id(id)
    // Calls refused with 429 are retried after the named second; leave room for several.
    .with_max_attempts(20)
}

async fn finished(q: &Queue, ids: &[String]) -> usize {
    let mut n = 0;
    for id in ids {
        if q.result(id).await.unwrap().is_some() {
            n += 1;
        }
    }
    n
}

/// The kimi row of `exai-worker sem --json`: (limit, effective_limit).
async fn sem_cli(stack: &TestStack) -> (serde_json::Value, serde_json::Value) {
    let (ok, out) = stack.worker_command(&["sem", "--json"]).await;
    assert!(ok, "exai-worker sem --json failed: {out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("sem --json is JSON");
    let kimi = &report["semaphores"]["kimi"];
    (kimi["limit"].clone(), kimi["effective_limit"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_concurrency_429s_lower_the_limit_and_successes_restore_it() {
    const CEILING: u32 = 6;
    let stack = TestStack::builder("aimd-workers")
        .sim()
        .database()
        .env("EXAI_AUTO_MIGRATE", "false")
        .envs(&[
            ("EXAI_WS_KIMI_MAX_INFLIGHT", "6"),
            ("EXAI_AIMD_DECREASE_COOLDOWN_MS", "300"),
            ("EXAI_AIMD_INCREASE_EVERY", "2"),
            ("KIMI_SEMAPHORE_TIMEOUT", "30"),
        ])
        .workers(2)
        .start()
        .await;
    // The account admits 2 calls at a time; each call takes a while, so 6 at once collect 429s.
    stack
        .sim()
        .configure(json!({"chat_latency_ms": 150, "tier": {"concurrency": 2}}))
        .expect("configure the sim");
    let sems = semaphores(&stack).await;
    assert_eq!(sem_cli(&stack).await, (json!(6), json!(6)));

    // Sample the live leases all along: never above the configured ceiling.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (sems, stop, peak) = (sems.clone(), stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(states) = sems.inspect().await
                    && let Some(kimi) = states.iter().find(|s| s.name == "kimi")
                {
                    peak.fetch_max(kimi.in_use(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let q = stack.queue(queue::TOOL_CALLS);
    let ids: Vec<String> = (0..24).map(|i| format!("burst-{i}")).collect();
    let jobs: Vec<NewJob> = ids.iter().map(|id| chat_job(id)).collect();
    q.enqueue_bulk(&jobs).await.unwrap();
    let lowered = wait_until(Duration::from_secs(30), || async {
        matches!(sems.effective_limit("kimi").await, Ok(Some(n)) if n < CEILING)
    })
    .await;
    assert!(
        lowered,
        "the effective limit never dropped below the ceiling"
    );
    let (limit, effective) = sem_cli(&stack).await;
    assert_eq!(limit, json!(6));
    assert!(effective.as_u64().is_some_and(|e| e < 6), "{effective}");
    assert!(
        wait_until(Duration::from_secs(90), || async {
            finished(&q, &ids).await == ids.len()
        })
        .await
    );
    let refused = stack
        .sim()
        .requests()
        .iter()
        .filter(|r| r.route == "moonshot.chat" && r.status == Some(429))
        .count();
    assert!(refused > 0, "the sim never answered 429");

    // The tier is lifted: successes bring the limit back up to the ceiling, not beyond.
    stack
        .sim()
        .configure(json!({"tier": "unlimited", "chat_latency_ms": 20}))
        .expect("lift the tier");
    let more: Vec<String> = (0..40).map(|i| format!("calm-{i}")).collect();
    let jobs: Vec<NewJob> = more.iter().map(|id| chat_job(id)).collect();
    q.enqueue_bulk(&jobs).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(90), || async {
            finished(&q, &more).await == more.len()
        })
        .await
    );
    let restored = wait_until(Duration::from_secs(10), || async {
        matches!(sems.effective_limit("kimi").await, Ok(Some(n)) if n == CEILING)
    })
    .await;
    assert!(
        restored,
        "the effective limit stayed at {:?}",
        sems.effective_limit("kimi").await
    );
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak >= 1 && peak <= CEILING as usize, "peak {peak}");
    assert_eq!(sem_cli(&stack).await, (json!(6), json!(6)));
    for id in ids.iter().chain(&more) {
        let r = q.result(id).await.unwrap().unwrap();
        assert_eq!(r.state, queue::JobState::Completed, "{id}: {:?}", r.error);
    }
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_lowers_the_limit_but_quota_and_token_limits_do_not() {
    let stack = TestStack::builder("aimd-kinds")
        .sim()
        .database()
        .env("EXAI_AUTO_MIGRATE", "false")
        .envs(&[
            ("EXAI_WS_KIMI_MAX_INFLIGHT", "6"),
            ("EXAI_AIMD_DECREASE_COOLDOWN_MS", "0"),
            ("EXAI_AIMD_INCREASE_EVERY", "1000"),
        ])
        .workers(1)
        .start()
        .await;
    let sems = semaphores(&stack).await;
    let q = stack.queue(queue::TOOL_CALLS);
    let run = |id: &'static str| {
        let q = q.clone();
        async move {
            q.enqueue_bulk(&[chat_job(id)]).await.unwrap();
            let ids = [id.to_owned()];
            assert!(
                wait_until(Duration::from_secs(30), || async {
                    finished(&q, &ids).await == 1
                })
                .await
            );
            q.result(id).await.unwrap().unwrap()
        }
    };
    // Balance exhausted and a token-per-minute budget: not congestion, the limit stays.
    for kind in ["quota", "tpm"] {
        stack
            .sim()
            .add_fault(
                json!({"route": "moonshot.chat", "action": "rate_limit", "kind": kind, "count": 1}),
            )
            .unwrap();
    }
    let quota = run("quota").await;
    assert_eq!(quota.state, queue::JobState::Dead, "{:?}", quota.error);
    let tpm = run("tpm").await;
    assert_eq!(tpm.state, queue::JobState::Completed, "{:?}", tpm.error);
    assert_eq!(sems.effective_limit("kimi").await.unwrap(), Some(6));
    // The engine is overloaded: congestion, the limit halves; the call is retried and succeeds.
    stack
        .sim()
        .add_fault(json!({"route": "moonshot.chat", "action": "rate_limit", "kind": "overloaded", "count": 1}))
        .unwrap();
    let overloaded = run("overloaded").await;
    assert_eq!(
        overloaded.state,
        queue::JobState::Completed,
        "{:?}",
        overloaded.error
    );
    assert_eq!(sems.effective_limit("kimi").await.unwrap(), Some(3));
    stack.cleanup().await;
}

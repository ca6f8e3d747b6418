//! The providers' rate budgets against a real Redis, and with worker processes calling exai-sim
//! where the claim is about what the provider saw:
//!
//! - the script's arithmetic: requests and tokens per window, the wait it names, settlement to
//!   what the provider counted, a refund, a request too large for any window;
//! - a reservation whose holder stops renewing its lease (a killed worker) is returned once the
//!   lease expires, and one whose lease is renewed is kept;
//! - three worker processes sharing a small account never overdraw it: every call completes
//!   without one 429, while the same calls without budgets collect 429s.
//!
//! Each test works under its own key prefix and deletes it at the end.

use std::time::Duration;

use exai_shared::budget::{Budgets, Charge, Limit, Reservation, Used};
use exai_shared::jobs::ToolCallJob;
use exai_shared::queue::{self, JobState, NewJob, Queue};
use exai_shared::redis::RedisHandle;
use exai_shared::semaphore::{HolderInfo, Semaphores};
use exai_tests::{TestStack, wait_until};
use serde_json::json;

async fn budgets(stack: &TestStack, hold: Duration) -> Budgets {
    let config = stack.config();
    let conn = RedisHandle::connect(&config.redis)
        .await
        .expect("connect to redis");
    Budgets::new(
        conn,
        exai_shared::keys::Keys::new(config.redis.prefix.clone()),
        config.semaphores.budgets.clone(),
        hold,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_count_requests_and_tokens_and_settle_to_the_providers_count() {
    let stack = TestStack::builder("budget-arith")
        .envs(&[
            ("EXAI_KIMI_RPM", "3"),
            ("EXAI_KIMI_TPM", "1000"),
            ("EXAI_KIMI_TPD", "5000"),
            ("EXAI_BUDGET_BURST_MS", "0"),
        ])
        .start()
        .await;
    let b = budgets(&stack, Duration::from_secs(30)).await;
    assert_eq!(
        b.reserve("kimi", "t1", 400, Duration::ZERO).await.unwrap(),
        Reservation::Reserved
    );
    assert_eq!(
        b.reserve("kimi", "t2", 400, Duration::ZERO).await.unwrap(),
        Reservation::Reserved
    );
    // 800 of 1000 tokens reserved: 300 more do not fit, and the wait is about a minute (the
    // window plus its slack, less the time since the first reservation).
    match b.reserve("kimi", "t3", 300, Duration::ZERO).await.unwrap() {
        Reservation::Refused {
            retry_in,
            limit,
            value,
            current,
        } => {
            assert_eq!((limit, value, current), (Limit::Tpm, 1000, 1100));
            assert!(
                retry_in > Duration::from_secs(55) && retry_in <= Duration::from_secs(61),
                "{retry_in:?}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The provider counted 150 for the first call: 250 come back.
    assert!(b.settle("t1", Charge::Tokens(150)).await.unwrap());
    assert!(
        !b.settle("t1", Charge::Tokens(150)).await.unwrap(),
        "settled once"
    );
    let usage = b.usage("kimi").await.unwrap();
    assert_eq!(
        usage.tokens_per_minute,
        Used {
            used: 550,
            limit: Some(1000)
        }
    );
    assert_eq!(
        usage.tokens_per_day,
        Used {
            used: 550,
            limit: Some(5000)
        }
    );
    assert_eq!(
        usage.requests_per_minute,
        Used {
            used: 2,
            limit: Some(3)
        }
    );
    assert_eq!(
        b.reserve("kimi", "t3", 300, Duration::ZERO).await.unwrap(),
        Reservation::Reserved
    );
    // The second call was refused by the provider: neither it nor its tokens count.
    assert!(b.settle("t2", Charge::Refund).await.unwrap());
    let usage = b.usage("kimi").await.unwrap();
    assert_eq!(usage.tokens_per_minute.used, 450);
    assert_eq!(usage.requests_per_minute.used, 2);
    // A third request fits the tokens but not the requests.
    assert_eq!(
        b.reserve("kimi", "t4", 10, Duration::ZERO).await.unwrap(),
        Reservation::Reserved
    );
    assert!(matches!(
        b.reserve("kimi", "t5", 10, Duration::ZERO).await.unwrap(),
        Reservation::Refused {
            limit: Limit::Rpm,
            value: 3,
            current: 4,
            ..
        }
    ));
    // A request larger than a whole window can never be admitted.
    assert_eq!(
        b.reserve("kimi", "t6", 1001, Duration::ZERO).await.unwrap(),
        Reservation::TooLarge {
            limit: Limit::Tpm,
            value: 1000
        }
    );
    // GLM has no budget here: anything goes, nothing is recorded.
    assert_eq!(
        b.reserve("glm", "g1", 1_000_000, Duration::ZERO)
            .await
            .unwrap(),
        Reservation::Reserved
    );
    assert_eq!(
        b.usage("glm").await.unwrap().requests_per_minute,
        Used {
            used: 0,
            limit: None
        }
    );
    // `exai-worker sem` shows the budgets that are set, and only those.
    let (ok, out) = stack.worker_command(&["sem", "--json"]).await;
    assert!(ok, "exai-worker sem --json failed: {out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("sem --json is JSON");
    assert_eq!(
        report["budgets"]["kimi"]["tokens_per_minute"],
        json!({"used": 460, "limit": 1000})
    );
    assert_eq!(report["budgets"]["kimi"]["requests_per_minute"]["used"], 3);
    assert!(report["budgets"].get("glm").is_none(), "{report}");
    let (ok, out) = stack.worker_command(&["sem"]).await;
    assert!(ok);
    assert!(out.contains("460/1000"), "{out}");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_free_their_room_as_they_slide() {
    let stack = TestStack::builder("budget-slide")
        .envs(&[
            ("EXAI_KIMI_RPM", "2"),
            ("EXAI_BUDGET_MINUTE_MS", "400"),
            ("EXAI_BUDGET_SLACK_MS", "100"),
            ("EXAI_BUDGET_BURST_MS", "0"),
        ])
        .start()
        .await;
    let b = budgets(&stack, Duration::from_secs(30)).await;
    assert_eq!(
        b.reserve("kimi", "a", 1, Duration::ZERO).await.unwrap(),
        Reservation::Reserved
    );
    assert_eq!(
        b.reserve("kimi", "b", 1, Duration::ZERO).await.unwrap(),
        Reservation::Reserved
    );
    let Reservation::Refused { retry_in, .. } =
        b.reserve("kimi", "c", 1, Duration::ZERO).await.unwrap()
    else {
        panic!("the third request within the window must wait");
    };
    assert!(retry_in <= Duration::from_millis(501), "{retry_in:?}");
    // The named wait is enough: after it the window has room again.
    tokio::time::sleep(retry_in).await;
    assert_eq!(
        b.reserve("kimi", "c", 1, Duration::ZERO).await.unwrap(),
        Reservation::Reserved
    );
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_for_a_full_window_get_its_room_in_the_order_they_asked() {
    // 2 requests per 10-s window (9.9 s and 0.1 s of slack), no pacing: two go at once, and the
    // next two callers, who would wait, are given turns when the window frees — the first the
    // earlier — instead of each being told to come back and race for the same room.
    let stack = TestStack::builder("budget-turns")
        .envs(&[
            ("EXAI_KIMI_RPM", "2"),
            ("EXAI_BUDGET_MINUTE_MS", "9900"),
            ("EXAI_BUDGET_SLACK_MS", "100"),
            ("EXAI_BUDGET_BURST_MS", "0"),
        ])
        .start()
        .await;
    let b = budgets(&stack, Duration::from_secs(30)).await;
    let before_a = std::time::Instant::now();
    for t in ["a", "b"] {
        assert_eq!(
            b.reserve("kimi", t, 1, Duration::ZERO).await.unwrap(),
            Reservation::Reserved
        );
    }
    let after_b = std::time::Instant::now();
    let patience = Duration::from_secs(30);
    let asked_c = std::time::Instant::now();
    let c = b.reserve("kimi", "c", 1, patience).await.unwrap();
    let asked_d = std::time::Instant::now();
    let d = b.reserve("kimi", "d", 1, patience).await.unwrap();
    let turns = [c, d];
    let [
        Reservation::Scheduled { after: first },
        Reservation::Scheduled { after: second },
    ] = turns.clone()
    else {
        panic!("expected two turns when the window frees, got {turns:?}");
    };
    // Each is due when the request it replaces leaves the window (10 s after a and b, within
    // 20 ms: the Redis clock's millisecond and a round trip), and in order.
    let window = Duration::from_millis(10_000);
    let ms = Duration::from_millis(20);
    assert!(
        asked_c + first + ms >= before_a + window && asked_c + first <= after_b + window + 2 * ms,
        "{first:?}"
    );
    // Each `after` counts from its own request: d's turn, as a time, is not before c's.
    assert!(
        asked_d + second + ms >= asked_c + first && asked_d + second <= after_b + window + 2 * ms,
        "{first:?} then {second:?}"
    );
    // The window is booked up to then: a third caller's turn is a window later still, beyond
    // a shorter patience, so it is refused and nothing is written for it.
    let Reservation::Refused {
        retry_in, limit, ..
    } = b
        .reserve("kimi", "e", 1, Duration::from_secs(15))
        .await
        .unwrap()
    else {
        panic!("a turn beyond the caller's patience must be refused");
    };
    assert_eq!(limit, Limit::Rpm);
    assert!(retry_in > Duration::from_secs(15), "{retry_in:?}");
    assert_eq!(b.usage("kimi").await.unwrap().requests_per_minute.used, 4);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_lent_by_an_idle_window_and_paid_back_without_a_gap() {
    // 10 requests per 10-s window (one a second when paced), a burst of the whole window. An
    // idle window lends its room, but less as it fills: half go at once, the rest are spread
    // out, so the window never has to stop every caller until its first requests slide out.
    let stack = TestStack::builder("budget-lend")
        .envs(&[
            ("EXAI_KIMI_RPM", "10"),
            ("EXAI_BUDGET_MINUTE_MS", "9900"),
            ("EXAI_BUDGET_SLACK_MS", "100"),
            ("EXAI_BUDGET_BURST_MS", "9900"),
        ])
        .start()
        .await;
    let b = budgets(&stack, Duration::from_secs(30)).await;
    let start = std::time::Instant::now();
    for t in ["r0", "r1", "r2", "r3", "r4"] {
        assert_eq!(
            b.reserve("kimi", t, 1, Duration::ZERO).await.unwrap(),
            Reservation::Reserved,
            "{t}"
        );
    }
    assert!(matches!(
        b.reserve("kimi", "r5", 1, Duration::ZERO).await.unwrap(),
        Reservation::Refused { .. }
    ));
    // When each turn is due, as an instant (each `after` counts from its own request).
    let mut turns = Vec::new();
    for t in ["r5", "r6", "r7", "r8", "r9", "r10", "r11"] {
        let asked = std::time::Instant::now();
        match b
            .reserve("kimi", t, 1, Duration::from_secs(30))
            .await
            .unwrap()
        {
            Reservation::Scheduled { after } => turns.push(asked + after),
            other => panic!("{t}: expected a turn, got {other:?}"),
        }
    }
    let offsets: Vec<Duration> = turns.iter().map(|t| *t - start).collect();
    // In order, never more than two intervals apart (within 20 ms: the Redis clock's
    // millisecond and a round trip); the eleventh waits for the first to leave the window, and
    // the twelfth follows it by an interval instead of going with it.
    let ms = Duration::from_millis(20);
    for pair in turns.windows(2) {
        assert!(
            pair[1] + ms > pair[0] && pair[1] <= pair[0] + Duration::from_millis(2_000) + ms,
            "{offsets:?}"
        );
    }
    assert!(
        offsets[5] + ms >= Duration::from_millis(10_000),
        "{offsets:?}"
    );
    assert!(
        turns[6] + ms >= turns[5] + Duration::from_millis(1_000),
        "{offsets:?}"
    );
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_burst_are_paced_over_the_minute() {
    // 60 a minute, 3 s of burst: three go at once, then one every 61 s ÷ 60 (the minute and
    // its slack, as the sliding log counts it).
    let stack = TestStack::builder("budget-pace")
        .envs(&[("EXAI_KIMI_RPM", "60"), ("EXAI_BUDGET_BURST_MS", "3000")])
        .start()
        .await;
    let b = budgets(&stack, Duration::from_secs(30)).await;
    for t in ["p1", "p2", "p3"] {
        assert_eq!(
            b.reserve("kimi", t, 1, Duration::ZERO).await.unwrap(),
            Reservation::Reserved
        );
    }
    let Reservation::Refused {
        retry_in, limit, ..
    } = b.reserve("kimi", "p4", 1, Duration::ZERO).await.unwrap()
    else {
        panic!("the fourth request must be paced");
    };
    assert_eq!(limit, Limit::Rpm);
    assert!(
        retry_in > Duration::from_millis(900) && retry_in <= Duration::from_millis(1017),
        "{retry_in:?}"
    );
    tokio::time::sleep(retry_in).await;
    assert_eq!(
        b.reserve("kimi", "p4", 1, Duration::ZERO).await.unwrap(),
        Reservation::Reserved
    );
    // The next is due a second later, not at once.
    assert!(matches!(
        b.reserve("kimi", "p5", 1, Duration::ZERO).await.unwrap(),
        Reservation::Refused { .. }
    ));
    // A caller that waits gets the next turns in the order it asked: one interval, then two.
    let turns = [
        b.reserve("kimi", "p5", 1, Duration::from_secs(5))
            .await
            .unwrap(),
        b.reserve("kimi", "p6", 1, Duration::from_secs(5))
            .await
            .unwrap(),
    ];
    let [
        Reservation::Scheduled { after: first },
        Reservation::Scheduled { after: second },
    ] = turns.clone()
    else {
        panic!("expected two paced turns, got {turns:?}");
    };
    assert!(first <= Duration::from_millis(1017), "{first:?}");
    assert!(
        second > first + Duration::from_millis(900) && second <= Duration::from_millis(2034),
        "{first:?} then {second:?}"
    );
    // A turn beyond the caller's patience is refused, not reserved.
    assert!(matches!(
        b.reserve("kimi", "p7", 1, Duration::from_millis(500))
            .await
            .unwrap(),
        Reservation::Refused { .. }
    ));
    assert_eq!(b.usage("kimi").await.unwrap().requests_per_minute.used, 6);
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_lives_as_long_as_its_lease() {
    let stack = TestStack::builder("budget-lease")
        .envs(&[("EXAI_KIMI_TPM", "100"), ("EXAI_SEMAPHORE_LEASE_MS", "300")])
        .start()
        .await;
    let config = stack.config();
    let sems = Semaphores::from_config(&config).await.unwrap();
    let b = budgets(&stack, config.semaphores.lease).await;
    // A renewed lease keeps its reservation; the reservation of one never renewed is returned
    // when that lease expires.
    let kept = sems
        .try_acquire(&["kimi"], &HolderInfo::new("budget-test", "kept", 1))
        .await
        .unwrap()
        .expect("a permit");
    assert_eq!(
        b.reserve("kimi", kept.token(), 50, Duration::ZERO)
            .await
            .unwrap(),
        Reservation::Reserved
    );
    assert_eq!(
        b.reserve("kimi", "crashed-holder", 50, Duration::ZERO)
            .await
            .unwrap(),
        Reservation::Reserved
    );
    assert!(matches!(
        b.reserve("kimi", "probe", 50, Duration::ZERO)
            .await
            .unwrap(),
        Reservation::Refused { .. }
    ));
    // The guard renews every third of the TTL; the crashed holder's 50 tokens come back.
    let returned = wait_until(Duration::from_secs(10), || async {
        b.reserve("kimi", "probe", 50, Duration::ZERO)
            .await
            .unwrap()
            == Reservation::Reserved
    })
    .await;
    assert!(returned, "the lapsed reservation was never returned");
    assert!(
        !kept.is_lost(),
        "the renewed lease must still be held at this point"
    );
    assert_eq!(b.usage("kimi").await.unwrap().tokens_per_minute.used, 100);
    assert!(b.settle(kept.token(), Charge::Tokens(50)).await.unwrap());
    kept.release().await.unwrap();
    stack.cleanup().await;
}

fn chat_job(id: &str, max_attempts: u32) -> NewJob {
    NewJob::json(&ToolCallJob {
        tool: "chat".to_owned(),
        arguments: json!({"prompt": format!("question {id}")}),
        session_id: "budget".to_owned(),
        request_id: Some(id.to_owned()),
        deadline_ms: None,
        staged: None,
    })
    .unwrap()
    .with_id(id)
    .with_max_attempts(max_attempts)
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

fn chat_429s(stack: &TestStack) -> usize {
    stack
        .sim()
        .requests()
        .iter()
        .filter(|r| r.route == "moonshot.chat" && r.status == Some(429))
        .count()
}

/// The account: 4 requests and 420 tokens per 2-second "minute" (each call costs its prompt's
/// 3 or 4 tokens plus the 100 it may generate: 4 calls fit a window by either limit).
const BUDGET_ENV: [(&str, &str); 5] = [
    ("EXAI_KIMI_RPM", "4"),
    ("EXAI_KIMI_TPM", "420"),
    ("EXAI_KIMI_MAX_COMPLETION_TOKENS", "100"),
    ("EXAI_BUDGET_MINUTE_MS", "2000"),
    ("EXAI_BUDGET_SLACK_MS", "250"),
];

/// Runs 14 single-attempt chat calls through 3 worker processes against that account, with or
/// without the budget; returns how many completed, the 429s the sim sent, the time from the first
/// call to the last (ms) and the requests the sim admitted.
async fn fleet(test: &str, with_budget: bool) -> (usize, usize, i64, u64) {
    let mut stack = TestStack::builder(test)
        .sim()
        .database()
        .env("EXAI_AIMD_ENABLED", "false")
        .env("EXAI_KIMI_MAX_COMPLETION_TOKENS", "100")
        .start()
        .await;
    stack
        .sim()
        .configure(json!({
            "tier": {"rpm": 4, "tpm": 420},
            "rate_window_minute_ms": 2000,
            "chat_latency_ms": 20,
        }))
        .expect("configure the sim");
    let env: &[(&str, &str)] = if with_budget { &BUDGET_ENV } else { &[] };
    for _ in 0..3 {
        stack.add_worker_with(env);
    }
    let q = stack.queue(queue::TOOL_CALLS);
    // One attempt each (a rate 429 puts the call back without spending it, as its wait says).
    let ids: Vec<String> = (0..14).map(|i| format!("fleet-{i}")).collect();
    let jobs: Vec<NewJob> = ids.iter().map(|id| chat_job(id, 1)).collect();
    q.enqueue_bulk(&jobs).await.unwrap();
    let settled = wait_until(Duration::from_secs(60), || async {
        let mut n = 0;
        for id in &ids {
            if let Some(job) = stack.job(id).await
                && matches!(job.state, JobState::Completed | JobState::Dead)
            {
                n += 1;
            }
        }
        n == ids.len()
    })
    .await;
    assert!(settled, "not every call ended");
    let completed = finished(&q, &ids).await;
    let times: Vec<i64> = stack
        .sim()
        .requests()
        .iter()
        .filter(|r| r.route == "moonshot.chat" && r.status == Some(200))
        .map(|r| r.time_ms)
        .collect();
    let span = times.iter().max().unwrap_or(&0) - times.iter().min().unwrap_or(&0);
    let admitted = stack.sim().usage()["keys"]
        .as_object()
        .map(|keys| {
            keys.values()
                .map(|k| k["admitted"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    let refused = chat_429s(&stack);
    stack.cleanup().await;
    (completed, refused, span, admitted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_with_a_budget_never_overdraw_the_account() {
    let (completed, refused, span, admitted) = fleet("budget-fleet", true).await;
    assert_eq!(refused, 0, "the budget let a call collect a 429");
    assert_eq!((completed, admitted), (14, 14));
    // 14 calls at 4 a window need four windows: the budget held them back.
    assert!(span >= 3 * 2000, "14 calls within {span} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_calls_without_a_budget_collect_429s() {
    let (_, refused, _, _) = fleet("budget-none", false).await;
    assert!(refused > 0, "14 calls at once never exceeded 4 a window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_workers_reservation_is_returned_when_its_lease_expires() {
    let stack = TestStack::builder("budget-killed")
        .sim()
        .database()
        .envs(&[
            ("EXAI_KIMI_TPM", "150"),
            ("EXAI_KIMI_MAX_COMPLETION_TOKENS", "100"),
            ("EXAI_SEMAPHORE_LEASE_MS", "1000"),
        ])
        .start()
        .await;
    // The call hangs at the provider long enough for the worker to die holding it.
    stack
        .sim()
        .configure(json!({"chat_latency_ms": 60000}))
        .expect("configure the sim");
    let worker = stack.spawn_worker_with(&["--queues", "tool_calls"], &[]);
    let q = stack.queue(queue::TOOL_CALLS);
    q.enqueue_bulk(&[chat_job("held", 3)]).await.unwrap();
    let b = budgets(&stack, Duration::from_secs(1)).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            b.usage("kimi").await.unwrap().requests_per_minute.used == 1
        })
        .await,
        "the call never reserved its budget"
    );
    // Only 150 tokens a minute: while the call holds its ~103, another does not fit.
    assert!(matches!(
        b.reserve("kimi", "probe", 100, Duration::ZERO)
            .await
            .unwrap(),
        Reservation::Refused {
            limit: Limit::Tpm,
            ..
        }
    ));
    worker.kill_and_wait().await;
    // Within about one lease TTL (1 s) of its last renewal, the dead call's tokens come back.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            b.reserve("kimi", "probe", 100, Duration::ZERO)
                .await
                .unwrap()
                == Reservation::Reserved
        })
        .await,
        "the killed worker's reservation was never returned"
    );
    stack.cleanup().await;
}

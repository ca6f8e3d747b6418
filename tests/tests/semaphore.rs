//! The leased semaphores against a real Redis, with real processes where the claim is about
//! processes (DESIGN.md, "Leased semaphores"):
//!
//! - at no instant are there more live leases than the limit (200 contenders over 4 processes);
//! - a holder killed with SIGKILL frees its permit within one lease TTL;
//! - a waiter gets a permit within milliseconds of a release (push wake-up, not a slow poll);
//! - waiting never blocks another provider's semaphore, and multi-acquire is all or nothing;
//! - fencing tokens strictly increase, release is idempotent, limits change at runtime, and a
//!   renewal after expiry never resurrects a lease.
//!
//! Each test works under its own key prefix and deletes it at the end, even when it fails.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use exai_shared::config::RedisConfig;
use exai_shared::keys::Keys;
use exai_shared::redis::RedisHandle;
use exai_shared::semaphore::{
    Acquire, HolderInfo, LeaseGuard, Renewal, SemaphoreError, Semaphores,
};
use exai_shared::subscriber::Subscriber;
use exai_tests::{ChildGuard, TestStack, bin_path, send_signal, wait_until};
use redis::aio::MultiplexedConnection;
use secrecy::SecretString;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A poll fallback far above any push wake-up, so a fast wake-up can only come from the push.
const SLOW_POLL: Duration = Duration::from_secs(5);

/// Reads the semaphore keys of one namespace directly, independently of the code under test.
#[derive(Clone)]
struct Probe {
    keys: Keys,
    redis: MultiplexedConnection,
}

impl Probe {
    /// A probe of the stack's namespace on a plain connection of its own.
    async fn of(ctx: &TestStack) -> Self {
        let redis = redis::Client::open(ctx.redis_url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        Self {
            keys: ctx.keys.clone(),
            redis,
        }
    }

    /// The live lease counts of `names` at one instant of the Redis clock.
    async fn live(&self, names: &[&str]) -> Vec<u64> {
        let script = redis::Script::new(
            r"
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            local out = {}
            for i = 1, #KEYS do
              out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
            end
            return out
            ",
        );
        let mut invocation = script.prepare_invoke();
        for name in names {
            invocation.key(self.keys.sem_leases(name));
        }
        invocation
            .invoke_async(&mut self.redis.clone())
            .await
            .expect("count live leases")
    }

    /// The tokens of the live leases of `name`.
    async fn live_tokens(&self, name: &str) -> Vec<String> {
        let script = redis::Script::new(
            r"
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
            ",
        );
        script
            .key(self.keys.sem_leases(name))
            .invoke_async(&mut self.redis.clone())
            .await
            .expect("list live leases")
    }

    /// The live lease count of one name.
    async fn live_one(&self, name: &str) -> u64 {
        self.live(&[name]).await[0]
    }

    /// The score (expiry) of `token` in the lease set of `name`, if present at all.
    async fn score(&self, name: &str, token: &str) -> Option<f64> {
        redis::cmd("ZSCORE")
            .arg(self.keys.sem_leases(name))
            .arg(token)
            .query_async(&mut self.redis.clone())
            .await
            .expect("zscore")
    }
}

/// A `Semaphores` of the stack's namespace, as a worker process would build it.
async fn semaphores(ctx: &TestStack) -> Semaphores {
    Semaphores::from_config(&ctx.config())
        .await
        .expect("set up semaphores")
}

fn holder(job: &str) -> HolderInfo {
    HolderInfo::new("semaphore-test", job, 1)
}

/// Takes `n` leases on `names` right away, panicking if any is refused.
async fn fill(sems: &Semaphores, names: &[&str], n: usize, job: &str) -> Vec<LeaseGuard> {
    let mut guards = Vec::with_capacity(n);
    for i in 0..n {
        let guard = sems
            .try_acquire(names, &holder(&format!("{job}-{i}")))
            .await
            .expect("try_acquire")
            .unwrap_or_else(|| panic!("lease {i} of {n} on {names:?} refused"));
        guards.push(guard);
    }
    guards
}

/// Starts `sem-contender` with `args` under the test's prefix.
fn spawn_contender(ctx: &TestStack, args: &[String]) -> ChildGuard {
    let child = tokio::process::Command::new(bin_path("sem-contender"))
        .arg("--prefix")
        .arg(&ctx.prefix)
        .arg("--redis-url")
        .arg(exai_tests::redis_url())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sem-contender");
    ChildGuard(child)
}

/// The parsed `RESULT` line of one contender process.
#[derive(Debug, serde::Deserialize)]
struct ContenderReport {
    pid: u32,
    contenders: u32,
    rounds: u32,
    completed: u64,
    acquired: u64,
    timeouts: u64,
    violations: u64,
    max_seen: u64,
    lost: u64,
}

/// Waits for a contender process to exit and parses its report.
async fn finish_contender(mut child: ChildGuard) -> ContenderReport {
    let mut stdout = child.0.stdout.take().expect("piped stdout");
    let mut out = String::new();
    stdout
        .read_to_string(&mut out)
        .await
        .expect("read contender output");
    let status = child.0.wait().await.expect("wait for contender");
    assert!(status.success(), "sem-contender failed ({status}): {out}");
    let line = out
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in contender output: {out}"));
    serde_json::from_str(line).expect("parse the RESULT line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_no_instant_are_there_more_live_leases_than_the_limit() {
    const PROCESSES: usize = 4;
    const CONTENDERS: u32 = 50;
    const ROUNDS: u32 = 3;
    const LIMIT: u64 = 6; // the default `kimi` limit
    let ctx = TestStack::builder("sem-safety").start().await;
    let probe = Probe::of(&ctx).await;
    let counter_key = format!("{}:check:holders", ctx.prefix);

    // Sample the live lease counts from Redis for as long as the contenders run.
    let stop = CancellationToken::new();
    let sampler = {
        let probe = probe.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut max_kimi, mut max_global, mut samples) = (0, 0, 0u64);
            while !stop.is_cancelled() {
                let live = probe.live(&["kimi", "global"]).await;
                max_kimi = max_kimi.max(live[0]);
                max_global = max_global.max(live[1]);
                samples += 1;
                tokio::task::yield_now().await;
            }
            (max_kimi, max_global, samples)
        })
    };

    let args: Vec<String> = [
        "--contenders",
        &CONTENDERS.to_string(),
        "--names",
        "global,kimi",
        "--hold-ms",
        "10",
        "--rounds",
        &ROUNDS.to_string(),
        "--counter-key",
        &counter_key,
        "--limit",
        &LIMIT.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| spawn_contender(&ctx, &args))
        .collect();
    let reports = tokio::time::timeout(
        Duration::from_secs(180),
        futures::future::join_all(children.into_iter().map(finish_contender)),
    )
    .await
    .expect("every contender gets through within 3 minutes");

    stop.cancel();
    let (max_kimi, max_global, samples) = sampler.await.expect("sampler");

    let pids: HashSet<u32> = reports.iter().map(|r| r.pid).collect();
    assert_eq!(pids.len(), PROCESSES, "{reports:?}");
    for report in &reports {
        assert_eq!(report.contenders, CONTENDERS, "{report:?}");
        assert_eq!(report.rounds, ROUNDS, "{report:?}");
        assert_eq!(
            report.completed,
            u64::from(CONTENDERS),
            "every contender finishes: {report:?}"
        );
        assert_eq!(
            report.acquired,
            u64::from(CONTENDERS * ROUNDS),
            "{report:?}"
        );
        assert_eq!(report.violations, 0, "independent check: {report:?}");
        assert!(report.max_seen <= LIMIT, "{report:?}");
        assert_eq!(report.lost, 0, "no lease lost while held: {report:?}");
    }
    assert!(samples > 10, "the sampler ran ({samples} samples)");
    assert!(
        max_kimi <= LIMIT,
        "{max_kimi} live kimi leases seen (limit {LIMIT})"
    );
    assert!(
        max_global <= LIMIT,
        "{max_global} live global leases seen, all taken together with kimi"
    );
    assert_eq!(
        max_kimi, LIMIT,
        "with 200 contenders the semaphore must have been saturated"
    );
    let timeouts: u64 = reports.iter().map(|r| r.timeouts).sum();
    eprintln!("safety: {samples} samples, max {max_kimi} live leases, {timeouts} timeouts");
    assert_eq!(
        probe.live(&["kimi", "global"]).await,
        vec![0, 0],
        "everything released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_its_permits_within_one_lease_ttl() {
    const TTL_MS: u64 = 1500;
    let ttl = Duration::from_millis(TTL_MS);
    let ctx = TestStack::builder("sem-crash")
        .envs(&[("EXAI_SEMAPHORE_LEASE_MS", "1500")])
        .start()
        .await;
    let probe = Probe::of(&ctx).await;
    let sems = semaphores(&ctx).await.with_poll_interval(SLOW_POLL);

    // Two processes of three holders each fill `kimi` (limit 6) and hold it forever.
    let args: Vec<String> = [
        "--contenders",
        "3",
        "--names",
        "kimi",
        "--rounds",
        "0",
        "--lease-ms",
        &TTL_MS.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let children = [spawn_contender(&ctx, &args), spawn_contender(&ctx, &args)];
    assert!(
        wait_until(Duration::from_secs(30), || async {
            probe.live_one("kimi").await == 6
        })
        .await,
        "the contenders never filled the semaphore"
    );
    // They renew: the semaphore stays full past a whole TTL.
    tokio::time::sleep(ttl + ttl / 2).await;
    assert_eq!(
        probe.live_one("kimi").await,
        6,
        "holders renew their leases"
    );
    assert!(
        sems.try_acquire(&["kimi"], &holder("early"))
            .await
            .unwrap()
            .is_none()
    );

    // A waiter with a poll fallback longer than the TTL: it can only be on time through the
    // expiry hint of the refused acquire.
    let waiter = {
        let sems = sems.clone();
        tokio::spawn(async move {
            let outcome = sems
                .acquire(
                    &["kimi"],
                    &holder("waiter"),
                    Duration::from_secs(30),
                    &CancellationToken::new(),
                )
                .await;
            (outcome, Instant::now())
        })
    };
    assert!(wait_until(Duration::from_secs(10), || async { sems.waiters() == 1 }).await);

    let pids: Vec<u32> = children.iter().map(ChildGuard::pid).collect();
    let killed_at = Instant::now();
    for pid in &pids {
        send_signal(*pid, "KILL");
    }
    // Contender job ids are `job-<pid>-…`: wait until no live lease belongs to a killed process.
    let margin = Duration::from_millis(1000);
    assert!(
        wait_until(ttl + margin, || async {
            let tokens = probe.live_tokens("kimi").await;
            !tokens
                .iter()
                .any(|t| pids.iter().any(|pid| t.starts_with(&format!("job-{pid}-"))))
        })
        .await,
        "permits of killed holders still taken {:?} after the kill",
        ttl + margin
    );
    let freed_after = killed_at.elapsed();

    let (outcome, acquired_at) = waiter.await.expect("waiter task");
    let guard = match outcome.expect("acquire") {
        Acquire::Acquired(guard) => guard,
        other => panic!("the waiter did not get a permit: {other:?}"),
    };
    let waited = acquired_at.duration_since(killed_at);
    assert!(
        waited < ttl + margin,
        "the waiter got its permit {waited:?} after the kill (TTL {ttl:?})"
    );
    // All six permits are free again: the waiter holds one, five more are granted at once.
    let more = fill(&sems, &["kimi"], 5, "after-crash").await;
    assert_eq!(probe.live_one("kimi").await, 6);
    eprintln!("crash: permits free {freed_after:?} after SIGKILL, waiter in {waited:?}");

    drop(children);
    guard.release().await.unwrap();
    for g in more {
        g.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_after_expiry_reports_lost_and_does_not_resurrect_the_lease() {
    let ctx = TestStack::builder("sem-lost")
        .envs(&[("EXAI_SEMAPHORE_LEASE_MS", "1000")])
        .start()
        .await;
    let probe = Probe::of(&ctx).await;
    let sems = semaphores(&ctx).await;

    // A live lease renews, and its expiry moves forward.
    let mut alive = fill(&sems, &["global", "kimi"], 1, "alive").await.remove(0);
    alive.stop_renewal();
    let before = probe
        .score("kimi", alive.token())
        .await
        .expect("lease present");
    assert_eq!(alive.renew_once().await.unwrap(), Renewal::Renewed);
    let after = probe
        .score("kimi", alive.token())
        .await
        .expect("lease present");
    assert!(after >= before, "renewal extends the lease");
    assert!(!alive.is_lost());

    // Without renewal the lease expires; a late renewal reports it lost and removes it.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            probe.live(&["global", "kimi"]).await == vec![0, 0]
        })
        .await,
        "the unrenewed lease never expired"
    );
    assert!(
        probe.score("kimi", alive.token()).await.is_some(),
        "the expired entry is still there until something purges it"
    );
    assert_eq!(alive.renew_once().await.unwrap(), Renewal::Lost);
    assert!(alive.is_lost(), "the guard's lost token is cancelled");
    assert!(alive.lost().is_cancelled());
    for name in ["global", "kimi"] {
        assert_eq!(
            probe.score(name, alive.token()).await,
            None,
            "a renewal after expiry must not resurrect the lease in `{name}`"
        );
    }
    let holder_left: Option<String> = redis::cmd("HGET")
        .arg(ctx.keys.sem_holders())
        .arg(alive.token())
        .query_async(&mut probe.redis.clone())
        .await
        .unwrap();
    assert_eq!(holder_left, None, "holder info removed with the lease");
    // A second renewal stays lost.
    assert_eq!(alive.renew_once().await.unwrap(), Renewal::Lost);
    assert_eq!(probe.live(&["global", "kimi"]).await, vec![0, 0]);
    assert!(!alive.release().await.unwrap(), "nothing left to release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_renewal_keeps_a_lease_alive_past_its_ttl() {
    let ctx = TestStack::builder("sem-renew")
        .envs(&[("EXAI_SEMAPHORE_LEASE_MS", "600")])
        .start()
        .await;
    let probe = Probe::of(&ctx).await;
    let sems = semaphores(&ctx).await;
    let guard = fill(&sems, &["kimi"], 1, "renewed").await.remove(0);
    // Letting time pass is the point here: three TTLs without any explicit renewal.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(probe.live_one("kimi").await, 1, "the lease is still live");
    assert!(!guard.is_lost());
    assert!(guard.release().await.unwrap());
    assert_eq!(probe.live_one("kimi").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_acquire_is_all_or_nothing() {
    let ctx = TestStack::builder("sem-all-or-nothing").start().await;
    let probe = Probe::of(&ctx).await;
    let sems = semaphores(&ctx).await;
    let kimi = fill(&sems, &["global", "kimi"], 6, "kimi").await;
    assert_eq!(probe.live(&["global", "kimi"]).await, vec![6, 6]);

    // `kimi` is full: asking for `global` + `kimi` takes nothing, not even `global`.
    assert!(
        sems.try_acquire(&["global", "kimi"], &holder("both"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(probe.live(&["global", "kimi"]).await, vec![6, 6]);
    let card: u64 = redis::cmd("ZCARD")
        .arg(ctx.keys.sem_leases("global"))
        .query_async(&mut probe.redis.clone())
        .await
        .unwrap();
    assert_eq!(card, 6, "no entry was written to `global`");
    let outcome = sems
        .acquire(
            &["global", "kimi"],
            &holder("both"),
            Duration::ZERO,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Acquire::TimedOut), "{outcome:?}");
    assert_eq!(probe.live(&["global", "kimi"]).await, vec![6, 6]);

    // `global` alone still has room; a duplicated name counts once.
    let global = fill(&sems, &["global", "global"], 1, "global").await;
    assert_eq!(probe.live(&["global", "kimi"]).await, vec![7, 6]);

    for guard in kimi.into_iter().chain(global) {
        guard.release().await.unwrap();
    }
}

/// Holds the only permit of `name`, starts a waiter on `waiter_sems`, waits until it is really
/// blocked, then runs `free` and returns how long the waiter took to get the permit after it.
async fn wake_up_latency<F, Fut>(waiter_sems: &Semaphores, name: &str, free: F) -> Duration
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let waiter = {
        let sems = waiter_sems.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let outcome = sems
                .acquire(
                    &[&name],
                    &holder("waiter"),
                    Duration::from_secs(60),
                    &CancellationToken::new(),
                )
                .await;
            (outcome, Instant::now())
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || async {
            waiter_sems.waiters() == 1
        })
        .await,
        "the waiter never blocked"
    );
    let freed_at = Instant::now();
    free().await;
    let (outcome, acquired_at) = waiter.await.expect("waiter task");
    match outcome.expect("acquire") {
        Acquire::Acquired(guard) => guard.release().await.unwrap(),
        other => panic!("the waiter did not get the permit: {other:?}"),
    };
    acquired_at.duration_since(freed_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_wakes_within_milliseconds_of_a_release() {
    let ctx = TestStack::builder("sem-wake").start().await;
    // Two independent instances stand for two worker processes.
    let holder_sems = semaphores(&ctx).await;
    let waiter_sems = semaphores(&ctx).await.with_poll_interval(SLOW_POLL);
    holder_sems.set_limit("wake", 1).await.unwrap();

    for round in 0..3 {
        let guard = fill(&holder_sems, &["wake"], 1, &format!("holder-{round}"))
            .await
            .remove(0);
        let latency = wake_up_latency(&waiter_sems, "wake", || async {
            assert!(guard.release().await.unwrap());
        })
        .await;
        eprintln!("wake-up after release, round {round}: {latency:?}");
        assert!(
            latency < SLOW_POLL / 5,
            "woken {latency:?} after the release: that is the poll fallback, not a push"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_strictly_increase() {
    let ctx = TestStack::builder("sem-fence").start().await;
    let sems = semaphores(&ctx).await;
    let mut last = 0;
    for i in 0..20 {
        let guard = fill(&sems, &["global", "glm"], 1, &format!("seq-{i}"))
            .await
            .remove(0);
        assert!(guard.fence() > last, "fence {} after {last}", guard.fence());
        last = guard.fence();
        guard.release().await.unwrap();
    }
    // Concurrent grants on different names draw from the same counter: all distinct, all newer.
    let guards = futures::future::join_all((0..8).map(|i| {
        let sems = sems.clone();
        async move {
            let name = if i % 2 == 0 { "kimi" } else { "glm" };
            sems.try_acquire(&[name], &holder(&format!("par-{i}")))
                .await
                .unwrap()
                .expect("room")
        }
    }))
    .await;
    let fences: HashSet<u64> = guards.iter().map(LeaseGuard::fence).collect();
    assert_eq!(fences.len(), guards.len(), "fences are unique");
    assert!(fences.iter().all(|&f| f > last));
    for guard in guards {
        guard.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_is_idempotent_and_drop_releases() {
    let ctx = TestStack::builder("sem-release").start().await;
    let probe = Probe::of(&ctx).await;
    let sems = semaphores(&ctx).await;

    let guard = fill(&sems, &["global", "kimi"], 1, "released")
        .await
        .remove(0);
    let token = guard.token().to_owned();
    assert!(guard.release().await.unwrap(), "the first release removes");
    assert_eq!(probe.live(&["global", "kimi"]).await, vec![0, 0]);
    assert!(
        !sems
            .release_token(&["global", "kimi"], &token)
            .await
            .unwrap(),
        "the second release removes nothing"
    );
    assert_eq!(probe.live(&["global", "kimi"]).await, vec![0, 0]);

    // Dropping a guard without releasing gives the permit back too (from a spawned task).
    let dropped = fill(&sems, &["kimi"], 2, "dropped").await;
    assert_eq!(probe.live_one("kimi").await, 2);
    drop(dropped);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            probe.live_one("kimi").await == 0
        })
        .await,
        "dropped guards did not release"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_limit_change_takes_effect_fleet_wide() {
    let ctx = TestStack::builder("sem-limits").start().await;
    let probe = Probe::of(&ctx).await;
    let sems = semaphores(&ctx).await;
    let other_process = semaphores(&ctx).await.with_poll_interval(SLOW_POLL);

    sems.set_limit("kimi", 2).await.unwrap();
    let held = fill(&other_process, &["kimi"], 2, "low").await;
    assert!(
        other_process
            .try_acquire(&["kimi"], &holder("third"))
            .await
            .unwrap()
            .is_none(),
        "the lowered limit applies in every process"
    );

    // Raising the limit wakes a blocked waiter at once (the change is announced like a release).
    let latency = wake_up_latency(&other_process, "kimi", || async {
        sems.set_limit("kimi", 3).await.unwrap();
    })
    .await;
    assert!(
        latency < SLOW_POLL / 5,
        "woken {latency:?} after raising the limit"
    );

    let state = sems.inspect().await.unwrap();
    let kimi = state.iter().find(|s| s.name == "kimi").unwrap();
    assert_eq!(
        (kimi.limit, kimi.default_limit, kimi.overridden),
        (Some(3), Some(6), true)
    );

    sems.clear_limit("kimi").await.unwrap();
    let more = fill(&other_process, &["kimi"], 4, "default-again").await;
    assert_eq!(probe.live_one("kimi").await, 6, "back to the default of 6");
    let state = sems.inspect().await.unwrap();
    let kimi = state.iter().find(|s| s.name == "kimi").unwrap();
    assert_eq!((kimi.limit, kimi.overridden), (Some(6), false));

    // A name with neither default nor override is an error, until it is given a limit.
    let err = sems
        .try_acquire(&["mystery"], &holder("m"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SemaphoreError::NoLimit(ref n) if n == "mystery"),
        "{err}"
    );
    sems.set_limit("mystery", 1).await.unwrap();
    let mystery = fill(&sems, &["mystery"], 1, "m").await;

    for guard in held.into_iter().chain(more).chain(mystery) {
        guard.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_live_holders_with_their_job_ids() {
    let ctx = TestStack::builder("sem-inspect").start().await;
    let sems = semaphores(&ctx).await;
    let a = sems
        .try_acquire(
            &["global", "kimi"],
            &HolderInfo::new("worker-a", "job-alpha", 2),
        )
        .await
        .unwrap()
        .unwrap();
    let b = sems
        .try_acquire(&["global"], &HolderInfo::new("worker-b", "job-beta", 1))
        .await
        .unwrap()
        .unwrap();

    let state = sems.inspect().await.unwrap();
    let names: Vec<&str> = state.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["glm", "global", "kimi"],
        "configured names are always listed"
    );
    let by_name = |n: &str| state.iter().find(|s| s.name == n).unwrap();

    let global = by_name("global");
    assert_eq!(global.limit, Some(24));
    assert_eq!(global.in_use(), 2);
    let jobs: HashSet<_> = global
        .holders
        .iter()
        .map(|h| h.job_id.clone().unwrap())
        .collect();
    assert_eq!(
        jobs,
        HashSet::from(["job-alpha".to_owned(), "job-beta".to_owned()])
    );

    let kimi = by_name("kimi");
    assert_eq!(kimi.limit, Some(6));
    assert_eq!(kimi.in_use(), 1);
    let lease = &kimi.holders[0];
    assert_eq!(lease.token, a.token());
    assert_eq!(lease.holder.as_deref(), Some("worker-a"));
    assert_eq!(lease.job_id.as_deref(), Some("job-alpha"));
    assert_eq!(lease.attempt, Some(2));
    assert_eq!(lease.fence, Some(a.fence()));
    assert!(lease.acquired_at_ms.unwrap() > 1_600_000_000_000);
    assert!(lease.expires_in_ms > 0 && lease.expires_in_ms <= 30_000);

    let glm = by_name("glm");
    assert_eq!((glm.limit, glm.in_use()), (Some(4), 0));

    // Released leases disappear from the picture.
    a.release().await.unwrap();
    b.release().await.unwrap();
    let state = sems.inspect().await.unwrap();
    assert!(state.iter().all(|s| s.holders.is_empty()), "{state:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_one_provider_never_blocks_another() {
    let ctx = TestStack::builder("sem-isolation").start().await;
    let probe = Probe::of(&ctx).await;
    let sems = semaphores(&ctx).await;
    let kimi = fill(&sems, &["global", "kimi"], 6, "kimi").await;

    // Several Kimi jobs wait for a permit...
    let cancel = CancellationToken::new();
    let waiters: Vec<_> = (0..3)
        .map(|i| {
            let sems = sems.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                sems.acquire(
                    &["global", "kimi"],
                    &holder(&format!("kimi-waiter-{i}")),
                    Duration::from_secs(60),
                    &cancel,
                )
                .await
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || async { sems.waiters() == 3 }).await);

    // ...while GLM jobs go straight through, and the waiters hold no `global` permit meanwhile.
    let glm = fill(&sems, &["global", "glm"], 4, "glm").await;
    assert_eq!(probe.live(&["global", "kimi", "glm"]).await, vec![10, 6, 4]);

    // Shutdown cancels the waiters without them taking anything.
    cancel.cancel();
    for waiter in waiters {
        let outcome = waiter.await.unwrap().unwrap();
        assert!(matches!(outcome, Acquire::Cancelled), "{outcome:?}");
    }
    assert_eq!(probe.live(&["global", "kimi", "glm"]).await, vec![10, 6, 4]);
    for guard in kimi.into_iter().chain(glm) {
        guard.release().await.unwrap();
    }
}

/// A TCP proxy in front of Redis that can cut every connection and refuse new ones, to simulate
/// a network failure between one process and Redis without touching the server.
struct Proxy {
    addr: SocketAddr,
    /// Cancelling it cuts the current connections; it is replaced by a fresh token for new ones.
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    /// While set, new connections are accepted and closed at once.
    down: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let target = redis_addr();
        let cut = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let down = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        {
            let (cut, down, stop) = (Arc::clone(&cut), Arc::clone(&down), stop.clone());
            tokio::spawn(async move {
                loop {
                    let (mut client, _) = tokio::select! {
                        _ = stop.cancelled() => return,
                        accepted = listener.accept() => match accepted {
                            Ok(accepted) => accepted,
                            Err(_) => continue,
                        },
                    };
                    if down.load(Ordering::SeqCst) {
                        continue; // Dropping the socket closes it.
                    }
                    let cut = cut.lock().unwrap().clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = cut.cancelled() => {}
                            _ = stop.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        }
                    });
                }
            });
        }
        Self {
            addr,
            cut,
            down,
            stop,
        }
    }

    /// A Redis URL that goes through the proxy.
    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Cuts every open connection.
    fn cut_all(&self) {
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// Cuts every open connection and refuses new ones.
    fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The address of the test Redis, from its URL.
fn redis_addr() -> SocketAddr {
    let url = exai_tests::redis_url();
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).expect("redis url");
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => {
            let host = if host == "localhost" {
                "127.0.0.1"
            } else {
                host
            };
            format!("{host}:{port}").parse().expect("redis host:port")
        }
        other => panic!("the proxy tests need a TCP Redis, not {other:?}"),
    }
}

/// How many subscribers `channel` has on the server.
async fn subscribers(probe: &Probe, channel: &str) -> u64 {
    let reply: (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut probe.redis.clone())
        .await
        .expect("pubsub numsub");
    reply.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_resubscribes_after_a_connection_loss() {
    let ctx = TestStack::builder("sem-resubscribe").start().await;
    let probe = Probe::of(&ctx).await;
    let proxy = Proxy::start().await;
    let channel = ctx.keys.sem_released_channel();
    let holder_sems = semaphores(&ctx).await;
    // The waiter's process reaches Redis directly for commands but through the proxy for its
    // release subscription.
    let waiter_sems = Semaphores::new(
        RedisHandle::connect(&ctx.config().redis).await.unwrap(),
        &Subscriber::connect(redis::Client::open(proxy.url()).unwrap())
            .await
            .unwrap(),
        ctx.keys.clone(),
        &ctx.config().semaphores,
    )
    .await
    .unwrap()
    .with_poll_interval(SLOW_POLL);
    holder_sems.set_limit("wake", 1).await.unwrap();
    assert_eq!(subscribers(&probe, &channel).await, 2);

    proxy.cut_all();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            subscribers(&probe, &channel).await == 1
        })
        .await,
        "the cut subscription never closed"
    );
    assert!(
        wait_until(Duration::from_secs(20), || async {
            subscribers(&probe, &channel).await == 2
        })
        .await,
        "the listener never resubscribed"
    );

    let guard = fill(&holder_sems, &["wake"], 1, "holder").await.remove(0);
    let latency = wake_up_latency(&waiter_sems, "wake", || async {
        assert!(guard.release().await.unwrap());
    })
    .await;
    assert!(
        latency < SLOW_POLL / 5,
        "woken {latency:?} after a release, after resubscribing"
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_redis_reports_its_lease_lost_once_it_would_have_expired() {
    const TTL_MS: u64 = 1200;
    let ttl = Duration::from_millis(TTL_MS);
    let ctx = TestStack::builder("sem-partition")
        .envs(&[("EXAI_SEMAPHORE_LEASE_MS", "1200")])
        .start()
        .await;
    let probe = Probe::of(&ctx).await;
    let proxy = Proxy::start().await;
    let cut_off = Semaphores::new(
        RedisHandle::connect(&RedisConfig {
            url: SecretString::from(proxy.url()),
            cluster_nodes: Vec::new(),
            prefix: ctx.prefix.clone(),
        })
        .await
        .unwrap(),
        &Subscriber::connect(redis::Client::open(proxy.url()).unwrap())
            .await
            .unwrap(),
        ctx.keys.clone(),
        &ctx.config().semaphores,
    )
    .await
    .unwrap();
    let guard = fill(&cut_off, &["kimi"], 1, "partitioned").await.remove(0);
    // Renewal works while the network does.
    tokio::time::sleep(ttl).await;
    assert!(!guard.is_lost());
    assert_eq!(probe.live_one("kimi").await, 1);

    let cut_at = Instant::now();
    proxy.go_down();
    assert!(
        tokio::time::timeout(ttl * 2, guard.lost().cancelled())
            .await
            .is_ok(),
        "the lease was not reported lost within two TTLs of losing Redis"
    );
    let lost_after = cut_at.elapsed();
    eprintln!("partition: lease reported lost {lost_after:?} after the cut (TTL {ttl:?})");
    // It kept trying while the lease could still be live: the last renewal before the cut was at
    // most a third of a TTL earlier, so the lease was valid for at least two thirds more.
    assert!(
        lost_after >= ttl / 3,
        "gave up after {lost_after:?}, before the lease could have expired"
    );
    // And by then Redis agrees: the lease is no longer live.
    assert!(
        wait_until(Duration::from_secs(2), || async {
            probe.live_one("kimi").await == 0
        })
        .await
    );
    drop(guard);
    drop(proxy);
}

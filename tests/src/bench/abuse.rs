//! `exai-bench abuse`: the daemon's memory and descriptors under the front-door attacks, and
//! after its timeouts have dealt with them.
//!
//! Each scenario starts a fresh `exai-daemon` (token set, its connection limits at their
//! defaults, its timeouts shortened to `timeout`), reads its resident set (VmRSS) and its open
//! descriptors (`/proc/<pid>/fd`) while it listens with nothing connected — the baseline —, then
//! opens `sockets` connections of one kind, `parallel` at a time:
//!
//! - **silent WebSockets, no hello**: the upgrade completes, then nothing is sent or read;
//! - **silent WebSockets after hello**: the hello is answered, then `pings` pings with 256-byte
//!   ids are sent and nothing is ever read again (their pongs pile up unread);
//! - **idle TCP**: connected, nothing sent;
//! - **slow request head**: a request line and `Host`, then one more header line a second.
//!
//! The WebSocket scenarios run twice: from one source address (127.0.0.1), where the per-address
//! limits refuse most of them, and spread over as many addresses of 127.0.0.0/8 as those limits
//! need to admit every one (each socket bound to its source before it connects), which shows
//! what the sockets the daemon admits cost. Once every socket was attempted (the peak) the
//! daemon's RSS and descriptors are read again; then the run waits, with a deadline, until the
//! daemon has closed every socket — until none of them is still established on this side
//! (`/proc/net/tcp`: the daemon's FIN turns it into CLOSE_WAIT, its RST removes it), so nothing
//! is read to find out — and reads them a third time.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use exai_shared::redis::RedisHandle;
use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::measure::{self, Machine, open_fds, proc_status_mib};
use super::procs::{self, DaemonProc, TOKEN};
use super::report::{Printable, markdown_table, params_line};
use super::{config, progress, redact};

/// What to run (see the flags of `exai-bench abuse`).
#[derive(Debug, Clone)]
pub struct AbuseOptions {
    /// The Redis server the daemon uses.
    pub redis_url: String,
    /// Sockets of each silent-WebSocket scenario (0 skips them).
    pub silent: usize,
    /// Connections of each plain-TCP scenario (0 skips them).
    pub idle_tcp: usize,
    /// Pings each silent socket sends after its hello.
    pub pings: usize,
    /// Sockets opened at once.
    pub parallel: usize,
    /// The daemon's hello, header, keepalive and write timeouts during the run.
    pub timeout: Duration,
    /// The `exai-daemon` binary.
    pub daemon_bin: PathBuf,
}

/// The daemon's connection limits during the run: their defaults, set explicitly so the report
/// says what the daemon ran with.
const LIMITS: Limits = Limits {
    max_connections: 1000,
    per_ip: 10,
    pending_per_ip: 16,
};

/// The connection limits a run's daemon is given.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// `EXAI_WS_MAX_CONNECTIONS`.
    max_connections: usize,
    /// `EXAI_WS_MAX_CONNECTIONS_PER_IP`.
    per_ip: usize,
    /// `EXAI_WS_MAX_PENDING_HELLO_PER_IP`.
    pending_per_ip: usize,
}

/// How long one handshake (connect, upgrade, hello) may take before it counts as refused.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// When, after the peak, the sockets still open are counted again: past the second the daemon
/// gives a close handshake (sockets it pushed out are gone by then, and connections it had not
/// yet accepted at the peak are accepted), before the run's timeouts (at least 2 s).
const SETTLE: Duration = Duration::from_millis(1500);

/// How often the sockets' state is read while waiting for the daemon to close them.
const POLL: Duration = Duration::from_millis(50);

/// The id every ping of a silent socket carries: the longest the daemon accepts.
const PING_ID_BYTES: usize = 256;

/// What each kind of connection does once open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    /// Upgrades, then sends and reads nothing.
    SilentBeforeHello,
    /// Upgrades, says hello, sends pings, and reads nothing after the hello's answer.
    SilentAfterHello,
    /// Connects and sends nothing.
    IdleTcp,
    /// Sends a request line and `Host`, then one header line a second.
    SlowHeader,
}

/// One scenario: an attack, how many sockets, from which addresses.
#[derive(Debug, Clone)]
struct Scenario {
    key: &'static str,
    label: &'static str,
    attack: Attack,
    sockets: usize,
    /// Source addresses, used in turn.
    sources: Vec<Ipv4Addr>,
}

/// The scenarios of a run, in order.
fn scenarios(opts: &AbuseOptions, limits: Limits) -> Vec<Scenario> {
    let one = vec![Ipv4Addr::LOCALHOST];
    let spread = |per_address: usize, n: usize| sources(n.div_ceil(per_address.max(1)));
    let mut out = Vec::new();
    if opts.silent > 0 {
        let n = opts.silent;
        out.extend([
            Scenario {
                key: "silent_before_hello_one",
                label: "silent WebSockets, no hello, one address",
                attack: Attack::SilentBeforeHello,
                sockets: n,
                sources: one.clone(),
            },
            Scenario {
                key: "silent_before_hello_spread",
                label: "silent WebSockets, no hello, spread",
                attack: Attack::SilentBeforeHello,
                sockets: n,
                sources: spread(limits.pending_per_ip, n),
            },
            Scenario {
                key: "silent_after_hello_one",
                label: "silent WebSockets after hello, pongs unread, one address",
                attack: Attack::SilentAfterHello,
                sockets: n,
                sources: one.clone(),
            },
            Scenario {
                key: "silent_after_hello_spread",
                label: "silent WebSockets after hello, pongs unread, spread",
                attack: Attack::SilentAfterHello,
                sockets: n,
                sources: spread(limits.per_ip, n),
            },
        ]);
    }
    if opts.idle_tcp > 0 {
        out.extend([
            Scenario {
                key: "idle_tcp",
                label: "idle TCP connections, nothing sent, one address",
                attack: Attack::IdleTcp,
                sockets: opts.idle_tcp,
                sources: one.clone(),
            },
            Scenario {
                key: "slow_header",
                label: "slow request heads, a header line a second, one address",
                attack: Attack::SlowHeader,
                sockets: opts.idle_tcp,
                sources: one,
            },
        ]);
    }
    out
}

/// `n` loopback source addresses other than 127.0.0.1: 127.1.0.1, 127.1.0.2, …
fn sources(n: usize) -> Vec<Ipv4Addr> {
    (0..n.max(1))
        .map(|i| Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250) as u8 + 1))
        .collect()
}

/// What one scenario measured.
#[derive(Debug, Clone, Default, PartialEq)]
struct Outcome {
    key: String,
    label: String,
    sockets: usize,
    addresses: usize,
    /// Handshakes completed: TCP connected; for WebSockets the 101; after hello the hello_ack.
    accepted: usize,
    /// Handshakes that failed: no connection, an HTTP error instead of 101, no hello_ack.
    refused: usize,
    /// Sockets still established when every one had been attempted (the peak).
    open_at_peak: usize,
    /// Sockets still established [`SETTLE`] after the peak.
    open_settled: usize,
    /// Seconds to open them all.
    open_secs: f64,
    /// VmRSS listening, nothing connected.
    rss_idle_mib: f64,
    /// VmRSS when every socket had been attempted.
    rss_at_peak_mib: f64,
    /// VmHWM at the end: the highest RSS of the daemon's life (it served only this scenario).
    rss_peak_mib: f64,
    /// VmRSS once the daemon had closed every socket.
    rss_after_mib: f64,
    fds_idle: usize,
    /// The most descriptors seen: at the peak, [`SETTLE`] after it, and while waiting.
    fds_peak: usize,
    fds_settled: usize,
    fds_after: usize,
    /// Seconds from the peak until the daemon had closed every socket (`None`: it had not by
    /// the deadline).
    closed_secs: Option<f64>,
    /// Sockets still established at the deadline.
    still_open: usize,
}

impl Outcome {
    fn ratio(v: f64, base: f64) -> f64 {
        if base > 0.0 { v / base } else { 0.0 }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct AbuseReport {
    machine: Machine,
    params: Value,
    outcomes: Vec<Outcome>,
    notes: Vec<String>,
}

/// How the numbers were taken.
const LEGEND: &[&str] = &[
    "Each row starts a fresh exai-daemon (token set; EXAI_WS_MAX_CONNECTIONS, _PER_IP and \
     EXAI_WS_MAX_PENDING_HELLO_PER_IP at their defaults, named in the run line; hello, header, \
     keepalive and write timeouts shortened to the run's timeout) and opens that many sockets \
     from this process over loopback, parallel at a time.",
    "one address: every socket from 127.0.0.1, so the per-address limits refuse or push out most of \
     them (that is the defence at work). spread: each socket bound to one of as many source \
     addresses in 127.1.0.0/16 as the per-address limits need to admit every one (16 silent sockets \
     before hello, 10 after), within EXAI_WS_MAX_CONNECTIONS in total: the memory of sockets the \
     daemon admitted.",
    "accepted: the handshake completed (TCP connected — the kernel completes it before the daemon \
     accepts —; the upgrade's 101; the hello_ack). refused: it did not (an HTTP error, a close or a \
     reset instead). opened in: from the first connect until every socket was attempted (the peak); \
     connects beyond the daemon's accept queue (128, the listen backlog) wait for the kernel's SYN \
     retransmit, a second. open at peak: accepted sockets still established on this side once every one was \
     attempted; open +1.5 s: the same 1.5 s later, past the second the daemon gives a close handshake \
     (a socket pushed out by newer ones from its address is gone by then) and before the run's \
     timeouts.",
    "RSS idle: VmRSS of the daemon (/proc/<pid>/status) listening with nothing connected; peak: its \
     VmHWM once the sockets were closed, the highest RSS of that daemon's life (it served only this \
     row); after: VmRSS once the daemon had closed every socket. fds: entries of /proc/<pid>/fd \
     listening (idle), the most seen from the peak on (peak), 1.5 s after the peak, and after.",
    "closed after: from the peak until no socket was established on this side any more (the daemon's FIN \
     or RST, read from /proc/net/tcp every 50 ms; nothing is read from the sockets): the daemon's \
     timeouts, plus the second it gives a close handshake.",
];

impl AbuseReport {
    /// The table, its header and its legend.
    pub fn to_table(&self) -> String {
        let m = &self.machine;
        let mut out = String::from(
            "exai-bench abuse — the daemon's memory and descriptors under silent and idle \
             connections, and after its timeouts\n",
        );
        out.push_str(&format!(
            "machine: {} CPUs (nproc), {}; Redis {}\n",
            m.nproc, m.cpu_model, m.redis_version
        ));
        out.push_str(&format!("run: {}\n\n", params_line(&self.params)));
        let header = [
            "scenario",
            "sockets",
            "addresses",
            "accepted",
            "refused",
            "opened in",
            "open at peak",
            "open +1.5 s",
            "RSS idle MiB",
            "RSS peak MiB",
            "RSS after MiB",
            "peak ÷ idle",
            "after ÷ idle",
            "fds idle",
            "fds peak",
            "fds +1.5 s",
            "fds after",
            "closed after",
        ];
        let rows: Vec<Vec<String>> = self
            .outcomes
            .iter()
            .map(|o| {
                vec![
                    o.label.clone(),
                    o.sockets.to_string(),
                    o.addresses.to_string(),
                    o.accepted.to_string(),
                    o.refused.to_string(),
                    format!("{:.1} s", o.open_secs),
                    o.open_at_peak.to_string(),
                    o.open_settled.to_string(),
                    format!("{:.1}", o.rss_idle_mib),
                    format!("{:.1}", o.rss_peak_mib),
                    format!("{:.1}", o.rss_after_mib),
                    format!("{:.2}", Outcome::ratio(o.rss_peak_mib, o.rss_idle_mib)),
                    format!("{:.2}", Outcome::ratio(o.rss_after_mib, o.rss_idle_mib)),
                    o.fds_idle.to_string(),
                    o.fds_peak.to_string(),
                    o.fds_settled.to_string(),
                    o.fds_after.to_string(),
                    match o.closed_secs {
                        Some(s) => format!("{s:.1} s"),
                        None => format!("{} still open", o.still_open),
                    },
                ]
            })
            .collect();
        out.push_str(&markdown_table(&header, &rows, &[0]));
        out.push('\n');
        for l in LEGEND {
            out.push_str(&format!("- {l}\n"));
        }
        for n in &self.notes {
            out.push_str(&format!("- note: {n}\n"));
        }
        out
    }

    /// One JSON object: for each scenario `<key>_<field>` (`sockets`, `addresses`, `accepted`,
    /// `refused`, `open_at_peak`, `open_settled`, `open_s`, `rss_idle_mib`, `rss_at_peak_mib`,
    /// `rss_peak_mib` (VmHWM), `rss_after_mib`, `rss_peak_ratio`, `rss_after_ratio`, `fds_idle`,
    /// `fds_peak`, `fds_settled`, `fds_after`, `fds_peak_ratio`, `fds_after_ratio`, `closed_s` —
    /// null when the daemon had not closed
    /// them all by the deadline — and `still_open`); then the machine, the parameters and the
    /// notes.
    pub fn to_json(&self) -> Value {
        let r = |v: f64, places: i32| {
            let f = 10f64.powi(places);
            (v * f).round() / f
        };
        let mut o = Map::new();
        for s in &self.outcomes {
            let fds_ratio = |v: usize| r(Outcome::ratio(v as f64, s.fds_idle as f64), 3);
            let fields = [
                ("sockets", json!(s.sockets)),
                ("addresses", json!(s.addresses)),
                ("accepted", json!(s.accepted)),
                ("refused", json!(s.refused)),
                ("open_at_peak", json!(s.open_at_peak)),
                ("open_settled", json!(s.open_settled)),
                ("open_s", json!(r(s.open_secs, 3))),
                ("rss_idle_mib", json!(r(s.rss_idle_mib, 2))),
                ("rss_at_peak_mib", json!(r(s.rss_at_peak_mib, 2))),
                ("rss_peak_mib", json!(r(s.rss_peak_mib, 2))),
                ("rss_after_mib", json!(r(s.rss_after_mib, 2))),
                (
                    "rss_peak_ratio",
                    json!(r(Outcome::ratio(s.rss_peak_mib, s.rss_idle_mib), 3)),
                ),
                (
                    "rss_after_ratio",
                    json!(r(Outcome::ratio(s.rss_after_mib, s.rss_idle_mib), 3)),
                ),
                ("fds_idle", json!(s.fds_idle)),
                ("fds_peak", json!(s.fds_peak)),
                ("fds_settled", json!(s.fds_settled)),
                ("fds_after", json!(s.fds_after)),
                ("fds_peak_ratio", json!(fds_ratio(s.fds_peak))),
                ("fds_after_ratio", json!(fds_ratio(s.fds_after))),
                ("closed_s", json!(s.closed_secs.map(|v| r(v, 2)))),
                ("still_open", json!(s.still_open)),
            ];
            for (name, v) in fields {
                o.insert(format!("{}_{name}", s.key), v);
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

impl Printable for AbuseReport {
    fn table(&self) -> String {
        self.to_table()
    }
    fn json(&self) -> Value {
        self.to_json()
    }
}

/// The daemon's environment for a run with `timeout` (what the report's run line shows too).
fn daemon_env(limits: Limits, timeout: Duration) -> Vec<(&'static str, String)> {
    let secs = format!("{}", timeout.as_secs_f64());
    vec![
        ("EXAI_WS_TOKEN", TOKEN.to_owned()),
        (
            "EXAI_WS_MAX_CONNECTIONS",
            limits.max_connections.to_string(),
        ),
        ("EXAI_WS_MAX_CONNECTIONS_PER_IP", limits.per_ip.to_string()),
        (
            "EXAI_WS_MAX_PENDING_HELLO_PER_IP",
            limits.pending_per_ip.to_string(),
        ),
        ("EXAI_WS_HELLO_TIMEOUT", secs.clone()),
        ("EXAI_HTTP_HEADER_TIMEOUT_SECS", secs.clone()),
        ("EXAI_WS_PING_INTERVAL", secs.clone()),
        ("EXAI_WS_PING_TIMEOUT", secs.clone()),
        ("EXAI_WS_WRITE_TIMEOUT_SECS", secs),
        ("EXAI_AUTO_MIGRATE", "false".to_owned()),
    ]
}

/// Runs every scenario under key prefix `prefix` (the daemons' sessions live there; the caller
/// deletes them).
pub async fn run(opts: AbuseOptions, prefix: String) -> anyhow::Result<AbuseReport> {
    procs::ensure_built(&opts.daemon_bin, "--daemon-bin")?;
    let most = opts.silent.max(opts.idle_tcp) as u64;
    // This process's sockets, and the daemon's (it inherits the limit), with room to spare.
    procs::raise_open_files_limit(most + 200)?;
    let base = config(&opts.redis_url, &prefix)?;
    let mut info = RedisHandle::connect(&base.redis)
        .await
        .context("connect to redis")?;
    let machine = measure::machine(&mut info).await?;
    drop(info);
    let env = daemon_env(LIMITS, opts.timeout);
    let mut params = Map::new();
    params.insert("silent".to_owned(), json!(opts.silent));
    params.insert("idle_tcp".to_owned(), json!(opts.idle_tcp));
    params.insert("pings".to_owned(), json!(opts.pings));
    params.insert("ping_id_bytes".to_owned(), json!(PING_ID_BYTES));
    params.insert("parallel".to_owned(), json!(opts.parallel));
    for (k, v) in &env {
        if *k != "EXAI_WS_TOKEN" && *k != "EXAI_AUTO_MIGRATE" {
            params.insert((*k).to_owned(), json!(v));
        }
    }
    params.insert("redis_url".to_owned(), json!(redact(&opts.redis_url)));
    params.insert(
        "daemon_bin".to_owned(),
        json!(opts.daemon_bin.display().to_string()),
    );
    let mut report = AbuseReport {
        machine,
        params: Value::Object(params),
        outcomes: Vec::new(),
        notes: Vec::new(),
    };
    for scenario in scenarios(&opts, LIMITS) {
        progress(&format!(
            "{}: {} sockets from {} address(es)",
            scenario.label,
            scenario.sockets,
            scenario.sources.len()
        ));
        let outcome = run_scenario(&opts, &prefix, &env, &scenario).await?;
        if outcome.open_secs + SETTLE.as_secs_f64() > opts.timeout.as_secs_f64() {
            report.notes.push(format!(
                "{}: opening took {:.1} s, so 1.5 s after the peak the first sockets were older \
                 than the timeouts ({:.1} s): the daemon may have closed them by then",
                outcome.label,
                outcome.open_secs,
                opts.timeout.as_secs_f64()
            ));
        }
        if outcome.closed_secs.is_none() {
            report.notes.push(format!(
                "{}: {} sockets were still open at the deadline ({:.0} s after the peak)",
                outcome.label,
                outcome.still_open,
                close_deadline(opts.timeout).as_secs_f64()
            ));
        }
        report.outcomes.push(outcome);
    }
    Ok(report)
}

/// How long the run waits for the daemon to close every socket: the longest of its timeouts
/// (keepalive: ping interval + ping timeout) several times over, and then some.
fn close_deadline(timeout: Duration) -> Duration {
    timeout * 4 + Duration::from_secs(30)
}

/// One scenario against a fresh daemon.
async fn run_scenario(
    opts: &AbuseOptions,
    prefix: &str,
    env: &[(&str, String)],
    scenario: &Scenario,
) -> anyhow::Result<Outcome> {
    let mut daemon = DaemonProc::spawn(&opts.daemon_bin, &opts.redis_url, prefix, env).await?;
    let pid = daemon.pid().context("the daemon's pid")?;
    let addr = daemon.addr;
    let rss_idle = proc_status_mib(pid, "VmRSS")?;
    let fds_idle = open_fds(pid)?;

    let t0 = Instant::now();
    let opened = open_all(scenario, addr, opts).await?;
    let peak_at = Instant::now();
    let open_secs = (peak_at - t0).as_secs_f64();
    let open_at_peak = established_to(addr)?;
    let rss_at_peak = proc_status_mib(pid, "VmRSS")?;
    let mut fds_peak = open_fds(pid)?;
    daemon.check()?;
    tokio::time::sleep_until((peak_at + SETTLE).into()).await;
    let open_settled = established_to(addr)?;
    let fds_settled = open_fds(pid)?;
    fds_peak = fds_peak.max(fds_settled);

    let deadline = peak_at + close_deadline(opts.timeout);
    let mut closed_secs = None;
    let still_open = loop {
        let open = established_to(addr)?;
        fds_peak = fds_peak.max(open_fds(pid)?);
        if open == 0 {
            closed_secs = Some(peak_at.elapsed().as_secs_f64());
            break 0;
        }
        if Instant::now() >= deadline {
            break open;
        }
        tokio::time::sleep(POLL).await;
    };
    // Its half of each socket is closed once this side saw the FIN; give the daemon a moment
    // to let go of the rest (tasks, buffers), with a deadline.
    let settle = Instant::now() + Duration::from_secs(5);
    while open_fds(pid)? > fds_idle && Instant::now() < settle {
        tokio::time::sleep(POLL).await;
    }
    let rss_after = proc_status_mib(pid, "VmRSS")?;
    let fds_after = open_fds(pid)?;
    let rss_peak = proc_status_mib(pid, "VmHWM")?;
    daemon.check()?;
    let accepted = opened.accepted;
    drop(opened);
    daemon.stop(Duration::from_secs(10)).await?;
    Ok(Outcome {
        key: scenario.key.to_owned(),
        label: scenario.label.to_owned(),
        sockets: scenario.sockets,
        addresses: scenario.sources.len(),
        accepted,
        refused: scenario.sockets - accepted,
        open_at_peak,
        open_settled,
        open_secs,
        rss_idle_mib: rss_idle,
        rss_at_peak_mib: rss_at_peak,
        rss_peak_mib: rss_peak,
        rss_after_mib: rss_after,
        fds_idle,
        fds_peak,
        fds_settled,
        fds_after,
        closed_secs,
        still_open,
    })
}

/// The sockets of a scenario, held open — and never read — until dropped.
struct Opened {
    /// How many handshakes completed.
    accepted: usize,
    /// The WebSockets.
    _ws: Vec<WebSocketStream<TcpStream>>,
    /// The plain TCP connections (but those of slow request heads: the trickle owns them).
    _tcp: Vec<TcpStream>,
    /// The task that trickles header lines into slow request heads.
    _trickle: Option<tokio_util::task::AbortOnDropHandle<()>>,
}

/// One open socket.
enum Held {
    /// A WebSocket past its handshake (and hello), never polled for reading again.
    Ws(Box<WebSocketStream<TcpStream>>),
    /// A plain TCP connection.
    Tcp(TcpStream),
}

/// Opens the scenario's sockets, `parallel` at a time, each from the next source address.
async fn open_all(
    scenario: &Scenario,
    addr: SocketAddr,
    opts: &AbuseOptions,
) -> anyhow::Result<Opened> {
    let n = scenario.sockets;
    let ping: tokio_tungstenite::tungstenite::Utf8Bytes =
        json!({"op": "ping", "id": "p".repeat(PING_ID_BYTES)})
            .to_string()
            .into();
    let mut sockets = Vec::with_capacity(n);
    let mut started = 0;
    while started < n {
        let batch = opts.parallel.max(1).min(n - started);
        let mut set = JoinSet::new();
        for i in started..started + batch {
            let source = scenario.sources[i % scenario.sources.len()];
            let (attack, pings, ping) = (scenario.attack, opts.pings, ping.clone());
            set.spawn(async move { open_one(attack, source, addr, pings, ping).await });
        }
        while let Some(r) = set.join_next().await {
            if let Some(held) = r?? {
                sockets.push(held);
            }
        }
        started += batch;
    }
    let accepted = sockets.len();
    let (mut ws, mut tcp) = (Vec::new(), Vec::new());
    for held in sockets {
        match held {
            Held::Ws(w) => ws.push(*w),
            Held::Tcp(t) => tcp.push(t),
        }
    }
    let trickle = (scenario.attack == Attack::SlowHeader).then(|| {
        let mut streams = std::mem::take(&mut tcp);
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            loop {
                every.tick().await;
                for s in &mut streams {
                    // A connection the daemon closed fails; the others get one more line.
                    let _ = s.try_write(b"X-Slow: 1\r\n");
                }
            }
        }))
    });
    Ok(Opened {
        accepted,
        _ws: ws,
        _tcp: tcp,
        _trickle: trickle,
    })
}

/// Connects to `to` from `source` (bound first, any port).
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> anyhow::Result<Option<TcpStream>> {
    let socket = TcpSocket::new_v4().context("a TCP socket")?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .with_context(|| format!("bind to {source}"))?;
    Ok(tokio::time::timeout(HANDSHAKE_WAIT, socket.connect(to))
        .await
        .ok()
        .and_then(Result::ok))
}

/// Opens one socket of `attack` from `source`: `None` when the daemon refused it. Fails only
/// when this side could not even try (no socket, no source address).
async fn open_one(
    attack: Attack,
    source: Ipv4Addr,
    addr: SocketAddr,
    pings: usize,
    ping: tokio_tungstenite::tungstenite::Utf8Bytes,
) -> anyhow::Result<Option<Held>> {
    let Some(mut tcp) = connect_from(source, addr).await? else {
        return Ok(None);
    };
    match attack {
        Attack::IdleTcp => Ok(Some(Held::Tcp(tcp))),
        Attack::SlowHeader => {
            let head = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n");
            Ok(tcp
                .write_all(head.as_bytes())
                .await
                .is_ok()
                .then_some(Held::Tcp(tcp)))
        }
        Attack::SilentBeforeHello | Attack::SilentAfterHello => {
            // Small buffers: this process holds thousands of these.
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let url = format!("ws://{addr}/");
            let handshake = tokio::time::timeout(
                HANDSHAKE_WAIT,
                tokio_tungstenite::client_async_with_config(url, tcp, Some(config)),
            )
            .await;
            let Ok(Ok((mut ws, _))) = handshake else {
                return Ok(None);
            };
            if attack == Attack::SilentBeforeHello {
                return Ok(Some(Held::Ws(Box::new(ws))));
            }
            let hello = json!({"op": "hello", "token": TOKEN}).to_string();
            let acked = tokio::time::timeout(HANDSHAKE_WAIT, async {
                ws.send(Message::text(hello)).await.ok()?;
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let ack: Value = serde_json::from_str(t.as_str()).ok()?;
                        (ack["op"] == "hello_ack" && ack["ok"] == true).then_some(())
                    }
                    _ => None,
                }
            })
            .await;
            if !matches!(acked, Ok(Some(()))) {
                return Ok(None);
            }
            // From here on nothing is read: the pongs stay unread. Sending stops when the
            // daemon stops reading (its own bounds) or after the handshake's wait.
            let _ = tokio::time::timeout(HANDSHAKE_WAIT, async {
                for _ in 0..pings {
                    ws.feed(Message::Text(ping.clone())).await?;
                }
                ws.flush().await
            })
            .await;
            Ok(Some(Held::Ws(Box::new(ws))))
        }
    }
}

/// Connections to `daemon` established on this side now, from `/proc/net/tcp` (this process is
/// the only client of the daemon's fresh port). A socket the daemon closed is in CLOSE_WAIT
/// (its FIN) or gone (its RST).
fn established_to(daemon: SocketAddr) -> anyhow::Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").context("read /proc/net/tcp")?;
    Ok(count_established(&table, daemon))
}

/// [`established_to`] on the text of `/proc/net/tcp`: the rows whose remote address is
/// `daemon` and whose state is `01` (ESTABLISHED). Addresses there are the IPv4 address as a
/// host-order hex word (little-endian: 127.0.0.1 is `0100007F`) and the port in hex.
fn count_established(table: &str, daemon: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = daemon else {
        return 0;
    };
    let remote = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(2);
            fields.next() == Some(remote.as_str()) && fields.next() == Some("01")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_established_connections_to_the_daemon() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n\
            1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000\n\
            2: 0100017F:9C41 0100007F:1F90 01 00000000:00000000\n\
            3: 0100007F:9C42 0100007F:1F90 08 00000000:00000000\n\
            4: 0100007F:1F90 0100007F:9C40 01 00000000:00000000\n\
            5: 0100007F:9C43 0100007F:1F91 01 00000000:00000000\n";
        let daemon: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(count_established(table, daemon), 2);
    }

    #[test]
    fn spreads_sources_over_loopback_addresses() {
        let s = sources(252);
        assert_eq!(s[0], Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(s[249], Ipv4Addr::new(127, 1, 0, 250));
        assert_eq!(s[250], Ipv4Addr::new(127, 1, 1, 1));
        assert!(
            s.iter()
                .all(|a| a.is_loopback() && *a != Ipv4Addr::LOCALHOST)
        );
        let opts = AbuseOptions {
            redis_url: String::new(),
            silent: 1000,
            idle_tcp: 1000,
            pings: 1,
            parallel: 1,
            timeout: Duration::from_secs(1),
            daemon_bin: PathBuf::new(),
        };
        let all = scenarios(&opts, LIMITS);
        let spread: Vec<usize> = all
            .iter()
            .filter(|s| s.key.ends_with("_spread"))
            .map(|s| s.sources.len())
            .collect();
        // 16 sockets without hello per address, 10 after it.
        assert_eq!(spread, [63, 100]);
        assert_eq!(all.len(), 6);
    }

    #[test]
    fn the_table_and_the_json_carry_each_scenario() {
        let report = AbuseReport {
            machine: Machine {
                nproc: 2,
                cpu_model: "cpu".to_owned(),
                redis_version: "7".to_owned(),
                redis_background_pct: 0.0,
            },
            params: json!({"silent": 10}),
            outcomes: vec![Outcome {
                key: "idle_tcp".to_owned(),
                label: "idle TCP".to_owned(),
                sockets: 10,
                addresses: 1,
                accepted: 10,
                refused: 0,
                open_at_peak: 8,
                open_settled: 5,
                open_secs: 0.1,
                rss_idle_mib: 10.0,
                rss_at_peak_mib: 14.0,
                rss_peak_mib: 15.0,
                rss_after_mib: 11.0,
                fds_idle: 20,
                fds_peak: 30,
                fds_settled: 25,
                fds_after: 20,
                closed_secs: None,
                still_open: 3,
            }],
            notes: vec![],
        };
        let table = report.to_table();
        assert!(table.contains("| idle TCP "), "{table}");
        assert!(table.contains(" 1.50 |"), "{table}");
        assert!(table.contains("3 still open"), "{table}");
        let j = report.to_json();
        assert_eq!(j["idle_tcp_rss_peak_ratio"], 1.5);
        assert_eq!(j["idle_tcp_fds_after_ratio"], 1.0);
        assert_eq!(j["idle_tcp_closed_s"], Value::Null);
        assert_eq!(j["idle_tcp_open_at_peak"], 8);
        assert_eq!(j["idle_tcp_open_settled"], 5);
    }
}

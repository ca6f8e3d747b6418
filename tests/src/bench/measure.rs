//! What the machine is, and what a phase cost in CPU: the Redis server's (from `INFO cpu`) and
//! the client processes' (from `/proc/<pid>/stat`).

use std::ops::AddAssign;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use exai_shared::redis::RedisHandle;
use serde::Serialize;

/// The machine and the Redis server the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Online CPUs (`nproc`).
    pub nproc: usize,
    /// The CPU model from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `redis_version` from `INFO server`.
    pub redis_version: String,
    /// The Redis server's CPU use over half a second before the run, in percent of one core:
    /// load from other clients of the same server, which every Redis CPU figure includes.
    pub redis_background_pct: f64,
}

/// Reads the machine's description and samples the Redis server's background load.
pub async fn machine(conn: &mut RedisHandle) -> anyhow::Result<Machine> {
    let nproc = std::thread::available_parallelism().map_or(1, usize::from);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let server: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let redis_version = info_field(&server, "redis_version")
        .unwrap_or("unknown")
        .to_owned();
    let meter = Meter::start(conn, 0.0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = meter.stop(conn, 0.0).await?;
    Ok(Machine {
        nproc,
        cpu_model,
        redis_version,
        redis_background_pct: (idle.redis_busy_pct() * 10.0).round() / 10.0,
    })
}

/// The value of `name:` in an `INFO` reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Counters of the Redis server at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisSample {
    /// CPU seconds used (user + system, all threads).
    pub cpu: f64,
    /// Commands executed, those run inside scripts included (`total_commands_processed`).
    pub commands: u64,
    /// `EVAL` and `EVALSHA` calls: script round trips.
    pub script_calls: u64,
    /// Microseconds spent executing those calls (`usec` of their command stats).
    pub script_usec: u64,
}

/// Samples the server's counters with one `INFO cpu stats commandstats` (Redis ≥ 7).
pub async fn redis_sample(conn: &mut RedisHandle) -> anyhow::Result<RedisSample> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .arg("stats")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    parse_sample(&info)
}

/// Reads a [`RedisSample`] from an `INFO cpu stats commandstats` reply.
fn parse_sample(info: &str) -> anyhow::Result<RedisSample> {
    let mut sample = RedisSample::default();
    for name in ["used_cpu_user", "used_cpu_sys"] {
        let v = info_field(info, name).ok_or_else(|| anyhow::anyhow!("INFO cpu has no {name}"))?;
        sample.cpu += v.parse::<f64>()?;
    }
    sample.commands = info_field(info, "total_commands_processed")
        .ok_or_else(|| anyhow::anyhow!("INFO stats has no total_commands_processed"))?
        .parse()?;
    for name in ["cmdstat_eval", "cmdstat_evalsha"] {
        if let Some(stats) = info_field(info, name) {
            for kv in stats.split(',') {
                match kv.split_once('=') {
                    Some(("calls", v)) => sample.script_calls += v.parse::<u64>()?,
                    Some(("usec", v)) => sample.script_usec += v.parse::<u64>()?,
                    _ => {}
                }
            }
        }
    }
    Ok(sample)
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 on Linux).
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system, all threads) used by process `pid`, or by this process when
/// `None`; 0 when the process is gone. Resolution: one clock tick (10 ms).
pub fn proc_cpu_secs(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start with field 3, `state`;
    // utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clk_tck()
}

/// A size field of `/proc/<pid>/status` (`VmRSS`, the resident set now; `VmHWM`, its peak so
/// far), in bytes; `None` when the process or the field is gone.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// [`proc_status_bytes`] in MiB, or an error naming the process and the field.
pub fn proc_status_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    proc_status_bytes(pid, field)
        .map(|b| b as f64 / (1024.0 * 1024.0))
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status: has it exited?"))
}

/// The descriptors process `pid` has open (the entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> anyhow::Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| anyhow::anyhow!("list {dir}: {e}"))?;
    Ok(entries.count())
}

/// The CPU used by the client side of a phase, summed over its processes.
pub fn procs_cpu_secs(pids: &[u32]) -> f64 {
    pids.iter().map(|p| proc_cpu_secs(Some(*p))).sum()
}

/// CPU seconds the whole machine spent busy (all CPUs, from the first line of `/proc/stat`),
/// and the time-stamp it was read at.
pub fn machine_busy_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    // user nice system idle iowait irq softirq steal …: everything but idle and iowait.
    let ticks: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let busy: f64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy / clk_tck()
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Where the machine's CPU went during a whole run, in cores (CPU seconds ÷ wall seconds).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RunLoad {
    /// The run's wall time, seconds.
    pub wall_s: f64,
    /// The 1-minute load average when the run began.
    pub load_average_before: f64,
    /// All CPUs' busy time.
    pub busy_cores: f64,
    /// The Redis server (all its clients' work).
    pub redis_cores: f64,
    /// This process (producers, pollers, the in-process engine).
    pub bench_cores: f64,
    /// The worker processes.
    pub workers_cores: f64,
    /// Everything else on the machine: the rest of `busy_cores`.
    pub other_cores: f64,
}

/// The first sample of a [`RunLoad`].
#[derive(Debug, Clone, Copy)]
pub struct RunMeter {
    at: Instant,
    load: f64,
    busy: f64,
    redis: f64,
    bench: f64,
}

impl RunMeter {
    /// Samples now.
    pub async fn start(conn: &mut RedisHandle) -> anyhow::Result<Self> {
        Ok(Self {
            load: load_average(),
            busy: machine_busy_secs(),
            redis: redis_sample(conn).await?.cpu,
            bench: proc_cpu_secs(None),
            at: Instant::now(),
        })
    }

    /// Samples again; `workers_cpu` is what the worker processes used in all.
    pub async fn stop(self, conn: &mut RedisHandle, workers_cpu: f64) -> anyhow::Result<RunLoad> {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let busy = (machine_busy_secs() - self.busy).max(0.0) / wall;
        let redis = (redis_sample(conn).await?.cpu - self.redis).max(0.0) / wall;
        let bench = (proc_cpu_secs(None) - self.bench).max(0.0) / wall;
        let workers = workers_cpu / wall;
        let r2 = |v: f64| (v * 100.0).round() / 100.0;
        Ok(RunLoad {
            wall_s: r2(wall),
            load_average_before: self.load,
            busy_cores: r2(busy),
            redis_cores: r2(redis),
            bench_cores: r2(bench),
            workers_cores: r2(workers),
            other_cores: r2((busy - redis - bench - workers).max(0.0)),
        })
    }
}

/// CPU and wall time a phase used.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Wall-clock seconds between the two samples.
    pub wall: f64,
    /// Redis server CPU seconds.
    pub redis: f64,
    /// Client CPU seconds (the bench, or the worker processes).
    pub client: f64,
    /// Commands Redis executed, those inside scripts included.
    pub commands: f64,
    /// Script calls (`EVAL`, `EVALSHA`) Redis executed.
    pub script_calls: f64,
    /// Seconds Redis spent executing script calls.
    pub script: f64,
}

impl Usage {
    /// Redis CPU per `jobs`, in microseconds.
    pub fn redis_us_per(&self, jobs: u64) -> f64 {
        self.redis * 1e6 / jobs.max(1) as f64
    }

    /// Seconds inside script calls per `jobs`, in microseconds.
    pub fn script_us_per(&self, jobs: u64) -> f64 {
        self.script * 1e6 / jobs.max(1) as f64
    }

    /// Commands per job.
    pub fn commands_per(&self, jobs: u64) -> f64 {
        self.commands / jobs.max(1) as f64
    }

    /// Script calls per job.
    pub fn script_calls_per(&self, jobs: u64) -> f64 {
        self.script_calls / jobs.max(1) as f64
    }

    /// Client CPU per `jobs`, in microseconds.
    pub fn client_us_per(&self, jobs: u64) -> f64 {
        self.client * 1e6 / jobs.max(1) as f64
    }

    /// Redis CPU over wall time, in percent of one core.
    pub fn redis_busy_pct(&self) -> f64 {
        if self.wall > 0.0 {
            self.redis * 100.0 / self.wall
        } else {
            0.0
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, rhs: Self) {
        self.wall += rhs.wall;
        self.redis += rhs.redis;
        self.client += rhs.client;
        self.commands += rhs.commands;
        self.script_calls += rhs.script_calls;
        self.script += rhs.script;
    }
}

/// A first sample of wall time, Redis CPU and client CPU; [`Meter::stop`] takes the second.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    at: Instant,
    redis: RedisSample,
    client: f64,
}

impl Meter {
    /// Samples now; `client_cpu` is the client side's CPU seconds so far.
    pub async fn start(conn: &mut RedisHandle, client_cpu: f64) -> anyhow::Result<Self> {
        let redis = redis_sample(conn).await?;
        Ok(Self {
            at: Instant::now(),
            redis,
            client: client_cpu,
        })
    }

    /// Samples again and returns the difference. The two `INFO` calls themselves count as
    /// one command.
    pub async fn stop(self, conn: &mut RedisHandle, client_cpu: f64) -> anyhow::Result<Usage> {
        let wall = self.at.elapsed().as_secs_f64();
        let redis = redis_sample(conn).await?;
        let a = &self.redis;
        Ok(Usage {
            wall,
            redis: (redis.cpu - a.cpu).max(0.0),
            client: (client_cpu - self.client).max(0.0),
            commands: redis.commands.saturating_sub(a.commands).saturating_sub(1) as f64,
            script_calls: redis.script_calls.saturating_sub(a.script_calls) as f64,
            script: redis.script_usec.saturating_sub(a.script_usec) as f64 / 1e6,
        })
    }
}

/// The `q`-quantile (0..=1) of `sorted` by nearest rank; 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts samples for [`percentile`].
pub fn sorted(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(f64::total_cmp);
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = sorted((1..=100).rev().map(f64::from).collect());
        assert_eq!(percentile(&s, 0.5), 50.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&s, 1.0), 100.0);
        assert_eq!(percentile(&s, 0.0), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn reads_info_fields() {
        let info = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:0\r\n";
        assert_eq!(info_field(info, "used_cpu_sys"), Some("1.5"));
        assert_eq!(info_field(info, "used_cpu_user"), Some("2.25"));
        assert_eq!(info_field(info, "used_cpu"), None);
    }

    #[test]
    fn reads_a_redis_sample() {
        let info = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\n\
                    # Stats\r\ntotal_commands_processed:42\r\n\
                    # Commandstats\r\n\
                    cmdstat_evalsha:calls=10,usec=300,usec_per_call=30.00,rejected_calls=0\r\n\
                    cmdstat_eval:calls=2,usec=50,usec_per_call=25.00\r\n\
                    cmdstat_evalsha_ro:calls=7,usec=7\r\n";
        let s = parse_sample(info).unwrap();
        assert_eq!(s.cpu, 3.75);
        assert_eq!(s.commands, 42);
        assert_eq!(s.script_calls, 12);
        assert_eq!(s.script_usec, 350);
    }

    #[test]
    fn reads_own_cpu() {
        // Spin until the kernel has charged this process a clock tick (10 ms); on a busy
        // machine that takes longer than the same wall time, so wait for it, within a bound.
        let spin = Instant::now();
        while proc_cpu_secs(None) == 0.0 && spin.elapsed() < Duration::from_secs(10) {}
        assert!(proc_cpu_secs(None) > 0.0);
    }
}

/// The Redis server's memory and key count at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisFootprint {
    /// `used_memory` of `INFO memory`: bytes allocated by Redis.
    pub used_memory: u64,
    /// `DBSIZE`: keys of the selected database.
    pub keys: u64,
}

/// Samples `used_memory` and `DBSIZE` in one pipeline.
pub async fn redis_footprint(conn: &mut RedisHandle) -> anyhow::Result<RedisFootprint> {
    let (info, keys): (String, u64) = redis::pipe()
        .cmd("INFO")
        .arg("memory")
        .cmd("DBSIZE")
        .query_async(conn)
        .await?;
    let used_memory = info_field(&info, "used_memory")
        .ok_or_else(|| anyhow::anyhow!("INFO memory has no used_memory"))?
        .parse()?;
    Ok(RedisFootprint { used_memory, keys })
}

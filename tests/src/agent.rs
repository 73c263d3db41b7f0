//! The `nodesat` agent under test and its JSON-lines output protocol.
//!
//! With `--output json` the agent prints one JSON object per line on stdout:
//! `{"type":"ready",...}` once its probes are attached, then
//! `{"type":"interval",...}` every interval, and a last interval with
//! `"final":true` when it gets SIGTERM or SIGINT. In between, it prints an
//! `{"type":"oom_kill",...}` line as soon as the kernel OOM-kills a process;
//! [`Agent`] collects those separately (see [`Agent::next_oom_kill`]). The
//! structs here hold only the fields the tests use; unknown fields and unknown
//! `type`s are ignored, and fields added with a signal default when absent
//! (or `null`): zero, empty, or `None` (e.g. [`CgroupReport::throttling`]
//! for cgroups without a CPU limit).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;

/// How long [`Agent::stop`] and drop wait after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent binary: `$NODESAT_BIN`, else `nodesat` next to the test binaries
/// (same target directory and profile), else `<workspace>/target/debug/nodesat`.
///
/// Panics, saying to build it, if none exists.
pub fn agent_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NODESAT_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "NODESAT_BIN={} does not exist",
            bin.display()
        );
        return bin;
    }
    // Integration tests run from <target>/<profile>/deps/.
    let beside_tests = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("nodesat")));
    let in_workspace = crate::workspace_root().join("target/debug/nodesat");
    let mut candidates: Vec<PathBuf> = beside_tests.into_iter().chain([in_workspace]).collect();
    candidates.dedup();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "agent binary not found (looked at {candidates:?}); \
                 run `cargo build -p nodesat` first, or set NODESAT_BIN"
            )
        })
}

/// A `Command` for the agent binary (see [`agent_bin`]), with the caller's
/// `NODESAT_*` configuration variables removed (see [`clear_agent_env`]).
pub fn agent_command() -> Command {
    let mut cmd = Command::new(agent_bin());
    clear_agent_env(&mut cmd);
    cmd
}

/// Removes the `NODESAT_*` variables (except `NODESAT_LOG_LEVEL`) that `cmd`
/// would inherit, so the agent's configuration comes from the test alone.
pub fn clear_agent_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let keep = name == "NODESAT_LOG_LEVEL";
        if !keep && name.to_string_lossy().starts_with("NODESAT_") {
            cmd.env_remove(name);
        }
    }
}

/// The `ready` line.
#[derive(Debug, Clone, Deserialize)]
pub struct Ready {
    /// The attached probes, as the agent describes them.
    #[serde(default)]
    pub probes: Vec<serde_json::Value>,
}

/// An `interval` line: one report.
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    /// Whether this is the last report, printed on SIGTERM/SIGINT.
    #[serde(rename = "final")]
    pub is_final: bool,
    pub time_unix_ns: u64,
    pub interval_ns: u64,
    pub cgroups: Vec<CgroupReport>,
    pub cpus: Vec<CpuReport>,
    pub probes: Vec<ProbeReport>,
    /// Node-wide totals of the interval (zero when absent).
    #[serde(default, deserialize_with = "null_as_default")]
    pub node: NodeTotals,
    /// Block request latency per disk and direction, for the disks with
    /// requests completed in the interval (empty when absent).
    #[serde(default, deserialize_with = "null_as_default")]
    pub disks: Vec<DiskReport>,
    /// Where signals with more than one possible source came from.
    #[serde(default, deserialize_with = "null_as_default")]
    pub sources: Sources,
    /// The cgroups beyond the agent's `--max-entities`, summed into one
    /// entry of kind `"other"`; `None` when none were left over (or absent).
    #[serde(default)]
    pub other: Option<Box<CgroupReport>>,
    /// How many cgroups were summed into [`Report::other`] (0 when absent).
    #[serde(default, deserialize_with = "null_as_default")]
    pub entities_overflow: usize,
    /// The programs' error counters that grew in the interval (empty when absent).
    #[serde(default, deserialize_with = "null_as_default")]
    pub kernel_errors: Vec<KernelErrorReport>,
    /// How full the programs' hashes of in-flight state were (empty when absent).
    #[serde(default, deserialize_with = "null_as_default")]
    pub maps: Vec<MapFill>,
}

/// One hash of in-flight state, in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MapFill {
    pub map: String,
    pub entries: u32,
    pub max_entries: u32,
}

/// One kernel error counter's growth, in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KernelErrorReport {
    pub probe: String,
    pub error: String,
    pub count: u64,
}

impl Report {
    /// The entry for the cgroup with v2 id `id`, if any.
    pub fn cgroup(&self, id: u64) -> Option<&CgroupReport> {
        self.cgroups.iter().find(|c| c.cgroup_id == id)
    }

    /// The probes implementing signal `probe` (e.g. `"runqueue"`).
    pub fn probes_for<'a>(&'a self, probe: &'a str) -> impl Iterator<Item = &'a ProbeReport> {
        self.probes.iter().filter(move |p| p.probe == probe)
    }

    /// The entry for CPU `cpu`, if any.
    pub fn cpu(&self, cpu: u32) -> Option<&CpuReport> {
        self.cpus.iter().find(|c| c.cpu == cpu)
    }

    /// The `disks` entries of the disk `device` (`"major:minor"`), one per
    /// direction with completed requests.
    pub fn disk_entries<'a>(&'a self, device: &'a str) -> impl Iterator<Item = &'a DiskReport> {
        self.disks.iter().filter(move |d| d.device == device)
    }

    /// Requests of disk `device` (`"major:minor"`) completed in the interval
    /// in direction `op` (`"read"`, `"write"`, `"other"`); 0 without an entry.
    pub fn disk_requests(&self, device: &str, op: &str) -> u64 {
        self.disk_entries(device)
            .filter(|d| d.op == op)
            .map(|d| d.requests)
            .sum()
    }
}

/// Block request latency (from issue to the driver to completion) of one
/// disk and direction over one interval, in a [`Report`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DiskReport {
    /// Device number, `"major:minor"` (e.g. `"7:0"`).
    pub device: String,
    /// The kernel's name for it (e.g. `"loop0"`), `None` when unknown.
    pub name: Option<String>,
    /// `"read"`, `"write"` or `"other"` (flushes, discards, ...).
    pub op: String,
    /// Requests completed.
    pub requests: u64,
    pub latency_sum_ns: u64,
    pub latency_p50_ns: u64,
    pub latency_p99_ns: u64,
    pub latency_max_ns: u64,
    /// Log2 latency histogram (32 slots; slot `s` counts latencies in
    /// `(2^(s-1), 2^s]` ns).
    #[serde(deserialize_with = "null_as_default")]
    pub histogram: Vec<u64>,
}

/// Where signals with more than one possible source came from, in a
/// [`Report`] (`None` when not said).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Sources {
    /// Source of [`CgroupReport::throttling`], e.g. `"cpu.stat"`.
    pub throttling: Option<String>,
}

/// One cgroup's figures in a [`Report`].
///
/// A cgroup appears when any of its signals saw activity in the interval;
/// the others are then zero (or absent, which reads as zero).
#[derive(Debug, Clone, Deserialize)]
pub struct CgroupReport {
    /// Its cgroup v2 id; 0 collects TCP retransmits of sockets that belong to
    /// no cgroup.
    pub cgroup_id: u64,
    /// Path relative to the v2 hierarchy's root, `None` when unknown.
    pub name: Option<String>,
    /// Who the cgroup is (flattened identity fields, each `None` when absent):
    /// `"pod_container"`, `"pod"`, `"container"`, `"systemd_unit"`,
    /// `"cgroup"` or `"other"`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Kubernetes pod UID (from the cgroup path).
    #[serde(default)]
    pub pod_uid: Option<String>,
    /// Pod name (from the kubelet's pod list).
    #[serde(default)]
    pub pod: Option<String>,
    /// Pod namespace (from the kubelet's pod list).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Container name in the pod spec (from the kubelet's pod list).
    #[serde(default)]
    pub container: Option<String>,
    /// Container runtime id (64 hex digits, without `runtime://`).
    #[serde(default)]
    pub container_id: Option<String>,
    /// Container runtime, e.g. `"containerd"`.
    #[serde(default)]
    pub runtime: Option<String>,
    /// Pod QoS class, e.g. `"burstable"`.
    #[serde(default)]
    pub qos: Option<String>,
    /// systemd unit, e.g. `"ssh.service"`.
    #[serde(default)]
    pub unit: Option<String>,
    /// The cgroup path the identity was derived from.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub runqueue: RunqueueStats,
    /// TCP retransmits of its sockets, by family and kind (empty when none).
    #[serde(default, deserialize_with = "null_as_default")]
    pub tcp_retransmits: Vec<TcpRetransmits>,
    /// Retransmit attempts of its sockets that failed before anything was sent, by family and
    /// error (empty when none, and on kernels before 6.17).
    #[serde(default, deserialize_with = "null_as_default")]
    pub tcp_retransmit_failures: Vec<TcpRetransmitFailures>,
    /// Processes of it the kernel OOM-killed.
    #[serde(default, deserialize_with = "null_as_default")]
    pub oom_kills: u64,
    /// Time its tasks spent blocked in iowait, ns.
    #[serde(default, deserialize_with = "null_as_default")]
    pub iowait_ns: u64,
    /// Its CFS bandwidth throttling (deltas of its `cpu.stat`): present for
    /// every cgroup with a CPU limit, `None` for the others.
    #[serde(default)]
    pub throttling: Option<Throttling>,
    /// Its pressure stall information (cgroup v2 `*.pressure` growth), `None`
    /// on v1-keyed nodes and without PSI.
    #[serde(default)]
    pub pressure: Option<Pressure>,
    /// Growth of its v2 `memory.events`, where it has the file.
    #[serde(default)]
    pub memory_events: Option<MemoryEvents>,
    /// Its tasks' memory reclaim stalls that ended in the interval (`reclaim` probe).
    #[serde(default)]
    pub reclaim_stalls: Option<StallDurations>,
}

/// A histogram of durations in a report: how many and their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct StallDurations {
    pub count: u64,
    pub sum_ns: u64,
}

/// The memory controller's event counts of a cgroup over one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct MemoryEvents {
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

impl CgroupReport {
    /// Its TCP retransmits of `family` (`"ipv4"`, `"ipv6"`) and `kind`
    /// (`"data"`, `"synack"`).
    pub fn retransmits(&self, family: &str, kind: &str) -> u64 {
        self.tcp_retransmits
            .iter()
            .filter(|r| r.family == family && r.kind == kind)
            .map(|r| r.count)
            .sum()
    }

    /// Its TCP retransmits of `kind` and `cause` (`"rto"`, `"fast"`, `"tlp"`,
    /// `"other"`, `"unknown"`), both families.
    pub fn retransmits_caused(&self, kind: &str, cause: &str) -> u64 {
        self.tcp_retransmits
            .iter()
            .filter(|r| r.kind == kind && r.cause == cause)
            .map(|r| r.count)
            .sum()
    }

    /// All its TCP retransmits.
    pub fn total_retransmits(&self) -> u64 {
        self.tcp_retransmits.iter().map(|r| r.count).sum()
    }
}

/// CFS bandwidth throttling of a cgroup over one interval, in a
/// [`CgroupReport`]: the growth of its `cpu.stat` counters.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Throttling {
    /// Enforcement periods that elapsed while it had runnable tasks.
    pub periods: u64,
    /// Periods in which it used up its quota and was throttled.
    pub throttled_periods: u64,
    /// Time it spent throttled, ns.
    pub throttled_ns: u64,
    /// `throttled_periods` ÷ `periods`, in percent.
    pub throttled_pct: f64,
}

/// TCP retransmits of one family and kind, in a [`CgroupReport`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TcpRetransmits {
    /// `"ipv4"` or `"ipv6"`.
    pub family: String,
    /// `"data"` (retransmitted segments), `"syn"` (a client's SYNs) or
    /// `"synack"` (SYN-ACKs a listener retransmitted).
    pub kind: String,
    /// `"rto"`, `"fast"`, `"tlp"`, `"other"` or `"unknown"` (empty from an agent
    /// that predates it).
    #[serde(default)]
    pub cause: String,
    pub count: u64,
}

/// Failed retransmit attempts of one family and error, in a [`CgroupReport`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TcpRetransmitFailures {
    pub family: String,
    /// `"EBUSY"`, `"EAGAIN"`, `"ENOMEM"`, `"EHOSTUNREACH"`, `"EINVAL"`.
    pub error: String,
    pub count: u64,
}

/// Node-wide totals of a [`Report`]: sums over all cgroups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct NodeTotals {
    #[serde(default, deserialize_with = "null_as_default")]
    pub tcp_retransmits: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub oom_kills: u64,
    /// The node's stall time (`/proc/pressure/*`), `None` without PSI.
    #[serde(default)]
    pub pressure: Option<Pressure>,
}

/// Stall time of one resource over one interval (growth of a PSI file's
/// `total=` counters), ns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Stall {
    pub some_ns: u64,
    pub full_ns: u64,
}

/// Pressure stall information of a cgroup or the node over one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Pressure {
    pub cpu: Stall,
    pub memory: Stall,
    pub io: Stall,
}

impl Pressure {
    /// The kernel's own totals (ns) in `dir`: `cpu<suffix>`, `memory<suffix>` and
    /// `io<suffix>` (`.pressure` in a cgroup v2 directory, `""` in /proc/pressure).
    pub fn read(dir: &std::path::Path, suffix: &str) -> std::io::Result<Pressure> {
        let read = |resource: &str| -> std::io::Result<Stall> {
            let path = dir.join(format!("{resource}{suffix}"));
            let text = std::fs::read_to_string(&path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            let total = |kind: &str| -> u64 {
                text.lines()
                    .find(|l| l.starts_with(kind))
                    .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("total=")))
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(0, |us| us * 1000)
            };
            Ok(Stall {
                some_ns: total("some "),
                full_ns: total("full "),
            })
        };
        Ok(Pressure {
            cpu: read("cpu")?,
            memory: read("memory")?,
            io: read("io")?,
        })
    }
}

/// An `oom_kill` line, printed as soon as the kernel OOM-killed a process.
#[derive(Debug, Clone, Deserialize)]
pub struct OomKill {
    pub time_unix_ns: u64,
    /// The killed process.
    pub pid: u32,
    pub comm: String,
    /// The killed process's cgroup v2 id.
    pub cgroup_id: u64,
    /// Its cgroup path relative to the v2 root, `None` when unknown.
    pub cgroup: Option<String>,
    /// `"memcg"`, `"global"`, `"cpuset"`, `"mempolicy"` or `"unknown"`.
    pub constraint: String,
    /// The cgroup whose limit was hit (path relative to the v2 root), for `"memcg"`.
    #[serde(default)]
    pub constraint_cgroup: Option<String>,
    /// `"kernel"` (the kernel's decision, probe `oom_constraint`) or `"inferred"` (empty
    /// from agents older than the field).
    #[serde(default)]
    pub constraint_source: String,
    pub oom_score_adj: i32,
    /// When the harness read the line (not part of the protocol).
    #[serde(skip, default = "Instant::now")]
    pub received: Instant,
}

/// The OOM kills `reports` counted on cgroup `id`, summed.
pub fn oom_kills_of(reports: &[Report], id: u64) -> u64 {
    reports
        .iter()
        .filter_map(|r| r.cgroup(id))
        .map(|c| c.oom_kills)
        .sum()
}

/// Deserializes `null` like an absent field: as `T::default()`.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Run-queue wait of a cgroup's tasks over one interval.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunqueueStats {
    pub events: u64,
    pub wait_ns: u64,
    pub waiting_tasks: f64,
    pub latency_p50_ns: u64,
    pub latency_p99_ns: u64,
    pub latency_max_ns: u64,
    /// Wait of every task that waited while one of this cgroup's ran on its CPU.
    #[serde(default)]
    pub caused_ns: u64,
    /// This cgroup's wait split by who ran meanwhile.
    #[serde(default)]
    pub culprits: Vec<Culprit>,
}

/// One culprit of a cgroup's run-queue wait.
#[derive(Debug, Clone, Deserialize)]
pub struct Culprit {
    pub cgroup_id: u64,
    pub culprit: String,
    pub wait_ns: u64,
}

/// One CPU's figures in a [`Report`].
#[derive(Debug, Clone, Deserialize)]
pub struct CpuReport {
    pub cpu: u32,
    pub runqueue_wait_ns: u64,
    pub runqueue_length: f64,
    /// Time tasks that blocked on this CPU spent in iowait, ns (measured by
    /// the agent's probes).
    #[serde(default, deserialize_with = "null_as_default")]
    pub iowait_ns: u64,
    /// The kernel's iowait of this CPU over the interval from `/proc/stat`,
    /// ns (time it was idle while tasks that blocked on it waited for I/O).
    #[serde(default, deserialize_with = "null_as_default")]
    pub proc_stat_iowait_ns: u64,
}

/// One probe's state in a [`Report`].
#[derive(Debug, Clone, Deserialize)]
pub struct ProbeReport {
    /// Signal it implements, e.g. `"runqueue"`.
    pub probe: String,
    /// Kernel hook, e.g. `"sched_switch"`.
    pub hook: String,
    /// `"tp_btf"`, `"raw_tracepoint"` or `"tracepoint"` (or another attach
    /// method the agent names); empty when it says none (`null`, e.g. for a
    /// probe that could not be attached at all).
    #[serde(deserialize_with = "null_as_default")]
    pub variant: String,
    pub attached: bool,
    pub error: Option<String>,
    pub run_count: u64,
    pub run_time_ns: u64,
    /// Events the kernel skipped the program for (it was already running on that CPU).
    #[serde(default)]
    pub recursion_misses: u64,
}

/// One line of the agent's stdout.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Ready(Ready),
    Interval(Report),
    OomKill(OomKill),
    /// Message types added later; ignored.
    #[serde(other)]
    Other,
}

/// What the stdout reader thread passes on.
#[derive(Debug)]
enum Event {
    Ready(Ready),
    Interval(Report),
    /// Passed on through its own channel (see [`Agent::next_oom_kill`]).
    OomKill(OomKill),
    /// A line that is not valid protocol JSON.
    Invalid {
        line: String,
        error: String,
    },
    /// Stdout closed (the agent exited).
    Closed,
}

/// Parses one stdout line; `None` for blank lines and unknown types.
fn parse_line(line: &str) -> Option<Event> {
    if line.trim().is_empty() {
        return None;
    }
    match serde_json::from_str::<Line>(line) {
        Ok(Line::Ready(ready)) => Some(Event::Ready(ready)),
        Ok(Line::Interval(report)) => Some(Event::Interval(report)),
        Ok(Line::OomKill(kill)) => Some(Event::OomKill(kill)),
        Ok(Line::Other) => None,
        Err(e) => Some(Event::Invalid {
            line: line.to_owned(),
            error: e.to_string(),
        }),
    }
}

/// What [`Agent::stop_and_collect`] gathered.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    /// The interval reports not taken with [`Agent::next_interval`] before,
    /// in order; the last one is the final report if one came.
    pub reports: Vec<Report>,
    /// The `oom_kill` events not taken before, in order.
    pub oom_kills: Vec<OomKill>,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

impl Stopped {
    /// The final report (`"final":true`), if one came.
    pub fn final_report(&self) -> Option<&Report> {
        self.reports.last().filter(|r| r.is_final)
    }

    /// Asserts the agent stopped as it should on SIGTERM: exit status 0, after a final
    /// report.
    #[track_caller]
    pub fn assert_clean_stop(&self) {
        assert!(
            self.status.success(),
            "agent exit status after SIGTERM: {}",
            self.status
        );
        assert!(
            self.final_report().is_some(),
            "a final report after SIGTERM"
        );
    }
}

/// The running agent (`nodesat run --output json ...`).
///
/// Its stdout is parsed on a thread, which queues interval reports and
/// `oom_kill` events separately: waiting for one never loses the other.
/// Its stderr is echoed line by line with a `[nodesat]` prefix (captured by
/// the test harness like the test's own output) and kept for
/// [`Agent::stderr`]. Dropping it sends SIGTERM, then SIGKILL after 10 s, and
/// reaps it.
pub struct Agent {
    /// `None` once reaped.
    child: Option<Child>,
    pid: u32,
    events: Receiver<Event>,
    oom_kills: Receiver<OomKill>,
    stderr: Arc<Mutex<String>>,
    stderr_done: Receiver<()>,
}

impl Agent {
    /// Starts `nodesat run --output json --interval <interval> <extra_args>`.
    pub fn start(interval: &str, extra_args: &[&str]) -> Self {
        let mut cmd = agent_command();
        cmd.args(["run", "--output", "json", "--interval", interval])
            .args(extra_args);
        Self::spawn(cmd)
    }

    /// Starts the agent with a prepared command (its stdio is replaced).
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: die_with_parent only calls prctl.
        unsafe { cmd.pre_exec(crate::process::die_with_parent) };
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the agent {cmd:?}: {e}"));
        eprintln!("started agent (pid {}): {cmd:?}", child.id());

        let (events_tx, events) = mpsc::channel();
        let (oom_kills_tx, oom_kills) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let sent = match parse_line(&line) {
                    Some(Event::OomKill(kill)) => oom_kills_tx.send(kill).is_ok(),
                    Some(event) => events_tx.send(event).is_ok(),
                    None => true,
                };
                if !sent {
                    return;
                }
            }
            let _ = events_tx.send(Event::Closed);
        });

        let stderr = Arc::new(Mutex::new(String::new()));
        let (done_tx, stderr_done) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let kept = Arc::clone(&stderr);
        thread::spawn(move || {
            echo_stderr(pipe, &kept);
            let _ = done_tx.send(());
        });

        Self {
            pid: child.id(),
            child: Some(child),
            events,
            oom_kills,
            stderr,
            stderr_done,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for the `ready` line. Panics on timeout, on exit, on an invalid
    /// line, or if an interval report comes first.
    #[track_caller]
    pub fn wait_ready(&mut self, timeout: Duration) -> Ready {
        match self.next_event(timeout, "the ready line") {
            Event::Ready(ready) => ready,
            Event::Interval(report) => {
                self.fail(&format!("got an interval report before ready: {report:?}"))
            }
            _ => unreachable!("next_event returns only ready and interval"),
        }
    }

    /// Waits for the next interval report. Panics on timeout, on exit or on
    /// an invalid line.
    #[track_caller]
    pub fn next_interval(&mut self, timeout: Duration) -> Report {
        match self.next_event(timeout, "an interval report") {
            Event::Interval(report) => report,
            Event::Ready(_) => self.fail("got a second ready line"),
            _ => unreachable!("next_event returns only ready and interval"),
        }
    }

    /// The interval reports received so far and not yet taken, in order,
    /// without waiting. Panics on an invalid line or a second ready line; if
    /// the agent exited, returns what came before (the next
    /// [`Agent::next_interval`] then panics).
    #[track_caller]
    pub fn take_intervals(&mut self) -> Vec<Report> {
        let mut reports = Vec::new();
        loop {
            match self.events.try_recv() {
                Ok(Event::Interval(report)) => reports.push(report),
                Ok(Event::Ready(_)) => self.fail("printed a second ready line"),
                Ok(Event::Invalid { line, error }) => {
                    self.fail(&format!("printed an invalid line ({error}): {line}"))
                }
                Ok(Event::OomKill(_)) => unreachable!("oom_kill events have their own channel"),
                // After Closed the channel is disconnected, which
                // next_interval reports as an exit.
                Ok(Event::Closed) | Err(_) => return reports,
            }
        }
    }

    /// Waits up to `timeout` for the next `oom_kill` event (one already
    /// queued returns at once); `None` if none came. Each event's
    /// [`OomKill::received`] says when its line was read, however late this
    /// is called.
    pub fn next_oom_kill(&mut self, timeout: Duration) -> Option<OomKill> {
        self.oom_kills.recv_timeout(timeout).ok()
    }

    /// The `oom_kill` events received so far and not yet taken, without
    /// waiting.
    pub fn take_oom_kills(&mut self) -> Vec<OomKill> {
        self.oom_kills.try_iter().collect()
    }

    /// Next ready or interval event; panics on anything else or on timeout.
    #[track_caller]
    fn next_event(&mut self, timeout: Duration, what: &str) -> Event {
        match self.events.recv_timeout(timeout) {
            Ok(event @ (Event::Ready(_) | Event::Interval(_))) => event,
            Ok(Event::Invalid { line, error }) => {
                self.fail(&format!("printed an invalid line ({error}): {line}"))
            }
            Ok(Event::OomKill(_)) => unreachable!("oom_kill events have their own channel"),
            Ok(Event::Closed) | Err(RecvTimeoutError::Disconnected) => {
                let status = match self.reap(Duration::from_secs(2)) {
                    Some(status) => status.to_string(),
                    None => "stdout closed".into(),
                };
                self.fail(&format!("exited ({status}) while waiting for {what}"))
            }
            Err(RecvTimeoutError::Timeout) => {
                self.fail(&format!("printed no {what} within {timeout:?}"))
            }
        }
    }

    /// Sends SIGTERM and waits up to 10 s for it to exit; returns its exit
    /// status and the final report (`"final":true`), if one came.
    #[track_caller]
    pub fn stop(self) -> (ExitStatus, Option<Report>) {
        self.stop_within(STOP_TIMEOUT)
    }

    /// Like [`Agent::stop`], but panics (after SIGKILLing it) if it does not
    /// exit within `timeout` of SIGTERM.
    #[track_caller]
    pub fn stop_within(self, timeout: Duration) -> (ExitStatus, Option<Report>) {
        let stopped = self.stop_and_collect_within(timeout);
        let final_report = stopped.reports.into_iter().rfind(|r| r.is_final);
        (stopped.status, final_report)
    }

    /// Like [`Agent::stop`], but returns everything it printed that was not
    /// taken yet: all interval reports (final included) and `oom_kill` events.
    #[track_caller]
    pub fn stop_and_collect(self) -> Stopped {
        self.stop_and_collect_within(STOP_TIMEOUT)
    }

    /// Like [`Agent::stop_and_collect`], but panics (after SIGKILLing it) if
    /// it does not exit within `timeout` of SIGTERM.
    #[track_caller]
    pub fn stop_and_collect_within(mut self, timeout: Duration) -> Stopped {
        self.signal(Signal::SIGTERM);
        let Some(status) = self.reap(timeout) else {
            self.signal(Signal::SIGKILL);
            self.reap(Duration::from_secs(2));
            self.fail(&format!(
                "did not exit within {timeout:?} of SIGTERM; killed it"
            ));
        };
        // It exited, so stdout is closed or about to be: drain what is left.
        let mut reports = Vec::new();
        loop {
            match self.events.recv_timeout(Duration::from_secs(2)) {
                Ok(Event::Interval(report)) => reports.push(report),
                Ok(Event::Invalid { line, error }) => {
                    self.fail(&format!("printed an invalid line ({error}): {line}"))
                }
                Ok(Event::Closed) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // The reader thread queues oom_kill events before it reports Closed.
        let oom_kills = self.take_oom_kills();
        let _ = self.stderr_done.recv_timeout(Duration::from_secs(2));
        Stopped {
            status,
            reports,
            oom_kills,
            stderr: self.stderr(),
        }
    }

    /// Sends `signal` to the agent (if it has not been reaped yet).
    pub fn signal(&self, signal: Signal) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// Waits up to `timeout` for the agent to exit, reaping it. `None` if it
    /// is still running.
    fn reap(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Panics with `msg` (the agent is cleaned up by Drop while unwinding).
    #[track_caller]
    fn fail(&self, msg: &str) -> ! {
        panic!("agent (pid {}) {msg}", self.pid())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal(Signal::SIGTERM);
        if self.reap(STOP_TIMEOUT).is_some() {
            return;
        }
        if let Some(mut child) = self.child.take() {
            eprintln!(
                "nodesat-tests: agent (pid {}) ignored SIGTERM for {STOP_TIMEOUT:?}; killing it",
                child.id()
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Echoes the agent's stderr as `[nodesat] <line>` and keeps a copy.
fn echo_stderr(pipe: impl Read, kept: &Mutex<String>) {
    for line in BufReader::new(pipe).lines() {
        let Ok(line) = line else { break };
        eprintln!("[nodesat] {line}");
        if let Ok(mut kept) = kept.lock() {
            kept.push_str(&line);
            kept.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_protocol_lines_ignoring_unknown_fields() {
        let ready = r#"{"type":"ready","probes":["runqueue"],"new":1}"#;
        assert!(matches!(parse_line(ready), Some(Event::Ready(r)) if r.probes.len() == 1));

        let interval =
            r#"{"type":"interval","final":false,"time_unix_ns":1,"interval_ns":2000000000,
            "cgroups":[{"cgroup_id":42,"name":"/nodesat-test-1-busy","future":{"x":1},
                "runqueue":{"events":10,"wait_ns":5,"waiting_tasks":1.5,"latency_p50_ns":1,
                    "latency_p99_ns":2,"latency_max_ns":3,"later":0}},
                {"cgroup_id":7,"name":null,"runqueue":{"events":0,"wait_ns":0,"waiting_tasks":0,
                    "latency_p50_ns":0,"latency_p99_ns":0,"latency_max_ns":0}}],
            "cpus":[{"cpu":0,"runqueue_wait_ns":9,"runqueue_length":2.5}],
            "probes":[{"probe":"runqueue","hook":"sched_switch","variant":"tp_btf","attached":true,
                "error":null,"run_count":3,"run_time_ns":4}],
            "memory":{"new_signal":true}}"#
                .replace('\n', " ");
        let Some(Event::Interval(report)) = parse_line(&interval) else {
            panic!("not parsed as an interval");
        };
        assert!(!report.is_final);
        let busy = report.cgroup(42).expect("cgroup 42");
        assert_eq!(busy.name.as_deref(), Some("/nodesat-test-1-busy"));
        assert_eq!(busy.runqueue.latency_p99_ns, 2);
        assert_eq!(report.cgroup(7).and_then(|c| c.name.clone()), None);
        assert_eq!(report.cpus[0].runqueue_length, 2.5);
        assert_eq!(report.probes_for("runqueue").count(), 1);
    }

    #[test]
    fn parses_retransmits_oom_kills_and_node_totals() {
        let interval = r#"{"type":"interval","final":true,"time_unix_ns":1,"interval_ns":2,
            "cgroups":[{"cgroup_id":42,"name":"/a","runqueue":{"events":0,"wait_ns":0,
                "waiting_tasks":0,"latency_p50_ns":0,"latency_p99_ns":0,"latency_max_ns":0},
                "tcp_retransmits":[{"family":"ipv4","kind":"data","count":3},
                    {"family":"ipv6","kind":"data","cause":"tlp","count":4},
                    {"family":"ipv4","kind":"synack","count":1,"new":0}],
                "oom_kills":2},
                {"cgroup_id":0,"name":null,"tcp_retransmits":[{"family":"ipv6","kind":"data","count":5}]},
                {"cgroup_id":7,"name":"/b","tcp_retransmits":null,"oom_kills":null}],
            "cpus":[],"probes":[],"node":{"tcp_retransmits":13,"oom_kills":2,"other":1}}"#
            .replace('\n', " ");
        let Some(Event::Interval(report)) = parse_line(&interval) else {
            panic!("not parsed as an interval");
        };
        let a = report.cgroup(42).expect("cgroup 42");
        assert_eq!(a.retransmits("ipv4", "data"), 3);
        assert_eq!(a.retransmits("ipv6", "data"), 4);
        assert_eq!(a.retransmits("ipv4", "synack"), 1);
        assert_eq!(a.retransmits_caused("data", "tlp"), 4);
        assert_eq!(a.retransmits_caused("data", ""), 3);
        assert_eq!(a.retransmits("ipv6", "synack"), 0);
        assert_eq!(a.total_retransmits(), 8);
        assert_eq!(a.oom_kills, 2);
        // Only TCP activity: no runqueue figures, no OOM kills.
        let none = report.cgroup(0).expect("cgroup 0");
        assert_eq!(none.runqueue.events, 0);
        assert_eq!((none.total_retransmits(), none.oom_kills), (5, 0));
        let b = report.cgroup(7).expect("cgroup 7");
        assert_eq!((b.total_retransmits(), b.oom_kills), (0, 0));
        assert_eq!(
            report.node,
            NodeTotals {
                tcp_retransmits: 13,
                oom_kills: 2,
                pressure: None,
            }
        );

        // Reports of an agent without the new signals still parse.
        let old = r#"{"type":"interval","final":false,"time_unix_ns":1,"interval_ns":2,
            "cgroups":[],"cpus":[],"probes":[]}"#
            .replace('\n', " ");
        let Some(Event::Interval(report)) = parse_line(&old) else {
            panic!("not parsed as an interval");
        };
        assert_eq!(report.node, NodeTotals::default());
    }

    #[test]
    fn parses_iowait_throttling_and_disks() {
        let mut histogram = vec![0u64; 32];
        histogram[17] = 90;
        histogram[20] = 10;
        let interval = format!(
            r#"{{"type":"interval","final":false,"time_unix_ns":1,"interval_ns":2,
            "cgroups":[{{"cgroup_id":42,"name":"/l","iowait_ns":0,
                "throttling":{{"periods":20,"throttled_periods":19,"throttled_ns":1600000000,
                    "throttled_pct":95.0,"burst":0}}}},
                {{"cgroup_id":43,"name":"/x","iowait_ns":1234,"throttling":null}},
                {{"cgroup_id":44,"name":"/u"}}],
            "cpus":[{{"cpu":0,"runqueue_wait_ns":9,"runqueue_length":2.5,"iowait_ns":7,
                "proc_stat_iowait_ns":10000000}},{{"cpu":1,"runqueue_wait_ns":0,"runqueue_length":0}}],
            "disks":[{{"device":"7:0","name":"loop0","op":"write","requests":100,
                "latency_sum_ns":5,"latency_p50_ns":131072,"latency_p99_ns":1048576,
                "latency_max_ns":900000,"histogram":{histogram:?}}},
                {{"device":"7:0","name":null,"op":"other","requests":3,"latency_sum_ns":1,
                "latency_p50_ns":1,"latency_p99_ns":1,"latency_max_ns":1,"histogram":null}},
                {{"device":"254:0","name":"vda","op":"read","requests":2,"latency_sum_ns":1,
                "latency_p50_ns":1,"latency_p99_ns":1,"latency_max_ns":1,"histogram":[]}}],
            "sources":{{"throttling":"cpu.stat","other":"x"}},
            "probes":[]}}"#
        )
        .replace('\n', " ");
        let Some(Event::Interval(report)) = parse_line(&interval) else {
            panic!("not parsed as an interval");
        };
        let limited = report.cgroup(42).expect("cgroup 42");
        assert_eq!(
            limited.throttling,
            Some(Throttling {
                periods: 20,
                throttled_periods: 19,
                throttled_ns: 1_600_000_000,
                throttled_pct: 95.0
            })
        );
        assert_eq!(report.cgroup(43).map(|c| c.iowait_ns), Some(1234));
        assert!(report.cgroup(43).unwrap().throttling.is_none());
        let unlimited = report.cgroup(44).expect("cgroup 44");
        assert_eq!(
            (unlimited.iowait_ns, unlimited.throttling.is_none()),
            (0, true)
        );
        let cpu0 = report.cpu(0).expect("cpu 0");
        assert_eq!((cpu0.iowait_ns, cpu0.proc_stat_iowait_ns), (7, 10_000_000));
        let cpu1 = report.cpu(1).expect("cpu 1");
        assert_eq!((cpu1.iowait_ns, cpu1.proc_stat_iowait_ns), (0, 0));
        assert!(report.cpu(2).is_none());
        assert_eq!(report.disk_entries("7:0").count(), 2);
        assert_eq!(report.disk_requests("7:0", "write"), 100);
        assert_eq!(report.disk_requests("7:0", "other"), 3);
        assert_eq!(report.disk_requests("7:0", "read"), 0);
        assert_eq!(report.disk_requests("254:0", "read"), 2);
        let write = report
            .disk_entries("7:0")
            .find(|d| d.op == "write")
            .unwrap();
        assert_eq!(write.name.as_deref(), Some("loop0"));
        assert_eq!(write.histogram, histogram);
        assert_eq!(write.latency_p99_ns, 1_048_576);
        assert!(report.disk_entries("7:0").any(|d| d.histogram.is_empty()));
        assert_eq!(report.sources.throttling.as_deref(), Some("cpu.stat"));

        // Reports without these signals still parse, as all zero / none.
        let old = r#"{"type":"interval","final":false,"time_unix_ns":1,"interval_ns":2,
            "cgroups":[{"cgroup_id":1,"name":"/"}],"cpus":[{"cpu":0,"runqueue_wait_ns":0,
            "runqueue_length":0}],"probes":[],"disks":null,"sources":null}"#
            .replace('\n', " ");
        let Some(Event::Interval(report)) = parse_line(&old) else {
            panic!("not parsed as an interval");
        };
        assert!(report.disks.is_empty());
        assert_eq!(report.sources, Sources::default());
        assert_eq!(report.cgroups[0].iowait_ns, 0);
        assert!(report.cgroups[0].throttling.is_none());
        assert_eq!(report.cpus[0].proc_stat_iowait_ns, 0);
    }

    #[test]
    fn parses_identity_fields_other_and_overflow() {
        let interval = r#"{"type":"interval","final":false,"time_unix_ns":1,"interval_ns":2,
            "cgroups":[{"cgroup_id":42,"name":"/kubepods.slice/p.slice/c.scope",
                "kind":"pod_container","pod_uid":"u","pod":"web-1","namespace":"shop",
                "container":"app","container_id":"abc","runtime":"containerd",
                "qos":"burstable","path":"/kubepods.slice/p.slice/c.scope"},
                {"cgroup_id":43,"name":"/system.slice/ssh.service","kind":"systemd_unit",
                "unit":"ssh.service","path":"/system.slice/ssh.service"}],
            "other":{"cgroup_id":0,"name":null,"kind":"other","runqueue":{"events":5,
                "wait_ns":1,"waiting_tasks":0.5,"latency_p50_ns":1,"latency_p99_ns":1,
                "latency_max_ns":1}},
            "entities_overflow":7,"cpus":[],"probes":[]}"#
            .replace('\n', " ");
        let Some(Event::Interval(report)) = parse_line(&interval) else {
            panic!("not parsed as an interval");
        };
        let c = report.cgroup(42).expect("cgroup 42");
        assert_eq!(c.kind.as_deref(), Some("pod_container"));
        assert_eq!(
            (
                c.pod.as_deref(),
                c.namespace.as_deref(),
                c.container.as_deref()
            ),
            (Some("web-1"), Some("shop"), Some("app"))
        );
        assert_eq!(c.container_id.as_deref(), Some("abc"));
        assert_eq!(c.runtime.as_deref(), Some("containerd"));
        assert_eq!(c.qos.as_deref(), Some("burstable"));
        assert_eq!(c.unit, None);
        let unit = report.cgroup(43).expect("cgroup 43");
        assert_eq!(unit.unit.as_deref(), Some("ssh.service"));
        assert_eq!(unit.pod, None);
        let other = report.other.as_ref().expect("other");
        assert_eq!(other.kind.as_deref(), Some("other"));
        assert_eq!(other.runqueue.events, 5);
        assert_eq!(report.entities_overflow, 7);

        // Without the fields (older agents, or nothing left over).
        let old = r#"{"type":"interval","final":false,"time_unix_ns":1,"interval_ns":2,
            "cgroups":[{"cgroup_id":1,"name":"/"}],"cpus":[],"probes":[],"other":null}"#
            .replace('\n', " ");
        let Some(Event::Interval(report)) = parse_line(&old) else {
            panic!("not parsed as an interval");
        };
        assert!(report.other.is_none());
        assert_eq!(report.entities_overflow, 0);
        assert_eq!(report.cgroups[0].kind, None);
    }

    #[test]
    fn parses_oom_kill_lines() {
        let line = r#"{"type":"oom_kill","time_unix_ns":17,"pid":1234,"comm":"nodesat-load",
            "cgroup_id":42,"cgroup":"/nodesat-test-1-mem/ctr","constraint":"memcg",
            "constraint_cgroup":"/nodesat-test-1-mem","constraint_source":"kernel",
            "oom_score_adj":-500,"total_vm_kb":1}"#
            .replace('\n', " ");
        let Some(Event::OomKill(kill)) = parse_line(&line) else {
            panic!("not parsed as an oom_kill");
        };
        assert_eq!(kill.pid, 1234);
        assert_eq!(kill.comm, "nodesat-load");
        assert_eq!(kill.cgroup_id, 42);
        assert_eq!(kill.cgroup.as_deref(), Some("/nodesat-test-1-mem/ctr"));
        assert_eq!(kill.constraint, "memcg");
        assert_eq!(
            kill.constraint_cgroup.as_deref(),
            Some("/nodesat-test-1-mem")
        );
        assert_eq!(kill.constraint_source, "kernel");
        assert_eq!(kill.oom_score_adj, -500);
        assert!(kill.received.elapsed() < Duration::from_secs(5));

        let unknown = r#"{"type":"oom_kill","time_unix_ns":1,"pid":1,"comm":"x","cgroup_id":0,
            "cgroup":null,"constraint":"global","oom_score_adj":0}"#
            .replace('\n', " ");
        assert!(matches!(parse_line(&unknown), Some(Event::OomKill(k)) if k.cgroup.is_none()));
        // A required field missing is a protocol error.
        assert!(matches!(
            parse_line(r#"{"type":"oom_kill","pid":1}"#),
            Some(Event::Invalid { .. })
        ));
    }

    #[test]
    fn ignores_unknown_types_and_flags_garbage() {
        assert!(parse_line(r#"{"type":"hello","x":1}"#).is_none());
        assert!(parse_line("   ").is_none());
        assert!(matches!(
            parse_line("starting up..."),
            Some(Event::Invalid { .. })
        ));
        assert!(matches!(
            parse_line(r#"{"type":"interval","final":true}"#),
            Some(Event::Invalid { .. })
        ));
    }
}

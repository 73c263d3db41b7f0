//! Test harness for the nodesat agent's integration tests.
//!
//! The integration tests in `tests/tests/` need root, cgroups and the agent
//! binary. This crate gives them:
//!
//! * [`privileged`] / [`skip_if_unprivileged`]: a gate that skips a test with a
//!   printed reason when it cannot run here, or fails it when
//!   `NODESAT_REQUIRE_PRIVILEGED=1` is set (CI), so tests never skip silently
//!   there;
//! * [`TestCgroup`]: a uniquely named cgroup that is removed again on drop,
//!   on pure cgroup v2 machines as well as on hybrid v1/v2 ones, optionally
//!   with a memory limit ([`memory_controller`] says whether one can be set)
//!   or a CPU quota ([`cpu_controller`]), and its `cpu.stat` counters;
//! * [`NestedCgroup`]: a cgroup at a path of the test's choosing (e.g. a
//!   kubelet-shaped `kubepods.slice/.../cri-containerd-<id>.scope`) that
//!   removes exactly the directories it created;
//! * [`TestProcess`] / [`spawn_in`]: a child process that starts inside a
//!   [`TestCgroup`] or [`NestedCgroup`] and is killed and reaped on drop;
//!   [`vm_rss_kib`]: a process's resident memory;
//! * [`HttpServer`]: a tiny HTTP server answering one path with a fixed body
//!   (e.g. a fake kubelet's `/pods`);
//! * [`Agent`]: the `nodesat` agent running with `--output json`, with its
//!   JSON-lines reports parsed into [`Report`]s and its `oom_kill` events
//!   into [`OomKill`]s;
//! * [`NftTable`]: an nftables table (e.g. rules dropping packets) that is
//!   deleted on drop ([`nft_available`] says whether nftables can be used);
//! * [`tcp_retrans_segs`] and friends: the kernel's TCP counters and sockets;
//! * [`LoopDevice`]: a loop block device on a sparse file on disk, detached
//!   and deleted on drop, with its `/sys/block` counters ([`BlockStat`]);
//!   [`proc_stat_cpu_times`]: the kernel's per-CPU busy, idle and iowait
//!   time;
//! * [`trace::BpfStats`] / [`trace::TraceInstance`]: the kernel's own count of BPF program
//!   runs, and a private tracefs instance recording a tracepoint's events;
//! * the `nodesat-load` binary (see [`load_bin!`]): CPU, TCP, memory and
//!   direct-I/O load generators.
//!
//! Every wait in the harness is bounded.
//!
//! Running them (as root; the tests must run one at a time):
//!
//! ```text
//! cargo build -p nodesat
//! NODESAT_REQUIRE_PRIVILEGED=1 cargo test -p nodesat-tests -- --test-threads=1
//! ```
//!
//! `NODESAT_BIN` overrides which agent binary is tested. The TCP retransmit
//! test also needs the `nft` tool (package `nftables`), the OOM test a
//! memory controller (v1 `memory` hierarchy, or `memory` in the v2 root's
//! `cgroup.controllers`), the throttling test a CPU controller (likewise
//! `cpu`), and the iowait test `losetup` (package `mount`) and the loop
//! driver; without them they skip (fail with `NODESAT_REQUIRE_PRIVILEGED=1`).

pub mod agent;
pub mod block;
pub mod cgroup;
pub mod clocks;
pub mod http;
pub mod nested;
pub mod net;
pub mod nft;
pub mod process;
pub mod prometheus;
pub mod trace;

use std::path::Path;

pub use agent::{
    Agent, CgroupReport, CpuReport, DiskReport, MemoryEvents, NodeTotals, OomKill, Pressure,
    ProbeReport, Ready, Report, RunqueueStats, Sources, Stall, StallDurations, Stopped,
    TcpRetransmitFailures, TcpRetransmits, Throttling, agent_bin, agent_command, clear_agent_env,
    oom_kills_of,
};
pub use block::{
    BlockStat, CpuTimes, DioWriteSummary, LoopDevice, proc_stat_cpu_times, proc_stat_iowait_ns,
};
pub use cgroup::{CgroupDirs, CpuController, CpuStat, MemoryController, TestCgroup};
pub use http::{HttpServer, Reply, ScriptedServer, free_port, http_get};
pub use nested::NestedCgroup;
pub use net::{
    NetnsPair, Side, active_tcp_sockets, proc_net_counter, tcp_retrans_segs, wait_tcp_quiet,
};
pub use nft::{NftRule, NftTable, nft_available};
pub use process::{
    Sysctl, TestProcess, logged_output_within, output_within, proc_status_kib, spawn_in,
    try_output_within, vm_hwm_kib, vm_rss_kib,
};

/// Environment variable that turns "skip" into "fail" for privileged tests.
pub const REQUIRE_PRIVILEGED_ENV: &str = "NODESAT_REQUIRE_PRIVILEGED";

/// Path of the `nodesat-load` load generator built by this package.
///
/// Only usable from this package's integration tests (Cargo sets
/// `CARGO_BIN_EXE_nodesat-load` for them at compile time).
#[macro_export]
macro_rules! load_bin {
    () => {
        env!("CARGO_BIN_EXE_nodesat-load")
    };
}

/// Whether privileged tests can run here: `Ok(())`, or the reason they cannot.
///
/// They need to run as root (euid 0) with cgroups mounted at `/sys/fs/cgroup`,
/// including a cgroup v2 hierarchy (pure v2, or hybrid with the v2 hierarchy
/// at `/sys/fs/cgroup/unified`).
pub fn privileged() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(format!(
            "needs root (running as euid {})",
            nix::unistd::geteuid()
        ));
    }
    if !Path::new("/sys/fs/cgroup").is_dir() {
        return Err("/sys/fs/cgroup is missing".into());
    }
    cgroup::Hierarchies::detect().map(|_| ())
}

/// Gate for a privileged test: returns `true` when the test must return early.
///
/// When [`privileged`] fails, prints `skipping <test>: <reason>` and returns
/// `true`, unless `NODESAT_REQUIRE_PRIVILEGED=1` is set, in which case it
/// panics with the reason.
///
/// ```no_run
/// # fn t() {
/// if nodesat_tests::skip_if_unprivileged("my_test") {
///     return;
/// }
/// # }
/// ```
#[track_caller]
pub fn skip_if_unprivileged(test: &str) -> bool {
    match privileged() {
        Ok(()) => false,
        Err(reason) if require_privileged() => {
            panic!("{test}: {reason} ({REQUIRE_PRIVILEGED_ENV}=1 forbids skipping)")
        }
        Err(reason) => {
            eprintln!("skipping {test}: {reason}");
            true
        }
    }
}

/// Prints `skipping <test>: <reason>` for a test-specific reason to skip, and
/// returns `true`, unless `NODESAT_REQUIRE_PRIVILEGED=1` is set (then panics).
#[track_caller]
pub fn skip(test: &str, reason: &str) -> bool {
    if require_privileged() {
        panic!("{test}: {reason} ({REQUIRE_PRIVILEGED_ENV}=1 forbids skipping)");
    }
    eprintln!("skipping {test}: {reason}");
    true
}

/// [`skip`]s the test (and returns `true`) when one of `tools` (e.g. `["ip", "nft"]`) does
/// not run with `-V`.
#[track_caller]
pub fn skip_without_tools(test: &str, tools: &[&str]) -> bool {
    for tool in tools {
        if std::process::Command::new(tool).arg("-V").output().is_err() {
            return skip(test, &format!("no `{tool}` on PATH"));
        }
    }
    false
}

fn require_privileged() -> bool {
    std::env::var(REQUIRE_PRIVILEGED_ENV).is_ok_and(|v| v == "1")
}

/// Where test cgroups get their memory limit from, or why they cannot get
/// one here (see [`cgroup::Hierarchies::memory_controller`]).
pub fn memory_controller() -> Result<MemoryController, String> {
    cgroup::Hierarchies::detect()?.memory_controller()
}

/// Where test cgroups get their CPU quota from, or why they cannot get one
/// here (see [`cgroup::Hierarchies::cpu_controller`]).
pub fn cpu_controller() -> Result<CpuController, String> {
    cgroup::Hierarchies::detect()?.cpu_controller()
}

/// Number of online CPUs (not limited by this process's affinity or quota).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

/// The CPUs this process may run on (its affinity mask, which a cpuset or
/// `taskset` narrows), in ascending order; all online CPUs when the mask
/// cannot be read. Tests that pin a task or load every CPU use these, not
/// `0..online_cpus()`: CPU numbers need not start at 0 or be contiguous.
pub fn allowed_cpus() -> Vec<u32> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid, writable cpu_set_t of `size` bytes.
    let rc = unsafe { libc::sched_getaffinity(0, size, &mut set) };
    let cpus: Vec<u32> = if rc == 0 {
        (0..libc::CPU_SETSIZE as u32)
            // SAFETY: the index is below CPU_SETSIZE.
            .filter(|&c| unsafe { libc::CPU_ISSET(c as usize, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        (0..online_cpus() as u32).collect()
    } else {
        cpus
    }
}

/// Whether process `pid` exists and has not exited: `false` for a zombie,
/// e.g. a killed test process whose parent has not reaped it yet.
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which may contain ")".
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The workspace root (parent of this package's directory).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("package directory has a parent")
}

//! Pressure stall information: each reported cgroup's `pressure` must be the growth of its own
//! cgroup v2 `cpu.pressure`, `memory.pressure` and `io.pressure` `total=` counters, and the
//! node's that of `/proc/pressure/*`.
//!
//! Four cgroups, loaded for 6 s while the agent runs with a 2 s interval:
//! - `psi-cpu`: three busy loops pinned to CPU 0 (each waits for the other two: cpu stalls);
//! - `psi-idle`: a task that wakes every 100 ms for 100 µs (reported, barely stalled);
//! - `psi-mem`: a task reading a 96 MiB file through the page cache again and again, its
//!   memory held to 32 MiB (v2 `memory.high` where the memory controller is v2, else the v1
//!   limit, hybrid hosts): the cgroup reclaims all the time (memory stalls);
//! - `psi-io`: `O_DIRECT|O_DSYNC` writes to a loop device (io stalls).
//!
//! The files are read right after the agent's ready line and right after it exited; nothing
//! runs in the cgroups outside that stretch, so the agent's figures summed over its reports
//! must equal the files' growth (within 5% or 20 ms: the kernel's totals move between the
//! agent's reads and the test's only by what was in flight). Where the `reclaim` probe
//! attaches, `psi-mem` must show reclaim stalls and the spinners and the sleeper none.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use nodesat_tests::{
    Agent, LoopDevice, MemoryController, Pressure, Report, Stall, TestCgroup, load_bin,
    memory_controller, skip, skip_if_unprivileged, spawn_in,
};

const TEST: &str = "pressure_matches_each_cgroups_files";
const INTERVAL: &str = "2s";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the loads run.
const RUN: Duration = Duration::from_secs(6);
/// The file `psi-mem` reads, and the memory it may keep.
const FILE_BYTES: usize = 96 << 20;
const MEMORY_BYTES: u64 = 32 << 20;
/// Allowed gap between the agent's sum and the file's growth.
const TOLERANCE_PCT: u64 = 5;
const TOLERANCE_NS: u64 = 20_000_000;

/// The files' totals (see [`Pressure::read`]).
fn read_pressure(dir: &Path, suffix: &str) -> Pressure {
    Pressure::read(dir, suffix).unwrap_or_else(|e| panic!("{e}"))
}

fn growth(after: &Pressure, before: &Pressure) -> Pressure {
    let d = |a: Stall, b: Stall| Stall {
        some_ns: a.some_ns - b.some_ns,
        full_ns: a.full_ns - b.full_ns,
    };
    Pressure {
        cpu: d(after.cpu, before.cpu),
        memory: d(after.memory, before.memory),
        io: d(after.io, before.io),
    }
}

/// A cgroup's pressure summed over the reports, and in how many it was present.
fn summed(reports: &[Report], id: u64) -> (Pressure, usize) {
    let mut sum = Pressure::default();
    let mut n = 0;
    for p in reports
        .iter()
        .filter_map(|r| r.cgroup(id))
        .filter_map(|c| c.pressure)
    {
        n += 1;
        for (s, x) in [
            (&mut sum.cpu, p.cpu),
            (&mut sum.memory, p.memory),
            (&mut sum.io, p.io),
        ] {
            s.some_ns += x.some_ns;
            s.full_ns += x.full_ns;
        }
    }
    (sum, n)
}

fn close(agent: u64, kernel: u64) -> bool {
    let diff = agent.abs_diff(kernel);
    diff <= TOLERANCE_NS || diff * 100 <= kernel * TOLERANCE_PCT
}

fn assert_matches(what: &str, agent: &Pressure, kernel: &Pressure) {
    for (resource, a, k) in [
        ("cpu", agent.cpu, kernel.cpu),
        ("memory", agent.memory, kernel.memory),
        ("io", agent.io, kernel.io),
    ] {
        assert!(
            close(a.some_ns, k.some_ns) && close(a.full_ns, k.full_ns),
            "{what}: {resource} stalls: nodesat {a:?}, the file's growth {k:?}"
        );
    }
}

/// A file of `bytes` under cargo's scratch directory (on disk: page cache that can be
/// reclaimed), written and then dropped from the page cache so that the reader's cgroup is
/// charged for every page it reads.
fn cold_file(bytes: usize) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).expect("temp file");
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..bytes / chunk.len() {
        f.write_all(&chunk).expect("write");
    }
    f.as_file().sync_all().expect("fsync");
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd; advice only.
    let rc =
        unsafe { libc::posix_fadvise(f.as_file().as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise DONTNEED");
    f
}

/// Holds `cgroup` to `bytes` of memory: `memory.high` where the memory controller is v2 (it
/// throttles and reclaims, never kills), else the v1 limit (clean page cache is reclaimed
/// first; the reader's own memory is far below it).
fn hold_memory(cgroup: &TestCgroup, bytes: u64) {
    match memory_controller() {
        Ok(MemoryController::V2(_)) => {
            cgroup
                .set_memory_limit(4 * bytes)
                .expect("enable the memory controller");
            fs::write(cgroup.v2_path().join("memory.high"), bytes.to_string())
                .expect("memory.high");
        }
        Ok(MemoryController::V1(_)) => cgroup.set_memory_limit(bytes).expect("v1 memory limit"),
        Err(e) => panic!("no memory controller: {e}"),
    }
}

#[test]
fn pressure_matches_each_cgroups_files() {
    if skip_if_unprivileged(TEST) {
        return;
    }
    if !Path::new("/proc/pressure/cpu").exists() {
        skip(TEST, "no /proc/pressure: kernel without PSI");
        return;
    }
    if let Err(e) = memory_controller() {
        skip(TEST, &e);
        return;
    }
    let cpu = TestCgroup::create("psi-cpu").expect("cgroup psi-cpu");
    let idle = TestCgroup::create("psi-idle").expect("cgroup psi-idle");
    let mem = TestCgroup::create("psi-mem").expect("cgroup psi-mem");
    let io = TestCgroup::create("psi-io").expect("cgroup psi-io");
    if !cpu.v2_path().join("cpu.pressure").exists() {
        skip(TEST, "no cpu.pressure in the v2 cgroups (psi=0?)");
        return;
    }
    let Some(device) = LoopDevice::for_test(TEST, false) else {
        return;
    };
    hold_memory(&mem, MEMORY_BYTES);
    let file = cold_file(FILE_BYTES);

    let mut agent = Agent::start(INTERVAL, &[]);
    agent.wait_ready(READY_TIMEOUT);
    let groups = [
        ("psi-cpu", &cpu),
        ("psi-idle", &idle),
        ("psi-mem", &mem),
        ("psi-io", &io),
    ];
    let before: Vec<Pressure> = groups
        .iter()
        .map(|(_, g)| read_pressure(g.v2_path(), ".pressure"))
        .collect();
    let node_before = read_pressure(Path::new("/proc/pressure"), "");

    let mut loads = Vec::new();
    for _ in 0..3 {
        let mut cmd = Command::new(load_bin!());
        cmd.args(["spin", "--cpu", "0"]);
        loads.push(spawn_in(&cpu, cmd).expect("spinner"));
    }
    let mut cmd = Command::new(load_bin!());
    cmd.args(["sleeper", "--period-ms", "100", "--work-us", "100"]);
    loads.push(spawn_in(&idle, cmd).expect("sleeper"));
    let mut cmd = Command::new(load_bin!());
    cmd.args(["read-loop", "--path"])
        .arg(file.path())
        .stdout(Stdio::null());
    loads.push(spawn_in(&mem, cmd).expect("read-loop"));
    let mut cmd = Command::new(load_bin!());
    cmd.args(["dio-write", "--path"])
        .arg(device.path())
        .args(["--seconds", &RUN.as_secs().to_string(), "--block", "262144"])
        .stdout(Stdio::null());
    let mut writer = spawn_in(&io, cmd).expect("dio-write");

    thread::sleep(RUN);
    drop(loads);
    let _ = writer.wait_within(Duration::from_secs(10));
    drop(writer);
    thread::sleep(Duration::from_millis(300));
    let stopped = agent.stop_and_collect();
    stopped.assert_clean_stop();
    let after: Vec<Pressure> = groups
        .iter()
        .map(|(_, g)| read_pressure(g.v2_path(), ".pressure"))
        .collect();
    let node_after = read_pressure(Path::new("/proc/pressure"), "");

    let mut agent_sums = Vec::new();
    for (i, (name, g)) in groups.iter().enumerate() {
        let kernel = growth(&after[i], &before[i]);
        let (sum, reports) = summed(&stopped.reports, g.id());
        eprintln!(
            "{name} (id {}): in {reports} of {} reports; nodesat {sum:?}; files {kernel:?}",
            g.id(),
            stopped.reports.len()
        );
        assert!(reports > 0, "{name} has no pressure in any report");
        assert_matches(name, &sum, &kernel);
        agent_sums.push(sum);
    }
    let [cpu_sum, idle_sum, mem_sum, io_sum] = agent_sums[..] else {
        unreachable!()
    };
    assert!(
        cpu_sum.cpu.some_ns >= RUN.as_nanos() as u64 / 2,
        "three spinners on one CPU stalled only {cpu_sum:?}"
    );
    assert!(
        idle_sum.cpu.some_ns * 10 < cpu_sum.cpu.some_ns,
        "the idle cgroup's cpu stall {idle_sum:?} is not far below the spinners' {cpu_sum:?}"
    );
    assert!(
        mem_sum.memory.some_ns > 0,
        "reading 96 MiB through 32 MiB of memory stalled nothing: {mem_sum:?}"
    );
    assert!(
        io_sum.io.some_ns >= RUN.as_nanos() as u64 / 4,
        "synchronous writes stalled on io only {io_sum:?}"
    );

    // The reclaim probe (where it attaches): the reader over its limit reclaims, the spinners
    // and the sleeper do not.
    let attached = stopped
        .reports
        .iter()
        .flat_map(|r| r.probes.iter())
        .any(|p| p.probe == "reclaim" && p.attached);
    let stalls = |g: &TestCgroup| -> (u64, u64) {
        stopped
            .reports
            .iter()
            .filter_map(|r| r.cgroup(g.id()).and_then(|c| c.reclaim_stalls))
            .fold((0, 0), |(n, s), d| (n + d.count, s + d.sum_ns))
    };
    eprintln!(
        "reclaim probe attached: {attached}; stalls (count, ns): psi-mem {:?}, psi-cpu {:?}, psi-idle {:?}, psi-io {:?}",
        stalls(&mem),
        stalls(&cpu),
        stalls(&idle),
        stalls(&io)
    );
    if attached {
        assert!(stalls(&mem).0 > 0, "no reclaim stall on psi-mem");
        for (name, g) in [("psi-cpu", &cpu), ("psi-idle", &idle)] {
            assert_eq!(stalls(g).0, 0, "{name} reclaimed");
        }
    }

    let node_kernel = growth(&node_after, &node_before);
    let mut node = Pressure::default();
    for p in stopped.reports.iter().filter_map(|r| r.node.pressure) {
        node.cpu.some_ns += p.cpu.some_ns;
        node.memory.some_ns += p.memory.some_ns;
        node.io.some_ns += p.io.some_ns;
    }
    eprintln!("node: nodesat {node:?}; /proc/pressure {node_kernel:?}");
    // The agent's node figures start at its baseline (before the ready line) and end at its
    // last read; the test's at the ready line and after the exit; whatever else runs on the
    // machine stalls in both gaps: within 20%.
    for (resource, a, k) in [
        ("cpu", node.cpu.some_ns, node_kernel.cpu.some_ns),
        ("io", node.io.some_ns, node_kernel.io.some_ns),
    ] {
        assert!(
            k > 0 && a.abs_diff(k) * 100 <= k * 20,
            "node {resource} some: nodesat {a} ns, /proc/pressure grew {k} ns"
        );
    }
}

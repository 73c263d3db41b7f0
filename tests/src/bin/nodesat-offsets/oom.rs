//! An OOM kill whose victim task is not its process's main thread, so that the victim's
//! thread id, process id and command name all differ from what a misread field would give.
//!
//! The victim process sets its `oom_score_adj`, starts a thread that names itself
//! (`PR_SET_NAME`), then ends its main thread (`SYS_exit`, which ends only the calling thread).
//! The kernel picks the process (its zombie leader still lists it) and, since the leader has
//! no memory map any more, marks the live thread (`find_lock_task_mm`) as the victim: the
//! mark_victim tracepoint gets that thread.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nodesat_tests::{NestedCgroup, TestCgroup, spawn_in};

/// The victim thread's name (at most 15 bytes: `TASK_COMM_LEN` - 1).
pub const THREAD_NAME: &str = "nsat-oom-victim";
/// Its process's `oom_score_adj`.
pub const SCORE_ADJ: i32 = 617;
/// The memory limit of its cgroup.
pub const LIMIT: u64 = 32 << 20;
/// What its thread touches: far beyond the limit.
const ALLOC: usize = 256 << 20;
const PAGE: usize = 4096;
/// Longest the victim may take to be killed once told to allocate.
const DEATH_TIMEOUT: Duration = Duration::from_secs(60);

/// Helper mode `oom-victim GO_FILE`: see the module comment. The thread waits until
/// `go` exists before it allocates, so that its procfs entries can be read first.
pub fn victim(go: &Path) -> io::Result<()> {
    fs::write("/proc/self/oom_score_adj", SCORE_ADJ.to_string())?;
    let (tx, rx) = mpsc::channel();
    let go = go.to_path_buf();
    thread::spawn(move || {
        let name = std::ffi::CString::new(THREAD_NAME).expect("no NUL");
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
        // SAFETY: gettid has no preconditions.
        let _ = tx.send(unsafe { libc::gettid() });
        let deadline = Instant::now() + Duration::from_secs(120);
        while !go.exists() {
            if Instant::now() >= deadline {
                std::process::exit(3);
            }
            thread::sleep(Duration::from_millis(5));
        }
        let mut memory: Vec<u8> = Vec::with_capacity(ALLOC);
        for page in memory.spare_capacity_mut().chunks_mut(PAGE) {
            page[0].write(1);
            std::hint::black_box(&page[0]);
        }
        std::hint::black_box(&memory);
        // Not killed: the limit did not hold.
        std::process::exit(4);
    });
    let tid = rx
        .recv()
        .map_err(|_| io::Error::other("the victim thread did not start"))?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "ready {tid}")?;
    stdout.flush()?;
    drop(stdout);
    // SAFETY: ends this thread only (not exit_group); nothing unwinds, nothing is freed.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    unreachable!("SYS_exit returned");
}

/// The victim as procfs showed it just before it was told to allocate.
#[derive(Debug)]
pub struct Victim {
    /// `Tgid:` and `Pid:` of `/proc/PID/task/TID/status`.
    pub tgid: u32,
    pub tid: u32,
    /// `/proc/PID/task/TID/comm`.
    pub comm: String,
    /// `/proc/PID/oom_score_adj`.
    pub oom_score_adj: i32,
    /// The inode of the cgroup v2 directory `/proc/PID/task/TID/cgroup` names.
    pub cgroup_id: u64,
    pub cgroup_path: String,
    /// Likewise in the v1 cpu hierarchy, where one is mounted (hybrid machines).
    pub cpu_cgroup: Option<(u64, String)>,
    /// How long from the go to its death.
    pub took: Duration,
    /// OOM kills its cgroup's memory controller counted meanwhile (`oom_kill`).
    pub kills: u64,
    /// The limited (pod-level) cgroup's path relative to the v2 root.
    pub limited_path: String,
}

/// Runs the victim in `ctr`, a container of `cgroup` (which has the memory limit, as a pod
/// has), until the OOM killer kills it.
pub fn kill_one(
    exe: &Path,
    cgroup: &TestCgroup,
    ctr: &NestedCgroup,
    scratch: &Path,
) -> Result<Victim, String> {
    let go: PathBuf = scratch.join("oom-go");
    let _ = fs::remove_file(&go);
    let mut cmd = Command::new(exe);
    cmd.arg("oom-victim").arg(&go).stdout(Stdio::piped());
    let mut p = spawn_in(ctr, cmd).map_err(|e| format!("oom-victim: {e}"))?;
    let pid = p.pid();
    let line = p
        .read_line(Duration::from_secs(30))
        .map_err(|e| format!("oom-victim (pid {pid}) did not start: {e}"))?;
    let tid: u32 = line
        .strip_prefix("ready ")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("oom-victim printed {line:?}"))?;
    // The main thread ends right after printing; wait until it did, so that the kernel
    // cannot pick it.
    let leader = format!("/proc/{pid}/status");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&leader).is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    }) {
        if Instant::now() >= deadline {
            return Err(format!(
                "the main thread of oom-victim (pid {pid}) did not end"
            ));
        }
        thread::sleep(Duration::from_millis(5));
    }
    let task = format!("/proc/{pid}/task/{tid}");
    let read = |f: &str| fs::read_to_string(f).map_err(|e| format!("reading {f}: {e}"));
    let status = read(&format!("{task}/status"))?;
    let field = |name: &str| -> Result<u32, String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .ok_or_else(|| format!("no {name} in {task}/status"))
    };
    let cgroup_line = read(&format!("{task}/cgroup"))?;
    let cgroup_path = cgroup_line
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| format!("no cgroup v2 line in {task}/cgroup: {cgroup_line:?}"))?
        .to_owned();
    let v2_root = cgroup
        .v2_path()
        .parent()
        .ok_or("the cgroup has no parent")?;
    let dir = v2_root.join(cgroup_path.trim_start_matches('/'));
    // "N:cpu,cpuacct:/path" (v1 hierarchies are numbered, the unified one is 0).
    let cpu_path = cgroup_line.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (n, controllers, path) = (f.next()?, f.next()?, f.next()?);
        (n != "0" && controllers.split(',').any(|c| c == "cpu")).then(|| path.to_owned())
    });
    let cpu_cgroup = match (cpu_path, cgroup.cpu_dir().parent()) {
        (Some(path), Some(root)) if cgroup.cpu_dir() != cgroup.v2_path() => {
            let dir = root.join(path.trim_start_matches('/'));
            let meta = fs::metadata(&dir).map_err(|e| format!("stat {}: {e}", dir.display()))?;
            Some((meta.ino(), path))
        }
        _ => None,
    };
    let mut victim = Victim {
        tgid: field("Tgid:")?,
        tid: field("Pid:")?,
        comm: read(&format!("{task}/comm"))?.trim_end().to_owned(),
        oom_score_adj: read(&format!("/proc/{pid}/oom_score_adj"))?
            .trim()
            .parse()
            .map_err(|e| format!("/proc/{pid}/oom_score_adj: {e}"))?,
        cgroup_id: fs::metadata(&dir)
            .map_err(|e| format!("stat {}: {e}", dir.display()))?
            .ino(),
        cgroup_path,
        cpu_cgroup,
        took: Duration::ZERO,
        kills: 0,
        limited_path: cgroup.relative_path(),
    };
    // The container's own count where it has one (v1 `memory.oom_control` counts the
    // cgroup's own kills only); on cgroup v2 the container has no memory controller of its
    // own (its pages are charged to the pod), and the pod's `memory.events` counts the kills
    // below it too.
    let kills = || {
        ctr.memory_oom_kills()
            .or_else(|_| cgroup.memory_oom_kills())
            .map_err(|e| format!("the memory controller's oom_kill count: {e}"))
    };
    let kills_before = kills()?;
    let start = Instant::now();
    fs::write(&go, "").map_err(|e| format!("creating {}: {e}", go.display()))?;
    let status = p
        .wait_within(DEATH_TIMEOUT)
        .map_err(|e| format!("waiting for oom-victim: {e}"))?
        .ok_or_else(|| {
            format!("oom-victim (pid {pid}) still alive {DEATH_TIMEOUT:?} after the go")
        })?;
    victim.took = start.elapsed();
    victim.kills = kills()? - kills_before;
    if status.signal() != Some(libc::SIGKILL) {
        return Err(format!(
            "oom-victim (pid {pid}) ended with {status}, not the OOM killer's SIGKILL"
        ));
    }
    Ok(victim)
}

/// `oom_score_adj` of the global OOM's victim: the kernel's first choice.
const GLOBAL_SCORE_ADJ: &str = "1000";

/// Helper mode `oom-global-victim`: makes itself the OOM killer's first choice and touches
/// memory, 16 MiB at a time, until it is killed (the machine has no swap and no limit holds it:
/// a global OOM).
pub fn global_victim() -> io::Result<()> {
    fs::write("/proc/self/oom_score_adj", GLOBAL_SCORE_ADJ)?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    drop(stdout);
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk: Vec<u8> = Vec::with_capacity(16 << 20);
        for page in chunk.spare_capacity_mut().chunks_mut(PAGE) {
            page[0].write(1);
            std::hint::black_box(&page[0]);
        }
        kept.push(std::hint::black_box(chunk));
    }
}

/// The global OOM as the kernel counted it.
#[derive(Debug)]
pub struct GlobalVictim {
    pub pid: u32,
    /// Its cgroup, relative to the v2 root.
    pub cgroup_path: String,
    /// `/proc/vmstat` `oom_kill` growth over the run: kills of any kind on the machine.
    pub kills: u64,
}

fn vmstat_oom_kill() -> Result<u64, String> {
    let text = fs::read_to_string("/proc/vmstat").map_err(|e| format!("/proc/vmstat: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .ok_or_else(|| "no oom_kill in /proc/vmstat".to_owned())
}

/// Runs `oom-global-victim` in `cgroup` (no limit) until the OOM killer kills it. The caller
/// has made itself (and so its other children, the agent included) unkillable first.
pub fn kill_global(exe: &Path, cgroup: &TestCgroup) -> Result<GlobalVictim, String> {
    let before = vmstat_oom_kill()?;
    let mut cmd = Command::new(exe);
    cmd.arg("oom-global-victim").stdout(Stdio::piped());
    let mut p = spawn_in(cgroup, cmd).map_err(|e| format!("oom-global-victim: {e}"))?;
    let pid = p.pid();
    p.read_line(Duration::from_secs(30))
        .map_err(|e| format!("oom-global-victim (pid {pid}) did not start: {e}"))?;
    let status = p
        .wait_within(DEATH_TIMEOUT)
        .map_err(|e| format!("waiting for oom-global-victim: {e}"))?
        .ok_or_else(|| format!("oom-global-victim (pid {pid}) alive after {DEATH_TIMEOUT:?}"))?;
    if status.signal() != Some(libc::SIGKILL) {
        return Err(format!("oom-global-victim (pid {pid}) ended with {status}"));
    }
    Ok(GlobalVictim {
        pid,
        cgroup_path: cgroup.relative_path(),
        kills: vmstat_oom_kill()? - before,
    })
}

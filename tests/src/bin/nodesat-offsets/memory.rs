//! A cgroup over its `memory.high`: a task touching more fresh anonymous memory than the
//! cgroup may keep, again and again, for a while. Without swap the kernel cannot reclaim
//! it, so every return to user space over the limit is throttled (`memory.events` `high`
//! grows, and the sleeps are memory stalls in `memory.pressure`). The agent's `memory_events`
//! and `pressure.memory` of the cgroup must equal the growth of those files.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodesat_tests::{TestCgroup, spawn_in};

/// What the cgroup may keep, and what its task touches each round: 25% over (twice over, the
/// kernel's throttling kept the task asleep for 10-27 s of a 2 s run).
pub const HIGH_BYTES: u64 = 8 << 20;
const TOUCH_BYTES: usize = 10 << 20;

/// `memory.events` and the `some` total of `memory.pressure` (ns) of a v2 cgroup directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryFiles {
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
    pub memory_some_ns: u64,
}

impl MemoryFiles {
    pub fn read(dir: &Path) -> Result<MemoryFiles, String> {
        let read = |f: &str| {
            fs::read_to_string(dir.join(f)).map_err(|e| format!("{}: {e}", dir.join(f).display()))
        };
        let events = read("memory.events")?;
        let key = |k: &str| -> u64 {
            events
                .lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0)
        };
        let memory_some_ns = nodesat_tests::Pressure::read(dir, ".pressure")
            .map_err(|e| e.to_string())?
            .memory
            .some_ns;
        Ok(MemoryFiles {
            high: key("high"),
            max: key("max"),
            oom: key("oom"),
            oom_kill: key("oom_kill"),
            oom_group_kill: key("oom_group_kill"),
            memory_some_ns,
        })
    }

    pub fn since(&self, b: &MemoryFiles) -> MemoryFiles {
        MemoryFiles {
            high: self.high - b.high,
            max: self.max - b.max,
            oom: self.oom - b.oom,
            oom_kill: self.oom_kill - b.oom_kill,
            oom_group_kill: self.oom_group_kill - b.oom_group_kill,
            memory_some_ns: self.memory_some_ns - b.memory_some_ns,
        }
    }
}

/// Gives `cgroup` a v2 `memory.high` of [`HIGH_BYTES`]: `Ok(false)` where its v2 directory
/// has no memory controller (hybrid hosts keep it on v1).
pub fn limit(cgroup: &TestCgroup) -> Result<bool, String> {
    let root_control = cgroup
        .v2_path()
        .parent()
        .map(|p| p.join("cgroup.subtree_control"));
    if let Some(control) = root_control {
        // Enabled for the siblings too, and left so: as TestCgroup::set_memory_limit does.
        let _ = fs::write(control, "+memory");
    }
    let high = cgroup.v2_path().join("memory.high");
    if !high.exists() {
        return Ok(false);
    }
    fs::write(&high, HIGH_BYTES.to_string()).map_err(|e| format!("{}: {e}", high.display()))?;
    Ok(true)
}

/// Helper mode `toucher MS`: allocates [`TOUCH_BYTES`], writes every page, frees it, again,
/// for `MS`; prints `done ROUNDS`.
pub fn toucher(for_ms: u64) -> io::Result<()> {
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < Duration::from_millis(for_ms) {
        let mut v = vec![0u8; TOUCH_BYTES];
        for page in v.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&v);
        drop(v);
        rounds += 1;
    }
    let mut out = io::stdout().lock();
    writeln!(out, "done {rounds}")?;
    out.flush()
}

/// Runs the toucher in `cgroup` for `for_ms`; the files' growth from before it started to
/// after it exited. `Ok(None)`: no v2 memory controller for the cgroup here.
pub fn run(exe: &Path, cgroup: &TestCgroup, for_ms: u64) -> Result<Option<MemoryFiles>, String> {
    if !limit(cgroup)? {
        return Ok(None);
    }
    let dir = cgroup.v2_path();
    let before = MemoryFiles::read(dir)?;
    let mut cmd = Command::new(exe);
    cmd.args(["toucher", &for_ms.to_string()])
        .stdout(Stdio::piped());
    let mut p = spawn_in(cgroup, cmd).map_err(|e| format!("toucher: {e}"))?;
    let line = p
        .read_line(Duration::from_millis(for_ms) + Duration::from_secs(30))
        .map_err(|e| format!("the toucher printed nothing: {e}"))?;
    if !line.starts_with("done ") {
        return Err(format!("the toucher printed {line:?}"));
    }
    let _ = p.wait_within(Duration::from_secs(10));
    drop(p);
    Ok(Some(MemoryFiles::read(dir)?.since(&before)))
}

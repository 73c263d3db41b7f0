//! The live task state (`task_struct.__state`): which tasks stay runnable when they leave a CPU.
//! Two `sched_yield()` loops and a task that naps every 2 ms share CPU 0 in one cgroup. A yield
//! leaves the CPU neither preempted nor asleep (live state `TASK_RUNNING`): only a correct read
//! of the state counts its wait; a nap leaves it asleep, and a misread that calls it runnable
//! would count the nap as waiting. The cgroup's run-queue wait must match the three tasks' own
//! run delay (schedstat).

use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodesat_tests::clocks::{ClockRate, ClockWindow};
use nodesat_tests::{TestCgroup, spawn_in};

/// The CPU the three tasks share.
const CPU: usize = 0;

/// The last CPU this process may run on (the I/O process's, away from [`CPU`] where there are
/// two).
pub fn last_cpu() -> io::Result<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&c| libc::CPU_ISSET(c, &set))
            .ok_or_else(|| io::Error::other("an empty CPU affinity"))
    }
}

/// This process's run delay so far, ns (`/proc/self/schedstat` field 2).
fn run_delay() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/schedstat")?;
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("/proc/self/schedstat: {text:?}")))
}

/// Keeps this process on `cpu`.
pub fn pin(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Helper mode `yielder MS` / `napper MS`: on CPU 0, yields in a loop, or naps 2 ms after each
/// 200 µs of work, for `MS`; prints `done RUN_DELAY_NS`: its run delay over its whole life (the
/// agent counts every wait of the task in the cgroup, from its start, its move to CPU 0 behind
/// the others, to its last yield; only the fork's first wait, before the task moves itself
/// into the cgroup, is counted here and not there).
pub fn helper(nap: bool, for_ms: u64) -> io::Result<()> {
    pin(CPU)?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(for_ms) {
        if nap {
            let work = Instant::now();
            while work.elapsed() < Duration::from_micros(200) {
                std::hint::spin_loop();
            }
            std::thread::sleep(Duration::from_millis(2));
        } else {
            // SAFETY: no preconditions.
            unsafe { libc::sched_yield() };
        }
    }
    let delay = run_delay()?;
    let mut out = io::stdout().lock();
    writeln!(out, "done {delay}")?;
    out.flush()
}

/// The three tasks' run delay, summed, and what ran.
#[derive(Debug)]
pub struct SchedTruth {
    pub run_delay_ns: u64,
    /// The two clocks' rates over the run (schedstat counts in the scheduler's clock).
    pub rate: Option<ClockRate>,
}

/// Runs two yielders and a napper in `cgroup` for `for_ms`.
pub fn run(exe: &Path, cgroup: &TestCgroup, for_ms: u64) -> Result<SchedTruth, String> {
    let clocks = ClockWindow::start();
    let mut tasks = Vec::new();
    for mode in ["yielder", "yielder", "napper"] {
        let mut cmd = Command::new(exe);
        cmd.args([mode, &for_ms.to_string()]).stdout(Stdio::piped());
        tasks.push(spawn_in(cgroup, cmd).map_err(|e| format!("{mode}: {e}"))?);
    }
    let mut total = 0;
    for t in &mut tasks {
        let line = t
            .read_line(Duration::from_millis(for_ms) + Duration::from_secs(30))
            .map_err(|e| format!("a yielder or napper printed nothing: {e}"))?;
        total += line
            .strip_prefix("done ")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("printed {line:?}"))?;
    }
    Ok(SchedTruth {
        run_delay_ns: total,
        rate: clocks.end(),
    })
}

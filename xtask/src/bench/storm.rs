//! The context-switch storm: two processes pinned to CPU 0 ping-ponging one byte over a pair
//! of pipes. Every round trip costs two context switches and two wake-ups on CPU 0, which is
//! exactly what the agent's `sched_switch` / `sched_wakeup` hooks pay for.

use std::{
    os::fd::OwnedFd,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    errno::Errno,
    fcntl::OFlag,
    sched::{CpuSet, sched_setaffinity},
    sys::{
        prctl::set_pdeathsig,
        signal::{Signal, kill},
        wait::waitpid,
    },
    unistd::{ForkResult, Pid, fork, getpid, getppid, pipe2, read, write},
};

/// Round trips between two checks of the clock (and of Ctrl-C): a few milliseconds' worth.
const CHECK_EVERY: u64 = 256;

/// What one storm achieved.
#[derive(Clone, Copy, Debug)]
pub struct Storm {
    pub round_trips: u64,
    pub elapsed: Duration,
}

impl Storm {
    pub fn per_sec(&self) -> f64 {
        self.round_trips as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs one storm for `duration` and returns its round-trip count.
///
/// The storm runs on a thread of its own, so that pinning it to CPU 0 leaves the rest of
/// xtask (and the nodesat children it spawns later) free to run anywhere.
pub fn run(duration: Duration) -> Result<Storm> {
    thread::Builder::new()
        .name("storm".into())
        .spawn(move || run_pinned(duration))
        .context("spawning the storm thread")?
        .join()
        .map_err(|_| anyhow!("the storm thread panicked"))?
}

/// Pins the calling thread to CPU 0, forks the echoing partner (which inherits the pinning)
/// and pings it until `duration` has passed.
fn run_pinned(duration: Duration) -> Result<Storm> {
    let mut cpu0 = CpuSet::new();
    cpu0.set(0).context("CpuSet")?;
    sched_setaffinity(Pid::from_raw(0), &cpu0).context("pinning the storm to CPU 0")?;

    let (ping_rx, ping_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let (pong_rx, pong_tx) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    let parent = getpid();
    // SAFETY: the child of this (multi-threaded) process only makes async-signal-safe calls:
    // close, prctl, getppid, read, write and _exit; it allocates nothing and never returns.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(ping_tx);
            drop(pong_rx);
            echo(parent, &ping_rx, &pong_tx)
        }
        ForkResult::Parent { child } => {
            let _reaper = Reaper(child);
            drop(ping_rx);
            drop(pong_tx);
            ping(&ping_tx, &pong_rx, duration)
        }
    }
}

/// The parent's side: send a byte, wait for it to come back, count, repeat.
fn ping(tx: &OwnedFd, rx: &OwnedFd, duration: Duration) -> Result<Storm> {
    let mut buf = [0u8; 1];
    let start = Instant::now();
    let mut round_trips = 0u64;
    loop {
        retry(|| write(tx, &buf)).context("storm: write")?;
        if retry(|| read(rx, &mut buf)).context("storm: read")? == 0 {
            bail!("the storm's partner process exited early");
        }
        round_trips += 1;
        if round_trips.is_multiple_of(CHECK_EVERY) {
            let elapsed = start.elapsed();
            if elapsed >= duration {
                return Ok(Storm {
                    round_trips,
                    elapsed,
                });
            }
            super::check_interrupted()?;
        }
    }
}

/// The child's side: echo every byte back until the parent closes its end (or dies).
fn echo(parent: Pid, rx: &OwnedFd, tx: &OwnedFd) -> ! {
    // Die with the thread that forked us, and at once if it is already gone.
    if set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != parent {
        exit_now();
    }
    let mut buf = [0u8; 1];
    while let Ok(1) = retry(|| read(rx, &mut buf)) {
        if retry(|| write(tx, &buf)) != Ok(1) {
            break;
        }
    }
    exit_now()
}

/// Leaves the forked child without running any of the parent's exit handlers.
fn exit_now() -> ! {
    // SAFETY: _exit is async-signal-safe and ends the process.
    unsafe { libc::_exit(0) }
}

/// Repeats a system call interrupted by a signal.
fn retry<T>(mut call: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match call() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// Kills and reaps the storm's child, however the parent's side ended.
struct Reaper(Pid);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGKILL);
        let _ = waitpid(self.0, None);
    }
}

//! The kernel's own record of what happened, to check the agent against: BPF run-time
//! statistics ([`BpfStats`]: how often each program ran) and a private tracefs instance
//! ([`TraceInstance`]: every event of a tracepoint, as the kernel emitted it).

use std::{
    io,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

/// BPF run-time statistics on while this lives (`BPF_ENABLE_STATS`: the kernel counts while
/// any such file descriptor is open, so `kernel.bpf_stats_enabled` is left as it was).
pub struct BpfStats(#[allow(dead_code)] OwnedFd);

impl BpfStats {
    pub fn enable() -> io::Result<BpfStats> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        let attr = [0u32; 2]; // enable_stats.type = BPF_STATS_RUN_TIME (0)
        // SAFETY: the kernel reads `size` bytes of `attr`.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), 8usize) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new file descriptor we own.
        Ok(BpfStats(unsafe {
            std::os::fd::FromRawFd::from_raw_fd(fd as i32)
        }))
    }
}

/// A tracefs instance of its own (`instances/nodesat-test-<pid>-<n>`), so the global trace
/// settings are never touched; removed on drop, even on panic.
pub struct TraceInstance {
    dir: PathBuf,
    events: Vec<String>,
    /// Dropped after the instance is removed (fields drop after `Drop::drop`).
    _tracefs: Tracefs,
}

/// Where tracefs is mounted, if it is.
pub fn tracefs() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("instances").is_dir())
}

/// tracefs, mounted while this lives: a fresh machine has it unmounted. Unmounted on drop
/// (even on panic) only if this mounted it. Hold it from before any agent starts: an agent
/// that finds tracefs unmounted mounts it and unmounts it at exit, which would pull it from
/// under a trace the test still reads.
pub struct Tracefs {
    root: PathBuf,
    mounted: bool,
}

impl Tracefs {
    pub fn mount() -> io::Result<Tracefs> {
        if let Some(root) = tracefs() {
            return Ok(Tracefs {
                root,
                mounted: false,
            });
        }
        let root = PathBuf::from("/sys/kernel/tracing");
        nix::mount::mount(
            Some("tracefs"),
            &root,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| io::Error::other(format!("mounting tracefs at {}: {e}", root.display())))?;
        Ok(Tracefs {
            root,
            mounted: true,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = nix::mount::umount2(&self.root, nix::mount::MntFlags::MNT_DETACH)
        {
            eprintln!("cannot unmount tracefs at {}: {e}", self.root.display());
        }
    }
}

impl TraceInstance {
    /// Creates the instance and enables `events` (`"group/name"`, e.g.
    /// `"tcp/tcp_retransmit_skb"`) in it, with a buffer of `buffer_kb` per CPU.
    pub fn start(events: &[&str], buffer_kb: u32) -> io::Result<TraceInstance> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let tracefs = Tracefs::mount()?;
        let name = format!(
            "nodesat-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tracefs.root().join("instances").join(name);
        std::fs::create_dir(&dir)?;
        let t = TraceInstance {
            dir,
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            _tracefs: tracefs,
        };
        std::fs::write(t.dir.join("buffer_size_kb"), buffer_kb.to_string())?;
        for e in &t.events {
            std::fs::write(t.dir.join("events").join(e).join("enable"), "1")?;
        }
        Ok(t)
    }

    /// Stops recording and returns the trace text; with how many events the buffer lost
    /// (`overrun` in `per_cpu/*/stats`, summed).
    pub fn stop(&self) -> (String, u64) {
        self.disable();
        let text = std::fs::read_to_string(self.dir.join("trace")).unwrap_or_default();
        let overrun = std::fs::read_dir(self.dir.join("per_cpu"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|cpu| std::fs::read_to_string(cpu.path().join("stats")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.strip_prefix("overrun:"))
                    .filter_map(|v| v.trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum();
        (text, overrun)
    }

    fn disable(&self) {
        for e in &self.events {
            let _ = std::fs::write(self.dir.join("events").join(e).join("enable"), "0");
        }
    }
}

impl Drop for TraceInstance {
    fn drop(&mut self) {
        self.disable();
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("cannot remove tracefs instance {}: {e}", self.dir.display());
        }
    }
}

/// One traced event: the task that was current (`comm-pid` as tracefs prints it) and the
/// event's `name=value` fields.
#[derive(Clone, Debug)]
pub struct TracedEvent {
    pub task: String,
    pub pid: u32,
    pub fields: Vec<(String, String)>,
}

impl TracedEvent {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What [`run_counting`] holds: BPF run-time statistics on and tracefs mounted.
pub struct RunCounting {
    _stats: BpfStats,
    _tracefs: Tracefs,
}

/// For a test that compares the agent's program runs with the kernel's own trace: `None`
/// after skipping `test` (printing why) when tracefs cannot be mounted, else BPF run-time
/// statistics on and tracefs mounted, while the guard lives (take it before any agent starts).
pub fn run_counting(test: &str) -> Option<RunCounting> {
    let tracefs = match Tracefs::mount() {
        Ok(t) => t,
        Err(e) => {
            crate::skip(
                test,
                &format!("{e}: the kernel's own count of events is needed"),
            );
            return None;
        }
    };
    Some(RunCounting {
        _stats: BpfStats::enable().expect("BPF_ENABLE_STATS (program run counts)"),
        _tracefs: tracefs,
    })
}

/// How many of the events of tracepoint `hook` in `trace` (what [`TraceInstance::stop`]
/// returned, recorded while the agent ran; it must have lost none) the agent's program for
/// `hook` was not run for: the events less the program's run count in the agent's final
/// `report` (BPF run-time statistics must be on, see [`BpfStats`]). Other traffic on the
/// host, if any, is in both counts. Prints both, and the tasks the events fired on.
pub fn events_not_run_for(trace: &(String, u64), report: &crate::Report, hook: &str) -> u64 {
    let (text, overrun) = trace;
    assert_eq!(
        *overrun, 0,
        "the trace lost events: its count cannot be compared"
    );
    let traced = parse_events(text, hook);
    let runs = report
        .probes
        .iter()
        .find(|p| p.hook == hook)
        .map_or(0, |p| p.run_count);
    let skipped = (traced.len() as u64).saturating_sub(runs);
    let mut tasks = std::collections::BTreeMap::<&str, u32>::new();
    for e in &traced {
        *tasks.entry(e.task.as_str()).or_default() += 1;
    }
    eprintln!(
        "{hook}: {} events traced, the program ran {runs} times: {skipped} not run for; events \
         by the task they fired on: {tasks:?}",
        traced.len()
    );
    skipped
}

/// The events named `event` in a tracefs `trace` text (pure).
pub fn parse_events(text: &str, event: &str) -> Vec<TracedEvent> {
    let marker = format!(" {event}: ");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, body) = l.split_once(&marker)?;
            // `comm-pid [cpu] flags timestamp:`; a comm may contain spaces and dashes.
            let task = head.rsplit_once(" [")?.0.trim();
            let pid = task.rsplit_once('-')?.1.parse().ok()?;
            let fields = body
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            Some(TracedEvent {
                task: task.to_owned(),
                pid,
                fields,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracefs_lines() {
        let text = "# tracer: nop\n\
            #\n\
            \x20   nodesat-load-12808   [001] ..... 25836.601910: tcp_retransmit_skb: skbaddr=00000000aaf5f940 skaddr=00000000948ffe31 family=AF_INET sport=56660 dport=36465 state=TCP_ESTABLISHED err=0\n\
            \x20 tokio-rt-worker-98   [000] ..s1. 25836.7: tcp_retransmit_skb: sport=1 dport=2 err=-113\n\
            \x20 <idle>-0 [000] ..s2. 1.0: sched_switch: prev_pid=0\n";
        let ev = parse_events(text, "tcp_retransmit_skb");
        assert_eq!(ev.len(), 2);
        assert_eq!(
            (ev[0].task.as_str(), ev[0].pid),
            ("nodesat-load-12808", 12808)
        );
        assert_eq!(ev[0].field("sport"), Some("56660"));
        assert_eq!(ev[1].pid, 98);
        assert_eq!(ev[1].field("err"), Some("-113"));
        assert_eq!(ev[1].field("nope"), None);
    }
}

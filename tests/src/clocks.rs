//! The kernel's two clocks side by side: ktime (`CLOCK_MONOTONIC`, what `bpf_ktime_get_ns`
//! and so the agent's durations count in) and the scheduler's clock (`local_clock()`, what
//! schedstat's run delay, `cpu.stat`'s throttled time and delay accounting count in).
//!
//! On hardware the two run at one rate. Under qemu TCG nothing promises it (the guest's
//! sched_clock and its clocksource are emulated apart, and a guest once counted 69 s of delay
//! in a 2 s run), so a test that compares a figure in one clock with a figure in the other
//! measures both clocks over the same stretch ([`ClockWindow`]), converts the kernel's figure
//! to ktime ([`ClockRate::to_ktime`]) and reports the rate, rather than assume it or widen its
//! bound for it. (In the VM matrix of 2026-12-07 every rate measured 1.000: the gaps seen
//! there had other causes.)
//!
//! Both are read by one kernel function with interrupts off: the header of the scheduler's
//! debug file (`ktime` and `cpu_clk`), in debugfs (`/sys/kernel/debug/sched/debug`, 5.13 and
//! later) or procfs (`/proc/sched_debug`, earlier kernels).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

const DEBUGFS: &str = "/sys/kernel/debug";

/// debugfs, mounted while this lives (a fresh machine may not have it mounted); unmounted on
/// drop only if this mounted it.
pub struct Debugfs {
    mounted: bool,
}

impl Debugfs {
    pub fn mount() -> io::Result<Debugfs> {
        let root = Path::new(DEBUGFS);
        if root.join("sched").is_dir() || Path::new("/proc/sched_debug").exists() {
            return Ok(Debugfs { mounted: false });
        }
        nix::mount::mount(
            Some("debugfs"),
            root,
            Some("debugfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| io::Error::other(format!("mounting debugfs at {DEBUGFS}: {e}")))?;
        Ok(Debugfs { mounted: true })
    }
}

impl Drop for Debugfs {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = nix::mount::umount2(DEBUGFS, nix::mount::MntFlags::MNT_DETACH)
        {
            eprintln!("cannot unmount debugfs at {DEBUGFS}: {e}");
        }
    }
}

/// Both clocks at one instant, ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    pub ktime_ns: u64,
    pub sched_ns: u64,
}

fn sched_debug() -> Option<PathBuf> {
    [
        PathBuf::from(DEBUGFS).join("sched/debug"),
        PathBuf::from("/proc/sched_debug"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

impl ClockSample {
    /// Reads both clocks now (needs debugfs mounted, see [`Debugfs`], on 5.13 and later).
    pub fn now() -> io::Result<ClockSample> {
        let path = sched_debug().ok_or_else(|| {
            io::Error::other("no /sys/kernel/debug/sched/debug nor /proc/sched_debug")
        })?;
        // The header is the first record: a short read gets it without the per-CPU tables.
        let mut head = vec![0u8; 1024];
        let n = File::open(&path)?.read(&mut head)?;
        let text = String::from_utf8_lossy(&head[..n]);
        ClockSample::parse(&text).ok_or_else(|| {
            io::Error::other(format!("{}: no ktime/cpu_clk in {text:?}", path.display()))
        })
    }

    /// Parses the header lines `ktime : 115165.725161` and `cpu_clk : 115167.206291` (ms with
    /// six decimals).
    pub fn parse(text: &str) -> Option<ClockSample> {
        let field = |name: &str| -> Option<u64> {
            let value = text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim())
            })?;
            let (ms, frac) = value.split_once('.')?;
            if frac.len() != 6 {
                return None;
            }
            Some(ms.parse::<u64>().ok()? * 1_000_000 + frac.parse::<u64>().ok()?)
        };
        Some(ClockSample {
            ktime_ns: field("ktime")?,
            sched_ns: field("cpu_clk")?,
        })
    }
}

/// How far each clock moved over one stretch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockRate {
    pub ktime_ns: u64,
    pub sched_ns: u64,
}

impl ClockRate {
    pub fn between(start: ClockSample, end: ClockSample) -> ClockRate {
        ClockRate {
            ktime_ns: end.ktime_ns.saturating_sub(start.ktime_ns),
            sched_ns: end.sched_ns.saturating_sub(start.sched_ns),
        }
    }

    /// Scheduler-clock ns per ktime ns (1.0 on hardware).
    pub fn ratio(&self) -> f64 {
        self.sched_ns as f64 / self.ktime_ns.max(1) as f64
    }

    /// A duration the scheduler counted, in ktime ns.
    pub fn to_ktime(&self, sched_ns: u64) -> u64 {
        if self.sched_ns == 0 {
            return sched_ns;
        }
        (sched_ns as u128 * self.ktime_ns as u128 / self.sched_ns as u128) as u64
    }
}

/// Both clocks sampled at the start of a stretch; [`ClockWindow::end`] gives their rates over
/// it. `None` inside when they cannot be read (then figures are compared unconverted).
pub struct ClockWindow {
    start: Option<ClockSample>,
}

impl ClockWindow {
    pub fn start() -> ClockWindow {
        ClockWindow {
            start: ClockSample::now().ok(),
        }
    }

    pub fn end(&self) -> Option<ClockRate> {
        Some(ClockRate::between(self.start?, ClockSample::now().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sched_debug_header() {
        let text = "Sched Debug Version: v0.11, 6.18.44-fc-v1300 #1\n\
                    ktime                                   : 115165.725161\n\
                    sched_clk                               : 115193.995804\n\
                    cpu_clk                                 : 115167.206291\n\
                    jiffies                                 : 4294921025\n";
        assert_eq!(
            ClockSample::parse(text),
            Some(ClockSample {
                ktime_ns: 115_165_725_161,
                sched_ns: 115_167_206_291,
            })
        );
        assert_eq!(ClockSample::parse("ktime : 1.5\n"), None);
    }

    #[test]
    fn converts_scheduler_time_to_ktime() {
        let rate = ClockRate {
            ktime_ns: 4_000_000_000,
            sched_ns: 5_000_000_000,
        };
        assert!((rate.ratio() - 1.25).abs() < 1e-9);
        assert_eq!(rate.to_ktime(1_250_000_000), 1_000_000_000);
        let unknown = ClockRate {
            ktime_ns: 0,
            sched_ns: 0,
        };
        assert_eq!(unknown.to_ktime(7), 7);
    }

    #[test]
    fn reads_both_clocks_when_privileged() {
        let Ok(_debugfs) = Debugfs::mount() else {
            eprintln!("skipped: cannot mount debugfs (not root?)");
            return;
        };
        let Ok(a) = ClockSample::now() else {
            eprintln!("skipped: no scheduler debug file on this kernel");
            return;
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        let b = ClockSample::now().expect("read once, read twice");
        let rate = ClockRate::between(a, b);
        assert!(rate.ktime_ns >= 50_000_000, "{rate:?}");
        assert!(rate.sched_ns > 0, "{rate:?}");
    }
}

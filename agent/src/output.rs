//! Local output of each report: a compact table for people, JSON lines for programs.

use std::io::Write;

use serde::Serialize;

use crate::{collector::oom::OomKill, config::Output, probes::HookStatus, report::Report};

pub struct Emitter {
    format: Output,
    top: usize,
    /// The first failed write; nothing more is written after it.
    failed: std::cell::RefCell<Option<StdoutError>>,
    stopped: std::cell::Cell<bool>,
}

/// Why stdout can take no more output.
#[derive(Debug, thiserror::Error)]
pub enum StdoutError {
    /// The pipe's reader went away (EPIPE, or the watcher saw the pipe close): `nodesat run |
    /// head -1`. Not an error for the exit code.
    #[error("stdout is a pipe whose reader went away")]
    ReaderGone,
    /// Any other write error (a full disk, /dev/full, an I/O error): exit 74 (EX_IOERR).
    #[error("cannot write to stdout: {0}")]
    Write(#[source] std::io::Error),
}

impl StdoutError {
    fn of(e: std::io::Error) -> StdoutError {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            StdoutError::ReaderGone
        } else {
            StdoutError::Write(e)
        }
    }
}

/// Resolves when stdout is a pipe and its reader closed it, without waiting for the next
/// write to fail with EPIPE (a write may be an interval away). A thread polls the pipe for
/// POLLERR, which the kernel raises on a pipe's write end once no reader is left. `None`
/// when stdout is not a pipe (a terminal, a file, /dev/full: write errors say it there).
pub fn watch_pipe_reader() -> Option<tokio::sync::oneshot::Receiver<()>> {
    use nix::{
        poll::{PollFd, PollFlags, PollTimeout, poll},
        sys::stat::{SFlag, fstat},
    };
    let stdout = std::io::stdout();
    let mode = fstat(&stdout).ok()?.st_mode;
    if SFlag::from_bits_truncate(mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
        return None;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("nodesat-stdout".into())
        .spawn(move || {
            let stdout = std::io::stdout();
            loop {
                // No events asked for: only POLLERR and POLLHUP, always reported, wake it.
                let mut fds = [PollFd::new(
                    std::os::fd::AsFd::as_fd(&stdout),
                    PollFlags::empty(),
                )];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {
                        let gone = PollFlags::POLLERR | PollFlags::POLLHUP;
                        if fds[0].revents().is_some_and(|r| r.intersects(gone)) {
                            let _ = tx.send(());
                            return;
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return,
                }
            }
        })
        .ok()?;
    Some(rx)
}

#[derive(Serialize)]
struct Ready<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    probes: &'a [HookStatus],
}

impl Emitter {
    pub fn new(format: Output, top: usize) -> Emitter {
        Emitter {
            format,
            top,
            failed: std::cell::RefCell::new(None),
            stopped: std::cell::Cell::new(false),
        }
    }

    /// Announces that the probes are attached (JSON output only; logs say it for people).
    pub fn ready(&self, probes: &[HookStatus]) {
        if self.format == Output::Json {
            self.write(&json_line(&Ready {
                kind: "ready",
                probes,
            }));
        }
    }

    pub fn report(&self, report: &Report) {
        match self.format {
            Output::Table => self.write(&table(report, self.top)),
            Output::Json => self.write(&json_line(report)),
            Output::None => {}
        }
    }

    /// Reports an OOM kill the moment it is seen (and logs it, whatever the output).
    pub fn oom_kill(&self, kill: &OomKill) {
        tracing::warn!(
            pid = kill.pid,
            comm = %kill.comm,
            cgroup = kill.cgroup.as_deref().unwrap_or("?"),
            constraint = kill.constraint,
            constraint_cgroup = kill.constraint_cgroup.as_deref().unwrap_or("-"),
            constraint_source = kill.constraint_source,
            "OOM kill"
        );
        match self.format {
            Output::Table => self.write(&oom_line(kill)),
            Output::Json => self.write(&json_line(kill)),
            Output::None => {}
        }
    }

    /// The first write that failed, once (the caller stops, see [`StdoutError`]).
    pub fn take_failure(&self) -> Option<StdoutError> {
        self.failed.borrow_mut().take()
    }

    /// Writes to stdout; after a failed write (kept for [`Emitter::take_failure`]), nothing.
    fn write(&self, text: &str) {
        if self.stopped.get() {
            return;
        }
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            self.stopped.set(true);
            *self.failed.borrow_mut() = Some(StdoutError::of(e));
        }
    }

    /// Stops writing (the pipe's reader went away).
    pub fn stop_writing(&self) {
        self.stopped.set(true);
    }
}

fn json_line<T: Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string(value).expect("reports serialize");
    s.push('\n');
    s
}

/// A duration in ns as people read it: 850ns, 12.3µs, 4.21ms, 1.20s.
pub fn human_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}µs", f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", f / 1e6)
    } else {
        format!("{:.2}s", f / 1e9)
    }
}

/// One line announcing an OOM kill in the table output.
pub fn oom_line(k: &OomKill) -> String {
    let cgroup = k
        .cgroup
        .clone()
        .unwrap_or_else(|| format!("cgroup id {}", k.cgroup_id));
    let adj = k
        .oom_score_adj
        .map(|a| format!(", oom_score_adj {a}"))
        .unwrap_or_default();
    format!(
        "!! OOM KILL  pid {} ({}) in {cgroup}  [{}{adj}]\n",
        k.pid,
        k.comm,
        k.constraint_text()
    )
}

/// The per-interval table: run-queue length per CPU, then the busiest cgroups.
pub fn table(r: &Report, top: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let variants: Vec<String> = {
        let mut v: Vec<String> = r
            .probes
            .iter()
            .map(|p| match p.variant {
                Some(var) => format!("{}={var}", p.probe),
                None => format!("{}=NOT ATTACHED", p.probe),
            })
            .collect();
        v.dedup();
        v
    };
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(r.time_unix_ns),
    );
    let _ = writeln!(
        s,
        "── {when}  interval {:.1}s  probes: {}{}",
        r.interval_ns as f64 / 1e9,
        variants.join(" "),
        if r.is_final { "  (final)" } else { "" }
    );
    let cpus: Vec<String> = r
        .cpus
        .iter()
        .map(|c| format!("cpu{} {:.2}", c.cpu, c.runqueue_length))
        .collect();
    let _ = writeln!(s, "run-queue length (waiting tasks): {}", cpus.join("  "));
    let _ = writeln!(
        s,
        "node: {} TCP retransmits, {} OOM kills",
        r.node.tcp_retransmits, r.node.oom_kills
    );
    let _ = writeln!(
        s,
        "{:>7} {:>6} {:>8} {:>8} {:>8} {:>6} {:>7} {:>6} {:>4}  CGROUP (waited behind)",
        "WAITING", "CAUSED", "RQ_P50", "RQ_P99", "RQ_MAX", "THROT%", "IOWAIT", "RETX", "OOM"
    );
    for c in r.cgroups.iter().take(top) {
        let q = &c.runqueue;
        let name = crate::identity::table_label(c.name.as_deref(), &c.identity, c.cgroup_id);
        let throttled = c
            .throttling
            .as_ref()
            .map_or("-".to_owned(), |t| format!("{:.0}", t.throttled_pct));
        // iowait as a share of the interval: the average number of its tasks blocked on I/O.
        let iowait = c.iowait_ns as f64 / r.interval_ns.max(1) as f64;
        let caused = q.caused_ns as f64 / r.interval_ns.max(1) as f64;
        let _ = writeln!(
            s,
            "{:>7.2} {:>6.2} {:>8} {:>8} {:>8} {:>6} {:>7.2} {:>6} {:>4}  {name}{}",
            q.waiting_tasks,
            caused,
            human_ns(q.latency_p50_ns),
            human_ns(q.latency_p99_ns),
            human_ns(q.latency_max_ns),
            throttled,
            iowait,
            c.retransmits(),
            c.oom_kills,
            behind(c)
        );
    }
    for d in &r.disks {
        let _ = writeln!(
            s,
            "disk {} {:<5} {:>7} requests  p50 {:>8}  p99 {:>8}  max {:>8}",
            d.name.as_deref().unwrap_or(&d.device),
            d.op,
            d.requests,
            human_ns(d.latency_p50_ns),
            human_ns(d.latency_p99_ns),
            human_ns(d.latency_max_ns)
        );
    }
    let more = r.cgroups.len().saturating_sub(top) + r.entities_overflow;
    if more > 0 {
        let _ = writeln!(s, "… {more} more cgroups");
    }
    for e in &r.kernel_errors {
        let _ = writeln!(s, "kernel errors: {} {} ×{}", e.probe, e.error, e.count);
    }
    s
}

/// " (behind X 95%)": the cgroup that ran for most of this one's wait, when that is another
/// cgroup, with its share; empty otherwise.
fn behind(c: &crate::report::CgroupReport) -> String {
    let q = &c.runqueue;
    match q.culprits.first() {
        Some(top) if top.cgroup_id != 0 && top.cgroup_id != c.cgroup_id && q.wait_ns > 0 => {
            format!(
                "  (behind {} {:.0}%)",
                top.culprit,
                100.0 * top.wait_ns as f64 / q.wait_ns as f64
            )
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        CgroupReport, CpuReport, NodeTotals, RunqueueFigures, Sources, TcpRetransmits, Throttling,
    };

    fn report() -> Report {
        Report {
            kind: "interval",
            is_final: false,
            time_unix_ns: 1_700_000_000_000_000_000,
            interval_ns: 2_000_000_000,
            cgroups: (0..3)
                .map(|i| CgroupReport {
                    cgroup_id: 100 + i,
                    name: (i != 2).then(|| format!("/busy{i}")),
                    identity: crate::identity::Identity::cgroup(&format!("/busy{i}")),
                    runqueue: RunqueueFigures {
                        events: 10,
                        wait_ns: 1_000,
                        waiting_tasks: 3.0 - i as f64,
                        latency_p50_ns: 1_500,
                        latency_p99_ns: 4_200_000,
                        latency_max_ns: 8_388_608,
                        histogram: agent_ebpf::hist::Log2Hist::ZERO,
                        ..RunqueueFigures::default()
                    },
                    tcp_retransmits: vec![TcpRetransmits {
                        family: "ipv4",
                        kind: "data",
                        cause: "fast",
                        count: i,
                    }],
                    tcp_retransmit_failures: Vec::new(),
                    oom_kills: 0,
                    iowait_ns: 1_500_000,
                    throttling: (i == 0).then_some(Throttling {
                        periods: 20,
                        throttled_periods: 19,
                        throttled_ns: 1_600_000_000,
                        throttled_pct: 95.0,
                        durations: None,
                    }),
                    throttled_local_ns: (i == 0).then_some(1_500_000_000),
                    pressure: None,
                    memory_events: None,
                    reclaim_stalls: None,
                })
                .collect(),
            other: None,
            entities_overflow: 0,
            cpus: vec![CpuReport {
                cpu: 0,
                runqueue_wait_ns: 4_000_000_000,
                runqueue_length: 2.0,
                iowait_ns: 0,
                proc_stat_iowait_ns: 0,
            }],
            disks: vec![],
            sources: Sources {
                throttling: "cpu.stat",
            },
            probes: vec![],
            node: NodeTotals {
                tcp_retransmits: 3,
                oom_kills: 0,
                pressure: None,
            },
            kernel_errors: vec![],
            maps: vec![],
            map_memory: vec![],
        }
    }

    #[test]
    fn human_units() {
        assert_eq!(human_ns(850), "850ns");
        assert_eq!(human_ns(12_345), "12.3µs");
        assert_eq!(human_ns(4_210_000), "4.21ms");
        assert_eq!(human_ns(1_200_000_000), "1.20s");
    }

    #[test]
    fn table_lists_top_cgroups_and_cpus() {
        let t = table(&report(), 2);
        assert!(t.contains("cpu0 2.00"), "{t}");
        assert!(t.contains("/busy0") && t.contains("/busy1"), "{t}");
        assert!(!t.contains("cgroup id 102"), "{t}");
        assert!(t.contains("… 1 more cgroups"), "{t}");
        assert!(t.contains("4.20ms"), "{t}");
        assert!(t.contains("node: 3 TCP retransmits, 0 OOM kills"), "{t}");
        assert!(
            t.contains("   95 "),
            "throttled % of the limited cgroup: {t}"
        );
        let all = table(&report(), 10);
        assert!(all.contains("cgroup id 102"), "{all}");
        // The neighbour that ran for most of a cgroup's wait follows its name; the time it
        // kept others waiting is its CAUSED.
        let mut r = report();
        r.cgroups[0].runqueue.wait_ns = 1_000;
        r.cgroups[0].runqueue.culprits = vec![crate::report::Culprit {
            cgroup_id: 101,
            culprit: "/busy1".into(),
            wait_ns: 950,
        }];
        r.cgroups[1].runqueue.caused_ns = r.interval_ns / 2;
        let t = table(&r, 2);
        assert!(t.contains("/busy0  (behind /busy1 95%)"), "{t}");
        assert!(
            t.contains("   0.50 "),
            "busy1 kept half a task waiting: {t}"
        );
    }

    #[test]
    fn json_lines_carry_the_type_and_final_flag() {
        let line = json_line(&report());
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "interval");
        assert_eq!(v["final"], false);
        assert_eq!(v["cgroups"][0]["runqueue"]["latency_p99_ns"], 4_200_000);
        assert_eq!(v["cgroups"][1]["tcp_retransmits"][0]["family"], "ipv4");
        assert_eq!(v["node"]["tcp_retransmits"], 3);
    }

    #[test]
    fn oom_kills_are_one_line_each() {
        let kill = OomKill {
            kind: "oom_kill",
            time_unix_ns: 1,
            pid: 42,
            tid: 42,
            comm: "hog".into(),
            cgroup_id: 7,
            cgroup: Some("/pod/ctr".into()),
            constraint: "memcg",
            constraint_cgroup: Some("/pod".into()),
            constraint_source: "kernel",
            oom_score_adj: Some(0),
        };
        assert_eq!(
            oom_line(&kill),
            "!! OOM KILL  pid 42 (hog) in /pod/ctr  [memcg OOM of /pod, oom_score_adj 0]\n"
        );
        let v: serde_json::Value = serde_json::from_str(&json_line(&kill)).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["pid"].as_u64()),
            (Some("oom_kill"), Some(42))
        );
    }
}

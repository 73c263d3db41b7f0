//! Local output of each report: a compact table for people, JSON lines for programs.

use std::io::Write;

use serde::Serialize;

use crate::{config::Output, probes::HookStatus, report::Report};

pub struct Emitter {
    format: Output,
    top: usize,
}

#[derive(Serialize)]
struct Ready<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    probes: &'a [HookStatus],
}

impl Emitter {
    pub fn new(format: Output, top: usize) -> Emitter {
        Emitter { format, top }
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

    /// Writes to stdout, ignoring a closed pipe (`nodesat run | head` must not crash).
    fn write(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
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
        "{:>8} {:>9} {:>9} {:>9} {:>9}  CGROUP",
        "WAITING", "RQ_P50", "RQ_P99", "RQ_MAX", "WAITS"
    );
    for c in r.cgroups.iter().take(top) {
        let q = &c.runqueue;
        let name = c
            .name
            .clone()
            .unwrap_or_else(|| format!("cgroup id {}", c.cgroup_id));
        let _ = writeln!(
            s,
            "{:>8.2} {:>9} {:>9} {:>9} {:>9}  {name}",
            q.waiting_tasks,
            human_ns(q.latency_p50_ns),
            human_ns(q.latency_p99_ns),
            human_ns(q.latency_max_ns),
            q.events
        );
    }
    if r.cgroups.len() > top {
        let _ = writeln!(s, "… {} more cgroups", r.cgroups.len() - top);
    }
    for e in &r.kernel_errors {
        let _ = writeln!(s, "kernel errors: {} {} ×{}", e.probe, e.error, e.count);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CgroupReport, CpuReport, RunqueueFigures};

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
                    runqueue: RunqueueFigures {
                        events: 10,
                        wait_ns: 1_000,
                        waiting_tasks: 3.0 - i as f64,
                        latency_p50_ns: 1_500,
                        latency_p99_ns: 4_200_000,
                        latency_max_ns: 8_388_608,
                    },
                })
                .collect(),
            cpus: vec![CpuReport {
                cpu: 0,
                runqueue_wait_ns: 4_000_000_000,
                runqueue_length: 2.0,
            }],
            probes: vec![],
            kernel_errors: vec![],
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
        let all = table(&report(), 10);
        assert!(all.contains("cgroup id 102"), "{all}");
    }

    #[test]
    fn json_lines_carry_the_type_and_final_flag() {
        let line = json_line(&report());
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "interval");
        assert_eq!(v["final"], false);
        assert_eq!(v["cgroups"][0]["runqueue"]["latency_p99_ns"], 4_200_000);
    }
}

//! Run-queue collection: reads the `RUNQ_*` maps (see `agent_ebpf::runqueue`) and turns the
//! deltas into per-cgroup latency quantiles and waiting tasks, and per-CPU run-queue length.

use std::{collections::HashMap, time::Duration};

use agent_ebpf::{
    hist::Log2Hist,
    runqueue::{
        CausedKey, ERRORS_LEN, MAP_CAUSED, MAP_CPU, MAP_LATENCY, MAP_MISMATCH_SEQ, MAP_MISMATCHES,
        Mismatch, RunqCpu,
    },
};
use aya::Ebpf;

use super::maps;
use crate::{
    core::{
        counters::{Counter, Snapshot, per_cpu_delta},
        histogram::HistStats,
    },
    probes::{ProbeError, catalog::RUNQUEUE},
    report::{CpuReport, KernelError, RunqueueFigures},
};

/// Names of the kernel error counters, by index (`agent_ebpf::runqueue::ERR_*`).
const ERROR_NAMES: [&str; agent_ebpf::runqueue::ERRORS_LEN as usize] =
    ["enqueue_update", "latency_update", "pending_mismatch"];

/// One reading of the run-queue maps.
#[derive(Debug, Default)]
pub struct Reading {
    pub latency: Snapshot<u64, Log2Hist>,
    /// Cumulative wait of each victim cgroup while each culprit ran on its CPU, ns.
    pub caused: Snapshot<CausedKey, u64>,
    /// Cumulative wait per CPU, ns, indexed by CPU id.
    pub cpu_wait: Vec<u64>,
    pub errors: Vec<u64>,
}

/// The interval's run-queue figures.
#[derive(Debug, Default)]
pub struct Interval {
    pub cgroups: Vec<(u64, RunqueueFigures)>,
    /// The interval's wait by (victim, culprit), ns, largest first.
    pub caused: Vec<(CausedKey, u64)>,
    pub cpus: Vec<CpuReport>,
    pub errors: Vec<KernelError>,
}

#[derive(Debug, Default)]
pub struct Runqueue {
    prev: Reading,
    /// With `--debug-runqueue on`: the last mismatch record logged, per CPU.
    debug_seen: Option<HashMap<u32, u64>>,
}

/// Reads the maps (the only part of this module that touches the kernel).
pub fn read(ebpf: &Ebpf) -> Result<Reading, ProbeError> {
    let cpus: Vec<RunqCpu> = maps::per_cpu_value(ebpf, MAP_CPU)?;
    Ok(Reading {
        latency: maps::hash(ebpf, MAP_LATENCY)?,
        caused: maps::hash(ebpf, MAP_CAUSED)?,
        cpu_wait: cpus.iter().map(|c| c.wait_ns).collect(),
        errors: (0..ERRORS_LEN as usize)
            .map(|i| cpus.iter().map(|c| c.errors[i]).sum())
            .collect(),
    })
}

impl Runqueue {
    /// With `debug`, each interval logs the mismatches the programs recorded since the last.
    pub fn new(debug: bool) -> Runqueue {
        Runqueue {
            debug_seen: debug.then(HashMap::new),
            ..Runqueue::default()
        }
    }

    /// Takes the reading that the first interval is measured from.
    pub fn baseline(&mut self, ebpf: &Ebpf) -> Result<(), ProbeError> {
        self.prev = read(ebpf)?;
        Ok(())
    }

    pub fn collect(&mut self, ebpf: &Ebpf, elapsed: Duration) -> Result<Interval, ProbeError> {
        if let Some(seen) = &mut self.debug_seen {
            log_mismatches(ebpf, seen)?;
        }
        let cur = read(ebpf)?;
        let online = aya::util::online_cpus().unwrap_or_default();
        let interval = summarize(&cur, &self.prev, elapsed, &online);
        self.prev = cur;
        Ok(interval)
    }
}

/// Logs the mismatch records newer than `seen` (per CPU) and moves `seen` on.
fn log_mismatches(ebpf: &Ebpf, seen: &mut HashMap<u32, u64>) -> Result<(), ProbeError> {
    let slots = maps::array::<Mismatch>(ebpf, MAP_MISMATCHES)?;
    let recorded: Vec<u64> = maps::per_cpu_value(ebpf, MAP_MISMATCH_SEQ)?;
    let fresh = new_mismatches(&slots, seen);
    for m in &fresh {
        tracing::info!("{}", describe_mismatch(m));
    }
    let logged = fresh.len() as u64;
    let mut total_new = 0;
    for (cpu, &n) in recorded.iter().enumerate() {
        let last = seen.entry(cpu as u32).or_insert(0);
        total_new += n.saturating_sub(*last);
        *last = (*last).max(n);
    }
    if total_new > logged {
        tracing::info!(
            "{} pending mismatch record(s) overwritten before they were read",
            total_new - logged
        );
    }
    Ok(())
}

/// The records newer than what `seen` holds for their CPU, oldest first (pure).
pub fn new_mismatches(slots: &[Mismatch], seen: &HashMap<u32, u64>) -> Vec<Mismatch> {
    let mut fresh: Vec<Mismatch> = slots
        .iter()
        .copied()
        .filter(|m| m.seq > seen.get(&m.cpu).copied().unwrap_or(0))
        .collect();
    fresh.sort_by_key(|m| (m.now_ns, m.cpu, m.seq));
    fresh
}

fn comm(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// One mismatch, for the log (pure).
pub fn describe_mismatch(m: &Mismatch) -> String {
    format!(
        "pending mismatch #{} on cpu {} at {} ns: parked pid {} ({:?}, key {:#x}), but pid {} \
         (tgid {}, {:?}, key {:#x}, {}) left the CPU; next key {:#x}",
        m.seq,
        m.cpu,
        m.now_ns,
        m.parked_pid,
        comm(&m.parked_comm),
        m.parked,
        m.prev_pid,
        m.prev_tgid,
        comm(&m.prev_comm),
        m.prev,
        if m.prev_runnable == 1 {
            "still runnable"
        } else {
            "going to sleep"
        },
        m.next
    )
}

/// The interval's figures from two readings `elapsed` apart (pure).
pub fn summarize(
    cur: &Reading,
    prev: &Reading,
    elapsed: Duration,
    online_cpus: &[u32],
) -> Interval {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let per_ns = |ns: u64| ns as f64 / 1e9 / secs;
    let deltas: HashMap<u64, Log2Hist> = cur.latency.delta_since(&prev.latency);
    let cgroups = deltas
        .into_iter()
        .map(|(cgroup, h)| {
            let figures = RunqueueFigures {
                events: h.count(),
                wait_ns: h.sum_ns,
                waiting_tasks: per_ns(h.sum_ns),
                latency_p50_ns: h.quantile(0.50).unwrap_or(0),
                latency_p99_ns: h.quantile(0.99).unwrap_or(0),
                latency_max_ns: h.max().unwrap_or(0),
                histogram: h,
                ..RunqueueFigures::default()
            };
            (cgroup, figures)
        })
        .collect();
    let cpu_wait = per_cpu_delta(&cur.cpu_wait, &prev.cpu_wait);
    let cpus = online_cpus
        .iter()
        .map(|&cpu| {
            let wait = cpu_wait.get(cpu as usize).copied().unwrap_or(0);
            CpuReport {
                cpu,
                runqueue_wait_ns: wait,
                runqueue_length: per_ns(wait),
                iowait_ns: 0,
                proc_stat_iowait_ns: 0,
            }
        })
        .collect();
    let errors = cur
        .errors
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let d = c.delta(prev.errors.get(i).unwrap_or(&0));
            (d > 0).then(|| KernelError {
                probe: RUNQUEUE.name,
                error: ERROR_NAMES.get(i).copied().unwrap_or("unknown"),
                count: d,
            })
        })
        .collect();
    let mut caused: Vec<(CausedKey, u64)> =
        cur.caused.delta_since(&prev.caused).into_iter().collect();
    caused.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Interval {
        cgroups,
        caused,
        cpus,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_records_are_taken_newest_unseen_in_order() {
        let rec = |seq: u64| Mismatch {
            seq,
            now_ns: seq * 10,
            cpu: 1,
            parked_pid: 42,
            prev_pid: 7,
            parked_comm: *b"kworker/1:1\0\0\0\0\0",
            ..Mismatch::default()
        };
        // Slot seq % 4; slot 2 never written (seq 0).
        let slots = [rec(4), rec(5), Mismatch::default(), rec(3)];
        let fresh = new_mismatches(&slots, &HashMap::from([(1, 3)]));
        assert_eq!(fresh.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5]);
        let line = describe_mismatch(&fresh[0]);
        assert!(line.contains("parked pid 42 (\"kworker/1:1\""), "{line}");
        assert!(line.contains("on cpu 1"), "{line}");
    }
    use crate::core::histogram::from_values;

    fn reading(latency: Vec<(u64, Log2Hist)>, cpu_wait: Vec<u64>) -> Reading {
        Reading {
            latency: Snapshot::from_iter(latency),
            caused: Snapshot::default(),
            cpu_wait,
            errors: vec![0; 3],
        }
    }

    #[test]
    fn waiting_tasks_is_wait_time_over_interval() {
        let prev = reading(vec![(7, from_values([1_000]))], vec![0, 0]);
        // 7 waited 1 s more over a 0.5 s interval, spread over both CPUs: 2 tasks waiting on
        // average.
        let cur = reading(
            vec![(7, from_values([1_000, 500_000_000, 500_000_000]))],
            vec![750_000_000, 250_000_000],
        );
        let i = summarize(&cur, &prev, Duration::from_millis(500), &[0, 1]);
        let (id, f) = &i.cgroups[0];
        assert_eq!(*id, 7);
        assert_eq!(f.events, 2);
        assert_eq!(f.wait_ns, 1_000_000_000);
        assert!((f.waiting_tasks - 2.0).abs() < 1e-9);
        assert!(f.latency_p50_ns > 268_435_456 && f.latency_p50_ns <= 536_870_912);
        assert!(f.latency_max_ns >= 500_000_000);
        assert_eq!(i.cpus[0].runqueue_length, 1.5);
        assert_eq!(i.cpus[1].runqueue_length, 0.5);
    }

    #[test]
    fn idle_cgroups_are_left_out_and_offline_cpus_skipped() {
        let prev = reading(vec![(7, from_values([1_000]))], vec![5, 5, 5]);
        let cur = reading(vec![(7, from_values([1_000]))], vec![5, 5, 5]);
        let i = summarize(&cur, &prev, Duration::from_secs(1), &[0, 2]);
        assert!(i.cgroups.is_empty());
        assert_eq!(i.cpus.iter().map(|c| c.cpu).collect::<Vec<_>>(), vec![0, 2]);
    }

    /// The kernel's split of a wait over the runs it overlapped (shared code, tested here).
    #[test]
    fn a_wait_is_split_over_the_runs_it_overlapped_and_the_parts_sum_to_it() {
        use agent_ebpf::runqueue::{CULPRIT_UNSEEN, RUNS, Run, Split, split_wait};
        let mut runs = [Run::default(); RUNS];
        // Runs on one CPU: cgroup 7 from 20 to 100, idle (0) to 150, 9 to 400, 7 to 1000.
        let ran = [(7, 20, 100), (0, 100, 150), (9, 150, 400), (7, 400, 1000)];
        for (i, &(cgroup, start_ns, end_ns)) in ran.iter().enumerate() {
            runs[i] = Run {
                cgroup,
                start_ns,
                end_ns,
            };
        }
        // A wait from 50 to 1000: 7 ran 50 + 600, idle 50, 9 250.
        let part = |s: &Split, c: u64| {
            (0..s.culprits.len())
                .filter(|&i| s.ns[i] != 0 && s.culprits[i] == c)
                .map(|i| s.ns[i])
                .sum::<u64>()
        };
        let s = split_wait(&runs, 4, 50, 0, 1000);
        assert_eq!(
            (part(&s, 7), part(&s, 0), part(&s, 9), s.unseen_ns),
            (650, 50, 250, 0)
        );
        // A wait that began before the oldest remembered run: the rest is unseen.
        let s = split_wait(&runs, 4, 0, 0, 1000);
        assert_eq!(part(&s, 7) + part(&s, 0) + part(&s, 9), 980);
        assert_eq!(s.unseen_ns, 20);
        // More runs than the CPU remembers: the ring wrapped, only the last RUNS count.
        let mut ring = [Run::default(); RUNS];
        for i in 0..(RUNS as u64 + 3) {
            ring[(i as usize) % RUNS] = Run {
                cgroup: 100 + i,
                start_ns: i * 10,
                end_ns: (i + 1) * 10,
            };
        }
        let end = (RUNS as u64 + 3) * 10;
        let s = split_wait(&ring, RUNS as u64 + 3, 0, 0, end);
        let seen: u64 = s.ns.iter().sum();
        assert_eq!(seen + s.unseen_ns, end);
        // Only SPLIT culprits get a slot; the others' time is unseen.
        assert_eq!(seen, 10 * s.ns.len() as u64);
        assert!(
            s.culprits
                .iter()
                .all(|&c| c >= 100 + 3 && c != CULPRIT_UNSEEN)
        );
        // Moved here at 400 while waiting since 50: only this CPU's runs from 400 count.
        let s = split_wait(&runs, 4, 50, 400, 1000);
        assert_eq!((part(&s, 7), part(&s, 9), s.unseen_ns), (600, 0, 350));
        // No runs recorded yet (just attached): all of it unseen.
        let s = split_wait(&[Run::default(); RUNS], 0, 5, 0, 25);
        assert_eq!(s.unseen_ns, 20);
    }

    #[test]
    fn culprits_are_ranked_top_three_then_nobody_then_the_rest_summed() {
        use crate::report::{Culprit, rank_culprits};
        let c = |id: u64, label: &str, ns: u64| Culprit {
            cgroup_id: id,
            culprit: label.into(),
            wait_ns: ns,
        };
        let ranked = rank_culprits(vec![
            c(5, "a", 10),
            c(6, "b", 50),
            c(0, Culprit::IDLE, 3),
            c(7, "c", 30),
            c(8, "d", 20),
            c(5, "a", 15),
            c(0, Culprit::UNATTRIBUTED, 4),
            c(9, "e", 1),
        ]);
        let got: Vec<(&str, u64)> = ranked
            .iter()
            .map(|c| (c.culprit.as_str(), c.wait_ns))
            .collect();
        assert_eq!(
            got,
            vec![
                ("b", 50),
                ("c", 30),
                ("a", 25),
                ("idle", 3),
                ("unattributed", 4),
                ("other", 21)
            ]
        );
        assert_eq!(ranked.iter().map(|c| c.wait_ns).sum::<u64>(), 133);
    }

    #[test]
    fn kernel_errors_are_reported_as_deltas() {
        let mut prev = reading(vec![], vec![]);
        prev.errors = vec![1, 0, 5];
        let mut cur = reading(vec![], vec![]);
        cur.errors = vec![1, 0, 8];
        let i = summarize(&cur, &prev, Duration::from_secs(1), &[]);
        assert_eq!(i.errors.len(), 1);
        assert_eq!(
            (i.errors[0].error, i.errors[0].count),
            ("pending_mismatch", 3)
        );
    }
}

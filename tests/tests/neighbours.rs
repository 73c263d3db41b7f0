//! Noisy neighbours: who ran on the CPU while a cgroup's tasks waited for it.
//!
//! Three cgroups on one CPU: `victim` runs a task that needs the CPU every 1 ms for 50 µs,
//! `noisy` three spinners, `quiet` a task that only sleeps. The victim's wait must be blamed on
//! `noisy` (≥ 90% of it), never on `quiet`; the parts of every cgroup's wait must sum to it,
//! and the wait the cgroups caused must account for the wait measured on the CPUs. Then the
//! same load unpinned, over every CPU: the figures must still sum.

use std::process::Command;
use std::time::Duration;

use nodesat_tests::{
    Agent, Report, TestCgroup, TestProcess, allowed_cpus, load_bin, skip_if_unprivileged, spawn_in,
};

const INTERVAL: &str = "2s";
const REPORT_TIMEOUT: Duration = Duration::from_secs(2 + 10);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Intervals measured per phase (after one warm-up interval).
const MEASURED: usize = 2;

/// The three cgroups and their load; processes drop (are killed) before the cgroups.
struct Workload {
    _processes: Vec<TestProcess>,
    victim: TestCgroup,
    noisy: TestCgroup,
    quiet: TestCgroup,
}

impl Workload {
    /// Starts the load, every process pinned to `cpu` (`None`: free to run anywhere).
    fn start(tag: &str, cpu: Option<u32>) -> Workload {
        let victim = TestCgroup::create(&format!("victim-{tag}")).expect("create victim");
        let noisy = TestCgroup::create(&format!("noisy-{tag}")).expect("create noisy");
        let quiet = TestCgroup::create(&format!("quiet-{tag}")).expect("create quiet");
        let pinned = |args: &[&str]| {
            let mut cmd = match cpu {
                Some(c) => {
                    let mut cmd = Command::new("taskset");
                    cmd.args(["-c", &c.to_string(), load_bin!()]);
                    cmd
                }
                None => Command::new(load_bin!()),
            };
            cmd.args(args);
            cmd
        };
        let mut processes = Vec::new();
        processes.push(
            spawn_in(
                &victim,
                pinned(&["sleeper", "--period-ms", "1", "--work-us", "50"]),
            )
            .expect("spawn victim"),
        );
        let spinners = match cpu {
            Some(_) => 3,
            None => 3 * allowed_cpus().len(),
        };
        for _ in 0..spinners {
            processes.push(spawn_in(&noisy, pinned(&["spin"])).expect("spawn spinner"));
        }
        let mut sleep = Command::new("sleep");
        sleep.arg("3600");
        processes.push(spawn_in(&quiet, sleep).expect("spawn quiet"));
        eprintln!(
            "{tag}: victim id {}, noisy id {} ({spinners} spinners), quiet id {}, cpu {cpu:?}",
            victim.id(),
            noisy.id(),
            quiet.id()
        );
        Workload {
            _processes: processes,
            victim,
            noisy,
            quiet,
        }
    }
}

/// The measured intervals (after a warm-up one) of an agent started now with `args`.
fn measure(args: &[&str]) -> Vec<Report> {
    let mut agent = Agent::start(INTERVAL, args);
    agent.wait_ready(READY_TIMEOUT);
    let warm_up = agent.next_interval(REPORT_TIMEOUT);
    assert!(!warm_up.is_final);
    let reports = (0..MEASURED)
        .map(|_| agent.next_interval(REPORT_TIMEOUT))
        .collect();
    agent.stop_and_collect().assert_clean_stop();
    reports
}

/// Per report: (sum of every cgroup's wait, sum of their culprits' parts, sum of the caused
/// wait of every cgroup plus the idle and unattributed parts, the CPUs' wait).
fn sums(r: &Report) -> (u64, u64, u64, u64) {
    let wait: u64 = r.cgroups.iter().map(|c| c.runqueue.wait_ns).sum();
    let parts: u64 = r
        .cgroups
        .iter()
        .flat_map(|c| &c.runqueue.culprits)
        .map(|p| p.wait_ns)
        .sum();
    let nobody: u64 = r
        .cgroups
        .iter()
        .flat_map(|c| &c.runqueue.culprits)
        .filter(|p| p.culprit == "idle" || p.culprit == "unattributed")
        .map(|p| p.wait_ns)
        .sum();
    let caused: u64 = r.cgroups.iter().map(|c| c.runqueue.caused_ns).sum::<u64>() + nobody;
    let cpus: u64 = r.cpus.iter().map(|c| c.runqueue_wait_ns).sum();
    (wait, parts, caused, cpus)
}

fn ms(ns: u64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

/// Checks that each report's figures sum: every cgroup's culprits to its wait and the caused
/// wait (with the parts nobody caused) to the wait, within 1% (the kernel adds both at once,
/// but the agent reads the two maps one after the other, so a wait ending between the reads
/// falls in different intervals), and that to the CPUs' wait within 5% (a wait is counted on
/// its CPU when it ends, and on its cgroup when the task leaves the CPU again).
fn assert_sums(reports: &[Report], phase: &str) {
    for r in reports {
        let (wait, parts, caused, cpus) = sums(r);
        eprintln!(
            "{phase}: cgroups' wait {}, culprits' parts {}, caused + idle + unattributed {}, CPUs' wait {}",
            ms(wait),
            ms(parts),
            ms(caused),
            ms(cpus)
        );
        let within = |a: u64, b: u64, rel: f64| a.abs_diff(b) as f64 <= rel * b.max(1) as f64;
        for c in &r.cgroups {
            let sum: u64 = c.runqueue.culprits.iter().map(|p| p.wait_ns).sum();
            assert!(
                within(sum, c.runqueue.wait_ns, 0.01)
                    || sum.abs_diff(c.runqueue.wait_ns) < 1_000_000,
                "{phase}: cgroup {} waited {} but its culprits sum to {}",
                c.cgroup_id,
                c.runqueue.wait_ns,
                sum
            );
        }
        assert!(
            within(parts, wait, 0.01),
            "{phase}: culprits' parts {parts} vs wait {wait}"
        );
        assert!(
            within(caused, parts, 0.01),
            "{phase}: caused {caused} vs parts {parts}"
        );
        assert!(
            within(caused, cpus, 0.05),
            "{phase}: caused {caused} vs the CPUs' wait {cpus}"
        );
    }
}

#[test]
fn the_noisy_neighbour_is_named_and_the_figures_sum() {
    if skip_if_unprivileged("the_noisy_neighbour_is_named_and_the_figures_sum") {
        return;
    }
    let cpu = *allowed_cpus().last().expect("an allowed CPU");
    let load = Workload::start("pinned", Some(cpu));
    let reports = measure(&[]);
    for r in &reports {
        let victim = r
            .cgroup(load.victim.id())
            .expect("the victim waited and is reported");
        let rq = &victim.runqueue;
        eprintln!(
            "pinned: victim waited {} in {} waits; culprits {:?}",
            ms(rq.wait_ns),
            rq.events,
            rq.culprits
                .iter()
                .map(|c| format!("{} ({}) {}", c.culprit, c.cgroup_id, ms(c.wait_ns)))
                .collect::<Vec<_>>()
        );
        let noisy = r
            .cgroup(load.noisy.id())
            .expect("the noisy cgroup is reported");
        eprintln!(
            "pinned: noisy caused {}, waited {}",
            ms(noisy.runqueue.caused_ns),
            ms(noisy.runqueue.wait_ns)
        );
        let top = rq.culprits.first().expect("the victim has culprits");
        assert_eq!(
            top.cgroup_id,
            load.noisy.id(),
            "the victim's top culprit is the noisy cgroup"
        );
        assert!(
            top.wait_ns as f64 >= 0.9 * rq.wait_ns as f64,
            "the noisy cgroup ran for {} of the victim's {} wait (< 90%)",
            top.wait_ns,
            rq.wait_ns
        );
        assert!(
            !rq.culprits.iter().any(|c| c.cgroup_id == load.quiet.id()),
            "the quiet cgroup is not among the victim's culprits"
        );
        assert!(
            noisy.runqueue.caused_ns >= top.wait_ns,
            "the noisy cgroup caused at least the victim's wait it is blamed for"
        );
        if let Some(quiet) = r.cgroup(load.quiet.id()) {
            assert_eq!(
                quiet.runqueue.caused_ns, 0,
                "the quiet cgroup caused no wait"
            );
        }
    }
    assert_sums(&reports, "pinned");
    drop(load);

    let load = Workload::start("unpinned", None);
    let reports = measure(&[]);
    for r in &reports {
        if let Some(v) = r.cgroup(load.victim.id()) {
            eprintln!(
                "unpinned: victim waited {}; culprits {:?}",
                ms(v.runqueue.wait_ns),
                v.runqueue
                    .culprits
                    .iter()
                    .map(|c| format!("{} {}", c.culprit, ms(c.wait_ns)))
                    .collect::<Vec<_>>()
            );
        }
    }
    assert_sums(&reports, "unpinned");

    // Turned off, the wait is still measured but not split.
    let off = measure(&["--neighbours", "off"]);
    for r in &off {
        let waited: u64 = r.cgroups.iter().map(|c| c.runqueue.wait_ns).sum();
        assert!(waited > 0, "--neighbours off: the wait is still measured");
        assert!(
            r.cgroups
                .iter()
                .all(|c| c.runqueue.culprits.is_empty() && c.runqueue.caused_ns == 0),
            "--neighbours off: no culprits, nothing caused"
        );
    }
}

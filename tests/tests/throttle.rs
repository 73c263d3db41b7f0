//! CFS throttling: the agent must report, for every cgroup with a CPU limit,
//! how much it was throttled, matching the kernel's own `cpu.stat`, and
//! report nothing for cgroups without a limit.
//!
//! Cgroup `limited` has a quota of 20 ms every 100 ms (20% of a CPU) and runs
//! a busy loop, so it is throttled in (nearly) every period; cgroup
//! `unlimited` runs a busy loop without a limit. The agent runs for ~8 s with
//! a 2 s interval; `limited`'s throttling summed over all its reports (the
//! final one included) must match the growth of its `cpu.stat` between the
//! agent's ready line and its exit.
//!
//! It also shows how throttling and run-queue wait overlap: a throttled task is runnable, so its
//! time throttled is run-queue wait, for nodesat as for the kernel's own scheduler statistics
//! (`/proc/<pid>/schedstat`'s run delay). `limited`'s run-queue wait must equal its spinner's
//! run delay (within [`WAIT_TOLERANCE_PCT`]) and cover most of the time it was throttled.

use std::process::Command;
use std::thread;
use std::time::Duration;

use nodesat_tests::{
    Agent, CpuStat, Report, TestCgroup, Throttling, cpu_controller, load_bin, skip,
    skip_if_unprivileged, spawn_in,
};

const TEST: &str = "throttling_matches_cpu_stat";
/// Report interval the agent runs with.
const INTERVAL: &str = "2s";
/// Longest wait for the agent to attach its probes.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent measures.
const RUN: Duration = Duration::from_secs(8);
/// `limited`'s quota: 20 ms every 100 ms.
const QUOTA_US: u64 = 20_000;
const PERIOD_US: u64 = 100_000;
/// How far the agent's sums may be from the `cpu.stat` growth, in percent.
/// The two cover slightly different stretches of time (the agent's baseline
/// is read just before its ready line, and its final report just after
/// SIGTERM), a period or two at most.
const TOLERANCE_PCT: u64 = 5;
/// How far `limited`'s run-queue wait may be from its spinner's schedstat run delay, in percent
/// (the two cover slightly different stretches of time, as above).
const WAIT_TOLERANCE_PCT: u64 = 10;
/// The source the agent must name for throttling figures.
const SOURCE: &str = "cpu.stat";

/// Whether `measured` is within `TOLERANCE_PCT` percent of `expected`.
fn close(measured: u64, expected: u64) -> bool {
    measured.abs_diff(expected) * 100 <= expected * TOLERANCE_PCT
}

/// Sums `cgroup`'s throttling over `reports`, panicking if a report lacks it;
/// prints each report's figures.
fn sum_throttling(reports: &[Report], cgroup: &TestCgroup) -> CpuStat {
    let mut sum = CpuStat::default();
    for (i, report) in reports.iter().enumerate() {
        let throttling = report
            .cgroup(cgroup.id())
            .and_then(|c| c.throttling.as_ref())
            .unwrap_or_else(|| {
                panic!(
                    "report #{i} (final: {}) has no throttling for {} (id {}), which has a \
                     CPU limit; cgroups with throttling: {:?}",
                    report.is_final,
                    cgroup.relative_path(),
                    cgroup.id(),
                    report
                        .cgroups
                        .iter()
                        .filter(|c| c.throttling.is_some())
                        .map(|c| (c.cgroup_id, c.name.as_deref()))
                        .collect::<Vec<_>>()
                )
            });
        let Throttling {
            periods,
            throttled_periods,
            throttled_ns,
            throttled_pct,
        } = *throttling;
        eprintln!(
            "report #{i} (final: {}, {:.2?}): {}: periods {periods}, throttled {throttled_periods} \
             ({throttled_pct:.1}%), throttled for {:.2?}; sources {:?}",
            report.is_final,
            Duration::from_nanos(report.interval_ns),
            cgroup.relative_path(),
            Duration::from_nanos(throttled_ns),
            report.sources,
        );
        let pct = if periods == 0 {
            0.0
        } else {
            100.0 * throttled_periods as f64 / periods as f64
        };
        assert!(
            (throttled_pct - pct).abs() < 0.01,
            "report #{i}: throttled_pct {throttled_pct} for {throttled_periods} of {periods} periods"
        );
        assert!(throttled_periods <= periods, "report #{i}: {throttling:?}");
        sum.periods += periods;
        sum.throttled_periods += throttled_periods;
        sum.throttled_ns += throttled_ns;
    }
    sum
}

#[test]
fn throttling_matches_cpu_stat() {
    if skip_if_unprivileged(TEST) {
        return;
    }
    if let Err(reason) = cpu_controller() {
        skip(TEST, &reason);
        return;
    }
    let limited = TestCgroup::create("limited").expect("create cgroup limited");
    limited
        .set_cpu_quota(QUOTA_US, PERIOD_US)
        .expect("set limited's CPU quota");
    let unlimited = TestCgroup::create("unlimited").expect("create cgroup unlimited");
    // Declared after the cgroups: dropped (killed) before them.
    let spinners: Vec<_> = [&limited, &unlimited]
        .into_iter()
        .map(|cgroup| {
            let mut cmd = Command::new(load_bin!());
            cmd.arg("spin");
            spawn_in(cgroup, cmd).expect("spawn spinner")
        })
        .collect();
    eprintln!(
        "limited: {} (id {}, quota {QUOTA_US}/{PERIOD_US} µs in {}); unlimited: {} (id {})",
        limited.relative_path(),
        limited.id(),
        limited.cpu_dir().display(),
        unlimited.relative_path(),
        unlimited.id()
    );

    let mut agent = Agent::start(INTERVAL, &[]);
    agent.wait_ready(READY_TIMEOUT);
    let before = limited.cpu_stat().expect("read limited's cpu.stat");
    let delay_before = run_delay_ns(spinners[0].pid());
    thread::sleep(RUN);
    let stopped = agent.stop_and_collect();
    let after = limited.cpu_stat().expect("read limited's cpu.stat");
    let delay_after = run_delay_ns(spinners[0].pid());
    stopped.assert_clean_stop();
    let reports = &stopped.reports;
    // 8 s at a 2 s interval: 3 or 4 reports, and the final one.
    assert!(
        reports.len() >= 4,
        "only {} reports in {RUN:?}",
        reports.len()
    );

    let kernel = after.since(&before);
    let agent_sum = sum_throttling(reports, &limited);
    eprintln!(
        "{} over {} reports: agent {agent_sum:?}; cpu.stat growth {kernel:?}",
        limited.relative_path(),
        reports.len()
    );

    // The setup: a busy loop over its quota is throttled (nearly) every
    // period, for ~80 ms of each.
    assert!(
        kernel.periods >= 60,
        "cpu.stat: {} periods in {RUN:?}",
        kernel.periods
    );
    assert!(
        kernel.throttled_periods * 10 >= kernel.periods * 9,
        "cpu.stat: a spinner over its quota throttled in only {} of {} periods",
        kernel.throttled_periods,
        kernel.periods
    );

    for (what, measured, expected) in [
        ("periods", agent_sum.periods, kernel.periods),
        (
            "throttled periods",
            agent_sum.throttled_periods,
            kernel.throttled_periods,
        ),
        ("throttled ns", agent_sum.throttled_ns, kernel.throttled_ns),
    ] {
        assert!(
            close(measured, expected),
            "{what}: the agent reported {measured}, cpu.stat grew by {expected} \
             (more than {TOLERANCE_PCT}% apart)"
        );
    }

    // Throttled time is run-queue wait: nodesat's wait for `limited` is the kernel's run delay
    // of its only task, and covers most of the time it was throttled.
    let waited: u64 = reports
        .iter()
        .filter_map(|r| r.cgroup(limited.id()))
        .map(|c| c.runqueue.wait_ns)
        .sum();
    match (delay_before, delay_after) {
        (Some(a), Some(b)) => {
            let delay = b.saturating_sub(a);
            eprintln!(
                "{}: run-queue wait {:.2?} (nodesat), run delay {:.2?} (schedstat of its spinner), \
                 throttled {:.2?} (cpu.stat), over {RUN:?}",
                limited.relative_path(),
                Duration::from_nanos(waited),
                Duration::from_nanos(delay),
                Duration::from_nanos(kernel.throttled_ns)
            );
            assert!(
                waited.abs_diff(delay) * 100 <= delay * WAIT_TOLERANCE_PCT,
                "limited's run-queue wait {waited} ns vs its spinner's run delay {delay} ns \
                 (more than {WAIT_TOLERANCE_PCT}% apart)"
            );
            assert!(
                waited * 2 >= kernel.throttled_ns,
                "limited's run-queue wait {waited} ns should cover most of its throttled time \
                 {} ns: a throttled task is runnable",
                kernel.throttled_ns
            );
        }
        _ => eprintln!("no /proc/<pid>/schedstat here: run delay not compared"),
    }

    for (i, report) in reports.iter().enumerate() {
        if let Some(c) = report.cgroup(unlimited.id()) {
            assert!(
                c.throttling.is_none(),
                "report #{i}: {} has no CPU limit, yet throttling {:?}",
                unlimited.relative_path(),
                c.throttling
            );
        }
        assert_eq!(
            report.sources.throttling.as_deref(),
            Some(SOURCE),
            "report #{i}: sources.throttling"
        );
    }
}

/// A task's time spent runnable but not running so far, ns (`/proc/<pid>/schedstat`'s second
/// field, the scheduler's run delay), if the kernel keeps it.
fn run_delay_ns(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

//! Run-queue latency: the agent must attribute scheduling delay to the cgroup
//! whose tasks actually wait.
//!
//! Cgroup `busy` runs 3 spinners per CPU, so its tasks queue behind each
//! other; cgroup `light` runs one task that wakes every 10 ms for ~100 µs, so
//! (with the CPU scheduler's per-cgroup fairness) it barely waits.

use std::process::Command;
use std::time::Duration;

use nodesat_tests::{
    Agent, Report, TestCgroup, TestProcess, allowed_cpus, load_bin, skip_if_unprivileged, spawn_in,
};

/// Report interval the agent runs with.
const INTERVAL: &str = "2s";
/// Longest wait for one interval report (the interval plus slack).
const REPORT_TIMEOUT: Duration = Duration::from_secs(2 + 10);
/// Longest wait for the agent to attach its probes.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds that hold whatever else runs on the machine (a ratio of light's figures to busy's
/// does not: a compiler beside the test gave light an 8 ms p99 and 0.85 waiting tasks, all of
/// it real waiting behind that compiler). busy runs 3 spinners per CPU, so at least 2 per CPU
/// wait whenever the others run; we ask for half of that. light is one task, so on average at
/// most one of its tasks waits.
const BUSY_MIN_WAITING_PER_CPU: f64 = 1.0;
const LIGHT_MAX_WAITING: f64 = 1.05;

/// The two cgroups and their load. Fields drop in order: processes first.
struct Workload {
    _processes: Vec<TestProcess>,
    busy: TestCgroup,
    light: TestCgroup,
}

impl Workload {
    /// Starts 3 × (online CPUs) spinners in `busy` and one sleeper in `light`.
    fn start() -> Self {
        let busy = TestCgroup::create("busy").expect("create cgroup busy");
        let light = TestCgroup::create("light").expect("create cgroup light");
        let mut processes = Vec::new();
        let spinners = 3 * allowed_cpus().len();
        for _ in 0..spinners {
            let mut cmd = Command::new(load_bin!());
            cmd.arg("spin");
            processes.push(spawn_in(&busy, cmd).expect("spawn spinner"));
        }
        let mut cmd = Command::new(load_bin!());
        // 10 µs of work per wake-up: with 100 µs, about 2.5% of bursts (100 µs / 4 ms tick)
        // are preempted by the scheduler tick and wait a whole spinner slice (measured here:
        // light p99 3-4 ms instead of ~16 µs), which is real latency but not "light". Waking
        // every 2 ms gives ~1000 waits per interval, so p99 is not decided by two stray waits.
        cmd.args(["sleeper", "--period-ms", "2", "--work-us", "10"]);
        processes.push(spawn_in(&light, cmd).expect("spawn sleeper"));
        eprintln!(
            "workload: {spinners} spinners in {} (id {}), 1 sleeper in {} (id {})",
            busy.relative_path(),
            busy.id(),
            light.relative_path(),
            light.id()
        );
        Self {
            _processes: processes,
            busy,
            light,
        }
    }
}

/// Waits for the agent to be ready, skips the first (warm-up) interval and
/// returns the next report.
fn measure(agent: &mut Agent) -> Report {
    let ready = agent.wait_ready(READY_TIMEOUT);
    eprintln!("agent ready, probes: {:?}", ready.probes);
    let warm_up = agent.next_interval(REPORT_TIMEOUT);
    assert!(!warm_up.is_final, "warm-up report is not final");
    let report = agent.next_interval(REPORT_TIMEOUT);
    assert!(!report.is_final, "measured report is not final");
    report
}

/// Prints the measured figures and checks that busy's waiting dwarfs light's
/// and that every CPU's run queue was longer than 1.
fn check_attribution(report: &Report, load: &Workload) {
    for probe in &report.probes {
        eprintln!(
            "probe {}/{} ({}): attached={} error={:?} runs={} run_time={}ns",
            probe.probe,
            probe.hook,
            probe.variant,
            probe.attached,
            probe.error,
            probe.run_count,
            probe.run_time_ns
        );
    }
    let find = |cgroup: &TestCgroup| {
        let found = report.cgroup(cgroup.id()).unwrap_or_else(|| {
            panic!(
                "no entry for {} (id {}) in the report; cgroups reported: {:?}",
                cgroup.relative_path(),
                cgroup.id(),
                report
                    .cgroups
                    .iter()
                    .map(|c| (c.cgroup_id, c.name.as_deref()))
                    .collect::<Vec<_>>()
            )
        });
        let rq = &found.runqueue;
        eprintln!(
            "{}: events={} wait={}ns waiting_tasks={:.2} p50={}ns p99={}ns max={}ns",
            cgroup.relative_path(),
            rq.events,
            rq.wait_ns,
            rq.waiting_tasks,
            rq.latency_p50_ns,
            rq.latency_p99_ns,
            rq.latency_max_ns
        );
        if let Some(name) = &found.name {
            assert_eq!(
                name,
                &cgroup.relative_path(),
                "name of cgroup {}",
                cgroup.id()
            );
        }
        found
    };
    let busy = find(&load.busy);
    let light = find(&load.light);
    for cpu in &report.cpus {
        eprintln!(
            "cpu {}: runqueue_length={:.2} runqueue_wait={}ns",
            cpu.cpu, cpu.runqueue_length, cpu.runqueue_wait_ns
        );
    }

    assert!(busy.runqueue.events > 0, "busy has run-queue events");
    assert!(light.runqueue.events > 0, "light has run-queue events");
    let cpus = allowed_cpus().len() as f64;
    assert!(
        busy.runqueue.waiting_tasks >= BUSY_MIN_WAITING_PER_CPU * cpus,
        "busy waits with {:.2} tasks on average, should be >= {BUSY_MIN_WAITING_PER_CPU} per CPU ({cpus} CPUs)",
        busy.runqueue.waiting_tasks
    );
    assert!(
        light.runqueue.waiting_tasks <= LIGHT_MAX_WAITING,
        "light (one task) waits with {:.2} tasks on average: someone else's wait was put on it",
        light.runqueue.waiting_tasks
    );
    assert!(
        busy.runqueue.waiting_tasks > light.runqueue.waiting_tasks,
        "busy waits with {:.2} tasks, light with {:.2}",
        busy.runqueue.waiting_tasks,
        light.runqueue.waiting_tasks
    );
    assert!(!report.cpus.is_empty(), "report has per-CPU figures");
    // The spinners run only where this test may run (a cpuset may leave CPUs out).
    let allowed = allowed_cpus();
    for cpu in report.cpus.iter().filter(|c| allowed.contains(&c.cpu)) {
        assert!(
            cpu.runqueue_length > 1.0,
            "cpu {} runqueue_length {} should be > 1 with 3 spinners per CPU",
            cpu.cpu,
            cpu.runqueue_length
        );
    }
}

#[test]
fn runqueue_attributes_waiting_to_the_busy_cgroup() {
    if skip_if_unprivileged("runqueue_attributes_waiting_to_the_busy_cgroup") {
        return;
    }
    let load = Workload::start();
    let mut agent = Agent::start(INTERVAL, &[]);
    let report = measure(&mut agent);
    check_attribution(&report, &load);

    let (status, final_report) = agent.stop();
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    let final_report = final_report.expect("a final report after SIGTERM");
    assert!(final_report.is_final);
}

#[test]
fn runqueue_works_with_every_probe_variant() {
    if skip_if_unprivileged("runqueue_works_with_every_probe_variant") {
        return;
    }
    let load = Workload::start();
    for variant in ["tp_btf", "raw_tracepoint", "tracepoint"] {
        eprintln!("--- probe variant {variant}");
        let mut agent = Agent::start(INTERVAL, &["--probe-variant", variant]);
        let report = measure(&mut agent);
        assert!(
            report.probes_for("runqueue").next().is_some(),
            "a runqueue probe is reported"
        );
        // Forcing a tracepoint variant applies to every probe on tracepoints; the throttle
        // and oom_constraint probes hook kernel functions (fentry/kprobe) and keep their own
        // chain.
        for probe in report
            .probes
            .iter()
            .filter(|p| !["throttle", "oom_constraint"].contains(&p.probe.as_str()))
        {
            assert_eq!(
                probe.variant, variant,
                "variant of probe {}/{}",
                probe.probe, probe.hook
            );
            assert!(
                probe.attached,
                "probe {}/{} ({variant}) attached; error: {:?}",
                probe.probe, probe.hook, probe.error
            );
        }
        check_attribution(&report, &load);

        let (status, _) = agent.stop();
        assert!(status.success(), "agent ({variant}) exit status: {status}");
    }
}

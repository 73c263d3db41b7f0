//! OOM kills: the agent must print an `oom_kill` event as soon as the kernel
//! OOM-kills a process (not at the next interval), naming the process and its
//! cgroup, and count the kills on that cgroup in its interval reports.
//!
//! Cgroup `mem` is limited to 64 MiB; `nodesat-load alloc` touches 256 MiB
//! in it, twice, one after the other, and is OOM-killed each time (memcg
//! constraint). Cgroup `quiet`, without a limit, runs a sleeper that must
//! never be killed. The agent's interval is 10 s, much longer than the 3 s
//! within which each event must arrive.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nodesat_tests::{
    Agent, OomKill, TestCgroup, load_bin, memory_controller, oom_kills_of, skip,
    skip_if_unprivileged, spawn_in,
};

const TEST: &str = "oom_kills_are_reported_with_comm_and_cgroup";
/// Report interval the agent runs with.
const INTERVAL: &str = "10s";
/// Longest wait for the agent to attach its probes.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Memory limit of cgroup `mem`.
const LIMIT: u64 = 64 << 20;
/// What `alloc` touches: far beyond the limit.
const ALLOC_MIB: u32 = 256;
/// Processes to be OOM-killed, one after the other.
const KILLS: u64 = 2;
/// The `oom_score_adj` of the `alloc` processes (0 would be the default, so
/// the agent reporting it shows it reads it).
const OOM_SCORE_ADJ: i32 = 500;
/// Longest an `alloc` may live before the OOM killer gets it.
const DEATH_TIMEOUT: Duration = Duration::from_secs(30);
/// An event must arrive within this long of the process's death.
const EVENT_LATENCY: Duration = Duration::from_secs(3);
/// How far the event's `time_unix_ns` may be from the death as seen here.
const CLOCK_SLACK: Duration = Duration::from_secs(5);
/// The kernel's name for the process (`comm`).
const COMM: &str = "nodesat-load";

/// Nanoseconds since the epoch, now.
fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// Prints `kill`, and when it was received relative to the death seen at
/// `died`.
fn print_event(kill: &OomKill, died: Option<Instant>) {
    let when = match died {
        Some(died) if kill.received >= died => {
            format!("{:.0?} after the death was seen", kill.received - died)
        }
        Some(died) => format!("{:.0?} before the death was seen", died - kill.received),
        None => "with no death to compare".to_owned(),
    };
    eprintln!(
        "oom_kill event: pid {} comm {:?} cgroup_id {} cgroup {:?} constraint {:?} \
         oom_score_adj {} (received {when})",
        kill.pid, kill.comm, kill.cgroup_id, kill.cgroup, kill.constraint, kill.oom_score_adj,
    );
}

/// Runs one `alloc` in `mem` until the OOM killer kills it; returns its pid
/// and the events that arrived by `EVENT_LATENCY` after its death, which
/// must include one for it.
fn oom_kill_one(agent: &mut Agent, mem: &TestCgroup, run: u64) -> (u32, Vec<OomKill>) {
    let mut cmd = Command::new(load_bin!());
    cmd.args(["alloc", "--mb", &ALLOC_MIB.to_string()])
        .args(["--oom-score-adj", &OOM_SCORE_ADJ.to_string()]);
    let started = Instant::now();
    let started_ns = unix_ns();
    let mut alloc = spawn_in(mem, cmd).expect("spawn alloc");
    let pid = alloc.pid();
    let status = alloc
        .wait_within(DEATH_TIMEOUT)
        .expect("wait for alloc")
        .unwrap_or_else(|| {
            panic!("alloc #{run} (pid {pid}) still alive after {DEATH_TIMEOUT:?} over its limit")
        });
    let died = Instant::now();
    let died_ns = unix_ns();
    eprintln!(
        "alloc #{run} (pid {pid}) died after {:.0?}: {status}",
        died - started
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "alloc #{run} must die of SIGKILL (the OOM killer's); exit status {status}"
    );

    let mut events = Vec::new();
    let deadline = died + EVENT_LATENCY;
    while !events.iter().any(|k: &OomKill| k.pid == pid) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(kill) = agent.next_oom_kill(left) else {
            break;
        };
        print_event(&kill, Some(died));
        events.push(kill);
    }
    let kill = events.iter().find(|k| k.pid == pid).unwrap_or_else(|| {
        panic!(
            "no oom_kill event for pid {pid} within {EVENT_LATENCY:?} of its death \
             (events: {events:?})"
        )
    });
    assert!(
        kill.received <= deadline,
        "event for pid {pid} came {:.1?} after its death",
        kill.received - died
    );
    let window =
        started_ns - CLOCK_SLACK.as_nanos() as u64..=died_ns + CLOCK_SLACK.as_nanos() as u64;
    assert!(
        window.contains(&kill.time_unix_ns),
        "event time_unix_ns {} is outside the run of alloc #{run} ({window:?})",
        kill.time_unix_ns
    );
    (pid, events)
}

#[test]
fn oom_kills_are_reported_with_comm_and_cgroup() {
    if skip_if_unprivileged(TEST) {
        return;
    }
    let controller = match memory_controller() {
        Ok(controller) => controller,
        Err(reason) => {
            skip(TEST, &reason);
            return;
        }
    };
    let mem = TestCgroup::create("mem").expect("create cgroup mem");
    let quiet = TestCgroup::create("quiet").expect("create cgroup quiet");
    mem.set_memory_limit(LIMIT).expect("set the memory limit");
    eprintln!(
        "{} (id {}) limited to {} MiB through {controller:?} in {}; {} (id {}) unlimited",
        mem.relative_path(),
        mem.id(),
        LIMIT >> 20,
        mem.memory_dir().display(),
        quiet.relative_path(),
        quiet.id()
    );
    let mut sleeper = Command::new(load_bin!());
    sleeper.args(["sleeper", "--period-ms", "100", "--work-us", "10"]);
    let mut sleeper = spawn_in(&quiet, sleeper).expect("spawn sleeper");

    let mut agent = Agent::start(INTERVAL, &[]);
    let ready = agent.wait_ready(READY_TIMEOUT);
    eprintln!("agent ready, probes: {:?}", ready.probes);
    let mem_before = mem.memory_oom_kills().expect("read mem's oom_kill counter");
    let quiet_before = quiet
        .memory_oom_kills()
        .expect("read quiet's oom_kill counter");
    eprintln!("kernel oom_kill counters before: mem {mem_before}, quiet {quiet_before}");
    // Events of earlier kills elsewhere on the machine are not ours.
    for kill in agent.take_oom_kills() {
        print_event(&kill, None);
    }

    let mut events = Vec::new();
    let mut pids = Vec::new();
    for run in 1..=KILLS {
        let (pid, got) = oom_kill_one(&mut agent, &mem, run);
        pids.push(pid);
        events.extend(got);
    }
    let mem_after = mem.memory_oom_kills().expect("read mem's oom_kill counter");
    let quiet_after = quiet
        .memory_oom_kills()
        .expect("read quiet's oom_kill counter");
    eprintln!("kernel oom_kill counters after: mem {mem_after}, quiet {quiet_after}");
    assert!(sleeper.is_running(), "the sleeper in quiet must survive");

    let stopped = agent.stop_and_collect();
    for kill in &stopped.oom_kills {
        print_event(kill, None);
    }
    events.extend(stopped.oom_kills.iter().cloned());
    stopped.assert_clean_stop();

    // The kernel killed what the test meant it to.
    assert_eq!(
        mem_after - mem_before,
        KILLS,
        "kernel oom_kill counter of mem"
    );
    assert_eq!(
        quiet_after, quiet_before,
        "kernel oom_kill counter of quiet"
    );

    // Events: one per kill in mem, each fully described; none in quiet.
    let in_mem: Vec<&OomKill> = events.iter().filter(|k| k.cgroup_id == mem.id()).collect();
    eprintln!(
        "events: {} in total, {} for mem (kernel counted {})",
        events.len(),
        in_mem.len(),
        mem_after - mem_before
    );
    assert_eq!(
        in_mem.len() as u64,
        mem_after - mem_before,
        "oom_kill events for mem (id {}) vs the kernel's count; events: {events:?}",
        mem.id()
    );
    for kill in &in_mem {
        assert!(
            pids.contains(&kill.pid),
            "event pid {} is one of the alloc pids {pids:?}",
            kill.pid
        );
        assert_eq!(kill.comm, COMM, "comm of pid {}", kill.pid);
        assert_eq!(kill.constraint, "memcg", "constraint of pid {}", kill.pid);
        assert_eq!(
            kill.oom_score_adj, OOM_SCORE_ADJ,
            "oom_score_adj of pid {}",
            kill.pid
        );
        if let Some(cgroup) = &kill.cgroup {
            assert_eq!(cgroup, &mem.relative_path(), "cgroup of pid {}", kill.pid);
        }
    }
    for pid in &pids {
        let for_pid = events.iter().filter(|k| k.pid == *pid).count();
        assert_eq!(for_pid, 1, "oom_kill events for pid {pid}");
    }
    assert!(
        events
            .iter()
            .all(|k| k.cgroup_id != quiet.id() && k.pid != sleeper.pid()),
        "no oom_kill event for quiet or its sleeper; events: {events:?}"
    );

    // Interval reports, final included.
    let reports = &stopped.reports;
    let mem_counted = oom_kills_of(reports, mem.id());
    let quiet_counted = oom_kills_of(reports, quiet.id());
    let node: u64 = reports.iter().map(|r| r.node.oom_kills).sum();
    let all_cgroups: u64 = reports
        .iter()
        .flat_map(|r| &r.cgroups)
        .map(|c| c.oom_kills)
        .sum();
    eprintln!(
        "interval reports ({}): oom_kills mem {mem_counted}, quiet {quiet_counted}, \
         all cgroups {all_cgroups}, node {node}",
        reports.len()
    );
    for report in reports {
        if let Some(name) = report.cgroup(mem.id()).and_then(|c| c.name.as_deref()) {
            assert_eq!(name, mem.relative_path(), "name of cgroup mem");
        }
    }
    assert_eq!(
        mem_counted, KILLS,
        "oom_kills of mem in the interval reports"
    );
    assert_eq!(
        quiet_counted, 0,
        "oom_kills of quiet in the interval reports"
    );
    assert_eq!(
        all_cgroups, node,
        "the node totals must be the sums over all cgroups"
    );
}

//! The hash-keyed variants (raw and classic tracepoints) keep in-flight state in plain hashes
//! (`RUNQ_ENQUEUED_AT`: runnable tasks; `IOWAIT_SINCE`: tasks in iowait). Under patterns that
//! miss or race their events for [`PATTERN_FOR`], the entries must stay bounded (what is
//! really in flight, not what was ever seen) and drop back once the pattern stops:
//!
//! - short-lived thread pairs handing a token back and forth, then exiting (wakeups of tasks
//!   that may still be on their CPU, and tasks that die);
//! - direct I/O writers on a loop device killed with SIGKILL every [`KILL_EVERY`] (tasks that
//!   leave mid-I/O).
//!
//! The agent reports every map's entries each interval (`maps[]`), which is what is read.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodesat_tests::{Agent, LoopDevice, load_bin, skip, skip_if_unprivileged};

const TEST: &str = "fallback_hashes_stay_bounded_under_missed_event_patterns";
const PATTERN_FOR: Duration = Duration::from_secs(60);
const KILL_EVERY: Duration = Duration::from_millis(150);
/// Most entries tolerated while the pattern runs: far above what is in flight on a 2-CPU
/// machine (a few dozen runnable tasks), far below a leak's growth over a minute.
const BOUND: u32 = 512;
/// Entries tolerated once the pattern stopped, above the idle figure before it.
const SETTLE_SLACK: u32 = 16;

fn fills(agent_reports: &[nodesat_tests::Report], map: &str) -> Vec<u32> {
    agent_reports
        .iter()
        .filter_map(|r| r.maps.iter().find(|m| m.map == map).map(|m| m.entries))
        .collect()
}

#[test]
fn fallback_hashes_stay_bounded_under_missed_event_patterns() {
    if skip_if_unprivileged(TEST) {
        return;
    }
    let disk = match LoopDevice::create() {
        Ok(d) => d,
        Err(e) => {
            skip(TEST, &format!("no loop device for the I/O pattern: {e}"));
            return;
        }
    };
    for variant in ["raw_tracepoint", "tracepoint"] {
        eprintln!("── --probe-variant {variant}");
        let mut agent = Agent::start("2s", &["--probe-variant", variant]);
        agent.wait_ready(Duration::from_secs(30));
        let before = agent.next_interval(Duration::from_secs(10));

        let churn = Command::new(load_bin!())
            .args([
                "thread-churn",
                "--seconds",
                &PATTERN_FOR.as_secs().to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("thread-churn");
        let start = Instant::now();
        let mut killed = 0u32;
        while start.elapsed() < PATTERN_FOR {
            let mut writer = Command::new(load_bin!())
                .args(["dio-write", "--path"])
                .arg(disk.path())
                .args(["--seconds", "5"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dio-write");
            std::thread::sleep(KILL_EVERY);
            let _ = writer.kill();
            let _ = writer.wait();
            killed += 1;
        }
        let out = churn.wait_with_output().expect("thread-churn");
        // Two intervals after the pattern stopped.
        std::thread::sleep(Duration::from_secs(5));
        let stopped = agent.stop_and_collect();
        stopped.assert_clean_stop();
        eprintln!(
            "thread-churn: {}; {killed} writers killed mid-I/O",
            String::from_utf8_lossy(&out.stdout).trim()
        );

        for map in ["RUNQ_ENQUEUED_AT", "IOWAIT_SINCE"] {
            let idle = fills(std::slice::from_ref(&before), map)
                .first()
                .copied()
                .unwrap_or(0);
            let during = fills(&stopped.reports, map);
            let max = during.iter().copied().max().unwrap_or(0);
            let last = during.last().copied().unwrap_or(0);
            eprintln!(
                "{map}: idle {idle}, over the minute {during:?}, max {max}, at the end {last}"
            );
            assert!(!during.is_empty(), "{map}: not in the agent's maps[]");
            assert!(
                max <= BOUND,
                "{map}: {max} entries, above {BOUND}: it leaks"
            );
            assert!(
                last <= idle + SETTLE_SLACK,
                "{map}: {last} entries after the pattern stopped, against {idle} before"
            );
        }
    }
}

//! Self-tests of the harness that need no agent: cgroups, processes and the
//! load generator.

use std::fs;
use std::panic;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nodesat_tests::{TestCgroup, load_bin, output_within, skip_if_unprivileged, spawn_in};

/// The lines of `/proc/<pid>/cgroup`.
fn proc_cgroup(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

/// CPU time (user + system, in clock ticks) of `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which may contain spaces), from field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn harness_creates_and_cleans_cgroups() {
    if skip_if_unprivileged("harness_creates_and_cleans_cgroups") {
        return;
    }
    let dirs: Vec<PathBuf>;
    let pid;
    {
        let cgroup = TestCgroup::create("harness").expect("create cgroup");
        dirs = cgroup.dirs().map(Into::into).collect();
        eprintln!(
            "cgroup {} id {} dirs {:?}",
            cgroup.relative_path(),
            cgroup.id(),
            dirs
        );
        for dir in &dirs {
            assert!(dir.is_dir(), "{} exists", dir.display());
        }
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(cgroup.v2_path()).unwrap());
        assert_eq!(cgroup.id(), ino);

        let mut spinner = Command::new(load_bin!());
        spinner.arg("spin");
        let mut spinner = spawn_in(&cgroup, spinner).expect("spawn spinner");
        pid = spinner.pid();
        let membership = proc_cgroup(pid);
        eprintln!("/proc/{pid}/cgroup:\n{membership}");
        // Every hierarchy it was created in lists the process.
        assert_eq!(cgroup.pids(), [pid]);
        for procs in cgroup.procs_files() {
            let listed = fs::read_to_string(&procs).unwrap();
            assert_eq!(listed.trim(), pid.to_string(), "{}", procs.display());
        }
        assert!(
            membership
                .lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&cgroup.relative_path())),
            "v2 membership"
        );

        // A second process, added after spawning.
        let mut extra = Command::new(load_bin!());
        extra.args(["sleeper", "--period-ms", "10", "--work-us", "100"]);
        let mut extra = extra.spawn().expect("spawn sleeper");
        cgroup.add_pid(extra.id()).expect("add_pid");
        assert_eq!(cgroup.pids().len(), 2);

        // The spinner burns CPU.
        let before = cpu_ticks(pid);
        thread::sleep(Duration::from_millis(300));
        assert!(cpu_ticks(pid) > before, "spinner uses CPU");
        assert!(spinner.is_running());

        // Dropping the cgroup first must kill the processes still in it.
        drop(cgroup);
        assert!(extra.wait().is_ok());
    }
    for dir in &dirs {
        assert!(!dir.exists(), "{} removed", dir.display());
    }
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "spinner reaped"
    );
}

#[test]
fn harness_cleans_up_when_a_test_panics() {
    if skip_if_unprivileged("harness_cleans_up_when_a_test_panics") {
        return;
    }
    let mut dirs = Vec::new();
    let mut pid = 0;
    let result = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let cgroup = TestCgroup::create("panics").expect("create cgroup");
        dirs = cgroup.dirs().map(PathBuf::from).collect();
        let mut cmd = Command::new(load_bin!());
        cmd.arg("spin");
        let spinner = spawn_in(&cgroup, cmd).expect("spawn");
        pid = spinner.pid();
        panic!("deliberate panic with a spinner in {}", cgroup.name());
    }));
    assert!(result.is_err());
    assert!(!dirs.is_empty());
    for dir in &dirs {
        assert!(!dir.exists(), "{} removed", dir.display());
    }
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "spinner gone"
    );
}

#[test]
fn load_generator_modes() {
    // Sleeper: mostly asleep.
    let mut sleeper = Command::new(load_bin!())
        .args(["sleeper", "--period-ms", "10", "--work-us", "100"])
        .spawn()
        .expect("spawn sleeper");
    let start = Instant::now();
    thread::sleep(Duration::from_millis(500));
    let ticks = cpu_ticks(sleeper.id());
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "sleeper keeps running"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    // 1% duty cycle: well under 10% of the elapsed time (ticks are 10 ms).
    let ticks_elapsed = start.elapsed().as_millis() as u64 / 10;
    assert!(
        ticks * 10 < ticks_elapsed,
        "sleeper used {ticks} ticks in {ticks_elapsed}"
    );

    // Bad arguments: usage error.
    for args in [
        &[][..],
        &["sleeper"],
        &["sleeper", "--period-ms", "x", "--work-us", "1"],
        &["walk"],
    ] {
        let mut cmd = Command::new(load_bin!());
        cmd.args(args);
        let out = output_within(cmd, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
    }
}

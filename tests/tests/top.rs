//! `nodesat top`: the live view, driven in an 80×24 tmux pane, must put the cgroup whose
//! tasks wait for a CPU on its first row (default sort: waiting tasks, descending), and quit
//! on `q` within 5 s with exit status 0.
//!
//! Cgroup `top-hog` runs 3 spinners per CPU. Needs the `tmux` program (package `tmux`);
//! without it the test skips (fails with `NODESAT_REQUIRE_PRIVILEGED=1`).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nodesat_tests::{
    TestCgroup, TestProcess, agent_bin, allowed_cpus, load_bin, skip, skip_if_unprivileged,
    spawn_in,
};

const TEST: &str = "top_shows_the_cpu_hog_first_and_quits_on_q";
/// Longest wait for the first report on screen (probes attaching plus an interval).
const FIRST_REPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Intervals (of 1 s) to wait after the first report before reading the screen.
const SETTLE: Duration = Duration::from_secs(3);
/// Longest the agent may take to exit after `q`.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A tmux server of its own (`-L`), killed on drop, even when the test fails.
struct Tmux {
    socket: String,
    session: String,
    /// Where the shell around the command writes its exit status.
    status_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    fn command(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket, "-f", "/dev/null"]);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self
            .command()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running tmux {args:?}: {e}"));
        assert!(
            out.status.success(),
            "tmux {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts `argv` in a detached 80×24 session whose pane stays after the process exits.
    /// A shell around it records its exit status in a file: tmux here does not always reap a
    /// pane's process promptly (a pane can read dead, with no status, for seconds).
    fn start(argv: &[&str]) -> Tmux {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let tmux = Tmux {
            socket: format!("nodesat-test-{}", std::process::id()),
            session: "top".into(),
            status_file: dir.path().join("status"),
            _dir: dir,
        };
        let record = format!(
            "\"$@\"; echo $? >{}.tmp && mv {0}.tmp {0}",
            tmux.status_file.display()
        );
        let mut wrapped = vec!["sh", "-c", record.as_str(), "sh"];
        wrapped.extend_from_slice(argv);
        let argv = wrapped;
        let mut args = vec![
            "new-session",
            "-d",
            "-x",
            "80",
            "-y",
            "24",
            "-s",
            &tmux.session,
            "--",
        ];
        args.extend_from_slice(&argv);
        args.extend_from_slice(&[";", "set-option", "-w", "remain-on-exit", "on"]);
        tmux.run(&args);
        tmux
    }

    fn capture(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", &self.session]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `Some(exit status)` once the command has exited (128 + N for signal N).
    fn exit_status(&self) -> Option<i32> {
        std::fs::read_to_string(&self.status_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}

/// The first data row: the line after the column header.
fn first_row(screen: &str) -> Option<&str> {
    let mut lines = screen.lines();
    lines.find(|l| l.starts_with("CGROUP"))?;
    lines.next()
}

#[test]
fn top_shows_the_cpu_hog_first_and_quits_on_q() {
    if skip_if_unprivileged(TEST) {
        return;
    }
    if !Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        skip(TEST, "tmux is not installed (apt-get install tmux)");
        return;
    }
    let hog = TestCgroup::create("top-hog").expect("create cgroup top-hog");
    let mut processes: Vec<TestProcess> = Vec::new();
    for _ in 0..3 * allowed_cpus().len() {
        let mut cmd = Command::new(load_bin!());
        cmd.arg("spin");
        processes.push(spawn_in(&hog, cmd).expect("spawn spinner"));
    }
    let path = hog.relative_path();

    // The agent's configuration comes from the test alone (as agent_command() does).
    let bin = agent_bin();
    let mut argv: Vec<String> = vec!["env".into()];
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("NODESAT_") && name != "NODESAT_LOG_LEVEL" {
            argv.extend(["-u".into(), name]);
        }
    }
    argv.extend([
        bin.to_string_lossy().into_owned(),
        "top".into(),
        "--interval".into(),
        "1s".into(),
    ]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let tmux = Tmux::start(&argv);

    let deadline = Instant::now() + FIRST_REPORT_TIMEOUT;
    loop {
        let screen = tmux.capture();
        if first_row(&screen).is_some_and(|r| !r.trim().is_empty()) {
            break;
        }
        if let Some(status) = tmux.exit_status() {
            panic!("nodesat top exited with status {status} before its first report:\n{screen}");
        }
        assert!(
            Instant::now() < deadline,
            "no report on screen within {FIRST_REPORT_TIMEOUT:?}:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(SETTLE);
    let screen = tmux.capture();
    eprintln!("screen after {SETTLE:?}:\n{screen}");
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines.len() <= 24, "at most 24 lines:\n{screen}");
    for l in &lines {
        assert!(l.chars().count() <= 80, "line wider than 80: {l:?}");
    }
    let row = first_row(&screen).expect("a column header");
    // The label column is narrow: a long path keeps its end ("/nodesat…-top-hog").
    let label = row.split_whitespace().next().unwrap_or_default();
    let tail = path.rsplit('-').take(2).collect::<Vec<_>>();
    assert!(
        label == path || label.ends_with(&format!("-{}-{}", tail[1], tail[0])),
        "the hog {path} must be the first row (most waiting tasks):\n{screen}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("cpu0 ")),
        "a per-CPU run-queue line:\n{screen}"
    );

    tmux.run(&["send-keys", "-t", &tmux.session, "q"]);
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = tmux.exit_status() {
            break status;
        }
        assert!(
            asked.elapsed() < QUIT_TIMEOUT,
            "nodesat top still running {QUIT_TIMEOUT:?} after q:\n{}",
            tmux.capture()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let after = tmux.capture();
    eprintln!("exit status {status} after {:?}:\n{after}", asked.elapsed());
    assert_eq!(status, 0, "exit status after q:\n{after}");
    assert!(
        after.contains("(final)"),
        "the final table is left on the screen:\n{after}"
    );
    drop(processes);
}

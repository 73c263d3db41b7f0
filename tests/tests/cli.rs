//! The agent's command line: `check`, configuration errors, signals and
//! privileges.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nodesat_tests::{
    Agent, agent_bin, agent_command, clear_agent_env, logged_output_within, skip,
    skip_if_unprivileged,
};

/// Longest a short-lived agent command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit code for usage and configuration errors (EX_USAGE).
const EX_USAGE: i32 = 64;

/// Runs `cmd` (bounded) and prints its output.
fn run(cmd: Command) -> Output {
    logged_output_within(cmd, COMMAND_TIMEOUT)
}

#[test]
fn check_reports_kernel_and_variants() {
    if skip_if_unprivileged("check_reports_kernel_and_variants") {
        return;
    }
    let mut cmd = agent_command();
    cmd.arg("check");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "`nodesat check` exit status: {}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let release = release.trim();
    assert!(
        stdout.contains(release),
        "mentions kernel release {release}"
    );
    for word in ["BTF", "tp_btf", "raw_tracepoint", "tracepoint"] {
        assert!(stdout.contains(word), "mentions {word}");
    }
}

/// Runs the agent with `args` (and `env`), expecting exit code 64 and a
/// message (in any case) containing every string in `mentions`.
fn assert_usage_error(args: &[&str], env: &[(&str, &str)], mentions: &[&str]) {
    let mut cmd = agent_command();
    cmd.args(args).envs(env.iter().copied());
    let out = run(cmd);
    assert_eq!(
        out.status.code(),
        Some(EX_USAGE),
        "exit code of {args:?} with env {env:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    for word in mentions {
        assert!(
            stderr.contains(&word.to_lowercase()),
            "stderr of {args:?} with env {env:?} mentions {word:?}"
        );
    }
}

/// Configuration errors are usage errors, reported before the agent needs any
/// privilege, so this test also runs unprivileged.
#[test]
fn invalid_config_exits_64_naming_the_field() {
    assert_usage_error(&["run", "--interval", "banana"], &[], &["interval"]);

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("nodesat.toml");
    fs::write(&config, "interval = \"0s\"\n").expect("write config");
    let config = config.to_str().expect("utf-8 temp path");
    assert_usage_error(&["run", "--config", config], &[], &["interval"]);

    assert_usage_error(
        &["run", "--probe-variant", "nope"],
        &[],
        &["auto", "tp_btf", "raw_tracepoint", "tracepoint"],
    );

    assert_usage_error(&["run"], &[("NODESAT_INTERVAL", "bogus")], &["interval"]);
}

#[test]
fn sigterm_gives_final_report_and_exit_0() {
    if skip_if_unprivileged("sigterm_gives_final_report_and_exit_0") {
        return;
    }
    let mut agent = Agent::start("10s", &[]);
    agent.wait_ready(Duration::from_secs(30));
    let start = Instant::now();
    let (status, final_report) = agent.stop_within(Duration::from_secs(5));
    eprintln!("agent exited {status} {:?} after SIGTERM", start.elapsed());
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let final_report = final_report.expect("a final report after SIGTERM");
    assert!(final_report.is_final);
}

/// Finds `program` in `$PATH`.
fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Copies the agent binary into a world-readable temp dir, so an
/// unprivileged user can run it wherever the workspace lives.
fn world_executable_agent(dir: &Path) -> PathBuf {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    let bin = dir.join("nodesat");
    fs::copy(agent_bin(), &bin).expect("copy agent binary");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod agent copy");
    bin
}

#[test]
fn not_root_gets_a_plain_message() {
    const TEST: &str = "not_root_gets_a_plain_message";
    // Root is needed to switch to an unprivileged user.
    if skip_if_unprivileged(TEST) {
        return;
    }
    let Some(setpriv) = find_in_path("setpriv") else {
        skip(TEST, "setpriv (util-linux) is not installed");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = world_executable_agent(dir.path());
    let mut cmd = Command::new(setpriv);
    clear_agent_env(&mut cmd);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("run")
        .current_dir("/");
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.starts_with("setpriv:"),
        "setpriv itself failed: {stderr}"
    );
    let code = out.status.code();
    assert!(
        code.is_some_and(|c| c != 0 && c != EX_USAGE),
        "exit code as nobody should be an error other than 64, got {}",
        out.status
    );
    assert!(
        stderr.contains("root") || stderr.contains("CAP_BPF"),
        "stderr says it needs root or CAP_BPF"
    );
}

// ---------------------------------------------------------------------------
// stdout closed under the agent (issue 16): `nodesat run | head -1`.

/// The ids of the BPF programs `pid` holds (from its fds' fdinfo: program and link fds).
fn bpf_prog_ids(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in dir.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in info.lines() {
            if let Some(id) = line.strip_prefix("prog_id:")
                && let Ok(id) = id.trim().parse()
            {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether the kernel still has BPF program `id` (BPF_PROG_GET_FD_BY_ID).
fn bpf_prog_exists(id: u32) -> bool {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    // union bpf_attr, as that command reads it: prog_id, next_id, open_flags.
    let attr: [u32; 4] = [id, 0, 0, 0];
    // SAFETY: the attribute buffer outlives the call and its size is passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd >= 0 {
        // SAFETY: the fd was just returned to us and is closed once.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
}

/// Waits up to `timeout` for `child` to exit.
fn wait_within(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The reader of `run`'s (and `top`'s plain) output goes away after the first line: the agent
/// exits 0 within one interval, without waiting to write again, and its programs are gone.
#[test]
fn closed_stdout_pipe_detaches_and_exits_0() {
    use std::io::BufRead;
    if skip_if_unprivileged("closed_stdout_pipe_detaches_and_exits_0") {
        return;
    }
    let interval = Duration::from_secs(5);
    for (command, output) in [("run", "json"), ("run", "table"), ("top", "table")] {
        let mut cmd = agent_command();
        cmd.args([command, "--interval", "5s"]);
        if command == "run" {
            cmd.args(["--output", output]);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the agent");
        let pid = child.id();
        let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).expect("the first line");
        let programs = bpf_prog_ids(pid);
        eprintln!(
            "{command} --output {output}: first line {first:?}, {} programs",
            programs.len()
        );
        assert!(!programs.is_empty(), "the agent holds its programs");
        // head -1 exits here.
        drop(reader);
        let closed = Instant::now();
        let status = wait_within(&mut child, interval);
        let took = closed.elapsed();
        let stderr = {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut s);
            s
        };
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command} --output {output} still running {interval:?} after its reader went away\n{stderr}"
            );
        };
        eprintln!(
            "{command} --output {output}: exited {status} {took:?} after the reader went away"
        );
        assert_eq!(status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("stdout's reader went away"), "{stderr}");
        let gone_by = Instant::now() + Duration::from_secs(5);
        while programs.iter().any(|&id| bpf_prog_exists(id)) {
            assert!(Instant::now() < gone_by, "programs left: {programs:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // The shell pipeline itself returns (a shell waits for every command of a pipeline).
    let started = Instant::now();
    let out = run({
        let mut sh = Command::new("sh");
        sh.args(["-c", "\"$0\" run --output json --interval 5s | head -1"])
            .arg(agent_bin());
        clear_agent_env(&mut sh);
        sh
    });
    let took = started.elapsed();
    eprintln!("sh -c 'nodesat run --output json --interval 5s | head -1' took {took:?}");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("{\"type\":\"ready\""));
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// A real write error on stdout (/dev/full): exit 74 (EX_IOERR) after detaching, with a
/// sentence, for both outputs.
#[test]
fn stdout_write_error_exits_74() {
    if skip_if_unprivileged("stdout_write_error_exits_74") {
        return;
    }
    for output in ["json", "table"] {
        let mut child = agent_command()
            .args(["run", "--interval", "1s", "--output", output])
            .stdin(std::process::Stdio::null())
            .stdout(
                fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            )
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the agent");
        let status = wait_within(&mut child, COMMAND_TIMEOUT);
        if status.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("--output {output} > /dev/full: {:?}\n{stderr}", out.status);
        assert_eq!(out.status.code(), Some(74), "--output {output}: {stderr}");
        assert!(
            stderr.contains("cannot write to stdout: No space left on device")
                && stderr.contains("probes detached"),
            "{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------
// The shutdown drain is one budget (issue 16).

/// A collector that accepts TCP connections and never answers; counts them.
struct HungCollector {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HungCollector {
    fn start() -> HungCollector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(conn); // never read, never answered, never closed
            }
        });
        HungCollector { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// With an export request hanging on a collector that never answers (its timeout is the
/// default 10 s), SIGTERM makes the agent exit 0 within the shutdown timeout + 1 s, saying
/// what it gave up; for the default (5 s) and a shorter one, over both protocols.
#[test]
fn shutdown_with_a_hung_collector_is_bounded_by_the_shutdown_timeout() {
    if skip_if_unprivileged("shutdown_with_a_hung_collector_is_bounded_by_the_shutdown_timeout") {
        return;
    }
    for (protocol, budget) in [
        ("http/protobuf", None),
        ("http/protobuf", Some(1)),
        ("grpc", Some(2)),
    ] {
        let collector = HungCollector::start();
        let endpoint = format!("http://{}", collector.addr);
        let mut args = vec!["--otlp-endpoint", &endpoint, "--otlp-protocol", protocol];
        let budget_arg = budget.map(|s| format!("{s}s"));
        if let Some(b) = &budget_arg {
            args.extend(["--shutdown-timeout", b]);
        }
        let mut agent = Agent::start("1s", &args);
        agent.wait_ready(Duration::from_secs(30));
        // An export request is in flight once the collector accepted a connection.
        let waiting = Instant::now();
        while collector.accepted() == 0 {
            assert!(
                waiting.elapsed() < Duration::from_secs(10),
                "no export request came"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        let budget = Duration::from_secs(budget.unwrap_or(5));
        let stopping = Instant::now();
        let stopped = agent.stop_and_collect_within(budget + Duration::from_secs(3));
        let took = stopping.elapsed();
        eprintln!(
            "{protocol}, shutdown timeout {budget:?}: exited {} {took:?} after SIGTERM",
            stopped.status
        );
        stopped.assert_clean_stop();
        assert!(
            took <= budget + Duration::from_secs(1),
            "took {took:?}, budget {budget:?}"
        );
        assert!(
            took + Duration::from_millis(500) >= budget,
            "gave up early: {took:?}"
        );
    }
}

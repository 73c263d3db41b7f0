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

//! Kernel struct offsets on this machine's kernel: `nodesat-offsets` (see its module comment)
//! compares every figure the agent reads through an offset resolved from BTF with procfs and
//! sysfs, with the preferred probe variants and with the raw and classic tracepoints forced.
//! `cargo xtask vm` runs the same binary inside each VM.
//!
//! The results, with `nodesat check`'s output, go to `target/vm/host.json`, from which
//! `cargo xtask vm` writes this kernel's row of the README's supported-kernels table.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nodesat_tests::cgroup::Hierarchies;
use nodesat_tests::{
    agent_bin, agent_command, cpu_controller, memory_controller, skip, skip_if_unprivileged,
    try_output_within, workspace_root,
};
use serde_json::{Value, json};

const TEST: &str = "kernel_offsets_match_procfs";
/// The agent's `--probe-variant` for each run. (No kprobe or fentry here: this project's
/// kernel has no kprobes and refuses fentry; the VMs run those.) Then, where a v1 cpu
/// hierarchy is mounted, a run with `--cgroup-hierarchy cpu`, whose programs read a task's
/// cgroup through `css_set.subsys` and `cgroup_subsys_state.cgroup` instead.
const VARIANTS: [&str; 3] = ["auto", "raw_tracepoint", "tracepoint"];
/// Longest one run may take (its TCP exchanges' losses are random).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
const RESULT_LINE: &str = "nodesat-offsets-json ";

#[test]
fn kernel_offsets_match_procfs() {
    if skip_if_unprivileged(TEST) {
        return;
    }
    if let Err(reason) = memory_controller().and_then(|_| cpu_controller()) {
        skip(TEST, &reason);
        return;
    }
    let started = Instant::now();
    let agent = agent_bin();
    let mut check = agent_command();
    check.arg("check");
    let check = try_output_within(check, Duration::from_secs(120)).expect("run nodesat check");
    let check_output = String::from_utf8_lossy(&check.stdout).into_owned();
    eprintln!("nodesat check ({}):\n{check_output}", check.status);

    let mut runs = Vec::new();
    let mut failed = Vec::new();
    let v1_cpu = Hierarchies::detect().is_ok_and(|h| h.v1_cpu.is_some());
    let mut configs: Vec<(&str, &str)> = VARIANTS.iter().map(|v| (*v, "auto")).collect();
    if v1_cpu {
        configs.push(("auto", "cpu"));
    } else {
        eprintln!("no v1 cpu hierarchy here: no run with --cgroup-hierarchy cpu");
    }
    for (variant, hierarchy) in configs {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodesat-offsets"));
        cmd.arg("--agent")
            .arg(&agent)
            .args(["--probe-variant", variant])
            .args(["--cgroup-hierarchy", hierarchy]);
        let t = Instant::now();
        let out = try_output_within(cmd, RUN_TIMEOUT).expect("run nodesat-offsets");
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!(
            "nodesat-offsets --probe-variant {variant} --cgroup-hierarchy {hierarchy}: {} in {:.1?}\n{stdout}\n{}",
            out.status,
            t.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
        let result: Option<Value> = stdout
            .lines()
            .find_map(|l| serde_json::from_str(l.strip_prefix(RESULT_LINE)?).ok());
        if !out.status.success() || result.is_none() {
            failed.push(format!("{variant} {hierarchy}: {}", out.status));
        }
        runs.push(json!({
            "variant": variant,
            "cgroup_hierarchy": hierarchy,
            "rc": out.status.code(),
            "result": result,
        }));
    }

    let host = json!({
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "generated_unix": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "check": {"rc": check.status.code(), "output": check_output},
        "offset_checks": runs,
    });
    let dir = workspace_root().join("target/vm");
    fs::create_dir_all(&dir).expect("create target/vm");
    let path = dir.join("host.json");
    fs::write(&path, serde_json::to_string_pretty(&host).unwrap() + "\n").expect("write host.json");
    eprintln!("wrote {}", path.display());
    assert!(
        failed.is_empty(),
        "offset checks failed ({failed:?}); see the tables above"
    );
}

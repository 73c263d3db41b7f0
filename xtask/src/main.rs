//! Project tasks: `cargo xtask <provision|run|test|bench>`.

mod bench;
mod provision;
mod vm;

use std::process::Command;

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "usage: cargo xtask <command> [args]

commands:
  provision        install what building the eBPF programs needs (idempotent)
  run [ARGS..]     provision, build, and run `nodesat run ARGS..` (default: local table output)
  test             provision, then run every test: fmt, clippy, unit, fixture and privileged
                   integration tests, then the kernel matrix (cargo xtask vm)
  bench [ARGS..]   provision, build, and measure probe overhead under a context-switch storm
  vm [ARGS..]      boot Debian kernels in qemu and run `nodesat check`, a scenario and the
                   offset check in each; rewrites README's kernel table (the kernel matrix;
                   `cargo xtask vm --help`)";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(sub) = args.next() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let rest: Vec<String> = args.collect();
    match sub.as_str() {
        "provision" => provision::provision(),
        "run" => {
            provision::provision()?;
            run(cmd(
                "cargo",
                &["build", "--release", "--package", "nodesat"],
            ))?;
            let bin = workspace_root().join("target/release/nodesat");
            let mut c = Command::new(bin);
            c.arg("run").args(&rest);
            let status = c.status().context("starting nodesat")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        "test" => test(),
        "bench" => {
            provision::provision()?;
            provision::test_tools()?;
            bench::bench(&rest)
        }
        "vm" => vm::vm(&rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown xtask command {other:?}\n{USAGE}"),
    }
}

fn test() -> Result<()> {
    provision::provision()?;
    provision::test_tools()?;
    run(cmd("cargo", &["fmt", "--all", "--", "--check"]))?;
    run(cmd(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    ))?;
    // The integration tests drive the real binary; build it first and tell them where it is.
    run(cmd("cargo", &["build", "--package", "nodesat"]))?;
    let bin = workspace_root().join("target/debug/nodesat");
    run(cmd(
        "cargo",
        &["test", "--workspace", "--exclude", "nodesat-tests"],
    ))?;
    // Privileged tests provoke real saturation (CPU hogs, quotas); they run one at a time.
    let mut it = cmd(
        "cargo",
        &[
            "test",
            "--package",
            "nodesat-tests",
            "--",
            "--test-threads=1",
            "--nocapture",
        ],
    );
    it.env("NODESAT_BIN", bin);
    if nix::unistd::geteuid().is_root() {
        // Root with BPF allowed: the privileged tests must run, so a skip is a failure.
        it.env("NODESAT_REQUIRE_PRIVILEGED", "1");
    }
    run(it)?;
    // The kernel matrix: the same agent on Debian's 6.1 and 6.12 kernels under qemu, with the
    // offset check in each; it rewrites the README's kernel table and fails if that said
    // something else about a series than this run found (about 4 minutes once kernels are
    // cached).
    vm::vm(&vm_args(std::env::var(VM_KERNELS).ok().as_deref()))
}

/// Names the kernels the test command's matrix boots instead of the newest 6.1 and 6.12,
/// e.g. `NODESAT_VM_KERNELS=6.1.0-56-amd64,6.12.117+deb12-amd64` (any `--kernel` name).
const VM_KERNELS: &str = "NODESAT_VM_KERNELS";

/// The matrix's arguments in the test command: the README check, and the kernels named in
/// `NODESAT_VM_KERNELS` if set.
fn vm_args(kernels: Option<&str>) -> Vec<String> {
    let mut args = vec!["--check-readme".to_owned()];
    let named: Vec<&str> = kernels
        .into_iter()
        .flat_map(|k| k.split([',', ' ']))
        .filter(|k| !k.is_empty())
        .collect();
    if !named.is_empty() {
        println!(
            "xtask: {VM_KERNELS} names the matrix's kernels: {}",
            named.join(" ")
        );
        args.push("--kernel".to_owned());
        args.extend(named.iter().map(|k| k.to_string()));
    }
    args
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args).current_dir(workspace_root());
    c
}

pub fn run(mut c: Command) -> Result<()> {
    let status = c.status().with_context(|| format!("starting {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_kernels_from_the_environment() {
        assert_eq!(vm_args(None), ["--check-readme"]);
        assert_eq!(vm_args(Some(" ")), ["--check-readme"]);
        assert_eq!(
            vm_args(Some("6.1.0-56-amd64,6.12.117+deb12-amd64")),
            [
                "--check-readme",
                "--kernel",
                "6.1.0-56-amd64",
                "6.12.117+deb12-amd64"
            ]
        );
    }
}

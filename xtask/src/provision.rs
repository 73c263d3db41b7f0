//! Idempotent provisioning of the eBPF toolchain on a fresh machine.
//!
//! Each step first checks whether its result is already present and returns at once if so,
//! so a provisioned machine pays a few process spawns (well under a second).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, run};

/// The LLVM major version rustc's nightly uses; bpf-linker must be built against the same one.
pub const LLVM_MAJOR: u32 = 22;

pub fn provision() -> Result<()> {
    rust_src()?;
    llvm_dev()?;
    bpf_linker()?;
    eprintln!(
        "xtask: toolchain ready: nightly rust-src, llvm-{LLVM_MAJOR}-dev, bpf-linker (LLVM {LLVM_MAJOR})"
    );
    Ok(())
}

/// What the privileged integration tests use beyond the build toolchain: nftables (packet
/// loss for TCP retransmits), systemd-analyze (verifying the unit in deploy/systemd), tmux
/// (driving `nodesat top` as a person would) and prometheus (a real server scraping
/// `/metrics`, and promtool linting it).
pub fn test_tools() -> Result<()> {
    let tools = ["nftables", "systemd", "tmux", "prometheus"];
    apt_install(&tools)?;
    eprintln!("xtask: test tools ready: {}", tools.join(", "));
    Ok(())
}

fn rust_src() -> Result<()> {
    let out = cmd(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .output()
    .context("running rustup (is rustup installed?)")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && listed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: installing the nightly toolchain's rust-src component");
    if !out.status.success() {
        run(cmd(
            "rustup",
            &[
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ],
        ))
    } else {
        run(cmd(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        ))
    }
}

pub fn llvm_bin_dir() -> PathBuf {
    PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}/bin"))
}

fn llvm_dev() -> Result<()> {
    if llvm_bin_dir().join("llvm-config").exists() {
        return Ok(());
    }
    apt_install(&[&format!("llvm-{LLVM_MAJOR}-dev")])
}

/// `apt-get install` the packages that are not yet installed; runs `apt-get update` first.
pub fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing {} (apt-get update, then apt-get install)",
        missing.join(", ")
    );
    let mut update = cmd("apt-get", &["update", "-q"]);
    update.env("DEBIAN_FRONTEND", "noninteractive");
    run(update)?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    let mut install = cmd("apt-get", &args);
    install.env("DEBIAN_FRONTEND", "noninteractive");
    run(install)
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin").join(name)
}

/// bpf-linker is built against LLVM 22; an existing binary linked against another LLVM is replaced.
fn bpf_linker() -> Result<()> {
    let bin = cargo_bin("bpf-linker");
    if bin.exists() && linked_llvm_major(&bin) == Some(LLVM_MAJOR) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker against LLVM {LLVM_MAJOR} (about a minute)");
    let path = format!(
        "{}:{}",
        llvm_bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let feature = format!("llvm-{LLVM_MAJOR}");
    let mut install = cmd(
        "cargo",
        &[
            "install",
            "--locked",
            "bpf-linker",
            "--no-default-features",
            "--features",
            &feature,
            "--force",
        ],
    );
    install.env("PATH", path);
    run(install)?;
    if linked_llvm_major(&bin) != Some(LLVM_MAJOR) {
        bail!(
            "{} was built but does not report LLVM {LLVM_MAJOR}",
            bin.display()
        );
    }
    Ok(())
}

/// The LLVM major version a bpf-linker binary was built with, from its `--version` output
/// ("bpf-linker x.y.z\nLLVM version 22.1.8" or similar), or from the libLLVM it links.
fn linked_llvm_major(bin: &std::path::Path) -> Option<u32> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if let Some(v) = text.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .split("llvm version")
            .nth(1)
            .map(str::to_owned)
    }) {
        return v.trim().split('.').next()?.parse().ok();
    }
    let ldd = Command::new("ldd").arg(bin).output().ok()?;
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    ldd.split_whitespace()
        .find_map(|w| {
            w.strip_prefix("libLLVM.so.")
                .or_else(|| w.strip_prefix("libLLVM-"))
        })
        .and_then(|v| v.split(['.', '-']).next()?.parse().ok())
}

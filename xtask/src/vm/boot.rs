//! Boots one kernel with the initramfs in qemu (TCG) and captures its serial console.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

pub struct Boot {
    /// Wall-clock time from starting qemu until it exited (or was killed).
    pub elapsed: Duration,
    /// Killed at the timeout: the guest never powered off.
    pub timed_out: bool,
    /// qemu's exit code (0 after a power-off), `None` if it was killed.
    pub exit_code: Option<i32>,
}

pub const QEMU: &str = "qemu-system-x86_64";

/// Runs qemu until the guest powers off or `timeout` passes; its output goes to `log`.
pub fn boot(vmlinuz: &Path, initrd: &Path, log: &Path, timeout: Duration) -> Result<Boot> {
    boot_with(vmlinuz, initrd, log, timeout, "2", "")
}

/// [`boot`] with qemu's `-smp` set to `smp` (e.g. `128`: 128 vCPUs, so 128 possible CPUs) and `append` added to the kernel command line.
pub fn boot_with(
    vmlinuz: &Path,
    initrd: &Path,
    log: &Path,
    timeout: Duration,
    smp: &str,
    append: &str,
) -> Result<Boot> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let start = Instant::now();
    // One host thread for both vCPUs: with multi-threaded TCG a guest once died of an
    // `Oops: int3` in __schedule while a static key was being patched as the agent attached
    // (a race in cross-CPU code patching). It was not slower here. `delayacct` on the command
    // line: the offset check then need not switch it on (more patching of __schedule).
    let mut qemu = Command::new(QEMU)
        .args(["-accel", "tcg,thread=single", "-m", "1024", "-smp", smp])
        .args(["-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet delayacct {append}"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {QEMU}"))?;
    loop {
        if let Some(status) = qemu.try_wait()? {
            return Ok(Boot {
                elapsed: start.elapsed(),
                timed_out: false,
                exit_code: status.code(),
            });
        }
        if start.elapsed() >= timeout {
            let _ = qemu.kill();
            let _ = qemu.wait();
            return Ok(Boot {
                elapsed: start.elapsed(),
                timed_out: true,
                exit_code: None,
            });
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// "QEMU emulator version 7.2.x (...)", for the record.
pub fn qemu_version() -> String {
    Command::new(QEMU)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

//! The I/O storm: synchronous O_DIRECT writes to a loop device while the agent runs with BPF
//! statistics on. Reports the block probe's cost per event and compares its request count
//! with the device's own completed-I/O counters.

use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{BpfStats, check_interrupted, nodesat};

/// A loop device over a sparse file on the real disk; detached and removed on drop.
struct LoopDevice {
    dev: PathBuf,
    file: PathBuf,
}

impl LoopDevice {
    fn new() -> Result<LoopDevice> {
        let file = PathBuf::from(format!("/var/tmp/nodesat-bench-{}.img", std::process::id()));
        std::fs::File::create(&file)?.set_len(256 << 20)?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .context("running losetup")?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&file);
            bail!("losetup: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(LoopDevice { dev, file })
    }

    fn name(&self) -> String {
        self.dev
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    }

    /// Completed (reads, writes) from /sys/block/<dev>/stat.
    fn completed(&self) -> Result<(u64, u64)> {
        let text = std::fs::read_to_string(format!("/sys/block/{}/stat", self.name()))?;
        let f: Vec<u64> = text
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        Ok((
            f.first().copied().unwrap_or(0),
            f.get(4).copied().unwrap_or(0),
        ))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// 4 KiB-aligned O_DIRECT writes, sequential, wrapping at the device size.
fn write_for(dev: &Path, duration: Duration) -> Result<u64> {
    const BLOCK: usize = 4096;
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .with_context(|| format!("opening {} with O_DIRECT", dev.display()))?;
    let layout = std::alloc::Layout::from_size_align(BLOCK, BLOCK)?;
    // SAFETY: non-zero size; freed below; zeroed so it is initialised.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        bail!("allocating an aligned buffer");
    }
    // SAFETY: `ptr` holds BLOCK initialised bytes until dealloc.
    let buf = unsafe { std::slice::from_raw_parts(ptr, BLOCK) };
    let blocks = (256 << 20) / BLOCK as u64;
    let start = Instant::now();
    let mut written = 0u64;
    let result = (|| -> Result<()> {
        while start.elapsed() < duration {
            check_interrupted()?;
            if written.is_multiple_of(blocks) {
                use std::io::Seek;
                f.seek(std::io::SeekFrom::Start(0))?;
            }
            f.write_all(buf)?;
            written += 1;
        }
        Ok(())
    })();
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    result.map(|()| written)
}

/// Runs the storm with the agent attached; prints and returns the figures.
pub fn measure(bin: &Path, duration: Duration) -> Result<Value> {
    let device = LoopDevice::new()?;
    let _stats = BpfStats::enable()?;
    eprintln!(
        "bench: I/O storm on {}: starting nodesat ...",
        device.dev.display()
    );
    let mut agent = nodesat::Nodesat::start(bin, &["run", "--output", "json", "--interval", "1s"])?;
    agent.wait_ready()?;
    let before = device.completed()?;
    let written = write_for(&device.dev, duration)?;
    std::thread::sleep(Duration::from_millis(300));
    let after = device.completed()?;
    let last = agent.stop()?;
    let probes = nodesat::probes(&last)?;
    let completed = (after.0 - before.0) + (after.1 - before.1);
    println!(
        "\nI/O storm: O_DIRECT 4 KiB writes to {} for {} s: {written} writes ({:.0}/s), device completed {completed}",
        device.dev.display(),
        duration.as_secs_f64(),
        written as f64 / duration.as_secs_f64()
    );
    let hooks = nodesat::hook_costs(&probes, &["block", "runqueue"]);
    Ok(json!({
        "duration_s": duration.as_secs_f64(),
        "writes": written,
        "device_completed": completed,
        "hooks": hooks,
    }))
}

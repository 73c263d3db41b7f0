//! Direct I/O on a block device: writes then reads, each a request of its own, by a process
//! alone in its cgroup that blocks on every one (iowait).

use std::alloc::{self, Layout};
use std::fs::{self, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodesat_tests::{BlockStat, TestCgroup, spawn_in};

/// Bytes per request.
pub const BLOCK: usize = 64 << 10;

/// A block device: its node, kernel name and number.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    /// `loop3`, `nullb1`.
    pub name: String,
    /// `/sys/block/NAME/dev`: "major:minor".
    pub dev: String,
}

impl Disk {
    /// The whole-disk block device at `path`, named by `/sys/dev/block/MAJ:MIN`.
    pub fn at(path: &Path) -> Result<Disk, String> {
        let meta = fs::metadata(path).map_err(|e| format!("stat {}: {e}", path.display()))?;
        if !meta.file_type().is_block_device() {
            return Err(format!("{} is not a block device", path.display()));
        }
        let rdev = meta.rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let target = fs::canonicalize(&sys).map_err(|e| format!("{}: {e}", sys.display()))?;
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("odd {}", target.display()))?
            .to_owned();
        let dev_file = Path::new("/sys/block").join(&name).join("dev");
        let dev = fs::read_to_string(&dev_file)
            .map_err(|e| {
                format!(
                    "{} is not a whole disk? {}: {e}",
                    path.display(),
                    dev_file.display()
                )
            })?
            .trim()
            .to_owned();
        Ok(Disk {
            path: path.to_owned(),
            name,
            dev,
        })
    }

    pub fn stat(&self) -> Result<BlockStat, String> {
        BlockStat::read(&self.name).map_err(|e| e.to_string())
    }
}

/// A zeroed heap buffer aligned for `O_DIRECT`.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len, 4096).expect("valid layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        AlignedBuf { ptr, layout }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to layout.size() zeroed bytes this struct owns.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Helper mode `dio PATH WRITE_MS READ_MS`: `O_DIRECT` writes of `BLOCK` bytes for
/// `WRITE_MS`, then reads for `READ_MS`; prints `done WRITES READS BLKIO_TICKS ELAPSED_NS
/// RUN_NS WAIT_NS`: its own block I/O delay so far (`/proc/self/stat` field 42, in clock
/// ticks; the kernel accounts it while `kernel.task_delayacct` is 1), the wall time of the
/// I/O, and its time on a CPU and waiting for one over that stretch (`/proc/self/schedstat`).
pub fn dio(path: &Path, write: Duration, read: Duration) -> io::Result<()> {
    // On one CPU (the last; the run-queue check's tasks share the first), so its wake-ups are
    // local. Delay accounting ends a block I/O delay where the wake-up is sent
    // (try_to_wake_up), the agent where it lands (sched_wakeup): a wake-up queued to another
    // CPU by IPI falls between. Unpinned, under qemu TCG on 6.1, the agent read 16-20% more
    // than delay accounting in two variants (+250 ms in 1.3-1.5 s); pinned, within 2%.
    crate::sched::pin(crate::sched::last_cpu()?)?;
    let begun = Instant::now();
    let sched_before = schedstat()?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    // The size of a block device (or a regular file) alike.
    let size = (&file).seek(SeekFrom::End(0))?;
    let blocks = (size / BLOCK as u64).clamp(1, 4096);
    let mut buf = AlignedBuf::new(BLOCK);
    let (mut writes, mut reads) = (0u64, 0u64);
    let start = Instant::now();
    while writes == 0 || start.elapsed() < write {
        let data = buf.as_mut_slice();
        data[..8].copy_from_slice(&writes.to_le_bytes());
        file.write_all_at(data, (writes % blocks) * BLOCK as u64)?;
        writes += 1;
    }
    let start = Instant::now();
    while reads == 0 || start.elapsed() < read {
        file.read_exact_at(buf.as_mut_slice(), (reads % blocks) * BLOCK as u64)?;
        reads += 1;
    }
    let elapsed = begun.elapsed().as_nanos() as u64;
    let (run, wait) = schedstat()?;
    let (run, wait) = (run - sched_before.0, wait - sched_before.1);
    let stat = fs::read_to_string("/proc/self/stat")?;
    let ticks: u64 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(39)?.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no field 42 in /proc/self/stat: {stat}")))?;
    let mut stdout = io::stdout().lock();
    writeln!(
        stdout,
        "done {writes} {reads} {ticks} {elapsed} {run} {wait}"
    )?;
    stdout.flush()
}

/// This process's time on a CPU and waiting on a run queue so far, ns
/// (`/proc/self/schedstat`).
fn schedstat() -> io::Result<(u64, u64)> {
    let text = fs::read_to_string("/proc/self/schedstat")?;
    let mut f = text.split_whitespace().map(str::parse::<u64>);
    match (f.next(), f.next()) {
        (Some(Ok(run)), Some(Ok(wait))) => Ok((run, wait)),
        _ => Err(io::Error::other(format!("/proc/self/schedstat: {text:?}"))),
    }
}

/// What the I/O process did and the kernel's view of it.
#[derive(Debug)]
pub struct Io {
    pub writes: u64,
    pub reads: u64,
    /// Its block I/O delay (delay accounting), ns.
    pub blkio_delay_ns: u64,
    /// Wall time of its I/O, ns.
    pub elapsed_ns: u64,
    /// Its time on a CPU, and waiting for one, over that stretch (schedstat), ns.
    pub run_ns: u64,
    pub runqueue_ns: u64,
}
// The time it spent blocked (neither on a CPU nor waiting for one) is all I/O wait for this
// process, which does nothing but synchronous direct I/O: the check derives it from these
// once both clocks are brought to one (main.rs, compare_io).

/// Runs `dio` on `disk` in `cgroup`.
pub fn run(
    exe: &Path,
    cgroup: &TestCgroup,
    disk: &Disk,
    write: Duration,
    read: Duration,
) -> Result<Io, String> {
    let mut cmd = Command::new(exe);
    cmd.arg("dio")
        .arg(&disk.path)
        .args([write.as_millis().to_string(), read.as_millis().to_string()])
        .stdout(Stdio::piped());
    let mut p = spawn_in(cgroup, cmd).map_err(|e| format!("dio: {e}"))?;
    let timeout = write + read + Duration::from_secs(60);
    let line = p
        .read_line(timeout)
        .map_err(|e| format!("dio on {} printed no summary: {e}", disk.path.display()))?;
    let status = p
        .wait_within(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    if !status.is_some_and(|s| s.success()) {
        return Err(format!("dio on {} failed: {status:?}", disk.path.display()));
    }
    let n: Vec<u64> = line
        .strip_prefix("done ")
        .map(|r| {
            r.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let [writes, reads, ticks, elapsed_ns, run_ns, runqueue_ns] = n[..] else {
        return Err(format!("dio printed {line:?}"));
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Io {
        writes,
        reads,
        blkio_delay_ns: ticks * 1_000_000_000 / hz,
        elapsed_ns,
        run_ns,
        runqueue_ns,
    })
}

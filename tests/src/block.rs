//! Block I/O for tests: loop devices that clean up after themselves, and the
//! kernel's own I/O accounting (`/sys/block/<dev>/stat`, iowait in
//! `/proc/stat`) to check the agent against.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use crate::cgroup::PREFIX;
use crate::process::try_output_within;

/// Size of a [`LoopDevice`]'s (sparse) backing file.
pub const LOOP_SIZE: u64 = 256 << 20;

/// How long one `losetup` call may take.
const LOSETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// `statfs` magic numbers of memory-backed file systems, on which a loop
/// device would not do real disk I/O.
const TMPFS_MAGIC: u32 = 0x0102_1994;
const RAMFS_MAGIC: u32 = 0x8584_58f6;

/// A loop block device (`/dev/loopN`) backed by a 256 MiB sparse file on a
/// real disk, detached and deleted again when dropped.
///
/// The backing file lives in a directory `nodesat-test-<pid>-loop-*` under
/// the first of `/var/tmp`, `$TMPDIR` (or `/tmp`) and `<workspace>/target`
/// that is not on tmpfs or ramfs, so that I/O on the device becomes I/O on a
/// disk (and its tasks really wait). The device is set up with direct I/O to
/// the backing file where the kernel allows it (`losetup --direct-io=on`),
/// which keeps the page cache out of the way.
///
/// Creating the first one in a process also detaches loop devices and
/// removes backing directories left behind by test processes that no longer
/// exist (e.g. killed by a CI timeout).
///
/// Dropping it restores its write cache mode if it was changed (the kernel
/// keeps it for the next user of the device), runs `losetup -d` (which
/// detaches it once the last user closed it) and removes the backing file.
/// Drop never panics; it reports failures on stderr. Drop the processes
/// using the device first.
#[derive(Debug)]
pub struct LoopDevice {
    /// `/dev/loopN`; empty until attached.
    path: PathBuf,
    /// `loopN`.
    name: String,
    /// `"major:minor"`.
    major_minor: String,
    backing: PathBuf,
    /// Its `queue/write_cache` when attached, restored on drop.
    initial_write_cache: Option<String>,
    /// Removed (with the backing file) on drop, after the device is detached.
    dir: Option<tempfile::TempDir>,
}

impl LoopDevice {
    /// Creates the backing file and attaches a free loop device to it.
    ///
    /// Errors if no directory on a real disk is found, or if `losetup`
    /// fails (no `losetup`, no loop driver, no free device, not root).
    pub fn create() -> io::Result<Self> {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_stale);

        let base = backing_base()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-loop-", std::process::id()))
            .tempdir_in(&base)
            .map_err(|e| with_path(e, "cannot create a directory in", &base))?;
        let backing = dir.path().join("backing.img");
        let file = File::create(&backing).map_err(|e| with_path(e, "cannot create", &backing))?;
        file.set_len(LOOP_SIZE)
            .map_err(|e| with_path(e, "cannot size", &backing))?;
        drop(file);

        // Built up as it goes, so that an error half-way detaches the device
        // (through Drop).
        let mut device = Self {
            path: PathBuf::new(),
            name: String::new(),
            major_minor: String::new(),
            backing,
            initial_write_cache: None,
            dir: Some(dir),
        };
        device.path = attach(&device.backing)?;
        device.name = device
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| io::Error::other(format!("odd device {:?}", device.path)))?;
        let dev = device.sysfs().join("dev");
        device.major_minor = fs::read_to_string(&dev)
            .map_err(|e| with_path(e, "cannot read", &dev))?
            .trim()
            .to_owned();
        device.initial_write_cache = device.write_cache().ok();
        eprintln!(
            "loop device {} ({}) on {} (direct I/O: {}, write cache: {:?})",
            device.path.display(),
            device.major_minor,
            device.backing.display(),
            device.direct_io(),
            device.initial_write_cache
        );
        Ok(device)
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel's name for it, `loopN`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its device number, `"major:minor"` (from `/sys/block/loopN/dev`), as
    /// the agent's `disks[].device` names it.
    pub fn major_minor(&self) -> &str {
        &self.major_minor
    }

    /// Its backing file.
    pub fn backing_file(&self) -> &Path {
        &self.backing
    }

    /// `/sys/block/loopN`.
    pub fn sysfs(&self) -> PathBuf {
        Path::new("/sys/block").join(&self.name)
    }

    /// Whether it does direct I/O to its backing file
    /// (`/sys/block/loopN/loop/dio`).
    pub fn direct_io(&self) -> bool {
        fs::read_to_string(self.sysfs().join("loop/dio")).is_ok_and(|d| d.trim() == "1")
    }

    /// Its I/O counters, `/sys/block/loopN/stat`.
    pub fn stat(&self) -> io::Result<BlockStat> {
        BlockStat::read(&self.name)
    }

    /// Its write cache mode, `/sys/block/loopN/queue/write_cache`:
    /// `"write back"` or `"write through"`.
    pub fn write_cache(&self) -> io::Result<String> {
        let path = self.sysfs().join("queue/write_cache");
        fs::read_to_string(&path)
            .map(|mode| mode.trim().to_owned())
            .map_err(|e| with_path(e, "cannot read", &path))
    }

    /// A loop device for `test` with its write cache on (`write_back`) or off, or `None`
    /// after [`skip`](crate::skip)ping the test when none can be made here.
    #[track_caller]
    pub fn for_test(test: &str, write_back: bool) -> Option<Self> {
        let device = match Self::create() {
            Ok(device) => device,
            Err(e) => {
                crate::skip(test, &format!("no loop device: {e}"));
                return None;
            }
        };
        device
            .set_write_back_cache(write_back)
            .expect("set the loop device's write cache");
        Some(device)
    }

    /// Sets whether the kernel treats it as having a volatile write cache
    /// (`/sys/block/loopN/queue/write_cache`: `"write back"` or
    /// `"write through"`).
    ///
    /// Loop devices start with `write back`: every `O_DSYNC`/`FUA` write
    /// then also costs flush requests (counted as flushes in
    /// [`BlockStat`], and as `"other"` requests by the agent), and an fsync's
    /// empty pre-flush write is counted as a completed write without ever
    /// being issued to the driver. With `write through` the block layer
    /// drops flushes and FUA, so that each `O_DIRECT` write is exactly one
    /// write request, issued and completed.
    ///
    /// The kernel keeps the setting when the device is detached; drop
    /// restores the mode it had when attached.
    pub fn set_write_back_cache(&self, write_back: bool) -> io::Result<()> {
        let path = self.sysfs().join("queue/write_cache");
        let mode = if write_back {
            "write back"
        } else {
            "write through"
        };
        fs::write(&path, mode)
            .map_err(|e| with_path(e, &format!("cannot write {mode:?} to"), &path))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Some(initial) = &self.initial_write_cache
            && self.write_cache().is_ok_and(|mode| mode != *initial)
            && let Err(e) = self.set_write_back_cache(initial == "write back")
        {
            eprintln!("nodesat-tests: restoring {}'s write cache: {e}", self.name);
        }
        if !self.path.as_os_str().is_empty()
            && let Err(e) = detach(&self.path)
        {
            eprintln!("nodesat-tests: detaching {}: {e}", self.path.display());
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("nodesat-tests: removing {}: {e}", path.display());
            }
        }
    }
}

/// `losetup --find --show --direct-io=on <backing>`, or without
/// `--direct-io` if that is rejected; returns `/dev/loopN`.
fn attach(backing: &Path) -> io::Result<PathBuf> {
    let mut errors = Vec::new();
    for direct_io in [true, false] {
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if direct_io {
            cmd.arg("--direct-io=on");
        }
        cmd.arg(backing);
        let out = try_output_within(cmd, LOSETUP_TIMEOUT)?;
        // losetup may attach the device and then fail to switch on direct
        // I/O: it prints the device, and exits non-zero. Keep it then.
        let stdout = String::from_utf8_lossy(&out.stdout);
        if let Some(device) = stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("/dev/"))
        {
            if !out.status.success() {
                eprintln!(
                    "losetup attached {device} but said ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            return Ok(PathBuf::from(device));
        }
        errors.push(format!(
            "losetup{} ({}): {}",
            if direct_io { " --direct-io=on" } else { "" },
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Err(io::Error::other(format!(
        "cannot attach a loop device to {}: {}",
        backing.display(),
        errors.join("; ")
    )))
}

/// `losetup -d <device>`.
fn detach(device: &Path) -> io::Result<()> {
    let mut cmd = Command::new("losetup");
    cmd.arg("-d").arg(device);
    let out = try_output_within(cmd, LOSETUP_TIMEOUT)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "losetup -d ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Candidate parents of backing directories, in order of preference.
fn backing_candidates() -> Vec<PathBuf> {
    let mut candidates = vec![
        PathBuf::from("/var/tmp"),
        std::env::temp_dir(),
        crate::workspace_root().join("target"),
    ];
    candidates.dedup();
    candidates
}

/// The first of [`backing_candidates`] that is a directory on a real (not
/// memory-backed) file system.
fn backing_base() -> io::Result<PathBuf> {
    let mut rejected = Vec::new();
    for dir in backing_candidates() {
        match memory_backed(&dir) {
            Ok(false) => return Ok(dir),
            Ok(true) => rejected.push(format!("{} is on tmpfs/ramfs", dir.display())),
            Err(e) => rejected.push(format!("{}: {e}", dir.display())),
        }
    }
    Err(io::Error::other(format!(
        "no directory on a disk for a loop device's backing file: {}",
        rejected.join("; ")
    )))
}

/// Whether `path` is on tmpfs or ramfs (`stat -f`).
pub fn memory_backed(path: &Path) -> io::Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is a
    // valid NUL-terminated string.
    let fs_type = unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        if libc::statfs(c_path.as_ptr(), &mut buf) != 0 {
            return Err(io::Error::last_os_error());
        }
        // The magic numbers are 32-bit; f_type's width varies by platform.
        buf.f_type as u32
    };
    Ok(fs_type == TMPFS_MAGIC || fs_type == RAMFS_MAGIC)
}

/// The pid of the test process that created `path`, if one of its components
/// is named `nodesat-test-<pid>-...`.
fn creator_pid(path: &Path) -> Option<u32> {
    path.components().find_map(|c| match c {
        Component::Normal(name) => name
            .to_str()?
            .strip_prefix(PREFIX)?
            .split('-')
            .next()?
            .parse()
            .ok(),
        _ => None,
    })
}

/// Whether `pid` is a process that created test resources and is gone.
fn is_dead_test_process(pid: u32) -> bool {
    pid != std::process::id() && !crate::process_alive(pid)
}

/// Detaches loop devices whose backing file belongs to a test process that no
/// longer exists, and removes such backing directories.
fn sweep_stale() {
    if let Ok(entries) = fs::read_dir("/sys/block") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| n.starts_with("loop")) else {
                continue;
            };
            let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
                continue;
            };
            let backing = backing.trim().trim_end_matches(" (deleted)");
            if !creator_pid(Path::new(backing)).is_some_and(is_dead_test_process) {
                continue;
            }
            let device = Path::new("/dev").join(name);
            eprintln!(
                "nodesat-tests: detaching stale loop device {} ({backing})",
                device.display()
            );
            if let Err(e) = detach(&device) {
                eprintln!("nodesat-tests: {e}");
            }
        }
    }
    for base in backing_candidates() {
        let Ok(entries) = fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_loop_dir = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(PREFIX) && n.contains("-loop-"));
            if !is_loop_dir || !creator_pid(&path).is_some_and(is_dead_test_process) {
                continue;
            }
            eprintln!(
                "nodesat-tests: removing stale loop backing directory {}",
                path.display()
            );
            if let Err(e) = fs::remove_dir_all(&path) {
                eprintln!("nodesat-tests: removing {}: {e}", path.display());
            }
        }
    }
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// A block device's I/O counters, `/sys/block/<dev>/stat` (see the kernel's
/// `Documentation/block/stat.rst`); cumulative since boot.
///
/// Completed requests are counted after merging: one per request the driver
/// completed (what the agent's `block_rq_complete` probe sees), except for
/// the empty pre-flush writes described at
/// [`LoopDevice::set_write_back_cache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStat {
    /// Read requests completed (field 1).
    pub reads: u64,
    /// Sectors (512 bytes) read (field 3).
    pub sectors_read: u64,
    /// Write requests completed (field 5).
    pub writes: u64,
    /// Sectors written (field 7).
    pub sectors_written: u64,
    /// Requests in flight now (field 9; not a counter).
    pub in_flight: u64,
    /// Discard requests completed (field 12; 0 on kernels before 4.18).
    pub discards: u64,
    /// Flush requests completed (field 16; 0 on kernels before 5.5).
    pub flushes: u64,
}

impl BlockStat {
    /// Reads `/sys/block/<name>/stat`.
    pub fn read(name: &str) -> io::Result<Self> {
        let path = Path::new("/sys/block").join(name).join("stat");
        let text = fs::read_to_string(&path).map_err(|e| with_path(e, "cannot read", &path))?;
        Self::parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot parse {}: {text:?}", path.display()),
            )
        })
    }

    /// Parses the contents of a `stat` file (at least the 11 fields every
    /// kernel has).
    pub fn parse(text: &str) -> Option<Self> {
        let fields: Vec<u64> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        if fields.len() < 11 {
            return None;
        }
        let field = |n: usize| fields.get(n - 1).copied().unwrap_or(0);
        Some(Self {
            reads: field(1),
            sectors_read: field(3),
            writes: field(5),
            sectors_written: field(7),
            in_flight: field(9),
            discards: field(12),
            flushes: field(16),
        })
    }

    /// The counters' growth since `earlier` (`in_flight` is this one's).
    pub fn since(&self, earlier: &BlockStat) -> BlockStat {
        BlockStat {
            reads: self.reads.saturating_sub(earlier.reads),
            sectors_read: self.sectors_read.saturating_sub(earlier.sectors_read),
            writes: self.writes.saturating_sub(earlier.writes),
            sectors_written: self.sectors_written.saturating_sub(earlier.sectors_written),
            in_flight: self.in_flight,
            discards: self.discards.saturating_sub(earlier.discards),
            flushes: self.flushes.saturating_sub(earlier.flushes),
        }
    }

    /// Read and write requests completed.
    pub fn reads_and_writes(&self) -> u64 {
        self.reads + self.writes
    }
}

/// Each online CPU's iowait time so far, ns, from the `cpuN` lines of
/// `/proc/stat` (kept in `USER_HZ` ticks, so with 10 ms resolution on most
/// systems): time the CPU was idle while a task that blocked on it waited
/// for I/O. See [`proc_stat_cpu_times`] for the other times.
pub fn proc_stat_iowait_ns() -> io::Result<BTreeMap<u32, u64>> {
    Ok(proc_stat_cpu_times()?
        .into_iter()
        .map(|(cpu, times)| (cpu, times.iowait_ns))
        .collect())
}

/// Each online CPU's times so far, from the `cpuN` lines of `/proc/stat`.
pub fn proc_stat_cpu_times() -> io::Result<BTreeMap<u32, CpuTimes>> {
    let text = fs::read_to_string("/proc/stat")?;
    parse_proc_stat(&text, clock_ticks_per_second())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "cannot parse /proc/stat"))
}

/// How one CPU spent its time, ns, from its `/proc/stat` line (kept in
/// `USER_HZ` ticks: 10 ms resolution on most systems).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Running tasks: user, nice, system, irq, softirq and steal time.
    pub busy_ns: u64,
    /// Idle, with no task that blocked on it waiting for I/O.
    pub idle_ns: u64,
    /// Idle while a task that blocked on it waited for I/O.
    pub iowait_ns: u64,
    /// Of `busy_ns`, user and nice time (tasks' own code).
    pub user_ns: u64,
}

impl CpuTimes {
    /// The times' growth since `earlier` (saturating at 0).
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            busy_ns: self.busy_ns.saturating_sub(earlier.busy_ns),
            idle_ns: self.idle_ns.saturating_sub(earlier.idle_ns),
            iowait_ns: self.iowait_ns.saturating_sub(earlier.iowait_ns),
            user_ns: self.user_ns.saturating_sub(earlier.user_ns),
        }
    }
}

/// The per-CPU times of `/proc/stat` contents, with `hz` ticks a second.
fn parse_proc_stat(text: &str, hz: u64) -> Option<BTreeMap<u32, CpuTimes>> {
    let mut cpus = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields.next().and_then(|f| f.strip_prefix("cpu")) else {
            continue;
        };
        // "cpu" alone is the total over all CPUs.
        let Ok(cpu) = cpu.parse::<u32>() else {
            continue;
        };
        let ticks: Vec<u64> = fields.map(str::parse).collect::<Result<_, _>>().ok()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        // (guest time is already part of user and nice).
        let tick = |i: usize| ticks.get(i).copied().unwrap_or(0);
        if ticks.len() < 5 {
            return None;
        }
        let ns = |t: u64| t.checked_mul(1_000_000_000).map(|n| n / hz);
        cpus.insert(
            cpu,
            CpuTimes {
                busy_ns: ns(tick(0) + tick(1) + tick(2) + tick(5) + tick(6) + tick(7))?,
                idle_ns: ns(tick(3))?,
                iowait_ns: ns(tick(4))?,
                user_ns: ns(tick(0) + tick(1))?,
            },
        );
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// What `nodesat-load dio-write` (or `uring-read`) says when it is done (its last line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DioWriteSummary {
    /// Blocks written.
    pub blocks: u64,
    /// Time it spent writing, ns.
    pub elapsed_ns: u64,
    /// Of that, time it ran on a CPU (0 when the kernel does not say).
    pub run_ns: u64,
    /// Of that, time it waited on a run queue (0 when the kernel does not
    /// say).
    pub runqueue_ns: u64,
    /// Its block I/O delay while writing, from delay accounting (`/proc/self/stat` field 42,
    /// in clock ticks, accounted while `kernel.task_delayacct` is 1), ns; `None` when the line
    /// does not say.
    pub blkio_delay_ns: Option<u64>,
}

impl DioWriteSummary {
    /// Parses `wrote|read <n> blocks elapsed_ns <e> run_ns <r> runqueue_ns <q>[ blkio_delay_ns <b>]`.
    pub fn parse(line: &str) -> Option<Self> {
        let mut fields: Vec<&str> = line.split_whitespace().collect();
        let blkio_delay_ns = match fields[..] {
            [.., "blkio_delay_ns", b] => {
                let b = b.parse().ok()?;
                fields.truncate(fields.len() - 2);
                Some(b)
            }
            _ => None,
        };
        let [
            "wrote" | "read",
            blocks,
            "blocks",
            "elapsed_ns",
            elapsed,
            "run_ns",
            run,
            "runqueue_ns",
            rq,
        ] = fields[..]
        else {
            return None;
        };
        Some(Self {
            blocks: blocks.parse().ok()?,
            elapsed_ns: elapsed.parse().ok()?,
            run_ns: run.parse().ok()?,
            runqueue_ns: rq.parse().ok()?,
            blkio_delay_ns,
        })
    }

    /// Time it was blocked (neither running nor runnable), ns: waiting for
    /// its writes, all but a sliver of it.
    pub fn blocked_ns(&self) -> u64 {
        self.elapsed_ns
            .saturating_sub(self.run_ns)
            .saturating_sub(self.runqueue_ns)
    }
}

/// `USER_HZ`, the unit of `/proc/stat` times.
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_block_stat() {
        let modern = "       3        1       24        0    77485        0   553904    10176        \
                      0    10548    15569        2        0       16        1    16494     5392\n";
        let stat = BlockStat::parse(modern).unwrap();
        assert_eq!(
            stat,
            BlockStat {
                reads: 3,
                sectors_read: 24,
                writes: 77485,
                sectors_written: 553904,
                in_flight: 0,
                discards: 2,
                flushes: 16494,
            }
        );
        assert_eq!(stat.reads_and_writes(), 77488);
        // Kernels before 4.18 have 11 fields.
        let old = "1 0 8 0 5 0 40 0 1 0 0\n";
        let stat = BlockStat::parse(old).unwrap();
        assert_eq!((stat.writes, stat.in_flight, stat.flushes), (5, 1, 0));
        assert_eq!(BlockStat::parse("1 2 3\n"), None);
        assert_eq!(BlockStat::parse("x 2 3 4 5 6 7 8 9 10 11\n"), None);

        let earlier = BlockStat {
            reads: 1,
            writes: 80000,
            flushes: 10,
            in_flight: 3,
            ..BlockStat::default()
        };
        let later = BlockStat {
            reads: 1,
            writes: 80100,
            flushes: 10,
            in_flight: 0,
            ..BlockStat::default()
        };
        let delta = later.since(&earlier);
        assert_eq!((delta.reads, delta.writes, delta.flushes), (0, 100, 0));
        assert_eq!(delta.in_flight, 0);
    }

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  139946 0 43041 446354 1673 0 975 84 0 0
cpu0 68942 0 32771 213604 303 0 436 37 0 0
cpu1 71004 1 10270 232749 1369 2 538 46 0 0
intr 1 2 3
ctxt 12345
";
        let cpus = parse_proc_stat(text, 100).unwrap();
        assert_eq!(cpus.len(), 2);
        assert_eq!(
            cpus[&1],
            CpuTimes {
                busy_ns: (71004 + 1 + 10270 + 2 + 538 + 46) * 10_000_000,
                idle_ns: 2_327_490_000_000,
                iowait_ns: 13_690_000_000,
                user_ns: 710_050_000_000,
            }
        );
        assert_eq!(cpus[&0].iowait_ns, 3_030_000_000);
        assert_eq!(cpus[&1].since(&cpus[&0]).iowait_ns, 10_660_000_000);
        assert_eq!(parse_proc_stat("intr 1\n", 100), None);
        // Old kernels: fewer columns.
        let old = parse_proc_stat("cpu0 1 2 3 4 5\n", 100).unwrap();
        assert_eq!(old[&0].iowait_ns, 50_000_000);
        assert_eq!(parse_proc_stat("cpu0 1 2 3\n", 100), None);
    }

    #[test]
    fn parses_the_dio_write_summary() {
        let summary = DioWriteSummary::parse(
            "wrote 21333 blocks elapsed_ns 2000000000 run_ns 60000000 runqueue_ns 5000000",
        )
        .unwrap();
        assert_eq!(summary.blocks, 21333);
        assert_eq!(summary.blocked_ns(), 1_935_000_000);
        assert_eq!(summary.blkio_delay_ns, None);
        let with_delay = DioWriteSummary::parse(
            "wrote 3 blocks elapsed_ns 10 run_ns 2 runqueue_ns 1 blkio_delay_ns 7000000",
        )
        .unwrap();
        assert_eq!(with_delay.blkio_delay_ns, Some(7_000_000));
        assert_eq!(with_delay.blocked_ns(), 7);
        assert_eq!(DioWriteSummary::parse("wrote 3 blocks"), None);
        assert_eq!(DioWriteSummary::parse("writing"), None);
    }

    #[test]
    fn finds_the_creating_test_process() {
        assert_eq!(
            creator_pid(Path::new(
                "/var/tmp/nodesat-test-4242-loop-Ab12/backing.img"
            )),
            Some(4242)
        );
        assert_eq!(creator_pid(Path::new("/var/tmp/other/backing.img")), None);
        assert_eq!(creator_pid(Path::new("/var/tmp/nodesat-test-x-loop")), None);
        assert!(!is_dead_test_process(std::process::id()));
    }
}

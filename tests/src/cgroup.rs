//! Test cgroups that clean up after themselves.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Prefix of every cgroup the harness creates.
pub const PREFIX: &str = "nodesat-test-";

/// How long [`TestCgroup`]'s drop waits for the killed processes to go.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// The cgroup hierarchies a test cgroup is created in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchies {
    /// Root of the cgroup v2 hierarchy (`/sys/fs/cgroup` on pure v2 machines,
    /// usually `/sys/fs/cgroup/unified` on hybrid ones).
    pub v2: PathBuf,
    /// Roots of the v1 `cpu` and `memory` hierarchies, on hybrid machines
    /// (empty on pure v2 machines).
    pub v1: Vec<PathBuf>,
    /// Root of the v1 `memory` hierarchy (also in `v1`), if mounted.
    pub v1_memory: Option<PathBuf>,
    /// Root of the v1 `cpu` hierarchy (also in `v1`), if mounted.
    pub v1_cpu: Option<PathBuf>,
}

impl Hierarchies {
    /// Finds the mounted hierarchies from `/proc/self/mounts`.
    pub fn detect() -> Result<Self, String> {
        let mounts = fs::read_to_string("/proc/self/mounts")
            .map_err(|e| format!("cannot read /proc/self/mounts: {e}"))?;
        Self::from_mounts(&mounts)
    }

    /// Parses the contents of `/proc/self/mounts`.
    pub fn from_mounts(mounts: &str) -> Result<Self, String> {
        let mut v2 = None;
        let (mut cpu, mut memory) = (None, None);
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, mount_point, fs_type, options, ..] = fields[..] else {
                continue;
            };
            let mount_point = PathBuf::from(mount_point);
            match fs_type {
                "cgroup2" => {
                    v2.get_or_insert(mount_point);
                }
                "cgroup" => {
                    let has = |ctrl: &str| options.split(',').any(|o| o == ctrl);
                    if has("cpu") && cpu.is_none() {
                        cpu = Some(mount_point.clone());
                    }
                    if has("memory") && memory.is_none() {
                        memory = Some(mount_point);
                    }
                }
                _ => {}
            }
        }
        let v2 = v2.ok_or("no cgroup v2 hierarchy is mounted")?;
        let mut v1: Vec<PathBuf> = cpu.iter().cloned().chain(memory.clone()).collect();
        v1.dedup();
        Ok(Self {
            v2,
            v1,
            v1_memory: memory,
            v1_cpu: cpu,
        })
    }

    /// Where the CPU controller is: `Ok` if test cgroups can get a CPU quota
    /// ([`TestCgroup::set_cpu_quota`]), else the reason.
    ///
    /// That is the v1 `cpu` hierarchy when it is mounted (hybrid machines),
    /// else the v2 hierarchy if its root offers the `cpu` controller (listed
    /// in `cgroup.controllers`).
    pub fn cpu_controller(&self) -> Result<CpuController, String> {
        if let Some(root) = &self.v1_cpu {
            return Ok(CpuController::V1(root.clone()));
        }
        if self.v2_offers("cpu")? {
            Ok(CpuController::V2(self.v2.clone()))
        } else {
            Err(format!(
                "no CPU controller: no v1 cpu hierarchy is mounted and the v2 root \
                 ({}) does not offer cpu in cgroup.controllers",
                self.v2.display()
            ))
        }
    }

    /// Whether the v2 root lists `controller` in its `cgroup.controllers`.
    fn v2_offers(&self, controller: &str) -> Result<bool, String> {
        let file = self.v2.join("cgroup.controllers");
        let controllers = fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        Ok(controllers.split_whitespace().any(|c| c == controller))
    }

    /// Where the memory controller is: `Ok` if test cgroups can get a
    /// memory limit ([`TestCgroup::set_memory_limit`]), else the reason.
    ///
    /// That is the v1 `memory` hierarchy when it is mounted (hybrid
    /// machines), else the v2 hierarchy if its root offers the `memory`
    /// controller (listed in `cgroup.controllers`).
    pub fn memory_controller(&self) -> Result<MemoryController, String> {
        if let Some(root) = &self.v1_memory {
            return Ok(MemoryController::V1(root.clone()));
        }
        let file = self.v2.join("cgroup.controllers");
        let controllers = fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        if controllers.split_whitespace().any(|c| c == "memory") {
            Ok(MemoryController::V2(self.v2.clone()))
        } else {
            Err(format!(
                "no memory controller: no v1 memory hierarchy is mounted and {} \
                 lists only [{}]",
                file.display(),
                controllers.trim()
            ))
        }
    }
}

/// Which hierarchy's CPU controller gives test cgroups their CPU quota, and
/// its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuController {
    /// The v1 `cpu` hierarchy (`cpu.cfs_period_us`, `cpu.cfs_quota_us`,
    /// `cpu.stat` with `throttled_time` in ns).
    V1(PathBuf),
    /// The v2 hierarchy (`cpu.max`, `cpu.stat` with `throttled_usec`).
    V2(PathBuf),
}

/// CFS bandwidth counters of a cgroup's `cpu.stat`, cumulative since it was
/// created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// Enforcement periods that elapsed while it had runnable tasks
    /// (`nr_periods`).
    pub periods: u64,
    /// Periods in which it used up its quota and was throttled
    /// (`nr_throttled`).
    pub throttled_periods: u64,
    /// Total time it was throttled, ns (v1 `throttled_time`; v2
    /// `throttled_usec` × 1000).
    pub throttled_ns: u64,
}

impl CpuStat {
    /// The counters' growth since `earlier` (saturating at 0).
    pub fn since(&self, earlier: &CpuStat) -> CpuStat {
        CpuStat {
            periods: self.periods.saturating_sub(earlier.periods),
            throttled_periods: self
                .throttled_periods
                .saturating_sub(earlier.throttled_periods),
            throttled_ns: self.throttled_ns.saturating_sub(earlier.throttled_ns),
        }
    }

    /// Parses a v1 (`v1 == true`) or v2 `cpu.stat`.
    pub fn parse(text: &str, v1: bool) -> Option<CpuStat> {
        let throttled_ns = if v1 {
            keyed_value(text, "throttled_time")?
        } else {
            keyed_value(text, "throttled_usec")?.checked_mul(1000)?
        };
        Some(CpuStat {
            periods: keyed_value(text, "nr_periods")?,
            throttled_periods: keyed_value(text, "nr_throttled")?,
            throttled_ns,
        })
    }
}

/// Which hierarchy's memory controller limits test cgroups, and its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryController {
    /// The v1 `memory` hierarchy (`memory.limit_in_bytes`,
    /// `memory.oom_control`).
    V1(PathBuf),
    /// The v2 hierarchy (`memory.max`, `memory.events`).
    V2(PathBuf),
}

/// A cgroup that processes can be started in (see
/// [`spawn_in`](crate::spawn_in)): one directory per hierarchy.
pub trait CgroupDirs {
    /// The `cgroup.procs` files of all its directories, v2 first.
    fn procs_files(&self) -> Vec<PathBuf>;
    /// Its path relative to the v2 hierarchy's root (for messages).
    fn relative_path(&self) -> String;
}

impl CgroupDirs for TestCgroup {
    fn procs_files(&self) -> Vec<PathBuf> {
        TestCgroup::procs_files(self)
    }

    fn relative_path(&self) -> String {
        TestCgroup::relative_path(self)
    }
}

/// A uniquely named cgroup, removed again when dropped.
///
/// It is created at the top of the cgroup v2 hierarchy as
/// `nodesat-test-<pid>-<name>` and, on hybrid machines, with the same name in
/// the v1 `cpu` and `memory` hierarchies (so that CPU scheduling groups match
/// the v2 cgroup, as on pure v2 machines).
///
/// Dropping it SIGKILLs every process left in it, waits (up to 5 s) until it
/// is empty and removes its directories. Drop never panics; it reports
/// failures on stderr.
#[derive(Debug)]
pub struct TestCgroup {
    name: String,
    /// Directory in the v2 hierarchy.
    v2: PathBuf,
    /// Directories in v1 hierarchies (hybrid machines only).
    v1: Vec<PathBuf>,
    /// Its directory in the v1 memory hierarchy (also in `v1`), if any.
    v1_memory: Option<PathBuf>,
    /// Its directory in the v1 cpu hierarchy (also in `v1`), if any.
    v1_cpu: Option<PathBuf>,
    id: u64,
}

impl TestCgroup {
    /// Creates `nodesat-test-<pid>-<name>` in every hierarchy.
    ///
    /// Also removes leftovers of earlier test runs whose process is gone
    /// (once per process).
    pub fn create(name: &str) -> io::Result<Self> {
        let hierarchies = Hierarchies::detect().map_err(io::Error::other)?;
        static SWEEP: Once = Once::new();
        SWEEP.call_once(|| sweep_stale(&hierarchies));

        let name = format!("{PREFIX}{}-{name}", std::process::id());
        // Built up as directories get created, so that an error half-way
        // removes the ones already made (through Drop).
        let mut cgroup = Self {
            name: name.clone(),
            v2: PathBuf::new(),
            v1: Vec::new(),
            v1_memory: None,
            v1_cpu: None,
            id: 0,
        };
        let v2 = hierarchies.v2.join(&name);
        make_dir(&v2)?;
        cgroup.id = fs::metadata(&v2)?.ino();
        cgroup.v2 = v2;
        for root in &hierarchies.v1 {
            let dir = root.join(&name);
            make_dir(&dir)?;
            if hierarchies.v1_memory.as_ref() == Some(root) {
                cgroup.v1_memory = Some(dir.clone());
            }
            if hierarchies.v1_cpu.as_ref() == Some(root) {
                cgroup.v1_cpu = Some(dir.clone());
            }
            cgroup.v1.push(dir);
        }
        Ok(cgroup)
    }

    /// The cgroup v2 id: the inode number of its v2 directory (what
    /// `bpf_get_current_cgroup_id()` returns for its tasks).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its directory name, `nodesat-test-<pid>-<name>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path relative to the v2 hierarchy's root, e.g.
    /// `/nodesat-test-123-busy` (the `name` the agent reports).
    pub fn relative_path(&self) -> String {
        format!("/{}", self.name)
    }

    /// Its directory in the cgroup v2 hierarchy.
    pub fn v2_path(&self) -> &Path {
        &self.v2
    }

    /// Its directories in all hierarchies: v2 first, then v1 ones if any.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.v2.as_path())
            .filter(|p| !p.as_os_str().is_empty())
            .chain(self.v1.iter().map(PathBuf::as_path))
    }

    /// The `cgroup.procs` files of all its directories.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Moves process `pid` (all its threads) into this cgroup in every
    /// hierarchy.
    pub fn add_pid(&self, pid: u32) -> io::Result<()> {
        for file in self.procs_files() {
            fs::write(&file, pid.to_string())
                .map_err(|e| with_path(e, "cannot write to", &file))?;
        }
        Ok(())
    }

    /// The processes in this cgroup (union over its hierarchies).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.dirs().flat_map(read_pids).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The directory whose memory controller files apply to this cgroup:
    /// the v1 memory one on hybrid machines, else the v2 one.
    pub fn memory_dir(&self) -> &Path {
        self.v1_memory.as_deref().unwrap_or(&self.v2)
    }

    /// Limits its memory to `bytes`, without swap, so that its processes are
    /// OOM-killed beyond it.
    ///
    /// On hybrid machines it writes the v1 `memory.limit_in_bytes` (and, where
    /// they exist, `memory.memsw.limit_in_bytes` to the same value and
    /// `memory.swappiness` to 0). Otherwise it enables the v2 memory
    /// controller for the top-level cgroups if needed (`+memory` in the root's
    /// `cgroup.subtree_control`; left enabled afterwards) and writes
    /// `memory.max` (and `memory.swap.max` = 0 where it exists).
    pub fn set_memory_limit(&self, bytes: u64) -> io::Result<()> {
        set_memory_limit_in(self.v1_memory.as_deref(), &self.v2, bytes)
    }

    /// How many of its processes the kernel OOM-killed so far: the `oom_kill`
    /// line of v1 `memory.oom_control` (hybrid machines) or of v2
    /// `memory.events`.
    pub fn memory_oom_kills(&self) -> io::Result<u64> {
        memory_oom_kills_in(self.v1_memory.as_deref(), &self.v2)
    }

    /// The directory whose CPU controller files apply to this cgroup: the
    /// v1 cpu one on hybrid machines, else the v2 one.
    pub fn cpu_dir(&self) -> &Path {
        self.v1_cpu.as_deref().unwrap_or(&self.v2)
    }

    /// Limits it to `quota_us` of CPU time every `period_us` (CFS bandwidth
    /// control), so that its tasks are throttled beyond that.
    ///
    /// On hybrid machines it writes the v1 `cpu.cfs_period_us`, then
    /// `cpu.cfs_quota_us`. Otherwise it enables the v2 cpu controller for the
    /// top-level cgroups if needed (`+cpu` in the root's
    /// `cgroup.subtree_control`; left enabled afterwards) and writes
    /// `cpu.max` = `"<quota_us> <period_us>"`. See
    /// [`Hierarchies::cpu_controller`] for whether either is possible.
    pub fn set_cpu_quota(&self, quota_us: u64, period_us: u64) -> io::Result<()> {
        set_cpu_quota_in(self.v1_cpu.as_deref(), &self.v2, quota_us, period_us)
    }

    /// Its CFS bandwidth counters, from `cpu.stat` of [`TestCgroup::cpu_dir`]
    /// (v1 `throttled_time` in ns, or v2 `throttled_usec` × 1000).
    ///
    /// On v2 the counters exist only once the cpu controller is enabled for
    /// it (see [`TestCgroup::set_cpu_quota`]); before, this errors.
    pub fn cpu_stat(&self) -> io::Result<CpuStat> {
        let path = self.cpu_dir().join("cpu.stat");
        let text = fs::read_to_string(&path).map_err(|e| with_path(e, "cannot read", &path))?;
        CpuStat::parse(&text, self.v1_cpu.is_some()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "no nr_periods/nr_throttled/throttled time in {}: {text:?}",
                    path.display()
                ),
            )
        })
    }
}

/// Enables `controller` (e.g. `"memory"`, `"cpu"`) for the children of the
/// cgroup v2 directory `dir`'s parent, unless it already is.
fn enable_v2_controller(dir: &Path, controller: &str) -> io::Result<()> {
    let parent = dir.parent().ok_or_else(|| io::Error::other("no parent"))?;
    // Every ancestor must pass the controller down (the top-level cgroups' parent is the
    // root); from the top, stopping at the first one without `cgroup.subtree_control`
    // above the hierarchy's root.
    let mut chain: Vec<&Path> = parent
        .ancestors()
        .take_while(|a| a.join("cgroup.subtree_control").exists())
        .collect();
    chain.reverse();
    for dir in chain {
        let control = dir.join("cgroup.subtree_control");
        let enabled =
            fs::read_to_string(&control).map_err(|e| with_path(e, "cannot read", &control))?;
        if enabled.split_whitespace().any(|c| c == controller) {
            continue;
        }
        fs::write(&control, format!("+{controller}"))
            .map_err(|e| with_path(e, &format!("cannot write +{controller} to"), &control))?;
    }
    Ok(())
}

/// Limits the cgroup whose v1 memory directory is `v1_memory` (hybrid machines) or whose v2
/// directory is `v2` to `bytes` without swap (see [`TestCgroup::set_memory_limit`]).
pub(crate) fn set_memory_limit_in(
    v1_memory: Option<&Path>,
    v2: &Path,
    bytes: u64,
) -> io::Result<()> {
    let dir = v1_memory.unwrap_or(v2);
    let write = |file: &str, value: &str| {
        let path = dir.join(file);
        fs::write(&path, value).map_err(|e| with_path(e, "cannot write to", &path))
    };
    let exists = |file: &str| dir.join(file).exists();
    if v1_memory.is_some() {
        write("memory.limit_in_bytes", &bytes.to_string())?;
        if exists("memory.memsw.limit_in_bytes") {
            write("memory.memsw.limit_in_bytes", &bytes.to_string())?;
        }
        // Not writable in some setups (e.g. the root's); swap is then
        // limited by memsw above, or there is none.
        let _ = write("memory.swappiness", "0");
    } else {
        enable_v2_controller(v2, "memory")?;
        write("memory.max", &bytes.to_string())?;
        if exists("memory.swap.max") {
            write("memory.swap.max", "0")?;
        }
    }
    Ok(())
}

/// Gives the cgroup whose v1 cpu directory is `v1_cpu` (hybrid machines) or whose v2
/// directory is `v2` a CFS quota (see [`TestCgroup::set_cpu_quota`]).
pub(crate) fn set_cpu_quota_in(
    v1_cpu: Option<&Path>,
    v2: &Path,
    quota_us: u64,
    period_us: u64,
) -> io::Result<()> {
    let dir = v1_cpu.unwrap_or(v2);
    let write = |file: &str, value: &str| {
        let path = dir.join(file);
        fs::write(&path, value).map_err(|e| with_path(e, "cannot write to", &path))
    };
    if v1_cpu.is_some() {
        write("cpu.cfs_period_us", &period_us.to_string())?;
        write("cpu.cfs_quota_us", &quota_us.to_string())
    } else {
        enable_v2_controller(v2, "cpu")?;
        write("cpu.max", &format!("{quota_us} {period_us}"))
    }
}

/// The number after `key` in `key value` lines (`memory.events`,
/// `memory.oom_control`).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let dirs: Vec<PathBuf> = self.dirs().map(Path::to_path_buf).collect();
        if let Err(e) = remove(&dirs) {
            eprintln!("nodesat-tests: cleaning up cgroup {}: {e}", self.name);
        }
    }
}

/// Creates `dir`, with the path in the error.
fn make_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir(dir).map_err(|e| with_path(e, "cannot create cgroup", dir))
}

pub(crate) fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// The `oom_kill` count of a cgroup: v1 `memory.oom_control` in `v1_memory` where given,
/// else v2 `memory.events` in `v2`.
pub(crate) fn memory_oom_kills_in(v1_memory: Option<&Path>, v2: &Path) -> io::Result<u64> {
    let path = match v1_memory {
        Some(dir) => dir.join("memory.oom_control"),
        None => v2.join("memory.events"),
    };
    let text = fs::read_to_string(&path).map_err(|e| with_path(e, "cannot read", &path))?;
    keyed_value(&text, "oom_kill").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no oom_kill line in {}: {text:?}", path.display()),
        )
    })
}

/// Pids listed in `dir/cgroup.procs` (none if it cannot be read).
pub(crate) fn read_pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in the cgroup directories `dirs`, waits until they are
/// empty and removes them, in the given order (children before their
/// parents). Bounded by [`EMPTY_TIMEOUT`].
pub(crate) fn remove(dirs: &[PathBuf]) -> Result<(), String> {
    let deadline = Instant::now() + EMPTY_TIMEOUT;
    loop {
        let pids: Vec<u32> = dirs.iter().flat_map(|d| read_pids(d)).collect();
        if pids.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "processes {pids:?} still there {EMPTY_TIMEOUT:?} after SIGKILL"
            ));
        }
        for pid in pids {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    // rmdir can briefly fail with EBUSY right after the last task exited.
    let mut errors = Vec::new();
    for dir in dirs {
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(_) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    errors.push(format!("cannot remove {}: {e}", dir.display()));
                    break;
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Removes the cgroup directory `dir` and every cgroup below it: kills the
/// processes in all of them first, then removes them children first. A
/// `dir` that does not exist is not an error. Bounded by [`EMPTY_TIMEOUT`].
pub(crate) fn remove_tree(dir: &Path) -> Result<(), String> {
    // Pre-order: every directory comes after its ancestors, so reversed,
    // children come before their parents.
    let mut dirs = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue; // gone (or never there)
        };
        stack.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
        dirs.push(d);
    }
    dirs.reverse();
    remove(&dirs)
}

/// Removes `nodesat-test-<pid>-*` cgroups left behind by test processes that
/// no longer exist (e.g. killed by a CI timeout), including their processes
/// and the cgroups below them.
fn sweep_stale(hierarchies: &Hierarchies) {
    for root in std::iter::once(&hierarchies.v2).chain(&hierarchies.v1) {
        let Ok(entries) = fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid == std::process::id() || crate::process_alive(pid) {
                continue;
            }
            eprintln!(
                "nodesat-tests: removing stale cgroup {}",
                entry.path().display()
            );
            if let Err(e) = remove_tree(&entry.path()) {
                eprintln!("nodesat-tests: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_hybrid_hierarchies() {
        let mounts = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
        let h = Hierarchies::from_mounts(mounts).unwrap();
        assert_eq!(h.v2, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(
            h.v1,
            [
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/memory")
            ]
        );
        assert_eq!(
            h.v1_memory.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            h.memory_controller(),
            Ok(MemoryController::V1("/sys/fs/cgroup/memory".into()))
        );
        assert_eq!(h.v1_cpu.as_deref(), Some(Path::new("/sys/fs/cgroup/cpu")));
        assert_eq!(
            h.cpu_controller(),
            Ok(CpuController::V1("/sys/fs/cgroup/cpu".into()))
        );
    }

    #[test]
    fn reads_oom_kill_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed_value(v1, "oom_kill"), Some(2));
        let v2 = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 3\noom_group_kill 0\n";
        assert_eq!(keyed_value(v2, "oom_kill"), Some(3));
        assert_eq!(keyed_value(v2, "oom"), Some(3));
        assert_eq!(keyed_value("oom 1\n", "oom_kill"), None);
    }

    #[test]
    fn parses_v1_and_v2_cpu_stat() {
        let v1 = "nr_periods 80\nnr_throttled 79\nthrottled_time 6400000123\n\
                  nr_bursts 0\nburst_time 0\n";
        assert_eq!(
            CpuStat::parse(v1, true),
            Some(CpuStat {
                periods: 80,
                throttled_periods: 79,
                throttled_ns: 6_400_000_123
            })
        );
        let v2 = "usage_usec 1600000\nuser_usec 1600000\nsystem_usec 0\n\
                  nr_periods 80\nnr_throttled 79\nthrottled_usec 6400000\n\
                  nr_bursts 0\nburst_usec 0\n";
        let stat = CpuStat::parse(v2, false).unwrap();
        assert_eq!(stat.throttled_ns, 6_400_000_000);
        // A v2 cgroup without the cpu controller has no bandwidth counters.
        assert_eq!(
            CpuStat::parse("usage_usec 1\nuser_usec 1\nsystem_usec 0\n", false),
            None
        );
        let earlier = CpuStat {
            periods: 30,
            throttled_periods: 29,
            throttled_ns: 400_000_000,
        };
        assert_eq!(
            stat.since(&earlier),
            CpuStat {
                periods: 50,
                throttled_periods: 50,
                throttled_ns: 6_000_000_000
            }
        );
    }

    #[test]
    fn detects_combined_cpu_cpuacct_mount() {
        let mounts = "\
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0
";
        let h = Hierarchies::from_mounts(mounts).unwrap();
        assert_eq!(
            h.v1,
            [
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                PathBuf::from("/sys/fs/cgroup/memory")
            ]
        );
        assert_eq!(
            h.v1_cpu.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
    }

    #[test]
    fn detects_pure_v2() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n";
        let h = Hierarchies::from_mounts(mounts).unwrap();
        assert_eq!(h.v2, Path::new("/sys/fs/cgroup"));
        assert!(h.v1.is_empty());
        assert!(h.v1_memory.is_none());
        assert!(h.v1_cpu.is_none());
    }

    #[test]
    fn v1_only_is_an_error() {
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert!(Hierarchies::from_mounts(mounts).is_err());
    }
}

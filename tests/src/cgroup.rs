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
        let mut v1: Vec<PathBuf> = cpu.into_iter().chain(memory).collect();
        v1.dedup();
        Ok(Self { v2, v1 })
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
            id: 0,
        };
        let v2 = hierarchies.v2.join(&name);
        make_dir(&v2)?;
        cgroup.id = fs::metadata(&v2)?.ino();
        cgroup.v2 = v2;
        for root in &hierarchies.v1 {
            let dir = root.join(&name);
            make_dir(&dir)?;
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

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Pids listed in `dir/cgroup.procs` (none if it cannot be read).
fn read_pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in the cgroup directories `dirs`, waits until they are
/// empty and removes them. Bounded by [`EMPTY_TIMEOUT`].
fn remove(dirs: &[PathBuf]) -> Result<(), String> {
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

/// Removes `nodesat-test-<pid>-*` cgroups left behind by test processes that
/// no longer exist (e.g. killed by a CI timeout), including their processes.
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
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            eprintln!(
                "nodesat-tests: removing stale cgroup {}",
                entry.path().display()
            );
            if let Err(e) = remove(&[entry.path()]) {
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
    }

    #[test]
    fn detects_pure_v2() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n";
        let h = Hierarchies::from_mounts(mounts).unwrap();
        assert_eq!(h.v2, Path::new("/sys/fs/cgroup"));
        assert!(h.v1.is_empty());
    }

    #[test]
    fn v1_only_is_an_error() {
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert!(Hierarchies::from_mounts(mounts).is_err());
    }
}

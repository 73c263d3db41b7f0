//! Cgroups at a given path below the roots of the hierarchies (e.g. a
//! kubelet-shaped `kubepods.slice/.../cri-containerd-<id>.scope`), that
//! remove exactly the directories they created.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::cgroup::{CgroupDirs, Hierarchies, read_pids, remove, remove_tree, with_path};

/// A cgroup at a path of its caller's choosing, in the cgroup v2 hierarchy
/// and, on hybrid machines, in the v1 `cpu` and `memory` hierarchies (like
/// [`TestCgroup`](crate::TestCgroup)).
///
/// Of the directories on its path, it creates those that do not exist yet
/// and, when dropped, removes those and only those: the last one (the cgroup
/// itself, which must not exist before) with every cgroup below it, then
/// the ancestors it created, deepest first, each only if nothing else (a
/// cgroup it did not create) is below it. Processes in the directories it
/// removes are SIGKILLed first. Ancestors that existed before (e.g. a real
/// kubelet's `kubepods.slice`) are never touched.
///
/// What it created is also written to a record file
/// (`/run/nodesat-tests/<pid>-<n>.dirs`), deleted once everything is removed;
/// creating the first one in a process removes what the records of test
/// processes that no longer exist name (e.g. after a CI timeout killed one).
/// Drop never panics; it reports failures on stderr.
#[derive(Debug)]
pub struct NestedCgroup {
    /// Its path relative to the roots, without a leading `/`.
    relative: String,
    /// Its directory in the v2 hierarchy (empty until created).
    v2: PathBuf,
    /// Its directories in the v1 hierarchies.
    v1: Vec<PathBuf>,
    /// Its directory in the v1 cpu hierarchy (also in `v1`), if any.
    v1_cpu: Option<PathBuf>,
    /// Its directory in the v1 memory hierarchy (also in `v1`), if any.
    v1_memory: Option<PathBuf>,
    /// The directories it created, in the order it created them.
    created: Vec<Created>,
    /// The record file listing `created`.
    record: PathBuf,
    id: u64,
}

/// A directory a [`NestedCgroup`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Created {
    path: PathBuf,
    /// Whether everything below it is the harness's too (the cgroup itself)
    /// rather than only the directory (an ancestor).
    tree: bool,
}

impl Created {
    /// Its line in a record file.
    fn line(&self) -> String {
        let what = if self.tree { "tree" } else { "dir" };
        format!("{what}\t{}\n", self.path.display())
    }

    fn parse(line: &str) -> Option<Created> {
        let (what, path) = line.split_once('\t')?;
        let tree = match what {
            "tree" => true,
            "dir" => false,
            _ => return None,
        };
        let path = PathBuf::from(path);
        // Only ever cgroup directories.
        let plain = path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        (plain && path.starts_with("/sys/fs/cgroup")).then_some(Created { path, tree })
    }
}

impl NestedCgroup {
    /// Creates the cgroup at `relative` (e.g.
    /// `"kubepods.slice/kubepods-burstable.slice/<pod>.slice/<ctr>.scope"`)
    /// in every hierarchy, with whichever of its ancestors are missing.
    ///
    /// Errors if the cgroup itself already exists in any hierarchy (it would
    /// not be the caller's to remove), or `relative` is not a plain relative
    /// path.
    pub fn create(relative: &str) -> io::Result<Self> {
        let relative = relative.trim_start_matches('/');
        let components: Vec<&str> = relative.split('/').collect();
        let plain = Path::new(relative)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if relative.is_empty() || !plain || components.iter().any(|c| c.is_empty()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a plain relative cgroup path: {relative:?}"),
            ));
        }
        let hierarchies = Hierarchies::detect().map_err(io::Error::other)?;
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_stale_records);

        static NEXT: AtomicU32 = AtomicU32::new(0);
        let record = record_dir().join(format!(
            "{}-{}.dirs",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // Built up as directories get created, so that an error half-way
        // removes the ones already made (through Drop).
        let mut cgroup = Self {
            relative: relative.to_owned(),
            v2: PathBuf::new(),
            v1: Vec::new(),
            v1_cpu: None,
            v1_memory: None,
            created: Vec::new(),
            record,
            id: 0,
        };
        fs::create_dir_all(record_dir())
            .map_err(|e| with_path(e, "cannot create", &record_dir()))?;
        for root in std::iter::once(&hierarchies.v2).chain(&hierarchies.v1) {
            let mut dir = root.clone();
            for (i, component) in components.iter().enumerate() {
                dir.push(component);
                let last = i + 1 == components.len();
                match fs::create_dir(&dir) {
                    Ok(()) => cgroup.add_created(Created {
                        path: dir.clone(),
                        tree: last,
                    })?,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !last => {}
                    Err(e) => return Err(with_path(e, "cannot create cgroup", &dir)),
                }
            }
            if *root == hierarchies.v2 {
                cgroup.id = fs::metadata(&dir)?.ino();
                cgroup.v2 = dir;
            } else {
                if hierarchies.v1_cpu.as_ref() == Some(root) {
                    cgroup.v1_cpu = Some(dir.clone());
                }
                if hierarchies.v1_memory.as_ref() == Some(root) {
                    cgroup.v1_memory = Some(dir.clone());
                }
                cgroup.v1.push(dir);
            }
        }
        Ok(cgroup)
    }

    /// Notes that it created `created`, in memory and in its record file.
    fn add_created(&mut self, created: Created) -> io::Result<()> {
        let line = created.line();
        // Before anything can fail: Drop removes it either way.
        self.created.push(created);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.record)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| with_path(e, "cannot write to", &self.record))
    }

    /// The cgroup v2 id: the inode number of its v2 directory.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its path relative to the v2 hierarchy's root, with a leading `/` (the
    /// `name` the agent reports).
    pub fn relative_path(&self) -> String {
        format!("/{}", self.relative)
    }

    /// Its directory in the cgroup v2 hierarchy.
    pub fn v2_path(&self) -> &Path {
        &self.v2
    }

    /// Its directory in the v1 cpu hierarchy (hybrid machines only).
    pub fn v1_cpu_path(&self) -> Option<&Path> {
        self.v1_cpu.as_deref()
    }

    /// Limits it to `quota_us` of CPU time every `period_us`, as
    /// [`TestCgroup::set_cpu_quota`](crate::TestCgroup::set_cpu_quota) (on v2, every
    /// ancestor passes the cpu controller down).
    pub fn set_cpu_quota(&self, quota_us: u64, period_us: u64) -> io::Result<()> {
        crate::cgroup::set_cpu_quota_in(self.v1_cpu.as_deref(), &self.v2, quota_us, period_us)
    }

    /// Limits its memory to `bytes` without swap, as
    /// [`TestCgroup::set_memory_limit`](crate::TestCgroup::set_memory_limit).
    pub fn set_memory_limit(&self, bytes: u64) -> io::Result<()> {
        crate::cgroup::set_memory_limit_in(self.v1_memory.as_deref(), &self.v2, bytes)
    }

    /// How many of its processes the kernel OOM-killed so far, as
    /// [`TestCgroup::memory_oom_kills`](crate::TestCgroup::memory_oom_kills).
    pub fn memory_oom_kills(&self) -> io::Result<u64> {
        crate::cgroup::memory_oom_kills_in(self.v1_memory.as_deref(), &self.v2)
    }

    /// Its directories in all hierarchies: v2 first, then v1 ones if any.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.v2.as_path())
            .filter(|p| !p.as_os_str().is_empty())
            .chain(self.v1.iter().map(PathBuf::as_path))
    }

    /// The directories it created (and will remove), in creation order.
    pub fn created_dirs(&self) -> impl Iterator<Item = &Path> {
        self.created.iter().map(|c| c.path.as_path())
    }

    /// The `cgroup.procs` files of all its directories.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The processes in this cgroup (union over its hierarchies).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.dirs().flat_map(read_pids).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl CgroupDirs for NestedCgroup {
    fn procs_files(&self) -> Vec<PathBuf> {
        NestedCgroup::procs_files(self)
    }

    fn relative_path(&self) -> String {
        NestedCgroup::relative_path(self)
    }
}

impl Drop for NestedCgroup {
    fn drop(&mut self) {
        match remove_created(&self.created) {
            Ok(()) => {
                if let Err(e) = fs::remove_file(&self.record)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    eprintln!(
                        "nodesat-tests: removing record {}: {e}",
                        self.record.display()
                    );
                }
            }
            // The record stays, for the sweep of a later test process.
            Err(e) => eprintln!(
                "nodesat-tests: cleaning up cgroup {}: {e}",
                self.relative_path()
            ),
        }
    }
}

/// Where the record files are: `/run/nodesat-tests` (a tmpfs, emptied on
/// reboot like the cgroup hierarchies), or the temporary directory if there
/// is no `/run`.
fn record_dir() -> PathBuf {
    let base = if Path::new("/run").is_dir() {
        PathBuf::from("/run")
    } else {
        std::env::temp_dir()
    };
    base.join("nodesat-tests")
}

/// Removes what `created` lists, last created first: trees with everything
/// below them, plain directories only if no other cgroup is below them.
fn remove_created(created: &[Created]) -> Result<(), String> {
    let mut errors = Vec::new();
    for c in created.iter().rev() {
        let result = if c.tree {
            remove_tree(&c.path)
        } else {
            remove_dir_only(&c.path)
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Removes the cgroup directory `dir` (killing its processes first) unless
/// cgroups are below it, which are not the harness's to remove.
fn remove_dir_only(dir: &Path) -> Result<(), String> {
    let children: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    if !children.is_empty() {
        return Err(format!(
            "left {} in place: cgroups the harness did not create are below it: {children:?}",
            dir.display()
        ));
    }
    remove(&[dir.to_path_buf()])
}

/// Removes what the record files of test processes that no longer exist
/// list, and those records.
fn sweep_stale_records() {
    let Ok(entries) = fs::read_dir(record_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".dirs"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || crate::process_alive(pid) {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let created: Vec<Created> = text.lines().filter_map(Created::parse).collect();
        eprintln!(
            "nodesat-tests: removing stale cgroups of pid {pid}: {:?}",
            created.iter().map(|c| &c.path).collect::<Vec<_>>()
        );
        match remove_created(&created) {
            Ok(()) => {
                let _ = fs::remove_file(&path);
            }
            Err(e) => eprintln!("nodesat-tests: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines_round_trip_and_reject_foreign_paths() {
        for tree in [true, false] {
            let c = Created {
                path: "/sys/fs/cgroup/unified/kubepods.slice".into(),
                tree,
            };
            assert_eq!(Created::parse(c.line().trim_end()), Some(c));
        }
        assert_eq!(Created::parse("tree\t/etc"), None);
        assert_eq!(Created::parse("tree\t/sys/fs/cgroup/../../etc"), None);
        assert_eq!(Created::parse("file\t/sys/fs/cgroup/x"), None);
        assert_eq!(Created::parse("garbage"), None);
    }
}

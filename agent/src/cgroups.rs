//! Names for cgroup ids. The kernel side keys every figure by the inode number of the task's
//! cgroup directory in one hierarchy (see [`Hierarchy`]), so walking that hierarchy maps ids to
//! paths. (Pod and container identity builds on these paths.)

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Finds the cgroup v2 hierarchy under the cgroup mount root: the root itself on a pure v2
/// system, else `unified/` on a hybrid one. Only v2 directories have `cgroup.controllers`.
pub fn v2_root(cgroup_root: &Path) -> Option<PathBuf> {
    [cgroup_root.to_path_buf(), cgroup_root.join("unified")]
        .into_iter()
        .find(|p| p.join("cgroup.controllers").exists())
}

/// Finds the v1 cpu controller's hierarchy under the cgroup mount root (`cpu/`, or
/// `cpu,cpuacct/` where the two are mounted together).
pub fn v1_cpu_root(cgroup_root: &Path) -> Option<PathBuf> {
    ["cpu", "cpu,cpuacct"]
        .iter()
        .map(|c| cgroup_root.join(c))
        .find(|p| p.join("cpu.shares").exists())
}

/// The configured choice of hierarchy (`cgroup_hierarchy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HierarchyChoice {
    /// The unified hierarchy when one is mounted (pure v2 and hybrid nodes), else v1 cpu.
    Auto,
    Unified,
    V1Cpu,
}

/// The hierarchy whose directories' inode numbers are the cgroup ids the kernel side reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified (v2) hierarchy, as `bpf_get_current_cgroup_id()` reports it. On hybrid
    /// nodes systemd and runc (from 1.0) put every task in it too, at the same path as in the
    /// v1 hierarchies.
    Unified(PathBuf),
    /// The v1 cpu controller's hierarchy (pure v1 nodes). The programs then read
    /// `task->cgroups->subsys[cpu_cgrp_id]->cgroup` instead.
    V1Cpu(PathBuf),
}

impl Hierarchy {
    /// The hierarchy `choice` selects under `cgroup_root`; `None` when it is not mounted.
    pub fn find(cgroup_root: &Path, choice: HierarchyChoice) -> Option<Hierarchy> {
        let unified = || v2_root(cgroup_root).map(Hierarchy::Unified);
        let cpu = || v1_cpu_root(cgroup_root).map(Hierarchy::V1Cpu);
        match choice {
            HierarchyChoice::Auto => unified().or_else(cpu),
            HierarchyChoice::Unified => unified(),
            HierarchyChoice::V1Cpu => cpu(),
        }
    }

    pub fn root(&self) -> &Path {
        match self {
            Hierarchy::Unified(p) | Hierarchy::V1Cpu(p) => p,
        }
    }

    /// The id of the hierarchy's root cgroup.
    pub fn root_id(&self) -> Option<u64> {
        std::fs::metadata(self.root()).ok().map(|m| m.ino())
    }

    /// The line of `/proc/<pid>/cgroup` that names a task's cgroup in this hierarchy.
    pub fn proc_line(&self) -> crate::identity::path::ProcCgroupHierarchy {
        use crate::identity::path::ProcCgroupHierarchy;
        match self {
            Hierarchy::Unified(_) => ProcCgroupHierarchy::Unified,
            Hierarchy::V1Cpu(_) => ProcCgroupHierarchy::Controller("cpu"),
        }
    }
}

impl std::fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hierarchy::Unified(p) => write!(f, "unified (v2) hierarchy at {}", p.display()),
            Hierarchy::V1Cpu(p) => write!(f, "v1 cpu controller's hierarchy at {}", p.display()),
        }
    }
}

/// Maps cgroup ids to paths relative to the hierarchy's root, rescanning when an unknown id shows up
/// (at most once per `min_rescan`).
pub struct CgroupNames {
    hierarchy: Option<Hierarchy>,
    names: HashMap<u64, String>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
}

impl CgroupNames {
    pub fn new(hierarchy: Option<Hierarchy>, min_rescan: Duration) -> CgroupNames {
        match &hierarchy {
            Some(h) => tracing::info!("cgroups are named from the {h}"),
            None => tracing::warn!("no cgroup hierarchy found: cgroups are shown by id only"),
        }
        CgroupNames {
            hierarchy,
            names: HashMap::new(),
            last_scan: None,
            min_rescan,
        }
    }

    pub fn hierarchy(&self) -> Option<&Hierarchy> {
        self.hierarchy.as_ref()
    }

    /// The cgroup id of a running process in this hierarchy, from `/proc/<pid>/cgroup` under
    /// `host_root`.
    pub fn id_of_pid(&self, host_root: &Path, pid: u32) -> Option<u64> {
        let h = self.hierarchy.as_ref()?;
        let path = crate::identity::pid_cgroup_path(host_root, pid, h.proc_line()).ok()??;
        let dir = h.root().join(path.trim_start_matches('/'));
        std::fs::metadata(dir).ok().map(|m| m.ino())
    }

    /// Every cgroup id seen in the last scan.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.names.keys().copied()
    }

    /// The id of the cgroup at `path` (relative to the hierarchy's root), if it exists.
    pub fn id_of(&self, path: &str) -> Option<u64> {
        let dir = self
            .hierarchy
            .as_ref()?
            .root()
            .join(path.trim_start_matches('/'));
        std::fs::metadata(dir).ok().map(|m| m.ino())
    }

    pub fn name(&self, id: u64) -> Option<&str> {
        self.names.get(&id).map(String::as_str)
    }

    /// Rescans the hierarchy if any of `ids` is unknown, forgetting cgroups that are gone,
    /// except those among `ids` (they still have figures to report, under their last name).
    pub fn refresh_if_unknown(&mut self, ids: &[u64]) {
        let unknown = ids.iter().any(|id| !self.names.contains_key(id));
        let due = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.min_rescan);
        if unknown && due {
            if let Some(h) = &self.hierarchy {
                let mut fresh = scan(h.root());
                for id in ids {
                    if let Some(name) = self.names.remove(id) {
                        fresh.entry(*id).or_insert(name);
                    }
                }
                self.names = fresh;
            }
            self.last_scan = Some(Instant::now());
        }
    }
}

/// The value of `key` in a cgroup flat-keyed file's text (`memory.events`, `cpu.stat`: lines
/// of "key value").
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Walks a cgroup hierarchy: inode number → path relative to `root` ("/" for the root).
pub fn scan(root: &Path) -> HashMap<u64, String> {
    let mut names = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), String::from("/"))];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue; // removed while we walked
        };
        names.insert(meta.ino(), rel.clone());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((entry.path(), child));
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_maps_directory_inodes_to_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a.slice/b.scope")).unwrap();
        std::fs::create_dir_all(root.join("c")).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let names = scan(root);
        assert_eq!(names[&ino(root)], "/");
        assert_eq!(
            names[&ino(&root.join("a.slice/b.scope"))],
            "/a.slice/b.scope"
        );
        assert_eq!(names[&ino(&root.join("c"))], "/c");
        assert_eq!(names.len(), 4);
    }

    #[test]
    fn a_removed_cgroup_keeps_its_name_for_its_last_report() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = dir.path().join("unified");
        std::fs::create_dir_all(v2.join("gone")).unwrap();
        std::fs::write(v2.join("cgroup.controllers"), "").unwrap();
        let gone = std::fs::metadata(v2.join("gone")).unwrap().ino();
        let h = Hierarchy::find(dir.path(), HierarchyChoice::Auto);
        assert_eq!(h, Some(Hierarchy::Unified(v2.clone())));
        let mut names = CgroupNames::new(h, Duration::ZERO);
        names.refresh_if_unknown(&[gone]);
        assert_eq!(names.name(gone), Some("/gone"));
        // Made before "gone" is removed, so no inode number is reused.
        std::fs::create_dir(v2.join("new")).unwrap();
        let new = std::fs::metadata(v2.join("new")).unwrap().ino();
        std::fs::create_dir(v2.join("newer")).unwrap();
        let newer = std::fs::metadata(v2.join("newer")).unwrap().ino();
        std::fs::remove_dir(v2.join("gone")).unwrap();
        // Its last figures arrive with a new cgroup's: both are named.
        names.refresh_if_unknown(&[gone, new]);
        assert_eq!(names.name(gone), Some("/gone"));
        assert_eq!(names.name(new), Some("/new"));
        // Once it no longer has figures, a rescan (for a cgroup not yet named) forgets it.
        names.names.remove(&newer);
        names.refresh_if_unknown(&[newer]);
        assert_eq!(names.name(gone), None);
    }

    #[test]
    fn finds_v2_root_on_pure_and_hybrid_layouts() {
        let pure = tempfile::tempdir().unwrap();
        std::fs::write(pure.path().join("cgroup.controllers"), "cpu io memory\n").unwrap();
        assert_eq!(v2_root(pure.path()).as_deref(), Some(pure.path()));

        let hybrid = tempfile::tempdir().unwrap();
        let unified = hybrid.path().join("unified");
        std::fs::create_dir_all(&unified).unwrap();
        std::fs::write(unified.join("cgroup.controllers"), "").unwrap();
        std::fs::create_dir_all(hybrid.path().join("cpu")).unwrap();
        std::fs::write(hybrid.path().join("cpu/cpu.shares"), "1024\n").unwrap();
        assert_eq!(v2_root(hybrid.path()), Some(unified.clone()));
        let find = |choice| Hierarchy::find(hybrid.path(), choice);
        assert_eq!(
            find(HierarchyChoice::Auto),
            Some(Hierarchy::Unified(unified))
        );
        let cpu = Hierarchy::V1Cpu(hybrid.path().join("cpu"));
        assert_eq!(find(HierarchyChoice::V1Cpu), Some(cpu.clone()));

        // Pure v1 (controllers co-mounted as cpu,cpuacct): auto takes the cpu hierarchy.
        let v1 = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(v1.path().join("cpu,cpuacct")).unwrap();
        std::fs::write(v1.path().join("cpu,cpuacct/cpu.shares"), "1024\n").unwrap();
        let find = |choice| Hierarchy::find(v1.path(), choice);
        let cpu = Hierarchy::V1Cpu(v1.path().join("cpu,cpuacct"));
        assert_eq!(find(HierarchyChoice::Auto), Some(cpu));
        assert_eq!(find(HierarchyChoice::Unified), None);
    }
}

//! Names for cgroup ids: the id the kernel reports (`bpf_get_current_cgroup_id`) is the inode
//! number of the cgroup's directory in the cgroup v2 hierarchy, so walking that hierarchy maps
//! ids to paths. (Pod and container identity builds on these paths.)

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

/// Maps cgroup ids to paths relative to the v2 root, rescanning when an unknown id shows up
/// (at most once per `min_rescan`).
pub struct CgroupNames {
    root: Option<PathBuf>,
    names: HashMap<u64, String>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
}

impl CgroupNames {
    pub fn new(cgroup_root: &Path, min_rescan: Duration) -> CgroupNames {
        let root = v2_root(cgroup_root);
        match &root {
            Some(r) => tracing::debug!("cgroup v2 hierarchy at {}", r.display()),
            None => tracing::warn!(
                "no cgroup v2 hierarchy under {}: cgroups are shown by id only",
                cgroup_root.display()
            ),
        }
        CgroupNames {
            root,
            names: HashMap::new(),
            last_scan: None,
            min_rescan,
        }
    }

    pub fn v2_root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The cgroup v2 id of a running process, from `/proc/<pid>/cgroup` under `host_root`.
    pub fn id_of_pid(&self, host_root: &Path, pid: u32) -> Option<u64> {
        let path = crate::identity::pid_cgroup_path(host_root, pid).ok()??;
        let dir = self.root.as_ref()?.join(path.trim_start_matches('/'));
        std::fs::metadata(dir).ok().map(|m| m.ino())
    }

    /// Every cgroup id seen in the last scan.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.names.keys().copied()
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
            if let Some(root) = &self.root {
                let mut fresh = scan(root);
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

/// Walks a cgroup v2 hierarchy: inode number → path relative to `root` ("/" for the root).
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
        let mut names = CgroupNames::new(dir.path(), Duration::ZERO);
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
        assert_eq!(v2_root(hybrid.path()), Some(unified));
    }
}

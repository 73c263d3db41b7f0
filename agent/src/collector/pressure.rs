//! Pressure stall information (PSI): how long each reported cgroup, and the node, had tasks
//! stalled on CPU, memory and I/O, from the kernel's own cumulative totals (cgroup v2
//! `cpu.pressure`, `memory.pressure`, `io.pressure`; `/proc/pressure/*` for the node).
//!
//! The kernel's averages (avg10/60/300) are left out: the `total=` counters (µs) are read and
//! their growth reported per interval, so a backend can compute any window. A cgroup is read
//! when it is reported (it has another figure in the interval); its previous reading is kept,
//! so a cgroup reported every other interval still gets all its stall time. At start every
//! cgroup is read once as the baseline; a cgroup first seen later was created since, and its
//! whole total is its growth.
//!
//! Only the unified (v2) hierarchy has these files: on nodes keyed by the v1 cpu hierarchy
//! nothing is reported for cgroups (the node's figures still are, where the kernel has PSI).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use crate::{
    cgroups::Hierarchy,
    core::counters::Counter,
    report::{PressureStalls, Stall},
};

/// The node's files.
const PROC_PRESSURE: &str = "/proc/pressure";

/// One resource's file (`some ... total=N` and `full ... total=N` lines, µs): its totals in ns.
/// `full` is 0 where the file has no such line (the node's cpu before 5.13).
pub fn parse_stall(text: &str) -> Option<Stall> {
    let total = |kind: &str| -> Option<u64> {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(kind))?;
        let us = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("total="))?
            .parse::<u64>()
            .ok()?;
        Some(us.saturating_mul(1000))
    };
    Some(Stall {
        some_ns: total("some")?,
        full_ns: total("full").unwrap_or(0),
    })
}

/// The three files in `dir` (`cpu` + `suffix`: `cpu.pressure` in a cgroup, `cpu` in
/// /proc/pressure); `None` when any is missing or unreadable (no PSI, or the cgroup is gone).
fn read_stalls(dir: &Path, suffix: &str) -> Option<PressureStalls> {
    let read = |resource: &str| -> Option<Stall> {
        let text = std::fs::read_to_string(dir.join(format!("{resource}{suffix}"))).ok()?;
        parse_stall(&text)
    };
    Some(PressureStalls {
        cpu: read("cpu")?,
        memory: read("memory")?,
        io: read("io")?,
    })
}

impl Counter for Stall {
    fn merge(&mut self, o: &Self) {
        self.some_ns += o.some_ns;
        self.full_ns += o.full_ns;
    }
    fn delta(&self, prev: &Self) -> Self {
        if self.some_ns < prev.some_ns || self.full_ns < prev.full_ns {
            return *self; // the cgroup was recreated
        }
        Stall {
            some_ns: self.some_ns - prev.some_ns,
            full_ns: self.full_ns - prev.full_ns,
        }
    }
    fn is_zero(&self) -> bool {
        self.some_ns == 0 && self.full_ns == 0
    }
}

impl Counter for PressureStalls {
    fn merge(&mut self, o: &Self) {
        self.cpu.merge(&o.cpu);
        self.memory.merge(&o.memory);
        self.io.merge(&o.io);
    }
    fn delta(&self, prev: &Self) -> Self {
        PressureStalls {
            cpu: self.cpu.delta(&prev.cpu),
            memory: self.memory.delta(&prev.memory),
            io: self.io.delta(&prev.io),
        }
    }
    fn is_zero(&self) -> bool {
        self.cpu.is_zero() && self.memory.is_zero() && self.io.is_zero()
    }
}

pub struct Pressure {
    cgroups: PerCgroup<PressureStalls>,
    /// Where the node's files are.
    node_dir: PathBuf,
    prev_node: Option<PressureStalls>,
}

/// What one interval gives: per reported cgroup, and for the node.
#[derive(Debug, Default)]
pub struct Collected {
    pub cgroups: BTreeMap<u64, PressureStalls>,
    pub node: Option<PressureStalls>,
}

impl Pressure {
    pub fn new(hierarchy: Option<&Hierarchy>) -> Pressure {
        Pressure::with_node_dir(hierarchy, Path::new(PROC_PRESSURE))
    }

    fn with_node_dir(hierarchy: Option<&Hierarchy>, node_dir: &Path) -> Pressure {
        Pressure {
            cgroups: PerCgroup::new(hierarchy, |dir| read_stalls(dir, ".pressure")),
            node_dir: node_dir.to_path_buf(),
            prev_node: None,
        }
    }

    /// Whether cgroups get PSI figures here (the unified hierarchy keys them and has the
    /// files), and why not.
    pub fn cgroups_available(hierarchy: Option<&Hierarchy>) -> Result<(), String> {
        match hierarchy {
            Some(Hierarchy::Unified(root)) => {
                // The root has no cgroup files of its own on older kernels: look at a child.
                let probe = std::fs::read_dir(root)
                    .ok()
                    .and_then(|d| {
                        d.flatten()
                            .find(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path())
                    })
                    .unwrap_or_else(|| root.clone());
                if probe.join("cpu.pressure").exists() {
                    Ok(())
                } else {
                    Err(format!(
                        "no cpu.pressure in {} (kernel without CONFIG_PSI, or booted with psi=0)",
                        probe.display()
                    ))
                }
            }
            Some(Hierarchy::V1Cpu(_)) => Err(
                "cgroup v1 only: PSI exists only in the unified (v2) hierarchy, no cgroup pressure is reported"
                    .into(),
            ),
            None => Err("no cgroup hierarchy".into()),
        }
    }

    /// Reads every cgroup of `tree` (id, path relative to the v2 root: the whole hierarchy)
    /// once, and the node, so the first interval reports only what stalled in it.
    pub fn baseline<'a>(&mut self, tree: impl IntoIterator<Item = (u64, &'a str)>) {
        self.prev_node = read_stalls(&self.node_dir, "");
        self.cgroups.baseline(tree);
    }

    /// The interval's stall time of each of `cgroups` (id, path relative to the v2 root)
    /// whose files could be read, and the node's. Previous readings of cgroups not in `alive`
    /// are dropped.
    pub fn collect<'a>(
        &mut self,
        cgroups: impl IntoIterator<Item = (u64, &'a str)>,
        alive: impl Fn(u64) -> bool,
    ) -> Collected {
        let node = read_stalls(&self.node_dir, "").map(|cur| {
            let d = self.prev_node.as_ref().map_or(cur, |p| cur.delta(p));
            self.prev_node = Some(cur);
            d
        });
        Collected {
            cgroups: self.cgroups.collect(cgroups, alive),
            node,
        }
    }
}

/// Cumulative counters read from a file of each reported cgroup in the unified hierarchy,
/// reported as their growth since the previous reading of that cgroup (PSI totals,
/// `memory.events`). Nothing is read on nodes keyed by the v1 cpu hierarchy.
pub struct PerCgroup<T> {
    v2_root: Option<PathBuf>,
    /// Reads the counters of the cgroup at this directory; `None` when it has no such file.
    read: fn(&Path) -> Option<T>,
    prev: HashMap<u64, T>,
}

impl<T: Counter + Copy> PerCgroup<T> {
    pub fn new(hierarchy: Option<&Hierarchy>, read: fn(&Path) -> Option<T>) -> PerCgroup<T> {
        PerCgroup {
            v2_root: match hierarchy {
                Some(Hierarchy::Unified(root)) => Some(root.clone()),
                _ => None,
            },
            read,
            prev: HashMap::new(),
        }
    }

    /// Reads every cgroup of `tree` (the whole hierarchy) once: a cgroup first read later was
    /// created since, and its whole count is its growth.
    pub fn baseline<'a>(&mut self, tree: impl IntoIterator<Item = (u64, &'a str)>) {
        let Some(root) = &self.v2_root else {
            return;
        };
        let read = self.read;
        self.prev = tree
            .into_iter()
            .filter_map(|(id, path)| Some((id, read(&cgroup_dir(root, path))?)))
            .collect();
    }

    /// The growth for each of `cgroups` (id, path relative to the v2 root) whose file could
    /// be read, zero growth included. Previous readings of cgroups not `alive` are dropped.
    pub fn collect<'a>(
        &mut self,
        cgroups: impl IntoIterator<Item = (u64, &'a str)>,
        alive: impl Fn(u64) -> bool,
    ) -> BTreeMap<u64, T> {
        let mut out = BTreeMap::new();
        let Some(root) = &self.v2_root else {
            return out;
        };
        for (id, path) in cgroups {
            let Some(cur) = (self.read)(&cgroup_dir(root, path)) else {
                continue;
            };
            let d = match self.prev.insert(id, cur) {
                Some(p) => cur.delta(&p),
                None => cur,
            };
            out.insert(id, d);
        }
        self.prev.retain(|id, _| alive(*id));
        out
    }
}

fn cgroup_dir(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CGROUP: &str = "some avg10=1.50 avg60=0.40 avg300=0.08 total=1234567\n\
                          full avg10=0.00 avg60=0.00 avg300=0.00 total=89\n";

    #[test]
    fn parses_totals_in_ns() {
        assert_eq!(
            parse_stall(CGROUP),
            Some(Stall {
                some_ns: 1_234_567_000,
                full_ns: 89_000,
            })
        );
        // The node's cpu before 5.13: no full line.
        assert_eq!(
            parse_stall("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n"),
            Some(Stall {
                some_ns: 5000,
                full_ns: 0,
            })
        );
        assert_eq!(parse_stall("full avg10=0.00 total=5\n"), None);
        assert_eq!(parse_stall(""), None);
    }

    fn write(dir: &Path, suffix: &str, cpu_us: u64, mem_us: u64, io_us: u64) {
        for (r, us) in [("cpu", cpu_us), ("memory", mem_us), ("io", io_us)] {
            std::fs::write(
                dir.join(format!("{r}{suffix}")),
                format!(
                    "some avg10=0.00 avg60=0.00 avg300=0.00 total={us}\n\
                     full avg10=0.00 avg60=0.00 avg300=0.00 total={}\n",
                    us / 2
                ),
            )
            .unwrap();
        }
    }

    #[test]
    fn reports_growth_since_the_last_reading() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cg");
        let node = tmp.path().join("pressure");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(&node).unwrap();
        write(&root.join("a"), ".pressure", 100, 10, 0);
        write(&node, "", 1000, 0, 0);
        let id = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let a = id(&root.join("a"));
        let mut p = Pressure::with_node_dir(Some(&Hierarchy::Unified(root.clone())), &node);
        let tree = crate::cgroups::scan(&root);
        p.baseline(tree.iter().map(|(id, path)| (*id, path.as_str())));

        write(&root.join("a"), ".pressure", 400, 10, 50);
        write(&node, "", 1600, 0, 0);
        // A cgroup created since the baseline counts whole.
        std::fs::create_dir_all(root.join("b")).unwrap();
        write(&root.join("b"), ".pressure", 7, 0, 0);
        let b = id(&root.join("b"));
        let got = p.collect([(a, "/a"), (b, "/b")], |_| true);
        let a1 = got.cgroups[&a];
        assert_eq!(
            a1.cpu,
            Stall {
                some_ns: 300_000,
                full_ns: 150_000
            }
        );
        assert_eq!(a1.memory, Stall::default());
        assert_eq!(
            a1.io,
            Stall {
                some_ns: 50_000,
                full_ns: 25_000
            }
        );
        assert_eq!(got.cgroups[&b].cpu.some_ns, 7000);
        assert_eq!(got.node.unwrap().cpu.some_ns, 600_000);

        // Not reported for an interval: the next reading covers both.
        write(&root.join("a"), ".pressure", 500, 10, 50);
        let _ = p.collect([], |_| true);
        write(&root.join("a"), ".pressure", 900, 10, 50);
        let got = p.collect([(a, "/a")], |x| x == a);
        assert_eq!(got.cgroups[&a].cpu.some_ns, 500_000);
        assert!(!p.cgroups.prev.contains_key(&b), "b was forgotten");
    }

    #[test]
    fn v1_keyed_nodes_report_no_cgroup_pressure() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = Pressure::with_node_dir(
            Some(&Hierarchy::V1Cpu(tmp.path().to_path_buf())),
            tmp.path(),
        );
        p.baseline([(1, "/x")]);
        assert!(p.collect([(1, "/x")], |_| true).cgroups.is_empty());
        assert!(Pressure::cgroups_available(Some(&Hierarchy::V1Cpu(tmp.path().into()))).is_err());
    }
}

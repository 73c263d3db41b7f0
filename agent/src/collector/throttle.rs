//! CFS throttling of every cgroup with a CPU limit, from the kernel's own accounting in
//! `cpu.stat`: cgroup v2 (`cpu.max` set; `nr_periods`, `nr_throttled`, `throttled_usec`) and
//! v1 (`cpu.cfs_quota_us` set; `nr_periods`, `nr_throttled`, `throttled_time` in ns). On
//! hybrid nodes v1 cgroups are reported under the id of the v2 cgroup at the same path (the
//! layout systemd, runc and the kubelet create); those without one are skipped. On pure v1
//! nodes the ids are the cpu controller's own.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use agent_ebpf::{
    hist::Log2Hist,
    throttle::{MAP_DURATIONS, MAP_ERRORS},
};
use aya::Ebpf;

use super::maps;
use crate::cgroups::{Hierarchy, flat_keyed};
use crate::{
    core::counters::{Counter, Snapshot},
    probes::{ProbeError, catalog::THROTTLE},
    report::{Durations, KernelError, Throttling},
};

/// The three cumulative counters of `cpu.stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
}

impl Counter for CpuStat {
    fn merge(&mut self, o: &Self) {
        self.periods += o.periods;
        self.throttled_periods += o.throttled_periods;
        self.throttled_ns += o.throttled_ns;
    }
    fn delta(&self, prev: &Self) -> Self {
        if self.periods < prev.periods
            || self.throttled_periods < prev.throttled_periods
            || self.throttled_ns < prev.throttled_ns
        {
            return *self; // the cgroup was recreated
        }
        CpuStat {
            periods: self.periods - prev.periods,
            throttled_periods: self.throttled_periods - prev.throttled_periods,
            throttled_ns: self.throttled_ns - prev.throttled_ns,
        }
    }
    fn is_zero(&self) -> bool {
        // A limited cgroup is reported even when nothing happened.
        false
    }
}

pub struct Throttle {
    /// The hierarchy whose ids key the figures.
    hierarchy: Option<Hierarchy>,
    /// The v1 cpu controller, for limits set there (hybrid nodes; pure v1 is `hierarchy`).
    v1_cpu: Option<PathBuf>,
    prev: Snapshot<u64, CpuStat>,
    /// `cpu.stat.local` `throttled_usec` (as ns) of limited cgroups and those under one.
    prev_local: Snapshot<u64, u64>,
    prev_durations: Snapshot<u64, Log2Hist>,
    /// Unthrottles whose kernel fields the program could not read, so far.
    prev_errors: u64,
    /// v1 cpu cgroup id → the id of the same path in `hierarchy`. The throttle probe reads
    /// `cfs_rq->tg`, the cpu controller's cgroup: a v1 id on hybrid nodes.
    cpu_to_key: HashMap<u64, u64>,
}

impl Throttle {
    pub fn new(cgroup_root: &Path, hierarchy: Option<&Hierarchy>) -> Throttle {
        Throttle {
            hierarchy: hierarchy.cloned(),
            v1_cpu: crate::cgroups::v1_cpu_root(cgroup_root),
            prev: Snapshot::default(),
            prev_local: Snapshot::default(),
            prev_durations: Snapshot::default(),
            prev_errors: 0,
            cpu_to_key: HashMap::new(),
        }
    }

    pub fn baseline(&mut self, ebpf: &Ebpf) -> Result<(), ProbeError> {
        (self.prev, self.prev_local) = self.scan();
        self.prev_durations = self.durations(ebpf)?;
        self.prev_errors = maps::per_cpu_counter(ebpf, MAP_ERRORS)?;
        Ok(())
    }

    /// Unthrottles in the interval whose kernel fields the program could not read
    /// (`field_read`): their durations are missing.
    pub fn errors(&mut self, ebpf: &Ebpf) -> Result<Option<KernelError>, ProbeError> {
        let cur = maps::per_cpu_counter(ebpf, MAP_ERRORS)?;
        let count = cur.delta(&self.prev_errors);
        self.prev_errors = cur;
        Ok((count > 0).then_some(KernelError {
            probe: THROTTLE.name,
            error: "field_read",
            count,
        }))
    }

    /// The interval's throttling per limited cgroup, with the throttle probe's durations
    /// where it recorded some; and the local throttled time (`cpu.stat.local`) of limited
    /// cgroups and those under one, where the kernel has it.
    pub fn collect(&mut self, ebpf: &Ebpf) -> Result<Collected, ProbeError> {
        let (cur, local) = self.scan();
        let mut out: BTreeMap<u64, Throttling> = cur
            .delta_since(&self.prev)
            .into_iter()
            .map(|(id, d)| (id, throttling(&d)))
            .collect();
        self.prev = cur;
        // Limited cgroups always; those under one when they were throttled.
        let local_ns = local
            .values
            .iter()
            .map(|(id, v)| (*id, v.delta(self.prev_local.values.get(id).unwrap_or(&0))))
            .filter(|(id, d)| *d > 0 || out.contains_key(id))
            .collect();
        self.prev_local = local;
        let durations = self.durations(ebpf)?;
        for (id, h) in durations.delta_since(&self.prev_durations) {
            if let Some(t) = out.get_mut(&id) {
                t.durations = Some(Durations::from_hist(h));
            }
        }
        self.prev_durations = durations;
        Ok(Collected {
            throttling: out,
            local_ns,
        })
    }

    /// The probe's duration histograms, keyed like the rest of the figures.
    fn durations(&self, ebpf: &Ebpf) -> Result<Snapshot<u64, Log2Hist>, ProbeError> {
        let raw: Snapshot<u64, Log2Hist> = maps::hash(ebpf, MAP_DURATIONS)?;
        Ok(Snapshot {
            values: raw
                .values
                .into_iter()
                .map(|(id, h)| (self.cpu_to_key.get(&id).copied().unwrap_or(id), h))
                .collect(),
        })
    }

    /// Reads `cpu.stat` of every cgroup with a CPU limit, keyed by its id in `hierarchy`, and
    /// (v2) `cpu.stat.local` of those and every cgroup under one.
    fn scan(&mut self) -> (Snapshot<u64, CpuStat>, Snapshot<u64, u64>) {
        let mut values = HashMap::new();
        let mut local = HashMap::new();
        self.cpu_to_key.clear();
        match &self.hierarchy {
            Some(Hierarchy::Unified(v2)) => {
                // Directories at or under a limit (parents are visited before children).
                let mut limited: std::collections::HashSet<PathBuf> = Default::default();
                walk(v2, &mut |dir, rel| {
                    let stat = read_v2(dir);
                    let under = stat.is_some() || rel.parent().is_some_and(|p| limited.contains(p));
                    if !under {
                        return;
                    }
                    limited.insert(rel.to_path_buf());
                    let Ok(m) = std::fs::metadata(dir) else {
                        return;
                    };
                    if let Some(stat) = stat {
                        values.insert(m.ino(), stat);
                    }
                    if let Some(ns) = read_v2_local(dir) {
                        local.insert(m.ino(), ns);
                    }
                });
                if let Some(v1) = &self.v1_cpu {
                    let cpu_to_key = &mut self.cpu_to_key;
                    walk(v1, &mut |dir, rel| {
                        if let Some(stat) = read_v1(dir)
                            && let Ok(key) = std::fs::metadata(v2.join(rel))
                            && let Ok(cpu) = std::fs::metadata(dir)
                        {
                            values.entry(key.ino()).or_insert(stat);
                            cpu_to_key.insert(cpu.ino(), key.ino());
                        }
                    });
                }
            }
            Some(Hierarchy::V1Cpu(v1)) => walk(v1, &mut |dir, _rel| {
                if let Some(stat) = read_v1(dir)
                    && let Ok(m) = std::fs::metadata(dir)
                {
                    values.insert(m.ino(), stat);
                }
            }),
            None => {}
        }
        (Snapshot { values }, Snapshot { values: local })
    }
}

/// What one collection of throttling gives.
#[derive(Debug, Default)]
pub struct Collected {
    pub throttling: BTreeMap<u64, Throttling>,
    /// `cpu.stat.local` throttled time in the interval, ns, by cgroup.
    pub local_ns: BTreeMap<u64, u64>,
}

pub fn throttling(d: &CpuStat) -> Throttling {
    Throttling {
        durations: None,
        periods: d.periods,
        throttled_periods: d.throttled_periods,
        throttled_ns: d.throttled_ns,
        throttled_pct: if d.periods == 0 {
            0.0
        } else {
            100.0 * d.throttled_periods as f64 / d.periods as f64
        },
    }
}

/// Visits every directory under `root` (its path and the path relative to `root`).
fn walk(root: &Path, visit: &mut dyn FnMut(&Path, &Path)) {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        visit(&dir, &rel);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(rel.join(e.file_name()));
            }
        }
    }
}

/// v2: `cpu.max` is "max 100000" when unlimited, "20000 100000" with a quota.
pub fn read_v2(dir: &Path) -> Option<CpuStat> {
    let max = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
    if max.split_whitespace().next()? == "max" {
        return None;
    }
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    Some(CpuStat {
        periods: flat_keyed(&stat, "nr_periods")?,
        throttled_periods: flat_keyed(&stat, "nr_throttled")?,
        throttled_ns: flat_keyed(&stat, "throttled_usec")? * 1000,
    })
}

/// v2 `cpu.stat.local` `throttled_usec` as ns: the time this cgroup's own tasks were throttled
/// by any level's limit (kernels 6.8 and later; `None` before).
pub fn read_v2_local(dir: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(dir.join("cpu.stat.local")).ok()?;
    Some(flat_keyed(&stat, "throttled_usec")? * 1000)
}

/// v1: `cpu.cfs_quota_us` is -1 when unlimited.
pub fn read_v1(dir: &Path) -> Option<CpuStat> {
    let quota: i64 = std::fs::read_to_string(dir.join("cpu.cfs_quota_us"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if quota < 0 {
        return None;
    }
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    Some(CpuStat {
        periods: flat_keyed(&stat, "nr_periods")?,
        throttled_periods: flat_keyed(&stat, "nr_throttled")?,
        throttled_ns: flat_keyed(&stat, "throttled_time")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn local_throttled_time_of_limited_cgroups_and_those_under_one() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let pod = d.path().join("pod");
        write(&pod, "cpu.max", "20000 100000\n");
        write(
            &pod,
            "cpu.stat",
            "nr_periods 50\nnr_throttled 40\nthrottled_usec 3000\n",
        );
        write(&pod, "cpu.stat.local", "throttled_usec 100\n");
        // A container without a limit of its own, throttled by the pod's.
        let ctr = pod.join("ctr");
        write(&ctr, "cpu.max", "max 100000\n");
        write(&ctr, "cpu.stat.local", "throttled_usec 2900\n");
        // Not under any limit: left out.
        let free = d.path().join("free");
        write(&free, "cpu.max", "max 100000\n");
        write(&free, "cpu.stat.local", "throttled_usec 7\n");
        let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        let mut t = Throttle::new(d.path(), Some(&Hierarchy::Unified(d.path().to_path_buf())));
        let (stats, local) = t.scan();
        assert!(stats.values.contains_key(&ino(&pod)));
        assert!(!stats.values.contains_key(&ino(&ctr)));
        assert_eq!(local.values.get(&ino(&pod)), Some(&100_000));
        assert_eq!(local.values.get(&ino(&ctr)), Some(&2_900_000));
        assert_eq!(local.values.get(&ino(&free)), None);
        // Kernels before 6.8 have no cpu.stat.local.
        std::fs::remove_file(ctr.join("cpu.stat.local")).unwrap();
        assert_eq!(read_v2_local(&ctr), None);
    }

    #[test]
    fn reads_v2_and_v1_cpu_stat_only_for_limited_cgroups() {
        let d = tempfile::tempdir().unwrap();
        let limited = d.path().join("a");
        write(&limited, "cpu.max", "20000 100000\n");
        write(
            &limited,
            "cpu.stat",
            "usage_usec 5\nnr_periods 50\nnr_throttled 40\nthrottled_usec 3000\n",
        );
        assert_eq!(
            read_v2(&limited),
            Some(CpuStat {
                periods: 50,
                throttled_periods: 40,
                throttled_ns: 3_000_000
            })
        );
        let free = d.path().join("b");
        write(&free, "cpu.max", "max 100000\n");
        write(
            &free,
            "cpu.stat",
            "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
        );
        assert_eq!(read_v2(&free), None);

        let v1 = d.path().join("v1");
        write(&v1, "cpu.cfs_quota_us", "20000\n");
        write(
            &v1,
            "cpu.stat",
            "nr_periods 10\nnr_throttled 9\nthrottled_time 123456\n",
        );
        assert_eq!(read_v1(&v1).unwrap().throttled_ns, 123_456);
        write(&v1, "cpu.cfs_quota_us", "-1\n");
        assert_eq!(read_v1(&v1), None);
    }

    /// The kernel program's rule for what `unthrottle_cfs_rq` added to `throttled_time`.
    #[test]
    fn a_duration_only_where_the_kernel_added_one() {
        use agent_ebpf::throttle::{Unthrottling, kernel_duration};
        let entry = Unthrottling {
            cfs_rq: 0xffff_8880_0000_1000,
            throttled_clock: 5_000_000,
        };
        // Unthrottled: the kernel added rq_clock - throttled_clock.
        assert_eq!(kernel_duration(&entry, false, 7_500_000), Some(2_500_000));
        // Returned early (6.18+, no runtime left): still throttled, nothing added.
        assert_eq!(kernel_duration(&entry, true, 7_500_000), None);
        // Throttled while empty (6.6+), or no task taken off yet (6.18+): not counted.
        let empty = Unthrottling {
            throttled_clock: 0,
            ..entry
        };
        assert_eq!(kernel_duration(&empty, false, 7_500_000), None);
    }

    #[test]
    fn throttled_share_and_deltas() {
        let prev = CpuStat {
            periods: 10,
            throttled_periods: 5,
            throttled_ns: 100,
        };
        let cur = CpuStat {
            periods: 30,
            throttled_periods: 20,
            throttled_ns: 400,
        };
        let t = throttling(&cur.delta(&prev));
        assert_eq!(
            (t.periods, t.throttled_periods, t.throttled_ns),
            (20, 15, 300)
        );
        assert_eq!(t.throttled_pct, 75.0);
        assert_eq!(throttling(&CpuStat::default()).throttled_pct, 0.0);
    }
}

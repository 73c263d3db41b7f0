//! OOM kills: per-cgroup counts from `OOM_KILLS` each interval, and each kill as it happens
//! from the `OOM_EVENTS` ring buffer, with the victim's cgroup named and the kind of OOM
//! (cgroup limit or global) worked out from the memory controller's files.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use agent_ebpf::oom::{
    CONSTRAINT_NAMES, CONSTRAINT_UNSEEN, MAP_KILLS, MAP_LOST, MAP_SPARED, OomEvent,
    SCORE_ADJ_UNKNOWN,
};
use aya::Ebpf;
use serde::Serialize;

use super::maps;
use crate::{
    cgroups::CgroupNames,
    core::counters::{Counter, Snapshot},
    probes::{ProbeError, catalog::OOM},
    report::KernelError,
};

#[derive(Debug, Default)]
pub struct Oom {
    prev: Snapshot<u64, u64>,
    prev_lost: u64,
    /// Victims the kernel marked without killing them (already exiting), so far.
    prev_spared: u64,
    /// Kills the program could only count on cgroup 0 (the classic tracepoint's record has no
    /// task pointer) whose events named a cgroup (by a /proc lookup): cgroup → (kills, the
    /// collections they have waited).
    found: BTreeMap<u64, (u64, u8)>,
}

impl Oom {
    pub fn baseline(&mut self, ebpf: &Ebpf) -> Result<(), ProbeError> {
        self.prev = maps::hash(ebpf, MAP_KILLS)?;
        self.prev_lost = lost(ebpf)?;
        self.prev_spared = maps::per_cpu_counter(ebpf, MAP_SPARED)?;
        Ok(())
    }

    /// Kills per victim cgroup in the interval, and events the ring buffer dropped.
    pub fn collect(
        &mut self,
        ebpf: &Ebpf,
    ) -> Result<(BTreeMap<u64, u64>, Option<KernelError>), ProbeError> {
        let cur = maps::hash(ebpf, MAP_KILLS)?;
        let mut kills = cur.delta_since(&self.prev).into_iter().collect();
        self.prev = cur;
        reattribute(&mut kills, &mut self.found);
        let spared = maps::per_cpu_counter(ebpf, MAP_SPARED)?;
        let spared_now = spared.delta(&self.prev_spared);
        self.prev_spared = spared;
        if spared_now > 0 {
            tracing::info!(
                "OOM: {spared_now} victim(s) marked without a kill: already exiting, given \
                 the memory reserves to finish (the kernel counts no kill, nor does nodesat)"
            );
        }
        let cur_lost = lost(ebpf)?;
        let lost_now = cur_lost.delta(&self.prev_lost);
        self.prev_lost = cur_lost;
        let error = (lost_now > 0).then_some(KernelError {
            probe: OOM.name,
            error: "events_lost",
            count: lost_now,
        });
        Ok((kills, error))
    }
}

impl Oom {
    /// An event's victim, counted on `kernel_cgroup` by the program, was found in `resolved`.
    pub fn found(&mut self, kernel_cgroup: u64, resolved: u64) {
        if kernel_cgroup == 0 && resolved != 0 {
            self.found.entry(resolved).or_default().0 += 1;
        }
    }
}

/// Moves kills counted on cgroup 0 to the cgroups their events were found in (pure). An event
/// can be read just before or just after the collection that counts its kill, so what is not
/// matched waits one more collection, then is dropped (the kill stays on 0).
fn reattribute(kills: &mut BTreeMap<u64, u64>, found: &mut BTreeMap<u64, (u64, u8)>) {
    for (cgroup, (n, age)) in found.iter_mut() {
        let on_zero = kills.get(&0).copied().unwrap_or(0);
        let moved = (*n).min(on_zero);
        if moved > 0 {
            *kills.entry(*cgroup).or_insert(0) += moved;
            match on_zero - moved {
                0 => kills.remove(&0),
                left => kills.insert(0, left),
            };
            *n -= moved;
        }
        *age += 1;
    }
    found.retain(|_, (n, age)| *n > 0 && *age < 2);
}

fn lost(ebpf: &Ebpf) -> Result<u64, ProbeError> {
    maps::per_cpu_counter(ebpf, MAP_LOST)
}

/// One OOM kill as reported (a JSON line of type "oom_kill", or a table line), at once.
#[derive(Clone, Debug, Serialize)]
pub struct OomKill {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time_unix_ns: u64,
    /// The victim's process id.
    pub pid: u32,
    /// The victim's thread id: the thread the kernel marked (not always the main one).
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// The victim cgroup's path relative to the cgroup v2 root.
    pub cgroup: Option<String>,
    /// "memcg" (a cgroup memory limit was hit), "global" (the whole machine ran out),
    /// "cpuset" or "mempolicy" (the memory nodes allowed to the allocation ran out), or
    /// "unknown".
    pub constraint: &'static str,
    /// The cgroup whose limit was hit, relative to the cgroup v2 root (the same path as in
    /// the v1 memory hierarchy on hybrid nodes): an ancestor of the victim's, e.g. the pod
    /// when the victim is one of its containers. None unless `constraint` is "memcg".
    pub constraint_cgroup: Option<String>,
    /// "kernel": `constraint` and `constraint_cgroup` are the kernel's own decision
    /// (`oom_kill_process`'s `oom_control`, probe `oom_constraint`); "inferred": that probe
    /// is not attached, and they were worked out afterwards from the memory controller's
    /// files of the victim's ancestors.
    pub constraint_source: &'static str,
    pub oom_score_adj: Option<i32>,
}

impl OomKill {
    /// "memcg OOM of /pod" (the limit that was hit, when known), "global OOM", ….
    pub fn constraint_text(&self) -> String {
        match &self.constraint_cgroup {
            Some(at) => format!("{} OOM of {at}", self.constraint),
            None => format!("{} OOM", self.constraint),
        }
    }
}

/// Turns kernel events into reports: names the cgroup and the constraint.
pub struct OomEvents {
    cgroup_root: PathBuf,
    /// For the memory controller's files (cgroup paths are the same in every hierarchy).
    v2_root: Option<PathBuf>,
    host_root: PathBuf,
}

impl OomEvents {
    pub fn new(cgroup_root: &Path, host_root: &Path) -> OomEvents {
        OomEvents {
            cgroup_root: cgroup_root.to_path_buf(),
            v2_root: crate::cgroups::v2_root(cgroup_root),
            host_root: host_root.to_path_buf(),
        }
    }

    pub fn describe(&self, e: &OomEvent, names: &mut CgroupNames) -> OomKill {
        let mut cgroup_id = e.cgroup;
        if cgroup_id == 0 {
            // The classic tracepoint carries no task pointer: look the victim up while it may
            // still exist.
            cgroup_id = names.id_of_pid(&self.host_root, e.tgid).unwrap_or(0);
        }
        names.refresh_if_unknown(&[cgroup_id]);
        let cgroup = names.name(cgroup_id).map(str::to_owned);
        let (constraint, constraint_cgroup, constraint_source) = match e.constraint {
            CONSTRAINT_UNSEEN => {
                let (kind, at) = match &cgroup {
                    Some(path) => {
                        infer_constraint(&self.cgroup_root, self.v2_root.as_deref(), path)
                    }
                    None => ("unknown", None),
                };
                (kind, at, "inferred")
            }
            n => {
                let kind = CONSTRAINT_NAMES
                    .get(n as usize - 1)
                    .copied()
                    .unwrap_or("unknown");
                let at = (e.constraint_cgroup != 0)
                    .then(|| self.memcg_path(e.constraint_cgroup, names))
                    .flatten();
                (kind, at, "kernel")
            }
        };
        OomKill {
            kind: "oom_kill",
            time_unix_ns: wall_clock_of_ktime(e.ktime_ns),
            pid: e.tgid,
            tid: e.pid,
            comm: comm(&e.comm),
            cgroup_id,
            cgroup,
            constraint,
            constraint_cgroup,
            constraint_source,
            oom_score_adj: (e.oom_score_adj != SCORE_ADJ_UNKNOWN).then_some(e.oom_score_adj),
        }
    }

    /// The path of the memory controller's cgroup `id`: in the v1 memory hierarchy where it
    /// is mounted (hybrid and v1 nodes: `oom_control.memcg` is a v1 cgroup there), else in the
    /// unified one. Walks the v1 hierarchy: OOM kills are rare.
    fn memcg_path(&self, id: u64, names: &mut CgroupNames) -> Option<String> {
        let v1 = self.cgroup_root.join("memory");
        if v1.join("memory.limit_in_bytes").exists() {
            return crate::cgroups::scan(&v1).remove(&id);
        }
        names.refresh_if_unknown(&[id]);
        names.name(id).map(str::to_owned)
    }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Converts a `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) time to wall-clock ns.
fn wall_clock_of_ktime(ktime_ns: u64) -> u64 {
    let now_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let now_mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(ktime_ns);
    now_wall.saturating_sub(now_mono.saturating_sub(ktime_ns))
}

/// What a kill in cgroup `path` (relative to the v2 root) was constrained by, worked out
/// afterwards when the kernel's decision was not seen: the nearest ancestor (or the cgroup
/// itself) that has a limit and shows it was hit (v2 `memory.events` `oom` > 0; v1 usage
/// watermark `memory.max_usage_in_bytes` at the limit) is "memcg", with its path. "global"
/// when no ancestor has a limit; "unknown" when there is a limit but no sign it was reached,
/// or no memory controller to ask.
pub fn infer_constraint(
    cgroup_root: &Path,
    v2_root: Option<&Path>,
    path: &str,
) -> (&'static str, Option<String>) {
    let mut saw_controller = false;
    let mut saw_limit = false;
    for ancestor in ancestors(path) {
        let rel = ancestor.trim_start_matches('/');
        if let Some(v2) = v2_root {
            let dir = v2.join(rel);
            if let Ok(max) = std::fs::read_to_string(dir.join("memory.max")) {
                saw_controller = true;
                if max.trim() != "max" {
                    saw_limit = true;
                    if keyed(&dir.join("memory.events"), "oom").unwrap_or(0) > 0 {
                        return ("memcg", Some(ancestor));
                    }
                }
            }
        }
        let dir = cgroup_root.join("memory").join(rel);
        for (limit, peak) in [
            ("memory.limit_in_bytes", "memory.max_usage_in_bytes"),
            (
                "memory.memsw.limit_in_bytes",
                "memory.memsw.max_usage_in_bytes",
            ),
        ] {
            let Some(limit) = number(&dir.join(limit)) else {
                continue;
            };
            saw_controller = true;
            // An unlimited v1 memcg reports PAGE_COUNTER_MAX pages in bytes (~2^63).
            if limit < 1 << 62 {
                saw_limit = true;
                // The usage watermark reached the limit (within a charge batch). (failcnt is
                // not reliable for this: it was seen at 0 right after a memcg OOM kill.)
                if number(&dir.join(peak)).is_some_and(|p| p + V1_SLACK >= limit) {
                    return ("memcg", Some(ancestor));
                }
            }
        }
    }
    match (saw_controller, saw_limit) {
        (true, false) => ("global", None),
        _ => ("unknown", None),
    }
}

/// "/a/b/c" → ["/a/b/c", "/a/b", "/a", "/"].
fn ancestors(path: &str) -> Vec<String> {
    let mut out = vec![path.to_owned()];
    let mut p = path.trim_end_matches('/');
    while let Some(i) = p.rfind('/') {
        p = &p[..i];
        out.push(if p.is_empty() {
            "/".into()
        } else {
            p.to_owned()
        });
        if p.is_empty() {
            break;
        }
    }
    out.dedup();
    out
}

/// How far below its limit a v1 memcg's usage watermark may stay and still count as having
/// hit it (charges are batched per CPU).
const V1_SLACK: u64 = 4 << 20;

fn number(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat keyed file such as `memory.events` ("oom 3").
fn keyed(file: &Path, key: &str) -> Option<u64> {
    crate::cgroups::flat_keyed(&std::fs::read_to_string(file).ok()?, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_on_cgroup_zero_move_to_the_cgroups_their_events_named() {
        let mut oom = Oom::default();
        oom.found(0, 7);
        oom.found(0, 7);
        oom.found(5, 9); // counted on its own cgroup by the kernel: nothing to move
        oom.found(0, 0); // the lookup failed too
        let mut kills = BTreeMap::from([(0, 3), (5, 1)]);
        reattribute(&mut kills, &mut oom.found);
        assert_eq!(kills, BTreeMap::from([(0, 1), (5, 1), (7, 2)]));
        assert!(oom.found.is_empty());

        // The event came before its kill was counted: it waits one collection ...
        oom.found(0, 8);
        let mut kills = BTreeMap::new();
        reattribute(&mut kills, &mut oom.found);
        assert!(kills.is_empty());
        let mut kills = BTreeMap::from([(0, 1)]);
        reattribute(&mut kills, &mut oom.found);
        assert_eq!(kills, BTreeMap::from([(8, 1)]));
        // ... but no longer.
        oom.found(0, 8);
        reattribute(&mut BTreeMap::new(), &mut oom.found);
        reattribute(&mut BTreeMap::new(), &mut oom.found);
        assert!(oom.found.is_empty());
    }

    #[test]
    fn ancestors_walk_up_to_the_root() {
        assert_eq!(ancestors("/a/b"), vec!["/a/b", "/a", "/"]);
        assert_eq!(ancestors("/"), vec!["/"]);
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut raw = [0u8; 16];
        raw[..5].copy_from_slice(b"hello");
        assert_eq!(comm(&raw), "hello");
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn v2_limit_hit_on_an_ancestor_is_memcg() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().to_path_buf();
        write(&v2.join("pod"), "memory.max", "67108864\n");
        write(
            &v2.join("pod"),
            "memory.events",
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        );
        write(&v2.join("pod/ctr"), "memory.max", "max\n");
        write(&v2.join("pod/ctr"), "memory.events", "oom 0\noom_kill 1\n");
        assert_eq!(
            infer_constraint(root.path(), Some(&v2), "/pod/ctr"),
            ("memcg", Some("/pod".to_owned()))
        );
    }

    #[test]
    fn no_limit_anywhere_is_global_and_unreached_limit_is_unknown() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().to_path_buf();
        write(&v2.join("a"), "memory.max", "max\n");
        assert_eq!(
            infer_constraint(root.path(), Some(&v2), "/a"),
            ("global", None)
        );
        write(&v2.join("b"), "memory.max", "1000000\n");
        write(&v2.join("b"), "memory.events", "oom 0\n");
        assert_eq!(
            infer_constraint(root.path(), Some(&v2), "/b"),
            ("unknown", None)
        );
        assert_eq!(infer_constraint(root.path(), None, "/c"), ("unknown", None));
    }

    #[test]
    fn v1_limit_reached_is_memcg() {
        let root = tempfile::tempdir().unwrap();
        let mem = root.path().join("memory/test");
        write(&mem, "memory.limit_in_bytes", "67108864\n");
        write(&mem, "memory.max_usage_in_bytes", "67108864\n");
        let other = root.path().join("memory/other");
        write(&other, "memory.limit_in_bytes", "67108864\n");
        write(&other, "memory.max_usage_in_bytes", "1048576\n");
        assert_eq!(
            infer_constraint(root.path(), None, "/other"),
            ("unknown", None)
        );
        write(
            &root.path().join("memory"),
            "memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(
            infer_constraint(root.path(), None, "/test"),
            ("memcg", Some("/test".to_owned()))
        );
    }
}

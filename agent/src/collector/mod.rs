//! The collection loop's work: read every probe's maps, turn them into the interval's figures
//! (through the pure aggregation core), and name the cgroups.

pub mod block;
pub mod iowait;
mod maps;
pub mod memory_events;
pub mod oom;
pub mod pressure;
pub mod reclaim;
pub mod runqueue;
pub mod tcp;
pub mod throttle;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use agent_ebpf::runqueue::{CULPRIT_IDLE, CULPRIT_UNSEEN};

use crate::{
    cgroups::{CgroupNames, Hierarchy},
    config::Config,
    identity::{Resolver, cap_entities},
    probes::{ProbeError, Probes},
    report::{CgroupReport, Culprit, NodeTotals, Report, Sources, rank_culprits},
};

pub struct Collector {
    runqueue: runqueue::Runqueue,
    tcp: tcp::Tcp,
    oom: oom::Oom,
    iowait: iowait::Iowait,
    block: block::Block,
    throttle: throttle::Throttle,
    reclaim: reclaim::Reclaim,
    /// `None` with `--cgroup-files off`.
    cgroup_files: Option<CgroupFiles>,
    pub names: CgroupNames,
    identities: Resolver,
    max_entities: usize,
    last: Instant,
}

impl Collector {
    /// Starts collecting: the first report covers the time from now.
    pub fn new(
        probes: &Probes,
        names: CgroupNames,
        identities: Resolver,
        config: &Config,
    ) -> Result<Collector, ProbeError> {
        let cgroup_root = config.cgroup_root.as_path();
        let mut runqueue = runqueue::Runqueue::new(config.debug_runqueue);
        runqueue.baseline(probes.ebpf())?;
        let mut tcp = tcp::Tcp::new(
            names
                .hierarchy()
                .filter(|h| matches!(h, Hierarchy::V1Cpu(_)))
                .and_then(Hierarchy::root_id),
        );
        tcp.baseline(probes.ebpf())?;
        let mut oom = oom::Oom::default();
        oom.baseline(probes.ebpf())?;
        let mut iowait = iowait::Iowait::default();
        iowait.baseline(probes.ebpf())?;
        let mut block = block::Block::default();
        block.baseline(probes.ebpf())?;
        let mut throttle = throttle::Throttle::new(cgroup_root, names.hierarchy());
        throttle.baseline(probes.ebpf())?;
        let mut reclaim = reclaim::Reclaim::default();
        reclaim.baseline(probes.ebpf())?;
        let cgroup_files = config.cgroup_files.then(|| {
            let mut files = CgroupFiles {
                pressure: pressure::Pressure::new(names.hierarchy()),
                memory_events: pressure::PerCgroup::new(names.hierarchy(), memory_events::read),
            };
            // One walk of the v2 tree serves both baselines.
            let tree = match names.hierarchy() {
                Some(Hierarchy::Unified(root)) => crate::cgroups::scan(root),
                _ => Default::default(),
            };
            let tree = || tree.iter().map(|(id, path)| (*id, path.as_str()));
            files.pressure.baseline(tree());
            files.memory_events.baseline(tree());
            files
        });
        Ok(Collector {
            runqueue,
            tcp,
            oom,
            iowait,
            block,
            throttle,
            reclaim,
            cgroup_files,
            names,
            identities,
            max_entities: config.max_entities,
            last: Instant::now(),
        })
    }

    /// An OOM event was described: its victim, counted on `kernel_cgroup` by the program,
    /// is in `resolved` (see [`oom::Oom::found`]).
    pub fn oom_found(&mut self, kernel_cgroup: u64, resolved: u64) {
        self.oom.found(kernel_cgroup, resolved);
    }

    /// Reads the maps and produces the report for the time since the last call.
    pub fn collect(&mut self, probes: &Probes, is_final: bool) -> Result<Report, ProbeError> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last);
        self.last = now;
        let ebpf = probes.ebpf();
        let rq = self.runqueue.collect(ebpf, elapsed)?;
        let retransmits = self.tcp.collect(ebpf)?;
        let (oom_kills, oom_lost) = self.oom.collect(ebpf)?;
        let io = self.iowait.collect(ebpf)?;
        let disks = self.block.collect(ebpf)?;
        let throttled = self.throttle.collect(ebpf)?;
        let reclaim_stalls = self.reclaim.collect(ebpf)?;

        let mut cgroups: BTreeMap<u64, CgroupReport> = BTreeMap::new();
        fn entry(cgroups: &mut BTreeMap<u64, CgroupReport>, id: u64) -> &mut CgroupReport {
            cgroups.entry(id).or_insert_with(|| CgroupReport::new(id))
        }
        for (id, figures) in rq.cgroups {
            entry(&mut cgroups, id).runqueue = figures;
        }
        // Who ran while each cgroup waited: the culprits' caused wait, and each victim's
        // culprits (labelled once names are known, below).
        let mut culprits_of: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
        for &(key, ns) in &rq.caused {
            if !matches!(key.culprit, CULPRIT_IDLE | CULPRIT_UNSEEN) {
                entry(&mut cgroups, key.culprit).runqueue.caused_ns += ns;
            }
            culprits_of
                .entry(key.victim)
                .or_default()
                .push((key.culprit, ns));
        }
        let mut node = NodeTotals::default();
        for (id, figures) in retransmits {
            let c = entry(&mut cgroups, id);
            c.tcp_retransmits = figures.retransmits;
            c.tcp_retransmit_failures = figures.failures;
            node.tcp_retransmits += c.retransmits();
        }
        for (id, kills) in oom_kills {
            entry(&mut cgroups, id).oom_kills = kills;
            node.oom_kills += kills;
        }
        for (id, ns) in io.cgroups {
            entry(&mut cgroups, id).iowait_ns = ns;
        }
        for (id, t) in throttled.throttling {
            entry(&mut cgroups, id).throttling = Some(t);
        }
        for (id, ns) in throttled.local_ns {
            entry(&mut cgroups, id).throttled_local_ns = Some(ns);
        }
        for (id, stalls) in reclaim_stalls {
            entry(&mut cgroups, id).reclaim_stalls = Some(stalls);
        }
        let mut cpus = rq.cpus;
        for c in &mut cpus {
            let i = c.cpu as usize;
            c.iowait_ns = io.cpu_ns.get(i).copied().unwrap_or(0);
            c.proc_stat_iowait_ns = io.proc_stat_ns.get(i).copied().unwrap_or(0);
        }
        let mut kernel_errors = rq.errors;
        kernel_errors.extend(oom_lost);
        kernel_errors.extend(self.throttle.errors(ebpf)?);
        let mut ids: Vec<u64> = cgroups.keys().copied().collect();
        // Culprits are named too, though they need not be in the report.
        ids.extend(
            culprits_of
                .values()
                .flatten()
                .map(|&(culprit, _)| culprit)
                .filter(|c| !matches!(*c, CULPRIT_IDLE | CULPRIT_UNSEEN)),
        );
        ids.sort_unstable();
        ids.dedup();
        self.names.refresh_if_unknown(&ids);
        self.identities.forget(self.names.ids());
        if let Some(files) = &mut self.cgroup_files {
            // A pod's own cgroup holds no task, so no probe names it; Kubernetes puts the
            // pod's limits there, so its stall time and memory events are read beside its
            // containers'.
            let mut read_ids: BTreeSet<u64> = ids.iter().copied().collect();
            for &id in &ids {
                if let Some(path) = self.names.name(id)
                    && self.identities.resolve(id, path).kind == crate::identity::Kind::PodContainer
                    && let Some((parent, _)) = path.rsplit_once('/')
                    && let Some(pod) = self.names.id_of(parent)
                {
                    read_ids.insert(pod);
                }
            }
            let names = &self.names;
            let named = || {
                read_ids
                    .iter()
                    .filter_map(|&id| Some((id, names.name(id)?)))
            };
            let alive = |id| names.name(id).is_some();
            let stalls = files.pressure.collect(named(), alive);
            for (id, p) in stalls.cgroups {
                entry(&mut cgroups, id).pressure = Some(p);
            }
            for (id, e) in files.memory_events.collect(named(), alive) {
                entry(&mut cgroups, id).memory_events = Some(e);
            }
            node.pressure = stalls.node;
        }
        let mut cgroups: Vec<CgroupReport> = cgroups
            .into_values()
            .map(|mut c| {
                c.name = self.names.name(c.cgroup_id).map(str::to_owned);
                if let Some(path) = &c.name {
                    c.identity = self.identities.resolve(c.cgroup_id, path).clone();
                }
                if let Some(parts) = culprits_of.remove(&c.cgroup_id) {
                    let named = parts
                        .into_iter()
                        .map(|(id, wait_ns)| {
                            culprit(&self.names, &mut self.identities, id, wait_ns)
                        })
                        .collect();
                    c.runqueue.culprits = rank_culprits(named);
                }
                c
            })
            .collect();
        // Most saturated first: OOM kills, then tasks waiting for CPU, then retransmits.
        cgroups.sort_by(|a, b| {
            b.oom_kills
                .cmp(&a.oom_kills)
                .then(
                    b.runqueue
                        .waiting_tasks
                        .total_cmp(&a.runqueue.waiting_tasks),
                )
                .then(b.retransmits().cmp(&a.retransmits()))
                .then(a.cgroup_id.cmp(&b.cgroup_id))
        });

        // Cap the entities: the most saturated (the order above) stay, the rest are summed.
        let n = cgroups.len();
        let ranked = cgroups
            .into_iter()
            .enumerate()
            .map(|(i, c)| (c.identity.clone(), (n - i, c)))
            .collect();
        let capped = cap_entities(ranked, self.max_entities, |(rank, _)| *rank as f64);
        let cgroups = capped.kept.into_iter().map(|(_, (_, c))| c).collect();
        let other = capped.other.map(|(identity, (_, mut c))| {
            c.cgroup_id = 0;
            c.name = None;
            c.identity = identity;
            c
        });

        Ok(Report {
            kind: "interval",
            is_final,
            time_unix_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            interval_ns: elapsed.as_nanos() as u64,
            cgroups,
            other,
            entities_overflow: capped.overflow,
            cpus,
            disks,
            sources: Sources {
                throttling: throttling_source(probes),
            },
            probes: probes.hook_stats(),
            node,
            kernel_errors,
            maps: map_fills(ebpf),
            map_memory: probes.map_memory.clone(),
        })
    }
}

/// A victim's culprit `id`, labelled as tables label cgroups.
fn culprit(names: &CgroupNames, identities: &mut Resolver, id: u64, wait_ns: u64) -> Culprit {
    let (cgroup_id, label) = match id {
        CULPRIT_IDLE => (0, Culprit::IDLE.to_owned()),
        CULPRIT_UNSEEN => (0, Culprit::UNATTRIBUTED.to_owned()),
        id => {
            let path = names.name(id);
            let unknown = crate::identity::Identity::unknown();
            let identity = match path {
                Some(path) => identities.resolve(id, path),
                None => &unknown,
            };
            (id, crate::identity::table_label(path, identity, id))
        }
    };
    Culprit {
        cgroup_id,
        culprit: label,
        wait_ns,
    }
}

/// The cgroup files read beside the probes' figures (`--cgroup-files on`).
struct CgroupFiles {
    pressure: pressure::Pressure,
    memory_events: pressure::PerCgroup<crate::report::MemoryEvents>,
}

/// How full the hashes of in-flight state are; a map that cannot be read is left out (and
/// logged at debug).
fn map_fills(ebpf: &aya::Ebpf) -> Vec<crate::report::MapFill> {
    use agent_ebpf::{block, iowait::IowaitSince, runqueue};
    let fills = [
        (
            runqueue::MAP_ENQUEUED_AT,
            maps::hash_fill::<u64, runqueue::Enqueued>(ebpf, runqueue::MAP_ENQUEUED_AT),
        ),
        (
            agent_ebpf::iowait::MAP_SINCE,
            maps::hash_fill::<u64, IowaitSince>(ebpf, agent_ebpf::iowait::MAP_SINCE),
        ),
        (
            block::MAP_ISSUED,
            maps::hash_fill::<u64, u64>(ebpf, block::MAP_ISSUED),
        ),
        (
            agent_ebpf::reclaim::MAP_SINCE,
            maps::hash_fill::<u64, u64>(ebpf, agent_ebpf::reclaim::MAP_SINCE),
        ),
    ];
    fills
        .into_iter()
        .filter_map(|(map, fill)| match fill {
            Ok((entries, max_entries)) => Some(crate::report::MapFill {
                map,
                entries,
                max_entries,
            }),
            Err(e) => {
                tracing::debug!("{map}: {e}");
                None
            }
        })
        .collect()
}

/// "cpu.stat", plus the throttle probe's variant when it is attached.
fn throttling_source(probes: &Probes) -> &'static str {
    use crate::probes::{Variant, catalog::THROTTLE};
    let variant = probes
        .hooks
        .iter()
        .find(|h| h.probe == THROTTLE.name && h.attached)
        .and_then(|h| h.variant);
    match variant {
        Some(Variant::Fentry) => "cpu.stat+fentry",
        Some(Variant::Kprobe) => "cpu.stat+kprobe",
        _ => "cpu.stat",
    }
}

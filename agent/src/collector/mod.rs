//! The collection loop's work: read every probe's maps, turn them into the interval's figures
//! (through the pure aggregation core), and name the cgroups.

pub mod runqueue;

use std::{
    collections::BTreeMap,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    cgroups::CgroupNames,
    probes::{ProbeError, Probes},
    report::{CgroupReport, Report},
};

pub struct Collector {
    runqueue: runqueue::Runqueue,
    names: CgroupNames,
    last: Instant,
}

impl Collector {
    /// Starts collecting: the first report covers the time from now.
    pub fn new(probes: &Probes, names: CgroupNames) -> Result<Collector, ProbeError> {
        let mut runqueue = runqueue::Runqueue::default();
        runqueue.baseline(probes.ebpf())?;
        Ok(Collector {
            runqueue,
            names,
            last: Instant::now(),
        })
    }

    /// Reads the maps and produces the report for the time since the last call.
    pub fn collect(&mut self, probes: &Probes, is_final: bool) -> Result<Report, ProbeError> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last);
        self.last = now;
        let rq = self.runqueue.collect(probes.ebpf(), elapsed)?;

        let mut cgroups: BTreeMap<u64, CgroupReport> = BTreeMap::new();
        for (id, figures) in rq.cgroups {
            cgroups.insert(
                id,
                CgroupReport {
                    cgroup_id: id,
                    name: None,
                    runqueue: figures,
                },
            );
        }
        let ids: Vec<u64> = cgroups.keys().copied().collect();
        self.names.refresh_if_unknown(&ids);
        let mut cgroups: Vec<CgroupReport> = cgroups
            .into_values()
            .map(|mut c| {
                c.name = self.names.name(c.cgroup_id).map(str::to_owned);
                c
            })
            .collect();
        cgroups.sort_by(|a, b| {
            b.runqueue
                .waiting_tasks
                .total_cmp(&a.runqueue.waiting_tasks)
                .then(a.cgroup_id.cmp(&b.cgroup_id))
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
            cpus: rq.cpus,
            probes: probes.hook_stats(),
            kernel_errors: rq.errors,
        })
    }
}

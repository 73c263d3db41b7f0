//! Memory reclaim stalls per cgroup, from `RECLAIM_STALLS` (see `agent_ebpf::reclaim`).

use std::collections::BTreeMap;

use agent_ebpf::{hist::Log2Hist, reclaim::MAP_STALLS};
use aya::Ebpf;

use super::maps;
use crate::{core::counters::Snapshot, probes::ProbeError, report::Durations};

#[derive(Debug, Default)]
pub struct Reclaim {
    prev: Snapshot<u64, Log2Hist>,
}

impl Reclaim {
    pub fn baseline(&mut self, ebpf: &Ebpf) -> Result<(), ProbeError> {
        self.prev = read(ebpf)?;
        Ok(())
    }

    /// The interval's stalls per cgroup that had any.
    pub fn collect(&mut self, ebpf: &Ebpf) -> Result<BTreeMap<u64, Durations>, ProbeError> {
        let cur = read(ebpf)?;
        let out = cur
            .delta_since(&self.prev)
            .into_iter()
            .map(|(id, h)| (id, Durations::from_hist(h)))
            .collect();
        self.prev = cur;
        Ok(out)
    }
}

/// The histograms so far (the map exists whether or not the probe attached).
fn read(ebpf: &Ebpf) -> Result<Snapshot<u64, Log2Hist>, ProbeError> {
    maps::hash(ebpf, MAP_STALLS)
}

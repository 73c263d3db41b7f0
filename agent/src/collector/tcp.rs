//! TCP retransmit collection: deltas of `TCP_RETRANSMITS` per (cgroup, family, kind).

use std::collections::BTreeMap;

use agent_ebpf::tcp::{AF_INET, AF_INET6, KIND_SYNACK, MAP_RETRANSMITS, TcpKey};
use aya::Ebpf;

use super::maps;
use crate::{core::counters::Snapshot, probes::ProbeError, report::TcpRetransmits};

#[derive(Debug, Default)]
pub struct Tcp {
    prev: Snapshot<TcpKey, u64>,
}

impl Tcp {
    pub fn baseline(&mut self, ebpf: &Ebpf) -> Result<(), ProbeError> {
        self.prev = maps::per_cpu_hash(ebpf, MAP_RETRANSMITS)?;
        Ok(())
    }

    /// Retransmits per cgroup in the interval.
    pub fn collect(
        &mut self,
        ebpf: &Ebpf,
    ) -> Result<BTreeMap<u64, Vec<TcpRetransmits>>, ProbeError> {
        let cur = maps::per_cpu_hash(ebpf, MAP_RETRANSMITS)?;
        let per_cgroup = summarize(&cur, &self.prev);
        self.prev = cur;
        Ok(per_cgroup)
    }
}

pub fn family_name(family: u16) -> &'static str {
    match family {
        AF_INET => "ipv4",
        AF_INET6 => "ipv6",
        _ => "unknown",
    }
}

pub fn kind_name(kind: u8) -> &'static str {
    if kind == KIND_SYNACK {
        "synack"
    } else {
        "data"
    }
}

/// Groups the interval's deltas by cgroup, sorted by family then kind (pure).
pub fn summarize(
    cur: &Snapshot<TcpKey, u64>,
    prev: &Snapshot<TcpKey, u64>,
) -> BTreeMap<u64, Vec<TcpRetransmits>> {
    let mut per_cgroup: BTreeMap<u64, Vec<TcpRetransmits>> = BTreeMap::new();
    let mut deltas: Vec<(TcpKey, u64)> = cur.delta_since(prev).into_iter().collect();
    deltas.sort_by_key(|(k, _)| (k.cgroup, k.family, k.kind));
    for (key, count) in deltas {
        per_cgroup
            .entry(key.cgroup)
            .or_default()
            .push(TcpRetransmits {
                family: family_name(key.family),
                kind: kind_name(key.kind),
                count,
            });
    }
    per_cgroup
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_ebpf::tcp::KIND_DATA;

    fn key(cgroup: u64, family: u16, kind: u8) -> TcpKey {
        TcpKey {
            cgroup,
            family,
            kind,
            _pad: [0; 5],
        }
    }

    #[test]
    fn groups_by_cgroup_family_and_kind() {
        let prev = Snapshot::from_per_cpu([(key(5, AF_INET, KIND_DATA), vec![3u64, 1])]);
        let cur = Snapshot::from_per_cpu([
            (key(5, AF_INET, KIND_DATA), vec![5u64, 2]),
            (key(5, AF_INET6, KIND_SYNACK), vec![0, 1]),
            (key(9, AF_INET6, KIND_DATA), vec![4, 0]),
        ]);
        let s = summarize(&cur, &prev);
        let five: Vec<(&str, &str, u64)> =
            s[&5].iter().map(|r| (r.family, r.kind, r.count)).collect();
        assert_eq!(five, vec![("ipv4", "data", 3), ("ipv6", "synack", 1)]);
        assert_eq!(s[&9][0].count, 4);
        assert_eq!(s[&9][0].family, "ipv6");
    }
}

//! TCP retransmit collection: deltas of `TCP_RETRANSMITS` per (cgroup, family, kind).

use std::collections::BTreeMap;

use agent_ebpf::tcp::{AF_INET, AF_INET6, KIND_SYNACK, MAP_RETRANSMITS, TcpKey};
use aya::Ebpf;

use super::maps;
use crate::{core::counters::Snapshot, probes::ProbeError, report::TcpRetransmits};

#[derive(Debug, Default)]
pub struct Tcp {
    prev: Snapshot<TcpKey, u64>,
    /// Where every retransmit goes when sockets' cgroups cannot be named: the kernel keeps
    /// only a socket's unified-hierarchy cgroup, which means nothing when figures are keyed by
    /// the v1 cpu hierarchy, so they all land on its root.
    all_to: Option<u64>,
}

impl Tcp {
    /// `all_to`: see the field.
    pub fn new(all_to: Option<u64>) -> Tcp {
        if all_to.is_some() {
            tracing::info!(
                "TCP retransmits are reported on the root cgroup: the kernel records a socket's \
                 cgroup only in the unified hierarchy, and cgroups are named from the v1 cpu one"
            );
        }
        Tcp {
            prev: Snapshot::default(),
            all_to,
        }
    }

    pub fn baseline(&mut self, ebpf: &Ebpf) -> Result<(), ProbeError> {
        self.prev = self.read(ebpf)?;
        Ok(())
    }

    /// Retransmits per cgroup in the interval.
    pub fn collect(
        &mut self,
        ebpf: &Ebpf,
    ) -> Result<BTreeMap<u64, Vec<TcpRetransmits>>, ProbeError> {
        let cur = self.read(ebpf)?;
        let per_cgroup = summarize(&cur, &self.prev);
        self.prev = cur;
        Ok(per_cgroup)
    }

    fn read(&self, ebpf: &Ebpf) -> Result<Snapshot<TcpKey, u64>, ProbeError> {
        let raw: Snapshot<TcpKey, u64> = maps::per_cpu_hash(ebpf, MAP_RETRANSMITS)?;
        let Some(to) = self.all_to else {
            return Ok(raw);
        };
        let mut values = std::collections::HashMap::new();
        for (key, n) in raw.values {
            *values.entry(TcpKey { cgroup: to, ..key }).or_insert(0) += n;
        }
        Ok(Snapshot { values })
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

//! TCP retransmit collection: deltas of `TCP_RETRANSMITS` per (cgroup, family, kind, errno),
//! split into the segments the kernel counts as retransmitted (`RetransSegs`) and the
//! attempts it does not count, which failed before anything was sent.

use std::collections::BTreeMap;

use agent_ebpf::tcp::{
    AF_INET, AF_INET6, CAUSE_FAST, CAUSE_OTHER, CAUSE_RTO, CAUSE_TLP, KIND_SYN, KIND_SYNACK,
    MAP_RETRANSMITS, TcpKey,
};
use aya::Ebpf;

use super::maps;
use crate::{
    core::counters::Snapshot,
    probes::ProbeError,
    report::{TcpRetransmitFailures, TcpRetransmits},
};

/// One cgroup's TCP figures in an interval.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TcpFigures {
    pub retransmits: Vec<TcpRetransmits>,
    pub failures: Vec<TcpRetransmitFailures>,
}

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

    /// Retransmits and failed attempts per cgroup in the interval.
    pub fn collect(&mut self, ebpf: &Ebpf) -> Result<BTreeMap<u64, TcpFigures>, ProbeError> {
        let cur = self.read(ebpf)?;
        let per_cgroup = summarize(&cur, &self.prev);
        self.prev = cur;
        Ok(per_cgroup)
    }

    fn read(&self, ebpf: &Ebpf) -> Result<Snapshot<TcpKey, u64>, ProbeError> {
        let raw: Snapshot<TcpKey, u64> = maps::hash(ebpf, MAP_RETRANSMITS)?;
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
    match kind {
        KIND_SYNACK => "synack",
        KIND_SYN => "syn",
        _ => "data",
    }
}

/// The name of a retransmit's cause (`agent_ebpf::tcp::cause`).
pub fn cause_name(cause: u8) -> &'static str {
    match cause {
        CAUSE_RTO => "rto",
        CAUSE_FAST => "fast",
        CAUSE_TLP => "tlp",
        CAUSE_OTHER => "other",
        _ => "unknown",
    }
}

/// Errnos with which `__tcp_retransmit_skb` returns before it counts `RetransSegs` (kernels
/// 6.17 and later fire the tracepoint for these too; older ones fire it only for a segment
/// sent): the original still in the host's queues (`EBUSY`), beyond the peer's window
/// (`EAGAIN`), no memory to split or trim it (`ENOMEM`), no route (`EHOSTUNREACH`), already
/// acknowledged (`EINVAL`). An error from the send itself (`EPERM` from a netfilter drop on
/// output, `ENOBUFS` from a full queue) comes after the count: the kernel counts that segment
/// as retransmitted, and so does nodesat.
const NOT_SENT: [nix::errno::Errno; 5] = {
    use nix::errno::Errno::*;
    [EBUSY, EAGAIN, ENOMEM, EHOSTUNREACH, EINVAL]
};

/// Whether the kernel counted this event in `RetransSegs` (errno 0: it was sent).
pub fn counted_by_kernel(errno: u8) -> bool {
    errno == 0 || !NOT_SENT.contains(&nix::errno::Errno::from_raw(i32::from(errno)))
}

/// The name of an errno (`EBUSY`), or `errno <n>` for one this system does not name.
pub fn errno_name(errno: u8) -> &'static str {
    match nix::errno::Errno::from_raw(i32::from(errno)) {
        nix::errno::Errno::EBUSY => "EBUSY",
        nix::errno::Errno::EAGAIN => "EAGAIN",
        nix::errno::Errno::ENOMEM => "ENOMEM",
        nix::errno::Errno::EHOSTUNREACH => "EHOSTUNREACH",
        nix::errno::Errno::EINVAL => "EINVAL",
        _ => "other",
    }
}

/// Groups the interval's deltas by cgroup, sorted by family then kind (then error) (pure).
pub fn summarize(
    cur: &Snapshot<TcpKey, u64>,
    prev: &Snapshot<TcpKey, u64>,
) -> BTreeMap<u64, TcpFigures> {
    let mut per_cgroup: BTreeMap<u64, TcpFigures> = BTreeMap::new();
    let mut deltas: Vec<(TcpKey, u64)> = cur.delta_since(prev).into_iter().collect();
    deltas.sort_by_key(|(k, _)| (k.cgroup, k.family, k.kind, k.cause, k.errno));
    for (key, count) in deltas {
        let figures = per_cgroup.entry(key.cgroup).or_default();
        let family = family_name(key.family);
        if counted_by_kernel(key.errno) {
            let (kind, cause) = (kind_name(key.kind), cause_name(key.cause));
            match figures
                .retransmits
                .iter_mut()
                .find(|r| (r.family, r.kind, r.cause) == (family, kind, cause))
            {
                Some(r) => r.count += count,
                None => figures.retransmits.push(TcpRetransmits {
                    family,
                    kind,
                    cause,
                    count,
                }),
            }
        } else {
            let error = errno_name(key.errno);
            match figures
                .failures
                .iter_mut()
                .find(|r| (r.family, r.error) == (family, error))
            {
                Some(r) => r.count += count,
                None => figures.failures.push(TcpRetransmitFailures {
                    family,
                    error,
                    count,
                }),
            }
        }
    }
    per_cgroup
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_ebpf::tcp::KIND_DATA;

    fn key(cgroup: u64, family: u16, kind: u8) -> TcpKey {
        failed(cgroup, family, kind, 0)
    }

    fn failed(cgroup: u64, family: u16, kind: u8, errno: u8) -> TcpKey {
        TcpKey {
            cgroup,
            family,
            kind,
            errno,
            cause: agent_ebpf::tcp::CAUSE_UNKNOWN,
            _pad: [0; 3],
        }
    }

    fn caused(cgroup: u64, kind: u8, cause: u8) -> TcpKey {
        TcpKey {
            cause,
            ..key(cgroup, AF_INET, kind)
        }
    }

    #[test]
    fn the_cause_follows_the_sockets_state_and_timer() {
        use agent_ebpf::tcp::{CAUSE_UNKNOWN, ICSK_TIME_LOSS_PROBE, cause};
        // Loss (4) and Recovery (3) decide, whatever the timer is armed for.
        assert_eq!(cause(Some(4), Some(1)), CAUSE_RTO);
        assert_eq!(cause(Some(4), Some(ICSK_TIME_LOSS_PROBE)), CAUSE_RTO);
        assert_eq!(cause(Some(3), Some(ICSK_TIME_LOSS_PROBE)), CAUSE_FAST);
        // Open (0) with the loss-probe timer firing: a tail loss probe.
        assert_eq!(cause(Some(0), Some(ICSK_TIME_LOSS_PROBE)), CAUSE_TLP);
        assert_eq!(cause(Some(1), Some(1)), CAUSE_OTHER);
        assert_eq!(cause(Some(0), None), CAUSE_UNKNOWN);
        assert_eq!(cause(None, Some(ICSK_TIME_LOSS_PROBE)), CAUSE_UNKNOWN);
    }

    #[test]
    fn retransmits_are_split_by_cause() {
        let cur = Snapshot::from_iter([
            (caused(5, KIND_DATA, CAUSE_RTO), 3u64),
            (caused(5, KIND_DATA, CAUSE_FAST), 4),
            (caused(5, KIND_DATA, CAUSE_TLP), 1),
            (caused(5, KIND_SYN, CAUSE_RTO), 1),
        ]);
        let s = summarize(&cur, &Snapshot::default());
        let got: Vec<(&str, &str, u64)> = s[&5]
            .retransmits
            .iter()
            .map(|r| (r.kind, r.cause, r.count))
            .collect();
        assert_eq!(
            got,
            vec![
                ("data", "rto", 3),
                ("data", "fast", 4),
                ("data", "tlp", 1),
                ("syn", "rto", 1)
            ]
        );
    }

    fn triples(r: &[TcpRetransmits]) -> Vec<(&str, &str, u64)> {
        r.iter().map(|r| (r.family, r.kind, r.count)).collect()
    }

    #[test]
    fn groups_by_cgroup_family_and_kind() {
        let prev = Snapshot::from_iter([(key(5, AF_INET, KIND_DATA), 4u64)]);
        let cur = Snapshot::from_iter([
            (key(5, AF_INET, KIND_DATA), 7u64),
            (key(5, AF_INET6, KIND_SYNACK), 1),
            (key(9, AF_INET6, KIND_DATA), 4),
            (key(9, AF_INET6, KIND_SYN), 2),
        ]);
        let s = summarize(&cur, &prev);
        assert_eq!(
            triples(&s[&5].retransmits),
            vec![("ipv4", "data", 3), ("ipv6", "synack", 1)]
        );
        assert_eq!(
            triples(&s[&9].retransmits),
            vec![("ipv6", "data", 4), ("ipv6", "syn", 2)]
        );
        assert!(s[&5].failures.is_empty());
    }

    #[test]
    fn attempts_the_kernel_did_not_count_are_failures_apart() {
        use nix::errno::Errno;
        let e = |x: Errno| x as i32 as u8;
        let cur = Snapshot::from_iter([
            (key(5, AF_INET, KIND_DATA), 7u64),
            // Returned before RetransSegs: failures, by error.
            (failed(5, AF_INET, KIND_DATA, e(Errno::EBUSY)), 4),
            (failed(5, AF_INET, KIND_SYN, e(Errno::EBUSY)), 1),
            (failed(5, AF_INET, KIND_DATA, e(Errno::EAGAIN)), 2),
            (failed(5, AF_INET, KIND_DATA, e(Errno::ENOMEM)), 1),
            (failed(5, AF_INET, KIND_DATA, e(Errno::EHOSTUNREACH)), 1),
            // Failed in the send, after the kernel counted it: a retransmit.
            (failed(5, AF_INET, KIND_DATA, e(Errno::EPERM)), 2),
            (failed(5, AF_INET, KIND_DATA, e(Errno::ENOBUFS)), 1),
        ]);
        let s = summarize(&cur, &Snapshot::default());
        assert_eq!(triples(&s[&5].retransmits), vec![("ipv4", "data", 10)]);
        let failures: Vec<(&str, &str, u64)> = s[&5]
            .failures
            .iter()
            .map(|r| (r.family, r.error, r.count))
            .collect();
        assert_eq!(
            failures,
            vec![
                ("ipv4", "EAGAIN", 2),
                ("ipv4", "ENOMEM", 1),
                ("ipv4", "EBUSY", 5),
                ("ipv4", "EHOSTUNREACH", 1),
            ]
        );
    }
}

//! What one collection produces: per-cgroup and per-CPU figures, and the probes' state. The
//! same structure feeds every output (table, JSON lines, and later OTLP).

use serde::Serialize;

use crate::{
    identity::{Identity, Merge},
    probes::HookStatus,
};

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always "interval".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// True for the last report, made at shutdown.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Wall-clock time of the collection.
    pub time_unix_ns: u64,
    /// Measured time since the previous collection (or since the probes attached).
    pub interval_ns: u64,
    /// Cgroups with activity in the interval, most saturated first, at most `max_entities`.
    pub cgroups: Vec<CgroupReport>,
    /// The cgroups beyond `max_entities`, summed (quantiles: the largest); `None` if none.
    pub other: Option<CgroupReport>,
    /// How many cgroups were summed into `other`.
    pub entities_overflow: usize,
    pub cpus: Vec<CpuReport>,
    /// Block request latency per disk and direction.
    pub disks: Vec<DiskReport>,
    /// Where signals with more than one possible source came from in this interval.
    pub sources: Sources,
    pub probes: Vec<HookStatus>,
    /// Node-wide totals for the interval.
    pub node: NodeTotals,
    /// Kernel-side error counters in the interval (map full, unexpected state), by name.
    pub kernel_errors: Vec<KernelError>,
    /// How full the programs' hashes of in-flight state are (tasks waiting, requests in
    /// flight, run queues throttled), at the collection.
    pub maps: Vec<MapFill>,
    /// Every map's memory, measured once the object was loaded (it does not change after).
    pub map_memory: Vec<MapMemory>,
}

/// The memory one of the programs' maps takes, as the kernel accounts it (`memlock` of its
/// fdinfo; charged to the agent's memory cgroup on kernels 5.11 and later).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapMemory {
    pub map: String,
    pub bytes: u64,
    pub max_entries: u32,
}

/// One hash of in-flight state: entries now, and its capacity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u32,
    pub max_entries: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct CgroupReport {
    /// cgroup v2 id (the inode number of the cgroup's directory).
    pub cgroup_id: u64,
    /// Path relative to the cgroup v2 root; `None` when the cgroup is gone or unknown.
    pub name: Option<String>,
    /// The workload: pod and container, container, systemd unit, or cgroup.
    #[serde(flatten)]
    pub identity: Identity,
    pub runqueue: RunqueueFigures,
    /// TCP retransmits by sockets this cgroup owns, by address family and kind: the segments
    /// the kernel counts in `RetransSegs`.
    pub tcp_retransmits: Vec<TcpRetransmits>,
    /// Retransmit attempts of its sockets that failed before anything was sent (not in
    /// `RetransSegs`), by family and error; seen on kernels 6.17 and later only.
    pub tcp_retransmit_failures: Vec<TcpRetransmitFailures>,
    /// Processes of this cgroup killed by the OOM killer.
    pub oom_kills: u64,
    /// Time its tasks spent blocked waiting for I/O, ns.
    pub iowait_ns: u64,
    /// CFS throttling, for cgroups with a CPU limit (`None` without one).
    pub throttling: Option<Throttling>,
    /// Time its own tasks were throttled, whichever level's limit did it (cgroup v2
    /// `cpu.stat.local` `throttled_usec`, kernels 6.8 and later), ns: for cgroups with a CPU
    /// limit and those under one (a container in a limited pod); `None` elsewhere.
    pub throttled_local_ns: Option<u64>,
    /// Its pressure stall information (cgroup v2 `cpu.pressure`, `memory.pressure`,
    /// `io.pressure`); `None` on v1-keyed nodes and kernels without PSI.
    pub pressure: Option<PressureStalls>,
    /// Its memory controller's events (v2 `memory.events`), where it has the file.
    pub memory_events: Option<MemoryEvents>,
    /// Time its tasks spent reclaiming memory before an allocation could go on (direct and
    /// memcg reclaim, the `reclaim` probe): `None` when none ended in the interval.
    pub reclaim_stalls: Option<Durations>,
}

/// CFS bandwidth throttling of one cgroup over one interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Throttling {
    /// Enforcement periods that elapsed with runnable tasks.
    pub periods: u64,
    /// Periods in which the cgroup hit its quota and was throttled.
    pub throttled_periods: u64,
    /// Total time its run queues spent throttled, ns.
    pub throttled_ns: u64,
    /// throttled_periods ÷ periods, in percent.
    pub throttled_pct: f64,
    /// Individual throttle durations (each time one of its per-CPU run queues was throttled
    /// until unthrottled), from the throttle probe; `None` where it is not attached.
    pub durations: Option<Durations>,
}

/// A log2 histogram of durations (throttles, reclaim stalls) over one interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Durations {
    pub count: u64,
    pub sum_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// The 32 log2 slots (slot s: (2^(s-1), 2^s] ns).
    #[serde(serialize_with = "slots")]
    pub histogram: agent_ebpf::hist::Log2Hist,
}

/// Block request latency of one disk and direction over one interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiskReport {
    /// "major:minor".
    pub device: String,
    /// The kernel's name for it ("sda", "loop0"), if known.
    pub name: Option<String>,
    /// "read", "write" or "other" (flush, discard, ...).
    pub op: &'static str,
    /// Requests completed.
    pub requests: u64,
    pub latency_sum_ns: u64,
    pub latency_p50_ns: u64,
    pub latency_p99_ns: u64,
    pub latency_max_ns: u64,
    /// The log2 histogram itself (slot s counts latencies in (2^(s-1), 2^s] ns).
    #[serde(serialize_with = "slots")]
    pub histogram: agent_ebpf::hist::Log2Hist,
}

fn slots<S: serde::Serializer>(h: &agent_ebpf::hist::Log2Hist, s: S) -> Result<S::Ok, S::Error> {
    h.slots.serialize(s)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sources {
    /// "cpu.stat" (the kernel's own accounting), or "cpu.stat+fentry" / "cpu.stat+kprobe"
    /// when the throttle probe adds individual durations.
    pub throttling: &'static str,
}

impl CgroupReport {
    pub fn new(cgroup_id: u64) -> CgroupReport {
        CgroupReport {
            cgroup_id,
            name: None,
            identity: Identity::unknown(),
            runqueue: RunqueueFigures::default(),
            tcp_retransmits: Vec::new(),
            tcp_retransmit_failures: Vec::new(),
            oom_kills: 0,
            iowait_ns: 0,
            throttling: None,
            throttled_local_ns: None,
            pressure: None,
            memory_events: None,
            reclaim_stalls: None,
        }
    }

    pub fn retransmits(&self) -> u64 {
        self.tcp_retransmits.iter().map(|r| r.count).sum()
    }
}

impl Merge for CgroupReport {
    /// Sums the figures (quantiles and maxima: the larger), for the "other" entity.
    fn merge(&mut self, o: CgroupReport) {
        let (a, b) = (&mut self.runqueue, &o.runqueue);
        a.events += b.events;
        a.wait_ns += b.wait_ns;
        a.waiting_tasks += b.waiting_tasks;
        a.latency_p50_ns = a.latency_p50_ns.max(b.latency_p50_ns);
        a.latency_p99_ns = a.latency_p99_ns.max(b.latency_p99_ns);
        a.latency_max_ns = a.latency_max_ns.max(b.latency_max_ns);
        crate::core::counters::Counter::merge(&mut a.histogram, &b.histogram);
        a.caused_ns += b.caused_ns;
        let mut culprits = std::mem::take(&mut a.culprits);
        culprits.extend(o.runqueue.culprits);
        a.culprits = rank_culprits(culprits);
        for r in o.tcp_retransmits {
            match self
                .tcp_retransmits
                .iter_mut()
                .find(|m| (m.family, m.kind, m.cause) == (r.family, r.kind, r.cause))
            {
                Some(m) => m.count += r.count,
                None => self.tcp_retransmits.push(r),
            }
        }
        for r in o.tcp_retransmit_failures {
            match self
                .tcp_retransmit_failures
                .iter_mut()
                .find(|m| (m.family, m.error) == (r.family, r.error))
            {
                Some(m) => m.count += r.count,
                None => self.tcp_retransmit_failures.push(r),
            }
        }
        self.oom_kills += o.oom_kills;
        self.iowait_ns += o.iowait_ns;
        self.throttled_local_ns =
            merge_option(self.throttled_local_ns, o.throttled_local_ns, |a, b| a + b);
        self.reclaim_stalls = merge_option(
            self.reclaim_stalls.take(),
            o.reclaim_stalls,
            merge_durations,
        );
        self.memory_events = merge_option(self.memory_events, o.memory_events, merge_counter);
        self.pressure = merge_option(self.pressure, o.pressure, merge_counter);
        self.throttling = merge_option(self.throttling.take(), o.throttling, |x, y| {
            let periods = x.periods + y.periods;
            let throttled_periods = x.throttled_periods + y.throttled_periods;
            Throttling {
                periods,
                throttled_periods,
                throttled_ns: x.throttled_ns + y.throttled_ns,
                throttled_pct: if periods == 0 {
                    0.0
                } else {
                    100.0 * throttled_periods as f64 / periods as f64
                },
                durations: merge_option(x.durations, y.durations, merge_durations),
            }
        });
    }
}

/// Two optional figures summed: `both` where both are present, else whichever is.
fn merge_option<T>(a: Option<T>, b: Option<T>, both: impl FnOnce(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(both(a, b)),
        (a, b) => a.or(b),
    }
}

/// Two sets of cumulative counters summed.
fn merge_counter<T: crate::core::counters::Counter>(mut a: T, b: T) -> T {
    a.merge(&b);
    a
}

/// Two duration histograms summed, their statistics recomputed.
fn merge_durations(a: Durations, b: Durations) -> Durations {
    Durations::from_hist(merge_counter(a.histogram, b.histogram))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TcpRetransmits {
    /// "ipv4", "ipv6" (or "unknown").
    pub family: &'static str,
    /// "data" (tcp_retransmit_skb), "syn" (tcp_retransmit_skb of a client's SYN, the socket in
    /// SYN_SENT) or "synack" (tcp_retransmit_synack, on the listener).
    pub kind: &'static str,
    /// Why the kernel retransmitted, from the socket's state at the event: "rto" (after a
    /// retransmission timeout), "fast" (fast retransmit / recovery), "tlp" (a tail loss
    /// probe), "other", or "unknown" (the state was unreadable; always for "synack").
    pub cause: &'static str,
    pub count: u64,
}

/// Retransmit attempts that failed before anything was sent, which the kernel does not count
/// as retransmitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TcpRetransmitFailures {
    /// "ipv4", "ipv6" (or "unknown").
    pub family: &'static str,
    /// The error: "EBUSY" (the original still in the host's queues), "EAGAIN" (beyond the
    /// peer's window), "ENOMEM", "EHOSTUNREACH" (no route), "EINVAL" (already acknowledged).
    pub error: &'static str,
    pub count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeTotals {
    pub tcp_retransmits: u64,
    pub oom_kills: u64,
    /// The node's stall time (`/proc/pressure/*`); `None` where the kernel has no PSI.
    pub pressure: Option<PressureStalls>,
}

/// Stall time of one resource over one interval (growth of a PSI file's `total=` counters), ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stall {
    /// Time at least one of the tasks was stalled on the resource.
    pub some_ns: u64,
    /// Time all of the non-idle tasks were stalled at once (0 where the kernel has no `full`
    /// line: the node's cpu before 5.13).
    pub full_ns: u64,
}

/// The memory controller's events of a cgroup over one interval (growth of v2
/// `memory.events`, which counts the cgroup and its descendants).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEvents {
    /// Times it went over `memory.high` (throttled into reclaim).
    pub high: u64,
    /// Times an allocation hit `memory.max` (reclaim, then OOM if that failed).
    pub max: u64,
    /// Times it was out of memory (`memory.max` reached, reclaim failed).
    pub oom: u64,
    /// Processes the OOM killer killed in it.
    pub oom_kill: u64,
    /// Group OOM kills (`memory.oom.group`), kernels 5.13 and later.
    pub oom_group_kill: u64,
}

/// Pressure stall information of a cgroup or the node over one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PressureStalls {
    pub cpu: Stall,
    pub memory: Stall,
    pub io: Stall,
}

/// Run-queue figures of one cgroup over one interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunqueueFigures {
    /// Number of waits that ended (tasks that got a CPU after waiting).
    pub events: u64,
    /// Total time its tasks waited, ns.
    pub wait_ns: u64,
    /// Average number of its tasks waiting for a CPU: wait time ÷ interval.
    pub waiting_tasks: f64,
    pub latency_p50_ns: u64,
    pub latency_p99_ns: u64,
    /// Upper bound of the highest log2 bucket reached.
    pub latency_max_ns: u64,
    /// The latency histogram itself (exported over OTLP; left out of the JSON lines).
    #[serde(skip)]
    pub histogram: agent_ebpf::hist::Log2Hist,
    /// Run-queue wait this cgroup caused, ns: the wait of every task (its own included) that
    /// waited on a CPU while one of this cgroup's tasks ran there.
    pub caused_ns: u64,
    /// Who ran on the CPU while this cgroup's tasks waited (`wait_ns` split by runner), the
    /// largest first: the top [`CULPRITS_TOP`] cgroups, then `idle`, `unattributed` and
    /// `other` (the rest, summed) where non-zero.
    pub culprits: Vec<Culprit>,
}

/// How many culprit cgroups a victim's list names before the rest is summed as `other`.
pub const CULPRITS_TOP: usize = 3;

/// One culprit of a cgroup's run-queue wait.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Culprit {
    /// The culprit's cgroup id; 0 for `idle`, `unattributed` and `other`.
    pub cgroup_id: u64,
    /// The culprit as tables label it (namespace/pod/container, unit, cgroup path), or
    /// `idle` (the CPU was idle: the wake-up's own latency), `unattributed` (not covered by the
    /// runs the CPU remembers, or spent on another CPU before a migration) or `other` (the
    /// culprits beyond the top ones, summed).
    pub culprit: String,
    /// The part of the victim's wait this culprit ran for, ns.
    pub wait_ns: u64,
}

impl Culprit {
    pub const IDLE: &'static str = "idle";
    pub const UNATTRIBUTED: &'static str = "unattributed";
    pub const OTHER: &'static str = "other";
}

/// The top [`CULPRITS_TOP`] named culprits, largest first, then `idle` and `unattributed`,
/// then the rest summed as `other` (pure; parts summing to the input's).
pub fn rank_culprits(mut all: Vec<Culprit>) -> Vec<Culprit> {
    // Merge duplicates (the "other" entity sums several victims' lists).
    all.sort_by(|a, b| (a.cgroup_id, &a.culprit).cmp(&(b.cgroup_id, &b.culprit)));
    let mut merged: Vec<Culprit> = Vec::with_capacity(all.len());
    for c in all {
        match merged.last_mut() {
            Some(m) if m.cgroup_id == c.cgroup_id && m.culprit == c.culprit => {
                m.wait_ns += c.wait_ns
            }
            _ => merged.push(c),
        }
    }
    let special = |c: &Culprit| c.cgroup_id == 0;
    let (mut named, rest): (Vec<Culprit>, Vec<Culprit>) =
        merged.into_iter().partition(|c| !special(c));
    named.sort_by(|a, b| {
        b.wait_ns
            .cmp(&a.wait_ns)
            .then(a.cgroup_id.cmp(&b.cgroup_id))
    });
    let beyond: u64 = named.iter().skip(CULPRITS_TOP).map(|c| c.wait_ns).sum();
    named.truncate(CULPRITS_TOP);
    let mut other = 0;
    for c in rest {
        if c.culprit == Culprit::OTHER {
            other += c.wait_ns;
        } else {
            named.push(c);
        }
    }
    other += beyond;
    if other > 0 {
        named.push(Culprit {
            cgroup_id: 0,
            culprit: Culprit::OTHER.into(),
            wait_ns: other,
        });
    }
    named
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuReport {
    pub cpu: u32,
    /// Total time tasks waited on this CPU's run queue, ns.
    pub runqueue_wait_ns: u64,
    /// Time-averaged number of tasks waiting on this CPU's run queue (not counting the one
    /// running): wait time ÷ interval.
    pub runqueue_length: f64,
    /// Time tasks that blocked on this CPU spent in iowait, ns (measured by the programs).
    pub iowait_ns: u64,
    /// The kernel's iowait for this CPU from /proc/stat, ns (idle time while its tasks waited
    /// for I/O; 10 ms resolution): the cross-check.
    pub proc_stat_iowait_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelError {
    pub probe: &'static str,
    pub error: &'static str,
    pub count: u64,
}

impl Default for RunqueueFigures {
    fn default() -> Self {
        RunqueueFigures {
            events: 0,
            wait_ns: 0,
            waiting_tasks: 0.0,
            latency_p50_ns: 0,
            latency_p99_ns: 0,
            latency_max_ns: 0,
            histogram: agent_ebpf::hist::Log2Hist::ZERO,
            caused_ns: 0,
            culprits: Vec::new(),
        }
    }
}

impl Durations {
    pub fn from_hist(h: agent_ebpf::hist::Log2Hist) -> Durations {
        use crate::core::histogram::HistStats;
        Durations {
            count: h.count(),
            sum_ns: h.sum_ns,
            p50_ns: h.quantile(0.5).unwrap_or(0),
            p99_ns: h.quantile(0.99).unwrap_or(0),
            max_ns: h.max().unwrap_or(0),
            histogram: h,
        }
    }
}

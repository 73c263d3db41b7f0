//! Every metric nodesat exports, in one place: name, unit, instrument, the resource it is
//! reported on, its data point attributes and its meaning, and the names they take in the
//! Prometheus text format. The mapping ([`super::otlp`]) only emits metrics listed here, the
//! Prometheus endpoint ([`super::prometheus`]) renders what the mapping built, and a test checks
//! that docs/metrics.md carries the tables [`markdown`] generates.

/// The OTLP data type of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instrument {
    /// A monotonic Sum (a counter): cumulative totals, or deltas per export.
    Counter,
    /// A Gauge: the latest value.
    Gauge,
    /// An ExponentialHistogram of scale 0 carrying the kernel's log2 slots.
    Histogram,
}

impl Instrument {
    #[cfg(test)]
    fn as_str(self) -> &'static str {
        match self {
            Instrument::Counter => "counter (monotonic Sum)",
            Instrument::Gauge => "gauge",
            Instrument::Histogram => "exponential histogram (scale 0)",
        }
    }

    /// The `# TYPE` of the metric in the Prometheus text format.
    pub fn prometheus_type(self) -> &'static str {
        match self {
            Instrument::Counter => "counter",
            Instrument::Gauge => "gauge",
            Instrument::Histogram => "histogram",
        }
    }
}

/// Which resource a metric's points are reported on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum On {
    /// One resource per workload entity (a cgroup report, and "other").
    Workload,
    /// The node resource (per-CPU and per-disk figures, the agent's own metrics).
    Node,
}

/// How the report's integer figure becomes the point's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// An integer as counted.
    Int,
    /// Nanoseconds in the report, seconds (double) in OTLP.
    SecondsFromNs,
    /// A double as reported (averages, ratios).
    Double,
    /// Log2 histogram of nanoseconds.
    Log2Ns,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricDef {
    pub name: &'static str,
    pub unit: &'static str,
    pub instrument: Instrument,
    #[cfg_attr(not(test), allow(dead_code))] // the docs table
    pub on: On,
    pub value: Value,
    /// Data point attribute keys (the resource's attributes are in the docs' prose).
    #[cfg_attr(not(test), allow(dead_code))] // the docs table
    pub attributes: &'static [&'static str],
    pub description: &'static str,
}

const fn m(
    name: &'static str,
    unit: &'static str,
    instrument: Instrument,
    on: On,
    value: Value,
    attributes: &'static [&'static str],
    description: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        unit,
        instrument,
        on,
        value,
        attributes,
        description,
    }
}

use Instrument::*;
use On::*;

pub const RUNQUEUE_LATENCY: MetricDef = m(
    "nodesat.sched.runqueue.latency",
    "ns",
    Histogram,
    Workload,
    Value::Log2Ns,
    &[],
    "Run-queue latency of the workload's tasks: from becoming runnable (woken or preempted) until running, per wait.",
);
pub const RUNQUEUE_WAIT_TIME: MetricDef = m(
    "nodesat.sched.runqueue.wait_time",
    "s",
    Counter,
    Workload,
    Value::SecondsFromNs,
    &[],
    "Time the workload's tasks spent runnable but waiting for a CPU (its rate is the average number of waiting tasks). Also on the node resource per CPU, with `cpu.logical_number`.",
);
pub const RUNQUEUE_WAIT_CAUSED: MetricDef = m(
    "nodesat.sched.runqueue.wait_caused",
    "s",
    Counter,
    Workload,
    Value::SecondsFromNs,
    &[],
    "Run-queue wait the workload caused: the wait of every task (its own included) that waited on a CPU while one of the workload's tasks ran there. Summed over workloads, with the `idle` and `unattributed` parts of `nodesat.sched.runqueue.wait_by_culprit`, it is the node's wait.",
);
pub const RUNQUEUE_WAIT_BY_CULPRIT: MetricDef = m(
    "nodesat.sched.runqueue.wait_by_culprit",
    "s",
    Counter,
    Workload,
    Value::SecondsFromNs,
    &["nodesat.culprit"],
    "The workload's run-queue wait split by who ran on the CPU meanwhile (`nodesat.culprit`: the culprit labelled as the workload tables label it, namespace/pod/container, unit or cgroup path; `idle` when the CPU was idle, the wake-up's own latency; `unattributed` when not covered by the runs the CPU remembers; `other` for the culprits beyond the top three of the interval, summed). The parts sum to `nodesat.sched.runqueue.wait_time`.",
);
pub const RUNQUEUE_LENGTH: MetricDef = m(
    "nodesat.sched.runqueue.length",
    "{task}",
    Gauge,
    Node,
    Value::Double,
    &["cpu.logical_number"],
    "Time-averaged number of tasks waiting on the CPU's run queue over the last collection interval, not counting the running one.",
);
pub const TCP_RETRANSMITS: MetricDef = m(
    "nodesat.tcp.retransmits",
    "{segment}",
    Counter,
    Workload,
    Value::Int,
    &[
        "network.type",
        "nodesat.tcp.retransmit.kind",
        "nodesat.tcp.retransmit.cause",
    ],
    "TCP segments retransmitted by sockets the workload owns, as the kernel's `RetransSegs` counts them in the socket's network namespace; `network.type` is `ipv4` or `ipv6`, `nodesat.tcp.retransmit.kind` is `data`, `syn` (a client's SYN) or `synack` (a listener's SYN-ACK); `nodesat.tcp.retransmit.cause` is `rto` (after a retransmission timeout), `fast` (fast retransmit / recovery), `tlp` (a tail loss probe), `other`, or `unknown` (always for `synack`).",
);
pub const TCP_RETRANSMIT_FAILURES: MetricDef = m(
    "nodesat.tcp.retransmit.failures",
    "{attempt}",
    Counter,
    Workload,
    Value::Int,
    &["network.type", "error.type"],
    "Retransmit attempts of the workload's sockets that failed before anything was sent, which `nodesat.tcp.retransmits` and the kernel's `RetransSegs` leave out; `error.type` is `EBUSY` (the original still in the host's queues), `EAGAIN` (beyond the peer's window), `ENOMEM`, `EHOSTUNREACH` (no route) or `EINVAL` (already acknowledged). Kernels 6.17 and later only (older ones do not report failed attempts).",
);
pub const OOM_KILLS: MetricDef = m(
    "nodesat.memory.oom_kills",
    "{process}",
    Counter,
    Workload,
    Value::Int,
    &[],
    "Processes of the workload killed by the OOM killer.",
);
pub const IO_WAIT_TIME: MetricDef = m(
    "nodesat.io.wait_time",
    "s",
    Counter,
    Workload,
    Value::SecondsFromNs,
    &[],
    "Time the workload's tasks spent blocked waiting for I/O. Also on the node resource per CPU (the CPU they blocked on), with `cpu.logical_number`.",
);
pub const DISK_IO_LATENCY: MetricDef = m(
    "nodesat.disk.io.latency",
    "ns",
    Histogram,
    Node,
    Value::Log2Ns,
    &["system.device", "nodesat.disk.device", "disk.io.direction"],
    "Block request latency (issue to completion) per disk (`system.device`: the kernel's name, `nodesat.disk.device`: `major:minor`) and direction (`read`, `write`, or `other` for flushes and discards).",
);
pub const CPU_PERIODS: MetricDef = m(
    "nodesat.cpu.periods",
    "{period}",
    Counter,
    Workload,
    Value::Int,
    &[],
    "CFS enforcement periods that elapsed with runnable tasks (`cpu.stat` `nr_periods`); workloads with a CPU limit only.",
);
pub const CPU_THROTTLED_PERIODS: MetricDef = m(
    "nodesat.cpu.throttled.periods",
    "{period}",
    Counter,
    Workload,
    Value::Int,
    &[],
    "CFS periods in which the workload hit its quota (`cpu.stat` `nr_throttled`).",
);
pub const CPU_THROTTLED_TIME: MetricDef = m(
    "nodesat.cpu.throttled.time",
    "s",
    Counter,
    Workload,
    Value::SecondsFromNs,
    &[],
    "Time the workload's run queues spent throttled (`cpu.stat`).",
);
pub const CPU_THROTTLED_LOCAL_TIME: MetricDef = m(
    "nodesat.cpu.throttled.local_time",
    "s",
    Counter,
    Workload,
    Value::SecondsFromNs,
    &[],
    "Time the workload's own tasks were throttled, whichever level's limit did it (cgroup v2 `cpu.stat.local` `throttled_usec`, kernels 6.8 and later): for workloads with a CPU limit and those under one, so a container throttled by its pod's limit shows it.",
);
pub const MEMORY_RECLAIM_STALL: MetricDef = m(
    "nodesat.memory.reclaim.stall",
    "ns",
    Histogram,
    Workload,
    Value::Log2Ns,
    &[],
    "Each time one of the workload's tasks had to reclaim memory itself before its allocation could go on (direct reclaim: the node short of memory; memcg reclaim: its cgroup at `memory.high` or `memory.max`), how long it took: the vmscan `*_reclaim_begin`/`_end` tracepoints. A leading indicator of OOM kills.",
);
pub const MEMORY_EVENTS: MetricDef = m(
    "nodesat.memory.events",
    "{event}",
    Counter,
    Workload,
    Value::Int,
    &["nodesat.memory.event"],
    "The memory controller's own event counts of the workload's cgroup (cgroup v2 `memory.events`, the cgroup and everything below it), by `nodesat.memory.event`: `high` (over `memory.high`, throttled into reclaim), `max` (an allocation hit `memory.max`), `oom`, `oom_kill`, `oom_group_kill`. Where the cgroup has the memory controller enabled.",
);
pub const PRESSURE_STALL_TIME: MetricDef = m(
    "nodesat.pressure.stall_time",
    "s",
    Counter,
    Workload,
    Value::SecondsFromNs,
    &["nodesat.pressure.resource", "nodesat.pressure.stall"],
    "Pressure stall information: time the workload had tasks stalled on `cpu`, `memory` or `io` (`nodesat.pressure.resource`), `some` (at least one of its tasks) or `full` (all its non-idle tasks at once) (`nodesat.pressure.stall`), from the kernel's cumulative `total=` of cgroup v2 `<resource>.pressure` (not its averages). Cgroup v2 only. Also on the node resource from `/proc/pressure/<resource>`.",
);
pub const CPU_THROTTLE_DURATION: MetricDef = m(
    "nodesat.cpu.throttle.duration",
    "ns",
    Histogram,
    Workload,
    Value::Log2Ns,
    &[],
    "Individual throttles (one per-CPU run queue throttled until unthrottled), from the throttle probe where it attaches.",
);
pub const PROBE_ATTACHED: MetricDef = m(
    "nodesat.agent.probe.attached",
    "1",
    Gauge,
    Node,
    Value::Int,
    &[
        "nodesat.probe",
        "nodesat.probe.hook",
        "nodesat.probe.variant",
    ],
    "1 when the probe's program is attached to the hook, 0 when no variant attached (`nodesat.probe.variant` is absent then).",
);
pub const PROBE_RUN_COUNT: MetricDef = m(
    "nodesat.agent.probe.run_count",
    "{run}",
    Counter,
    Node,
    Value::Int,
    &["nodesat.probe", "nodesat.probe.hook"],
    "Times the hook's program ran (kernel BPF statistics; counts only while `kernel.bpf_stats_enabled` is 1).",
);
pub const PROBE_RUN_TIME: MetricDef = m(
    "nodesat.agent.probe.run_time",
    "s",
    Counter,
    Node,
    Value::SecondsFromNs,
    &["nodesat.probe", "nodesat.probe.hook"],
    "Time the hook's program ran (same condition).",
);
pub const PROBE_RECURSION_MISSES: MetricDef = m(
    "nodesat.agent.probe.recursion_misses",
    "{event}",
    Counter,
    Node,
    Value::Int,
    &["nodesat.probe", "nodesat.probe.hook"],
    "Events of the hook the kernel did not run the program for, because it was already running on that CPU (`recursion_misses` of the program's fdinfo, kernels 5.12 and later): events the figures lack.",
);
pub const EVENTS_LOST: MetricDef = m(
    "nodesat.agent.events.lost",
    "{event}",
    Counter,
    Node,
    Value::Int,
    &["nodesat.probe"],
    "Events a probe's ring buffer had no room for (`kernel_errors` `events_lost`).",
);
pub const KERNEL_ERRORS: MetricDef = m(
    "nodesat.agent.kernel.errors",
    "{error}",
    Counter,
    Node,
    Value::Int,
    &["nodesat.probe", "error.type"],
    "The programs' other error counters (`kernel_errors`: `enqueue_update`, `latency_update`, `pending_mismatch`, `field_read`).",
);
pub const ENTITIES_OVERFLOW: MetricDef = m(
    "nodesat.agent.entities.overflow",
    "{cgroup}",
    Gauge,
    Node,
    Value::Int,
    &[],
    "Cgroups beyond `max_entities` in the last interval, summed into the `other` workload.",
);
pub const EXPORT_FAILURES: MetricDef = m(
    "nodesat.agent.export.failures",
    "{attempt}",
    Counter,
    Node,
    Value::Int,
    &["error.type"],
    "Failed export attempts (retried or not); `error.type` is the gRPC code or HTTP status, `timeout`, or `connection`.",
);
pub const EXPORT_QUEUE_DROPPED: MetricDef = m(
    "nodesat.agent.export.queue.dropped",
    "{batch}",
    Counter,
    Node,
    Value::Int,
    &["nodesat.export.reason"],
    "Batches dropped without being delivered: `queue_full` (the oldest queued batch makes room for a new one), `retries_exhausted`, `permanent_error`, `shutdown` (in flight or queued when the shutdown timeout ran out; counted, though no export follows it, and logged once).",
);

pub const EXPORT_DELIVERED: MetricDef = m(
    "nodesat.agent.export.delivered",
    "{batch}",
    Counter,
    Node,
    Value::Int,
    &[],
    "Batches the OTLP receiver accepted (in full, or in part: a partial success counts here, its rejected points are logged). With `export.failures` and `export.queue.dropped`, every batch is accounted for.",
);
pub const MAP_ENTRIES: MetricDef = m(
    "nodesat.agent.map.entries",
    "{entry}",
    Gauge,
    Node,
    Value::Int,
    &["nodesat.map.name"],
    "Entries in one of the programs' hashes of in-flight state at the collection (`RUNQ_ENQUEUED_AT`: runnable tasks, `IOWAIT_SINCE`: tasks in iowait, both for the raw and classic tracepoint variants; `BLOCK_ISSUED`: block requests in flight; `RECLAIM_SINCE`: tasks reclaiming memory now). It should stay near the number of such things on the node; one that climbs towards the map's capacity leaks.",
);
pub const MAP_MEMORY: MetricDef = m(
    "nodesat.agent.map.memory",
    "By",
    Gauge,
    Node,
    Value::Int,
    &["nodesat.map.name"],
    "Memory one of the programs' maps takes, as the kernel accounts it (`memlock` in the map's fdinfo), measured once at load: kernels 5.11 and later charge it to the agent's memory cgroup. The maps are shared by all CPUs, so the total grows only slightly with the node's possible CPUs (docs/deploy.md, Resources).",
);
pub const EXPORT_QUEUE_DEPTH: MetricDef = m(
    "nodesat.agent.export.queue.depth",
    "{batch}",
    Gauge,
    Node,
    Value::Int,
    &[],
    "Batches waiting to be sent (not counting the one being sent), at most `otlp_queue_size`; it grows while the receiver is slow or down.",
);
pub const KUBELET_FAILURES: MetricDef = m(
    "nodesat.agent.kubelet.failures",
    "{request}",
    Counter,
    Node,
    Value::Int,
    &["error.type"],
    "Failed fetches of the kubelet's pod list, by cause: the HTTP status (`401`, `403`, `404`, `429`, `500`, `502`, `503`, `504`, else `http_other`), `timeout`, `connection`, `tls`, `ca`, `invalid_response`, `request`. Only when a kubelet is read.",
);
pub const KUBELET_POD_LIST_AGE: MetricDef = m(
    "nodesat.agent.kubelet.pod_list.age",
    "s",
    Gauge,
    Node,
    Value::Double,
    &[],
    "Seconds since the pod list in use was fetched (it is refreshed every 10 s; while the kubelet fails the last list is kept and this grows). Absent before the first good fetch.",
);

/// The catalogue, in the order the docs list it.
pub const CATALOG: &[MetricDef] = &[
    RUNQUEUE_LATENCY,
    RUNQUEUE_WAIT_TIME,
    RUNQUEUE_WAIT_CAUSED,
    RUNQUEUE_WAIT_BY_CULPRIT,
    RUNQUEUE_LENGTH,
    TCP_RETRANSMITS,
    TCP_RETRANSMIT_FAILURES,
    OOM_KILLS,
    IO_WAIT_TIME,
    DISK_IO_LATENCY,
    CPU_PERIODS,
    CPU_THROTTLED_PERIODS,
    CPU_THROTTLED_TIME,
    CPU_THROTTLED_LOCAL_TIME,
    CPU_THROTTLE_DURATION,
    MEMORY_RECLAIM_STALL,
    MEMORY_EVENTS,
    PRESSURE_STALL_TIME,
    PROBE_ATTACHED,
    PROBE_RUN_COUNT,
    PROBE_RUN_TIME,
    PROBE_RECURSION_MISSES,
    EVENTS_LOST,
    KERNEL_ERRORS,
    ENTITIES_OVERFLOW,
    EXPORT_FAILURES,
    EXPORT_QUEUE_DROPPED,
    EXPORT_DELIVERED,
    EXPORT_QUEUE_DEPTH,
    MAP_ENTRIES,
    MAP_MEMORY,
    KUBELET_FAILURES,
    KUBELET_POD_LIST_AGE,
];

impl MetricDef {
    /// The metric's name in the Prometheus text format, following Prometheus' conventions:
    /// dots become underscores, the unit is spelled out as a suffix (`_seconds`: durations are
    /// exposed in seconds, histograms included; counts such as `{task}` and `1` add nothing),
    /// and counters end in `_total`.
    pub fn prometheus_name(&self) -> String {
        let mut name = self.name.replace('.', "_");
        if matches!(self.value, Value::SecondsFromNs | Value::Log2Ns) || self.unit == "s" {
            name.push_str("_seconds");
        } else if self.unit == "By" {
            name.push_str("_bytes");
        }
        if self.instrument == Instrument::Counter {
            name.push_str("_total");
        }
        name
    }
}

/// The Prometheus label each resource and data point attribute becomes. `service.name` and
/// `service.version` are left out: Prometheus names the target itself (`job`, `instance`).
pub const PROMETHEUS_LABELS: &[(&str, &str)] = &[
    ("nodesat.workload.kind", "kind"),
    ("k8s.pod.uid", "pod_uid"),
    ("k8s.pod.name", "pod"),
    ("k8s.namespace.name", "namespace"),
    ("k8s.container.name", "container"),
    ("container.id", "container_id"),
    ("container.runtime.name", "container_runtime"),
    ("nodesat.k8s.pod.qos_class", "qos_class"),
    ("nodesat.systemd.unit", "unit"),
    ("nodesat.cgroup.path", "cgroup"),
    ("nodesat.cgroup.id", "cgroup_id"),
    ("k8s.node.name", "node"),
    ("host.name", "host"),
    ("cpu.logical_number", "cpu"),
    ("network.type", "family"),
    ("nodesat.tcp.retransmit.kind", "retransmit_kind"),
    ("nodesat.tcp.retransmit.cause", "retransmit_cause"),
    ("system.device", "device"),
    ("nodesat.disk.device", "major_minor"),
    ("disk.io.direction", "direction"),
    ("nodesat.probe", "probe"),
    ("nodesat.probe.hook", "hook"),
    ("nodesat.probe.variant", "variant"),
    ("nodesat.map.name", "map"),
    ("error.type", "error"),
    ("nodesat.export.reason", "reason"),
    ("nodesat.pressure.resource", "resource"),
    ("nodesat.pressure.stall", "stall"),
    ("nodesat.memory.event", "event"),
    ("nodesat.culprit", "culprit"),
];

/// The Prometheus label of an attribute: from [`PROMETHEUS_LABELS`], `None` for `service.*`,
/// else the key with every character outside `[a-zA-Z0-9_]` replaced by `_`.
pub fn prometheus_label(key: &str) -> Option<std::borrow::Cow<'static, str>> {
    if let Some((_, label)) = PROMETHEUS_LABELS.iter().find(|(k, _)| *k == key) {
        return Some((*label).into());
    }
    if key.starts_with("service.") {
        return None;
    }
    let mut label: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if label.is_empty() || label.starts_with(|c: char| c.is_ascii_digit()) {
        label.insert(0, '_');
    }
    Some(label.into())
}

/// The markdown tables of the catalogue and the Prometheus labels, as docs/metrics.md carries
/// them between the markers.
#[cfg(test)]
pub fn markdown() -> String {
    let mut s = String::from(
        "| name | unit | type | resource | attributes | Prometheus name | meaning |\n|---|---|---|---|---|---|---|\n",
    );
    for d in CATALOG {
        let attrs = if d.attributes.is_empty() {
            "—".to_owned()
        } else {
            d.attributes
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s.push_str(&format!(
            "| `{}` | `{}` | {} | {} | {} | `{}` | {} |\n",
            d.name,
            d.unit,
            d.instrument.as_str(),
            match d.on {
                Workload => "workload",
                Node => "node",
            },
            attrs,
            d.prometheus_name(),
            d.description
        ));
    }
    s.push_str("\n| attribute | Prometheus label |\n|---|---|\n");
    for (key, label) in PROMETHEUS_LABELS {
        s.push_str(&format!("| `{key}` | `{label}` |\n"));
    }
    s
}

#[cfg(test)]
pub const DOC_BEGIN: &str = "<!-- otlp-catalog:begin (generated from agent/src/export/catalog.rs; NODESAT_UPDATE_DOCS=1 cargo test -p nodesat export::tests::docs rewrites it) -->";
#[cfg(test)]
pub const DOC_END: &str = "<!-- otlp-catalog:end -->";

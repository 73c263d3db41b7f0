//! Report → OTLP: the resources (one per workload entity, one for the node), the metrics of
//! the catalogue, and temporality. Reports carry interval deltas; [`Builder::ingest`] adds
//! them into running totals per resource and series, and [`Builder::build`] emits either the
//! totals (cumulative, start time = the series' first appearance) or what was added since the
//! last export (delta).

use std::collections::BTreeMap;

use agent_ebpf::hist::{HIST_SLOTS, Log2Hist};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
        exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};

use super::catalog::{self as cat, Instrument, MetricDef, Value};
use crate::report::{CgroupReport, PressureStalls, Report};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
}

/// What every resource says about where it was observed.
#[derive(Clone, Debug, Default)]
pub struct ResourceInfo {
    /// `service.name` (OTEL_SERVICE_NAME; default "nodesat").
    pub service_name: String,
    pub host_name: Option<String>,
    /// `k8s.node.name` (NODE_NAME, when running in a pod).
    pub node_name: Option<String>,
    /// OTEL_RESOURCE_ATTRIBUTES, on every resource (identity attributes win).
    pub extra: Vec<(String, String)>,
}

/// The agent's own counters, totals since it started (the exporter's state).
#[derive(Clone, Debug, Default)]
pub struct AgentTotals {
    /// Failed export attempts by `error.type`.
    pub export_failures: BTreeMap<String, u64>,
    /// Dropped batches by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Batches the receiver accepted (in full or in part).
    pub delivered: u64,
    /// Batches waiting in the queue; `None` without OTLP export.
    pub queue_depth: Option<u64>,
    /// The kubelet's pod list; `None` when no kubelet is read.
    pub kubelet: Option<crate::identity::kubelet::KubeletStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResKey {
    Node,
    Cgroup(u64),
    Other,
}

type Attrs = Vec<(&'static str, String)>;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesKey {
    res: ResKey,
    metric: &'static str,
    attrs: Attrs,
}

#[derive(Clone, Debug)]
enum Acc {
    Count(u64),
    Hist(Box<Log2Hist>),
    Gauge(f64),
}

#[derive(Clone, Debug)]
struct Series {
    def: MetricDef,
    /// First appearance (start of the interval it first had data in).
    start_ns: u64,
    /// Start of the current delta (the last export, or `start_ns`).
    delta_start_ns: u64,
    last_seen_ns: u64,
    total: Acc,
    /// `total` at the last export (delta temporality).
    exported: Acc,
}

/// Builds export requests from reports, keeping the running totals.
pub struct Builder {
    temporality: Temporality,
    info: ResourceInfo,
    /// Series absent for this long are forgotten (a later appearance starts a new series).
    stale_after_ns: u64,
    resources: BTreeMap<ResKey, Vec<KeyValue>>,
    series: BTreeMap<SeriesKey, Series>,
    /// Last absolute value of counters that arrive as totals (probe statistics, exporter).
    absolute: BTreeMap<SeriesKey, u64>,
    /// Time of the last ingested report.
    now_ns: u64,
}

enum Obs {
    /// A counter's increase over the interval.
    Delta(u64),
    /// A counter's total since some fixed point (converted to a delta here).
    Total(u64),
    Hist(Box<Log2Hist>),
    Gauge(f64),
}

impl Builder {
    pub fn new(temporality: Temporality, info: ResourceInfo, stale_after_ns: u64) -> Builder {
        Builder {
            temporality,
            info,
            stale_after_ns,
            resources: BTreeMap::new(),
            series: BTreeMap::new(),
            absolute: BTreeMap::new(),
            now_ns: 0,
        }
    }

    /// Adds one report (interval deltas) and the agent's own totals.
    pub fn ingest(&mut self, report: &Report, agent: &AgentTotals) {
        let now = report.time_unix_ns;
        let start = now.saturating_sub(report.interval_ns);
        self.now_ns = now;
        self.resources
            .insert(ResKey::Node, node_resource_attributes(&self.info));
        let entities = report
            .cgroups
            .iter()
            .map(|c| (ResKey::Cgroup(c.cgroup_id), c))
            .chain(report.other.iter().map(|c| (ResKey::Other, c)));
        for (key, c) in entities {
            self.resources
                .insert(key.clone(), workload_resource_attributes(&self.info, c));
            for (def, attrs, obs) in workload_observations(c) {
                self.observe(key.clone(), def, attrs, obs, start, now);
            }
        }
        for (def, attrs, obs) in node_observations(report, agent) {
            self.observe(ResKey::Node, def, attrs, obs, start, now);
        }
    }

    fn observe(
        &mut self,
        res: ResKey,
        def: MetricDef,
        attrs: Attrs,
        obs: Obs,
        start: u64,
        now: u64,
    ) {
        let key = SeriesKey {
            res,
            metric: def.name,
            attrs,
        };
        let obs = match obs {
            Obs::Total(total) => {
                let prev = self.absolute.insert(key.clone(), total);
                // A total that went down was reset: the new value is the whole increase.
                Obs::Delta(match prev {
                    Some(p) if p <= total => total - p,
                    _ => total,
                })
            }
            o => o,
        };
        let series = self.series.entry(key).or_insert_with(|| Series {
            def,
            start_ns: start,
            delta_start_ns: start,
            last_seen_ns: now,
            total: match &obs {
                Obs::Hist(_) => Acc::Hist(Box::new(Log2Hist::ZERO)),
                Obs::Gauge(_) => Acc::Gauge(0.0),
                _ => Acc::Count(0),
            },
            exported: match &obs {
                Obs::Hist(_) => Acc::Hist(Box::new(Log2Hist::ZERO)),
                Obs::Gauge(_) => Acc::Gauge(0.0),
                _ => Acc::Count(0),
            },
        });
        series.last_seen_ns = now;
        match (&mut series.total, obs) {
            (Acc::Count(t), Obs::Delta(d)) => *t = t.saturating_add(d),
            (Acc::Hist(t), Obs::Hist(h)) => {
                for (a, b) in t.slots.iter_mut().zip(h.slots.iter()) {
                    *a = a.saturating_add(*b);
                }
                t.sum_ns = t.sum_ns.saturating_add(h.sum_ns);
            }
            (Acc::Gauge(g), Obs::Gauge(v)) => *g = v,
            _ => {} // a catalogue entry never changes type
        }
    }

    /// The request for everything ingested so far; marks it exported (delta) and forgets
    /// stale series. `None` when there is nothing to send.
    pub fn build(&mut self) -> Option<ExportMetricsServiceRequest> {
        let now = self.now_ns;
        let stale = self.stale_after_ns;
        self.series
            .retain(|_, s| now.saturating_sub(s.last_seen_ns) <= stale);
        let live: std::collections::BTreeSet<&ResKey> =
            self.series.keys().map(|k| &k.res).collect();
        let abs = &mut self.absolute;
        abs.retain(|k, _| live.contains(&k.res));
        self.resources
            .retain(|k, _| *k == ResKey::Node || live.contains(k));

        // resource → metric name → (def, points)
        let mut grouped: BTreeMap<&ResKey, BTreeMap<&'static str, (MetricDef, Vec<Point>)>> =
            BTreeMap::new();
        for (key, s) in &self.series {
            let point = match self.temporality {
                Temporality::Cumulative => point(s, key, &s.total, None, s.start_ns, now),
                Temporality::Delta => {
                    point(s, key, &s.total, Some(&s.exported), s.delta_start_ns, now)
                }
            };
            if let Some(p) = point {
                grouped
                    .entry(&key.res)
                    .or_default()
                    .entry(key.metric)
                    .or_insert_with(|| (s.def, Vec::new()))
                    .1
                    .push(p);
            }
        }
        let temporality = match self.temporality {
            Temporality::Cumulative => AggregationTemporality::Cumulative,
            Temporality::Delta => AggregationTemporality::Delta,
        } as i32;
        let scope = InstrumentationScope {
            name: "nodesat".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let resource_metrics: Vec<ResourceMetrics> = grouped
            .into_iter()
            .map(|(res, metrics)| ResourceMetrics {
                resource: Some(Resource {
                    attributes: self.resources.get(res).cloned().unwrap_or_default(),
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope.clone()),
                    metrics: metrics
                        .into_values()
                        .map(|(def, points)| metric(def, points, temporality))
                        .collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect();
        for s in self.series.values_mut() {
            s.exported = s.total.clone();
            s.delta_start_ns = now;
        }
        if resource_metrics.is_empty() {
            return None;
        }
        Some(ExportMetricsServiceRequest { resource_metrics })
    }
}

/// The most bytes one OTLP request may take, encoded: under the 4 MiB a Collector's gRPC
/// receiver accepts by default (`max_recv_msg_size_mib`), with room for the gRPC envelope.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;

/// Splits `req` into requests of at most `max_bytes` encoded, at resource boundaries: each
/// request carries whole resources (a workload with all its metrics and points), so every one
/// is complete and correct on its own. A single resource larger than `max_bytes` goes alone.
pub fn split(
    req: ExportMetricsServiceRequest,
    max_bytes: usize,
) -> Vec<ExportMetricsServiceRequest> {
    use prost::Message as _;
    if req.encoded_len() <= max_bytes {
        return vec![req];
    }
    let mut out = Vec::new();
    let mut part = Vec::new();
    let mut size = 0;
    for rm in req.resource_metrics {
        // A repeated field's element: its bytes, a one-byte tag and a length prefix.
        let len = rm.encoded_len();
        let len = len + 1 + prost::encoding::encoded_len_varint(len as u64);
        if !part.is_empty() && size + len > max_bytes {
            out.push(ExportMetricsServiceRequest {
                resource_metrics: std::mem::take(&mut part),
            });
            size = 0;
        }
        size += len;
        part.push(rm);
    }
    if !part.is_empty() {
        out.push(ExportMetricsServiceRequest {
            resource_metrics: part,
        });
    }
    out
}

enum Point {
    Number(NumberDataPoint),
    Exp(ExponentialHistogramDataPoint),
}

fn point(
    s: &Series,
    key: &SeriesKey,
    total: &Acc,
    exported: Option<&Acc>,
    start: u64,
    now: u64,
) -> Option<Point> {
    let attributes = key.attrs.iter().map(|(k, v)| kv(k, v)).collect();
    match (total, exported) {
        (Acc::Gauge(v), _) => {
            // Gauges only for what the latest report carried.
            if s.last_seen_ns != now {
                return None;
            }
            Some(Point::Number(NumberDataPoint {
                attributes,
                time_unix_nano: now,
                value: Some(number(s.def.value, *v)),
                ..Default::default()
            }))
        }
        (Acc::Count(t), e) => {
            let v = match e {
                Some(Acc::Count(e)) => {
                    if t == e {
                        return None; // nothing new in this delta
                    }
                    t - e
                }
                _ => *t,
            };
            Some(Point::Number(NumberDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: now,
                value: Some(match s.def.value {
                    Value::SecondsFromNs => number_data_point::Value::AsDouble(v as f64 / 1e9),
                    _ => number_data_point::Value::AsInt(v as i64),
                }),
                ..Default::default()
            }))
        }
        (Acc::Hist(t), e) => {
            let h = match e {
                Some(Acc::Hist(e)) => {
                    let mut d = **t;
                    for (a, b) in d.slots.iter_mut().zip(e.slots.iter()) {
                        *a -= b;
                    }
                    d.sum_ns -= e.sum_ns;
                    if d.slots.iter().all(|&c| c == 0) {
                        return None;
                    }
                    d
                }
                _ => **t,
            };
            let mut p = exponential_point(&h);
            p.attributes = attributes;
            p.start_time_unix_nano = start;
            p.time_unix_nano = now;
            Some(Point::Exp(p))
        }
    }
}

fn number(value: Value, v: f64) -> number_data_point::Value {
    match value {
        Value::Int => number_data_point::Value::AsInt(v as i64),
        _ => number_data_point::Value::AsDouble(v),
    }
}

/// A log2 histogram as an ExponentialHistogram point of scale 0 (bucket index `i` holds
/// `(2^i, 2^(i+1)]` ns): slot `s` (`(2^(s-1), 2^s]` ns) is bucket `s - 1`, slot 0 (0 and 1 ns)
/// the zero bucket with threshold 1. The kernel's open last slot (> 2^30 ns) lands in bucket
/// 30, `(2^30, 2^31]` ns. Min and max are unknown (only bucket bounds), so absent.
pub fn exponential_point(h: &Log2Hist) -> ExponentialHistogramDataPoint {
    let count: u64 = h.slots.iter().sum();
    let first = (1..HIST_SLOTS).find(|&s| h.slots[s] != 0);
    let positive = first.map(|first| {
        let last = (1..HIST_SLOTS)
            .rev()
            .find(|&s| h.slots[s] != 0)
            .unwrap_or(first);
        Buckets {
            offset: first as i32 - 1,
            bucket_counts: h.slots[first..=last].to_vec(),
        }
    });
    ExponentialHistogramDataPoint {
        count,
        sum: Some(h.sum_ns as f64),
        scale: 0,
        zero_count: h.slots[0],
        zero_threshold: 1.0,
        positive: Some(positive.unwrap_or_default()),
        negative: None,
        ..Default::default()
    }
}

fn metric(def: MetricDef, points: Vec<Point>, temporality: i32) -> Metric {
    let numbers = || {
        points
            .iter()
            .filter_map(|p| match p {
                Point::Number(n) => Some(n.clone()),
                Point::Exp(_) => None,
            })
            .collect::<Vec<_>>()
    };
    let data = match def.instrument {
        Instrument::Counter => Data::Sum(Sum {
            data_points: numbers(),
            aggregation_temporality: temporality,
            is_monotonic: true,
        }),
        Instrument::Gauge => Data::Gauge(Gauge {
            data_points: numbers(),
        }),
        Instrument::Histogram => Data::ExponentialHistogram(ExponentialHistogram {
            data_points: points
                .into_iter()
                .filter_map(|p| match p {
                    Point::Exp(e) => Some(e),
                    Point::Number(_) => None,
                })
                .collect(),
            aggregation_temporality: temporality,
        }),
    };
    Metric {
        name: def.name.into(),
        description: def.description.into(),
        unit: def.unit.into(),
        data: Some(data),
        ..Default::default()
    }
}

pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// Puts `kv` in `attrs`, replacing one of the same key.
fn set(attrs: &mut Vec<KeyValue>, kv: KeyValue) {
    match attrs.iter_mut().find(|a| a.key == kv.key) {
        Some(a) => *a = kv,
        None => attrs.push(kv),
    }
}

fn common_attributes(info: &ResourceInfo) -> Vec<KeyValue> {
    let mut attrs: Vec<KeyValue> = info.extra.iter().map(|(k, v)| kv(k, v)).collect();
    set(&mut attrs, kv("service.name", &info.service_name));
    if let Some(h) = &info.host_name {
        set(&mut attrs, kv("host.name", h));
    }
    if let Some(n) = &info.node_name {
        set(&mut attrs, kv("k8s.node.name", n));
    }
    attrs
}

fn node_resource_attributes(info: &ResourceInfo) -> Vec<KeyValue> {
    let mut attrs = common_attributes(info);
    set(&mut attrs, kv("service.version", env!("CARGO_PKG_VERSION")));
    set(&mut attrs, kv("nodesat.workload.kind", "node"));
    attrs
}

/// An enum's serde name ("pod_container", "containerd", "burstable").
fn serde_name<T: serde::Serialize>(v: &T) -> Option<String> {
    match serde_json::to_value(v).ok()? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

pub fn workload_resource_attributes(info: &ResourceInfo, c: &CgroupReport) -> Vec<KeyValue> {
    let mut attrs = common_attributes(info);
    let id = &c.identity;
    if let Some(kind) = serde_name(&id.kind) {
        set(&mut attrs, kv("nodesat.workload.kind", &kind));
    }
    let strings: [(&str, &Option<String>); 6] = [
        ("k8s.pod.uid", &id.pod_uid),
        ("k8s.pod.name", &id.pod),
        ("k8s.namespace.name", &id.namespace),
        ("k8s.container.name", &id.container),
        ("container.id", &id.container_id),
        ("nodesat.systemd.unit", &id.unit),
    ];
    for (k, v) in strings {
        if let Some(v) = v {
            set(&mut attrs, kv(k, v));
        }
    }
    if let Some(r) = id.runtime.as_ref().and_then(serde_name) {
        set(&mut attrs, kv("container.runtime.name", &r));
    }
    if let Some(q) = id.qos.as_ref().and_then(serde_name) {
        set(&mut attrs, kv("nodesat.k8s.pod.qos_class", &q));
    }
    if let Some(p) = id.path.as_ref().or(c.name.as_ref()) {
        set(&mut attrs, kv("nodesat.cgroup.path", p));
    }
    if id.kind != crate::identity::Kind::Other {
        set(&mut attrs, kv_int("nodesat.cgroup.id", c.cgroup_id as i64));
    }
    attrs
}

fn workload_observations(c: &CgroupReport) -> Vec<(MetricDef, Attrs, Obs)> {
    let mut v = vec![
        (
            cat::RUNQUEUE_LATENCY,
            Vec::new(),
            Obs::Hist(Box::new(c.runqueue.histogram)),
        ),
        (
            cat::RUNQUEUE_WAIT_TIME,
            Vec::new(),
            Obs::Delta(c.runqueue.wait_ns),
        ),
        (
            cat::RUNQUEUE_WAIT_CAUSED,
            Vec::new(),
            Obs::Delta(c.runqueue.caused_ns),
        ),
        (cat::IO_WAIT_TIME, Vec::new(), Obs::Delta(c.iowait_ns)),
        (cat::OOM_KILLS, Vec::new(), Obs::Delta(c.oom_kills)),
    ];
    for p in &c.runqueue.culprits {
        v.push((
            cat::RUNQUEUE_WAIT_BY_CULPRIT,
            vec![("nodesat.culprit", p.culprit.clone())],
            Obs::Delta(p.wait_ns),
        ));
    }
    for r in &c.tcp_retransmits {
        v.push((
            cat::TCP_RETRANSMITS,
            vec![
                ("network.type", r.family.to_owned()),
                ("nodesat.tcp.retransmit.kind", r.kind.to_owned()),
                ("nodesat.tcp.retransmit.cause", r.cause.to_owned()),
            ],
            Obs::Delta(r.count),
        ));
    }
    for r in &c.tcp_retransmit_failures {
        v.push((
            cat::TCP_RETRANSMIT_FAILURES,
            vec![
                ("network.type", r.family.to_owned()),
                ("error.type", r.error.to_owned()),
            ],
            Obs::Delta(r.count),
        ));
    }
    if let Some(t) = &c.throttling {
        v.push((cat::CPU_PERIODS, Vec::new(), Obs::Delta(t.periods)));
        v.push((
            cat::CPU_THROTTLED_PERIODS,
            Vec::new(),
            Obs::Delta(t.throttled_periods),
        ));
        v.push((
            cat::CPU_THROTTLED_TIME,
            Vec::new(),
            Obs::Delta(t.throttled_ns),
        ));
        if let Some(d) = &t.durations {
            v.push((
                cat::CPU_THROTTLE_DURATION,
                Vec::new(),
                Obs::Hist(Box::new(d.histogram)),
            ));
        }
    }
    if let Some(ns) = c.throttled_local_ns {
        v.push((cat::CPU_THROTTLED_LOCAL_TIME, Vec::new(), Obs::Delta(ns)));
    }
    if let Some(p) = &c.pressure {
        v.extend(pressure_observations(p));
    }
    if let Some(d) = &c.reclaim_stalls {
        v.push((
            cat::MEMORY_RECLAIM_STALL,
            Vec::new(),
            Obs::Hist(Box::new(d.histogram)),
        ));
    }
    if let Some(e) = &c.memory_events {
        for (event, n) in [
            ("high", e.high),
            ("max", e.max),
            ("oom", e.oom),
            ("oom_kill", e.oom_kill),
            ("oom_group_kill", e.oom_group_kill),
        ] {
            v.push((
                cat::MEMORY_EVENTS,
                vec![("nodesat.memory.event", event.to_owned())],
                Obs::Delta(n),
            ));
        }
    }
    v
}

/// The six stall counters of a cgroup or the node.
fn pressure_observations(p: &PressureStalls) -> Vec<(MetricDef, Attrs, Obs)> {
    [("cpu", p.cpu), ("memory", p.memory), ("io", p.io)]
        .into_iter()
        .flat_map(|(resource, s)| {
            [("some", s.some_ns), ("full", s.full_ns)].map(|(stall, ns)| {
                (
                    cat::PRESSURE_STALL_TIME,
                    vec![
                        ("nodesat.pressure.resource", resource.to_owned()),
                        ("nodesat.pressure.stall", stall.to_owned()),
                    ],
                    Obs::Delta(ns),
                )
            })
        })
        .collect()
}

fn node_observations(r: &Report, agent: &AgentTotals) -> Vec<(MetricDef, Attrs, Obs)> {
    let mut v = Vec::new();
    if let Some(p) = &r.node.pressure {
        v.extend(pressure_observations(p));
    }
    for c in &r.cpus {
        let cpu = || vec![("cpu.logical_number", c.cpu.to_string())];
        v.push((cat::RUNQUEUE_LENGTH, cpu(), Obs::Gauge(c.runqueue_length)));
        v.push((
            cat::RUNQUEUE_WAIT_TIME,
            cpu(),
            Obs::Delta(c.runqueue_wait_ns),
        ));
        v.push((cat::IO_WAIT_TIME, cpu(), Obs::Delta(c.iowait_ns)));
    }
    for d in &r.disks {
        v.push((
            cat::DISK_IO_LATENCY,
            vec![
                (
                    "system.device",
                    d.name.clone().unwrap_or_else(|| d.device.clone()),
                ),
                ("nodesat.disk.device", d.device.clone()),
                ("disk.io.direction", d.op.to_owned()),
            ],
            Obs::Hist(Box::new(d.histogram)),
        ));
    }
    for h in &r.probes {
        let mut attached = vec![
            ("nodesat.probe", h.probe.to_owned()),
            ("nodesat.probe.hook", h.hook.to_owned()),
        ];
        let ph = attached.clone();
        if let Some(variant) = h.variant.as_ref().and_then(serde_name) {
            attached.push(("nodesat.probe.variant", variant));
        }
        v.push((
            cat::PROBE_ATTACHED,
            attached,
            Obs::Gauge(if h.attached { 1.0 } else { 0.0 }),
        ));
        v.push((cat::PROBE_RUN_COUNT, ph.clone(), Obs::Total(h.run_count)));
        v.push((cat::PROBE_RUN_TIME, ph.clone(), Obs::Total(h.run_time_ns)));
        v.push((
            cat::PROBE_RECURSION_MISSES,
            ph,
            Obs::Total(h.recursion_misses),
        ));
    }
    for m in &r.maps {
        v.push((
            cat::MAP_ENTRIES,
            vec![("nodesat.map.name", m.map.to_owned())],
            Obs::Gauge(f64::from(m.entries)),
        ));
    }
    for m in &r.map_memory {
        v.push((
            cat::MAP_MEMORY,
            vec![("nodesat.map.name", m.map.clone())],
            Obs::Gauge(m.bytes as f64),
        ));
    }
    for e in &r.kernel_errors {
        if e.error == "events_lost" {
            v.push((
                cat::EVENTS_LOST,
                vec![("nodesat.probe", e.probe.to_owned())],
                Obs::Delta(e.count),
            ));
        } else {
            v.push((
                cat::KERNEL_ERRORS,
                vec![
                    ("nodesat.probe", e.probe.to_owned()),
                    ("error.type", e.error.to_owned()),
                ],
                Obs::Delta(e.count),
            ));
        }
    }
    v.push((
        cat::ENTITIES_OVERFLOW,
        Vec::new(),
        Obs::Gauge(r.entities_overflow as f64),
    ));
    for (error, n) in &agent.export_failures {
        v.push((
            cat::EXPORT_FAILURES,
            vec![("error.type", error.clone())],
            Obs::Total(*n),
        ));
    }
    for (reason, n) in &agent.dropped {
        v.push((
            cat::EXPORT_QUEUE_DROPPED,
            vec![("nodesat.export.reason", (*reason).to_owned())],
            Obs::Total(*n),
        ));
    }
    if let Some(depth) = agent.queue_depth {
        v.push((
            cat::EXPORT_DELIVERED,
            Vec::new(),
            Obs::Total(agent.delivered),
        ));
        v.push((
            cat::EXPORT_QUEUE_DEPTH,
            Vec::new(),
            Obs::Gauge(depth as f64),
        ));
    }
    if let Some(k) = &agent.kubelet {
        for (cause, n) in &k.failures {
            v.push((
                cat::KUBELET_FAILURES,
                vec![("error.type", (*cause).to_owned())],
                Obs::Total(*n),
            ));
        }
        if let Some(age) = k.pod_list_age {
            v.push((
                cat::KUBELET_POD_LIST_AGE,
                Vec::new(),
                Obs::Gauge(age.as_secs_f64()),
            ));
        }
    }
    v
}

//! Export tests: the mapping (resources, attributes, exact buckets), temporality, the queue,
//! retry classification, the settings, the docs, and end to end against receivers built from
//! the official protobufs (a tonic gRPC server and a small HTTP server on loopback).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use agent_ebpf::hist::Log2Hist;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    common::v1::{KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, ExponentialHistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, metric::Data, number_data_point,
    },
};
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{
    Exporter, Queue,
    catalog::{self, CATALOG},
    config::{Compression, ExportConfig, Protocol, RetryPolicy},
    otlp::{AgentTotals, Builder, ResourceInfo, Temporality, exponential_point},
    transport::{self, classify_grpc, classify_http},
};
use crate::{
    identity::{Identity, Kind},
    probes::HookStatus,
    report::{
        CgroupReport, CpuReport, DiskReport, Durations, KernelError, NodeTotals, Report, Sources,
        TcpRetransmits, Throttling,
    },
};

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * SEC;

fn hist(slots: &[(usize, u64)], sum_ns: u64) -> Log2Hist {
    let mut h = Log2Hist::ZERO;
    for &(s, n) in slots {
        h.slots[s] = n;
    }
    h.sum_ns = sum_ns;
    h
}

fn pod_container(id: u64) -> CgroupReport {
    let mut c = CgroupReport::new(id);
    c.name = Some(format!(
        "/kubepods.slice/pod-{id}/cri-containerd-abc{id}.scope"
    ));
    c.identity = Identity {
        kind: Kind::PodContainer,
        pod_uid: Some(format!("uid-{id}")),
        pod: Some(format!("web-{id}")),
        namespace: Some("shop".into()),
        container: Some("app".into()),
        container_id: Some(format!("abc{id}")),
        runtime: None,
        qos: None,
        unit: None,
        path: c.name.clone(),
    };
    c.runqueue.wait_ns = 2 * SEC;
    c.runqueue.events = 10;
    c.iowait_ns = SEC / 2;
    c.oom_kills = 1;
    c.tcp_retransmits = vec![TcpRetransmits {
        family: "ipv4",
        kind: "data",
        cause: "fast",
        count: 7,
    }];
    c.throttling = Some(Throttling {
        periods: 100,
        throttled_periods: 20,
        throttled_ns: 3 * SEC,
        throttled_pct: 20.0,
        durations: Some(Durations::from_hist(hist(&[(20, 3), (22, 1)], 5_000_000))),
    });
    c
}

fn unit(id: u64) -> CgroupReport {
    let mut c = CgroupReport::new(id);
    c.identity = Identity {
        kind: Kind::SystemdUnit,
        unit: Some("ssh.service".into()),
        ..Identity::cgroup("/system.slice/ssh.service")
    };
    c.runqueue.wait_ns = SEC;
    c
}

fn report(n: u64, cgroups: Vec<CgroupReport>) -> Report {
    Report {
        kind: "interval",
        is_final: false,
        time_unix_ns: T0 + n * 10 * SEC,
        interval_ns: 10 * SEC,
        cgroups,
        other: None,
        entities_overflow: 0,
        cpus: vec![CpuReport {
            cpu: 0,
            runqueue_wait_ns: 5 * SEC,
            runqueue_length: 0.5,
            iowait_ns: 0,
            proc_stat_iowait_ns: 0,
        }],
        disks: vec![DiskReport {
            device: "7:1".into(),
            name: Some("loop1".into()),
            op: "write",
            requests: 6,
            latency_sum_ns: 1_000_000,
            latency_p50_ns: 0,
            latency_p99_ns: 0,
            latency_max_ns: 0,
            // slot 0: 0–1 ns; slot 1: (1,2]; slot 18: (2^17, 2^18]; slot 31: > 2^30
            histogram: hist(&[(0, 1), (1, 1), (18, 3), (31, 1)], 1_000_000),
        }],
        sources: Sources {
            throttling: "cpu.stat",
        },
        probes: vec![HookStatus {
            probe: "runqueue",
            hook: "sched_switch",
            variant: Some(crate::probes::Variant::TpBtf),
            attached: true,
            error: None,
            run_count: 1000 * (n + 1),
            run_time_ns: 50_000 * (n + 1),
            recursion_misses: n,
            program: None,
        }],
        node: NodeTotals::default(),
        kernel_errors: vec![KernelError {
            probe: "oom",
            error: "events_lost",
            count: 2,
        }],
        maps: vec![crate::report::MapFill {
            map: "RUNQ_ENQUEUED_AT",
            entries: 12,
            max_entries: 65_536,
        }],
        map_memory: vec![crate::report::MapMemory {
            map: "RUNQ_LATENCY".into(),
            bytes: 1_377_152,
            max_entries: 4096,
        }],
    }
}

fn info() -> ResourceInfo {
    ResourceInfo {
        service_name: "nodesat".into(),
        host_name: Some("node-a".into()),
        node_name: Some("node-a".into()),
        extra: vec![("k8s.cluster.name".into(), "prod".into())],
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn str_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

fn resource<'a>(
    req: &'a ExportMetricsServiceRequest,
    key: &str,
    value: &str,
) -> &'a ResourceMetrics {
    req.resource_metrics
        .iter()
        .find(|r| str_attr(&r.resource.as_ref().unwrap().attributes, key).as_deref() == Some(value))
        .unwrap_or_else(|| panic!("no resource with {key}={value}"))
}

fn metric<'a>(r: &'a ResourceMetrics, name: &str) -> &'a Metric {
    r.scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn sum_points(m: &Metric) -> (&[NumberDataPoint], i32) {
    match m.data.as_ref().unwrap() {
        Data::Sum(s) => {
            assert!(s.is_monotonic, "{}", m.name);
            (&s.data_points, s.aggregation_temporality)
        }
        other => panic!("{} is not a Sum: {other:?}", m.name),
    }
}

fn value(p: &NumberDataPoint) -> f64 {
    match p.value.unwrap() {
        number_data_point::Value::AsDouble(d) => d,
        number_data_point::Value::AsInt(i) => i as f64,
    }
}

fn exp_point(m: &Metric) -> &ExponentialHistogramDataPoint {
    match m.data.as_ref().unwrap() {
        Data::ExponentialHistogram(h) => &h.data_points[0],
        other => panic!("{} is not an exponential histogram: {other:?}", m.name),
    }
}

#[test]
fn mapping_resources_attributes_and_exact_buckets() {
    let mut b = Builder::new(Temporality::Cumulative, info(), u64::MAX);
    b.ingest(
        &report(0, vec![pod_container(11), unit(12)]),
        &AgentTotals::default(),
    );
    let req = b.build().unwrap();
    assert_eq!(req.resource_metrics.len(), 3, "two workloads and the node");

    let pod = resource(&req, "k8s.pod.uid", "uid-11");
    let attrs = &pod.resource.as_ref().unwrap().attributes;
    for (k, v) in [
        ("k8s.pod.name", "web-11"),
        ("k8s.namespace.name", "shop"),
        ("k8s.container.name", "app"),
        ("container.id", "abc11"),
        ("k8s.node.name", "node-a"),
        ("host.name", "node-a"),
        ("service.name", "nodesat"),
        ("k8s.cluster.name", "prod"),
        ("nodesat.workload.kind", "pod_container"),
        ("nodesat.cgroup.id", "11"),
        (
            "nodesat.cgroup.path",
            "/kubepods.slice/pod-11/cri-containerd-abc11.scope",
        ),
    ] {
        assert_eq!(str_attr(attrs, k).as_deref(), Some(v), "{k}");
    }
    assert_eq!(pod.scope_metrics[0].scope.as_ref().unwrap().name, "nodesat");
    let unit = resource(&req, "nodesat.systemd.unit", "ssh.service");
    assert_eq!(
        str_attr(
            &unit.resource.as_ref().unwrap().attributes,
            "nodesat.cgroup.path"
        )
        .as_deref(),
        Some("/system.slice/ssh.service")
    );
    assert!(attr(&unit.resource.as_ref().unwrap().attributes, "k8s.pod.uid").is_none());

    // counters, seconds from ns
    let (p, t) = sum_points(metric(pod, "nodesat.sched.runqueue.wait_time"));
    assert_eq!(t, AggregationTemporality::Cumulative as i32);
    assert_eq!(value(&p[0]), 2.0);
    assert_eq!(metric(pod, "nodesat.sched.runqueue.wait_time").unit, "s");
    assert_eq!(
        value(&sum_points(metric(pod, "nodesat.io.wait_time")).0[0]),
        0.5
    );
    assert_eq!(
        value(&sum_points(metric(pod, "nodesat.memory.oom_kills")).0[0]),
        1.0
    );
    assert_eq!(
        value(&sum_points(metric(pod, "nodesat.cpu.periods")).0[0]),
        100.0
    );
    assert_eq!(
        value(&sum_points(metric(pod, "nodesat.cpu.throttled.periods")).0[0]),
        20.0
    );
    assert_eq!(
        value(&sum_points(metric(pod, "nodesat.cpu.throttled.time")).0[0]),
        3.0
    );
    let retx = &sum_points(metric(pod, "nodesat.tcp.retransmits")).0[0];
    assert_eq!(value(retx), 7.0);
    assert_eq!(
        str_attr(&retx.attributes, "network.type").as_deref(),
        Some("ipv4")
    );
    assert_eq!(
        str_attr(&retx.attributes, "nodesat.tcp.retransmit.kind").as_deref(),
        Some("data")
    );
    assert_eq!(
        str_attr(&retx.attributes, "nodesat.tcp.retransmit.cause").as_deref(),
        Some("fast")
    );

    // throttle durations: slots 20 and 22 → buckets 19..=21 at scale 0
    let th = exp_point(metric(pod, "nodesat.cpu.throttle.duration"));
    assert_eq!((th.scale, th.count, th.sum), (0, 4, Some(5_000_000.0)));
    let pos = th.positive.as_ref().unwrap();
    assert_eq!((pos.offset, pos.bucket_counts.clone()), (19, vec![3, 0, 1]));

    // node: per-CPU gauge and counters, the disk histogram, self-metrics
    let node = resource(&req, "nodesat.workload.kind", "node");
    let len = metric(node, "nodesat.sched.runqueue.length");
    let Data::Gauge(g) = len.data.as_ref().unwrap() else {
        panic!("not a gauge")
    };
    assert_eq!(value(&g.data_points[0]), 0.5);
    assert_eq!(
        str_attr(&g.data_points[0].attributes, "cpu.logical_number").as_deref(),
        Some("0")
    );
    let disk_metric = metric(node, "nodesat.disk.io.latency");
    assert_eq!(disk_metric.unit, "ns");
    let disk = exp_point(disk_metric);
    assert_eq!(disk.count, 6);
    assert_eq!(
        (disk.zero_count, disk.zero_threshold),
        (1, 1.0),
        "slot 0 = [0, 1] ns"
    );
    let pos = disk.positive.as_ref().unwrap();
    assert_eq!(pos.offset, 0, "slot 1 (1, 2] ns = bucket 0 (2^0, 2^1]");
    let mut expected = vec![0u64; 31];
    expected[0] = 1;
    expected[17] = 3; // slot 18 (2^17, 2^18] = bucket 17
    expected[30] = 1; // the open last slot lands in bucket 30
    assert_eq!(pos.bucket_counts, expected);
    assert_eq!(
        disk.count,
        disk.zero_count + pos.bucket_counts.iter().sum::<u64>()
    );
    assert_eq!(
        str_attr(&disk.attributes, "system.device").as_deref(),
        Some("loop1")
    );
    assert_eq!(
        str_attr(&disk.attributes, "disk.io.direction").as_deref(),
        Some("write")
    );
    let attached = metric(node, "nodesat.agent.probe.attached");
    let Data::Gauge(g) = attached.data.as_ref().unwrap() else {
        panic!()
    };
    assert_eq!(
        str_attr(&g.data_points[0].attributes, "nodesat.probe.variant").as_deref(),
        Some("tp_btf")
    );
    assert_eq!(
        value(&sum_points(metric(node, "nodesat.agent.probe.run_count")).0[0]),
        1000.0
    );
    assert_eq!(
        value(&sum_points(metric(node, "nodesat.agent.events.lost")).0[0]),
        2.0
    );

    // every metric sent is in the catalogue, with its unit
    for r in &req.resource_metrics {
        for m in &r.scope_metrics[0].metrics {
            let def = CATALOG.iter().find(|d| d.name == m.name).expect(&m.name);
            assert_eq!(def.unit, m.unit);
        }
    }
    // and it encodes
    assert!(!req.encode_to_vec().is_empty());
}

#[test]
fn exponential_point_of_empty_and_single_slot() {
    let p = exponential_point(&Log2Hist::ZERO);
    assert_eq!((p.count, p.zero_count), (0, 0));
    assert!(p.positive.unwrap().bucket_counts.is_empty());
    let p = exponential_point(&hist(&[(10, 4)], 4000));
    let b = p.positive.unwrap();
    assert_eq!((b.offset, b.bucket_counts), (9, vec![4]));
}

#[test]
fn cumulative_totals_and_start_times() {
    let mut b = Builder::new(Temporality::Cumulative, info(), 60 * SEC);
    let mut totals = AgentTotals::default();
    b.ingest(&report(0, vec![pod_container(11)]), &totals);
    let first = b.build().unwrap();
    totals.export_failures.insert("Unavailable".into(), 3);
    // second interval: 11 again, 12 appears
    b.ingest(&report(1, vec![pod_container(11), unit(12)]), &totals);
    let second = b.build().unwrap();
    let start0 = T0 - 10 * SEC;
    let wait = |req: &ExportMetricsServiceRequest, k: &str, v: &str| {
        let p = sum_points(metric(
            resource(req, k, v),
            "nodesat.sched.runqueue.wait_time",
        ))
        .0[0]
            .clone();
        (value(&p), p.start_time_unix_nano, p.time_unix_nano)
    };
    assert_eq!(wait(&first, "k8s.pod.uid", "uid-11"), (2.0, start0, T0));
    assert_eq!(
        wait(&second, "k8s.pod.uid", "uid-11"),
        (4.0, start0, T0 + 10 * SEC),
        "running total, start at first appearance"
    );
    assert_eq!(
        wait(&second, "nodesat.systemd.unit", "ssh.service"),
        (1.0, T0, T0 + 10 * SEC),
        "a series appearing later starts at its first interval"
    );
    let th = exp_point(metric(
        resource(&second, "k8s.pod.uid", "uid-11"),
        "nodesat.cpu.throttle.duration",
    ));
    assert_eq!((th.count, th.start_time_unix_nano), (8, start0));
    assert_eq!(th.positive.as_ref().unwrap().bucket_counts, vec![6, 0, 2]);
    // run_count arrives as a total since load: 1000 then 2000, exported as is
    let node = resource(&second, "nodesat.workload.kind", "node");
    assert_eq!(
        value(&sum_points(metric(node, "nodesat.agent.probe.run_count")).0[0]),
        2000.0
    );
    let f = &sum_points(metric(node, "nodesat.agent.export.failures")).0[0];
    assert_eq!(value(f), 3.0);
    assert_eq!(
        str_attr(&f.attributes, "error.type").as_deref(),
        Some("Unavailable")
    );

    // third interval: 11 absent: still reported (unchanged total), until stale
    b.ingest(&report(2, vec![unit(12)]), &totals);
    let third = b.build().unwrap();
    assert_eq!(
        wait(&third, "k8s.pod.uid", "uid-11"),
        (4.0, start0, T0 + 20 * SEC)
    );
    for n in 3..10 {
        b.ingest(&report(n, vec![unit(12)]), &totals);
    }
    let later = b.build().unwrap();
    assert!(
        later.resource_metrics.iter().all(|r| str_attr(
            &r.resource.as_ref().unwrap().attributes,
            "k8s.pod.uid"
        )
        .is_none()),
        "stale entity forgotten"
    );
    // and if it returns, it is a new series
    b.ingest(&report(10, vec![pod_container(11)]), &totals);
    let back = b.build().unwrap();
    assert_eq!(
        wait(&back, "k8s.pod.uid", "uid-11"),
        (2.0, T0 + 90 * SEC, T0 + 100 * SEC)
    );
}

#[test]
fn pressure_stalls_and_memory_events_are_running_totals_by_attribute() {
    use crate::report::{PressureStalls, Stall};
    let stalls = |cpu_some: u64| PressureStalls {
        cpu: Stall {
            some_ns: cpu_some,
            full_ns: 0,
        },
        memory: Stall {
            some_ns: SEC / 2,
            full_ns: SEC / 4,
        },
        io: Stall::default(),
    };
    let mut b = Builder::new(Temporality::Cumulative, info(), 60 * SEC);
    let totals = AgentTotals::default();
    let mut c = pod_container(11);
    c.pressure = Some(stalls(SEC));
    c.memory_events = Some(crate::report::MemoryEvents {
        high: 4,
        oom_kill: 1,
        ..Default::default()
    });
    let mut r = report(0, vec![c.clone()]);
    r.node.pressure = Some(stalls(3 * SEC));
    b.ingest(&r, &totals);
    let _ = b.build().unwrap();
    c.pressure = Some(stalls(2 * SEC));
    b.ingest(&report(1, vec![c]), &totals);
    let req = b.build().unwrap();
    let point = |res: &ResourceMetrics, resource: &str, stall: &str| -> f64 {
        let (points, _) = sum_points(metric(res, "nodesat.pressure.stall_time"));
        let p = points
            .iter()
            .find(|p| {
                str_attr(&p.attributes, "nodesat.pressure.resource").as_deref() == Some(resource)
                    && str_attr(&p.attributes, "nodesat.pressure.stall").as_deref() == Some(stall)
            })
            .unwrap_or_else(|| panic!("no {resource} {stall} point"));
        value(p)
    };
    let pod = resource(&req, "k8s.pod.uid", "uid-11");
    assert_eq!(point(pod, "cpu", "some"), 3.0, "1 s + 2 s");
    assert_eq!(point(pod, "cpu", "full"), 0.0);
    assert_eq!(point(pod, "memory", "some"), 1.0);
    assert_eq!(point(pod, "memory", "full"), 0.5);
    assert_eq!(point(pod, "io", "some"), 0.0);
    let node = resource(&req, "nodesat.workload.kind", "node");
    assert_eq!(
        point(node, "cpu", "some"),
        3.0,
        "the node's, from the first interval"
    );
    let events = |event: &str| -> f64 {
        let (points, _) = sum_points(metric(pod, "nodesat.memory.events"));
        value(
            points
                .iter()
                .find(|p| str_attr(&p.attributes, "nodesat.memory.event").as_deref() == Some(event))
                .unwrap_or_else(|| panic!("no {event} point")),
        )
    };
    assert_eq!(events("high"), 8.0, "4 + 4");
    assert_eq!(events("oom_kill"), 2.0);
    assert_eq!(events("max"), 0.0);
}

#[test]
fn delta_temporality_sends_increases_since_last_export() {
    let mut b = Builder::new(Temporality::Delta, info(), u64::MAX);
    b.ingest(&report(0, vec![pod_container(11)]), &AgentTotals::default());
    b.build().unwrap();
    // two reports folded into one export (export interval longer than the collection's)
    b.ingest(&report(1, vec![pod_container(11)]), &AgentTotals::default());
    b.ingest(&report(2, vec![unit(12)]), &AgentTotals::default());
    let req = b.build().unwrap();
    let pod = resource(&req, "k8s.pod.uid", "uid-11");
    let (p, t) = sum_points(metric(pod, "nodesat.sched.runqueue.wait_time"));
    assert_eq!(t, AggregationTemporality::Delta as i32);
    assert_eq!(
        (value(&p[0]), p[0].start_time_unix_nano, p[0].time_unix_nano),
        (2.0, T0, T0 + 20 * SEC)
    );
    let th = exp_point(metric(pod, "nodesat.cpu.throttle.duration"));
    assert_eq!(th.count, 4);
    let node = resource(&req, "nodesat.workload.kind", "node");
    assert_eq!(
        value(&sum_points(metric(node, "nodesat.agent.probe.run_count")).0[0]),
        2000.0,
        "3000 - 1000"
    );
    // nothing new for 11 in the next export: no point
    b.ingest(&report(3, vec![unit(12)]), &AgentTotals::default());
    let req = b.build().unwrap();
    assert!(
        req.resource_metrics.iter().all(|r| str_attr(
            &r.resource.as_ref().unwrap().attributes,
            "k8s.pod.uid"
        )
        .is_none())
    );
}

fn batch(tag: &str) -> ExportMetricsServiceRequest {
    let mut b = Builder::new(
        Temporality::Cumulative,
        ResourceInfo {
            service_name: tag.into(),
            ..Default::default()
        },
        u64::MAX,
    );
    b.ingest(&report(0, vec![]), &AgentTotals::default());
    b.build().unwrap()
}

fn service(req: &ExportMetricsServiceRequest) -> String {
    str_attr(
        &req.resource_metrics[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes,
        "service.name",
    )
    .unwrap()
}

#[test]
fn queue_drops_oldest_when_full() {
    let q = Queue::new(2);
    assert!(q.push(batch("a")).is_none());
    assert!(q.push(batch("b")).is_none());
    let dropped = q.push(batch("c")).expect("full: the oldest goes");
    assert_eq!(service(&dropped), "a");
    assert_eq!(q.len(), 2);
    assert_eq!(service(&q.pop().unwrap()), "b");
    assert_eq!(service(&q.pop().unwrap()), "c");
    assert!(q.pop().is_none());
}

#[test]
fn retry_classification() {
    for s in [429, 502, 503, 504] {
        assert!(classify_http(s, None).retryable, "{s}");
    }
    for s in [400, 401, 403, 404, 413, 500, 501] {
        assert!(!classify_http(s, None).retryable, "{s}");
    }
    assert_eq!(
        transport::parse_retry_after(" 7 "),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        transport::parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        None
    );

    use tonic::Code;
    for c in [
        Code::Unavailable,
        Code::ResourceExhausted,
        Code::DeadlineExceeded,
        Code::Aborted,
    ] {
        assert!(
            classify_grpc(&tonic::Status::new(c, "x")).retryable,
            "{c:?}"
        );
    }
    for c in [
        Code::InvalidArgument,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::Unimplemented,
    ] {
        assert!(
            !classify_grpc(&tonic::Status::new(c, "x")).retryable,
            "{c:?}"
        );
    }
    // RetryInfo in the status details sets the delay
    let details = transport::rpc::Status {
        code: 8,
        message: "slow down".into(),
        details: vec![transport::rpc::Any {
            type_url: transport::rpc::RETRY_INFO.into(),
            value: transport::rpc::RetryInfo {
                retry_delay: Some(transport::rpc::Duration {
                    seconds: 3,
                    nanos: 500_000_000,
                }),
            }
            .encode_to_vec(),
        }],
    }
    .encode_to_vec();
    let st = tonic::Status::with_details(Code::ResourceExhausted, "slow down", details.into());
    let e = classify_grpc(&st);
    assert!(e.retryable);
    assert_eq!(e.retry_after, Some(Duration::from_millis(3500)));
    assert_eq!(e.kind, "ResourceExhausted");
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let p = RetryPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        max_elapsed: Duration::from_secs(10),
    };
    for _ in 0..50 {
        let d0 = super::backoff(&p, 0);
        assert!(
            d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100),
            "{d0:?}"
        );
        let d2 = super::backoff(&p, 2);
        assert!(
            d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(400),
            "{d2:?}"
        );
        let d9 = super::backoff(&p, 9);
        assert!(
            d9 >= Duration::from_millis(500) && d9 <= Duration::from_secs(1),
            "{d9:?}"
        );
    }
}

fn load(
    flags: crate::config::Flags,
    env: &[(&str, &str)],
) -> Result<crate::config::Config, String> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    crate::config::Config::load(&flags, |k| env.get(k).cloned()).map_err(|e| e.to_string())
}

#[test]
fn settings_from_env_flags_and_their_defaults() {
    let c = load(Default::default(), &[]).unwrap();
    assert!(c.export.is_none(), "no endpoint: export off");

    let c = load(
        Default::default(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%20cret,x-tenant=a"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=fromattrs,k8s.cluster.name=prod",
            ),
        ],
    )
    .unwrap()
    .export
    .unwrap();
    assert_eq!(c.protocol, Protocol::HttpProtobuf, "spec default");
    assert_eq!(c.url, "http://collector:4318/v1/metrics");
    assert_eq!(c.timeout, Duration::from_secs(10));
    assert_eq!(c.compression, Compression::None);
    assert_eq!(c.temporality, Temporality::Cumulative);
    assert_eq!(
        c.headers,
        vec![
            ("api-key".to_owned(), "s cret".to_owned()),
            ("x-tenant".to_owned(), "a".to_owned())
        ]
    );
    assert_eq!(c.service_name, "fromattrs");
    assert_eq!(
        c.resource_attributes,
        vec![("k8s.cluster.name".to_owned(), "prod".to_owned())]
    );

    let c = load(
        crate::config::Flags {
            otlp_protocol: Some("grpc".into()),
            otlp_compression: Some("gzip".into()),
            ..Default::default()
        },
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "1500"),
            ("OTEL_SERVICE_NAME", "agent"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "60000"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
        ],
    )
    .unwrap()
    .export
    .unwrap();
    assert_eq!(c.protocol, Protocol::Grpc, "flag beats env");
    assert_eq!(c.url, "http://collector:4317", "gRPC: the endpoint itself");
    assert_eq!(
        c.timeout,
        Duration::from_millis(1500),
        "metrics-specific wins"
    );
    assert_eq!(c.compression, Compression::Gzip);
    assert_eq!(c.service_name, "agent");
    assert_eq!(c.export_interval, Some(Duration::from_secs(60)));
    assert_eq!(c.temporality, Temporality::Delta);

    let c = load(
        Default::default(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "https://m.example/custom",
            ),
        ],
    )
    .unwrap()
    .export
    .unwrap();
    assert_eq!(c.url, "https://m.example/custom", "used as is");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.toml");
    std::fs::write(
        &path,
        "otlp_endpoint = \"http://127.0.0.1:4318\"\notlp_queue_size = 5\n",
    )
    .unwrap();
    let c = load(
        crate::config::Flags {
            config: Some(path),
            ..Default::default()
        },
        &[],
    )
    .unwrap()
    .export
    .unwrap();
    assert_eq!(c.queue_size, 5);
}

#[test]
fn invalid_export_settings_name_field_and_origin() {
    for (var, value, expect) in [
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/json",
            "grpc, http/protobuf",
        ),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "http://"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "gzip, none"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon", "milliseconds"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "novalue", "key=value"),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nonexistent/ca.pem",
            "PEM",
        ),
        ("OTEL_RESOURCE_ATTRIBUTES", "a=%zz", "key=value"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "0", "milliseconds"),
        ("NODESAT_OTLP_QUEUE_SIZE", "0", "from 1 to 10000"),
        (
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "lowmemory",
            "cumulative, delta",
        ),
    ] {
        // invalid even when export is off (no endpoint), like every other setting
        let err = load(Default::default(), &[(var, value)]).unwrap_err();
        assert!(err.contains(var) && err.contains(expect), "{var}: {err}");
    }
    let err = load(
        crate::config::Flags {
            otlp_protocol: Some("udp".into()),
            ..Default::default()
        },
        &[],
    )
    .unwrap_err();
    assert!(
        err.contains("otlp_protocol") && err.contains("--otlp-protocol"),
        "{err}"
    );
}

#[test]
fn docs_list_every_catalog_metric() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let generated = format!(
        "{}\n{}{}",
        catalog::DOC_BEGIN,
        catalog::markdown(),
        catalog::DOC_END
    );
    if std::env::var_os("NODESAT_UPDATE_DOCS").is_some() {
        let updated = match (doc.find(catalog::DOC_BEGIN), doc.find(catalog::DOC_END)) {
            (Some(a), Some(b)) => format!(
                "{}{generated}{}",
                &doc[..a],
                &doc[b + catalog::DOC_END.len()..]
            ),
            _ => panic!("docs/metrics.md has no catalogue markers"),
        };
        std::fs::write(&path, updated).unwrap();
        return;
    }
    for d in CATALOG {
        assert!(
            doc.contains(&format!("| `{}` |", d.name)),
            "docs/metrics.md does not list {}",
            d.name
        );
    }
    assert!(
        doc.contains(&generated),
        "docs/metrics.md's OTLP table is not the catalogue's; run NODESAT_UPDATE_DOCS=1 cargo test -p nodesat export::tests::docs"
    );
}

// ── end to end ──────────────────────────────────────────────────────────────────────────

fn export_config(protocol: Protocol, url: String, compression: Compression) -> ExportConfig {
    ExportConfig {
        protocol,
        url,
        headers: vec![("x-tenant".into(), "t1".into())],
        timeout: Duration::from_secs(2),
        compression,
        certificate: None,
        client_identity: None,
        temporality: Temporality::Cumulative,
        service_name: "nodesat".into(),
        resource_attributes: Vec::new(),
        export_interval: None,
        queue_size: 16,
        retry: RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(20),
        },
    }
}

type Received = (ExportMetricsServiceRequest, Option<String>);

#[derive(Clone, Default)]
struct GrpcSink {
    /// Each request, with its x-tenant metadata.
    got: Arc<Mutex<Vec<Received>>>,
    /// Answer UNAVAILABLE to this many calls first.
    fail_first: Arc<Mutex<u32>>,
    /// The client's certificate (DER) of each request, over TLS with client authentication.
    client_certificates: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
}

#[tonic::async_trait]
impl MetricsService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        {
            let mut f = self.fail_first.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err(tonic::Status::unavailable("warming up"));
            }
        }
        let cert = request
            .peer_certs()
            .and_then(|c| c.first().map(|c| c.to_vec()));
        self.client_certificates.lock().unwrap().push(cert);
        let tenant = request
            .metadata()
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.got
            .lock()
            .unwrap()
            .push((request.into_inner(), tenant));
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: 1,
                error_message: "one point rejected (test)".into(),
            }),
        }))
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn grpc_receiver_decodes_what_is_sent() {
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let sink = GrpcSink {
        fail_first: Arc::new(Mutex::new(1)),
        ..Default::default()
    };
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                MetricsServiceServer::new(sink.clone())
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming(incoming),
    );
    let c = export_config(Protocol::Grpc, format!("http://{addr}"), Compression::Gzip);
    let mut e = Exporter::start(&c, info()).unwrap();
    e.export(&report(0, vec![pod_container(11)]));
    let got = sink.got.clone();
    wait_for("the first batch over gRPC", || {
        got.lock().unwrap().len() == 1
    })
    .await;
    e.export(&report(1, vec![pod_container(11)]));
    wait_for("two batches over gRPC", || got.lock().unwrap().len() == 2).await;
    e.shutdown(tokio::time::Instant::now() + Duration::from_secs(2))
        .await;
    let got = sink.got.lock().unwrap();
    assert_eq!(got[0].1.as_deref(), Some("t1"), "headers as metadata");
    let totals: Vec<f64> = got
        .iter()
        .map(|(req, _)| {
            value(
                &sum_points(metric(
                    resource(req, "k8s.pod.uid", "uid-11"),
                    "nodesat.sched.runqueue.wait_time",
                ))
                .0[0],
            )
        })
        .collect();
    assert_eq!(
        totals,
        vec![2.0, 4.0],
        "first batch retried after UNAVAILABLE, in order"
    );
    let node = resource(&got[1].0, "nodesat.workload.kind", "node");
    let f = &sum_points(metric(node, "nodesat.agent.export.failures")).0[0];
    assert_eq!(
        (value(f), str_attr(&f.attributes, "error.type").as_deref()),
        (1.0, Some("Unavailable")),
        "the failed attempt is counted"
    );
    server.abort();
}

/// One request the HTTP receiver got.
#[derive(Debug, Clone)]
struct HttpReq {
    path: String,
    headers: HashMap<String, String>,
    body: ExportMetricsServiceRequest,
    /// The client's certificate (DER), over TLS with client authentication.
    client_certificate: Option<Vec<u8>>,
}

type Script = Arc<Mutex<std::collections::VecDeque<(u16, Option<&'static str>)>>>;

/// A small HTTP/1.1 receiver: answers each request with the next scripted status (then 200)
/// and decodes the (gzip'd) protobuf body; over TLS when given an acceptor.
async fn http_receiver(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    script: Vec<(u16, Option<&'static str>)>,
    got: Arc<Mutex<Vec<HttpReq>>>,
) {
    let script: Script = Arc::new(Mutex::new(script.into()));
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            return;
        };
        let (script, got, tls) = (script.clone(), got.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => answer_http(sock, None, script, got).await,
                Some(acceptor) => match acceptor.accept(sock).await {
                    Ok(stream) => {
                        let cert = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.to_vec());
                        answer_http(stream, cert, script, got).await
                    }
                    Err(e) => eprintln!("test receiver: TLS handshake failed: {e}"),
                },
            }
        });
    }
}

async fn answer_http<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut sock: S,
    client_certificate: Option<Vec<u8>>,
    script: Script,
    got: Arc<Mutex<Vec<HttpReq>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines.next().unwrap().split(' ').nth(1).unwrap().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers["content-length"].parse().unwrap();
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "short body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut body = buf[head_end..head_end + len].to_vec();
    if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out).unwrap();
        body = out;
    }
    let (status, retry_after) = script.lock().unwrap().pop_front().unwrap_or((200, None));
    let resp_body = if status == 200 {
        got.lock().unwrap().push(HttpReq {
            path,
            headers: headers.clone(),
            body: ExportMetricsServiceRequest::decode(&body[..]).unwrap(),
            client_certificate,
        });
        ExportMetricsServiceResponse::default().encode_to_vec()
    } else {
        b"busy".to_vec()
    };
    let mut resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp_body.len()
    );
    if let Some(r) = retry_after {
        resp.push_str(&format!("Retry-After: {r}\r\n"));
    }
    resp.push_str("\r\n");
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.write_all(&resp_body).await;
    let _ = sock.shutdown().await;
}

#[tokio::test]
async fn http_receiver_decodes_gzip_protobuf_and_honours_retry_after() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let server = tokio::spawn(http_receiver(
        listener,
        None,
        vec![(503, Some("1")), (200, None), (400, None)],
        got.clone(),
    ));
    let c = export_config(
        Protocol::HttpProtobuf,
        format!("http://{addr}/v1/metrics"),
        Compression::Gzip,
    );
    let mut e = Exporter::start(&c, info()).unwrap();
    let began = std::time::Instant::now();
    let g = got.clone();
    e.export(&report(0, vec![pod_container(11)])); // 503 + Retry-After: 1, then 200
    wait_for("the first batch", || g.lock().unwrap().len() == 1).await;
    assert!(
        began.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 honoured, not the 50 ms backoff"
    );
    e.export(&report(1, vec![pod_container(11)])); // 400: dropped (not retryable)
    let stats = e.stats.clone();
    wait_for("the dropped batch", || {
        stats.snapshot().dropped.get("permanent_error") == Some(&1)
    })
    .await;
    e.export(&report(2, vec![pod_container(11)])); // 200
    wait_for("two delivered batches", || g.lock().unwrap().len() == 2).await;
    e.shutdown(tokio::time::Instant::now() + Duration::from_secs(2))
        .await;
    let got = got.lock().unwrap();
    let r = &got[0];
    assert_eq!(r.path, "/v1/metrics");
    assert_eq!(r.headers["content-type"], "application/x-protobuf");
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert_eq!(r.headers["x-tenant"], "t1");
    let wait = |req: &ExportMetricsServiceRequest| {
        value(
            &sum_points(metric(
                resource(req, "k8s.pod.uid", "uid-11"),
                "nodesat.sched.runqueue.wait_time",
            ))
            .0[0],
        )
    };
    assert_eq!(wait(&got[0].body), 2.0);
    assert_eq!(
        wait(&got[1].body),
        6.0,
        "cumulative across the dropped batch"
    );
    let node = resource(&got[1].body, "nodesat.workload.kind", "node");
    let dropped = &sum_points(metric(node, "nodesat.agent.export.queue.dropped")).0[0];
    assert_eq!(
        str_attr(&dropped.attributes, "nodesat.export.reason").as_deref(),
        Some("permanent_error")
    );
    server.abort();
}

#[tokio::test]
async fn receiver_down_then_back_gets_the_queued_batches_in_order() {
    // a free port, with nothing listening yet
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = export_config(
        Protocol::HttpProtobuf,
        format!("http://{addr}/v1/metrics"),
        Compression::None,
    );
    let mut e = Exporter::start(&c, info()).unwrap();
    for n in 0..5 {
        e.export(&report(n, vec![pod_container(11)]));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let server = tokio::spawn(http_receiver(listener, None, vec![], got.clone()));
    let g = got.clone();
    wait_for("the five queued batches", || g.lock().unwrap().len() == 5).await;
    e.shutdown(tokio::time::Instant::now() + Duration::from_secs(2))
        .await;
    let got = got.lock().unwrap();
    let points: Vec<(f64, u64, u64)> = got
        .iter()
        .map(|r| {
            let p = &sum_points(metric(
                resource(&r.body, "k8s.pod.uid", "uid-11"),
                "nodesat.sched.runqueue.wait_time",
            ))
            .0[0];
            (value(p), p.start_time_unix_nano, p.time_unix_nano)
        })
        .collect();
    let expected: Vec<(f64, u64, u64)> = (0..5)
        .map(|n| (2.0 * (n + 1) as f64, T0 - 10 * SEC, T0 + n * 10 * SEC))
        .collect();
    assert_eq!(
        points, expected,
        "monotonic totals, one start time, in order"
    );
    let node = resource(&got[4].body, "nodesat.workload.kind", "node");
    let f = &sum_points(metric(node, "nodesat.agent.export.failures")).0[0];
    assert!(value(f) >= 1.0);
    assert_eq!(
        str_attr(&f.attributes, "error.type").as_deref(),
        Some("connection")
    );
    server.abort();
}

mod prometheus;
mod tls;

#[test]
fn large_exports_are_split_into_requests_of_whole_resources() {
    use super::otlp::split;
    let mut b = Builder::new(Temporality::Cumulative, info(), u64::MAX);
    let cgroups: Vec<CgroupReport> = (0..2_000).map(|i| pod_container(100 + i)).collect();
    b.ingest(&report(0, cgroups), &AgentTotals::default());
    let whole = b.build().unwrap();
    let (resources, size) = (whole.resource_metrics.len(), whole.encoded_len());
    assert_eq!(resources, 2_001, "2000 workloads and the node");
    let max = 256 * 1024;
    let parts = split(whole.clone(), max);
    assert!(
        parts.len() >= size.div_ceil(max),
        "{} parts for {size} bytes",
        parts.len()
    );
    for p in &parts {
        assert!(
            p.encoded_len() <= max,
            "a part of {} bytes",
            p.encoded_len()
        );
    }
    // Every resource exactly once, whole, in order.
    let joined: Vec<_> = parts.into_iter().flat_map(|p| p.resource_metrics).collect();
    assert_eq!(joined, whole.resource_metrics);
    // Small enough: untouched.
    assert_eq!(split(whole.clone(), size), vec![whole.clone()]);
    // One resource bigger than the limit goes alone.
    let alone = split(whole.clone(), 10);
    assert_eq!(alone.len(), resources);
}

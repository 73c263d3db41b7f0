//! The Prometheus text: names, labels, cumulative `le` buckets in seconds, escaping, HELP and
//! TYPE once per family, `promtool check metrics` when it is installed, and the HTTP endpoint.

use std::collections::BTreeMap;

use super::*;
use crate::{
    export::prometheus::{CONTENT_TYPE, Prometheus, render, slots},
    health::{self, Health, Routes},
};

/// One sample line, parsed back: name, labels (unescaped), value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: String,
}

/// A small reader of the text format (what Prometheus accepts of it): panics on anything
/// malformed, so rendering mistakes show up here.
fn parse(text: &str) -> (Vec<Sample>, Vec<String>) {
    let mut samples = Vec::new();
    let mut comments = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            comments.push(line.to_owned());
            continue;
        }
        let name_end = line.find(['{', ' ']).expect(line);
        let name = &line[..name_end];
        assert!(
            name.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic()
                    || c == '_'
                    || c == ':'
                    || (i > 0 && c.is_ascii_digit())),
            "metric name {name:?}"
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            loop {
                let (start, _) = *chars.peek().expect(line);
                let eq = r[start..].find('=').expect(line) + start;
                let label = r[start..eq].to_owned();
                assert!(
                    label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "label {label:?} in {line}"
                );
                while chars.next_if(|&(i, _)| i <= eq).is_some() {}
                assert_eq!(chars.next().map(|c| c.1), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    match chars.next().expect(line).1 {
                        '\\' => match chars.next().expect(line).1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("escape \\{c} in {line}"),
                        },
                        '"' => break,
                        '\n' => panic!("raw line feed in {line}"),
                        c => value.push(c),
                    }
                }
                assert!(labels.insert(label, value).is_none(), "label twice: {line}");
                match chars.next().expect(line) {
                    (_, ',') => continue,
                    (i, '}') => {
                        rest = &r[i + 1..];
                        break;
                    }
                    (_, c) => panic!("{c:?} after a label value in {line}"),
                }
            }
        }
        let value = rest.strip_prefix(' ').expect(line);
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "value {value:?} in {line}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: value.to_owned(),
        });
    }
    (samples, comments)
}

/// The samples named `name` whose labels include `with`.
fn find<'a>(samples: &'a [Sample], name: &str, with: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

fn one<'a>(samples: &'a [Sample], name: &str, with: &[(&str, &str)]) -> &'a str {
    let found = find(samples, name, with);
    assert_eq!(found.len(), 1, "{name} {with:?}: {found:?}");
    &found[0].value
}

const POD: &[(&str, &str)] = &[("pod_uid", "uid-11")];

#[test]
fn prometheus_names_follow_the_conventions() {
    let mut seen = std::collections::BTreeSet::new();
    for d in CATALOG {
        let name = d.prometheus_name();
        assert!(seen.insert(name.clone()), "{name} twice");
        assert!(
            name.starts_with("nodesat_") && !name.contains('.'),
            "{name}"
        );
        assert_eq!(
            name.ends_with("_total"),
            d.instrument == catalog::Instrument::Counter,
            "{name}"
        );
        assert_eq!(
            name.contains("_seconds"),
            d.unit == "s" || d.unit == "ns",
            "{name}: durations in seconds"
        );
    }
    assert_eq!(
        catalog::RUNQUEUE_LATENCY.prometheus_name(),
        "nodesat_sched_runqueue_latency_seconds"
    );
    assert_eq!(
        catalog::RUNQUEUE_WAIT_TIME.prometheus_name(),
        "nodesat_sched_runqueue_wait_time_seconds_total"
    );
    assert_eq!(
        catalog::RUNQUEUE_LENGTH.prometheus_name(),
        "nodesat_sched_runqueue_length"
    );
    // Every attribute the mapping sets has a label of its own (no fallback names).
    let resource_keys = [
        "nodesat.workload.kind",
        "k8s.pod.uid",
        "k8s.pod.name",
        "k8s.namespace.name",
        "k8s.container.name",
        "container.id",
        "container.runtime.name",
        "nodesat.k8s.pod.qos_class",
        "nodesat.systemd.unit",
        "nodesat.cgroup.path",
        "nodesat.cgroup.id",
        "k8s.node.name",
        "host.name",
    ];
    let point_keys = CATALOG.iter().flat_map(|d| d.attributes.iter().copied());
    for key in resource_keys.into_iter().chain(point_keys) {
        assert!(
            catalog::PROMETHEUS_LABELS.iter().any(|(k, _)| *k == key),
            "{key} has no Prometheus label"
        );
    }
    assert_eq!(catalog::prometheus_label("service.name"), None);
    assert_eq!(
        catalog::prometheus_label("k8s.cluster.name").as_deref(),
        Some("k8s_cluster_name")
    );
}

#[test]
fn kernel_slots_come_back_from_the_exponential_point() {
    for h in [
        Log2Hist::ZERO,
        hist(&[(0, 1), (1, 1), (18, 3), (31, 1)], 1_000_000),
        hist(&[(31, 9)], 0),
        hist(&[(5, 2), (6, 0), (9, 4)], 700),
    ] {
        assert_eq!(slots(&exponential_point(&h)), h.slots);
    }
}

#[test]
fn text_carries_the_catalogue_with_identity_labels_and_cumulative_buckets() {
    let mut p = Prometheus::new(info());
    let exposition = p.exposition();
    assert_eq!(
        exposition.current().as_str(),
        "",
        "empty before the first report"
    );
    p.update(
        &report(0, vec![pod_container(11), unit(12)]),
        &AgentTotals::default(),
    );
    let text = exposition.current();
    eprintln!("{}", text.as_str());
    let (samples, comments) = parse(&text);

    // One HELP and one TYPE per family, before its samples, which are contiguous.
    let mut families: Vec<(String, String)> = Vec::new();
    for c in &comments {
        let mut w = c.splitn(4, ' ');
        let (hash, what, name) = (w.next(), w.next().unwrap(), w.next().unwrap());
        assert_eq!(hash, Some("#"));
        if what == "TYPE" {
            families.push((name.to_owned(), w.next().unwrap().to_owned()));
        } else {
            assert_eq!(what, "HELP", "{c}");
        }
    }
    let mut current = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            current = rest.split(' ').next();
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = current.expect("a sample before any TYPE");
            assert!(
                name == family
                    || [family, "_bucket"].concat() == name
                    || [family, "_sum"].concat() == name
                    || [family, "_count"].concat() == name,
                "{name} under the TYPE of {family}"
            );
        }
    }
    let names: Vec<&str> = families.iter().map(|(n, _)| n.as_str()).collect();
    let mut unique = names.clone();
    unique.dedup();
    assert_eq!(names, unique, "each family once");
    assert_eq!(comments.len(), 2 * families.len(), "a HELP for every TYPE");
    let ty = |name: &str| {
        families
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    };
    assert_eq!(
        ty("nodesat_sched_runqueue_latency_seconds"),
        Some("histogram")
    );
    assert_eq!(
        ty("nodesat_sched_runqueue_wait_time_seconds_total"),
        Some("counter")
    );
    assert_eq!(ty("nodesat_sched_runqueue_length"), Some("gauge"));
    assert_eq!(
        ty("nodesat_agent_export_failures_total"),
        None,
        "no points, no family"
    );
    assert!(text.contains(&format!(
        "# HELP nodesat_memory_oom_kills_total {}\n",
        catalog::OOM_KILLS.description
    )));

    // The workload's identity as labels, on each of its series.
    let wait = find(
        &samples,
        "nodesat_sched_runqueue_wait_time_seconds_total",
        POD,
    );
    assert_eq!(wait.len(), 1);
    let labels: Vec<(&str, &str)> = wait[0]
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            (
                "cgroup",
                "/kubepods.slice/pod-11/cri-containerd-abc11.scope"
            ),
            ("cgroup_id", "11"),
            ("container", "app"),
            ("container_id", "abc11"),
            ("host", "node-a"),
            ("k8s_cluster_name", "prod"),
            ("kind", "pod_container"),
            ("namespace", "shop"),
            ("node", "node-a"),
            ("pod", "web-11"),
            ("pod_uid", "uid-11"),
        ]
    );
    assert_eq!(wait[0].value, "2");
    let ssh = &[("unit", "ssh.service"), ("kind", "systemd_unit")];
    assert_eq!(
        one(
            &samples,
            "nodesat_sched_runqueue_wait_time_seconds_total",
            ssh
        ),
        "1"
    );
    assert_eq!(
        one(&samples, "nodesat_io_wait_time_seconds_total", POD),
        "0.5"
    );
    assert_eq!(one(&samples, "nodesat_memory_oom_kills_total", POD), "1");
    assert_eq!(
        one(
            &samples,
            "nodesat_tcp_retransmits_total",
            &[
                ("pod_uid", "uid-11"),
                ("family", "ipv4"),
                ("retransmit_kind", "data"),
                ("retransmit_cause", "fast")
            ]
        ),
        "7"
    );
    assert_eq!(one(&samples, "nodesat_cpu_periods_total", POD), "100");
    assert_eq!(
        one(&samples, "nodesat_cpu_throttled_periods_total", POD),
        "20"
    );
    assert_eq!(
        one(&samples, "nodesat_cpu_throttled_time_seconds_total", POD),
        "3"
    );

    // Node series: per CPU, per disk, the probes.
    let node = ("kind", "node");
    assert_eq!(
        one(
            &samples,
            "nodesat_sched_runqueue_length",
            &[node, ("cpu", "0")]
        ),
        "0.5"
    );
    assert_eq!(
        one(
            &samples,
            "nodesat_sched_runqueue_wait_time_seconds_total",
            &[node, ("cpu", "0")]
        ),
        "5"
    );
    let probe = &[
        ("probe", "runqueue"),
        ("hook", "sched_switch"),
        ("variant", "tp_btf"),
    ];
    assert_eq!(one(&samples, "nodesat_agent_probe_attached", probe), "1");
    assert_eq!(
        one(
            &samples,
            "nodesat_agent_probe_run_time_seconds_total",
            &probe[..2]
        ),
        "0.00005"
    );
    assert_eq!(
        one(
            &samples,
            "nodesat_agent_events_lost_total",
            &[("probe", "oom")]
        ),
        "2"
    );

    // The disk's histogram: slots 0, 1, 18 and the open slot 31 as cumulative buckets in
    // seconds, every finite bound 2^0..2^30 ns, +Inf, _sum in seconds, _count.
    let disk = &[
        ("device", "loop1"),
        ("major_minor", "7:1"),
        ("direction", "write"),
    ];
    let buckets = find(&samples, "nodesat_disk_io_latency_seconds_bucket", disk);
    assert_eq!(buckets.len(), 32, "31 finite bounds and +Inf");
    let bucket = |le: &str| {
        let mut with = disk.to_vec();
        with.push(("le", le));
        one(&samples, "nodesat_disk_io_latency_seconds_bucket", &with).to_owned()
    };
    assert_eq!(bucket("0.000000001"), "1", "slot 0: up to 1 ns");
    assert_eq!(bucket("0.000000002"), "2");
    assert_eq!(bucket("0.000131072"), "2", "2^17 ns");
    assert_eq!(bucket("0.000262144"), "5", "2^18 ns");
    assert_eq!(bucket("1.073741824"), "5", "2^30 ns: the last finite bound");
    assert_eq!(bucket("+Inf"), "6", "the open slot counts only here");
    let mut last = 0u64;
    for b in &buckets {
        let v: u64 = b.value.parse().unwrap();
        assert!(v >= last, "cumulative: {buckets:?}");
        last = v;
    }
    assert_eq!(
        one(&samples, "nodesat_disk_io_latency_seconds_sum", disk),
        "0.001"
    );
    assert_eq!(
        one(&samples, "nodesat_disk_io_latency_seconds_count", disk),
        "6"
    );
    // The pod's throttle durations: 3 in (2^19, 2^20] ns, 1 in (2^21, 2^22] ns.
    let mut with = POD.to_vec();
    with.push(("le", "0.001048576"));
    assert_eq!(
        one(
            &samples,
            "nodesat_cpu_throttle_duration_seconds_bucket",
            &with
        ),
        "3"
    );
    assert_eq!(
        one(&samples, "nodesat_cpu_throttle_duration_seconds_count", POD),
        "4"
    );
    assert_eq!(
        one(&samples, "nodesat_cpu_throttle_duration_seconds_sum", POD),
        "0.005"
    );

    // Cumulative: the next report adds to the totals.
    p.update(
        &report(1, vec![pod_container(11), unit(12)]),
        &AgentTotals::default(),
    );
    let (samples, _) = parse(&exposition.current());
    assert_eq!(
        one(
            &samples,
            "nodesat_sched_runqueue_wait_time_seconds_total",
            POD
        ),
        "4"
    );
    assert_eq!(
        one(&samples, "nodesat_disk_io_latency_seconds_count", disk),
        "12"
    );
    assert_eq!(
        one(&samples, "nodesat_agent_probe_run_count_total", &probe[..2]),
        "2000",
        "a kernel total, not a sum of totals"
    );
}

#[test]
fn label_values_and_help_are_escaped() {
    let mut c = CgroupReport::new(7);
    let path = "/we\"ird\\cg\nroup";
    c.name = Some(path.into());
    c.identity = Identity::cgroup(path);
    c.runqueue.wait_ns = SEC;
    let text = {
        let mut b = Builder::new(Temporality::Cumulative, info(), u64::MAX);
        b.ingest(&report(0, vec![c]), &AgentTotals::default());
        render(&b.build().unwrap())
    };
    assert!(
        text.contains(r#"cgroup="/we\"ird\\cg\nroup""#),
        "escaped in the text:\n{text}"
    );
    let (samples, _) = parse(&text);
    assert_eq!(
        one(
            &samples,
            "nodesat_sched_runqueue_wait_time_seconds_total",
            &[("cgroup", path)]
        ),
        "1",
        "and read back as it was"
    );
    assert_eq!(
        crate::export::prometheus::escape_label("a\\b\"c\nd"),
        r#"a\\b\"c\nd"#
    );
}

/// `promtool check metrics` (Debian's `prometheus` package) lints the text: names, suffixes,
/// units, HELP. Skipped, saying so, where promtool is not installed.
#[test]
fn promtool_accepts_the_text() {
    let mut p = Prometheus::new(info());
    p.update(
        &report(0, vec![pod_container(11), unit(12)]),
        &AgentTotals {
            export_failures: [("Unavailable".to_owned(), 1)].into(),
            dropped: [("queue_full", 1)].into(),
            delivered: 7,
            queue_depth: Some(2),
            kubelet: Some(crate::identity::kubelet::KubeletStatus {
                failures: [("503", 3), ("connection", 1)].into(),
                pod_list_age: Some(Duration::from_millis(4500)),
            }),
        },
    );
    let text = p.exposition().current();
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "skipping promtool_accepts_the_text: promtool: {e} (apt-get install prometheus)"
            );
            return;
        }
    };
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("promtool check metrics: {} {said}", out.status);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{said}\n{}",
        text.as_str()
    );
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\naccept: text/plain\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn metrics_and_health_share_one_address_or_not() {
    let mut p = Prometheus::new(info());
    p.update(&report(0, vec![pod_container(11)]), &AgentTotals::default());
    let h = Health::new(Duration::from_secs(10));
    h.collected();
    let a: SocketAddr = "127.0.0.1:9464".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:9465".parse().unwrap();

    let same = health::routes(Some(a), &h, Some(a), Some(p.exposition()));
    assert_eq!(same.len(), 1, "one server for both");
    let apart = health::routes(Some(a), &h, Some(b), Some(p.exposition()));
    assert_eq!(apart.len(), 2);
    assert!(apart[1].1.health.is_none() && apart[1].1.metrics.is_some());
    assert!(health::routes(None, &h, None, None).is_empty());

    let (_, routes) = same.into_iter().next().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(health::serve(listener, routes));
    let metrics = get(addr, "/metrics").await;
    let (head, body) = metrics.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains(&format!("content-type: {CONTENT_TYPE}")),
        "{head}"
    );
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    assert_eq!(body, p.exposition().current().as_str());
    assert!(!head.contains("content-encoding"), "{head}");

    // A scraper that accepts gzip (Prometheus does) gets the same text gzip'd.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let zipped = &raw[split + 4..];
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", zipped.len())),
        "{head}"
    );
    let mut unzipped = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(zipped), &mut unzipped)
        .unwrap();
    assert_eq!(unzipped, p.exposition().current().as_str());
    assert!(
        zipped.len() * 4 < unzipped.len(),
        "{} -> {}",
        unzipped.len(),
        zipped.len()
    );

    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200 OK"));
    let missing = get(addr, "/nope").await;
    assert!(
        missing.starts_with("HTTP/1.1 404") && missing.contains("/metrics"),
        "{missing}"
    );
    server.abort();

    let only_metrics = Routes {
        metrics: Some(p.exposition()),
        ..Default::default()
    };
    let answer = only_metrics.answer("/healthz", false, std::time::Instant::now());
    assert_eq!(answer.code, 404, "health is not served there");
}

#[test]
fn prometheus_listen_setting() {
    let c = load(
        Default::default(),
        &[("NODESAT_PROMETHEUS_LISTEN", "127.0.0.1:9464")],
    )
    .unwrap();
    assert_eq!(c.prometheus_listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert!(c.export.is_none(), "independent of OTLP export");
    assert_eq!(
        load(Default::default(), &[]).unwrap().prometheus_listen,
        None,
        "off by default"
    );
    for (flags, env, origin) in [
        (
            crate::config::Flags {
                prometheus_listen: Some(":9464".into()),
                ..Default::default()
            },
            vec![],
            "flag --prometheus-listen",
        ),
        (
            Default::default(),
            vec![("NODESAT_PROMETHEUS_LISTEN", "localhost")],
            "environment variable NODESAT_PROMETHEUS_LISTEN",
        ),
    ] {
        let err = load(flags, &env).unwrap_err();
        assert!(
            err.contains("prometheus_listen")
                && err.contains(origin)
                && err.contains("127.0.0.1:9464"),
            "{err}"
        );
    }
}

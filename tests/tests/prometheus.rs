//! The `/metrics` endpoint scraped by a real Prometheus server (Debian's `prometheus` package,
//! which `cargo xtask test` installs).
//!
//! A cgroup whose name holds a double quote and a backslash runs 3 spinners per CPU, so its
//! tasks wait for a CPU. The agent runs with `--prometheus-listen` on loopback and prints its
//! reports as JSON; Prometheus scrapes it every second. Through Prometheus' HTTP API the test
//! then checks that the target is up, the metric names and labels (the cgroup's path comes
//! back exactly as it is, through the text format's escaping), and that every sample taken
//! between two reports equals the running total of the reports printed until then: run-queue
//! wait time, the latency histogram's count and its `+Inf` and highest buckets, and each CPU's
//! run-queue length. `promtool check metrics` lints the agent's text too.

use std::io::Write;
use std::net::SocketAddr;

use std::process::{Command, Stdio};
use std::time::Duration;

use nodesat_tests::prometheus::{Prometheus, prometheus_bin};
use nodesat_tests::{
    Agent, Report, TestCgroup, TestProcess, allowed_cpus, free_port, http_get, load_bin,
    online_cpus, skip, skip_if_unprivileged, spawn_in,
};
use serde_json::Value;

const TEST: &str = "prometheus_scrapes_the_agent";
/// The agent's collection interval, and Prometheus' scrape interval.
const INTERVAL: &str = "2s";
/// Samples this close to a report's collection are not checked: they may come from either
/// side of it.
const MARGIN_S: f64 = 0.3;
/// Reports taken once Prometheus scrapes the agent.
const REPORTS: usize = 4;

/// One series of a range selector: its labels and raw samples (time in seconds, value).
type Series = (serde_json::Map<String, Value>, Vec<(f64, f64)>);

/// The series a range selector returns.
fn samples(result: &[Value]) -> Vec<Series> {
    result
        .iter()
        .map(|series| {
            let labels = series["metric"].as_object().cloned().unwrap_or_default();
            let values = series["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    let t = v[0].as_f64().expect("sample time");
                    let x: f64 = v[1].as_str().and_then(|s| s.parse().ok()).expect("value");
                    (t, x)
                })
                .collect();
            (labels, values)
        })
        .collect()
}

/// For each sample, the index of the last report it must reflect: the one collected before
/// it, when the next comes after it (both with [`MARGIN_S`] to spare); `None` when too close
/// to a collection, or after the last report.
fn report_before(reports: &[Report], t: f64) -> Option<usize> {
    let time = |r: &Report| r.time_unix_ns as f64 / 1e9;
    (0..reports.len().saturating_sub(1))
        .find(|&k| t > time(&reports[k]) + MARGIN_S && t < time(&reports[k + 1]) - MARGIN_S)
}

/// The agent's figures for the hog's cgroup: its running totals after each report.
struct Totals {
    events: Vec<u64>,
    wait_ns: Vec<u64>,
    /// The largest `latency_max_ns` so far (the upper bound of the highest slot reached).
    max_ns: Vec<u64>,
}

fn totals(reports: &[Report], id: u64) -> Totals {
    let (mut events, mut wait, mut max) = (0, 0, 0);
    let mut t = Totals {
        events: Vec::new(),
        wait_ns: Vec::new(),
        max_ns: Vec::new(),
    };
    for r in reports {
        if let Some(c) = r.cgroup(id) {
            events += c.runqueue.events;
            wait += c.runqueue.wait_ns;
            max = max.max(c.runqueue.latency_max_ns);
        }
        t.events.push(events);
        t.wait_ns.push(wait);
        t.max_ns.push(max);
    }
    t
}

/// Checks every sample of one series against `expected(report index)`, and that at least
/// `min` samples fell between two reports.
fn check_series(
    what: &str,
    reports: &[Report],
    values: &[(f64, f64)],
    min: usize,
    expected: impl Fn(usize) -> f64,
) {
    let mut checked = 0;
    for &(t, v) in values {
        let Some(k) = report_before(reports, t) else {
            continue;
        };
        // Equal, but for the last bit of a double read from the JSON lines (serde_json's
        // default float parser may be one ULP off); counts below 2^53 still compare exactly.
        let e = expected(k);
        assert!(
            (v - e).abs() <= e.abs() * 1e-12,
            "{what}: the sample at {t:.3} is {v}, but follows report {k} (at {:.3}): {e}",
            reports[k].time_unix_ns as f64 / 1e9
        );
        checked += 1;
    }
    eprintln!("{what}: {checked} samples equal the agent's figures");
    assert!(
        checked >= min,
        "{what}: only {checked} samples fell between reports"
    );
}

/// The hog: 3 spinners per CPU in a cgroup whose name needs escaping. Fields drop in order:
/// processes, then the cgroup.
struct Hog {
    _spinners: Vec<TestProcess>,
    cgroup: TestCgroup,
}

impl Hog {
    fn start() -> Self {
        let cgroup = TestCgroup::create("prom\"hog\\").expect("create cgroup");
        let spinners = (0..3 * allowed_cpus().len())
            .map(|_| {
                let mut cmd = Command::new(load_bin!());
                cmd.arg("spin");
                spawn_in(&cgroup, cmd).expect("spawn spinner")
            })
            .collect::<Vec<_>>();
        eprintln!(
            "{} spinners in {} (id {})",
            spinners.len(),
            cgroup.relative_path(),
            cgroup.id()
        );
        Self {
            _spinners: spinners,
            cgroup,
        }
    }
}

#[test]
fn prometheus_scrapes_the_agent() {
    if skip_if_unprivileged(TEST) {
        return;
    }
    let Some(bin) = prometheus_bin() else {
        skip(
            TEST,
            "no prometheus binary on PATH (apt-get install prometheus; cargo xtask test installs it)",
        );
        return;
    };
    // Dropped in reverse: Prometheus, the agent, then the hog.
    let hog = Hog::start();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut agent = Agent::start(INTERVAL, &["--prometheus-listen", &listen.to_string()]);
    agent.wait_ready(Duration::from_secs(30));
    let prometheus = Prometheus::start(&bin, listen);
    let target = prometheus.wait_for_target(Duration::from_secs(30));
    eprintln!("target: {target}");
    assert_eq!(target["health"], "up", "{target}");
    assert_eq!(target["lastError"], "", "{target}");
    assert_eq!(target["scrapeUrl"], format!("http://{listen}/metrics"));

    // Every report since the agent started (the totals start there), then a few more while
    // Prometheus scrapes.
    let mut reports = agent.take_intervals();
    for _ in 0..REPORTS {
        reports.push(agent.next_interval(Duration::from_secs(12)));
    }
    let id = hog.cgroup.id();
    let t = totals(&reports, id);
    for (k, r) in reports.iter().enumerate() {
        let c = r.cgroup(id);
        eprintln!(
            "report {k} at {:.3}: hog events={:?} wait_ns={:?} max_ns={:?}; total events={} wait_ns={}",
            r.time_unix_ns as f64 / 1e9,
            c.map(|c| c.runqueue.events),
            c.map(|c| c.runqueue.wait_ns),
            c.map(|c| c.runqueue.latency_max_ns),
            t.events[k],
            t.wait_ns[k]
        );
    }
    assert!(t.events[0] > 0, "the hog waited in the first interval");

    // The scrape target.
    let up = prometheus.query("up{job=\"nodesat\"}");
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");

    // The names: every family the agent always has data for.
    let names: Vec<String> = prometheus
        .query("count by (__name__) ({job=\"nodesat\"})")
        .iter()
        .filter_map(|r| r["metric"]["__name__"].as_str().map(str::to_owned))
        .collect();
    eprintln!("metric names: {names:?}");
    for name in [
        "nodesat_sched_runqueue_latency_seconds_bucket",
        "nodesat_sched_runqueue_latency_seconds_sum",
        "nodesat_sched_runqueue_latency_seconds_count",
        "nodesat_sched_runqueue_wait_time_seconds_total",
        "nodesat_sched_runqueue_length",
        "nodesat_io_wait_time_seconds_total",
        "nodesat_memory_oom_kills_total",
        "nodesat_agent_probe_attached",
        "nodesat_agent_probe_run_count_total",
        "nodesat_agent_probe_run_time_seconds_total",
        "nodesat_agent_entities_overflow",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing");
    }
    let attached = prometheus.query(
        "nodesat_agent_probe_attached{probe=\"runqueue\",hook=\"sched_switch\",kind=\"node\"}",
    );
    assert_eq!(attached.len(), 1, "{attached:?}");
    assert_eq!(attached[0]["value"][1], "1");

    // The hog's labels: its identity, the path exactly as it is.
    let series = prometheus.query(&format!(
        "nodesat_sched_runqueue_wait_time_seconds_total{{cgroup_id=\"{id}\"}}"
    ));
    assert_eq!(series.len(), 1, "{series:?}");
    let labels = &series[0]["metric"];
    eprintln!("the hog's labels: {labels}");
    assert_eq!(labels["cgroup"], hog.cgroup.relative_path(), "{labels}");
    assert_eq!(labels["kind"], "cgroup", "{labels}");
    assert_eq!(labels["job"], "nodesat");
    assert_eq!(labels["instance"], listen.to_string());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    assert_eq!(labels["host"], host.trim(), "{labels}");

    // Every sample between two reports equals the agent's running totals.
    let range = |selector: &str| {
        samples(&prometheus.query(&format!("{selector}{{cgroup_id=\"{id}\"}}[5m]")))
    };
    // Windows of 1.4 s (2 s less the margins), scrapes every second: at least one sample in
    // each window between the reports taken while Prometheus scraped.
    let min = REPORTS - 1;
    let count = range("nodesat_sched_runqueue_latency_seconds_count");
    assert_eq!(count.len(), 1);
    check_series("latency count", &reports, &count[0].1, min, |k| {
        t.events[k] as f64
    });
    let wait = range("nodesat_sched_runqueue_wait_time_seconds_total");
    assert_eq!(wait.len(), 1);
    check_series("wait time (s)", &reports, &wait[0].1, min, |k| {
        t.wait_ns[k] as f64 / 1e9
    });
    let buckets = range("nodesat_sched_runqueue_latency_seconds_bucket");
    assert_eq!(buckets.len(), 32, "31 finite bounds and +Inf");
    let bucket = |le: f64| {
        buckets
            .iter()
            .find(|(l, _)| {
                let b = l["le"].as_str().unwrap();
                (if b == "+Inf" {
                    f64::INFINITY
                } else {
                    b.parse().unwrap()
                }) == le
            })
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no bucket le={le}"))
    };
    check_series("+Inf bucket", &reports, &bucket(f64::INFINITY), min, |k| {
        t.events[k] as f64
    });
    // All waits so far lie at or below the highest slot's bound, and not all below its half.
    // Checked in the windows of the last report, where the bound is the final one.
    let last = reports.len() - 2;
    let top = t.max_ns[last];
    let at_top: Vec<(f64, f64)> = bucket(top as f64 / 1e9)
        .into_iter()
        .filter(|&(t, _)| report_before(&reports, t) == Some(last))
        .collect();
    check_series(
        &format!("bucket le={}", top as f64 / 1e9),
        &reports,
        &at_top,
        1,
        |k| t.events[k] as f64,
    );
    for (time, v) in bucket(top as f64 / 2e9) {
        if report_before(&reports, time) == Some(last) {
            assert!(
                v < t.events[last] as f64,
                "bucket le={}: {v} of {}",
                top as f64 / 2e9,
                t.events[last]
            );
        }
    }
    // Each CPU's run-queue length: the gauge of the latest report.
    let lengths = samples(&prometheus.query("nodesat_sched_runqueue_length{kind=\"node\"}[5m]"));
    assert_eq!(lengths.len(), online_cpus(), "one series per CPU");
    for (labels, values) in &lengths {
        let cpu: u32 = labels["cpu"].as_str().unwrap().parse().unwrap();
        check_series(
            &format!("cpu {cpu} run-queue length"),
            &reports,
            values,
            min,
            |k| reports[k].cpu(cpu).expect("cpu in report").runqueue_length,
        );
    }

    // promtool lints the agent's own text.
    let (status, text) = http_get(listen, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    eprintln!(
        "/metrics: {} bytes, {} samples",
        text.len(),
        text.lines().filter(|l| !l.starts_with('#')).count()
    );
    let promtool = bin.with_file_name("promtool");
    if promtool.is_file() {
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        eprintln!("promtool check metrics: {} {said}", out.status);
        assert!(out.status.success() && said.trim().is_empty(), "{said}");
    }

    drop(prometheus);
    let (status, _) = agent.stop();
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
}

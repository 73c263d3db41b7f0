//! The agent's own failures (issue 16): each cause is logged once, not once per interval, and
//! the agent's counters equal what its peers really answered.
//!
//! Scripted receivers answer in a known order: the OTLP collector rejects the first batches
//! with HTTP 400 (not retryable) and then accepts; the kubelet answers 503 a few times and then
//! the pod list. The agent's `/metrics` (its own series) must show exactly the receivers'
//! counts: export failures and drops, batches delivered, kubelet failures by cause, the pod
//! list's age. A collector that never answers fills the queue: its depth and the drops show.

use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use nodesat_tests::{Agent, Reply, ScriptedServer, free_port, http_get, skip_if_unprivileged};

/// Collection interval: `/metrics` is refreshed this often.
const INTERVAL: &str = "500ms";
/// OTLP export period: a quiet second between batches to read the counters in.
const EXPORT_EVERY: &str = "2s";
/// Batches the collector rejects before it accepts.
const REJECTED: u64 = 4;
/// Fetches the kubelet fails before it answers.
const KUBELET_FAILS: u64 = 3;

/// The value of the sample of `name` whose labels include `label` (`error="400"`, or ""
/// for any).
fn sample(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .contains(label)
            .then(|| value.split_whitespace().next()?.parse().ok())?
    })
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn failures_are_logged_once_per_cause_and_counted_exactly() {
    if skip_if_unprivileged("failures_are_logged_once_per_cause_and_counted_exactly") {
        return;
    }
    let mut script = vec![Reply::new(400, "text/plain", "bad batch"); REJECTED as usize];
    script.push(Reply::new(200, "application/x-protobuf", Vec::new()));
    let collector = ScriptedServer::start(script).unwrap();
    let mut script = vec![Reply::new(503, "text/plain", "busy"); KUBELET_FAILS as usize];
    script.push(Reply::new(200, "application/json", r#"{"items":[]}"#));
    let kubelet = ScriptedServer::start(script).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut agent = Agent::start(
        INTERVAL,
        &[
            "--otlp-endpoint",
            &collector.url(""),
            "--export-interval",
            EXPORT_EVERY,
            "--kubelet-url",
            &kubelet.url("/pods"),
            "--prometheus-listen",
            &listen.to_string(),
        ],
    );
    agent.wait_ready(Duration::from_secs(30));
    // The kubelet backs off 1 s, 2 s, 4 s: its list comes about 7 s in.
    wait_until(
        "the rejections, two deliveries and the pod list",
        Duration::from_secs(40),
        || collector.answered(200) >= 2 && kubelet.answered(200) >= 1,
    );

    // Read /metrics between two exports, once a collection has refreshed it since the last
    // one: nothing can change between reading the receivers' counts and the agent's.
    let (text, delivered) = {
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries < 200, "found no quiet moment between exports");
            let quiet = collector
                .since_last_answer()
                .is_some_and(|d| d > Duration::from_millis(800) && d < Duration::from_millis(1400));
            if !quiet {
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            let before = (collector.answered_total(), kubelet.answered_total());
            let (status, text) = http_get(listen, "/metrics").expect("GET /metrics");
            assert_eq!(status, 200);
            if before == (collector.answered_total(), kubelet.answered_total()) {
                break (text, collector.answered(200));
            }
        }
    };
    let own: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("nodesat_agent_export") || l.starts_with("nodesat_agent_kubelet"))
        .collect();
    eprintln!(
        "collector answered {} x 400, {delivered} x 200; kubelet {} x 503, {} x 200; /metrics:\n{}",
        collector.answered(400),
        kubelet.answered(503),
        kubelet.answered(200),
        own.join("\n")
    );
    assert_eq!(collector.answered(400), REJECTED);
    assert_eq!(kubelet.answered(503), KUBELET_FAILS);
    let get = |name: &str, label: &str| {
        sample(&text, name, label).unwrap_or_else(|| panic!("no {name} {label} in /metrics"))
    };
    assert_eq!(
        get("nodesat_agent_export_failures_total", "error=\"400\""),
        REJECTED as f64
    );
    assert_eq!(
        get(
            "nodesat_agent_export_queue_dropped_total",
            "reason=\"permanent_error\""
        ),
        REJECTED as f64
    );
    assert_eq!(
        get("nodesat_agent_export_delivered_total", ""),
        delivered as f64
    );
    assert_eq!(get("nodesat_agent_export_queue_depth", ""), 0.0);
    assert_eq!(
        get("nodesat_agent_kubelet_failures_total", "error=\"503\""),
        KUBELET_FAILS as f64
    );
    let age = get("nodesat_agent_kubelet_pod_list_age_seconds", "");
    assert!(
        (0.0..11.0).contains(&age),
        "pod list age {age} s (refreshed every 10 s)"
    );

    let stopped = agent.stop_and_collect();
    stopped.assert_clean_stop();
    let stderr = &stopped.stderr;
    let warns = |what: &str| {
        stderr
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(what))
            .count()
    };
    eprintln!(
        "stderr: {} lines, {} WARN",
        stderr.lines().count(),
        stderr.matches("WARN").count()
    );
    assert_eq!(
        warns("OTLP export failed"),
        1,
        "one warning for {REJECTED} rejections"
    );
    assert_eq!(
        warns("kubelet pod list unavailable"),
        1,
        "one warning for {KUBELET_FAILS} kubelet failures"
    );
    assert!(
        stderr.contains("OTLP export delivering again ("),
        "{stderr}"
    );
    assert!(
        stderr.contains("kubelet pod list available again"),
        "{stderr}"
    );
}

/// A collector that accepts connections and never answers: one batch stays in flight, the
/// queue (2 here) fills, and the oldest batches are dropped, once logged.
#[test]
fn a_hung_collector_fills_the_queue_and_its_drops_are_counted() {
    if skip_if_unprivileged("a_hung_collector_fills_the_queue_and_its_drops_are_counted") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn); // never read, never answered
        }
    });
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut agent = Agent::start(
        INTERVAL,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-queue-size",
            "2",
            "--prometheus-listen",
            &listen.to_string(),
            "--shutdown-timeout",
            "1s",
        ],
    );
    agent.wait_ready(Duration::from_secs(30));
    // One batch per 500 ms: in flight 1, queued 2, then one dropped per interval.
    let mut text = String::new();
    wait_until(
        "the queue to fill and drop",
        Duration::from_secs(20),
        || {
            text = http_get(listen, "/metrics")
                .map(|r| r.1)
                .unwrap_or_default();
            sample(
                &text,
                "nodesat_agent_export_queue_dropped_total",
                "reason=\"queue_full\"",
            )
            .is_some_and(|n| n >= 3.0)
        },
    );
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("nodesat_agent_export"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        sample(&text, "nodesat_agent_export_queue_depth", ""),
        Some(2.0),
        "queue depth at its bound"
    );
    assert_eq!(
        sample(&text, "nodesat_agent_export_delivered_total", ""),
        Some(0.0)
    );
    let stopped = agent.stop_and_collect_within(Duration::from_secs(5));
    assert!(stopped.status.success(), "{}", stopped.status);
    let full = stopped
        .stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("OTLP export queue full"))
        .count();
    assert_eq!(
        full, 1,
        "the queue-full drop is logged once:\n{}",
        stopped.stderr
    );
}

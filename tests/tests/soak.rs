//! Soak (issue 16): at `--interval 1s`, the OTLP collector goes down (its port closed) for two
//! minutes and comes back. The agent must
//! - keep its memory flat within the queue's bound while the collector is down;
//! - deliver, after the recovery, the batches it kept, in order, and then live ones;
//! - lose only batches it counted: every collection the collector never got is one of the
//!   drops the agent's own counter (`nodesat.agent.export.queue.dropped`) reports;
//! - continue every cumulative series from its last value: same start time, never lower.
//!
//! The collector decodes each batch (opentelemetry-proto); the agent's JSON lines give the
//! collections it made. `NODESAT_SOAK_DOWN_SECS` shortens the outage for a quick local run.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use nodesat_tests::{Agent, Reply, ScriptedServer, skip_if_unprivileged, vm_rss_kib};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};
use prost::Message;

/// Batches the agent may queue (`--otlp-queue-size`).
const QUEUE: u64 = 16;
/// Live batches to see after the queue drained.
const LIVE_AFTER: u64 = 10;
/// RSS samples while the collector is down.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Growth allowed while down, beyond what the queued batches take: allocator slack.
const RSS_SLACK_KIB: u64 = 16 * 1024;
/// Decoded batches take more memory than their encoding; a generous factor.
const BATCH_MEMORY_FACTOR: u64 = 4;
/// Growth allowed over the second half of the outage, when the queue has long been full.
const FLAT_KIB: u64 = 4 * 1024;

fn outage() -> Duration {
    let secs = std::env::var("NODESAT_SOAK_DOWN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

fn ok() -> Reply {
    Reply::new(200, "application/x-protobuf", Vec::new())
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// A cumulative series: resource, metric, point attributes.
type SeriesKey = (String, String, String);

/// One batch's collection time and its cumulative points: (start, value) by series.
struct Batch {
    time_ns: u64,
    points: BTreeMap<SeriesKey, (u64, f64)>,
    /// The agent's dropped-batches counter in it, all reasons.
    dropped: f64,
}

fn decode(body: &[u8]) -> Batch {
    let req = ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics request");
    let mut batch = Batch {
        time_ns: 0,
        points: BTreeMap::new(),
        dropped: 0.0,
    };
    for rm in &req.resource_metrics {
        let resource = format!("{:?}", rm.resource.as_ref().map(|r| &r.attributes));
        for m in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
            let mut add = |attrs: String, start: u64, time: u64, value: f64| {
                batch.time_ns = batch.time_ns.max(time);
                batch
                    .points
                    .insert((resource.clone(), m.name.clone(), attrs), (start, value));
            };
            match &m.data {
                Some(Data::Sum(sum)) if sum.is_monotonic => {
                    for p in &sum.data_points {
                        let v = match p.value {
                            Some(Value::AsInt(i)) => i as f64,
                            Some(Value::AsDouble(d)) => d,
                            None => continue,
                        };
                        if m.name == "nodesat.agent.export.queue.dropped" {
                            batch.dropped += v;
                        }
                        add(
                            format!("{:?}", p.attributes),
                            p.start_time_unix_nano,
                            p.time_unix_nano,
                            v,
                        );
                    }
                }
                Some(Data::Histogram(h)) => {
                    for p in &h.data_points {
                        add(
                            format!("{:?}", p.attributes),
                            p.start_time_unix_nano,
                            p.time_unix_nano,
                            p.count as f64,
                        );
                    }
                }
                Some(Data::ExponentialHistogram(h)) => {
                    for p in &h.data_points {
                        add(
                            format!("{:?}", p.attributes),
                            p.start_time_unix_nano,
                            p.time_unix_nano,
                            p.count as f64,
                        );
                    }
                }
                _ => {}
            }
        }
    }
    batch
}

#[test]
fn collector_down_two_minutes_then_back() {
    if skip_if_unprivileged("collector_down_two_minutes_then_back") {
        return;
    }
    let down_for = outage();
    let collector = ScriptedServer::start(vec![ok()]).unwrap();
    let port = collector.addr().port();
    let mut agent = Agent::start(
        "1s",
        &[
            "--otlp-endpoint",
            &collector.url(""),
            "--otlp-compression",
            "none",
            "--otlp-queue-size",
            &QUEUE.to_string(),
        ],
    );
    agent.wait_ready(Duration::from_secs(30));
    wait_until("10 batches delivered", Duration::from_secs(60), || {
        collector.answered(200) >= 10
    });
    let rss_before = vm_rss_kib(agent.pid()).unwrap();
    let mut bodies = collector.bodies();
    let largest = bodies.iter().map(Vec::len).max().unwrap_or(0) as u64;
    drop(collector);
    let down_at = Instant::now();
    eprintln!(
        "collector down for {down_for:?} (port {port} closed); RSS {rss_before} KiB, \
         largest batch {largest} bytes"
    );

    let mut samples = Vec::new();
    while down_at.elapsed() < down_for {
        thread::sleep(SAMPLE_EVERY.min(down_for.saturating_sub(down_at.elapsed())));
        samples.push((down_at.elapsed(), vm_rss_kib(agent.pid()).unwrap()));
    }
    let collector = ScriptedServer::start_on(port, vec![ok()]).unwrap();
    let up_at = Instant::now();
    // The batch in flight is retried within the backoff's longest wait (30 s); then the kept
    // batches go, then live ones.
    wait_until(
        "the queue to drain and live batches to follow",
        Duration::from_secs(90),
        || collector.answered(200) >= QUEUE + 1 + LIVE_AFTER,
    );
    let recovered_in = up_at.elapsed();
    let rss_after = vm_rss_kib(agent.pid()).unwrap();
    let stopped = agent.stop_and_collect();
    stopped.assert_clean_stop();
    bodies.extend(collector.bodies());

    // Memory.
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(rss_before);
    let half = samples
        .iter()
        .find(|s| s.0 >= down_for / 2)
        .map_or(rss_before, |s| s.1);
    let end = samples.last().map_or(rss_before, |s| s.1);
    let bound = QUEUE * largest * BATCH_MEMORY_FACTOR / 1024 + RSS_SLACK_KIB;
    eprintln!(
        "RSS: before {rss_before} KiB, peak while down {peak} KiB (+{}), at half {half}, at end \
         {end}, after recovery {rss_after}; allowed growth {bound} KiB; samples {:?}",
        peak.saturating_sub(rss_before),
        samples.iter().map(|s| s.1).collect::<Vec<_>>()
    );
    assert!(
        peak.saturating_sub(rss_before) <= bound,
        "RSS grew by {} KiB while the collector was down, more than the queue's bound {bound} KiB",
        peak.saturating_sub(rss_before)
    );
    assert!(
        end.saturating_sub(half) <= FLAT_KIB,
        "RSS still grew by {} KiB over the second half of the outage (queue long full)",
        end.saturating_sub(half)
    );

    // Batches: in order, and every missing collection counted as dropped.
    let batches: Vec<Batch> = bodies.iter().map(|b| decode(b)).collect();
    let times: Vec<u64> = batches.iter().map(|b| b.time_ns).collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "batches out of order or repeated: {times:?}"
    );
    let last = *times.last().unwrap();
    let collected: Vec<u64> = stopped
        .reports
        .iter()
        .map(|r| r.time_unix_ns)
        .filter(|t| *t <= last)
        .collect();
    let missing: Vec<u64> = collected
        .iter()
        .copied()
        .filter(|t| !times.contains(t))
        .collect();
    let dropped = batches.last().unwrap().dropped;
    eprintln!(
        "collections up to the last batch: {}, delivered {}, missing {}; the agent counted {} \
         dropped; recovered {recovered_in:?} after the collector came back",
        collected.len(),
        times.len(),
        missing.len(),
        dropped
    );
    assert!(
        times.iter().all(|t| collected.contains(t)),
        "a batch of no collection"
    );
    assert!(
        !missing.is_empty(),
        "nothing was dropped: the outage did not outlast the queue"
    );
    assert_eq!(
        missing.len() as f64,
        dropped,
        "collections never delivered vs the agent's dropped counter"
    );

    // Cumulative series continue: same start, never lower.
    let before_down = batches.iter().filter(|b| b.time_ns < last).count();
    let mut checked = 0;
    let mut across = 0;
    let mut last_seen: BTreeMap<&SeriesKey, (u64, f64, usize)> = BTreeMap::new();
    for (i, b) in batches.iter().enumerate() {
        for (key, &(start, value)) in &b.points {
            if let Some(&(start0, value0, i0)) = last_seen.get(key) {
                checked += 1;
                assert_eq!(start, start0, "{key:?}: start time changed (a reset)");
                assert!(
                    value >= value0,
                    "{key:?}: went from {value0} to {value} (batch {i0} to {i})"
                );
                if times[i] - times[i0] > 5_000_000_000 {
                    across += 1;
                }
            }
            last_seen.insert(key, (start, value, i));
        }
    }
    eprintln!(
        "{} series, {checked} successive points checked, {across} across the outage; {} batches",
        last_seen.len(),
        before_down + 1
    );
    assert!(across > 0, "no series spanned the outage");
}

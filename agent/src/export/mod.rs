//! OTLP metrics export. Each report is folded into running totals ([`otlp::Builder`]); when
//! an export is due the request is built and pushed onto a bounded queue ([`Queue`], oldest
//! dropped when full) and the collection goes on. A separate tokio task sends the queued
//! batches in order ([`transport`]), retrying retryable failures with exponential backoff and
//! jitter, honouring Retry-After and RetryInfo.
//!
//! The optional Prometheus endpoint ([`prometheus`]) renders the same mapping as text.
//!
//! - [`catalog`]: every metric (name, unit, type, attributes, meaning, Prometheus names);
//! - [`otlp`]: resources, metrics, temporality;
//! - [`transport`]: HTTP/protobuf and gRPC (TLS with a custom CA and a client certificate),
//!   failure classification;
//! - [`prometheus`]: the `/metrics` text;
//! - [`config`]: the settings.

pub mod catalog;
pub mod config;
pub mod otlp;
pub mod prometheus;
pub mod transport;

#[cfg(test)]
mod tests;

use std::{
    collections::VecDeque,
    hash::{BuildHasher, Hasher},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use tokio::sync::Notify;

pub use self::config::ExportConfig;
use self::{
    config::RetryPolicy,
    otlp::{AgentTotals, Builder, ResourceInfo},
    prometheus::{Exposition, Prometheus},
    transport::{SendError, SetupError, Transport},
};
use crate::{
    core::failure_log::{Decision, FailureLog, Summary},
    identity::kubelet::PodMetadata,
    report::Report,
};

/// Series not seen for this long are forgotten (cumulative totals restart if they return).
const STALE_AFTER: Duration = Duration::from_secs(300);

/// While an export keeps failing, the failures not logged are summarised this often.
pub const FAILURE_SUMMARY_EVERY: Duration = Duration::from_secs(300);

/// The exporter's own counters, shared by the collection side and the sending task.
pub struct Stats {
    totals: Mutex<AgentTotals>,
    /// Batches being sent (or waiting to be retried) by the sending task: 0 or 1.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Failures by cause, for logging each cause once.
    log: Mutex<FailureLog>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            totals: Mutex::default(),
            in_flight: Default::default(),
            log: Mutex::new(FailureLog::new(FAILURE_SUMMARY_EVERY)),
        }
    }
}

impl Stats {
    pub fn delivered(&self) {
        let mut t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        t.delivered += 1;
    }

    /// Whether this failure's cause is new since the last delivery (then log it in full).
    fn first_of_its_cause(&self, cause: &str) -> bool {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.failure(cause, Instant::now(), std::time::SystemTime::now()) == Decision::Log
    }

    /// The summary of failures not logged, when one is due.
    fn failure_summary(&self, recovered: bool) -> Option<Summary> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if recovered {
            log.recovered()
        } else {
            log.summary_due(Instant::now())
        }
    }

    fn dropped_total(&self) -> u64 {
        let t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        t.dropped.values().sum()
    }

    pub fn failure(&self, kind: &str) {
        let mut t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        *t.export_failures.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn dropped(&self, reason: &'static str) {
        self.dropped_n(reason, 1);
    }

    pub fn dropped_n(&self, reason: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        let mut t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        *t.dropped.entry(reason).or_default() += n;
    }

    pub fn snapshot(&self) -> AgentTotals {
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A bounded FIFO of batches: pushing onto a full queue drops the oldest.
pub struct Queue {
    items: Mutex<VecDeque<ExportMetricsServiceRequest>>,
    capacity: usize,
    ready: Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl Queue {
    pub fn new(capacity: usize) -> Queue {
        Queue {
            items: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity: capacity.max(1),
            ready: Notify::new(),
            closed: false.into(),
        }
    }

    /// Adds a batch; returns the oldest one if it had to make room.
    pub fn push(&self, batch: ExportMetricsServiceRequest) -> Option<ExportMetricsServiceRequest> {
        let dropped = {
            let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
            let dropped = if q.len() >= self.capacity {
                q.pop_front()
            } else {
                None
            };
            q.push_back(batch);
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    pub fn pop(&self) -> Option<ExportMetricsServiceRequest> {
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    pub fn len(&self) -> usize {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.ready.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The next batch, waiting for one; `None` once closed and empty.
    async fn next(&self) -> Option<ExportMetricsServiceRequest> {
        loop {
            if let Some(b) = self.pop() {
                return Some(b);
            }
            if self.is_closed() {
                return None;
            }
            self.ready.notified().await;
        }
    }
}

/// The collection side of the export: builds batches and hands them to the sending task.
pub struct Exporter {
    builder: Builder,
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    export_every_ns: Option<u64>,
    last_export_ns: Option<u64>,
    task: tokio::task::JoinHandle<()>,
    /// The kubelet's pod list, for its counters; `None`: no kubelet.
    kubelet: Option<PodMetadata>,
}

/// Every export that is configured: OTLP, the Prometheus endpoint's text, both or none. Each
/// report is handed to all of them; none blocks the collection.
pub struct Exports {
    otlp: Option<Exporter>,
    prometheus: Option<Prometheus>,
    /// The kubelet's pod list, for its failure counters and age; `None`: no kubelet.
    kubelet: Option<PodMetadata>,
}

impl Exports {
    /// Starts the OTLP exporter when it has settings (on the current tokio runtime) and keeps
    /// the Prometheus text when `prometheus` is set.
    pub fn start(otlp: Option<&ExportConfig>, prometheus: bool) -> Result<Exports, SetupError> {
        Ok(Exports {
            otlp: otlp
                .map(|c| Exporter::start(c, resource_info(c)))
                .transpose()?,
            // Prometheus names the target itself (job, instance): no service name or
            // OTEL_RESOURCE_ATTRIBUTES on its series.
            prometheus: prometheus
                .then(|| Prometheus::new(machine_info("nodesat".into(), Vec::new()))),
            kubelet: None,
        })
    }

    /// Exports the kubelet's counters (failures by cause, the pod list's age) too.
    pub fn watch_kubelet(&mut self, metadata: PodMetadata) {
        if let Some(e) = &mut self.otlp {
            e.kubelet = Some(metadata.clone());
        }
        self.kubelet = Some(metadata);
    }

    /// The Prometheus text, for the HTTP server; `None` when the endpoint is off.
    pub fn exposition(&self) -> Option<Exposition> {
        self.prometheus.as_ref().map(Prometheus::exposition)
    }

    pub fn report(&mut self, report: &Report) {
        if let Some(e) = &mut self.otlp {
            e.export(report);
        }
        if let Some(p) = &mut self.prometheus {
            let agent = match &self.otlp {
                Some(e) => e.totals(),
                None => AgentTotals {
                    kubelet: self.kubelet.as_ref().map(PodMetadata::status),
                    ..AgentTotals::default()
                },
            };
            p.update(report, &agent);
        }
    }

    /// Lets the OTLP exporter deliver what is queued until `deadline`, then gives the rest up
    /// (see [`Exporter::shutdown`]).
    pub async fn shutdown(self, deadline: tokio::time::Instant) -> Option<GivenUp> {
        match self.otlp {
            Some(e) => e.shutdown(deadline).await,
            None => None,
        }
    }
}

/// The resource description from the settings and the machine.
pub fn resource_info(c: &ExportConfig) -> ResourceInfo {
    machine_info(c.service_name.clone(), c.resource_attributes.clone())
}

/// The machine's host and node names, with the given service name and extra attributes.
fn machine_info(service_name: String, extra: Vec<(String, String)>) -> ResourceInfo {
    ResourceInfo {
        service_name,
        host_name: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty()),
        node_name: std::env::var("NODE_NAME")
            .ok()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty()),
        extra,
    }
}

impl Exporter {
    /// Sets up the transport and spawns the sending task (on the current tokio runtime).
    pub fn start(c: &ExportConfig, info: ResourceInfo) -> Result<Exporter, SetupError> {
        let transport = Transport::new(c)?;
        let queue = Arc::new(Queue::new(c.queue_size));
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(send_loop(
            transport,
            queue.clone(),
            stats.clone(),
            c.retry.clone(),
        ));
        tracing::info!(url = %c.url, protocol = ?c.protocol, temporality = ?c.temporality, "exporting OTLP metrics");
        Ok(Exporter {
            builder: Builder::new(c.temporality, info, STALE_AFTER.as_nanos() as u64),
            queue,
            stats,
            export_every_ns: c.export_interval.map(|d| d.as_nanos() as u64),
            last_export_ns: None,
            task,
            kubelet: None,
        })
    }

    /// The agent's own counters now: the exporter's, and the kubelet's when it is watched.
    pub fn totals(&self) -> AgentTotals {
        let mut t = self.stats.snapshot();
        t.queue_depth = Some(self.queue.len() as u64);
        t.kubelet = self.kubelet.as_ref().map(PodMetadata::status);
        t
    }

    /// Folds the report and the agent's own counters in and, when an export is due, queues a
    /// batch. Never blocks.
    pub fn export(&mut self, report: &Report) {
        let agent = self.totals();
        self.builder.ingest(report, &agent);
        let due = match (self.export_every_ns, self.last_export_ns) {
            (Some(every), Some(last)) => {
                // A tenth of slack: collections do not land exactly on the period.
                report.time_unix_ns.saturating_sub(last) + every / 10 >= every
            }
            _ => true,
        };
        if !(due || report.is_final) {
            return;
        }
        self.last_export_ns = Some(report.time_unix_ns);
        let Some(all) = self.builder.build() else {
            return;
        };
        let requests = otlp::split(all, otlp::MAX_REQUEST_BYTES);
        if requests.len() > 1 {
            tracing::debug!(
                requests = requests.len(),
                "the export is over {} bytes: sent as several requests, each of whole resources",
                otlp::MAX_REQUEST_BYTES
            );
        }
        for req in requests {
            self.enqueue(req);
        }
    }

    /// Queues one request, dropping the oldest when the queue is full.
    fn enqueue(&mut self, req: ExportMetricsServiceRequest) {
        if self.queue.push(req).is_some() {
            self.stats.dropped("queue_full");
            // Once until the next delivery (then summarised with the send failures).
            if self.stats.first_of_its_cause("queue_full") {
                tracing::warn!(
                    capacity = self.queue.capacity,
                    "OTLP export queue full: dropped the oldest batch (further drops are \
                     counted, nodesat.agent.export.queue.dropped, and summarised every {})",
                    humantime::format_duration(FAILURE_SUMMARY_EVERY)
                );
            } else {
                tracing::debug!("OTLP export queue full: dropped the oldest batch");
            }
        }
    }

    /// Lets the sending task deliver what is queued until `deadline`. When it runs out, the
    /// sending task is aborted: a gRPC request in flight is cancelled with it, and an HTTP one
    /// is abandoned on its blocking thread (the runtime does not wait for it, and the process
    /// exit closes its connection). What was given up, the batch in flight and those still
    /// queued, is counted (`dropped`, reason `shutdown`), logged once and returned.
    pub async fn shutdown(self, deadline: tokio::time::Instant) -> Option<GivenUp> {
        self.queue.close();
        let mut task = self.task;
        if tokio::time::timeout_at(deadline, &mut task).await.is_ok() {
            return None;
        }
        task.abort();
        let given_up = GivenUp {
            in_flight: self
                .stats
                .in_flight
                .load(std::sync::atomic::Ordering::SeqCst) as u64,
            queued: self.queue.len() as u64,
        };
        self.stats.dropped_n("shutdown", given_up.total());
        tracing::warn!(
            in_flight = given_up.in_flight,
            queued = given_up.queued,
            "shutdown timeout ran out: gave up {} OTLP batch(es), their figures are not exported",
            given_up.total()
        );
        Some(given_up)
    }
}

/// What the shutdown gave up when its time ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GivenUp {
    /// The batch being sent or waiting to be retried (0 or 1).
    pub in_flight: u64,
    /// Batches still queued.
    pub queued: u64,
}

impl GivenUp {
    pub fn total(&self) -> u64 {
        self.in_flight + self.queued
    }
}

async fn send_loop(transport: Transport, queue: Arc<Queue>, stats: Arc<Stats>, retry: RetryPolicy) {
    use std::sync::atomic::Ordering::SeqCst;
    while let Some(batch) = queue.next().await {
        stats.in_flight.store(1, SeqCst);
        send_with_retry(&transport, &batch, &stats, &retry).await;
        stats.in_flight.store(0, SeqCst);
    }
}

/// Sends one batch, retrying as the failure allows; counts failures and drops.
pub async fn send_with_retry(
    transport: &Transport,
    batch: &ExportMetricsServiceRequest,
    stats: &Stats,
    retry: &RetryPolicy,
) -> bool {
    let began = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        let e: SendError = match transport.send(batch).await {
            Ok(partial) => {
                stats.delivered();
                if let Some(p) = partial {
                    tracing::warn!(
                        rejected_data_points = p.rejected_data_points,
                        "OTLP receiver accepted the batch in part: {}",
                        p.error_message
                    );
                }
                if let Some(s) = stats.failure_summary(true) {
                    tracing::info!(
                        attempts = attempt + 1,
                        "OTLP export delivering again ({s}; batches dropped so far: {})",
                        stats.dropped_total()
                    );
                }
                return true;
            }
            Err(e) => e,
        };
        stats.failure(&e.kind);
        // The first failure of each cause is logged in full; the next are summarised.
        let first = stats.first_of_its_cause(&e.kind);
        if let Some(s) = stats.failure_summary(false) {
            tracing::warn!(
                "OTLP export still failing: {s}; batches dropped so far: {}",
                stats.dropped_total()
            );
        }
        let outcome = if !e.retryable {
            stats.dropped("permanent_error");
            "batch dropped (not retryable)".to_owned()
        } else {
            let delay = e.retry_after.unwrap_or_else(|| backoff(retry, attempt));
            if began.elapsed() + delay > retry.max_elapsed {
                stats.dropped("retries_exhausted");
                format!("batch dropped after {} attempts", attempt + 1)
            } else {
                if first {
                    tracing::warn!(
                        "OTLP export failed, retrying in {}: {}",
                        humantime::format_duration(delay),
                        e.message
                    );
                } else {
                    tracing::debug!(attempt, "OTLP export retry failed: {}", e.message);
                }
                tokio::time::sleep(delay).await;
                attempt += 1;
                continue;
            }
        };
        if first {
            tracing::warn!(
                "OTLP export failed, {outcome}: {} (further failures of this kind are \
                 summarised every {})",
                e.message,
                humantime::format_duration(FAILURE_SUMMARY_EVERY)
            );
        } else {
            tracing::debug!("OTLP export failed, {outcome}: {}", e.message);
        }
        return false;
    }
}

/// Exponential backoff with jitter: 50–100% of `initial × 2^attempt`, capped at `max`.
pub fn backoff(p: &RetryPolicy, attempt: u32) -> Duration {
    let base = p.initial.saturating_mul(1u32 << attempt.min(20)).min(p.max);
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let frac = 0.5 + (r % 1000) as f64 / 2000.0;
    base.mul_f64(frac)
}

//! The `/metrics` endpoint's text (`--prometheus-listen`): the catalogue in the Prometheus text
//! exposition format (0.0.4), for users without a collector. Each report goes through the OTLP
//! mapping ([`Builder`], always cumulative, its own running totals), and the request it builds
//! is rendered as text once per collection; scrapes get the latest text.
//!
//! - names: [`MetricDef::prometheus_name`] (`_total` on counters, `_seconds` for durations);
//! - labels: the resource's and the point's attributes, renamed by
//!   [`catalog::PROMETHEUS_LABELS`] (`pod`, `namespace`, `container`, `cgroup`, `cpu`, ...);
//! - histograms: the kernel's log2 slots as cumulative `le` buckets in seconds (slot `s` ends
//!   at 2^s ns; the open last slot only counts in `+Inf`), with `_sum` (seconds) and `_count`.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, LazyLock, Mutex},
};

use agent_ebpf::hist::HIST_SLOTS;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{KeyValue, any_value},
    metrics::v1::{
        ExponentialHistogramDataPoint, NumberDataPoint, metric::Data, number_data_point,
    },
};

use super::{
    STALE_AFTER,
    catalog::{self, CATALOG, MetricDef},
    otlp::{AgentTotals, Builder, ResourceInfo, Temporality},
};
use crate::report::Report;

/// The media type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One collection's text, and its gzip form, made on the first scrape that accepts it and
/// kept for the others until the next collection (the text of 500 fully labelled pods is
/// about 11 MB; gzip makes it a tenth or less).
#[derive(Default)]
pub struct Rendered {
    text: String,
    gzip: std::sync::OnceLock<Vec<u8>>,
}

impl Rendered {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn gzip(&self) -> &[u8] {
        self.gzip.get_or_init(|| {
            use std::io::Write as _;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            // Writing to a Vec cannot fail.
            let _ = enc.write_all(self.text.as_bytes());
            enc.finish().unwrap_or_default()
        })
    }
}

impl std::ops::Deref for Rendered {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

/// The latest rendered text, shared with the HTTP server.
#[derive(Clone, Default)]
pub struct Exposition(Arc<Mutex<Arc<Rendered>>>);

impl Exposition {
    pub fn current(&self) -> Arc<Rendered> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, text: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(Rendered {
            text,
            gzip: std::sync::OnceLock::new(),
        });
    }
}

/// Running totals of every report, and their text.
pub struct Prometheus {
    builder: Builder,
    exposition: Exposition,
}

impl Prometheus {
    pub fn new(info: ResourceInfo) -> Prometheus {
        Prometheus {
            builder: Builder::new(Temporality::Cumulative, info, STALE_AFTER.as_nanos() as u64),
            exposition: Exposition::default(),
        }
    }

    pub fn exposition(&self) -> Exposition {
        self.exposition.clone()
    }

    /// Folds the report in and renders the text scrapes get from now on.
    pub fn update(&mut self, report: &Report, agent: &AgentTotals) {
        self.builder.ingest(report, agent);
        let text = self
            .builder
            .build()
            .map(|req| render(&req))
            .unwrap_or_default();
        self.exposition.set(text);
    }
}

/// The request as Prometheus text: one family per catalogue metric that has points, in the
/// catalogue's order, each with its HELP and TYPE lines.
pub fn render(req: &ExportMetricsServiceRequest) -> String {
    // catalogue index → the family's sample lines
    let mut families: BTreeMap<usize, String> = BTreeMap::new();
    for rm in &req.resource_metrics {
        let resource = label_text(
            rm.resource
                .as_ref()
                .map(|r| &r.attributes[..])
                .unwrap_or_default(),
        );
        for m in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
            let Some(index) = CATALOG.iter().position(|d| d.name == m.name) else {
                debug_assert!(false, "{} is not in the catalogue", m.name);
                continue;
            };
            let name = CATALOG[index].prometheus_name();
            let out = families.entry(index).or_default();
            // The resource's labels, then the point's, written once per point.
            let labels = |attrs: &[KeyValue]| {
                let point = label_text(attrs);
                match (resource.is_empty(), point.is_empty()) {
                    (_, true) => resource.clone(),
                    (true, false) => point,
                    (false, false) => format!("{resource},{point}"),
                }
            };
            match &m.data {
                Some(Data::Sum(s)) => {
                    for p in &s.data_points {
                        sample(out, &name, "", &labels(&p.attributes), None, number(p));
                    }
                }
                Some(Data::Gauge(g)) => {
                    for p in &g.data_points {
                        sample(out, &name, "", &labels(&p.attributes), None, number(p));
                    }
                }
                Some(Data::ExponentialHistogram(h)) => {
                    for p in &h.data_points {
                        histogram(out, &name, &labels(&p.attributes), p);
                    }
                }
                _ => debug_assert!(false, "{} has no data of a known kind", m.name),
            }
        }
    }
    let mut text = String::new();
    for (index, lines) in families {
        let def: &MetricDef = &CATALOG[index];
        let name = def.prometheus_name();
        let _ = writeln!(text, "# HELP {name} {}", escape_help(def.description));
        let _ = writeln!(text, "# TYPE {name} {}", def.instrument.prometheus_type());
        text.push_str(&lines);
    }
    text
}

/// Attributes as labels, `name="value",...` (see [`catalog::prometheus_label`]); empty values
/// are left out, as Prometheus reads an empty label as an absent one.
fn label_text(attrs: &[KeyValue]) -> String {
    let mut text = String::new();
    for a in attrs {
        let Some(label) = catalog::prometheus_label(&a.key) else {
            continue;
        };
        let value: Cow<str> = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.into(),
            Some(any_value::Value::IntValue(i)) => i.to_string().into(),
            Some(any_value::Value::BoolValue(b)) => b.to_string().into(),
            Some(any_value::Value::DoubleValue(d)) => float(*d).into(),
            _ => continue,
        };
        if value.is_empty() {
            continue;
        }
        if !text.is_empty() {
            text.push(',');
        }
        let _ = write!(text, "{label}=\"{}\"", escape_label(&value));
    }
    text
}

/// A point's value, as text.
enum Number {
    Int(i64),
    Float(f64),
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::Int(i) => write!(f, "{i}"),
            Number::Float(v) => f.write_str(&float(*v)),
        }
    }
}

fn number(p: &NumberDataPoint) -> Number {
    match p.value {
        Some(number_data_point::Value::AsInt(i)) => Number::Int(i),
        Some(number_data_point::Value::AsDouble(d)) => Number::Float(d),
        None => Number::Float(f64::NAN),
    }
}

/// The kernel's log2 slots back from a scale-0 exponential point (the inverse of
/// [`super::otlp::exponential_point`]: the zero bucket is slot 0, bucket `i` is slot `i + 1`).
pub fn slots(p: &ExponentialHistogramDataPoint) -> [u64; HIST_SLOTS] {
    let mut slots = [0u64; HIST_SLOTS];
    slots[0] = p.zero_count;
    if let Some(b) = &p.positive {
        for (k, count) in b.bucket_counts.iter().enumerate() {
            let slot = b.offset as i64 + 1 + k as i64;
            if let Some(s) = usize::try_from(slot).ok().and_then(|s| slots.get_mut(s)) {
                *s += count;
            }
        }
    }
    slots
}

/// The `le` of each slot but the open last one: its upper bound in seconds, 2^s ns.
static BOUNDS: LazyLock<Vec<String>> = LazyLock::new(|| {
    (0..HIST_SLOTS - 1)
        .map(|s| float((1u64 << s) as f64 / 1e9))
        .collect()
});

/// A histogram point (log2 nanoseconds) as cumulative buckets in seconds, `_sum` and `_count`.
fn histogram(out: &mut String, name: &str, labels: &str, p: &ExponentialHistogramDataPoint) {
    let mut cumulative = 0u64;
    // Every finite bound, always: a series' bucket set stays the same from scrape to scrape.
    for (count, le) in slots(p).iter().zip(BOUNDS.iter()) {
        cumulative += count;
        let value = Number::Int(cumulative as i64);
        sample(out, name, "_bucket", labels, Some(le), value);
    }
    let count = Number::Int(p.count as i64);
    sample(out, name, "_bucket", labels, Some("+Inf"), count);
    let sum = Number::Float(p.sum.unwrap_or(0.0) / 1e9);
    sample(out, name, "_sum", labels, None, sum);
    sample(
        out,
        name,
        "_count",
        labels,
        None,
        Number::Int(p.count as i64),
    );
}

/// One sample line: `name<suffix>{labels,le="bound"} value`.
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &str,
    le: Option<&str>,
    value: Number,
) {
    let _ = match (labels.is_empty(), le) {
        (true, None) => writeln!(out, "{name}{suffix} {value}"),
        (false, None) => writeln!(out, "{name}{suffix}{{{labels}}} {value}"),
        (true, Some(le)) => writeln!(out, "{name}{suffix}{{le=\"{le}\"}} {value}"),
        (false, Some(le)) => writeln!(out, "{name}{suffix}{{{labels},le=\"{le}\"}} {value}"),
    };
}

/// A float as the text format writes it (Go's ParseFloat reads it back exactly).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Label values: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// HELP text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

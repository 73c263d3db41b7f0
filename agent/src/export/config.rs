//! The export settings: the OTLP exporter's standard environment variables (with the spec's
//! defaults) and their config-file keys and flags, parsed and validated with the rest of the
//! configuration (`crate::config`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ureq::tls::{Certificate, PemItem, PrivateKey};

use super::otlp::Temporality;
use crate::config::{ConfigError, Raw, parse};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// First backoff; doubled per attempt up to `max`, with jitter (50–100% of it).
    pub initial: Duration,
    pub max: Duration,
    /// A batch is given up after this long (and counted as dropped).
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub protocol: Protocol,
    /// Where requests go: `<endpoint>/v1/metrics` for HTTP (unless the metrics endpoint was
    /// given), the endpoint itself for gRPC.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub compression: Compression,
    /// PEM CA bundle to trust instead of the built-in roots (https endpoints).
    pub certificate: Option<PathBuf>,
    /// Client certificate and key, for receivers that require one (https endpoints).
    pub client_identity: Option<ClientIdentity>,
    pub temporality: Temporality,
    pub service_name: String,
    /// OTEL_RESOURCE_ATTRIBUTES, less `service.name` (which is `service_name`).
    pub resource_attributes: Vec<(String, String)>,
    /// Export at most this often (`None`: every collection).
    pub export_interval: Option<Duration>,
    /// Batches waiting to be sent; beyond it the oldest is dropped.
    pub queue_size: usize,
    pub retry: RetryPolicy,
}

/// A client certificate (PEM, the leaf first, then any intermediates) and its private key
/// (PEM: PKCS#8, PKCS#1 or SEC1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// Metrics-specific variables that beat the generic `OTEL_EXPORTER_OTLP_*` one of a key.
pub const ENV_SIGNAL: [(&str, &str); 7] = [
    ("otlp_protocol", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
    ("otlp_headers", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"),
    ("otlp_timeout", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"),
    ("otlp_compression", "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION"),
    ("otlp_certificate", "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE"),
    (
        "otlp_client_certificate",
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
    ),
    ("otlp_client_key", "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY"),
];

/// The metrics-specific variable that beats the generic one for `field`, if any.
pub fn signal_env(field: &str) -> Option<&'static str> {
    ENV_SIGNAL
        .iter()
        .find(|(f, _)| *f == field)
        .map(|(_, e)| *e)
}

/// The export settings, or `None` when no endpoint is configured (export off). Every key is
/// validated even then.
pub fn from_raw(raw: &Raw) -> Result<Option<ExportConfig>, ConfigError> {
    let protocol = parse(raw, "otlp_protocol", Protocol::HttpProtobuf, parse_protocol)?;
    let endpoint = parse(raw, "otlp_endpoint", None, parse_endpoint)?;
    let metrics_endpoint = parse(raw, "otlp_metrics_endpoint", None, parse_endpoint)?;
    let headers = parse(raw, "otlp_headers", Vec::new(), parse_headers)?;
    let timeout = parse(raw, "otlp_timeout", Duration::from_secs(10), |s| {
        parse_millis(s, Duration::from_millis(1), Duration::from_secs(600))
    })?;
    let compression = parse(
        raw,
        "otlp_compression",
        Compression::None,
        parse_compression,
    )?;
    let certificate = parse(raw, "otlp_certificate", None, |s| {
        read_certificates(Path::new(s))
            .map(|_| Some(PathBuf::from(s)))
            .map_err(|e| format!("a PEM file holding the CA certificates to trust ({e})"))
    })?;
    let client_identity = client_identity(raw)?;
    let temporality = parse(
        raw,
        "otlp_temporality",
        Temporality::Cumulative,
        parse_temporality,
    )?;
    let mut resource_attributes = parse(raw, "resource_attributes", Vec::new(), parse_kv_list)?;
    let service_name = parse(raw, "service_name", None, |s| {
        if s.is_empty() {
            Err("a non-empty service name".to_owned())
        } else {
            Ok(Some(s.to_owned()))
        }
    })?;
    let export_interval = parse(raw, "export_interval", None, |s| {
        parse_millis(s, Duration::from_millis(100), Duration::from_secs(3600)).map(Some)
    })?;
    let queue_size = parse(raw, "otlp_queue_size", 32, |s| {
        let expected = || "a whole number from 1 to 10000".to_owned();
        let n: usize = s.parse().map_err(|_| expected())?;
        if (1..=10_000).contains(&n) {
            Ok(n)
        } else {
            Err(expected())
        }
    })?;
    // OTEL_SERVICE_NAME beats service.name in OTEL_RESOURCE_ATTRIBUTES.
    let attr_service = resource_attributes
        .iter()
        .position(|(k, _)| k == "service.name")
        .map(|i| resource_attributes.remove(i).1);
    let service_name = service_name
        .or(attr_service)
        .unwrap_or_else(|| "nodesat".to_owned());
    let url = match (metrics_endpoint, endpoint) {
        (Some(url), _) => url,
        (None, Some(base)) => match protocol {
            Protocol::HttpProtobuf => format!("{}/v1/metrics", base.trim_end_matches('/')),
            Protocol::Grpc => base,
        },
        (None, None) => return Ok(None),
    };
    Ok(Some(ExportConfig {
        protocol,
        url,
        headers,
        timeout,
        compression,
        certificate,
        client_identity,
        temporality,
        service_name,
        resource_attributes,
        export_interval,
        queue_size,
        retry: RetryPolicy::default(),
    }))
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        _ => Err("one of: grpc, http/protobuf (http/json is not supported)".to_owned()),
    }
}

fn parse_endpoint(s: &str) -> Result<Option<String>, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !s.contains(char::is_whitespace) => {
            Ok(Some(s.to_owned()))
        }
        _ => Err("an http:// or https:// URL, such as http://127.0.0.1:4318".to_owned()),
    }
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    match s {
        "gzip" => Ok(Compression::Gzip),
        "none" | "" => Ok(Compression::None),
        _ => Err("one of: gzip, none".to_owned()),
    }
}

fn parse_temporality(s: &str) -> Result<Temporality, String> {
    match s.to_ascii_lowercase().as_str() {
        "cumulative" => Ok(Temporality::Cumulative),
        "delta" => Ok(Temporality::Delta),
        _ => Err("one of: cumulative, delta".to_owned()),
    }
}

/// Milliseconds as the OTEL variables give them ("10000"), or a duration ("10s").
fn parse_millis(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let expected = || {
        format!(
            "milliseconds or a duration from {} to {}, such as \"10000\" or \"10s\"",
            humantime::format_duration(min),
            humantime::format_duration(max)
        )
    };
    let d = match s.parse::<u64>() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => humantime::parse_duration(s).map_err(|_| expected())?,
    };
    if d < min || d > max {
        return Err(expected());
    }
    Ok(d)
}

/// The client certificate and key: both or neither, each a PEM file holding what it should.
fn client_identity(raw: &Raw) -> Result<Option<ClientIdentity>, ConfigError> {
    let certificate = parse(raw, "otlp_client_certificate", None, |s| {
        read_certificates(Path::new(s))
            .map(|_| Some(PathBuf::from(s)))
            .map_err(|e| format!("a PEM file holding the client certificate ({e})"))
    })?;
    let key = parse(raw, "otlp_client_key", None, |s| {
        read_private_key(Path::new(s))
            .map(|_| Some(PathBuf::from(s)))
            .map_err(|e| format!("a PEM file holding the client certificate's private key ({e})"))
    })?;
    // The one given is named in the error, with where it came from.
    let alone = |given: &'static str, expected: &str| {
        let (value, origin) = raw[given].clone();
        Err(ConfigError::Invalid {
            field: given,
            value,
            origin,
            expected: expected.to_owned(),
        })
    };
    match (certificate, key) {
        (Some(certificate), Some(key)) => Ok(Some(ClientIdentity { certificate, key })),
        (None, None) => Ok(None),
        (Some(_), None) => alone(
            "otlp_client_certificate",
            "otlp_client_key as well (--otlp-client-key, OTEL_EXPORTER_OTLP_CLIENT_KEY): a client certificate needs its private key",
        ),
        (None, Some(_)) => alone(
            "otlp_client_key",
            "otlp_client_certificate as well (--otlp-client-certificate, OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE): a private key needs its certificate",
        ),
    }
}

/// A PEM file the TLS settings name that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid PEM: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path} holds no {wanted}")]
    Missing { path: PathBuf, wanted: &'static str },
}

/// The PEM text of a file and the items in it.
fn read_pem(path: &Path) -> Result<(Vec<u8>, Vec<PemItem<'static>>), PemError> {
    let pem = std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_owned(),
        source,
    })?;
    let items = ureq::tls::parse_pem(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Invalid {
            path: path.to_owned(),
            // "PEM: MissingSectionEnd { end_marker: [67, ...] }": the name says enough
            message: e
                .to_string()
                .split(" {")
                .next()
                .unwrap_or_default()
                .to_owned(),
        })?;
    Ok((pem, items))
}

/// The certificates of a PEM file (a CA bundle, or a certificate chain), and its text.
pub fn read_certificates(path: &Path) -> Result<(Vec<u8>, Vec<Certificate<'static>>), PemError> {
    let (pem, items) = read_pem(path)?;
    let certs: Vec<_> = items
        .into_iter()
        .filter_map(|item| match item {
            PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(PemError::Missing {
            path: path.to_owned(),
            wanted: "certificate",
        });
    }
    Ok((pem, certs))
}

/// The first private key of a PEM file, and its text.
pub fn read_private_key(path: &Path) -> Result<(Vec<u8>, PrivateKey<'static>), PemError> {
    let (pem, items) = read_pem(path)?;
    let key = items.into_iter().find_map(|item| match item {
        PemItem::PrivateKey(k) => Some(k),
        _ => None,
    });
    match key {
        Some(key) => Ok((pem, key)),
        None => Err(PemError::Missing {
            path: path.to_owned(),
            wanted: "private key",
        }),
    }
}

/// `key=value,key2=value2`, percent-decoded (OTEL_EXPORTER_OTLP_HEADERS,
/// OTEL_RESOURCE_ATTRIBUTES).
pub fn parse_kv_list(s: &str) -> Result<Vec<(String, String)>, String> {
    const EXPECTED: &str = "a comma-separated list of key=value pairs (values percent-encoded)";
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or(EXPECTED)?;
        let (k, v) = (
            percent_decode(k.trim()).ok_or(EXPECTED)?,
            percent_decode(v.trim()).ok_or(EXPECTED)?,
        );
        if k.is_empty() {
            return Err(EXPECTED.to_owned());
        }
        out.push((k, v));
    }
    Ok(out)
}

fn parse_headers(s: &str) -> Result<Vec<(String, String)>, String> {
    let list = parse_kv_list(s)?;
    for (k, v) in &list {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if !k.chars().all(token) || v.chars().any(|c| c.is_control()) {
            return Err(format!(
                "key=value pairs with valid HTTP header names and values ({k:?} is not)"
            ));
        }
    }
    Ok(list)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

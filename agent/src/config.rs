//! Configuration: defaults, overridden by a TOML file (`--config`), then by `NODESAT_*`
//! environment variables, then by flags. Everything is validated before anything starts; an
//! invalid value is reported with the field, where it came from and what is accepted, and the
//! process exits with [`EXIT_CONFIG`].

use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

/// Exit code for invalid configuration (EX_CONFIG would be 78; we use EX_USAGE, 64, as the
/// command line and its files are the user's input).
pub const EXIT_CONFIG: i32 = 64;

/// How each interval's figures are shown when no exporter is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A compact per-cgroup table on stdout (local debugging).
    Table,
    /// One JSON object per line on stdout (scripts, tests).
    Json,
    /// Nothing on stdout.
    None,
}

/// Which attach variant the probes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VariantChoice {
    /// The best the kernel offers: tp_btf, then raw tracepoint, then classic tracepoint.
    Auto,
    /// Only this variant (to test a fallback, or to avoid one).
    Only(crate::probes::Variant),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub interval: Duration,
    pub output: Output,
    pub log_level: tracing::Level,
    pub probe_variant: VariantChoice,
    pub max_cgroups: u32,
    pub cgroup_root: PathBuf,
    /// Which cgroup hierarchy names a task's cgroup (see [`crate::cgroups::HierarchyChoice`]).
    pub cgroup_hierarchy: crate::cgroups::HierarchyChoice,
    pub top: usize,
    /// Where the host's `/` is mounted (`/` outside a container): /proc is read under it.
    pub host_root: PathBuf,
    /// The kubelet pod list URL; `None` when pod metadata is off.
    pub kubelet_url: Option<String>,
    /// Most entities (cgroups) reported per interval; the rest are summed into "other".
    pub max_entities: usize,
    /// Where to serve /healthz and /readyz; `None`: not served.
    pub health_listen: Option<std::net::SocketAddr>,
    /// Where to serve /metrics (Prometheus text); `None`: not served. May be `health_listen`.
    pub prometheus_listen: Option<std::net::SocketAddr>,
    /// The whole drain after SIGTERM or SIGINT (final collection, OTLP delivery, the kubelet
    /// thread): what is not done by then is given up, counted and logged.
    pub shutdown_timeout: Duration,
    /// Record and log each run-queue `pending_mismatch` (a debugging aid; see docs/metrics.md).
    pub debug_runqueue: bool,
    /// Read each reported cgroup's PSI and memory.events files (`--cgroup-files`).
    pub cgroup_files: bool,
    /// Split each run-queue wait by who ran meanwhile (`--neighbours`).
    pub neighbours: bool,
    // ── export (crate::export::config) ──
    /// OTLP metrics export; `None` when no endpoint is configured.
    pub export: Option<crate::export::ExportConfig>,
}

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    Env(&'static str),
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {field} = {value:?} (from {origin}): expected {expected}")]
    Invalid {
        field: &'static str,
        value: String,
        origin: Origin,
        expected: String,
    },
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Values given on the command line (each optional; unset means "not given").
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Flags {
    /// TOML configuration file (see deploy/nodesat.toml for every key).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Collection interval, e.g. "10s", "500ms" [default: 10s; env NODESAT_INTERVAL].
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
    /// Local output when no exporter is configured: table, json or none [default: table; env
    /// NODESAT_OUTPUT].
    #[arg(long, value_name = "FORMAT")]
    pub output: Option<String>,
    /// Log level on stderr: error, warn, info, debug or trace [default: info; env
    /// NODESAT_LOG_LEVEL].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Probe attach variant: auto, or one to force on the probes that have it: tp_btf,
    /// raw_tracepoint, tracepoint (tracepoint probes), fentry, kprobe (the throttle probe)
    /// [default: auto; env NODESAT_PROBE_VARIANT].
    #[arg(long, value_name = "VARIANT")]
    pub probe_variant: Option<String>,
    /// Most cgroups tracked in the kernel's per-cgroup maps (LRU beyond) [default: 4096; env
    /// NODESAT_MAX_CGROUPS].
    #[arg(long, value_name = "N")]
    pub max_cgroups: Option<String>,
    /// Where the cgroup filesystem is mounted (the host's, inside a container) [default:
    /// /sys/fs/cgroup; env NODESAT_CGROUP_ROOT].
    #[arg(long, value_name = "DIR")]
    pub cgroup_root: Option<String>,
    /// Which cgroup hierarchy names a task's cgroup: auto (the unified v2 hierarchy when one
    /// is mounted, else the v1 cpu controller's), unified, or cpu (v1; for hybrid nodes whose
    /// container runtime leaves tasks out of the unified hierarchy) [default: auto; env
    /// NODESAT_CGROUP_HIERARCHY].
    #[arg(long, value_name = "HIERARCHY")]
    pub cgroup_hierarchy: Option<String>,
    /// Rows shown in the table output [default: 20; env NODESAT_TOP].
    #[arg(long, value_name = "N")]
    pub top: Option<String>,
    /// Where the host's / is mounted when running in a container, e.g. /host [default: /; env
    /// NODESAT_HOST_ROOT].
    #[arg(long, value_name = "DIR")]
    pub host_root: Option<String>,
    /// Kubelet pod list for pod names: "auto" (https://$NODE_NAME:10250/pods with the service
    /// account, when running in a pod), "off", or a URL [default: auto; env NODESAT_KUBELET_URL].
    #[arg(long, value_name = "URL")]
    pub kubelet_url: Option<String>,
    /// Most cgroups reported per interval, the rest summed into "other" [default: 500; env
    /// NODESAT_MAX_ENTITIES].
    #[arg(long, value_name = "N")]
    pub max_entities: Option<String>,
    /// Serve /healthz and /readyz on this address, e.g. 0.0.0.0:9464 [default: off; env
    /// NODESAT_HEALTH_LISTEN].
    #[arg(long, value_name = "ADDR")]
    pub health_listen: Option<String>,
    /// Serve /metrics (Prometheus text format) on this address, e.g. 0.0.0.0:9464 (may be the
    /// --health-listen address) [default: off; env NODESAT_PROMETHEUS_LISTEN].
    #[arg(long, value_name = "ADDR")]
    pub prometheus_listen: Option<String>,
    /// Longest the shutdown drain may take after SIGTERM or SIGINT (final collection, OTLP
    /// delivery of what is queued or in flight); what is left is given up, counted and logged
    /// [default: 5s; env NODESAT_SHUTDOWN_TIMEOUT].
    #[arg(long, value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// Log each run-queue pending_mismatch the kernel programs record (task, CPU, what ran
    /// instead): on or off [default: off; env NODESAT_DEBUG_RUNQUEUE].
    #[arg(long, value_name = "on|off")]
    pub debug_runqueue: Option<String>,
    /// Read the pressure stall (cpu/memory/io.pressure) and memory.events files of every
    /// reported cgroup and its pod, and /proc/pressure: on or off (four small reads per cgroup
    /// per interval) [default: on; env NODESAT_CGROUP_FILES].
    #[arg(long, value_name = "on|off")]
    pub cgroup_files: Option<String>,
    /// Split every run-queue wait by who ran on the CPU meanwhile (each cgroup's culprits and
    /// the wait it caused; about 50 ns more per context switch): on or off [default: on; env
    /// NODESAT_NEIGHBOURS].
    #[arg(long, value_name = "on|off")]
    pub neighbours: Option<String>,
    // ── export (crate::export::config) ──
    /// OTLP endpoint; export is off without one. HTTP requests go to <URL>/v1/metrics [env
    /// OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP metrics endpoint, used as is [env OTEL_EXPORTER_OTLP_METRICS_ENDPOINT].
    #[arg(long, value_name = "URL")]
    pub otlp_metrics_endpoint: Option<String>,
    /// OTLP protocol: grpc or http/protobuf [default: http/protobuf; env
    /// OTEL_EXPORTER_OTLP_PROTOCOL].
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// Headers on every export request, key=value,... [env OTEL_EXPORTER_OTLP_HEADERS].
    #[arg(long, value_name = "LIST")]
    pub otlp_headers: Option<String>,
    /// Export request timeout, ms or a duration [default: 10000; env
    /// OTEL_EXPORTER_OTLP_TIMEOUT].
    #[arg(long, value_name = "MS")]
    pub otlp_timeout: Option<String>,
    /// Export compression: gzip or none [default: none; env OTEL_EXPORTER_OTLP_COMPRESSION].
    #[arg(long, value_name = "ALGO")]
    pub otlp_compression: Option<String>,
    /// PEM CA bundle for an https endpoint [env OTEL_EXPORTER_OTLP_CERTIFICATE].
    #[arg(long, value_name = "FILE")]
    pub otlp_certificate: Option<String>,
    /// PEM client certificate for an https endpoint that requires one; needs
    /// --otlp-client-key [env OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE].
    #[arg(long, value_name = "FILE")]
    pub otlp_client_certificate: Option<String>,
    /// PEM private key of the client certificate [env OTEL_EXPORTER_OTLP_CLIENT_KEY].
    #[arg(long, value_name = "FILE")]
    pub otlp_client_key: Option<String>,
    /// Temporality: cumulative or delta [default: cumulative; env
    /// OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE].
    #[arg(long, value_name = "T")]
    pub otlp_temporality: Option<String>,
    /// Batches waiting to be sent; beyond it the oldest is dropped [default: 32; env
    /// NODESAT_OTLP_QUEUE_SIZE].
    #[arg(long, value_name = "N")]
    pub otlp_queue_size: Option<String>,
    /// Resource attributes on every exported resource, key=value,... [env
    /// OTEL_RESOURCE_ATTRIBUTES].
    #[arg(long, value_name = "LIST")]
    pub resource_attributes: Option<String>,
    /// service.name of the exported resources [default: nodesat; env OTEL_SERVICE_NAME].
    #[arg(long, value_name = "NAME")]
    pub service_name: Option<String>,
    /// Export at most this often, ms or a duration [default: every collection; env
    /// OTEL_METRIC_EXPORT_INTERVAL].
    #[arg(long, value_name = "MS")]
    pub export_interval: Option<String>,
}

/// One configuration key: its name in the file, its flag and its environment variable.
struct Key {
    field: &'static str,
    flag: &'static str,
    env: &'static str,
}

const KEYS: [Key; 31] = [
    key("interval", "--interval", "NODESAT_INTERVAL"),
    key("output", "--output", "NODESAT_OUTPUT"),
    key("log_level", "--log-level", "NODESAT_LOG_LEVEL"),
    key("probe_variant", "--probe-variant", "NODESAT_PROBE_VARIANT"),
    key("max_cgroups", "--max-cgroups", "NODESAT_MAX_CGROUPS"),
    key("cgroup_root", "--cgroup-root", "NODESAT_CGROUP_ROOT"),
    key(
        "cgroup_hierarchy",
        "--cgroup-hierarchy",
        "NODESAT_CGROUP_HIERARCHY",
    ),
    key("top", "--top", "NODESAT_TOP"),
    key("host_root", "--host-root", "NODESAT_HOST_ROOT"),
    key("kubelet_url", "--kubelet-url", "NODESAT_KUBELET_URL"),
    key("max_entities", "--max-entities", "NODESAT_MAX_ENTITIES"),
    key("health_listen", "--health-listen", "NODESAT_HEALTH_LISTEN"),
    key(
        "prometheus_listen",
        "--prometheus-listen",
        "NODESAT_PROMETHEUS_LISTEN",
    ),
    key(
        "shutdown_timeout",
        "--shutdown-timeout",
        "NODESAT_SHUTDOWN_TIMEOUT",
    ),
    key(
        "debug_runqueue",
        "--debug-runqueue",
        "NODESAT_DEBUG_RUNQUEUE",
    ),
    key("cgroup_files", "--cgroup-files", "NODESAT_CGROUP_FILES"),
    key("neighbours", "--neighbours", "NODESAT_NEIGHBOURS"),
    // ── export (crate::export::config) ──
    key(
        "otlp_endpoint",
        "--otlp-endpoint",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ),
    key(
        "otlp_metrics_endpoint",
        "--otlp-metrics-endpoint",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ),
    key(
        "otlp_protocol",
        "--otlp-protocol",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ),
    key(
        "otlp_headers",
        "--otlp-headers",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ),
    key(
        "otlp_timeout",
        "--otlp-timeout",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ),
    key(
        "otlp_compression",
        "--otlp-compression",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ),
    key(
        "otlp_certificate",
        "--otlp-certificate",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ),
    key(
        "otlp_client_certificate",
        "--otlp-client-certificate",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    ),
    key(
        "otlp_client_key",
        "--otlp-client-key",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    ),
    key(
        "otlp_temporality",
        "--otlp-temporality",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    ),
    key(
        "otlp_queue_size",
        "--otlp-queue-size",
        "NODESAT_OTLP_QUEUE_SIZE",
    ),
    key(
        "resource_attributes",
        "--resource-attributes",
        "OTEL_RESOURCE_ATTRIBUTES",
    ),
    key("service_name", "--service-name", "OTEL_SERVICE_NAME"),
    key(
        "export_interval",
        "--export-interval",
        "OTEL_METRIC_EXPORT_INTERVAL",
    ),
];

const fn key(field: &'static str, flag: &'static str, env: &'static str) -> Key {
    Key { field, flag, env }
}

/// The config file: a table of the keys in [`KEYS`], every one optional.
type FileConfig = toml::Table;

impl Flags {
    fn get(&self, field: &str) -> Option<&String> {
        match field {
            "interval" => self.interval.as_ref(),
            "output" => self.output.as_ref(),
            "log_level" => self.log_level.as_ref(),
            "probe_variant" => self.probe_variant.as_ref(),
            "max_cgroups" => self.max_cgroups.as_ref(),
            "cgroup_root" => self.cgroup_root.as_ref(),
            "cgroup_hierarchy" => self.cgroup_hierarchy.as_ref(),
            "top" => self.top.as_ref(),
            "host_root" => self.host_root.as_ref(),
            "kubelet_url" => self.kubelet_url.as_ref(),
            "max_entities" => self.max_entities.as_ref(),
            "health_listen" => self.health_listen.as_ref(),
            "prometheus_listen" => self.prometheus_listen.as_ref(),
            "shutdown_timeout" => self.shutdown_timeout.as_ref(),
            "debug_runqueue" => self.debug_runqueue.as_ref(),
            "cgroup_files" => self.cgroup_files.as_ref(),
            "neighbours" => self.neighbours.as_ref(),
            // ── export (crate::export::config) ──
            "otlp_endpoint" => self.otlp_endpoint.as_ref(),
            "otlp_metrics_endpoint" => self.otlp_metrics_endpoint.as_ref(),
            "otlp_protocol" => self.otlp_protocol.as_ref(),
            "otlp_headers" => self.otlp_headers.as_ref(),
            "otlp_timeout" => self.otlp_timeout.as_ref(),
            "otlp_compression" => self.otlp_compression.as_ref(),
            "otlp_certificate" => self.otlp_certificate.as_ref(),
            "otlp_client_certificate" => self.otlp_client_certificate.as_ref(),
            "otlp_client_key" => self.otlp_client_key.as_ref(),
            "otlp_temporality" => self.otlp_temporality.as_ref(),
            "otlp_queue_size" => self.otlp_queue_size.as_ref(),
            "resource_attributes" => self.resource_attributes.as_ref(),
            "service_name" => self.service_name.as_ref(),
            "export_interval" => self.export_interval.as_ref(),
            _ => None,
        }
    }
}

/// The raw (unparsed) value of each key that was given, and where it came from.
pub(crate) type Raw = BTreeMap<&'static str, (String, Origin)>;

impl Config {
    /// Layers defaults, the file named by `--config`, the environment (`env` looks a variable
    /// up) and the flags, and validates the result.
    pub fn load(
        flags: &Flags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => Some((path.clone(), read_file(path)?)),
            None => None,
        };
        let mut raw = Raw::new();
        for k in &KEYS {
            let given = if let Some(v) = flags.get(k.field) {
                Some((v.clone(), Origin::Flag(k.flag)))
            } else if let Some((v, var)) = crate::export::config::signal_env(k.field)
                .and_then(|var| env(var).map(|v| (v, var)))
            {
                // export: OTEL_EXPORTER_OTLP_METRICS_* beats OTEL_EXPORTER_OTLP_*
                Some((v, Origin::Env(var)))
            } else if let Some(v) = env(k.env) {
                Some((v, Origin::Env(k.env)))
            } else {
                file.as_ref().and_then(|(path, f)| {
                    f.get(k.field)
                        .map(|v| (toml_text(v), Origin::File(path.clone())))
                })
            };
            if let Some(given) = given {
                raw.insert(k.field, given);
            }
        }
        Self::from_raw(&raw)
    }

    fn from_raw(raw: &Raw) -> Result<Config, ConfigError> {
        Ok(Config {
            interval: parse(raw, "interval", Duration::from_secs(10), parse_interval)?,
            output: parse(raw, "output", Output::Table, parse_output)?,
            log_level: parse(raw, "log_level", tracing::Level::INFO, parse_log_level)?,
            probe_variant: parse(raw, "probe_variant", VariantChoice::Auto, parse_variant)?,
            max_cgroups: parse(raw, "max_cgroups", 4096, |s| parse_int(s, 16, 1 << 20))?,
            cgroup_root: parse(raw, "cgroup_root", "/sys/fs/cgroup".into(), parse_dir)?,
            cgroup_hierarchy: parse(
                raw,
                "cgroup_hierarchy",
                crate::cgroups::HierarchyChoice::Auto,
                |s| {
                    use crate::cgroups::HierarchyChoice::*;
                    one_of(s, &[("auto", Auto), ("unified", Unified), ("cpu", V1Cpu)])
                },
            )?,
            top: parse(raw, "top", 20, |s| parse_int(s, 1, 10_000))?,
            host_root: parse(raw, "host_root", "/".into(), parse_dir)?,
            kubelet_url: parse(raw, "kubelet_url", auto_kubelet_url(), parse_kubelet_url)?,
            max_entities: parse(raw, "max_entities", 500, |s| parse_int(s, 1, 100_000))?,
            health_listen: parse(raw, "health_listen", None, parse_listen)?,
            prometheus_listen: parse(raw, "prometheus_listen", None, parse_listen)?,
            shutdown_timeout: parse(
                raw,
                "shutdown_timeout",
                Duration::from_secs(5),
                parse_shutdown_timeout,
            )?,
            debug_runqueue: parse(raw, "debug_runqueue", false, |s| {
                one_of(s, &[("on", true), ("off", false)])
            })?,
            cgroup_files: parse(raw, "cgroup_files", true, |s| {
                one_of(s, &[("on", true), ("off", false)])
            })?,
            neighbours: parse(raw, "neighbours", true, |s| {
                one_of(s, &[("on", true), ("off", false)])
            })?,
            export: crate::export::config::from_raw(raw)?,
        })
    }
}

fn read_file(path: &PathBuf) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let table: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.clone(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    if let Some(unknown) = table
        .keys()
        .find(|k| !KEYS.iter().any(|key| key.field == *k))
    {
        let known: Vec<&str> = KEYS.iter().map(|k| k.field).collect();
        return Err(ConfigError::Parse {
            path: path.clone(),
            message: format!(
                "unknown key `{unknown}`, expected one of: {}",
                known.join(", ")
            ),
        });
    }
    Ok(table)
}

/// A TOML value as the text a flag would carry: strings unquoted, numbers as written.
fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses one key with `f` (which returns what it expected on failure), or gives the default.
pub(crate) fn parse<T>(
    raw: &Raw,
    field: &'static str,
    default: T,
    f: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    let Some((value, origin)) = raw.get(field) else {
        return Ok(default);
    };
    f(value.trim()).map_err(|expected| ConfigError::Invalid {
        field,
        value: value.clone(),
        origin: origin.clone(),
        expected,
    })
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "a duration between 100ms and 1h, such as \"10s\" or \"500ms\"";
    let d = humantime::parse_duration(s).map_err(|_| EXPECTED.to_owned())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(EXPECTED.to_owned());
    }
    Ok(d)
}

fn parse_shutdown_timeout(s: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "a duration between 0s and 10m, such as \"5s\" or \"500ms\"";
    let d = humantime::parse_duration(s).map_err(|_| EXPECTED.to_owned())?;
    if d > Duration::from_secs(600) {
        return Err(EXPECTED.to_owned());
    }
    Ok(d)
}

fn one_of<T: Copy>(s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    choices
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            format!("one of: {}", names.join(", "))
        })
}

fn parse_output(s: &str) -> Result<Output, String> {
    one_of(
        s,
        &[
            ("table", Output::Table),
            ("json", Output::Json),
            ("none", Output::None),
        ],
    )
}

fn parse_log_level(s: &str) -> Result<tracing::Level, String> {
    use tracing::Level;
    one_of(
        &s.to_ascii_lowercase(),
        &[
            ("error", Level::ERROR),
            ("warn", Level::WARN),
            ("info", Level::INFO),
            ("debug", Level::DEBUG),
            ("trace", Level::TRACE),
        ],
    )
}

fn parse_variant(s: &str) -> Result<VariantChoice, String> {
    use crate::probes::Variant;
    one_of(
        s,
        &[
            ("auto", VariantChoice::Auto),
            ("tp_btf", VariantChoice::Only(Variant::TpBtf)),
            (
                "raw_tracepoint",
                VariantChoice::Only(Variant::RawTracepoint),
            ),
            ("tracepoint", VariantChoice::Only(Variant::Tracepoint)),
            ("fentry", VariantChoice::Only(Variant::Fentry)),
            ("kprobe", VariantChoice::Only(Variant::Kprobe)),
        ],
    )
}

fn parse_int<T: TryFrom<u64>>(s: &str, min: u64, max: u64) -> Result<T, String> {
    let expected = || format!("a whole number from {min} to {max}");
    let n: u64 = s.parse().map_err(|_| expected())?;
    if !(min..=max).contains(&n) {
        return Err(expected());
    }
    T::try_from(n).map_err(|_| expected())
}

/// Where the service account token is mounted in a pod.
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// "auto": the node-local kubelet when running in a pod (a service account token is mounted),
/// else off.
fn auto_kubelet_url() -> Option<String> {
    std::path::Path::new(SERVICE_ACCOUNT_TOKEN)
        .exists()
        .then(|| crate::identity::kubelet::KubeletConfig::in_cluster(node_name().as_deref()).url)
}

fn node_name() -> Option<String> {
    crate::identity::kubelet::node_name(|k| std::env::var(k).ok())
}

fn parse_kubelet_url(s: &str) -> Result<Option<String>, String> {
    match s {
        "off" | "" => Ok(None),
        "auto" => Ok(auto_kubelet_url()),
        given => crate::identity::kubelet::pod_list_url(given)
            .map(Some)
            .map_err(|e| {
                format!(
                    "\"auto\", \"off\", an http:// or https:// URL (a base URL gets /pods), \
                     or host:port (https): {e}"
                )
            }),
    }
}

fn parse_listen(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    s.parse()
        .map(Some)
        .map_err(|_| "an address such as 0.0.0.0:9464 or 127.0.0.1:9464".to_owned())
}

fn parse_dir(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_dir() {
        Ok(p)
    } else {
        Err("an existing directory".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(flags: Flags, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&flags, |k| env.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = load(Flags::default(), &[]).unwrap();
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.output, Output::Table);
        assert_eq!(c.probe_variant, VariantChoice::Auto);
        assert_eq!(c.max_cgroups, 4096);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    }

    #[test]
    fn shutdown_timeout_from_flag_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodesat.toml");
        std::fs::write(&path, "shutdown_timeout = \"2s\"\n").unwrap();
        let file = || Flags {
            config: Some(path.clone()),
            ..Default::default()
        };
        assert_eq!(
            load(file(), &[]).unwrap().shutdown_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(
            load(file(), &[("NODESAT_SHUTDOWN_TIMEOUT", "1500ms")])
                .unwrap()
                .shutdown_timeout,
            Duration::from_millis(1500)
        );
        let flag = Flags {
            shutdown_timeout: Some("0s".into()),
            ..file()
        };
        assert_eq!(load(flag, &[]).unwrap().shutdown_timeout, Duration::ZERO);
        let err = load(
            Flags {
                shutdown_timeout: Some("1h".into()),
                ..Default::default()
            },
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("shutdown_timeout") && err.contains("--shutdown-timeout"),
            "{err}"
        );
    }

    #[test]
    fn kubelet_url_by_its_address() {
        let url =
            |v: &str| load(Flags::default(), &[("NODESAT_KUBELET_URL", v)]).map(|c| c.kubelet_url);
        assert_eq!(
            url("http://127.0.0.1:18080").unwrap().as_deref(),
            Some("http://127.0.0.1:18080/pods")
        );
        assert_eq!(
            url("node-a:10250").unwrap().as_deref(),
            Some("https://node-a:10250/pods")
        );
        assert_eq!(url("off").unwrap(), None);
        let err = url("node-a").unwrap_err().to_string();
        assert!(
            err.contains("kubelet_url") && err.contains("host:port"),
            "{err}"
        );
    }

    #[test]
    fn flags_beat_env_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodesat.toml");
        std::fs::write(&path, "interval = \"3s\"\noutput = \"json\"\ntop = 5\n").unwrap();
        let flags = Flags {
            config: Some(path),
            interval: Some("1s".into()),
            ..Default::default()
        };
        let c = load(
            flags,
            &[("NODESAT_INTERVAL", "2s"), ("NODESAT_OUTPUT", "none")],
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(1), "flag wins");
        assert_eq!(c.output, Output::None, "env beats file");
        assert_eq!(c.top, 5, "file beats default");
    }

    #[test]
    fn invalid_values_name_field_origin_and_accepted_values() {
        let err = load(
            Flags {
                probe_variant: Some("nope".into()),
                ..Default::default()
            },
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("probe_variant"), "{err}");
        assert!(err.contains("--probe-variant"), "{err}");
        assert!(
            err.contains("auto, tp_btf, raw_tracepoint, tracepoint, fentry, kprobe"),
            "{err}"
        );

        let err = load(Flags::default(), &[("NODESAT_INTERVAL", "banana")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("interval") && err.contains("NODESAT_INTERVAL"),
            "{err}"
        );

        for bad in ["0s", "2h", "-1s"] {
            let flags = Flags {
                interval: Some(bad.into()),
                ..Default::default()
            };
            assert!(load(flags, &[]).is_err(), "{bad} accepted");
        }
        let flags = Flags {
            max_cgroups: Some("3".into()),
            ..Default::default()
        };
        assert!(
            load(flags, &[])
                .unwrap_err()
                .to_string()
                .contains("from 16 to")
        );
    }

    #[test]
    fn unknown_file_keys_are_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "intervall = \"3s\"\n").unwrap();
        let flags = Flags {
            config: Some(path),
            ..Default::default()
        };
        let err = load(flags, &[]).unwrap_err().to_string();
        assert!(err.contains("intervall"), "{err}");
    }

    #[test]
    fn file_numbers_and_strings_both_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(&path, "max_cgroups = 100\ntop = \"7\"\n").unwrap();
        let flags = Flags {
            config: Some(path),
            ..Default::default()
        };
        let c = load(flags, &[]).unwrap();
        assert_eq!((c.max_cgroups, c.top), (100, 7));
    }
}

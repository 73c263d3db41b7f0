//! Pod names, namespaces and container names from the node-local kubelet: `GET /pods` on its
//! authenticated port (`https://<node>:10250/pods`, the service account's bearer token, the
//! cluster CA), never a cluster-wide watch. A thread of its own ([`KubeletWatcher`]) polls it
//! with a small blocking client (ureq, rustls) every `refresh` and publishes a [`PodIndex`]
//! through a shared [`PodMetadata`]. A kubelet that is down or answers garbage is logged and
//! retried with exponential backoff; the last good list is kept meanwhile, and without any list
//! identities fall back to what the cgroup paths say.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Deserialize;

use super::path::{Qos, Runtime};
use crate::core::failure_log::{Decision, FailureLog};

/// While the kubelet keeps failing, the failures not logged are summarised this often.
pub const FAILURE_SUMMARY_EVERY: Duration = Duration::from_secs(300);

/// The service-account token (bearer) a pod gets.
pub const SA_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The cluster CA a pod gets.
pub const SA_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The kubelet's authenticated port.
pub const KUBELET_PORT: u16 = 10250;

// ---------------------------------------------------------------------------------------------
// The PodList (v1) fields we read.

#[derive(Deserialize)]
struct PodList {
    kind: Option<String>,
    items: Option<Vec<Pod>>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: Option<ObjectMeta>,
    status: Option<PodStatus>,
}

#[derive(Deserialize)]
struct ObjectMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    qos_class: Option<String>,
    container_statuses: Option<Vec<ContainerStatus>>,
    init_container_statuses: Option<Vec<ContainerStatus>>,
    ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Deserialize)]
struct ContainerStatus {
    name: Option<String>,
    #[serde(rename = "containerID")]
    container_id: Option<String>,
}

/// What the kubelet says about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub qos: Option<Qos>,
    /// Containers that have (or had) an id: regular, init and ephemeral. Never the sandbox.
    pub containers: Vec<ContainerMeta>,
}

impl PodMeta {
    pub fn container(&self, id: &str) -> Option<&ContainerMeta> {
        self.containers.iter().find(|c| c.id == id)
    }
}

/// One container of a pod, by its runtime id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerMeta {
    pub name: String,
    /// The id without its `runtime://` scheme.
    pub id: String,
    pub runtime: Option<Runtime>,
    pub kind: ContainerKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    Regular,
    Init,
    Ephemeral,
}

/// The kubelet's pods by UID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodIndex {
    pods: HashMap<String, PodMeta>,
}

impl PodIndex {
    /// Parses a `/pods` answer (a v1 `PodList`). Pods without a UID are skipped, and container
    /// statuses without an id (not started yet) too.
    pub fn from_pod_list_json(body: &[u8]) -> Result<PodIndex, String> {
        let list: PodList = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        match list.kind.as_deref() {
            Some("PodList") | None => {}
            Some(other) => return Err(format!("kind is {other:?}, not \"PodList\"")),
        }
        if list.kind.is_none() && list.items.is_none() {
            return Err("neither kind nor items: not a PodList".to_owned());
        }
        let mut pods = HashMap::new();
        for pod in list.items.unwrap_or_default() {
            let Some(meta) = pod.metadata else { continue };
            let Some(uid) = meta.uid.filter(|u| !u.is_empty()) else {
                continue;
            };
            let status = pod.status;
            let qos = status
                .as_ref()
                .and_then(|s| s.qos_class.as_deref())
                .and_then(Qos::from_qos_class);
            let mut containers = Vec::new();
            if let Some(s) = status {
                for (statuses, kind) in [
                    (s.container_statuses, ContainerKind::Regular),
                    (s.init_container_statuses, ContainerKind::Init),
                    (s.ephemeral_container_statuses, ContainerKind::Ephemeral),
                ] {
                    for cs in statuses.unwrap_or_default() {
                        let Some((runtime, id)) = cs
                            .container_id
                            .as_deref()
                            .and_then(Runtime::split_container_id)
                        else {
                            continue;
                        };
                        containers.push(ContainerMeta {
                            name: cs.name.unwrap_or_default(),
                            id: id.to_owned(),
                            runtime,
                            kind,
                        });
                    }
                }
            }
            let pod = PodMeta {
                uid: uid.clone(),
                name: meta.name.unwrap_or_default(),
                namespace: meta.namespace.unwrap_or_default(),
                qos,
                containers,
            };
            pods.insert(uid, pod);
        }
        Ok(PodIndex { pods })
    }

    pub fn pod(&self, uid: &str) -> Option<&PodMeta> {
        self.pods.get(uid)
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    #[cfg(test)]
    pub fn pods(&self) -> impl Iterator<Item = &PodMeta> {
        self.pods.values()
    }
}

// ---------------------------------------------------------------------------------------------
// The shared snapshot.

/// The latest pod list and how fetching it goes, shared between the watcher thread and the
/// collector (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct PodMetadata {
    inner: Arc<RwLock<MetadataState>>,
}

#[derive(Clone, Debug, Default)]
pub struct MetadataState {
    /// The last good pod list (kept while the kubelet fails), `None` before the first.
    pub index: Option<Arc<PodIndex>>,
    /// Bumped whenever the pod list's content changes.
    pub generation: u64,
    /// Failed fetches since the last good one.
    pub consecutive_failures: u32,
    /// Failed fetches since the start, by cause ([`KubeletError::cause`]).
    pub failures_by_cause: std::collections::BTreeMap<&'static str, u64>,
    pub last_error: Option<String>,
    pub last_success: Option<Instant>,
    /// How long the watcher waits before its next fetch.
    pub next_fetch_in: Option<Duration>,
}

/// The kubelet side of the agent's own metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubeletStatus {
    /// Failed fetches since the start, by cause.
    pub failures: std::collections::BTreeMap<&'static str, u64>,
    /// Since the pod list in use was fetched; `None` before the first good fetch.
    pub pod_list_age: Option<Duration>,
}

/// What [`super::Resolver`] needs from [`PodMetadata`] on each lookup.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub index: Option<Arc<PodIndex>>,
}

impl PodMetadata {
    pub fn new() -> PodMetadata {
        PodMetadata::default()
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        Snapshot {
            generation: s.generation,
            index: s.index.clone(),
        }
    }

    pub fn state(&self) -> MetadataState {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publishes a pod list (the watcher does this; tests and other sources may too).
    pub fn publish(&self, index: PodIndex) {
        let mut s = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if s.index.as_deref() != Some(&index) {
            s.index = Some(Arc::new(index));
            s.generation += 1;
        }
        s.consecutive_failures = 0;
        s.last_error = None;
        s.last_success = Some(Instant::now());
    }

    /// The counters an operator watches: failures by cause and the pod list's age.
    pub fn status(&self) -> KubeletStatus {
        let s = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        KubeletStatus {
            failures: s.failures_by_cause.clone(),
            pod_list_age: s.last_success.map(|t| t.elapsed()),
        }
    }

    fn record_failure(&self, error: &KubeletError, retry_in: Duration) -> u32 {
        let mut s = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        s.consecutive_failures += 1;
        *s.failures_by_cause.entry(error.cause()).or_default() += 1;
        s.last_error = Some(error.to_string());
        s.next_fetch_in = Some(retry_in);
        s.consecutive_failures
    }

    fn set_next_fetch(&self, d: Duration) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .next_fetch_in = Some(d);
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration and the client.

/// How to reach the kubelet.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// The pod list's URL, `https://<node>:10250/pods` by default; `http://` works too (tests,
    /// the read-only port 10255).
    pub url: String,
    /// Bearer token file, read before every fetch (tokens are rotated); without it, or when it
    /// cannot be read, no `Authorization` header is sent.
    pub token_path: Option<PathBuf>,
    /// PEM bundle the kubelet's serving certificate must chain to (https only); `None`: the
    /// Mozilla roots (webpki-roots), which a kubelet's certificate will not chain to.
    pub ca_path: Option<PathBuf>,
    /// Accept any certificate: for kubelets with self-signed serving certificates (no
    /// `serverTLSBootstrap`), as metrics-server's `--kubelet-insecure-tls`.
    pub insecure_skip_tls_verify: bool,
    /// Between good fetches.
    pub refresh: Duration,
    /// For a whole request (connect, TLS, answer, body).
    pub timeout: Duration,
    /// First and longest wait after failures (doubling in between).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Largest answer accepted.
    pub max_body: u64,
}

impl KubeletConfig {
    /// The kubelet's authenticated port on `node` (a name or an address; `None`: 127.0.0.1),
    /// with the pod's service-account token and CA.
    ///
    /// The service-account files are where the kubelet mounts them *in this agent's own
    /// container*, not under the host root: they are not the host's files.
    pub fn in_cluster(node: Option<&str>) -> KubeletConfig {
        KubeletConfig::new(&default_url(node))
    }

    /// `url`, with the service-account token and CA (both optional at run time) and the
    /// default timings.
    pub fn new(url: &str) -> KubeletConfig {
        KubeletConfig {
            url: url.to_owned(),
            token_path: Some(PathBuf::from(SA_TOKEN_PATH)),
            ca_path: Some(PathBuf::from(SA_CA_PATH)),
            insecure_skip_tls_verify: false,
            refresh: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_body: 64 << 20,
        }
    }
}

/// `https://<node>:10250/pods` (`127.0.0.1` without a node; IPv6 addresses bracketed).
pub fn default_url(node: Option<&str>) -> String {
    let host = match node.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) if n.contains(':') && !n.starts_with('[') => format!("[{n}]"),
        Some(n) => n.to_owned(),
        None => "127.0.0.1".to_owned(),
    };
    format!("https://{host}:{KUBELET_PORT}/pods")
}

/// Why a `kubelet_url` setting names no pod list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeletUrlError {
    #[error("scheme {0:?} is not http or https")]
    Scheme(String),
    #[error("no host")]
    NoHost,
    #[error("{0:?} has no port: without a scheme, give host:port (e.g. node-a:10250)")]
    NoPort(String),
}

/// The pod list URL for a `kubelet_url` setting, as kubelet clients take the kubelet's
/// address:
/// - a URL with a path is used as is (`http://127.0.0.1:10255/pods`);
/// - a base URL (no path, or `/`) gets `/pods` (`http://127.0.0.1:18080` → `.../pods`);
/// - `host:port` without a scheme is https, as the Collector's kubeletstats receiver takes
///   its `endpoint` (`node-a:10250` → `https://node-a:10250/pods`; IPv6 as `[fd00::1]:10250`).
pub fn pod_list_url(given: &str) -> Result<String, KubeletUrlError> {
    let given = given.trim();
    let (scheme, rest, schemeless) = match given.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest, false),
        None => ("https".to_owned(), given, true),
    };
    if scheme != "http" && scheme != "https" {
        return Err(KubeletUrlError::Scheme(scheme));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(KubeletUrlError::NoHost);
    }
    if schemeless {
        // host:port, or [IPv6]:port; a bare IPv6 address is ambiguous.
        let port = match authority.strip_prefix('[') {
            Some(v6) => v6.split_once("]:").map(|(_, p)| p),
            None => authority
                .split_once(':')
                .filter(|(host, p)| !host.is_empty() && !p.contains(':'))
                .map(|(_, p)| p),
        };
        if !port.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
            return Err(KubeletUrlError::NoPort(authority.to_owned()));
        }
    }
    let path = match path {
        "" | "/" => "/pods",
        p => p,
    };
    Ok(format!("{scheme}://{authority}{path}"))
}

/// This node's name: `NODE_NAME` (the downward API's `spec.nodeName`), else the hostname.
pub fn node_name(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    env("NODE_NAME")
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
}

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("cannot read the CA bundle {}: {source}", path.display())]
    CaUnreadable { path: PathBuf, source: io::Error },
    #[error("the CA bundle {} holds no certificate", .0.display())]
    CaEmpty(PathBuf),
    #[error("GET {url}: {source}")]
    Request { url: String, source: ureq::Error },
    #[error("GET {url}: HTTP {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("GET {url}: not a pod list: {reason}")]
    Garbage { url: String, reason: String },
}

impl KubeletError {
    /// A short name for the kind of failure, for counting and for logging each kind once:
    /// the HTTP status (`"503"`), `timeout`, `connection` (refused, unreachable, DNS),
    /// `tls`, `ca` (the CA bundle), `invalid_response` (not a pod list, too large), `request`.
    pub fn cause(&self) -> &'static str {
        use ureq::Error as E;
        match self {
            KubeletError::CaUnreadable { .. } | KubeletError::CaEmpty(_) => "ca",
            KubeletError::Status { status, .. } => status_cause(*status),
            KubeletError::Garbage { .. } => "invalid_response",
            KubeletError::Request { source, .. } => match source {
                E::Timeout(_) => "timeout",
                E::Io(e) if e.kind() == io::ErrorKind::TimedOut => "timeout",
                E::Io(_) | E::ConnectionFailed | E::HostNotFound => "connection",
                E::Tls(_) | E::Rustls(_) | E::Pem(_) | E::TlsRequired => "tls",
                E::BodyExceedsLimit(_) | E::Protocol(_) | E::LargeResponseHeader(..) => {
                    "invalid_response"
                }
                _ => "request",
            },
        }
    }
}

/// `"404"` and so on for the statuses a kubelet or a proxy in front of it gives; `"http_other"`
/// for the rest (the set of names stays small).
fn status_cause(status: u16) -> &'static str {
    match status {
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "http_other",
    }
}

/// A blocking client of the kubelet's `/pods`.
pub struct KubeletClient {
    url: String,
    token_path: Option<PathBuf>,
    max_body: u64,
    agent: ureq::Agent,
}

impl KubeletClient {
    pub fn new(config: &KubeletConfig) -> Result<KubeletClient, KubeletError> {
        use ureq::tls::{PemItem, RootCerts, TlsConfig};
        let mut tls = TlsConfig::builder();
        if config.insecure_skip_tls_verify {
            tls = tls.disable_verification(true);
        } else if let Some(ca) = config
            .ca_path
            .as_deref()
            .filter(|_| config.url.starts_with("https://"))
        {
            let pem = std::fs::read(ca).map_err(|source| KubeletError::CaUnreadable {
                path: ca.to_owned(),
                source,
            })?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(KubeletError::CaEmpty(ca.to_owned()));
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            // Node-local: no proxy from the environment, and the token goes nowhere else.
            .proxy(None)
            .max_redirects(0)
            .user_agent(concat!("nodesat/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .new_agent();
        Ok(KubeletClient {
            url: config.url.clone(),
            token_path: config.token_path.clone(),
            max_body: config.max_body,
            agent,
        })
    }

    /// One `GET /pods`.
    pub fn fetch(&self) -> Result<PodIndex, KubeletError> {
        let token = self.token_path.as_deref().map(read_token);
        let mut req = self
            .agent
            .get(&self.url)
            .header("Accept", "application/json");
        if let Some(Ok(t)) = &token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = req.call().map_err(|source| KubeletError::Request {
            url: self.url.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        if status != 200 {
            let mut detail = String::new();
            if let Ok(body) = resp.body_mut().with_config().limit(4096).read_to_vec() {
                let text = String::from_utf8_lossy(&body);
                let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                if !text.is_empty() {
                    detail = format!(": {}", text.chars().take(200).collect::<String>());
                }
            }
            if let (401 | 403, Some(Err(e))) = (status, &token) {
                detail.push_str(&format!(" (no bearer token sent: {e})"));
            }
            return Err(KubeletError::Status {
                url: self.url.clone(),
                status,
                detail,
            });
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(self.max_body)
            .read_to_vec()
            .map_err(|source| KubeletError::Request {
                url: self.url.clone(),
                source,
            })?;
        PodIndex::from_pod_list_json(&body).map_err(|reason| KubeletError::Garbage {
            url: self.url.clone(),
            reason,
        })
    }
}

fn read_token(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => Err(format!("{} is empty", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

// ---------------------------------------------------------------------------------------------
// Polling.

/// Exponential backoff: `min`, doubling, capped at `max`; reset after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The wait after one more failure.
    pub fn failure(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Fetches and publishes the pod list, one attempt per [`KubeletPoller::poll_once`].
pub struct KubeletPoller {
    config: KubeletConfig,
    client: Option<KubeletClient>,
    metadata: PodMetadata,
    backoff: Backoff,
    log: FailureLog,
}

impl KubeletPoller {
    pub fn new(config: KubeletConfig, metadata: PodMetadata) -> KubeletPoller {
        let backoff = Backoff::new(config.backoff_min, config.backoff_max);
        KubeletPoller {
            config,
            client: None,
            metadata,
            backoff,
            log: FailureLog::new(FAILURE_SUMMARY_EVERY),
        }
    }

    /// One fetch; publishes the list or records the failure (logged). Returns how long to wait
    /// before the next: `refresh` after a success, the backoff after a failure.
    pub fn poll_once(&mut self) -> Duration {
        let result = match &self.client {
            Some(c) => c.fetch(),
            None => KubeletClient::new(&self.config).and_then(|c| {
                let r = c.fetch();
                self.client = Some(c);
                r
            }),
        };
        match result {
            Ok(index) => {
                let failures = self.metadata.state().consecutive_failures;
                let pods = index.len();
                self.metadata.publish(index);
                self.backoff.reset();
                if failures > 0 {
                    let summary = self
                        .log
                        .recovered()
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default();
                    tracing::info!(url = %self.config.url, pods, "kubelet pod list available again{summary}");
                } else {
                    tracing::debug!(url = %self.config.url, pods, "kubelet pod list");
                }
                self.metadata.set_next_fetch(self.config.refresh);
                self.config.refresh
            }
            Err(e) => {
                let retry_in = self.backoff.failure();
                let kept = self.metadata.snapshot().index.is_some();
                let failures = self.metadata.record_failure(&e, retry_in);
                let now = (Instant::now(), std::time::SystemTime::now());
                let first = self.log.failure(e.cause(), now.0, now.1) == Decision::Log;
                let keeping = if kept {
                    "keeping the last one"
                } else {
                    "pods and containers are named by their cgroup paths only"
                };
                if first {
                    tracing::warn!(
                        error = %e,
                        failures,
                        retry_in = ?retry_in,
                        "kubelet pod list unavailable; {keeping} (further failures of this \
                         kind are summarised every {})",
                        humantime::format_duration(self.log.every())
                    );
                } else {
                    tracing::debug!(error = %e, failures, retry_in = ?retry_in, "kubelet pod list unavailable; {keeping}");
                }
                if let Some(s) = self.log.summary_due(now.0) {
                    tracing::warn!("kubelet pod list still unavailable: {s}; {keeping}");
                }
                retry_in
            }
        }
    }
}

/// The polling thread. Dropping it stops the thread at its next wake-up (without waiting);
/// [`KubeletWatcher::stop`] also waits for it (at most one request's timeout).
pub struct KubeletWatcher {
    metadata: PodMetadata,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl KubeletWatcher {
    /// Starts polling at once on a thread named `nodesat-kubelet`.
    pub fn spawn(config: KubeletConfig) -> io::Result<KubeletWatcher> {
        let metadata = PodMetadata::new();
        let (stop, stopped) = mpsc::channel::<()>();
        let mut poller = KubeletPoller::new(config, metadata.clone());
        let thread = std::thread::Builder::new()
            .name("nodesat-kubelet".to_owned())
            .spawn(move || {
                loop {
                    let wait = poller.poll_once();
                    match stopped.recv_timeout(wait) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        // Stopped, or the watcher was dropped.
                        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            })?;
        Ok(KubeletWatcher {
            metadata,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The shared snapshot, for [`super::Resolver::new`].
    pub fn metadata(&self) -> PodMetadata {
        self.metadata.clone()
    }

    /// Stops the thread and waits for it.
    #[cfg(test)]
    pub fn stop(self) {
        self.stop_until(None);
    }

    /// Stops the thread and waits for it until `deadline` (a fetch in flight may take up to
    /// its timeout); past it, leaves it (the process is exiting). Whether it stopped.
    pub fn stop_until(mut self, deadline: Option<Instant>) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(t) = self.thread.take() else {
            return true;
        };
        if let Some(deadline) = deadline {
            // A thread between fetches stops at once: a moment for it even when the time is up.
            let deadline = deadline.max(Instant::now() + Duration::from_millis(50));
            while !t.is_finished() {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = t.join();
        true
    }
}

impl Drop for KubeletWatcher {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
#[path = "kubelet_tests.rs"]
mod tests;

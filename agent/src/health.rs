//! The agent's plain HTTP endpoints: `/healthz` and `/readyz` for Kubernetes probes
//! (`--health-listen`), and `/metrics` for Prometheus (`--prometheus-listen`). One server per
//! address; when both settings name the same address, it serves all three.
//!
//! - `/readyz`: 200 once the probes are attached and the first collection has run, 503 before.
//! - `/healthz`: 200 while collections keep happening (the last one is less than three
//!   intervals old, or none is due yet), 503 when the collection loop is stuck.
//! - `/metrics`: the latest collection in the Prometheus text format
//!   ([`crate::export::prometheus`]).
//!
//! Every path answers GET and HEAD (the same status and headers, no body); any other method
//! gets 405 with `Allow: GET, HEAD`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::export::prometheus::{self, Exposition};

/// What the endpoints report, updated by the collection loop.
pub struct Health {
    started: Instant,
    interval: Duration,
    ready: AtomicBool,
    /// ms since `started` of the last collection; 0 before the first.
    last_collection_ms: AtomicU64,
}

impl Health {
    pub fn new(interval: Duration) -> Arc<Health> {
        Arc::new(Health {
            started: Instant::now(),
            interval,
            ready: AtomicBool::new(false),
            last_collection_ms: AtomicU64::new(0),
        })
    }

    /// A collection ran (the first one makes the agent ready).
    pub fn collected(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_collection_ms.store(ms.max(1), Ordering::Relaxed);
        self.ready.store(true, Ordering::Relaxed);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn is_live(&self, now: Instant) -> bool {
        let since_start = now.duration_since(self.started);
        let last = Duration::from_millis(self.last_collection_ms.load(Ordering::Relaxed));
        let stale_after = self.interval * 3;
        since_start.saturating_sub(last) < stale_after
    }

    /// Status code and body for a request path.
    pub fn answer(&self, path: &str, now: Instant) -> (u16, &'static str) {
        match path {
            "/readyz" if self.is_ready() => (200, "ready\n"),
            "/readyz" => (503, "not ready: probes not attached or no collection yet\n"),
            "/healthz" if self.is_live(now) => (200, "ok\n"),
            "/healthz" => (503, "collection loop stalled\n"),
            _ => (404, "not found: try /healthz or /readyz\n"),
        }
    }
}

/// What one server answers.
#[derive(Clone, Default)]
pub struct Routes {
    pub health: Option<Arc<Health>>,
    pub metrics: Option<Exposition>,
}

/// An answer: status, content type, body.
pub struct Answer {
    pub code: u16,
    pub content_type: &'static str,
    pub body: Body,
}

pub enum Body {
    Static(&'static str),
    /// The metrics text, gzip'd when `gzip`.
    Metrics {
        rendered: Arc<prometheus::Rendered>,
        gzip: bool,
    },
}

impl Body {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Static(s) => s.as_bytes(),
            Body::Metrics {
                rendered,
                gzip: true,
            } => rendered.gzip(),
            Body::Metrics { rendered, .. } => rendered.as_str().as_bytes(),
        }
    }

    fn encoding(&self) -> Option<&'static str> {
        matches!(self, Body::Metrics { gzip: true, .. }).then_some("gzip")
    }
}

/// Whether a request head's `Accept-Encoding` lists gzip (as Prometheus sends it).
pub fn accepts_gzip(head: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept-encoding")
                && value
                    .split(',')
                    .any(|v| v.split(';').next().unwrap_or("").trim() == "gzip")
        })
    })
}

impl Routes {
    /// The answer for a request path (a query string is ignored); `gzip`: the client accepts
    /// a gzip'd body.
    pub fn answer(&self, path: &str, gzip: bool, now: Instant) -> Answer {
        let path = path.split('?').next().unwrap_or(path);
        let text = |code, body| Answer {
            code,
            content_type: "text/plain",
            body: Body::Static(body),
        };
        match (path, &self.health, &self.metrics) {
            ("/healthz" | "/readyz", Some(h), _) => {
                let (code, body) = h.answer(path, now);
                text(code, body)
            }
            ("/metrics", _, Some(m)) => Answer {
                code: 200,
                content_type: prometheus::CONTENT_TYPE,
                body: Body::Metrics {
                    rendered: m.current(),
                    gzip,
                },
            },
            (_, Some(_), Some(_)) => text(404, "not found: try /healthz, /readyz or /metrics\n"),
            (_, Some(_), None) => text(404, "not found: try /healthz or /readyz\n"),
            _ => text(404, "not found: try /metrics\n"),
        }
    }
}

/// The routes of every configured address: one entry per address, serving health, metrics or
/// both (when `health_listen` and `prometheus_listen` are the same).
pub fn routes(
    health_listen: Option<SocketAddr>,
    health: &Arc<Health>,
    prometheus_listen: Option<SocketAddr>,
    metrics: Option<Exposition>,
) -> Vec<(SocketAddr, Routes)> {
    let mut servers: Vec<(SocketAddr, Routes)> = Vec::new();
    if let Some(addr) = health_listen {
        let health = Some(health.clone());
        servers.push((
            addr,
            Routes {
                health,
                ..Default::default()
            },
        ));
    }
    if let (Some(addr), Some(m)) = (prometheus_listen, metrics) {
        match servers.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, same)) => same.metrics = Some(m),
            None => servers.push((
                addr,
                Routes {
                    metrics: Some(m),
                    ..Default::default()
                },
            )),
        }
    }
    servers
}

/// The methods every path answers; any other gets 405 with this `Allow` header.
pub const ALLOW: &str = "GET, HEAD";

const METHOD_NOT_ALLOWED: Answer = Answer {
    code: 405,
    content_type: "text/plain",
    body: Body::Static("method not allowed: only GET and HEAD\n"),
};

/// A request's method, as far as the answer depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    /// The GET answer's status and headers, no body.
    Head,
    /// Answered 405.
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110): `get` is not GET.
    pub fn of(word: &str) -> Method {
        match word {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            _ => Method::Other,
        }
    }
}

/// Longest request head read; anything longer is answered from what was read.
const MAX_HEAD: usize = 8192;

/// Serves the routes until the task is dropped. Each connection gets one answer, then is
/// closed.
pub async fn serve(listener: TcpListener, routes: Routes) {
    let routes = Arc::new(routes);
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let Ok(Some(head)) =
                tokio::time::timeout(Duration::from_secs(5), read_head(&mut conn)).await
            else {
                return;
            };
            let request = String::from_utf8_lossy(&head);
            let mut words = request.split_whitespace();
            let method = Method::of(words.next().unwrap_or(""));
            let path = words.next().unwrap_or("/");
            let answer = match method {
                Method::Get | Method::Head => {
                    routes.answer(path, accepts_gzip(&request), Instant::now())
                }
                Method::Other => METHOD_NOT_ALLOWED,
            };
            let reason = match answer.code {
                200 => "OK",
                404 => "Not Found",
                405 => "Method Not Allowed",
                _ => "Service Unavailable",
            };
            let body = answer.body.as_bytes();
            let encoding = answer
                .body
                .encoding()
                .map(|e| format!("content-encoding: {e}\r\n"))
                .unwrap_or_default();
            let allow = if answer.code == 405 {
                format!("allow: {ALLOW}\r\n")
            } else {
                String::new()
            };
            // HEAD: the GET answer's head (its content-length too), without the body.
            let body = if method == Method::Head {
                &[][..]
            } else {
                body
            };
            let head = format!(
                "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\n{encoding}{allow}content-length: {}\r\nconnection: close\r\n\r\n",
                answer.code,
                answer.content_type,
                answer.body.as_bytes().len()
            );
            let write = async {
                conn.write_all(head.as_bytes()).await?;
                conn.write_all(body).await?;
                conn.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(30), write).await;
        });
    }
}

/// Reads up to the end of the request head (all of it, so closing the connection after the
/// answer does not reset it); `None` when the client closed first.
async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 {
            return (!head.is_empty()).then_some(head);
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_the_first_collection_and_live_while_collecting() {
        let h = Health::new(Duration::from_secs(10));
        let t0 = h.started;
        assert_eq!(h.answer("/readyz", t0).0, 503);
        assert_eq!(
            h.answer("/healthz", t0).0,
            200,
            "live before the first collection is due"
        );
        h.collected();
        assert_eq!(h.answer("/readyz", t0).0, 200);
        assert_eq!(h.answer("/healthz", t0 + Duration::from_secs(25)).0, 200);
        assert_eq!(h.answer("/healthz", t0 + Duration::from_secs(31)).0, 503);
        assert_eq!(h.answer("/nope", t0).0, 404);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let h = Health::new(Duration::from_secs(10));
        h.collected();
        let server = tokio::spawn(serve(
            listener,
            Routes {
                health: Some(h),
                metrics: None,
            },
        ));
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.ends_with("ready\n"), "{out}");
        server.abort();
    }

    /// One request on a fresh connection; the whole answer.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(format!("{method} {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
        let (head, _) = answer.split_once("\r\n\r\n")?;
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn body(answer: &str) -> &str {
        answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_endpoint_answers_get_and_head_and_refuses_other_methods() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let h = Health::new(Duration::from_secs(10));
        h.collected();
        let prometheus =
            crate::export::prometheus::Prometheus::new(crate::export::otlp::ResourceInfo {
                service_name: "nodesat".into(),
                host_name: None,
                node_name: None,
                extra: Vec::new(),
            });
        let server = tokio::spawn(serve(
            listener,
            Routes {
                health: Some(h),
                metrics: Some(prometheus.exposition()),
            },
        ));
        for path in ["/healthz", "/readyz", "/metrics", "/nope"] {
            let get = request(addr, "GET", path).await;
            let code = if path == "/nope" { "404" } else { "200" };
            assert!(
                get.starts_with(&format!("HTTP/1.1 {code} ")),
                "GET {path}: {get}"
            );
            assert_eq!(header(&get, "allow"), None, "GET {path}: {get}");
            let length: usize = header(&get, "content-length").unwrap().parse().unwrap();
            assert_eq!(body(&get).len(), length, "GET {path}: {get}");

            // HEAD: the same status and headers, no body.
            let head = request(addr, "HEAD", path).await;
            assert!(
                head.starts_with(&format!("HTTP/1.1 {code} ")),
                "HEAD {path}: {head}"
            );
            assert_eq!(
                header(&head, "content-length"),
                header(&get, "content-length"),
                "HEAD {path}"
            );
            assert_eq!(header(&head, "content-type"), header(&get, "content-type"));
            assert_eq!(body(&head), "", "HEAD {path}: no body");

            for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "get"] {
                let a = request(addr, method, path).await;
                assert!(
                    a.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
                    "{method} {path}: {a}"
                );
                assert_eq!(header(&a, "allow"), Some("GET, HEAD"), "{method} {path}");
                assert!(
                    body(&a).contains("only GET and HEAD"),
                    "{method} {path}: {a}"
                );
            }
        }
        server.abort();
    }

    #[test]
    fn accept_encoding_gzip_is_recognised() {
        let head = |h: &str| format!("GET /metrics HTTP/1.1\r\nhost: x\r\n{h}\r\n\r\n");
        assert!(accepts_gzip(&head("Accept-Encoding: gzip")));
        assert!(accepts_gzip(&head("accept-encoding: deflate, gzip;q=0.9")));
        assert!(!accepts_gzip(&head("Accept-Encoding: identity")));
        assert!(!accepts_gzip(&head("X-Not-Accept-Encoding: br")));
        assert!(!accepts_gzip("GET /metrics HTTP/1.1\r\n\r\n"));
    }
}

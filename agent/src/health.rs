//! `/healthz` and `/readyz` over plain HTTP, for Kubernetes probes (`--health-listen`).
//!
//! - `/readyz`: 200 once the probes are attached and the first collection has run, 503 before.
//! - `/healthz`: 200 while collections keep happening (the last one is less than three
//!   intervals old, or none is due yet), 503 when the collection loop is stuck.

use std::{
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

/// Serves the endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (code, body) = health.answer(path, Instant::now());
            let reason = match code {
                200 => "OK",
                404 => "Not Found",
                _ => "Service Unavailable",
            };
            let response = format!(
                "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
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
        let server = tokio::spawn(serve(listener, h));
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
}

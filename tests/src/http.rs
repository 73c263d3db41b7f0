//! A tiny HTTP/1.1 server on `127.0.0.1` that answers one path with a fixed
//! body, e.g. a fake kubelet's `GET /pods`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Longest a client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_HEAD: usize = 64 * 1024;

/// Serves `GET <path>` (any query string) with `200`, a fixed body and
/// content type, and anything else with `404` (`405` for other methods), one
/// connection at a time, each closed after its answer, on a thread of its
/// own until dropped.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    path: String,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Starts serving `body` as `content_type` at `path` (e.g. `"/pods"`) on
    /// a free port of `127.0.0.1`.
    pub fn serve(path: &str, content_type: &str, body: Vec<u8>) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let answer = Answer {
            path: path.to_owned(),
            content_type: content_type.to_owned(),
            body,
        };
        let thread = thread::Builder::new().name("http-server".into()).spawn({
            let stop = Arc::clone(&stop);
            let served = Arc::clone(&served);
            move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    match answer.handle(conn) {
                        Ok(true) => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(false) => {}
                        Err(e) => eprintln!("nodesat-tests: http server on {addr}: {e}"),
                    }
                }
            }
        })?;
        Ok(Self {
            addr,
            path: path.to_owned(),
            stop,
            served,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }

    /// How many requests it answered with the body so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept; the thread sees the flag and ends.
        let _ = TcpStream::connect_timeout(&self.addr, CLIENT_TIMEOUT);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the server answers.
struct Answer {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    /// Answers one request on `conn`; `Ok(true)` if it got the body.
    fn handle(&self, mut conn: TcpStream) -> io::Result<bool> {
        conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        conn.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return Ok(false); // closed before a whole request
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_HEAD {
                return Err(io::Error::other("request head too large"));
            }
        }
        let head = String::from_utf8_lossy(&head);
        let mut request_line = head.lines().next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default();
        let target = request_line.next().unwrap_or_default();
        let target = target.split('?').next().unwrap_or_default();
        let (status, content_type, body): (&str, &str, &[u8]) = if target != self.path {
            ("404 Not Found", "text/plain", b"not found\n")
        } else if method != "GET" {
            ("405 Method Not Allowed", "text/plain", b"only GET\n")
        } else {
            ("200 OK", &self.content_type, &self.body)
        };
        let header = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(header.as_bytes())?;
        conn.write_all(body)?;
        conn.flush()?;
        let _ = conn.shutdown(Shutdown::Write);
        Ok(status.starts_with("200"))
    }
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` (HTTP/1.0: the body ends when the connection closes); status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// One canned answer of a [`ScriptedServer`].
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
        }
    }
}

#[derive(Debug, Default)]
struct Script {
    replies: Vec<Reply>,
    /// Requests answered so far, by status.
    answered: std::collections::BTreeMap<u16, u64>,
    last_answer: Option<std::time::Instant>,
    /// Everything received, on every connection (HTTP/2 too: kept, never answered).
    received: Vec<u8>,
    /// The bodies of the HTTP/1.1 requests answered, in order.
    bodies: Vec<Vec<u8>>,
}

/// An HTTP/1.1 server on `127.0.0.1` for a client under test (the agent's OTLP exporter,
/// its kubelet client): the n-th request, whatever its path, gets the n-th reply of a script
/// (the last one repeated), on keep-alive connections. It counts what it answered by status,
/// so a test can compare the client's own counters with what really happened, and keeps the
/// raw bytes received and each request's body. Bytes that are not HTTP/1.1 (a gRPC client's
/// HTTP/2) are kept and never answered. Dropping it closes the port and every connection (a
/// peer that went down); [`ScriptedServer::start_on`] brings one back on the same port.
#[derive(Debug)]
pub struct ScriptedServer {
    addr: SocketAddr,
    script: Arc<std::sync::Mutex<Script>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ScriptedServer {
    /// Starts answering with `replies` (at least one) in order, the last one repeated.
    pub fn start(replies: Vec<Reply>) -> io::Result<ScriptedServer> {
        Self::start_on(0, replies)
    }

    /// Like [`ScriptedServer::start`], on `port` of 127.0.0.1 (0: any free one).
    pub fn start_on(port: u16, replies: Vec<Reply>) -> io::Result<ScriptedServer> {
        assert!(!replies.is_empty(), "a script needs a reply");
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let script = Arc::new(std::sync::Mutex::new(Script {
            replies,
            ..Script::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopping) = (Arc::clone(&script), Arc::clone(&stop));
        let thread = thread::Builder::new()
            .name("scripted-http".into())
            .spawn(move || {
                let mut connections = Vec::new();
                for conn in listener.incoming().flatten() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let (script, stop) = (Arc::clone(&shared), Arc::clone(&stopping));
                    connections.push(thread::spawn(move || {
                        scripted_connection(conn, &script, &stop)
                    }));
                }
                drop(listener);
                for c in connections {
                    let _ = c.join();
                }
            })?;
        Ok(ScriptedServer {
            addr,
            script,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests answered with `status` so far.
    pub fn answered(&self, status: u16) -> u64 {
        self.lock().answered.get(&status).copied().unwrap_or(0)
    }

    /// All requests answered so far.
    pub fn answered_total(&self) -> u64 {
        self.lock().answered.values().sum()
    }

    /// Time since the last answer; `None` before the first.
    pub fn since_last_answer(&self) -> Option<Duration> {
        self.lock().last_answer.map(|t| t.elapsed())
    }

    /// Everything received so far, lossily as text.
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.lock().received).into_owned()
    }

    /// The bodies of the requests answered so far, in order.
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.lock().bodies.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept; the thread sees the flag, closes the port and its connections.
        let _ = TcpStream::connect_timeout(&self.addr, CLIENT_TIMEOUT);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves one connection of a [`ScriptedServer`] until the client closes it or the server
/// stops (checked at least every 200 ms).
fn scripted_connection(mut conn: TcpStream, script: &std::sync::Mutex<Script>, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        let n = match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return,
        };
        let mut s = script.lock().unwrap_or_else(|e| e.into_inner());
        s.received.extend_from_slice(&buf[..n]);
        drop(s);
        pending.extend_from_slice(&buf[..n]);
        if pending.starts_with(b"PRI * HTTP/2.0") {
            continue; // gRPC: recorded only
        }
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if pending.len() < end + 4 + length {
                break; // the body is still coming
            }
            let body = pending[end + 4..end + 4 + length].to_vec();
            pending.drain(..end + 4 + length);
            let reply = {
                let mut s = script.lock().unwrap_or_else(|e| e.into_inner());
                let n = s.answered.values().sum::<u64>() as usize;
                let reply = s.replies[n.min(s.replies.len() - 1)].clone();
                *s.answered.entry(reply.status).or_default() += 1;
                s.last_answer = Some(std::time::Instant::now());
                s.bodies.push(body);
                reply
            };
            let head = format!(
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
                reply.status,
                if reply.status == 200 {
                    "OK"
                } else {
                    "Scripted"
                },
                reply.content_type,
                reply.body.len()
            );
            if conn.write_all(head.as_bytes()).is_err() || conn.write_all(&reply.body).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn scripted_server_answers_in_order_and_counts() {
        let server = ScriptedServer::start(vec![
            Reply::new(400, "text/plain", "no"),
            Reply::new(200, "application/json", "{}"),
        ])
        .unwrap();
        let mut conn = TcpStream::connect(server.addr()).unwrap();
        conn.write_all(b"POST /v1/metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap();
        conn.write_all(b"GET /pods HTTP/1.1\r\n\r\nGET /pods HTTP/1.1\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while got.windows(2).filter(|w| w == b"{}").count() < 2 {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
        assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 2, "{got}");
        assert_eq!((server.answered(400), server.answered(200)), (1, 2));
        assert!(server.received().contains("abc"));
        assert!(server.since_last_answer().is_some());
        assert_eq!(server.bodies(), [b"abc".to_vec(), Vec::new(), Vec::new()]);
        // Dropped: the port is closed, and a new server can take it again.
        let port = server.addr().port();
        drop(server);
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port still open"
        );
        let again = ScriptedServer::start_on(port, vec![Reply::new(200, "text/plain", "")]);
        assert_eq!(again.unwrap().addr().port(), port);
    }

    #[test]
    fn serves_its_path_and_nothing_else() {
        let server = HttpServer::serve("/pods", "application/json", b"{\"items\":[]}".to_vec())
            .expect("start server");
        assert!(server.url().starts_with("http://127.0.0.1:"));
        assert!(server.url().ends_with("/pods"));
        let ok = get(
            server.addr(),
            "GET /pods?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/json\r\n\r\n",
        );
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: application/json\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 12\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\n{\"items\":[]}"), "{ok}");
        let missing = get(server.addr(), "GET /other HTTP/1.1\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let post = get(server.addr(), "POST /pods HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert_eq!(server.served(), 1);
    }
}

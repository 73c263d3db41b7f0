//! The kubelet client against tiny servers on 127.0.0.1 (plain HTTP and HTTPS with a test CA).

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::*;
use crate::identity::{
    Kind, Resolver,
    tests::{fixture, fixture_dir},
};

/// An HTTP answer.
fn response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn pods_ok() -> Vec<u8> {
    response(
        "200 OK",
        "application/json",
        fixture("kubelet-pods-node-a-containerd.json").as_bytes(),
    )
}

/// Reads one request's head (up to the blank line).
fn read_head(stream: impl Read) -> io::Result<String> {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            return Ok(head);
        }
        head.push_str(&line);
    }
}

/// Serves `answers`, one connection each, then returns the request heads it got.
fn serve(answers: Vec<Vec<u8>>) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/pods", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut heads = Vec::new();
        for answer in answers {
            let (mut stream, _) = listener.accept().unwrap();
            heads.push(read_head(&mut stream).unwrap_or_default());
            let _ = stream.write_all(&answer);
        }
        heads
    });
    (url, handle)
}

fn config(url: &str) -> KubeletConfig {
    KubeletConfig {
        token_path: None,
        ca_path: None,
        timeout: Duration::from_secs(5),
        ..KubeletConfig::new(url)
    }
}

/// A writer for a test subscriber, to look at what was logged.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Runs `f` with this thread's logs going here.
    fn capture<R>(&self, f: impl FnOnce() -> R) -> R {
        let me = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || me.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::with_default(subscriber, f)
    }
}

#[test]
fn identity_kubelet_http_metadata_lands_on_the_right_cgroup() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.test-token\n").unwrap();
    let (url, server) = serve(vec![pods_ok()]);
    let metadata = PodMetadata::new();
    let mut poller = KubeletPoller::new(
        KubeletConfig {
            token_path: Some(token),
            ..config(&url)
        },
        metadata.clone(),
    );
    assert_eq!(poller.poll_once(), Duration::from_secs(10), "the refresh");
    let heads = server.join().unwrap();
    assert!(
        heads[0].starts_with("GET /pods HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    let lower = heads[0].to_ascii_lowercase();
    assert!(lower.contains("authorization: bearer eyjhbgcioijsuzi1nij9.test-token\r\n"));
    assert!(lower.contains("accept: application/json\r\n"));

    let state = metadata.state();
    assert_eq!(state.index.as_ref().map(|i| i.len()), Some(7));
    assert_eq!((state.generation, state.consecutive_failures), (1, 0));

    // The nginx container of shop/web-7d9c8b6f5-qx2lm, as the tree fixture has it.
    let path = fixture("proc/systemd-v2-containerd.cgroup");
    let path = path.trim().strip_prefix("0::").unwrap();
    let mut resolver = Resolver::new(Some(metadata));
    let id = resolver.resolve(12345, path);
    assert_eq!(id.kind, Kind::PodContainer);
    assert_eq!(id.namespace.as_deref(), Some("shop"));
    assert_eq!(id.pod.as_deref(), Some("web-7d9c8b6f5-qx2lm"));
    assert_eq!(id.container.as_deref(), Some("nginx"));
}

#[test]
fn identity_kubelet_garbage_and_errors_back_off_then_recover() {
    let (url, server) = serve(vec![
        response(
            "500 Internal Server Error",
            "text/plain",
            b"internal error\n",
        ),
        response("200 OK", "application/json", b"<html>not json</html>"),
        response(
            "200 OK",
            "application/json",
            br#"{"kind":"Status","apiVersion":"v1","status":"Failure"}"#,
        ),
        response("401 Unauthorized", "text/plain", b"Unauthorized"),
        pods_ok(),
    ]);
    let metadata = PodMetadata::new();
    let dir = tempfile::tempdir().unwrap();
    let mut poller = KubeletPoller::new(
        KubeletConfig {
            // Missing: no header, and the 401 says why.
            token_path: Some(dir.path().join("no-token")),
            ..config(&url)
        },
        metadata.clone(),
    );
    let logs = Logs::default();
    let s = Duration::from_secs;
    for (n, (wait, error)) in [
        (s(1), "HTTP 500: internal error"),
        (s(2), "not a pod list"),
        (s(4), "not \"PodList\""),
        (
            s(8),
            "HTTP 401: Unauthorized (no bearer token sent: cannot read",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(logs.capture(|| poller.poll_once()), wait);
        let state = metadata.state();
        assert_eq!(state.consecutive_failures, n as u32 + 1);
        let last = state.last_error.unwrap();
        assert!(last.contains(error), "{last}");
        assert!(state.index.is_none());
        assert_eq!(state.next_fetch_in, Some(wait));
    }
    // Logged once per cause (500, invalid_response twice, 401); all counted by cause.
    let text = logs.text();
    assert_eq!(text.matches("WARN").count(), 3, "{text}");
    assert_eq!(
        metadata.status().failures,
        [("401", 1), ("500", 1), ("invalid_response", 2)].into()
    );
    assert!(text.contains("kubelet pod list unavailable"), "{text}");
    assert!(text.contains("named by their cgroup paths only"), "{text}");
    assert!(text.contains("HTTP 500"), "{text}");

    // Back: the list, the refresh interval, and the backoff starts over.
    assert_eq!(logs.capture(|| poller.poll_once()), s(10));
    let state = metadata.state();
    assert_eq!((state.consecutive_failures, state.last_error), (0, None));
    assert_eq!(state.index.map(|i| i.len()), Some(7));
    let text = logs.text();
    assert!(
        text.contains("kubelet pod list available again (4 failure(s) since"),
        "{text}"
    );
    assert!(text.contains("invalid_response ×1"), "{text}");
    assert!(metadata.status().pod_list_age.unwrap() < Duration::from_secs(5));
    let heads = server.join().unwrap();
    assert!(!heads[3].to_ascii_lowercase().contains("authorization"));
    assert_eq!(poller.backoff.failure(), s(1));
}

#[test]
fn identity_kubelet_down_backs_off_and_keeps_the_last_list() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let metadata = PodMetadata::new();
    let mut poller = KubeletPoller::new(
        KubeletConfig {
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(3),
            ..config(&format!("http://127.0.0.1:{port}/pods"))
        },
        metadata.clone(),
    );
    let logs = Logs::default();
    let waits: Vec<Duration> = (0..5)
        .map(|_| logs.capture(|| poller.poll_once()))
        .collect();
    let ms = Duration::from_millis;
    assert_eq!(waits, [ms(500), ms(1000), ms(2000), ms(3000), ms(3000)]);
    let state = metadata.state();
    assert_eq!(state.consecutive_failures, 5);
    assert!(
        state
            .last_error
            .unwrap()
            .contains(&format!("127.0.0.1:{port}"))
    );
    // One warning for the cause, five counted.
    assert_eq!(logs.text().matches("WARN").count(), 1);
    assert_eq!(metadata.status().failures, [("connection", 5)].into());
    assert_eq!(metadata.status().pod_list_age, None);

    // With a list from before, it is kept while the kubelet is down.
    metadata.publish(
        PodIndex::from_pod_list_json(fixture("kubelet-pods-node-a-containerd.json").as_bytes())
            .unwrap(),
    );
    logs.capture(|| poller.poll_once());
    assert!(logs.text().contains("keeping the last one"));
    assert_eq!(metadata.state().index.map(|i| i.len()), Some(7));
}

#[test]
fn identity_kubelet_backoff_doubles_and_caps() {
    let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let waits: Vec<u64> = (0..9).map(|_| b.failure().as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    b.reset();
    assert_eq!(b.failure().as_secs(), 1);
}

#[test]
fn identity_kubelet_pod_list_parsing_edge_cases() {
    let ok = |s: &str| PodIndex::from_pod_list_json(s.as_bytes()).map(|i| i.len());
    assert_eq!(
        ok(r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":null}"#),
        Ok(0)
    );
    assert_eq!(ok(r#"{"kind":"PodList","items":[]}"#), Ok(0));
    assert_eq!(ok(r#"{"items":[]}"#), Ok(0));
    // Pods without metadata or UID are skipped; statuses may be null or absent.
    assert_eq!(
        ok(
            r#"{"kind":"PodList","items":[{},{"metadata":{"name":"x"}},{"metadata":{"uid":"u1"},"status":null},{"metadata":{"uid":"u2"},"status":{"containerStatuses":null,"qosClass":"Weird"}}]}"#
        ),
        Ok(2)
    );
    assert!(ok("{}").is_err());
    assert!(ok("[]").is_err());
    assert!(ok("").is_err());
    assert!(ok(r#"{"kind":"Status"}"#).is_err());
    assert!(ok(r#"{"kind":"PodList","items":{}}"#).is_err());
    let idx = PodIndex::from_pod_list_json(
        br#"{"kind":"PodList","items":[{"metadata":{"uid":"u","name":"p","namespace":"n"},"status":{"containerStatuses":[{"name":"a","containerID":"containerd://abc"},{"name":"b"},{"name":"c","containerID":""},{"name":"d","containerID":"cri-o://def"}]}}]}"#,
    )
    .unwrap();
    let pod = idx.pod("u").unwrap();
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "d"]);
    assert_eq!(pod.container("def").unwrap().runtime, Some(Runtime::CriO));
    assert_eq!(pod.qos, None);
}

#[test]
fn identity_kubelet_urls_and_node_name() {
    assert_eq!(default_url(Some("node-a")), "https://node-a:10250/pods");
    assert_eq!(default_url(None), "https://127.0.0.1:10250/pods");
    assert_eq!(default_url(Some(" ")), "https://127.0.0.1:10250/pods");
    assert_eq!(default_url(Some("fd00::1")), "https://[fd00::1]:10250/pods");
    let env = |v: Option<&'static str>| {
        move |k: &str| (k == "NODE_NAME").then_some(v).flatten().map(str::to_owned)
    };
    assert_eq!(node_name(env(Some("node-a\n"))).as_deref(), Some("node-a"));
    // Without NODE_NAME: the hostname.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    assert_eq!(
        node_name(env(None)),
        host.map(|h| h.trim().to_owned()).filter(|h| !h.is_empty())
    );
    let c = KubeletConfig::in_cluster(Some("node-a"));
    assert_eq!(c.url, "https://node-a:10250/pods");
    assert_eq!(c.token_path.as_deref(), Some(Path::new(SA_TOKEN_PATH)));
    assert_eq!(c.ca_path.as_deref(), Some(Path::new(SA_CA_PATH)));
}

#[test]
fn identity_kubelet_watcher_thread_publishes_and_stops() {
    let (url, server) = serve(vec![pods_ok()]);
    let watcher = KubeletWatcher::spawn(KubeletConfig {
        refresh: Duration::from_secs(3600),
        ..config(&url)
    })
    .unwrap();
    let metadata = watcher.metadata();
    let start = Instant::now();
    while metadata.snapshot().index.is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "no pod list");
        std::thread::sleep(Duration::from_millis(10));
    }
    let stopping = Instant::now();
    watcher.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "stop waits for the next fetch"
    );
    assert_eq!(server.join().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// HTTPS with a custom CA (tests/fixtures/identity/tls: a test CA and a server certificate for
// 127.0.0.1; another, unrelated CA).

fn tls_file(name: &str) -> PathBuf {
    fixture_dir().join("tls").join(name)
}

/// Serves `connections` HTTPS connections with the test server certificate; a failed handshake
/// counts as one.
fn serve_tls(connections: usize) -> (String, JoinHandle<Vec<String>>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(tls_file("server.crt"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(tls_file("server.key")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/pods", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut heads = Vec::new();
        for _ in 0..connections {
            let (tcp, _): (TcpStream, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            match read_head(&mut tls) {
                Ok(head) if !head.is_empty() => {
                    let _ = tls.write_all(&pods_ok());
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                    heads.push(head);
                }
                _ => heads.push(String::new()),
            }
        }
        heads
    });
    (url, handle)
}

#[test]
fn identity_kubelet_https_with_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "sa-token").unwrap();
    let (url, server) = serve_tls(3);
    let https = |ca: &str, insecure: bool| KubeletConfig {
        token_path: Some(token.clone()),
        ca_path: Some(tls_file(ca)),
        insecure_skip_tls_verify: insecure,
        ..config(&url)
    };

    // The right CA: the list, with the token sent over TLS.
    let index = KubeletClient::new(&https("ca.crt", false))
        .unwrap()
        .fetch()
        .unwrap();
    assert_eq!(index.len(), 7);
    // Another CA: refused, and said so.
    let err = KubeletClient::new(&https("other-ca.crt", false))
        .unwrap()
        .fetch()
        .unwrap_err();
    assert!(matches!(err, KubeletError::Request { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // Verification off (self-signed kubelet serving certificates).
    let index = KubeletClient::new(&https("other-ca.crt", true))
        .unwrap()
        .fetch()
        .unwrap();
    assert_eq!(index.len(), 7);

    let heads = server.join().unwrap();
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("authorization: bearer sa-token\r\n")
    );
    assert_eq!(heads[1], "", "no request after a refused handshake");
}

#[test]
fn identity_kubelet_unreadable_ca_is_a_failed_attempt() {
    let metadata = PodMetadata::new();
    let mut poller = KubeletPoller::new(
        KubeletConfig {
            ca_path: Some(PathBuf::from("/nonexistent/ca.crt")),
            ..config("https://127.0.0.1:1/pods")
        },
        metadata.clone(),
    );
    assert_eq!(poller.poll_once(), Duration::from_secs(1));
    let err = metadata.state().last_error.unwrap();
    assert!(
        err.contains("cannot read the CA bundle /nonexistent/ca.crt"),
        "{err}"
    );
    // A file that holds no certificate.
    let err = KubeletClient::new(&KubeletConfig {
        ca_path: Some(tls_file("server.key")),
        ..config("https://127.0.0.1:1/pods")
    })
    .err()
    .unwrap();
    assert!(matches!(err, KubeletError::CaEmpty(_)), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The kubelet named by its address (issue 16): a base URL gets /pods, host:port is https.

#[test]
fn identity_kubelet_url_forms() {
    let ok = |s: &str| pod_list_url(s).unwrap();
    assert_eq!(ok("http://127.0.0.1:18080"), "http://127.0.0.1:18080/pods");
    assert_eq!(ok("http://127.0.0.1:18080/"), "http://127.0.0.1:18080/pods");
    assert_eq!(ok("https://node-a:10250/pods"), "https://node-a:10250/pods");
    assert_eq!(
        ok("http://127.0.0.1:10255/custom/pods?x=1"),
        "http://127.0.0.1:10255/custom/pods?x=1"
    );
    assert_eq!(ok("node-a:10250"), "https://node-a:10250/pods");
    assert_eq!(ok(" 10.0.0.7:10250/ "), "https://10.0.0.7:10250/pods");
    assert_eq!(ok("[fd00::1]:10250"), "https://[fd00::1]:10250/pods");
    assert_eq!(ok("HTTPS://node-a:10250"), "https://node-a:10250/pods");
    assert_eq!(
        pod_list_url("ftp://node-a/pods"),
        Err(KubeletUrlError::Scheme("ftp".into()))
    );
    assert_eq!(pod_list_url("http:///pods"), Err(KubeletUrlError::NoHost));
    for no_port in [
        "node-a",
        "node-a:",
        "fd00::1",
        ":10250",
        "[fd00::1]",
        "node-a:https",
    ] {
        assert!(
            matches!(pod_list_url(no_port), Err(KubeletUrlError::NoPort(_))),
            "{no_port}: {:?}",
            pod_list_url(no_port)
        );
    }
}

/// Every pod of the fixture, by UID, with its name and namespace.
fn every_pod_named(index: &PodIndex) {
    let expected =
        PodIndex::from_pod_list_json(fixture("kubelet-pods-node-a-containerd.json").as_bytes())
            .unwrap();
    assert_eq!(index.len(), expected.len());
    for pod in expected.pods() {
        let got = index
            .pod(&pod.uid)
            .unwrap_or_else(|| panic!("{} missing", pod.uid));
        assert!(!got.name.is_empty() && !got.namespace.is_empty(), "{got:?}");
        assert_eq!(got, pod);
    }
}

#[test]
fn identity_kubelet_base_url_names_every_pod() {
    let (url, server) = serve(vec![pods_ok(), pods_ok()]);
    let base = url.strip_suffix("/pods").unwrap().to_owned();
    for given in [base.clone(), format!("{base}/")] {
        let used = pod_list_url(&given).unwrap();
        assert_eq!(used, url, "{given}");
        let metadata = PodMetadata::new();
        let mut poller = KubeletPoller::new(config(&used), metadata.clone());
        assert_eq!(poller.poll_once(), Duration::from_secs(10), "{given}");
        every_pod_named(metadata.state().index.as_deref().unwrap());
    }
    for head in server.join().unwrap() {
        assert!(head.starts_with("GET /pods HTTP/1.1\r\n"), "{head}");
    }
}

#[test]
fn identity_kubelet_host_port_is_https_and_names_every_pod() {
    let (url, server) = serve_tls(1);
    let host_port = url
        .strip_prefix("https://")
        .and_then(|u| u.strip_suffix("/pods"))
        .unwrap();
    let used = pod_list_url(host_port).unwrap();
    assert_eq!(used, url);
    let metadata = PodMetadata::new();
    let mut poller = KubeletPoller::new(
        KubeletConfig {
            ca_path: Some(tls_file("ca.crt")),
            ..config(&used)
        },
        metadata.clone(),
    );
    assert_eq!(poller.poll_once(), Duration::from_secs(10));
    every_pod_named(metadata.state().index.as_deref().unwrap());
    let heads = server.join().unwrap();
    assert!(
        heads[0].starts_with("GET /pods HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
}

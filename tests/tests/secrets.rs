//! No log level prints a secret (issue 16): the agent runs at `--log-level trace` with known
//! secrets in its OTLP headers, its kubelet bearer token and its TLS client key, talks to
//! receivers that prove each secret was used, and nothing it writes to stdout or stderr may
//! contain one. Runs over OTLP http/protobuf, gRPC and https with a client certificate.
//!
//! The bearer token is read from the service-account path
//! (`/var/run/secrets/kubernetes.io/serviceaccount/token`), so the agent runs in a private
//! mount namespace (`unshare --mount`) with a tmpfs on `/run` holding the token: nothing on
//! the host changes.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use nodesat_tests::{
    Reply, ScriptedServer, agent_bin, clear_agent_env, skip, skip_if_unprivileged,
};

const TOKEN: &str = "nodesat-secret-token-7f3a9c0e";
const AUTHORIZATION: &str = "Bearer nodesat-secret-auth-51d2e8aa";
const API_KEY: &str = "nodesat-secret-apikey-c04b61f2";
/// How long each agent runs before SIGTERM: long enough for a kubelet fetch and 2 exports.
const RUN_FOR: Duration = Duration::from_secs(4);

fn kubelet_reply() -> Reply {
    Reply::new(200, "application/json", "{\"items\":[]}")
}

fn otlp_reply() -> Reply {
    Reply::new(200, "application/x-protobuf", Vec::new())
}

/// `openssl` makes a self-signed server certificate for 127.0.0.1 and a client certificate
/// and key; `None` without openssl.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn create() -> Option<Pki> {
        let dir = tempfile::tempdir().unwrap();
        for (name, san) in [("server", "IP:127.0.0.1"), ("client", "DNS:nodesat-client")] {
            let status = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
                .args(["-subj", &format!("/CN={name}")])
                .args(["-addext", &format!("subjectAltName={san}")])
                .arg("-keyout")
                .arg(dir.path().join(format!("{name}.key")))
                .arg("-out")
                .arg(dir.path().join(format!("{name}.pem")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?;
            if !status.success() {
                return None;
            }
        }
        Some(Pki { dir })
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The base64 lines of the client's private key: none may appear in the agent's output.
    fn client_key_lines(&self) -> Vec<String> {
        fs::read_to_string(self.path("client.key"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_owned)
            .collect()
    }
}

/// A TLS server (`openssl s_server`) with the server certificate, asking for a client
/// certificate, killed on drop.
struct TlsServer {
    child: std::process::Child,
    port: u16,
}

impl TlsServer {
    fn start(pki: &Pki) -> TlsServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(pki.path("server.pem"))
            .arg("-key")
            .arg(pki.path("server.key"))
            .args(["-verify", "1", "-www", "-quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not listen");
            thread::sleep(Duration::from_millis(50));
        }
        TlsServer { child, port }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the agent at trace level for [`RUN_FOR`] with the token mounted and `args`, then
/// SIGTERM; returns what it wrote to stdout and stderr.
fn run_agent(args: &[String]) -> String {
    let out = tempfile::tempdir().unwrap();
    let script = format!(
        "set -e; mount -t tmpfs -o mode=0755 nodesat-test /run; \
         mkdir -p /run/secrets/kubernetes.io/serviceaccount; \
         printf '%s\\n' '{TOKEN}' > /run/secrets/kubernetes.io/serviceaccount/token; \
         exec \"$0\" \"$@\""
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(agent_bin())
        .args(["run", "--output", "json", "--interval", "1s"])
        .args(["--log-level", "trace"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(out.path().join("stdout")).unwrap())
        .stderr(fs::File::create(out.path().join("stderr")).unwrap());
    clear_agent_env(&mut cmd);
    let mut child = cmd.spawn().expect("start the agent under unshare");
    thread::sleep(RUN_FOR);
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        thread::sleep(Duration::from_millis(20));
    };
    let read = |f: &str| fs::read_to_string(out.path().join(f)).unwrap_or_default();
    let (stdout, stderr) = (read("stdout"), read("stderr"));
    eprintln!(
        "agent {args:?}: {status}; {} bytes of stdout, {} of stderr ({} lines)",
        stdout.len(),
        stderr.len(),
        stderr.lines().count()
    );
    // Exit 0 after SIGTERM: it started with every setting (the key loaded) and ran.
    assert!(status.success(), "agent {args:?}: {status}\n{stderr}");
    assert!(
        stderr.lines().count() > 20,
        "a trace-level run logs plenty; got:\n{stderr}"
    );
    stdout + &stderr
}

/// The secrets (by name) found in `output`, with the line they were on.
fn leaks(output: &str, secrets: &[(&str, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, secret) in secrets {
        if let Some(line) = output.lines().find(|l| l.contains(secret.as_str())) {
            found.push(format!("{name} in: {line}"));
        }
    }
    found
}

fn headers_arg() -> String {
    format!("authorization={AUTHORIZATION},x-api-key={API_KEY}")
}

#[test]
fn trace_level_prints_no_secret() {
    const TEST: &str = "trace_level_prints_no_secret";
    if skip_if_unprivileged(TEST) {
        return;
    }
    let Some(pki) = Pki::create() else {
        skip(TEST, "openssl could not make test certificates");
        return;
    };
    let mut secrets: Vec<(&str, String)> = vec![
        ("the kubelet bearer token", TOKEN.to_owned()),
        ("the authorization header value", AUTHORIZATION.to_owned()),
        ("the authorization secret", AUTHORIZATION[7..].to_owned()),
        ("the x-api-key header value", API_KEY.to_owned()),
    ];
    for line in pki.client_key_lines() {
        secrets.push(("a line of the TLS client key", line));
    }
    let kubelet = ScriptedServer::start(vec![kubelet_reply()]).unwrap();
    let kubelet_url = kubelet.url("/pods");
    let mut failures = Vec::new();

    // OTLP over http/protobuf and gRPC (plain), then https with a client certificate.
    for protocol in ["http/protobuf", "grpc"] {
        let collector = ScriptedServer::start(vec![otlp_reply()]).unwrap();
        let output = run_agent(&[
            "--kubelet-url".into(),
            kubelet_url.clone(),
            "--otlp-endpoint".into(),
            collector.url(""),
            "--otlp-protocol".into(),
            protocol.into(),
            "--otlp-headers".into(),
            headers_arg(),
        ]);
        let sent = collector.received();
        // gRPC sends its headers HPACK-encoded: the literal values are there unless
        // Huffman-coded, so only HTTP/1.1 is checked byte for byte.
        if protocol == "http/protobuf" {
            let sent = sent.to_ascii_lowercase();
            assert!(
                sent.contains(&format!(
                    "authorization: {}",
                    AUTHORIZATION.to_ascii_lowercase()
                )) && sent.contains(&format!("x-api-key: {API_KEY}")),
                "the collector did not get the headers (so the test proves nothing)"
            );
        } else {
            assert!(!sent.is_empty(), "the gRPC collector got nothing");
        }
        failures.extend(
            leaks(&output, &secrets)
                .into_iter()
                .map(|l| format!("{protocol}: {l}")),
        );
    }
    assert!(
        kubelet
            .received()
            .contains(&format!("authorization: Bearer {TOKEN}"))
            || kubelet
                .received()
                .to_ascii_lowercase()
                .contains(&format!("authorization: bearer {TOKEN}")),
        "the kubelet did not get the bearer token (so the test proves nothing)"
    );

    let tls = TlsServer::start(&pki);
    let path = |f: &str| pki.path(f).display().to_string();
    let output = run_agent(&[
        "--kubelet-url".into(),
        kubelet_url.clone(),
        "--otlp-endpoint".into(),
        format!("https://127.0.0.1:{}", tls.port),
        "--otlp-headers".into(),
        headers_arg(),
        "--otlp-certificate".into(),
        path("server.pem"),
        "--otlp-client-certificate".into(),
        path("client.pem"),
        "--otlp-client-key".into(),
        path("client.key"),
    ]);
    // rustls traces its handshake messages: the TLS run did reach the handshake, where the
    // client key signs.
    assert!(
        output.contains("Handshake"),
        "the https run logged no TLS handshake"
    );
    failures.extend(
        leaks(&output, &secrets)
            .into_iter()
            .map(|l| format!("https: {l}")),
    );
    assert!(
        failures.is_empty(),
        "secrets printed:\n{}",
        failures.join("\n")
    );
}

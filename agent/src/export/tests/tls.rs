//! OTLP over TLS, both transports: a test CA, a server certificate for 127.0.0.1 and a client
//! certificate, all made here (rcgen); receivers on loopback (tonic gRPC, the HTTP receiver
//! behind tokio-rustls) that require a client certificate signed by the CA. With the CA and the
//! client certificate the batch arrives and the receiver saw that certificate; without the
//! client certificate, or trusting another CA, the export fails and the log says why.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::*;
use crate::export::config::ClientIdentity;

/// Test certificates, as files and as PEM text.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    /// A CA that signed nothing here.
    other_ca: PathBuf,
    client: ClientIdentity,
    client_der: Vec<u8>,
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("nodesat test CA");
    let other = new_ca("another CA");

    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = params.signed_by(&server_key, &ca).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "nodesat agent");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = params.signed_by(&client_key, &ca).unwrap();

    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        other_ca: write("other-ca.pem", &other.pem()),
        client: ClientIdentity {
            certificate: write("client.pem", &client.pem()),
            key: write("client-key.pem", &client_key.serialize_pem()),
        },
        client_der: client.der().to_vec(),
        ca_pem: ca.pem(),
        server_cert_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
        dir,
    }
}

/// The client certificates a receiver saw so far, one per delivered batch.
type Seen = Box<dyn Fn() -> Vec<Option<Vec<u8>>>>;

/// A receiver of `protocol` on loopback over TLS, requiring a client certificate signed by the
/// test CA. Returns its https URL, what it saw, and the server task.
async fn receiver(protocol: Protocol, pki: &Pki) -> (String, Seen, tokio::task::JoinHandle<()>) {
    match protocol {
        Protocol::Grpc => {
            use tonic::transport::{Certificate, Identity, ServerTlsConfig};
            let incoming =
                tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
                    .unwrap();
            let addr = incoming.local_addr().unwrap();
            let sink = GrpcSink::default();
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(
                    &pki.server_cert_pem,
                    &pki.server_key_pem,
                ))
                .client_ca_root(Certificate::from_pem(&pki.ca_pem));
            let server = tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(
                    MetricsServiceServer::new(sink.clone())
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                )
                .serve_with_incoming(incoming);
            let task = tokio::spawn(async move {
                let _ = server.await;
            });
            let seen = move || sink.client_certificates.lock().unwrap().clone();
            (format!("https://{addr}"), Box::new(seen), task)
        }
        Protocol::HttpProtobuf => {
            use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .unwrap();
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    vec![CertificateDer::from_pem_slice(pki.server_cert_pem.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).unwrap(),
                )
                .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let got: Arc<Mutex<Vec<HttpReq>>> = Default::default();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let task = tokio::spawn(http_receiver(listener, Some(acceptor), vec![], got.clone()));
            let seen = move || {
                let got = got.lock().unwrap();
                got.iter().map(|r| r.client_certificate.clone()).collect()
            };
            (format!("https://{addr}/v1/metrics"), Box::new(seen), task)
        }
    }
}

fn tls_config(protocol: Protocol, url: String, ca: &std::path::Path) -> ExportConfig {
    ExportConfig {
        certificate: Some(ca.to_owned()),
        retry: RetryPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(100),
            max_elapsed: Duration::from_millis(300),
        },
        ..export_config(protocol, url, Compression::Gzip)
    }
}

#[tokio::test]
async fn tls_with_a_custom_ca_and_a_client_certificate_both_transports() {
    let pki = pki();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let (url, seen, server) = receiver(protocol, &pki).await;
        let c = ExportConfig {
            client_identity: Some(pki.client.clone()),
            ..tls_config(protocol, url.clone(), &pki.ca)
        };
        let (logs, _guard) = Logs::capture();
        let mut e = Exporter::start(&c, info()).unwrap();
        e.export(&report(0, vec![pod_container(11)]));
        for _ in 0..200 {
            if !seen().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(
            seen().len(),
            1,
            "{protocol:?}: a batch over TLS; log:\n{}",
            logs.text()
        );
        e.shutdown(tokio::time::Instant::now() + Duration::from_secs(2))
            .await;
        assert_eq!(
            seen()[0].as_deref(),
            Some(&pki.client_der[..]),
            "{protocol:?} to {url}: the receiver saw the client certificate"
        );
        server.abort();
    }
}

/// Log lines written while it is alive (on this thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Logs {
    /// Captures this thread's log lines until the guard is dropped.
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let l = logs.clone();
                move || l.clone()
            })
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }
}

/// Exports one batch with `c` (retrying for at most 300 ms) and returns what was logged.
async fn failed_export(c: &ExportConfig) -> String {
    let (logs, _guard) = Logs::capture();
    let mut e = Exporter::start(c, info()).unwrap();
    e.export(&report(0, vec![pod_container(11)]));
    for _ in 0..200 {
        if !e.stats.snapshot().dropped.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let dropped = e.stats.snapshot().dropped;
    e.shutdown(tokio::time::Instant::now() + Duration::from_secs(2))
        .await;
    // Dropped at once or after retrying, as the transport classifies the failure.
    assert_eq!(
        dropped.values().sum::<u64>(),
        1,
        "the batch was given up: {dropped:?}; log:\n{}",
        logs.text()
    );
    logs.text()
}

#[tokio::test]
async fn tls_failures_are_logged_with_their_reason() {
    let pki = pki();
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let (url, seen, server) = receiver(protocol, &pki).await;

        // No client certificate: the receiver refuses the connection.
        let logs = failed_export(&tls_config(protocol, url.clone(), &pki.ca)).await;
        eprintln!("{protocol:?}, no client certificate:\n{logs}");
        let first = logs
            .lines()
            .find(|l| l.contains("OTLP export failed"))
            .unwrap_or_else(|| panic!("no failure logged:\n{logs}"));
        // The server's alert, when it was read before the request was written (TLS 1.3), else
        // the hint on the closed connection.
        assert!(
            first.contains("CertificateRequired")
                || first.contains("requires a client certificate"),
            "{first}"
        );

        // The client certificate, but trusting another CA: the agent refuses the server.
        let c = ExportConfig {
            client_identity: Some(pki.client.clone()),
            ..tls_config(protocol, url.clone(), &pki.other_ca)
        };
        let logs = failed_export(&c).await;
        eprintln!("{protocol:?}, another CA:\n{logs}");
        let first = logs
            .lines()
            .find(|l| l.contains("OTLP export failed"))
            .unwrap_or_else(|| panic!("no failure logged:\n{logs}"));
        assert!(
            first.contains("invalid peer certificate: UnknownIssuer"),
            "{first}"
        );

        assert!(seen().is_empty(), "nothing was delivered");
        server.abort();
    }
    drop(pki.dir);
}

#[test]
fn tls_settings_from_env_flags_and_file() {
    let pki = pki();
    let (cert, key) = (&pki.client.certificate, &pki.client.key);
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318");

    let c = load(
        Default::default(),
        &[
            endpoint,
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &path(&pki.ca)),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &path(cert)),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &path(key)),
        ],
    )
    .unwrap()
    .export
    .unwrap();
    assert_eq!(c.certificate.as_ref(), Some(&pki.ca));
    assert_eq!(c.client_identity.as_ref(), Some(&pki.client));

    // The metrics-specific variables beat the generic ones; flags beat both.
    let other = pki.dir.path().join("other-client.pem");
    std::fs::copy(cert, &other).unwrap();
    let c = load(
        Default::default(),
        &[
            endpoint,
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/nonexistent.pem"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
                &path(&other),
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/nonexistent.pem"),
            ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", &path(key)),
        ],
    )
    .unwrap()
    .export
    .unwrap();
    assert_eq!(c.client_identity.unwrap().certificate, other);
    let c = load(
        crate::config::Flags {
            otlp_client_certificate: Some(path(cert)),
            otlp_client_key: Some(path(key)),
            ..Default::default()
        },
        &[
            endpoint,
            (
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
                "/nonexistent.pem",
            ),
        ],
    )
    .unwrap()
    .export
    .unwrap();
    assert_eq!(c.client_identity.as_ref(), Some(&pki.client));

    // The config file's keys.
    let file = pki.dir.path().join("nodesat.toml");
    std::fs::write(
        &file,
        format!(
            "otlp_endpoint = \"https://collector:4318\"\notlp_client_certificate = {:?}\notlp_client_key = {:?}\n",
            path(cert),
            path(key)
        ),
    )
    .unwrap();
    let c = load(
        crate::config::Flags {
            config: Some(file),
            ..Default::default()
        },
        &[],
    )
    .unwrap()
    .export
    .unwrap();
    assert_eq!(c.client_identity.as_ref(), Some(&pki.client));
}

#[test]
fn bad_tls_settings_name_the_variable() {
    let pki = pki();
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let (ca, cert, key, garbage) = (
        path(&pki.ca),
        path(&pki.client.certificate),
        path(&pki.client.key),
        path(&garbage),
    );
    // (environment, the variable the error names, what it says)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            &[("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert)],
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            "otlp_client_key as well",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", &key)],
            "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
            "otlp_client_certificate as well",
        ),
        (
            // a key where the certificate should be
            &[
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &key),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
            ],
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            "holds no certificate",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &cert),
            ],
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            "holds no private key",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/nonexistent/key.pem")],
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            "cannot read /nonexistent/key.pem",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &garbage)],
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "is not valid PEM",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &key)],
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "holds no certificate",
        ),
    ];
    for (env, var, expected) in cases {
        // invalid even when export is off (no endpoint), like every other setting
        let err = load(Default::default(), env).unwrap_err();
        eprintln!("{err}");
        assert!(err.contains(var) && err.contains(expected), "{var}: {err}");
    }
    let ok = load(
        Default::default(),
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str())],
    )
    .unwrap();
    assert!(
        ok.export.is_none(),
        "a CA alone is fine (export stays off without an endpoint)"
    );
}

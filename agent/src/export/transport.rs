//! Sending one export request: HTTP/protobuf (ureq on a blocking thread, gzip by flate2) or
//! gRPC (tonic's MetricsServiceClient), both over TLS for https endpoints (rustls: the built-in
//! roots or a custom CA, and a client certificate when configured), and what a failure means
//! for retrying.

use std::{io::Write as _, sync::Arc, time::Duration};

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    metrics_service_client::MetricsServiceClient,
};
use prost::Message as _;

use super::config::{
    Compression, ExportConfig, PemError, Protocol, read_certificates, read_private_key,
};

/// Why the transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Pem(#[from] PemError),
    #[error("invalid endpoint {url}: {message}")]
    Endpoint { url: String, message: String },
    #[error("TLS setup for {url}: {message}")]
    Tls { url: String, message: String },
    #[error("header {name:?} is not valid gRPC metadata")]
    Header { name: String },
}

/// A failed attempt: whether to retry, the server's requested delay, and a class for the
/// `error.type` attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub retryable: bool,
    pub retry_after: Option<Duration>,
    /// gRPC code name, HTTP status, "timeout" or "connection".
    pub kind: String,
    pub message: String,
}

/// What the server accepted only in part (logged).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartialSuccess {
    pub rejected_data_points: i64,
    pub error_message: String,
}

pub enum Transport {
    Http {
        agent: ureq::Agent,
        url: String,
        headers: Arc<Vec<(String, String)>>,
        gzip: bool,
        /// https without a client certificate: a connection the server closes while the
        /// request is sent may be its refusal of a client without one (said in the error).
        tls_without_client_cert: bool,
    },
    Grpc {
        client: MetricsServiceClient<tonic::transport::Channel>,
        headers: Vec<(
            tonic::metadata::AsciiMetadataKey,
            tonic::metadata::AsciiMetadataValue,
        )>,
        timeout: Duration,
    },
}

impl Transport {
    /// Sets the transport up without connecting (gRPC connects lazily at the first send).
    pub fn new(c: &ExportConfig) -> Result<Transport, SetupError> {
        let ca = c
            .certificate
            .as_deref()
            .map(read_certificates)
            .transpose()?;
        let client = match &c.client_identity {
            Some(id) => Some((
                read_certificates(&id.certificate)?,
                read_private_key(&id.key)?,
            )),
            None => None,
        };
        if !c.url.starts_with("https://") && (ca.is_some() || client.is_some()) {
            tracing::warn!(
                url = %c.url,
                "the OTLP endpoint is not https: its CA and client certificate settings are not used"
            );
        }
        match c.protocol {
            Protocol::HttpProtobuf => {
                use ureq::tls::{ClientCert, RootCerts, TlsConfig};
                let mut tls = TlsConfig::builder();
                if let Some((_, certs)) = &ca {
                    tls = tls.root_certs(RootCerts::new_with_certs(certs));
                }
                let tls_without_client_cert = c.url.starts_with("https://") && client.is_none();
                if let Some(((_, chain), (_, key))) = client {
                    tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
                }
                let agent = ureq::Agent::config_builder()
                    .timeout_global(Some(c.timeout))
                    .http_status_as_error(false)
                    .user_agent(concat!("nodesat/", env!("CARGO_PKG_VERSION")))
                    .tls_config(tls.build())
                    .build()
                    .new_agent();
                Ok(Transport::Http {
                    agent,
                    url: c.url.clone(),
                    headers: Arc::new(c.headers.clone()),
                    gzip: c.compression == Compression::Gzip,
                    tls_without_client_cert,
                })
            }
            Protocol::Grpc => {
                let mut endpoint = tonic::transport::Endpoint::from_shared(c.url.clone())
                    .map_err(|e| SetupError::Endpoint {
                        url: c.url.clone(),
                        message: e.to_string(),
                    })?
                    .timeout(c.timeout)
                    .connect_timeout(c.timeout);
                if c.url.starts_with("https://") {
                    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
                    let mut tls = ClientTlsConfig::new();
                    tls = match &ca {
                        Some((pem, _)) => tls.ca_certificate(Certificate::from_pem(pem)),
                        None => tls.with_webpki_roots(),
                    };
                    if let Some(((cert_pem, _), (key_pem, _))) = &client {
                        tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
                    }
                    endpoint = endpoint.tls_config(tls).map_err(|e| SetupError::Tls {
                        url: c.url.clone(),
                        message: error_chain(&e.to_string(), std::error::Error::source(&e)),
                    })?;
                }
                let mut client = MetricsServiceClient::new(endpoint.connect_lazy());
                if c.compression == Compression::Gzip {
                    client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                client = client.accept_compressed(tonic::codec::CompressionEncoding::Gzip);
                let mut headers = Vec::new();
                for (k, v) in &c.headers {
                    let invalid = || SetupError::Header { name: k.clone() };
                    let key = k.to_ascii_lowercase().parse().map_err(|_| invalid())?;
                    let value = v.parse().map_err(|_| invalid())?;
                    headers.push((key, value));
                }
                Ok(Transport::Grpc {
                    client,
                    headers,
                    timeout: c.timeout,
                })
            }
        }
    }

    pub async fn send(
        &self,
        req: &ExportMetricsServiceRequest,
    ) -> Result<Option<PartialSuccess>, SendError> {
        match self {
            Transport::Http {
                agent,
                url,
                headers,
                gzip,
                tls_without_client_cert,
            } => {
                let mut body = req.encode_to_vec();
                if *gzip {
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    enc.write_all(&body).map_err(internal)?;
                    body = enc.finish().map_err(internal)?;
                }
                let (agent, url, headers, gzip, hint) = (
                    agent.clone(),
                    url.clone(),
                    headers.clone(),
                    *gzip,
                    *tls_without_client_cert,
                );
                tokio::task::spawn_blocking(move || {
                    http_post(&agent, &url, &headers, gzip, hint, body)
                })
                .await
                .map_err(|e| internal(std::io::Error::other(e.to_string())))?
            }
            Transport::Grpc {
                client,
                headers,
                timeout,
            } => {
                let mut request = tonic::Request::new(req.clone());
                request.set_timeout(*timeout);
                for (k, v) in headers {
                    request.metadata_mut().insert(k.clone(), v.clone());
                }
                match client.clone().export(request).await {
                    Ok(resp) => Ok(partial(resp.into_inner())),
                    Err(status) => Err(classify_grpc(&status)),
                }
            }
        }
    }
}

fn internal(e: std::io::Error) -> SendError {
    SendError {
        retryable: false,
        retry_after: None,
        kind: "internal".into(),
        message: e.to_string(),
    }
}

fn partial(resp: ExportMetricsServiceResponse) -> Option<PartialSuccess> {
    resp.partial_success
        .filter(|p| p.rejected_data_points != 0 || !p.error_message.is_empty())
        .map(|p| PartialSuccess {
            rejected_data_points: p.rejected_data_points,
            error_message: p.error_message,
        })
}

fn http_post(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(String, String)],
    gzip: bool,
    tls_without_client_cert: bool,
    body: Vec<u8>,
) -> Result<Option<PartialSuccess>, SendError> {
    let mut req = agent
        .post(url)
        .header("Content-Type", "application/x-protobuf");
    if gzip {
        req = req.header("Content-Encoding", "gzip");
    }
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let mut resp = match req.send(&body[..]) {
        Ok(r) => r,
        Err(e) => return Err(classify_ureq(&e, tls_without_client_cert)),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_vec()
        .unwrap_or_default();
    if (200..300).contains(&status) {
        return Ok(ExportMetricsServiceResponse::decode(&body[..])
            .ok()
            .and_then(partial));
    }
    let mut e = classify_http(status, retry_after);
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    e.message = if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        )
    };
    Err(e)
}

/// Retry-After in seconds (an HTTP date is not honoured: the backoff applies).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// OTLP/HTTP: 429, 502, 503 and 504 are retryable, everything else is not.
pub fn classify_http(status: u16, retry_after: Option<Duration>) -> SendError {
    SendError {
        retryable: matches!(status, 429 | 502 | 503 | 504),
        retry_after,
        kind: status.to_string(),
        message: format!("HTTP {status}"),
    }
}

/// A failed request; `tls_without_client_cert`: over https, with no client certificate.
fn classify_ureq(e: &ureq::Error, tls_without_client_cert: bool) -> SendError {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
    let kind = match e {
        ureq::Error::Timeout(_) => "timeout",
        _ => "connection",
    };
    let mut message = e.to_string();
    if tls_without_client_cert
        && matches!(e, ureq::Error::Io(io)
            if matches!(io.kind(), BrokenPipe | ConnectionReset | UnexpectedEof))
    {
        // TLS 1.3: a server that requires a client certificate refuses a client without one
        // after the handshake, often before the request is written: the alert saying so is
        // then never read.
        message.push_str(
            " (the server closed the TLS connection; if it requires a client certificate, \
             set otlp_client_certificate and otlp_client_key)",
        );
    }
    SendError {
        retryable: true,
        retry_after: None,
        kind: kind.into(),
        message,
    }
}

/// OTLP/gRPC: CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE,
/// UNAVAILABLE and DATA_LOSS are retryable; a RetryInfo in the status details sets the delay.
pub fn classify_grpc(status: &tonic::Status) -> SendError {
    use tonic::Code;
    let code = status.code();
    SendError {
        retryable: matches!(
            code,
            Code::Cancelled
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::OutOfRange
                | Code::Unavailable
                | Code::DataLoss
        ),
        retry_after: retry_info(status.details()),
        kind: format!("{code:?}"),
        // A transport error ("transport error") says what went wrong only in its sources.
        message: format!(
            "gRPC {code:?}: {}",
            error_chain(status.message(), std::error::Error::source(status))
        ),
    }
}

/// google.rpc.Status, RetryInfo and friends: the few fields needed to read a retry delay.
pub mod rpc {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(message, repeated, tag = "3")]
        pub details: Vec<Any>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        pub retry_delay: Option<Duration>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
    pub const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";
}

fn retry_info(details: &[u8]) -> Option<Duration> {
    if details.is_empty() {
        return None;
    }
    let status = rpc::Status::decode(details).ok()?;
    status
        .details
        .iter()
        .filter(|a| a.type_url == rpc::RETRY_INFO)
        .find_map(|a| rpc::RetryInfo::decode(&a.value[..]).ok()?.retry_delay)
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

/// A message and the error sources below it, "message: cause: its cause", leaving out those
/// an earlier part already says.
pub fn error_chain(message: &str, source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut parts = vec![message.to_owned()];
    let mut next = source;
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

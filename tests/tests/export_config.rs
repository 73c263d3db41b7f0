//! Bad values for the Prometheus endpoint and the OTLP TLS settings, from a flag, the
//! environment or the config file: the agent exits 64 before starting anything, naming the
//! setting and where the value came from. Needs no privileges.

use std::fs;
use std::time::Duration;

use nodesat_tests::{agent_command, logged_output_within};

/// Exit code for usage and configuration errors (EX_USAGE).
const EX_USAGE: i32 = 64;

/// Runs `nodesat run` with `args` and `env`; expects exit code 64 and every one of `mentions`
/// in what it printed.
fn assert_usage_error(args: &[&str], env: &[(&str, &str)], mentions: &[&str]) {
    let mut cmd = agent_command();
    cmd.arg("run").args(args).envs(env.iter().copied());
    let out = logged_output_within(cmd, Duration::from_secs(30));
    assert_eq!(
        out.status.code(),
        Some(EX_USAGE),
        "exit code of {args:?} with env {env:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for word in mentions {
        assert!(
            stderr.contains(word),
            "stderr of {args:?} with env {env:?} mentions {word:?}: {stderr}"
        );
    }
}

#[test]
fn bad_prometheus_listen_exits_64_naming_it() {
    assert_usage_error(
        &["--prometheus-listen", "banana"],
        &[],
        &[
            "prometheus_listen",
            "flag --prometheus-listen",
            "0.0.0.0:9464",
        ],
    );
    assert_usage_error(
        &[],
        &[("NODESAT_PROMETHEUS_LISTEN", ":9464")],
        &["environment variable NODESAT_PROMETHEUS_LISTEN"],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("nodesat.toml");
    fs::write(&config, "prometheus_listen = 9464\n").expect("write config");
    assert_usage_error(
        &["--config", config.to_str().unwrap()],
        &[],
        &["prometheus_listen", "config file"],
    );
}

#[test]
fn bad_tls_settings_exit_64_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A PEM certificate block (the settings check the PEM, not the certificate inside).
    let cert = dir.path().join("cert.pem");
    fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .expect("write cert.pem");
    let cert = cert.to_str().expect("utf-8 temp path");
    let text = dir.path().join("notes.txt");
    fs::write(&text, "not a certificate\n").expect("write notes.txt");
    let text = text.to_str().expect("utf-8 temp path");

    assert_usage_error(
        &["--otlp-client-certificate", cert],
        &[],
        &[
            "otlp_client_certificate",
            "flag --otlp-client-certificate",
            "otlp_client_key as well",
        ],
    );
    assert_usage_error(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert),
            ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", cert),
        ],
        &[
            "otlp_client_key",
            "environment variable OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
            "holds no private key",
        ],
    );
    assert_usage_error(
        &["--otlp-client-key", "/nonexistent/key.pem"],
        &[],
        &["otlp_client_key", "cannot read /nonexistent/key.pem"],
    );
    assert_usage_error(
        &[],
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", text)],
        &[
            "otlp_certificate",
            "environment variable OTEL_EXPORTER_OTLP_CERTIFICATE",
            "holds no certificate",
        ],
    );
}

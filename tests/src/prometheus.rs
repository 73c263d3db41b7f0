//! A real Prometheus server for tests: scraping the agent, loading rule files, answering
//! PromQL through its HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{free_port, http_get};

/// How often the test Prometheus scrapes and evaluates rules.
pub const SCRAPE: &str = "1s";

pub fn prometheus_bin() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("prometheus"))
        .find(|p| p.is_file())
}

pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on loopback scraping `target` every second, with its own config and
/// data directory; stopped (SIGTERM, then SIGKILL) and its directory removed on drop, its log
/// printed when the test failed.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(bin: &Path, target: SocketAddr) -> Self {
        Self::with_rules(bin, target, &[])
    }

    /// Like [`Prometheus::start`], also loading `rule_files` (evaluated every [`SCRAPE`]).
    pub fn with_rules(bin: &Path, target: SocketAddr, rule_files: &[PathBuf]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {SCRAPE}\n  scrape_timeout: {SCRAPE}\n  \
                 evaluation_interval: {SCRAPE}\n{}\
                 scrape_configs:\n  - job_name: nodesat\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n",
                if rule_files.is_empty() {
                    String::new()
                } else {
                    format!(
                        "rule_files:\n{}",
                        rule_files
                            .iter()
                            .map(|f| format!("  - {:?}\n", f.display().to_string()))
                            .collect::<String>()
                    )
                }
            ),
        )
        .expect("write prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        eprintln!(
            "started {} (pid {}) on {addr}, scraping {target} every {SCRAPE}",
            bin.display(),
            child.id()
        );
        Self { child, addr, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `data` of a successful API answer.
    pub fn api(&self, path_and_query: &str) -> Value {
        let (status, body) = http_get(self.addr, path_and_query)
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {status} {e}: {body}"));
        assert_eq!(json["status"], "success", "GET {path_and_query}: {body}");
        json["data"].clone()
    }

    /// The result of a PromQL query, evaluated now.
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(promql)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The result of a PromQL range query over the last `span` up to now, one point per
    /// `step`, as Grafana asks for a panel or an annotation: one entry per series.
    pub fn query_range(&self, promql: &str, span: Duration, step: Duration) -> Vec<Value> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64();
        let data = self.api(&format!(
            "/api/v1/query_range?query={}&start={:.3}&end={now:.3}&step={}",
            percent_encode(promql),
            now - span.as_secs_f64(),
            step.as_secs_f64()
        ));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits for the server, then for its first scrape of the target; the target's state.
    pub fn wait_for_target(&self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let up = matches!(http_get(self.addr, "/-/ready"), Ok((200, _)));
            if up {
                let targets = self.api("/api/v1/targets");
                if let Some(t) = targets["activeTargets"].as_array().and_then(|a| a.first())
                    && t["health"] != "unknown"
                {
                    return t.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not scrape the target within {timeout:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("Prometheus log:\n{}", self.log());
        }
    }
}

//! The monitoring that ships with the agent (`deploy/monitoring/`, issue 19): its Prometheus
//! rules pass `promtool check rules` and their unit tests (`promtool test rules`: each alert
//! fires on agent-shaped series, stays silent on healthy ones and clears), the PrometheusRule
//! is the rule file, every alert has a runbook section and a unit test, and every metric and
//! label the rules and the dashboard name is one the agent exports (docs/metrics.md's tables,
//! generated from the catalogue and checked against it by the agent's unit tests).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use nodesat_tests::{skip, workspace_root};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

fn monitoring(file: &str) -> PathBuf {
    workspace_root().join("deploy/monitoring").join(file)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Yaml {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `promtool` on PATH, or why not.
fn promtool() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("promtool"))
        .find(|p| p.is_file())
}

/// The rules of the rule file: (group, rule) pairs as YAML mappings.
fn rules() -> Vec<Yaml> {
    yaml(&monitoring("nodesat.rules.yml"))["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .collect()
}

fn str_of<'a>(v: &'a Yaml, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Yaml::as_str)
}

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    const TEST: &str = "rules_pass_promtool_check_and_their_unit_tests";
    let Some(promtool) = promtool() else {
        skip(
            TEST,
            "no promtool on PATH (apt-get install prometheus; cargo xtask test installs it)",
        );
        return;
    };
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(monitoring("nodesat.rules.yml"))
        .output()
        .expect("run promtool check rules");
    let said = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    eprintln!("promtool check rules: {said}");
    assert!(check.status.success(), "{said}");
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", rules().len())),
        "{said}"
    );
    let test = Command::new(&promtool)
        .args(["test", "rules"])
        .arg(monitoring("tests/nodesat.rules.test.yml"))
        .output()
        .expect("run promtool test rules");
    let said =
        String::from_utf8_lossy(&test.stdout).into_owned() + &String::from_utf8_lossy(&test.stderr);
    eprintln!("promtool test rules: {said}");
    assert!(test.status.success(), "{said}");
}

#[test]
fn prometheus_rule_is_the_rule_file() {
    let file = yaml(&monitoring("nodesat.rules.yml"));
    let cr = yaml(&monitoring("prometheus-rule.yaml"));
    assert_eq!(cr["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(
        cr["spec"], file,
        "prometheus-rule.yaml's spec differs from nodesat.rules.yml: copy the groups over"
    );
}

/// GitHub's anchor of a Markdown heading: lower case, spaces to `-`, other punctuation gone.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_section_and_unit_tests_both_ways() {
    let runbooks = read(&workspace_root().join("docs/runbooks.md"));
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let tests = yaml(&monitoring("tests/nodesat.rules.test.yml"));
    let cases: Vec<(String, bool)> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| {
            t["alert_rule_test"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| {
            let name = str_of(&c, "alertname").unwrap_or_default().to_owned();
            let fires = c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty());
            (name, fires)
        })
        .collect();
    let mut alerts = 0;
    for rule in rules() {
        let Some(alert) = str_of(&rule, "alert") else {
            continue;
        };
        alerts += 1;
        let url = str_of(&rule["annotations"], "runbook_url")
            .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
        let (file, section) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{alert}: runbook_url {url} names no section"));
        assert!(file.ends_with("docs/runbooks.md"), "{alert}: {url}");
        assert!(
            anchors.contains(section),
            "{alert}: docs/runbooks.md has no section #{section} (sections: {anchors:?})"
        );
        assert_eq!(
            section,
            anchor(alert),
            "{alert}: the section is named after the alert"
        );
        for severity in ["summary", "description"] {
            assert!(
                str_of(&rule["annotations"], severity).is_some(),
                "{alert}: {severity}"
            );
        }
        assert!(
            str_of(&rule["labels"], "severity").is_some(),
            "{alert}: severity label"
        );
        for fires in [true, false] {
            assert!(
                cases.iter().any(|(n, f)| n == alert && *f == fires),
                "{alert}: no unit test where it {}",
                if fires {
                    "fires"
                } else {
                    "stays silent or clears"
                }
            );
        }
    }
    assert!(alerts >= 7, "{alerts} alerts");
}

/// The Prometheus names and labels the agent exports: docs/metrics.md's generated tables.
struct Catalogue {
    /// Metric families (histograms also as `_bucket`, `_sum`, `_count`).
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

fn catalogue() -> Catalogue {
    let doc = read(&workspace_root().join("docs/metrics.md"));
    let cells = |l: &str| -> Vec<String> {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`').to_owned())
            .collect()
    };
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let mut in_label_table = false;
    for line in doc.lines() {
        if line.starts_with("| attribute | Prometheus label |") {
            in_label_table = true;
        } else if !line.starts_with('|') {
            in_label_table = false;
        }
        if !line.starts_with("| `") {
            continue;
        }
        let c = cells(line);
        // The OTLP catalogue: name, unit, type, resource, attributes, Prometheus name, meaning.
        if c.len() == 7 && c[5].starts_with("nodesat_") {
            metrics.insert(c[5].clone());
            if c[2].contains("histogram") {
                for suffix in ["_bucket", "_sum", "_count"] {
                    metrics.insert(format!("{}{suffix}", c[5]));
                }
            }
        }
        // The attribute → label table.
        if in_label_table && c.len() == 2 {
            labels.insert(c[1].clone());
        }
    }
    assert!(metrics.len() > 20, "catalogue table not found: {metrics:?}");
    assert!(labels.contains("pod"), "label table not found: {labels:?}");
    // Prometheus' own: the scrape's, and the histogram bucket bound.
    labels.extend(["job", "instance", "le"].map(String::from));
    Catalogue { metrics, labels }
}

/// Metric names in a PromQL expression (recorded `nodesat:` ones apart), and the label names
/// it matches, groups or joins on.
fn names_in(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut in_braces = false;
    let mut in_quotes = false;
    let mut in_parens_of: Option<String> = None;
    while i < bytes.len() {
        let c = bytes[i];
        if in_quotes {
            if c == '\\' {
                i += 1;
            } else if c == '"' {
                in_quotes = false;
            }
            i += 1;
            continue;
        }
        if c == '"' {
            in_quotes = true;
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || "_:".contains(bytes[i])) {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let rest: String = bytes[i..].iter().collect::<String>();
            let next = rest.trim_start();
            if in_braces || in_parens_of.is_some() {
                labels.insert(word);
            } else if [
                "by",
                "on",
                "without",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
                && next.starts_with('(')
            {
                in_parens_of = Some(word);
            } else if word.starts_with("nodesat") || word == "up" {
                metrics.insert(word);
            }
            continue;
        }
        match c {
            '{' => in_braces = true,
            '}' => in_braces = false,
            ')' if in_parens_of.is_some() => in_parens_of = None,
            '[' => {
                // A range or a subquery: skip to ']'.
                while i < bytes.len() && bytes[i] != ']' {
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    (metrics, labels)
}

#[test]
fn promql_names_are_parsed() {
    let (m, l) = names_in(
        r#"sum by (host, pod) (rate(nodesat_x_total{pod!="a{b}", container=~".+"}[2m])) / on (host) nodesat:y:rate2m > 0.5"#,
    );
    assert_eq!(
        m,
        ["nodesat:y:rate2m", "nodesat_x_total"]
            .map(String::from)
            .into()
    );
    assert_eq!(l, ["container", "host", "pod"].map(String::from).into());
}

/// Every expression of the rules and of the dashboard (panels, variables, annotations).
fn expressions() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = rules()
        .iter()
        .map(|r| {
            let name = str_of(r, "record").or(str_of(r, "alert")).unwrap_or("?");
            (
                format!("rule {name}"),
                str_of(r, "expr").unwrap_or("").to_owned(),
            )
        })
        .collect();
    out.extend(dashboard_queries());
    out
}

fn dashboard() -> Json {
    serde_json::from_str(&read(&monitoring("grafana-dashboard.json"))).expect("dashboard JSON")
}

/// The dashboard's queries: (where, PromQL), Grafana variables left in.
fn dashboard_queries() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel {:?} {}", p["title"], t["refId"]),
                t["expr"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().expect("variables") {
        if let Some(q) = v["query"]["query"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .and_then(|q| q.rsplit_once(','))
                .map(|(selector, _label)| selector.to_owned())
                .unwrap_or_else(|| q.to_owned());
            out.push((format!("variable {}", v["name"]), inner));
        }
    }
    for a in d["annotations"]["list"].as_array().expect("annotations") {
        out.push((
            format!("annotation {}", a["name"]),
            a["expr"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    out
}

#[test]
fn rules_and_dashboard_name_only_what_the_agent_exports() {
    let cat = catalogue();
    let recorded: BTreeSet<String> = rules()
        .iter()
        .filter_map(|r| str_of(r, "record").map(str::to_owned))
        .collect();
    let mut used_records = BTreeSet::new();
    let mut checked = 0;
    for (place, expr) in expressions() {
        assert!(!expr.trim().is_empty(), "{place}: empty query");
        let (metrics, labels) = names_in(&expr.replace("$__rate_interval", "1m"));
        for m in &metrics {
            if m.starts_with("nodesat:") {
                assert!(recorded.contains(m), "{place}: {m} is recorded by no rule");
                used_records.insert(m.clone());
            } else if m != "up" {
                assert!(cat.metrics.contains(m), "{place}: the agent exports no {m}");
            }
        }
        for l in &labels {
            assert!(
                cat.labels.contains(l),
                "{place}: the agent has no label {l}"
            );
        }
        checked += 1;
    }
    eprintln!(
        "{checked} expressions checked against {} metric names and {} labels",
        cat.metrics.len(),
        cat.labels.len()
    );
    // Every recorded series is charted or alerted on.
    let unused: Vec<&String> = recorded.difference(&used_records).collect();
    assert!(unused.is_empty(), "recorded but never used: {unused:?}");
}

#[test]
fn dashboard_has_the_variables_heatmaps_and_oom_annotations() {
    let d = dashboard();
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["node", "namespace", "pod"] {
        assert!(vars.contains(&v), "variable {v}: {vars:?}");
    }
    let panels = d["panels"].as_array().unwrap();
    let heatmaps: Vec<&Json> = panels.iter().filter(|p| p["type"] == "heatmap").collect();
    assert!(heatmaps.len() >= 3, "heatmaps for the latency histograms");
    for h in heatmaps {
        let t = &h["targets"][0];
        assert_eq!(t["format"], "heatmap", "{}", h["title"]);
        assert!(
            t["expr"].as_str().unwrap().contains("_bucket"),
            "{}",
            h["title"]
        );
    }
    let annotations = d["annotations"]["list"].as_array().unwrap();
    assert!(
        annotations.iter().any(|a| a["expr"]
            .as_str()
            .unwrap_or("")
            .contains("nodesat_memory_oom_kills_total")),
        "an OOM-kill annotation"
    );
    // Every catalogued workload and node signal has a panel.
    let all: String = dashboard_queries().into_iter().map(|(_, q)| q).collect();
    for signal in [
        "runqueue",
        "throttled",
        "throttle_duration",
        "iowait",
        "io_wait",
        "retransmits",
        "oom_kills",
        "disk_io_latency",
        "probe_attached",
        "export",
        "kubelet",
    ] {
        assert!(all.contains(signal), "no panel queries {signal}");
    }
}

// ---------------------------------------------------------------------------------------------
// Against the real agent and a real Prometheus.

mod live {
    use std::collections::{BTreeMap, BTreeSet};
    use std::fs;
    use std::net::SocketAddr;
    use std::process::{Command, Stdio};
    use std::thread;
    use std::time::{Duration, Instant};

    use nodesat_tests::prometheus::{Prometheus, prometheus_bin};
    use nodesat_tests::{
        Agent, HttpServer, LoopDevice, NestedCgroup, NftTable, Reply, ScriptedServer, TestProcess,
        allowed_cpus, cpu_controller, free_port, load_bin, memory_controller, nft_available, skip,
        skip_if_unprivileged, spawn_in,
    };
    use serde_json::Value as Json;

    use super::{dashboard_queries, monitoring, read, rules, str_of};

    const TEST: &str = "rules_alerts_and_dashboard_work_on_the_real_agent";
    const NAMESPACE: &str = "nodesat-e2e";
    /// Longest wait for an expected alert or series.
    const WAIT: Duration = Duration::from_secs(90);

    fn random_u64() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    }

    /// A kubelet-shaped pod with one container: its cgroup (cgroupfs layout) and processes.
    struct Pod {
        name: &'static str,
        uid: String,
        container_id: String,
        processes: Vec<TestProcess>,
        cgroup: NestedCgroup,
    }

    impl Pod {
        fn create(name: &'static str) -> Pod {
            let r = random_u64();
            let uid = format!(
                "6e6f6473-{:04x}-4{:03x}-8{:03x}-{:012x}",
                r & 0xffff,
                (r >> 16) & 0xfff,
                (r >> 28) & 0xfff,
                std::process::id()
            );
            let container_id: String = (0..4).map(|_| format!("{:016x}", random_u64())).collect();
            let cgroup =
                NestedCgroup::create(&format!("kubepods/burstable/pod{uid}/{container_id}"))
                    .expect("create the container cgroup");
            Pod {
                name,
                uid,
                container_id,
                processes: Vec::new(),
                cgroup,
            }
        }

        fn run(&mut self, args: &[&str]) {
            let mut cmd = Command::new(load_bin!());
            cmd.args(args).stdout(Stdio::piped());
            self.processes
                .push(spawn_in(&self.cgroup, cmd).unwrap_or_else(|e| panic!("{}: {e}", self.name)));
        }

        fn stop(&mut self) {
            self.processes.clear();
        }

        fn item(&self) -> Json {
            serde_json::json!({
                "metadata": {"name": self.name, "namespace": NAMESPACE, "uid": self.uid},
                "spec": {"containers": [{"name": "main", "image": "example/load:1"}]},
                "status": {
                    "phase": "Running",
                    "qosClass": "Burstable",
                    "containerStatuses": [{
                        "name": "main",
                        "containerID": format!("containerd://{}", self.container_id),
                        "ready": true
                    }]
                }
            })
        }
    }

    /// The rule file with every `for:` shortened to 0s, so alerts go pending at once.
    fn rules_overlay(dir: &std::path::Path) -> std::path::PathBuf {
        let text = read(&monitoring("nodesat.rules.yml"));
        let overlay: String = text
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: 0s", &l[..l.len() - l.trim_start().len()]),
                None => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = dir.join("nodesat.rules.yml");
        fs::write(&path, overlay + "\n").unwrap();
        path
    }

    /// Active alerts (pending or firing): (alertname, pod or host) pairs.
    fn alerts(prometheus: &Prometheus) -> BTreeSet<(String, String)> {
        let data = prometheus.api("/api/v1/alerts");
        data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let l = &a["labels"];
                let who = l["pod"]
                    .as_str()
                    .or(l["probe"].as_str())
                    .or(l["host"].as_str())
                    .unwrap_or("-");
                (
                    l["alertname"].as_str().unwrap_or("?").to_owned(),
                    who.to_owned(),
                )
            })
            .collect()
    }

    fn wait_for_alerts(
        prometheus: &Prometheus,
        expected: &[(&str, &str)],
    ) -> BTreeSet<(String, String)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let active = alerts(prometheus);
            let missing: Vec<_> = expected
                .iter()
                .filter(|(a, w)| !active.contains(&(a.to_string(), w.to_string())))
                .collect();
            if missing.is_empty() {
                return active;
            }
            if Instant::now() >= deadline {
                dump_records(prometheus);
                panic!("alerts not active after {WAIT:?}: {missing:?}; active: {active:?}");
            }
            thread::sleep(Duration::from_secs(1));
        }
    }

    /// Pairs of lossy TCP client and server in the `net` pod.
    const TCP_PAIRS: usize = 12;

    /// Prints every recorded series (pod or host and value), to show why an alert did not fire.
    fn dump_records(prometheus: &Prometheus) {
        for r in rules() {
            let Some(name) = str_of(&r, "record") else {
                continue;
            };
            let values: Vec<String> = prometheus
                .query(name)
                .iter()
                .map(|v| {
                    let m = &v["metric"];
                    let who = m["pod"].as_str().or(m["host"].as_str()).unwrap_or("-");
                    format!("{who}={}", v["value"][1].as_str().unwrap_or("?"))
                })
                .collect();
            eprintln!("{name}: {}", values.join(" "));
        }
        for raw in [
            "nodesat_memory_oom_kills_total{pod!=\"\"}",
            "nodesat_io_wait_time_seconds_total{pod!=\"\"}",
            "nodesat_tcp_retransmits_total",
        ] {
            for v in prometheus.query(raw) {
                eprintln!("{raw}: {} = {}", v["metric"], v["value"][1]);
            }
        }
    }

    /// The dashboard's query with its variables set to this node and every namespace and pod.
    fn substituted(query: &str, host: &str) -> String {
        query
            .replace("$__rate_interval", "30s")
            .replace("$node", host)
            .replace("$namespace", ".*")
            .replace("$pod", ".*")
    }

    #[test]
    fn rules_alerts_and_dashboard_work_on_the_real_agent() {
        if skip_if_unprivileged(TEST) {
            return;
        }
        let Some(bin) = prometheus_bin() else {
            skip(
                TEST,
                "no prometheus binary on PATH (cargo xtask test installs it)",
            );
            return;
        };
        if let Err(why) = cpu_controller().and(memory_controller()) {
            skip(TEST, &why);
            return;
        }
        if let Err(why) = nft_available() {
            skip(TEST, &why);
            return;
        }
        let Some(device) = LoopDevice::for_test(TEST, false) else {
            return;
        };
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_owned();

        // Pods: dropped before the device and the nft table declared above them.
        let mut idle = Pod::create("idle-0");
        let mut throttled = Pod::create("throttled-0");
        let mut oom = Pod::create("oom-0");
        let mut io = Pod::create("io-0");
        let mut net = Pod::create("net-0");
        let mut hog = Pod::create("hog-0");
        throttled
            .cgroup
            .set_cpu_quota(20_000, 100_000)
            .expect("20% quota");
        oom.cgroup.set_memory_limit(64 << 20).expect("64 MiB limit");
        let pods = serde_json::json!({
            "kind": "PodList", "apiVersion": "v1", "metadata": {},
            "items": [idle.item(), throttled.item(), oom.item(), io.item(), net.item(), hog.item()]
        });
        let kubelet = HttpServer::serve(
            "/pods",
            "application/json",
            serde_json::to_vec(&pods).unwrap(),
        )
        .expect("fake kubelet");
        let collector =
            ScriptedServer::start(vec![Reply::new(200, "application/x-protobuf", Vec::new())])
                .unwrap();
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut agent = Agent::start(
            "1s",
            &[
                "--prometheus-listen",
                &listen.to_string(),
                "--kubelet-url",
                &kubelet.url(),
                "--otlp-endpoint",
                &collector.url(""),
            ],
        );
        agent.wait_ready(Duration::from_secs(30));
        let dir = tempfile::tempdir().unwrap();
        let prometheus = Prometheus::with_rules(&bin, listen, &[rules_overlay(dir.path())]);
        let target = prometheus.wait_for_target(Duration::from_secs(30));
        let scraping = Instant::now();
        assert_eq!(target["health"], "up", "{target}");

        // Phase 1: a 20% quota, an allocator beyond its limit, synchronous writes, lossy TCP.
        idle.run(&["sleeper", "--period-ms", "50", "--work-us", "100"]);
        throttled.run(&["spin"]);
        oom.run(&["alloc", "--mb", "256"]);
        let cpu = allowed_cpus().last().copied().unwrap_or(0).to_string();
        // Two writers of 1 MiB synchronous blocks: blocked most of the time, more than one
        // task on average.
        for _ in 0..2 {
            io.run(&[
                "dio-write",
                "--path",
                &device.path().display().to_string(),
                "--seconds",
                "120",
                "--block",
                "1048576",
                "--cpu",
                &cpu,
            ]);
        }
        let table = NftTable::create().expect("nft table");
        table.add_chain("input", "input").expect("nft chain");
        // Lossy ping-pong: one round trip in four loses a segment each way and waits for a
        // retransmit (about one a second per pair here), so enough pairs to pass the
        // alert's 5 segments/s.
        for _ in 0..TCP_PAIRS {
            let mut server_cmd = Command::new(load_bin!());
            server_cmd
                .args([
                    "tcp-server",
                    "--listen",
                    "127.0.0.1:0",
                    "--rounds",
                    "100000",
                    "--size",
                    "200",
                ])
                .stdout(Stdio::piped());
            let mut server = spawn_in(&net.cgroup, server_cmd).expect("tcp server");
            let line = server
                .read_line(Duration::from_secs(10))
                .expect("listening line");
            let addr = line
                .strip_prefix("listening ")
                .expect("listening <addr>")
                .to_owned();
            let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
            for direction in ["dport", "sport"] {
                table
                    .add_rule(
                        "input",
                        &format!("tcp {direction} {port} numgen inc mod 4 == 3 counter drop"),
                    )
                    .expect("drop rule");
            }
            net.processes.push(server);
            net.run(&[
                "tcp-client",
                "--connect",
                &addr,
                "--rounds",
                "100000",
                "--size",
                "200",
            ]);
        }

        let with_data = |records: &mut BTreeSet<String>| {
            for r in rules() {
                if let Some(name) = str_of(&r, "record")
                    && !prometheus.query(name).is_empty()
                {
                    records.insert(name.to_owned());
                }
            }
        };
        let mut recorded = BTreeSet::new();
        let phase1 = wait_for_alerts(
            &prometheus,
            &[
                ("NodesatPodThrottled", "throttled-0"),
                ("NodesatPodOOMKilled", "oom-0"),
                ("NodesatPodBlockedOnIO", "io-0"),
                ("NodesatPodLosingPackets", "net-0"),
            ],
        );
        eprintln!("phase 1 alerts: {phase1:?}");
        with_data(&mut recorded);
        let mut dashboard_data: BTreeMap<String, usize> = BTreeMap::new();
        let run_dashboard = |dashboard_data: &mut BTreeMap<String, usize>| {
            for (place, query) in dashboard_queries() {
                let q = substituted(&query, &host);
                // A range query since Prometheus started, as Grafana draws a panel or
                // places annotations over the dashboard's time range.
                let n = prometheus
                    .query_range(&q, scraping.elapsed(), Duration::from_secs(5))
                    .len();
                let e = dashboard_data.entry(place).or_default();
                *e = (*e).max(n);
            }
        };
        run_dashboard(&mut dashboard_data);
        io.stop();
        net.stop();
        drop(table);

        // Phase 2: a hog, three spinners per CPU, saturating the node.
        for _ in 0..3 * allowed_cpus().len() {
            hog.run(&["spin"]);
        }
        let phase2 = wait_for_alerts(
            &prometheus,
            &[
                ("NodesatPodWaitingForCPU", "hog-0"),
                ("NodesatNodeSaturated", host.as_str()),
            ],
        );
        eprintln!("phase 2 alerts: {phase2:?}");
        with_data(&mut recorded);
        run_dashboard(&mut dashboard_data);
        hog.stop();
        throttled.stop();

        // The idle pod never alerted; the throttled one was not taken for a CPU waiter.
        for (alert, who) in phase1.iter().chain(&phase2) {
            assert_ne!(who, "idle-0", "{alert} for the idle pod");
            assert!(
                !(alert == "NodesatPodWaitingForCPU" && who == "throttled-0"),
                "the throttled pod's waiting is its limit's: not NodesatPodWaitingForCPU"
            );
        }
        let all_records: BTreeSet<String> = rules()
            .iter()
            .filter_map(|r| str_of(r, "record").map(str::to_owned))
            .collect();
        let without: Vec<_> = all_records.difference(&recorded).collect();
        eprintln!(
            "recording rules with data: {} of {}",
            recorded.len(),
            all_records.len()
        );
        assert!(
            without.is_empty(),
            "recording rules without data: {without:?}"
        );

        // Every dashboard query returned data, but the throttle durations where the throttle
        // probe cannot attach.
        let throttle_attached = !prometheus
            .query(&format!(
                "nodesat_agent_probe_attached{{probe=\"throttle\", host=\"{host}\"}} == 1"
            ))
            .is_empty();
        let mut empty = Vec::new();
        for (place, n) in &dashboard_data {
            let query = dashboard_queries()
                .into_iter()
                .find(|(p, _)| p == place)
                .map(|(_, q)| q)
                .unwrap_or_default();
            if *n == 0 {
                if query.contains("nodesat_cpu_throttle_duration_seconds") && !throttle_attached {
                    eprintln!("{place}: no data, as the throttle probe is not attached here");
                } else {
                    empty.push(format!("{place}: {query}"));
                }
            }
        }
        eprintln!(
            "dashboard queries: {} with data of {}",
            dashboard_data.values().filter(|n| **n > 0).count(),
            dashboard_data.len()
        );
        assert!(
            empty.is_empty(),
            "dashboard queries with no data:\n{}",
            empty.join("\n")
        );
        drop(prometheus);
        let (status, _) = agent.stop();
        assert!(status.success(), "agent: {status}");
    }
}

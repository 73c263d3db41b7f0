//! Reading a VM's serial log: the sections init.sh prints between markers, what `nodesat
//! check` said about each probe, and what the agent's JSON reports showed.

use std::collections::BTreeMap;

use serde_json::{Value, json};

const BEGIN: &str = "@@nodesat-vm begin ";
const END: &str = "@@nodesat-vm end ";
const DONE: &str = "@@nodesat-vm done@@";
const AT: &str = "@@nodesat-vm at ";

/// One section of the log: its lines and the exit code init.sh printed at its end.
#[derive(Debug, Default)]
pub struct Section {
    pub lines: Vec<String>,
    pub rc: Option<i32>,
    /// Uptimes init.sh printed in it: the first at its start, the last at its end.
    pub at: Vec<f64>,
}

impl Section {
    /// How long it took, if it began and ended.
    pub fn seconds(&self) -> Option<f64> {
        match self.at[..] {
            [first, .., last] => Some(last - first),
            _ => None,
        }
    }
}

/// What one VM's log says.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sections: BTreeMap<String, Section>,
    /// init.sh reached its end.
    pub done: bool,
    /// `uname -r` as `nodesat check` printed it.
    pub release: Option<String>,
    /// Per probe, in the order check printed them: the result of each variant column.
    pub probes: Vec<ProbeCheck>,
    pub run: RunFigures,
    /// The fallback runs (see [`FALLBACK_RUNS`]): forced variant and figures.
    pub fallback_runs: Vec<(String, RunFigures)>,
    /// The scenario on pure cgroup v1 (`run-v1`), if it ran.
    pub v1_run: Option<RunFigures>,
    /// The offset checks (see [`OFFSET_RUNS`]): the variant asked for and what
    /// `nodesat-offsets` reported (its JSON line), if it got that far.
    pub offset_runs: Vec<(String, Option<Value>)>,
}

#[derive(Debug)]
pub struct ProbeCheck {
    pub probe: String,
    pub hooks: Vec<String>,
    /// (variant, "ok" / "FAILED" / "n/a"), in check's column order.
    pub variants: Vec<(String, String)>,
    /// The variant check says the agent will use, or `None` when none can attach.
    pub chosen: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct RunFigures {
    pub ready: bool,
    /// Probe → the variant the running agent attached it with (from the `ready` line).
    pub attached: Vec<(String, String)>,
    pub intervals: u64,
    pub final_report: bool,
    /// JSON lines that did not parse (a kernel message in the middle of one, say).
    pub garbled_lines: u64,
    /// The kind of identity the hog's cgroup was reported with (`pod_container` for the
    /// kubelet-shaped one of the v1 run).
    pub hog_kind: Option<String>,
    pub hog_periods: u64,
    pub hog_throttled_periods: u64,
    pub hog_throttled_ns: u64,
    /// Individual throttle durations of the hog (throttle probe): how many and their sum.
    pub hog_durations: u64,
    pub hog_durations_ns: u64,
    /// How far ktime and the scheduler's clock moved over the run (`nodesat-offsets clocks`
    /// before and after it), ns: cpu.stat counts in the one, the agent's durations in the
    /// other, and under TCG their rates differ.
    pub clocks: Option<(u64, u64)>,
    /// Run-queue figures of the /busy cgroup: waits that ended, the highest p99 and the highest
    /// average number of waiting tasks of any interval.
    pub busy_events: u64,
    pub busy_p99_ns: u64,
    pub busy_waiting_tasks: f64,
    /// The highest run-queue length of any CPU in any interval.
    pub max_cpu_runqueue_length: f64,
    /// Over the full intervals (not the final, partial one), for comparing runs: how many,
    /// the sums of /busy's average number of waiting tasks and of the node's run-queue
    /// length (all CPUs), and /busy's p99 in each.
    pub full_intervals: u64,
    pub busy_waiting_sum: f64,
    pub runqueue_length_sum: f64,
    pub busy_p99s: Vec<u64>,
}

pub fn parse(log: &str) -> Outcome {
    let mut out = Outcome::default();
    let mut current: Option<String> = None;
    for line in log.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(i) = line.find(BEGIN) {
            let name = line[i + BEGIN.len()..].trim_end_matches("@@").to_owned();
            out.sections.entry(name.clone()).or_default();
            current = Some(name);
        } else if let Some(i) = line.find(END) {
            let rest = line[i + END.len()..].trim_end_matches("@@");
            if let Some((name, rc)) = rest.split_once(" rc=")
                && let Some(s) = out.sections.get_mut(name)
            {
                s.rc = rc.trim().parse().ok();
            }
            current = None;
        } else if line.contains(DONE) {
            out.done = true;
        } else if let Some(i) = line.find(AT)
            && let Some(name) = &current
        {
            if let Ok(t) = line[i + AT.len()..].trim_end_matches("@@").parse() {
                out.sections.get_mut(name).expect("opened above").at.push(t);
            }
        } else if let Some(name) = &current {
            let s = out.sections.get_mut(name).expect("opened above");
            s.lines.push(line.to_owned());
        }
    }
    if let Some(check) = out.sections.get("check") {
        parse_check(&check.lines, &mut out.release, &mut out.probes);
    }
    if let Some(run) = out.sections.get("run") {
        out.run = parse_run(&run.lines);
    }
    for forced in FALLBACK_RUNS {
        if let Some(run) = out.sections.get(&format!("run-{forced}")) {
            out.fallback_runs
                .push((forced.to_owned(), parse_run(&run.lines)));
        }
    }
    out.v1_run = out.sections.get("run-v1").map(|run| parse_run(&run.lines));
    for variant in OFFSET_RUNS {
        if let Some(run) = out.sections.get(&format!("offsets-{variant}")) {
            let json = run
                .lines
                .iter()
                .find_map(|l| serde_json::from_str::<Value>(l.split_once(OFFSETS_LINE)?.1).ok());
            out.offset_runs.push((variant.to_owned(), json));
        }
    }
    out
}

/// The scenario again with every probe forced to a fallback variant (see init.sh).
pub const FALLBACK_RUNS: [&str; 3] = ["raw_tracepoint", "tracepoint", "kprobe"];

/// The offset check with the agent's `--probe-variant` at each of these (see init.sh).
pub const OFFSET_RUNS: [&str; 4] = ["auto", "raw_tracepoint", "tracepoint", "kprobe"];

/// What starts nodesat-offsets' result line.
pub const OFFSETS_LINE: &str = "nodesat-offsets-json ";

/// Attach variants, best first: the agent must use the first one `nodesat check` found
/// working (the tracepoint kinds for the tracepoint probes, fentry before kprobe for the
/// kernel-function probe).
pub const PREFERENCE: [&str; 5] = ["tp_btf", "raw_tracepoint", "tracepoint", "fentry", "kprobe"];

impl RunFigures {
    /// The variant the agent attached `probe` with, if it did.
    pub fn variant(&self, probe: &str) -> Option<&str> {
        self.attached
            .iter()
            .find(|(p, _)| p == probe)
            .map(|(_, v)| v.as_str())
    }

    /// "fentry 98%": the throttle probe's variant and its durations' sum as a share of
    /// cpu.stat's throttled time; "-" when it did not attach.
    pub fn durations_cell(&self) -> String {
        match self.variant("throttle") {
            Some(v) => format!("{v} {:.0}%", 100.0 * self.durations_ratio()),
            None => "-".into(),
        }
    }

    /// cpu.stat's throttled time in ktime ns: converted at the rate the two clocks moved over
    /// the run (as counted where they could not be read).
    pub fn hog_throttled_ktime_ns(&self) -> u64 {
        match self.clocks {
            Some((ktime, sched)) if sched > 0 => {
                (self.hog_throttled_ns as u128 * ktime as u128 / sched as u128) as u64
            }
            _ => self.hog_throttled_ns,
        }
    }

    /// The throttle durations' sum over cpu.stat's throttled time: both are spans of the
    /// scheduler's clock (`rq_clock - throttled_clock`, the kernel's own), compared as they are.
    fn durations_ratio(&self) -> f64 {
        self.hog_durations_ns as f64 / self.hog_throttled_ns.max(1) as f64
    }

    /// Mean over the full intervals of /busy's waiting tasks and of the node's run-queue
    /// length, and the median of /busy's p99s.
    pub fn busy_waiting(&self) -> f64 {
        self.busy_waiting_sum / self.full_intervals.max(1) as f64
    }

    pub fn runqueue_length(&self) -> f64 {
        self.runqueue_length_sum / self.full_intervals.max(1) as f64
    }

    pub fn busy_p99(&self) -> u64 {
        let mut v = self.busy_p99s.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    }

    /// Why a run with forced variants differs from the preferred run: the same load must
    /// give the same run-queue figures, within 25% (the average numbers of waiting tasks,
    /// sums of every wait) and a factor of 4 (/busy's p99: two of its log2 buckets; a tail
    /// under TCG swings: 47–134 ms between intervals of one run was seen).
    pub fn figures_problem(&self, preferred: &RunFigures) -> Option<String> {
        if self.full_intervals == 0 || preferred.full_intervals == 0 {
            return Some("no full interval to compare".into());
        }
        let close = |a: f64, b: f64, rel: f64| (a - b).abs() <= rel * b.abs().max(1e-9);
        let mut why = Vec::new();
        if !close(self.busy_waiting(), preferred.busy_waiting(), 0.25) {
            why.push(format!(
                "/busy waiting tasks {:.2} vs {:.2}",
                self.busy_waiting(),
                preferred.busy_waiting()
            ));
        }
        if !close(self.runqueue_length(), preferred.runqueue_length(), 0.25) {
            why.push(format!(
                "run-queue length {:.2} vs {:.2}",
                self.runqueue_length(),
                preferred.runqueue_length()
            ));
        }
        let (p, q) = (self.busy_p99() as f64, preferred.busy_p99() as f64);
        if !(q / 4.0..=q * 4.0).contains(&p) {
            why.push(format!(
                "/busy p99 {} vs {}",
                short_ns(self.busy_p99()),
                short_ns(preferred.busy_p99())
            ));
        }
        (!why.is_empty()).then(|| why.join(", "))
    }

    /// Why the throttle durations disagree with cpu.stat's throttled time (when the throttle
    /// probe attached): they must exist and sum to within 5% of it (they are the kernel's own
    /// spans; 100% in every run of the three kernels; 5% leaves room for a throttle that ends
    /// between the agent's reads of cpu.stat and of the histograms).
    fn durations_problem(&self) -> Option<String> {
        self.variant("throttle")?;
        if self.hog_durations == 0 {
            return Some(
                "the throttle probe is attached but recorded no throttle durations".into(),
            );
        }
        let ratio = self.durations_ratio();
        // kprobes are skipped while another BPF program or a BPF map syscall (the agent's own
        // reads) runs on the CPU: whole throttles can be missing there, never extra time.
        let missing = self
            .hog_throttled_periods
            .saturating_sub(self.hog_durations);
        let kprobe_missed = self.variant("throttle") == Some("kprobe")
            && missing > 0
            && self.hog_durations_ns < self.hog_throttled_ns
            && self.hog_throttled_ns - self.hog_durations_ns <= missing * 200_000_000;
        (!(0.95..=1.05).contains(&ratio) && !kprobe_missed).then(|| {
            format!(
                "throttle durations sum to {} ns against cpu.stat's {} ns (ratio {ratio:.3})",
                self.hog_durations_ns, self.hog_throttled_ns,
            )
        })
    }
}

/// The probes that hook kernel functions (fentry, else kprobe) rather than tracepoints.
const FUNCTION_PROBES: [&str; 2] = ["throttle", "oom_constraint"];

/// The `kernel` line, the PROBE table and the "X will attach with V" summary.
fn parse_check(lines: &[String], release: &mut Option<String>, probes: &mut Vec<ProbeCheck>) {
    let mut columns: Vec<String> = Vec::new();
    let mut in_table = false;
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"kernel") && release.is_none() {
            *release = words.get(1).map(|w| w.to_string());
        } else if words.len() > 2 && words[0] == "PROBE" && words[1] == "HOOK" {
            columns = words[2..].iter().map(|w| w.to_string()).collect();
            in_table = true;
        } else if in_table
            && !line.starts_with(' ')
            && words.len() == columns.len() + 2
            && words[2..]
                .iter()
                .all(|w| ["ok", "FAILED", "n/a"].contains(w))
        {
            let variants: Vec<(String, String)> = columns
                .iter()
                .cloned()
                .zip(words[2..].iter().map(|w| w.to_string()))
                .collect();
            match probes.iter_mut().find(|p| p.probe == words[0]) {
                Some(p) => {
                    p.hooks.push(words[1].to_owned());
                    // A variant counts as ok for the probe only if every hook attached.
                    for ((_, cell), (_, new)) in p.variants.iter_mut().zip(&variants) {
                        if cell == "ok" && new != "ok" {
                            *cell = new.clone();
                        }
                    }
                }
                None => probes.push(ProbeCheck {
                    probe: words[0].to_owned(),
                    hooks: vec![words[1].to_owned()],
                    variants,
                    chosen: None,
                }),
            }
        } else if in_table && words.is_empty() && !probes.is_empty() {
            in_table = false;
        } else if let Some((probe, variant)) = line.split_once(" will attach with ")
            && let Some(p) = probes.iter_mut().find(|p| p.probe == probe.trim())
        {
            p.chosen = Some(variant.trim().to_owned());
        }
    }
}

fn parse_run(lines: &[String]) -> RunFigures {
    let mut f = RunFigures::default();
    let samples: Vec<(u64, u64)> = lines.iter().filter_map(|l| parse_clocks(l)).collect();
    if let (Some(a), Some(b)) = (samples.first(), samples.last())
        && samples.len() >= 2
    {
        f.clocks = Some((b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)));
    }
    for line in lines.iter().filter(|l| l.starts_with('{')) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            f.garbled_lines += 1;
            continue;
        };
        match v["type"].as_str() {
            Some("ready") => {
                f.ready = true;
                for h in v["probes"].as_array().into_iter().flatten() {
                    if h["attached"].as_bool() == Some(true)
                        && let (Some(p), Some(var)) = (h["probe"].as_str(), h["variant"].as_str())
                        && !f.attached.iter().any(|(q, _)| q == p)
                    {
                        f.attached.push((p.to_owned(), var.to_owned()));
                    }
                }
            }
            Some("interval") => {
                f.intervals += 1;
                let last = v["final"].as_bool() == Some(true);
                f.final_report |= last;
                if !last {
                    f.full_intervals += 1;
                    f.runqueue_length_sum += v["cpus"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["runqueue_length"].as_f64())
                        .sum::<f64>();
                }
                for c in v["cgroups"].as_array().into_iter().flatten() {
                    let name = c["name"].as_str().unwrap_or("").trim_start_matches('/');
                    let u = |v: &Value| v.as_u64().unwrap_or(0);
                    if name == "hog" || name == "hog2" || name.starts_with("kubepods/") {
                        if let Some(kind) = c["kind"].as_str() {
                            f.hog_kind = Some(kind.to_owned());
                        }
                        let t = &c["throttling"];
                        f.hog_periods += u(&t["periods"]);
                        f.hog_throttled_periods += u(&t["throttled_periods"]);
                        f.hog_throttled_ns += u(&t["throttled_ns"]);
                        f.hog_durations += u(&t["durations"]["count"]);
                        f.hog_durations_ns += u(&t["durations"]["sum_ns"]);
                    } else if name == "busy" {
                        let r = &c["runqueue"];
                        if !last {
                            f.busy_waiting_sum += r["waiting_tasks"].as_f64().unwrap_or(0.0);
                            f.busy_p99s.push(u(&r["latency_p99_ns"]));
                        }
                        f.busy_events += u(&r["events"]);
                        f.busy_p99_ns = f.busy_p99_ns.max(u(&r["latency_p99_ns"]));
                        f.busy_waiting_tasks = f
                            .busy_waiting_tasks
                            .max(r["waiting_tasks"].as_f64().unwrap_or(0.0));
                    }
                }
                for cpu in v["cpus"].as_array().into_iter().flatten() {
                    f.max_cpu_runqueue_length = f
                        .max_cpu_runqueue_length
                        .max(cpu["runqueue_length"].as_f64().unwrap_or(0.0));
                }
            }
            _ => {}
        }
    }
    f
}

/// `clocks ktime_ns K sched_ns S` (`nodesat-offsets clocks`) → (K, S).
fn parse_clocks(line: &str) -> Option<(u64, u64)> {
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["clocks", "ktime_ns", k, "sched_ns", s] => Some((k.parse().ok()?, s.parse().ok()?)),
        _ => None,
    }
}

impl Outcome {
    /// Why this kernel fails, empty when it passes; `timed_out`: qemu was killed.
    pub fn failures(&self, timed_out: bool) -> Vec<String> {
        let mut why = Vec::new();
        let rc = |name: &str| self.sections.get(name).and_then(|s| s.rc);
        if timed_out {
            why.push("killed at the timeout (--timeout): the VM never powered off".to_owned());
        }
        if !self.sections.contains_key("setup") {
            why.push("init never started (no setup section: kernel panic?)".to_owned());
            return why;
        }
        if rc("setup") != Some(0) {
            why.push(format!(
                "setup failed ({} mounts or controllers failed)",
                rc("setup").map_or("?".into(), |n| n.to_string())
            ));
        }
        match rc("check") {
            Some(0) => {}
            Some(n) => why.push(format!("`nodesat check` exited {n}")),
            None => why.push("`nodesat check` did not finish".to_owned()),
        }
        let r = &self.run;
        // The preferred variant where offered: the agent's choice is the best one check found
        // working, and the running agent attached with it.
        for p in &self.probes {
            let best = PREFERENCE.iter().find(|v| {
                p.variants
                    .iter()
                    .any(|(name, cell)| name == *v && cell == "ok")
            });
            match (best, &p.chosen) {
                (None, None) => why.push(format!("no variant of the {} probe attaches", p.probe)),
                (Some(best), Some(chosen)) if chosen != best => why.push(format!(
                    "check says {} will attach with {chosen}, but {best} works",
                    p.probe
                )),
                (Some(best), None) => why.push(format!(
                    "check names no variant for {}, but {best} works",
                    p.probe
                )),
                _ => {}
            }
            if let (Some(chosen), Some(used)) = (&p.chosen, r.variant(&p.probe))
                && chosen != used
            {
                why.push(format!(
                    "the agent attached {} with {used}, check said {chosen}",
                    p.probe
                ));
            }
        }
        if !r.ready {
            why.push("`nodesat run` never reported ready".to_owned());
        }
        match rc("run") {
            Some(0) => {}
            Some(n) => why.push(format!("`nodesat run` exited {n} after SIGTERM")),
            None => why.push("the scenario did not finish".to_owned()),
        }
        if r.ready && r.intervals == 0 {
            why.push("no interval report".to_owned());
        } else if r.ready && !r.final_report {
            why.push("no final report after SIGTERM".to_owned());
        }
        if r.intervals > 0 && r.hog_throttled_periods == 0 {
            why.push("the /hog cgroup (cpu.max 20000 100000) was never reported throttled".into());
        }
        if r.intervals > 0 && r.busy_events == 0 {
            why.push("no run-queue figures for the /busy cgroup".into());
        }
        if let Some(p) = r.durations_problem() {
            why.push(p);
        }
        for (forced, f) in &self.fallback_runs {
            let section = format!("run-{forced}");
            if rc(&section) != Some(0) {
                why.push(format!("the {forced} run did not finish cleanly"));
                continue;
            }
            for (probe, variant) in &f.attached {
                // The probes on kernel functions (fentry, kprobe) and those on tracepoints.
                let on_functions = FUNCTION_PROBES.contains(&probe.as_str());
                let want = match forced.as_str() {
                    "kprobe" if on_functions => Some("kprobe"),
                    v @ ("raw_tracepoint" | "tracepoint") if !on_functions => Some(v),
                    _ => None,
                };
                if let Some(want) = want
                    && variant != want
                {
                    why.push(format!(
                        "{forced} run: {probe} attached with {variant}, not {want}"
                    ));
                }
            }
            if f.hog_throttled_periods == 0 {
                why.push(format!(
                    "{forced} run: the capped hog was never reported throttled"
                ));
            }
            if f.busy_events == 0 {
                why.push(format!("{forced} run: no run-queue figures for /busy"));
            }
            if let Some(p) = f.durations_problem() {
                why.push(format!("{forced} run: {p}"));
            }
            if let Some(p) = f.figures_problem(r) {
                why.push(format!(
                    "{forced} run: not the preferred variants' figures: {p}"
                ));
            }
        }
        match &self.v1_run {
            None => why.push("no pure cgroup v1 run".into()),
            Some(_) if rc("v1-setup") != Some(0) => {
                why.push("pure cgroup v1: the v1 hierarchies could not be set up".into())
            }
            Some(_) if rc("run-v1") != Some(0) => {
                why.push("pure cgroup v1: the run did not finish cleanly".into())
            }
            Some(f) => {
                if f.hog_kind.as_deref() != Some("pod_container") {
                    why.push(format!(
                        "pure cgroup v1: the hog's kubelet-shaped cgroup was reported as {:?}, not a pod container",
                        f.hog_kind
                    ));
                }
                if f.hog_throttled_periods == 0 {
                    why.push("pure cgroup v1: the capped hog was never reported throttled".into());
                }
                if f.busy_events == 0 {
                    why.push("pure cgroup v1: no run-queue figures for /busy".into());
                }
                if let Some(p) = f.durations_problem() {
                    why.push(format!("pure cgroup v1: {p}"));
                }
                if let Some(p) = f.figures_problem(r) {
                    why.push(format!("pure cgroup v1: not the v2 run's figures: {p}"));
                }
            }
        }
        for (variant, result) in &self.offset_runs {
            let section = format!("offsets-{variant}");
            let Some(result) = result else {
                why.push(format!(
                    "the offset check ({variant}) gave no result (exit {:?})",
                    rc(&section)
                ));
                continue;
            };
            let bad: Vec<String> = result["offsets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|o| o["status"] != "pass" && o["status"] != "n/a")
                .map(|o| {
                    format!(
                        "{} {}",
                        o["name"].as_str().unwrap_or("?"),
                        o["status"].as_str().unwrap_or("?")
                    )
                })
                .chain(
                    result["errors"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| e.as_str().unwrap_or("?").to_owned()),
                )
                .collect();
            if !bad.is_empty() || rc(&section) != Some(0) {
                why.push(format!(
                    "offset check ({variant}, exit {:?}): {}",
                    rc(&section),
                    if bad.is_empty() {
                        "failed".into()
                    } else {
                        bad.join("; ")
                    }
                ));
            }
        }
        for variant in OFFSET_RUNS {
            if !self.offset_runs.iter().any(|(v, _)| v == variant) && self.done {
                why.push(format!("the offset check ({variant}) did not run"));
            }
        }
        if r.garbled_lines > 0 {
            why.push(format!("{} JSON lines did not parse", r.garbled_lines));
        }
        if !self.done && !timed_out && why.is_empty() {
            why.push("init.sh did not reach its end".to_owned());
        }
        why
    }

    pub fn json(&self) -> Value {
        let r = &self.run;
        let pairs = |v: &[(String, String)]| -> Value {
            Value::Object(
                v.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            )
        };
        json!({
            "release": self.release,
            "setup_rc": self.sections.get("setup").and_then(|s| s.rc),
            // Boot (to init's first line) and each section, in seconds of guest uptime.
            "boot_seconds": self.sections.get("setup").and_then(|s| s.at.first()).map(|t| round2(*t)),
            "section_seconds": Value::Object(
                self.sections
                    .iter()
                    .filter_map(|(name, s)| Some((name.clone(), json!(round2(s.seconds()?)))))
                    .collect(),
            ),
            "check": {
                "rc": self.sections.get("check").and_then(|s| s.rc),
                "probes": self.probes.iter().map(|p| json!({
                    "probe": p.probe,
                    "hooks": p.hooks,
                    "variants": pairs(&p.variants),
                    "chosen": p.chosen,
                })).collect::<Vec<_>>(),
            },
            "run": {
                "rc": self.sections.get("run").and_then(|s| s.rc),
                "ready": r.ready,
                "attached": pairs(&r.attached),
                "intervals": r.intervals,
                "final_report": r.final_report,
                "hog_throttling": {
                    "periods": r.hog_periods,
                    "throttled_periods": r.hog_throttled_periods,
                    "throttled_ns": r.hog_throttled_ns,
                    // cpu.stat's figure in ktime, the agent's clock (see RunFigures::clocks).
                    "throttled_ktime_ns": r.hog_throttled_ktime_ns(),
                },
                "busy_runqueue": {
                    "events": r.busy_events,
                    "max_latency_p99_ns": r.busy_p99_ns,
                    "max_waiting_tasks": r.busy_waiting_tasks,
                },
                "max_cpu_runqueue_length": r.max_cpu_runqueue_length,
                "garbled_lines": r.garbled_lines,
            },
            "fallback_runs": self.fallback_runs.iter().map(|(forced, f)| json!({
                "forced": forced,
                "rc": self.sections.get(&format!("run-{forced}")).and_then(|s| s.rc),
                "attached": pairs(&f.attached),
                "busy_waiting_tasks": round2(f.busy_waiting()),
                "runqueue_length": round2(f.runqueue_length()),
                "busy_p99_ns": f.busy_p99(),
                "throttled_periods": f.hog_throttled_periods,
                "throttled_ns": f.hog_throttled_ns,
                "throttled_ktime_ns": f.hog_throttled_ktime_ns(),
                "durations": f.hog_durations,
                "durations_ns": f.hog_durations_ns,
            })).collect::<Vec<_>>(),
            "v1_run": self.v1_run.as_ref().map(|f| json!({
                "rc": self.sections.get("run-v1").and_then(|s| s.rc),
                "setup_rc": self.sections.get("v1-setup").and_then(|s| s.rc),
                "attached": pairs(&f.attached),
                "hog_kind": f.hog_kind,
                "busy_waiting_tasks": round2(f.busy_waiting()),
                "runqueue_length": round2(f.runqueue_length()),
                "busy_p99_ns": f.busy_p99(),
                "throttled_periods": f.hog_throttled_periods,
                "throttled_ns": f.hog_throttled_ns,
                "throttled_ktime_ns": f.hog_throttled_ktime_ns(),
                "durations": f.hog_durations,
                "durations_ns": f.hog_durations_ns,
            })),
            "preferred_figures": {
                "busy_waiting_tasks": round2(r.busy_waiting()),
                "runqueue_length": round2(r.runqueue_length()),
                "busy_p99_ns": r.busy_p99(),
                "durations": r.hog_durations,
                "durations_ns": r.hog_durations_ns,
            },
            "offset_checks": self.offset_runs.iter().map(|(variant, result)| json!({
                "variant": variant,
                "rc": self.sections.get(&format!("offsets-{variant}")).and_then(|s| s.rc),
                "result": result,
            })).collect::<Vec<_>>(),
            "done": self.done,
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// "16.8ms", "32.8µs": short durations for the table.
pub fn short_ns(ns: u64) -> String {
    match ns {
        0 => "-".to_owned(),
        n if n >= 1_000_000_000 => format!("{:.2}s", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}ms", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}µs", n as f64 / 1e3),
        n => format!("{n}ns"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\x1bc\x1b[?7lSeaBIOS\r
@@nodesat-vm begin setup@@\r
@@nodesat-vm at 3.52@@\r
kernel 6.1.0-56-amd64, 2 CPUs\r
@@nodesat-vm at 3.60@@\r
@@nodesat-vm end setup rc=0@@\r
@@nodesat-vm begin check@@\r
kernel        6.1.0-56-amd64 (x86_64)\r
BTF           present (/sys/kernel/btf/vmlinux)\r
\r
PROBE      HOOK               tp_btf         raw_tracepoint tracepoint     kprobe         fentry         \r
runqueue   sched_switch       ok             ok             ok             n/a            n/a            \r
runqueue   sched_wakeup       ok             ok             ok             n/a            n/a            \r
tcp        tcp_retransmit_skb FAILED         ok             ok             n/a            n/a            \r
  tcp tp_btf failed: nope\r
\r
runqueue will attach with tp_btf\r
tcp will attach with raw_tracepoint\r
ready: nodesat can run here\r
@@nodesat-vm end check rc=0@@\r
@@nodesat-vm begin run@@\r
{\"type\":\"ready\",\"probes\":[{\"probe\":\"runqueue\",\"hook\":\"sched_switch\",\"variant\":\"tp_btf\",\"attached\":true}]}\r
{\"type\":\"interval\",\"final\":false,\"cgroups\":[{\"name\":\"/hog\",\"runqueue\":{},\"throttling\":{\"periods\":20,\"throttled_periods\":19,\"throttled_ns\":5}},{\"name\":\"/busy\",\"runqueue\":{\"events\":100,\"latency_p99_ns\":16000000,\"waiting_tasks\":2.5}}],\"cpus\":[{\"runqueue_length\":1.5}]}\r
{\"type\":\"interval\",\"final\":true,\"cgroups\":[],\"cpus\":[]}\r
@@nodesat-vm end run rc=0@@\r
@@nodesat-vm begin v1-setup@@\r
@@nodesat-vm end v1-setup rc=0@@\r
@@nodesat-vm begin run-v1@@\r
{\"type\":\"ready\",\"probes\":[{\"probe\":\"runqueue\",\"hook\":\"sched_switch\",\"variant\":\"tp_btf\",\"attached\":true}]}\r
{\"type\":\"interval\",\"final\":false,\"cgroups\":[{\"name\":\"/kubepods/burstable/pod5f/4c\",\"kind\":\"pod_container\",\"runqueue\":{},\"throttling\":{\"periods\":20,\"throttled_periods\":19,\"throttled_ns\":5}},{\"name\":\"/busy\",\"runqueue\":{\"events\":100,\"latency_p99_ns\":16000000,\"waiting_tasks\":2.5}}],\"cpus\":[{\"runqueue_length\":1.5}]}\r
{\"type\":\"interval\",\"final\":true,\"cgroups\":[],\"cpus\":[]}\r
@@nodesat-vm end run-v1 rc=0@@\r
@@nodesat-vm begin offsets-auto@@\r
OFF_SOCK_CGROUP  sock.sk_cgrp_data.cgroup  pass  tcp-cgroup\r
nodesat-offsets-json {\"offsets\":[{\"name\":\"OFF_SOCK_CGROUP\",\"status\":\"pass\"},{\"name\":\"OFF_CSS_CGROUP\",\"status\":\"n/a\"}],\"counts\":{\"pass\":1,\"fail\":0},\"errors\":[]}\r
@@nodesat-vm end offsets-auto rc=0@@\r
@@nodesat-vm begin offsets-raw_tracepoint@@\r
nodesat-offsets-json {\"offsets\":[],\"errors\":[]}\r
@@nodesat-vm end offsets-raw_tracepoint rc=0@@\r
@@nodesat-vm begin offsets-tracepoint@@\r
nodesat-offsets-json {\"offsets\":[],\"errors\":[]}\r
@@nodesat-vm end offsets-tracepoint rc=0@@\r
@@nodesat-vm begin offsets-kprobe@@\r
nodesat-offsets-json {\"offsets\":[],\"errors\":[]}\r
@@nodesat-vm end offsets-kprobe rc=0@@\r
@@nodesat-vm done@@\r
";

    #[test]
    fn parses_a_passing_log() {
        let o = parse(LOG);
        assert_eq!(o.release.as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!(o.probes.len(), 2);
        assert_eq!(o.probes[0].hooks, ["sched_switch", "sched_wakeup"]);
        assert_eq!(o.probes[0].chosen.as_deref(), Some("tp_btf"));
        assert_eq!(o.probes[1].variants[0], ("tp_btf".into(), "FAILED".into()));
        assert_eq!(o.probes[1].chosen.as_deref(), Some("raw_tracepoint"));
        assert_eq!(o.run.intervals, 2);
        assert!(o.run.ready && o.run.final_report && o.done);
        assert_eq!(o.run.hog_throttled_periods, 19);
        assert_eq!(o.run.busy_p99_ns, 16_000_000);
        assert_eq!(o.run.attached, [("runqueue".into(), "tp_btf".into())]);
        let setup = &o.sections["setup"];
        assert_eq!(setup.lines, ["kernel 6.1.0-56-amd64, 2 CPUs"]);
        assert!((setup.seconds().unwrap() - 0.08).abs() < 1e-9);
        assert_eq!(o.sections["check"].seconds(), None);
        assert_eq!(o.failures(false), Vec::<String>::new());
        let v1 = o.v1_run.as_ref().unwrap();
        assert_eq!(v1.hog_kind.as_deref(), Some("pod_container"));
        assert_eq!(v1.hog_throttled_periods, 19);
    }

    #[test]
    fn a_v1_run_that_does_not_name_the_pod_fails() {
        let log = LOG.replace(r#""kind":"pod_container","#, r#""kind":"cgroup","#);
        let why = parse(&log).failures(false);
        assert!(
            why.iter()
                .any(|w| w.contains("pure cgroup v1") && w.contains("cgroup")),
            "{why:?}"
        );
        let log = LOG.replace("end v1-setup rc=0", "end v1-setup rc=1");
        assert!(
            parse(&log)
                .failures(false)
                .iter()
                .any(|w| w.contains("set up"))
        );
    }

    #[test]
    fn a_failing_or_missing_offset_check_fails() {
        let log = LOG.replace(
            r#""OFF_SOCK_CGROUP","status":"pass""#,
            r#""OFF_SOCK_CGROUP","status":"fail""#,
        );
        assert_ne!(log, LOG);
        let why = parse(&log).failures(false);
        assert!(
            why.iter().any(|w| w.contains("OFF_SOCK_CGROUP fail")),
            "{why:?}"
        );
        let log = LOG.replace("begin offsets-kprobe", "begin something-else");
        let why = parse(&log).failures(false);
        assert!(
            why.iter()
                .any(|w| w.contains("offset check (kprobe) did not run")),
            "{why:?}"
        );
    }

    #[test]
    fn a_worse_variant_than_offered_fails() {
        // check found raw_tracepoint working for tcp, but names tracepoint.
        let log = LOG.replace(
            "tcp will attach with raw_tracepoint",
            "tcp will attach with tracepoint",
        );
        let why = parse(&log).failures(false);
        assert!(
            why.iter()
                .any(|w| w.contains("tcp will attach with tracepoint, but raw_tracepoint works")),
            "{why:?}"
        );
    }

    #[test]
    fn forced_runs_must_give_the_preferred_figures() {
        let base = RunFigures {
            full_intervals: 2,
            busy_waiting_sum: 4.0,
            runqueue_length_sum: 6.0,
            busy_p99s: vec![30_000_000, 32_000_000],
            ..RunFigures::default()
        };
        let mut same = base.clone();
        same.busy_waiting_sum = 4.4;
        same.busy_p99s = vec![20_000_000, 40_000_000];
        assert_eq!(same.figures_problem(&base), None);
        let mut fewer = base.clone();
        fewer.busy_waiting_sum = 2.0;
        assert!(
            fewer
                .figures_problem(&base)
                .unwrap()
                .contains("waiting tasks")
        );
        let mut slower = base.clone();
        slower.busy_p99s = vec![140_000_000];
        assert!(slower.figures_problem(&base).unwrap().contains("p99"));
    }

    #[test]
    fn a_panic_before_init_fails() {
        let o = parse("Kernel panic - not syncing: VFS: Unable to mount root fs\n");
        assert_eq!(o.failures(false).len(), 1);
        assert!(!o.failures(true).is_empty());
    }

    #[test]
    fn a_failed_check_fails() {
        let log = LOG.replace("end check rc=0", "end check rc=69");
        assert!(
            parse(&log)
                .failures(false)
                .contains(&"`nodesat check` exited 69".to_owned())
        );
    }
}

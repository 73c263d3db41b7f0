//! Turns the raw runs into medians, ratios and target verdicts; prints them as a table and
//! as JSON.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{Options, Results, Run};

/// Target: the agent keeps at least this share of the baseline throughput.
const AGENT_MIN_SHARE: f64 = 0.90;
/// Target: the agent loses at most this many times the throughput the empty programs lose.
const ADDED_COST_MAX: f64 = 2.0;

/// Median storm throughput of one configuration, with the samples it came from.
#[derive(Clone, Debug)]
struct Throughput {
    median: f64,
    samples: Vec<f64>,
}

impl Throughput {
    fn new(samples: Vec<f64>) -> Self {
        Self {
            median: median(samples.iter().copied()).unwrap_or(f64::NAN),
            samples,
        }
    }

    fn json(&self, baseline: f64) -> Value {
        json!({
            "round_trips_per_s": self.median,
            "vs_baseline": self.median / baseline,
            "samples": self.samples,
        })
    }
}

/// Median per-hook figures of floor and agent.
#[derive(Clone, Debug)]
struct HookRow {
    hook: String,
    floor_ns: Option<f64>,
    agent_ns: Option<f64>,
    floor_events_per_s: Option<f64>,
    agent_events_per_s: Option<f64>,
    /// The `--before` agent's ns/event, if it was measured.
    before_ns: Option<f64>,
}

impl HookRow {
    fn agent_over_floor(&self) -> Option<f64> {
        Some(self.agent_ns? / self.floor_ns?)
    }
}

/// Floor and agent for one requested probe variant.
#[derive(Clone, Debug)]
struct VariantSummary {
    requested: &'static str,
    floor_variant: String,
    agent_variant: String,
    floor: Throughput,
    agent: Throughput,
    /// The `--before` agent's throughput, if it was measured.
    before: Option<Throughput>,
    hooks: Vec<HookRow>,
}

impl VariantSummary {
    /// The agent's share of the baseline throughput.
    fn agent_share(&self, baseline: f64) -> f64 {
        self.agent.median / baseline
    }

    /// Throughput the agent loses, over throughput the empty programs lose; `None` when the
    /// floor lost nothing measurable.
    fn added_cost(&self, baseline: f64) -> Option<f64> {
        self.added_cost_of(&self.agent, baseline)
    }

    /// [`Self::added_cost`] of any agent's throughput `t`.
    fn added_cost_of(&self, t: &Throughput, baseline: f64) -> Option<f64> {
        let floor_loss = 1.0 - self.floor.median / baseline;
        let agent_loss = 1.0 - t.median / baseline;
        (floor_loss > 0.0).then(|| agent_loss / floor_loss)
    }

    /// Whether the agent's loss is within `ADDED_COST_MAX` times the floor's (a floor that
    /// measured faster than the baseline counts as having lost nothing).
    fn added_cost_met(&self, baseline: f64) -> bool {
        let floor_loss = (1.0 - self.floor.median / baseline).max(0.0);
        let agent_loss = 1.0 - self.agent.median / baseline;
        agent_loss <= ADDED_COST_MAX * floor_loss
    }
}

/// Everything the bench reports.
#[derive(Clone, Debug)]
pub struct Summary {
    duration_s: f64,
    repeat: usize,
    baseline: Throughput,
    variants: Vec<VariantSummary>,
}

impl Summary {
    pub fn new(opts: &Options, results: &Results) -> Self {
        let variants = results
            .variants
            .iter()
            .map(|v| VariantSummary {
                requested: v.requested,
                floor_variant: variant_label(v.requested, &v.floor),
                agent_variant: variant_label(v.requested, &v.agent),
                floor: throughput(&v.floor),
                agent: throughput(&v.agent),
                before: (!v.before.is_empty()).then(|| throughput(&v.before)),
                hooks: hook_rows(&v.floor_cost, &v.agent_cost, &v.before_cost),
            })
            .collect();
        Self {
            duration_s: opts.duration.as_secs_f64(),
            repeat: opts.repeat,
            baseline: Throughput::new(results.baseline.clone()),
            variants,
        }
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        let base = self.baseline.median;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "storm: 2 procs pinned to CPU 0, pipe ping-pong, {} s x {} (median)\n",
            self.duration_s, self.repeat
        );
        let _ = writeln!(
            out,
            "{:<20} {:<24} {:>14} {:>12}",
            "config", "variant", "round-trips/s", "vs baseline"
        );
        let row = |out: &mut String, config: &str, variant: &str, t: &Throughput| {
            let share = 100.0 * t.median / base;
            let _ = writeln!(
                out,
                "{config:<20} {variant:<24} {:>14.0} {share:>11.1}%",
                t.median
            );
        };
        row(&mut out, "baseline", "-", &self.baseline);
        for v in &self.variants {
            row(&mut out, "floor (empty progs)", &v.floor_variant, &v.floor);
            row(&mut out, "agent", &v.agent_variant, &v.agent);
            if let Some(before) = &v.before {
                row(&mut out, "agent (--before)", &v.agent_variant, before);
            }
        }
        if self.variants.is_empty() {
            return out;
        }

        let _ = writeln!(
            out,
            "\nper-hook cost (ns/event and events/s from BPF stats, in a separate storm with stats on):"
        );
        let _ = writeln!(
            out,
            "{:<16} {:<18} {:>9} {:>9} {:>12} {:>12} {:>12} {:>10}",
            "variant",
            "hook",
            "floor ns",
            "agent ns",
            "agent/floor",
            "floor ev/s",
            "agent ev/s",
            "before ns"
        );
        for v in &self.variants {
            for h in &v.hooks {
                let _ = writeln!(
                    out,
                    "{:<16} {:<18} {:>9} {:>9} {:>12} {:>12} {:>12} {:>10}",
                    v.agent_variant,
                    h.hook,
                    fmt(h.floor_ns, 1, ""),
                    fmt(h.agent_ns, 1, ""),
                    fmt(h.agent_over_floor(), 2, "x"),
                    fmt(h.floor_events_per_s, 0, ""),
                    fmt(h.agent_events_per_s, 0, ""),
                    fmt(h.before_ns, 1, ""),
                );
            }
        }

        let _ = writeln!(out, "\ntargets:");
        for v in &self.variants {
            let share = v.agent_share(base);
            let cost = fmt(v.added_cost(base), 2, "x");
            let _ = writeln!(
                out,
                "  {}: agent >= {:.0}% of baseline: {} ({:.1}%); \
                 agent added cost <= {ADDED_COST_MAX}x floor's: {} ({cost})",
                v.agent_variant,
                100.0 * AGENT_MIN_SHARE,
                verdict(share >= AGENT_MIN_SHARE),
                100.0 * share,
                verdict(v.added_cost_met(base)),
            );
            if let Some(before) = &v.before {
                let _ = writeln!(
                    out,
                    "  --before agent: {:.1}% of baseline, added cost {} the floor's",
                    100.0 * before.median / base,
                    fmt(v.added_cost_of(before, base), 2, "x"),
                );
            }
        }
        out
    }

    /// The same figures, for target/bench/runqueue.json.
    pub fn json(&self) -> Value {
        let base = self.baseline.median;
        let variants: Vec<Value> = self
            .variants
            .iter()
            .map(|v| {
                let hooks: Vec<Value> = v
                    .hooks
                    .iter()
                    .map(|h| {
                        json!({
                            "hook": h.hook,
                            "floor_ns_per_event": h.floor_ns,
                            "agent_ns_per_event": h.agent_ns,
                            "agent_over_floor": h.agent_over_floor(),
                            "floor_events_per_s": h.floor_events_per_s,
                            "agent_events_per_s": h.agent_events_per_s,
                            "before_ns_per_event": h.before_ns,
                        })
                    })
                    .collect();
                json!({
                    "requested_variant": v.requested,
                    "floor": {"variant": v.floor_variant, "throughput": v.floor.json(base)},
                    "agent": {"variant": v.agent_variant, "throughput": v.agent.json(base)},
                    "before": v.before.as_ref().map(|b| json!({
                        "throughput": b.json(base),
                        "added_cost_ratio": v.added_cost_of(b, base),
                    })),
                    "hooks": hooks,
                    "targets": {
                        "agent_share_of_baseline": v.agent_share(base),
                        "agent_share_min": AGENT_MIN_SHARE,
                        "agent_share_met": v.agent_share(base) >= AGENT_MIN_SHARE,
                        "added_cost_ratio": v.added_cost(base),
                        "added_cost_max": ADDED_COST_MAX,
                        "added_cost_met": v.added_cost_met(base),
                    },
                })
            })
            .collect();
        json!({
            "storm": {
                "procs": 2,
                "cpu": 0,
                "kind": "pipe ping-pong",
                "duration_s": self.duration_s,
                "repeat": self.repeat,
            },
            "baseline": self.baseline.json(base),
            "variants": variants,
        })
    }
}

fn throughput(runs: &[Run]) -> Throughput {
    Throughput::new(runs.iter().map(|r| r.round_trips_per_s).collect())
}

/// The variant the runs actually used (from their probes), e.g. "tp_btf (auto)".
fn variant_label(requested: &str, runs: &[Run]) -> String {
    let mut used: Vec<&str> = Vec::new();
    for p in runs.iter().flat_map(|r| &r.probes) {
        if p.attached && !p.variant.is_empty() && !used.contains(&p.variant.as_str()) {
            used.push(&p.variant);
        }
    }
    let used = used.join("+");
    match used.as_str() {
        "" => requested.to_owned(),
        u if u == requested => used,
        _ => format!("{used} ({requested})"),
    }
}

/// One run's totals per hook: (hook, events, total program ns). Were several programs on
/// one hook, their times add up and the hook's events count once (the largest run count).
fn hook_totals(run: &Run) -> Vec<(String, u64, u64)> {
    let mut totals: Vec<(String, u64, u64)> = Vec::new();
    for p in &run.probes {
        match totals.iter_mut().find(|(hook, ..)| *hook == p.hook) {
            Some((_, count, ns)) => {
                *count = (*count).max(p.run_count);
                *ns += p.run_time_ns;
            }
            None => totals.push((p.hook.clone(), p.run_count, p.run_time_ns)),
        }
    }
    totals
}

/// Median ns/event and events/s of `hook` over `runs`.
fn hook_medians(hook: &str, runs: &[Run]) -> (Option<f64>, Option<f64>) {
    let mut ns_per_event = Vec::new();
    let mut events_per_s = Vec::new();
    for run in runs {
        let totals = hook_totals(run);
        let Some((_, count, ns)) = totals.iter().find(|(h, ..)| h == hook) else {
            continue;
        };
        if *count > 0 {
            ns_per_event.push(*ns as f64 / *count as f64);
        }
        events_per_s.push(*count as f64 / run.storm_secs);
    }
    (median(ns_per_event), median(events_per_s))
}

/// A row per hook seen in any floor or agent run, in order of first appearance.
fn hook_rows(floor: &[Run], agent: &[Run], before: &[Run]) -> Vec<HookRow> {
    let mut hooks: Vec<String> = Vec::new();
    for p in floor.iter().chain(agent).flat_map(|r| &r.probes) {
        if !hooks.contains(&p.hook) {
            hooks.push(p.hook.clone());
        }
    }
    hooks
        .into_iter()
        .map(|hook| {
            let (floor_ns, floor_events_per_s) = hook_medians(&hook, floor);
            let (agent_ns, agent_events_per_s) = hook_medians(&hook, agent);
            let (before_ns, _) = hook_medians(&hook, before);
            HookRow {
                hook,
                floor_ns,
                agent_ns,
                floor_events_per_s,
                agent_events_per_s,
                before_ns,
            }
        })
        .collect()
}

/// The median, or `None` for no values.
fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

fn fmt(value: Option<f64>, precision: usize, suffix: &str) -> String {
    value.map_or("-".into(), |x| format!("{x:.precision$}{suffix}"))
}

fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "MISSED" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(round_trips_per_s: f64, hooks: &[(&str, u64, u64)]) -> Run {
        let probes = hooks
            .iter()
            .map(
                |&(hook, run_count, run_time_ns)| crate::bench::nodesat::Probe {
                    probe: "runqueue".into(),
                    hook: hook.into(),
                    variant: "tp_btf".into(),
                    attached: true,
                    error: None,
                    run_count,
                    run_time_ns,
                },
            )
            .collect();
        Run {
            round_trips_per_s,
            storm_secs: 2.0,
            probes,
        }
    }

    #[test]
    fn summarises_runs() {
        let opts = Options {
            duration: std::time::Duration::from_secs(2),
            repeat: 1,
            ..Options::default()
        };
        let results = Results {
            baseline: vec![100_000.0],
            variants: vec![super::super::VariantRuns {
                requested: "auto",
                floor: vec![run(97_000.0, &[("sched_switch", 0, 0)])],
                agent: vec![run(92_000.0, &[("sched_switch", 0, 0)])],
                floor_cost: vec![run(96_000.0, &[("sched_switch", 1000, 20_000)])],
                agent_cost: vec![run(90_000.0, &[("sched_switch", 1000, 80_000)])],
                before: vec![run(85_000.0, &[("sched_switch", 0, 0)])],
                before_cost: vec![run(84_000.0, &[("sched_switch", 1000, 120_000)])],
            }],
        };
        let summary = Summary::new(&opts, &results);
        let table = summary.table();
        println!("{table}");
        assert!(table.contains("tp_btf (auto)"));
        assert!(table.contains("agent >= 90% of baseline: MET (92.0%)"));
        assert!(table.contains("MISSED (2.67x)"));
        let json = summary.json();
        let hook = &json["variants"][0]["hooks"][0];
        assert_eq!(hook["floor_ns_per_event"], 20.0);
        assert_eq!(hook["agent_over_floor"], 4.0);
        assert_eq!(hook["agent_events_per_s"], 500.0);
        // The --before agent: its throughput, added cost (15% lost against the floor's 3%)
        // and ns/event beside the agent's.
        assert!(table.contains("--before agent: 85.0% of baseline, added cost 5.00x"));
        assert_eq!(hook["before_ns_per_event"], 120.0);
        let ratio = json["variants"][0]["before"]["added_cost_ratio"].as_f64();
        assert!(ratio.is_some_and(|r| (r - 5.0).abs() < 1e-9), "{ratio:?}");
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median([]), None);
    }
}

//! `cargo xtask bench`: the cost of the agent's scheduler hooks under a context-switch storm.
//!
//! Three configurations are measured, interleaved, `--repeat` times each, and compared by
//! their median storm throughput:
//! - baseline: the storm alone;
//! - floor: the storm while `nodesat attach-empty` holds EMPTY programs on the agent's hooks
//!   (the price of merely having programs there);
//! - agent: the storm while `nodesat run` does its real work.
//!
//! Throughput is measured with kernel BPF run-time statistics OFF, since collecting them costs
//! two clock reads per program run and would inflate both floor and agent. Then one more storm
//! per configuration runs with the statistics switched on (and restored after), so each nodesat
//! reports, per hook, how often its program ran and for how long: the ns/event figures.

mod cycle;
mod io;
mod nodesat;
mod report;
mod retransmit;
mod storm;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::{cmd, run, workspace_root};

const USAGE: &str =
    "usage: cargo xtask bench [--duration SECS] [--repeat N] [--all-variants] [--cgroups N] [--cycles N]
                         [--before BIN] [--baseline-only | --retransmit-only | --cycle-only]
       cargo xtask bench --scale [--cpus N,N,...] [--cgroups N] [--cycles N] [--kernel NAME]
                         [--before BIN]

Measures the overhead of nodesat's scheduler hooks under a context-switch storm (two processes
pinned to CPU 0 ping-ponging a byte over pipes), as throughput relative to a baseline storm.
Needs root (it enables /proc/sys/kernel/bpf_stats_enabled for the run and restores it).

  --duration SECS   length of each storm (default 5)
  --repeat N        rounds of interleaved measurements; medians are reported (default 3)
  --all-variants    measure floor and agent for each probe variant (tp_btf, raw_tracepoint,
                    tracepoint) instead of `auto` only
  --baseline-only   measure the storm alone; builds and runs no nodesat
  --retransmit-only only the retransmit and I/O storms
  --cycle-only      only the agent's own cost per collection-and-export cycle
  --cgroups N       active cgroups for the cycle measurement (default 500)
  --cycles N        10 s cycles measured per cycle run (default 6)
  --before BIN      also measure another agent binary (e.g. a release build of an earlier
                    commit) in the same run: its storms interleaved with the others in every
                    round and its per-hook costs, then its cycle cost, for a before/after
                    comparison against one baseline

Then a retransmit storm (bulk TCP transfers over loopback with 2% of their packets dropped by
nftables) and an I/O storm (O_DIRECT writes to a loop device), with the agent running, for the
TCP and block probes' cost per event from BPF statistics.

Last, the agent's own cost per 10 s collection-and-export cycle (process CPU time per cycle,
share of one core, RSS, OTLP export and /metrics size), exporting OTLP to a local sink, with
N extra active cgroups (each with a process waking every 100 ms, every N/5 ms above 500)
against a baseline run without them.

Prints tables on stdout and writes the figures to target/bench/runqueue.json,
target/bench/retransmit.json, target/bench/io.json and target/bench/cycle.json.

--scale measures, instead, what the agent costs as the number of possible CPUs grows: a Debian
kernel (--kernel, default: the newest series) boots under qemu with N vCPUs (-smp N, so N
possible CPUs) for each N of --cpus (default 2,16,64,128), then takes all but the first
offline (the measurement runs on one online CPU); in each, --cgroups
cgroups (default 500) get a process waking every 100 ms, and the agent runs --cycles 2 s
collection cycles (default 5). Per N: the BPF maps' memory (the kernel's memlock figure),
resident memory and on-CPU time per cycle, as a table with ratios to the first row; with
--before BIN (a static agent binary, e.g. built from an earlier commit for
x86_64-unknown-linux-musl) that agent is measured in the same guests too. Writes
target/bench/scale.json.";

/// The probe variants `--all-variants` measures.
const VARIANTS: [&str; 3] = ["tp_btf", "raw_tracepoint", "tracepoint"];

/// Where the kernel's switch for BPF run-time statistics lives.
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Command-line options.
#[derive(Clone, Debug)]
pub struct Options {
    pub duration: Duration,
    pub repeat: usize,
    pub all_variants: bool,
    pub baseline_only: bool,
    pub retransmit_only: bool,
    pub cycle_only: bool,
    pub cgroups: usize,
    pub cycles: u32,
    pub scale: bool,
    pub cpus: Vec<u32>,
    pub kernel: Option<String>,
    pub before: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            duration: Duration::from_secs(5),
            repeat: 3,
            all_variants: false,
            baseline_only: false,
            retransmit_only: false,
            cycle_only: false,
            cgroups: 500,
            cycles: 6,
            scale: false,
            cpus: vec![2, 16, 64, 128],
            kernel: None,
            before: None,
        }
    }
}

impl Options {
    /// Parses the arguments; `None` when help was asked for.
    fn parse(args: &[String]) -> Result<Option<Self>> {
        let mut opts = Options::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .with_context(|| format!("{arg} needs a value\n{USAGE}"))
            };
            match arg.as_str() {
                "--duration" => {
                    let secs: f64 = value()?.parse().context("--duration SECS")?;
                    if !(secs > 0.0 && secs.is_finite()) {
                        bail!("--duration must be a positive number of seconds");
                    }
                    opts.duration = Duration::from_secs_f64(secs);
                }
                "--repeat" => {
                    opts.repeat = value()?.parse().context("--repeat N")?;
                    if opts.repeat == 0 {
                        bail!("--repeat must be at least 1");
                    }
                }
                "--all-variants" => opts.all_variants = true,
                "--baseline-only" => opts.baseline_only = true,
                "--retransmit-only" => opts.retransmit_only = true,
                "--cycle-only" => opts.cycle_only = true,
                "--cgroups" => {
                    opts.cgroups = value()?.parse().context("--cgroups N")?;
                }
                "--cycles" => {
                    opts.cycles = value()?.parse().context("--cycles N")?;
                    if opts.cycles < 2 {
                        bail!("--cycles must be at least 2");
                    }
                }
                "--scale" => opts.scale = true,
                "--cpus" => {
                    opts.cpus = value()?
                        .split(',')
                        .map(|n| n.trim().parse::<u32>())
                        .collect::<Result<_, _>>()
                        .context("--cpus N,N,...")?;
                    if opts.cpus.iter().any(|&n| n == 0 || n > 255) {
                        bail!("--cpus: each count must be 1 to 255");
                    }
                }
                "--kernel" => opts.kernel = Some(value()?.clone()),
                "--before" => opts.before = Some(PathBuf::from(value()?)),
                "-h" | "--help" => return Ok(None),
                other => bail!("unknown bench argument {other:?}\n{USAGE}"),
            }
        }
        Ok(Some(opts))
    }

    /// The probe variants to measure floor and agent with (none for `--baseline-only`).
    fn variants(&self) -> Vec<&'static str> {
        if self.baseline_only {
            Vec::new()
        } else if self.all_variants {
            VARIANTS.to_vec()
        } else {
            vec!["auto"]
        }
    }
}

/// A configuration measured while a nodesat runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// `nodesat attach-empty`: empty programs on the agent's hooks.
    Floor,
    /// `nodesat run`: the agent itself.
    Agent,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Floor => "floor",
            Config::Agent => "agent",
        }
    }

    fn nodesat_args(self, variant: &str) -> Vec<&str> {
        match self {
            Config::Floor => vec!["attach-empty", "--probe-variant", variant],
            Config::Agent => {
                vec![
                    "run",
                    "--output",
                    "json",
                    "--interval",
                    "1s",
                    "--probe-variant",
                    variant,
                ]
            }
        }
    }
}

/// One storm measured while a nodesat ran, with the BPF stats from its final line.
#[derive(Clone, Debug)]
pub struct Run {
    pub round_trips_per_s: f64,
    pub storm_secs: f64,
    pub probes: Vec<nodesat::Probe>,
}

/// Every run of floor and agent for one requested probe variant.
#[derive(Clone, Debug)]
pub struct VariantRuns {
    pub requested: &'static str,
    pub floor: Vec<Run>,
    pub agent: Vec<Run>,
    /// Runs with BPF statistics on, for the per-hook cost (their throughput is not used).
    pub floor_cost: Vec<Run>,
    pub agent_cost: Vec<Run>,
    /// The `--before` agent's runs and cost runs (empty without it).
    pub before: Vec<Run>,
    pub before_cost: Vec<Run>,
}

/// Everything measured.
#[derive(Clone, Debug)]
pub struct Results {
    /// Round trips per second of each baseline storm.
    pub baseline: Vec<f64>,
    pub variants: Vec<VariantRuns>,
}

/// `cargo xtask bench [ARGS..]`: measures, prints the table, writes the JSON. Missed targets
/// are reported, not failed; only a measurement that cannot be made is an error.
pub fn bench(args: &[String]) -> Result<()> {
    let Some(opts) = Options::parse(args)? else {
        println!("{USAGE}");
        return Ok(());
    };
    install_interrupt_handler()?;
    if opts.scale {
        crate::vm::scale(&crate::vm::ScaleOptions {
            cpus: opts.cpus.clone(),
            cgroups: opts.cgroups,
            cycles: if args.iter().any(|a| a == "--cycles") {
                opts.cycles
            } else {
                5
            },
            kernel: opts
                .kernel
                .clone()
                .unwrap_or_else(|| crate::vm::NEWEST_KERNEL.to_owned()),
            before: opts.before.clone(),
        })?;
        return Ok(());
    }
    if opts.cycle_only {
        let bin = build_agent()?;
        return measure_cycle(&bin, &opts);
    }
    if opts.retransmit_only {
        let bin = build_agent()?;
        let figures = retransmit::measure(&bin, opts.duration)?;
        write_json(
            &workspace_root().join("target/bench/retransmit.json"),
            &figures,
        )?;
        let figures = io::measure(&bin, opts.duration)?;
        return write_json(&workspace_root().join("target/bench/io.json"), &figures);
    }
    let variants = opts.variants();
    let bin = if variants.is_empty() {
        None
    } else {
        Some(build_agent()?)
    };

    let mut results = Results {
        baseline: Vec::new(),
        variants: variants
            .iter()
            .map(|&requested| VariantRuns {
                requested,
                floor: Vec::new(),
                agent: Vec::new(),
                floor_cost: Vec::new(),
                agent_cost: Vec::new(),
                before: Vec::new(),
                before_cost: Vec::new(),
            })
            .collect(),
    };
    for round in 1..=opts.repeat {
        let progress = format!("run {round}/{}", opts.repeat);
        eprintln!("bench: baseline {progress} ...");
        let storm = storm::run(opts.duration)?;
        eprintln!(
            "bench: baseline {progress}: {:.0} round-trips/s",
            storm.per_sec()
        );
        results.baseline.push(storm.per_sec());
        for v in &mut results.variants {
            let bin = bin.as_deref().expect("built when there are variants");
            v.floor
                .push(measure(bin, Config::Floor, v.requested, &opts, &progress)?);
            v.agent
                .push(measure(bin, Config::Agent, v.requested, &opts, &progress)?);
            if let Some(before) = &opts.before {
                let progress = format!("{progress} (--before)");
                v.before.push(measure(
                    before,
                    Config::Agent,
                    v.requested,
                    &opts,
                    &progress,
                )?);
            }
        }
    }
    if let Some(bin) = bin.as_deref() {
        let _stats = BpfStats::enable()?;
        for v in &mut results.variants {
            let progress = "cost run (BPF stats on)";
            v.floor_cost
                .push(measure(bin, Config::Floor, v.requested, &opts, progress)?);
            v.agent_cost
                .push(measure(bin, Config::Agent, v.requested, &opts, progress)?);
            if let Some(before) = &opts.before {
                let progress = "cost run (BPF stats on, --before)";
                v.before_cost.push(measure(
                    before,
                    Config::Agent,
                    v.requested,
                    &opts,
                    progress,
                )?);
            }
        }
    }

    let summary = report::Summary::new(&opts, &results);
    print!("{}", summary.table());
    let path = workspace_root().join("target/bench/runqueue.json");
    write_json(&path, &summary.json())?;
    eprintln!("bench: wrote {}", path.display());

    if let Some(bin) = bin.as_deref() {
        let figures = retransmit::measure(bin, opts.duration)?;
        let path = workspace_root().join("target/bench/retransmit.json");
        write_json(&path, &figures)?;
        eprintln!("bench: wrote {}", path.display());
        let figures = io::measure(bin, opts.duration)?;
        let path = workspace_root().join("target/bench/io.json");
        write_json(&path, &figures)?;
        eprintln!("bench: wrote {}", path.display());
        measure_cycle(bin, &opts)?;
    }
    Ok(())
}

/// The agent's own cost per collection-and-export cycle, and the `--before` agent's right
/// after; writes target/bench/cycle.json.
fn measure_cycle(bin: &Path, opts: &Options) -> Result<()> {
    let mut figures = cycle::measure(bin, opts.cgroups, opts.cycles)?;
    if let Some(before) = &opts.before {
        eprintln!("bench: cycle: the --before agent {}", before.display());
        figures["before"] = cycle::measure(before, opts.cgroups, opts.cycles)?;
    }
    let path = workspace_root().join("target/bench/cycle.json");
    write_json(&path, &figures)?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}

/// Builds the release agent and returns its path.
fn build_agent() -> Result<PathBuf> {
    eprintln!("bench: building the release agent");
    run(cmd(
        "cargo",
        &["build", "--release", "--package", "nodesat"],
    ))?;
    Ok(workspace_root().join("target/release/nodesat"))
}

/// Runs one storm while `nodesat` runs in configuration `config`.
fn measure(
    bin: &Path,
    config: Config,
    variant: &str,
    opts: &Options,
    progress: &str,
) -> Result<Run> {
    let what = format!("{} {variant} {progress}", config.name());
    eprintln!("bench: {what}: starting nodesat, waiting for it to attach ...");
    let mut agent = nodesat::Nodesat::start(bin, &config.nodesat_args(variant))?;
    agent.wait_ready()?;
    check_interrupted()?;
    let storm = storm::run(opts.duration)?;
    let last = agent.stop()?;
    let probes = nodesat::probes(&last)?;
    for p in probes.iter().filter(|p| !p.attached) {
        let error = p.error.as_deref().unwrap_or("no error given");
        eprintln!(
            "bench: warning: {what}: {} on {} not attached: {error}",
            p.probe, p.hook
        );
    }
    eprintln!("bench: {what}: {:.0} round-trips/s", storm.per_sec());
    Ok(Run {
        round_trips_per_s: storm.per_sec(),
        storm_secs: storm.elapsed.as_secs_f64(),
        probes,
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value)? + "\n";
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Keeps kernel BPF run-time statistics enabled while alive; restores the original setting
/// when dropped (on success, error or panic alike).
struct BpfStats {
    original: String,
}

impl BpfStats {
    fn enable() -> Result<Self> {
        let original = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        fs::write(BPF_STATS, "1")
            .with_context(|| format!("writing 1 to {BPF_STATS} (bench needs root)"))?;
        Ok(Self { original })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = fs::write(BPF_STATS, &self.original) {
            eprintln!(
                "bench: could not restore {BPF_STATS} to {}: {e}",
                self.original
            );
        }
    }
}

/// Set by SIGINT/SIGTERM; the long waits poll it so that the guards above get to clean up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Turns the first SIGINT/SIGTERM into an orderly error; a second one kills as usual.
fn install_interrupt_handler() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("handling {signal}"))?;
    }
    Ok(())
}

/// Fails once SIGINT or SIGTERM has arrived.
fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A stand-in for nodesat that speaks its protocol: ready, intervals, final line on SIGTERM.
    const FAKE_NODESAT: &str = r#"#!/bin/sh
probes='[{"probe":"runqueue","hook":"sched_switch","variant":"tp_btf","attached":true,"error":null,"run_count":1000,"run_time_ns":50000}]'
trap 'echo "{\"type\":\"interval\",\"final\":true,\"cgroups\":[],\"cpus\":[],\"probes\":$probes}"; exit 0' TERM
echo "{\"type\":\"ready\",\"probes\":$probes}"
echo "not json"
while :; do echo '{"type":"interval"}'; sleep 0.2 & wait $!; done
"#;

    #[test]
    fn measures_a_storm_while_nodesat_runs() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("nodesat");
        fs::write(&bin, FAKE_NODESAT).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let opts = Options {
            duration: Duration::from_millis(300),
            repeat: 1,
            ..Options::default()
        };

        let run = measure(&bin, Config::Agent, "auto", &opts, "test").unwrap();
        fs::remove_dir_all(&dir).unwrap();

        assert!(run.round_trips_per_s > 0.0);
        assert!(run.storm_secs >= 0.3);
        assert_eq!(run.probes.len(), 1);
        assert_eq!(run.probes[0].hook, "sched_switch");
        assert_eq!(
            (run.probes[0].run_count, run.probes[0].run_time_ns),
            (1000, 50000)
        );
    }

    #[test]
    fn parses_options() {
        let args: Vec<String> = ["--duration", "1.5", "--repeat", "5", "--all-variants"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let opts = Options::parse(&args).unwrap().unwrap();
        assert_eq!(opts.duration, Duration::from_millis(1500));
        assert_eq!(opts.repeat, 5);
        assert_eq!(opts.variants(), VARIANTS.to_vec());
        assert!(Options::parse(&["--repeat".into(), "0".into()]).is_err());
        assert!(Options::parse(&["--bogus".into()]).is_err());
        assert!(Options::parse(&["--help".into()]).unwrap().is_none());
    }
}

//! A running `nodesat` child and its JSON-lines protocol: a `ready` line once its programs
//! are attached, `interval` lines while it runs, and a last `interval` line with
//! `"final": true` (carrying cumulative BPF stats per probe) after SIGTERM.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::{
        prctl::set_pdeathsig,
        signal::{Signal, kill},
    },
    unistd::Pid,
};
use serde_json::Value;

/// How long nodesat may take to attach its programs.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long nodesat may take to print its final line after SIGTERM.
const FINAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a nodesat that got SIGTERM may take to exit before it gets SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// One BPF program's entry in the `probes` array of a nodesat line.
#[derive(Clone, Debug)]
pub struct Probe {
    pub probe: String,
    pub hook: String,
    pub variant: String,
    pub attached: bool,
    pub error: Option<String>,
    /// Times the program ran since it was loaded (kernel BPF stats).
    pub run_count: u64,
    /// Total time the program ran since it was loaded, in nanoseconds (kernel BPF stats).
    pub run_time_ns: u64,
}

/// A running nodesat. Dropping it stops the process: SIGTERM, then SIGKILL after 10 s.
pub struct Nodesat {
    child: Child,
    lines: Receiver<Value>,
    name: String,
}

impl Nodesat {
    /// Starts `bin args..` with its stdout drained by a thread of its own (so the pipe never
    /// fills) and its stderr (logs) passed through to ours.
    pub fn start(bin: &Path, args: &[&str]) -> Result<Self> {
        let name = format!("nodesat {}", args.join(" "));
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Out of our process group, so that a Ctrl-C reaches only us and we stop it cleanly.
            .process_group(0);
        // SAFETY: the closure runs between fork and exec and only calls prctl, which is
        // async-signal-safe. It makes nodesat detach its programs should xtask die abruptly.
        unsafe {
            cmd.pre_exec(|| Ok(set_pdeathsig(Signal::SIGTERM)?));
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        thread::Builder::new()
            .name("nodesat-stdout".into())
            .spawn(move || drain(stdout, tx))
            .context("spawning the stdout reader")?;
        Ok(Self { child, lines, name })
    }

    /// Waits for the `ready` line, which nodesat prints once its programs are attached.
    pub fn wait_ready(&mut self) -> Result<Value> {
        self.wait_for("ready", READY_TIMEOUT, |v| v["type"] == "ready")
    }

    /// Sends SIGTERM and returns the final `interval` line; fails unless nodesat exits 0.
    pub fn stop(mut self) -> Result<Value> {
        kill(self.pid()?, Signal::SIGTERM).with_context(|| format!("SIGTERM to {}", self.name))?;
        let last = self.wait_for("final interval", FINAL_TIMEOUT, |v| {
            v["type"] == "interval" && v["final"] == true
        })?;
        match self.wait_exit(EXIT_TIMEOUT)? {
            Some(status) if status.success() => Ok(last),
            Some(status) => bail!("{} failed after its final line: {status}", self.name),
            None => bail!(
                "{} did not exit within {EXIT_TIMEOUT:?} of SIGTERM",
                self.name
            ),
        }
    }

    /// Returns the first line matching `wanted`, skipping the others.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            super::check_interrupted()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{} printed no {what} line within {timeout:?}", self.name);
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) if wanted(&line) => return Ok(line),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(EXIT_TIMEOUT)?;
                    let status = status.map_or("still running".into(), |s| s.to_string());
                    bail!(
                        "{} closed its stdout before its {what} line ({status})",
                        self.name
                    );
                }
            }
        }
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for nodesat")? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    fn pid(&self) -> Result<Pid> {
        Ok(Pid::from_raw(i32::try_from(self.child.id())?))
    }
}

impl Drop for Nodesat {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return; // already exited (and reaped)
        }
        eprintln!("bench: stopping {}", self.name);
        if let Ok(pid) = self.pid() {
            let _ = kill(pid, Signal::SIGTERM);
        }
        if !matches!(self.wait_exit(EXIT_TIMEOUT), Ok(Some(_))) {
            eprintln!("bench: {} ignored SIGTERM; killing it", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads nodesat's stdout to its end, forwarding each JSON line. It keeps reading after the
/// receiver is gone, so that nodesat never blocks on a full pipe.
fn drain(stdout: ChildStdout, tx: Sender<Value>) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match serde_json::from_slice::<Value>(&line) {
            Ok(value) => {
                let _ = tx.send(value);
            }
            Err(_) if line.trim_ascii().is_empty() => {}
            Err(e) => eprintln!(
                "bench: ignoring a line of nodesat's stdout ({e}): {}",
                String::from_utf8_lossy(&line).trim_end()
            ),
        }
    }
}

/// The `probes` array of a nodesat line.
pub fn probes(line: &Value) -> Result<Vec<Probe>> {
    let Some(probes) = line["probes"].as_array() else {
        bail!("nodesat line without a probes array: {line}");
    };
    probes.iter().map(probe).collect()
}

fn probe(v: &Value) -> Result<Probe> {
    let text = |key: &str| v[key].as_str().map(str::to_owned);
    let number = |key: &str| v[key].as_u64().unwrap_or(0);
    Ok(Probe {
        probe: text("probe").unwrap_or_default(),
        hook: text("hook").with_context(|| format!("probe without a hook: {v}"))?,
        variant: text("variant").unwrap_or_default(),
        attached: v["attached"].as_bool().unwrap_or(false),
        error: text("error"),
        run_count: number("run_count"),
        run_time_ns: number("run_time_ns"),
    })
}

/// Prints the per-event cost of the hooks of `wanted` probes (run time ÷ run count, from the
/// kernel's BPF statistics) and returns them as JSON.
pub fn hook_costs(probes: &[Probe], wanted: &[&str]) -> Vec<Value> {
    println!(
        "{:<10} {:<24} {:>10} {:>12} {:>9}",
        "probe", "hook", "runs", "run time", "ns/event"
    );
    probes
        .iter()
        .filter(|p| wanted.contains(&p.probe.as_str()))
        .map(|p| {
            let per_event = (p.run_count > 0).then(|| p.run_time_ns as f64 / p.run_count as f64);
            println!(
                "{:<10} {:<24} {:>10} {:>10}ns {:>9}",
                p.probe,
                p.hook,
                p.run_count,
                p.run_time_ns,
                per_event.map_or("-".into(), |v| format!("{v:.1}"))
            );
            serde_json::json!({
                "probe": p.probe, "hook": p.hook, "variant": p.variant,
                "run_count": p.run_count, "run_time_ns": p.run_time_ns, "ns_per_event": per_event,
            })
        })
        .collect()
}

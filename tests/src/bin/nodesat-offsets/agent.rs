//! The agent under check: `nodesat run --output json`, every stdout line kept as JSON.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// The running agent.
pub struct AgentRun {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    garbled: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

/// What the agent printed, once it exited.
pub struct Collected {
    pub status: ExitStatus,
    pub ready: Value,
    pub intervals: Vec<Value>,
    pub oom_kills: Vec<Value>,
    /// Lines that were not JSON.
    pub garbled: Vec<String>,
    pub stderr: Vec<String>,
}

impl AgentRun {
    /// Starts `BIN run --output json --interval INTERVAL ARGS..`.
    pub fn start(bin: &Path, interval: &str, args: &[&str]) -> Result<AgentRun, String> {
        let mut cmd = Command::new(bin);
        nodesat_tests::clear_agent_env(&mut cmd);
        cmd.args(["run", "--output", "json", "--interval", interval])
            .args(args)
            // Every cgroup named in every report, however many a shared machine has.
            .args(["--max-entities", "100000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let garbled = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped");
        let (l, g) = (Arc::clone(&lines), Arc::clone(&garbled));
        let out_reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => l.lock().expect("lines").push(v),
                    Err(_) if line.trim().is_empty() => {}
                    Err(_) => g.lock().expect("garbled").push(line),
                }
            }
        });
        let err = child.stderr.take().expect("piped");
        let e = Arc::clone(&stderr);
        let err_reader = thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                e.lock().expect("stderr").push(line);
            }
        });
        Ok(AgentRun {
            child,
            lines,
            garbled,
            stderr,
            readers: vec![out_reader, err_reader],
        })
    }

    /// Waits for the `ready` line.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ready) = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|v| v["type"] == "ready")
            {
                return Ok(ready.clone());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the agent exited ({status}) before it was ready; stderr:\n{}",
                    self.stderr_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the agent printed no ready line within {timeout:?}; stderr:\n{}",
                    self.stderr_tail()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of its stderr.
    pub fn stderr_tail(&self) -> String {
        let e = self.stderr.lock().expect("stderr");
        e[e.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM (the agent then makes a final report), waits up to `timeout` (SIGKILL after
    /// it), and returns everything it printed.
    pub fn stop(mut self, timeout: Duration) -> Collected {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = self.child.kill();
                    break self.child.wait().expect("reap the agent");
                }
            }
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let lines = std::mem::take(&mut *self.lines.lock().expect("lines"));
        let of =
            |t: &str| -> Vec<Value> { lines.iter().filter(|v| v["type"] == t).cloned().collect() };
        Collected {
            status,
            ready: of("ready").into_iter().next().unwrap_or(Value::Null),
            intervals: of("interval"),
            oom_kills: of("oom_kill"),
            garbled: std::mem::take(&mut *self.garbled.lock().expect("garbled")),
            stderr: std::mem::take(&mut *self.stderr.lock().expect("stderr")),
        }
    }
}

impl Drop for AgentRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Collected {
    /// The variant each probe attached with, from the ready line (`None`: not attached), and
    /// the first error of a probe that did not attach.
    pub fn attached(&self, probe: &str) -> Result<String, String> {
        let hooks: Vec<&Value> = self.ready["probes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h["probe"] == probe)
            .collect();
        if let Some(h) = hooks.iter().find(|h| h["attached"] == true) {
            return Ok(h["variant"].as_str().unwrap_or("?").to_owned());
        }
        Err(hooks
            .iter()
            .find_map(|h| h["error"].as_str())
            .unwrap_or("not in the agent's probe list")
            .to_owned())
    }

    /// Runs of the programs on `hook` while the agent ran (kernel BPF statistics; 0 unless
    /// they are enabled): the highest cumulative count any report gave.
    pub fn hook_runs(&self, hook: &str) -> u64 {
        self.intervals
            .iter()
            .flat_map(|r| r["probes"].as_array().into_iter().flatten())
            .filter(|h| h["hook"] == hook)
            .filter_map(|h| h["run_count"].as_u64())
            .max()
            .unwrap_or(0)
    }

    /// Times the kernel skipped the programs of `probe` (`recursion_misses`, kernels 6.6 and
    /// later; 0 before): the highest cumulative count any report gave, summed over its hooks.
    pub fn probe_misses(&self, probe: &str) -> u64 {
        let mut by_hook: std::collections::BTreeMap<String, u64> = Default::default();
        for h in self
            .intervals
            .iter()
            .flat_map(|r| r["probes"].as_array().into_iter().flatten())
            .filter(|h| h["probe"] == probe)
        {
            let n = h["recursion_misses"].as_u64().unwrap_or(0);
            let hook = h["hook"].as_str().unwrap_or("?").to_owned();
            let e = by_hook.entry(hook).or_insert(0);
            *e = (*e).max(n);
        }
        by_hook.values().sum()
    }

    /// Every per-cgroup entry of every report (the final one included).
    pub fn cgroup_entries(&self, id: u64) -> impl Iterator<Item = &Value> {
        self.intervals
            .iter()
            .flat_map(|r| r["cgroups"].as_array().into_iter().flatten())
            .filter(move |c| c["cgroup_id"].as_u64() == Some(id))
    }

    /// OOM kills the reports counted on cgroup `id`.
    pub fn oom_kills_on(&self, id: u64) -> u64 {
        self.cgroup_entries(id)
            .filter_map(|e| e["oom_kills"].as_u64())
            .sum()
    }

    /// Every `disks` entry of every report.
    pub fn disk_entries(&self) -> impl Iterator<Item = &Value> {
        self.intervals
            .iter()
            .flat_map(|r| r["disks"].as_array().into_iter().flatten())
    }
}

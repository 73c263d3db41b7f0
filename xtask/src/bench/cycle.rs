//! The agent's own cost per collection-and-export cycle with many active cgroups: its process
//! CPU time (user and system) per cycle and its resident memory, with OTLP export to a local
//! sink, at the default 10 s interval.
//!
//! Two runs, one after the other, the same but for the load:
//! - baseline: the machine as it is;
//! - loaded: plus `cgroups` cgroups, each with a process that wakes every 100 ms (every
//!   cgroups/5 ms above 500 cgroups) and works for 50 µs (so every cgroup has run-queue
//!   figures every interval).
//!
//! The agent runs with `--output none` (nothing printed: the cost is collection and export),
//! `--max-entities` above the cgroup count (every cgroup exported) and `--max-cgroups` at
//! least its default and above the cgroup count (no figure evicted). At the end of each run
//! it fetches `/metrics` (its size and fetch time are the Prometheus endpoint's cost). Readiness comes from
//! `/readyz`; exports are counted by the sink, which also counts how many of the load's
//! cgroups each export names (the OTLP body is sent uncompressed for that).

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::nodesat::Nodesat;
use crate::{cmd, run, workspace_root};

/// The agent's interval: its default.
const INTERVAL: Duration = Duration::from_secs(10);
/// What every load process does: wakes every `period_ms(cgroups)` and works this long.
const WORK_US: &str = "50";

/// The load's wake-up period: 100 ms, longer above 500 cgroups so that the whole load stays
/// at 5,000 wake-ups a second (a quarter of a CPU) however many cgroups there are; every
/// cgroup still runs several times in each interval.
fn period_ms(cgroups: usize) -> u64 {
    (cgroups as u64 / 5).max(100)
}

/// The agent's `--max-cgroups`: its default (4096), or room for every cgroup when there are
/// more (each figure map holds one entry per cgroup; an LRU map too small evicts figures).
fn max_cgroups(cgroups: usize) -> usize {
    (cgroups + 1000).next_power_of_two().max(4096)
}
/// Names of the load's cgroups start with this (followed by our pid and a number).
const PREFIX: &str = "nodesat-bench-cycle";

/// What one run measured.
struct Figures {
    cycles: u32,
    wall_s: f64,
    /// On-CPU time of the agent's threads (schedstat, ns precision).
    cpu_s: f64,
    user_s: f64,
    system_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
    exports: u64,
    /// Of the load's cgroups, how many the last export named (over all its requests).
    named_in_last_export: usize,
    /// The last export: its requests and their total and largest size.
    last_export_requests: usize,
    export_bytes_last: usize,
    largest_request_bytes: usize,
    /// `/metrics` once the cycles are done: its size and the time to fetch it.
    metrics_bytes: usize,
    metrics_ms: f64,
}

impl Figures {
    fn cpu_ms_per_cycle(&self) -> f64 {
        1000.0 * self.cpu_s / f64::from(self.cycles)
    }

    fn core_percent(&self) -> f64 {
        100.0 * self.cpu_s / self.wall_s
    }

    fn json(&self) -> Value {
        json!({
            "cycles": self.cycles,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "user_s": self.user_s,
            "system_s": self.system_s,
            "cpu_ms_per_cycle": self.cpu_ms_per_cycle(),
            "core_percent": self.core_percent(),
            "rss_kib": self.rss_kib,
            "hwm_kib": self.hwm_kib,
            "exports": self.exports,
            "load_cgroups_in_last_export": self.named_in_last_export,
            "last_export_requests": self.last_export_requests,
            "last_export_bytes": self.export_bytes_last,
            "largest_request_bytes": self.largest_request_bytes,
            "metrics_bytes": self.metrics_bytes,
            "metrics_ms": self.metrics_ms,
        })
    }
}

/// Measures baseline and loaded runs of `cycles` intervals each; prints a table and returns
/// the figures as JSON.
pub fn measure(bin: &Path, cgroups: usize, cycles: u32) -> Result<Value> {
    let load_bin = build_load()?;
    eprintln!("bench: cycle: baseline (no extra cgroups), {cycles} cycles of {INTERVAL:?} ...");
    let baseline = measure_one(bin, cycles, None)?;
    eprintln!("bench: cycle: starting {cgroups} cgroups with a waking process each ...");
    let load = Load::start(&load_bin, cgroups)?;
    eprintln!("bench: cycle: loaded, {cycles} cycles of {INTERVAL:?} ...");
    let loaded = measure_one(bin, cycles, Some(&load))?;
    drop(load);

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!();
    println!(
        "Agent cost per {}s collection-and-export cycle (OTLP http/protobuf to a local sink)",
        INTERVAL.as_secs()
    );
    println!(
        "| run | cgroups exported | CPU/cycle | of one core | user (ticks) | system (ticks) | RSS | \
         peak RSS | OTLP export (requests, largest) | /metrics (fetch time) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, f) in [("baseline", &baseline), ("loaded", &loaded)] {
        println!(
            "| {name} | {} | {:.1} ms | {:.3}% | {:.2} s | {:.2} s | {:.1} MB | {:.1} MB | \
             {:.2} MB ({}, {:.2} MB) | {:.2} MB ({:.0} ms) |",
            f.named_in_last_export,
            f.cpu_ms_per_cycle(),
            f.core_percent(),
            f.user_s,
            f.system_s,
            f.rss_kib as f64 / 1024.0,
            f.hwm_kib as f64 / 1024.0,
            f.export_bytes_last as f64 / 1e6,
            f.last_export_requests,
            f.largest_request_bytes as f64 / 1e6,
            f.metrics_bytes as f64 / 1e6,
            f.metrics_ms,
        );
    }
    let cpu_ratio = ratio(loaded.cpu_ms_per_cycle(), baseline.cpu_ms_per_cycle());
    let rss_ratio = ratio(loaded.rss_kib as f64, baseline.rss_kib as f64);
    println!(
        "loaded / baseline: CPU per cycle {cpu_ratio:.2}x, RSS {rss_ratio:.2}x. Targets with \
         {cgroups} cgroups: under 1% of one core ({}), under 64 MB RSS ({}), every OTLP request \
         under 4 MiB ({})",
        verdict(loaded.core_percent() < 1.0),
        verdict((loaded.hwm_kib as f64) < 64.0 * 1024.0),
        verdict(loaded.largest_request_bytes < 4 << 20),
    );
    if loaded.named_in_last_export < cgroups {
        eprintln!(
            "bench: cycle: warning: the last export named {} of the {cgroups} load cgroups",
            loaded.named_in_last_export
        );
    }
    Ok(json!({
        "interval_s": INTERVAL.as_secs(),
        "load_cgroups": cgroups,
        "load_process": format!("wakes every {} ms, works {WORK_US} us", period_ms(cgroups)),
        "max_cgroups": max_cgroups(cgroups),
        "baseline": baseline.json(),
        "loaded": loaded.json(),
        "cpu_per_cycle_ratio": cpu_ratio,
        "rss_ratio": rss_ratio,
        "target_core_percent_met": loaded.core_percent() < 1.0,
        "target_rss_met": (loaded.hwm_kib as f64) < 64.0 * 1024.0,
        "target_request_size_met": loaded.largest_request_bytes < 4 << 20,
    }))
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// Builds the tests' load generator and returns its path.
fn build_load() -> Result<PathBuf> {
    run(cmd(
        "cargo",
        &[
            "build",
            "--release",
            "--package",
            "nodesat-tests",
            "--bin",
            "nodesat-load",
        ],
    ))?;
    Ok(workspace_root().join("target/release/nodesat-load"))
}

/// One agent run: waits for readiness (one cycle done), then measures `cycles` more.
fn measure_one(bin: &Path, cycles: u32, load: Option<&Load>) -> Result<Figures> {
    let sink = Sink::start()?;
    let health = free_port()?;
    let endpoint = format!("http://127.0.0.1:{}", sink.port);
    let health_addr = format!("127.0.0.1:{health}");
    let cgroups = load.map_or(0, |l| l.cgroups.len());
    let max_entities = (cgroups + 1000).to_string();
    let max_cgroups = max_cgroups(cgroups).to_string();
    let agent = Nodesat::start(
        bin,
        &[
            "run",
            "--output",
            "none",
            "--interval",
            "10s",
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-compression",
            "none",
            "--max-entities",
            &max_entities,
            "--max-cgroups",
            &max_cgroups,
            "--health-listen",
            &health_addr,
            "--prometheus-listen",
            &health_addr,
        ],
    )?;
    let pid = agent.id();
    let deadline = Instant::now() + INTERVAL * 3;
    while !ready(health) {
        super::check_interrupted()?;
        if Instant::now() > deadline {
            bail!("nodesat was not ready within {:?}", INTERVAL * 3);
        }
        thread::sleep(Duration::from_millis(200));
    }
    let exports_at_start = sink.exports();
    let (user0, system0) = cpu_seconds(pid)?;
    let on_cpu0 = on_cpu_seconds(pid)?;
    let t0 = Instant::now();
    for n in 1..=cycles {
        super::check_interrupted()?;
        thread::sleep(INTERVAL);
        eprintln!("bench: cycle: {n}/{cycles}");
    }
    let (user1, system1) = cpu_seconds(pid)?;
    let on_cpu1 = on_cpu_seconds(pid)?;
    let wall_s = t0.elapsed().as_secs_f64();
    let (rss_kib, hwm_kib) = memory_kib(pid)?;
    let fetch_start = Instant::now();
    let metrics = get(health, "/metrics")?;
    let metrics_ms = fetch_start.elapsed().as_secs_f64() * 1000.0;
    // The last periodic export, complete (no request for SAME_EXPORT) and taken before the
    // agent stops: its final export at SIGTERM may come within SAME_EXPORT of it and would be
    // counted as part of it.
    let last = sink.settled_last_export();
    drop(agent);
    let exports = sink.exports() - exports_at_start;
    let named_in_last_export = load.map_or(0, |l| {
        let prefix = format!("{PREFIX}-{}-", std::process::id());
        let named = load_indices_named(&last, prefix.as_bytes());
        named.iter().filter(|&&i| i < l.cgroups.len()).count()
    });
    if exports < u64::from(cycles) - 1 {
        bail!("the sink received {exports} exports in {cycles} cycles");
    }
    Ok(Figures {
        cycles,
        wall_s,
        cpu_s: on_cpu1 - on_cpu0,
        user_s: user1 - user0,
        system_s: system1 - system0,
        rss_kib,
        hwm_kib,
        exports,
        named_in_last_export,
        last_export_requests: last.len(),
        export_bytes_last: last.iter().map(Vec::len).sum(),
        largest_request_bytes: last.iter().map(Vec::len).max().unwrap_or(0),
        metrics_bytes: metrics.len(),
        metrics_ms,
    })
}

/// The load cgroups (`PREFIX-PID-N`: their numbers N) that `bodies` name, in one pass over
/// each body (a search per cgroup name costs minutes at 10,000 cgroups and megabytes of body).
fn load_indices_named(bodies: &[Vec<u8>], prefix: &[u8]) -> std::collections::HashSet<usize> {
    let mut named = std::collections::HashSet::new();
    for body in bodies {
        let mut at = 0;
        while let Some(pos) = body[at..].windows(prefix.len()).position(|w| w == prefix) {
            let digits_at = at + pos + prefix.len();
            let digits = body[digits_at..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if let Some(n) = std::str::from_utf8(&body[digits_at..digits_at + digits])
                .ok()
                .and_then(|d| d.parse().ok())
            {
                named.insert(n);
            }
            at = digits_at + digits;
        }
    }
    named
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether `/readyz` answers 200.
fn ready(port: u16) -> bool {
    get(port, "/readyz").is_ok()
}

/// The body of a GET of `path` on the agent's port; an error unless it answers 200.
fn get(port: u16, path: &str) -> Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let ok = answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200");
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| answer.split_off(i + 4));
    match (ok, body) {
        (true, Some(body)) => Ok(body),
        _ => bail!("GET {path}: not a 200 answer"),
    }
}

/// The process's user and system CPU time (all its threads, dead ones included), seconds.
fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').context("parsing /proc/pid/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/pid/stat")?
            .parse::<f64>()?)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? / hz, ticks(12)? / hz))
}

/// The on-CPU time of all the process's live threads, seconds (first field of each
/// `/proc/<pid>/task/<tid>/schedstat`, in ns: finer than the tick-based user/system split).
fn on_cpu_seconds(pid: u32) -> Result<f64> {
    let mut ns = 0u64;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let text = fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        ns += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(ns as f64 / 1e9)
}

/// VmRSS and VmHWM of a process, KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// An HTTP sink for OTLP/HTTP exports: answers every POST with 200 and an empty
/// `ExportMetricsServiceResponse`, keeping the count and the last body.
struct Sink {
    port: u16,
    state: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
}

/// What the sink received. An export split into several requests sends them back to back:
/// a request within [`SAME_EXPORT`] of the previous one belongs to the same export.
#[derive(Default)]
struct Received {
    exports: u64,
    last_request_at: Option<Instant>,
    /// The requests of the last export.
    last_export: Vec<Vec<u8>>,
}

const SAME_EXPORT: Duration = Duration::from_secs(1);

impl Received {
    fn add(&mut self, body: Vec<u8>) {
        let now = Instant::now();
        if self
            .last_request_at
            .is_none_or(|at| now.duration_since(at) > SAME_EXPORT)
        {
            self.exports += 1;
            self.last_export.clear();
        }
        self.last_request_at = Some(now);
        self.last_export.push(body);
    }
}

impl Sink {
    fn start() -> Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::Builder::new()
            .name("otlp-sink".into())
            .spawn(move || {
                while !sp.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let st = st.clone();
                            thread::spawn(move || serve(conn, &st));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(Sink { port, state, stop })
    }

    fn exports(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.exports)
    }

    /// The requests of the last export.
    /// The last export's requests once none has come for [`SAME_EXPORT`] (at most 15 s of
    /// waiting: exports are 10 s apart).
    fn settled_last_export(&self) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let Ok(s) = self.state.lock() else {
                return Vec::new();
            };
            let quiet = s
                .last_request_at
                .is_none_or(|at| at.elapsed() > SAME_EXPORT);
            if quiet || Instant::now() >= deadline {
                return s.last_export.clone();
            }
            drop(s);
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves requests on one keep-alive connection until it closes.
fn serve(conn: TcpStream, state: &Mutex<Received>) {
    let _ = conn.set_nonblocking(false);
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        // Request line and headers.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(mut s) = state.lock() {
            s.add(body);
        }
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// The load: cgroups in the unified hierarchy, each with one waking process. Dropping it kills
/// the processes and removes the cgroups.
struct Load {
    cgroups: Vec<LoadCgroup>,
}

struct LoadCgroup {
    dir: PathBuf,
    child: Option<Child>,
}

impl Load {
    fn start(load_bin: &Path, n: usize) -> Result<Load> {
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.controllers").exists())
            .context("no cgroup v2 hierarchy under /sys/fs/cgroup")?;
        let mut load = Load {
            cgroups: Vec::new(),
        };
        let period = period_ms(n).to_string();
        for i in 0..n {
            super::check_interrupted()?;
            let name = format!("{PREFIX}-{}-{i}", std::process::id());
            let dir = root.join(&name);
            fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let procs = dir.join("cgroup.procs");
            let mut cmd = Command::new(load_bin);
            cmd.args(["sleeper", "--period-ms", &period, "--work-us", WORK_US])
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            // SAFETY: between fork and exec the closure only opens and writes a file and calls
            // prctl (async-signal-safe; no allocation: the path is built before).
            let procs_c = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes())?;
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs_c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                    libc::close(fd);
                    if !ok {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn().context("starting a load process")?;
            load.cgroups.push(LoadCgroup {
                dir,
                child: Some(child),
            });
        }
        Ok(load)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.cgroups {
            if let Some(mut child) = c.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for c in &self.cgroups {
            if let Err(e) = fs::remove_dir(&c.dir) {
                eprintln!("bench: cycle: removing {}: {e}", c.dir.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::load_indices_named;

    #[test]
    fn names_each_load_cgroup_once_and_no_prefix_of_another() {
        let bodies = vec![
            b"x nodesat-bench-cycle-7-1\"y nodesat-bench-cycle-7-12/ nodesat-bench-cycle-8-3"
                .to_vec(),
            b"nodesat-bench-cycle-7-12 nodesat-bench-cycle-7-".to_vec(),
        ];
        let named = load_indices_named(&bodies, b"nodesat-bench-cycle-7-");
        let mut named: Vec<usize> = named.into_iter().collect();
        named.sort();
        assert_eq!(named, vec![1, 12]);
    }
}

//! The agent's own cost per collection-and-export cycle with many active cgroups: its process
//! CPU time (user and system) per cycle and its resident memory, with OTLP export to a local
//! sink, at the default 10 s interval.
//!
//! Two runs, one after the other, the same but for the load:
//! - baseline: the machine as it is;
//! - loaded: plus `cgroups` cgroups, each with a process that wakes every 100 ms and works for
//!   50 µs (so every cgroup has run-queue figures every interval).
//!
//! The agent runs with `--output none` (nothing printed: the cost is collection and export)
//! and `--max-entities` above the cgroup count (every cgroup exported). Readiness comes from
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
/// What every load process does.
const PERIOD_MS: &str = "100";
const WORK_US: &str = "50";
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
    /// Of the load's cgroups, how many the last export named.
    named_in_last_export: usize,
    export_bytes_last: usize,
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
            "last_export_bytes": self.export_bytes_last,
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
        "| run | cgroups exported | CPU/cycle | of one core | user (ticks) | system (ticks) | RSS | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, f) in [("baseline", &baseline), ("loaded", &loaded)] {
        println!(
            "| {name} | {} | {:.1} ms | {:.3}% | {:.2} s | {:.2} s | {:.1} MB | {:.1} MB |",
            f.named_in_last_export,
            f.cpu_ms_per_cycle(),
            f.core_percent(),
            f.user_s,
            f.system_s,
            f.rss_kib as f64 / 1024.0,
            f.hwm_kib as f64 / 1024.0,
        );
    }
    let cpu_ratio = ratio(loaded.cpu_ms_per_cycle(), baseline.cpu_ms_per_cycle());
    let rss_ratio = ratio(loaded.rss_kib as f64, baseline.rss_kib as f64);
    println!(
        "loaded / baseline: CPU per cycle {cpu_ratio:.2}x, RSS {rss_ratio:.2}x. Targets with \
         {cgroups} cgroups: under 1% of one core ({}), under 50 MB RSS ({})",
        verdict(loaded.core_percent() < 1.0),
        verdict((loaded.hwm_kib as f64) < 50.0 * 1024.0),
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
        "load_process": format!("wakes every {PERIOD_MS} ms, works {WORK_US} us"),
        "baseline": baseline.json(),
        "loaded": loaded.json(),
        "cpu_per_cycle_ratio": cpu_ratio,
        "rss_ratio": rss_ratio,
        "target_core_percent_met": loaded.core_percent() < 1.0,
        "target_rss_met": (loaded.hwm_kib as f64) < 50.0 * 1024.0,
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
    let max_entities = (load.map_or(0, |l| l.cgroups.len()) + 1000).to_string();
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
            "--health-listen",
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
    drop(agent);
    let exports = sink.exports() - exports_at_start;
    let last = sink.last_body();
    let named_in_last_export = load.map_or(0, |l| {
        l.cgroups
            .iter()
            .filter(|c| contains(&last, c.name.as_bytes()))
            .count()
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
        export_bytes_last: last.len(),
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether `/readyz` answers 200.
fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
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
    state: Arc<Mutex<(u64, Vec<u8>)>>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    fn start() -> Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new((0, Vec::new())));
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
        self.state.lock().map_or(0, |s| s.0)
    }

    fn last_body(&self) -> Vec<u8> {
        self.state
            .lock()
            .map_or_else(|_| Vec::new(), |s| s.1.clone())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves requests on one keep-alive connection until it closes.
fn serve(conn: TcpStream, state: &Mutex<(u64, Vec<u8>)>) {
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
            s.0 += 1;
            s.1 = body;
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
    name: String,
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
        for i in 0..n {
            super::check_interrupted()?;
            let name = format!("{PREFIX}-{}-{i}", std::process::id());
            let dir = root.join(&name);
            fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let procs = dir.join("cgroup.procs");
            let mut cmd = Command::new(load_bin);
            cmd.args(["sleeper", "--period-ms", PERIOD_MS, "--work-us", WORK_US])
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
                name,
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

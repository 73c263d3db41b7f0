//! nodesat: a node-level eBPF health and saturation agent.

mod cgroups;
mod check;
mod collector;
mod config;
mod core;
mod export;
mod health;
mod identity;
mod output;
mod privileges;
mod probes;
mod report;
mod top;

use std::process::ExitCode;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use clap::{Parser, Subcommand};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    cgroups::{CgroupNames, Hierarchy, HierarchyChoice},
    collector::{Collector, oom::OomEvents},
    config::{Config, EXIT_CONFIG, Flags, VariantChoice},
    privileges::Privileges,
    probes::{LoadOptions, Probes, ProgramSet},
};

/// Exit code when privileges are missing (EX_NOPERM).
pub const EXIT_NO_PERMISSION: i32 = 77;
/// Exit code when the kernel cannot run the agent (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = 69;
/// Exit code when stdout cannot be written (EX_IOERR); a pipe whose reader went away is not
/// one (exit 0).
pub const EXIT_IO_ERROR: i32 = 74;

#[derive(Parser)]
#[command(
    name = "nodesat",
    version,
    about = "Node-level eBPF health and saturation agent: run-queue latency per cgroup, per-CPU run-queue length."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the probes and report every interval (a table on stdout by default).
    Run(Flags),
    /// Preflight: kernel, BTF, privileges, and which attach variant each probe can use.
    Check(Flags),
    /// Benchmark floor: attach empty programs on the agent's hooks and wait for SIGTERM.
    #[command(hide = true)]
    AttachEmpty(Flags),
    /// Live terminal view: cgroups sortable by any column, per-CPU run queues, OOM kills as
    /// they happen (keys 1-7 or s: sort column, r: reverse, q: quit). Prints the table each
    /// interval instead when stdout is not a terminal.
    Top(Flags),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Run(flags)
    | Command::Check(flags)
    | Command::AttachEmpty(flags)
    | Command::Top(flags)) = &cli.command;
    let mut config = match Config::load(flags, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nodesat: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if matches!(cli.command, Command::AttachEmpty(_)) {
        // The benchmark reads the ready line and the final statistics as JSON.
        config.output = config::Output::Json;
    }
    // top: logs on the same terminal would scribble over the live view; errors only.
    if matches!(cli.command, Command::Top(_))
        && top::View::Top.live()
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
    {
        config.log_level = tracing::Level::ERROR;
    }
    init_logging(config.log_level);
    let code = match cli.command {
        Command::Check(_) => check::check(&config),
        Command::Run(_) => exit_code(run(&config, ProgramSet::Agent, top::View::Stream)),
        Command::AttachEmpty(_) => exit_code(run(&config, ProgramSet::Floor, top::View::Stream)),
        Command::Top(_) => exit_code(run(&config, ProgramSet::Agent, top::View::Top)),
    };
    ExitCode::from(code as u8)
}

fn init_logging(level: tracing::Level) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// An error that decides the exit code, with the sentence to print.
struct Fatal {
    code: i32,
    message: String,
}

fn exit_code(r: Result<(), Fatal>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(Fatal { code, message }) => {
            eprintln!("nodesat: {message}");
            code
        }
    }
}

/// Loads and attaches `set`, then collects every interval until SIGINT or SIGTERM. The floor
/// set (benchmark) only attaches and reports its programs' statistics at the end.
fn run(config: &Config, set: ProgramSet, view: top::View) -> Result<(), Fatal> {
    if let Some(why) = Privileges::current().refusal() {
        return Err(Fatal {
            code: EXIT_NO_PERMISSION,
            message: why,
        });
    }
    let forced = match config.probe_variant {
        VariantChoice::Auto => None,
        VariantChoice::Only(v) => Some(v),
    };
    let hierarchy = Hierarchy::find(&config.cgroup_root, config.cgroup_hierarchy);
    if hierarchy.is_none() && config.cgroup_hierarchy != HierarchyChoice::Auto {
        return Err(Fatal {
            code: EXIT_CONFIG,
            message: format!(
                "cgroup_hierarchy = {:?}, but no such hierarchy is mounted under {}",
                config.cgroup_hierarchy,
                config.cgroup_root.display()
            ),
        });
    }
    let opts = LoadOptions {
        max_cgroups: config.max_cgroups,
        mount_tracefs: config.probe_variant == VariantChoice::Only(probes::Variant::Tracepoint),
        cgroup_v1_cpu: matches!(hierarchy, Some(Hierarchy::V1Cpu(_))),
        debug_runqueue: config.debug_runqueue,
        neighbours: config.neighbours,
    };
    let mut probes = Probes::load(&opts).map_err(|e| Fatal {
        code: EXIT_UNAVAILABLE,
        message: format!("the kernel refused nodesat's eBPF programs: {e}. Run `nodesat check` to see what this kernel allows."),
    })?;
    for probe in probes::probes_of(set) {
        probes.attach_group(probe, &probe.variants(forced));
    }
    probes.attaching_done();
    if !probes.hooks.iter().any(|h| h.attached) {
        probes.detach();
        return Err(Fatal {
            code: EXIT_UNAVAILABLE,
            message: "no probe could attach on this kernel; run `nodesat check` to see why".into(),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fatal {
            code: 1,
            message: format!("starting the runtime: {e}"),
        })?;
    let oom_events = match set {
        ProgramSet::Agent => probes
            .take_ring_buf(agent_ebpf::oom::MAP_EVENTS)
            .map_err(|e| {
                tracing::warn!("OOM kills will only be counted, not shown as they happen: {e}")
            })
            .ok(),
        ProgramSet::Floor => None,
    };
    let result = runtime.block_on(collect_until_signal(
        config, hierarchy, &probes, set, oom_events, view,
    ));
    // An HTTP export request the shutdown gave up on is still on its blocking thread: do not
    // wait for it (dropping the runtime would, up to the request's timeout).
    runtime.shutdown_background();
    probes.detach();
    match result {
        Ok(Ended::Stopped) => Ok(()),
        Ok(Ended::Stdout(output::StdoutError::ReaderGone)) => {
            tracing::info!("stdout's reader went away: probes detached, exiting");
            Ok(())
        }
        Ok(Ended::Stdout(e)) => Err(Fatal {
            code: EXIT_IO_ERROR,
            message: format!("{e}; probes detached"),
        }),
        Err(e) => Err(Fatal {
            code: 1,
            message: format!("{e:#}"),
        }),
    }
}

/// Why the collection loop ended (an error aside).
enum Ended {
    /// A signal or `q`.
    Stopped,
    /// stdout can take no more: its reader went away (exit 0) or a write failed (exit 74).
    Stdout(output::StdoutError),
}

async fn collect_until_signal(
    config: &Config,
    hierarchy: Option<Hierarchy>,
    probes: &Probes,
    set: ProgramSet,
    oom_events: Option<RingBuf<MapData>>,
    view: top::View,
) -> anyhow::Result<Ended> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Rescans are rate-limited to two per interval: collections come one interval apart, so a
    // limit of one interval would often skip the rescan a new cgroup needs.
    let names = CgroupNames::new(hierarchy, config.interval / 2);
    let kubelet = match &config.kubelet_url {
        Some(url) => {
            // The URL actually used: a base URL or host:port was completed in the config.
            tracing::info!(url = %url, "reading pod metadata from the kubelet at {url}");
            Some(
                identity::kubelet::KubeletWatcher::spawn(identity::kubelet::KubeletConfig::new(
                    url,
                ))
                .context("starting the kubelet pod list thread")?,
            )
        }
        None => None,
    };
    let identities = identity::Resolver::new(kubelet.as_ref().map(|k| k.metadata()))
        .with_capacity(4 * config.max_cgroups as usize);
    let mut collector =
        Collector::new(probes, names, identities, config).context("reading the probes' maps")?;
    let mut oom_ring = match oom_events {
        // SAFETY: the ring buffer owns its fd and keeps it open while the AsyncFd owns it.
        Some(ring) => Some(
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| anyhow::anyhow!("polling the OOM event ring buffer: {e}"))?,
        ),
        None => None,
    };
    let describer = OomEvents::new(&config.cgroup_root, &config.host_root);
    // export: OTLP when an endpoint is configured, the Prometheus text when /metrics is
    // served (each report is handed over below)
    let mut exports =
        export::Exports::start(config.export.as_ref(), config.prometheus_listen.is_some())
            .context("starting the OTLP exporter")?;
    if let Some(k) = &kubelet {
        exports.watch_kubelet(k.metadata());
    }
    let health = health::Health::new(config.interval);
    let mut servers = Vec::new(); // served until dropped
    for (addr, routes) in health::routes(
        config.health_listen,
        &health,
        config.prometheus_listen,
        exports.exposition(),
    ) {
        let paths = match (&routes.health, &routes.metrics) {
            (Some(_), Some(_)) => "/healthz, /readyz and /metrics",
            (Some(_), None) => "/healthz and /readyz",
            _ => "/metrics",
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} for {paths}"))?;
        tracing::info!(%addr, "serving {paths}");
        servers.push(AbortOnDrop(tokio::spawn(health::serve(listener, routes))));
    }
    // `run` prints the table or JSON lines; `top` draws the live view (after the setup above).
    let mut display = top::Display::new(config, view).context("starting the terminal view")?;
    let mut keys = display.take_keys();
    display.ready(&probes.hook_stats());
    tracing::info!(
        interval = %humantime::format_duration(config.interval),
        "collecting; SIGINT or SIGTERM stops after a final collection"
    );
    let mut pipe_closed = match &display {
        top::Display::Plain(_) if config.output != config::Output::None => {
            output::watch_pipe_reader()
        }
        _ => None,
    };
    let mut ended = display.take_stdout_failure().map(Ended::Stdout);
    let start = tokio::time::Instant::now() + config.interval;
    let mut tick = tokio::time::interval_at(start, config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while ended.is_none() {
        tokio::select! {
            _ = tick.tick() => {
                if set == ProgramSet::Agent {
                    match collector.collect(probes, false) {
                        Ok(report) => {
                            health.collected();
                            display.report(&report);
                            exports.report(&report);
                        }
                        Err(e) => tracing::warn!("collection failed, retrying next interval: {e}"),
                    }
                }
            }
            ready = readable(&mut oom_ring) => {
                let mut guard = ready.context("waiting for OOM events")?;
                while let Some(item) = guard.get_inner_mut().next() {
                    match parse_oom_event(&item) {
                        Some(event) => {
                            let kill = describer.describe(&event, &mut collector.names);
                            collector.oom_found(event.cgroup, kill.cgroup_id);
                            display.oom_kill(&kill);
                        }
                        None => tracing::warn!("malformed OOM event of {} bytes", item.len()),
                    }
                }
                guard.clear_ready();
            }
            key = top::next_key(&mut keys) => if display.key(key) { tracing::info!("quit: final collection"); break; },
            _ = pipe_reader_gone(&mut pipe_closed) => {
                tracing::info!("stdout's reader went away: final collection");
                display.stop_writing();
                ended = Some(Ended::Stdout(output::StdoutError::ReaderGone));
                break;
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: final collection"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: final collection"); break; }
        }
        if let Some(e) = display.take_stdout_failure() {
            match &e {
                output::StdoutError::ReaderGone => {
                    tracing::info!("stdout's reader went away: final collection")
                }
                output::StdoutError::Write(_) => tracing::error!("{e}: final collection"),
            }
            ended = Some(Ended::Stdout(e));
        }
    }
    // One budget for the whole drain, from here: the final collection, OTLP delivery, the
    // kubelet thread; the runtime then waits for no blocking request (see `run`).
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    let report = collector
        .collect(probes, true)
        .context("final collection")?;
    display.report(&report);
    exports.report(&report);
    exports.shutdown(deadline).await;
    if let Some(k) = kubelet
        && !k.stop_until(Some(deadline.into_std()))
    {
        tracing::warn!("shutdown timeout ran out: kubelet pod list fetch abandoned");
    }
    Ok(ended.unwrap_or(Ended::Stopped))
}

/// Resolves when stdout's pipe reader went away; never without a watcher.
async fn pipe_reader_gone(watch: &mut Option<tokio::sync::oneshot::Receiver<()>>) {
    match watch {
        Some(rx) => {
            if rx.await.is_err() {
                // The watcher stopped without seeing it: wait no more on it.
                *watch = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Waits until the ring buffer has data; never completes when there is none to wait on.
async fn readable(
    ring: &mut Option<AsyncFd<RingBuf<MapData>>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match ring {
        Some(fd) => fd.readable_mut().await,
        None => std::future::pending().await,
    }
}

fn parse_oom_event(bytes: &[u8]) -> Option<agent_ebpf::oom::OomEvent> {
    if bytes.len() < std::mem::size_of::<agent_ebpf::oom::OomEvent>() {
        return None;
    }
    // SAFETY: OomEvent is plain old data (aya::Pod) and the length was checked; the ring
    // buffer gives no alignment guarantee, hence read_unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// Stops a background task when dropped (the HTTP servers, at shutdown).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! The retransmit storm: bulk TCP transfers over loopback through an nftables rule that drops
//! a share of their packets, while the agent runs with BPF statistics on. Reports the TCP probes'
//! cost per event (run_time_ns / run_count) and how the agent's count compares with the
//! kernel's own TcpRetransSegs.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{BpfStats, check_interrupted, nodesat};

const TABLE: &str = "nodesat_bench";

/// An nftables table dropping a share of the packets to and from a loopback port (on input,
/// like loss on a network); deleted on drop.
struct LossyPort;

impl LossyPort {
    fn new(port: u16, loss_percent: u32) -> Result<LossyPort> {
        let percent = loss_percent.to_string();
        let _ = nft(&["delete", "table", "inet", TABLE]);
        nft(&["add", "table", "inet", TABLE])?;
        let guard = LossyPort;
        nft(&[
            "add",
            "chain",
            "inet",
            TABLE,
            "out",
            // Input, not output: a packet dropped on output fails the send at the sender
            // (retransmit failure, backoff), unlike loss on a network.
            "{ type filter hook input priority 0; }",
        ])?;
        for dir in ["dport", "sport"] {
            let port = port.to_string();
            nft(&[
                "add", "rule", "inet", TABLE, "out", "tcp", dir, &port, "numgen", "random", "mod",
                "100", "<", &percent, "drop",
            ])?;
        }
        Ok(guard)
    }
}

impl Drop for LossyPort {
    fn drop(&mut self) {
        if let Err(e) = nft(&["delete", "table", "inet", TABLE]) {
            eprintln!("bench: could not delete nftables table {TABLE}: {e}");
        }
    }
}

fn nft(args: &[&str]) -> Result<()> {
    let out = Command::new("nft")
        .args(args)
        .output()
        .context("running nft (apt-get install nftables)")?;
    if !out.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The kernel's TcpRetransSegs counter from /proc/net/snmp.
fn retrans_segs() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp")?;
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next(), tcp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Tcp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RetransSegs")
        .and_then(|(_, v)| v.parse().ok())
        .context("no RetransSegs in /proc/net/snmp")
}

/// Parallel connections in the storm: while some wait out a retransmission timeout, the
/// others keep retransmitting.
const CONNECTIONS: usize = 32;

/// Segment size: loopback's MTU is 64 KiB, which would make a handful of huge segments; real
/// networks carry ~1.4 KB ones, and many segments make many losses.
const MSS: u32 = 1400;

/// Share of packets dropped.
const LOSS_PERCENT: u32 = 2;

/// A client socket with a small MSS, connected to `port` on loopback.
fn connect_small_mss(port: u16) -> Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt, socket, sockopt,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::TcpMaxSeg, &MSS)?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, port),
    )?;
    let stream = TcpStream::from(fd);
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// Sends bytes from clients to a server over loopback for `duration`; returns bytes moved.
fn bulk_transfer(duration: Duration) -> Result<u64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let _lossy = LossyPort::new(port, LOSS_PERCENT)?;
    let start = Instant::now();
    let server = thread::spawn(move || -> std::io::Result<u64> {
        let readers: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let (mut conn, _) = listener.accept()?;
                // Lossy connections can take long to deliver their FIN: stop reading once the
                // storm is over and the connection has gone quiet.
                conn.set_read_timeout(Some(Duration::from_secs(1)))?;
                Ok(thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut total = 0u64;
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => total += n as u64,
                            Err(_) if start.elapsed() >= duration => break,
                            Err(_) => continue,
                        }
                    }
                    total
                }))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(readers.into_iter().map(|r| r.join().unwrap_or(0)).sum())
    });
    let writers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let mut client = connect_small_mss(port)?;
            Ok(thread::spawn(move || {
                let chunk = vec![7u8; 16 * 1024];
                while start.elapsed() < duration && check_interrupted().is_ok() {
                    if client.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }))
        })
        .collect::<Result<_>>()?;
    for w in writers {
        let _ = w.join();
    }
    let total = server.join().expect("server thread")?;
    Ok(total)
}

/// Runs the storm with the agent attached; prints and returns the figures.
pub fn measure(bin: &Path, duration: Duration) -> Result<Value> {
    let _stats = BpfStats::enable()?;
    eprintln!("bench: retransmit storm: starting nodesat ...");
    let mut agent = nodesat::Nodesat::start(bin, &["run", "--output", "json", "--interval", "1s"])?;
    agent.wait_ready()?;
    let before = retrans_segs()?;
    let bytes = bulk_transfer(duration)?;
    let kernel_retransmits = retrans_segs()? - before;
    let last = agent.stop()?;
    let probes = nodesat::probes(&last)?;
    println!(
        "\nretransmit storm: {CONNECTIONS} bulk TCP connections over loopback (MSS {MSS}), {LOSS_PERCENT}% of packets dropped by nftables, {} s; {:.1} MB moved",
        duration.as_secs_f64(),
        bytes as f64 / 1e6
    );
    println!(
        "kernel TcpRetransSegs: {kernel_retransmits} ({:.0}/s)",
        kernel_retransmits as f64 / duration.as_secs_f64()
    );
    let hooks = nodesat::hook_costs(&probes, &["tcp", "oom"]);
    Ok(json!({
        "duration_s": duration.as_secs_f64(),
        "bytes": bytes,
        "kernel_retrans_segs": kernel_retransmits,
        "hooks": hooks,
    }))
}

//! TCP retransmits: the agent must count each one on the cgroup of the
//! process that owns the socket, by family (ipv4/ipv6) and kind
//! (data/syn/synack), and its node totals must agree with the kernel's
//! `RetransSegs` counter.
//!
//! Cgroup `client` runs the clients and cgroup `server` the servers of three
//! loopback connections made lossy with nftables:
//! - an IPv4 and an IPv6 echo exchange (50 rounds of 200 bytes), where every
//!   4th packet in each direction is dropped, so that both sides retransmit;
//! - an IPv4 handshake whose SYN-ACKs are dropped until the rule is deleted
//!   after 1.5 s, so that the server's listener retransmits its SYN-ACK.
//!
//! Packets are dropped on the `input` hook, i.e. on the receiving side: then
//! every (re)transmission leaves the sender successfully, as with real network
//! loss. Dropped on `output` instead, the sender's transmission fails: the
//! kernel still counts a failed retransmission in `RetransSegs` (kernels whose
//! `tcp_retransmit_skb` tracepoint has no `err` field do not fire it for one),
//! and counts a failed SYN-ACK retransmission nowhere.
//!
//! The drops are deterministic (`numgen inc`: every 4th packet of each
//! connection and direction, counted separately) rather than random: with
//! random 30% loss both ways a retransmission is itself lost half of the time,
//! the exponential RTO backoff makes the run time heavy-tailed (one IPv6
//! exchange of 50 rounds took 69 s), while every 4th packet never loses a
//! retransmission twice in a row (about 10 s for 50 rounds here, with ~20
//! retransmits per side and family).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nodesat_tests::{
    Agent, NftTable, Report, TestCgroup, TestProcess, load_bin, nft_available, skip,
    skip_if_unprivileged, spawn_in, tcp_retrans_segs, wait_tcp_quiet,
};

const TEST: &str = "retransmits_land_on_the_socket_owners_cgroup";
/// Report interval the agent runs with.
const INTERVAL: &str = "2s";
/// Longest wait for the agent to attach its probes.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Echo rounds of the lossy exchanges.
const ROUNDS: u32 = 50;
/// Bytes per message.
const SIZE: u32 = 200;
/// Every this many packets of a connection in one direction, one is dropped.
const DROP_EVERY: u32 = 4;
/// How long SYN-ACKs of the handshake case are dropped.
const SYNACK_DROP_FOR: Duration = Duration::from_millis(1500);
/// Longest the clients may take, all together.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest wait for a server to print its address, or to exit after its
/// client did.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait, once packets are no longer dropped, for the connections'
/// last retransmissions (e.g. of a FIN) to be over.
const QUIET_TIMEOUT: Duration = Duration::from_secs(15);
/// The node total may differ from the kernel's count by this many
/// retransmits, or by this fraction of the kernel's count if that is more
/// (other traffic on the machine retransmits too).
const TOLERANCE_ABS: u64 = 3;
const TOLERANCE_REL: f64 = 0.05;

/// Chain (and netfilter hook) the drop rules are in.
const CHAIN: &str = "input";

/// A server of `nodesat-load tcp-server`, with the address it listens on.
struct Server {
    what: &'static str,
    process: TestProcess,
    addr: SocketAddr,
}

/// Starts `nodesat-load tcp-server` on `listen` (port 0: any free port) in
/// `cgroup` and waits until it listens.
fn start_server(what: &'static str, cgroup: &TestCgroup, listen: &str, rounds: u32) -> Server {
    let mut cmd = Command::new(load_bin!());
    cmd.args(["tcp-server", "--listen", listen])
        .args(["--rounds", &rounds.to_string(), "--size", &SIZE.to_string()])
        .stdout(Stdio::piped());
    let mut process = spawn_in(cgroup, cmd).unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let line = process
        .read_line(SERVER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what} on {listen} did not start listening: {e}"));
    let addr = line
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{what} printed {line:?}, not `listening <addr>`"));
    eprintln!("{what} (pid {}) listens on {addr}", process.pid());
    Server {
        what,
        process,
        addr,
    }
}

/// Starts `nodesat-load tcp-client` to `addr` in `cgroup`.
fn start_client(what: &str, cgroup: &TestCgroup, addr: SocketAddr, rounds: u32) -> TestProcess {
    let mut cmd = Command::new(load_bin!());
    cmd.args(["tcp-client", "--connect", &addr.to_string()])
        .args(["--rounds", &rounds.to_string(), "--size", &SIZE.to_string()]);
    spawn_in(cgroup, cmd).unwrap_or_else(|e| panic!("spawn {what}: {e}"))
}

/// Waits until every process has exited successfully, at most until
/// `deadline`; returns when each one exited, counted from `start`.
fn wait_all(processes: &mut [(&str, &mut TestProcess)], start: Instant, deadline: Instant) {
    let mut done = vec![false; processes.len()];
    while done.contains(&false) {
        for ((what, process), done) in processes.iter_mut().zip(&mut done) {
            if *done {
                continue;
            }
            if let Some(status) = process.try_wait().expect("try_wait") {
                eprintln!("{what} exited after {:.1?}: {status}", start.elapsed());
                assert!(status.success(), "{what} failed: {status}");
                *done = true;
            }
        }
        if Instant::now() >= deadline && done.contains(&false) {
            let running: Vec<&str> = processes
                .iter()
                .zip(&done)
                .filter(|(_, done)| !**done)
                .map(|((what, _), _)| *what)
                .collect();
            panic!(
                "{running:?} still running {:.1?} after the start",
                start.elapsed()
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Retransmits summed over reports, by (cgroup id, family, kind).
type Sums = BTreeMap<(u64, String, String), u64>;

fn sum_retransmits(reports: &[Report]) -> Sums {
    let mut sums = Sums::new();
    for report in reports {
        for cgroup in &report.cgroups {
            for r in &cgroup.tcp_retransmits {
                *sums
                    .entry((cgroup.cgroup_id, r.family.clone(), r.kind.clone()))
                    .or_default() += r.count;
            }
        }
    }
    sums
}

fn get(sums: &Sums, id: u64, family: &str, kind: &str) -> u64 {
    sums.get(&(id, family.to_owned(), kind.to_owned()))
        .copied()
        .unwrap_or(0)
}

#[test]
fn retransmits_land_on_the_socket_owners_cgroup() {
    if skip_if_unprivileged(TEST) {
        return;
    }
    if let Err(reason) = nft_available() {
        skip(TEST, &reason);
        return;
    }
    let client = TestCgroup::create("tcp-client").expect("create cgroup tcp-client");
    let server = TestCgroup::create("tcp-server").expect("create cgroup tcp-server");
    eprintln!(
        "clients in {} (id {}), servers in {} (id {})",
        client.relative_path(),
        client.id(),
        server.relative_path(),
        server.id()
    );

    let mut agent = Agent::start(INTERVAL, &[]);
    let ready = agent.wait_ready(READY_TIMEOUT);
    eprintln!("agent ready, probes: {:?}", ready.probes);
    let kernel_before = tcp_retrans_segs().expect("read RetransSegs");

    let mut v4 = start_server("IPv4 server", &server, "127.0.0.1:0", ROUNDS);
    let mut v6 = start_server("IPv6 server", &server, "[::1]:0", ROUNDS);
    let mut handshake = start_server("SYN-ACK server", &server, "127.0.0.1:0", 1);
    let ports: Vec<u16> = [&v4, &v6, &handshake]
        .iter()
        .map(|s| s.addr.port())
        .collect();

    let table = NftTable::create().expect("create nft table");
    table.add_chain(CHAIN, "input").expect("add nft chain");
    for port in [v4.addr.port(), v6.addr.port()] {
        for direction in ["dport", "sport"] {
            let rule = format!(
                "tcp {direction} {port} numgen inc mod {DROP_EVERY} == {} counter drop",
                DROP_EVERY - 1
            );
            table.add_rule(CHAIN, &rule).expect("add drop rule");
        }
    }
    let synack_rule = table
        .add_rule(
            CHAIN,
            &format!(
                "tcp sport {} tcp flags & (syn|ack) == syn|ack counter drop",
                handshake.addr.port()
            ),
        )
        .expect("add SYN-ACK drop rule");
    eprintln!("{}", table.list().expect("list nft table"));

    let start = Instant::now();
    let mut v4_client = start_client("IPv4 client", &client, v4.addr, ROUNDS);
    let mut v6_client = start_client("IPv6 client", &client, v6.addr, ROUNDS);
    let mut handshake_client = start_client("SYN-ACK client", &client, handshake.addr, 1);
    thread::sleep(SYNACK_DROP_FOR);
    let synack_drops = table
        .rules(CHAIN)
        .expect("list rules")
        .into_iter()
        .find(|r| r.handle == synack_rule)
        .and_then(|r| r.packets);
    table
        .delete_rule(CHAIN, synack_rule)
        .expect("delete SYN-ACK drop rule");
    eprintln!(
        "deleted the SYN-ACK drop rule after {:.1?}; it dropped {synack_drops:?} packets",
        start.elapsed()
    );

    wait_all(
        &mut [
            ("IPv4 client", &mut v4_client),
            ("IPv6 client", &mut v6_client),
            ("SYN-ACK client", &mut handshake_client),
        ],
        start,
        start + EXCHANGE_TIMEOUT,
    );
    let exchanges = start.elapsed();
    for s in [&mut v4, &mut v6, &mut handshake] {
        let status = s.process.wait_within(SERVER_TIMEOUT).expect("wait");
        let status = status.unwrap_or_else(|| panic!("{} still running", s.what));
        assert!(status.success(), "{} failed: {status}", s.what);
    }
    for rule in table.rules(CHAIN).expect("list rules") {
        eprintln!("nft: {} (packets dropped: {:?})", rule.text, rule.packets);
    }
    // No more losses: let the last retransmissions (of FINs, say) go through
    // while the agent still counts.
    drop(table);
    if let Err(left) = wait_tcp_quiet(&ports, QUIET_TIMEOUT) {
        eprintln!("warning: sockets still active after {QUIET_TIMEOUT:?}: {left:?}");
    }

    let stopped = agent.stop_and_collect();
    let kernel_after = tcp_retrans_segs().expect("read RetransSegs");
    stopped.assert_clean_stop();
    check_counts(
        &stopped.reports,
        &client,
        &server,
        kernel_after - kernel_before,
    );
    eprintln!("exchanges took {exchanges:.1?}");
}

/// Prints what the agent counted and checks it.
fn check_counts(reports: &[Report], client: &TestCgroup, server: &TestCgroup, kernel: u64) {
    let sums = sum_retransmits(reports);
    for report in reports {
        eprintln!(
            "report (final: {}): node tcp_retransmits={}, cgroups with retransmits: {:?}",
            report.is_final,
            report.node.tcp_retransmits,
            report
                .cgroups
                .iter()
                .filter(|c| c.total_retransmits() > 0)
                .map(|c| (c.cgroup_id, c.name.as_deref(), &c.tcp_retransmits))
                .collect::<Vec<_>>()
        );
        for (cgroup, what) in [(client, "client"), (server, "server")] {
            if let Some(name) = report.cgroup(cgroup.id()).and_then(|c| c.name.as_deref()) {
                assert_eq!(name, cgroup.relative_path(), "name of the {what} cgroup");
            }
        }
    }
    for ((id, family, kind), count) in &sums {
        let whose = if *id == client.id() {
            "client"
        } else if *id == server.id() {
            "server"
        } else {
            "other"
        };
        eprintln!("retransmits of cgroup {id} ({whose}) {family} {kind}: {count}");
    }
    let all_cgroups: u64 = sums.values().sum();
    let node: u64 = reports.iter().map(|r| r.node.tcp_retransmits).sum();
    eprintln!(
        "retransmits: all cgroups {all_cgroups}, node totals {node}, kernel RetransSegs delta {kernel}"
    );

    let expect_some = |cgroup: &TestCgroup, what: &str, family: &str, kind: &str| {
        let count = get(&sums, cgroup.id(), family, kind);
        assert!(
            count > 0,
            "no {family} {kind} retransmits on the {what} cgroup {} (id {}); counted: {sums:?}",
            cgroup.relative_path(),
            cgroup.id()
        );
    };
    expect_some(client, "client", "ipv4", "data");
    expect_some(client, "client", "ipv6", "data");
    expect_some(server, "server", "ipv4", "data");
    expect_some(server, "server", "ipv6", "data");
    expect_some(server, "server", "ipv4", "synack");
    // The handshake client's SYN went unanswered while SYN-ACKs were dropped: it retransmitted
    // it (kind syn, not data).
    expect_some(client, "client", "ipv4", "syn");
    for family in ["ipv4", "ipv6"] {
        assert_eq!(
            get(&sums, client.id(), family, "synack"),
            0,
            "{family} SYN-ACK retransmits on the client cgroup, which has no listener"
        );
    }
    assert_eq!(
        all_cgroups, node,
        "the node totals must be the sums over all cgroups"
    );
    let tolerance = TOLERANCE_ABS.max((kernel as f64 * TOLERANCE_REL).ceil() as u64);
    assert!(
        node.abs_diff(kernel) <= tolerance,
        "the agent counted {node} retransmits, the kernel {kernel} (tolerance {tolerance})"
    );
}

//! Why segments were retransmitted (`cause`: `rto`, `fast`, `tlp`), checked against each
//! network namespace's own kernel counters, exactly, for every variant of the tcp probe.
//!
//! Client and server each in their own namespace and cgroup (joined by a veth pair) echo
//! [`ROUNDS`] messages of [`SIZE`] bytes. In each namespace an nftables rule drops one data
//! packet in [`DROP_ONE_IN`] on input (a counter, not chance: the same packets every run), so
//! both ends lose segments mid-message (fast retransmit, `TCP_CA_Recovery`) and at the tail of
//! a message, where nothing follows to show the loss (a tail loss probe). A second exchange,
//! in new namespaces and cgroups, has the server's link go down for [`LINK_DOWN_FOR`] too:
//! what is in flight and its probe are lost and the retransmission timer fires (`TCP_CA_Loss`).
//!
//! The kernel's own split, per namespace (`/proc/net/netstat` `TcpExt`):
//! - `fast` + `other` = `TCPFastRetrans`: every retransmit of the queue outside Loss;
//! - `TCPSlowStartRetrans` ≤ `rto` ≤ `TCPSlowStartRetrans` + `TCPTimeouts`: the queue's in
//!   Loss, and the timer's own retransmit, at most one per timeout;
//! - `tlp` ≤ `TCPLossProbes` (a probe of new data is no retransmit), in the first exchange: a
//!   probe that fails on a link that is down after `RetransSegs` counted it is a retransmit
//!   but no loss probe to the kernel;
//! - all data retransmits + `TCPSynRetrans` = `RetransSegs`.
//!
//! Exact, except for events the kernel never ran the program for: the kernel's own trace of
//! `tcp_retransmit_skb` (a tracefs instance) counts the events, BPF run-time statistics count
//! the program's runs, and every segment nodesat lacks must belong to an event it was not run
//! for (at most one message's segments each: the echo has at most one message in flight per
//! direction). With none skipped, every figure must be exact.

use std::thread;
use std::time::{Duration, Instant};

use nodesat_tests::{
    Agent, NetnsPair, Report, Side, TestCgroup, load_bin, skip, skip_if_unprivileged,
    skip_without_tools,
    trace::{TraceInstance, events_not_run_for, run_counting},
};

const TEST: &str = "retransmit_causes_match_each_namespaces_counters";
const VARIANTS: [&str; 3] = ["tp_btf", "raw_tracepoint", "tracepoint"];
const ROUNDS: u32 = 300;
const SIZE: u32 = 16_000;
/// One data packet in this many is dropped on input, in each namespace.
const DROP_ONE_IN: u32 = 9;
/// When the server's link goes down, after the exchange starts, and for how long.
const LINK_DOWN_AFTER: Duration = Duration::from_millis(300);
const LINK_DOWN_FOR: Duration = Duration::from_millis(800);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(90);
/// The most segments one retransmitted skb can carry here: one message's (an echo has at
/// most one message in flight per direction), at the smallest MSS a veth link gives (1448).
const MESSAGE_SEGS: u64 = SIZE.div_ceil(1448) as u64;

/// `[RetransSegs, TCPSynRetrans, TCPFastRetrans, TCPSlowStartRetrans, TCPTimeouts,
/// TCPLossProbes]` of one namespace.
const COUNTERS: [&str; 6] = [
    "RetransSegs",
    "TCPSynRetrans",
    "TCPFastRetrans",
    "TCPSlowStartRetrans",
    "TCPTimeouts",
    "TCPLossProbes",
];

fn kernel_counts(pair: &NetnsPair, side: Side) -> [u64; 6] {
    std::array::from_fn(|i| {
        let (file, group) = if i == 0 {
            ("/proc/net/snmp", "Tcp")
        } else {
            ("/proc/net/netstat", "TcpExt")
        };
        pair.counter(side, file, group, COUNTERS[i])
            .unwrap_or_else(|e| panic!("{}: {e}", COUNTERS[i]))
    })
}

/// A side's retransmits from the agent's reports: data by cause, and SYNs.
#[derive(Debug, Default)]
struct Causes {
    rto: u64,
    fast: u64,
    tlp: u64,
    other: u64,
    unknown: u64,
    syn: u64,
    /// Attempts that failed before anything was sent, by error.
    failed: std::collections::BTreeMap<String, u64>,
}

impl Causes {
    fn of(reports: &[Report], cgroup_id: u64) -> Causes {
        let mut c = Causes::default();
        for cg in reports
            .iter()
            .flat_map(|r| r.cgroups.iter().filter(|cg| cg.cgroup_id == cgroup_id))
        {
            c.rto += cg.retransmits_caused("data", "rto");
            c.fast += cg.retransmits_caused("data", "fast");
            c.tlp += cg.retransmits_caused("data", "tlp");
            c.other += cg.retransmits_caused("data", "other");
            c.unknown += cg.retransmits_caused("data", "unknown");
            c.syn += cg
                .tcp_retransmits
                .iter()
                .filter(|r| r.kind != "data")
                .map(|r| r.count)
                .sum::<u64>();
            for f in &cg.tcp_retransmit_failures {
                *c.failed.entry(f.error.clone()).or_default() += f.count;
            }
        }
        c
    }
}

#[test]
fn retransmit_causes_match_each_namespaces_counters() {
    if skip_if_unprivileged(TEST) {
        return;
    }
    if skip_without_tools(TEST, &["ip", "nft"]) {
        return;
    }
    let Some(_stats) = run_counting(TEST) else {
        return;
    };
    for variant in VARIANTS {
        eprintln!("── --probe-variant {variant}");
        if !exchange(variant) {
            return;
        }
    }
}

/// A drop rule for one namespace's input: every `DROP_ONE_IN`th data packet of the
/// connection (`port` being the server's: `dport` on the server, `sport` on the client).
fn drop_rule(direction: &str, port: &str) -> String {
    format!(
        "table inet nodesat_in {{\n\
           chain in {{\n\
             type filter hook input priority 0;\n\
             tcp {direction} {port} tcp flags & (syn|fin|rst) == 0 meta length > 100 \
               numgen inc mod {DROP_ONE_IN} == 0 drop\n\
           }}\n\
         }}\n"
    )
}

/// One exchange's cgroups and its namespaces' counters over it.
struct Phase {
    what: &'static str,
    client: TestCgroup,
    server: TestCgroup,
    /// The growth of [`COUNTERS`], client's namespace then server's.
    kernel: [[u64; 6]; 2],
    took: Duration,
}

/// An echo exchange between two new namespaces, each dropping every [`DROP_ONE_IN`]th data
/// packet on input; with `link_down`, the server's link also goes down for [`LINK_DOWN_FOR`]
/// while the client sends.
fn phase(what: &'static str, link_down: bool) -> Result<Phase, String> {
    let pair = NetnsPair::create().map_err(|e| format!("cannot create network namespaces: {e}"))?;
    let client = TestCgroup::create(&format!("tcp-cause-{what}-client")).expect("cgroup");
    let server = TestCgroup::create(&format!("tcp-cause-{what}-server")).expect("cgroup");
    let load = std::path::Path::new(load_bin!());
    let (mut server_process, addr) = pair
        .start_echo_server(load, &server, ROUNDS, SIZE)
        .expect("server");
    let port = addr.rsplit(':').next().expect("port").to_owned();
    pair.nft(Side::Server, &drop_rule("dport", &port))
        .expect("nft");
    pair.nft(Side::Client, &drop_rule("sport", &port))
        .expect("nft");
    let before = [Side::Client, Side::Server].map(|side| kernel_counts(&pair, side));

    let start = Instant::now();
    let mut client_process = pair
        .start_echo_client(load, &client, &addr, ROUNDS, SIZE)
        .expect("client");
    if link_down {
        thread::sleep(LINK_DOWN_AFTER);
        pair.set_link(Side::Server, false).expect("link down");
        thread::sleep(LINK_DOWN_FOR);
        pair.set_link(Side::Server, true).expect("link up");
    }
    let link_up_at = start.elapsed();
    for (who, p) in [
        ("client", &mut client_process),
        ("server", &mut server_process),
    ] {
        let left = EXCHANGE_TIMEOUT.saturating_sub(start.elapsed());
        let status = p
            .wait_within(left)
            .expect("wait")
            .unwrap_or_else(|| panic!("{who} still running after {EXCHANGE_TIMEOUT:?}"));
        assert!(status.success(), "{what} {who}: {status}");
    }
    let took = start.elapsed();
    if link_down {
        assert!(
            took > link_up_at,
            "the exchange ended before the link came back: the timeout case is not provoked"
        );
    }
    // The last ACKs and FINs.
    thread::sleep(Duration::from_millis(500));
    let after = [Side::Client, Side::Server].map(|side| kernel_counts(&pair, side));
    let kernel = [0, 1].map(|s| std::array::from_fn(|i| after[s][i] - before[s][i]));
    Ok(Phase {
        what,
        client,
        server,
        kernel,
        took,
    })
}

fn exchange(variant: &str) -> bool {
    let mut agent = Agent::start("1s", &["--probe-variant", variant]);
    let ready = agent.wait_ready(Duration::from_secs(30));
    let tcp: Vec<_> = ready
        .probes
        .iter()
        .filter(|p| p["probe"] == "tcp")
        .collect();
    assert!(
        tcp.iter().all(|p| p["attached"] == true),
        "the tcp probe must attach with --probe-variant {variant}: {tcp:?}"
    );
    let trace = TraceInstance::start(&["tcp/tcp_retransmit_skb"], 8192)
        .expect("tracefs instance for tcp_retransmit_skb");
    let phases = match (phase("drops", false), phase("linkdown", true)) {
        (Ok(a), Ok(b)) => [a, b],
        (Err(e), _) | (_, Err(e)) => {
            skip(TEST, &e);
            return false;
        }
    };
    // The last interval takes in the last of it.
    thread::sleep(Duration::from_secs(1));
    let traced = trace.stop();
    let stopped = agent.stop_and_collect();
    stopped.assert_clean_stop();
    let skipped = events_not_run_for(
        &traced,
        stopped.final_report().expect("a final report"),
        "tcp_retransmit_skb",
    );
    let allowed = skipped * MESSAGE_SEGS;
    let mut missed_in_all = 0;
    let mine: Vec<u64> = phases
        .iter()
        .flat_map(|p| [p.client.id(), p.server.id()])
        .collect();
    for r in &stopped.reports {
        for cg in r.cgroups.iter().filter(|cg| !mine.contains(&cg.cgroup_id)) {
            if !cg.tcp_retransmits.is_empty() {
                eprintln!(
                    "elsewhere: cgroup {} ({:?}): {:?}",
                    cg.cgroup_id, cg.name, cg.tcp_retransmits
                );
            }
        }
    }

    for p in &phases {
        eprintln!("{}: exchange took {:.1?}", p.what, p.took);
        for (who, cgroup, k) in [
            ("client", &p.client, p.kernel[0]),
            ("server", &p.server, p.kernel[1]),
        ] {
            let what = format!("{} {who}", p.what);
            let [segs, syn_k, fast_k, slow_start, timeouts, probes] = k;
            let c = Causes::of(&stopped.reports, cgroup.id());
            eprintln!(
                "{what}: nodesat {c:?}; kernel RetransSegs {segs}, TCPSynRetrans {syn_k}, \
                 TCPFastRetrans {fast_k}, TCPSlowStartRetrans {slow_start}, TCPTimeouts {timeouts}, \
                 TCPLossProbes {probes}"
            );
            assert_eq!(c.unknown, 0, "{what}: retransmits of unknown cause");
            // What nodesat misses: only the segments of events it was not run for.
            let total = c.rto + c.fast + c.tlp + c.other + c.syn;
            assert!(
                total <= segs && segs - total <= allowed,
                "{what}: {total} retransmits against RetransSegs {segs}, with {skipped} \
                 events the program was not run for (at most {MESSAGE_SEGS} segments each)"
            );
            let missed = segs - total;
            missed_in_all += missed;
            if missed > 0 {
                eprintln!("{what}: {missed} segments missed, in events it was not run for");
            }
            assert!(
                c.fast + c.other <= fast_k && fast_k - (c.fast + c.other) <= missed,
                "{what}: fast + other {} against TCPFastRetrans {fast_k}",
                c.fast + c.other
            );
            assert!(
                c.rto + missed >= slow_start && c.rto <= slow_start + timeouts,
                "{what}: rto {} outside TCPSlowStartRetrans {slow_start} + up to TCPTimeouts \
                 {timeouts}",
                c.rto
            );
            if p.what == "drops" {
                // Every probe is sent: TCPLossProbes counts each one that is (a probe whose
                // transmission fails after RetransSegs counted it, as through a link that
                // is down, is in RetransSegs but not in TCPLossProbes).
                assert!(
                    c.tlp <= probes,
                    "{what}: tlp {} above TCPLossProbes {probes}",
                    c.tlp
                );
                for (cause, n) in [("fast", c.fast), ("tlp", c.tlp)] {
                    assert!(
                        n > 0,
                        "{what}: no {cause} retransmits: the case is not provoked"
                    );
                }
            }
        }
    }
    assert!(
        missed_in_all <= allowed,
        "{missed_in_all} segments missed in all, more than the {skipped} events not run for \
         can hold"
    );
    // The timeout: whichever side had data in flight when the link went down.
    let rto: u64 = [phases[1].client.id(), phases[1].server.id()]
        .iter()
        .map(|&id| Causes::of(&stopped.reports, id).rto)
        .sum();
    assert!(
        rto > 0,
        "linkdown: no rto retransmits after the link was down"
    );
    true
}

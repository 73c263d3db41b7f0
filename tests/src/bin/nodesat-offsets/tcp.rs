//! TCP retransmits without netfilter: once connected, both ends of each connection carry a
//! classic BPF socket filter that drops one incoming data packet in `DROP_ONE_IN` at random
//! (`SO_ATTACH_FILTER` with the `SKF_AD_RANDOM` ancillary load), so both ends retransmit. It
//! needs nothing but the socket API: the same code runs on the host and in a VM's initramfs.
//! The handshake is not made lossy (a lost SYN costs a 1 s timeout, doubling). The MSS is
//! clamped to `MSS` so that loopback's 64 KiB skbs carry many segments each and a
//! retransmitted skb counts several (`tcp_gso_segs`).
//!
//! One more client retransmits its SYN on purpose: a filter on its socket drops every SYN-ACK
//! for `SYN_ACK_DROP_FOR`, so its first retransmitted SYN (after 1 s) gets no answer either and
//! the second (after 3 s) connects. Those are kind `syn` (the socket in `SYN_SENT`), and with
//! the SYN-ACKs the server retransmits meanwhile they are what `TCPSynRetrans` counts.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodesat_tests::{TestCgroup, TestProcess, spawn_in, wait_tcp_quiet};
use socket2::{Domain, SockFilter, SockRef, Socket, Type};

/// One packet in this many is dropped on receipt, at random.
pub const DROP_ONE_IN: u32 = 8;
/// The MSS both ends use.
pub const MSS: u32 = 1000;
/// Bytes per echoed message.
pub const CHUNK: usize = 8 << 10;
/// How long the SYN client's socket drops SYN-ACKs.
const SYN_ACK_DROP_FOR: Duration = Duration::from_millis(1500);
/// Longest the exchanges may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest wait, after the exchanges, for the last (re)transmissions (FINs) to be over.
const QUIET_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket filter: drops one packet with a payload in `DROP_ONE_IN` at random; packets
/// without one (ACKs, FINs) always pass. (Lost ACKs too made a retransmission's round trip fail
/// one time in four, and the doubling timeout then once took a 59 s exchange under TCG.)
///
/// The filter sees the packet from its TCP header (`tcp_filter`): the header is 4 × the high
/// nibble of byte 12 long, the packet `len`.
fn lossy_filter() -> [SockFilter; 11] {
    const SKF_AD_OFF: u32 = (-0x1000i32) as u32;
    const SKF_AD_RANDOM: u32 = 56;
    let op = |code: u32, jt: u8, jf: u8, k: u32| SockFilter::new(code as u16, jt, jf, k);
    use libc::{
        BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_JEQ, BPF_JGT, BPF_JMP, BPF_K, BPF_LD, BPF_LEN,
        BPF_MISC, BPF_MOD, BPF_RET, BPF_RSH, BPF_TAX, BPF_W, BPF_X,
    };
    [
        // X = TCP header length: (P[12] >> 4) * 4.
        op(BPF_LD | BPF_B | BPF_ABS, 0, 0, 12),
        op(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 2),
        op(BPF_ALU | BPF_AND | BPF_K, 0, 0, 0x3c),
        op(BPF_MISC | BPF_TAX, 0, 0, 0),
        // No payload: accept.
        op(BPF_LD | BPF_W | BPF_LEN, 0, 0, 0),
        op(BPF_JMP | BPF_JGT | BPF_X, 0, 4, 0),
        // random() % DROP_ONE_IN == 0: drop.
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, SKF_AD_OFF + SKF_AD_RANDOM),
        op(BPF_ALU | BPF_MOD | BPF_K, 0, 0, DROP_ONE_IN),
        op(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0),
        op(BPF_RET | BPF_K, 0, 0, 0),
        op(BPF_RET | BPF_K, 0, 0, u32::MAX),
    ]
}

/// The SYN client's filter: drops every packet with SYN set (the SYN-ACKs), passes the rest.
fn no_syn_filter() -> [SockFilter; 4] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| SockFilter::new(code as u16, jt, jf, k);
    use libc::{BPF_ABS, BPF_B, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET};
    [
        // TCP flags are byte 13 of the header; SYN is 0x02.
        op(BPF_LD | BPF_B | BPF_ABS, 0, 0, 13),
        op(BPF_JMP | BPF_JSET | BPF_K, 0, 1, 0x02),
        op(BPF_RET | BPF_K, 0, 0, 0),
        op(BPF_RET | BPF_K, 0, 0, u32::MAX),
    ]
}

/// A TCP socket for `addr`'s family with the small MSS.
fn small_mss_socket(addr: &SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
    socket.set_tcp_mss(MSS)?;
    Ok(socket)
}

/// Makes a connected socket lose incoming packets.
fn make_lossy(stream: &TcpStream) -> io::Result<()> {
    SockRef::from(stream).attach_filter(&lossy_filter())
}

/// Helper mode `tcp-server LISTEN`: listens, prints `listening ADDR`, accepts one
/// connection and echoes everything until the client closes.
pub fn server(listen: SocketAddr) -> io::Result<()> {
    let socket = small_mss_socket(&listen)?;
    socket.set_reuse_address(true)?;
    socket.bind(&listen.into())?;
    socket.listen(1)?;
    let listener: TcpListener = socket.into();
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening {}", listener.local_addr()?)?;
    stdout.flush()?;
    let (mut stream, _) = listener.accept()?;
    drop(listener);
    make_lossy(&stream)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n])?;
    }
    stream.shutdown(Shutdown::Write)
}

/// Helper mode `tcp-client CONNECT BYTES`: sends `bytes` in `CHUNK`s, reading each back,
/// then closes and waits for the server to close.
pub fn client(connect: SocketAddr, bytes: usize) -> io::Result<()> {
    let socket = small_mss_socket(&connect)?;
    socket.connect(&connect.into())?;
    let mut stream: TcpStream = socket.into();
    make_lossy(&stream)?;
    let mut out = vec![0u8; CHUNK];
    let mut back = vec![0u8; CHUNK];
    let mut sent = 0;
    let mut round = 0u8;
    while sent < bytes {
        out.fill(round);
        stream.write_all(&out)?;
        stream.read_exact(&mut back)?;
        if back != out {
            return Err(io::Error::other(format!("round {round}: wrong echo")));
        }
        sent += CHUNK;
        round = round.wrapping_add(1);
    }
    stream.shutdown(Shutdown::Write)?;
    let mut byte = [0u8; 1];
    match stream.read(&mut byte)? {
        0 => Ok(()),
        _ => Err(io::Error::other("data after the last round")),
    }
}

/// Helper mode `tcp-syn-client CONNECT`: connects while its socket drops every SYN-ACK for
/// `SYN_ACK_DROP_FOR` (so the SYN is retransmitted), then closes and waits for the server to
/// close.
pub fn syn_client(connect: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(connect), Type::STREAM, None)?;
    socket.attach_filter(&no_syn_filter())?;
    // The filter belongs to the socket: a second descriptor of it can take it away while
    // connect() waits.
    let same = socket.try_clone()?;
    let lift = std::thread::spawn(move || {
        std::thread::sleep(SYN_ACK_DROP_FOR);
        same.detach_filter()
    });
    socket.connect(&connect.into())?;
    lift.join()
        .map_err(|_| io::Error::other("filter thread panicked"))??;
    let mut stream: TcpStream = socket.into();
    stream.shutdown(Shutdown::Write)?;
    let mut byte = [0u8; 1];
    match stream.read(&mut byte)? {
        0 => Ok(()),
        _ => Err(io::Error::other("data from the server")),
    }
}

/// What the exchanges did.
pub struct Exchanges {
    pub elapsed: Duration,
    /// Sockets still active at the end (their last retransmits may come after the agent
    /// stopped).
    pub not_quiet: Vec<String>,
}

/// Runs an IPv4 client in `v4`, an IPv6 client in `v6` and both servers in `server`, each
/// exchanging `bytes` both ways over lossy loopback connections, and the SYN client (IPv4,
/// in `v4`) against a third server; waits until their sockets are quiet.
pub fn exchange(
    exe: &Path,
    v4: &TestCgroup,
    v6: &TestCgroup,
    server_cgroup: &TestCgroup,
    bytes: usize,
) -> Result<Exchanges, String> {
    let start = Instant::now();
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    let mut ports = Vec::new();
    for (listen, client_cgroup, syn) in [
        ("127.0.0.1:0", v4, false),
        ("[::1]:0", v6, false),
        ("127.0.0.1:0", v4, true),
    ] {
        let mut cmd = Command::new(exe);
        cmd.args(["tcp-server", listen]).stdout(Stdio::piped());
        let mut s = spawn_in(server_cgroup, cmd).map_err(|e| format!("tcp-server: {e}"))?;
        let line = s
            .read_line(Duration::from_secs(30))
            .map_err(|e| format!("tcp-server on {listen} did not start: {e}"))?;
        let addr: SocketAddr = line
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("tcp-server printed {line:?}"))?;
        ports.push(addr.port());
        let mut cmd = Command::new(exe);
        if syn {
            cmd.args(["tcp-syn-client", &addr.to_string()]);
        } else {
            cmd.args(["tcp-client", &addr.to_string(), &bytes.to_string()]);
        }
        let c = spawn_in(client_cgroup, cmd).map_err(|e| format!("tcp-client: {e}"))?;
        servers.push((format!("server {addr}"), s));
        clients.push((format!("client of {addr}"), c));
    }
    for (what, p) in clients.iter_mut().chain(servers.iter_mut()) {
        wait_ok(what, p, EXCHANGE_TIMEOUT.saturating_sub(start.elapsed()))?;
    }
    let elapsed = start.elapsed();
    let not_quiet = wait_tcp_quiet(&ports, QUIET_TIMEOUT)
        .err()
        .unwrap_or_default();
    Ok(Exchanges { elapsed, not_quiet })
}

fn wait_ok(what: &str, p: &mut TestProcess, timeout: Duration) -> Result<(), String> {
    match p.wait_within(timeout) {
        Ok(Some(status)) if status.success() => Ok(()),
        Ok(Some(status)) => Err(format!("{what} failed: {status}")),
        Ok(None) => Err(format!("{what} still running after {timeout:?}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// `Tcp: RetransSegs` of `/proc/net/snmp`.
pub fn retrans_segs() -> Result<u64, String> {
    nodesat_tests::tcp_retrans_segs().map_err(|e| format!("reading /proc/net/snmp: {e}"))
}

/// `TcpExt: TCPSynRetrans` of `/proc/net/netstat`: SYNs and SYN-ACKs retransmitted.
pub fn syn_retrans() -> Result<u64, String> {
    nodesat_tests::proc_net_counter("/proc/net/netstat", "TcpExt", "TCPSynRetrans")
        .map_err(|e| format!("reading /proc/net/netstat: {e}"))
}

/// `TcpExt: TCPRetransFail` of `/proc/net/netstat`: retransmitted segments whose transmission
/// failed (counted in RetransSegs too).
pub fn retrans_fail() -> Result<u64, String> {
    nodesat_tests::proc_net_counter("/proc/net/netstat", "TcpExt", "TCPRetransFail")
        .map_err(|e| format!("reading /proc/net/netstat: {e}"))
}

/// The `TcpExt` counters of `/proc/net/netstat` that split retransmits by cause:
/// `[TCPFastRetrans, TCPSlowStartRetrans, TCPTimeouts, TCPLossProbes]`.
pub fn cause_counters() -> Result<[u64; 4], String> {
    let read = |name| {
        nodesat_tests::proc_net_counter("/proc/net/netstat", "TcpExt", name)
            .map_err(|e| format!("reading {name} in /proc/net/netstat: {e}"))
    };
    Ok([
        read("TCPFastRetrans")?,
        read("TCPSlowStartRetrans")?,
        read("TCPTimeouts")?,
        read("TCPLossProbes")?,
    ])
}

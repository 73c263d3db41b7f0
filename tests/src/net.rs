//! The kernel's TCP counters and socket table, for the network tests.

use std::fs;
use std::io;
use std::thread;
use std::time::{Duration, Instant};

/// Counter `name` of group `group` in a `/proc/net/snmp`-style file (also
/// `/proc/net/netstat`): the first `Group:` line names the columns, the
/// second holds the values.
pub fn proc_net_counter(file: &str, group: &str, name: &str) -> io::Result<u64> {
    let text = fs::read_to_string(file)?;
    parse_counter(&text, group, name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no counter {group}:{name} in {file}"),
        )
    })
}

/// The kernel's count of retransmitted TCP segments (`Tcp: RetransSegs` in
/// `/proc/net/snmp`; this network namespace only).
pub fn tcp_retrans_segs() -> io::Result<u64> {
    proc_net_counter("/proc/net/snmp", "Tcp", "RetransSegs")
}

/// Parses counter `group`:`name` from `/proc/net/snmp`-style `text`.
fn parse_counter(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let column = header.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// TCP sockets (IPv4 and IPv6, this network namespace) with a local or remote
/// port in `ports` that may still (re)transmit: those in a state other than
/// TIME_WAIT, CLOSE, FIN_WAIT2 and LISTEN. Each as `"<local> <remote>
/// <state>"` with hex fields as in `/proc/net/tcp`.
pub fn active_tcp_sockets(ports: &[u16]) -> Vec<String> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|file| fs::read_to_string(file).ok())
        .flat_map(|text| active_sockets_in(&text, ports))
        .collect()
}

/// Waits up to `timeout` until [`active_tcp_sockets`] finds none for `ports`;
/// returns the ones left otherwise.
pub fn wait_tcp_quiet(ports: &[u16], timeout: Duration) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let active = active_tcp_sockets(ports);
        if active.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(active);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The lines of a `/proc/net/tcp{,6}` table for [`active_tcp_sockets`].
fn active_sockets_in(text: &str, ports: &[u16]) -> Vec<String> {
    // TCP_FIN_WAIT2, TCP_TIME_WAIT, TCP_CLOSE, TCP_LISTEN.
    const QUIET: [&str; 4] = ["05", "06", "07", "0A"];
    let port = |addr: &str| {
        let (_, port) = addr.rsplit_once(':')?;
        u16::from_str_radix(port, 16).ok()
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, local, remote, state, ..] = fields[..] else {
                return None;
            };
            let ours = [local, remote]
                .iter()
                .any(|a| port(a).is_some_and(|p| ports.contains(&p)));
            (ours && !QUIET.contains(&state)).then(|| format!("{local} {remote} {state}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_by_column_name() {
        let snmp = "\
Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 50 20 0 3 4 1000 1200 77 0 5 0
Udp: InDatagrams RetransSegs
Udp: 1 2
";
        assert_eq!(parse_counter(snmp, "Tcp", "RetransSegs"), Some(77));
        assert_eq!(parse_counter(snmp, "Tcp", "OutSegs"), Some(1200));
        assert_eq!(parse_counter(snmp, "Udp", "RetransSegs"), Some(2));
        // -1 is not a counter value.
        assert_eq!(parse_counter(snmp, "Tcp", "MaxConn"), None);
        assert_eq!(parse_counter(snmp, "Tcp", "Nope"), None);
        assert_eq!(parse_counter(snmp, "Icmp", "InMsgs"), None);
    }

    #[test]
    fn finds_sockets_that_may_still_send() {
        // Ports 0x9C40 = 40000 and 0x9C41 = 40001.
        let tcp = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:9C40 0100007F:D000 09 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:D001 0100007F:9C41 06 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0100007F:D002 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4 1
";
        assert_eq!(
            active_sockets_in(tcp, &[40000, 40001]),
            ["0100007F:9C40 0100007F:D000 09"]
        );
        let tcp6 = "\
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:9C41 00000000000000000000000001000000:C000 01 0
";
        assert_eq!(active_sockets_in(tcp6, &[40001]).len(), 1);
        assert!(active_sockets_in(tcp6, &[40000]).is_empty());
    }
}

/// A side of a [`NetnsPair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Two network namespaces, as two pods have, joined by a veth pair: the client side has
/// `10.251.<n>.1/30`, the server side `.2`, each with its loopback up. Dropping it deletes
/// both namespaces, and with them the veth pair and the qdiscs on it.
pub struct NetnsPair {
    names: [String; 2],
    devices: [String; 2],
    addrs: [std::net::Ipv4Addr; 2],
}

impl NetnsPair {
    pub fn create() -> io::Result<NetnsPair> {
        let pid = std::process::id();
        let n = (pid % 250) as u8 + 1;
        let pair = NetnsPair {
            names: [format!("nodesat-{pid}-c"), format!("nodesat-{pid}-s")],
            // Interface names have at most 15 bytes.
            devices: [format!("nsc{pid}"), format!("nss{pid}")],
            addrs: [
                std::net::Ipv4Addr::new(10, 251, n, 1),
                std::net::Ipv4Addr::new(10, 251, n, 2),
            ],
        };
        let [c, s] = &pair.names;
        let [dc, ds] = &pair.devices;
        run_ip(&["netns", "add", c])?;
        run_ip(&["netns", "add", s])?;
        run_ip(&[
            "link", "add", dc, "netns", c, "type", "veth", "peer", "name", ds, "netns", s,
        ])?;
        for side in [Side::Client, Side::Server] {
            let (ns, dev) = (pair.name(side), pair.device(side));
            let addr = format!("{}/30", pair.addr(side));
            run_ip(&["-n", ns, "addr", "add", &addr, "dev", dev])?;
            run_ip(&["-n", ns, "link", "set", "lo", "up"])?;
            run_ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(pair)
    }

    fn index(side: Side) -> usize {
        match side {
            Side::Client => 0,
            Side::Server => 1,
        }
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self, side: Side) -> &str {
        &self.names[Self::index(side)]
    }

    pub fn device(&self, side: Side) -> &str {
        &self.devices[Self::index(side)]
    }

    pub fn addr(&self, side: Side) -> std::net::Ipv4Addr {
        self.addrs[Self::index(side)]
    }

    /// Limits what `side` sends to `rate` (tc syntax, e.g. `80kbit`) with an htb qdisc on its
    /// veth: what exceeds it waits in the sender's own queue.
    pub fn shape(&self, side: Side, rate: &str) -> io::Result<()> {
        let (ns, dev) = (self.name(side), self.device(side));
        run_tc(&[
            "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1",
        ])?;
        run_tc(&[
            "-n", ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate",
            rate, "ceil", rate, "burst", "1600",
        ])
    }

    /// Sets `side`'s veth up or down (down: what the other side sends is lost).
    pub fn set_link(&self, side: Side, up: bool) -> io::Result<()> {
        let state = if up { "up" } else { "down" };
        run_ip(&[
            "-n",
            self.name(side),
            "link",
            "set",
            self.device(side),
            state,
        ])
    }

    /// Loads an nftables ruleset (`nft -f -` syntax) into `side`'s namespace; it goes when
    /// the namespace does.
    pub fn nft(&self, side: Side, ruleset: &str) -> io::Result<()> {
        use std::io::Write as _;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", self.name(side), "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(ruleset.as_bytes())?;
        let out = child.wait_with_output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "nft -f - in {}: {}",
                self.name(side),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Counter `group`:`name` of `file` (`/proc/net/snmp`, `/proc/net/netstat`) in `side`'s
    /// namespace: the kernel keeps these per network namespace.
    pub fn counter(&self, side: Side, file: &str, group: &str, name: &str) -> io::Result<u64> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", self.name(side), "cat", file])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ip netns exec {} cat {file}: {}",
                self.name(side),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        parse_counter(&text, group, name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no counter {group}:{name} in {file} of {}", self.name(side)),
            )
        })
    }

    /// Starts `load tcp-server` (the `nodesat-load` binary) in the server's namespace and
    /// `cgroup`, to echo `rounds` messages of `size` bytes; returns it and the address it
    /// listens on.
    pub fn start_echo_server(
        &self,
        load: &std::path::Path,
        cgroup: &crate::TestCgroup,
        rounds: u32,
        size: u32,
    ) -> io::Result<(crate::TestProcess, String)> {
        let listen = format!("{}:0", self.addr(Side::Server));
        let mut cmd = self.command(Side::Server, load);
        cmd.args(["tcp-server", "--listen", &listen])
            .args(["--rounds", &rounds.to_string(), "--size", &size.to_string()])
            .stdout(std::process::Stdio::piped());
        let mut server = crate::spawn_in(cgroup, cmd)?;
        let line = server.read_line(Duration::from_secs(10))?;
        let addr = line
            .strip_prefix("listening ")
            .ok_or_else(|| io::Error::other(format!("the server printed {line:?}")))?
            .to_owned();
        Ok((server, addr))
    }

    /// Starts `load tcp-client` in the client's namespace and `cgroup`, against `addr` (see
    /// [`NetnsPair::start_echo_server`]).
    pub fn start_echo_client(
        &self,
        load: &std::path::Path,
        cgroup: &crate::TestCgroup,
        addr: &str,
        rounds: u32,
        size: u32,
    ) -> io::Result<crate::TestProcess> {
        let mut cmd = self.command(Side::Client, load);
        cmd.args(["tcp-client", "--connect", addr]).args([
            "--rounds",
            &rounds.to_string(),
            "--size",
            &size.to_string(),
        ]);
        crate::spawn_in(cgroup, cmd)
    }

    /// `program args…` to run in `side`'s namespace (`ip netns exec`, which execs it: the
    /// process keeps its pid and cgroup).
    pub fn command(&self, side: Side, program: &std::path::Path) -> std::process::Command {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", self.name(side)]).arg(program);
        cmd
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in &self.names {
            if let Err(e) = run_ip(&["netns", "del", ns]) {
                eprintln!("warning: deleting network namespace {ns}: {e}");
            }
        }
    }
}

fn run_tool(tool: &str, args: &[&str]) -> io::Result<()> {
    let out = std::process::Command::new(tool).args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn run_ip(args: &[&str]) -> io::Result<()> {
    run_tool("ip", args)
}

fn run_tc(args: &[&str]) -> io::Result<()> {
    run_tool("tc", args)
}

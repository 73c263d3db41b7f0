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

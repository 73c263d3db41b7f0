//! nftables tables for tests, deleted again on drop.
//!
//! Tests use them to make loopback traffic lossy (see the TCP retransmit
//! test). They drive the `nft` command-line tool, which must be installed
//! (package `nftables`; `cargo xtask test` installs it).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::read_in_background;

/// Prefix of every table the harness creates (in family `inet`).
pub const TABLE_PREFIX: &str = "nodesat_test_";

/// The family of the harness's tables: IPv4 and IPv6 alike.
const FAMILY: &str = "inet";

/// Longest one `nft` command may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `nft` is: the first of `nft` (on `PATH`), `/usr/sbin/nft` and
/// `/sbin/nft` that runs, else why none does.
fn nft_path() -> Result<&'static Path, String> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| {
        for candidate in ["nft", "/usr/sbin/nft", "/sbin/nft"] {
            let runs = Command::new(candidate)
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if runs {
                return Ok(PathBuf::from(candidate));
            }
        }
        Err("the nft tool (package nftables) is not installed".into())
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(Clone::clone)
}

/// Runs `nft <args>`, with `script` on its stdin if given; returns its stdout,
/// or an error with its stderr. Bounded by [`NFT_TIMEOUT`]; never panics.
pub fn nft(args: &[&str], script: Option<&str>) -> io::Result<String> {
    let path = nft_path().map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
    let mut cmd = Command::new(path);
    cmd.args(args)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let (Some(script), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin.write_all(script.as_bytes())?;
    }
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let deadline = Instant::now() + NFT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nft {args:?} still running after {NFT_TIMEOUT:?}; killed it"),
            ));
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    if status.success() {
        Ok(stdout)
    } else {
        Err(io::Error::other(format!(
            "nft {args:?} failed ({status}): {}",
            stderr.trim()
        )))
    }
}

/// Whether tests can use nftables here: `Ok(())`, or the reason they cannot
/// (no `nft` tool, or listing tables fails, e.g. for lack of privileges or of
/// nf_tables in the kernel).
pub fn nft_available() -> Result<(), String> {
    nft_path()?;
    nft(&["list", "tables"], None)
        .map(|_| ())
        .map_err(|e| format!("nftables is not usable: {e}"))
}

/// One rule of a chain, as `nft -a list chain` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRule {
    pub handle: u64,
    /// The rule as nft prints it, without the handle comment.
    pub text: String,
    /// Packets its `counter` counted (`None` without a counter).
    pub packets: Option<u64>,
}

/// An nftables table `inet nodesat_test_<pid>_<n>`, deleted (with its chains
/// and rules) when dropped.
///
/// Creating the first one in a process also deletes tables left behind by
/// test processes that no longer exist. Drop never panics; it reports
/// failures on stderr.
#[derive(Debug)]
pub struct NftTable {
    name: String,
}

impl NftTable {
    /// Creates an empty table.
    pub fn create() -> io::Result<Self> {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_stale);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{TABLE_PREFIX}{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        nft(&["create", "table", FAMILY, &name], None)?;
        Ok(Self { name })
    }

    /// Its name, `nodesat_test_<pid>_<n>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a base chain `chain` of type filter on netfilter hook `hook`
    /// (`"input"`, `"output"`, ...) with priority 0 and policy accept.
    pub fn add_chain(&self, chain: &str, hook: &str) -> io::Result<()> {
        let spec = format!("{{ type filter hook {hook} priority 0; policy accept; }}");
        nft(&["add", "chain", FAMILY, &self.name, chain, &spec], None).map(|_| ())
    }

    /// Appends `rule` (nft syntax, e.g. `tcp dport 80 counter drop`) to
    /// `chain`; returns its handle (for [`NftTable::delete_rule`]).
    pub fn add_rule(&self, chain: &str, rule: &str) -> io::Result<u64> {
        let echoed = nft(
            &[
                "--echo", "--handle", "add", "rule", FAMILY, &self.name, chain, rule,
            ],
            None,
        )?;
        echoed
            .lines()
            .find_map(|line| parse_handle(line).map(|(handle, _)| handle))
            .ok_or_else(|| {
                io::Error::other(format!("no handle in nft's echo of {rule:?}: {echoed:?}"))
            })
    }

    /// Deletes the rule with `handle` from `chain`.
    pub fn delete_rule(&self, chain: &str, handle: u64) -> io::Result<()> {
        let handle = handle.to_string();
        nft(
            &[
                "delete", "rule", FAMILY, &self.name, chain, "handle", &handle,
            ],
            None,
        )
        .map(|_| ())
    }

    /// The rules of `chain`, in order, with their counters.
    pub fn rules(&self, chain: &str) -> io::Result<Vec<NftRule>> {
        let listed = nft(&["-a", "list", "chain", FAMILY, &self.name, chain], None)?;
        Ok(parse_rules(&listed))
    }

    /// The table as `nft list table` prints it (for messages).
    pub fn list(&self) -> io::Result<String> {
        nft(&["list", "table", FAMILY, &self.name], None)
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        if let Err(e) = nft(&["delete", "table", FAMILY, &self.name], None) {
            eprintln!("nodesat-tests: deleting nft table {}: {e}", self.name);
        }
    }
}

/// `(handle, rule text)` of a line ending in `# handle N`.
fn parse_handle(line: &str) -> Option<(u64, &str)> {
    let (text, handle) = line.rsplit_once("# handle ")?;
    Some((handle.trim().parse().ok()?, text.trim()))
}

/// The rules in the output of `nft -a list chain` (chain and table lines
/// have handles too, but end in `{`).
fn parse_rules(listed: &str) -> Vec<NftRule> {
    listed
        .lines()
        .filter_map(parse_handle)
        .filter(|(_, text)| !text.ends_with('{'))
        .map(|(handle, text)| NftRule {
            handle,
            text: text.to_owned(),
            packets: text
                .split_once("counter packets ")
                .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok()),
        })
        .collect()
}

/// Deletes `inet nodesat_test_<pid>_*` tables whose process is gone.
fn sweep_stale() {
    let Ok(listed) = nft(&["list", "tables", FAMILY], None) else {
        return;
    };
    for name in stale_tables(&listed, |pid| {
        pid != std::process::id() && !crate::process_alive(pid)
    }) {
        eprintln!("nodesat-tests: deleting stale nft table {FAMILY} {name}");
        if let Err(e) = nft(&["delete", "table", FAMILY, &name], None) {
            eprintln!("nodesat-tests: {e}");
        }
    }
}

/// The harness's tables in `nft list tables` output whose pid `is_dead`.
fn stale_tables(listed: &str, is_dead: impl Fn(u32) -> bool) -> Vec<String> {
    listed
        .lines()
        .filter_map(|line| line.trim().strip_prefix("table ")?.split_once(' '))
        .filter(|(family, _)| *family == FAMILY)
        .map(|(_, name)| name.trim())
        .filter(|name| {
            name.strip_prefix(TABLE_PREFIX)
                .and_then(|rest| rest.split('_').next()?.parse::<u32>().ok())
                .is_some_and(&is_dead)
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules_with_handles_and_counters() {
        let listed = "\
table inet nodesat_test_12_0 {
\tchain input { # handle 1
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 40000 numgen inc mod 4 3 counter packets 20 bytes 4640 drop # handle 2
\t\ttcp sport 40001 tcp flags syn,ack / syn,ack drop # handle 5
\t}
}
";
        assert_eq!(
            parse_rules(listed),
            [
                NftRule {
                    handle: 2,
                    text: "tcp dport 40000 numgen inc mod 4 3 counter packets 20 bytes 4640 drop"
                        .into(),
                    packets: Some(20),
                },
                NftRule {
                    handle: 5,
                    text: "tcp sport 40001 tcp flags syn,ack / syn,ack drop".into(),
                    packets: None,
                },
            ]
        );
        assert_eq!(
            parse_handle("add rule inet t c tcp dport 1 drop # handle 17"),
            Some((17, "add rule inet t c tcp dport 1 drop"))
        );
    }

    #[test]
    fn finds_stale_tables_of_dead_processes() {
        let listed = "\
table inet nodesat_test_100_0
table inet nodesat_test_200_3
table ip nodesat_test_100_1
table inet other_100
table inet nodesat_test_x
";
        assert_eq!(
            stale_tables(listed, |pid| pid == 100),
            ["nodesat_test_100_0"]
        );
    }
}

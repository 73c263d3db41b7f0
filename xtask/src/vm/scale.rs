//! `cargo xtask bench --scale`: what the agent costs as the number of *possible* CPUs grows,
//! without a machine that has them. One Debian kernel boots under qemu with `-smp N` for each N
//! asked for (N possible CPUs: per-CPU maps and per-CPU kernel data are sized by those), then
//! takes every CPU but the first offline, so the measurement runs on one online CPU whatever N
//! is; in each guest `CGROUPS` cgroups get a process waking every 100 ms and the agent runs
//! `CYCLES` 2 s collection cycles.
//!
//! Why not `-smp 1,maxcpus=N` (hotpluggable CPUs, a faster boot): since the 2025 stable fix
//! "x86/acpi: ... QEMU expects legacy Enabled=0 LAPIC entries" the kernel counts qemu's
//! not-enabled MADT entries as possible CPUs only under a hypervisor it recognises, and TCG is
//! none: Debian 6.12.118 and 7.3 then report 1 possible CPU ("Allowing 1 present CPUs plus 0
//! hotplug CPUs"), also with `possible_cpus=`. A 128-vCPU guest boots in about two minutes
//! here instead.
//!
//! Per N: the maps' memory (the kernel's `memlock` figure of each map fd the agent holds), the
//! agent's resident memory, and its on-CPU time per cycle. With `--before BIN` (a static agent binary, e.g. one built from an
//! earlier commit) the same guest measures that agent too, right after, for a before/after
//! table from one run.

use std::{fs, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{TempDir, boot, initramfs, kernels, lock, musl_target, results, static_bins};
use crate::{provision, workspace_root};

pub struct Options {
    pub cpus: Vec<u32>,
    pub cgroups: usize,
    pub cycles: u32,
    pub kernel: String,
    pub before: Option<PathBuf>,
}

/// One agent's figures in one guest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub map_bytes: u64,
    pub maps: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu_ms_per_cycle: f64,
    pub cgroups_reported: u64,
}

/// Runs the measurement; prints the table and writes target/bench/scale.json.
pub fn measure(o: &Options) -> Result<Value> {
    let dir = workspace_root().join("target/vm");
    fs::create_dir_all(&dir)?;
    let _lock = lock(&dir.join(".lock"))?;
    provision::provision()?;
    provision::apt_install(&["qemu-system-x86", "busybox-static", "cpio", "musl-tools"])?;
    musl_target()?;
    let cache = dir.join("cache");
    fs::create_dir_all(&cache)?;
    let kernel = kernels::prepare(&o.kernel, &cache)?;
    let work = TempDir::new(dir.join("scale-work"))?;
    let mut binaries = static_bins(["nodesat", "nodesat-load"])?.to_vec();
    if let Some(before) = &o.before {
        let copy = work.path().join("nodesat-before");
        fs::copy(before, &copy).with_context(|| format!("copying {}", before.display()))?;
        binaries.push(copy);
    }
    let refs: Vec<&std::path::Path> = binaries.iter().map(PathBuf::as_path).collect();
    let initrd = initramfs::build(work.path(), &refs)?;

    let mut rows = Vec::new();
    for &n in &o.cpus {
        let log = dir.join(format!("scale-{n}.log"));
        eprintln!(
            "bench: scale: booting {} with {n} vCPUs (then all but one offline), {} cgroups \
             (serial console in {})",
            kernel.release,
            o.cgroups,
            log.display()
        );
        let b = boot::boot_with(
            &kernel.vmlinuz,
            &initrd,
            &log,
            // Under TCG a guest with 500 sleepers takes minutes to set up and each agent
            // minutes to start (BTF parsing); 128 vCPUs take two more to boot.
            Duration::from_secs(1800),
            &n.to_string(),
            &format!("nodesat.scale={},{}", o.cgroups, o.cycles),
        )?;
        let text = String::from_utf8_lossy(&fs::read(&log).unwrap_or_default()).into_owned();
        let outcome = results::parse(&text);
        if b.timed_out || !outcome.done {
            bail!(
                "the {n}-CPU guest did not finish (timed out: {}); see {}",
                b.timed_out,
                log.display()
            );
        }
        let possible = outcome
            .sections
            .get("scale-setup")
            .and_then(|s| field_in(&s.lines, "possible="))
            .unwrap_or_default();
        if cpu_count(&possible) != Some(n) {
            bail!(
                "the guest has possible CPUs {possible:?}, not {n}: the measurement would not \
                 be what it says (see {})",
                log.display()
            );
        }
        let agent = |name: &str| -> Result<Option<Figures>> {
            match outcome.sections.get(&format!("scale-{name}")) {
                Some(s) => figures(&s.lines)
                    .map(Some)
                    .with_context(|| format!("{name} in the {n}-CPU guest ({})", log.display())),
                None => Ok(None),
            }
        };
        let after = agent("nodesat")?.context("no figures of nodesat")?;
        let before = agent("nodesat-before")?;
        rows.push((n, possible, after, before));
    }
    print!("{}", table(&rows, o));
    let doc = json!({
        "kernel": kernel.release,
        "cgroups": o.cgroups,
        "cycles": o.cycles,
        "interval_s": 2,
        "online_cpus": 1,
        "rows": rows.iter().map(|(n, possible, after, before)| json!({
            "possible_cpus": n,
            "possible": possible,
            "nodesat": fig_json(after),
            "before": before.as_ref().map(fig_json),
        })).collect::<Vec<_>>(),
    });
    let path = workspace_root().join("target/bench/scale.json");
    if let Some(d) = path.parent() {
        fs::create_dir_all(d)?;
    }
    fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
    eprintln!("bench: wrote {}", path.display());
    Ok(doc)
}

fn fig_json(f: &Figures) -> Value {
    json!({
        "map_bytes": f.map_bytes,
        "maps": f.maps,
        "rss_kib": f.rss_kib,
        "hwm_kib": f.hwm_kib,
        "cpu_ms_per_cycle": (f.cpu_ms_per_cycle * 100.0).round() / 100.0,
        "cgroups_reported": f.cgroups_reported,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The table, with ratios against the first row (and against `before` where measured).
fn table(rows: &[(u32, String, Figures, Option<Figures>)], o: &Options) -> String {
    let mut out = format!(
        "\nscale: one vCPU online, N possible; {} active cgroups; {} cycles of 2 s\n\n\
         | possible CPUs | BPF maps | RSS (HWM) | CPU per cycle | maps before | maps after/before |\n\
         |---|---|---|---|---|---|\n",
        o.cgroups, o.cycles
    );
    let first = rows.first().map(|r| r.2.clone()).unwrap_or_default();
    for (n, _, f, before) in rows {
        let (b, ratio) = match before {
            Some(b) => (
                format!("{:.1} MiB", mib(b.map_bytes)),
                format!("{:.3}", f.map_bytes as f64 / b.map_bytes.max(1) as f64),
            ),
            None => ("-".into(), "-".into()),
        };
        out.push_str(&format!(
            "| {n} | {:.1} MiB ({:.2}× the first row) | {:.1} MiB ({:.1}) | {:.1} ms ({:.2}×) | {b} | {ratio} |\n",
            mib(f.map_bytes),
            f.map_bytes as f64 / first.map_bytes.max(1) as f64,
            f.rss_kib as f64 / 1024.0,
            f.hwm_kib as f64 / 1024.0,
            f.cpu_ms_per_cycle,
            f.cpu_ms_per_cycle / first.cpu_ms_per_cycle.max(1e-9),
        ));
    }
    out
}

/// How many CPUs a sysfs CPU list (`0-127`, `0,2-3`) names.
fn cpu_count(list: &str) -> Option<u32> {
    let mut n = 0;
    for part in list.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u32>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// `KEY=value` from the `scale ...` lines of a section.
fn field_in(lines: &[String], key: &str) -> Option<String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("scale "))
        .flat_map(str::split_whitespace)
        .find_map(|w| w.strip_prefix(key))
        .map(str::to_owned)
}

/// `scale VmRSS: 1234 kB`-style lines.
fn kib_in(lines: &[String], key: &str) -> Option<u64> {
    lines.iter().find_map(|l| {
        let rest = l.strip_prefix("scale ")?.strip_prefix(key)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// One agent's figures from its section of the log (pure).
pub fn figures(lines: &[String]) -> Result<Figures> {
    let oncpu: u64 = field_in(lines, "oncpu_ns=")
        .context("no on-CPU time")?
        .parse()?;
    let cycles: u64 = field_in(lines, "cycles=").context("no cycles")?.parse()?;
    let last: Value = lines
        .iter()
        .rev()
        .find_map(|l| {
            let v: Value = serde_json::from_str(l.trim()).ok()?;
            (v["type"] == "interval").then_some(v)
        })
        .context("no interval report")?;
    let number = |key: &str| -> Result<u64> {
        Ok(field_in(lines, key)
            .with_context(|| format!("no {key}"))?
            .parse()?)
    };
    Ok(Figures {
        map_bytes: number("map_bytes=")?,
        maps: number("maps=")?,
        rss_kib: kib_in(lines, "VmRSS:").context("no VmRSS")?,
        hwm_kib: kib_in(lines, "VmHWM:").context("no VmHWM")?,
        cpu_ms_per_cycle: oncpu as f64 / 1e6 / cycles.max(1) as f64,
        cgroups_reported: last["cgroups"].as_array().map_or(0, |c| c.len() as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_agents_section() {
        let lines: Vec<String> = [
            "scale oncpu_ns=150000000 cycles=5",
            "scale VmRSS: 20480 kB",
            "scale VmHWM: 40960 kB",
            "scale map_bytes=2097152 maps=2",
            "scale reports=7",
            r#"{"type":"interval","cgroups":[{"cgroup_id":1},{"cgroup_id":2}]}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let f = figures(&lines).unwrap();
        assert_eq!(f.map_bytes, 2 << 20);
        assert_eq!(
            (f.maps, f.rss_kib, f.hwm_kib, f.cgroups_reported),
            (2, 20480, 40960, 2)
        );
        assert!((f.cpu_ms_per_cycle - 30.0).abs() < 1e-9);
        assert_eq!(field_in(&lines, "cycles="), Some("5".into()));
        assert_eq!(cpu_count("0-127"), Some(128));
        assert_eq!(cpu_count("0"), Some(1));
        assert_eq!(cpu_count("0,2-3"), Some(3));
        assert_eq!(cpu_count(""), None);
    }
}

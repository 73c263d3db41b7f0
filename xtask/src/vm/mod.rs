//! `cargo xtask vm`: the kernel matrix. Boots Debian kernels in qemu (TCG, no KVM needed) with a
//! busybox initramfs holding a static nodesat, runs `nodesat check` and a short scenario in
//! each (a CPU-capped hog, a run-queue storm, the agent's JSON reports), and reports which
//! attach variant each probe got and whether the figures came through, per kernel.
//!
//! Layout under target/vm/: `cache/` (downloaded kernel packages and their unpacked
//! `vmlinuz`/`config`, kept across runs), `work/` (initramfs staging, removed unless `--keep`),
//! `<release>.log` (each VM's serial console) and `matrix.json`.

mod boot;
mod initramfs;
mod kernels;
mod readme;
mod results;
mod scale;

pub use kernels::NEWEST as NEWEST_KERNEL;
pub use scale::{Options as ScaleOptions, measure as scale};

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{cmd, provision, run, workspace_root};

const MUSL: &str = "x86_64-unknown-linux-musl";

/// The VM's block device for the offset check: null_blk, three disks (the check uses nullb2,
/// minor 2: a misread first_minor reads 0 from many fields and 1 from the next one, `minors`),
/// each request completing 1 ms later from a timer, so that the writer really waits (iowait)
/// with its CPU idle.
const NULL_BLK: (&str, &str) = ("null_blk", "nr_devices=3 irqmode=2 completion_nsec=1000000");

const USAGE: &str = "usage: cargo xtask vm [--kernel NAME...] [--keep] [--timeout SECS]

Boots each kernel in qemu (TCG) with a busybox initramfs and the static nodesat, runs
`nodesat check` and a short scenario (a hog capped by cpu.max, busy loops for run-queue waits,
`nodesat run --output json`), and prints which variant each probe attached with per kernel.

  --kernel NAME    a kernel to boot (repeatable; default: 6.1 6.12 newest). NAME is a series (6.1: the
                   newest linux-image-6.1.*-amd64-unsigned in the apt sources), a release
                   (6.1.0-50-amd64, 6.12.117+deb12-amd64), a package name, or `newest`: the
                   newest series Debian publishes (trixie-backports, added as a pinned apt
                   source for downloads only)
  --keep           keep target/vm/work (the initramfs tree and image) for inspection
  --timeout SECS   per-VM limit from start to power-off (default 300)
  --check-readme   rewrite README.md's supported-kernels table (also with --kernel) and fail
                   when it said something else about a series (variants, fallbacks, results,
                   offsets; not the release tested, times or percentages) than this run found
  --readme-only    boot nothing: rewrite README.md's table from target/vm/matrix.json and
                   target/vm/host.json

Each VM also runs nodesat-offsets (every BTF-resolved kernel offset against procfs/sysfs) with
the preferred variants and each fallback forced. Logs: target/vm/<release>.log; summary:
target/vm/matrix.json; kernels are cached in target/vm/cache. A run of the default kernels
rewrites README.md's supported-kernels table from matrix.json and host.json (this machine's
row, written by tests/tests/offsets.rs); its rows are keyed by series (6.1, 6.12), so a run of
another release of a series replaces that series' row. Exits non-zero when a kernel fails.";

struct Args {
    kernels: Vec<String>,
    keep: bool,
    timeout: Duration,
    check_readme: bool,
    readme_only: bool,
}

fn parse_args(args: &[String]) -> Result<Option<Args>> {
    let mut out = Args {
        kernels: Vec::new(),
        keep: false,
        timeout: Duration::from_secs(300),
        check_readme: false,
        readme_only: false,
    };
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--kernel" => {
                let before = out.kernels.len();
                while let Some(name) = it.next_if(|a| !a.starts_with("--")) {
                    out.kernels
                        .extend(name.split(',').filter(|n| !n.is_empty()).map(String::from));
                }
                if out.kernels.len() == before {
                    bail!("--kernel needs a name\n{USAGE}");
                }
            }
            "--keep" => out.keep = true,
            "--check-readme" => out.check_readme = true,
            "--readme-only" => out.readme_only = true,
            "--timeout" => {
                let secs: u64 = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|&s| s > 0)
                    .with_context(|| format!("--timeout needs a number of seconds\n{USAGE}"))?;
                out.timeout = Duration::from_secs(secs);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Some(out))
}

/// A directory removed when dropped (unless kept); whatever was there before is removed first.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(path: PathBuf) -> Result<TempDir> {
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// One kernel's row: what it is, how long it took, what its log said.
struct Row {
    name: String,
    kernel: Option<kernels::Kernel>,
    log: Option<PathBuf>,
    elapsed: Option<Duration>,
    outcome: Option<results::Outcome>,
    failures: Vec<String>,
    /// Its initramfs (the common one with its modules).
    initrd: Option<PathBuf>,
    /// A default kernel the apt sources do not offer: reported, not a failure.
    unavailable: bool,
}

pub fn vm(args: &[String]) -> Result<()> {
    let Some(args) = parse_args(args)? else {
        return Ok(());
    };
    let total = Instant::now();
    let dir = workspace_root().join("target/vm");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // One run at a time: runs share work/, the logs and matrix.json (a second run once
    // truncated a running VM's log, which then read as a kernel that never started).
    let _lock = lock(&dir.join(".lock"))?;
    if args.readme_only {
        let matrix = dir.join("matrix.json");
        let doc: Value = serde_json::from_str(
            &fs::read_to_string(&matrix)
                .with_context(|| format!("reading {}", matrix.display()))?,
        )?;
        return update_readme(&doc, &dir, args.check_readme);
    }
    let cache = dir.join("cache");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    remove_leftovers(&cache);
    let mut phases = serde_json::Map::new();
    let mut phase = |name: &str, started: Instant| {
        let secs = started.elapsed().as_secs_f64();
        eprintln!("xtask: {name} took {secs:.1}s");
        phases.insert(name.to_owned(), json!(round(secs)));
    };

    let t = Instant::now();
    provision::provision()?;
    // musl-tools: crates with C code (ring, under rustls) need musl-gcc for the musl target.
    // xz-utils, zstd: kernel modules ship as .ko.xz (Debian 12) or .ko.zst (newer).
    provision::apt_install(&[
        "qemu-system-x86",
        "busybox-static",
        "cpio",
        "musl-tools",
        "xz-utils",
        "zstd",
    ])?;
    musl_target()?;
    phase("provision", t);

    let t = Instant::now();
    let defaults = args.kernels.is_empty();
    let specs: Vec<String> = if defaults {
        kernels::DEFAULT.iter().map(|s| s.to_string()).collect()
    } else {
        args.kernels.clone()
    };
    let mut rows = Vec::new();
    for spec in &specs {
        match kernels::prepare(spec, &cache) {
            Ok(k) => {
                if !k.missing_config.is_empty() {
                    eprintln!(
                        "xtask: warning: {} lacks {} built in; the VM has no modules",
                        k.release,
                        k.missing_config.join(", ")
                    );
                }
                rows.push(Row::new(k.release.clone(), Some(k)));
            }
            Err(e) => {
                eprintln!("xtask: {e:#}");
                let mut row = Row::new(spec.clone(), None);
                row.failures.push(format!("{e:#}"));
                // A default kernel apt cannot give is a note when exploring, but under
                // --check-readme (the test command) it is a failure: the table would go on
                // claiming a series this run could not test.
                row.unavailable = defaults && !args.check_readme;
                if !row.unavailable {
                    row.failures.push(
                        "the test command needs every default kernel; set NODESAT_VM_KERNELS to kernels the apt sources offer"
                            .to_owned(),
                    );
                }
                rows.push(row);
            }
        }
    }
    phase("kernels", t);
    if rows.iter().all(|r| r.kernel.is_none()) {
        let why: Vec<String> = rows.iter().flat_map(|r| r.failures.clone()).collect();
        bail!("no kernel to boot: {}", why.join("; "));
    }

    let t = Instant::now();
    let [nodesat, offsets] = static_bins(["nodesat", "nodesat-offsets"])?;
    phase("build", t);

    let t = Instant::now();
    let mut work = TempDir::new(dir.join("work"))?;
    work.keep = args.keep;
    let initrd = initramfs::build(work.path(), &[&nodesat, &offsets])?;
    // Per kernel: its block device module appended (the offset check writes to it).
    for row in rows.iter_mut() {
        let Some(k) = &row.kernel else { continue };
        let own = work.path().join(format!("initrd-{}.img", k.release));
        let built = kernels::modules(k, &cache, &[NULL_BLK.0])
            .and_then(|m| initramfs::with_modules(&initrd, &m, &[NULL_BLK], &own));
        match built {
            Ok(()) => row.initrd = Some(own),
            Err(e) => row
                .failures
                .push(format!("no block device module for the VM: {e:#}")),
        }
    }
    phase("initramfs", t);

    for row in rows.iter_mut() {
        let Some(k) = &row.kernel else { continue };
        let Some(initrd) = row.initrd.clone() else {
            continue;
        };
        let log = dir.join(format!("{}.log", k.release));
        eprintln!(
            "xtask: booting {} (qemu TCG, up to {}s; serial console in {})",
            k.release,
            args.timeout.as_secs(),
            log.display()
        );
        let b = boot::boot(&k.vmlinuz, &initrd, &log, args.timeout)?;
        let text = fs::read(&log).unwrap_or_default();
        let outcome = results::parse(&String::from_utf8_lossy(&text));
        row.failures.extend(outcome.failures(b.timed_out));
        if !b.timed_out && b.exit_code != Some(0) && row.failures.is_empty() {
            row.failures
                .push(format!("qemu exited with {:?}", b.exit_code));
        }
        eprintln!(
            "xtask: {}: {} in {:.1}s",
            k.release,
            if row.failures.is_empty() {
                "PASS"
            } else {
                "FAIL"
            },
            b.elapsed.as_secs_f64()
        );
        phases.insert(
            format!("boot {}", k.release),
            json!(round(b.elapsed.as_secs_f64())),
        );
        row.elapsed = Some(b.elapsed);
        row.log = Some(log);
        row.outcome = Some(outcome);
    }
    let total = total.elapsed();
    drop(work);

    println!();
    print!("{}", table(&rows));
    print!("{}", variant_table(&rows));
    println!("\ntime in each VM (guest uptime, s):");
    for row in &rows {
        if let Some(o) = &row.outcome {
            let boot = o.sections.get("setup").and_then(|s| s.at.first());
            let parts: Vec<String> = boot
                .map(|b| format!("boot {b:.1}"))
                .into_iter()
                .chain(o.sections.iter().filter_map(|(name, s)| {
                    s.seconds()
                        .filter(|&t| t >= 0.5)
                        .map(|t| format!("{name} {t:.1}"))
                }))
                .collect();
            println!("  {}: {}", row.name, parts.join(", "));
        }
    }
    println!("\ntotal {:.1}s", total.as_secs_f64());
    let matrix = dir.join("matrix.json");
    let doc = json!({
        "generated_unix": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "qemu": boot::qemu_version(),
        "accel": "tcg",
        "total_seconds": round(total.as_secs_f64()),
        "phase_seconds": Value::Object(phases),
        "kernels": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    fs::write(&matrix, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", matrix.display()))?;
    println!("wrote {}", matrix.display());
    // A run of named kernels (a release to investigate) leaves the table alone unless asked to
    // check it: rows are keyed by series, so any release of 6.1 or 6.12 checks those rows.
    let readme = if args.kernels.is_empty() || args.check_readme {
        update_readme(&doc, &dir, args.check_readme)
    } else {
        println!("README.md: kernel table left as it is (--kernel given without --check-readme)");
        Ok(())
    };

    let mut failed = Vec::new();
    for row in &rows {
        if row.unavailable {
            println!("note: {}", row.failures.join("; "));
        } else if !row.failures.is_empty() {
            let log = row
                .log
                .as_ref()
                .map(|l| format!(" (log: {})", l.display()))
                .unwrap_or_default();
            println!("{} FAILED: {}{log}", row.name, row.failures.join("; "));
            failed.push(row.name.clone());
        }
    }
    let booted = rows.iter().filter(|r| !r.unavailable).count();
    println!(
        "vm: {} passed, {} failed",
        booted - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!(
            "{} of {} kernels failed: {}",
            failed.len(),
            rows.len(),
            failed.join(", ")
        );
    }
    readme
}

/// Rewrites README.md's supported-kernels table from the matrix (`doc`) and, if present,
/// `host.json` in `dir`; with `check`, an error when it said something else about a series.
fn update_readme(doc: &Value, dir: &Path, check: bool) -> Result<()> {
    let host = dir.join("host.json");
    let host = match fs::read_to_string(&host).map(|t| serde_json::from_str::<Value>(&t)) {
        Ok(Ok(h)) => Some(h),
        Ok(Err(e)) => {
            eprintln!("xtask: {} is not JSON ({e}); host row kept", host.display());
            None
        }
        Err(_) => {
            eprintln!(
                "xtask: no {} (tests/tests/offsets.rs writes it); host row kept",
                host.display()
            );
            None
        }
    };
    check_table(
        &workspace_root().join("README.md"),
        doc,
        host.as_ref(),
        check,
    )
}

/// The table in `readme` rewritten from the matrix results `doc` and this machine's `host`
/// results; with `check`, an error when a row's verdicts changed (not its release or times).
fn check_table(readme: &Path, doc: &Value, host: Option<&Value>, check: bool) -> Result<()> {
    let generated = doc["generated_unix"].as_u64();
    let mut rows: Vec<Vec<String>> = doc["kernels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["result"] != "N/A" && !k["vm"].is_null())
        .map(|k| readme::vm_row(k, generated))
        .collect();
    rows.extend(host.map(readme::host_row));
    let u = readme::update(readme, &rows)?;
    for (series, old, new) in &u.stale {
        println!("README.md: the verdicts of {series} changed:\n  was: {old}\n  now: {new}");
    }
    for series in &u.added {
        println!("README.md: {series} had no row; added");
    }
    for row in &u.dropped {
        println!("README.md: dropped a row of an older table layout: {row}");
    }
    println!(
        "README.md: kernel table {}",
        if u.rewritten {
            "rewritten from the results (verdicts unchanged unless listed above)"
        } else {
            "already up to date"
        }
    );
    if check && !u.stale.is_empty() {
        bail!(
            "README.md's supported-kernels table said something else about {} than this run found (now rewritten; commit it if the new verdicts are right)",
            u.stale
                .iter()
                .map(|(k, _, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

impl Row {
    fn new(name: String, kernel: Option<kernels::Kernel>) -> Row {
        Row {
            name,
            kernel,
            log: None,
            elapsed: None,
            outcome: None,
            failures: Vec::new(),
            initrd: None,
            unavailable: false,
        }
    }

    fn result(&self) -> &'static str {
        match (self.unavailable, self.failures.is_empty(), &self.outcome) {
            (true, _, _) => "N/A",
            (_, true, Some(_)) => "PASS",
            _ => "FAIL",
        }
    }

    fn json(&self) -> Value {
        let k = self.kernel.as_ref();
        json!({
            "kernel": self.name,
            "asked_for": k.map(|k| k.spec.as_str()),
            "package": k.map(|k| k.package.as_str()),
            "deb": k.and_then(|k| k.deb.as_deref()),
            "config_not_built_in": k.map(|k| &k.missing_config),
            "seconds": self.elapsed.map(|d| round(d.as_secs_f64())),
            "result": self.result(),
            "failures": self.failures,
            "log": self.log,
            "vm": self.outcome.as_ref().map(results::Outcome::json),
        })
    }
}

/// The summary: per kernel, the check's verdict, each probe's variant, the scenario's figures.
fn table(rows: &[Row]) -> String {
    let mut probes: Vec<String> = Vec::new();
    for p in rows
        .iter()
        .filter_map(|r| r.outcome.as_ref())
        .flat_map(|o| &o.probes)
    {
        if !probes.contains(&p.probe) {
            probes.push(p.probe.clone());
        }
    }
    let mut header: Vec<String> = ["kernel", "time", "check"].map(String::from).to_vec();
    header.extend(probes.iter().cloned());
    header.extend(
        [
            "busy_p99",
            "throttled",
            "durations",
            "forced",
            "offsets",
            "result",
        ]
        .map(String::from),
    );
    let mut lines = vec![header];
    for row in rows {
        let o = row.outcome.as_ref();
        let mut cells = vec![
            row.name.clone(),
            row.elapsed
                .map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64())),
            match o.and_then(|o| o.sections.get("check")).and_then(|s| s.rc) {
                Some(0) => "ok".into(),
                Some(n) => format!("exit {n}"),
                None => "-".into(),
            },
        ];
        for name in &probes {
            let p = o.and_then(|o| o.probes.iter().find(|p| &p.probe == name));
            cells.push(match p {
                Some(p) => p.chosen.clone().unwrap_or_else(|| "none".into()),
                None => "-".into(),
            });
        }
        cells.push(o.map_or("-".into(), |o| results::short_ns(o.run.busy_p99_ns)));
        cells.push(match o {
            Some(o) if o.run.hog_throttled_periods > 0 => {
                format!("yes {}/{}", o.run.hog_throttled_periods, o.run.hog_periods)
            }
            Some(o) if o.run.intervals > 0 => "no".into(),
            _ => "-".into(),
        });
        cells.push(o.map_or("-".into(), |o| o.run.durations_cell()));
        // The forced-fallback runs: the kprobe run's durations, the others' run-queue figures
        // against the preferred run's.
        cells.push(o.map_or("-".into(), |o| {
            o.fallback_runs
                .iter()
                .map(|(forced, f)| match forced.as_str() {
                    "kprobe" => f.durations_cell(),
                    v => format!(
                        "{v} {}",
                        if f.figures_problem(&o.run).is_none() {
                            "same"
                        } else {
                            "differs"
                        }
                    ),
                })
                .collect::<Vec<_>>()
                .join(", ")
        }));
        // The offset checks: offsets that passed of those read, per forced variant.
        cells.push(o.map_or("-".into(), |o| {
            o.offset_runs
                .iter()
                .map(|(variant, r)| match r {
                    Some(r) => {
                        let n = |f: &str| r["counts"][f].as_u64().unwrap_or(0);
                        let limited = match n("checks_limited") {
                            0 => String::new(),
                            l => format!(" ({l} limited)"),
                        };
                        format!("{variant} {}/{}{limited}", n("pass"), n("pass") + n("fail"))
                    }
                    None => format!("{variant} -"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        }));
        cells.push(row.result().into());
        lines.push(cells);
    }
    columns(&lines)
}

/// Every variant's result per probe and kernel, as `nodesat check` found it.
fn variant_table(rows: &[Row]) -> String {
    let mut variants: Vec<String> = Vec::new();
    for (v, _) in rows
        .iter()
        .filter_map(|r| r.outcome.as_ref())
        .flat_map(|o| &o.probes)
        .flat_map(|p| &p.variants)
    {
        if !variants.contains(v) {
            variants.push(v.clone());
        }
    }
    if variants.is_empty() {
        return String::new();
    }
    let mut header: Vec<String> = vec!["kernel".into(), "probe".into()];
    header.extend(variants.iter().cloned());
    let mut lines = vec![header];
    for row in rows {
        for p in row.outcome.iter().flat_map(|o| &o.probes) {
            let mut cells = vec![row.name.clone(), p.probe.clone()];
            for v in &variants {
                cells.push(
                    p.variants
                        .iter()
                        .find(|(name, _)| name == v)
                        .map_or("-".into(), |(_, cell)| cell.clone()),
                );
            }
            lines.push(cells);
        }
    }
    format!(
        "\nattach variants (nodesat check, every hook of the probe):\n{}",
        columns(&lines)
    )
}

/// Left-aligned columns, two spaces apart.
fn columns(lines: &[Vec<String>]) -> String {
    let n = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            lines
                .iter()
                .filter_map(|l| l.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn round(secs: f64) -> f64 {
    (secs * 10.0).round() / 10.0
}

/// An exclusive lock on `path`, held until the file is dropped; waits for another holder.
fn lock(path: &Path) -> Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            eprintln!(
                "xtask: another `cargo xtask vm` is running (it holds {}); waiting for it",
                path.display()
            );
            file.lock()
                .with_context(|| format!("locking {}", path.display()))?;
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(file)
}

/// Temporary directories a killed earlier run left in the cache.
fn remove_leftovers(cache: &Path) {
    for e in fs::read_dir(cache).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Builds the agent and the named `nodesat-tests` binaries (release, static musl) and returns
/// their paths, in order.
fn static_bins<const N: usize>(names: [&str; N]) -> Result<[PathBuf; N]> {
    let mut args = vec![
        "build",
        "--release",
        "--package",
        "nodesat",
        "--package",
        "nodesat-tests",
    ];
    for name in names {
        args.extend(["--bin", name]);
    }
    args.extend(["--target", MUSL]);
    run(cmd("cargo", &args))
        .with_context(|| format!("building the static {}", names.join(", ")))?;
    Ok(names.map(|name| workspace_root().join(format!("target/{MUSL}/release/{name}"))))
}

fn musl_target() -> Result<()> {
    let out = cmd("rustup", &["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == MUSL)
    {
        return Ok(());
    }
    eprintln!("xtask: adding the {MUSL} target (rustup)");
    run(cmd("rustup", &["target", "add", MUSL]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Option<Args>> {
        parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn kernel_names_repeat_or_list() {
        let a = args(&["--kernel", "6.1", "6.12", "--keep", "--kernel", "a,b"])
            .unwrap()
            .unwrap();
        assert_eq!(a.kernels, ["6.1", "6.12", "a", "b"]);
        assert!(a.keep);
        assert!(args(&["--kernel"]).is_err());
        assert!(args(&["--timeout", "0"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }

    /// A real run's results (`target/vm/matrix.json` and `host.json` of a CI run), with
    /// every occurrence of each `(from, to)` string replaced.
    fn fixture(name: &str, replace: &[(&str, &str)]) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/vm/fixtures")
            .join(name);
        let mut text = fs::read_to_string(&path).unwrap();
        for (from, to) in replace {
            assert!(text.contains(from), "{name} has no {from}");
            text = text.replace(from, to);
        }
        serde_json::from_str(&text).unwrap()
    }

    /// The check on real results: it records a table, passes results whose releases moved on
    /// only in patch level or build string (the release cell follows them), and fails results
    /// whose verdict differs, naming the series.
    #[test]
    fn check_passes_new_patch_releases_and_fails_a_changed_verdict() {
        let dir = TempDir::new(
            std::env::temp_dir().join(format!("nodesat-xtask-check-{}", std::process::id())),
        )
        .unwrap();
        let readme = dir.path().join("README.md");
        fs::write(
            &readme,
            format!("# t\n\n{}\n{}\n", readme::BEGIN, readme::END),
        )
        .unwrap();
        let rows = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("| ") && !l.starts_with("| kernel "))
                .map(str::to_owned)
                .collect()
        };

        // No rows yet: every series is added, which is not a failure.
        let (matrix, host) = (fixture("matrix.json", &[]), fixture("host.json", &[]));
        check_table(&readme, &matrix, Some(&host), true).unwrap();
        let first = fs::read_to_string(&readme).unwrap();
        let first_rows = rows(&first);
        assert_eq!(first_rows.len(), 3, "{first}");
        assert!(first_rows[0].starts_with("| 6.18 (this project's machines) | 6.18.44-fc-v1272, "));
        assert!(first.contains("| Debian 6.1 | 6.1.0-57-amd64, "), "{first}");
        assert!(
            first.contains("| Debian 6.12 | 6.12.118+deb12-amd64, "),
            "{first}"
        );

        // Debian's next point releases and another host build: same verdicts, so it passes;
        // the rows stay one per series and name the new releases.
        let newer = [
            ("6.1.0-57-amd64", "6.1.0-58-amd64"),
            ("6.12.118+deb12", "6.12.121+deb12"),
        ];
        let matrix = fixture("matrix.json", &newer);
        let host = fixture("host.json", &[("6.18.44-fc-v1272", "6.18.47-fc-v2001")]);
        check_table(&readme, &matrix, Some(&host), true).unwrap();
        let second = fs::read_to_string(&readme).unwrap();
        assert_eq!(rows(&second).len(), 3, "{second}");
        for release in ["6.1.0-58-amd64", "6.12.121+deb12-amd64", "6.18.47-fc-v2001"] {
            assert!(second.contains(release), "{release} in {second}");
        }
        assert!(!second.contains("6.1.0-57"), "{second}");

        // An older release (forced, as with NODESAT_VM_KERNELS) passes the same way.
        let older = fixture(
            "matrix.json",
            &[
                ("6.1.0-57-amd64", "6.1.0-56-amd64"),
                ("6.12.118+deb12", "6.12.117+deb12"),
            ],
        );
        check_table(&readme, &older, Some(&host), true).unwrap();

        // A verdict differs (6.12's result): the check fails, naming the series, and the
        // table is rewritten to what this run found.
        let mut failed = fixture("matrix.json", &newer);
        let k = failed["kernels"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|k| k["kernel"] == "6.12.121+deb12-amd64")
            .unwrap();
        k["result"] = Value::from("FAIL");
        let e = check_table(&readme, &failed, Some(&host), true).unwrap_err();
        assert!(e.to_string().contains("Debian 6.12"), "{e}");
        assert!(!e.to_string().contains("Debian 6.1,"), "{e}");
        assert!(
            fs::read_to_string(&readme)
                .unwrap()
                .contains("| Debian 6.12 | 6.12.121+deb12-amd64, 2026-12-06 | FAIL |")
        );
        // Without --check-readme the same change only rewrites the table.
        check_table(&readme, &matrix, Some(&host), false).unwrap();

        // A probe variant that no longer attaches on the host is a verdict change too.
        let host_lost = fixture(
            "host.json",
            &[
                ("6.18.44-fc-v1272", "6.18.47-fc-v2001"),
                ("\"rc\": 0", "\"rc\": 1"),
            ],
        );
        let e = check_table(&readme, &matrix, Some(&host_lost), true).unwrap_err();
        assert!(
            e.to_string().contains("6.18 (this project's machines)"),
            "{e}"
        );
    }

    #[test]
    fn columns_align() {
        let t = columns(&[
            vec!["kernel".into(), "time".into()],
            vec!["6.1.0-56-amd64".into(), "1.0s".into()],
        ]);
        assert_eq!(t, "kernel          time\n6.1.0-56-amd64  1.0s\n");
    }
}

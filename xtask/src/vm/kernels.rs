//! Debian kernel images for the matrix: resolve a name to a package, `apt-get download` it into
//! the cache once, and keep its `boot/vmlinuz-*` and `boot/config-*`.
//!
//! A kernel is named by series ("6.1": the newest `linux-image-6.1.*-amd64-unsigned` the apt
//! sources offer), by release ("6.1.0-50-amd64", "6.12.117+deb12-amd64") or by package
//! ("linux-image-6.1.0-50-amd64-unsigned"), or as [`NEWEST`]: the newest series Debian
//! publishes, from trixie-backports (an apt source this module adds, pinned so that nothing is
//! ever installed from it). To add a kernel to the default matrix, add its series to
//! [`DEFAULT`].

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, bail};

use super::TempDir;

/// The kernels `cargo xtask vm` boots when no `--kernel` is given: the two stable series of
/// bookworm, and Debian's newest.
pub const DEFAULT: &[&str] = &["6.1", "6.12", NEWEST];

/// The newest kernel series the apt sources offer, trixie-backports included (7.3 in December
/// 2026).
pub const NEWEST: &str = "newest";

/// The apt source and pin for [`NEWEST`]: kernels are only ever downloaded from it.
const NEWEST_SOURCE: (&str, &str) = (
    "/etc/apt/sources.list.d/nodesat-vm-kernels.sources",
    "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
);
const NEWEST_PIN: (&str, &str) = (
    "/etc/apt/preferences.d/nodesat-vm-kernels",
    "Package: *\nPin: release n=trixie-backports\nPin-Priority: 1\n",
);

/// Adds the apt source of [`NEWEST`] (and its pin) if missing, then refreshes the lists.
fn ensure_newest_source() -> Result<()> {
    let mut added = false;
    for (path, text) in [NEWEST_PIN, NEWEST_SOURCE] {
        if fs::read_to_string(path).ok().as_deref() != Some(text) {
            fs::write(path, text).with_context(|| format!("writing {path}"))?;
            eprintln!("xtask: wrote {path} (Debian's newest kernels, download only)");
            added = true;
        }
    }
    if added {
        apt_update("a kernel source was added")?;
    }
    Ok(())
}

/// Options the VM needs built in (it has no modules), as `NAME=y` in the package's config.
const BUILT_IN: &[&str] = &[
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_RD_GZIP",
    "CONFIG_DEVTMPFS",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_BPF_EVENTS",
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_KPROBES",
    "CONFIG_FTRACE",
    "CONFIG_CGROUPS",
    "CONFIG_CGROUP_SCHED",
    "CONFIG_CFS_BANDWIDTH",
    "CONFIG_MEMCG",
    "CONFIG_BLK_CGROUP",
];

pub struct Kernel {
    /// What was asked for (`--kernel`), for messages.
    pub spec: String,
    /// The kernel release, `uname -r` in the VM: "6.1.0-56-amd64".
    pub release: String,
    pub package: String,
    /// The .deb it came from (its name carries the Debian version).
    pub deb: Option<String>,
    pub vmlinuz: PathBuf,
    /// `CONFIG_*` options of [`BUILT_IN`] that are not `=y` in this kernel.
    pub missing_config: Vec<String>,
}

/// Resolves `spec`, downloads and unpacks its package unless the cache has it.
/// Package lists may be stale (a mirror drops a kernel's previous point release when it
/// publishes the next): on failure, the lists are refreshed once and the kernel resolved
/// again.
pub fn prepare(spec: &str, cache: &Path) -> Result<Kernel> {
    match prepare_inner(spec, cache) {
        Err(e) if !APT_UPDATED.load(Ordering::Relaxed) => {
            eprintln!("xtask: kernel {spec}: {e:#}");
            apt_update("the package lists may be stale")?;
            prepare_inner(spec, cache)
        }
        other => other,
    }
    .with_context(|| format!("kernel {spec}"))
}

/// Whether this process has run `apt-get update`.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// `apt-get update`, saying why.
fn apt_update(why: &str) -> Result<()> {
    eprintln!("xtask: running apt-get update ({why})");
    let mut update = crate::cmd("apt-get", &["update", "-q"]);
    update.env("DEBIAN_FRONTEND", "noninteractive");
    crate::run(update)?;
    APT_UPDATED.store(true, Ordering::Relaxed);
    Ok(())
}

fn prepare_inner(spec: &str, cache: &Path) -> Result<Kernel> {
    let (release, candidates) = resolve(spec)?;
    let dir = cache.join(&release);
    let vmlinuz = dir.join("vmlinuz");
    let config = dir.join("config");
    let (package, deb) = if vmlinuz.exists() && config.exists() {
        let package = fs::read_to_string(dir.join("package"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| candidates[0].clone());
        let deb = cached_deb(cache, &package);
        (package, deb)
    } else {
        let package = candidates
            .iter()
            .find(|p| available(p))
            .cloned()
            .with_context(|| {
                format!(
                    "no package {} in the configured apt sources (`apt-cache search linux-image-` lists the kernels they offer; try `apt-get update`)",
                    candidates.join(" or ")
                )
            })?;
        let deb = match cached_deb(cache, &package) {
            Some(deb) => cache.join(deb),
            None => download(&package, cache)?,
        };
        unpack(&deb, &release, &package, cache)?;
        let name = deb.file_name().map(|n| n.to_string_lossy().into_owned());
        (package, name)
    };
    let config =
        fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
    let missing_config = BUILT_IN
        .iter()
        .filter(|opt| !config.lines().any(|l| l == format!("{opt}=y")))
        .map(|opt| opt.to_string())
        .collect();
    Ok(Kernel {
        spec: spec.to_owned(),
        release,
        package,
        deb,
        vmlinuz,
        missing_config,
    })
}

/// The release and the packages that may carry it, best first (unsigned, then signed).
fn resolve(spec: &str) -> Result<(String, Vec<String>)> {
    if let Some(rest) = spec.strip_prefix("linux-image-") {
        let release = rest.strip_suffix("-unsigned").unwrap_or(rest);
        return Ok((release.to_owned(), vec![spec.to_owned()]));
    }
    let release = if spec == NEWEST {
        ensure_newest_source()?;
        let releases = generic_releases()?;
        let series = releases
            .iter()
            .map(|r| series_of(r))
            .max_by_key(|s| version_key(s))
            .context("no kernel packages known to apt")?;
        newest_in_series(&series)?
    } else if is_series(spec) {
        newest_in_series(spec)?
    } else if spec.ends_with("amd64") {
        spec.to_owned()
    } else {
        format!("{spec}-amd64")
    };
    let candidates = vec![
        format!("linux-image-{release}-unsigned"),
        format!("linux-image-{release}"),
    ];
    Ok((release, candidates))
}

/// "6.1", "6.12": a major.minor series.
fn is_series(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('.').collect();
    parts.len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The newest generic amd64 release of a series the apt sources offer ("6.1.0-56-amd64").
fn newest_in_series(series: &str) -> Result<String> {
    let mut releases = generic_releases()?;
    if releases.is_empty() {
        // A fresh machine may never have fetched the package lists.
        apt_update("no kernel packages known to apt")?;
        releases = generic_releases()?;
    }
    let mut series_seen: Vec<String> = releases.iter().map(|r| series_of(r)).collect();
    series_seen.sort_by_key(|s| version_key(s));
    series_seen.dedup();
    releases
        .into_iter()
        .filter(|r| series_of(r) == series)
        .max_by_key(|r| version_key(r))
        .map(|r| format!("{r}-amd64"))
        .with_context(|| {
            format!(
                "no linux-image-{series} package (linux-image-{series}.*-amd64-unsigned) in the configured apt sources; they offer the series {}",
                if series_seen.is_empty() {
                    "(none)".to_owned()
                } else {
                    series_seen.join(", ")
                }
            )
        })
}

/// Versions of the generic amd64 kernels apt knows ("6.1.0-56", "6.12.117+deb12"): no rt,
/// cloud or debug flavours; unsigned packages, or signed ones (backports have those only).
fn generic_releases() -> Result<Vec<String>> {
    let out = Command::new("apt-cache")
        .args(["pkgnames", "linux-image-"])
        .output()
        .context("running apt-cache (is this a Debian machine?)")?;
    let mut releases: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|name| {
            let rest = name.strip_prefix("linux-image-")?;
            rest.strip_suffix("-amd64-unsigned")
                .or_else(|| rest.strip_suffix("-amd64"))
        })
        .filter(|v| {
            !v.is_empty()
                && v.replace("+deb", "+")
                    .chars()
                    .all(|c| c.is_ascii_digit() || ".-+".contains(c))
        })
        .map(str::to_owned)
        .collect();
    releases.sort();
    releases.dedup();
    Ok(releases)
}

/// "6.12.117+deb12" → "6.12"; also a release, "6.1.0-57-amd64" → "6.1", "6.18.44-fc-v1252" →
/// "6.18".
pub fn series_of(version: &str) -> String {
    version
        .split(['.', '-', '+'])
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
}

/// Numeric components, for ordering versions: "6.1.0-56" → [6, 1, 0, 56].
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn available(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The cached .deb of a package, if any (`apt-get download` names it PACKAGE_VERSION_ARCH.deb).
fn cached_deb(cache: &Path, package: &str) -> Option<String> {
    let prefix = format!("{package}_");
    let mut debs: Vec<String> = fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        .collect();
    debs.sort_by_key(|n| version_key(&n[prefix.len()..]));
    debs.pop()
}

/// `apt-get download` into a temporary directory, then moved into the cache whole.
fn download(package: &str, cache: &Path) -> Result<PathBuf> {
    eprintln!("xtask: downloading {package} (apt-get download)");
    let tmp = TempDir::new(cache.join(format!(".download-{}", std::process::id())))?;
    let mut get = Command::new("apt-get");
    if nix::unistd::geteuid().is_root() {
        // apt's _apt user cannot write into a directory under the workspace.
        get.args(["-o", "APT::Sandbox::User=root"]);
    }
    get.args(["download", "-q", package])
        .current_dir(tmp.path());
    let out = get.output().context("running apt-get download")?;
    if !out.status.success() {
        bail!(
            "apt-get download {package} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let deb = fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let dest = cache.join(deb.file_name().expect("a file"));
    fs::rename(&deb, &dest).with_context(|| format!("moving {} into the cache", deb.display()))?;
    Ok(dest)
}

/// Extracts the kernel and its config into `cache/RELEASE/`: from `./boot/` of the image
/// package (not its modules), or, where Debian splits the image (7.x: the image package only
/// depends on the others), from `linux-binary-RELEASE` (the kernel) and `linux-base-RELEASE`
/// (its config) under `usr/lib/modules/RELEASE/`; the modules are then in
/// `linux-modules-RELEASE`, which `cache/RELEASE/modules-package` names.
fn unpack(deb: &Path, release: &str, package: &str, cache: &Path) -> Result<()> {
    let tmp = TempDir::new(cache.join(format!(".unpack-{}", std::process::id())))?;
    let staged = tmp.path().join("kernel");
    fs::create_dir(&staged)?;
    if deb_members(deb)?
        .iter()
        .any(|m| m.starts_with("./boot/vmlinuz-"))
    {
        extract(deb, tmp.path(), &["--wildcards", "./boot/*"])
            .context("delete the package to download it again")?;
        let boot = tmp.path().join("boot");
        let find = |prefix: &str| -> Result<PathBuf> {
            fs::read_dir(&boot)
                .with_context(|| format!("{} has no boot/", deb.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                })
                .with_context(|| format!("{} has no boot/{prefix}*", deb.display()))
        };
        fs::rename(find("vmlinuz-")?, staged.join("vmlinuz"))?;
        fs::rename(find("config-")?, staged.join("config"))?;
    } else {
        let dir = format!("./usr/lib/modules/{release}");
        for (part, file) in [("binary", "vmlinuz"), ("base", "config")] {
            let part_deb = cached_or_download(&format!("linux-{part}-{release}"), cache)?;
            let member = format!("{dir}/{file}");
            extract(&part_deb, tmp.path(), &[&member]).with_context(|| {
                format!(
                    "{package} has no boot/; {} has no {member}",
                    part_deb.display()
                )
            })?;
            fs::rename(tmp.path().join(&member), staged.join(file))?;
        }
        fs::write(
            staged.join("modules-package"),
            format!("linux-modules-{release}\n"),
        )?;
    }
    fs::write(staged.join("package"), format!("{package}\n"))?;
    let dir = cache.join(release);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::rename(&staged, &dir)?;
    Ok(())
}

/// The cached .deb of `package`, downloading it first if need be.
fn cached_or_download(package: &str, cache: &Path) -> Result<PathBuf> {
    match cached_deb(cache, package) {
        Some(deb) => Ok(cache.join(deb)),
        None => download(package, cache),
    }
}

/// Loadable modules of a kernel (the VM has none built in that it needs, e.g. a block
/// device): `wanted` and everything they depend on, decompressed, deps first. They are
/// extracted once from the kernel's package into `cache/RELEASE/modules/`.
pub fn modules(k: &Kernel, cache: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let dir = cache.join(&k.release).join("modules");
    fs::create_dir_all(&dir)?;
    let mut order = Vec::new();
    let mut members: Option<Vec<String>> = None;
    let mut todo: Vec<(String, bool)> = wanted
        .iter()
        .rev()
        .map(|m| (m.to_string(), false))
        .collect();
    // Depth first: a module is pushed after its dependencies (`true`: they are done).
    while let Some((name, deps_done)) = todo.pop() {
        let file = dir.join(format!("{name}.ko"));
        if deps_done {
            if !order.contains(&file) {
                order.push(file);
            }
            continue;
        }
        if order.contains(&file) {
            continue;
        }
        if !file.exists() {
            let split = fs::read_to_string(cache.join(&k.release).join("modules-package"))
                .ok()
                .map(|p| p.trim().to_owned());
            let deb = match (&split, &k.deb) {
                (Some(modules), _) => cached_or_download(modules, cache)?,
                (None, Some(deb)) => cache.join(deb),
                (None, None) => cached_or_download(&k.package, cache)?,
            };
            let list = match &members {
                Some(list) => list,
                None => members.insert(deb_members(&deb)?),
            };
            extract_module(&deb, list, &name, &file)
                .with_context(|| format!("module {name} of {}", k.release))?;
        }
        todo.push((name, true));
        for dep in module_depends(&file)? {
            if !order
                .iter()
                .any(|f| f.file_stem().is_some_and(|s| s == dep.as_str()))
            {
                todo.push((dep, false));
            }
        }
    }
    Ok(order)
}

/// Runs `tar` (its arguments given) on `deb`'s file system tarball, piped from `dpkg-deb`;
/// fails unless both succeed.
fn tar_of_deb(deb: &Path, tar_args: &[&OsStr]) -> Result<Vec<u8>> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("running dpkg-deb")?;
    let tar = Command::new("tar")
        .args(tar_args)
        .stdin(dpkg.stdout.take().expect("piped"))
        .stderr(Stdio::inherit())
        .output()
        .context("running tar")?;
    let dpkg = dpkg.wait()?;
    if !dpkg.success() || !tar.status.success() {
        let args: Vec<_> = tar_args.iter().map(|a| a.to_string_lossy()).collect();
        bail!(
            "tar {} on {} failed (dpkg-deb {dpkg}, tar {})",
            args.join(" "),
            deb.display(),
            tar.status
        );
    }
    Ok(tar.stdout)
}

/// Extracts from `deb` into `into`, `tar -x` taking `what` (members or options).
fn extract(deb: &Path, into: &Path, what: &[&str]) -> Result<()> {
    let mut args: Vec<&OsStr> = vec![OsStr::new("-x"), OsStr::new("-C"), into.as_os_str()];
    args.extend(what.iter().map(OsStr::new));
    tar_of_deb(deb, &args).map(drop)
}

/// The paths in a package's file system tarball.
fn deb_members(deb: &Path) -> Result<Vec<String>> {
    let listing = tar_of_deb(deb, &[OsStr::new("-t")])?;
    Ok(String::from_utf8_lossy(&listing)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Module `name` (dashes and underscores alike) out of `deb`, decompressed into `dest`.
fn extract_module(deb: &Path, members: &[String], name: &str, dest: &Path) -> Result<()> {
    let norm = |s: &str| s.replace('-', "_");
    let member = members
        .iter()
        .find(|m| {
            let file = m.rsplit('/').next().unwrap_or(m);
            [".ko", ".ko.xz", ".ko.zst", ".ko.gz"].iter().any(|ext| {
                file.strip_suffix(ext)
                    .is_some_and(|stem| norm(stem) == norm(name))
            })
        })
        .with_context(|| format!("{} has no module {name}", deb.display()))?;
    let tmp = TempDir::new(dest.with_extension("extract"))?;
    extract(deb, tmp.path(), &[member])?;
    let extracted = tmp.path().join(member);
    let decompress = match extracted.extension().and_then(|e| e.to_str()) {
        Some("xz") => Some("xz"),
        Some("zst") => Some("zstd"),
        Some("gz") => Some("gzip"),
        _ => None,
    };
    let staged = dest.with_extension("ko.part");
    match decompress {
        Some(tool) => {
            let status = Command::new(tool)
                .args(["-d", "-c"])
                .arg(&extracted)
                .stdout(fs::File::create(&staged)?)
                .status()
                .with_context(|| format!("running {tool}"))?;
            if !status.success() {
                bail!("{tool} -d {} failed", extracted.display());
            }
        }
        None => {
            fs::copy(&extracted, &staged)?;
        }
    }
    fs::rename(&staged, dest)?;
    Ok(())
}

/// The `depends=` of a module's `.modinfo`.
fn module_depends(ko: &Path) -> Result<Vec<String>> {
    let bytes = fs::read(ko).with_context(|| format!("reading {}", ko.display()))?;
    Ok(modinfo_depends(&bytes))
}

fn modinfo_depends(bytes: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = bytes.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &bytes[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_versions() {
        assert!(is_series("6.1") && is_series("6.12"));
        assert!(!is_series("6.1.0-50") && !is_series("6") && !is_series("6."));
        assert_eq!(series_of("6.1.0-56"), "6.1");
        assert_eq!(series_of("6.12.117+deb12"), "6.12");
        assert!(version_key("6.1.0-56") > version_key("6.1.0-9"));
        assert!(version_key("6.12.117+deb12") > version_key("6.12.99+deb12"));
    }

    #[test]
    fn modinfo_dependencies() {
        let modinfo = b"\x7fELF...\0license=GPL\0depends=configfs,foo_bar\0vermagic=6.1\0";
        assert_eq!(modinfo_depends(modinfo), ["configfs", "foo_bar"]);
        assert!(modinfo_depends(b"\0depends=\0name=x\0").is_empty());
        assert!(modinfo_depends(b"no modinfo").is_empty());
    }

    #[test]
    fn releases_and_packages() {
        let (release, pkgs) = resolve("6.1.0-50-amd64").unwrap();
        assert_eq!(release, "6.1.0-50-amd64");
        assert_eq!(
            pkgs,
            [
                "linux-image-6.1.0-50-amd64-unsigned",
                "linux-image-6.1.0-50-amd64"
            ]
        );
        assert_eq!(resolve("6.1.0-50").unwrap().0, "6.1.0-50-amd64");
        let (release, pkgs) = resolve("linux-image-6.12.117+deb12-amd64-unsigned").unwrap();
        assert_eq!(release, "6.12.117+deb12-amd64");
        assert_eq!(pkgs, ["linux-image-6.12.117+deb12-amd64-unsigned"]);
    }
}

//! The VM's initramfs: static busybox, the static nodesat and nodesat-offsets binaries and
//! `init.sh` as /init, as a gzipped cpio (newc) archive; then, per kernel, that archive with a
//! second one appended holding the kernel's modules (the kernel unpacks concatenated
//! archives one after the other).

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

const INIT: &str = include_str!("init.sh");
const BUSYBOX: &str = "/bin/busybox";

/// Builds `work/initrd.img` from a staging tree under `work/root`, with `binaries` (static
/// executables) in /bin.
pub fn build(work: &Path, binaries: &[&Path]) -> Result<PathBuf> {
    let root = work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for dir in ["bin", "dev", "proc", "sys", "tmp"] {
        fs::create_dir_all(root.join(dir))?;
    }
    for bin in std::iter::once(&Path::new(BUSYBOX)).chain(binaries) {
        if !is_static(bin)? {
            bail!(
                "{} is dynamically linked; the VM has no libraries (busybox must come from busybox-static)",
                bin.display()
            );
        }
    }
    fs::copy(BUSYBOX, root.join("bin/busybox")).context("copying busybox")?;
    for bin in binaries {
        let name = bin.file_name().context("a binary without a name")?;
        let dest = root.join("bin").join(name);
        // Debug info is ten times the code; the guest unpacks the archive slowly under TCG.
        let stripped = Command::new("strip")
            .arg("-o")
            .arg(&dest)
            .arg(bin)
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            fs::copy(bin, &dest).with_context(|| format!("copying {}", bin.display()))?;
        }
    }
    let init = root.join("init");
    fs::write(&init, INIT)?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    // The kernel opens /dev/console for init before devtmpfs is mounted; without the node it
    // warns (init.sh reopens the console anyway, so this is best effort: it needs root).
    let _ = nix::sys::stat::mknod(
        &root.join("dev/console"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(5, 1),
    );

    let initrd = work.join("initrd.img");
    archive(&root, fs::File::create(&initrd)?)?;
    Ok(initrd)
}

/// `base` with an archive of `/lib/modules/` appended: the `modules` (in load order) and
/// `/lib/modules/order`, one line per module: its file name and its parameters from
/// `params` (by module name), for init.sh to `insmod` them.
pub fn with_modules(
    base: &Path,
    modules: &[PathBuf],
    params: &[(&str, &str)],
    out: &Path,
) -> Result<()> {
    let root = out.with_extension("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let dir = root.join("lib/modules");
    fs::create_dir_all(&dir)?;
    let mut order = String::new();
    for m in modules {
        let name = m.file_name().context("a module without a name")?;
        fs::copy(m, dir.join(name)).with_context(|| format!("copying {}", m.display()))?;
        let stem = m.file_stem().unwrap_or_default().to_string_lossy();
        let args = params
            .iter()
            .find(|(n, _)| *n == stem)
            .map_or("", |(_, a)| a);
        order.push_str(&format!("{} {args}\n", name.to_string_lossy()));
    }
    fs::write(dir.join("order"), order)?;
    fs::copy(base, out).with_context(|| format!("copying {}", base.display()))?;
    let appended = fs::OpenOptions::new().append(true).open(out)?;
    archive(&root, appended)?;
    fs::remove_dir_all(&root)?;
    Ok(())
}

/// Writes the tree under `root` as a gzipped newc cpio archive to `out`.
fn archive(root: &Path, out: fs::File) -> Result<()> {
    let mut entries = Vec::new();
    list(root, Path::new(""), &mut entries)?;
    let mut gzip = Command::new("gzip")
        .arg("-6n")
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("running gzip")?;
    let mut cpio = Command::new("cpio")
        .args(["--create", "--format=newc", "--quiet", "--owner=0:0"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(gzip.stdin.take().expect("piped"))
        .spawn()
        .context("running cpio")?;
    {
        let mut names = cpio.stdin.take().expect("piped");
        for e in &entries {
            writeln!(names, "{}", e.display())?;
        }
    }
    let cpio = cpio.wait()?;
    let gzip = gzip.wait()?;
    if !cpio.success() || !gzip.success() {
        bail!(
            "archiving {} failed (cpio {cpio}, gzip {gzip})",
            root.display()
        );
    }
    Ok(())
}

/// Relative paths under `root`, parents before children.
fn list(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = rel.join(name);
        out.push(path.clone());
        if fs::symlink_metadata(root.join(&path))?.is_dir() {
            list(root, &path, out)?;
        }
    }
    Ok(())
}

/// Whether an ELF executable has no interpreter (PT_INTERP), i.e. needs no dynamic loader.
fn is_static(path: &Path) -> Result<bool> {
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        bail!("{} is not a 64-bit little-endian ELF file", path.display());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{} has a truncated ELF header", path.display());
    };
    const PT_INTERP: u32 = 3;
    Ok((0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4)
            .is_none_or(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) != PT_INTERP)
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_test_binary_is_dynamic() {
        let me = std::env::current_exe().unwrap();
        // The host target links glibc dynamically.
        assert!(!super::is_static(&me).unwrap());
    }
}

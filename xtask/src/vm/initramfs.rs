//! The VM's initramfs: static busybox, the static nodesat binary and `init.sh` as /init, as a
//! gzipped cpio (newc) archive.

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

/// Builds `work/initrd.img` from a staging tree under `work/root`.
pub fn build(work: &Path, nodesat: &Path) -> Result<PathBuf> {
    let root = work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for dir in ["bin", "dev", "proc", "sys", "tmp"] {
        fs::create_dir_all(root.join(dir))?;
    }
    for bin in [Path::new(BUSYBOX), nodesat] {
        if !is_static(bin)? {
            bail!(
                "{} is dynamically linked; the VM has no libraries (busybox must come from busybox-static)",
                bin.display()
            );
        }
    }
    fs::copy(BUSYBOX, root.join("bin/busybox")).context("copying busybox")?;
    // Its debug info is ten times the code; the guest unpacks the archive slowly under TCG.
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(root.join("bin/nodesat"))
        .arg(nodesat)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        fs::copy(nodesat, root.join("bin/nodesat")).context("copying nodesat")?;
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

    let mut entries = Vec::new();
    list(&root, Path::new(""), &mut entries)?;
    let initrd = work.join("initrd.img");
    let mut gzip = Command::new("gzip")
        .arg("-6n")
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&initrd)?)
        .spawn()
        .context("running gzip")?;
    let mut cpio = Command::new("cpio")
        .args(["--create", "--format=newc", "--quiet", "--owner=0:0"])
        .current_dir(&root)
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
            "building {} failed (cpio {cpio}, gzip {gzip})",
            initrd.display()
        );
    }
    Ok(initrd)
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

//! tracefs: where classic tracepoints are found, and the byte offsets of their fields (read
//! from each event's `format` file, so no offset is compiled in).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use super::ProbeError;

const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Set when this process mounted tracefs, so it can leave the system as it found it.
static MOUNTED_BY_US: AtomicBool = AtomicBool::new(false);

/// The tracefs mount point, if tracefs is mounted (aya looks in the same places).
pub fn find() -> Option<PathBuf> {
    MOUNT_POINTS
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
        .map(Path::to_path_buf)
}

/// The tracefs mount point, mounting tracefs at /sys/kernel/tracing if it is not mounted
/// (many hosts do not mount it; classic tracepoints need it).
pub fn find_or_mount() -> Result<PathBuf, ProbeError> {
    if let Some(p) = find() {
        return Ok(p);
    }
    let target = Path::new(MOUNT_POINTS[0]);
    nix::mount::mount(
        Some("nodev"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| ProbeError::Tracefs(format!("tracefs is not mounted and mounting it at {} failed: {e} (mount it with `mount -t tracefs nodev /sys/kernel/tracing`)", target.display())))?;
    MOUNTED_BY_US.store(true, Ordering::SeqCst);
    tracing::info!(
        "mounted tracefs at {} (classic tracepoints need it); it is unmounted at exit",
        target.display()
    );
    Ok(target.to_path_buf())
}

/// Unmounts tracefs if this process mounted it.
pub fn restore() {
    if MOUNTED_BY_US.swap(false, Ordering::SeqCst)
        && let Err(e) = nix::mount::umount(MOUNT_POINTS[0])
    {
        tracing::warn!(
            "could not unmount the tracefs we mounted at {}: {e}",
            MOUNT_POINTS[0]
        );
    }
}

/// The byte offset of `field` in the record of tracepoint `category/name`.
pub fn field_offset(
    tracefs: &Path,
    category: &str,
    name: &str,
    field: &str,
) -> Result<u32, ProbeError> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ProbeError::Tracefs(format!("reading {}: {e}", path.display())))?;
    parse_field_offset(&text, field)
        .ok_or_else(|| ProbeError::Tracefs(format!("{} has no field {field:?}", path.display())))
}

/// Finds `field:<type> <field>;\toffset:N;` in a tracepoint format file.
fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let decl = parts.next()?.strip_prefix("field:")?;
        let name = decl.rsplit([' ', '*']).next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        parts.find_map(|p| p.strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sched_switch format file of Linux 6.18, as captured on this kind of machine.
    const SCHED_SWITCH: &str = include_str!("../../../tests/fixtures/tracefs/sched_switch.format");

    #[test]
    fn finds_sched_switch_fields() {
        assert_eq!(parse_field_offset(SCHED_SWITCH, "prev_pid"), Some(24));
        assert_eq!(parse_field_offset(SCHED_SWITCH, "prev_state"), Some(32));
        assert_eq!(parse_field_offset(SCHED_SWITCH, "next_pid"), Some(56));
        assert_eq!(parse_field_offset(SCHED_SWITCH, "next_comm"), Some(40));
        assert_eq!(parse_field_offset(SCHED_SWITCH, "common_pid"), Some(4));
        assert_eq!(parse_field_offset(SCHED_SWITCH, "nope"), None);
    }
}

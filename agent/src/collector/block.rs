//! Block request latency per disk and direction, from `BLOCK_LATENCY`.

use agent_ebpf::{
    block::{DiskKey, MAP_LATENCY, OP_READ, OP_WRITE},
    hist::Log2Hist,
};
use aya::Ebpf;

use super::maps;
use crate::{
    core::{counters::Snapshot, histogram::HistStats},
    probes::ProbeError,
    report::DiskReport,
};

#[derive(Debug, Default)]
pub struct Block {
    prev: Snapshot<DiskKey, Log2Hist>,
}

impl Block {
    pub fn baseline(&mut self, ebpf: &Ebpf) -> Result<(), ProbeError> {
        self.prev = maps::hash(ebpf, MAP_LATENCY)?;
        Ok(())
    }

    pub fn collect(&mut self, ebpf: &Ebpf) -> Result<Vec<DiskReport>, ProbeError> {
        let cur = maps::hash(ebpf, MAP_LATENCY)?;
        let disks = summarize(&cur, &self.prev, disk_name);
        self.prev = cur;
        Ok(disks)
    }
}

/// The kernel's name for a disk (`/sys/dev/block/MAJ:MIN` links to it), e.g. "loop0".
fn disk_name(major: u32, minor: u32) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// The interval's latency figures per disk and direction, sorted by device (pure but for
/// `name`).
pub fn summarize(
    cur: &Snapshot<DiskKey, Log2Hist>,
    prev: &Snapshot<DiskKey, Log2Hist>,
    name: impl Fn(u32, u32) -> Option<String>,
) -> Vec<DiskReport> {
    let mut disks: Vec<DiskReport> = cur
        .delta_since(prev)
        .into_iter()
        .map(|(key, h)| {
            let (major, minor) = (key.dev >> 20, key.dev & 0xfffff);
            DiskReport {
                device: format!("{major}:{minor}"),
                name: name(major, minor),
                op: match key.op {
                    OP_READ => "read",
                    OP_WRITE => "write",
                    _ => "other",
                },
                requests: h.count(),
                latency_sum_ns: h.sum_ns,
                latency_p50_ns: h.quantile(0.5).unwrap_or(0),
                latency_p99_ns: h.quantile(0.99).unwrap_or(0),
                latency_max_ns: h.max().unwrap_or(0),
                histogram: h,
            }
        })
        .collect();
    disks.sort_by(|a, b| (&a.device, a.op).cmp(&(&b.device, b.op)));
    disks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::histogram::from_values;

    #[test]
    fn splits_by_disk_and_direction() {
        let key = |dev, op| DiskKey {
            dev,
            op,
            _pad: [0; 3],
        };
        let loop0 = 7 << 20;
        let cur = Snapshot::from_iter([
            (
                key(loop0, OP_WRITE),
                from_values([100_000, 200_000, 150_000]),
            ),
            (key(loop0, OP_READ), from_values([50_000])),
        ]);
        let d = summarize(&cur, &Snapshot::default(), |ma, mi| {
            Some(format!("dev{ma}-{mi}"))
        });
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].device.as_str(), d[0].op, d[0].requests),
            ("7:0", "read", 1)
        );
        assert_eq!(
            (d[1].op, d[1].requests, d[1].latency_sum_ns),
            ("write", 3, 450_000)
        );
        assert_eq!(d[1].name.as_deref(), Some("dev7-0"));
    }
}

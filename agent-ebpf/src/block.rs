//! Block I/O request latency per device and direction: from block_rq_issue to
//! block_rq_complete, as a log2 histogram.

/// `LruHashMap<DiskKey, Log2Hist>`: request latency.
pub const MAP_LATENCY: &str = "BLOCK_LATENCY";
pub const LATENCY_MAX_ENTRIES: u32 = 1024;

/// `HashMap<u64 request key, u64 ktime ns>`: requests in flight. The key is the `struct
/// request` address (tp_btf, raw tracepoint) or `dev << 40 ^ sector` (classic tracepoint, whose
/// record has no request pointer).
pub const MAP_ISSUED: &str = "BLOCK_ISSUED";
pub const ISSUED_MAX_ENTRIES: u32 = 16_384;

pub const OP_READ: u8 = 0;
pub const OP_WRITE: u8 = 1;
pub const OP_OTHER: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DiskKey {
    /// Kernel dev_t of the disk: `major << 20 | minor`.
    pub dev: u32,
    /// [`OP_READ`], [`OP_WRITE`] or [`OP_OTHER`] (flush, discard, ...).
    pub op: u8,
    pub _pad: [u8; 3],
}

crate::user_pod!(DiskKey);

/// Globals: classic tracepoint field offsets (from tracefs), 0 = unknown.
pub const GLOBAL_TP_ISSUE_DEV: &str = "TP_ISSUE_DEV";
pub const GLOBAL_TP_ISSUE_SECTOR: &str = "TP_ISSUE_SECTOR";
pub const GLOBAL_TP_DONE_DEV: &str = "TP_DONE_DEV";
pub const GLOBAL_TP_DONE_SECTOR: &str = "TP_DONE_SECTOR";
pub const GLOBAL_TP_DONE_RWBS: &str = "TP_DONE_RWBS";

/// The programs on each hook, by attach variant.
pub const HOOKS: [crate::HookPrograms; 2] = [
    crate::HookPrograms::new(
        "block",
        "block_rq_issue",
        ["blk_issue_btf", "blk_issue_raw", "blk_issue_tp"],
    ),
    crate::HookPrograms::new(
        "block",
        "block_rq_complete",
        ["blk_done_btf", "blk_done_raw", "blk_done_tp"],
    ),
];

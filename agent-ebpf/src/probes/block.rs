//! Block request latency programs; see `agent_ebpf::block`.

use agent_ebpf::{
    block::{DiskKey, ISSUED_MAX_ENTRIES, LATENCY_MAX_ENTRIES, OP_OTHER, OP_READ, OP_WRITE},
    hist::Log2Hist,
};
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use super::{hist_add, kernel, tp_field};

#[map]
static BLOCK_ISSUED: HashMap<u64, u64> = HashMap::with_max_entries(ISSUED_MAX_ENTRIES, 0);

#[map]
static BLOCK_LATENCY: LruHashMap<DiskKey, Log2Hist> =
    LruHashMap::with_max_entries(LATENCY_MAX_ENTRIES, 0);

// Classic tracepoint field offsets, from tracefs; 0 = unknown.
#[unsafe(no_mangle)]
static TP_ISSUE_DEV: u32 = 0;
#[unsafe(no_mangle)]
static TP_ISSUE_SECTOR: u32 = 0;
#[unsafe(no_mangle)]
static TP_DONE_DEV: u32 = 0;
#[unsafe(no_mangle)]
static TP_DONE_SECTOR: u32 = 0;
#[unsafe(no_mangle)]
static TP_DONE_RWBS: u32 = 0;

#[inline(always)]
fn issued(key: u64) {
    // SAFETY: helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = BLOCK_ISSUED.insert(&key, &now, 0);
}

#[inline(always)]
fn completed(key: u64, disk: DiskKey) {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(&since) = (unsafe { BLOCK_ISSUED.get(&key) }) else {
        return; // issued before we attached, or a partial completion already counted
    };
    let _ = BLOCK_ISSUED.remove(&key);
    // SAFETY: helper with no preconditions.
    let latency = unsafe { bpf_ktime_get_ns() }.saturating_sub(since);
    hist_add(&BLOCK_LATENCY, &disk, latency);
}

/// The disk and direction of a `struct request`: `rq->q->disk->{major,first_minor}` and
/// `rq->cmd_flags & REQ_OP_MASK`.
#[inline(always)]
fn disk_of(rq: u64) -> DiskKey {
    let disk: Option<u64> = kernel::read(rq, &kernel::OFF_REQUEST_Q)
        .and_then(|q: u64| kernel::read(q, &kernel::OFF_QUEUE_DISK));
    let major: u32 = disk
        .and_then(|d| kernel::read(d, &kernel::OFF_GENDISK_MAJOR))
        .unwrap_or(0);
    let minor: u32 = disk
        .and_then(|d| kernel::read(d, &kernel::OFF_GENDISK_FIRST_MINOR))
        .unwrap_or(0);
    let flags: u32 = kernel::read(rq, &kernel::OFF_REQUEST_CMD_FLAGS).unwrap_or(u32::MAX);
    DiskKey {
        dev: (major << 20) | (minor & 0xfffff),
        op: match flags & 0xff {
            0 => OP_READ,
            1 => OP_WRITE,
            _ => OP_OTHER,
        },
        _pad: [0; 3],
    }
}

// block_rq_issue(struct request *rq); block_rq_complete(struct request *rq, ...).

#[btf_tracepoint(function = "block_rq_issue")]
pub fn blk_issue_btf(ctx: BtfTracePointContext) -> i32 {
    issued(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn blk_done_btf(ctx: BtfTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    completed(rq, disk_of(rq));
    0
}

#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn blk_issue_raw(ctx: RawTracePointContext) -> i32 {
    issued(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn blk_done_raw(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    completed(rq, disk_of(rq));
    0
}

/// The classic records carry no request pointer: requests are keyed by device and sector.
#[inline(always)]
fn classic_key(dev: u32, sector: u64) -> u64 {
    (u64::from(dev) << 40) ^ sector
}

/// The direction from the classic record's `rwbs` ("R", "WS", "FWS", "D", ...).
#[inline(always)]
fn classic_op(rwbs: [u8; 4]) -> u8 {
    match rwbs[0] {
        b'R' => OP_READ,
        b'W' => OP_WRITE,
        _ => OP_OTHER,
    }
}

#[tracepoint]
pub fn blk_issue_tp(ctx: TracePointContext) -> u32 {
    if let (Some(dev), Some(sector)) = (
        tp_field::<u32>(&ctx, &TP_ISSUE_DEV),
        tp_field::<u64>(&ctx, &TP_ISSUE_SECTOR),
    ) {
        issued(classic_key(dev, sector));
    }
    0
}

#[tracepoint]
pub fn blk_done_tp(ctx: TracePointContext) -> u32 {
    if let (Some(dev), Some(sector), Some(rwbs)) = (
        tp_field::<u32>(&ctx, &TP_DONE_DEV),
        tp_field::<u64>(&ctx, &TP_DONE_SECTOR),
        tp_field::<[u8; 4]>(&ctx, &TP_DONE_RWBS),
    ) {
        let disk = DiskKey {
            dev,
            op: classic_op(rwbs),
            _pad: [0; 3],
        };
        completed(classic_key(dev, sector), disk);
    }
    0
}

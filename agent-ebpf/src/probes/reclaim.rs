//! Memory reclaim stall programs; see `agent_ebpf::reclaim`. Both begin and end fire in the
//! reclaiming task itself, so the current task keys the start and its cgroup the stall.

use agent_ebpf::{
    hist::Log2Hist,
    reclaim::{SINCE_MAX_ENTRIES, STALLS_MAX_ENTRIES},
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use super::{hist_add, kernel};

#[map]
static RECLAIM_SINCE: HashMap<u64, u64> = HashMap::with_max_entries(SINCE_MAX_ENTRIES, 0);

#[map]
static RECLAIM_STALLS: LruHashMap<u64, Log2Hist> =
    LruHashMap::with_max_entries(STALLS_MAX_ENTRIES, 0);

#[inline(always)]
fn begin() {
    // SAFETY: helpers with no preconditions.
    let (task, now) = unsafe { (bpf_get_current_pid_tgid(), bpf_ktime_get_ns()) };
    let _ = RECLAIM_SINCE.insert(&task, &now, 0);
}

#[inline(always)]
fn end() {
    let task = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(&since) = (unsafe { RECLAIM_SINCE.get(&task) }) else {
        return; // began before we attached
    };
    let _ = RECLAIM_SINCE.remove(&task);
    // SAFETY: helper with no preconditions.
    let stall = unsafe { bpf_ktime_get_ns() }.saturating_sub(since);
    let _ = hist_add(&RECLAIM_STALLS, &kernel::current_cgroup_id(), stall);
}

#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_begin")]
pub fn rcl_dbegin_btf(_ctx: BtfTracePointContext) -> i32 {
    begin();
    0
}

#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_end")]
pub fn rcl_dend_btf(_ctx: BtfTracePointContext) -> i32 {
    end();
    0
}

#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_begin")]
pub fn rcl_mbegin_btf(_ctx: BtfTracePointContext) -> i32 {
    begin();
    0
}

#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_end")]
pub fn rcl_mend_btf(_ctx: BtfTracePointContext) -> i32 {
    end();
    0
}

#[raw_tracepoint(tracepoint = "mm_vmscan_direct_reclaim_begin")]
pub fn rcl_dbegin_raw(_ctx: RawTracePointContext) -> i32 {
    begin();
    0
}

#[raw_tracepoint(tracepoint = "mm_vmscan_direct_reclaim_end")]
pub fn rcl_dend_raw(_ctx: RawTracePointContext) -> i32 {
    end();
    0
}

#[raw_tracepoint(tracepoint = "mm_vmscan_memcg_reclaim_begin")]
pub fn rcl_mbegin_raw(_ctx: RawTracePointContext) -> i32 {
    begin();
    0
}

#[raw_tracepoint(tracepoint = "mm_vmscan_memcg_reclaim_end")]
pub fn rcl_mend_raw(_ctx: RawTracePointContext) -> i32 {
    end();
    0
}

#[tracepoint]
pub fn rcl_dbegin_tp(_ctx: TracePointContext) -> u32 {
    begin();
    0
}

#[tracepoint]
pub fn rcl_dend_tp(_ctx: TracePointContext) -> u32 {
    end();
    0
}

#[tracepoint]
pub fn rcl_mbegin_tp(_ctx: TracePointContext) -> u32 {
    begin();
    0
}

#[tracepoint]
pub fn rcl_mend_tp(_ctx: TracePointContext) -> u32 {
    end();
    0
}

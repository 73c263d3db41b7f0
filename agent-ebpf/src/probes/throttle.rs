//! CFS throttle duration programs; see `agent_ebpf::throttle`.

use agent_ebpf::{
    hist::Log2Hist,
    throttle::{DURATIONS_MAX_ENTRIES, SINCE_MAX_ENTRIES},
};
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{fentry, kprobe, map},
    maps::{LruHashMap, PerCpuArray},
    programs::{FEntryContext, ProbeContext},
};

use super::{count_error, hist_add, kernel};

#[map]
static THROTTLE_SINCE: LruHashMap<u64, u64> = LruHashMap::with_max_entries(SINCE_MAX_ENTRIES, 0);

#[map]
static THROTTLE_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static THROTTLE_DURATIONS: LruHashMap<u64, Log2Hist> =
    LruHashMap::with_max_entries(DURATIONS_MAX_ENTRIES, 0);

/// throttle_cfs_rq(struct cfs_rq *cfs_rq): the run queue is throttled from now.
#[inline(always)]
fn throttled(cfs_rq: u64) {
    // SAFETY: helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if THROTTLE_SINCE.insert(&cfs_rq, &now, 0).is_err() {
        count_error(&THROTTLE_ERRORS, 0);
    }
}

/// unthrottle_cfs_rq(struct cfs_rq *cfs_rq): one throttle ended.
#[inline(always)]
fn unthrottled(cfs_rq: u64) {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(&since) = (unsafe { THROTTLE_SINCE.get(&cfs_rq) }) else {
        return;
    };
    let _ = THROTTLE_SINCE.remove(&cfs_rq);
    // SAFETY: helper with no preconditions.
    let d = unsafe { bpf_ktime_get_ns() }.saturating_sub(since);
    let cgroup = kernel::cfs_rq_cgroup_id(cfs_rq).unwrap_or(0);
    hist_add(&THROTTLE_DURATIONS, &cgroup, d);
}

#[fentry(function = "throttle_cfs_rq")]
pub fn thr_on_fentry(ctx: FEntryContext) -> i32 {
    throttled(ctx.arg(0));
    0
}

#[fentry(function = "unthrottle_cfs_rq")]
pub fn thr_off_fentry(ctx: FEntryContext) -> i32 {
    unthrottled(ctx.arg(0));
    0
}

#[kprobe]
pub fn thr_on_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(cfs_rq) = ctx.arg::<u64>(0) {
        throttled(cfs_rq);
    }
    0
}

#[kprobe]
pub fn thr_off_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(cfs_rq) = ctx.arg::<u64>(0) {
        unthrottled(cfs_rq);
    }
    0
}

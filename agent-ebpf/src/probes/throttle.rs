//! CFS throttle duration programs; see `agent_ebpf::throttle`.

use agent_ebpf::{
    hist::Log2Hist,
    throttle::{DURATIONS_MAX_ENTRIES, Unthrottling, kernel_duration},
};
use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::{LruHashMap, PerCpuArray},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};

use super::{count_error, hist_add, kernel};

#[map]
static THROTTLE_UNTHROTTLING: PerCpuArray<Unthrottling> = PerCpuArray::with_max_entries(1, 0);

#[map]
static THROTTLE_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static THROTTLE_DURATIONS: LruHashMap<u64, Log2Hist> =
    LruHashMap::with_max_entries(DURATIONS_MAX_ENTRIES, 0);

/// Entry of `unthrottle_cfs_rq(cfs_rq)`: keeps the run queue and the kernel's start of the
/// throttle for the return.
#[inline(always)]
fn enter(cfs_rq: u64) {
    let Some(slot) = THROTTLE_UNTHROTTLING.get_ptr_mut(0) else {
        return;
    };
    let throttled_clock = kernel::cfs_rq_throttled_clock(cfs_rq).unwrap_or_else(|| {
        count_error(&THROTTLE_ERRORS, 0);
        0
    });
    // SAFETY: this CPU's slot; calls do not nest on one CPU.
    unsafe {
        *slot = Unthrottling {
            cfs_rq,
            throttled_clock,
        }
    };
}

/// Return of `unthrottle_cfs_rq`: the span the kernel added to the group's throttled time, if
/// it added one.
#[inline(always)]
fn returned() {
    let Some(slot) = THROTTLE_UNTHROTTLING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; taken and cleared, so a return without its entry (attached
    // mid-call) finds nothing.
    let entry = unsafe { core::mem::take(&mut *slot) };
    if entry.throttled_clock == 0 {
        return;
    }
    let (Some(still_throttled), Some(rq_clock)) = (
        kernel::cfs_rq_throttled(entry.cfs_rq),
        kernel::cfs_rq_clock(entry.cfs_rq),
    ) else {
        count_error(&THROTTLE_ERRORS, 0);
        return;
    };
    if let Some(d) = kernel_duration(&entry, still_throttled, rq_clock) {
        let cgroup = kernel::cfs_rq_cgroup_id(entry.cfs_rq).unwrap_or(0);
        hist_add(&THROTTLE_DURATIONS, &cgroup, d);
    }
}

#[fentry(function = "unthrottle_cfs_rq")]
pub fn thr_enter_fentry(ctx: FEntryContext) -> i32 {
    enter(ctx.arg(0));
    0
}

#[fexit(function = "unthrottle_cfs_rq")]
pub fn thr_return_fexit(_ctx: FExitContext) -> i32 {
    returned();
    0
}

#[kprobe]
pub fn thr_enter_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(cfs_rq) = ctx.arg::<u64>(0) {
        enter(cfs_rq);
    }
    0
}

#[kretprobe]
pub fn thr_return_kretprobe(_ctx: RetProbeContext) -> u32 {
    returned();
    0
}

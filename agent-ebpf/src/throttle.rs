//! CFS throttling as the kernel accounts it: each time one of a cgroup's per-CPU run queues is
//! unthrottled (`unthrottle_cfs_rq`), the span the kernel adds to the group's throttled time
//! (`cpu.stat` `throttled_usec`): `rq_clock(rq) - cfs_rq->throttled_clock`, taken from the same
//! two fields the kernel uses, into a log2 histogram per cgroup. These are kernel functions,
//! not tracepoints: fentry and fexit where the kernel allows them, else kprobe and kretprobe.
//!
//! Why not the time from `throttle_cfs_rq` to `unthrottle_cfs_rq`: the kernel does not count
//! that span. Since 6.6 a run queue throttled while empty counts from its first enqueue (or
//! not at all); since 6.18 (task-based throttling) it counts from when its first task is
//! actually taken off at its return to user space; and since 6.18 `unthrottle_cfs_rq` can
//! return without unthrottling (no runtime left), the throttle going on. Reading the kernel's
//! own start (`throttled_clock`, 0 when nothing is counted) on entry, and on return whether the
//! run queue was unthrottled (`throttled`) and its clock, gives its figure on every kernel.
//!
//! (The totals always come from `cpu.stat`; the histogram gives their shape.)

/// `PerCpuArray<Unthrottling>` of one element: the call of `unthrottle_cfs_rq` in progress on
/// this CPU (it runs with the run queue locked and interrupts off, so calls never nest on one
/// CPU), from its entry to its return.
pub const MAP_UNTHROTTLING: &str = "THROTTLE_UNTHROTTLING";

/// `LruHashMap<u64 cgroup id, Log2Hist>`: throttle durations per cgroup.
pub const MAP_DURATIONS: &str = "THROTTLE_DURATIONS";
pub const DURATIONS_MAX_ENTRIES: u32 = 4096;

/// `PerCpuArray<u64>` of one element: unthrottles whose kernel fields could not be read (their
/// durations are missing from the histograms).
pub const MAP_ERRORS: &str = "THROTTLE_ERRORS";

/// One `unthrottle_cfs_rq(cfs_rq)` call, as its entry saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unthrottling {
    /// The `struct cfs_rq *` argument (a kretprobe does not see it).
    pub cfs_rq: u64,
    /// `cfs_rq->throttled_clock` on entry: the rq clock (ns) the kernel counts this throttle
    /// from; 0 when it counts nothing.
    pub throttled_clock: u64,
}

crate::user_pod!(Unthrottling);

/// The kernel's duration for a call, from what its entry saw and, on return, whether the run
/// queue is still throttled (`cfs_rq->throttled`) and `rq_clock(rq)`. `None` when the kernel
/// added nothing: it counted nothing (`throttled_clock` was 0: 6.6+ for a run queue throttled
/// empty, 6.18+ before any task was taken off), or it returned without unthrottling (6.18+, no
/// runtime left: still throttled). (Whether the field was cleared cannot tell: kernels before
/// 6.6 leave it set.) Pure, so both sides test it.
#[inline(always)]
pub fn kernel_duration(entry: &Unthrottling, still_throttled: bool, rq_clock: u64) -> Option<u64> {
    if entry.throttled_clock == 0 || still_throttled {
        return None;
    }
    Some(rq_clock.saturating_sub(entry.throttled_clock))
}

/// The programs on each hook, by attach variant: entry and return of the same function.
pub const HOOKS: [crate::HookPrograms; 2] = [
    crate::HookPrograms::function(
        "unthrottle_cfs_rq",
        ["thr_enter_fentry", "thr_enter_kprobe"],
    ),
    crate::HookPrograms::function_return(
        "unthrottle_cfs_rq",
        "unthrottle_cfs_rq:return",
        ["thr_return_fexit", "thr_return_kretprobe"],
    ),
];

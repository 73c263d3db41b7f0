//! CFS throttling as the scheduler does it: each time a cgroup's run queue on a CPU is throttled
//! (`throttle_cfs_rq`) until it is unthrottled (`unthrottle_cfs_rq`), a duration, in a log2
//! histogram per cgroup. These are kernel functions, not tracepoints: fentry where the kernel
//! allows it, else kprobe. (The totals always come from `cpu.stat`.)

/// `LruHashMap<u64 cfs_rq address, u64 ktime ns>`: run queues throttled now. LRU, so that the
/// entries of run queues whose group was destroyed while throttled (never unthrottled) are
/// evicted by newer ones instead of filling the map.
pub const MAP_SINCE: &str = "THROTTLE_SINCE";
pub const SINCE_MAX_ENTRIES: u32 = 16_384;

/// `LruHashMap<u64 cgroup id, Log2Hist>`: throttle durations per cgroup.
pub const MAP_DURATIONS: &str = "THROTTLE_DURATIONS";
pub const DURATIONS_MAX_ENTRIES: u32 = 4096;

/// `PerCpuArray<u64>` of one element: throttle starts that could not be stored (their
/// durations are missing from the histograms).
pub const MAP_ERRORS: &str = "THROTTLE_ERRORS";

/// The programs on each function, by attach variant.
pub const HOOKS: [crate::HookPrograms; 2] = [
    crate::HookPrograms::function("throttle_cfs_rq", ["thr_on_fentry", "thr_on_kprobe"]),
    crate::HookPrograms::function("unthrottle_cfs_rq", ["thr_off_fentry", "thr_off_kprobe"]),
];

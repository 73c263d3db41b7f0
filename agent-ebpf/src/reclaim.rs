//! Memory reclaim stalls: the time a task spends reclaiming memory itself before its
//! allocation can go on, from `mm_vmscan_direct_reclaim_begin` to `_end` (the page allocator
//! ran short: direct reclaim) and from `mm_vmscan_memcg_reclaim_begin` to `_end` (its cgroup
//! hit `memory.high` or `memory.max`), as a log2 histogram per cgroup of the stalled task.

/// `LruHashMap<u64 cgroup id, Log2Hist>`: reclaim stalls.
pub const MAP_STALLS: &str = "RECLAIM_STALLS";
pub const STALLS_MAX_ENTRIES: u32 = 4096;

/// `HashMap<u64 pid_tgid, u64 ktime ns>`: tasks reclaiming now (removed at the end; a task
/// reclaims one at a time).
pub const MAP_SINCE: &str = "RECLAIM_SINCE";
pub const SINCE_MAX_ENTRIES: u32 = 16_384;

/// The programs on each hook, by attach variant.
pub const HOOKS: [crate::HookPrograms; 4] = [
    crate::HookPrograms::new(
        "vmscan",
        "mm_vmscan_direct_reclaim_begin",
        ["rcl_dbegin_btf", "rcl_dbegin_raw", "rcl_dbegin_tp"],
    ),
    crate::HookPrograms::new(
        "vmscan",
        "mm_vmscan_direct_reclaim_end",
        ["rcl_dend_btf", "rcl_dend_raw", "rcl_dend_tp"],
    ),
    crate::HookPrograms::new(
        "vmscan",
        "mm_vmscan_memcg_reclaim_begin",
        ["rcl_mbegin_btf", "rcl_mbegin_raw", "rcl_mbegin_tp"],
    ),
    crate::HookPrograms::new(
        "vmscan",
        "mm_vmscan_memcg_reclaim_end",
        ["rcl_mend_btf", "rcl_mend_raw", "rcl_mend_tp"],
    ),
];

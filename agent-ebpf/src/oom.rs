//! OOM kills: each kill as an event through a ring buffer, and a counter per cgroup.
//!
//! The victim's cgroup is read in the kernel from the victim's task
//! (`task->cgroups->dfl_cgrp->kn->id`, offsets from BTF), since the victim is gone a moment
//! later.

/// `RingBuf` of [`OomEvent`]s.
pub const MAP_EVENTS: &str = "OOM_EVENTS";
pub const EVENTS_BYTES: u32 = 64 * 1024;

/// `LruPerCpuHashMap<u64 cgroup id, u64>`: OOM kills per victim cgroup.
pub const MAP_KILLS: &str = "OOM_KILLS";
pub const KILLS_MAX_ENTRIES: u32 = 4096;

/// `PerCpuArray<u64>` of one element: events the ring buffer had no room for.
pub const MAP_LOST: &str = "OOM_LOST";

/// `oom_score_adj` when the kernel's record did not carry it.
pub const SCORE_ADJ_UNKNOWN: i32 = i32::MIN;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomEvent {
    /// `bpf_ktime_get_ns()` at the kill.
    pub ktime_ns: u64,
    /// cgroup v2 id of the victim; 0 if it could not be read (classic tracepoint).
    pub cgroup: u64,
    /// cgroup v2 id of the task that ran the OOM killer (the allocator that failed).
    pub invoker_cgroup: u64,
    /// Victim thread group id (the process id) and thread id.
    pub tgid: u32,
    pub pid: u32,
    /// `signal->oom_score_adj`, or [`SCORE_ADJ_UNKNOWN`].
    pub oom_score_adj: i32,
    pub _pad: u32,
    /// Victim command name, NUL-padded.
    pub comm: [u8; 16],
}

crate::user_pod!(OomEvent);

/// Globals: classic tracepoint field offsets (from tracefs), 0 = unknown.
pub const GLOBAL_TP_VICTIM_PID: &str = "TP_VICTIM_PID";
pub const GLOBAL_TP_VICTIM_COMM: &str = "TP_VICTIM_COMM";
pub const GLOBAL_TP_VICTIM_SCORE_ADJ: &str = "TP_VICTIM_SCORE_ADJ";

/// The programs on each hook, by attach variant.
pub const HOOKS: [crate::HookPrograms; 1] = [crate::HookPrograms::new(
    "oom",
    "mark_victim",
    ["oom_victim_btf", "oom_victim_raw", "oom_victim_tp"],
)];

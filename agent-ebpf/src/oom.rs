//! OOM kills: each kill as an event through a ring buffer, and a counter per cgroup.
//!
//! The victim's cgroup is read in the kernel from the victim's task
//! (`task->cgroups->dfl_cgrp->kn->id`, offsets from BTF), since the victim is gone a moment
//! later.
//!
//! `mark_victim` is not a kill. The kernel also marks, without killing or counting a kill,
//! a task that is already exiting (the `task_will_free_mem()` shortcuts of `out_of_memory()`
//! and `oom_kill_process()`). A kill is `__oom_kill_process()`: it counts the kill
//! (`oom_kill` in `memory.events` / `memory.oom_control`), sends the victim `SIGKILL` with
//! `SEND_SIG_PRIV` (`signal_generate`), then marks it, all under `task_lock(victim)`, so with
//! no other signal or mark between them on that CPU. The `signal_generate` programs remember
//! the last such `SIGKILL` on the CPU ([`SigKill`]); `mark_victim` is a kill when it marks
//! the thread that signal was sent to, by the same task.

/// `RingBuf` of [`OomEvent`]s.
pub const MAP_EVENTS: &str = "OOM_EVENTS";
pub const EVENTS_BYTES: u32 = 64 * 1024;

/// `LruHashMap<u64 cgroup id, u64>`: OOM kills per victim cgroup.
pub const MAP_KILLS: &str = "OOM_KILLS";
pub const KILLS_MAX_ENTRIES: u32 = 4096;

/// `PerCpuArray<u64>` of one element: events the ring buffer had no room for.
pub const MAP_LOST: &str = "OOM_LOST";

/// `PerCpuArray<SigKill>` of one element: the last kernel `SIGKILL` sent to a thread group on
/// this CPU.
pub const MAP_SIGKILL: &str = "OOM_SIGKILL";

/// `PerCpuArray<u64>` of one element: victims marked without a kill (already exiting).
pub const MAP_SPARED: &str = "OOM_SPARED";

/// A `SIGKILL` the kernel sent (`SEND_SIG_PRIV`) to a whole thread group.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigKill {
    /// Thread id of the sender (`current`); 0 = none.
    pub by: u32,
    /// Thread id of the task it was sent to.
    pub to: u32,
}

/// `signal_generate`'s `code` for `SEND_SIG_PRIV` (`SI_KERNEL`).
pub const SI_KERNEL: i32 = 0x80;

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
    /// The kernel's `enum oom_constraint` for this kill plus one; [`CONSTRAINT_UNSEEN`] when
    /// the `oom_kill_process` hook did not see the decision.
    pub constraint: u32,
    /// Victim command name, NUL-padded.
    pub comm: [u8; 16],
    /// Id of the cgroup whose limit was hit (`oom_control.memcg`; its memory controller's
    /// cgroup, a v1 memory id on hybrid nodes); 0 when the OOM was not a cgroup's.
    pub constraint_cgroup: u64,
}

/// [`OomEvent::constraint`] when the decision was not seen.
pub const CONSTRAINT_UNSEEN: u32 = 0;

/// The kernel's `enum oom_constraint` (include/linux/oom.h, unchanged since 2.6.35), as
/// [`OomEvent::constraint`] holds it (plus one): no constraint (the whole machine), a cpuset, a
/// memory policy, a cgroup's memory limit.
pub const CONSTRAINT_NAMES: [&str; 4] = ["global", "cpuset", "mempolicy", "memcg"];

/// `Array<OomDecision>` of one element: the decision of the OOM kill in progress. The kernel
/// holds `oom_lock` from `out_of_memory()` through the kills, so there is one at a time.
pub const MAP_DECISION: &str = "OOM_DECISION";

/// What `oom_kill_process(struct oom_control *oc, ...)` was called with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomDecision {
    /// Thread id of the task running the OOM killer; 0 = none yet.
    pub by: u32,
    /// `oc->constraint` plus one.
    pub constraint: u32,
    /// See [`OomEvent::constraint_cgroup`].
    pub cgroup: u64,
}

crate::user_pod!(OomEvent);

/// Globals: classic tracepoint field offsets (from tracefs), 0 = unknown.
pub const GLOBAL_TP_VICTIM_PID: &str = "TP_VICTIM_PID";
pub const GLOBAL_TP_VICTIM_COMM: &str = "TP_VICTIM_COMM";
pub const GLOBAL_TP_VICTIM_SCORE_ADJ: &str = "TP_VICTIM_SCORE_ADJ";

pub const GLOBAL_TP_SIGNAL_SIG: &str = "TP_SIGNAL_SIG";
pub const GLOBAL_TP_SIGNAL_CODE: &str = "TP_SIGNAL_CODE";
pub const GLOBAL_TP_SIGNAL_PID: &str = "TP_SIGNAL_PID";
pub const GLOBAL_TP_SIGNAL_GROUP: &str = "TP_SIGNAL_GROUP";

/// The kernel's decision: a kernel function, so fentry, else kprobe. Optional: without it
/// the constraint is inferred from the memory controller's files.
pub const DECISION_HOOKS: [crate::HookPrograms; 1] = [crate::HookPrograms::function(
    "oom_kill_process",
    ["oom_decision_fentry", "oom_decision_kprobe"],
)];

/// The programs on each hook, by attach variant.
pub const HOOKS: [crate::HookPrograms; 2] = [
    crate::HookPrograms::new(
        "signal",
        "signal_generate",
        ["oom_sigkill_btf", "oom_sigkill_raw", "oom_sigkill_tp"],
    ),
    crate::HookPrograms::new(
        "oom",
        "mark_victim",
        ["oom_victim_btf", "oom_victim_raw", "oom_victim_tp"],
    ),
];

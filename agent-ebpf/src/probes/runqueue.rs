//! Run-queue latency programs; see `agent_ebpf::runqueue` for the design.

use agent_ebpf::{
    hist::{Log2Hist, log2_slot},
    runqueue::{
        ENQUEUED_AT_MAX_ENTRIES, ERR_ENQUEUE_UPDATE, ERR_LATENCY_UPDATE, ERR_PENDING_MISMATCH,
        ERRORS_LEN, LATENCY_MAX_CGROUPS, Pending,
    },
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_map, btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruPerCpuHashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use core::ffi::c_void;

use super::{count_error, task_storage::TaskStorage, tp_field};

/// Enqueue times for the tp_btf programs: task local storage, cheaper than a hash.
#[btf_map]
static RUNQ_TASK_ENQUEUED_AT: TaskStorage<u64> = TaskStorage::new();

/// Enqueue times for the raw and classic tracepoint programs, whose task arguments are not
/// trusted pointers the task storage helpers accept. A plain (preallocated) hash, not LRU: every entry is removed when its task gets a CPU, so
/// it cannot fill with stale entries, and updates skip the LRU list bookkeeping (measurably
/// cheaper on this hot path).
#[map]
static RUNQ_ENQUEUED_AT: HashMap<u64, u64> = HashMap::with_max_entries(ENQUEUED_AT_MAX_ENTRIES, 0);

#[map]
static RUNQ_PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

#[map]
static RUNQ_LATENCY: LruPerCpuHashMap<u64, Log2Hist> =
    LruPerCpuHashMap::with_max_entries(LATENCY_MAX_CGROUPS, 0);

#[map]
static RUNQ_CPU_WAIT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static RUNQ_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ERRORS_LEN, 0);

// Field offsets of the classic tracepoint records, set by the agent from tracefs at load time.
// 0 (the common header) means "not set": the classic programs then do nothing.
#[unsafe(no_mangle)]
static TP_SWITCH_PREV_PID: u32 = 0;
#[unsafe(no_mangle)]
static TP_SWITCH_PREV_STATE: u32 = 0;
#[unsafe(no_mangle)]
static TP_SWITCH_NEXT_PID: u32 = 0;
#[unsafe(no_mangle)]
static TP_WAKEUP_PID: u32 = 0;

/// Where the time a runnable task was enqueued is kept until it gets a CPU.
trait EnqueuedAt {
    type Task: Copy + PartialEq;
    fn set(task: Self::Task, now: u64);
    /// Takes (and clears) the task's enqueue time.
    fn take(task: Self::Task) -> Option<u64>;
    /// The key parked in [`Pending::task`] to recognise the task at its switch-out.
    fn key(task: Self::Task) -> u64;
}

/// tp_btf: task local storage, reached through the (trusted) task pointer.
struct InTaskStorage;

impl EnqueuedAt for InTaskStorage {
    type Task = *mut c_void;
    fn set(task: *mut c_void, now: u64) {
        match RUNQ_TASK_ENQUEUED_AT.get(task, true) {
            Some(slot) => *slot = now,
            None => count_error(&RUNQ_ERRORS, ERR_ENQUEUE_UPDATE),
        }
    }
    fn take(task: *mut c_void) -> Option<u64> {
        let slot = RUNQ_TASK_ENQUEUED_AT.get(task, false)?;
        let since = core::mem::take(slot);
        (since != 0).then_some(since)
    }
    fn key(task: *mut c_void) -> u64 {
        task as u64
    }
}

/// Raw and classic tracepoints: a hash keyed by task address or pid.
struct InHashMap;

impl EnqueuedAt for InHashMap {
    type Task = u64;
    fn set(task: u64, now: u64) {
        if RUNQ_ENQUEUED_AT.insert(&task, &now, 0).is_err() {
            count_error(&RUNQ_ERRORS, ERR_ENQUEUE_UPDATE);
        }
    }
    fn take(task: u64) -> Option<u64> {
        // SAFETY: the value is copied out before the entry is removed.
        let since = *unsafe { RUNQ_ENQUEUED_AT.get(&task) }?;
        let _ = RUNQ_ENQUEUED_AT.remove(&task);
        Some(since)
    }
    fn key(task: u64) -> u64 {
        task
    }
}

/// A task became runnable (woken).
#[inline(always)]
fn woken<S: EnqueuedAt>(task: S::Task) {
    // SAFETY: helper with no preconditions.
    S::set(task, unsafe { bpf_ktime_get_ns() });
}

/// A context switch on this CPU from `prev` to `next`. `prev` is the current task.
#[inline(always)]
fn switched<S: EnqueuedAt>(prev: S::Task, prev_runnable: bool, next: S::Task) {
    // SAFETY: helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(pending) = RUNQ_PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU's program instance touches it.
    let pending = unsafe { &mut *pending };

    // The task leaving the CPU is the one whose wait was parked when it started: it is the
    // current task, so the current cgroup is its own.
    if pending.task != 0 {
        if pending.task == S::key(prev) {
            // SAFETY: helper with no preconditions.
            record(unsafe { bpf_get_current_cgroup_id() }, pending.wait_ns);
        } else {
            count_error(&RUNQ_ERRORS, ERR_PENDING_MISMATCH);
        }
        pending.task = 0;
        pending.wait_ns = 0;
    }

    // A preempted task goes straight back to the run queue. The idle task (pid 0) never waits.
    if prev_runnable && bpf_get_current_pid_tgid() as u32 != 0 {
        S::set(prev, now);
    }

    let Some(since) = S::take(next) else {
        return;
    };
    let wait = now.saturating_sub(since);
    if let Some(cpu_wait) = RUNQ_CPU_WAIT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *cpu_wait += wait };
    }
    pending.task = S::key(next);
    pending.wait_ns = wait;
}

/// Adds one wait to a cgroup's histogram on this CPU.
#[inline(always)]
fn record(cgroup: u64, wait_ns: u64) {
    let slot = log2_slot(wait_ns);
    if let Some(hist) = RUNQ_LATENCY.get_ptr_mut(&cgroup) {
        // SAFETY: per-CPU value, only this CPU's program instance touches it.
        let hist = unsafe { &mut *hist };
        if let Some(c) = hist.slots.get_mut(slot) {
            *c += 1;
        }
        hist.sum_ns += wait_ns;
        return;
    }
    let mut hist = Log2Hist::ZERO;
    if let Some(c) = hist.slots.get_mut(slot) {
        *c = 1;
    }
    hist.sum_ns = wait_ns;
    // Another program on this CPU cannot have raced us (per-CPU, non-preemptible), but a
    // concurrent insert on another CPU can: then add to the entry it created.
    if RUNQ_LATENCY
        .insert(&cgroup, &hist, BPF_NOEXIST as u64)
        .is_err()
    {
        match RUNQ_LATENCY.get_ptr_mut(&cgroup) {
            Some(h) => {
                let h = unsafe { &mut *h };
                if let Some(c) = h.slots.get_mut(slot) {
                    *c += 1;
                }
                h.sum_ns += wait_ns;
            }
            None => count_error(&RUNQ_ERRORS, ERR_LATENCY_UPDATE),
        }
    }
}

// --- tp_btf and raw tracepoint: arguments are the kernel's own (typed pointers) ---
// sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
//              unsigned int prev_state); sched_wakeup{,_new}(struct task_struct *p).

/// TASK_RUNNING is 0; a preempted task is runnable whatever its state says.
#[inline(always)]
fn runnable(preempt: u64, prev_state: u64) -> bool {
    preempt & 0xff != 0 || prev_state as u32 == 0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn runq_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *mut c_void = ctx.arg(1);
    let next: *mut c_void = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    switched::<InTaskStorage>(prev, runnable(preempt, prev_state), next);
    0
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn runq_wakeup_btf(ctx: BtfTracePointContext) -> i32 {
    woken::<InTaskStorage>(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn runq_wakenew_btf(ctx: BtfTracePointContext) -> i32 {
    woken::<InTaskStorage>(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn runq_switch_raw(ctx: RawTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    switched::<InHashMap>(prev, runnable(preempt, prev_state), next);
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn runq_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    woken::<InHashMap>(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn runq_wakenew_raw(ctx: RawTracePointContext) -> i32 {
    woken::<InHashMap>(ctx.arg(0));
    0
}

// --- classic tracepoints: fields at offsets from the tracefs format files; keys are pids ---

#[tracepoint]
pub fn runq_switch_tp(ctx: TracePointContext) -> i32 {
    let (Some(prev), Some(state), Some(next)) = (
        tp_field::<i32>(&ctx, &TP_SWITCH_PREV_PID),
        tp_field::<i64>(&ctx, &TP_SWITCH_PREV_STATE),
        tp_field::<i32>(&ctx, &TP_SWITCH_NEXT_PID),
    ) else {
        return 0;
    };
    // The classic field reports a preempted task as TASK_REPORT_MAX (0x100) and a runnable one
    // as 0; the low bits are sleeping states.
    switched::<InHashMap>(prev as u64, state & 0xff == 0, next as u64);
    0
}

#[tracepoint]
pub fn runq_wakeup_tp(ctx: TracePointContext) -> i32 {
    if let Some(pid) = tp_field::<i32>(&ctx, &TP_WAKEUP_PID) {
        woken::<InHashMap>(pid as u64);
    }
    0
}

#[tracepoint]
pub fn runq_wakenew_tp(ctx: TracePointContext) -> i32 {
    if let Some(pid) = tp_field::<i32>(&ctx, &TP_WAKEUP_PID) {
        woken::<InHashMap>(pid as u64);
    }
    0
}

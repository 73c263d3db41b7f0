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
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use super::{count_error, global};

#[map]
static RUNQ_ENQUEUED_AT: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(ENQUEUED_AT_MAX_ENTRIES, 0);

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

/// A task became runnable.
#[inline(always)]
fn enqueued(task: u64) {
    let now = unsafe { bpf_ktime_get_ns() };
    if RUNQ_ENQUEUED_AT.insert(&task, &now, 0).is_err() {
        count_error(&RUNQ_ERRORS, ERR_ENQUEUE_UPDATE);
    }
}

/// A context switch on this CPU from `prev` to `next`. `prev` is the current task.
#[inline(always)]
fn switched(prev: u64, prev_runnable: bool, next: u64) {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(pending) = RUNQ_PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU's program instance touches it.
    let pending = unsafe { &mut *pending };

    // The task leaving the CPU is the one whose wait was parked when it started: it is the
    // current task, so the current cgroup is its own.
    if pending.task != 0 {
        if pending.task == prev {
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
        enqueued(prev);
    }

    // SAFETY: the value is copied out before the entry is removed.
    let Some(&since) = (unsafe { RUNQ_ENQUEUED_AT.get(&next) }) else {
        return;
    };
    let _ = RUNQ_ENQUEUED_AT.remove(&next);
    let wait = now.saturating_sub(since);
    if let Some(cpu_wait) = RUNQ_CPU_WAIT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *cpu_wait += wait };
    }
    pending.task = next;
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
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    switched(prev, runnable(preempt, prev_state), next);
    0
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn runq_wakeup_btf(ctx: BtfTracePointContext) -> i32 {
    enqueued(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn runq_wakenew_btf(ctx: BtfTracePointContext) -> i32 {
    enqueued(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn runq_switch_raw(ctx: RawTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    switched(prev, runnable(preempt, prev_state), next);
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn runq_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    enqueued(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn runq_wakenew_raw(ctx: RawTracePointContext) -> i32 {
    enqueued(ctx.arg(0));
    0
}

// --- classic tracepoints: fields at offsets from the tracefs format files; keys are pids ---

#[inline(always)]
fn tp_field<T>(ctx: &TracePointContext, global_offset: &u32) -> Option<T> {
    let offset = global(global_offset);
    if offset == 0 {
        return None;
    }
    // SAFETY: the offset comes from the tracepoint's own format file.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

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
    switched(prev as u64, state & 0xff == 0, next as u64);
    0
}

#[tracepoint]
pub fn runq_wakeup_tp(ctx: TracePointContext) -> i32 {
    if let Some(pid) = tp_field::<i32>(&ctx, &TP_WAKEUP_PID) {
        enqueued(pid as u64);
    }
    0
}

#[tracepoint]
pub fn runq_wakenew_tp(ctx: TracePointContext) -> i32 {
    if let Some(pid) = tp_field::<i32>(&ctx, &TP_WAKEUP_PID) {
        enqueued(pid as u64);
    }
    0
}

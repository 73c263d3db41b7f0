//! OOM kill programs; see `agent_ebpf::oom`.

use agent_ebpf::oom::{
    CONSTRAINT_UNSEEN, EVENTS_BYTES, KILLS_MAX_ENTRIES, OomDecision, OomEvent, SCORE_ADJ_UNKNOWN,
    SI_KERNEL, SigKill,
};
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::{btf_tracepoint, fentry, kprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, TracePointContext,
    },
};

use super::{count_add, count_error, kernel, tp_field};

#[map]
static OOM_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
static OOM_KILLS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(KILLS_MAX_ENTRIES, 0);

#[map]
static OOM_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static OOM_SIGKILL: PerCpuArray<SigKill> = PerCpuArray::with_max_entries(1, 0);

#[map]
static OOM_SPARED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static OOM_DECISION: Array<OomDecision> = Array::with_max_entries(1, 0);

// Classic tracepoint field offsets, from tracefs; 0 = unknown.
#[unsafe(no_mangle)]
static TP_VICTIM_PID: u32 = 0;
#[unsafe(no_mangle)]
static TP_VICTIM_COMM: u32 = 0;
#[unsafe(no_mangle)]
static TP_VICTIM_SCORE_ADJ: u32 = 0;
#[unsafe(no_mangle)]
static TP_SIGNAL_SIG: u32 = 0;
#[unsafe(no_mangle)]
static TP_SIGNAL_CODE: u32 = 0;
#[unsafe(no_mangle)]
static TP_SIGNAL_PID: u32 = 0;
#[unsafe(no_mangle)]
static TP_SIGNAL_GROUP: u32 = 0;

/// `SIGKILL`.
const SIGKILL: i32 = 9;

fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Remembers a kernel `SIGKILL` to thread group of thread `to` (see `agent_ebpf::oom`).
#[inline(always)]
fn signal(sig: i32, kernel_sent: bool, group: bool, to: u32) {
    if sig != SIGKILL || !kernel_sent || !group {
        return;
    }
    if let Some(slot) = OOM_SIGKILL.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            *slot = SigKill {
                by: current_tid(),
                to,
            }
        };
    }
}

/// Whether marking thread `victim` is a kill: the current task has just sent it the
/// kernel's `SIGKILL`. Forgets that signal either way.
#[inline(always)]
fn is_kill(victim: u32) -> bool {
    let Some(slot) = OOM_SIGKILL.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU slot.
    let sent = unsafe { core::ptr::replace(slot, SigKill::default()) };
    sent.by != 0 && sent.by == current_tid() && sent.to == victim
}

/// signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
/// int result); `SEND_SIG_PRIV` is the pointer value 1.
#[inline(always)]
fn signal_args(sig: i32, info: u64, task: u64, group: i32) {
    if sig == SIGKILL {
        signal(
            sig,
            info == 1,
            group != 0,
            kernel::task_pid(task).unwrap_or(0),
        );
    }
}

#[btf_tracepoint(function = "signal_generate")]
pub fn oom_sigkill_btf(ctx: BtfTracePointContext) -> i32 {
    signal_args(ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    0
}

#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn oom_sigkill_raw(ctx: RawTracePointContext) -> i32 {
    let sig: u64 = ctx.arg(0);
    let group: u64 = ctx.arg(3);
    signal_args(sig as i32, ctx.arg(1), ctx.arg(2), group as i32);
    0
}

/// The classic record has `code` (`SI_KERNEL` for `SEND_SIG_PRIV`) and the target's `pid`.
#[tracepoint]
pub fn oom_sigkill_tp(ctx: TracePointContext) -> u32 {
    let (Some(sig), Some(code), Some(pid), Some(group)) = (
        tp_field::<i32>(&ctx, &TP_SIGNAL_SIG),
        tp_field::<i32>(&ctx, &TP_SIGNAL_CODE),
        tp_field::<i32>(&ctx, &TP_SIGNAL_PID),
        tp_field::<i32>(&ctx, &TP_SIGNAL_GROUP),
    ) else {
        return 0;
    };
    signal(sig, code == SI_KERNEL, group != 0, pid as u32);
    0
}

/// oom_kill_process(struct oom_control *oc, const char *message): the kernel's decision,
/// kept for the kills that follow.
#[inline(always)]
fn decided(oc: u64) {
    let Some(slot) = OOM_DECISION.get_ptr_mut(0) else {
        return;
    };
    let (cgroup, constraint) = kernel::oom_control(oc).unwrap_or((0, u32::MAX));
    let decision = OomDecision {
        by: current_tid(),
        constraint: constraint.wrapping_add(1),
        cgroup,
    };
    // SAFETY: one OOM kill at a time (oom_lock); a torn read would only mislabel one event.
    unsafe { *slot = decision };
}

#[fentry(function = "oom_kill_process")]
pub fn oom_decision_fentry(ctx: FEntryContext) -> i32 {
    decided(ctx.arg(0));
    0
}

#[kprobe]
pub fn oom_decision_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(oc) = ctx.arg::<u64>(0) {
        decided(oc);
    }
    0
}

/// The decision behind the kill the current task is making, if the hook saw it.
#[inline(always)]
fn decision() -> Option<OomDecision> {
    // SAFETY: see `decided`.
    let d = unsafe { *OOM_DECISION.get_ptr(0)? };
    (d.by != 0 && d.by == current_tid()).then_some(d)
}

/// Counts the kill on the victim's cgroup and sends the event; a mark without a kill is
/// counted apart.
#[inline(always)]
fn killed(mut event: OomEvent) {
    if !is_kill(event.pid) {
        count_error(&OOM_SPARED, 0);
        return;
    }
    if let Some(d) = decision() {
        event.constraint = d.constraint;
        event.constraint_cgroup = d.cgroup;
    }
    count_add(&OOM_KILLS, &event.cgroup, 1);
    if OOM_EVENTS.output::<OomEvent>(&event, 0).is_err()
        && let Some(lost) = OOM_LOST.get_ptr_mut(0)
    {
        // SAFETY: per-CPU slot.
        unsafe { *lost += 1 };
    }
}

fn blank_event() -> OomEvent {
    OomEvent {
        // SAFETY: helpers with no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        cgroup: 0,
        invoker_cgroup: kernel::current_cgroup_id(),
        tgid: 0,
        pid: 0,
        oom_score_adj: SCORE_ADJ_UNKNOWN,
        constraint: CONSTRAINT_UNSEEN,
        comm: [0; 16],
        constraint_cgroup: 0,
    }
}

/// mark_victim(struct task_struct *task, uid_t uid): everything read from the victim's task.
#[inline(always)]
fn victim(task: u64) {
    let mut e = blank_event();
    e.cgroup = kernel::task_cgroup_id(task).unwrap_or(0);
    e.tgid = kernel::task_tgid(task).unwrap_or(0);
    e.pid = kernel::task_pid(task).unwrap_or(0);
    e.oom_score_adj = kernel::task_oom_score_adj(task).map_or(SCORE_ADJ_UNKNOWN, i32::from);
    e.comm = kernel::task_comm(task).unwrap_or([0; 16]);
    killed(e);
}

#[btf_tracepoint(function = "mark_victim")]
pub fn oom_victim_btf(ctx: BtfTracePointContext) -> i32 {
    victim(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn oom_victim_raw(ctx: RawTracePointContext) -> i32 {
    victim(ctx.arg(0));
    0
}

/// The classic record has the victim's pid, comm and oom_score_adj but no task pointer, so the
/// victim's cgroup is left 0 for userspace to look up (while the process still exists).
#[tracepoint]
pub fn oom_victim_tp(ctx: TracePointContext) -> u32 {
    let mut e = blank_event();
    let Some(pid) = tp_field::<i32>(&ctx, &TP_VICTIM_PID) else {
        return 0;
    };
    e.pid = pid as u32;
    e.tgid = pid as u32;
    if let Some(adj) = tp_field::<i16>(&ctx, &TP_VICTIM_SCORE_ADJ) {
        e.oom_score_adj = i32::from(adj);
    }
    // `comm` is a __data_loc field: a u32 whose low 16 bits are the string's offset in the
    // record.
    if let Some(loc) = tp_field::<u32>(&ctx, &TP_VICTIM_COMM) {
        let at = (ctx.as_ptr() as u64 + u64::from(loc & 0xffff)) as *const u8;
        // SAFETY: a bounded read of the record the kernel handed us.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(at, &mut e.comm) };
    }
    killed(e);
    0
}

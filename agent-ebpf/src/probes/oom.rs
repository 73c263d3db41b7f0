//! OOM kill programs; see `agent_ebpf::oom`.

use agent_ebpf::oom::{EVENTS_BYTES, KILLS_MAX_ENTRIES, OomEvent, SCORE_ADJ_UNKNOWN};
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use super::{count_add, kernel, tp_field};

#[map]
static OOM_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
static OOM_KILLS: LruPerCpuHashMap<u64, u64> =
    LruPerCpuHashMap::with_max_entries(KILLS_MAX_ENTRIES, 0);

#[map]
static OOM_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

// Classic tracepoint field offsets, from tracefs; 0 = unknown.
#[unsafe(no_mangle)]
static TP_VICTIM_PID: u32 = 0;
#[unsafe(no_mangle)]
static TP_VICTIM_COMM: u32 = 0;
#[unsafe(no_mangle)]
static TP_VICTIM_SCORE_ADJ: u32 = 0;

/// Counts the kill on the victim's cgroup and sends the event.
#[inline(always)]
fn killed(event: OomEvent) {
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
        _pad: 0,
        comm: [0; 16],
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

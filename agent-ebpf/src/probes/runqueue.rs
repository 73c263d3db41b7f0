//! Run-queue latency programs; see `agent_ebpf::runqueue` for the design.

use agent_ebpf::{
    hist::Log2Hist,
    iowait::{self, IowaitSince, SINCE_MAX_ENTRIES},
    runqueue::{
        CAUSED_MAX_ENTRIES, CULPRIT_IDLE, CULPRIT_UNSEEN, CausedKey, ENQUEUED_AT_MAX_ENTRIES,
        ERR_ENQUEUE_UPDATE, ERR_LATENCY_UPDATE, ERR_PENDING_MISMATCH, Enqueued,
        LATENCY_MAX_CGROUPS, MISMATCH_CPUS, MISMATCH_SLOTS, Mismatch, RUNS, Run, RunqCpu, SPLIT,
        Split, split_wait,
    },
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::{btf_map, btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

/// The error an update with `BPF_NOEXIST` returns for a key present.
const EEXIST: i32 = -17;

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use super::{
    BPF_NOEXIST, count_add, global, hist_add, kernel, task_storage::TaskStorage, tp_field,
};

/// Per-task state for the tp_btf programs, in task local storage (cheaper than a hash).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TaskTimes {
    /// When the task became runnable; 0 when it is not waiting for a CPU.
    enqueued_at: u64,
    /// 1 when `enqueued_at` is a preemption's (the task went back to the run queue still
    /// runnable, so it is waiting for certain: a wakeup keeps that time); 0 when it is a
    /// wakeup's, which the next wakeup replaces (see [`InTaskStorage::clear_enqueued`]).
    preempted: u32,
    _pad: u32,
    /// When it was last moved to another CPU while waiting (see [`Enqueued::arrived_ns`]).
    arrived_at: u64,
    /// Set while the task is blocked in iowait (`since_ns` 0 otherwise).
    iowait: IowaitSince,
}

#[btf_map]
static SCHED_TASK_TIMES: TaskStorage<TaskTimes> = TaskStorage::new();

/// Enqueue times for the raw and classic tracepoint programs, whose task arguments are not
/// trusted pointers the task storage helpers accept. A plain (preallocated) hash, not LRU:
/// every entry is removed when its task gets a CPU, so it cannot fill with stale entries, and
/// updates skip the LRU list bookkeeping (measurably cheaper on this hot path).
#[map]
static RUNQ_ENQUEUED_AT: HashMap<u64, Enqueued> =
    HashMap::with_max_entries(ENQUEUED_AT_MAX_ENTRIES, 0);

/// Tasks blocked in iowait, for the raw and classic tracepoint programs (removed at wake-up).
#[map]
static IOWAIT_SINCE: HashMap<u64, IowaitSince> = HashMap::with_max_entries(SINCE_MAX_ENTRIES, 0);

#[map]
static RUNQ_CPU: PerCpuArray<RunqCpu> = PerCpuArray::with_max_entries(1, 0);

#[map]
static RUNQ_LATENCY: LruHashMap<u64, Log2Hist> =
    LruHashMap::with_max_entries(LATENCY_MAX_CGROUPS, 0);

#[map]
static RUNQ_CAUSED: LruHashMap<CausedKey, u64> =
    LruHashMap::with_max_entries(CAUSED_MAX_ENTRIES, 0);

#[map]
static IOWAIT_TIME: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(iowait::TIME_MAX_ENTRIES, 0);

#[map]
static IOWAIT_CPU: Array<u64> = Array::with_max_entries(iowait::MAX_CPUS, 0);

#[map]
static RUNQ_MISMATCHES: Array<Mismatch> = Array::with_max_entries(MISMATCH_SLOTS, 0);

#[map]
static RUNQ_MISMATCH_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// 1: record each pending mismatch in RUNQ_MISMATCHES (`--debug-runqueue on`).
#[unsafe(no_mangle)]
static DEBUG_MISMATCHES: u32 = 0;

/// 1: split each wait by who ran meanwhile (`--neighbours on`, the default).
#[unsafe(no_mangle)]
static NEIGHBOURS: u32 = 1;

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
#[unsafe(no_mangle)]
static TP_MIGRATE_PID: u32 = 0;

/// Counts an enqueue time that could not be stored (off the hot path: only on failure).
#[inline(always)]
fn enqueue_failed() {
    if let Some(cpu) = RUNQ_CPU.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU's program instance touches it.
        unsafe { (*cpu).errors[ERR_ENQUEUE_UPDATE as usize] += 1 };
    }
}

/// Where per-task times are kept between hooks.
trait TaskState {
    type Task: Copy;
    /// The task became runnable at `now`.
    fn set_enqueued(task: Self::Task, now: u64);
    /// Takes (and clears) the time the task became runnable, and when it was last moved to
    /// another CPU while waiting (0: not moved).
    fn take_enqueued(task: Self::Task) -> Option<Enqueued>;
    /// The task was moved to another CPU's run queue at `now`: if it is waiting, only that
    /// CPU's runners delay it from now on.
    fn migrated(task: Self::Task, now: u64);
    /// The task went to sleep (or died): it has no start time any more.
    fn clear_enqueued(task: Self::Task);
    /// The task was woken at `now`: it is runnable from now on, unless it already was (a
    /// preempted task still queued, woken by `ttwu_runnable()`: its start time stays); returns
    /// its iowait, if it was blocked in one (and clears it).
    fn woken(task: Self::Task, now: u64) -> Option<IowaitSince>;
    /// The task blocked in iowait.
    fn set_iowait(task: Self::Task, since: IowaitSince);
    /// The key parked in [`RunqCpu::pending_task`] to recognise the task at its switch-out.
    fn key(task: Self::Task) -> u64;
    /// The live `__state` of `prev`, the task leaving the CPU (the current task).
    fn live_state(prev: Self::Task) -> Option<u32>;
    /// Whether `prev` (the current task) is blocked in iowait.
    fn in_iowait(prev: Self::Task) -> bool;
}

/// tp_btf: task local storage, reached through the (trusted) task pointer.
struct InTaskStorage;

impl TaskState for InTaskStorage {
    type Task = *mut c_void;
    fn set_enqueued(task: *mut c_void, now: u64) {
        match SCHED_TASK_TIMES.get(task, true) {
            Some(t) => {
                t.enqueued_at = now;
                t.preempted = 1;
            }
            None => enqueue_failed(),
        }
    }
    fn take_enqueued(task: *mut c_void) -> Option<Enqueued> {
        let t = SCHED_TASK_TIMES.get(task, false)?;
        t.preempted = 0;
        let since_ns = core::mem::take(&mut t.enqueued_at);
        let arrived_ns = core::mem::take(&mut t.arrived_at);
        (since_ns != 0).then_some(Enqueued {
            since_ns,
            arrived_ns,
        })
    }
    /// A start time a sleeping task may hold (a wakeup's that came while it still ran) is
    /// replaced at its next wakeup, which comes after this move: the arrival then predates it
    /// and changes nothing.
    fn migrated(task: *mut c_void, now: u64) {
        if let Some(t) = SCHED_TASK_TIMES.get(task, false)
            && t.enqueued_at != 0
        {
            t.arrived_at = now;
        }
    }
    /// Nothing to do, and no storage lookup on the hot path: the only start time a sleeping
    /// task can hold is a wakeup's (one that came while it still ran; a preemption's was
    /// taken when the task got the CPU back), and `woken` replaces a wakeup's time. A task
    /// cannot get a CPU again without a wakeup, and its storage goes with it when it dies.
    fn clear_enqueued(_task: *mut c_void) {}
    fn woken(task: *mut c_void, now: u64) -> Option<IowaitSince> {
        let Some(t) = SCHED_TASK_TIMES.get(task, true) else {
            enqueue_failed();
            return None;
        };
        if t.enqueued_at == 0 || t.preempted == 0 {
            t.enqueued_at = now;
        }
        let io = core::mem::take(&mut t.iowait);
        (io.since_ns != 0).then_some(io)
    }
    fn set_iowait(task: *mut c_void, since: IowaitSince) {
        if let Some(t) = SCHED_TASK_TIMES.get(task, true) {
            t.iowait = since;
        }
    }
    fn key(task: *mut c_void) -> u64 {
        task as u64
    }
    fn live_state(prev: *mut c_void) -> Option<u32> {
        kernel::btf_task_state(prev)
    }
    fn in_iowait(prev: *mut c_void) -> bool {
        kernel::btf_task_in_iowait(prev)
    }
}

/// Raw and classic tracepoints: hashes keyed by task address or pid.
struct InHashMap;

impl TaskState for InHashMap {
    type Task = u64;
    fn set_enqueued(task: u64, now: u64) {
        let e = Enqueued {
            since_ns: now,
            arrived_ns: 0,
        };
        if RUNQ_ENQUEUED_AT.insert(&task, &e, 0).is_err() {
            enqueue_failed();
        }
    }
    fn take_enqueued(task: u64) -> Option<Enqueued> {
        // SAFETY: the value is copied out before the entry is removed.
        let e = *unsafe { RUNQ_ENQUEUED_AT.get(&task) }?;
        let _ = RUNQ_ENQUEUED_AT.remove(&task);
        Some(e)
    }
    fn migrated(task: u64, now: u64) {
        if let Some(e) = RUNQ_ENQUEUED_AT.get_ptr_mut(&task) {
            // SAFETY: a valid map value; only this task's events touch it, and they are
            // serialised by the scheduler.
            unsafe { (*e).arrived_ns = now };
        }
    }
    fn clear_enqueued(task: u64) {
        let _ = RUNQ_ENQUEUED_AT.remove(&task);
    }
    fn woken(task: u64, now: u64) -> Option<IowaitSince> {
        // BPF_NOEXIST: a start time a preemption set stays.
        let e = Enqueued {
            since_ns: now,
            arrived_ns: 0,
        };
        match RUNQ_ENQUEUED_AT.insert(&task, &e, BPF_NOEXIST) {
            Ok(()) | Err(EEXIST) => {}
            Err(_) => enqueue_failed(),
        }
        // SAFETY: the value is copied out before the entry is removed.
        let io = *unsafe { IOWAIT_SINCE.get(&task) }?;
        let _ = IOWAIT_SINCE.remove(&task);
        Some(io)
    }
    fn set_iowait(task: u64, since: IowaitSince) {
        let _ = IOWAIT_SINCE.insert(&task, &since, 0);
    }
    fn key(task: u64) -> u64 {
        task
    }
    fn live_state(_prev: u64) -> Option<u32> {
        // SAFETY: helper with no preconditions.
        kernel::task_state(unsafe { bpf_get_current_task() })
    }
    fn in_iowait(_prev: u64) -> bool {
        // SAFETY: helper with no preconditions.
        kernel::task_in_iowait(unsafe { bpf_get_current_task() })
    }
}

/// A task was woken.
#[inline(always)]
fn woken<S: TaskState>(task: S::Task) {
    // SAFETY: helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(io) = S::woken(task, now) {
        record_iowait(io, now);
    }
}

/// Adds a finished iowait to its cgroup and to the CPU it blocked on.
#[inline(always)]
fn record_iowait(io: IowaitSince, now: u64) {
    let d = now.saturating_sub(io.since_ns);
    count_add(&IOWAIT_TIME, &io.cgroup, d);
    if let Some(c) = IOWAIT_CPU.get_ptr_mut(io.cpu) {
        // SAFETY: a valid map value; the slot is shared by all CPUs, hence the atomic add.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(c, d) };
    }
}

/// How the task leaving the CPU left it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PrevState {
    /// Still runnable (preempted or yielded): it goes back to the run queue.
    Runnable,
    /// Asleep, in whatever state: iowait if `in_iowait` is set, as the kernel decides it (the
    /// scheduler counts `nr_iowait` and delay accounting's block I/O delay for any sleeping
    /// task with `in_iowait`, e.g. io_uring's interruptible completion wait).
    Sleeping,
}

/// A context switch on this CPU from `prev` to `next`. `prev` is the current task.
#[inline(always)]
fn switched<S: TaskState>(prev: S::Task, prev_state: PrevState, next: S::Task) {
    // SAFETY: helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(cpu) = RUNQ_CPU.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU's program instance touches it.
    let cpu = unsafe { &mut *cpu };
    let neighbours = global(&NEIGHBOURS) == 1;
    // The task leaving the CPU is the current task, so the current cgroup is its own (one
    // helper call; in the v1 mode four kernel reads), looked up only when a figure needs it.
    // The idle task's runs are the CPU's idle time.
    let prev_idle = bpf_get_current_pid_tgid() as u32 == 0;
    let needed = neighbours || cpu.pending_task != 0;
    let prev_cgroup = if prev_idle {
        CULPRIT_IDLE
    } else if needed {
        kernel::current_cgroup_id()
    } else {
        0
    };

    // The task leaving the CPU is the one whose wait was parked when it started: its wait goes
    // to its cgroup's histogram, and each part of it to (its cgroup, who ran meanwhile).
    if cpu.pending_task != 0 {
        if cpu.pending_task == S::key(prev) {
            if !hist_add(&RUNQ_LATENCY, &prev_cgroup, cpu.pending_wait_ns) {
                cpu.errors[ERR_LATENCY_UPDATE as usize] += 1;
            }
            if neighbours {
                add_caused(prev_cgroup, &cpu.pending_split);
            }
        } else {
            cpu.errors[ERR_PENDING_MISMATCH as usize] += 1;
            if global(&DEBUG_MISMATCHES) == 1 {
                record_mismatch(
                    now,
                    cpu.pending_task,
                    S::key(prev),
                    S::key(next),
                    prev_state == PrevState::Runnable,
                );
            }
        }
        cpu.pending_task = 0;
        cpu.pending_wait_ns = 0;
    }

    // The run that ends now, remembered for the waits it delayed.
    if neighbours {
        let slot = (cpu.runs_recorded as usize) & (RUNS - 1);
        cpu.runs[slot] = Run {
            cgroup: prev_cgroup,
            start_ns: cpu.run_start_ns,
            end_ns: now,
        };
        cpu.runs_recorded += 1;
        cpu.run_start_ns = now;
    }

    if prev_state == PrevState::Runnable {
        // A preempted task goes straight back to the run queue. The idle task never waits.
        if !prev_idle {
            S::set_enqueued(prev, now);
        }
    } else {
        // A sleeping (or dying) task leaves no start time behind: a wakeup that came while it
        // still ran (woken before it slept) must not date its next wait, nor outlive it.
        S::clear_enqueued(prev);
    }
    if prev_state == PrevState::Sleeping && S::in_iowait(prev) {
        // The kernel's rule, whatever the sleep state: io_schedule() sleeps uninterruptibly,
        // but io_uring waits for completions interruptibly with `in_iowait` set, and TASK_IDLE
        // is a state of its own. (One kernel read per sleep.)
        S::set_iowait(
            prev,
            IowaitSince {
                since_ns: now,
                cgroup: if needed {
                    prev_cgroup
                } else {
                    kernel::current_cgroup_id()
                },
                // SAFETY: helper with no preconditions.
                cpu: unsafe { bpf_get_smp_processor_id() },
                _pad: 0,
            },
        );
    }

    let Some(e) = S::take_enqueued(next) else {
        return;
    };
    let wait = now.saturating_sub(e.since_ns);
    cpu.wait_ns += wait;
    cpu.pending_task = S::key(next);
    cpu.pending_wait_ns = wait;
    if neighbours {
        cpu.pending_split = split_wait(&cpu.runs, cpu.runs_recorded, e.since_ns, e.arrived_ns, now);
    }
}

/// A task was moved to another CPU's run queue.
#[inline(always)]
fn migrated<S: TaskState>(task: S::Task) {
    if global(&NEIGHBOURS) != 1 {
        return;
    }
    // SAFETY: helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    S::migrated(task, now);
}

/// Adds each part of a wait of `victim`'s to [`RUNQ_CAUSED`]; a part that cannot be stored
/// (the map full of entries in use) is lost from the split only, never from the latency.
#[inline(always)]
fn add_caused(victim: u64, split: &Split) {
    let mut i = 0;
    while i < SPLIT {
        if split.ns[i] != 0 {
            let key = CausedKey {
                victim,
                culprit: split.culprits[i],
            };
            count_add(&RUNQ_CAUSED, &key, split.ns[i]);
        }
        i += 1;
    }
    if split.unseen_ns != 0 {
        let key = CausedKey {
            victim,
            culprit: CULPRIT_UNSEEN,
        };
        count_add(&RUNQ_CAUSED, &key, split.unseen_ns);
    }
}

/// Keys at or above this are kernel addresses (`task_struct` pointers); below, pids.
const KERNEL_ADDRESSES: u64 = 0xffff_0000_0000_0000;

/// Writes a mismatch record into the next slot of RUNQ_MISMATCHES (debugging only).
#[inline(always)]
fn record_mismatch(now: u64, parked: u64, prev: u64, next: u64, prev_runnable: bool) {
    let Some(seq) = RUNQ_MISMATCH_SEQ.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU's program instance touches it.
    let seq = unsafe {
        *seq += 1;
        *seq
    };
    // SAFETY: helper with no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let per_cpu = u64::from(MISMATCH_SLOTS / MISMATCH_CPUS);
    let index = u64::from(cpu % MISMATCH_CPUS) * per_cpu + seq % per_cpu;
    let Some(slot) = RUNQ_MISMATCHES.get_ptr_mut(index as u32) else {
        return;
    };
    let (parked_pid, parked_comm) = if parked >= KERNEL_ADDRESSES {
        (
            kernel::task_pid(parked).unwrap_or(0),
            kernel::task_comm(parked).unwrap_or([0; 16]),
        )
    } else {
        (parked as u32, [0; 16])
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a valid map value; CPUs beyond MISMATCH_CPUS share slots, where a record may
    // tear, which only costs a debugging line.
    unsafe {
        *slot = Mismatch {
            seq,
            now_ns: now,
            parked,
            prev,
            next,
            parked_pid,
            prev_pid: pid_tgid as u32,
            prev_tgid: (pid_tgid >> 32) as u32,
            cpu,
            prev_runnable: u32::from(prev_runnable),
            _pad: 0,
            parked_comm,
            prev_comm: bpf_get_current_comm().unwrap_or([0; 16]),
        }
    };
}

// --- tp_btf and raw tracepoint: arguments are the kernel's own (typed pointers) ---
// sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
//              unsigned int prev_state); sched_wakeup{,_new}(struct task_struct *p).

/// How `prev` (the current task) leaves the CPU, as bcc's runqlat decides it: runnable when
/// preempted, else when its live state is `TASK_RUNNING` (0). The live `task->__state`, not the
/// tracepoint's `prev_state`: kernels without the 2025 fix trace a task whose sleep a pending
/// signal cancelled (it stays runnable) with its sleeping state. The traced state stands in
/// where the live one cannot be read.
#[inline(always)]
fn leaving<S: TaskState>(prev: S::Task, preempted: bool, traced_running: bool) -> PrevState {
    if preempted {
        return PrevState::Runnable;
    }
    let running = match S::live_state(prev) {
        Some(state) => state == 0,
        None => traced_running,
    };
    if running {
        PrevState::Runnable
    } else {
        PrevState::Sleeping
    }
}

/// tp_btf and raw tracepoint arguments: TASK_RUNNING is 0.
#[inline(always)]
fn prev_state<S: TaskState>(prev: S::Task, preempt: u64, prev_state: u64) -> PrevState {
    leaving::<S>(prev, preempt & 0xff != 0, prev_state as u32 == 0)
}

#[btf_tracepoint(function = "sched_switch")]
pub fn runq_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *mut c_void = ctx.arg(1);
    let next: *mut c_void = ctx.arg(2);
    let state: u64 = ctx.arg(3);
    switched::<InTaskStorage>(
        prev,
        prev_state::<InTaskStorage>(prev, preempt, state),
        next,
    );
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

// sched_migrate_task(struct task_struct *p, int dest_cpu)
#[btf_tracepoint(function = "sched_migrate_task")]
pub fn runq_migrate_btf(ctx: BtfTracePointContext) -> i32 {
    migrated::<InTaskStorage>(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "sched_migrate_task")]
pub fn runq_migrate_raw(ctx: RawTracePointContext) -> i32 {
    migrated::<InHashMap>(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn runq_switch_raw(ctx: RawTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    let state: u64 = ctx.arg(3);
    switched::<InHashMap>(prev, prev_state::<InHashMap>(prev, preempt, state), next);
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
    // as 0; the low bits are sleeping states (0x2: D; TASK_IDLE as 0x80). prev is the current
    // task, so its live state is read as for the other variants.
    // Preempted: only a bit above the state bits (TASK_REPORT_MAX, 0x100 since 4.14).
    let state = state as u64;
    let prev_state = if state & 0xff != 0 {
        leaving::<InHashMap>(prev as u64, false, false)
    } else if state != 0 {
        PrevState::Runnable
    } else {
        leaving::<InHashMap>(prev as u64, false, true)
    };
    switched::<InHashMap>(prev as u64, prev_state, next as u64);
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

#[tracepoint]
pub fn runq_migrate_tp(ctx: TracePointContext) -> i32 {
    if let Some(pid) = tp_field::<i32>(&ctx, &TP_MIGRATE_PID) {
        migrated::<InHashMap>(pid as u64);
    }
    0
}

//! Run-queue latency: the time a runnable task waits between being woken (or preempted) and
//! running, attributed to the waiting task's own cgroup.
//!
//! Kernel side (programs named `runq_*`): on sched_wakeup / sched_wakeup_new, and on
//! sched_switch for a preempted task, the time the task became runnable is stored in
//! [`MAP_ENQUEUED_AT`]. When sched_switch picks it, its wait is added to the CPU's total
//! ([`MAP_CPU`]) and parked there too. At the next sched_switch on that CPU the
//! same task is `prev`, which is the current task, so `bpf_get_current_cgroup_id()` names its
//! own cgroup: the wait goes into that cgroup's histogram ([`MAP_LATENCY`]). This needs no
//! kernel struct offsets and works identically for every attach variant.

use crate::HookPrograms;

/// `HashMap<u64 task key, Enqueued>`: when each runnable task was enqueued. The task key is
/// the `task_struct` address (tp_btf, raw tracepoint) or the pid (classic tracepoint).
pub const MAP_ENQUEUED_AT: &str = "RUNQ_ENQUEUED_AT";

/// A runnable task's wait so far ([`MAP_ENQUEUED_AT`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// When it became runnable (ktime ns).
    pub since_ns: u64,
    /// When it was last moved to another CPU's run queue while waiting (`sched_migrate_task`),
    /// 0 if never: only the CPU it waits on from then on can be blamed for the rest.
    pub arrived_ns: u64,
}

crate::user_pod!(Enqueued);
pub const ENQUEUED_AT_MAX_ENTRIES: u32 = 65_536;

/// `PerCpuArray<RunqCpu>` of one element: each CPU's own state (the wait of the task running
/// on it, not yet attributed to its cgroup; its run queue's total wait; the error counters),
/// one lookup per switch for all of it.
pub const MAP_CPU: &str = "RUNQ_CPU";

/// `LruHashMap<u64 cgroup id, Log2Hist>`: run-queue latency per cgroup (v2 id).
pub const MAP_LATENCY: &str = "RUNQ_LATENCY";
/// Default capacity of [`MAP_LATENCY`]; the agent can change it at load time.
pub const LATENCY_MAX_CGROUPS: u32 = 4096;

/// Indexes of [`RunqCpu::errors`]. The enqueue time could not be stored.
pub const ERR_ENQUEUE_UPDATE: u32 = 0;
/// A cgroup's histogram could not be created.
pub const ERR_LATENCY_UPDATE: u32 = 1;
/// The task leaving a CPU was not the one that last started there (should not happen).
pub const ERR_PENDING_MISMATCH: u32 = 2;
pub const ERRORS_LEN: u32 = 3;

/// `Array<Mismatch>` of [`MISMATCH_SLOTS`]: the last pending mismatches, written only while
/// the global [`GLOBAL_DEBUG_MISMATCHES`] is 1 (`--debug-runqueue on`); CPU `c` writes its
/// record `seq` into slot `(c % MISMATCH_CPUS) * 8 + seq % 8`.
pub const MAP_MISMATCHES: &str = "RUNQ_MISMATCHES";
pub const MISMATCH_SLOTS: u32 = 64;
pub const MISMATCH_CPUS: u32 = 8;
/// `PerCpuArray<u64>` of one element: mismatches each CPU recorded so far (its last `seq`).
pub const MAP_MISMATCH_SEQ: &str = "RUNQ_MISMATCH_SEQ";
pub const GLOBAL_DEBUG_MISMATCHES: &str = "DEBUG_MISMATCHES";
/// 1 (the default): split each wait by who ran meanwhile ([`MAP_CAUSED`]); the agent sets 0
/// with `--neighbours off`, and the switch program then neither records runs nor splits.
pub const GLOBAL_NEIGHBOURS: &str = "NEIGHBOURS";

/// One pending mismatch: at a switch on `cpu`, the task leaving it (`prev`) was not the one
/// whose wait was parked when it last started there (`parked`). Task keys are what the
/// variant keys tasks by (a `task_struct` address, or a pid for classic tracepoints); the pids
/// and comms are read in the kernel (0 and empty where unreadable).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mismatch {
    /// 1 for the CPU's first record; 0 for a slot never written.
    pub seq: u64,
    pub now_ns: u64,
    pub parked: u64,
    pub prev: u64,
    pub next: u64,
    pub parked_pid: u32,
    /// The current task's (prev's) pid and thread group id, from the helper.
    pub prev_pid: u32,
    pub prev_tgid: u32,
    pub cpu: u32,
    /// 1 when prev stays runnable (preempted or yielded).
    pub prev_runnable: u32,
    pub _pad: u32,
    pub parked_comm: [u8; 16],
    pub prev_comm: [u8; 16],
}

crate::user_pod!(Mismatch);

/// Globals (`#[no_mangle]` statics) the agent sets at load time: byte offsets of the classic
/// tracepoint fields, read from tracefs `format` files, so none is compiled in.
pub const GLOBAL_TP_SWITCH_PREV_PID: &str = "TP_SWITCH_PREV_PID";
pub const GLOBAL_TP_SWITCH_PREV_STATE: &str = "TP_SWITCH_PREV_STATE";
pub const GLOBAL_TP_SWITCH_NEXT_PID: &str = "TP_SWITCH_NEXT_PID";
pub const GLOBAL_TP_WAKEUP_PID: &str = "TP_WAKEUP_PID";
pub const GLOBAL_TP_MIGRATE_PID: &str = "TP_MIGRATE_PID";

/// One CPU's state ([`MAP_CPU`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunqCpu {
    /// The key of the task whose wait was measured when it was switched in here, 0 when none:
    /// the wait is attributed when that task is switched out.
    pub pending_task: u64,
    pub pending_wait_ns: u64,
    /// Total ns tasks waited on this CPU's run queue.
    pub wait_ns: u64,
    /// Error counters, by `ERR_*`.
    pub errors: [u64; ERRORS_LEN as usize],
    /// When the task running now started running here.
    pub run_start_ns: u64,
    /// Runs recorded on this CPU so far; run `i` is in `runs[i % RUNS]`.
    pub runs_recorded: u64,
    /// The last [`RUNS`] runs that ended on this CPU.
    pub runs: [Run; RUNS],
    /// The pending wait split by who ran on this CPU during it (see [`split_wait`]).
    pub pending_split: Split,
}

crate::user_pod!(RunqCpu);

// --- Noisy neighbours: who ran while a task waited ---
//
// A task waiting on a CPU's run queue is delayed by whoever runs on that CPU meanwhile. Each
// CPU remembers its last [`RUNS`] runs (cgroup, start, end); when a task that waited is
// switched in, its wait is split over the runs it overlapped ([`split_wait`]), parked with the
// wait, and added to [`MAP_CAUSED`] under (its cgroup, the runner's) when its cgroup is known
// (its switch-out, as for the latency). The parts sum to the wait by construction: what no
// remembered run covers goes to [`CULPRIT_UNSEEN`].

/// Runs remembered per CPU (a power of two).
pub const RUNS: usize = 8;
/// Distinct culprits one wait is split among; a wait that overlapped more gives the rest to
/// [`CULPRIT_UNSEEN`].
pub const SPLIT: usize = 4;
/// Culprit: the CPU was idle (the wait was the wake-up's own latency; nobody ran).
pub const CULPRIT_IDLE: u64 = 0;
/// Culprit: not known. The wait began before the CPU's remembered runs (more than [`RUNS`]
/// runs, or the agent attached meanwhile), overlapped more than [`SPLIT`] cgroups, or was
/// partly spent on another CPU's run queue before the task was moved here (that CPU's
/// runners are not this one's).
pub const CULPRIT_UNSEEN: u64 = u64::MAX;

/// `LruHashMap<CausedKey, u64 ns>`: run-queue wait of `victim`'s tasks while `culprit`'s
/// ran on their CPU, cumulative.
pub const MAP_CAUSED: &str = "RUNQ_CAUSED";
pub const CAUSED_MAX_ENTRIES: u32 = 16_384;

/// A key of [`MAP_CAUSED`]: cgroup ids (or a `CULPRIT_*` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CausedKey {
    pub victim: u64,
    pub culprit: u64,
}

crate::user_pod!(CausedKey);

/// One run on a CPU: a task of `cgroup` ([`CULPRIT_IDLE`] for the idle task) ran there from
/// `start_ns` to `end_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Run {
    pub cgroup: u64,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// One wait split by culprit: `culprits[i]` ran for `ns[i]` of it (`ns[i]` 0: slot free),
/// `unseen_ns` is the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub culprits: [u64; SPLIT],
    pub ns: [u64; SPLIT],
    pub unseen_ns: u64,
}

impl Split {
    /// Adds `ns` for `culprit`: to its slot, else to a free one, else to the unseen rest.
    #[inline(always)]
    fn add(&mut self, culprit: u64, ns: u64) {
        let mut i = 0;
        while i < SPLIT {
            if self.ns[i] == 0 || self.culprits[i] == culprit {
                self.culprits[i] = culprit;
                self.ns[i] += ns;
                return;
            }
            i += 1;
        }
        self.unseen_ns += ns;
    }
}

/// Splits the wait from `since` to `now` over the runs on this CPU that it overlapped since
/// the task arrived on it (`arrived`: when it was moved here while waiting, 0 if it was not;
/// the time before goes to the unseen rest): `runs` and `recorded` as [`RunqCpu`] holds them,
/// newest last. The run that ends at `now` (the task leaving the CPU) must be recorded first.
/// The parts always sum to `now - since`.
#[inline(always)]
pub fn split_wait(runs: &[Run; RUNS], recorded: u64, since: u64, arrived: u64, now: u64) -> Split {
    let mut split = Split::default();
    let whole = now.saturating_sub(since);
    let since = if arrived > since { arrived } else { since };
    let mut seen = 0u64;
    let mut back = 0usize;
    while back < RUNS {
        if back as u64 >= recorded {
            break;
        }
        let run = &runs[((recorded - 1 - back as u64) as usize) & (RUNS - 1)];
        if run.end_ns <= since {
            break;
        }
        let from = if run.start_ns > since {
            run.start_ns
        } else {
            since
        };
        let to = if run.end_ns < now { run.end_ns } else { now };
        if to > from {
            split.add(run.cgroup, to - from);
            seen += to - from;
        }
        back += 1;
    }
    if whole > seen {
        split.unseen_ns += whole - seen;
    }
    split
}

/// The programs on each hook, by attach variant.
pub const HOOKS: [HookPrograms; 4] = [
    HookPrograms::new(
        "sched",
        "sched_switch",
        ["runq_switch_btf", "runq_switch_raw", "runq_switch_tp"],
    ),
    HookPrograms::new(
        "sched",
        "sched_wakeup",
        ["runq_wakeup_btf", "runq_wakeup_raw", "runq_wakeup_tp"],
    ),
    HookPrograms::new(
        "sched",
        "sched_wakeup_new",
        ["runq_wakenew_btf", "runq_wakenew_raw", "runq_wakenew_tp"],
    ),
    HookPrograms::new(
        "sched",
        "sched_migrate_task",
        ["runq_migrate_btf", "runq_migrate_raw", "runq_migrate_tp"],
    ),
];

/// Empty programs on the same hooks: the benchmark's floor, the bare cost of a hook.
pub const FLOOR_HOOKS: [HookPrograms; 3] = [
    HookPrograms::new(
        "sched",
        "sched_switch",
        ["floor_switch_btf", "floor_switch_raw", "floor_switch_tp"],
    ),
    HookPrograms::new(
        "sched",
        "sched_wakeup",
        ["floor_wakeup_btf", "floor_wakeup_raw", "floor_wakeup_tp"],
    ),
    HookPrograms::new(
        "sched",
        "sched_wakeup_new",
        ["floor_wakenew_btf", "floor_wakenew_raw", "floor_wakenew_tp"],
    ),
];

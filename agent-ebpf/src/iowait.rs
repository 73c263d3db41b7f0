//! iowait: the time a task spends blocked waiting for I/O, from the moment it is switched out
//! with `in_iowait` set until it is woken. Counted per cgroup (the task's own, read when it
//! is switched out, since it is then the current task) and per CPU (the CPU it blocked on).
//!
//! The scheduler programs of the run-queue probe do this too, on the same hooks, so the
//! scheduler is hooked once.

/// `LruHashMap<u64 cgroup id, u64 ns>`: iowait time per cgroup.
pub const MAP_TIME: &str = "IOWAIT_TIME";
pub const TIME_MAX_ENTRIES: u32 = 4096;

/// `Array<u64>` of [`MAX_CPUS`]: iowait time per CPU the task blocked on (atomic adds).
pub const MAP_CPU: &str = "IOWAIT_CPU";
pub const MAX_CPUS: u32 = 1024;

/// `HashMap<u64 task key, IowaitSince>`: tasks in iowait (raw and classic tracepoint
/// variants; tp_btf keeps this in task storage).
pub const MAP_SINCE: &str = "IOWAIT_SINCE";
pub const SINCE_MAX_ENTRIES: u32 = 65_536;

/// A task blocked in iowait: since when, its cgroup and the CPU it blocked on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IowaitSince {
    pub since_ns: u64,
    pub cgroup: u64,
    pub cpu: u32,
    pub _pad: u32,
}

crate::user_pod!(IowaitSince);

//! Reading kernel structs through offsets the agent resolved from BTF (see
//! `agent_ebpf::kernel`). Reads through untrusted addresses are `bpf_probe_read_kernel`, which
//! fails safely; the `btf_` reads go through a BTF program's trusted task pointer, which the
//! verifier checks and the JIT turns into a plain load.

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel};

use core::ffi::c_void;

use super::global;

/// An offset the agent did not set (or could not resolve).
const UNKNOWN: u32 = u32::MAX;

// Names match `agent_ebpf::kernel`'s constants.
#[unsafe(no_mangle)]
static OFF_SOCK_CGROUP: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_SOCK_FAMILY: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_SOCK_STATE: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_CGROUP_KN: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_KERNFS_NODE_ID: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_TASK_CGROUPS: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_CSS_SET_DFL_CGRP: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_CSS_SET_SUBSYS: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_CSS_CGROUP: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static CGROUP_V1_SUBSYS: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_TASK_PID: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_TASK_TGID: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_TASK_COMM: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_TASK_SIGNAL: u32 = UNKNOWN;
#[unsafe(no_mangle)]
pub(super) static OFF_TASK_IN_IOWAIT_BIT: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_CFS_RQ_TG: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_TASK_GROUP_CGROUP: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_CFS_RQ_RQ: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_CFS_RQ_THROTTLED_CLOCK: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_RQ_CLOCK: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_CFS_RQ_THROTTLED: u32 = UNKNOWN;
#[unsafe(no_mangle)]
pub(super) static OFF_GENDISK_FIRST_MINOR: u32 = UNKNOWN;
#[unsafe(no_mangle)]
pub(super) static OFF_GENDISK_MAJOR: u32 = UNKNOWN;
#[unsafe(no_mangle)]
pub(super) static OFF_QUEUE_DISK: u32 = UNKNOWN;
#[unsafe(no_mangle)]
pub(super) static OFF_REQUEST_CMD_FLAGS: u32 = UNKNOWN;
#[unsafe(no_mangle)]
pub(super) static OFF_REQUEST_Q: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_SIGNAL_OOM_SCORE_ADJ: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_SKB_CB: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_OOM_CONTROL_MEMCG: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_OOM_CONTROL_CONSTRAINT: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_MEM_CGROUP_CSS: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_TCP_SKB_CB_GSO_SEGS: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_ICSK_CA_STATE_BIT: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_ICSK_PENDING: u32 = UNKNOWN;
#[unsafe(no_mangle)]
static OFF_TASK_STATE: u32 = UNKNOWN;

/// Reads a `T` at `base + offset`, where `offset` is a global resolved at load time.
#[inline(always)]
pub fn read<T>(base: u64, offset: &u32) -> Option<T> {
    let offset = global(offset);
    if base == 0 || offset == UNKNOWN {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// Reads a `T` at `task + offset` through a trusted `struct task_struct *` (a BTF program's
/// argument): the verifier checks the access against the kernel's BTF (the offset comes from
/// a frozen global, so it is a known constant to it) and the JIT emits a plain load, with no
/// helper call. `offset` must be that of a field of `T`'s size, or of a byte of bitfields.
#[inline(always)]
fn btf_load<T: Copy>(task: *const c_void, offset: u32) -> T {
    // SAFETY: the verifier checks the load against the BTF type of `task`; a fault in it
    // reads as zero instead of crashing (a PROBE_MEM load).
    unsafe { core::ptr::read_volatile(task.cast::<u8>().add(offset as usize).cast::<T>()) }
}

/// `task->__state` through a trusted task pointer (see [`btf_load`]).
#[inline(always)]
pub fn btf_task_state(task: *const c_void) -> Option<u32> {
    let offset = global(&OFF_TASK_STATE);
    (offset != UNKNOWN).then(|| btf_load(task, offset))
}

/// `task->in_iowait` through a trusted task pointer (see [`btf_load`]); false when its bit
/// offset is unknown.
#[inline(always)]
pub fn btf_task_in_iowait(task: *const c_void) -> bool {
    let bit = global(&OFF_TASK_IN_IOWAIT_BIT);
    bit != UNKNOWN && in_iowait_bit(btf_load::<u8>(task, bit / 8), bit)
}

/// `task->in_iowait` read with `bpf_probe_read_kernel` (any task address, e.g.
/// `bpf_get_current_task()`); false when its bit offset is unknown or the read fails.
#[inline(always)]
pub fn task_in_iowait(task: u64) -> bool {
    let bit = global(&OFF_TASK_IN_IOWAIT_BIT);
    if bit == UNKNOWN {
        return false;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    let byte: Option<u8> =
        unsafe { bpf_probe_read_kernel((task + u64::from(bit / 8)) as *const u8) }.ok();
    byte.is_some_and(|b| in_iowait_bit(b, bit))
}

/// The `in_iowait` bit, at bit offset `bit` of the task, in the byte that holds it.
#[inline(always)]
fn in_iowait_bit(byte: u8, bit: u32) -> bool {
    (byte >> (bit % 8)) & 1 == 1
}

/// `cgroup->kn->id`: the cgroup v2 id.
#[inline(always)]
fn cgroup_id(cgroup: u64) -> Option<u64> {
    let kn: u64 = read(cgroup, &OFF_CGROUP_KN)?;
    read(kn, &OFF_KERNFS_NODE_ID)
}

/// What an OOM is about (`struct oom_control`): the id of the cgroup whose limit was hit
/// (`oc->memcg->css.cgroup->kn->id`, 0 when `memcg` is NULL: not a cgroup OOM) and
/// `oc->constraint` (`enum oom_constraint`). `None` when a read fails.
#[inline(always)]
pub fn oom_control(oc: u64) -> Option<(u64, u32)> {
    let memcg: u64 = read(oc, &OFF_OOM_CONTROL_MEMCG)?;
    let constraint: u32 = read(oc, &OFF_OOM_CONTROL_CONSTRAINT)?;
    if memcg == 0 {
        return Some((0, constraint));
    }
    let offset = global(&OFF_MEM_CGROUP_CSS);
    if offset == UNKNOWN {
        return None;
    }
    let css = memcg + u64::from(offset);
    Some((cgroup_id(read(css, &OFF_CSS_CGROUP)?)?, constraint))
}

/// The cgroup v2 id of a socket's owner: `sk->sk_cgrp_data.cgroup->kn->id`.
#[inline(always)]
pub fn sock_cgroup_id(sk: u64) -> Option<u64> {
    cgroup_id(read(sk, &OFF_SOCK_CGROUP)?)
}

/// `sk->__sk_common.skc_state` (`enum tcp_state` for a TCP socket).
#[inline(always)]
pub fn sock_state(sk: u64) -> Option<u8> {
    read(sk, &OFF_SOCK_STATE)
}

/// `inet_csk(sk)->icsk_ca_state`: a 5-bit bitfield at a bit offset from BTF. Two bytes are
/// read so that a field straddling a byte boundary reads whole.
#[inline(always)]
pub fn sock_ca_state(sk: u64) -> Option<u8> {
    let bit = global(&OFF_ICSK_CA_STATE_BIT);
    if sk == 0 || bit == UNKNOWN {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    let word: u16 =
        unsafe { bpf_probe_read_kernel((sk + u64::from(bit / 8)) as *const u16) }.ok()?;
    Some(((u16::from_le(word) >> (bit % 8)) & 0x1f) as u8)
}

/// `inet_csk(sk)->icsk_pending`.
#[inline(always)]
pub fn sock_pending(sk: u64) -> Option<u8> {
    read(sk, &OFF_ICSK_PENDING)
}

/// `sk->__sk_common.skc_family`.
#[inline(always)]
pub fn sock_family(sk: u64) -> Option<u16> {
    read(sk, &OFF_SOCK_FAMILY)
}

/// The id of a task's cgroup in the hierarchy that keys every figure (see
/// `agent_ebpf::kernel::CGROUP_V1_SUBSYS`): `task->cgroups->dfl_cgrp->kn->id` (v2), or
/// `task->cgroups->subsys[i]->cgroup->kn->id` (the v1 hierarchy of controller `i`).
#[inline(always)]
pub fn task_cgroup_id(task: u64) -> Option<u64> {
    let css_set: u64 = read(task, &OFF_TASK_CGROUPS)?;
    let subsys = global(&CGROUP_V1_SUBSYS);
    if subsys == UNKNOWN {
        return cgroup_id(read(css_set, &OFF_CSS_SET_DFL_CGRP)?);
    }
    // `subsys` is an array of pointers: element i is 8 bytes further.
    let css: u64 = read(css_set + 8 * u64::from(subsys), &OFF_CSS_SET_SUBSYS)?;
    cgroup_id(read(css, &OFF_CSS_CGROUP)?)
}

/// The current task's cgroup id (see [`task_cgroup_id`]); 0 when a read fails.
#[inline(always)]
pub fn current_cgroup_id() -> u64 {
    if global(&CGROUP_V1_SUBSYS) == UNKNOWN {
        // SAFETY: helper with no preconditions.
        return unsafe { bpf_get_current_cgroup_id() };
    }
    // SAFETY: helper with no preconditions.
    task_cgroup_id(unsafe { bpf_get_current_task() } as u64).unwrap_or(0)
}

/// `task->__state` (an `unsigned int`; `long state` before 5.14, whose low 32 bits are the
/// same on little-endian).
#[inline(always)]
pub fn task_state(task: u64) -> Option<u32> {
    read(task, &OFF_TASK_STATE)
}

#[inline(always)]
pub fn task_pid(task: u64) -> Option<u32> {
    read(task, &OFF_TASK_PID)
}

#[inline(always)]
pub fn task_tgid(task: u64) -> Option<u32> {
    read(task, &OFF_TASK_TGID)
}

#[inline(always)]
pub fn task_comm(task: u64) -> Option<[u8; 16]> {
    read(task, &OFF_TASK_COMM)
}

/// `task->signal->oom_score_adj`.
#[inline(always)]
pub fn task_oom_score_adj(task: u64) -> Option<i16> {
    let signal: u64 = read(task, &OFF_TASK_SIGNAL)?;
    read(signal, &OFF_SIGNAL_OOM_SCORE_ADJ)
}

/// The number of TCP segments in an skb: `TCP_SKB_CB(skb)->tcp_gso_segs`, i.e.
/// `tcp_skb_pcount()`. The kernel's TcpRetransSegs counts these.
#[inline(always)]
pub fn skb_tcp_segs(skb: u64) -> Option<u16> {
    let cb = global(&OFF_SKB_CB);
    if skb == 0 || cb == UNKNOWN {
        return None;
    }
    read(skb + u64::from(cb), &OFF_TCP_SKB_CB_GSO_SEGS)
}

/// `cfs_rq->throttled_clock`: the rq clock its current throttle is counted from (0: none).
#[inline(always)]
pub fn cfs_rq_throttled_clock(cfs_rq: u64) -> Option<u64> {
    read(cfs_rq, &OFF_CFS_RQ_THROTTLED_CLOCK)
}

/// Whether the run queue is throttled now (`cfs_rq->throttled != 0`).
#[inline(always)]
pub fn cfs_rq_throttled(cfs_rq: u64) -> Option<bool> {
    read::<u32>(cfs_rq, &OFF_CFS_RQ_THROTTLED).map(|t| t != 0)
}

/// `rq_clock(cfs_rq->rq)`: the clock of the CPU run queue a group run queue belongs to.
#[inline(always)]
pub fn cfs_rq_clock(cfs_rq: u64) -> Option<u64> {
    let rq: u64 = read(cfs_rq, &OFF_CFS_RQ_RQ)?;
    read(rq, &OFF_RQ_CLOCK)
}

/// The cgroup v2 id of a CFS run queue's task group: `cfs_rq->tg->css.cgroup->kn->id`.
#[inline(always)]
pub fn cfs_rq_cgroup_id(cfs_rq: u64) -> Option<u64> {
    let tg: u64 = read(cfs_rq, &OFF_CFS_RQ_TG)?;
    cgroup_id(read(tg, &OFF_TASK_GROUP_CGROUP)?)
}

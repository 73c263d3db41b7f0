//! Kernel struct field offsets the programs need, resolved by the agent from
//! `/sys/kernel/btf/vmlinux` at start-up and handed over as read-only globals. Rust eBPF cannot
//! emit CO-RE relocations, so none is compiled in. Unset globals hold `u32::MAX`: the programs
//! then skip the read.

/// Each global: its name, the struct it starts from, and the member path (dots for nesting;
/// members of anonymous structs and unions are found by name).
pub const OFFSETS: [(&str, &str, &str); 32] = [
    (SOCK_CGROUP, "sock", "sk_cgrp_data.cgroup"),
    (SOCK_FAMILY, "sock", "__sk_common.skc_family"),
    (SOCK_STATE, "sock", "__sk_common.skc_state"),
    (CGROUP_KN, "cgroup", "kn"),
    (KERNFS_NODE_ID, "kernfs_node", "id"),
    (TASK_CGROUPS, "task_struct", "cgroups"),
    (CSS_SET_DFL_CGRP, "css_set", "dfl_cgrp"),
    (CSS_SET_SUBSYS, "css_set", "subsys"),
    (CSS_CGROUP, "cgroup_subsys_state", "cgroup"),
    (TASK_PID, "task_struct", "pid"),
    (TASK_TGID, "task_struct", "tgid"),
    (TASK_COMM, "task_struct", "comm"),
    (TASK_SIGNAL, "task_struct", "signal"),
    (SIGNAL_OOM_SCORE_ADJ, "signal_struct", "oom_score_adj"),
    (SKB_CB, "sk_buff", "cb"),
    (TCP_SKB_CB_GSO_SEGS, "tcp_skb_cb", "tcp_gso_segs"),
    (REQUEST_Q, "request", "q"),
    (REQUEST_CMD_FLAGS, "request", "cmd_flags"),
    (QUEUE_DISK, "request_queue", "disk"),
    (GENDISK_MAJOR, "gendisk", "major"),
    (GENDISK_FIRST_MINOR, "gendisk", "first_minor"),
    (CFS_RQ_TG, "cfs_rq", "tg"),
    (CFS_RQ_RQ, "cfs_rq", "rq"),
    (CFS_RQ_THROTTLED_CLOCK, "cfs_rq", "throttled_clock"),
    (CFS_RQ_THROTTLED, "cfs_rq", "throttled"),
    (RQ_CLOCK, "rq", "clock"),
    (TASK_GROUP_CGROUP, "task_group", "css.cgroup"),
    (OOM_CONTROL_MEMCG, "oom_control", "memcg"),
    (OOM_CONTROL_CONSTRAINT, "oom_control", "constraint"),
    (MEM_CGROUP_CSS, "mem_cgroup", "css"),
    (ICSK_PENDING, "inet_connection_sock", "icsk_pending"),
    (TASK_STATE, "task_struct", "__state|state"),
];

/// Tracepoint arguments found by name in the kernel's BTF (the parameters of the
/// `__bpf_trace_<event>` function): (global, event, parameter, the index the programs read it
/// at). The global holds that index where the kernel has the parameter there (as tp_btf and
/// raw programs number arguments, `__data` not counted), else 0 (no index of interest is 0);
/// the agent warns when the parameter exists at another index.
pub const TRACEPOINT_ARGS: [(&str, &str, &str, u32); 1] =
    [(RETRANSMIT_ERR_ARG, "tcp_retransmit_skb", "err", 2)];

/// `tcp_retransmit_skb(sk, skb, err)`: `err` since 6.17 (index 2), absent before.
pub const RETRANSMIT_ERR_ARG: &str = "ARG_RETRANSMIT_ERR";

/// Bitfields: the global holds the member's offset in *bits* from the start of the struct.
pub const BIT_OFFSETS: [(&str, &str, &str); 2] = [
    (TASK_IN_IOWAIT_BIT, "task_struct", "in_iowait"),
    (ICSK_CA_STATE_BIT, "inet_connection_sock", "icsk_ca_state"),
];

pub const SOCK_CGROUP: &str = "OFF_SOCK_CGROUP";
pub const SOCK_FAMILY: &str = "OFF_SOCK_FAMILY";
pub const SOCK_STATE: &str = "OFF_SOCK_STATE";
/// `inet_connection_sock.icsk_ca_state` (a 5-bit bitfield; a TCP socket starts with its
/// `inet_connection_sock`, so the offset applies to the `struct sock *`).
pub const ICSK_CA_STATE_BIT: &str = "OFF_ICSK_CA_STATE_BIT";
/// `inet_connection_sock.icsk_pending`: the event the retransmit timer is armed for.
pub const ICSK_PENDING: &str = "OFF_ICSK_PENDING";
pub const CGROUP_KN: &str = "OFF_CGROUP_KN";
pub const KERNFS_NODE_ID: &str = "OFF_KERNFS_NODE_ID";
pub const TASK_CGROUPS: &str = "OFF_TASK_CGROUPS";
pub const CSS_SET_DFL_CGRP: &str = "OFF_CSS_SET_DFL_CGRP";
/// `css_set.subsys`: the task's controller states, indexed by `enum cgroup_subsys_id`.
pub const CSS_SET_SUBSYS: &str = "OFF_CSS_SET_SUBSYS";
pub const CSS_CGROUP: &str = "OFF_CSS_CGROUP";
pub const TASK_PID: &str = "OFF_TASK_PID";
pub const TASK_TGID: &str = "OFF_TASK_TGID";
pub const TASK_COMM: &str = "OFF_TASK_COMM";
pub const TASK_SIGNAL: &str = "OFF_TASK_SIGNAL";
pub const SIGNAL_OOM_SCORE_ADJ: &str = "OFF_SIGNAL_OOM_SCORE_ADJ";
/// `sk_buff.cb`, and in it (as `struct tcp_skb_cb`) the segment count of a TCP skb.
pub const SKB_CB: &str = "OFF_SKB_CB";
pub const TCP_SKB_CB_GSO_SEGS: &str = "OFF_TCP_SKB_CB_GSO_SEGS";
pub const REQUEST_Q: &str = "OFF_REQUEST_Q";
pub const REQUEST_CMD_FLAGS: &str = "OFF_REQUEST_CMD_FLAGS";
pub const QUEUE_DISK: &str = "OFF_QUEUE_DISK";
pub const GENDISK_MAJOR: &str = "OFF_GENDISK_MAJOR";
pub const GENDISK_FIRST_MINOR: &str = "OFF_GENDISK_FIRST_MINOR";
pub const TASK_IN_IOWAIT_BIT: &str = "OFF_TASK_IN_IOWAIT_BIT";
/// `task_struct.__state` (`state` before 5.14): the task's live state, `TASK_RUNNING` (0) for a
/// task that stays runnable.
pub const TASK_STATE: &str = "OFF_TASK_STATE";
pub const CFS_RQ_TG: &str = "OFF_CFS_RQ_TG";
/// `cfs_rq.rq`: the CPU run queue the group's run queue belongs to.
pub const CFS_RQ_RQ: &str = "OFF_CFS_RQ_RQ";
/// `cfs_rq.throttled_clock`: the rq clock the kernel counts the current throttle from (0: not
/// counting).
pub const CFS_RQ_THROTTLED_CLOCK: &str = "OFF_CFS_RQ_THROTTLED_CLOCK";
/// `rq.clock`: what `rq_clock(rq)` returns.
pub const RQ_CLOCK: &str = "OFF_RQ_CLOCK";
/// `cfs_rq.throttled` (an `int`): non-zero while the run queue is throttled.
pub const CFS_RQ_THROTTLED: &str = "OFF_CFS_RQ_THROTTLED";
pub const TASK_GROUP_CGROUP: &str = "OFF_TASK_GROUP_CGROUP";
/// `oom_control.memcg`: the cgroup whose limit the OOM is about (NULL: not a cgroup OOM).
pub const OOM_CONTROL_MEMCG: &str = "OFF_OOM_CONTROL_MEMCG";
/// `oom_control.constraint`: `enum oom_constraint`.
pub const OOM_CONTROL_CONSTRAINT: &str = "OFF_OOM_CONTROL_CONSTRAINT";
pub const MEM_CGROUP_CSS: &str = "OFF_MEM_CGROUP_CSS";

/// Which hierarchy names a task's cgroup. Unset (`u32::MAX`): the unified (v2) hierarchy, as
/// `bpf_get_current_cgroup_id()` gives it. Set: the v1 hierarchy of the controller with this
/// `enum cgroup_subsys_id` value (the agent sets `cpu_cgrp_id` on nodes without cgroup v2),
/// read as `task->cgroups->subsys[i]->cgroup->kn->id`.
pub const CGROUP_V1_SUBSYS: &str = "CGROUP_V1_SUBSYS";

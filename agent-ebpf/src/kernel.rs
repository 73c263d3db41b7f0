//! Kernel struct field offsets the programs need, resolved by the agent from
//! `/sys/kernel/btf/vmlinux` at start-up and handed over as read-only globals. Rust eBPF cannot
//! emit CO-RE relocations, so none is compiled in. 0 means "unknown": the programs then skip
//! the read (no field used here can legitimately be at offset 0).

/// Each global: its name, the struct it starts from, and the member path (dots for nesting;
/// members of anonymous structs and unions are found by name).
pub const OFFSETS: [(&str, &str, &str); 13] = [
    (SOCK_CGROUP, "sock", "sk_cgrp_data.cgroup"),
    (SOCK_FAMILY, "sock", "__sk_common.skc_family"),
    (CGROUP_KN, "cgroup", "kn"),
    (KERNFS_NODE_ID, "kernfs_node", "id"),
    (TASK_CGROUPS, "task_struct", "cgroups"),
    (CSS_SET_DFL_CGRP, "css_set", "dfl_cgrp"),
    (TASK_PID, "task_struct", "pid"),
    (TASK_TGID, "task_struct", "tgid"),
    (TASK_COMM, "task_struct", "comm"),
    (TASK_SIGNAL, "task_struct", "signal"),
    (SIGNAL_OOM_SCORE_ADJ, "signal_struct", "oom_score_adj"),
    (SKB_CB, "sk_buff", "cb"),
    (TCP_SKB_CB_GSO_SEGS, "tcp_skb_cb", "tcp_gso_segs"),
];

pub const SOCK_CGROUP: &str = "OFF_SOCK_CGROUP";
pub const SOCK_FAMILY: &str = "OFF_SOCK_FAMILY";
pub const CGROUP_KN: &str = "OFF_CGROUP_KN";
pub const KERNFS_NODE_ID: &str = "OFF_KERNFS_NODE_ID";
pub const TASK_CGROUPS: &str = "OFF_TASK_CGROUPS";
pub const CSS_SET_DFL_CGRP: &str = "OFF_CSS_SET_DFL_CGRP";
pub const TASK_PID: &str = "OFF_TASK_PID";
pub const TASK_TGID: &str = "OFF_TASK_TGID";
pub const TASK_COMM: &str = "OFF_TASK_COMM";
pub const TASK_SIGNAL: &str = "OFF_TASK_SIGNAL";
pub const SIGNAL_OOM_SCORE_ADJ: &str = "OFF_SIGNAL_OOM_SCORE_ADJ";
/// `sk_buff.cb`, and in it (as `struct tcp_skb_cb`) the segment count of a TCP skb.
pub const SKB_CB: &str = "OFF_SKB_CB";
pub const TCP_SKB_CB_GSO_SEGS: &str = "OFF_TCP_SKB_CB_GSO_SEGS";

//! TCP retransmits, counted per cgroup of the socket's owner, per address family and kind.
//!
//! Retransmits fire from timers and softirqs, where the current task is unrelated, so the
//! cgroup comes from the socket itself: `sk->sk_cgrp_data.cgroup->kn->id`, read through
//! offsets the agent resolves from the kernel's BTF at start-up ([`crate::kernel`]).

/// `LruPerCpuHashMap<TcpKey, u64>`: retransmitted segments (what the kernel's TcpRetransSegs
/// counts: a GSO skb retransmitted at once counts its segments; a SYN-ACK counts one).
pub const MAP_RETRANSMITS: &str = "TCP_RETRANSMITS";
pub const RETRANSMITS_MAX_ENTRIES: u32 = 8192;

/// `kind` values.
pub const KIND_DATA: u8 = 0;
pub const KIND_SYNACK: u8 = 1;

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpKey {
    /// cgroup v2 id of the socket's owner; 0 when the socket has no cgroup (or it could not
    /// be read).
    pub cgroup: u64,
    /// `AF_INET` or `AF_INET6` (0 if unknown).
    pub family: u16,
    /// [`KIND_DATA`] or [`KIND_SYNACK`].
    pub kind: u8,
    pub _pad: [u8; 5],
}

crate::user_pod!(TcpKey);

/// Globals: classic tracepoint field offsets (from tracefs), 0 = unknown.
pub const GLOBAL_TP_RETRANSMIT_SKADDR: &str = "TP_RETRANSMIT_SKADDR";
pub const GLOBAL_TP_RETRANSMIT_SKBADDR: &str = "TP_RETRANSMIT_SKBADDR";
pub const GLOBAL_TP_RETRANSMIT_FAMILY: &str = "TP_RETRANSMIT_FAMILY";
pub const GLOBAL_TP_SYNACK_SKADDR: &str = "TP_SYNACK_SKADDR";
pub const GLOBAL_TP_SYNACK_FAMILY: &str = "TP_SYNACK_FAMILY";

/// The programs on each hook, by attach variant.
pub const HOOKS: [crate::HookPrograms; 2] = [
    crate::HookPrograms::new(
        "tcp",
        "tcp_retransmit_skb",
        ["tcp_retx_btf", "tcp_retx_raw", "tcp_retx_tp"],
    ),
    crate::HookPrograms::new(
        "tcp",
        "tcp_retransmit_synack",
        ["tcp_synack_btf", "tcp_synack_raw", "tcp_synack_tp"],
    ),
];

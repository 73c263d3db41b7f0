//! TCP retransmits, counted per cgroup of the socket's owner, per address family and kind.
//!
//! Retransmits fire from timers and softirqs, where the current task is unrelated, so the
//! cgroup comes from the socket itself: `sk->sk_cgrp_data.cgroup->kn->id`, read through
//! offsets the agent resolves from the kernel's BTF at start-up ([`crate::kernel`]).

/// `LruHashMap<TcpKey, u64>`: retransmitted segments (what the kernel's TcpRetransSegs
/// counts: a GSO skb retransmitted at once counts its segments; a SYN-ACK counts one).
pub const MAP_RETRANSMITS: &str = "TCP_RETRANSMITS";
pub const RETRANSMITS_MAX_ENTRIES: u32 = 8192;

/// `kind` values.
pub const KIND_DATA: u8 = 0;
pub const KIND_SYNACK: u8 = 1;
/// A client's SYN, retransmitted by `tcp_retransmit_skb` while the socket is in
/// [`TCP_SYN_SENT`].
pub const KIND_SYN: u8 = 2;

/// `cause` values: why the kernel retransmitted, from the socket's congestion-control state
/// (`icsk_ca_state`) and retransmit timer (`icsk_pending`) at the event.
/// Not known: the socket's state could not be read, or the event is a SYN-ACK (its cause is
/// not in the listener's state: the request's timer, or a duplicate SYN from the peer).
pub const CAUSE_UNKNOWN: u8 = 0;
/// `TCP_CA_Loss`: after a retransmission timeout, the timer's retransmit of the first
/// unacknowledged segment and the slow-start retransmits that follow (also a SYN's timeout,
/// and the rare path-MTU shrink that marks everything lost).
pub const CAUSE_RTO: u8 = 1;
/// `TCP_CA_Recovery`: fast retransmit and recovery, losses inferred from duplicate ACKs, SACK
/// or RACK.
pub const CAUSE_FAST: u8 = 2;
/// A tail loss probe: the timer is armed for `ICSK_TIME_LOSS_PROBE` and the state is not
/// Recovery or Loss (probes are sent only in Open).
pub const CAUSE_TLP: u8 = 3;
/// Any other state (Open, Disorder, CWR) without a loss probe pending.
pub const CAUSE_OTHER: u8 = 4;

/// `enum tcp_ca_state` (uapi `linux/tcp.h`).
pub const TCP_CA_RECOVERY: u8 = 3;
pub const TCP_CA_LOSS: u8 = 4;
/// `ICSK_TIME_LOSS_PROBE` (`net/inet_connection_sock.h`, 5 since TLP came in 3.10).
pub const ICSK_TIME_LOSS_PROBE: u8 = 5;

/// The cause of a retransmit from the socket's `icsk_ca_state` and `icsk_pending` (pure).
pub fn cause(ca_state: Option<u8>, pending: Option<u8>) -> u8 {
    match (ca_state, pending) {
        (Some(TCP_CA_LOSS), _) => CAUSE_RTO,
        (Some(TCP_CA_RECOVERY), _) => CAUSE_FAST,
        (Some(_), Some(ICSK_TIME_LOSS_PROBE)) => CAUSE_TLP,
        (Some(_), Some(_)) => CAUSE_OTHER,
        _ => CAUSE_UNKNOWN,
    }
}

/// `TCP_SYN_SENT` in the kernel's `enum tcp_state` (fixed by the ABI: `/proc/net/tcp` shows it).
pub const TCP_SYN_SENT: u8 = 2;

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
    /// [`KIND_DATA`], [`KIND_SYN`] or [`KIND_SYNACK`].
    pub kind: u8,
    /// The tracepoint's `err`, negated (`EBUSY` is 16), where the kernel has that argument
    /// (6.17 and later fire the tracepoint for failed attempts too); 0 for a segment sent, and
    /// on older kernels, whose tracepoint fires only then. 255 stands for any larger errno.
    pub errno: u8,
    /// [`CAUSE_RTO`], [`CAUSE_FAST`], [`CAUSE_TLP`], [`CAUSE_OTHER`] or [`CAUSE_UNKNOWN`].
    pub cause: u8,
    pub _pad: [u8; 3],
}

crate::user_pod!(TcpKey);

/// Globals: classic tracepoint field offsets (from tracefs), 0 = unknown.
pub const GLOBAL_TP_RETRANSMIT_SKADDR: &str = "TP_RETRANSMIT_SKADDR";
pub const GLOBAL_TP_RETRANSMIT_SKBADDR: &str = "TP_RETRANSMIT_SKBADDR";
pub const GLOBAL_TP_RETRANSMIT_FAMILY: &str = "TP_RETRANSMIT_FAMILY";
/// `err` and `state` of `tcp_retransmit_skb`'s record (0 where the kernel's record has none:
/// `err` came with 6.17, `state` with 4.16).
pub const GLOBAL_TP_RETRANSMIT_ERR: &str = "TP_RETRANSMIT_ERR";
pub const GLOBAL_TP_RETRANSMIT_STATE: &str = "TP_RETRANSMIT_STATE";
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

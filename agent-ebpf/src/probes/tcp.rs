//! TCP retransmit programs; see `agent_ebpf::tcp`.

use agent_ebpf::tcp::{KIND_DATA, KIND_SYNACK, RETRANSMITS_MAX_ENTRIES, TcpKey};
use aya_ebpf::{
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::LruPerCpuHashMap,
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use super::{count_add, kernel, tp_field};

#[map]
static TCP_RETRANSMITS: LruPerCpuHashMap<TcpKey, u64> =
    LruPerCpuHashMap::with_max_entries(RETRANSMITS_MAX_ENTRIES, 0);

// Classic tracepoint field offsets, from tracefs; 0 = unknown.
#[unsafe(no_mangle)]
static TP_RETRANSMIT_SKADDR: u32 = 0;
#[unsafe(no_mangle)]
static TP_RETRANSMIT_SKBADDR: u32 = 0;
#[unsafe(no_mangle)]
static TP_RETRANSMIT_FAMILY: u32 = 0;
#[unsafe(no_mangle)]
static TP_SYNACK_SKADDR: u32 = 0;
#[unsafe(no_mangle)]
static TP_SYNACK_FAMILY: u32 = 0;

/// Counts `segs` retransmitted segments of socket `sk`. `family` comes from the tracepoint
/// record when it has one, else from the socket.
#[inline(always)]
fn retransmitted(sk: u64, family: Option<u16>, kind: u8, segs: u64) {
    let key = TcpKey {
        cgroup: kernel::sock_cgroup_id(sk).unwrap_or(0),
        family: family.or_else(|| kernel::sock_family(sk)).unwrap_or(0),
        kind,
        _pad: [0; 5],
    };
    count_add(&TCP_RETRANSMITS, &key, segs);
}

/// Segments in a retransmitted data skb (a GSO skb carries several); 1 if unreadable.
#[inline(always)]
fn data_segs(skb: u64) -> u64 {
    match kernel::skb_tcp_segs(skb) {
        Some(n) if n > 0 => u64::from(n),
        _ => 1,
    }
}

// tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, ...)
// tcp_retransmit_synack(const struct sock *sk, const struct request_sock *req)
// For a SYN-ACK, `sk` is the listening socket: the server's.

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retx_btf(ctx: BtfTracePointContext) -> i32 {
    retransmitted(ctx.arg(0), None, KIND_DATA, data_segs(ctx.arg(1)));
    0
}

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcp_synack_btf(ctx: BtfTracePointContext) -> i32 {
    retransmitted(ctx.arg(0), None, KIND_SYNACK, 1);
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retx_raw(ctx: RawTracePointContext) -> i32 {
    retransmitted(ctx.arg(0), None, KIND_DATA, data_segs(ctx.arg(1)));
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn tcp_synack_raw(ctx: RawTracePointContext) -> i32 {
    retransmitted(ctx.arg(0), None, KIND_SYNACK, 1);
    0
}

#[tracepoint]
pub fn tcp_retx_tp(ctx: TracePointContext) -> u32 {
    if let Some(sk) = tp_field::<u64>(&ctx, &TP_RETRANSMIT_SKADDR) {
        let segs = tp_field::<u64>(&ctx, &TP_RETRANSMIT_SKBADDR).map_or(1, data_segs);
        retransmitted(sk, tp_field(&ctx, &TP_RETRANSMIT_FAMILY), KIND_DATA, segs);
    }
    0
}

#[tracepoint]
pub fn tcp_synack_tp(ctx: TracePointContext) -> u32 {
    if let Some(sk) = tp_field::<u64>(&ctx, &TP_SYNACK_SKADDR) {
        retransmitted(sk, tp_field(&ctx, &TP_SYNACK_FAMILY), KIND_SYNACK, 1);
    }
    0
}

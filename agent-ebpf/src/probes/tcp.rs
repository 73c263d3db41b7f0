//! TCP retransmit programs; see `agent_ebpf::tcp`.

use agent_ebpf::tcp::{
    CAUSE_UNKNOWN, KIND_DATA, KIND_SYN, KIND_SYNACK, RETRANSMITS_MAX_ENTRIES, TCP_SYN_SENT, TcpKey,
    cause,
};
use aya_ebpf::{
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::LruHashMap,
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use super::{count_add, global, kernel, tp_field};

#[map]
static TCP_RETRANSMITS: LruHashMap<TcpKey, u64> =
    LruHashMap::with_max_entries(RETRANSMITS_MAX_ENTRIES, 0);

// Classic tracepoint field offsets, from tracefs; 0 = unknown.
#[unsafe(no_mangle)]
static TP_RETRANSMIT_SKADDR: u32 = 0;
#[unsafe(no_mangle)]
static TP_RETRANSMIT_SKBADDR: u32 = 0;
#[unsafe(no_mangle)]
static TP_RETRANSMIT_FAMILY: u32 = 0;
#[unsafe(no_mangle)]
static TP_RETRANSMIT_ERR: u32 = 0;
#[unsafe(no_mangle)]
static TP_RETRANSMIT_STATE: u32 = 0;
#[unsafe(no_mangle)]
static TP_SYNACK_SKADDR: u32 = 0;
/// The index of `tcp_retransmit_skb`'s `err` argument, from BTF; 0 = no such argument.
#[unsafe(no_mangle)]
static ARG_RETRANSMIT_ERR: u32 = 0;
#[unsafe(no_mangle)]
static TP_SYNACK_FAMILY: u32 = 0;

/// Counts `segs` retransmitted segments of socket `sk` (or, with `err` < 0, an attempt that
/// failed with it). `family` and `state` come from the tracepoint record when it has them,
/// else from the socket.
#[inline(always)]
fn retransmitted(sk: u64, family: Option<u16>, state: Option<u8>, kind: u8, err: i32, segs: u64) {
    let kind =
        if kind == KIND_DATA && state.or_else(|| kernel::sock_state(sk)) == Some(TCP_SYN_SENT) {
            KIND_SYN
        } else {
            kind
        };
    let key = TcpKey {
        cgroup: kernel::sock_cgroup_id(sk).unwrap_or(0),
        family: family.or_else(|| kernel::sock_family(sk)).unwrap_or(0),
        kind,
        errno: if err >= 0 {
            0
        } else {
            err.unsigned_abs().min(255) as u8
        },
        cause: if kind == KIND_SYNACK {
            CAUSE_UNKNOWN
        } else {
            cause(kernel::sock_ca_state(sk), kernel::sock_pending(sk))
        },
        _pad: [0; 3],
    };
    count_add(&TCP_RETRANSMITS, &key, segs);
}

/// `err` of a tp_btf or raw `tcp_retransmit_skb` program: argument 2 where BTF says the
/// kernel's tracepoint has it there (6.17 and later), else 0. The tracepoint passes an `int`
/// zero-extended to 64 bits. One constant index only: the verifier refuses a context read at
/// an offset computed at run time.
#[inline(always)]
fn err_arg(arg2: impl Fn() -> u64) -> i32 {
    if global(&ARG_RETRANSMIT_ERR) == 2 {
        arg2() as u32 as i32
    } else {
        0
    }
}

/// Segments in a retransmitted data skb (a GSO skb carries several); 1 if unreadable.
#[inline(always)]
fn data_segs(skb: u64) -> u64 {
    match kernel::skb_tcp_segs(skb) {
        Some(n) if n > 0 => u64::from(n),
        _ => 1,
    }
}

// tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb[, int err])
// tcp_retransmit_synack(const struct sock *sk, const struct request_sock *req)
// For a SYN-ACK, `sk` is the listening socket: the server's.

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retx_btf(ctx: BtfTracePointContext) -> i32 {
    let err = err_arg(|| ctx.arg(2));
    retransmitted(
        ctx.arg(0),
        None,
        None,
        KIND_DATA,
        err,
        data_segs(ctx.arg(1)),
    );
    0
}

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcp_synack_btf(ctx: BtfTracePointContext) -> i32 {
    retransmitted(ctx.arg(0), None, None, KIND_SYNACK, 0, 1);
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retx_raw(ctx: RawTracePointContext) -> i32 {
    let err = err_arg(|| ctx.arg(2));
    retransmitted(
        ctx.arg(0),
        None,
        None,
        KIND_DATA,
        err,
        data_segs(ctx.arg(1)),
    );
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn tcp_synack_raw(ctx: RawTracePointContext) -> i32 {
    retransmitted(ctx.arg(0), None, None, KIND_SYNACK, 0, 1);
    0
}

#[tracepoint]
pub fn tcp_retx_tp(ctx: TracePointContext) -> u32 {
    if let Some(sk) = tp_field::<u64>(&ctx, &TP_RETRANSMIT_SKADDR) {
        let segs = tp_field::<u64>(&ctx, &TP_RETRANSMIT_SKBADDR).map_or(1, data_segs);
        let err = tp_field::<i32>(&ctx, &TP_RETRANSMIT_ERR).unwrap_or(0);
        // `state` is an int in the record; its values fit a byte.
        let state = tp_field::<i32>(&ctx, &TP_RETRANSMIT_STATE).map(|s| s as u8);
        let family = tp_field(&ctx, &TP_RETRANSMIT_FAMILY);
        retransmitted(sk, family, state, KIND_DATA, err, segs);
    }
    0
}

#[tracepoint]
pub fn tcp_synack_tp(ctx: TracePointContext) -> u32 {
    if let Some(sk) = tp_field::<u64>(&ctx, &TP_SYNACK_SKADDR) {
        retransmitted(
            sk,
            tp_field(&ctx, &TP_SYNACK_FAMILY),
            None,
            KIND_SYNACK,
            0,
            1,
        );
    }
    0
}

//! Empty programs on the scheduler hooks: the benchmark's floor, the bare cost of a hook.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

#[btf_tracepoint(function = "sched_switch")]
pub fn floor_switch_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn floor_wakeup_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn floor_wakenew_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn floor_switch_raw(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn floor_wakeup_raw(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn floor_wakenew_raw(_ctx: RawTracePointContext) -> i32 {
    0
}

#[tracepoint]
pub fn floor_switch_tp(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn floor_wakeup_tp(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint]
pub fn floor_wakenew_tp(_ctx: TracePointContext) -> u32 {
    0
}

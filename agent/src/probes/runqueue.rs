//! The run-queue probe: sched_wakeup, sched_wakeup_new and sched_switch.

use agent_ebpf::runqueue::{
    GLOBAL_TP_SWITCH_NEXT_PID, GLOBAL_TP_SWITCH_PREV_PID, GLOBAL_TP_SWITCH_PREV_STATE,
    GLOBAL_TP_WAKEUP_PID, HOOKS,
};

use super::{Hook, ProbeError, ProgramSet, tracefs};

pub const PROBE: &str = "runqueue";

pub fn hooks(set: ProgramSet) -> Vec<Hook> {
    HOOKS
        .iter()
        .map(|h| {
            let (tp_btf, raw_tracepoint, tracepoint) = match set {
                ProgramSet::Agent => (h.tp_btf, h.raw_tracepoint, h.tracepoint),
                ProgramSet::Floor => (h.floor_tp_btf, h.floor_raw_tracepoint, h.floor_tracepoint),
            };
            Hook {
                probe: PROBE,
                category: h.category,
                name: h.name,
                tp_btf,
                raw_tracepoint,
                tracepoint,
            }
        })
        .collect()
}

/// The classic tracepoint field offsets the programs need, from tracefs (if it is mounted).
pub fn tracepoint_offsets() -> Result<Vec<(&'static str, u32)>, ProbeError> {
    let Some(root) = tracefs::find() else {
        return Err(ProbeError::Tracefs("tracefs is not mounted".into()));
    };
    let f = |name, field| tracefs::field_offset(&root, "sched", name, field);
    Ok(vec![
        (GLOBAL_TP_SWITCH_PREV_PID, f("sched_switch", "prev_pid")?),
        (
            GLOBAL_TP_SWITCH_PREV_STATE,
            f("sched_switch", "prev_state")?,
        ),
        (GLOBAL_TP_SWITCH_NEXT_PID, f("sched_switch", "next_pid")?),
        (GLOBAL_TP_WAKEUP_PID, f("sched_wakeup", "pid")?),
    ])
}

//! Every probe the agent has: its hooks (with the program for each attach variant) and the
//! classic tracepoint fields its `tracepoint` programs read.

use agent_ebpf::{HookPrograms, block, oom, reclaim, runqueue, tcp, throttle};

use super::{FUNCTION_CHAIN, TRACEPOINT_CHAIN, Variant};

/// A classic tracepoint field whose offset (from tracefs) is handed to the programs as a
/// global.
#[derive(Clone, Copy, Debug)]
pub struct TracepointField {
    pub global: &'static str,
    pub category: &'static str,
    pub event: &'static str,
    pub field: &'static str,
    /// Some kernels' records lack it: then its global stays 0 and the variant still loads.
    pub optional: bool,
}

const fn field(
    global: &'static str,
    category: &'static str,
    event: &'static str,
    field: &'static str,
) -> TracepointField {
    TracepointField {
        global,
        category,
        event,
        field,
        optional: false,
    }
}

/// A field only some kernels' records have.
const fn optional_field(
    global: &'static str,
    category: &'static str,
    event: &'static str,
    field: &'static str,
) -> TracepointField {
    TracepointField {
        optional: true,
        ..self::field(global, category, event, field)
    }
}

/// A probe: hooks that attach together, with one variant (they share maps and keys).
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub name: &'static str,
    pub hooks: &'static [HookPrograms],
    pub tracepoint_fields: &'static [TracepointField],
    /// Tracepoint arguments its tp_btf and raw tracepoint programs read by position:
    /// (event, argument name, index). Where the kernel's BTF names another argument at that
    /// index (an older prototype), those variants are refused and the classic tracepoint,
    /// which reads fields by name, is used.
    pub positional_args: &'static [(&'static str, &'static str, u32)],
    /// The attach variants it has, best first.
    pub chain: &'static [Variant],
}

impl Probe {
    /// The variants to try: `forced` alone if this probe has it, else its own chain.
    pub fn variants(&self, forced: Option<Variant>) -> Vec<Variant> {
        match forced {
            Some(v) if self.chain.contains(&v) => vec![v],
            _ => self.chain.to_vec(),
        }
    }
}

/// The scheduler hooks: run-queue latency and iowait.
pub const RUNQUEUE: Probe = Probe {
    name: "runqueue",
    hooks: &runqueue::HOOKS,
    tracepoint_fields: &[
        field(
            runqueue::GLOBAL_TP_SWITCH_PREV_PID,
            "sched",
            "sched_switch",
            "prev_pid",
        ),
        field(
            runqueue::GLOBAL_TP_SWITCH_PREV_STATE,
            "sched",
            "sched_switch",
            "prev_state",
        ),
        field(
            runqueue::GLOBAL_TP_SWITCH_NEXT_PID,
            "sched",
            "sched_switch",
            "next_pid",
        ),
        field(
            runqueue::GLOBAL_TP_WAKEUP_PID,
            "sched",
            "sched_wakeup",
            "pid",
        ),
        field(
            runqueue::GLOBAL_TP_MIGRATE_PID,
            "sched",
            "sched_migrate_task",
            "pid",
        ),
    ],
    positional_args: &[],
    chain: &TRACEPOINT_CHAIN,
};

pub const TCP: Probe = Probe {
    name: "tcp",
    hooks: &tcp::HOOKS,
    tracepoint_fields: &[
        field(
            tcp::GLOBAL_TP_RETRANSMIT_SKADDR,
            "tcp",
            "tcp_retransmit_skb",
            "skaddr",
        ),
        field(
            tcp::GLOBAL_TP_RETRANSMIT_FAMILY,
            "tcp",
            "tcp_retransmit_skb",
            "family",
        ),
        // The skb, for its segment count (without it every retransmit counted one segment).
        field(
            tcp::GLOBAL_TP_RETRANSMIT_SKBADDR,
            "tcp",
            "tcp_retransmit_skb",
            "skbaddr",
        ),
        // 6.17 and later: failed attempts fire the tracepoint too, with their error.
        optional_field(
            tcp::GLOBAL_TP_RETRANSMIT_ERR,
            "tcp",
            "tcp_retransmit_skb",
            "err",
        ),
        // The socket's state, to tell a client's SYN from data (4.16 and later).
        optional_field(
            tcp::GLOBAL_TP_RETRANSMIT_STATE,
            "tcp",
            "tcp_retransmit_skb",
            "state",
        ),
        field(
            tcp::GLOBAL_TP_SYNACK_SKADDR,
            "tcp",
            "tcp_retransmit_synack",
            "skaddr",
        ),
        field(
            tcp::GLOBAL_TP_SYNACK_FAMILY,
            "tcp",
            "tcp_retransmit_synack",
            "family",
        ),
    ],
    positional_args: &[],
    chain: &TRACEPOINT_CHAIN,
};

pub const OOM: Probe = Probe {
    name: "oom",
    hooks: &oom::HOOKS,
    tracepoint_fields: &[
        field(oom::GLOBAL_TP_VICTIM_PID, "oom", "mark_victim", "pid"),
        field(oom::GLOBAL_TP_VICTIM_COMM, "oom", "mark_victim", "comm"),
        field(
            oom::GLOBAL_TP_VICTIM_SCORE_ADJ,
            "oom",
            "mark_victim",
            "oom_score_adj",
        ),
        field(
            oom::GLOBAL_TP_SIGNAL_SIG,
            "signal",
            "signal_generate",
            "sig",
        ),
        field(
            oom::GLOBAL_TP_SIGNAL_CODE,
            "signal",
            "signal_generate",
            "code",
        ),
        field(
            oom::GLOBAL_TP_SIGNAL_PID,
            "signal",
            "signal_generate",
            "pid",
        ),
        field(
            oom::GLOBAL_TP_SIGNAL_GROUP,
            "signal",
            "signal_generate",
            "group",
        ),
    ],
    // Kernels from 4.13 to 6.8 without the backport have `mark_victim(int pid)`: a pid must
    // never be read as a task pointer.
    positional_args: &[
        ("mark_victim", "task", 0),
        ("signal_generate", "sig", 0),
        ("signal_generate", "info", 1),
        ("signal_generate", "task", 2),
        ("signal_generate", "group", 3),
    ],
    chain: &TRACEPOINT_CHAIN,
};

pub const BLOCK: Probe = Probe {
    name: "block",
    hooks: &block::HOOKS,
    tracepoint_fields: &[
        field(block::GLOBAL_TP_ISSUE_DEV, "block", "block_rq_issue", "dev"),
        field(
            block::GLOBAL_TP_ISSUE_SECTOR,
            "block",
            "block_rq_issue",
            "sector",
        ),
        field(
            block::GLOBAL_TP_DONE_DEV,
            "block",
            "block_rq_complete",
            "dev",
        ),
        field(
            block::GLOBAL_TP_DONE_SECTOR,
            "block",
            "block_rq_complete",
            "sector",
        ),
        field(
            block::GLOBAL_TP_DONE_RWBS,
            "block",
            "block_rq_complete",
            "rwbs",
        ),
    ],
    positional_args: &[],
    chain: &TRACEPOINT_CHAIN,
};

/// The benchmark's empty programs on the run-queue hooks.
pub const FLOOR: Probe = Probe {
    name: "runqueue",
    hooks: &runqueue::FLOOR_HOOKS,
    tracepoint_fields: &[],
    positional_args: &[],
    chain: &TRACEPOINT_CHAIN,
};

/// Individual CFS throttle durations (kernel functions: fentry, else kprobe).
pub const THROTTLE: Probe = Probe {
    name: "throttle",
    hooks: &throttle::HOOKS,
    tracepoint_fields: &[],
    positional_args: &[],
    chain: &FUNCTION_CHAIN,
};

/// The kernel's decision behind each OOM kill (`oom_kill_process`'s `oom_control`): which
/// cgroup's limit was hit, or none. Optional (kernel function: fentry, else kprobe); without
/// it the OOM probe still counts and reports kills, and the constraint is inferred.
pub const OOM_CONSTRAINT: Probe = Probe {
    name: "oom_constraint",
    hooks: &oom::DECISION_HOOKS,
    tracepoint_fields: &[],
    positional_args: &[],
    chain: &FUNCTION_CHAIN,
};

/// The agent's probes.
/// Memory reclaim stalls: the vmscan begin/end tracepoints of direct and memcg reclaim.
pub const RECLAIM: Probe = Probe {
    name: "reclaim",
    hooks: &reclaim::HOOKS,
    tracepoint_fields: &[],
    positional_args: &[],
    chain: &TRACEPOINT_CHAIN,
};

pub const AGENT: [Probe; 7] = [RUNQUEUE, TCP, OOM, OOM_CONSTRAINT, BLOCK, THROTTLE, RECLAIM];

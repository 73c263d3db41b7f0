//! Log2 latency histograms: in the kernel one per key, shared by all CPUs (atomic adds), so
//! their memory does not grow with the CPU count; userspace reads each whole.

/// Number of slots in a [`Log2Hist`].
pub const HIST_SLOTS: usize = 32;

/// A log2 histogram of nanosecond durations.
///
/// Slot `s` counts values in `(2^(s-1), 2^s]` ns for `1 <= s < HIST_SLOTS - 1`; slot 0 counts
/// values of 0 and 1 ns; the last slot counts everything above `2^(HIST_SLOTS-2)` ns (about
/// 1.07 s). Upper-inclusive bounds match OTLP exponential histograms of scale 0 (in ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Log2Hist {
    pub slots: [u64; HIST_SLOTS],
    /// Sum of all recorded values, ns.
    pub sum_ns: u64,
}

crate::user_pod!(Log2Hist);

impl Log2Hist {
    pub const ZERO: Self = Self {
        slots: [0; HIST_SLOTS],
        sum_ns: 0,
    };
}

/// The slot a value of `ns` nanoseconds belongs to (see [`Log2Hist`]): the bit length of
/// `ns - 1`, capped at the last slot.
///
/// Found by halving, five compares: BPF has no count-leading-zeros instruction, and LLVM's
/// expansion of `leading_zeros` costs about 40 instructions on every recorded event.
#[inline(always)]
pub fn log2_slot(ns: u64) -> usize {
    if ns <= 1 {
        return 0;
    }
    let mut v = ns - 1;
    // Bit length 31 or more: the last slot (the halving below covers 30 bits).
    if v >> 30 != 0 {
        return HIST_SLOTS - 1;
    }
    let mut slot = 1;
    if v >> 16 != 0 {
        v >>= 16;
        slot += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        slot += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        slot += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        slot += 2;
    }
    if v >> 1 != 0 {
        slot += 1;
    }
    slot
}

const _: () = assert!(
    HIST_SLOTS == 32,
    "log2_slot's halving is written for 32 slots"
);

/// The inclusive upper bound, in ns, of slot `slot`; `None` for the unbounded last slot.
pub fn slot_upper_ns(slot: usize) -> Option<u64> {
    if slot + 1 >= HIST_SLOTS {
        None
    } else {
        Some(1u64 << slot)
    }
}

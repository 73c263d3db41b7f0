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

/// The slot a value of `ns` nanoseconds belongs to (see [`Log2Hist`]).
#[inline(always)]
pub fn log2_slot(ns: u64) -> usize {
    if ns <= 1 {
        return 0;
    }
    let slot = (64 - (ns - 1).leading_zeros()) as usize;
    if slot >= HIST_SLOTS {
        HIST_SLOTS - 1
    } else {
        slot
    }
}

/// The inclusive upper bound, in ns, of slot `slot`; `None` for the unbounded last slot.
pub fn slot_upper_ns(slot: usize) -> Option<u64> {
    if slot + 1 >= HIST_SLOTS {
        None
    } else {
        Some(1u64 << slot)
    }
}

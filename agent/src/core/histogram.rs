//! Log2 histograms ([`Log2Hist`], shared with the kernel): deltas, quantiles and max.
//!
//! Quantiles are estimated by linear interpolation inside the slot that holds the requested
//! rank, so they are exact to within the slot's factor-of-two width. The max is the upper
//! bound of the highest non-empty slot.

use agent_ebpf::hist::{HIST_SLOTS, Log2Hist, slot_upper_ns};

use super::counters::Counter;

impl Counter for Log2Hist {
    fn merge(&mut self, other: &Self) {
        for (a, b) in self.slots.iter_mut().zip(other.slots.iter()) {
            *a = a.wrapping_add(*b);
        }
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
    }

    fn delta(&self, prev: &Self) -> Self {
        let reset = self.sum_ns < prev.sum_ns
            || self.slots.iter().zip(prev.slots.iter()).any(|(c, p)| c < p);
        if reset {
            return *self;
        }
        let mut d = *self;
        for (a, b) in d.slots.iter_mut().zip(prev.slots.iter()) {
            *a -= b;
        }
        d.sum_ns -= prev.sum_ns;
        d
    }

    fn is_zero(&self) -> bool {
        self.slots.iter().all(|&c| c == 0)
    }
}

/// Read-only statistics over a [`Log2Hist`].
pub trait HistStats {
    /// Number of recorded values.
    fn count(&self) -> u64;
    /// The value below which a fraction `q` (0..=1) of recorded values lie, in ns; `None` when
    /// empty.
    fn quantile(&self, q: f64) -> Option<u64>;
    /// Upper bound of the highest non-empty slot, in ns (for the open last slot, its lower
    /// bound); `None` when empty.
    fn max(&self) -> Option<u64>;
}

/// Inclusive lower bound of a slot's values, in ns.
fn slot_lower_ns(slot: usize) -> u64 {
    match slot {
        0 => 0,
        s => (1u64 << (s - 1)) + 1,
    }
}

impl HistStats for Log2Hist {
    fn count(&self) -> u64 {
        self.slots.iter().sum()
    }

    fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        // The rank (1-based) of the value we want.
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (slot, &n) in self.slots.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if seen + n >= rank {
                let lower = slot_lower_ns(slot);
                let Some(upper) = slot_upper_ns(slot) else {
                    return Some(lower);
                };
                let frac = (rank - seen) as f64 / n as f64;
                return Some(lower + ((upper - lower) as f64 * frac).round() as u64);
            }
            seen += n;
        }
        unreachable!("rank <= total")
    }

    fn max(&self) -> Option<u64> {
        let slot = self.slots.iter().rposition(|&n| n > 0)?;
        Some(slot_upper_ns(slot).unwrap_or_else(|| slot_lower_ns(slot)))
    }
}

/// Builds a histogram from raw values, as the kernel would (for tests and fixtures).
#[cfg(test)]
pub fn from_values(values: impl IntoIterator<Item = u64>) -> Log2Hist {
    let mut h = Log2Hist::ZERO;
    for v in values {
        h.slots[agent_ebpf::hist::log2_slot(v)] += 1;
        h.sum_ns += v;
    }
    h
}

const _: () = assert!(HIST_SLOTS >= 2);

#[cfg(test)]
mod tests {
    use super::*;
    use agent_ebpf::hist::log2_slot;

    #[test]
    fn slot_is_the_bit_length_of_one_less_capped() {
        let reference = |ns: u64| -> usize {
            if ns <= 1 {
                0
            } else {
                ((64 - (ns - 1).leading_zeros()) as usize).min(HIST_SLOTS - 1)
            }
        };
        // Every power of two and its neighbours, then a spread of values in between.
        for shift in 0..64 {
            let p = 1u64 << shift;
            for ns in [p - 1, p, p + 1, p | (p >> 1), p.wrapping_mul(3) / 2] {
                assert_eq!(log2_slot(ns), reference(ns), "ns = {ns}");
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ns = x >> (x % 64);
            assert_eq!(log2_slot(ns), reference(ns), "ns = {ns}");
        }
        assert_eq!(log2_slot(u64::MAX), reference(u64::MAX));
    }

    #[test]
    fn slots_are_upper_inclusive_powers_of_two() {
        assert_eq!(log2_slot(0), 0);
        assert_eq!(log2_slot(1), 0);
        assert_eq!(log2_slot(2), 1);
        assert_eq!(log2_slot(3), 2);
        assert_eq!(log2_slot(4), 2);
        assert_eq!(log2_slot(5), 3);
        assert_eq!(log2_slot(1024), 10);
        assert_eq!(log2_slot(1025), 11);
        assert_eq!(log2_slot(u64::MAX), HIST_SLOTS - 1);
        for slot in 1..HIST_SLOTS - 1 {
            let upper = slot_upper_ns(slot).unwrap();
            assert_eq!(log2_slot(upper), slot, "upper bound belongs to its slot");
            assert_eq!(log2_slot(upper + 1), slot + 1, "one past it does not");
            assert_eq!(
                log2_slot(slot_lower_ns(slot)),
                slot,
                "lower bound belongs too"
            );
        }
    }

    #[test]
    fn quantiles_fall_in_the_right_slot() {
        // 90 values of ~1 µs, 10 values of ~1 ms.
        let h = from_values((0..90).map(|_| 1_000).chain((0..10).map(|_| 1_000_000)));
        let p50 = h.quantile(0.5).unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert_eq!(log2_slot(p50), log2_slot(1_000));
        assert_eq!(log2_slot(p99), log2_slot(1_000_000));
        assert!(p50 <= p99);
        assert_eq!(h.max(), slot_upper_ns(log2_slot(1_000_000)));
        // q=1 is the top slot's upper bound, q=0 the first value's slot.
        assert_eq!(h.quantile(1.0), h.max());
        assert_eq!(log2_slot(h.quantile(0.0).unwrap()), log2_slot(1_000));
    }

    #[test]
    fn quantile_interpolates_within_a_slot() {
        // All values in slot (512, 1024]: the median lands mid-slot.
        let h = from_values([600, 700, 800, 900]);
        let p50 = h.quantile(0.5).unwrap();
        assert!((513..=1024).contains(&p50));
        assert_eq!(p50, 513 + ((1024 - 513) as f64 * 0.5).round() as u64);
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        let h = Log2Hist::ZERO;
        assert_eq!(h.count(), 0);
        assert_eq!(h.quantile(0.99), None);
        assert_eq!(h.max(), None);
    }

    #[test]
    fn the_open_last_slot_reports_its_lower_bound() {
        let h = from_values([u64::MAX / 2]);
        assert_eq!(h.max(), Some(slot_lower_ns(HIST_SLOTS - 1)));
        assert_eq!(h.quantile(0.5), h.max());
    }

    #[test]
    fn histogram_deltas_subtract_and_detect_resets() {
        let prev = from_values([100, 200]);
        let cur = from_values([100, 200, 300, 5000]);
        assert_eq!(cur.delta(&prev), from_values([300, 5000]));
        // Evicted and recreated: fewer values than before in some slot.
        let recreated = from_values([5000]);
        assert_eq!(recreated.delta(&cur), recreated);
        assert!(cur.delta(&cur).is_zero());
    }
}

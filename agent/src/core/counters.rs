//! Monotonic counters read from the kernel's maps, and the deltas between two readings.
//!
//! The kernel only ever adds to its counters (one entry per key, shared by all CPUs, atomic
//! adds). Userspace reads them every interval into a [`Snapshot`] and subtracts the previous
//! one ([`Snapshot::delta_since`]). A value that went *down* was reset, e.g. an LRU map evicted
//! the entry and the kernel created it again: then the whole new value is the delta, since all
//! of it was counted after the reset.

use std::{collections::HashMap, hash::Hash};

/// A value that the kernel only increases.
pub trait Counter: Clone {
    /// Adds `other` into `self` (e.g. two workloads' figures into one aggregate).
    fn merge(&mut self, other: &Self);
    /// `self - prev`, or `self` when `self` cannot have grown from `prev` (a reset).
    fn delta(&self, prev: &Self) -> Self;
    /// Whether the value is zero (nothing happened).
    fn is_zero(&self) -> bool;
}

impl Counter for u64 {
    fn merge(&mut self, other: &Self) {
        *self = self.wrapping_add(*other);
    }
    fn delta(&self, prev: &Self) -> Self {
        if self >= prev { self - prev } else { *self }
    }
    fn is_zero(&self) -> bool {
        *self == 0
    }
}

/// The merged value of every key of a per-CPU map at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot<K, V> {
    pub values: HashMap<K, V>,
}

impl<K, V> Default for Snapshot<K, V> {
    fn default() -> Self {
        Self {
            values: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq, V> FromIterator<(K, V)> for Snapshot<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        Self {
            values: entries.into_iter().collect(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Counter> Snapshot<K, V> {
    /// What changed since `prev`, per key, leaving out keys where nothing changed. A key new
    /// since `prev` counts whole.
    pub fn delta_since(&self, prev: &Self) -> HashMap<K, V> {
        self.values
            .iter()
            .filter_map(|(key, cur)| {
                let d = match prev.values.get(key) {
                    Some(p) => cur.delta(p),
                    None => cur.clone(),
                };
                (!d.is_zero()).then(|| (key.clone(), d))
            })
            .collect()
    }
}

/// A per-CPU array of counters, one value per CPU (not merged): per-CPU figures such as the
/// run-queue wait of each CPU.
pub fn per_cpu_delta(cur: &[u64], prev: &[u64]) -> Vec<u64> {
    cur.iter()
        .enumerate()
        .map(|(i, c)| c.delta(prev.get(i).unwrap_or(&0)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_subtracts_previous_and_drops_unchanged() {
        let prev = Snapshot::from_iter([(1u64, 10u64), (2, 7)]);
        let cur = Snapshot::from_iter([(1u64, 15u64), (2, 7), (3, 4)]);
        let d = cur.delta_since(&prev);
        assert_eq!(d.get(&1), Some(&5));
        assert_eq!(d.get(&2), None, "unchanged keys are left out");
        assert_eq!(d.get(&3), Some(&4), "a new key counts whole");
    }

    #[test]
    fn a_counter_that_went_down_was_reset() {
        let prev = Snapshot::from_iter([(1u64, 100u64)]);
        let cur = Snapshot::from_iter([(1u64, 30u64)]);
        assert_eq!(cur.delta_since(&prev)[&1], 30);
    }

    #[test]
    fn vanished_keys_are_not_reported() {
        let prev = Snapshot::from_iter([(1u64, 100u64)]);
        let cur = Snapshot::<u64, u64>::default();
        assert!(cur.delta_since(&prev).is_empty());
    }

    #[test]
    fn per_cpu_deltas_handle_resets_and_new_cpus() {
        assert_eq!(per_cpu_delta(&[10, 5, 3], &[4, 9]), vec![6, 5, 3]);
    }
}

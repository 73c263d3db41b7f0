//! One module per signal; `floor` holds the empty programs the benchmark compares against.
mod block;
mod floor;
mod kernel;
mod oom;
mod reclaim;
mod runqueue;
mod task_storage;
mod tcp;
mod throttle;

use agent_ebpf::hist::{Log2Hist, log2_slot};
use aya_ebpf::{
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

/// Adds one to counter `index` of a per-CPU error array.
#[inline(always)]
fn count_error(errors: &PerCpuArray<u64>, index: u32) {
    if let Some(c) = errors.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU's program instance touches it.
        unsafe { *c += 1 };
    }
}

/// Reads a global the agent sets at load time; volatile so the compiler cannot fold the
/// compiled-in default.
#[inline(always)]
fn global<T: Copy>(g: &T) -> T {
    // SAFETY: reading a plain static.
    unsafe { core::ptr::read_volatile(g) }
}

/// Reads a classic tracepoint field at an offset the agent took from the event's tracefs
/// `format` file (a global; 0 = unknown, then nothing is read).
#[inline(always)]
fn tp_field<T>(ctx: &TracePointContext, global_offset: &u32) -> Option<T> {
    let offset = global(global_offset);
    if offset == 0 {
        return None;
    }
    // SAFETY: the offset comes from the tracepoint's own format file.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// `BPF_NOEXIST` map update flag.
const BPF_NOEXIST: u64 = 1;

/// The shared entry for `key`, created as `zero` if absent. Creation uses `BPF_NOEXIST`, so
/// when two CPUs create it at once one wins and both then add into the same entry: nothing
/// is lost. `None` when it cannot be created (the map is full and nothing can be evicted).
#[inline(always)]
fn entry<K, V>(map: &LruHashMap<K, V>, key: &K, zero: &V) -> Option<*mut V> {
    if let Some(v) = map.get_ptr_mut(key) {
        return Some(v);
    }
    let _ = map.insert(key, zero, BPF_NOEXIST);
    map.get_ptr_mut(key)
}

/// Adds `n` to `*c`, atomically: the maps are shared by all CPUs (one entry per key, not one
/// per key and CPU, so their memory does not grow with the number of CPUs).
#[inline(always)]
fn atomic_add(c: *mut u64, n: u64) {
    // SAFETY: `c` points into a map value the verifier checked; the add is atomic.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(c, n) };
}

/// Adds `n` to the counter for `key`, creating it. False when the entry could not be created.
#[inline(always)]
fn count_add<K>(map: &LruHashMap<K, u64>, key: &K, n: u64) -> bool {
    match entry(map, key, &0) {
        Some(c) => {
            atomic_add(c, n);
            true
        }
        None => false,
    }
}

/// Adds one value of `ns` to the log2 histogram for `key`, creating it. False when the entry
/// could not be created.
#[inline(always)]
fn hist_add<K>(map: &LruHashMap<K, Log2Hist>, key: &K, ns: u64) -> bool {
    let Some(h) = entry(map, key, &Log2Hist::ZERO) else {
        return false;
    };
    // SAFETY: a map value of the right type, checked by the verifier.
    let h = unsafe { &mut *h };
    if let Some(c) = h.slots.get_mut(log2_slot(ns)) {
        atomic_add(c, 1);
    }
    atomic_add(&mut h.sum_ns, ns);
    true
}

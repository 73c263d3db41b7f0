//! One module per signal; `floor` holds the empty programs the benchmark compares against.
mod block;
mod floor;
mod kernel;
mod oom;
mod runqueue;
mod task_storage;
mod tcp;
mod throttle;

use agent_ebpf::hist::{Log2Hist, log2_slot};
use aya_ebpf::{
    maps::{LruPerCpuHashMap, PerCpuArray},
    programs::TracePointContext,
};

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

/// Adds `n` to this CPU's counter for `key`, creating it. Only this CPU's slot is ever
/// written, so an entry created concurrently on another CPU loses nothing.
#[inline(always)]
fn count_add<K>(map: &LruPerCpuHashMap<K, u64>, key: &K, n: u64) {
    match map.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU's program instance touches it.
        Some(c) => unsafe { *c += n },
        None => {
            let _ = map.insert(key, &n, 0);
        }
    }
}

/// Adds one value of `ns` to this CPU's log2 histogram for `key`, creating it (see
/// [`count_add`] for concurrent creation). False when the entry could not be created.
#[inline(always)]
fn hist_add<K>(map: &LruPerCpuHashMap<K, Log2Hist>, key: &K, ns: u64) -> bool {
    let slot = log2_slot(ns);
    if let Some(h) = map.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU's program instance touches it.
        let h = unsafe { &mut *h };
        if let Some(c) = h.slots.get_mut(slot) {
            *c += 1;
        }
        h.sum_ns += ns;
        return true;
    }
    let mut h = Log2Hist::ZERO;
    if let Some(c) = h.slots.get_mut(slot) {
        *c = 1;
    }
    h.sum_ns = ns;
    map.insert(key, &h, 0).is_ok()
}

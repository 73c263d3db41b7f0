//! One module per signal; `floor` holds the empty programs the benchmark compares against.
mod floor;
mod runqueue;
mod task_storage;

use aya_ebpf::maps::PerCpuArray;

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

//! One module per signal; `floor` holds the empty programs the benchmark compares against.
mod block;
mod floor;
mod kernel;
mod oom;
mod runqueue;
mod task_storage;
mod tcp;
mod throttle;

use aya_ebpf::{maps::PerCpuArray, programs::TracePointContext};

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

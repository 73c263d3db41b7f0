//! The ABI shared by the kernel programs (this crate's `nodesat` binary, built for the bpf
//! target) and the userspace agent: map names, `#[repr(C)]` keys and values, and the log2
//! bucketing both sides must agree on. Every type here is defined once and used by both sides;
//! with the `user` feature they implement `aya::Pod` so userspace can read them from maps.
#![no_std]

pub mod hist;
pub mod runqueue;

/// Implements `aya::Pod` for plain `#[repr(C)]` types when built for userspace.
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: `#[repr(C)]`, `Copy`, made only of integers: every bit pattern is valid.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use user_pod;

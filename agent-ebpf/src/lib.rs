//! The ABI shared by the kernel programs (this crate's `nodesat` binary, built for the bpf
//! target) and the userspace agent: map names, `#[repr(C)]` keys and values, and the log2
//! bucketing both sides must agree on. Every type here is defined once and used by both sides;
//! with the `user` feature they implement `aya::Pod` so userspace can read them from maps.
#![no_std]

pub mod block;
pub mod hist;
pub mod iowait;
pub mod kernel;
pub mod oom;
pub mod reclaim;
pub mod runqueue;
pub mod tcp;
pub mod throttle;

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

/// The kernel programs on one hook, by attach variant (`None`: no program of that kind).
#[derive(Clone, Copy, Debug)]
pub struct HookPrograms {
    /// Tracepoint category (for classic tracepoints) and name, or the kernel function.
    pub category: &'static str,
    pub name: &'static str,
    /// What reports and metrics call the hook: `name`, or for a function's return
    /// `<name>:return`.
    pub label: &'static str,
    /// The programs run when the function returns (fexit, kretprobe), not on entry.
    pub at_return: bool,
    pub tp_btf: Option<&'static str>,
    pub raw_tracepoint: Option<&'static str>,
    pub tracepoint: Option<&'static str>,
    pub fentry: Option<&'static str>,
    pub kprobe: Option<&'static str>,
}

impl HookPrograms {
    /// A tracepoint; `programs`: the tp_btf, raw tracepoint and classic tracepoint programs.
    pub const fn new(
        category: &'static str,
        name: &'static str,
        programs: [&'static str; 3],
    ) -> Self {
        let [tp_btf, raw_tracepoint, tracepoint] = programs;
        Self {
            category,
            name,
            label: name,
            at_return: false,
            tp_btf: Some(tp_btf),
            raw_tracepoint: Some(raw_tracepoint),
            tracepoint: Some(tracepoint),
            fentry: None,
            kprobe: None,
        }
    }

    /// A kernel function's entry; `programs`: the fentry and kprobe programs.
    pub const fn function(name: &'static str, programs: [&'static str; 2]) -> Self {
        let [fentry, kprobe] = programs;
        Self {
            category: "",
            name,
            label: name,
            at_return: false,
            tp_btf: None,
            raw_tracepoint: None,
            tracepoint: None,
            fentry: Some(fentry),
            kprobe: Some(kprobe),
        }
    }

    /// A kernel function's return; `programs`: the fexit and kretprobe programs (the `fentry`
    /// and `kprobe` variants of the chain).
    pub const fn function_return(
        name: &'static str,
        label: &'static str,
        programs: [&'static str; 2],
    ) -> Self {
        Self {
            label,
            at_return: true,
            ..Self::function(name, programs)
        }
    }
}

//! The aggregation core: pure arithmetic on map contents, with no aya types, so unit tests can
//! drive it without a kernel.
//!
//! - [`counters`]: snapshots of per-CPU maps (merged across CPUs) and deltas between two
//!   snapshots, with counter resets handled;
//! - [`histogram`]: log2 histograms merged across CPUs, with quantiles and max;
//! - [`failure_log`]: a repeated failure logged once per cause, then summarised.

pub mod counters;
pub mod failure_log;
pub mod histogram;

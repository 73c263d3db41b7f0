//! `nodesat-load`: CPU load generators for the integration tests.
//!
//! ```text
//! nodesat-load spin                                   busy loop forever
//! nodesat-load sleeper --period-ms N --work-us M      every N ms, ~M µs of work, then sleep
//! ```
//!
//! Both run until killed.

use std::hint::black_box;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: nodesat-load spin\n       nodesat-load sleeper --period-ms N --work-us M";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args[..] {
        ["spin"] => spin(),
        ["sleeper", ref options @ ..] => match sleeper_options(options) {
            Ok((period, work)) => sleeper(period, work),
            Err(e) => usage_error(&e),
        },
        _ => usage_error("expected a mode"),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("nodesat-load: {msg}\n{USAGE}");
    ExitCode::from(2)
}

/// Busy loop forever.
fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

/// Parses `--period-ms N --work-us M` (in any order, both required).
fn sleeper_options(options: &[&str]) -> Result<(Duration, Duration), String> {
    let (mut period, mut work) = (None, None);
    let mut options = options.iter();
    while let Some(&option) = options.next() {
        let value = options
            .next()
            .ok_or(format!("{option} needs a value"))?
            .parse::<u64>()
            .map_err(|e| format!("{option}: {e}"))?;
        match option {
            "--period-ms" => period = Some(Duration::from_millis(value)),
            "--work-us" => work = Some(Duration::from_micros(value)),
            _ => return Err(format!("unknown option {option}")),
        }
    }
    match (period, work) {
        (Some(p), Some(w)) if !p.is_zero() => Ok((p, w)),
        (Some(_), Some(_)) => Err("--period-ms must be > 0".into()),
        _ => Err("sleeper needs --period-ms and --work-us".into()),
    }
}

/// Every `period`, busy-works for `work`, then sleeps until the next period
/// starts (periods are on a fixed grid; missed ones are skipped).
fn sleeper(period: Duration, work: Duration) -> ! {
    let mut next = Instant::now();
    loop {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < work {
            x = black_box(x.wrapping_add(1));
        }
        next += period;
        let now = Instant::now();
        while next <= now {
            next += period;
        }
        thread::sleep(next - now);
    }
}

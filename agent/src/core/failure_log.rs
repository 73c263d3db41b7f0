//! Log a repeated failure once per cause: the first failure of each cause is logged in full
//! (by the caller), the next ones are only counted, and a summary of what was counted is due
//! every [`FailureLog::every`] while failures go on, and again when the operation recovers.
//!
//! A collector answering HTTP 400 forever gives one warning, then one summary every few
//! minutes ("359 failures since 12:00:03 UTC: HTTP 400 ×359"), instead of a warning per
//! interval. Pure bookkeeping: time is passed in, so tests drive it without waiting.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

/// What the caller should do with a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The first of its cause since the last recovery: log it in full.
    Log,
    /// Seen before: it is counted for the next summary; log nothing (or at debug).
    Counted,
}

/// Failures of one operation (OTLP export, the kubelet's pod list), by cause.
#[derive(Debug)]
pub struct FailureLog {
    every: Duration,
    /// Failures by cause since the last recovery.
    total: BTreeMap<String, u64>,
    /// Failures not logged in full nor summarised yet, by cause.
    unreported: BTreeMap<String, u64>,
    /// The first failure since the last recovery (wall clock, for the summary's text).
    since: Option<SystemTime>,
    /// When the last summary was given (or the first failure logged).
    last_summary: Option<Instant>,
}

/// A summary of the failures counted but not logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// All failures since the first one after the last recovery.
    pub total: u64,
    /// Failures since the previous summary (or the first log line), by cause.
    pub unreported: BTreeMap<String, u64>,
    pub since: SystemTime,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = humantime::format_rfc3339_seconds(self.since);
        write!(f, "{} failure(s) since {since}", self.total)?;
        let causes: Vec<String> = self
            .unreported
            .iter()
            .map(|(cause, n)| format!("{cause} ×{n}"))
            .collect();
        if !causes.is_empty() {
            write!(f, "; not logged since the last line: {}", causes.join(", "))?;
        }
        Ok(())
    }
}

impl FailureLog {
    /// A summary at most once per `every`.
    pub fn new(every: Duration) -> FailureLog {
        FailureLog {
            every,
            total: BTreeMap::new(),
            unreported: BTreeMap::new(),
            since: None,
            last_summary: None,
        }
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// Records a failure of `cause` (e.g. "HTTP 400", "connection").
    pub fn failure(&mut self, cause: &str, now: Instant, wall: SystemTime) -> Decision {
        self.since.get_or_insert(wall);
        self.last_summary.get_or_insert(now);
        let first = !self.total.contains_key(cause);
        *self.total.entry(cause.to_owned()).or_default() += 1;
        if first {
            Decision::Log
        } else {
            *self.unreported.entry(cause.to_owned()).or_default() += 1;
            Decision::Counted
        }
    }

    /// A summary, when failures were counted and not logged and `every` has passed since the
    /// last one; marks them reported.
    pub fn summary_due(&mut self, now: Instant) -> Option<Summary> {
        let last = self.last_summary?;
        if self.unreported.is_empty() || now.duration_since(last) < self.every {
            return None;
        }
        self.last_summary = Some(now);
        self.take_summary()
    }

    /// The operation succeeded: what was not logged yet (if anything failed since the last
    /// recovery), and the slate is wiped, so the next failure of any cause is logged again.
    pub fn recovered(&mut self) -> Option<Summary> {
        let summary = self.since.and_then(|_| self.take_summary());
        self.total.clear();
        self.unreported.clear();
        self.since = None;
        self.last_summary = None;
        summary
    }

    fn take_summary(&mut self) -> Option<Summary> {
        Some(Summary {
            total: self.total.values().sum(),
            unreported: std::mem::take(&mut self.unreported),
            since: self.since?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_of_each_cause_is_logged_the_rest_summarised() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut log = FailureLog::new(Duration::from_secs(300));
        assert_eq!(log.failure("HTTP 400", t0, wall), Decision::Log);
        for i in 1..30 {
            let at = t0 + Duration::from_secs(10 * i);
            assert_eq!(log.failure("HTTP 400", at, wall), Decision::Counted);
            assert_eq!(log.summary_due(at), None, "no summary before 5 min");
        }
        assert_eq!(
            log.failure("connection", t0 + Duration::from_secs(305), wall),
            Decision::Log
        );
        let s = log.summary_due(t0 + Duration::from_secs(305)).unwrap();
        assert_eq!(s.total, 31);
        assert_eq!(s.unreported, BTreeMap::from([("HTTP 400".to_owned(), 29)]));
        assert_eq!(
            s.to_string(),
            "31 failure(s) since 2027-01-15T08:00:00Z; not logged since the last line: HTTP 400 ×29"
        );
        // Nothing new: no summary; one more, but too soon after the last; then it is due.
        assert_eq!(log.summary_due(t0 + Duration::from_secs(400)), None);
        log.failure("HTTP 400", t0 + Duration::from_secs(500), wall);
        assert_eq!(log.summary_due(t0 + Duration::from_secs(500)), None);
        let s = log.summary_due(t0 + Duration::from_secs(610)).unwrap();
        assert_eq!((s.total, s.unreported["HTTP 400"]), (32, 1));
    }

    #[test]
    fn recovery_reports_the_rest_and_starts_over() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        let mut log = FailureLog::new(Duration::from_secs(300));
        assert_eq!(log.recovered(), None, "nothing failed");
        log.failure("HTTP 503", t0, wall);
        log.failure("HTTP 503", t0, wall);
        let s = log.recovered().unwrap();
        assert_eq!((s.total, s.unreported["HTTP 503"]), (2, 1));
        assert_eq!(log.recovered(), None);
        assert_eq!(log.failure("HTTP 503", t0, wall), Decision::Log);
    }
}

//! The memory controller's own event counts of every reported cgroup (cgroup v2
//! `memory.events`: `high`, `max`, `oom`, `oom_kill`, `oom_group_kill`), as their growth per
//! interval. `memory.events` counts the cgroup and everything below it (a pod's file holds its
//! containers' events); it exists where the memory controller is enabled for the cgroup.
//!
//! `high` (the cgroup went over `memory.high` and was throttled into reclaim) and `max` (an
//! allocation hit `memory.max` and reclaimed) come long before `oom`/`oom_kill`: they are the
//! early warning the OOM kill count cannot give.

use std::path::Path;

use crate::{cgroups::flat_keyed, core::counters::Counter, report::MemoryEvents};

/// `memory.events` of the cgroup at `dir`; `None` without the file (no memory controller
/// there, or v1). Keys a kernel lacks (`oom_group_kill` before 5.13) read 0.
pub fn read(dir: &Path) -> Option<MemoryEvents> {
    let text = std::fs::read_to_string(dir.join("memory.events")).ok()?;
    Some(parse(&text))
}

pub fn parse(text: &str) -> MemoryEvents {
    let get = |key| flat_keyed(text, key).unwrap_or(0);
    MemoryEvents {
        high: get("high"),
        max: get("max"),
        oom: get("oom"),
        oom_kill: get("oom_kill"),
        oom_group_kill: get("oom_group_kill"),
    }
}

impl Counter for MemoryEvents {
    fn merge(&mut self, o: &Self) {
        self.high += o.high;
        self.max += o.max;
        self.oom += o.oom;
        self.oom_kill += o.oom_kill;
        self.oom_group_kill += o.oom_group_kill;
    }
    fn delta(&self, p: &Self) -> Self {
        let fields = |e: &Self| [e.high, e.max, e.oom, e.oom_kill, e.oom_group_kill];
        if fields(self).iter().zip(fields(p)).any(|(c, p)| *c < p) {
            return *self; // the cgroup was recreated
        }
        MemoryEvents {
            high: self.high - p.high,
            max: self.max - p.max,
            oom: self.oom - p.oom,
            oom_kill: self.oom_kill - p.oom_kill,
            oom_group_kill: self.oom_group_kill - p.oom_group_kill,
        }
    }
    fn is_zero(&self) -> bool {
        *self == MemoryEvents::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_events() {
        // 6.12's file; 5.10's lacks oom_group_kill.
        let text = "low 0\nhigh 17\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(
            parse(text),
            MemoryEvents {
                high: 17,
                max: 3,
                oom: 1,
                oom_kill: 1,
                oom_group_kill: 0
            }
        );
        assert_eq!(parse("low 0\nhigh 2\nmax 0\noom 0\noom_kill 0\n").high, 2);
    }

    #[test]
    fn growth_and_recreation() {
        let a = parse("high 10\nmax 2\noom 1\noom_kill 1\n");
        let b = parse("high 15\nmax 2\noom 2\noom_kill 2\n");
        assert_eq!(
            b.delta(&a),
            MemoryEvents {
                high: 5,
                oom: 1,
                oom_kill: 1,
                ..Default::default()
            }
        );
        let recreated = parse("high 1\n");
        assert_eq!(recreated.delta(&b), recreated);
    }
}

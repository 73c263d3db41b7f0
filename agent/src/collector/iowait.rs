//! iowait collection: per-cgroup iowait time (`IOWAIT_TIME`), per-CPU iowait time
//! (`IOWAIT_CPU`), and, beside it, the kernel's own per-CPU iowait from /proc/stat.

use std::collections::BTreeMap;

use agent_ebpf::iowait::{MAP_CPU, MAP_TIME};
use aya::{
    Ebpf,
    maps::{Array, MapData},
};

use super::maps;
use crate::{
    core::counters::{Snapshot, per_cpu_delta},
    probes::ProbeError,
};

#[derive(Debug, Default)]
pub struct Iowait {
    prev: Snapshot<u64, u64>,
    prev_cpu: Vec<u64>,
    prev_proc_stat: Vec<u64>,
}

/// The interval's iowait figures.
#[derive(Debug, Default)]
pub struct Interval {
    /// ns per cgroup.
    pub cgroups: BTreeMap<u64, u64>,
    /// ns per CPU id, measured by the programs (time tasks that blocked on that CPU spent in
    /// iowait).
    pub cpu_ns: Vec<u64>,
    /// ns per CPU id from /proc/stat (idle time while tasks of that CPU waited for I/O).
    pub proc_stat_ns: Vec<u64>,
}

fn cpu_times(ebpf: &Ebpf) -> Result<Vec<u64>, ProbeError> {
    let map = ebpf.map(MAP_CPU).ok_or_else(|| ProbeError::Map {
        name: MAP_CPU,
        message: "not in the eBPF object".into(),
    })?;
    let array: Array<&MapData, u64> = Array::try_from(map).map_err(|e| ProbeError::Map {
        name: MAP_CPU,
        message: e.to_string(),
    })?;
    let cpus = aya::util::nr_cpus().unwrap_or(1).min(array.len() as usize);
    Ok((0..cpus as u32)
        .map(|i| array.get(&i, 0).unwrap_or(0))
        .collect())
}

impl Iowait {
    pub fn baseline(&mut self, ebpf: &Ebpf) -> Result<(), ProbeError> {
        self.prev = maps::hash(ebpf, MAP_TIME)?;
        self.prev_cpu = cpu_times(ebpf)?;
        self.prev_proc_stat = proc_stat_iowait_ns(&read_proc_stat());
        Ok(())
    }

    pub fn collect(&mut self, ebpf: &Ebpf) -> Result<Interval, ProbeError> {
        let cur = maps::hash(ebpf, MAP_TIME)?;
        let cur_cpu = cpu_times(ebpf)?;
        let cur_proc_stat = proc_stat_iowait_ns(&read_proc_stat());
        let interval = Interval {
            cgroups: cur.delta_since(&self.prev).into_iter().collect(),
            cpu_ns: per_cpu_delta(&cur_cpu, &self.prev_cpu),
            proc_stat_ns: per_cpu_delta(&cur_proc_stat, &self.prev_proc_stat),
        };
        self.prev = cur;
        self.prev_cpu = cur_cpu;
        self.prev_proc_stat = cur_proc_stat;
        Ok(interval)
    }
}

fn read_proc_stat() -> String {
    std::fs::read_to_string("/proc/stat").unwrap_or_default()
}

/// USER_HZ, the unit of /proc/stat's times; 100 on every Linux architecture nodesat supports.
const USER_HZ: u64 = 100;

/// The iowait column of each `cpuN` line of /proc/stat, in ns, indexed by CPU id.
pub fn proc_stat_iowait_ns(stat: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields.next().and_then(|f| f.strip_prefix("cpu")) else {
            continue;
        };
        let Ok(id) = cpu.parse::<usize>() else {
            continue; // the "cpu" total line
        };
        // user nice system idle iowait ...
        let Some(iowait) = fields.nth(4).and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        if out.len() <= id {
            out.resize(id + 1, 0);
        }
        out[id] = iowait * (1_000_000_000 / USER_HZ);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_per_cpu_iowait_from_proc_stat() {
        let stat = "cpu  10 0 5 1000 42 0 1 0 0 0\n\
                    cpu0 5 0 2 500 40 0 1 0 0 0\n\
                    cpu1 5 0 3 500 2 0 0 0 0 0\n\
                    intr 12345\n";
        assert_eq!(proc_stat_iowait_ns(stat), vec![400_000_000, 20_000_000]);
    }
}

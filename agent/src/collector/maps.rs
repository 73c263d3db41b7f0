//! Reading maps into the core's snapshots (the only place collectors touch aya maps).

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
};

use crate::{core::counters::Snapshot, probes::ProbeError};

fn map_err(name: &'static str) -> impl Fn(MapError) -> ProbeError {
    move |e| ProbeError::Map {
        name,
        message: e.to_string(),
    }
}

fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::maps::Map, ProbeError> {
    ebpf.map(name).ok_or_else(|| ProbeError::Map {
        name,
        message: "not in the eBPF object".into(),
    })
}

/// Every key of a (plain or LRU, not per-CPU) hash of counters, with its value.
pub fn hash<K, V>(ebpf: &Ebpf, name: &'static str) -> Result<Snapshot<K, V>, ProbeError>
where
    K: Pod + Eq + std::hash::Hash,
    V: Pod,
{
    let hash: HashMap<&MapData, K, V> =
        HashMap::try_from(map(ebpf, name)?).map_err(map_err(name))?;
    let mut entries = Vec::new();
    for item in hash.iter() {
        match item {
            Ok(entry) => entries.push(entry),
            // Evicted between listing its key and reading it.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(entries.into_iter().collect())
}

/// How many entries a (plain or LRU, not per-CPU) hash holds now, and its capacity. The keys
/// are listed (one syscall each), at most twice the capacity: entries come and go meanwhile.
pub fn hash_fill<K: Pod, V: Pod>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<(u32, u32), ProbeError> {
    let m = map(ebpf, name)?;
    let hash: HashMap<&MapData, K, V> = HashMap::try_from(m).map_err(map_err(name))?;
    let capacity = match m {
        aya::maps::Map::HashMap(d) | aya::maps::Map::LruHashMap(d) => {
            d.info().map(|i| i.max_entries()).unwrap_or(0)
        }
        _ => 0,
    };
    let limit = 2 * capacity.max(1) as usize;
    let entries = hash.keys().take(limit).filter(Result::is_ok).count();
    Ok((entries.min(capacity as usize) as u32, capacity))
}

/// Every element of a (shared, not per-CPU) array.
pub fn array<V: Pod>(ebpf: &Ebpf, name: &'static str) -> Result<Vec<V>, ProbeError> {
    let array: Array<&MapData, V> = Array::try_from(map(ebpf, name)?).map_err(map_err(name))?;
    (0..array.len())
        .map(|i| array.get(&i, 0).map_err(map_err(name)))
        .collect()
}

/// Every element of a per-CPU array of counters, one value per possible CPU each.
pub fn per_cpu_array(ebpf: &Ebpf, name: &'static str) -> Result<Vec<Vec<u64>>, ProbeError> {
    let array: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map(ebpf, name)?).map_err(map_err(name))?;
    (0..array.len())
        .map(|i| array.get(&i, 0).map(|v| v.to_vec()).map_err(map_err(name)))
        .collect()
}

/// The one element of a per-CPU array, one value per possible CPU.
pub fn per_cpu_value<V: Pod>(ebpf: &Ebpf, name: &'static str) -> Result<Vec<V>, ProbeError> {
    let array: PerCpuArray<&MapData, V> =
        PerCpuArray::try_from(map(ebpf, name)?).map_err(map_err(name))?;
    array.get(&0, 0).map(|v| v.to_vec()).map_err(map_err(name))
}

/// The elements of a per-CPU array of counters, each summed over CPUs.
pub fn per_cpu_array_sums(ebpf: &Ebpf, name: &'static str) -> Result<Vec<u64>, ProbeError> {
    Ok(per_cpu_array(ebpf, name)?
        .into_iter()
        .map(|per_cpu| per_cpu.iter().sum())
        .collect())
}

/// The one counter of a one-element per-CPU array, summed over CPUs (0 if it is empty).
pub fn per_cpu_counter(ebpf: &Ebpf, name: &'static str) -> Result<u64, ProbeError> {
    Ok(per_cpu_array_sums(ebpf, name)?
        .first()
        .copied()
        .unwrap_or(0))
}

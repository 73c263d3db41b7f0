//! Reading maps into the core's snapshots (the only place collectors touch aya maps).

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
};

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

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

/// Every key of a (plain or LRU, not per-CPU) hash of counters, with its value: in batches of
/// [`BATCH`] entries a syscall (`BPF_MAP_LOOKUP_BATCH`, 5.6+), else entry by entry (two
/// syscalls each: 20,000 a cycle for one map of 10,000 cgroups).
pub fn hash<K, V>(ebpf: &Ebpf, name: &'static str) -> Result<Snapshot<K, V>, ProbeError>
where
    K: Pod + Eq + std::hash::Hash,
    V: Pod,
{
    let m = map(ebpf, name)?;
    let hash: HashMap<&MapData, K, V> = HashMap::try_from(m).map_err(map_err(name))?;
    if let aya::maps::Map::HashMap(data) | aya::maps::Map::LruHashMap(data) = m {
        match lookup_batch::<K, V>(data.fd().as_fd()) {
            Ok(Some(entries)) => return Ok(entries.into_iter().collect()),
            // Not supported by this kernel: one entry at a time below.
            Ok(None) => {}
            Err(e) => {
                return Err(ProbeError::Map {
                    name,
                    message: format!("BPF_MAP_LOOKUP_BATCH: {e}"),
                });
            }
        }
    }
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

/// Entries asked for per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: u32 = 512;

/// `union bpf_attr`'s member for the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: nix::libc::c_long = 24;
/// The kernel's ENOTSUPP (not in libc): an operation the map type does not implement.
const ENOTSUPP: i32 = 524;

/// Every entry of a hash map by `BPF_MAP_LOOKUP_BATCH`; `None` when this kernel or map type
/// has no batch lookup (then nothing was read).
fn lookup_batch<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> std::io::Result<Option<Vec<(K, V)>>> {
    let mut entries = Vec::new();
    let mut chunk = BATCH as usize;
    // The batch position: the hash maps use a u32 bucket index; room for any token.
    let (mut token_in, mut token_out) = ([0u64; 1], [0u64; 1]);
    let mut first = true;
    // SAFETY: Pod types are plain data, valid when zeroed.
    let zero_key: K = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let zero_value: V = unsafe { std::mem::zeroed() };
    // One buffer pair for every call, grown only when a bucket needs more room.
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    loop {
        keys.resize(chunk, zero_key);
        values.resize(chunk, zero_value);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` batch member whose buffers hold `count` keys
        // and values of the map's sizes (checked by `HashMap::try_from`) and one token.
        let rc = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        // The kernel wrote back how many entries it copied, also with ENOENT (the end).
        let n = (attr.count as usize).min(chunk);
        entries.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match err.as_ref().and_then(std::io::Error::raw_os_error) {
            None => {
                token_in = token_out;
                first = false;
            }
            Some(nix::libc::ENOENT) => return Ok(Some(entries)),
            // One bucket holds more entries than asked for: ask for more.
            Some(nix::libc::ENOSPC) if n == 0 && chunk < 1 << 16 => chunk *= 2,
            Some(nix::libc::EINVAL | nix::libc::EOPNOTSUPP | ENOTSUPP) if first && n == 0 => {
                return Ok(None);
            }
            Some(_) => return Err(err.unwrap_or_else(std::io::Error::last_os_error)),
        }
    }
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

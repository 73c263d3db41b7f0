//! Loading the kernel programs and attaching them, each probe through a chain of attach
//! variants: the first that the kernel accepts wins, and every attempt is recorded so `check`,
//! the logs and the self-metrics can say what attached and why something did not.

pub mod btf;
pub mod catalog;
pub mod tracefs;

use std::fmt;

use agent_ebpf::HookPrograms;
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{
        BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError, RawTracePoint, TracePoint,
    },
};
use serde::Serialize;

use self::catalog::Probe;

/// The object file built from `agent-ebpf` by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nodesat-ebpf"));

/// How a program is attached to its hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// BTF-typed tracepoint: cheapest, needs kernel BTF.
    TpBtf,
    /// Raw tracepoint: the same arguments, untyped.
    RawTracepoint,
    /// Classic tracepoint: a stable record format, needs tracefs, costs the most.
    Tracepoint,
    /// kprobe on a kernel function.
    Kprobe,
    /// fentry on a kernel function (BTF trampoline).
    Fentry,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::TpBtf => "tp_btf",
            Variant::RawTracepoint => "raw_tracepoint",
            Variant::Tracepoint => "tracepoint",
            Variant::Kprobe => "kprobe",
            Variant::Fentry => "fentry",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which programs to attach: the agent's, or the benchmark's empty ones on the same hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramSet {
    Agent,
    Floor,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("{0}")]
    Tracefs(String),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("program {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("kernel BTF is not available (/sys/kernel/btf/vmlinux): {0}")]
    NoBtf(String),
    #[error("reading map {name}: {message}")]
    Map { name: &'static str, message: String },
    #[error("cgroups are named from the v1 cpu hierarchy, but the programs cannot read it: {0}")]
    CgroupV1(String),
    #[error("{0}")]
    Prototype(String),
}

/// One hook of a probe: what attached (if anything), and the cumulative kernel statistics of
/// its program (non-zero only while kernel.bpf_stats_enabled is 1).
#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    pub probe: &'static str,
    pub hook: &'static str,
    pub variant: Option<Variant>,
    pub attached: bool,
    pub error: Option<String>,
    pub run_count: u64,
    pub run_time_ns: u64,
    /// Times the kernel skipped the program because it was already running on that CPU
    /// (`recursion_misses` of the program's fdinfo, kernels 5.12 and later; counted whatever
    /// kernel.bpf_stats_enabled says): events the figures lack.
    pub recursion_misses: u64,
    #[serde(skip)]
    pub program: Option<&'static str>,
}

/// A number of a BPF object's `/proc/<pid>/fdinfo/<fd>`, e.g. a program's `recursion_misses`
/// or a map's `memlock` (pure); `None` on kernels that do not show it.
pub fn fdinfo_field(fdinfo: &str, field: &str) -> Option<u64> {
    fdinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == field)
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// The `/proc/self/fdinfo` text of one of the agent's own file descriptors.
pub fn own_fdinfo(fd: std::os::fd::BorrowedFd<'_>) -> Option<String> {
    use std::os::fd::AsRawFd;
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()
}

/// The kernel's own figure for the memory each of the object's maps takes (`memlock` of its
/// fdinfo), with its capacity; a map it shows none for is left out.
fn map_memory(ebpf: &Ebpf) -> Vec<crate::report::MapMemory> {
    use aya::maps::Map;
    use std::os::fd::AsFd;
    let mut all: Vec<_> = ebpf
        .maps()
        .filter_map(|(name, map)| {
            let data: &MapData = match map {
                Map::Array(d)
                | Map::HashMap(d)
                | Map::LruHashMap(d)
                | Map::PerCpuArray(d)
                | Map::PerCpuHashMap(d)
                | Map::PerCpuLruHashMap(d)
                | Map::RingBuf(d)
                | Map::Unsupported(d) => d,
                _ => return None,
            };
            let text = own_fdinfo(data.fd().as_fd())?;
            Some(crate::report::MapMemory {
                map: name.to_owned(),
                bytes: fdinfo_field(&text, "memlock")?,
                max_entries: fdinfo_field(&text, "max_entries").unwrap_or(0) as u32,
            })
        })
        .collect();
    all.sort_by(|a, b| a.map.cmp(&b.map));
    all
}

/// The program for a hook and variant, if it has one.
fn program(hook: &HookPrograms, variant: Variant) -> Option<&'static str> {
    match variant {
        Variant::TpBtf => hook.tp_btf,
        Variant::RawTracepoint => hook.raw_tracepoint,
        Variant::Tracepoint => hook.tracepoint,
        Variant::Fentry => hook.fentry,
        Variant::Kprobe => hook.kprobe,
    }
}

/// Tracepoint hooks' variants in order of preference.
pub const TRACEPOINT_CHAIN: [Variant; 3] =
    [Variant::TpBtf, Variant::RawTracepoint, Variant::Tracepoint];

/// Kernel function hooks' variants in order of preference.
pub const FUNCTION_CHAIN: [Variant; 2] = [Variant::Fentry, Variant::Kprobe];

/// The loaded eBPF object and what is attached.
pub struct Probes {
    ebpf: Ebpf,
    btf: Option<Btf>,
    /// Per probe: whether its classic tracepoint field offsets were found in tracefs at load
    /// time (the `tracepoint` variant needs them).
    tracepoint_fields: Vec<(&'static str, Result<(), String>)>,
    /// Whether the kernel struct offsets were resolved from BTF (the tcp and oom programs
    /// need them to name cgroups).
    pub kernel_offsets: Result<(), String>,
    /// Per probe: tracepoint arguments the kernel's BTF puts elsewhere than its positional
    /// programs read them (see [`Probe::positional_args`]).
    prototype_mismatches: Vec<(&'static str, String)>,
    pub hooks: Vec<HookStatus>,
    /// Each map's memory, measured right after loading.
    pub map_memory: Vec<crate::report::MapMemory>,
}

/// Settings the object needs at load time.
pub struct LoadOptions {
    pub max_cgroups: u32,
    /// Mount tracefs before loading if it is not mounted, so classic tracepoints can be used.
    pub mount_tracefs: bool,
    /// Key figures by the task's v1 cpu cgroup instead of its unified one (see
    /// `agent_ebpf::kernel::CGROUP_V1_SUBSYS`).
    pub cgroup_v1_cpu: bool,
    /// Record each run-queue pending mismatch (`agent_ebpf::runqueue::MAP_MISMATCHES`).
    pub debug_runqueue: bool,
    /// Split each wait by who ran meanwhile (`agent_ebpf::runqueue::GLOBAL_NEIGHBOURS`).
    pub neighbours: bool,
}

impl Probes {
    /// Loads the object (maps created, nothing attached yet), with the classic tracepoint
    /// field offsets and kernel struct offsets the programs need set as globals.
    pub fn load(opts: &LoadOptions) -> Result<Probes, ProbeError> {
        raise_memlock_limit();
        if opts.mount_tracefs
            && let Err(e) = tracefs::find_or_mount()
        {
            tracing::warn!("{e}");
        }
        let mut globals: Vec<(&'static str, u32)> = Vec::new();
        let tracepoint_fields = catalog::AGENT
            .iter()
            .map(|probe| {
                let found = tracepoint_offsets(probe);
                if let Ok(offsets) = &found {
                    globals.extend(offsets);
                }
                (probe.name, found.map(|_| ()).map_err(|e| e.to_string()))
            })
            .collect();
        // Resolved (and the parsed BTF dropped) before aya parses its own copy, so the two
        // are never in memory together.
        let mut prototype_mismatches = Vec::new();
        let kernel_offsets = match kernel_offsets(opts.cgroup_v1_cpu) {
            Ok((offsets, mismatches)) => {
                globals.extend(offsets);
                prototype_mismatches = mismatches;
                Ok(())
            }
            Err(e) if opts.cgroup_v1_cpu => return Err(ProbeError::CgroupV1(e.to_string())),
            Err(e) => {
                tracing::warn!(
                    "kernel struct offsets unavailable, tcp and oom cannot name cgroups: {e}"
                );
                Err(e.to_string())
            }
        };
        if opts.debug_runqueue {
            globals.push((agent_ebpf::runqueue::GLOBAL_DEBUG_MISMATCHES, 1));
        }
        if !opts.neighbours {
            globals.push((agent_ebpf::runqueue::GLOBAL_NEIGHBOURS, 0));
        }
        let btf = Btf::from_sys_fs().ok();
        let mut loader = EbpfLoader::new();
        loader.btf(btf.as_ref());
        // aya has no userspace type for task storage (SCHED_TASK_TIMES); only the kernel
        // programs use it, so creating it is all that is needed.
        loader.allow_unsupported_maps();
        loader.map_max_entries(agent_ebpf::runqueue::MAP_LATENCY, opts.max_cgroups);
        for (name, value) in &globals {
            tracing::debug!(global = name, value, "kernel-side setting");
            loader.override_global(name, value, true);
        }
        let ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
            tracefs::restore();
            ProbeError::Load(e)
        })?;
        let map_memory = map_memory(&ebpf);
        tracing::info!(
            maps = map_memory.len(),
            bytes = map_memory.iter().map(|m| m.bytes).sum::<u64>(),
            possible_cpus = aya::util::nr_cpus().unwrap_or(0),
            "BPF maps created (the kernel's memlock figure)"
        );
        Ok(Probes {
            map_memory,
            ebpf,
            btf,
            tracepoint_fields,
            kernel_offsets,
            prototype_mismatches,
            hooks: Vec::new(),
        })
    }

    /// Takes a ring buffer out of the object, to be read on its own (e.g. from an async task).
    pub fn take_ring_buf(&mut self, name: &'static str) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self.ebpf.take_map(name).ok_or_else(|| ProbeError::Map {
            name,
            message: "not in the eBPF object".into(),
        })?;
        RingBuf::try_from(map).map_err(|e| ProbeError::Map {
            name,
            message: e.to_string(),
        })
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Attaches every hook of one probe with the same variant (the hooks share maps keyed by
    /// variant-specific task keys), trying `chain` in order. Failures are recorded in
    /// [`Probes::hooks`], never returned: the rest of the agent runs without this probe.
    pub fn attach_group(&mut self, probe: &Probe, chain: &[Variant]) {
        let mut errors = Vec::new();
        for &variant in chain {
            match self.try_attach(probe, variant) {
                Ok(()) => {
                    for h in probe.hooks {
                        tracing::info!(probe = probe.name, hook = h.label, %variant, "attached");
                        self.hooks.push(HookStatus {
                            probe: probe.name,
                            hook: h.label,
                            variant: Some(variant),
                            attached: true,
                            error: None,
                            run_count: 0,
                            run_time_ns: 0,
                            recursion_misses: 0,
                            program: program(h, variant),
                        });
                    }
                    if !errors.is_empty() {
                        tracing::info!(
                            probe = probe.name,
                            "fell back to {variant}: {}",
                            errors.join("; ")
                        );
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(probe = probe.name, %variant, "cannot attach: {e}");
                    errors.push(format!("{variant}: {e}"));
                }
            }
        }
        let error = errors.join("; ");
        tracing::warn!(
            probe = probe.name,
            "not attached, the rest of the agent runs without it: {error}"
        );
        for h in probe.hooks {
            self.hooks.push(HookStatus {
                probe: probe.name,
                hook: h.label,
                variant: None,
                attached: false,
                error: Some(error.clone()),
                run_count: 0,
                run_time_ns: 0,
                recursion_misses: 0,
                program: None,
            });
        }
    }

    /// Loads and attaches one variant for all `hooks`, or unloads whatever it did and fails.
    pub fn try_attach(&mut self, probe: &Probe, variant: Variant) -> Result<(), ProbeError> {
        if matches!(variant, Variant::TpBtf | Variant::RawTracepoint)
            && let Some((_, e)) = self
                .prototype_mismatches
                .iter()
                .find(|(p, _)| *p == probe.name)
        {
            return Err(ProbeError::Prototype(e.clone()));
        }
        if variant == Variant::Tracepoint
            && let Some((_, Err(e))) = self
                .tracepoint_fields
                .iter()
                .find(|(p, _)| *p == probe.name)
        {
            return Err(ProbeError::Tracefs(format!(
                "{e} when the programs were loaded, so the tracepoint field offsets are unknown (mount it, or run with --probe-variant tracepoint, which mounts it)"
            )));
        }
        let mut done: Vec<&'static str> = Vec::new();
        for h in probe.hooks {
            let Some(name) = program(h, variant) else {
                self.unload_all(&done);
                return Err(ProbeError::Tracefs(format!(
                    "no {variant} program for {}",
                    h.label
                )));
            };
            match self.attach_one(h, name, variant) {
                Ok(()) => done.push(name),
                Err(e) => {
                    self.unload_all(&done);
                    let _ = self.unload(name);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn attach_one(
        &mut self,
        hook: &HookPrograms,
        name: &'static str,
        variant: Variant,
    ) -> Result<(), ProbeError> {
        let err = |source| ProbeError::Program { name, source };
        let btf = self.btf.as_ref();
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(ProbeError::Missing(name))?;
        match variant {
            Variant::TpBtf => {
                let btf = btf.ok_or_else(|| ProbeError::NoBtf("not found".into()))?;
                let p: &mut BtfTracePoint = program.try_into().map_err(err)?;
                p.load(hook.name, btf).map_err(err)?;
                p.attach().map_err(err)?;
            }
            Variant::RawTracepoint => {
                let p: &mut RawTracePoint = program.try_into().map_err(err)?;
                p.load().map_err(err)?;
                p.attach(hook.name).map_err(err)?;
            }
            Variant::Tracepoint => {
                let p: &mut TracePoint = program.try_into().map_err(err)?;
                p.load().map_err(err)?;
                p.attach(hook.category, hook.name).map_err(err)?;
            }
            Variant::Fentry if hook.at_return => {
                let btf = btf.ok_or_else(|| ProbeError::NoBtf("not found".into()))?;
                let p: &mut FExit = program.try_into().map_err(err)?;
                p.load(hook.name, btf).map_err(err)?;
                p.attach().map_err(err)?;
            }
            Variant::Fentry => {
                let btf = btf.ok_or_else(|| ProbeError::NoBtf("not found".into()))?;
                let p: &mut FEntry = program.try_into().map_err(err)?;
                p.load(hook.name, btf).map_err(err)?;
                p.attach().map_err(err)?;
            }
            Variant::Kprobe => {
                if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
                    return Err(ProbeError::Unsupported(
                        "kprobes are not built into this kernel (no /sys/bus/event_source/devices/kprobe)",
                    ));
                }
                let p: &mut KProbe = program.try_into().map_err(err)?;
                p.load().map_err(err)?;
                p.attach(hook.name, 0).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Detaches and unloads the programs of one variant (after a trial attach).
    pub fn release(&mut self, probe: &Probe, variant: Variant) {
        let names: Vec<&'static str> = probe
            .hooks
            .iter()
            .filter_map(|h| program(h, variant))
            .collect();
        self.unload_all(&names);
    }

    fn unload(&mut self, name: &str) -> Result<(), ProgramError> {
        match self.ebpf.program_mut(name) {
            Some(Program::BtfTracePoint(p)) => p.unload(),
            Some(Program::RawTracePoint(p)) => p.unload(),
            Some(Program::TracePoint(p)) => p.unload(),
            Some(Program::FEntry(p)) => p.unload(),
            Some(Program::FExit(p)) => p.unload(),
            Some(Program::KProbe(p)) => p.unload(),
            _ => Ok(()),
        }
    }

    fn unload_all(&mut self, names: &[&'static str]) {
        for name in names {
            if let Err(e) = self.unload(name) {
                tracing::warn!("unloading {name}: {e}");
            }
        }
    }

    /// The hook statuses with fresh run statistics from the kernel.
    pub fn hook_stats(&self) -> Vec<HookStatus> {
        self.hooks
            .iter()
            .map(|h| {
                let mut h = h.clone();
                let program = h.program.and_then(|name| self.ebpf.program(name));
                if let Some(info) = program.and_then(|p| p.info().ok()) {
                    h.run_count = info.run_count();
                    h.run_time_ns = info.run_time().as_nanos() as u64;
                }
                if let Some(fd) = program.and_then(|p| p.fd().ok()) {
                    use std::os::fd::AsFd;
                    if let Some(text) = own_fdinfo(fd.as_fd()) {
                        h.recursion_misses = fdinfo_field(&text, "recursion_misses").unwrap_or(0);
                    }
                }
                h
            })
            .collect()
    }

    /// Called once every probe is attached: drops the parsed kernel BTF (tens of MB, needed
    /// only to load tp_btf and fentry programs) and hands the freed heap back to the kernel,
    /// so the agent's resident memory is what collection needs.
    pub fn attaching_done(&mut self) {
        self.btf = None;
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
        unsafe {
            nix::libc::malloc_trim(0);
        }
    }

    /// Detaches and unloads everything, and unmounts tracefs if we mounted it.
    pub fn detach(self) {
        drop(self.ebpf);
        tracefs::restore();
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it (harmless on newer ones).
fn raise_memlock_limit() {
    use nix::sys::resource::{RLIM_INFINITY, Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {e}");
    }
}

/// The offsets of one probe's classic tracepoint fields, from tracefs (if it is mounted).
fn tracepoint_offsets(probe: &Probe) -> Result<Vec<(&'static str, u32)>, ProbeError> {
    let Some(root) = tracefs::find() else {
        return Err(ProbeError::Tracefs("tracefs is not mounted".into()));
    };
    probe
        .tracepoint_fields
        .iter()
        .filter_map(
            |f| match tracefs::field_offset(&root, f.category, f.event, f.field) {
                Ok(offset) => Some(Ok((f.global, offset))),
                // An optional field the kernel's record lacks stays 0 (unknown).
                Err(_) if f.optional => None,
                Err(e) => Some(Err(e)),
            },
        )
        .collect()
}

/// The kernel struct offsets of `agent_ebpf::kernel::OFFSETS` (bytes) and `BIT_OFFSETS`
/// (bits), from the kernel's BTF; with `cgroup_v1_cpu`, also the index of the cpu controller
/// in `css_set.subsys` (`cpu_cgrp_id` in `enum cgroup_subsys_id`) for `CGROUP_V1_SUBSYS`.
/// Kernel struct offsets and tracepoint argument indices for the programs' globals, and the
/// probes whose positional programs do not fit this kernel's tracepoint prototypes.
type KernelLayout = (Vec<(&'static str, u32)>, Vec<(&'static str, String)>);

fn kernel_offsets(cgroup_v1_cpu: bool) -> Result<KernelLayout, btf::BtfError> {
    let kernel = btf::KernelBtf::load(std::path::Path::new(btf::VMLINUX))?;
    let bytes = agent_ebpf::kernel::OFFSETS
        .iter()
        .map(|&(global, ty, path)| Ok((global, kernel.offset(ty, path)?)));
    let bits = agent_ebpf::kernel::BIT_OFFSETS
        .iter()
        .map(|&(global, ty, path)| Ok((global, kernel.bit_offset(ty, path)?)));
    let subsys = cgroup_v1_cpu.then(|| {
        Ok((
            agent_ebpf::kernel::CGROUP_V1_SUBSYS,
            kernel.enum_value("cgroup_subsys_id", "cpu_cgrp_id")?,
        ))
    });
    // An argument the kernel's tracepoint lacks stays 0 (the programs then do without it).
    let args =
        agent_ebpf::kernel::TRACEPOINT_ARGS
            .iter()
            .map(|&(global, event, name, expected)| {
                let index = match kernel.tracepoint_arg(event, name) {
                    Some(i) if i == expected => i,
                    Some(i) => {
                        tracing::warn!(
                            "tracepoint {event} has `{name}` as argument {i}, where the programs \
                         read it at {expected} only: they do without it on this kernel"
                        );
                        0
                    }
                    None => 0,
                };
                Ok((global, index))
            });
    let globals = bytes
        .chain(bits)
        .chain(subsys)
        .chain(args)
        .collect::<Result<_, _>>()?;
    let mismatches = catalog::AGENT
        .iter()
        .filter_map(|probe| {
            prototype_mismatch(probe, |event| kernel.tracepoint_args(event))
                .map(|e| (probe.name, e))
        })
        .collect();
    Ok((globals, mismatches))
}

/// Why `probe`'s positional programs do not fit the kernel whose tracepoint argument names
/// `args_of` gives (pure), or `None` when they do. An event BTF does not describe is left to
/// the attach to judge.
fn prototype_mismatch(
    probe: &Probe,
    args_of: impl Fn(&str) -> Option<Vec<String>>,
) -> Option<String> {
    probe
        .positional_args
        .iter()
        .find_map(|&(event, name, index)| {
            let args = args_of(event)?;
            let found = args.get(index as usize).map(String::as_str);
            (found != Some(name)).then(|| {
                format!(
                    "tracepoint {event}({}) has no `{name}` at argument {index} (an older \
                     prototype): its tp_btf and raw tracepoint programs would misread it",
                    args.join(", ")
                )
            })
        })
}

/// The probes of a program set.
pub fn probes_of(set: ProgramSet) -> &'static [Probe] {
    match set {
        ProgramSet::Agent => &catalog::AGENT,
        ProgramSet::Floor => std::slice::from_ref(&catalog::FLOOR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursion_misses_are_read_from_fdinfo() {
        // A 6.18 program fd's fdinfo, as read here.
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2093\nprog_type:\t26\n\
                      prog_jited:\t1\nprog_tag:\t6d4b47ab9e9ea0f7\nmemlock:\t4096\n\
                      prog_id:\t2860\nrun_time_ns:\t0\nrun_cnt:\t0\n\
                      recursion_misses:\t7\nverified_insns:\t371\n";
        assert_eq!(fdinfo_field(fdinfo, "recursion_misses"), Some(7));
        assert_eq!(fdinfo_field(fdinfo, "memlock"), Some(4096));
        // Kernels before 5.12 have no such line.
        assert_eq!(
            fdinfo_field("prog_id:\t3\nrun_cnt:\t1\n", "recursion_misses"),
            None
        );
    }

    fn args(list: &[&str]) -> Option<Vec<String>> {
        Some(list.iter().map(|a| a.to_string()).collect())
    }

    /// The OOM probe's positional programs fit `mark_victim(task, uid)` and are refused on
    /// `mark_victim(pid)`, where they would read a pid as a task pointer; an event BTF does
    /// not describe is left to the attach.
    #[test]
    fn positional_programs_are_refused_on_an_older_prototype() {
        let signal = ["sig", "info", "task", "group", "result"];
        let new = |event: &str| match event {
            "mark_victim" => args(&["task", "uid"]),
            "signal_generate" => args(&signal),
            _ => None,
        };
        assert_eq!(prototype_mismatch(&catalog::OOM, new), None);
        let old = |event: &str| match event {
            "mark_victim" => args(&["pid"]),
            "signal_generate" => args(&signal),
            _ => None,
        };
        let why = prototype_mismatch(&catalog::OOM, old).expect("refused");
        assert!(why.contains("mark_victim(pid)"), "{why}");
        assert_eq!(prototype_mismatch(&catalog::OOM, |_| None), None);
        assert_eq!(prototype_mismatch(&catalog::TCP, old), None);
    }
}

//! `nodesat check`: a preflight that says what this kernel and this process allow, and which
//! attach variant each probe can use, by really loading and attaching each one (then
//! detaching it).

use std::{fmt::Write as _, path::Path};

use crate::{
    cgroups,
    config::Config,
    privileges::Privileges,
    probes::{self, LoadOptions, Probes, ProgramSet, Variant},
};

/// Columns of the probe table, in the order the agent prefers them.
const COLUMNS: [Variant; 5] = [
    Variant::TpBtf,
    Variant::RawTracepoint,
    Variant::Tracepoint,
    Variant::Kprobe,
    Variant::Fentry,
];

/// Runs the checks, printing as it goes. Returns the exit code: 0 when the agent can run.
pub fn check(config: &Config) -> i32 {
    let mut out = String::new();
    let uname = nix::sys::utsname::uname().ok();
    let release = uname
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown".into());
    let machine = uname
        .as_ref()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_default();
    let _ = writeln!(out, "kernel        {release} ({machine})");
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    let _ = writeln!(
        out,
        "BTF           {}",
        if btf.exists() {
            format!("present ({})", btf.display())
        } else {
            "absent: tp_btf and fentry cannot be used".into()
        }
    );
    let privileges = Privileges::current();
    let _ = writeln!(out, "privileges    {privileges}");
    let _ = writeln!(
        out,
        "tracefs       {}",
        match probes::tracefs::find() {
            Some(p) => format!("mounted at {}", p.display()),
            None => "not mounted (the classic tracepoint variant mounts it when used)".into(),
        }
    );
    let _ = writeln!(
        out,
        "kprobes       {}",
        if Path::new("/sys/kernel/tracing/kprobe_events").exists()
            || Path::new("/sys/kernel/debug/tracing/kprobe_events").exists()
            || Path::new("/sys/bus/event_source/devices/kprobe").exists()
        {
            "supported"
        } else {
            "not supported by this kernel (no kprobe PMU)"
        }
    );
    let _ = writeln!(
        out,
        "cgroup v2     {}",
        match cgroups::v2_root(&config.cgroup_root) {
            Some(p) if p == config.cgroup_root => format!("{} (pure v2)", p.display()),
            Some(p) => format!("{} (hybrid: v1 controllers beside it)", p.display()),
            None => format!("not found under {}", config.cgroup_root.display()),
        }
    );
    let hierarchy = cgroups::Hierarchy::find(&config.cgroup_root, config.cgroup_hierarchy);
    let _ = writeln!(
        out,
        "cgroup ids    {}",
        match &hierarchy {
            Some(h) => format!("from the {h}"),
            None => format!(
                "no {:?} hierarchy under {}: figures are keyed by id, unnamed",
                config.cgroup_hierarchy,
                config.cgroup_root.display()
            ),
        }
    );
    let _ = writeln!(
        out,
        "throttling    totals from cpu.stat ({}); durations from the throttle probe where it attaches (below)",
        throttle_sources(&config.cgroup_root)
    );
    let _ = writeln!(
        out,
        "pressure      cgroups: {}; node: {}",
        match crate::collector::pressure::Pressure::cgroups_available(hierarchy.as_ref()) {
            Ok(()) => "cpu/memory/io.pressure stall totals of every reported cgroup".into(),
            Err(why) => format!("none ({why})"),
        },
        if Path::new("/proc/pressure/cpu").exists() {
            "/proc/pressure"
        } else {
            "none (no /proc/pressure: kernel without PSI, or psi=0)"
        }
    );
    print!("{out}");

    if let Some(why) = privileges.refusal() {
        println!();
        println!("{why}");
        return crate::EXIT_NO_PERMISSION;
    }

    // Load once (mounting tracefs so the classic variant can be tried), then try each variant
    // of each probe on its own.
    let opts = LoadOptions {
        max_cgroups: config.max_cgroups,
        mount_tracefs: true,
        cgroup_v1_cpu: matches!(hierarchy, Some(cgroups::Hierarchy::V1Cpu(_))),
        debug_runqueue: false,
        neighbours: true,
    };
    let mut loaded = match Probes::load(&opts) {
        Ok(p) => p,
        Err(e) => {
            println!();
            println!(
                "nodesat cannot run: the kernel refused its eBPF object ({e}). Is BPF enabled in this kernel (CONFIG_BPF_SYSCALL) and not blocked by a security policy?"
            );
            return crate::EXIT_UNAVAILABLE;
        }
    };
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\n{:<14} {:<31} {}",
        "PROBE",
        "HOOK",
        COLUMNS.map(|v| format!("{:<15}", v.as_str())).join("")
    );
    let mut failures = String::new();
    let mut summary = String::new();
    let mut attachable = 0;
    for probe in probes::probes_of(ProgramSet::Agent) {
        let results: Vec<(Variant, Option<Result<(), String>>)> = COLUMNS
            .iter()
            .map(|&variant| {
                if !probe.chain.contains(&variant) {
                    return (variant, None); // no program of this kind yet
                }
                let r = loaded.try_attach(probe, variant);
                if r.is_ok() {
                    loaded.release(probe, variant);
                }
                (variant, Some(r.map_err(|e| e.to_string())))
            })
            .collect();
        for h in probe.hooks {
            let cells: Vec<String> = results
                .iter()
                .map(|(_, r)| {
                    let cell = match r {
                        Some(Ok(())) => "ok",
                        Some(Err(_)) => "FAILED",
                        None => "n/a",
                    };
                    format!("{cell:<15}")
                })
                .collect();
            let _ = writeln!(
                table,
                "{:<14} {:<31} {}",
                probe.name,
                h.label,
                cells.join("")
            );
        }
        for (variant, r) in &results {
            if let Some(Err(e)) = r {
                let _ = writeln!(failures, "  {} {variant} failed: {e}", probe.name);
            }
        }
        // The variant the agent would use: the first of the probe's own chain that attached.
        let chosen = probe.chain.iter().find(|v| {
            results
                .iter()
                .any(|(rv, r)| rv == *v && matches!(r, Some(Ok(()))))
        });
        match chosen {
            Some(v) => {
                attachable += 1;
                let _ = writeln!(summary, "{} will attach with {v}", probe.name);
            }
            None => {
                let _ = writeln!(summary, "{} cannot attach with any variant", probe.name);
            }
        }
    }
    let _ = write!(table, "{failures}");
    if let Err(e) = &loaded.kernel_offsets {
        let _ = writeln!(
            table,
            "  kernel struct offsets unavailable: tcp retransmits and OOM kills cannot be attributed to cgroups ({e})"
        );
    }
    let _ = write!(table, "\n{summary}");
    print!("{table}");
    loaded.detach();
    if attachable > 0 {
        println!("ready: nodesat can run here");
        0
    } else {
        println!("nodesat cannot run: no probe can attach on this kernel (see the failures above)");
        crate::EXIT_UNAVAILABLE
    }
}

/// Which cgroup hierarchies carry CPU limits here, for the throttling line.
fn throttle_sources(cgroup_root: &Path) -> String {
    let mut found = Vec::new();
    if let Some(v2) = cgroups::v2_root(cgroup_root)
        && std::fs::read_to_string(v2.join("cgroup.controllers")).is_ok_and(|c| c.contains("cpu"))
    {
        found.push(format!("v2 cpu.max under {}", v2.display()));
    }
    if let Some(dir) = cgroups::v1_cpu_root(cgroup_root)
        && dir.join("cpu.cfs_quota_us").exists()
    {
        found.push(format!("v1 cpu.cfs_quota_us under {}", dir.display()));
    }
    if found.is_empty() {
        "no CPU controller found".into()
    } else {
        found.join(", ")
    }
}

//! What this process may do: root, and the capabilities loading tracing programs needs.

use std::fmt;

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

const NAMED: [(u32, &str); 4] = [
    (CAP_BPF, "CAP_BPF"),
    (CAP_PERFMON, "CAP_PERFMON"),
    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    (CAP_SYS_RESOURCE, "CAP_SYS_RESOURCE"),
];

#[derive(Clone, Debug)]
pub struct Privileges {
    pub euid: u32,
    /// The effective capability set (CapEff in /proc/self/status).
    pub effective: u64,
}

impl Privileges {
    pub fn current() -> Privileges {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Privileges {
            euid: nix::unistd::geteuid().as_raw(),
            effective: parse_cap_eff(&status).unwrap_or(0),
        }
    }

    pub fn has(&self, cap: u32) -> bool {
        self.effective & (1u64 << cap) != 0
    }

    /// Tracing programs need CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN on older kernels.
    pub fn can_load_tracing_programs(&self) -> bool {
        self.has(CAP_SYS_ADMIN) || (self.has(CAP_BPF) && self.has(CAP_PERFMON))
    }

    /// Why the agent cannot run, in a plain sentence with what to do; `None` when it can.
    pub fn refusal(&self) -> Option<String> {
        if self.can_load_tracing_programs() {
            return None;
        }
        let who = if self.euid == 0 {
            "it runs as root but without those capabilities".to_owned()
        } else {
            format!("it runs as uid {} without them", self.euid)
        };
        Some(format!(
            "nodesat cannot load its eBPF programs: it needs root, or the CAP_BPF and CAP_PERFMON capabilities, and {who}. \
             Run it as root (sudo nodesat run), or grant the capabilities (sudo setcap cap_bpf,cap_perfmon,cap_sys_resource+ep \"$(command -v nodesat)\")."
        ))
    }
}

impl fmt::Display for Privileges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caps: Vec<String> = NAMED
            .iter()
            .map(|&(cap, name)| format!("{name}={}", if self.has(cap) { "yes" } else { "no" }))
            .collect();
        let who = if self.euid == 0 {
            "root".to_owned()
        } else {
            format!("uid {}", self.euid)
        };
        write!(f, "{who}; {}", caps.join(" "))
    }
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_effective_capabilities() {
        let status = "Name:\tnodesat\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let p = Privileges {
            euid: 0,
            effective: parse_cap_eff(status).unwrap(),
        };
        assert!(p.has(CAP_BPF) && p.has(CAP_PERFMON) && p.has(CAP_SYS_ADMIN));
        assert!(p.refusal().is_none());
    }

    #[test]
    fn bpf_and_perfmon_suffice_without_sys_admin() {
        let p = Privileges {
            euid: 1000,
            effective: (1 << CAP_BPF) | (1 << CAP_PERFMON),
        };
        assert!(p.can_load_tracing_programs());
        let p = Privileges {
            euid: 1000,
            effective: 1 << CAP_BPF,
        };
        let why = p.refusal().unwrap();
        assert!(
            why.contains("CAP_PERFMON") && why.contains("uid 1000"),
            "{why}"
        );
    }
}

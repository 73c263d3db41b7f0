//! Kernel struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`), for the
//! globals listed in `agent_ebpf::kernel::OFFSETS`.

use std::path::Path;

use btf_rs::{Btf, Type};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading kernel BTF {path}: {message}")]
    Read { path: String, message: String },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("struct {ty} has no member {path} in kernel BTF")]
    NoMember { ty: String, path: String },
    #[error("kernel BTF has no enum {ty} with a value {name}")]
    NoEnumValue { ty: String, name: String },
}

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load(path: &Path) -> Result<KernelBtf, BtfError> {
        Btf::from_file(path)
            .map(|btf| KernelBtf { btf })
            .map_err(|e| BtfError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            })
    }

    /// The byte offset of member `path` ("a.b.c") from the start of `struct ty`.
    pub fn offset(&self, ty: &str, path: &str) -> Result<u32, BtfError> {
        Ok(self.bit_offset(ty, path)? / 8)
    }

    /// The bit offset of member `path` from the start of `struct ty` (for bitfields). `path`
    /// may list alternatives for kernels that renamed a member, `"__state|state"`: the first
    /// one the struct has.
    pub fn bit_offset(&self, ty: &str, path: &str) -> Result<u32, BtfError> {
        let mut last = None;
        for alternative in path.split('|') {
            match self.bit_offset_of(ty, alternative) {
                Ok(bits) => return Ok(bits),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| BtfError::NoMember {
            ty: ty.to_owned(),
            path: path.to_owned(),
        }))
    }

    fn bit_offset_of(&self, ty: &str, path: &str) -> Result<u32, BtfError> {
        let no_member = || BtfError::NoMember {
            ty: ty.to_owned(),
            path: path.to_owned(),
        };
        let mut current = self
            .btf
            .resolve_types_by_name(ty)
            .ok()
            .and_then(|types| types.into_iter().find(|t| struct_members(t).is_some()))
            .ok_or_else(|| BtfError::NoStruct(ty.to_owned()))?;
        let mut offset_bits = 0u32;
        let mut segments = path.split('.').peekable();
        while let Some(name) = segments.next() {
            let (bits, member_type) = self.find_member(&current, name).ok_or_else(no_member)?;
            offset_bits += bits;
            if segments.peek().is_some() {
                current = self.strip_modifiers(member_type).ok_or_else(no_member)?;
            }
        }
        Ok(offset_bits)
    }

    /// The value of `name` in `enum ty` (e.g. `cpu_cgrp_id` in `cgroup_subsys_id`, whose
    /// values depend on which controllers the kernel was built with).
    pub fn enum_value(&self, ty: &str, name: &str) -> Result<u32, BtfError> {
        let types = self.btf.resolve_types_by_name(ty).unwrap_or_default();
        types
            .iter()
            .find_map(|t| match t {
                Type::Enum(e) => e
                    .members
                    .iter()
                    .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == name))
                    .map(|m| m.val()),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoEnumValue {
                ty: ty.to_owned(),
                name: name.to_owned(),
            })
    }

    /// The index of parameter `name` of tracepoint `event`, as a tp_btf or raw tracepoint
    /// program's `ctx.arg(i)` numbers it (see [`KernelBtf::tracepoint_args`]). `None` when the
    /// event has no parameter of that name, or BTF does not describe the event.
    pub fn tracepoint_arg(&self, event: &str, name: &str) -> Option<u32> {
        let position = self
            .tracepoint_args(event)?
            .iter()
            .position(|n| n == name)?;
        u32::try_from(position).ok()
    }

    /// The names of tracepoint `event`'s arguments, in the order a tp_btf or raw tracepoint
    /// program's `ctx.arg(i)` numbers them. Taken from the kernel function that runs BPF
    /// programs for the event, `__bpf_trace_<event>(void *__data, <the event's arguments>)`
    /// (or the perf and ftrace handlers with the same parameters), whose BTF names its
    /// parameters; the `btf_trace_<event>` typedef's prototype has the types only. `None` when
    /// BTF has none of these functions.
    pub fn tracepoint_args(&self, event: &str) -> Option<Vec<String>> {
        let handlers = [
            format!("__bpf_trace_{event}"),
            format!("__traceiter_{event}"),
            format!("trace_event_raw_event_{event}"),
        ];
        let proto = handlers.iter().find_map(|h| {
            self.btf
                .resolve_types_by_name(h)
                .ok()?
                .into_iter()
                .find_map(|t| match t {
                    Type::Func(f) => match self.btf.resolve_chained_type(&f).ok()? {
                        Type::FuncProto(p) => Some(p),
                        _ => None,
                    },
                    _ => None,
                })
        })?;
        // The first parameter, `__data`, is not among the program's arguments.
        Some(
            proto
                .parameters
                .iter()
                .skip(1)
                .map(|p| self.btf.resolve_name(p).unwrap_or_default().to_string())
                .collect(),
        )
    }

    /// Finds a member by name, looking inside anonymous structs and unions; returns its bit
    /// offset from the start of `ty` and its type.
    fn find_member(&self, ty: &Type, name: &str) -> Option<(u32, Type)> {
        for member in struct_members(ty)? {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            let member_type = self.btf.resolve_chained_type(member).ok()?;
            if member_name == name {
                return Some((member.bit_offset(), member_type));
            }
            if member_name.is_empty() {
                let inner = self.strip_modifiers(member_type)?;
                if let Some((bits, t)) = self.find_member(&inner, name) {
                    return Some((member.bit_offset() + bits, t));
                }
            }
        }
        None
    }

    /// Follows typedefs, const and volatile to the struct or union underneath.
    fn strip_modifiers(&self, mut t: Type) -> Option<Type> {
        for _ in 0..16 {
            let next = match &t {
                Type::Struct(_) | Type::Union(_) => return Some(t),
                Type::Typedef(x) => self.btf.resolve_chained_type(x).ok()?,
                Type::Const(x) => self.btf.resolve_chained_type(x).ok()?,
                Type::Volatile(x) => self.btf.resolve_chained_type(x).ok()?,
                _ => return None,
            };
            t = next;
        }
        None
    }
}

fn struct_members(t: &Type) -> Option<&[btf_rs::Member]> {
    match t {
        Type::Struct(s) | Type::Union(s) => Some(&s.members),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets that have been the same across 6.x kernels on x86_64 cannot be asserted
    /// portably; what can: members resolve, nested and anonymous paths add up, and unknown
    /// names fail. Skips (printing why) where the running kernel has no BTF.
    #[test]
    fn finds_tracepoint_arguments_by_name_in_the_running_kernel() {
        let Ok(btf) = KernelBtf::load(Path::new(VMLINUX)) else {
            eprintln!("skipped: no kernel BTF at {VMLINUX}");
            return;
        };
        // sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)
        assert_eq!(btf.tracepoint_arg("sched_switch", "preempt"), Some(0));
        assert_eq!(btf.tracepoint_arg("sched_switch", "next"), Some(2));
        assert_eq!(btf.tracepoint_arg("sched_switch", "no_such_argument"), None);
        assert_eq!(btf.tracepoint_arg("no_such_event", "err"), None);
        // tcp_retransmit_skb has `err` from 6.17 on; its record (the struct behind its tracefs
        // format) has the field exactly when the tracepoint has the argument.
        let in_record = btf
            .offset("trace_event_raw_tcp_retransmit_skb", "err")
            .is_ok();
        assert_eq!(
            btf.tracepoint_arg("tcp_retransmit_skb", "err"),
            in_record.then_some(2)
        );
        assert_eq!(btf.tracepoint_arg("tcp_retransmit_skb", "skb"), Some(1));
        // signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task,
        // int group, int result) since 3.x.
        assert_eq!(
            btf.tracepoint_args("signal_generate").as_deref(),
            Some(&["sig", "info", "task", "group", "result"].map(String::from)[..])
        );
        // enum oom_constraint, as agent_ebpf::oom::CONSTRAINT_NAMES lists it.
        for (value, name) in [
            "CONSTRAINT_NONE",
            "CONSTRAINT_CPUSET",
            "CONSTRAINT_MEMORY_POLICY",
            "CONSTRAINT_MEMCG",
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(
                btf.enum_value("oom_constraint", name).ok(),
                Some(value as u32)
            );
        }
        assert_eq!(agent_ebpf::oom::CONSTRAINT_NAMES.len(), 4);
        // mark_victim's first argument is a task (6.8 and backports) or a pid (older): either
        // way it is named, so the agent can tell which.
        let victim = btf
            .tracepoint_args("mark_victim")
            .expect("mark_victim in BTF");
        assert!(
            victim.first().is_some_and(|a| a == "task" || a == "pid"),
            "mark_victim({})",
            victim.join(", ")
        );
    }

    #[test]
    fn resolves_nested_and_anonymous_members_from_the_running_kernel() {
        let Ok(btf) = KernelBtf::load(Path::new(VMLINUX)) else {
            eprintln!("skipping: no kernel BTF at {VMLINUX}");
            return;
        };
        let common = btf.offset("sock", "__sk_common").unwrap();
        let family_in_common = btf.offset("sock_common", "skc_family").unwrap();
        assert_eq!(
            btf.offset("sock", "__sk_common.skc_family").unwrap(),
            common + family_in_common
        );
        let data = btf.offset("sock", "sk_cgrp_data").unwrap();
        let cgroup_in_data = btf.offset("sock_cgroup_data", "cgroup").unwrap();
        assert_eq!(
            btf.offset("sock", "sk_cgrp_data.cgroup").unwrap(),
            data + cgroup_in_data
        );
        for (_, ty, path) in agent_ebpf::kernel::OFFSETS {
            btf.offset(ty, path).unwrap();
        }
        for (_, ty, path) in agent_ebpf::kernel::BIT_OFFSETS {
            let bits = btf.bit_offset(ty, path).unwrap();
            assert_eq!(bits / 8, btf.offset(ty, path).unwrap());
        }
        assert!(matches!(
            btf.offset("task_struct", "no_such_member"),
            Err(BtfError::NoMember { .. })
        ));
        // cpu_cgrp_id follows cpuset_cgrp_id whenever both controllers are built in.
        let cpu = btf.enum_value("cgroup_subsys_id", "cpu_cgrp_id").unwrap();
        if let Ok(cpuset) = btf.enum_value("cgroup_subsys_id", "cpuset_cgrp_id") {
            assert_eq!(cpu, cpuset + 1);
        }
        assert!(matches!(
            btf.enum_value("cgroup_subsys_id", "no_such_cgrp_id"),
            Err(BtfError::NoEnumValue { .. })
        ));
        assert!(matches!(
            btf.offset("no_such_struct", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }
}

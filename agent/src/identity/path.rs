//! What a cgroup path alone says about its owner (pure parsing, no I/O): the Kubernetes pod
//! and QoS class, the container id and runtime, or the systemd unit. Also the parser of
//! `/proc/<pid>/cgroup` (cgroup v1, v2 and hybrid).
//!
//! Layouts recognised (paths relative to the cgroup root, any prefix before them allowed, e.g.
//! a kind node's `/kubelet.slice/kubelet-kubepods.slice/...` or a `--cgroup-root`):
//!
//! | driver | pod cgroup | container cgroup under it |
//! |---|---|---|
//! | systemd | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, _ for ->.slice` (`besteffort` alike; guaranteed: `kubepods.slice/kubepods-pod<uid>.slice`) | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `crio-conmon-<id>.scope` (conmon), `docker-<id>.scope` |
//! | cgroupfs | `kubepods/burstable/pod<uid>` (guaranteed: `kubepods/pod<uid>`) | `<id>`, `crio-<id>`, `crio-conmon-<id>` |
//!
//! Outside Kubernetes: `docker-<id>.scope` (systemd driver), `/docker/<id>` (cgroupfs),
//! `libpod-<id>.scope` (podman, `libpod-conmon-<id>.scope` being its conmon), and any bare
//! 64-hex-digit directory (runtime unknown). Cgroups below a container's (a `container`
//! sub-cgroup, units of a systemd running inside the container) belong to that container.

use serde::{Deserialize, Serialize};

/// Kubernetes QoS class of a pod, as the kubelet's cgroup layout (and `status.qosClass`) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Qos {
    #[serde(rename = "guaranteed")]
    Guaranteed,
    #[serde(rename = "burstable")]
    Burstable,
    #[serde(rename = "besteffort")]
    BestEffort,
}

impl Qos {
    /// From the kubelet's `status.qosClass` (`Guaranteed`, `Burstable`, `BestEffort`).
    pub fn from_qos_class(s: &str) -> Option<Qos> {
        match s {
            "Guaranteed" => Some(Qos::Guaranteed),
            "Burstable" => Some(Qos::Burstable),
            "BestEffort" => Some(Qos::BestEffort),
            _ => None,
        }
    }
}

/// Container runtime, from the cgroup name or from the kubelet's `containerID` scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Runtime {
    #[serde(rename = "containerd")]
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    #[serde(rename = "docker")]
    Docker,
    #[serde(rename = "podman")]
    Podman,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }

    /// Splits a kubelet `containerID` (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`)
    /// into its runtime (`None` for an unknown scheme) and id. `None` without a `://`.
    pub fn split_container_id(s: &str) -> Option<(Option<Runtime>, &str)> {
        let (scheme, id) = s.split_once("://")?;
        if id.is_empty() {
            return None;
        }
        let runtime = match scheme {
            "containerd" => Some(Runtime::Containerd),
            "cri-o" => Some(Runtime::CriO),
            "docker" => Some(Runtime::Docker),
            "podman" => Some(Runtime::Podman),
            _ => None,
        };
        Some((runtime, id))
    }
}

/// A Kubernetes pod found in a cgroup path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// The pod UID in its API form (with `-`), e.g. `1a2b3c4d-...`; a static pod's is the
    /// kubelet's 32-hex-digit config hash.
    pub uid: String,
    pub qos: Qos,
}

/// A container found in a cgroup path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: String,
    /// `None` when the name does not say (cgroupfs driver with containerd or docker).
    pub runtime: Option<Runtime>,
    /// The cgroup of the container's conmon monitor (CRI-O, podman), not of the container.
    pub conmon: bool,
}

/// Everything a cgroup path says. At most one of `container` (with or without `pod`) and
/// `unit` is set: a unit inside a container belongs to the container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathInfo {
    pub pod: Option<PodRef>,
    pub container: Option<ContainerRef>,
    /// The innermost `*.service` or `*.scope`, when no pod or container is recognised.
    pub unit: Option<String>,
}

/// Parses a cgroup path (relative to the cgroup root, leading `/` optional).
pub fn parse_cgroup_path(path: &str) -> PathInfo {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();

    // A pod: the outermost component that is a pod cgroup; the next one, if any, is the
    // container (or sandbox, or conmon), and anything deeper belongs to it.
    for (i, part) in parts.iter().enumerate() {
        let pod = pod_slice(part).or_else(|| pod_cgroupfs(&parts[..i], part));
        if let Some(pod) = pod {
            let container = parts
                .get(i + 1)
                .and_then(|c| container_name(c, Some(parts[i])));
            return PathInfo {
                pod: Some(pod),
                container,
                unit: None,
            };
        }
    }

    // A container outside Kubernetes: the innermost one (docker in docker).
    for i in (0..parts.len()).rev() {
        let parent = i.checked_sub(1).map(|p| parts[p]);
        if let Some(container) = container_name(parts[i], parent) {
            return PathInfo {
                pod: None,
                container: Some(container),
                unit: None,
            };
        }
    }

    PathInfo {
        pod: None,
        container: None,
        unit: parts
            .iter()
            .rev()
            .find(|p| is_unit(p))
            .map(|p| (*p).to_owned()),
    }
}

/// A systemd unit name we report: `*.service` or `*.scope` with something before the suffix.
fn is_unit(name: &str) -> bool {
    [".service", ".scope"]
        .iter()
        .any(|s| name.len() > s.len() && name.ends_with(s))
}

/// systemd driver: `[...-]kubepods[-burstable|-besteffort]-pod<uid with _>.slice`.
fn pod_slice(part: &str) -> Option<PodRef> {
    let name = part.strip_suffix(".slice")?;
    let (prefix, uid) = name.rsplit_once("-pod")?;
    let qos = if prefix.ends_with("kubepods-burstable") {
        Qos::Burstable
    } else if prefix.ends_with("kubepods-besteffort") {
        Qos::BestEffort
    } else if prefix.ends_with("kubepods") {
        Qos::Guaranteed
    } else {
        return None;
    };
    // The kubelet writes the UID's `-` as `_` (systemd would escape `-`).
    if uid.contains('-') {
        return None;
    }
    let uid = uid.replace('_', "-");
    valid_pod_uid(&uid).then_some(PodRef { uid, qos })
}

/// cgroupfs driver: `kubepods/pod<uid>` (guaranteed) or `kubepods/<qos>/pod<uid>`.
fn pod_cgroupfs(before: &[&str], part: &str) -> Option<PodRef> {
    let uid = part.strip_prefix("pod")?;
    let qos = match before {
        [.., "kubepods"] => Qos::Guaranteed,
        [.., "kubepods", "burstable"] => Qos::Burstable,
        [.., "kubepods", "besteffort"] => Qos::BestEffort,
        _ => return None,
    };
    valid_pod_uid(uid).then(|| PodRef {
        uid: uid.to_owned(),
        qos,
    })
}

/// A UUID (8-4-4-4-12 lowercase hex digits) or a static pod's 32-hex-digit config hash.
pub fn valid_pod_uid(uid: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(is_lower_hex);
    if hex(uid, 32) {
        return true;
    }
    let groups: Vec<&str> = uid.split('-').collect();
    groups.len() == 5 && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| hex(g, n))
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// A container id as runtimes name them: 64 lowercase hex digits.
pub fn valid_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(is_lower_hex)
}

/// A container's cgroup name: `<prefix><id>[.scope]` or a bare id, whose runtime the parent
/// cgroup may tell (`/docker/<id>`, `/libpod_parent/libpod-<id>`).
fn container_name(part: &str, parent: Option<&str>) -> Option<ContainerRef> {
    const PREFIXES: [(&str, Runtime, bool); 6] = [
        ("cri-containerd-", Runtime::Containerd, false),
        ("crio-conmon-", Runtime::CriO, true),
        ("crio-", Runtime::CriO, false),
        ("docker-", Runtime::Docker, false),
        ("libpod-conmon-", Runtime::Podman, true),
        ("libpod-", Runtime::Podman, false),
    ];
    let name = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime, conmon) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix) {
            return valid_container_id(id).then(|| ContainerRef {
                id: id.to_owned(),
                runtime: Some(runtime),
                conmon,
            });
        }
    }
    if name.len() != part.len() || !valid_container_id(name) {
        return None;
    }
    let runtime = match parent {
        Some("docker") => Some(Runtime::Docker),
        Some("libpod_parent") => Some(Runtime::Podman),
        _ => None,
    };
    Some(ContainerRef {
        id: name.to_owned(),
        runtime,
        conmon: false,
    })
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controller-list:path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcCgroupLine<'a> {
    pub hierarchy: u32,
    /// Comma-separated controllers (`cpu,cpuacct`, `name=systemd`); empty for v2.
    pub controllers: &'a str,
    pub path: &'a str,
}

impl ProcCgroupLine<'_> {
    /// The cgroup v2 (unified) line: `0::<path>`.
    pub fn is_v2(&self) -> bool {
        self.hierarchy == 0 && self.controllers.is_empty()
    }

    /// Whether this v1 hierarchy carries `controller` (`cpu`, `memory`, `name=systemd`, ...).
    pub fn has_controller(&self, controller: &str) -> bool {
        self.controllers.split(',').any(|c| c == controller)
    }
}

/// Parses `/proc/<pid>/cgroup` content, skipping malformed lines. The path is everything after
/// the second `:` (it may itself contain `:`).
pub fn parse_proc_cgroup(text: &str) -> impl Iterator<Item = ProcCgroupLine<'_>> {
    text.lines().filter_map(|line| {
        let mut it = line.splitn(3, ':');
        let hierarchy = it.next()?.trim().parse().ok()?;
        let controllers = it.next()?;
        let path = it.next()?;
        path.starts_with('/').then_some(ProcCgroupLine {
            hierarchy,
            controllers,
            path,
        })
    })
}

/// Which line of `/proc/<pid>/cgroup` to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcCgroupHierarchy {
    /// The unified (v2) line, `0::<path>`.
    Unified,
    /// The v1 hierarchy carrying this controller (`cpu`, `memory`, `name=systemd`, ...).
    Controller(&'static str),
}

/// The process's cgroup path in one hierarchy, if it has a line for it.
pub fn proc_cgroup_path_in(text: &str, hierarchy: ProcCgroupHierarchy) -> Option<&str> {
    parse_proc_cgroup(text)
        .find(|l| match hierarchy {
            ProcCgroupHierarchy::Unified => l.is_v2(),
            ProcCgroupHierarchy::Controller(c) => !l.is_v2() && l.has_controller(c),
        })
        .map(|l| l.path)
}

/// The cgroup v2 path (the `0::` line), if the process is in a v2 (or hybrid) hierarchy.
#[cfg(test)]
pub fn proc_cgroup_v2_path(text: &str) -> Option<&str> {
    proc_cgroup_path_in(text, ProcCgroupHierarchy::Unified)
}

/// The path in the v1 hierarchy carrying `controller`.
#[cfg(test)]
pub fn proc_cgroup_controller_path<'a>(text: &'a str, controller: &'static str) -> Option<&'a str> {
    proc_cgroup_path_in(text, ProcCgroupHierarchy::Controller(controller))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
    const UID_: &str = "1a2b3c4d_5e6f_4a7b_8c9d_0e1f2a3b4c5d";
    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";

    fn pod(qos: Qos) -> Option<PodRef> {
        Some(PodRef {
            uid: UID.into(),
            qos,
        })
    }

    fn container(runtime: Option<Runtime>, conmon: bool) -> Option<ContainerRef> {
        Some(ContainerRef {
            id: ID.into(),
            runtime,
            conmon,
        })
    }

    fn pod_container(qos: Qos, runtime: Option<Runtime>) -> PathInfo {
        PathInfo {
            pod: pod(qos),
            container: container(runtime, false),
            unit: None,
        }
    }

    fn unit(u: &str) -> PathInfo {
        PathInfo {
            unit: Some(u.into()),
            ..PathInfo::default()
        }
    }

    #[test]
    fn systemd_driver_all_qos_and_runtimes() {
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                Qos::Burstable,
                Runtime::Containerd,
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
                ),
                Qos::BestEffort,
                Runtime::CriO,
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope"),
                Qos::Guaranteed,
                Runtime::Docker,
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                Qos::Guaranteed,
                Runtime::Containerd,
            ),
        ];
        for (path, qos, runtime) in cases {
            assert_eq!(
                parse_cgroup_path(&path),
                pod_container(qos, Some(runtime)),
                "{path}"
            );
        }
    }

    #[test]
    fn cgroupfs_driver_all_qos() {
        for (prefix, qos) in [
            ("/kubepods", Qos::Guaranteed),
            ("/kubepods/burstable", Qos::Burstable),
            ("/kubepods/besteffort", Qos::BestEffort),
        ] {
            let path = format!("{prefix}/pod{UID}/{ID}");
            assert_eq!(parse_cgroup_path(&path), pod_container(qos, None), "{path}");
            let path = format!("{prefix}/pod{UID}/crio-{ID}");
            assert_eq!(
                parse_cgroup_path(&path),
                pod_container(qos, Some(Runtime::CriO)),
                "{path}"
            );
        }
    }

    #[test]
    fn pod_level_cgroups() {
        for (path, qos) in [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
                ),
                Qos::Burstable,
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice"),
                Qos::Guaranteed,
            ),
            (format!("/kubepods/besteffort/pod{UID}"), Qos::BestEffort),
            (format!("/kubepods/pod{UID}/"), Qos::Guaranteed),
            // An unknown child of a pod cgroup is the pod's.
            (
                format!("/kubepods/burstable/pod{UID}/not-a-container"),
                Qos::Burstable,
            ),
        ] {
            assert_eq!(
                parse_cgroup_path(&path),
                PathInfo {
                    pod: pod(qos),
                    ..PathInfo::default()
                },
                "{path}"
            );
        }
    }

    #[test]
    fn conmon_is_not_the_container() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
        );
        let info = parse_cgroup_path(&path);
        assert_eq!(info.pod, pod(Qos::Burstable));
        assert_eq!(info.container, container(Some(Runtime::CriO), true));
        let info = parse_cgroup_path(&format!("/kubepods/pod{UID}/crio-conmon-{ID}"));
        assert_eq!(info.container, container(Some(Runtime::CriO), true));
        let info = parse_cgroup_path(&format!("/machine.slice/libpod-conmon-{ID}.scope"));
        assert_eq!(info.container, container(Some(Runtime::Podman), true));
    }

    #[test]
    fn below_a_container_is_the_container() {
        for path in [
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope/container"),
            format!("/kubepods/burstable/pod{UID}/{ID}/init.scope"),
        ] {
            let info = parse_cgroup_path(&path);
            assert!(info.pod.is_some() && info.container.is_some(), "{path}");
            assert_eq!(info.unit, None);
        }
        // systemd running inside a docker container: the units are the container's.
        let info = parse_cgroup_path(&format!(
            "/system.slice/docker-{ID}.scope/system.slice/nginx.service"
        ));
        assert_eq!(info.container, container(Some(Runtime::Docker), false));
        assert_eq!(info.unit, None);
    }

    #[test]
    fn prefixed_roots_kind_and_cgroup_root() {
        // kind nodes: the kubelet's --cgroup-root=/kubelet, inside the node's container.
        let path = format!(
            "/system.slice/docker-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            parse_cgroup_path(&path),
            pod_container(Qos::BestEffort, Some(Runtime::Containerd))
        );
        let path = format!("/kubelet/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(
            parse_cgroup_path(&path),
            pod_container(Qos::Burstable, None)
        );
    }

    #[test]
    fn static_pod_uid_is_a_hash() {
        let hash = "6b4d2b3f0c7e5a8e1f3f0b8c2d9e7a1b";
        let info = parse_cgroup_path(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice"
        ));
        assert_eq!(info.pod.unwrap().uid, hash);
        let info = parse_cgroup_path(&format!("/kubepods/burstable/pod{hash}/{ID}"));
        assert_eq!(info.pod.unwrap().uid, hash);
    }

    #[test]
    fn containers_outside_kubernetes() {
        let c = |r| PathInfo {
            container: container(r, false),
            ..PathInfo::default()
        };
        assert_eq!(
            parse_cgroup_path(&format!("/system.slice/docker-{ID}.scope")),
            c(Some(Runtime::Docker))
        );
        assert_eq!(
            parse_cgroup_path(&format!("/docker/{ID}")),
            c(Some(Runtime::Docker))
        );
        assert_eq!(
            parse_cgroup_path(&format!("/machine.slice/libpod-{ID}.scope")),
            c(Some(Runtime::Podman))
        );
        assert_eq!(
            parse_cgroup_path(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            c(Some(Runtime::Podman))
        );
        assert_eq!(
            parse_cgroup_path(&format!("/libpod_parent/libpod-{ID}")),
            c(Some(Runtime::Podman))
        );
        assert_eq!(
            parse_cgroup_path(&format!("/system.slice/cri-containerd-{ID}.scope")),
            c(Some(Runtime::Containerd))
        );
        assert_eq!(parse_cgroup_path(&format!("/default/{ID}")), c(None));
        // Docker in docker: the innermost.
        let inner = "ab".repeat(32);
        let info = parse_cgroup_path(&format!("/docker/{ID}/docker/{inner}"));
        assert_eq!(info.container.unwrap().id, inner);
    }

    #[test]
    fn systemd_units() {
        assert_eq!(
            parse_cgroup_path("/system.slice/ssh.service"),
            unit("ssh.service")
        );
        assert_eq!(
            parse_cgroup_path("/user.slice/user-1000.slice/session-3.scope"),
            unit("session-3.scope")
        );
        assert_eq!(parse_cgroup_path("/init.scope"), unit("init.scope"));
        assert_eq!(
            parse_cgroup_path(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service"
            ),
            unit("dbus.service")
        );
        // The unit's own sub-cgroups (e.g. containerd's delegated ones) stay the unit's.
        assert_eq!(
            parse_cgroup_path("/system.slice/containerd.service/runtime"),
            unit("containerd.service")
        );
        assert_eq!(
            parse_cgroup_path("/system.slice/system-getty.slice/getty@tty1.service"),
            unit("getty@tty1.service")
        );
    }

    #[test]
    fn plain_paths() {
        for path in [
            "/",
            "",
            "/system.slice",
            "/user.slice/user-1000.slice",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods",
            "/kubepods/besteffort",
            "/busy",
            "/.service",
        ] {
            assert_eq!(parse_cgroup_path(path), PathInfo::default(), "{path:?}");
        }
    }

    #[test]
    fn malformed_names() {
        let short = &ID[..63];
        let upper = ID.to_uppercase();
        for path in [
            // Pod UIDs: wrong length, wrong group sizes, hyphens in the systemd form, not hex.
            "/kubepods.slice/kubepods-pod1a2b.slice".to_owned(),
            "/kubepods.slice/kubepods-pod1a2b3c4d5_e6f_4a7b_8c9d_0e1f2a3b4c5d.slice".to_owned(),
            format!("/kubepods.slice/kubepods-pod{UID}.slice"),
            "/kubepods.slice/kubepods-podzzzzzzzz_5e6f_4a7b_8c9d_0e1f2a3b4c5d.slice".to_owned(),
            format!("/kubepods.slice/kubepods-pod{UID_}.slic"),
            format!("/kubepods.slice/other-pod{UID_}.slice"),
            format!("/kubepods/burstable/pod{UID_}"),
            format!("/kubepods/burstable/pod-{UID}"),
            format!("/notkubepods/pod{UID}"),
            format!("/kubepods/silver/pod{UID}"),
            // Container ids: too short, upper case, empty.
            format!("/docker/{short}"),
            format!("/docker/{upper}"),
            "/docker/".to_owned(),
        ] {
            let info = parse_cgroup_path(&path);
            assert_eq!(info.pod, None, "{path}");
            assert_eq!(info.container, None, "{path}");
        }
        // A scope whose id is malformed is only a unit.
        assert_eq!(
            parse_cgroup_path(&format!("/system.slice/docker-{short}.scope")),
            unit(&format!("docker-{short}.scope"))
        );
        assert_eq!(
            parse_cgroup_path("/system.slice/cri-containerd-.scope"),
            unit("cri-containerd-.scope")
        );
        // ... and under a pod, a malformed container leaves the pod.
        let info = parse_cgroup_path(&format!(
            "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{short}.scope"
        ));
        assert_eq!(info.pod, pod(Qos::Guaranteed));
        assert_eq!(info.container, None);
        // A bare id with a suffix it should not have.
        assert_eq!(
            parse_cgroup_path(&format!("/{ID}.scope")),
            unit(&format!("{ID}.scope"))
        );
    }

    #[test]
    fn container_id_schemes() {
        assert_eq!(
            Runtime::split_container_id(&format!("containerd://{ID}")),
            Some((Some(Runtime::Containerd), ID))
        );
        assert_eq!(
            Runtime::split_container_id(&format!("cri-o://{ID}")),
            Some((Some(Runtime::CriO), ID))
        );
        assert_eq!(
            Runtime::split_container_id(&format!("docker://{ID}")),
            Some((Some(Runtime::Docker), ID))
        );
        assert_eq!(Runtime::split_container_id("rkt://x"), Some((None, "x")));
        assert_eq!(Runtime::split_container_id("containerd://"), None);
        assert_eq!(Runtime::split_container_id(ID), None);
        assert_eq!(Qos::from_qos_class("BestEffort"), Some(Qos::BestEffort));
        assert_eq!(Qos::from_qos_class("besteffort"), None);
    }

    #[test]
    fn proc_cgroup_v2() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        let lines: Vec<_> = parse_proc_cgroup(&text).collect();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].is_v2());
        assert_eq!(
            proc_cgroup_v2_path(&text),
            Some(text.trim_end()[3..].as_ref())
        );
        assert_eq!(proc_cgroup_controller_path(&text, "cpu"), None);
    }

    #[test]
    fn proc_cgroup_v1_controllers() {
        let p = format!("/kubepods/burstable/pod{UID}/{ID}");
        let text = format!(
            "12:cpu,cpuacct:{p}\n11:memory:{p}\n2:rdma:/\n1:name=systemd:{p}\n0::/system.slice/containerd.service\n"
        );
        assert_eq!(proc_cgroup_controller_path(&text, "cpu"), Some(p.as_str()));
        assert_eq!(
            proc_cgroup_controller_path(&text, "cpuacct"),
            Some(p.as_str())
        );
        assert_eq!(
            proc_cgroup_controller_path(&text, "memory"),
            Some(p.as_str())
        );
        assert_eq!(proc_cgroup_controller_path(&text, "rdma"), Some("/"));
        assert_eq!(
            proc_cgroup_controller_path(&text, "name=systemd"),
            Some(p.as_str())
        );
        assert_eq!(proc_cgroup_controller_path(&text, "cpuset"), None);
        assert_eq!(
            proc_cgroup_v2_path(&text),
            Some("/system.slice/containerd.service")
        );
    }

    #[test]
    fn proc_cgroup_skips_garbage() {
        let text =
            "garbage\n\n5:cpu:relative\nx:cpu:/a\n3:cpu:/a/b:c\n0::/system.slice/ssh.service\n";
        let lines: Vec<_> = parse_proc_cgroup(text).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].path, "/a/b:c");
        assert_eq!(proc_cgroup_v2_path(text), Some("/system.slice/ssh.service"));
        assert_eq!(proc_cgroup_controller_path(text, "cpu"), Some("/a/b:c"));
        assert_eq!(proc_cgroup_v2_path(""), None);
        assert_eq!(proc_cgroup_controller_path("4:memory:/m\n", "cpu"), None);
    }
}

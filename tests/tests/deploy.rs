//! The deployment artefacts in `deploy/`: the Kubernetes manifests, the systemd unit, the
//! container image's Dockerfile and the example configuration.
//!
//! * Every manifest under `deploy/kubernetes/` is parsed into its typed Kubernetes object
//!   (k8s-openapi) and serialised back: any field the type does not know (a typo, a field
//!   of another API version) or a value of the wrong type makes the round trip differ from
//!   the document, and fails the test with the field's path. Then the DaemonSet's
//!   invariants: capabilities exactly BPF and PERFMON (each justified in a YAML comment),
//!   drop ALL, not privileged, no privilege escalation, a read-only root, read-only host
//!   mounts of an allowed set only, no host namespaces, health probes on /healthz and
//!   /readyz at the `--health-listen` port, NODE_NAME from the downward API, tolerating
//!   every taint, a rolling update, a priority class, resources; the service account
//!   exists and is bound only to `get` on `nodes/pods` (`nodes/proxy` only in optional/).
//! * The agent accepts the DaemonSet's command line, the ConfigMap's nodesat.toml, the
//!   unit's ExecStart and deploy/nodesat.toml: `nodesat check` with them (capabilities
//!   dropped, so nothing is loaded) must not end in a usage error (exit 64, or clap's 2).
//!   As root, the agent run as the pod would run it (uid 0 with only the container's
//!   capabilities, no_new_privs, read-only file systems, the DaemonSet's command line) must
//!   attach its probes and answer the kubelet's /readyz and /healthz probes.
//! * The systemd unit: its hardening directives, `systemd-analyze verify`, and each
//!   `systemd-analyze security` check it must pass ([`HARDENING_CHECKS_SET`], by name, not
//!   the score, which a newer systemd's extra checks raise); and, as root,
//!   the agent run the way the unit runs it (a non-root user holding only the unit's
//!   ambient capabilities, no_new_privs, read-only file systems) must attach its probes,
//!   report and exit 0 on SIGTERM.
//! * The Dockerfile's toolchain matches the workspace (Rust version, LLVM major of
//!   `cargo xtask provision`), and its final stage runs the agent.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, ResourceQuota, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use nodesat_tests::{
    Agent, agent_bin, clear_agent_env, logged_output_within, output_within, skip, workspace_root,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Asserts that every tracepoint probe attached (the throttle probe needs fentry or kprobes,
/// which this kernel may lack) when the agent had only the capabilities `caps`.
#[track_caller]
fn assert_tracepoint_probes_attached(ready: &nodesat_tests::agent::Ready, caps: &[String]) {
    for probe in ["runqueue", "tcp", "oom", "block"] {
        assert!(
            ready
                .probes
                .iter()
                .any(|p| p["probe"] == probe && p["attached"] == true),
            "probe {probe} did not attach with only {caps:?}: {:?}",
            ready.probes
        );
    }
}

/// Longest a `nodesat check` or `systemd-analyze` run may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit code for usage and configuration errors (EX_USAGE).
const EX_USAGE: i32 = 64;

/// Exit codes `nodesat check` may end with once its configuration is accepted: ready (0),
/// the kernel refuses (69, EX_UNAVAILABLE), privileges missing (77, EX_NOPERM).
const CHECK_ACCEPTED: [i32; 3] = [0, 69, 77];

/// The capabilities the DaemonSet and the unit may grant, and why. Anything else is a test
/// failure until it is justified here and in a comment beside it.
const JUSTIFIED_CAPABILITIES: [(&str, &str); 2] = [
    ("BPF", "bpf(2): maps, program loads, BTF, links"),
    (
        "PERFMON",
        "tracing program types and perf_event_open(2) for kprobes",
    ),
];

/// Host paths the DaemonSet may mount (all read-only), and why.
const ALLOWED_HOST_PATHS: [(&str, &str); 2] = [
    (
        "/sys/fs/cgroup",
        "cgroup id -> path, cpu.stat, memory.events",
    ),
    (
        "/proc",
        "an OOM victim's /proc/<pid>/cgroup under --host-root",
    ),
];

/// Host paths a container may mount writable, with the reason: none.
const WRITABLE_HOST_PATHS: [(&str, &str); 0] = [];

/// Priority classes every cluster has.
const BUILTIN_PRIORITY_CLASSES: [&str; 2] = ["system-node-critical", "system-cluster-critical"];

/// `systemd-analyze security` checks (by `json_field`) that the unit passes and must go on
/// passing: the ones it passed with systemd 252. Compared by name, so a newer systemd's
/// extra checks (which raise the exposure score) do not fail the test, and a lost setting
/// does, whatever the score.
const HARDENING_CHECKS_SET: [&str; 68] = [
    "SystemCallFilter_swap",
    "SystemCallFilter_resources",
    "SystemCallFilter_reboot",
    "SystemCallFilter_raw_io",
    "SystemCallFilter_obsolete",
    "SystemCallFilter_mount",
    "SystemCallFilter_module",
    "SystemCallFilter_cpu_emulation",
    "SystemCallFilter_clock",
    "RemoveIPC",
    "UserOrDynamicUser",
    "RestrictRealtime",
    "CapabilityBoundingSet_CAP_SYS_TIME",
    "NoNewPrivileges",
    "SystemCallArchitectures",
    "ProtectSystem",
    "SupplementaryGroups",
    "CapabilityBoundingSet_CAP_SYS_RAWIO",
    "CapabilityBoundingSet_CAP_SYS_PTRACE",
    "CapabilityBoundingSet_CAP_SYS_NICE_RESOURCE",
    "CapabilityBoundingSet_CAP_NET_ADMIN",
    // (systemd's own field name, parenthesis included)
    "CapabilityBoundingSet_CAP_NET_BIND_SERVICE_BROADCAST_RAW)",
    "CapabilityBoundingSet_CAP_AUDIT",
    "CapabilityBoundingSet_CAP_SYS_ADMIN",
    "PrivateTmp",
    "CapabilityBoundingSet_CAP_SYSLOG",
    "ProtectHome",
    "PrivateDevices",
    "KeyringMode",
    "Delegate",
    "NotifyAccess",
    "ProtectClock",
    "CapabilityBoundingSet_CAP_SYS_PACCT",
    "CapabilityBoundingSet_CAP_KILL",
    "ProtectKernelLogs",
    "CapabilityBoundingSet_CAP_WAKE_ALARM",
    "CapabilityBoundingSet_CAP_DAC_FOWNER_IPC_OWNER",
    "ProtectControlGroups",
    "CapabilityBoundingSet_CAP_LINUX_IMMUTABLE",
    "CapabilityBoundingSet_CAP_IPC_LOCK",
    "ProtectKernelModules",
    "CapabilityBoundingSet_CAP_SYS_MODULE",
    "CapabilityBoundingSet_CAP_SYS_TTY_CONFIG",
    "CapabilityBoundingSet_CAP_SYS_BOOT",
    "CapabilityBoundingSet_CAP_SYS_CHROOT",
    "PrivateMounts",
    "CapabilityBoundingSet_CAP_BLOCK_SUSPEND",
    "MemoryDenyWriteExecute",
    "RestrictNamespaces_user",
    "RestrictNamespaces_pid",
    "RestrictNamespaces_net",
    "RestrictNamespaces_uts",
    "RestrictNamespaces_mnt",
    "CapabilityBoundingSet_CAP_LEASE",
    "CapabilityBoundingSet_CAP_MKNOD",
    "RestrictNamespaces_cgroup",
    "RestrictNamespaces_ipc",
    "ProtectHostname",
    "CapabilityBoundingSet_CAP_CHOWN_FSETID_SETFCAP",
    "CapabilityBoundingSet_CAP_SET_UID_GID_PCAP",
    "LockPersonality",
    "ProtectKernelTunables",
    "RestrictAddressFamilies_AF_PACKET",
    "RestrictAddressFamilies_AF_NETLINK",
    "RestrictAddressFamilies_OTHER",
    "CapabilityBoundingSet_CAP_MAC",
    "RestrictSUIDSGID",
    "UMask",
];

/// The checks the unit fails on purpose, and why (the rest of systemd 252's 81).
const ACCEPTED_EXPOSURES: [(&str, &str); 13] = [
    ("SystemCallFilter_privileged", "bpf(2) is in @privileged"),
    (
        "SystemCallFilter_debug",
        "perf_event_open(2), for tracepoints, is in @debug",
    ),
    (
        "RootDirectoryOrRootImage",
        "the agent reads the host's /proc and /sys",
    ),
    (
        "AmbientCapabilities",
        "CAP_BPF and CAP_PERFMON for the non-root user",
    ),
    ("CapabilityBoundingSet_CAP_BPF", "loading the probes"),
    (
        "RestrictAddressFamilies_AF_UNIX",
        "sd_notify and the log socket",
    ),
    (
        "RestrictAddressFamilies_AF_INET_INET6",
        "OTLP export and the HTTP endpoints",
    ),
    (
        "ProtectProc",
        "the agent reads other processes' /proc/<pid>/cgroup",
    ),
    ("ProcSubset", "it reads /proc/<pid>, not only /proc/sys"),
    ("PrivateNetwork", "it exports over the host's network"),
    ("PrivateUsers", "BPF needs the initial user namespace"),
    (
        "DeviceAllow",
        "PrivateDevices= already leaves the service no physical devices",
    ),
    (
        "IPAddressDeny",
        "the collector's address is the operator's choice",
    ),
];

/// A uid from systemd's DynamicUser= range (61184-65519), for running the agent the way
/// the unit does.
const DYNAMIC_UID: u32 = 61234;

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ── Kubernetes manifests ────────────────────────────────────────────────────────────────

/// One typed object from a manifest file.
enum Object {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    ConfigMap(Box<ConfigMap>),
    ResourceQuota(Box<ResourceQuota>),
    DaemonSet(Box<DaemonSet>),
}

struct Manifest {
    /// Path relative to deploy/kubernetes.
    file: String,
    /// Under optional/: not installed by default.
    optional: bool,
    object: Object,
}

/// Every `*.yaml`/`*.yml` under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The YAML documents of `text` as JSON values (empty documents left out).
fn yaml_documents(text: &str, what: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .enumerate()
        .map(|(i, doc)| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}, document {i}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Where `original` and `round_trip` first differ, as a sentence naming the field. A null
/// in the original equals an absent field (Kubernetes reads both as unset).
fn first_difference(original: &Value, round_trip: &Value, path: &str) -> Option<String> {
    match (original, round_trip) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let here = format!("{path}.{k}");
                match b.get(k) {
                    None if v.is_null() => {}
                    None => {
                        return Some(format!(
                            "{here} is not a field of the Kubernetes type (unknown or misspelt)"
                        ));
                    }
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, &here) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys()
                .find(|k| !a.contains_key(*k))
                .map(|k| format!("{path}.{k} appeared in the round trip"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]"))),
        (a, b) if a == b => None,
        (a, b) => Some(format!(
            "{path} is {a} in the manifest but {b} as the Kubernetes type reads it (wrong type?)"
        )),
    }
}

/// `doc` as the typed object `T`, or why not: a field `T` does not have, or a value of
/// the wrong type.
fn try_typed<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<T, String> {
    let object: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&object).expect("k8s-openapi objects serialise");
    match first_difference(doc, &back, "") {
        Some(difference) => Err(difference),
        None => Ok(object),
    }
}

/// [`try_typed`], panicking with `what` and the reason.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
    try_typed(doc).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Every manifest under deploy/kubernetes, typed. Panics on anything unparseable, unknown
/// fields included, and on kinds this test does not know.
fn manifests() -> Vec<Manifest> {
    let root = deploy_dir().join("kubernetes");
    let mut out = Vec::new();
    for path in yaml_files(&root) {
        let file = path
            .strip_prefix(&root)
            .expect("under deploy/kubernetes")
            .to_string_lossy()
            .into_owned();
        if file == "kustomization.yaml" {
            continue;
        }
        for (i, doc) in yaml_documents(&read(&path), &file).into_iter().enumerate() {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let what = format!("{file}, document {i} ({api_version} {kind})");
            let object = match (api_version.as_str(), kind.as_str()) {
                ("v1", "Namespace") => Object::Namespace(typed(&doc, &what)),
                ("v1", "ServiceAccount") => Object::ServiceAccount(typed(&doc, &what)),
                ("v1", "ConfigMap") => Object::ConfigMap(typed(&doc, &what)),
                ("v1", "ResourceQuota") => Object::ResourceQuota(typed(&doc, &what)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    Object::ClusterRole(typed(&doc, &what))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    Object::ClusterRoleBinding(typed(&doc, &what))
                }
                ("apps/v1", "DaemonSet") => Object::DaemonSet(typed(&doc, &what)),
                _ => panic!("{what}: a kind this test does not check yet; add it"),
            };
            out.push(Manifest {
                optional: file.starts_with("optional/"),
                file: file.clone(),
                object,
            });
        }
    }
    assert!(!out.is_empty(), "no manifests under {}", root.display());
    out
}

/// The one DaemonSet (not optional), with its file.
fn daemonset(all: &[Manifest]) -> (&str, &DaemonSet) {
    let found: Vec<(&str, &DaemonSet)> = all
        .iter()
        .filter(|m| !m.optional)
        .filter_map(|m| match &m.object {
            Object::DaemonSet(d) => Some((m.file.as_str(), d.as_ref())),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "exactly one DaemonSet");
    found[0]
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .template
        .spec
        .as_ref()
        .expect("the DaemonSet has a pod template spec")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let containers = &pod_spec(ds).containers;
    assert_eq!(containers.len(), 1, "one container, the agent");
    &containers[0]
}

/// `--name=value` or `--name value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&eq) {
            Some(v)
        } else if a == name {
            args.get(i + 1).map(String::as_str)
        } else {
            None
        }
    })
}

/// Bytes in a Kubernetes memory quantity ("96Mi", "1G", "134217728").
fn quantity_bytes(q: &str) -> f64 {
    let units: [(&str, f64); 8] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().expect("a number before the unit") * factor;
        }
    }
    q.parse()
        .unwrap_or_else(|_| panic!("not a memory quantity: {q}"))
}

#[test]
fn manifests_are_valid_kubernetes_objects() {
    let all = manifests();
    let names: Vec<String> = all
        .iter()
        .map(|m| {
            let kind = match &m.object {
                Object::Namespace(_) => "Namespace",
                Object::ServiceAccount(_) => "ServiceAccount",
                Object::ClusterRole(_) => "ClusterRole",
                Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
                Object::ConfigMap(_) => "ConfigMap",
                Object::ResourceQuota(_) => "ResourceQuota",
                Object::DaemonSet(_) => "DaemonSet",
            };
            format!("{} ({kind})", m.file)
        })
        .collect();
    eprintln!("parsed without unknown fields: {}", names.join(", "));
    // Every namespaced object lives in a namespace the manifests create.
    let namespaces: BTreeSet<String> = all
        .iter()
        .filter_map(|m| match &m.object {
            Object::Namespace(n) => n.metadata.name.clone(),
            _ => None,
        })
        .collect();
    for m in &all {
        let ns = match &m.object {
            Object::ServiceAccount(o) => &o.metadata.namespace,
            Object::ConfigMap(o) => &o.metadata.namespace,
            Object::ResourceQuota(o) => &o.metadata.namespace,
            Object::DaemonSet(o) => &o.metadata.namespace,
            _ => continue,
        };
        let ns = ns
            .as_deref()
            .unwrap_or_else(|| panic!("{}: no metadata.namespace", m.file));
        assert!(
            namespaces.contains(ns),
            "{}: namespace {ns} is not created by the manifests ({namespaces:?})",
            m.file
        );
    }
}

#[test]
fn round_trip_catches_unknown_fields() {
    // The check itself: a misspelt field and a field of the wrong type must fail.
    let misspelt = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "x", "namespace": "y", "labelz": {"a": "b"}}
    });
    let err = try_typed::<ServiceAccount>(&misspelt).err();
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains(".metadata.labelz")),
        "an unknown field must be rejected by name: {err:?}"
    );
    let wrong_type = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "x"}, "automountServiceAccountToken": "yes"
    });
    assert!(
        try_typed::<ServiceAccount>(&wrong_type).is_err(),
        "a string where a boolean belongs must be rejected"
    );
    let wrong_kind = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}});
    assert!(
        try_typed::<ServiceAccount>(&wrong_kind).is_err(),
        "a document of another kind must be rejected"
    );
}

#[test]
fn daemonset_is_least_privilege() {
    let all = manifests();
    let (file, ds) = daemonset(&all);
    let pod = pod_spec(ds);
    let c = agent_container(ds);
    let sc = c
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{file}: the container has no securityContext"));

    assert_ne!(sc.privileged, Some(true), "{file}: privileged");
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{file}: allowPrivilegeEscalation must be false (no_new_privs)"
    );
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{file}: readOnlyRootFilesystem"
    );
    let caps = sc
        .capabilities
        .as_ref()
        .unwrap_or_else(|| panic!("{file}: no capabilities"));
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_owned()][..]),
        "{file}: capabilities.drop must be [ALL]"
    );
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    let justified: BTreeSet<&str> = JUSTIFIED_CAPABILITIES.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        added, justified,
        "{file}: capabilities.add must be exactly the justified ones {JUSTIFIED_CAPABILITIES:?}"
    );
    // Each one is justified in a comment beside it.
    let text = read(&deploy_dir().join("kubernetes").join(file));
    for cap in &added {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("# {cap}:"))),
            "{file}: capability {cap} has no `# {cap}: why` comment"
        );
    }
    // seccomp: the runtime's default profile (pod or container level), never Unconfined.
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .or_else(|| {
            pod.security_context
                .as_ref()
                .and_then(|p| p.seccomp_profile.as_ref())
        })
        .map(|p| p.type_.as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"), "{file}: seccompProfile");

    // No host namespaces (see the comments in the manifest for why none is needed).
    assert_ne!(pod.host_pid, Some(true), "{file}: hostPID");
    assert_ne!(pod.host_ipc, Some(true), "{file}: hostIPC");
    assert_ne!(pod.host_network, Some(true), "{file}: hostNetwork");

    // Host mounts: only the allowed paths, read-only (recursively where the kubelet can).
    let allowed: BTreeMap<&str, &str> = ALLOWED_HOST_PATHS.iter().copied().collect();
    let writable: BTreeMap<&str, &str> = WRITABLE_HOST_PATHS.iter().copied().collect();
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    for v in volumes {
        if let Some(hp) = &v.host_path {
            assert!(
                allowed.contains_key(hp.path.as_str()),
                "{file}: volume {} mounts host path {}, not in {ALLOWED_HOST_PATHS:?}",
                v.name,
                hp.path
            );
        }
    }
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .unwrap_or_else(|| panic!("{file}: volumeMount {} has no volume", m.name));
        let Some(hp) = &v.host_path else { continue };
        if writable.contains_key(hp.path.as_str()) {
            continue;
        }
        assert_eq!(
            m.read_only,
            Some(true),
            "{file}: host path {} is mounted writable at {}",
            hp.path,
            m.mount_path
        );
        assert!(
            matches!(
                m.recursive_read_only.as_deref(),
                Some("IfPossible" | "Enabled")
            ),
            "{file}: host path {} should be recursively read-only",
            hp.path
        );
        assert_ne!(
            m.mount_propagation.as_deref(),
            Some("Bidirectional"),
            "{file}: {}",
            m.mount_path
        );
    }
}

#[test]
fn daemonset_runs_on_every_node_with_probes_and_resources() {
    let all = manifests();
    let (file, ds) = daemonset(&all);
    let spec = &ds.spec;
    let pod = pod_spec(ds);
    let c = agent_container(ds);
    let args = c.args.clone().unwrap_or_default();

    // Rolling updates with a bound on unavailable agents.
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{file}");
    assert!(
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.as_ref())
            .is_some(),
        "{file}: rollingUpdate.maxUnavailable"
    );

    // Every node: a toleration without key or effect, operator Exists.
    assert!(
        pod.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
        }),
        "{file}: no toleration {{operator: Exists}} for every taint"
    );

    // A priority class that exists.
    let priority = pod
        .priority_class_name
        .as_deref()
        .unwrap_or_else(|| panic!("{file}: priorityClassName"));
    assert!(
        BUILTIN_PRIORITY_CLASSES.contains(&priority),
        "{file}: priority class {priority} is neither built in nor defined here"
    );

    // The node name from the downward API.
    let node_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .unwrap_or_else(|| panic!("{file}: no NODE_NAME env"));
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName"),
        "{file}: NODE_NAME must come from fieldRef spec.nodeName"
    );

    // Health probes on the port the agent is told to listen on.
    let listen = flag(&args, "--health-listen")
        .unwrap_or_else(|| panic!("{file}: no --health-listen in args {args:?}"));
    let listen_port: i32 = listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{file}: --health-listen={listen} has no port"));
    let ports = c.ports.as_deref().unwrap_or_default();
    for (name, probe, path) in [
        ("livenessProbe", &c.liveness_probe, "/healthz"),
        ("readinessProbe", &c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{file}: no {name}.httpGet"));
        assert_eq!(get.path.as_deref(), Some(path), "{file}: {name} path");
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let port = match &get.port {
            IntOrString::Int(n) => *n,
            IntOrString::String(named) => {
                ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(named))
                    .unwrap_or_else(|| panic!("{file}: {name} names port {named}, not declared"))
                    .container_port
            }
        };
        assert_eq!(
            port, listen_port,
            "{file}: {name} port vs --health-listen={listen}"
        );
    }

    // Requests and limits; the memory figures behind them are in docs/deploy.md: about
    // 45-57 MiB resident plus 14 MiB + 1.4 MiB per possible CPU of BPF maps.
    let resources = c
        .resources
        .as_ref()
        .unwrap_or_else(|| panic!("{file}: no resources"));
    let requests = resources.requests.clone().unwrap_or_default();
    let limits = resources.limits.clone().unwrap_or_default();
    for key in ["cpu", "memory"] {
        assert!(requests.contains_key(key), "{file}: requests.{key}");
    }
    let request = quantity_bytes(&requests["memory"].0);
    let limit = quantity_bytes(
        &limits
            .get("memory")
            .unwrap_or_else(|| panic!("{file}: limits.memory"))
            .0,
    );
    assert!(
        request >= 64.0 * 1024.0 * 1024.0,
        "{file}: memory request below the agent's resident size plus maps"
    );
    assert!(limit >= request, "{file}: memory limit below the request");
    assert!(
        limit >= 128.0 * 1024.0 * 1024.0,
        "{file}: memory limit leaves no room for the BPF maps"
    );

    // A stop that leaves time for the final collection.
    assert!(
        pod.termination_grace_period_seconds.unwrap_or(30) >= 10,
        "{file}: terminationGracePeriodSeconds"
    );
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "{file}: args"
    );

    // The image is this version of the agent.
    let image = c.image.as_deref().expect("image");
    let tag = image.rsplit_once(':').map(|(_, t)| t);
    assert_eq!(
        tag,
        Some(env!("CARGO_PKG_VERSION")),
        "{file}: image {image} should be tagged with the workspace version"
    );
}

#[test]
fn service_account_is_bound_only_to_the_kubelet_pod_list() {
    let all = manifests();
    let (file, ds) = daemonset(&all);
    let pod = pod_spec(ds);
    let ns = ds.metadata.namespace.clone().expect("namespace");
    let sa = pod
        .service_account_name
        .clone()
        .unwrap_or_else(|| panic!("{file}: serviceAccountName"));
    assert_ne!(
        pod.automount_service_account_token,
        Some(false),
        "{file}: the kubelet needs the token"
    );
    assert!(
        all.iter()
            .any(|m| matches!(&m.object, Object::ServiceAccount(s)
            if s.metadata.name.as_deref() == Some(sa.as_str())
                && s.metadata.namespace.as_deref() == Some(ns.as_str()))),
        "service account {ns}/{sa} is not defined"
    );
    let roles: BTreeMap<String, (&Manifest, &ClusterRole)> = all
        .iter()
        .filter_map(|m| match &m.object {
            Object::ClusterRole(r) => Some((r.metadata.name.clone()?, (m, r.as_ref()))),
            _ => None,
        })
        .collect();
    // (optional?, apiGroup, resource, verb) granted to the service account.
    let mut granted: BTreeSet<(bool, String, String, String)> = BTreeSet::new();
    for m in &all {
        let Object::ClusterRoleBinding(b) = &m.object else {
            continue;
        };
        let binds_sa = b.subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == sa
                && s.namespace.as_deref() == Some(ns.as_str())
        });
        if !binds_sa {
            continue;
        }
        assert_eq!(b.role_ref.kind, "ClusterRole", "{}", m.file);
        let (role_file, role) = roles
            .get(&b.role_ref.name)
            .unwrap_or_else(|| panic!("{}: ClusterRole {} missing", m.file, b.role_ref.name));
        assert_eq!(
            role_file.optional, m.optional,
            "{}: a binding and its role ship together",
            m.file
        );
        assert!(role.aggregation_rule.is_none(), "{}: aggregation", m.file);
        for rule in role.rules.iter().flatten() {
            assert!(
                rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
                "{}: unexpected rule {rule:?}",
                role_file.file
            );
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        granted.insert((m.optional, group.clone(), resource.clone(), verb.clone()));
                    }
                }
            }
        }
    }
    let expected: BTreeSet<(bool, String, String, String)> = [
        (false, "", "nodes/pods", "get"),
        (true, "", "nodes/proxy", "get"),
    ]
    .into_iter()
    .map(|(o, g, r, v)| (o, g.to_owned(), r.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(
        granted, expected,
        "the service account may only get nodes/pods (and nodes/proxy from optional/)"
    );
}

#[test]
fn kustomization_lists_every_default_manifest() {
    let dir = deploy_dir().join("kubernetes");
    let docs = yaml_documents(&read(&dir.join("kustomization.yaml")), "kustomization.yaml");
    assert_eq!(docs.len(), 1);
    let k = &docs[0];
    assert_eq!(k["kind"], "Kustomization");
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a path").to_owned())
        .collect();
    let present: BTreeSet<String> = yaml_files(&dir)
        .iter()
        .map(|p| p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml" && !f.starts_with("optional/"))
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml resources vs the manifests"
    );
    let all = manifests();
    let (_, ds) = daemonset(&all);
    let image = agent_container(ds).image.clone().expect("image");
    let (name, tag) = image.rsplit_once(':').expect("a tagged image");
    let images = k["images"].as_array().expect("images");
    assert!(
        images
            .iter()
            .any(|i| i["name"] == name && i["newTag"] == tag),
        "kustomization.yaml images should name {name} with tag {tag}"
    );
}

// ── The agent accepts the deployed configuration ────────────────────────────────────────

/// `nodesat check <args>` with no capabilities (as root: an empty bounding set through
/// setpriv, so it loads nothing and mounts nothing), and its output.
fn check_without_privileges(args: &[String], env: &[(&str, &str)]) -> Output {
    let setpriv = Path::new("/usr/bin/setpriv");
    let mut cmd = if nix::unistd::geteuid().is_root() && setpriv.exists() {
        let mut c = Command::new(setpriv);
        c.args(["--bounding-set=-all", "--inh-caps=-all"])
            .arg(agent_bin());
        c
    } else {
        Command::new(agent_bin())
    };
    clear_agent_env(&mut cmd);
    cmd.arg("check").args(args).envs(env.iter().copied());
    let what = format!("{cmd:?}");
    let out = output_within(cmd, COMMAND_TIMEOUT);
    eprintln!(
        "$ {what}\n-> {}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Skips `test` (printing why) when a tool the emulated sandboxes need is missing.
fn sandbox_tools_missing(test: &str) -> bool {
    let tools = ["/usr/bin/setpriv", "/usr/bin/unshare", "/bin/sh"];
    match tools.iter().find(|t| !Path::new(t).exists()) {
        Some(missing) => skip(
            test,
            &format!("{missing} is missing (Debian package util-linux)"),
        ),
        None => false,
    }
}

#[track_caller]
fn assert_accepted(out: &Output, what: &str) {
    let code = out.status.code();
    assert_ne!(code, Some(EX_USAGE), "{what}: configuration rejected");
    assert_ne!(code, Some(2), "{what}: command line rejected");
    assert!(
        code.is_some_and(|c| CHECK_ACCEPTED.contains(&c)),
        "{what}: unexpected exit status {}",
        out.status
    );
}

/// A file with mode 0644 in a 0755 temporary directory (readable by any user).
fn world_readable_file(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let path = dir.path().join(name);
    fs::write(&path, contents).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod file");
    path
}

fn configmap_toml(all: &[Manifest]) -> String {
    all.iter()
        .find_map(|m| match &m.object {
            Object::ConfigMap(c) => c.data.as_ref()?.get("nodesat.toml").cloned(),
            _ => None,
        })
        .expect("a ConfigMap with nodesat.toml")
}

fn toml_keys(text: &str, what: &str) -> BTreeSet<String> {
    let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{what}: {e}"));
    table.keys().cloned().collect()
}

#[test]
fn example_config_is_accepted() {
    let path = deploy_dir().join("nodesat.toml");
    let out = check_without_privileges(&["--config".into(), path.display().to_string()], &[]);
    assert_accepted(&out, "deploy/nodesat.toml");
}

#[test]
fn configmap_config_is_accepted() {
    let all = manifests();
    let text = configmap_toml(&all);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = world_readable_file(&dir, "nodesat.toml", &text);
    let out = check_without_privileges(&["--config".into(), path.display().to_string()], &[]);
    assert_accepted(&out, "the ConfigMap's nodesat.toml");

    // Its commented-out examples (`# key = value`) too, uncommented.
    let uncommented: String = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                rest.split_once("  #").map_or(rest, |(kv, _)| kv).to_owned()
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let examples = toml_keys(&uncommented, "the ConfigMap's examples")
        .difference(&toml_keys(&text, "the ConfigMap's nodesat.toml"))
        .cloned()
        .collect::<Vec<_>>();
    eprintln!("commented-out examples: {examples:?}");
    let path = world_readable_file(&dir, "examples.toml", &uncommented);
    let out = check_without_privileges(&["--config".into(), path.display().to_string()], &[]);
    assert_accepted(
        &out,
        "the ConfigMap's nodesat.toml with its examples uncommented",
    );
}

/// The DaemonSet container's command line on this machine: its args after `run`, with
/// container paths mapped (the host path behind a hostPath mount; `dir`, holding the
/// ConfigMap's files, for the ConfigMap mount; the host's `/` for a directory above host
/// mounts such as `--host-root=/host`), and its env (downward API values stand in as
/// `test-node`).
fn daemonset_local_command_line(
    all: &[Manifest],
    dir: &tempfile::TempDir,
) -> (Vec<String>, Vec<(String, String)>) {
    let (file, ds) = daemonset(all);
    let pod = pod_spec(ds);
    let c = agent_container(ds);
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    // mountPath -> local path.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes.iter().find(|v| v.name == m.name).expect("volume");
        let local = if let Some(hp) = &v.host_path {
            PathBuf::from(&hp.path)
        } else if v.config_map.is_some() {
            world_readable_file(dir, "nodesat.toml", &configmap_toml(all));
            dir.path().to_path_buf()
        } else {
            continue;
        };
        mounts.push((m.mount_path.trim_end_matches('/').to_owned(), local));
    }
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let to_local = |p: &str| -> String {
        for (mount, local) in &mounts {
            if let Some(rest) = p.strip_prefix(mount.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{}{rest}", local.display());
            }
        }
        // A directory above host mounts (--host-root=/host): it stands for the host's /
        // when every mount under it is the same host path.
        let under: Vec<&(String, PathBuf)> = mounts
            .iter()
            .filter(|(m, _)| m.starts_with(&format!("{p}/")))
            .collect();
        if !under.is_empty()
            && under
                .iter()
                .all(|(m, local)| Path::new(&m[p.len()..]) == local.as_path())
        {
            return "/".to_owned();
        }
        panic!("{file}: argument path {p} is not inside any volume mount");
    };
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"), "{file}");
    let args = args[1..]
        .iter()
        .map(|a| match a.split_once('=') {
            Some((name, value)) if value.starts_with('/') => {
                format!("{name}={}", to_local(value))
            }
            _ if a.starts_with('/') => to_local(a),
            _ => a.clone(),
        })
        .collect();
    let env = c
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = e.value.clone().unwrap_or_else(|| "test-node".to_owned());
            (e.name.clone(), value)
        })
        .collect();
    (args, env)
}

/// The DaemonSet's command line, run as `nodesat check`.
#[test]
fn daemonset_command_line_is_accepted() {
    let all = manifests();
    let dir = tempfile::tempdir().expect("tempdir");
    let (args, env) = daemonset_local_command_line(&all, &dir);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = check_without_privileges(&args, &env);
    assert_accepted(&out, &format!("daemonset.yaml: args {args:?}"));
}

/// The status code of `GET path` on `addr`, or `None` when nothing answers.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the agent as the DaemonSet's container would: uid 0 with a bounding set of just the
/// container's added capabilities, no_new_privs, every file system read-only, its command
/// line and ConfigMap (the interval shortened, the health endpoint moved to a free loopback
/// port). It must attach its probes and answer the kubelet's probes: /readyz and /healthz
/// 200 once it has collected.
#[test]
fn agent_runs_with_the_daemonset_privileges() {
    if nodesat_tests::skip_if_unprivileged("agent_runs_with_the_daemonset_privileges") {
        return;
    }
    if sandbox_tools_missing("agent_runs_with_the_daemonset_privileges") {
        return;
    }
    let all = manifests();
    let (file, ds) = daemonset(&all);
    let c = agent_container(ds);
    let caps: Vec<String> = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    let dir = sandbox_dir();
    let (mut args, env) = daemonset_local_command_line(&all, &dir);
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("address").to_string()
    };
    let listen = args
        .iter_mut()
        .find(|a| a.starts_with("--health-listen"))
        .unwrap_or_else(|| panic!("{file}: no --health-listen"));
    *listen = format!("--health-listen={addr}");
    args.extend(["--output", "json", "--interval", "300ms"].map(str::to_owned));
    let bin = sandbox_agent_copy(&dir);

    let mut cmd = Command::new("/usr/bin/unshare");
    cmd.args(["--mount", "/bin/sh", "-c", SANDBOX_SCRIPT, "sandbox"])
        .arg("/usr/bin/setpriv")
        .args([
            format!("--bounding-set=-all,{}", caps.join(",")),
            "--inh-caps=-all".to_owned(),
            "--no-new-privs".to_owned(),
        ])
        .arg(&bin)
        .arg("run")
        .args(&args);
    clear_agent_env(&mut cmd);
    cmd.envs(env);
    let mut agent = Agent::spawn(cmd);
    let ready = agent.wait_ready(Duration::from_secs(20));
    assert_tracepoint_probes_attached(&ready, &caps);
    agent.next_interval(Duration::from_secs(10));
    assert_eq!(http_status(&addr, "/readyz"), Some(200), "GET /readyz");
    assert_eq!(http_status(&addr, "/healthz"), Some(200), "GET /healthz");
    let stopped = agent.stop_and_collect();
    assert!(
        stopped.status.success(),
        "exit status {} on SIGTERM",
        stopped.status
    );
}

// ── systemd unit ───────────────────────────────────────────────────────────────────────

/// A unit file: (section, key) -> values, in order, with systemd's reset on an empty
/// assignment.
struct Unit(BTreeMap<(String, String), Vec<String>>);

impl Unit {
    fn parse(text: &str) -> Unit {
        let mut map: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut section = String::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
                continue;
            }
            if let Some(cont) = line.strip_suffix('\\') {
                pending.push_str(cont);
                pending.push(' ');
                continue;
            }
            let line = std::mem::take(&mut pending) + line;
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {line}"));
            let values = map
                .entry((section.clone(), key.trim().to_owned()))
                .or_default();
            if value.trim().is_empty() {
                values.clear();
            } else {
                values.push(value.trim().to_owned());
            }
        }
        Unit(map)
    }

    fn all(&self, key: &str) -> &[String] {
        self.0
            .get(&("Service".to_owned(), key.to_owned()))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The last value of `[Service] key`.
    fn get(&self, key: &str) -> Option<&str> {
        self.all(key).last().map(String::as_str)
    }

    /// The whitespace-separated words of every `[Service] key` line.
    fn words(&self, key: &str) -> BTreeSet<String> {
        self.all(key)
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_owned))
            .collect()
    }
}

fn unit_path() -> PathBuf {
    deploy_dir().join("systemd/nodesat.service")
}

#[test]
fn unit_is_hardened_without_breaking_the_agent() {
    let unit = Unit::parse(&read(&unit_path()));
    let expect = |key: &str, value: &str| {
        assert_eq!(unit.get(key), Some(value), "nodesat.service: {key}");
    };
    expect("NoNewPrivileges", "yes");
    expect("ProtectSystem", "strict");
    expect("ProtectHome", "yes");
    expect("PrivateTmp", "yes");
    expect("Restart", "on-failure");
    expect("EnvironmentFile", "-/etc/default/nodesat");
    expect(
        "ExecStart",
        "/usr/local/bin/nodesat run --config /etc/nodesat/nodesat.toml",
    );
    expect("LimitMEMLOCK", "infinity");
    assert!(unit.get("MemoryMax").is_some(), "MemoryMax");
    // Non-root: a dynamic user, or a named one that is not root.
    assert!(
        unit.get("DynamicUser") == Some("yes")
            || unit.get("User").is_some_and(|u| u != "root" && u != "0"),
        "the unit should run as a non-root user"
    );
    // Exactly the justified capabilities, ambient and bounding.
    let justified: BTreeSet<String> = JUSTIFIED_CAPABILITIES
        .iter()
        .map(|(c, _)| format!("CAP_{c}"))
        .collect();
    assert_eq!(
        unit.words("CapabilityBoundingSet"),
        justified,
        "CapabilityBoundingSet"
    );
    assert_eq!(
        unit.words("AmbientCapabilities"),
        justified,
        "AmbientCapabilities"
    );
    let families = unit.words("RestrictAddressFamilies");
    let allowed: BTreeSet<String> = ["AF_UNIX", "AF_INET", "AF_INET6"].map(str::to_owned).into();
    assert!(
        !families.is_empty() && families.is_subset(&allowed),
        "RestrictAddressFamilies {families:?} (no AF_NETLINK: nothing attaches XDP or TC)"
    );
    // Exit codes a restart cannot fix.
    let no_restart = unit.words("RestartPreventExitStatus");
    for code in ["64", "69", "77"] {
        assert!(
            no_restart.contains(code),
            "RestartPreventExitStatus lacks {code}"
        );
    }
    // Settings that would break the agent.
    assert_ne!(
        unit.get("PrivateUsers"),
        Some("yes"),
        "capabilities in a user namespace cannot load tracing programs"
    );
    assert!(
        !matches!(
            unit.get("ProtectProc"),
            Some("invisible" | "noaccess" | "ptraceable")
        ),
        "ProtectProc would hide OOM victims' /proc/<pid>/cgroup"
    );
    assert_ne!(
        unit.get("ProcSubset"),
        Some("pid"),
        "ProcSubset=pid hides /proc/stat"
    );
    assert!(
        !matches!(unit.get("ProtectControlGroups"), Some("private" | "strict")),
        "a private cgroup namespace hides the other cgroups"
    );
    assert_ne!(unit.get("PrivateNetwork"), Some("yes"), "the exporter");
    // A system call filter must let bpf(2) and perf_event_open(2) through, last.
    let filters = unit.all("SystemCallFilter");
    if !filters.is_empty() {
        let mut allowed_last: BTreeMap<&str, bool> = BTreeMap::new();
        for line in filters {
            let (deny, list) = match line.strip_prefix('~') {
                Some(rest) => (true, rest),
                None => (false, line.as_str()),
            };
            for word in list.split_whitespace() {
                allowed_last.insert(word, !deny);
                if word == "@privileged" {
                    allowed_last.insert("bpf", !deny);
                }
                if word == "@debug" {
                    allowed_last.insert("perf_event_open", !deny);
                }
            }
        }
        for call in ["bpf", "perf_event_open"] {
            assert_eq!(
                allowed_last.get(call),
                Some(&true),
                "SystemCallFilter must allow {call} (after any group that removes it)"
            );
        }
        expect("SystemCallErrorNumber", "EPERM");
    }
}

#[test]
fn unit_command_line_is_accepted() {
    let unit = Unit::parse(&read(&unit_path()));
    let exec = unit.get("ExecStart").expect("ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words.get(1), Some(&"run"), "ExecStart runs `nodesat run`");
    let example = deploy_dir().join("nodesat.toml");
    let args: Vec<String> = words[2..]
        .iter()
        .map(|w| {
            if *w == "/etc/nodesat/nodesat.toml" {
                example.display().to_string()
            } else {
                (*w).to_owned()
            }
        })
        .collect();
    let out = check_without_privileges(&args, &[]);
    assert_accepted(&out, "the unit's ExecStart");
}

#[test]
fn unit_environment_examples_are_accepted() {
    // deploy/systemd/nodesat.env's commented-out `#NAME=value` lines, all set at once.
    let text = read(&deploy_dir().join("systemd/nodesat.env"));
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(!env.is_empty(), "nodesat.env has examples");
    eprintln!("examples: {env:?}");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let config = deploy_dir().join("nodesat.toml");
    let out = check_without_privileges(&["--config".into(), config.display().to_string()], &env);
    assert_accepted(&out, "deploy/systemd/nodesat.env's examples");
}

/// `systemd-analyze`, or why it cannot be used (then the test skips, or fails with
/// NODESAT_REQUIRE_PRIVILEGED=1).
fn systemd_analyze(test: &str) -> Option<PathBuf> {
    let found = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        skip(
            test,
            "systemd-analyze is not installed (Debian package `systemd`)",
        );
    }
    found
}

/// A copy of the unit in a temporary directory whose ExecStart runs the agent built here
/// (verify checks that the binary exists).
fn unit_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = read(&unit_path()).replace(
        "ExecStart=/usr/local/bin/nodesat ",
        &format!("ExecStart={} ", agent_bin().display()),
    );
    let path = dir.path().join("nodesat.service");
    fs::write(&path, text).expect("write unit");
    (dir, path)
}

fn run_systemd_analyze(bin: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).env("SYSTEMD_LOG_COLOR", "0");
    logged_output_within(cmd, COMMAND_TIMEOUT)
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze("unit_passes_systemd_analyze_verify") else {
        return;
    };
    let (_dir, path) = unit_copy();
    let out = run_systemd_analyze(&analyze, &["verify", &path.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed");
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("nodesat.service"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify warns: {about_unit:?}"
    );
}

#[test]
fn unit_hardening_checks_hold() {
    const TEST: &str = "unit_hardening_checks_hold";
    let Some(analyze) = systemd_analyze(TEST) else {
        return;
    };
    let (_dir, path) = unit_copy();
    let out = run_systemd_analyze(
        &analyze,
        &[
            "security",
            "--offline=yes",
            "--no-pager",
            "--json=short",
            &path.display().to_string(),
        ],
    );
    let Ok(checks) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout) else {
        // systemd < 250 has neither --offline nor --json.
        skip(
            TEST,
            "systemd-analyze security --offline=yes --json=short gave no JSON (systemd < 250?)",
        );
        return;
    };
    let verdict = hardening_verdict(&checks);
    eprintln!(
        "systemd-analyze security: {} checks, {} of the {} the unit must pass were checked, \
         exposure {:.1} (informational: a newer systemd adds checks and so raises it)",
        checks.len(),
        HARDENING_CHECKS_SET.len() - verdict.not_checked.len(),
        HARDENING_CHECKS_SET.len(),
        verdict.exposure
    );
    if !verdict.not_checked.is_empty() {
        eprintln!("not checked by this systemd: {:?}", verdict.not_checked);
    }
    for (name, description) in &verdict.new_unset {
        eprintln!(
            "note: this systemd also checks {name}, which the unit does not set: {description}"
        );
    }
    assert!(
        verdict.not_checked.len() * 2 < HARDENING_CHECKS_SET.len(),
        "systemd-analyze's JSON names fewer than half the checks the unit must pass \
         (its field names changed?): not found {:?}",
        verdict.not_checked
    );
    assert!(
        verdict.lost.is_empty(),
        "hardening lost: systemd-analyze finds these not set: {:?}",
        verdict.lost
    );
}

/// What `systemd-analyze security --json` said about the unit against
/// [`HARDENING_CHECKS_SET`].
struct HardeningVerdict {
    /// Checks the unit must pass that it failed: (name, description).
    lost: Vec<(String, String)>,
    /// Checks the unit must pass that this systemd does not make.
    not_checked: Vec<&'static str>,
    /// Checks not in the list, failed (a newer systemd's, or an accepted exposure).
    new_unset: Vec<(String, String)>,
    /// The sum of the failed checks' exposures, as systemd weighs them.
    exposure: f64,
}

fn hardening_verdict(checks: &[serde_json::Value]) -> HardeningVerdict {
    let field = |c: &serde_json::Value| c["json_field"].as_str().unwrap_or_default().to_owned();
    let named = |c: &serde_json::Value| {
        (
            c["name"].as_str().unwrap_or_default().to_owned(),
            c["description"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let unset = |c: &&serde_json::Value| c["set"] == false;
    let lost = checks
        .iter()
        .filter(unset)
        .filter(|c| HARDENING_CHECKS_SET.contains(&field(c).as_str()))
        .map(named)
        .collect();
    let new_unset = checks
        .iter()
        .filter(unset)
        .filter(|c| {
            let f = field(c);
            !HARDENING_CHECKS_SET.contains(&f.as_str())
                && !ACCEPTED_EXPOSURES.iter().any(|(a, _)| *a == f)
        })
        .map(named)
        .collect();
    let not_checked = HARDENING_CHECKS_SET
        .iter()
        .copied()
        .filter(|f| !checks.iter().any(|c| field(c) == *f))
        .collect();
    let exposure = checks
        .iter()
        .filter_map(|c| c["exposure"].as_str()?.parse::<f64>().ok())
        .sum();
    HardeningVerdict {
        lost,
        not_checked,
        new_unset,
        exposure,
    }
}

#[test]
fn hardening_verdict_names_lost_and_new_checks() {
    let check = |field: &str, set: bool| {
        serde_json::json!({"set": set, "name": format!("{field}="), "json_field": field,
            "description": "d", "exposure": if set { None } else { Some("0.3") }})
    };
    let mut checks: Vec<_> = HARDENING_CHECKS_SET
        .iter()
        .map(|f| check(f, true))
        .collect();
    checks.push(check("PrivateNetwork", false));
    let v = hardening_verdict(&checks);
    assert!(v.lost.is_empty() && v.not_checked.is_empty() && v.new_unset.is_empty());
    assert!((v.exposure - 0.3).abs() < 1e-9);
    // A newer systemd's check that the unit does not set is reported, not lost.
    checks.push(check("ProtectEverything", false));
    assert_eq!(hardening_verdict(&checks).new_unset.len(), 1);
    assert!(hardening_verdict(&checks).lost.is_empty());
    // A setting the unit had, now missing.
    checks[0] = check(HARDENING_CHECKS_SET[0], false);
    assert_eq!(hardening_verdict(&checks).lost.len(), 1);
    // A check this systemd does not make.
    checks.remove(0);
    assert_eq!(
        hardening_verdict(&checks).not_checked,
        [HARDENING_CHECKS_SET[0]]
    );
}

/// Mount namespace set-up approximating the unit's sandbox, then `exec "$@"`: every mount
/// read-only but /dev and /proc (ProtectSystem=strict, ProtectKernelTunables=,
/// ProtectControlGroups=), /proc/sys read-only, /home and /root inaccessible
/// (ProtectHome=yes), a private /tmp and /var/tmp (PrivateTmp=yes).
const SANDBOX_SCRIPT: &str = r#"set -eu
mount --make-rprivate /
awk '{print $5}' /proc/self/mountinfo | while read -r m; do
  case "$m" in /dev|/dev/*|/proc|/proc/*) continue ;; esac
  mount -o remount,bind,ro "$m"
done
mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
for d in /home /root; do [ -d "$d" ] && mount -t tmpfs -o mode=000 tmpfs "$d"; done
mount -t tmpfs -o mode=1777 tmpfs /tmp
[ -d /var/tmp ] && mount -t tmpfs -o mode=1777 tmpfs /var/tmp
if touch /etc/.nodesat-sandbox-probe 2>/dev/null; then echo "sandbox: / is writable" >&2; exit 97; fi
exec "$@"
"#;

/// A directory [`SANDBOX_SCRIPT`] leaves visible (not under /tmp, /home or /root), in /run.
fn sandbox_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nodesat-deploy-test-")
        .tempdir_in("/run")
        .expect("a directory in /run")
}

/// A copy of the agent in `dir` that any user may run.
fn sandbox_agent_copy(dir: &tempfile::TempDir) -> PathBuf {
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bin = dir.path().join("nodesat");
    fs::copy(agent_bin(), &bin).expect("copy the agent");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

/// Runs the agent as the unit would (see [`SANDBOX_SCRIPT`], plus a non-root dynamic uid
/// holding only the unit's ambient capabilities, no_new_privs): it must attach its probes,
/// report, and exit 0 on SIGTERM. systemd is not PID 1 on the test machines, so the unit
/// itself cannot be started; this is the same process environment, bar the seccomp filter
/// (checked against the agent's system calls when the unit was written, see
/// docs/deploy.md) and LimitMEMLOCK= (kernels >= 5.11 ignore it).
#[test]
fn agent_runs_with_the_unit_privileges() {
    if nodesat_tests::skip_if_unprivileged("agent_runs_with_the_unit_privileges") {
        return;
    }
    if sandbox_tools_missing("agent_runs_with_the_unit_privileges") {
        return;
    }
    let unit = Unit::parse(&read(&unit_path()));
    let caps: Vec<String> = unit
        .words("AmbientCapabilities")
        .iter()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    let plus = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let dir = sandbox_dir();
    let bin = sandbox_agent_copy(&dir);
    let config = world_readable_file(
        &dir,
        "nodesat.toml",
        &read(&deploy_dir().join("nodesat.toml")),
    );

    let mut cmd = Command::new("/usr/bin/unshare");
    cmd.args(["--mount", "/bin/sh", "-c", SANDBOX_SCRIPT, "sandbox"])
        .arg("/usr/bin/setpriv")
        .args([
            format!("--reuid={DYNAMIC_UID}"),
            format!("--regid={DYNAMIC_UID}"),
            "--clear-groups".to_owned(),
            format!("--inh-caps=-all,{plus}"),
            format!("--ambient-caps={plus}"),
            format!("--bounding-set=-all,{plus}"),
            "--no-new-privs".to_owned(),
        ])
        .arg(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .args(["--output", "json", "--interval", "300ms"]);
    clear_agent_env(&mut cmd);
    let mut agent = Agent::spawn(cmd);
    let ready = agent.wait_ready(Duration::from_secs(20));
    assert_tracepoint_probes_attached(&ready, &caps);
    let report = agent.next_interval(Duration::from_secs(10));
    assert!(!report.cgroups.is_empty(), "the first report names cgroups");
    let stderr = agent.stderr();
    let stopped = agent.stop_and_collect();
    assert!(
        stopped.status.success(),
        "exit status {} on SIGTERM",
        stopped.status
    );
    assert!(
        stopped.reports.iter().any(|r| r.is_final),
        "a final report on SIGTERM"
    );
    assert!(
        !stderr.contains("Read-only file system"),
        "the agent tried to write: {stderr}"
    );
}

// ── Container image ────────────────────────────────────────────────────────────────────

/// `ARG NAME=value` in the Dockerfile.
fn dockerfile_arg<'a>(dockerfile: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("ARG {name}=");
    dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
}

#[test]
fn dockerfile_matches_the_workspace_toolchain() {
    let dockerfile = read(&deploy_dir().join("Dockerfile"));
    // The Rust version of the workspace.
    let workspace: toml::Table = read(&workspace_root().join("Cargo.toml"))
        .parse()
        .expect("Cargo.toml");
    let rust_version = workspace["workspace"]["package"]["rust-version"]
        .as_str()
        .expect("workspace.package.rust-version");
    assert_eq!(
        dockerfile_arg(&dockerfile, "RUST_VERSION"),
        Some(rust_version),
        "Dockerfile RUST_VERSION vs the workspace's rust-version"
    );
    // The LLVM major of `cargo xtask provision`.
    let provision = read(&workspace_root().join("xtask/src/provision.rs"));
    let llvm = provision
        .lines()
        .find_map(|l| l.trim().strip_prefix("pub const LLVM_MAJOR: u32 = "))
        .and_then(|v| v.strip_suffix(';'))
        .expect("LLVM_MAJOR in xtask/src/provision.rs");
    assert_eq!(
        dockerfile_arg(&dockerfile, "LLVM_MAJOR"),
        Some(llvm),
        "Dockerfile LLVM_MAJOR vs xtask's"
    );
    for needed in ["rust-src", "bpf-linker", "llvm-${LLVM_MAJOR}", "musl-tools"] {
        assert!(
            dockerfile.contains(needed),
            "the Dockerfile installs {needed}"
        );
    }
    // The final stage runs the agent, and exposes the DaemonSet's health port.
    let last_stage = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, s)| s)
        .expect("stages");
    assert!(
        last_stage.contains("ENTRYPOINT [\"/usr/local/bin/nodesat\"]"),
        "final stage entrypoint"
    );
    assert!(last_stage.contains("\nUSER "), "final stage names its user");
    for line in last_stage.lines() {
        if let Some(src) = line.strip_prefix("COPY ")
            && !src.starts_with("--from")
        {
            let src = src.split_whitespace().next().expect("a source");
            assert!(
                workspace_root().join(src).exists(),
                "COPY {src}: not in the repository"
            );
        }
    }
    let all = manifests();
    let (_, ds) = daemonset(&all);
    for port in agent_container(ds).ports.iter().flatten() {
        assert!(
            last_stage.contains(&format!("EXPOSE {}", port.container_port)),
            "the image should EXPOSE {}",
            port.container_port
        );
    }
    // target/ stays out of the build context.
    let ignore = read(&deploy_dir().join("Dockerfile.dockerignore"));
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "target/" || l.trim() == "target")
    );
}

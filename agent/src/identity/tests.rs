//! Identity, resolver and entity-cap tests, and the fixture tests (captured-style layouts under
//! `tests/fixtures/identity/`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{kubelet::PodIndex, *};

pub(crate) fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/identity")
}

pub(crate) fn fixture(name: &str) -> String {
    let p = fixture_dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn index(name: &str) -> PodIndex {
    PodIndex::from_pod_list_json(fixture(name).as_bytes()).unwrap()
}

/// `find <root> -type d` output → paths relative to `root` ("/" for the root itself).
fn tree(name: &str, root: &str) -> Vec<String> {
    fixture(name)
        .lines()
        .filter_map(|l| l.strip_prefix(root))
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        .map(|rest| {
            if rest.is_empty() {
                "/".to_owned()
            } else {
                rest.to_owned()
            }
        })
        .collect()
}

fn find<'a>(paths: &'a [String], needle: &str) -> &'a str {
    let hits: Vec<&String> = paths.iter().filter(|p| p.ends_with(needle)).collect();
    assert_eq!(hits.len(), 1, "{needle}: {hits:?}");
    hits[0]
}

fn kinds(ids: &[Identity]) -> HashMap<Kind, usize> {
    let mut m = HashMap::new();
    for id in ids {
        *m.entry(id.kind).or_default() += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Identity

const UID: &str = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
const UID_: &str = "1a2b3c4d_5e6f_4a7b_8c9d_0e1f2a3b4c5d";
const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";
const SANDBOX: &str = "aaaa5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";

fn pod_path(container: &str) -> String {
    format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{container}.scope"
    )
}

fn one_pod_index() -> PodIndex {
    let json = format!(
        r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{}},"items":[{{"metadata":{{"name":"web-0","namespace":"shop","uid":"{UID}"}},"status":{{"qosClass":"Burstable","containerStatuses":[{{"name":"nginx","containerID":"containerd://{ID}"}}]}}}}]}}"#
    );
    PodIndex::from_pod_list_json(json.as_bytes()).unwrap()
}

#[test]
fn identity_serializes_flat_without_absent_fields() {
    let r = identify(&pod_path(ID), Some(&one_pod_index()));
    assert!(r.complete);
    let json = serde_json::to_value(&r.identity).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "kind": "pod_container",
            "pod_uid": UID,
            "pod": "web-0",
            "namespace": "shop",
            "container": "nginx",
            "container_id": ID,
            "runtime": "containerd",
            "qos": "burstable",
            "path": pod_path(ID),
        })
    );
    let back: Identity = serde_json::from_value(json).unwrap();
    assert_eq!(back, r.identity);

    let unit = serde_json::to_value(Identity::from_path("/system.slice/ssh.service")).unwrap();
    assert_eq!(
        unit,
        serde_json::json!({"kind": "systemd_unit", "unit": "ssh.service", "path": "/system.slice/ssh.service"})
    );
    let other = serde_json::to_value(Identity::other()).unwrap();
    assert_eq!(other, serde_json::json!({"kind": "other"}));
    let crio = serde_json::to_value(Identity::from_path(&format!("/docker/{ID}"))).unwrap();
    assert_eq!(crio["kind"], "container");
    assert_eq!(crio["runtime"], "docker");
    for (k, s) in [
        (Kind::PodContainer, "pod_container"),
        (Kind::Pod, "pod"),
        (Kind::Container, "container"),
        (Kind::SystemdUnit, "systemd_unit"),
        (Kind::Cgroup, "cgroup"),
        (Kind::Other, "other"),
    ] {
        assert_eq!(serde_json::to_value(k).unwrap(), s);
        assert_eq!(k.as_str(), s);
    }
}

#[test]
fn sandbox_is_the_pod_once_the_list_says_so() {
    let pods = one_pod_index();
    // With the list: a container id it does not list is the sandbox.
    let r = identify(&pod_path(SANDBOX), Some(&pods));
    assert_eq!(r.identity.kind, Kind::Pod);
    assert_eq!(r.identity.pod.as_deref(), Some("web-0"));
    assert_eq!(r.identity.container_id, None);
    assert!(!r.complete, "could be a container too new to be listed");
    // Without it, the id is reported as is.
    let r = identify(&pod_path(SANDBOX), None);
    assert_eq!(r.identity.kind, Kind::PodContainer);
    assert_eq!(r.identity.container_id.as_deref(), Some(SANDBOX));
    assert_eq!(r.identity.pod_uid.as_deref(), Some(UID));
    assert_eq!(r.identity.qos, Some(Qos::Burstable));
    assert_eq!(r.identity.pod, None);
    assert!(!r.complete);
    // A pod the list does not have (yet): path only, partial.
    let other = pod_path(ID).replace("1a2b3c4d_", "9a2b3c4d_");
    let r = identify(&other, Some(&pods));
    assert_eq!(r.identity.kind, Kind::PodContainer);
    assert_eq!(r.identity.pod, None);
    assert!(!r.complete);
}

#[test]
fn runtime_comes_from_the_list_when_the_path_does_not_say() {
    let r = identify(
        &format!("/kubepods/burstable/pod{UID}/{ID}"),
        Some(&one_pod_index()),
    );
    assert_eq!(r.identity.kind, Kind::PodContainer);
    assert_eq!(r.identity.container.as_deref(), Some("nginx"));
    assert_eq!(r.identity.runtime, Some(Runtime::Containerd));
    assert!(r.complete);
}

#[test]
fn labels() {
    let pods = one_pod_index();
    let label = |p: &str, idx: Option<&PodIndex>| identify(p, idx).identity.label();
    assert_eq!(label(&pod_path(ID), Some(&pods)), "shop/web-0/nginx");
    assert_eq!(label(&pod_path(SANDBOX), Some(&pods)), "shop/web-0");
    assert_eq!(
        label(&pod_path(ID), None),
        format!("pod:{UID}/containerd:{}", &ID[..12])
    );
    assert_eq!(
        label(&format!("/system.slice/docker-{ID}.scope"), None),
        format!("docker:{}", &ID[..12])
    );
    assert_eq!(label("/system.slice/ssh.service", None), "ssh.service");
    assert_eq!(label("/busy", None), "/busy");
    assert_eq!(Identity::other().label(), "(other)");
}

// ---------------------------------------------------------------------------------------------
// Resolver

#[test]
fn resolver_without_kubelet_goes_by_paths_and_caches() {
    let mut r = Resolver::new(None);
    let id = r.resolve(7, &pod_path(ID)).clone();
    assert_eq!(id.kind, Kind::PodContainer);
    assert_eq!(id.container_id.as_deref(), Some(ID));
    assert!(r.entries[&7].complete, "nothing will ever name it");
    assert_eq!(r.resolve(7, &pod_path(ID)), &id);
    assert_eq!(r.len(), 1);
    // Same id, another path (a new cgroup): resolved again.
    assert_eq!(
        r.resolve(7, "/system.slice/ssh.service").kind,
        Kind::SystemdUnit
    );
    assert_eq!(r.len(), 1);
}

#[test]
fn resolver_names_new_pods_when_the_list_changes() {
    let metadata = PodMetadata::new();
    let mut r = Resolver::new(Some(metadata.clone()));
    let t0 = Instant::now();
    // No list yet: path only, partial.
    let id = r.resolve_at(1, &pod_path(ID), t0).clone();
    assert_eq!((id.kind, id.pod.as_deref()), (Kind::PodContainer, None));
    assert!(!r.entries[&1].complete);
    // The list arrives (generation changes): named at once, not after the TTL.
    metadata.publish(one_pod_index());
    let id = r.resolve_at(1, &pod_path(ID), t0).clone();
    assert_eq!(id.container.as_deref(), Some("nginx"));
    assert!(r.entries[&1].complete);
    // The same list again is no change.
    let generation = metadata.snapshot().generation;
    metadata.publish(one_pod_index());
    assert_eq!(metadata.snapshot().generation, generation);
}

#[test]
fn resolver_retries_partial_entries_after_the_ttl() {
    let metadata = PodMetadata::new();
    metadata.publish(one_pod_index());
    let mut r = Resolver::new(Some(metadata)).with_retry_after(Duration::from_secs(30));
    let t0 = Instant::now();
    r.resolve_at(2, &pod_path(SANDBOX), t0);
    assert!(!r.entries[&2].complete);
    r.resolve_at(2, &pod_path(SANDBOX), t0 + Duration::from_secs(29));
    assert_eq!(r.entries[&2].resolved_at, t0, "within the TTL: cached");
    r.resolve_at(2, &pod_path(SANDBOX), t0 + Duration::from_secs(31));
    assert_eq!(r.entries[&2].resolved_at, t0 + Duration::from_secs(31));
    // Complete entries are never re-resolved by time.
    r.resolve_at(3, &pod_path(ID), t0);
    r.resolve_at(3, &pod_path(ID), t0 + Duration::from_secs(3600));
    assert_eq!(r.entries[&3].resolved_at, t0);
}

#[test]
fn forget_drops_what_is_gone() {
    let mut r = Resolver::new(None);
    for id in 0..10 {
        r.resolve(id, &format!("/c{id}"));
    }
    r.forget([1, 3, 5, 99]);
    let mut left: Vec<u64> = r.entries.keys().copied().collect();
    left.sort();
    assert_eq!(left, [1, 3, 5]);
    r.forget(std::iter::empty());
    assert!(r.is_empty());
}

/// Thousands of short-lived cgroups: resolved, then gone; the cache returns to empty and its
/// table shrinks back.
#[test]
fn identity_cache_churn_stays_bounded() {
    let metadata = PodMetadata::new();
    metadata.publish(one_pod_index());
    let mut r = Resolver::new(Some(metadata));
    for round in 0..4u64 {
        let base = round * 5_000;
        for i in 0..5_000u64 {
            let id = base + i;
            let path = match i % 4 {
                0 => pod_path(&format!("{:064x}", id)),
                1 => format!("/kubepods/besteffort/pod{UID}/{:064x}", id),
                2 => format!("/system.slice/run-r{id:x}.scope"),
                _ => format!("/system.slice/docker-{:064x}.scope", id),
            };
            let identity = r.resolve(id, &path);
            assert_eq!(identity.path.as_deref(), Some(path.as_str()));
        }
        // This round's, and the 10 the last round's forget kept.
        assert_eq!(r.len(), 5_000 + if round == 0 { 0 } else { 10 });
        // The interval's live set: only the last few of this round survive.
        r.forget(base + 4_990..base + 5_000);
        assert_eq!(r.len(), 10);
    }
    r.forget(std::iter::empty());
    assert_eq!(r.len(), 0);
    assert!(r.entries.capacity() <= 1024, "{}", r.entries.capacity());
}

#[test]
fn identity_cache_capacity_evicts_least_recently_used() {
    let mut r = Resolver::new(None).with_capacity(1_000);
    for id in 0..5_000u64 {
        // Keep id 0 in use all along.
        r.resolve(0, "/hot");
        r.resolve(id + 1, &format!("/cold/{id}"));
        assert!(r.len() <= 1_000);
    }
    assert!(r.entries.contains_key(&0), "the hot entry survived");
    assert!(r.entries.contains_key(&5_000), "the newest survived");
    assert!(!r.entries.contains_key(&1), "an old cold one went");
}

// ---------------------------------------------------------------------------------------------
// Entity cap

#[test]
fn cap_keeps_the_worst_and_sums_the_rest() {
    let e = |n: &str, v: u64| (Identity::cgroup(n), v);
    let capped = cap_entities(
        vec![e("/a", 5), e("/b", 50), e("/c", 1), e("/d", 20), e("/e", 7)],
        2,
        |v| *v as f64,
    );
    let kept: Vec<(&str, u64)> = capped
        .kept
        .iter()
        .map(|(i, v)| (i.path.as_deref().unwrap(), *v))
        .collect();
    assert_eq!(kept, [("/b", 50), ("/d", 20)]);
    assert_eq!(capped.other, Some((Identity::other(), 13)));
    assert_eq!(capped.overflow, 3);

    // Nothing left over.
    let capped = cap_entities(vec![e("/a", 1)], 5, |v| *v as f64);
    assert_eq!(
        (capped.kept.len(), capped.other, capped.overflow),
        (1, None, 0)
    );
    // Top 0: everything is "other".
    let capped = cap_entities(vec![e("/a", 1), e("/b", 2)], 0, |v| *v as f64);
    assert_eq!((capped.kept.len(), capped.overflow), (0, 2));
    assert_eq!(capped.other.unwrap().1, 3);
}

#[test]
fn cap_is_generic_stable_and_puts_nan_last() {
    let e = |n: &str, a: f64, b: u64| (Identity::cgroup(n), (a, b));
    let capped = cap_entities(
        vec![
            e("/nan", f64::NAN, 1),
            e("/x", 1.0, 2),
            e("/y", 1.0, 3),
            e("/z", 0.5, 4),
        ],
        2,
        |(a, _)| *a,
    );
    let kept: Vec<&str> = capped
        .kept
        .iter()
        .map(|(i, _)| i.path.as_deref().unwrap())
        .collect();
    assert_eq!(kept, ["/x", "/y"], "ties keep their order");
    let (other_id, (a, b)) = capped.other.unwrap();
    assert_eq!(other_id.kind, Kind::Other);
    assert!(a.is_nan());
    assert_eq!(b, 5);
    assert_eq!(capped.overflow, 2);
}

// ---------------------------------------------------------------------------------------------
// Fixtures: a containerd node with the systemd driver (cgroup v2) and its kubelet pod list.

#[test]
fn fixture_pod_lists_parse() {
    let a = index("kubelet-pods-node-a-containerd.json");
    assert_eq!(a.len(), 7);
    let web = a.pods().find(|p| p.name == "web-7d9c8b6f5-qx2lm").unwrap();
    assert_eq!(web.namespace, "shop");
    assert_eq!(web.qos, Some(Qos::Burstable));
    let names: Vec<(&str, kubelet::ContainerKind)> = web
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.kind))
        .collect();
    assert_eq!(
        names,
        [
            ("nginx", kubelet::ContainerKind::Regular),
            ("log-shipper", kubelet::ContainerKind::Regular),
            ("init-config", kubelet::ContainerKind::Init),
        ]
    );
    let api = a.pods().find(|p| p.name == "api-0").unwrap();
    assert_eq!(api.qos, Some(Qos::Guaranteed));
    assert!(
        api.containers
            .iter()
            .any(|c| c.kind == kubelet::ContainerKind::Ephemeral && c.name == "debugger-x8k2q")
    );
    let etcd = a.pods().find(|p| p.name == "etcd-node-a").unwrap();
    assert_eq!(etcd.uid.len(), 32, "a static pod's UID is its config hash");
    // The pending pod's containers have no id yet.
    let pending = a.pods().find(|p| p.name == "web-7d9c8b6f5-n4wzr").unwrap();
    assert!(pending.containers.is_empty());
    assert!(
        a.pods()
            .flat_map(|p| &p.containers)
            .all(|c| c.runtime == Some(Runtime::Containerd))
    );

    let b = index("kubelet-pods-node-b-crio.json");
    assert_eq!(b.len(), 2);
    assert!(
        b.pods()
            .flat_map(|p| &p.containers)
            .all(|c| c.runtime == Some(Runtime::CriO))
    );
}

#[test]
fn fixture_tree_systemd_containerd_with_kubelet() {
    let pods = index("kubelet-pods-node-a-containerd.json");
    let paths = tree("cgroup-tree-systemd-v2-containerd.txt", "/sys/fs/cgroup");
    assert_eq!(paths[0], "/");
    let ids: Vec<Identity> = paths
        .iter()
        .map(|p| identify(p, Some(&pods)).identity)
        .collect();

    // Every listed container that has a cgroup lands on it, named.
    let mut named = 0;
    for pod in pods.pods() {
        for c in &pod.containers {
            let Some(i) = paths.iter().position(|p| p.contains(&c.id)) else {
                assert_eq!(
                    c.name, "init-config",
                    "only the finished init container is gone"
                );
                continue;
            };
            let id = &ids[i];
            assert_eq!(id.kind, Kind::PodContainer, "{}", paths[i]);
            assert_eq!(id.pod.as_deref(), Some(pod.name.as_str()));
            assert_eq!(id.namespace.as_deref(), Some(pod.namespace.as_str()));
            assert_eq!(id.container.as_deref(), Some(c.name.as_str()));
            assert_eq!(id.container_id.as_deref(), Some(c.id.as_str()));
            assert_eq!(id.pod_uid.as_deref(), Some(pod.uid.as_str()));
            assert_eq!(id.qos, pod.qos);
            assert_eq!(id.runtime, Some(Runtime::Containerd));
            named += 1;
        }
    }
    assert_eq!(named, 8);

    let k = kinds(&ids);
    // 8 named + the 2 scopes (sandbox and container) of a pod the kubelet no longer lists.
    assert_eq!(k[&Kind::PodContainer], 8 + 2);
    // 8 pod slices + 7 sandboxes of listed pods + the pending pod's container the kubelet
    // does not list yet.
    assert_eq!(k[&Kind::Pod], 8 + 7 + 1);
    assert_eq!(k.get(&Kind::Container), None);
    assert_eq!(k[&Kind::SystemdUnit], 20);
    assert_eq!(k[&Kind::Cgroup], 15);
    assert_eq!(ids.len(), 61);

    let unit = |p: &str| ids[paths.iter().position(|x| x == p).unwrap()].unit.clone();
    assert_eq!(
        unit("/system.slice/ssh.service").as_deref(),
        Some("ssh.service")
    );
    assert_eq!(
        unit("/user.slice/user-1000.slice/session-3.scope").as_deref(),
        Some("session-3.scope")
    );
    assert_eq!(
        unit("/system.slice/system-serial\\x2dgetty.slice/serial-getty@ttyS0.service").as_deref(),
        Some("serial-getty@ttyS0.service")
    );
    assert_eq!(unit("/kubepods.slice/kubepods-burstable.slice"), None);

    // The guaranteed pod sits directly under kubepods.slice.
    let api = find(
        &paths,
        "kubepods-pod43d60a4d_d753_46e6_b288_a925ad26b097.slice",
    );
    let api = identify(api, Some(&pods)).identity;
    assert_eq!(
        (api.kind, api.pod.as_deref(), api.qos),
        (Kind::Pod, Some("api-0"), Some(Qos::Guaranteed))
    );
}

#[test]
fn fixture_tree_systemd_containerd_without_kubelet() {
    let paths = tree("cgroup-tree-systemd-v2-containerd.txt", "/sys/fs/cgroup");
    let ids: Vec<Identity> = paths.iter().map(|p| Identity::from_path(p)).collect();
    let k = kinds(&ids);
    // Every scope under a pod (sandboxes too: the path cannot tell) is a pod container.
    let scopes = paths
        .iter()
        .filter(|p| p.contains("/cri-containerd-"))
        .count();
    assert_eq!(scopes, 18);
    assert_eq!(k[&Kind::PodContainer], scopes);
    assert_eq!(k[&Kind::Pod], 8);
    assert!(ids.iter().all(|i| i.pod.is_none() && i.container.is_none()));
    let qos: Vec<Qos> = ids
        .iter()
        .filter(|i| i.kind == Kind::Pod)
        .filter_map(|i| i.qos)
        .collect();
    for q in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
        assert!(qos.contains(&q), "{q:?}");
    }
}

#[test]
fn fixture_tree_systemd_crio_with_kubelet() {
    let pods = index("kubelet-pods-node-b-crio.json");
    let paths = tree("cgroup-tree-systemd-v2-crio.txt", "/sys/fs/cgroup");
    let ids: Vec<Identity> = paths
        .iter()
        .map(|p| identify(p, Some(&pods)).identity)
        .collect();
    let k = kinds(&ids);
    // node-exporter + kube-rbac-proxy + redis.
    assert_eq!(k[&Kind::PodContainer], 3);
    // 2 pod slices + 4 conmon scopes + the cache pod's infra container.
    assert_eq!(k[&Kind::Pod], 2 + 4 + 1);
    for (p, id) in paths.iter().zip(&ids) {
        if p.contains("/crio-conmon-") {
            assert_eq!(id.kind, Kind::Pod, "{p}");
            assert_eq!(id.container_id, None, "conmon is not the container: {p}");
            assert!(id.pod.is_some());
        } else if id.kind == Kind::PodContainer {
            assert_eq!(id.runtime, Some(Runtime::CriO));
            assert!(id.container.is_some() && id.namespace.is_some());
        }
    }
    let redis: Vec<&Identity> = ids
        .iter()
        .filter(|i| i.container.as_deref() == Some("redis"))
        .collect();
    assert_eq!(redis.len(), 1);
    assert_eq!(
        (redis[0].namespace.as_deref(), redis[0].qos),
        (Some("shop"), Some(Qos::Guaranteed))
    );
    assert_eq!(
        ids.iter()
            .find(|i| i.unit.as_deref() == Some("crio.service"))
            .map(|i| i.kind),
        Some(Kind::SystemdUnit)
    );
}

/// cgroupfs driver on a hybrid (v1) node, no kubelet metadata: every controller's hierarchy
/// names the same pods and containers from the path alone.
#[test]
fn fixture_tree_cgroupfs_v1_hybrid_without_kubelet() {
    let all = fixture("cgroup-tree-cgroupfs-v1-hybrid.txt");
    let controllers: Vec<&str> = all
        .lines()
        .filter_map(|l| l.strip_prefix("/sys/fs/cgroup/"))
        .filter(|rest| !rest.contains('/'))
        .collect();
    assert!(controllers.contains(&"cpu,cpuacct") && controllers.contains(&"unified"));
    let mut per_controller = Vec::new();
    for ctl in &controllers {
        let paths = tree(
            "cgroup-tree-cgroupfs-v1-hybrid.txt",
            &format!("/sys/fs/cgroup/{ctl}"),
        );
        let mut ids: Vec<Identity> = paths.iter().map(|p| Identity::from_path(p)).collect();
        ids.sort_by(|a, b| a.path.cmp(&b.path));
        per_controller.push((ctl, ids));
    }
    let (_, cpu) = per_controller
        .iter()
        .find(|(c, _)| **c == "cpu,cpuacct")
        .unwrap();
    let k = kinds(cpu);
    // 3 sandboxes + 4 containers (the path cannot tell a sandbox), 3 pods.
    assert_eq!(k[&Kind::PodContainer], 7);
    assert_eq!(k[&Kind::Pod], 3);
    let pods: Vec<(&str, Qos)> = cpu
        .iter()
        .filter(|i| i.kind == Kind::Pod)
        .map(|i| (i.path.as_deref().unwrap(), i.qos.unwrap()))
        .collect();
    assert!(
        pods.iter()
            .any(|(p, q)| p.starts_with("/kubepods/pod") && *q == Qos::Guaranteed)
    );
    assert!(
        pods.iter()
            .any(|(p, q)| p.starts_with("/kubepods/burstable/") && *q == Qos::Burstable)
    );
    assert!(
        pods.iter()
            .any(|(p, q)| p.starts_with("/kubepods/besteffort/") && *q == Qos::BestEffort)
    );
    assert!(
        cpu.iter()
            .filter(|i| i.kind == Kind::PodContainer)
            .all(|i| i.runtime.is_none() && i.container_id.as_ref().is_some_and(|c| c.len() == 64))
    );
    // Each controller that has the pods has exactly the same identities.
    for (ctl, ids) in &per_controller {
        let pods: Vec<&Identity> = ids.iter().filter(|i| i.pod_uid.is_some()).collect();
        if ["misc", "rdma", "unified"].contains(ctl) {
            assert!(pods.is_empty(), "{ctl}");
        } else {
            let cpu_pods: Vec<&Identity> = cpu.iter().filter(|i| i.pod_uid.is_some()).collect();
            assert_eq!(pods, cpu_pods, "{ctl}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures: /proc/<pid>/cgroup, read through a host root.

const UNIFIED: path::ProcCgroupHierarchy = path::ProcCgroupHierarchy::Unified;
const CPU: path::ProcCgroupHierarchy = path::ProcCgroupHierarchy::Controller("cpu");

fn with_proc(fixture_name: &str, pid: u32) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(format!("proc/{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cgroup"), fixture(fixture_name)).unwrap();
    root
}

#[test]
fn fixture_proc_systemd_v2() {
    let a = index("kubelet-pods-node-a-containerd.json");
    let root = with_proc("proc/systemd-v2-containerd.cgroup", 4242);
    let id = identify_pid(root.path(), 4242, UNIFIED, Some(&a))
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            id.kind,
            id.namespace.as_deref(),
            id.pod.as_deref(),
            id.container.as_deref()
        ),
        (
            Kind::PodContainer,
            Some("shop"),
            Some("web-7d9c8b6f5-qx2lm"),
            Some("nginx")
        )
    );
    let root = with_proc("proc/systemd-v2-containerd-sandbox.cgroup", 4243);
    let id = identify_pid(root.path(), 4243, UNIFIED, Some(&a))
        .unwrap()
        .unwrap();
    assert_eq!(
        (id.kind, id.pod.as_deref()),
        (Kind::Pod, Some("web-7d9c8b6f5-qx2lm"))
    );

    for (f, unit) in [
        ("proc/systemd-v2-ssh.cgroup", "ssh.service"),
        ("proc/systemd-v2-session.cgroup", "session-3.scope"),
    ] {
        let root = with_proc(f, 1);
        let id = identify_pid(root.path(), 1, UNIFIED, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (id.kind, id.unit.as_deref()),
            (Kind::SystemdUnit, Some(unit))
        );
    }
    // No such process under that root.
    assert!(identify_pid(root.path(), 999_999, UNIFIED, None).is_err());
}

#[test]
fn fixture_proc_crio() {
    let b = index("kubelet-pods-node-b-crio.json");
    let text = fixture("proc/systemd-v2-crio.cgroup");
    let path = path::proc_cgroup_v2_path(&text).unwrap();
    let id = identify(path, Some(&b)).identity;
    assert_eq!(
        (id.kind, id.container.as_deref(), id.runtime),
        (Kind::PodContainer, Some("redis"), Some(Runtime::CriO))
    );
    let text = fixture("proc/systemd-v2-crio-conmon.cgroup");
    let id = identify(path::proc_cgroup_v2_path(&text).unwrap(), Some(&b)).identity;
    assert_eq!(
        (id.kind, id.pod.as_deref()),
        (Kind::Pod, Some("cache-6f8d7c5b9-2hj4p"))
    );
}

#[test]
fn fixture_proc_hybrid_cgroupfs_v1() {
    let text = fixture("proc/hybrid-cgroupfs-v1.cgroup");
    assert_eq!(path::parse_proc_cgroup(&text).count(), 14);
    // The unified hierarchy only has the runtime's unit ...
    assert_eq!(
        path::proc_cgroup_v2_path(&text),
        Some("/system.slice/containerd.service")
    );
    // ... the v1 controllers have the pod container.
    let cpu = path::proc_cgroup_controller_path(&text, "cpu").unwrap();
    assert!(cpu.starts_with("/kubepods/burstable/pod"));
    assert_eq!(path::proc_cgroup_controller_path(&text, "rdma"), Some("/"));
    let root = with_proc("proc/hybrid-cgroupfs-v1.cgroup", 77);
    assert_eq!(
        pid_cgroup_path(root.path(), 77, CPU).unwrap().as_deref(),
        Some(cpu)
    );
    let id = identify_pid(root.path(), 77, CPU, None).unwrap().unwrap();
    assert_eq!(
        (id.kind, id.qos),
        (Kind::PodContainer, Some(Qos::Burstable))
    );
}

#[test]
fn fixture_proc_docker() {
    for (f, hierarchy) in [
        ("proc/docker-systemd-v2.cgroup", UNIFIED),
        ("proc/docker-cgroupfs-v1.cgroup", CPU),
    ] {
        let root = with_proc(f, 10);
        let id = identify_pid(root.path(), 10, hierarchy, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (id.kind, id.runtime),
            (Kind::Container, Some(Runtime::Docker)),
            "{f}"
        );
        assert_eq!(id.container_id.as_ref().map(String::len), Some(64));
    }
}

#[test]
fn host_paths() {
    assert_eq!(
        host_path(Path::new("/host"), "/proc/1/cgroup"),
        PathBuf::from("/host/proc/1/cgroup")
    );
    assert_eq!(
        host_path(Path::new("/"), "/sys/fs/cgroup"),
        PathBuf::from("/sys/fs/cgroup")
    );
    assert_eq!(
        proc_cgroup_file(Path::new("/host"), 42),
        PathBuf::from("/host/proc/42/cgroup")
    );
}

// ---------------------------------------------------------------------------------------------
// Captured: layouts a real runtime (runc) made on a hybrid node (see captured/CAPTURED and
// captured/capture.sh).

#[test]
fn captured_runc_cgroupfs_joins_the_unified_hierarchy_at_the_same_path() {
    for case in [
        "cgroupfs-burstable-app",
        "cgroupfs-guaranteed",
        "cgroupfs-besteffort",
        "docker-cgroupfs",
    ] {
        let text = fixture(&format!("captured/{case}.proc-cgroup"));
        let unified = path::proc_cgroup_v2_path(&text).unwrap();
        // Every v1 line names the same cgroup as the unified one: figures keyed by the
        // unified hierarchy land on the container on hybrid nodes with the cgroupfs driver.
        for line in path::parse_proc_cgroup(&text) {
            assert_eq!(line.path, unified, "{case}: {}", line.controllers);
        }
        assert!(path::parse_proc_cgroup(&text).count() > 5, "{case}");
    }
    assert_eq!(
        fixture("captured/tree-unified"),
        fixture("captured/tree-cpu")
    );
}

#[test]
fn captured_runc_cgroupfs_layouts_identify() {
    let pods = index("captured/kubelet-pods.json");
    let tree: Vec<String> = fixture("captured/tree-unified")
        .lines()
        .map(str::to_owned)
        .collect();
    let ids: Vec<Identity> = tree
        .iter()
        .map(|p| identify(p, Some(&pods)).identity)
        .collect();
    let of = |needle: &str| &ids[tree.iter().position(|p| p.ends_with(needle)).unwrap()];

    // The listed pod's app container, named; its sandbox (not in the list) is the pod.
    let app = of("/2b4d6f8a0c1e3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c");
    assert_eq!(
        (
            app.kind,
            app.namespace.as_deref(),
            app.pod.as_deref(),
            app.container.as_deref(),
            app.qos
        ),
        (
            Kind::PodContainer,
            Some("shop"),
            Some("api-5c8d9f7b6-k2x4p"),
            Some("api"),
            Some(Qos::Burstable)
        )
    );
    let sandbox = of("/7e3f1b9c5d2a4e6f8b0c1d3e5f7a9b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a");
    assert_eq!(
        (
            sandbox.kind,
            sandbox.pod.as_deref(),
            sandbox.container.as_deref()
        ),
        (Kind::Pod, Some("api-5c8d9f7b6-k2x4p"), None)
    );
    // Pods the list does not have: uid, QoS and container id from the path alone.
    let g = of("/4c6e8a0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c");
    assert_eq!(
        (g.kind, g.pod_uid.as_deref(), g.qos),
        (
            Kind::PodContainer,
            Some("5f0c6a38-2b7e-4c1d-9a55-0d3e7f21c4b6"),
            Some(Qos::Guaranteed)
        )
    );
    assert_eq!(g.container_id.as_ref().map(String::len), Some(64));
    let be = of("/9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c");
    assert_eq!(
        (be.kind, be.qos),
        (Kind::PodContainer, Some(Qos::BestEffort))
    );
    let docker = of("/0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f");
    assert_eq!(
        (docker.kind, docker.runtime),
        (Kind::Container, Some(Runtime::Docker))
    );
    // QoS and pod-level directories are pods or plain cgroups, never containers.
    assert_eq!(of("/kubepods/besteffort").kind, Kind::Cgroup);
    assert_eq!(
        of("/podc1a7e9d3-5b2f-4e8a-8f6c-3d9b1a7e5c20").kind,
        Kind::Pod
    );
}

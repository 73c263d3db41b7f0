//! Who a cgroup is: a Kubernetes pod container, a pod, a container outside Kubernetes, a
//! systemd unit, or just its path.
//!
//! - [`path`]: what the cgroup path alone says (pure parsing; also `/proc/<pid>/cgroup`);
//! - [`kubelet`]: pod names, namespaces and container names from the node-local kubelet's
//!   `/pods`, polled on a thread of its own into a shared [`PodMetadata`] snapshot;
//! - here: [`Identity`] (what reports carry), [`Resolver`] (a bounded per-cgroup-id cache of
//!   identities, re-resolving partial ones), [`cap_entities`] (top N + "other"), and the
//!   host-root aware reading of `/proc/<pid>/cgroup`.
//!
//! Metadata is never required: without the kubelet, identities carry what the path says (pod
//! UID, QoS, container id and runtime).

// Until the collector and the report use it (then drop this).

pub mod kubelet;
pub mod path;

#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

pub use self::{
    kubelet::{PodIndex, PodMetadata},
    path::{Qos, Runtime},
};

/// What kind of owner a cgroup has, most specific first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An application container of a Kubernetes pod.
    PodContainer,
    /// A pod's own cgroup, its sandbox (pause) container, or CRI-O's conmon for one of its
    /// containers.
    Pod,
    /// A container outside Kubernetes (docker, podman, ...).
    Container,
    /// A systemd service or scope.
    SystemdUnit,
    /// Nothing more specific than the cgroup path.
    Cgroup,
    /// The sum of the entities [`cap_entities`] did not keep.
    Other,
}

impl Kind {
    #[cfg(test)]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PodContainer => "pod_container",
            Kind::Pod => "pod",
            Kind::Container => "container",
            Kind::SystemdUnit => "systemd_unit",
            Kind::Cgroup => "cgroup",
            Kind::Other => "other",
        }
    }
}

/// The identity a report carries for a cgroup: flat optional fields, absent when unknown.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Container name (as in the pod spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
    /// systemd unit (`ssh.service`, `session-3.scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The cgroup path relative to the v2 root (every kind but `other`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Identity {
    fn empty(kind: Kind) -> Identity {
        Identity {
            kind,
            pod_uid: None,
            pod: None,
            namespace: None,
            container: None,
            container_id: None,
            runtime: None,
            qos: None,
            unit: None,
            path: None,
        }
    }

    /// A cgroup whose path is unknown (gone, or not visible).
    pub fn unknown() -> Identity {
        Identity::empty(Kind::Cgroup)
    }

    /// A cgroup known only by its path.
    #[cfg(test)]
    pub fn cgroup(path: &str) -> Identity {
        Identity {
            path: Some(path.to_owned()),
            ..Identity::empty(Kind::Cgroup)
        }
    }

    /// The "other" entity of [`cap_entities`].
    pub fn other() -> Identity {
        Identity::empty(Kind::Other)
    }

    /// What the path alone says (no metadata).
    #[cfg(test)]
    pub fn from_path(path: &str) -> Identity {
        identify(path, None).identity
    }

    /// A short human label for tables: `namespace/pod/container`, `namespace/pod`,
    /// `docker:<id12>`, the unit, or the path (see [`fmt::Display`]).
    pub fn label(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |id: &str| id.get(..12).unwrap_or(id).to_owned();
        let container = || {
            let id = self.container_id.as_deref().map(short).unwrap_or_default();
            match self.runtime {
                Some(r) => format!("{}:{id}", r.as_str()),
                None => id,
            }
        };
        let pod = || match (&self.namespace, &self.pod, &self.pod_uid) {
            (Some(ns), Some(name), _) => format!("{ns}/{name}"),
            (_, _, Some(uid)) => format!("pod:{uid}"),
            _ => "pod:?".to_owned(),
        };
        let path = || self.path.clone().unwrap_or_default();
        match self.kind {
            Kind::PodContainer => match &self.container {
                Some(name) => write!(f, "{}/{name}", pod()),
                None => write!(f, "{}/{}", pod(), container()),
            },
            Kind::Pod => f.write_str(&pod()),
            Kind::Container => f.write_str(&container()),
            Kind::SystemdUnit => f.write_str(self.unit.as_deref().unwrap_or_default()),
            Kind::Cgroup => f.write_str(&path()),
            Kind::Other => f.write_str("(other)"),
        }
    }
}

/// How tables name a cgroup: its path when that is all that is known of it, the workload's
/// label (`namespace/pod/container`, unit, ...) otherwise, `cgroup id N` when it has no path.
pub fn table_label(path: Option<&str>, identity: &Identity, cgroup_id: u64) -> String {
    match (path, identity.kind) {
        (Some(path), Kind::Cgroup) => path.to_owned(),
        (Some(_), _) => identity.label(),
        (None, _) => format!("cgroup id {cgroup_id}"),
    }
}

/// An identity and whether metadata could still change it. A partial one (a pod cgroup with no
/// pod list yet, a pod the list does not have yet, a container id it does not list) is worth
/// resolving again once the list changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub identity: Identity,
    pub complete: bool,
}

/// The identity of the cgroup at `path`, with the kubelet's pod list when there is one.
///
/// Under a pod, a container id the pod list does not list for that pod is the sandbox (pause)
/// container, since the kubelet's `containerStatuses` never list it: the identity is then the
/// pod's. Without a pod list that cannot be told, and the container id is reported as is.
pub fn identify(path: &str, pods: Option<&PodIndex>) -> Resolved {
    let info = path::parse_cgroup_path(path);
    let mut id = Identity::empty(Kind::Cgroup);
    id.path = Some(path.to_owned());

    let Some(pod_ref) = info.pod else {
        if let Some(c) = info.container {
            id.kind = Kind::Container;
            id.container_id = Some(c.id);
            id.runtime = c.runtime;
        } else if let Some(unit) = info.unit {
            id.kind = Kind::SystemdUnit;
            id.unit = Some(unit);
        }
        return Resolved {
            identity: id,
            complete: true,
        };
    };

    id.kind = Kind::Pod;
    id.pod_uid = Some(pod_ref.uid.clone());
    id.qos = Some(pod_ref.qos);
    let meta = pods.and_then(|p| p.pod(&pod_ref.uid));
    if let Some(meta) = meta {
        id.pod = Some(meta.name.clone());
        id.namespace = Some(meta.namespace.clone());
    }
    let container = info.container.filter(|c| !c.conmon);
    let Some(c) = container else {
        // The pod's own cgroup (or conmon): final once the pod is named.
        return Resolved {
            identity: id,
            complete: meta.is_some(),
        };
    };
    match (pods, meta) {
        (Some(_), Some(meta)) => match meta.container(&c.id) {
            Some(cm) => {
                id.kind = Kind::PodContainer;
                id.container = Some(cm.name.clone());
                id.container_id = Some(c.id);
                id.runtime = c.runtime.or(cm.runtime);
                Resolved {
                    identity: id,
                    complete: true,
                }
            }
            // The sandbox, or a container so new the list does not have it yet.
            None => Resolved {
                identity: id,
                complete: false,
            },
        },
        // No list, or a pod it does not have (yet): the container id as is.
        _ => {
            id.kind = Kind::PodContainer;
            id.container_id = Some(c.id);
            id.runtime = c.runtime;
            Resolved {
                identity: id,
                complete: false,
            }
        }
    }
}

struct Entry {
    identity: Identity,
    complete: bool,
    resolved_at: Instant,
    /// The pod list generation it was resolved with.
    generation: u64,
    last_used: u64,
}

/// Caches identities per cgroup id. Complete identities stay until [`Resolver::forget`] drops
/// them or the id's path changes; partial ones are resolved again once the pod list changed or
/// `retry_after` passed. At most `capacity` entries: beyond, the least recently used half goes.
pub struct Resolver {
    metadata: Option<PodMetadata>,
    entries: HashMap<u64, Entry>,
    capacity: usize,
    retry_after: Duration,
    tick: u64,
}

impl Resolver {
    pub const DEFAULT_CAPACITY: usize = 65_536;
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

    /// `metadata`: the kubelet watcher's snapshot, or `None` to go by paths alone.
    pub fn new(metadata: Option<PodMetadata>) -> Resolver {
        Resolver {
            metadata,
            entries: HashMap::new(),
            capacity: Self::DEFAULT_CAPACITY,
            retry_after: Self::DEFAULT_RETRY_AFTER,
            tick: 0,
        }
    }

    /// Caps the cache (at least 16 entries); e.g. a few times `max_cgroups`.
    pub fn with_capacity(mut self, capacity: usize) -> Resolver {
        self.capacity = capacity.max(16);
        self
    }

    /// How long a partial identity is kept before it is resolved again.
    #[cfg(test)]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Resolver {
        self.retry_after = retry_after;
        self
    }

    /// The identity of cgroup `cgroup_id` whose path (relative to the v2 root) is `path`.
    pub fn resolve(&mut self, cgroup_id: u64, path: &str) -> &Identity {
        self.resolve_at(cgroup_id, path, Instant::now())
    }

    fn resolve_at(&mut self, cgroup_id: u64, path: &str, now: Instant) -> &Identity {
        self.tick += 1;
        let snapshot = self.metadata.as_ref().map(PodMetadata::snapshot);
        let (generation, index) = match &snapshot {
            Some(s) => (s.generation, s.index.as_deref()),
            None => (0, None),
        };
        let fresh = self.entries.get(&cgroup_id).is_some_and(|e| {
            e.identity.path.as_deref() == Some(path)
                && (e.complete
                    || (e.generation == generation
                        && now.saturating_duration_since(e.resolved_at) < self.retry_after))
        });
        if !fresh {
            let r = identify(path, index);
            // Without a kubelet at all, what the path says is final.
            let complete = r.complete || self.metadata.is_none();
            if !self.entries.contains_key(&cgroup_id) && self.entries.len() >= self.capacity {
                self.evict();
            }
            self.entries.insert(
                cgroup_id,
                Entry {
                    identity: r.identity,
                    complete,
                    resolved_at: now,
                    generation,
                    last_used: 0,
                },
            );
        }
        let tick = self.tick;
        let entry = self
            .entries
            .get_mut(&cgroup_id)
            .expect("entry was just checked or inserted");
        entry.last_used = tick;
        &entry.identity
    }

    /// Drops the entries of cgroups not in `live` (the ids seen this interval, or all that
    /// exist).
    pub fn forget<I: IntoIterator<Item = u64>>(&mut self, live: I) {
        let live: HashSet<u64> = live.into_iter().collect();
        self.entries.retain(|id, _| live.contains(id));
        if self.entries.capacity() > 4 * self.entries.len().max(64) {
            self.entries.shrink_to_fit();
        }
    }

    /// Entries cached now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the least recently used half of the entries.
    fn evict(&mut self) {
        let mut used: Vec<u64> = self.entries.values().map(|e| e.last_used).collect();
        let mid = used.len() / 2;
        let (_, threshold, _) = used.select_nth_unstable(mid);
        let threshold = *threshold;
        self.entries.retain(|_, e| e.last_used > threshold);
        tracing::debug!(
            left = self.entries.len(),
            "identity cache full: dropped the least recently used half"
        );
    }
}

/// Figures that can be summed into the "other" entity of [`cap_entities`].
pub trait Merge {
    fn merge(&mut self, other: Self);
}

macro_rules! merge_by_add {
    ($($t:ty),*) => {$(
        impl Merge for $t {
            fn merge(&mut self, other: Self) {
                *self += other;
            }
        }
    )*};
}
merge_by_add!(u32, u64, usize, f64);

impl<A: Merge, B: Merge> Merge for (A, B) {
    fn merge(&mut self, other: Self) {
        self.0.merge(other.0);
        self.1.merge(other.1);
    }
}

/// The entities [`cap_entities`] kept, the sum of the others, and how many those were.
#[derive(Clone, Debug, PartialEq)]
pub struct Capped<T> {
    /// The `top` worst, worst first.
    pub kept: Vec<(Identity, T)>,
    /// The rest summed, under [`Identity::other`]; `None` when nothing was left over.
    pub other: Option<(Identity, T)>,
    /// How many entities went into `other`.
    pub overflow: usize,
}

/// Keeps the `top` entities with the highest `badness` (ties: in the given order; NaN counts
/// as the lowest) and sums the rest into one "other" entity.
pub fn cap_entities<T: Merge>(
    mut entities: Vec<(Identity, T)>,
    top: usize,
    badness: impl Fn(&T) -> f64,
) -> Capped<T> {
    let key = |t: &T| {
        let b = badness(t);
        if b.is_nan() { f64::NEG_INFINITY } else { b }
    };
    entities.sort_by(|a, b| key(&b.1).total_cmp(&key(&a.1)));
    let rest = entities.split_off(top.min(entities.len()));
    let overflow = rest.len();
    let other = rest.into_iter().map(|(_, t)| t).reduce(|mut acc, t| {
        acc.merge(t);
        acc
    });
    Capped {
        kept: entities,
        other: other.map(|t| (Identity::other(), t)),
        overflow,
    }
}

/// `abs` (an absolute path on the host) under the host root `root` (`/` outside a container,
/// e.g. `/host` in a pod that mounts the host's `/` there).
pub fn host_path(root: &Path, abs: impl AsRef<Path>) -> PathBuf {
    let abs = abs.as_ref();
    root.join(abs.strip_prefix("/").unwrap_or(abs))
}

/// `<root>/proc/<pid>/cgroup`.
pub fn proc_cgroup_file(root: &Path, pid: u32) -> PathBuf {
    host_path(root, format!("/proc/{pid}/cgroup"))
}

/// Process `pid`'s cgroup path in one hierarchy, read from `<root>/proc/<pid>/cgroup`.
/// `Ok(None)` when the file has no line for it. Paths are relative to the reader's cgroup
/// namespace, so a pod running this must share the host's (the host cgroup namespace).
pub fn pid_cgroup_path(
    root: &Path,
    pid: u32,
    hierarchy: path::ProcCgroupHierarchy,
) -> std::io::Result<Option<String>> {
    let text = std::fs::read_to_string(proc_cgroup_file(root, pid))?;
    Ok(path::proc_cgroup_path_in(&text, hierarchy).map(str::to_owned))
}

/// The identity of process `pid` from its `/proc/<pid>/cgroup` under `root`.
#[cfg(test)]
pub fn identify_pid(
    root: &Path,
    pid: u32,
    hierarchy: path::ProcCgroupHierarchy,
    pods: Option<&PodIndex>,
) -> std::io::Result<Option<Identity>> {
    Ok(pid_cgroup_path(root, pid, hierarchy)?.map(|p| identify(&p, pods).identity))
}

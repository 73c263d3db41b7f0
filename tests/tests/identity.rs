//! Per-pod identity: the agent names a cgroup by the Kubernetes pod and
//! container it belongs to, and keeps its memory bounded however many
//! cgroups come and go.
//!
//! * A CPU hog runs in a kubelet-shaped container cgroup (systemd driver
//!   naming, containerd) of a made-up pod, and a fake kubelet on 127.0.0.1
//!   lists that pod: the agent must report the hog's cgroup as that pod's
//!   container, with its run-queue waits.
//! * The same with the kubelet's cgroupfs driver on a runtime that leaves
//!   the unified hierarchy alone (the hog is in the pod's cgroup in the v1
//!   hierarchies only): with `--cgroup-hierarchy cpu` the programs read the
//!   task's v1 cpu cgroup, and the agent must name the pod's container.
//! * 5,000 short-lived cgroups, each with a process that wakes up once, are
//!   created and removed while the agent runs with `--max-entities 50`, plus
//!   one "lingering" cgroup per report with a spinner that lives for 3
//!   reports (long enough for the agent to name it): every report must keep
//!   to 50 cgroups (the rest summed into `other`, counted in
//!   `entities_overflow`), no report may list a removed cgroup for an
//!   interval that began after it was gone (by name or not), and the
//!   agent's resident memory must not grow by 20 MiB or more.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::ffi::CString;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nodesat_tests::{
    Agent, CgroupDirs, CgroupReport, HttpServer, NestedCgroup, Report, TestProcess, allowed_cpus,
    cgroup::PREFIX, load_bin, skip_if_unprivileged, spawn_in, vm_hwm_kib, vm_rss_kib,
};

/// Longest wait for the agent to attach its probes.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack on top of the interval when waiting for a report.
const REPORT_SLACK: Duration = Duration::from_secs(10);

/// A random number (std's per-instance random hasher keys, mixed with the
/// time), for fresh ids.
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.finish()
}

/// A fresh pod UID: `6e6f6473` ("nods" in ASCII) first, the test process's
/// pid last, random in between, so a leftover cgroup names its test run.
fn fresh_pod_uid() -> String {
    let r = random_u64();
    format!(
        "6e6f6473-{:04x}-4{:03x}-8{:03x}-{:012x}",
        r & 0xffff,
        (r >> 16) & 0xfff,
        (r >> 28) & 0xfff,
        std::process::id()
    )
}

/// A fresh container id: 64 random lowercase hex digits.
fn fresh_container_id() -> String {
    (0..4).map(|_| format!("{:016x}", random_u64())).collect()
}

/// One cgroup entry on one line, for the log.
fn describe(c: &CgroupReport) -> String {
    let rq = &c.runqueue;
    format!(
        "id={} name={:?} kind={:?} pod_uid={:?} pod={:?} namespace={:?} container={:?} \
         container_id={:?} runtime={:?} qos={:?} unit={:?} path={:?} | runqueue: events={} \
         wait={}ns waiting_tasks={:.2} p50={}ns p99={}ns max={}ns",
        c.cgroup_id,
        c.name,
        c.kind,
        c.pod_uid,
        c.pod,
        c.namespace,
        c.container,
        c.container_id,
        c.runtime,
        c.qos,
        c.unit,
        c.path,
        rq.events,
        rq.wait_ns,
        rq.waiting_tasks,
        rq.latency_p50_ns,
        rq.latency_p99_ns,
        rq.latency_max_ns
    )
}

// ---------------------------------------------------------------------------
// Test 1: a hog in a kubelet-shaped cgroup.

/// The made-up pod.
const POD_NAME: &str = "checkout-7f9c";
const POD_NAMESPACE: &str = "shop";
const CONTAINER_NAME: &str = "app";

/// The kubelet's `/pods` answer (a v1 `PodList`, trimmed to what a kubelet
/// always sends) listing the pod `uid` with container `container_id`, and
/// an unrelated pod.
fn pod_list(uid: &str, container_id: &str) -> serde_json::Value {
    let other_uid = fresh_pod_uid();
    let other_id = fresh_container_id();
    serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": [
            {
                "metadata": {
                    "name": POD_NAME,
                    "namespace": POD_NAMESPACE,
                    "uid": uid,
                    "labels": {"app": "checkout"}
                },
                "spec": {
                    "containers": [{
                        "name": CONTAINER_NAME,
                        "image": "ghcr.io/example/checkout:1.0.0",
                        "resources": {"requests": {"cpu": "100m"}}
                    }],
                    "nodeName": "node-a"
                },
                "status": {
                    "phase": "Running",
                    "qosClass": "Burstable",
                    "containerStatuses": [{
                        "name": CONTAINER_NAME,
                        "state": {"running": {"startedAt": "2026-11-26T03:01:12Z"}},
                        "ready": true,
                        "restartCount": 0,
                        "image": "ghcr.io/example/checkout:1.0.0",
                        "containerID": format!("containerd://{container_id}"),
                        "started": true
                    }]
                }
            },
            {
                "metadata": {"name": "web-0", "namespace": "other", "uid": other_uid},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]},
                "status": {
                    "phase": "Running",
                    "qosClass": "BestEffort",
                    "containerStatuses": [{
                        "name": "web",
                        "containerID": format!("containerd://{other_id}")
                    }]
                }
            }
        ]
    })
}

/// The container cgroup and its load. Fields drop in order: processes first.
struct PodWorkload {
    processes: Vec<TestProcess>,
    container: NestedCgroup,
    uid: String,
    container_id: String,
}

impl PodWorkload {
    /// Creates the container cgroup
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`
    /// and starts a hog plus 3 × (online CPUs) spinners in it.
    fn start() -> Self {
        let uid = fresh_pod_uid();
        let container_id = fresh_container_id();
        let path = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/\
             cri-containerd-{container_id}.scope",
            uid.replace('-', "_")
        );
        let container = NestedCgroup::create(&path).expect("create the container cgroup");
        eprintln!(
            "container cgroup {} (id {}); created {:?}",
            container.relative_path(),
            container.id(),
            container.created_dirs().collect::<Vec<_>>()
        );
        // A real node's kubepods.slice (and QoS slices) are left alone.
        let created: Vec<&std::path::Path> = container.created_dirs().collect();
        for dir in container.dirs() {
            let existing: Vec<&std::path::Path> = dir
                .ancestors()
                .skip(1)
                .filter(|a| {
                    a.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("kubepods"))
                        && !created.contains(a)
                })
                .collect();
            if !existing.is_empty() {
                eprintln!("existed already (not to be removed): {existing:?}");
            }
        }
        let mut processes = Vec::new();
        let mut hog = Command::new(load_bin!());
        hog.arg("spin");
        processes.push(spawn_in(&container, hog).expect("spawn the hog"));
        let spinners = 3 * allowed_cpus().len();
        for _ in 0..spinners {
            let mut cmd = Command::new(load_bin!());
            cmd.arg("spin");
            processes.push(spawn_in(&container, cmd).expect("spawn a spinner"));
        }
        eprintln!(
            "workload: hog (pid {}) and {spinners} spinners in the container cgroup",
            processes[0].pid()
        );
        Self {
            processes,
            container,
            uid,
            container_id,
        }
    }

    /// Checks that the hog runs in the container cgroup in every hierarchy.
    fn check_placement(&self) {
        let pid = self.processes[0].pid();
        let text =
            fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/pid/cgroup");
        eprintln!("/proc/{pid}/cgroup:\n{}", text.trim_end());
        let relative = self.container.relative_path();
        let v2 = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a v2 line");
        assert_eq!(v2, relative, "the hog's v2 cgroup");
        for dir in self.container.dirs().skip(1) {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            assert!(
                procs.lines().any(|l| l.trim() == pid.to_string()),
                "the hog (pid {pid}) is in {}",
                dir.display()
            );
        }
    }

    /// The cgroup id of the pod slice (the container cgroup's parent).
    fn pod_slice_id(&self) -> u64 {
        let parent = self
            .container
            .v2_path()
            .parent()
            .expect("the container cgroup has a parent");
        fs::metadata(parent).expect("stat the pod slice").ino()
    }
}

/// Reads up to `max_reports` reports (each also given to `each`) until cgroup `id` is named
/// by a pod; returns its last entry. Panics when no report listed it.
fn until_named(
    agent: &mut Agent,
    id: u64,
    interval: Duration,
    max_reports: usize,
    mut each: impl FnMut(&Report),
) -> CgroupReport {
    let mut found: Option<CgroupReport> = None;
    for n in 1..=max_reports {
        let report = agent.next_interval(interval + REPORT_SLACK);
        each(&report);
        let entry = report.cgroup(id).cloned();
        match &entry {
            Some(e) => eprintln!("report {n}: {}", describe(e)),
            None => eprintln!(
                "report {n}: no entry for id {id}; reported: {:?}",
                report
                    .cgroups
                    .iter()
                    .map(|c| (c.cgroup_id, c.name.as_deref()))
                    .collect::<Vec<_>>()
            ),
        }
        let named = entry.as_ref().is_some_and(|e| e.pod.is_some());
        if entry.is_some() {
            found = entry;
        }
        if named {
            break;
        }
    }
    found.unwrap_or_else(|| panic!("no report listed cgroup {id} in {max_reports} reports"))
}

#[test]
fn hog_in_a_kubelet_shaped_cgroup_is_named_by_pod_and_container() {
    const TEST: &str = "hog_in_a_kubelet_shaped_cgroup_is_named_by_pod_and_container";
    if skip_if_unprivileged(TEST) {
        return;
    }
    /// Reports after the warm-up one in which the hog's cgroup must get its
    /// pod's name (the agent fetches the pod list at start, and again within
    /// a second or two if that failed).
    const MAX_REPORTS: usize = 5;
    let interval = Duration::from_secs(2);
    let started = Instant::now();

    let load = PodWorkload::start();
    load.check_placement();
    let body = serde_json::to_vec(&pod_list(&load.uid, &load.container_id)).expect("JSON");
    let kubelet = HttpServer::serve("/pods", "application/json", body).expect("fake kubelet");
    eprintln!("fake kubelet at {}", kubelet.url());

    // The kubelet named by its address, as other kubelet clients take it: the agent adds
    // /pods (the cgroupfs test below gives the whole URL).
    let base = format!("http://{}", kubelet.addr());
    let mut agent = Agent::start("2s", &["--kubelet-url", &base]);
    agent.wait_ready(READY_TIMEOUT);
    let warm_up = agent.next_interval(interval + REPORT_SLACK);
    assert!(!warm_up.is_final);

    let id = load.container.id();
    let mut pod_slice: Option<CgroupReport> = None;
    let entry = until_named(&mut agent, id, interval, MAX_REPORTS, |report| {
        if let Some(p) = report.cgroup(load.pod_slice_id()) {
            pod_slice = Some(p.clone());
        }
    });
    eprintln!("hog's cgroup: {}", describe(&entry));
    eprintln!("fake kubelet answered {} time(s)", kubelet.served());
    assert!(kubelet.served() >= 1, "the agent fetched the pod list");
    assert!(
        agent.stderr().contains(&format!(
            "reading pod metadata from the kubelet at {}",
            kubelet.url()
        )),
        "the agent said which URL it uses"
    );

    let relative = load.container.relative_path();
    assert_eq!(entry.name.as_deref(), Some(relative.as_str()), "name");
    assert_eq!(entry.kind.as_deref(), Some("pod_container"), "kind");
    assert_eq!(entry.pod.as_deref(), Some(POD_NAME), "pod");
    assert_eq!(entry.namespace.as_deref(), Some(POD_NAMESPACE), "namespace");
    assert_eq!(
        entry.container.as_deref(),
        Some(CONTAINER_NAME),
        "container"
    );
    assert_eq!(
        entry.container_id.as_deref(),
        Some(load.container_id.as_str()),
        "container_id"
    );
    assert_eq!(entry.pod_uid.as_deref(), Some(load.uid.as_str()), "pod_uid");
    assert_eq!(entry.runtime.as_deref(), Some("containerd"), "runtime");
    assert_eq!(entry.qos.as_deref(), Some("burstable"), "qos");
    assert_eq!(entry.path.as_deref(), Some(relative.as_str()), "path");
    assert_eq!(entry.unit, None, "unit");
    assert!(entry.runqueue.events > 0, "run-queue events");
    assert!(entry.runqueue.wait_ns > 0, "run-queue wait");
    assert!(entry.runqueue.waiting_tasks > 0.0, "waiting tasks");

    // The pod slice has no processes of its own, so it shows up only if the
    // agent rolls figures up; if it does, it must be the pod.
    match &pod_slice {
        Some(p) => {
            eprintln!("pod slice: {}", describe(p));
            assert_eq!(p.kind.as_deref(), Some("pod"), "pod slice kind");
            assert_eq!(p.pod.as_deref(), Some(POD_NAME), "pod slice pod");
            assert_eq!(p.namespace.as_deref(), Some(POD_NAMESPACE));
            assert_eq!(p.pod_uid.as_deref(), Some(load.uid.as_str()));
            assert_eq!(p.container, None, "pod slice container");
        }
        None => eprintln!("pod slice (id {}) not reported", load.pod_slice_id()),
    }

    let (status, final_report) = agent.stop();
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    assert!(final_report.is_some(), "a final report after SIGTERM");
    drop(load);
    drop(kubelet);
    eprintln!("{TEST} took {:.1?}", started.elapsed());
}

/// The `cgroup.procs` files of a cgroup's v1 directories only: a process
/// written there stays in its parent's unified (v2) cgroup, as with a runtime
/// that does not join the unified hierarchy.
struct V1Only<'a>(&'a NestedCgroup);

impl CgroupDirs for V1Only<'_> {
    fn procs_files(&self) -> Vec<PathBuf> {
        self.0.procs_files().into_iter().skip(1).collect()
    }

    fn relative_path(&self) -> String {
        self.0.relative_path()
    }
}

#[test]
fn hog_in_a_v1_only_pod_cgroup_is_named_with_the_cpu_hierarchy() {
    const TEST: &str = "hog_in_a_v1_only_pod_cgroup_is_named_with_the_cpu_hierarchy";
    if skip_if_unprivileged(TEST) {
        return;
    }
    const MAX_REPORTS: usize = 5;
    let interval = Duration::from_secs(2);
    let uid = fresh_pod_uid();
    let container_id = fresh_container_id();
    // The kubelet's cgroupfs driver: /kubepods/<qos>/pod<uid>/<container id>.
    let path = format!("kubepods/burstable/pod{uid}/{container_id}");
    let container = NestedCgroup::create(&path).expect("create the container cgroup");
    let Some(v1_cpu) = container.v1_cpu_path() else {
        eprintln!("skipping {TEST}: no v1 cpu hierarchy on this machine (pure cgroup v2)");
        return;
    };
    let v1_id = fs::metadata(v1_cpu).expect("stat the v1 cpu cgroup").ino();
    let mut processes = Vec::new();
    for _ in 0..3 * allowed_cpus().len() + 1 {
        let mut cmd = Command::new(load_bin!());
        cmd.arg("spin");
        processes.push(spawn_in(&V1Only(&container), cmd).expect("spawn a spinner"));
    }
    let pid = processes[0].pid();
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/pid/cgroup");
    eprintln!("/proc/{pid}/cgroup:\n{}", text.trim_end());
    let cpu_line = text
        .lines()
        .find_map(|l| {
            l.split_once(":cpu:")
                .or_else(|| l.split_once(":cpu,cpuacct:"))
        })
        .map(|(_, p)| p)
        .expect("a v1 cpu line");
    assert_eq!(
        cpu_line,
        container.relative_path(),
        "the hog's v1 cpu cgroup"
    );
    let v2_line = text.lines().find_map(|l| l.strip_prefix("0::"));
    assert_ne!(
        v2_line,
        Some(container.relative_path().as_str()),
        "the hog must not be in the container's unified cgroup"
    );

    let body = serde_json::to_vec(&pod_list(&uid, &container_id)).expect("JSON");
    let kubelet = HttpServer::serve("/pods", "application/json", body).expect("fake kubelet");
    let mut agent = Agent::start(
        "2s",
        &["--kubelet-url", &kubelet.url(), "--cgroup-hierarchy", "cpu"],
    );
    agent.wait_ready(READY_TIMEOUT);
    agent.next_interval(interval + REPORT_SLACK);
    let entry = until_named(&mut agent, v1_id, interval, MAX_REPORTS, |_| {});
    assert_eq!(
        entry.name.as_deref(),
        Some(container.relative_path().as_str())
    );
    assert_eq!(entry.kind.as_deref(), Some("pod_container"), "kind");
    assert_eq!(entry.pod.as_deref(), Some(POD_NAME), "pod");
    assert_eq!(entry.namespace.as_deref(), Some(POD_NAMESPACE), "namespace");
    assert_eq!(
        entry.container.as_deref(),
        Some(CONTAINER_NAME),
        "container"
    );
    assert_eq!(entry.container_id.as_deref(), Some(container_id.as_str()));
    assert_eq!(entry.pod_uid.as_deref(), Some(uid.as_str()), "pod_uid");
    assert_eq!(entry.qos.as_deref(), Some("burstable"), "qos");
    // 3 x CPUs + 1 spinners on the CPUs: about that many minus one per CPU wait.
    let expected = (2 * allowed_cpus().len() + 1) as f64;
    assert!(
        (entry.runqueue.waiting_tasks - expected).abs() < 0.25 * expected,
        "waiting tasks {:.2}, expected about {expected}",
        entry.runqueue.waiting_tasks
    );
    let (status, _) = agent.stop();
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    drop(processes);
    drop(container);
}

// ---------------------------------------------------------------------------
// Test 2: churn.

/// Short-lived cgroups created and removed.
const CHURN_CGROUPS: usize = 5000;
/// Created (each with its process) and removed together.
const CHURN_BATCH: usize = 50;
/// One batch starts at most this often, so that the churn spans several of
/// the agent's intervals (on a slow machine it just takes longer).
const CHURN_BATCH_EVERY: Duration = Duration::from_millis(100);
/// Reports a lingering cgroup (one with a spinner) lives for.
const LINGER_REPORTS: usize = 3;
/// The agent's `--max-entities`.
const MAX_ENTITIES: usize = 50;
/// Most the agent's resident memory may grow from ready to the end.
const MAX_RSS_GROWTH_KIB: u64 = 20 * 1024;

/// Wall-clock time, ns since the epoch (what reports' `time_unix_ns` use).
fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time after 1970")
        .as_nanos() as u64
}

/// One cgroup below the churn parent: its directories (v2 first, then v1
/// cpu on hybrid machines). Left-overs are removed with the parent.
struct ChurnCgroup {
    dirs: Vec<PathBuf>,
    procs: Vec<CString>,
    id: u64,
    relative: String,
}

impl ChurnCgroup {
    fn create(parent: &NestedCgroup, name: &str) -> io::Result<Self> {
        let dirs: Vec<PathBuf> = std::iter::once(parent.v2_path())
            .chain(parent.v1_cpu_path())
            .map(|d| d.join(name))
            .collect();
        for dir in &dirs {
            fs::create_dir(dir)
                .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", dir.display())))?;
        }
        let procs = dirs
            .iter()
            .map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(io::Error::other)?;
        Ok(Self {
            id: fs::metadata(&dirs[0])?.ino(),
            relative: format!("{}/{name}", parent.relative_path()),
            dirs,
            procs,
        })
    }

    /// Removes its directories (retrying briefly: rmdir can fail with EBUSY
    /// right after the last process exited); returns when that was done.
    fn remove(self) -> io::Result<u64> {
        for dir in &self.dirs {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(1)),
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("rmdir {}: {e}", dir.display()),
                        ));
                    }
                }
            }
        }
        Ok(unix_ns())
    }
}

impl CgroupDirs for ChurnCgroup {
    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    fn relative_path(&self) -> String {
        self.relative.clone()
    }
}

/// Forked children, SIGKILLed and reaped if not waited for.
struct Children(Vec<libc::pid_t>);

impl Children {
    /// Forks a child that moves itself into `cgroup` (every hierarchy),
    /// spins briefly, sleeps 1 ms (so that it waits on a run queue once
    /// woken) and exits 0 (10 or 11 on failure).
    fn fork_into(&mut self, cgroup: &ChurnCgroup) -> io::Result<()> {
        let procs: Vec<*const libc::c_char> = cgroup.procs.iter().map(|p| p.as_ptr()).collect();
        // SAFETY: after fork the child makes only async-signal-safe system
        // calls (prctl, open, write, close, nanosleep, _exit) on memory
        // allocated before the fork, and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            unsafe { child(&procs) }
        }
        self.0.push(pid);
        Ok(())
    }

    /// Waits for every child; the exit statuses that were not 0.
    fn wait_all(&mut self) -> Vec<(libc::pid_t, i32)> {
        let mut failed = Vec::new();
        for pid in self.0.drain(..) {
            let mut status = 0;
            // SAFETY: waitpid on our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                failed.push((pid, status));
            }
        }
        failed
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: signalling and reaping our own children.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// The forked child's work (see [`Children::fork_into`]).
unsafe fn child(procs: &[*const libc::c_char]) -> ! {
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        for &file in procs {
            let fd = libc::open(file, libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                libc::_exit(10);
            }
            // Writing "0" to cgroup.procs moves the writing process.
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(11);
            }
            libc::close(fd);
        }
        let mut x = 0u64;
        for i in 0..20_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        std::hint::black_box(x);
        let nap = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        libc::nanosleep(&nap, std::ptr::null_mut());
        libc::_exit(0)
    }
}

/// A cgroup with a spinner that lives for [`LINGER_REPORTS`] reports, so
/// that the agent sees it at a rescan and names it before it goes.
struct Lingering {
    /// Dropped (killed) before the cgroup is removed.
    process: Option<TestProcess>,
    cgroup: ChurnCgroup,
    /// Reports received before it started.
    born: usize,
}

/// How one lingering cgroup showed up.
#[derive(Debug, Default)]
struct Sightings {
    born: usize,
    /// Reports (numbered from 1) that listed it, and whether with a name.
    listed: Vec<(usize, bool)>,
}

/// What the reports showed, checked report by report.
#[derive(Default)]
struct ChurnCheck {
    /// `time_unix_ns` of every report so far, in order.
    times: Vec<u64>,
    overflowing: usize,
    max_overflow: usize,
    /// Path of every churn and lingering cgroup, by id.
    paths: HashMap<u64, String>,
    /// When each removed one was gone (wall clock, ns).
    removed_at: HashMap<u64, u64>,
    lingering: HashMap<u64, Sightings>,
    /// Entries of churn cgroups (lingering ones included), with a name and
    /// without.
    named: usize,
    unnamed: usize,
    /// Entries of removed cgroups in reports that began after their removal.
    stale: Vec<String>,
    /// The first entry of a churn cgroup with a name and without (for the
    /// log).
    example_named: Option<CgroupReport>,
    example_unnamed: Option<CgroupReport>,
}

impl ChurnCheck {
    fn reports(&self) -> usize {
        self.times.len()
    }

    /// Checks the cap, and the entries of churn cgroups in `report`.
    fn check(&mut self, report: &Report) {
        self.times.push(report.time_unix_ns);
        let number = self.times.len();
        let n = report.cgroups.len();
        assert!(
            n <= MAX_ENTITIES,
            "report {number} lists {n} cgroups, more than --max-entities {MAX_ENTITIES}"
        );
        if report.entities_overflow > 0 {
            self.overflowing += 1;
            self.max_overflow = self.max_overflow.max(report.entities_overflow);
            assert_eq!(
                n, MAX_ENTITIES,
                "with {} cgroups left over, report {number} keeps the cap",
                report.entities_overflow
            );
            let other = report.other.as_ref().unwrap_or_else(|| {
                panic!(
                    "report {number}: entities_overflow {} but no `other` entry",
                    report.entities_overflow
                )
            });
            assert_eq!(other.kind.as_deref(), Some("other"), "kind of `other`");
            assert_eq!(other.name, None, "name of `other`");
        } else {
            assert!(
                report.other.is_none(),
                "report {number}: `other` without entities_overflow: {:?}",
                report.other
            );
        }
        // Report k counts what happened after the agent read its maps for
        // report k-1, which it did after it made report k-2: a cgroup gone
        // before report k-2 was made had nothing left to count in it.
        let settled = number.checked_sub(3).map(|i| self.times[i]);
        let (named_before, unnamed_before) = (self.named, self.unnamed);
        for c in &report.cgroups {
            let Some(path) = self.paths.get(&c.cgroup_id) else {
                continue;
            };
            match &c.name {
                Some(name) => {
                    self.named += 1;
                    assert_eq!(name, path, "name of churn cgroup {}", c.cgroup_id);
                    self.example_named.get_or_insert_with(|| c.clone());
                }
                None => {
                    self.unnamed += 1;
                    self.example_unnamed.get_or_insert_with(|| c.clone());
                }
            }
            if let Some(sightings) = self.lingering.get_mut(&c.cgroup_id) {
                sightings.listed.push((number, c.name.is_some()));
            }
            let removed = self.removed_at.get(&c.cgroup_id);
            if let (Some(&removed), Some(settled)) = (removed, settled)
                && removed < settled
            {
                self.stale.push(format!(
                    "report {number} (made at {} ns; report {} at {settled} ns) lists {} \
                     removed at {removed} ns",
                    report.time_unix_ns,
                    number - 2,
                    describe(c)
                ));
            }
        }
        eprintln!(
            "report {number}: {n} cgroups (churn ones: {} named, {} unnamed), \
             entities_overflow {}",
            self.named - named_before,
            self.unnamed - unnamed_before,
            report.entities_overflow
        );
    }

    /// How many reports were made after wall-clock time `t` (ns). The third
    /// of them is the first to count only what happened after `t` (see
    /// [`ChurnCheck::check`]).
    fn reports_made_after(&self, t: u64) -> usize {
        self.times.iter().filter(|&&r| r > t).count()
    }
}

/// The agent's resident memory, KiB.
fn rss(pid: u32) -> u64 {
    vm_rss_kib(pid).expect("the agent's VmRSS")
}

#[test]
fn churn_of_5000_cgroups_keeps_memory_bounded() {
    const TEST: &str = "churn_of_5000_cgroups_keeps_memory_bounded";
    if skip_if_unprivileged(TEST) {
        return;
    }
    let interval = Duration::from_secs(1);
    let started = Instant::now();
    let parent = NestedCgroup::create(&format!("{PREFIX}{}-churn", std::process::id()))
        .expect("create the churn parent cgroup");
    eprintln!(
        "churn parent {} (v2 {}, v1 cpu {:?})",
        parent.relative_path(),
        parent.v2_path().display(),
        parent.v1_cpu_path()
    );

    let max_entities = MAX_ENTITIES.to_string();
    let mut agent = Agent::start(
        "1s",
        &["--max-entities", &max_entities, "--kubelet-url", "off"],
    );
    agent.wait_ready(READY_TIMEOUT);
    let pid = agent.pid();
    let rss_ready = rss(pid);
    let mut check = ChurnCheck::default();
    let first = agent.next_interval(interval + REPORT_SLACK);
    check.check(&first);
    let rss_first = rss(pid);
    eprintln!(
        "agent pid {pid}: VmRSS {rss_ready} KiB at ready, {rss_first} KiB after the first report"
    );

    let mut rss_peak = rss_ready.max(rss_first);
    let mut lingering: Vec<Lingering> = Vec::new();
    let mut lingering_started = 0;
    let churn_start = Instant::now();
    for batch in 0..CHURN_CGROUPS / CHURN_BATCH {
        let due = churn_start + CHURN_BATCH_EVERY * batch as u32;
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let cgroups: Vec<ChurnCgroup> = (0..CHURN_BATCH)
            .map(|i| ChurnCgroup::create(&parent, &format!("c{}", batch * CHURN_BATCH + i)))
            .collect::<io::Result<_>>()
            .expect("create churn cgroups");
        let mut children = Children(Vec::new());
        for c in &cgroups {
            check.paths.insert(c.id, c.relative.clone());
            children.fork_into(c).expect("fork a child");
        }
        let failed = children.wait_all();
        assert!(
            failed.is_empty(),
            "children failed (pid, wait status): {failed:?}"
        );
        for c in cgroups {
            let id = c.id;
            let gone = c.remove().expect("remove a churn cgroup");
            check.removed_at.insert(id, gone);
        }
        for report in agent.take_intervals() {
            check.check(&report);
        }
        rss_peak = rss_peak.max(rss(pid));

        // One lingering cgroup starts with each report; each goes after
        // LINGER_REPORTS more.
        let (done, alive): (Vec<_>, Vec<_>) = lingering
            .into_iter()
            .partition(|l| check.reports() >= l.born + LINGER_REPORTS);
        lingering = alive;
        for mut l in done {
            drop(l.process.take());
            let id = l.cgroup.id;
            let gone = l.cgroup.remove().expect("remove a lingering cgroup");
            check.removed_at.insert(id, gone);
            eprintln!(
                "lingering cgroup {id} removed after report {}",
                check.reports()
            );
        }
        if lingering_started < check.reports() {
            let cgroup = ChurnCgroup::create(&parent, &format!("l{lingering_started}"))
                .expect("create a lingering cgroup");
            let mut spin = Command::new(load_bin!());
            spin.arg("spin");
            let process = spawn_in(&cgroup, spin).expect("spawn a lingering spinner");
            check.paths.insert(cgroup.id, cgroup.relative.clone());
            check.lingering.insert(
                cgroup.id,
                Sightings {
                    born: check.reports(),
                    ..Sightings::default()
                },
            );
            lingering.push(Lingering {
                process: Some(process),
                cgroup,
                born: check.reports(),
            });
            lingering_started = check.reports();
        }
    }
    for mut l in lingering.drain(..) {
        drop(l.process.take());
        let id = l.cgroup.id;
        let gone = l.cgroup.remove().expect("remove a lingering cgroup");
        check.removed_at.insert(id, gone);
        eprintln!(
            "lingering cgroup {id} removed after report {} (end of the churn)",
            check.reports()
        );
    }
    let churn_time = churn_start.elapsed();
    let churn_end = unix_ns();
    eprintln!(
        "created and removed {CHURN_CGROUPS} short-lived cgroups (v2{}) in batches of \
         {CHURN_BATCH}, and {} lingering ones, in {churn_time:.1?}",
        if parent.v1_cpu_path().is_some() {
            " and v1 cpu"
        } else {
            ""
        },
        check.lingering.len()
    );
    let remaining = fs::read_dir(parent.v2_path())
        .expect("read the churn parent")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .count();
    assert_eq!(remaining, 0, "churn cgroups left below the parent");

    // Two reports that count only what happened after the churn ended: the
    // third and fourth made after it (see ChurnCheck::check).
    let mut taken = 0;
    while check.reports_made_after(churn_end) < 4 {
        let report = agent.next_interval(interval + REPORT_SLACK);
        taken += 1;
        assert!(taken <= 10, "no 2 reports beginning after the churn in 10");
        check.check(&report);
        rss_peak = rss_peak.max(rss(pid));
    }
    let rss_end = rss(pid);
    let rss_hwm = vm_hwm_kib(pid).expect("the agent's VmHWM");
    rss_peak = rss_peak.max(rss_end);

    let stopped = agent.stop_and_collect();
    assert!(
        stopped.status.success(),
        "agent exit status after SIGTERM: {}",
        stopped.status
    );
    for report in &stopped.reports {
        check.check(report);
    }

    eprintln!(
        "{} reports: {} with entities_overflow > 0 (at most {}); churn cgroups listed {} times \
         with a name, {} without",
        check.reports(),
        check.overflowing,
        check.max_overflow,
        check.named,
        check.unnamed
    );
    for example in [&check.example_named, &check.example_unnamed]
        .into_iter()
        .flatten()
    {
        eprintln!("e.g. {}", describe(example));
    }
    let mut sightings: Vec<(&u64, &Sightings)> = check.lingering.iter().collect();
    sightings.sort_by_key(|(_, s)| s.born);
    for (id, s) in &sightings {
        eprintln!(
            "lingering cgroup {id} (started after report {}): listed (report, named) {:?}",
            s.born, s.listed
        );
    }
    eprintln!(
        "agent VmRSS: ready {rss_ready} KiB, after the first report {rss_first} KiB, \
         peak sampled {rss_peak} KiB, end {rss_end} KiB, VmHWM {rss_hwm} KiB; growth \
         ready->peak {} KiB, ready->end {} KiB (limit {MAX_RSS_GROWTH_KIB} KiB)",
        rss_peak.saturating_sub(rss_ready),
        rss_end.saturating_sub(rss_ready)
    );

    assert!(
        check.overflowing > 0,
        "no report counted entities_overflow while {CHURN_BATCH}-cgroup batches churned"
    );
    assert!(
        check.stale.is_empty(),
        "removed cgroups reported in intervals that began after they were gone \
         ({} with a name):\n{}",
        check
            .stale
            .iter()
            .filter(|s| s.contains("name=Some"))
            .count(),
        check.stale.join("\n")
    );
    assert!(
        sightings
            .iter()
            .any(|(_, s)| s.listed.iter().any(|&(_, named)| named)),
        "no lingering cgroup was ever reported with its name"
    );
    assert!(
        rss_peak.saturating_sub(rss_ready) < MAX_RSS_GROWTH_KIB,
        "the agent's VmRSS grew by {} KiB over the churn (ready {rss_ready} KiB, peak {rss_peak} KiB)",
        rss_peak - rss_ready
    );
    drop(parent);
    eprintln!("{TEST} took {:.1?}", started.elapsed());
}

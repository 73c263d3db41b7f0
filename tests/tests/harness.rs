//! Self-tests of the harness that need no agent: cgroups, processes, the
//! load generator, memory limits, CPU quotas, loop devices and nftables
//! tables.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::panic;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nodesat_tests::{
    DioWriteSummary, LoopDevice, NftTable, TestCgroup, allowed_cpus, block, cpu_controller,
    load_bin, memory_controller, nft_available, output_within, proc_stat_cpu_times, skip,
    skip_if_unprivileged, spawn_in,
};

/// The lines of `/proc/<pid>/cgroup`.
fn proc_cgroup(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

/// CPU time (user + system, in clock ticks) of `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which may contain spaces), from field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn harness_creates_and_cleans_cgroups() {
    if skip_if_unprivileged("harness_creates_and_cleans_cgroups") {
        return;
    }
    let dirs: Vec<PathBuf>;
    let pid;
    {
        let cgroup = TestCgroup::create("harness").expect("create cgroup");
        dirs = cgroup.dirs().map(Into::into).collect();
        eprintln!(
            "cgroup {} id {} dirs {:?}",
            cgroup.relative_path(),
            cgroup.id(),
            dirs
        );
        for dir in &dirs {
            assert!(dir.is_dir(), "{} exists", dir.display());
        }
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(cgroup.v2_path()).unwrap());
        assert_eq!(cgroup.id(), ino);

        let mut spinner = Command::new(load_bin!());
        spinner.arg("spin");
        let mut spinner = spawn_in(&cgroup, spinner).expect("spawn spinner");
        pid = spinner.pid();
        let membership = proc_cgroup(pid);
        eprintln!("/proc/{pid}/cgroup:\n{membership}");
        // Every hierarchy it was created in lists the process.
        assert_eq!(cgroup.pids(), [pid]);
        for procs in cgroup.procs_files() {
            let listed = fs::read_to_string(&procs).unwrap();
            assert_eq!(listed.trim(), pid.to_string(), "{}", procs.display());
        }
        assert!(
            membership
                .lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&cgroup.relative_path())),
            "v2 membership"
        );

        // A second process, added after spawning.
        let mut extra = Command::new(load_bin!());
        extra.args(["sleeper", "--period-ms", "10", "--work-us", "100"]);
        let mut extra = extra.spawn().expect("spawn sleeper");
        cgroup.add_pid(extra.id()).expect("add_pid");
        assert_eq!(cgroup.pids().len(), 2);

        // The spinner burns CPU.
        let before = cpu_ticks(pid);
        thread::sleep(Duration::from_millis(300));
        assert!(cpu_ticks(pid) > before, "spinner uses CPU");
        assert!(spinner.is_running());

        // Dropping the cgroup first must kill the processes still in it.
        drop(cgroup);
        assert!(extra.wait().is_ok());
    }
    for dir in &dirs {
        assert!(!dir.exists(), "{} removed", dir.display());
    }
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "spinner reaped"
    );
}

#[test]
fn harness_cleans_up_when_a_test_panics() {
    if skip_if_unprivileged("harness_cleans_up_when_a_test_panics") {
        return;
    }
    let mut dirs = Vec::new();
    let mut pid = 0;
    let result = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let cgroup = TestCgroup::create("panics").expect("create cgroup");
        dirs = cgroup.dirs().map(PathBuf::from).collect();
        let mut cmd = Command::new(load_bin!());
        cmd.arg("spin");
        let spinner = spawn_in(&cgroup, cmd).expect("spawn");
        pid = spinner.pid();
        panic!("deliberate panic with a spinner in {}", cgroup.name());
    }));
    assert!(result.is_err());
    assert!(!dirs.is_empty());
    for dir in &dirs {
        assert!(!dir.exists(), "{} removed", dir.display());
    }
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "spinner gone"
    );
}

#[test]
fn load_generator_modes() {
    // Sleeper: mostly asleep.
    let mut sleeper = Command::new(load_bin!())
        .args(["sleeper", "--period-ms", "10", "--work-us", "100"])
        .spawn()
        .expect("spawn sleeper");
    let start = Instant::now();
    thread::sleep(Duration::from_millis(500));
    let ticks = cpu_ticks(sleeper.id());
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "sleeper keeps running"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    // 1% duty cycle: well under 10% of the elapsed time (ticks are 10 ms).
    let ticks_elapsed = start.elapsed().as_millis() as u64 / 10;
    assert!(
        ticks * 10 < ticks_elapsed,
        "sleeper used {ticks} ticks in {ticks_elapsed}"
    );

    // Bad arguments: usage error.
    for args in [
        &[][..],
        &["sleeper"],
        &["sleeper", "--period-ms", "x", "--work-us", "1"],
        &["walk"],
        &["tcp-server", "--listen", "127.0.0.1:0", "--rounds", "1"],
        &[
            "tcp-client",
            "--connect",
            "nowhere",
            "--rounds",
            "1",
            "--size",
            "1",
        ],
        &[
            "tcp-client",
            "--connect",
            "127.0.0.1:1",
            "--rounds",
            "1",
            "--size",
            "0",
        ],
        &["alloc"],
        &["alloc", "--mb", "1", "--size", "1"],
        &["spin", "--cpu"],
        &["spin", "--cpu", "x"],
        &["spin", "--period-ms", "1"],
        &["dio-write"],
        &["dio-write", "--path", "/dev/null"],
        &["dio-write", "--seconds", "1"],
        &["dio-write", "--path", "/dev/null", "--seconds", "-1"],
        &[
            "dio-write",
            "--path",
            "/dev/null",
            "--seconds",
            "1",
            "--block",
            "100",
        ],
    ] {
        let mut cmd = Command::new(load_bin!());
        cmd.args(args);
        let out = output_within(cmd, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
    }

    // Run-time errors: exit status 1.
    for args in [
        &[
            "dio-write",
            "--path",
            "/nonexistent/nodesat",
            "--seconds",
            "1",
        ][..],
        &["spin", "--cpu", "100000"],
    ] {
        let mut cmd = Command::new(load_bin!());
        cmd.args(args);
        let out = output_within(cmd, Duration::from_secs(10));
        eprintln!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }

    // spin --cpu pins itself.
    let last = allowed_cpus().last().copied().unwrap_or(0).to_string();
    let mut spinner = Command::new(load_bin!())
        .args(["spin", "--cpu", &last])
        .spawn()
        .expect("spawn spinner");
    let deadline = Instant::now() + Duration::from_secs(5);
    let allowed = loop {
        let allowed = cpus_allowed(spinner.id());
        if allowed == last || Instant::now() >= deadline {
            break allowed;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = spinner.kill();
    let _ = spinner.wait();
    assert_eq!(allowed, last, "spin --cpu {last}: Cpus_allowed_list");
}

/// `Cpus_allowed_list` of `pid` (e.g. `"0-1"`, `"1"`).
fn cpus_allowed(pid: u32) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in status")
}

#[test]
fn load_generator_tcp_and_alloc_modes() {
    // A TCP echo exchange over IPv4 and IPv6 loopback.
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let mut server = Command::new(load_bin!())
            .args(["tcp-server", "--listen", listen, "--rounds", "20", "--size"])
            .arg("3000")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tcp-server");
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the server's line");
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("server printed {line:?}"))
            .to_owned();
        let mut client = Command::new(load_bin!());
        client.args([
            "tcp-client",
            "--connect",
            &addr,
            "--rounds",
            "20",
            "--size",
            "3000",
        ]);
        let out = output_within(client, Duration::from_secs(20));
        assert!(
            out.status.success(),
            "client to {addr}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = server.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = server.kill();
                let _ = server.wait();
                panic!("server on {addr} did not exit after its client");
            }
            thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "server on {addr}: {status}");
    }

    // alloc touches every page before it says so.
    let mut alloc = Command::new(load_bin!())
        .args(["alloc", "--mb", "32"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn alloc");
    let mut line = String::new();
    BufReader::new(alloc.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read alloc's line");
    let rss = rss_kib(alloc.id());
    assert!(alloc.try_wait().unwrap().is_none(), "alloc keeps running");
    let _ = alloc.kill();
    let _ = alloc.wait();
    assert_eq!(line.trim(), "allocated");
    assert!(rss >= 32 * 1024, "alloc --mb 32 has an RSS of {rss} KiB");
}

#[test]
fn memory_limit_gets_alloc_oom_killed() {
    const TEST: &str = "memory_limit_gets_alloc_oom_killed";
    if skip_if_unprivileged(TEST) {
        return;
    }
    if let Err(reason) = memory_controller() {
        skip(TEST, &reason);
        return;
    }
    let cgroup = TestCgroup::create("limited").expect("create cgroup");
    cgroup.set_memory_limit(32 << 20).expect("set memory limit");
    let before = cgroup.memory_oom_kills().expect("read oom_kill counter");
    let mut cmd = Command::new(load_bin!());
    cmd.args(["alloc", "--mb", "128"]);
    let mut alloc = spawn_in(&cgroup, cmd).expect("spawn alloc");
    let status = alloc
        .wait_within(Duration::from_secs(30))
        .expect("wait")
        .expect("alloc OOM-killed within 30 s");
    let after = cgroup.memory_oom_kills().expect("read oom_kill counter");
    eprintln!(
        "alloc in {} (limit 32 MiB): {status}; oom_kill counter {before} -> {after}",
        cgroup.memory_dir().display()
    );
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert_eq!(after - before, 1, "kernel oom_kill counter");
}

#[test]
fn nft_tables_are_deleted_on_drop_and_on_panic() {
    const TEST: &str = "nft_tables_are_deleted_on_drop_and_on_panic";
    if skip_if_unprivileged(TEST) {
        return;
    }
    if let Err(reason) = nft_available() {
        skip(TEST, &reason);
        return;
    }
    let tables = || nodesat_tests::nft::nft(&["list", "tables"], None).expect("nft list tables");
    let name;
    {
        let table = NftTable::create().expect("create table");
        name = table.name().to_owned();
        assert!(tables().contains(&name), "{name} listed");
        table.add_chain("input", "input").expect("add chain");
        // Port 9 (discard) on 127.0.0.2: traffic no one else sends.
        let keep = table
            .add_rule("input", "ip daddr 127.0.0.2 tcp dport 9 counter drop")
            .expect("add rule");
        let gone = table
            .add_rule("input", "tcp sport 9 tcp flags & (syn|ack) == syn|ack drop")
            .expect("add rule");
        assert_ne!(keep, gone);
        // Three SYNs to 127.0.0.2:9, all dropped: the connect times out.
        let _ = std::net::TcpStream::connect_timeout(
            &"127.0.0.2:9".parse().unwrap(),
            Duration::from_millis(1500),
        );
        table.delete_rule("input", gone).expect("delete rule");
        let rules = table.rules("input").expect("list rules");
        eprintln!("{rules:?}");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].handle, keep);
        assert!(
            rules[0].packets.is_some_and(|p| p >= 1),
            "the counter counted the dropped SYNs: {rules:?}"
        );
    }
    assert!(!tables().contains(&name), "{name} deleted on drop");

    let mut name = String::new();
    let result = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let table = NftTable::create().expect("create table");
        name = table.name().to_owned();
        panic!("deliberate panic with table {}", table.name());
    }));
    assert!(result.is_err());
    assert!(!name.is_empty());
    assert!(!tables().contains(&name), "{name} deleted on panic");
}

#[test]
fn cpu_quota_throttles_per_cpu_stat() {
    const TEST: &str = "cpu_quota_throttles_per_cpu_stat";
    if skip_if_unprivileged(TEST) {
        return;
    }
    if let Err(reason) = cpu_controller() {
        skip(TEST, &reason);
        return;
    }
    let cgroup = TestCgroup::create("quota").expect("create cgroup");
    // 20 ms every 100 ms: 20% of one CPU.
    cgroup
        .set_cpu_quota(20_000, 100_000)
        .expect("set cpu quota");
    let mut cmd = Command::new(load_bin!());
    cmd.arg("spin");
    let spinner = spawn_in(&cgroup, cmd).expect("spawn spinner");
    // Let it settle into the quota.
    thread::sleep(Duration::from_millis(300));
    let before = cgroup.cpu_stat().expect("read cpu.stat");
    let ticks_before = cpu_ticks(spinner.pid());
    let start = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let after = cgroup.cpu_stat().expect("read cpu.stat");
    let elapsed = start.elapsed();
    let ticks = cpu_ticks(spinner.pid()) - ticks_before;
    let delta = after.since(&before);
    // Clock ticks are 10 ms.
    let used = Duration::from_millis(ticks * 10);
    eprintln!(
        "{} (cpu.stat in {}): in {elapsed:.2?}: {delta:?}; spinner used {used:?} of CPU",
        cgroup.relative_path(),
        cgroup.cpu_dir().display()
    );
    assert!(
        (15..=25).contains(&delta.periods),
        "~20 periods of 100 ms in 2 s: {delta:?}"
    );
    assert!(
        delta.throttled_periods * 10 >= delta.periods * 9,
        "a spinner with a 20% quota is throttled in (nearly) every period: {delta:?}"
    );
    // Throttled for ~80 ms of every 100 ms period.
    let throttled = Duration::from_nanos(delta.throttled_ns);
    assert!(
        throttled >= elapsed / 2 && throttled <= elapsed,
        "throttled for {throttled:?} of {elapsed:?}"
    );
    assert!(
        used <= elapsed * 3 / 10,
        "a 20% quota let the spinner use {used:?} of {elapsed:?}"
    );
}

#[test]
fn loop_device_is_created_and_cleaned_up() {
    const TEST: &str = "loop_device_is_created_and_cleaned_up";
    if skip_if_unprivileged(TEST) {
        return;
    }
    let (name, backing, dir, initial_cache);
    {
        let device = match LoopDevice::create() {
            Ok(device) => device,
            Err(e) => {
                skip(TEST, &format!("no loop device: {e}"));
                return;
            }
        };
        name = device.name().to_owned();
        backing = device.backing_file().to_path_buf();
        dir = backing.parent().unwrap().to_path_buf();
        eprintln!(
            "{} = {name} ({}), backing {}, direct I/O {}, stat {:?}",
            device.path().display(),
            device.major_minor(),
            backing.display(),
            device.direct_io(),
            device.stat()
        );
        assert!(
            fs::metadata(device.path())
                .is_ok_and(|m| { std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()) }),
            "{} is a block device",
            device.path().display()
        );
        assert_eq!(device.path(), PathBuf::from("/dev").join(&name));
        let (major, minor) = device.major_minor().split_once(':').expect("major:minor");
        assert!(major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok());
        let listed = fs::read_to_string(device.sysfs().join("loop/backing_file")).unwrap();
        assert_eq!(listed.trim(), backing.to_str().unwrap());
        assert_eq!(fs::metadata(&backing).unwrap().len(), block::LOOP_SIZE);
        assert!(
            !block::memory_backed(&backing).unwrap(),
            "backing file on a disk"
        );
        // 256 MiB in 512-byte sectors.
        let sectors = fs::read_to_string(device.sysfs().join("size")).unwrap();
        assert_eq!(sectors.trim(), (block::LOOP_SIZE / 512).to_string());
        let stat = device.stat().expect("read stat");
        assert_eq!(stat.in_flight, 0);
        // The write cache mode is changed, and restored on drop.
        initial_cache = device.write_cache().expect("read write_cache");
        let write_back = initial_cache != "write back";
        device
            .set_write_back_cache(write_back)
            .expect("set write_cache");
        let expected = if write_back {
            "write back"
        } else {
            "write through"
        };
        assert_eq!(device.write_cache().unwrap(), expected);
    }
    // Detached: the loop device has no backing file any more (or another
    // one, if someone attached it meanwhile), and the file is gone.
    let listed = fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"));
    assert!(
        listed
            .as_deref()
            .map_or(true, |l| l.trim() != backing.to_str().unwrap()),
        "{name} detached from {}",
        backing.display()
    );
    assert!(!dir.exists(), "{} removed", dir.display());
    let cache = fs::read_to_string(format!("/sys/block/{name}/queue/write_cache")).unwrap();
    assert_eq!(cache.trim(), initial_cache, "{name}'s write cache restored");

    // Also when the test panics.
    let mut dir = PathBuf::new();
    let result = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let device = LoopDevice::create().expect("create loop device");
        dir = device.backing_file().parent().unwrap().to_path_buf();
        panic!("deliberate panic with {}", device.path().display());
    }));
    assert!(result.is_err());
    assert!(!dir.as_os_str().is_empty());
    assert!(!dir.exists(), "{} removed on panic", dir.display());
}

#[test]
fn dio_write_completes_writes_and_waits_in_iowait() {
    const TEST: &str = "dio_write_completes_writes_and_waits_in_iowait";
    if skip_if_unprivileged(TEST) {
        return;
    }
    // One write request per block, no flushes (see set_write_back_cache).
    let Some(device) = LoopDevice::for_test(TEST, false) else {
        return;
    };
    let cpu = allowed_cpus().last().copied().unwrap_or(0);
    let mut cmd = Command::new(load_bin!());
    cmd.arg("dio-write")
        .arg("--path")
        .arg(device.path())
        .args(["--seconds", "2", "--cpu", &cpu.to_string()])
        .stdout(Stdio::piped());
    let stat_before = device.stat().expect("read stat");
    let times_before = proc_stat_cpu_times().expect("read /proc/stat");
    let start = Instant::now();
    // Dropped in reverse order: the writer, then its cgroup, then the device.
    let cgroup = TestCgroup::create("dio").expect("create cgroup");
    let mut writer = spawn_in(&cgroup, cmd).expect("spawn dio-write");
    let first = writer
        .read_line(Duration::from_secs(10))
        .expect("first line");
    assert_eq!(first, "writing");
    assert_eq!(cpus_allowed(writer.pid()), cpu.to_string(), "pinned");
    let status = writer
        .wait_within(Duration::from_secs(20))
        .expect("wait for dio-write")
        .expect("dio-write exits after 2 s");
    let last = writer.read_line(Duration::from_secs(5)).expect("last line");
    let delta = device.stat().expect("read stat").since(&stat_before);
    let times_after = proc_stat_cpu_times().expect("read /proc/stat");
    let window = start.elapsed();
    let times = times_after[&(cpu as u32)].since(&times_before[&(cpu as u32)]);
    let summary = DioWriteSummary::parse(&last).unwrap_or_else(|| panic!("last line {last:?}"));
    let blocked = Duration::from_nanos(summary.blocked_ns());
    let ms = |ns: u64| Duration::from_nanos(ns).as_millis();
    eprintln!(
        "dio-write on {} pinned to CPU {cpu}: {status}, {summary:?} (blocked {blocked:.2?}); \
         {} delta {delta:?}; CPU {cpu} in {window:.2?}: busy {} ms (user {} ms), \
         idle {} ms, iowait {} ms",
        device.path().display(),
        device.name(),
        ms(times.busy_ns),
        ms(times.user_ns),
        ms(times.idle_ns),
        ms(times.iowait_ns),
    );
    assert!(status.success(), "dio-write: {status}");
    assert!(summary.blocks > 0);
    // Each block is one completed write request of 8 sectors.
    assert_eq!(delta.writes, summary.blocks, "write requests completed");
    assert_eq!(delta.sectors_written, summary.blocks * 8, "sectors written");
    assert_eq!((delta.reads, delta.flushes, delta.in_flight), (0, 0, 0));
    // Synchronous writes: it is blocked nearly all the time.
    assert!(
        summary.blocked_ns() * 10 >= summary.elapsed_ns * 7,
        "dio-write blocked for {blocked:?} of {:?}",
        Duration::from_nanos(summary.elapsed_ns)
    );
    // Whenever its CPU was idle while it was blocked, that was iowait: idle
    // time that was not iowait fits outside its blocked time (20 ms for
    // the 10 ms resolution of two readings). How much idle time there was
    // depends on what else ran there, so iowait itself may be small.
    let not_blocked = window.saturating_sub(blocked);
    assert!(
        Duration::from_nanos(times.idle_ns) <= not_blocked + Duration::from_millis(20),
        "CPU {cpu} was idle without iowait for {} ms, more than the {} ms its writer \
         was not blocked",
        ms(times.idle_ns),
        not_blocked.as_millis()
    );
    if times.idle_ns + times.iowait_ns > not_blocked.as_nanos() as u64 + 20_000_000 {
        assert!(times.iowait_ns > 0, "/proc/stat iowait of CPU {cpu} grew");
    }
}

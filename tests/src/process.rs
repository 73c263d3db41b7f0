//! Child processes for tests: started inside a [`TestCgroup`], killed on drop.

use std::ffi::CString;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::cgroup::CgroupDirs;

/// A child process that is SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct TestProcess {
    child: Child,
    /// Lines of its stdout, read on a thread once [`TestProcess::read_line`]
    /// was first called.
    stdout_lines: Option<Receiver<String>>,
}

impl TestProcess {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits up to `timeout` for it to exit (reaping it); `Ok(None)` if it
    /// still runs then.
    pub fn wait_within(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait()? {
                Some(status) => return Ok(Some(status)),
                None if Instant::now() >= deadline => return Ok(None),
                None => thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Waits up to `timeout` for the next line it prints on stdout (without
    /// the newline). Its stdout must be piped (`cmd.stdout(Stdio::piped())`
    /// before [`spawn_in`]). Errors on timeout and at the end of its output.
    pub fn read_line(&mut self, timeout: Duration) -> io::Result<String> {
        if self.stdout_lines.is_none() {
            let stdout = self.child.stdout.take().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "its stdout is not piped")
            })?;
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            self.stdout_lines = Some(rx);
        }
        let lines = self.stdout_lines.as_ref().expect("set above");
        match lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("pid {} printed no line within {timeout:?}", self.child.id()),
            )),
            Err(RecvTimeoutError::Disconnected) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("pid {} closed its stdout", self.child.id()),
            )),
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        // Fails only if it already exited; wait() then just reaps it.
        let _ = self.child.kill();
        if let Err(e) = self.child.wait() {
            eprintln!("nodesat-tests: reaping pid {}: {e}", self.child.id());
        }
    }
}

/// Spawns `cmd` inside `cgroup` (every hierarchy of it): a
/// [`TestCgroup`](crate::TestCgroup) or a
/// [`NestedCgroup`](crate::NestedCgroup).
///
/// The child moves itself into the cgroup between fork and exec, so none of
/// the program's work runs outside it. The child also gets SIGKILL if the
/// thread that spawned it dies (so a killed test run leaves no load behind).
/// Stdin is `/dev/null` unless `cmd` says otherwise.
pub fn spawn_in<C: CgroupDirs + ?Sized>(cgroup: &C, mut cmd: Command) -> io::Result<TestProcess> {
    let procs_files: Vec<CString> = cgroup
        .procs_files()
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other))
        .collect::<io::Result<_>>()?;
    cmd.stdin(Stdio::null());
    // SAFETY: the closure only makes async-signal-safe system calls
    // (open, write, close, prctl) and does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            for file in &procs_files {
                // Writing "0" to cgroup.procs moves the writing process.
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
            }
            die_with_parent()
        });
    }
    let child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot spawn {cmd:?} in cgroup {}: {e}",
                cgroup.relative_path()
            ),
        )
    })?;
    Ok(TestProcess {
        child,
        stdout_lines: None,
    })
}

/// For use in `pre_exec`: asks for SIGKILL when the spawning thread exits.
pub(crate) fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `cmd` to completion like [`Command::output`], but kills it and panics
/// if it runs longer than `timeout`. Stdin is `/dev/null`.
#[track_caller]
pub fn output_within(cmd: Command, timeout: Duration) -> Output {
    try_output_within(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`output_within`], and prints the command and what it wrote, for the
/// test's log.
#[track_caller]
pub fn logged_output_within(cmd: Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let out = output_within(cmd, timeout);
    eprintln!(
        "$ {what}\n-> {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Like [`output_within`], but returns an error instead of panicking when
/// `cmd` cannot be started or runs longer than `timeout` (it is then killed
/// and reaped). For use where panicking is not an option, e.g. in `Drop`.
pub fn try_output_within(mut cmd: Command, timeout: Duration) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {cmd:?}: {e}")))?;
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = stderr.join().unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{cmd:?} still running after {timeout:?}; killed it. stderr:\n{}",
                        String::from_utf8_lossy(&stderr)
                    ),
                ));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    e.kind(),
                    format!("waiting for {cmd:?}: {e}"),
                ));
            }
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Reads `pipe` to its end on a thread.
pub(crate) fn read_in_background(
    pipe: Option<impl Read + Send + 'static>,
) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// A field of `/proc/<pid>/status` given in kB (e.g. `"VmRSS"`, `"VmHWM"`),
/// in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {path}: {e}")))?;
    text.lines()
        .find_map(|line| {
            let value = line.strip_prefix(field)?.strip_prefix(':')?;
            value.trim().strip_suffix("kB")?.trim().parse().ok()
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no `{field}: N kB` line in {path}"),
            )
        })
}

/// The resident set size of process `pid` (`VmRSS`), in KiB.
pub fn vm_rss_kib(pid: u32) -> io::Result<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// The largest resident set size process `pid` had so far (`VmHWM`, its
/// high-water mark), in KiB.
pub fn vm_hwm_kib(pid: u32) -> io::Result<u64> {
    proc_status_kib(pid, "VmHWM")
}

/// A sysctl set while this lives, restored on drop (left alone when it already had the value).
pub struct Sysctl {
    path: &'static str,
    old: Option<String>,
}

impl Sysctl {
    pub fn set(path: &'static str, value: &str) -> Result<Sysctl, String> {
        let old = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        if old.trim() != value {
            std::fs::write(path, value).map_err(|e| format!("writing {value} to {path}: {e}"))?;
            return Ok(Sysctl {
                path,
                old: Some(old.trim().to_owned()),
            });
        }
        Ok(Sysctl { path, old: None })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Some(old) = &self.old
            && let Err(e) = std::fs::write(self.path, old)
        {
            eprintln!("warning: restoring {} to {old}: {e}", self.path);
        }
    }
}

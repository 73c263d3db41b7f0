//! `nodesat-load`: load generators for the integration tests.
//!
//! ```text
//! nodesat-load spin [--cpu N]                         busy loop forever (on CPU N)
//! nodesat-load sleeper --period-ms N --work-us M      every N ms, ~M µs of work, then sleep
//! nodesat-load thread-churn --seconds S               S seconds of short-lived thread pairs
//!                                                     handing a token back and forth, then
//!                                                     exiting; prints `pairs <n>`
//! nodesat-load tcp-server --listen ADDR --rounds N --size B
//!                                                     accept one connection, N rounds of
//!                                                     read B bytes / write B bytes back
//! nodesat-load tcp-client --connect ADDR --rounds N --size B
//!                                                     N rounds of write B bytes / read B bytes
//! nodesat-load alloc --mb N [--oom-score-adj A] [--threads T]
//!                                                   touch N MiB (split over T threads
//!                                                   touching at once), then sleep forever
//! nodesat-load dio-write --path P --seconds S [--block B] [--cpu N]
//!                                                     for S seconds, write B-byte blocks
//!                                                     (default 4096) to P sequentially with
//!                                                     O_DIRECT|O_DSYNC, wrapping at its size
//! nodesat-load uring-read --path P --seconds S [--block B] [--cpu N]
//!                                                     the same, reading with O_DIRECT through
//!                                                     io_uring, one request at a time, each
//!                                                     waited for in io_uring_enter
//! nodesat-load read-loop --path P                     read P through the page cache (1 MiB
//!                                                     at a time) from start to end, again and
//!                                                     again, forever
//! ```
//!
//! `--cpu N` pins the process to CPU `N` (`sched_setaffinity`) before it
//! starts working.
//!
//! `spin`, `sleeper` and `alloc` run until killed; the TCP modes exit 0 after
//! their rounds and `dio-write` after its time (1 on an I/O error).
//! `tcp-server` prints `listening <addr>` (the address it is bound to, so
//! `ADDR` may have port 0) on stdout once it listens, and exits after the
//! client closed its side. `alloc` prints
//! `allocated` once every page is touched (when its cgroup lets it get there).
//! `dio-write` prints `writing` once its first block is written and, at the
//! end, `wrote <n> blocks elapsed_ns <e> run_ns <r> runqueue_ns <q>`: the time
//! it spent writing, and of that the time it ran on a CPU and waited on a run
//! queue (from `/proc/self/schedstat`; both 0 without one), so the rest is
//! the time it was blocked. Every write is synchronous (one at a time, each
//! waited for), so it spends nearly all its time blocked on I/O. Both also
//! print `blkio_delay_ns <b>`, their block I/O delay from delay accounting
//! (accounted while `kernel.task_delayacct` is 1). `uring-read` prints
//! `reading` and `read <n> blocks ...` the same way; it waits for each
//! completion in io_uring's interruptible sleep with `in_iowait` set.

use std::alloc::{self, Layout};
use std::fs::OpenOptions;
use std::hint::black_box;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: nodesat-load spin [--cpu N]
       nodesat-load sleeper --period-ms N --work-us M
       nodesat-load thread-churn --seconds S
       nodesat-load tcp-server --listen ADDR --rounds N --size B
       nodesat-load tcp-client --connect ADDR --rounds N --size B
       nodesat-load alloc --mb N [--oom-score-adj A] [--threads T]
       nodesat-load dio-write --path P --seconds S [--block B] [--cpu N]
       nodesat-load uring-read --path P --seconds S [--block B] [--cpu N]";

/// Page size assumed by `alloc` (touching one byte per 4 KiB touches every
/// page on any page size of at least 4 KiB).
const PAGE: usize = 4096;

/// Alignment of `dio-write`'s buffer (enough for `O_DIRECT` on any device
/// with logical blocks of up to 4 KiB).
const DIO_ALIGN: usize = 4096;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args[..] {
        ["spin", ref options @ ..] => match spin_options(options) {
            Ok(cpu) => pin(cpu).and_then(|()| spin()),
            Err(e) => return usage_error(&e),
        },
        ["sleeper", ref options @ ..] => match sleeper_options(options) {
            Ok((period, work)) => sleeper(period, work),
            Err(e) => return usage_error(&e),
        },
        ["thread-churn", ref options @ ..] => {
            match self::options(options, &["--seconds"])
                .and_then(|p| required::<u64>(&p, "--seconds"))
            {
                Ok(s) => thread_churn(Duration::from_secs(s)),
                Err(e) => return usage_error(&e),
            }
        }
        ["tcp-server", ref options @ ..] => match tcp_options(options, "--listen") {
            Ok(o) => tcp_server(&o),
            Err(e) => return usage_error(&e),
        },
        ["tcp-client", ref options @ ..] => match tcp_options(options, "--connect") {
            Ok(o) => tcp_client(&o),
            Err(e) => return usage_error(&e),
        },
        ["alloc", ref options @ ..] => match alloc_options(options) {
            Ok((mib, adj, threads)) => alloc(mib, adj, threads),
            Err(e) => return usage_error(&e),
        },
        ["dio-write", ref options @ ..] => match dio_options(options) {
            Ok(o) => pin(o.cpu).and_then(|()| dio_write(&o)),
            Err(e) => return usage_error(&e),
        },
        ["uring-read", ref options @ ..] => match dio_options(options) {
            Ok(o) => pin(o.cpu).and_then(|()| uring_read(&o)),
            Err(e) => return usage_error(&e),
        },
        ["read-loop", ref options @ ..] => {
            match self::options(options, &["--path"]).and_then(|p| required::<String>(&p, "--path"))
            {
                Ok(path) => read_loop(Path::new(&path)),
                Err(e) => return usage_error(&e),
            }
        }
        _ => return usage_error("expected a mode"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodesat-load {}: {e}", args[0]);
            ExitCode::FAILURE
        }
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("nodesat-load: {msg}\n{USAGE}");
    ExitCode::from(2)
}

/// Parses `--name value` pairs (in any order) into `(name, value)`, accepting
/// only the names in `known`.
fn options<'a>(options: &[&'a str], known: &[&str]) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut parsed = Vec::new();
    let mut options = options.iter();
    while let Some(&option) = options.next() {
        if !known.contains(&option) {
            return Err(format!("unknown option {option}"));
        }
        let value = options.next().ok_or(format!("{option} needs a value"))?;
        parsed.push((option, *value));
    }
    Ok(parsed)
}

/// The value of `name` in `parsed`, parsed as a `T`; `None` if absent.
fn value<T: std::str::FromStr>(parsed: &[(&str, &str)], name: &str) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    parsed
        .iter()
        .rev()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.parse::<T>().map_err(|e| format!("{name} {v}: {e}")))
        .transpose()
}

/// Like [`value`], but the option is required.
fn required<T: std::str::FromStr>(parsed: &[(&str, &str)], name: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value(parsed, name)?.ok_or(format!("{name} is required"))
}

/// Parses `[--cpu N]`.
fn spin_options(options: &[&str]) -> Result<Option<usize>, String> {
    let parsed = self::options(options, &["--cpu"])?;
    value(&parsed, "--cpu")
}

/// Pins this process to CPU `cpu`, if given.
fn pin(cpu: Option<usize>) -> io::Result<()> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    // CPU_SET indexes a fixed-size bitmap; beyond it is out of bounds.
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::other(format!("--cpu {cpu} is out of range")));
    }
    // SAFETY: cpu_set_t is a plain bitmap (all zeroes is the empty set), `cpu`
    // is within it, and sched_setaffinity only reads the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("pinning to CPU {cpu}: {e}"),
            ));
        }
    }
    Ok(())
}

/// Reads `path` through the page cache from start to end, forever: a working set of the
/// file's size, which a cgroup with less memory than that must reclaim from all the time.
/// Prints `reading` after the first pass.
fn read_loop(path: &Path) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut announced = false;
    loop {
        let mut f = std::fs::File::open(path)?;
        while f.read(&mut buf)? > 0 {}
        if !announced {
            println!("reading");
            io::stdout().flush()?;
            announced = true;
        }
    }
}

/// Busy loop forever.
fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

/// Parses `--period-ms N --work-us M` (in any order, both required).
fn sleeper_options(options: &[&str]) -> Result<(Duration, Duration), String> {
    let parsed = self::options(options, &["--period-ms", "--work-us"])?;
    let period = Duration::from_millis(required(&parsed, "--period-ms")?);
    let work = Duration::from_micros(required(&parsed, "--work-us")?);
    if period.is_zero() {
        return Err("--period-ms must be > 0".into());
    }
    Ok((period, work))
}

/// For `seconds`: pairs of threads hand a token back and forth [`HANDOFFS`] times through a
/// mutex and condition variable, then exit, and a new pair starts. Each handoff wakes a thread
/// that may still be on its CPU, about to sleep (a wakeup the scheduler counts while the task
/// runs), and every thread ends by exiting: the pattern that leaves a start time behind in a
/// program that records wakeups without clearing them when the task sleeps or dies.
fn thread_churn(seconds: Duration) -> io::Result<()> {
    const HANDOFFS: u32 = 200;
    let start = Instant::now();
    let mut pairs = 0u64;
    while start.elapsed() < seconds {
        let token = std::sync::Arc::new((std::sync::Mutex::new(0u32), std::sync::Condvar::new()));
        let threads: Vec<_> = (0..2u32)
            .map(|me| {
                let token = token.clone();
                std::thread::spawn(move || {
                    let (turn, cv) = &*token;
                    let mut t = turn.lock().unwrap();
                    while *t < 2 * HANDOFFS {
                        while *t % 2 != me && *t < 2 * HANDOFFS {
                            t = cv.wait(t).unwrap();
                        }
                        if *t < 2 * HANDOFFS {
                            *t += 1;
                            cv.notify_all();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join()
                .map_err(|_| io::Error::other("a churn thread panicked"))?;
        }
        pairs += 1;
    }
    println!("pairs {pairs}");
    Ok(())
}

/// Every `period`, busy-works for `work`, then sleeps until the next period
/// starts (periods are on a fixed grid; missed ones are skipped).
fn sleeper(period: Duration, work: Duration) -> ! {
    let mut next = Instant::now();
    loop {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < work {
            x = black_box(x.wrapping_add(1));
        }
        next += period;
        let now = Instant::now();
        while next <= now {
            next += period;
        }
        thread::sleep(next - now);
    }
}

/// Options of the TCP modes.
struct TcpOptions {
    /// `--listen` or `--connect` address.
    addr: SocketAddr,
    rounds: u64,
    /// Bytes per message.
    size: usize,
}

/// Parses `<addr_option> ADDR --rounds N --size B` (in any order, all
/// required; `--size` > 0).
fn tcp_options(options: &[&str], addr_option: &str) -> Result<TcpOptions, String> {
    let parsed = self::options(options, &[addr_option, "--rounds", "--size"])?;
    let o = TcpOptions {
        addr: required(&parsed, addr_option)?,
        rounds: required(&parsed, "--rounds")?,
        size: required(&parsed, "--size")?,
    };
    if o.size == 0 {
        return Err("--size must be > 0".into());
    }
    Ok(o)
}

/// Listens on `o.addr`, accepts one connection and echoes `o.rounds`
/// messages of `o.size` bytes; then waits for the client to close.
fn tcp_server(o: &TcpOptions) -> io::Result<()> {
    let listener = TcpListener::bind(o.addr)?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening {}", listener.local_addr()?)?;
    stdout.flush()?;
    let (mut stream, _) = listener.accept()?;
    drop(listener);
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; o.size];
    for _ in 0..o.rounds {
        stream.read_exact(&mut buf)?;
        stream.write_all(&buf)?;
    }
    // Close only after the client did, so that no data of ours is left
    // unacknowledged when we exit.
    wait_for_eof(&mut stream)
}

/// Connects to `o.addr` and sends `o.rounds` messages of `o.size` bytes,
/// reading each one back before sending the next.
fn tcp_client(o: &TcpOptions) -> io::Result<()> {
    let mut stream = TcpStream::connect(o.addr)?;
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; o.size];
    for round in 0..o.rounds {
        buf.fill(round as u8);
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
        if buf.iter().any(|&b| b != round as u8) {
            return Err(io::Error::other(format!("round {round}: wrong echo")));
        }
    }
    stream.shutdown(Shutdown::Write)?;
    wait_for_eof(&mut stream)
}

/// Reads until the peer closes its side; more data is an error.
fn wait_for_eof(stream: &mut TcpStream) -> io::Result<()> {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte)? {
        0 => Ok(()),
        _ => Err(io::Error::other("unexpected data after the last round")),
    }
}

/// Parses `--mb N [--oom-score-adj A] [--threads T]`.
fn alloc_options(options: &[&str]) -> Result<(usize, Option<i32>, usize), String> {
    let parsed = self::options(options, &["--mb", "--oom-score-adj", "--threads"])?;
    let threads = value(&parsed, "--threads")?.unwrap_or(1);
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    Ok((
        required(&parsed, "--mb")?,
        value(&parsed, "--oom-score-adj")?,
        threads,
    ))
}

/// Sets its `oom_score_adj` (if given), allocates `mib` MiB in `threads` threads at once
/// (each its share), writes a byte to every page, prints `allocated` and sleeps forever.
fn alloc(mib: usize, oom_score_adj: Option<i32>, threads: usize) -> io::Result<()> {
    if let Some(adj) = oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())?;
    }
    let len = mib
        .checked_mul(1 << 20)
        .ok_or_else(|| io::Error::other("--mb is too large"))?;
    let share = len / threads;
    let touchers: Vec<_> = (0..threads)
        .map(|_| thread::spawn(move || touch(share)))
        .collect();
    let memory: Vec<Vec<u8>> = touchers
        .into_iter()
        .map(|t| t.join().map_err(|_| io::Error::other("a toucher panicked")))
        .collect::<io::Result<_>>()?;
    black_box(&memory);
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "allocated")?;
    stdout.flush()?;
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

/// Allocates `len` bytes and writes a byte to every page.
fn touch(len: usize) -> Vec<u8> {
    let mut memory: Vec<u8> = Vec::with_capacity(len);
    let pages = memory.spare_capacity_mut();
    for page in pages.chunks_mut(PAGE) {
        page[0].write(1);
        black_box(&page[0]);
    }
    black_box(memory)
}

/// Options of `dio-write`.
struct DioOptions {
    path: String,
    duration: Duration,
    /// Bytes per write: a multiple of 512, at least 512.
    block: usize,
    cpu: Option<usize>,
}

/// Parses `--path P --seconds S [--block B] [--cpu N]`.
fn dio_options(options: &[&str]) -> Result<DioOptions, String> {
    let parsed = self::options(options, &["--path", "--seconds", "--block", "--cpu"])?;
    let seconds: f64 = required(&parsed, "--seconds")?;
    let duration =
        Duration::try_from_secs_f64(seconds).map_err(|e| format!("--seconds {seconds}: {e}"))?;
    let block = value(&parsed, "--block")?.unwrap_or(4096);
    if block == 0 || block % 512 != 0 {
        return Err(format!(
            "--block {block} must be a positive multiple of 512"
        ));
    }
    Ok(DioOptions {
        path: required(&parsed, "--path")?,
        duration,
        block,
        cpu: value(&parsed, "--cpu")?,
    })
}

/// A zeroed heap buffer aligned for `O_DIRECT`.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(len, DIO_ALIGN).map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size (checked by dio_options).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "aligned buffer"));
        }
        Ok(Self { ptr, layout })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to layout.size() initialized (zeroed) bytes that
        // this struct owns exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Writes `o.block`-byte blocks to `o.path` (opened `O_WRONLY|O_DIRECT|O_DSYNC`)
/// one after the other from offset 0, wrapping at its size, until
/// `o.duration` has passed; prints `writing` after the first block and
/// `wrote <n> blocks` at the end.
fn dio_write(o: &DioOptions) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(&o.path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", o.path)))?;
    // The size of a regular file or of a block device alike.
    let size = file.seek(SeekFrom::End(0))?;
    let blocks = size / o.block as u64;
    if blocks == 0 {
        return Err(io::Error::other(format!(
            "{} ({size} bytes) is smaller than one block of {}",
            o.path, o.block
        )));
    }
    let mut buf = AlignedBuf::new(o.block)?;
    let sched_start = schedstat();
    let blkio_start = blkio_delay_ticks();
    let start = Instant::now();
    let mut stdout = io::stdout().lock();
    let mut written = 0u64;
    while written == 0 || start.elapsed() < o.duration {
        let data = buf.as_mut_slice();
        // Different content per block, so nothing can be deduplicated.
        data[..8].copy_from_slice(&written.to_le_bytes());
        let offset = (written % blocks) * o.block as u64;
        file.write_all_at(data, offset)?;
        written += 1;
        if written == 1 {
            writeln!(stdout, "writing")?;
            stdout.flush()?;
        }
    }
    summary(
        &mut stdout,
        "wrote",
        written,
        start,
        sched_start,
        blkio_start,
    )
}

/// Prints `<verb> <n> blocks elapsed_ns <e> run_ns <r> runqueue_ns <q>[ blkio_delay_ns <b>]`
/// for the stretch since `start` (schedstat and block I/O delay read then).
fn summary(
    out: &mut impl Write,
    verb: &str,
    blocks: u64,
    start: Instant,
    sched_start: Option<(u64, u64)>,
    blkio_start: Option<u64>,
) -> io::Result<()> {
    let elapsed = start.elapsed();
    let (run, runqueue) = match (sched_start, schedstat()) {
        (Some(a), Some(b)) => (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)),
        _ => (0, 0),
    };
    write!(
        out,
        "{verb} {blocks} blocks elapsed_ns {} run_ns {run} runqueue_ns {runqueue}",
        elapsed.as_nanos()
    )?;
    if let (Some(a), Some(b)) = (blkio_start, blkio_delay_ticks()) {
        // SAFETY: sysconf has no preconditions.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
            .ok()
            .filter(|&hz| hz > 0)
            .unwrap_or(100);
        write!(
            out,
            " blkio_delay_ns {}",
            b.saturating_sub(a) * 1_000_000_000 / hz
        )?;
    }
    writeln!(out)?;
    out.flush()
}

/// Reads `o.block`-byte blocks of `o.path` (opened `O_RDONLY|O_DIRECT`) through io_uring, one
/// request at a time from offset 0, wrapping at its size, until `o.duration` has passed; each
/// completion is waited for in `io_uring_enter` (an interruptible sleep with `in_iowait`
/// set while the read is in flight). Prints `reading` after the first block and
/// `read <n> blocks ...` at the end.
fn uring_read(o: &DioOptions) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&o.path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", o.path)))?;
    let size = file.seek(SeekFrom::End(0))?;
    let blocks = size / o.block as u64;
    if blocks == 0 {
        return Err(io::Error::other(format!(
            "{} ({size} bytes) is smaller than one block of {}",
            o.path, o.block
        )));
    }
    let mut ring = io_uring::IoUring::new(4)?;
    let mut buf = AlignedBuf::new(o.block)?;
    let fd = io_uring::types::Fd(file.as_raw_fd());
    let sched_start = schedstat();
    let blkio_start = blkio_delay_ticks();
    let start = Instant::now();
    let mut stdout = io::stdout().lock();
    let mut read = 0u64;
    while read == 0 || start.elapsed() < o.duration {
        let data = buf.as_mut_slice();
        let entry = io_uring::opcode::Read::new(fd, data.as_mut_ptr(), data.len() as u32)
            .offset((read % blocks) * o.block as u64)
            .build();
        // SAFETY: the buffer outlives the request, which is waited for below.
        unsafe { ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        ring.submit_and_wait(1)?;
        let cqe = ring
            .completion()
            .next()
            .ok_or_else(|| io::Error::other("io_uring: no completion after waiting for one"))?;
        if cqe.result() < 0 {
            return Err(io::Error::from_raw_os_error(-cqe.result()));
        }
        read += 1;
        if read == 1 {
            writeln!(stdout, "reading")?;
            stdout.flush()?;
        }
    }
    summary(&mut stdout, "read", read, start, sched_start, blkio_start)
}

/// This process's block I/O delay so far, in clock ticks (`/proc/self/stat` field 42,
/// `delayacct_blkio_ticks`; it grows only while `kernel.task_delayacct` is 1).
fn blkio_delay_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses: field 3 is the first.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(39)?
        .parse()
        .ok()
}

/// This process's time on a CPU and waiting on a run queue so far, ns
/// (`/proc/self/schedstat`), if the kernel keeps them.
fn schedstat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    Some((fields.next()?.ok()?, fields.next()?.ok()?))
}

//! The reset generator (`cargo xtask bench` and the million-reset reliability test): loopback
//! connections aborted by their server side with the client's byte unread (and SO_LINGER 0),
//! so the kernel sends an RST (`TCP_ABORT_ON_CLOSE`) that the client socket receives. Each
//! reset is confirmed by the client's read failing with ECONNRESET, so "resets made" counts
//! resets that really happened, nothing assumed.

use std::io::{self, ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

/// Bounds every client read: on loopback the RST is delivered before close() returns, so a
/// read that waits this long means something else happened (counted as unexpected).
const READ_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Plan {
    /// Stop after this many connections...
    pub max_resets: u64,
    /// ...or after this long, whichever comes first.
    pub max_time: Duration,
    /// One reset per interval (paced, for latency) instead of as fast as possible.
    pub interval: Option<Duration>,
    /// Record each abort's client port and CLOCK_REALTIME (taken just before close()).
    pub record: bool,
    /// Pin the generator thread to this CPU.
    pub cpu: Option<usize>,
}

/// One abort: the client's port (rsttrace's `local`) and when the server closed.
#[derive(Debug, Clone, Copy)]
pub struct Abort {
    pub client_port: u16,
    pub realtime_ns: i128,
}

#[derive(Debug)]
pub struct Outcome {
    /// The listener's port: rsttrace's `remote` (bpftrace's receive `dport`) for our resets.
    pub listener_port: u16,
    /// Resets confirmed by the client (read → ECONNRESET).
    pub made: u64,
    /// Connections whose client read did not fail with ECONNRESET.
    pub unexpected: u64,
    pub elapsed: Duration,
    /// CPU time of the generator thread (user + system, softirq work done in its context
    /// included: on loopback the RST is delivered inside the sender's close()).
    pub cpu: Duration,
    pub aborts: Vec<Abort>,
}

impl Outcome {
    /// Confirmed resets per second.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.made as f64 / secs
        } else {
            0.0
        }
    }
}

/// Runs the generator on its own thread (pinned if asked) and waits for it.
pub fn run(plan: &Plan) -> Result<Outcome> {
    let plan = plan.clone();
    thread::Builder::new()
        .name("reset-storm".into())
        .spawn(move || generate(&plan))
        .context("starting the reset generator thread")?
        .join()
        .map_err(|_| anyhow!("the reset generator thread panicked"))?
}

fn generate(plan: &Plan) -> Result<Outcome> {
    if let Some(cpu) = plan.cpu {
        pin_current_thread(cpu)?;
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding the reset generator's listener on 127.0.0.1")?;
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    let mut aborts = Vec::new();
    if plan.record {
        aborts.reserve(usize::try_from(plan.max_resets.min(1 << 20)).unwrap_or(0));
    }
    let mut made = 0u64;
    let mut unexpected = 0u64;
    let mut buf = [0u8; 1];
    let cpu_start = thread_cpu()?;
    let start = Instant::now();
    let deadline = start + plan.max_time;
    let mut next = start;
    while made + unexpected < plan.max_resets {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(interval) = plan.interval {
            if next > now {
                thread::sleep(next - now);
            }
            next += interval;
        }
        let mut client = TcpStream::connect(addr)
            .with_context(|| format!("connecting to the generator's listener {addr}"))?;
        let (server, _) = listener
            .accept()
            .context("accepting on the generator's listener")?;
        client
            .set_read_timeout(Some(READ_TIMEOUT))
            .context("setting the client's read timeout")?;
        client
            .write_all(b"x")
            .context("writing the byte the server leaves unread")?;
        set_linger_zero(&server)?;
        let abort = if plan.record {
            let client_port = client.local_addr().context("client address")?.port();
            Some(Abort {
                client_port,
                realtime_ns: realtime_ns(),
            })
        } else {
            None
        };
        drop(server); // close() with unread data: the kernel sends RST to the client
        match client.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                made += 1;
                aborts.extend(abort);
            }
            _ => unexpected += 1,
        }
    }
    let elapsed = start.elapsed();
    Ok(Outcome {
        listener_port: addr.port(),
        made,
        unexpected,
        elapsed,
        cpu: thread_cpu()?.saturating_sub(cpu_start),
        aborts,
    })
}

fn set_linger_zero(socket: &TcpStream) -> Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::linger>())
        .context("size of struct linger")?;
    // SAFETY: the fd is open for the duration of the call; `linger` is a valid, initialised
    // struct of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("setsockopt(SO_LINGER, 0)");
    }
    Ok(())
}

fn pin_current_thread(cpu: usize) -> Result<()> {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    if cpu >= cpus {
        bail!(
            "CPU {cpu} asked for the reset generator: this machine has CPUs 0..{}",
            cpus - 1
        );
    }
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET writes inside it (cpu is
    // below the number of CPUs, far below CPU_SETSIZE); sched_setaffinity(0) only reads it and
    // applies to the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("pinning the reset generator to CPU {cpu}"));
    }
    Ok(())
}

/// CPU time the calling thread has used (CLOCK_THREAD_CPUTIME_ID: the scheduler's exact
/// runtime, not the tick-sampled /proc figures).
pub fn thread_cpu() -> Result<Duration> {
    clock(libc::CLOCK_THREAD_CPUTIME_ID).context("reading the thread's CPU clock")
}

fn clock(id: libc::clockid_t) -> io::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Ok(Duration::new(secs, nanos))
}

/// CPU time (user + system, all threads, the exited ones included) a live process has used,
/// in nanoseconds: its CPU clock (clock_getcpuclockid), which is exact where /proc/PID/stat
/// rounds to 10 ms ticks.
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let raw = libc::pid_t::try_from(pid).context("pid out of range")?;
    let mut id: libc::clockid_t = 0;
    // SAFETY: `id` is a valid, writable clockid_t.
    let rc = unsafe { libc::clock_getcpuclockid(raw, &mut id) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc))
            .with_context(|| format!("no CPU clock for pid {pid} (has it exited?)"));
    }
    clock(id).with_context(|| format!("reading the CPU clock of pid {pid}"))
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch (the clock rsttrace's `time` uses).
pub fn realtime_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i128::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// The kernel's own count of resets sent because a socket was closed with unread data
/// (TcpExt TCPAbortOnClose in /proc/net/netstat, this network namespace): what `nstat`
/// shows as TcpExtTCPAbortOnClose.
pub fn tcp_abort_on_close() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").context("reading /proc/net/netstat")?;
    let mut tcp_ext = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (tcp_ext.next(), tcp_ext.next()) else {
        bail!("no TcpExt lines in /proc/net/netstat");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "TCPAbortOnClose")
        .and_then(|(_, v)| v.parse().ok())
        .context("no TCPAbortOnClose counter in /proc/net/netstat")
}

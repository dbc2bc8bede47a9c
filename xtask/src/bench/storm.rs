//! The reset generator: loopback connections aborted by their server side with the client's
//! byte unread (and SO_LINGER 0), so the kernel sends an RST (`TCP_ABORT_ON_CLOSE`) that the
//! client socket receives. Each reset is confirmed by the client's read failing with
//! ECONNRESET, so "resets made" counts resets that really happened, nothing assumed.

use std::io::{self, ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use super::stats::realtime_ns;

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
    Ok(Outcome {
        listener_port: addr.port(),
        made,
        unexpected,
        elapsed: start.elapsed(),
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
        bail!("--storm-cpu {cpu}: this machine has CPUs 0..{}", cpus - 1);
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

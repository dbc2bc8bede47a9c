//! CPU time and memory of the processes a figure involves. CPU comes from the scheduler's
//! exact runtime (process CPU clocks, getrusage), not from /proc/PID/stat's 10 ms ticks: a
//! 3-second run of eight server processes would otherwise carry ±1 % of rounding, as much as
//! the steady-load target leaves. On kernels without IRQ time accounting (this one) softirq
//! work is charged to whichever task it interrupted, which on loopback is the sender: the
//! kernel side of every hook is inside the workload's CPU.

use std::collections::BTreeMap;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

pub use rsttrace_tests::peak_rss_bytes;
pub use rsttrace_tests::storm::process_cpu;

/// User + system CPU of every child this process has waited for (getrusage RUSAGE_CHILDREN):
/// the difference across a child's reaping is that child's whole CPU time, also after it
/// has exited (wrk).
pub fn children_cpu() -> Result<Duration> {
    // SAFETY: an all-zero rusage is valid; getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage(RUSAGE_CHILDREN)");
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// The kernel threads that take over softirq work when it piles up (ksoftirqd/N): their CPU
/// belongs to the workload too when its packets are processed there.
pub fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// CPU clocks of a set of processes at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(BTreeMap<u32, Duration>);

impl Snapshot {
    /// Processes that exited meanwhile are left out (and show up in [`Snapshot::since`]).
    pub fn take(pids: &[u32]) -> Self {
        Self(
            pids.iter()
                .filter_map(|&pid| Some((pid, process_cpu(pid).ok()?)))
                .collect(),
        )
    }

    /// CPU used since `before` by the processes of both snapshots, and how many processes
    /// of `before` were gone (their last slice is then missing: a figure should say so).
    pub fn since(&self, before: &Snapshot) -> (Duration, usize) {
        let mut total = Duration::ZERO;
        let mut gone = 0;
        for (pid, then) in &before.0 {
            match self.0.get(pid) {
                Some(now) => total += now.saturating_sub(*then),
                None => gone += 1,
            }
        }
        (total, gone)
    }
}

/// Waits until `pid` stops using CPU (less than 1 ms over 50 ms, at most 3 s), so that a
/// tracer's reading is taken after it has drained what the workload produced; returns its
/// CPU clock then.
pub fn settle(pid: u32) -> Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = process_cpu(pid)?;
    loop {
        thread::sleep(Duration::from_millis(50));
        let now = process_cpu(pid)?;
        if now.saturating_sub(last) < Duration::from_millis(1) || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}

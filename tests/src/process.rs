//! Processes: root check, ports, /proc look-ups, bounded waits, and the guard that owns a
//! started server.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const POLL: Duration = Duration::from_millis(50);

/// Panics unless the effective user is root: these tests must fail loudly, never skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "rsttrace's integration tests must run as root (euid is {euid}): they load eBPF \
         programs, start servers as www-data and create memory cgroups; run them through \
         `cargo xtask test` as root"
    );
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("binding 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// Polls `f` every 50 ms until it returns `Some`, or `None` once `timeout` has passed.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    wait_until(timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(|_| ())
    })
    .with_context(|| format!("nothing listens on {addr} after {timeout:?}"))
}

/// Waits until `path` exists and is non-empty; returns its content.
pub fn wait_for_file(path: &Path, timeout: Duration) -> Option<String> {
    wait_until(timeout, || {
        fs::read_to_string(path)
            .ok()
            .filter(|s| !s.trim().is_empty())
    })
}

/// (comm, state, ppid) from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(String, char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so cut at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

/// The process's comm (/proc/PID/comm), if it exists.
pub fn proc_comm(pid: u32) -> Option<String> {
    proc_stat(pid).map(|(comm, _, _)| comm)
}

/// True while the process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((_, state, _)) if state != 'Z' && state != 'X')
}

/// Waits until the process is gone or a zombie; true if it did within `timeout`.
pub fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    wait_until(timeout, || (!is_alive(pid)).then_some(())).is_some()
}

/// Live processes whose parent is `ppid` (thread groups only: /proc lists tgids), sorted.
pub fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            matches!(proc_stat(pid), Some((_, state, parent)) if parent == ppid && state != 'Z')
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// A capability set of a process by name (`CAP_BPF`...), as capsh decodes its mask in
/// /proc/PID/status: `set` is `CapEff`, `CapBnd`...
pub fn capabilities(pid: u32, set: &str) -> Result<BTreeSet<String>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix(set)?.strip_prefix(':'))
        .with_context(|| format!("no {set} line"))?
        .trim();
    let out = Command::new("capsh")
        .arg(format!("--decode={mask}"))
        .output()
        .context("running capsh (libcap2-bin)")?;
    // "0x000000c000081004=cap_dac_read_search,cap_net_admin,..."
    let decoded = String::from_utf8_lossy(&out.stdout);
    let (_, names) = decoded
        .trim()
        .split_once('=')
        .with_context(|| format!("capsh said {decoded:?}"))?;
    Ok(names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_uppercase)
        .collect())
}

/// kill(pid, sig).
pub fn send_signal(pid: u32, sig: i32) -> Result<()> {
    let raw = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: plain syscall on a pid we were given; no memory is passed.
    if unsafe { libc::kill(raw, sig) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("kill({pid}, {sig})"));
    }
    Ok(())
}

/// Makes the kernel send `signal` to the child when the thread that spawned it dies, so a
/// test binary killed outright (no Drop) does not leave servers behind.
pub(crate) fn stop_with_parent(cmd: &mut Command, signal: i32) {
    let signal = libc::c_ulong::try_from(signal).expect("signal numbers are positive");
    // SAFETY: the closure only makes the async-signal-safe prctl syscall.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A server process started by the harness, in its own process group, stdout and stderr
/// appended to a log file. Drop stops it (stop signal, then SIGKILL to its whole group) and
/// prints the log if the test is panicking.
pub(crate) struct Service {
    name: String,
    child: Child,
    stop_signal: i32,
    log: PathBuf,
    extra_logs: Vec<PathBuf>,
}

impl Service {
    pub(crate) fn spawn(
        name: &str,
        cmd: &mut Command,
        log: &Path,
        stop_signal: i32,
    ) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log file handle")?;
        stop_with_parent(cmd, stop_signal);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            stop_signal,
            log: log.to_path_buf(),
            extra_logs: Vec::new(),
        })
    }

    /// Another log file to print when the test fails (e.g. nginx's error.log).
    pub(crate) fn add_log(&mut self, path: PathBuf) {
        self.extra_logs.push(path);
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the log if the process has exited already.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited early ({status}); its output:\n{}",
                self.name,
                self.log()
            ),
            Err(e) => Err(e).with_context(|| format!("waiting for {}", self.name)),
        }
    }

    /// Runs `ready` until it returns `Some`, failing with the log if the process exits or
    /// `timeout` passes first.
    pub(crate) fn wait_ready<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if let Some(v) = ready() {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: {what} not seen after {timeout:?}; its output:\n{}",
                    self.name,
                    self.log()
                );
            }
            thread::sleep(POLL);
        }
    }

    fn print_logs(&self) {
        eprintln!(
            "----- {} (pid {}) output, {} -----\n{}",
            self.name,
            self.pid(),
            self.log.display(),
            self.log()
        );
        for path in &self.extra_logs {
            eprintln!(
                "----- {} {} -----\n{}",
                self.name,
                path.display(),
                fs::read_to_string(path).unwrap_or_default()
            );
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if thread::panicking() {
            self.print_logs();
        }
        let pid = self.pid();
        let Ok(pgid) = libc::pid_t::try_from(pid) else {
            return;
        };
        if matches!(self.child.try_wait(), Ok(None)) {
            // A graceful stop first; the process stays a zombie (unreaped) until we wait, so
            // its pid and process group id cannot be reused meanwhile.
            let _ = send_signal(pid, self.stop_signal);
            if !wait_for_exit(pid, Duration::from_secs(5)) {
                eprintln!(
                    "{} (pid {pid}) ignored its stop signal; killing it",
                    self.name
                );
            }
        }
        // Whatever is left of the group (workers), and the leader if it is still running.
        // SAFETY: plain syscall; the group is ours (process_group(0) at spawn).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

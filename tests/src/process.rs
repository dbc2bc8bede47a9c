//! Processes: root check, ports, /proc look-ups, bounded waits, and the guard that owns a
//! started server.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

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
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn free_port_on(ip: IpAddr) -> u16 {
    let listener = TcpListener::bind((ip, 0))
        .unwrap_or_else(|e| panic!("binding {ip} port 0 to find a free port: {e}"));
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// The port for a server that will listen on `ip` inside `netns`: one free on `ip` itself in
/// the host's namespace (a port free on 127.0.0.1 may be taken on ::1); in another namespace,
/// whose addresses the host lacks, one free on 127.0.0.1 here.
pub(crate) fn server_port(ip: IpAddr, netns: Option<&Netns>) -> u16 {
    match netns {
        None => free_port_on(ip),
        Some(_) => free_port(),
    }
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
    wait_listening_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), None, timeout)
}

/// Waits until something accepts TCP connections on `addr`, as seen from inside `netns`
/// (the host's namespace when `None`).
pub fn wait_listening_at(addr: SocketAddr, netns: Option<&Netns>, timeout: Duration) -> Result<()> {
    let connects = || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(|_| ())
    };
    let found = match netns {
        None => wait_until(timeout, connects),
        Some(ns) => wait_until(timeout, || ns.enter(connects).ok().flatten()),
    };
    let place = netns.map_or_else(String::new, |ns| format!(" in netns {}", ns.name()));
    found.with_context(|| format!("nothing listens on {addr}{place} after {timeout:?}"))
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

/// Peak resident set (VmHWM) of a live process, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kib * 1024)
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
/// test binary killed outright (no Drop) does not leave servers behind; and gives the child
/// default dispositions for the stop signals, so that `signal` (or a test's SIGINT) stops it
/// even when the harness itself was started with them ignored.
pub(crate) fn stop_with_parent(cmd: &mut Command, signal: i32) {
    let signal = libc::c_ulong::try_from(signal).expect("signal numbers are positive");
    // SAFETY: the closure only makes the async-signal-safe prctl and signal syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A harness started in the background by a shell without job control (`cargo
            // test &`) inherits SIGINT and SIGQUIT ignored, and an ignored signal survives
            // exec; sh cannot trap it again (POSIX, "Signals ignored on entry"). The tool
            // gets the dispositions an operator's terminal would give it.
            for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
                if libc::signal(sig, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Where a started process lives: a network namespace and cgroups (e.g. the folders of a
/// [`crate::ContainerCgroup`] or [`crate::MemCgroup::dir`]), entered between fork and exec so
/// the pid the harness holds is the server's own (no `ip netns exec`/`sh` in between) and its
/// children inherit both.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub netns: Option<Netns>,
    /// Cgroup folders; the process writes itself into each one's cgroup.procs.
    pub cgroups: Vec<PathBuf>,
}

impl Placement {
    pub fn netns(netns: &Netns) -> Self {
        Self {
            netns: Some(netns.clone()),
            cgroups: Vec::new(),
        }
    }

    /// Makes the child of `cmd` enter the cgroups, then the network namespace, before exec.
    pub(crate) fn apply(&self, cmd: &mut Command) -> Result<()> {
        let procs: Vec<CString> = self
            .cgroups
            .iter()
            .map(|dir| {
                CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                    .with_context(|| format!("cgroup path {} holds a NUL byte", dir.display()))
            })
            .collect::<Result<_>>()?;
        let netns: Option<OwnedFd> = match &self.netns {
            Some(ns) => Some(
                File::open(ns.path())
                    .with_context(|| format!("opening {}", ns.path().display()))?
                    .into(),
            ),
            None => None,
        };
        // SAFETY: the closure only makes async-signal-safe syscalls (open, write, close,
        // setns) on memory prepared before fork; the netns fd is O_CLOEXEC and owned by the
        // closure, so it stays open until the Command is dropped and does not leak past exec.
        unsafe {
            cmd.pre_exec(move || {
                for path in &procs {
                    // "0" is the writing process itself (cgroup_procs_write_start() in
                    // kernel/cgroup/cgroup.c, shared by v1 and v2).
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if written != 1 {
                        return Err(err);
                    }
                }
                if let Some(fd) = &netns {
                    if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(())
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
        placement: &Placement,
    ) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log file handle")?;
        stop_with_parent(cmd, stop_signal);
        placement
            .apply(cmd)
            .with_context(|| format!("placing {name} ({placement:?})"))?;
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

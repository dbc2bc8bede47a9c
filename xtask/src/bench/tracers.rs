//! The modes under comparison (nothing, the floor, rsttrace, bpftrace) and the processes the
//! benchmark starts: every child is owned by a [`Proc`], which stops it on drop (and the
//! kernel kills it if xtask itself dies: PR_SET_PDEATHSIG); the floor's programs are file
//! descriptors of the bench itself, so they go when it goes.

use std::fs::{self, File};
use std::io::{BufRead as _, BufReader, Read};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use rsttrace_tests::storm::realtime_ns;

use super::cpu;
use super::floor::Floor;
use super::Ctx;

/// How long a tracer may take to attach before the benchmark gives up on it.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a tracer may take to drain and exit after SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(5);

/// The baseline: Debian's bpftrace printing the raw facts of both reset tracepoints (pid,
/// comm, ports, reason), one line each. tcp_send_reset has no port fields since ~6.10: its
/// ports are read from the sockaddr bytes (big-endian sin_port at offset 2).
pub const BPFTRACE_SCRIPT: &str = r#"BEGIN { printf("ready\n"); }
tracepoint:tcp:tcp_receive_reset {
  printf("receive pid=%d comm=%s sport=%d dport=%d\n", pid, comm, args->sport, args->dport);
}
tracepoint:tcp:tcp_send_reset {
  printf("send pid=%d comm=%s sport=%d dport=%d reason=%d\n", pid, comm,
    (args->saddr[2] << 8) | args->saddr[3], (args->daddr[2] << 8) | args->daddr[3], args->reason);
}
"#;

/// A child process that is stopped (SIGKILL) and reaped on drop if still running.
pub struct Proc {
    name: String,
    child: Child,
    exit: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        // SAFETY: the closure only makes the async-signal-safe prctl syscall.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}: {}", crate::display(cmd)))?;
        Ok(Self {
            name: name.to_string(),
            child,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// The exit status if it has exited.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.exit)
    }

    /// Waits up to `timeout` for it to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(POLL);
        }
    }

    /// SIGINT (both tracers drain and detach on it), then SIGKILL after `timeout`.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_exit()? {
            return Ok(status);
        }
        signal(self.pid(), libc::SIGINT)?;
        if let Some(status) = self.wait_timeout(timeout)? {
            return Ok(status);
        }
        self.kill();
        bail!(
            "{} (pid {}) did not exit within {timeout:?} of SIGINT; killed it",
            self.name,
            self.pid()
        )
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.try_exit(), Ok(None)) {
            self.kill();
        }
    }
}

fn signal(pid: u32, sig: i32) -> Result<()> {
    let raw = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: plain syscall on our own child's pid (not yet reaped, so not reused).
    if unsafe { libc::kill(raw, sig) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("kill({pid}, {sig})"));
    }
    Ok(())
}

/// One line read from a child's pipe, stamped when `read` returned it.
pub struct Line {
    pub text: String,
    pub at: Instant,
    pub realtime_ns: i128,
}

/// Reads `stream` line by line on a thread (it ends at EOF, i.e. when the child exits).
pub fn read_lines(stream: impl Read + Send + 'static) -> Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 16, stream);
        let mut text = String::new();
        loop {
            text.clear();
            match reader.read_line(&mut text) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = Line {
                        text: text.trim_end().to_string(),
                        at: Instant::now(),
                        realtime_ns: realtime_ns(),
                    };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; fails if the stream ends or `timeout` passes.
pub fn wait_line(rx: &Receiver<Line>, needle: &str, timeout: Duration, what: &str) -> Result<Line> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.text.contains(needle) => return Ok(line),
            Ok(line) => seen.push(line.text),
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "{what}: no line containing {needle:?} within {timeout:?}; it printed:\n{}",
                    seen.join("\n")
                )
            }
            Err(RecvTimeoutError::Disconnected) => bail!(
                "{what}: exited before printing {needle:?}; it printed:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// A tracer writing to files, attached and ready.
pub struct FileTracer {
    pub proc: Proc,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl FileTracer {
    /// `rsttrace --format json` (no filter: every reset on the host, full attribution),
    /// stdout to `DIR/TAG.out`; ready once stderr says `attached`.
    pub fn rsttrace(ctx: &Ctx, tag: &str) -> Result<Self> {
        Self::rsttrace_with(ctx, tag, &[])
    }

    /// [`FileTracer::rsttrace`] with `extra` options (those the bench-wide `--rsttrace-arg`s
    /// already give are not repeated: clap refuses a flag given twice).
    pub fn rsttrace_with(ctx: &Ctx, tag: &str, extra: &[&str]) -> Result<Self> {
        let mut cmd = ctx.rsttrace_command();
        cmd.args(["--format", "json"]);
        cmd.args(
            extra
                .iter()
                .filter(|a| !ctx.rsttrace_args.iter().any(|g| g == *a)),
        );
        Self::start("rsttrace", cmd, &ctx.tmp, tag, Stream::Stderr, "attached")
    }

    /// `bpftrace SCRIPT`, stdout to `DIR/TAG.out`; ready once stdout has BEGIN's `ready`
    /// (bpftrace runs BEGIN after attaching every probe, and flushes after each printf).
    pub fn bpftrace(script: &Path, dir: &Path, tag: &str) -> Result<Self> {
        let mut cmd = Command::new("bpftrace");
        cmd.arg(script);
        Self::start("bpftrace", cmd, dir, tag, Stream::Stdout, "ready")
    }

    fn start(
        name: &str,
        mut cmd: Command,
        dir: &Path,
        tag: &str,
        ready_on: Stream,
        needle: &str,
    ) -> Result<Self> {
        let stdout = dir.join(format!("{tag}.out"));
        let stderr = dir.join(format!("{tag}.err"));
        cmd.stdout(
            File::create(&stdout).with_context(|| format!("creating {}", stdout.display()))?,
        )
        .stderr(File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?);
        let mut proc = Proc::spawn(name, &mut cmd)?;
        let watched = match ready_on {
            Stream::Stdout => &stdout,
            Stream::Stderr => &stderr,
        };
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        loop {
            let text = fs::read_to_string(watched).unwrap_or_default();
            if text.lines().any(|l| l.contains(needle)) {
                break;
            }
            if let Some(status) = proc.try_exit()? {
                bail!(
                    "{name} exited ({status}) before attaching; stderr:\n{}",
                    fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} did not print {needle:?} within {ATTACH_TIMEOUT:?}; stderr:\n{}",
                    fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            thread::sleep(POLL);
        }
        Ok(Self {
            proc,
            stdout,
            stderr,
        })
    }

    /// SIGINT and wait for a clean exit (both tracers exit 0 on SIGINT).
    pub fn stop(&mut self, what: &str) -> Result<()> {
        let status = self.proc.stop(STOP_TIMEOUT)?;
        // bpftrace exits 0 on SIGINT; rsttrace too (README: exit status).
        if !status.success() {
            bail!(
                "{what} exited with {status}; stderr:\n{}",
                fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
        Ok(())
    }

    pub fn remove_files(&self) {
        let _ = fs::remove_file(&self.stdout);
        let _ = fs::remove_file(&self.stderr);
    }
}

enum Stream {
    Stdout,
    Stderr,
}

/// rsttrace's option that attaches no packet hook.
pub const NO_NETWORK_HOOKS: &str = "--no-network-hooks";

/// What runs beside the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing attached: the baseline.
    None,
    /// Count-only programs on rsttrace's hooks.
    Floor,
    Rsttrace,
    /// rsttrace with `--no-network-hooks`: no packet program (`rst_evidence`); the
    /// refusal hook (`inet_sk_error_report`) stays, it serves another capability.
    RsttraceNoNet,
    /// bpftrace printing the raw facts of both reset tracepoints.
    Bpftrace,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Floor => "floor",
            Mode::Rsttrace => "rsttrace",
            Mode::RsttraceNoNet => "rsttrace-no-net",
            Mode::Bpftrace => "bpftrace",
        }
    }
}

/// `modes` in the order round `round` runs them: rotated each round, so no mode always runs
/// first (warmest) or right after a given other.
pub fn rotation(modes: &[Mode], round: u32) -> Vec<Mode> {
    let k = round as usize % modes.len().max(1);
    modes[k..].iter().chain(&modes[..k]).copied().collect()
}

/// A mode, attached and ready, with its CPU clock read right after attaching.
pub struct Running {
    pub mode: Mode,
    inner: Inner,
    cpu_at_attach: Duration,
}

enum Inner {
    Nothing,
    Floor(Floor),
    Process(FileTracer),
}

impl Running {
    pub fn start(ctx: &Ctx, mode: Mode, tag: &str) -> Result<Self> {
        let inner = match mode {
            Mode::None => Inner::Nothing,
            Mode::Floor => Inner::Floor(Floor::attach(&ctx.hooks)?),
            Mode::Rsttrace => Inner::Process(FileTracer::rsttrace(ctx, tag)?),
            Mode::RsttraceNoNet => {
                Inner::Process(FileTracer::rsttrace_with(ctx, tag, &[NO_NETWORK_HOOKS])?)
            }
            Mode::Bpftrace => Inner::Process(FileTracer::bpftrace(&ctx.script, &ctx.tmp, tag)?),
        };
        let mut running = Self {
            mode,
            inner,
            cpu_at_attach: Duration::ZERO,
        };
        if let Some(pid) = running.pid() {
            running.cpu_at_attach = cpu::process_cpu(pid)?;
        }
        Ok(running)
    }

    pub fn pid(&self) -> Option<u32> {
        match &self.inner {
            Inner::Process(t) => Some(t.proc.pid()),
            _ => None,
        }
    }

    pub fn floor(&self) -> Option<&Floor> {
        match &self.inner {
            Inner::Floor(f) => Some(f),
            _ => None,
        }
    }

    /// The tracer process's CPU since it attached, read once it has drained what the
    /// workload produced (zero for no tracer and for the floor, which has no user space).
    pub fn settled_cpu(&self) -> Result<Duration> {
        match self.pid() {
            Some(pid) => Ok(cpu::settle(pid)?.saturating_sub(self.cpu_at_attach)),
            None => Ok(Duration::ZERO),
        }
    }

    /// Stops it (SIGINT, clean exit required); rsttrace's peak RSS is recorded in `ctx` first.
    /// Returns the stopped tracer, whose output files the caller reads and removes.
    pub fn stop(self, ctx: &Ctx, what: &str) -> Result<Option<FileTracer>> {
        match self.inner {
            Inner::Nothing | Inner::Floor(_) => Ok(None),
            Inner::Process(mut t) => {
                if self.mode == Mode::Rsttrace {
                    ctx.memory
                        .borrow_mut()
                        .record(what, cpu::peak_rss_bytes(t.proc.pid())?);
                }
                t.stop(self.mode.name())?;
                Ok(Some(t))
            }
        }
    }
}

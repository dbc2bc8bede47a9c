//! The tool under test, run from the binary named by `RSTTRACE_BIN`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::process::{children_of, proc_comm, send_signal, stop_with_parent, wait_until};
use crate::tempdir::TempDir;

/// The environment variable naming the rsttrace binary (set by `cargo xtask test`).
pub const RSTTRACE_BIN_ENV: &str = "RSTTRACE_BIN";
/// The environment variable naming the release build (set by `cargo xtask test`), for tests
/// that hold the product's own CPU and memory figures (the million-reset run).
pub const RSTTRACE_RELEASE_BIN_ENV: &str = "RSTTRACE_RELEASE_BIN";
const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running rsttrace: stdout (JSON lines) and stderr go to files in a temp dir.
pub struct Rsttrace {
    child: Child,
    /// rsttrace's own pid: `child`'s, or a descendant's when `child` is a wrapper.
    pid: u32,
    args: Vec<String>,
    stdout: PathBuf,
    stderr: PathBuf,
    exit: Option<ExitStatus>,
    _dir: TempDir,
}

impl Rsttrace {
    /// Runs `$RSTTRACE_BIN --format json ARGS...` and waits until it reports on stderr that its
    /// hooks are attached (e.g. `rsttrace: attached 9 hooks in 41 ms`).
    ///
    /// # Panics
    /// If `RSTTRACE_BIN` is not set.
    pub fn start(args: &[&str]) -> Result<Self> {
        let bin = std::env::var_os(RSTTRACE_BIN_ENV).unwrap_or_else(|| {
            panic!("{RSTTRACE_BIN_ENV} is not set; run the tests through `cargo xtask test`")
        });
        Self::start_bin(Path::new(&bin), args)
    }

    /// [`Self::start`] with an explicit binary.
    pub fn start_bin(bin: &Path, args: &[&str]) -> Result<Self> {
        if !bin.is_file() {
            bail!("{RSTTRACE_BIN_ENV}={} is not a file", bin.display());
        }
        let mut cmd = Command::new(bin);
        cmd.args(["--format", "json"]).args(args);
        Self::start_command(cmd, libc::SIGINT)
    }

    /// Runs `cmd` — rsttrace itself, or wrappers that exec it (setpriv) or wait for it
    /// (`unshare --fork`) — and waits until rsttrace reports on stderr that its hooks are
    /// attached. Signals go to the process named `rsttrace` among `cmd` and its
    /// descendants; `cmd` gets `parent_death_signal` if the test process dies first (a
    /// wrapper that blocks SIGINT needs SIGKILL, and its own way to stop rsttrace).
    pub fn start_command(mut cmd: Command, parent_death_signal: i32) -> Result<Self> {
        let dir = TempDir::new("rsttrace")?;
        let stdout = dir.path().join("stdout.jsonl");
        let stderr = dir.path().join("stderr.log");
        let args: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        stop_with_parent(&mut cmd, parent_death_signal);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).context("creating rsttrace's stdout file")?)
            .stderr(File::create(&stderr).context("creating rsttrace's stderr file")?)
            .spawn()
            .with_context(|| format!("starting {args:?}"))?;
        let pid = child.id();
        let mut tool = Self {
            child,
            pid,
            args,
            stdout,
            stderr,
            exit: None,
            _dir: dir,
        };
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        loop {
            let stderr = tool.stderr();
            if stderr.split_whitespace().any(|w| w == "attached") {
                tool.pid = rsttrace_process(tool.child.id()).unwrap_or(tool.pid);
                // Every hook the tests run with must load: a refused optional hook (the
                // verifier of one kernel, a missing capability) would otherwise only cost
                // the evidence it gives, and a test could pass without it.
                if stderr.contains("could not attach") {
                    bail!(
                        "rsttrace {:?} runs with a hook refused:\n{stderr}",
                        tool.args
                    );
                }
                return Ok(tool);
            }
            if let Some(status) = tool.try_exit()? {
                bail!(
                    "rsttrace {:?} exited ({status}) before attaching; stderr:\n{}",
                    tool.args,
                    tool.stderr()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "rsttrace {:?} did not print `attached` within {ATTACH_TIMEOUT:?}; stderr:\n{}",
                    tool.args,
                    tool.stderr()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The rsttrace process (not a wrapper around it).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything written on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Complete stdout lines so far, each parsed as JSON.
    pub fn try_events(&self) -> Result<Vec<Value>> {
        let out = fs::read_to_string(&self.stdout).context("reading rsttrace's stdout")?;
        // A last line without its newline may still be being written.
        let complete = out.rfind('\n').map_or("", |i| &out[..i]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).with_context(|| format!("rsttrace printed non-JSON: {l:?}"))
            })
            .collect()
    }

    /// [`Self::try_events`], panicking on a line that is not JSON (a broken contract).
    pub fn events(&self) -> Vec<Value> {
        self.try_events()
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.report()))
    }

    /// Polls the events until one matches `pred`.
    pub fn wait_for(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Option<Value> {
        wait_until(timeout, || self.events().into_iter().find(|e| pred(e)))
    }

    /// Waits for the `reset` event on the connection local port → remote port (nginx's side).
    pub fn wait_for_reset(
        &self,
        local_port: u16,
        remote_port: u16,
        timeout: Duration,
    ) -> Option<Value> {
        self.wait_for(
            |e| {
                e["event"] == "reset"
                    && endpoint_port(&e["local"]) == Some(local_port)
                    && endpoint_port(&e["remote"]) == Some(remote_port)
            },
            timeout,
        )
    }

    /// SIGINT, then waits for a clean exit (status 0) and returns every event printed.
    pub fn stop(&mut self) -> Result<Vec<Value>> {
        self.stop_with(libc::SIGINT)
    }

    /// Like [`Rsttrace::stop`] with another signal (SIGTERM).
    pub fn stop_with(&mut self, signal: i32) -> Result<Vec<Value>> {
        if self.try_exit()?.is_none() {
            send_signal(self.pid(), signal)?;
            let exited = wait_until(STOP_TIMEOUT, || self.try_exit().ok().flatten());
            if exited.is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "rsttrace did not exit within {STOP_TIMEOUT:?} of signal {signal}; stderr:\n{}",
                    self.stderr()
                );
            }
        }
        match self.exit {
            Some(status) if status.success() => self.try_events(),
            status => bail!(
                "rsttrace exited with {status:?} (expected 0); stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// rsttrace's arguments, stderr and stdout, for failure messages.
    pub fn report(&self) -> String {
        format!(
            "----- rsttrace {:?} stderr -----\n{}\n----- rsttrace stdout -----\n{}",
            self.args,
            self.stderr(),
            fs::read_to_string(&self.stdout).unwrap_or_default()
        )
    }

    fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().context("waiting for rsttrace")?;
        }
        Ok(self.exit)
    }
}

impl Drop for Rsttrace {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.report());
        }
        if matches!(self.try_exit(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `root` or its nearest descendant whose name is `rsttrace`.
fn rsttrace_process(root: u32) -> Option<u32> {
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        if proc_comm(pid).as_deref() == Some("rsttrace") {
            return Some(pid);
        }
        queue.extend(children_of(pid));
    }
    None
}

/// The port of an "addr:port" JSON string ("127.0.0.1:9000", "[::1]:9000").
pub(crate) fn endpoint_port(v: &Value) -> Option<u16> {
    v.as_str()?.rsplit(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Rsttrace;
    use crate::tempdir::TempDir;

    /// A stand-in for rsttrace: attaches, prints one event, exits `code` on SIGINT.
    fn fake(dir: &TempDir, code: i32) -> std::path::PathBuf {
        let script = format!(
            "#!/bin/sh\n\
             trap 'exit {code}' INT\n\
             echo 'rsttrace: attached 9 hooks in 41 ms' >&2\n\
             echo '{{\"event\":\"reset\",\"local\":\"127.0.0.1:40000\",\"remote\":\"127.0.0.1:9000\"}}'\n\
             while :; do sleep 0.05; done\n"
        );
        let path = dir.write("rsttrace", script).expect("writing the fake");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        path
    }

    #[test]
    fn reads_events_and_stops_cleanly() {
        let dir = TempDir::new("fake-rsttrace").expect("temp dir");
        let mut tool = Rsttrace::start_bin(&fake(&dir, 0), &["--pid-of", "nginx"]).expect("start");
        let event = tool
            .wait_for_reset(40000, 9000, Duration::from_secs(5))
            .expect("the fake's event");
        assert_eq!(event["remote"], "127.0.0.1:9000");
        assert!(tool.wait_for_reset(40000, 9001, Duration::ZERO).is_none());
        assert_eq!(tool.stop().expect("clean exit"), vec![event]);
    }

    #[test]
    fn stop_reports_a_bad_exit_status() {
        let dir = TempDir::new("fake-rsttrace").expect("temp dir");
        let mut tool = Rsttrace::start_bin(&fake(&dir, 3), &[]).expect("start");
        let err = tool.stop().expect_err("exit status 3 must fail");
        assert!(format!("{err:#}").contains("attached"), "{err:#}");
    }

    #[test]
    fn start_fails_with_stderr_when_the_tool_exits() {
        let dir = TempDir::new("fake-rsttrace").expect("temp dir");
        let bin = dir
            .write(
                "rsttrace",
                "#!/bin/sh\necho 'rsttrace: no BTF here' >&2\nexit 1\n",
            )
            .expect("writing the fake");
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let err = Rsttrace::start_bin(&bin, &[])
            .err()
            .expect("start must fail");
        assert!(format!("{err:#}").contains("no BTF here"), "{err:#}");
    }
}

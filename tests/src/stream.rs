//! rsttrace with its stdout read line by line as it comes, for runs whose output is too
//! large to keep (a million resets print ~470 MB of JSON): each line goes to a consumer on
//! a reader thread, and nothing is stored.

use std::fs::{self, File};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::process::{send_signal, stop_with_parent, wait_until};
use crate::tempdir::TempDir;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `rsttrace --format json ARGS` whose stdout lines are handed to a consumer.
pub struct StreamingRsttrace<C: FnMut(&str) + Send + 'static> {
    child: Child,
    stderr: PathBuf,
    reader: Option<JoinHandle<C>>,
    exit: Option<ExitStatus>,
    _dir: TempDir,
}

impl<C: FnMut(&str) + Send + 'static> StreamingRsttrace<C> {
    /// Starts `bin` and waits until it says its hooks are attached.
    pub fn start(bin: &Path, args: &[&str], mut consumer: C) -> Result<Self> {
        let dir = TempDir::new("rsttrace-stream")?;
        let stderr = dir.path().join("stderr.log");
        let mut cmd = Command::new(bin);
        stop_with_parent(&mut cmd, libc::SIGINT);
        let mut child = cmd
            .args(["--format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).context("creating rsttrace's stderr file")?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("rsttrace's stdout pipe")?;
        let reader = thread::spawn(move || {
            let mut lines = BufReader::with_capacity(1 << 20, stdout);
            let mut line = String::new();
            while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                consumer(line.trim_end());
                line.clear();
            }
            consumer
        });
        let mut tool = Self {
            child,
            stderr,
            reader: Some(reader),
            exit: None,
            _dir: dir,
        };
        let attached = wait_until(ATTACH_TIMEOUT, || {
            let text = tool.stderr();
            (text.contains("attached") || tool.try_exit().ok().flatten().is_some()).then_some(())
        });
        if attached.is_none() || tool.exit.is_some() {
            bail!("rsttrace did not attach; stderr:\n{}", tool.stderr());
        }
        Ok(tool)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().context("waiting for rsttrace")?;
        }
        Ok(self.exit)
    }

    /// SIGINT, a clean exit (status 0) required; returns the consumer once it has seen
    /// every line.
    pub fn stop(mut self) -> Result<C> {
        if self.try_exit()?.is_none() {
            send_signal(self.pid(), libc::SIGINT)?;
            let deadline = Instant::now() + STOP_TIMEOUT;
            while self.try_exit()?.is_none() {
                if Instant::now() >= deadline {
                    bail!("rsttrace did not exit within {STOP_TIMEOUT:?} of SIGINT");
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        match self.exit {
            Some(status) if status.success() => {}
            status => bail!(
                "rsttrace exited with {status:?}; stderr:\n{}",
                self.stderr()
            ),
        }
        self.reader
            .take()
            .context("the reader was taken already")?
            .join()
            .map_err(|_| anyhow!("rsttrace's stdout reader panicked"))
    }
}

impl<C: FnMut(&str) + Send + 'static> Drop for StreamingRsttrace<C> {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("----- rsttrace stderr -----\n{}", self.stderr());
        }
        if matches!(self.try_exit(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

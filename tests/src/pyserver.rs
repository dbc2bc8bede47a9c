//! A small python3 program of the test's own (a server that aborts, a client with keepalive
//! timers...), run from a script in a temporary folder, stopped on drop.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{wait_listening, Placement, Service};
use crate::tempdir::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PyProgram {
    // Field order is drop order: stop the process before removing its folder.
    service: Service,
    dir: TempDir,
}

impl PyProgram {
    /// Runs `python3 -u DIR/NAME.py ARGS...`.
    pub fn spawn(name: &str, source: &str, args: &[String]) -> Result<Self> {
        let dir = TempDir::new(name)?;
        let script = format!("{name}.py");
        dir.write(&script, source)?;
        let mut cmd = Command::new("python3");
        cmd.arg("-u").arg(dir.path().join(&script)).args(args);
        let service = Service::spawn(
            name,
            &mut cmd,
            &dir.path().join("output.log"),
            libc::SIGTERM,
            &Placement::default(),
        )?;
        Ok(Self { service, dir })
    }

    /// Runs a server script that takes the port to listen on as its first argument, and
    /// waits until it listens on 127.0.0.1:`port`.
    pub fn serve(name: &str, source: &str, port: u16, args: &[String]) -> Result<Self> {
        let mut all = vec![port.to_string()];
        all.extend_from_slice(args);
        let mut program = Self::spawn(name, source, &all)?;
        program.service.check_running()?;
        wait_listening(port, START_TIMEOUT)
            .with_context(|| format!("{name} did not listen; its output:\n{}", program.output()))?;
        Ok(program)
    }

    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        self.service.log()
    }

    /// Waits until its output contains `needle`.
    pub fn wait_output(&self, needle: &str, timeout: Duration) -> bool {
        crate::process::wait_until(timeout, || self.output().contains(needle).then_some(()))
            .is_some()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

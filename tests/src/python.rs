//! Small peers written in Python (Debian's /usr/bin/python3, not whatever `python3` is
//! first on PATH), for the tests that need a process doing one precise thing to a socket.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process::{Placement, Service};
use crate::tempdir::TempDir;

pub const PYTHON: &str = "/usr/bin/python3";
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running Python program; drop stops it (SIGTERM, then SIGKILL to its group).
pub struct PythonPeer {
    service: Service,
    _dir: TempDir,
}

impl PythonPeer {
    /// Runs `source` with `args` — inside the cgroup whose `cgroup.procs` is given, from
    /// its first instruction on — and waits for it to print a line starting with `ready`;
    /// returns the peer and the rest of that line.
    pub fn start(
        name: &str,
        source: &str,
        args: &[&str],
        cgroup_procs: Option<&Path>,
    ) -> Result<(Self, String)> {
        let dir = TempDir::new(name)?;
        let script = dir.write(&format!("{name}.py"), source)?;
        let mut cmd = match cgroup_procs {
            Some(procs) => {
                let mut cmd = Command::new("sh");
                cmd.args(["-c", "echo $$ > \"$1\" && shift && exec \"$@\"", "sh"])
                    .arg(procs)
                    .arg(PYTHON);
                cmd
            }
            None => Command::new(PYTHON),
        };
        cmd.arg("-u").arg(&script).args(args);
        let log = dir.path().join(format!("{name}.log"));
        let mut service =
            Service::spawn(name, &mut cmd, &log, libc::SIGTERM, &Placement::default())?;
        let rest = service.wait_ready("its `ready` line", READY_TIMEOUT, || {
            service_ready_line(&log)
        })?;
        Ok((Self { service, _dir: dir }, rest))
    }

    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.service.log()
    }
}

fn service_ready_line(log: &Path) -> Option<String> {
    std::fs::read_to_string(log)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("ready"))
        .map(|rest| rest.trim().to_string())
}

//! A gunicorn arbiter (sync workers) serving a WSGI app written from a string.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{children_of, free_port, wait_listening, Service};
use crate::tempdir::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct GunicornOptions {
    pub workers: u32,
    /// `--timeout` in seconds (the arbiter SIGABRTs a silent worker past it).
    pub timeout: Option<u32>,
    /// `--max-requests` (a worker exits cleanly after that many requests).
    pub max_requests: Option<u32>,
}

impl Default for GunicornOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            timeout: None,
            max_requests: None,
        }
    }
}

pub struct Gunicorn {
    // Field order is drop order: stop the arbiter before removing its folder.
    service: Service,
    dir: TempDir,
    port: u16,
}

impl Gunicorn {
    /// Writes `app_source` to DIR/app.py (it must define `application`), starts
    /// `gunicorn -w N -b 127.0.0.1:PORT --chdir DIR app:application` and waits until it listens
    /// and all workers have booted.
    pub fn start(app_source: &str, options: GunicornOptions) -> Result<Self> {
        let dir = TempDir::new("gunicorn")?;
        dir.write("app.py", app_source)?;
        let port = free_port();
        let mut cmd = Command::new("gunicorn");
        cmd.env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .arg("-w")
            .arg(options.workers.to_string())
            .arg("-b")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--chdir")
            .arg(dir.path())
            .args(["--log-level", "info"]);
        if let Some(t) = options.timeout {
            cmd.arg("--timeout").arg(t.to_string());
        }
        if let Some(n) = options.max_requests {
            cmd.arg("--max-requests").arg(n.to_string());
        }
        cmd.arg("app:application");
        // SIGINT is gunicorn's quick shutdown (SIGTERM waits for workers up to 30 s).
        let mut service = Service::spawn(
            "gunicorn",
            &mut cmd,
            &dir.path().join("gunicorn.log"),
            libc::SIGINT,
        )?;
        service.wait_ready("listening socket", START_TIMEOUT, || {
            wait_listening(port, Duration::from_millis(100)).ok()
        })?;
        let arbiter = service.pid();
        let want = options.workers as usize;
        let log_path = dir.path().join("gunicorn.log");
        service.wait_ready("workers booting", START_TIMEOUT, || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            (log.matches("Booting worker with pid").count() >= want
                && children_of(arbiter).len() >= want)
                .then_some(())
        })?;
        Ok(Self { service, dir, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn arbiter_pid(&self) -> u32 {
        self.service.pid()
    }

    /// Current workers: the arbiter's children.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.arbiter_pid())
    }

    /// The arbiter's and workers' log (stderr), where dead workers are reported.
    pub fn log(&self) -> String {
        self.service.log()
    }

    /// Waits until the log contains `needle` (the arbiter logs a dead worker only once it has
    /// reaped it, which may be after nginx already answered 502).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        crate::process::wait_until(timeout, || self.log().contains(needle).then_some(())).is_some()
    }

    /// Where the app lives (its working directory).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fails if the arbiter has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.service.check_running().context("gunicorn arbiter")
    }
}

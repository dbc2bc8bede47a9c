//! A gunicorn arbiter (sync workers) serving a WSGI app written from a string, on
//! 127.0.0.1 or other addresses, in the host's network namespace or another one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::Netns;
use crate::process::{children_of, server_port, wait_listening_at, Placement, Service};
use crate::tempdir::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct GunicornOptions {
    pub workers: u32,
    /// `--timeout` in seconds (the arbiter SIGABRTs a silent worker past it).
    pub timeout: Option<u32>,
    /// `--max-requests` (a worker exits cleanly after that many requests).
    pub max_requests: Option<u32>,
    /// Keep client connections open for this many seconds between requests (gthread worker,
    /// `--keep-alive N`): what nginx's upstream keepalive needs (sync workers close after
    /// every response).
    pub keep_alive: Option<u32>,
    /// Addresses to bind (`-b ADDR:PORT` each, one port for all); default 127.0.0.1.
    pub listen: Vec<IpAddr>,
    /// Run inside this network namespace (default: the host's).
    pub netns: Option<Netns>,
    /// Cgroup folders the arbiter (and so its workers) joins, e.g.
    /// [`crate::ContainerCgroup::dirs`].
    pub cgroups: Vec<PathBuf>,
}

impl Default for GunicornOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            timeout: None,
            max_requests: None,
            keep_alive: None,
            listen: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            netns: None,
            cgroups: Vec::new(),
        }
    }
}

pub struct Gunicorn {
    // Field order is drop order: stop the arbiter before removing its folder.
    service: Service,
    dir: TempDir,
    addrs: Vec<SocketAddr>,
}

impl Gunicorn {
    /// Writes `app_source` to DIR/app.py (it must define `application`), starts
    /// `gunicorn -w N -b ADDR:PORT... --chdir DIR app:application` and waits until it listens
    /// and all workers have booted.
    pub fn start(app_source: &str, options: GunicornOptions) -> Result<Self> {
        if options.listen.is_empty() {
            anyhow::bail!("GunicornOptions::listen is empty: give it at least one address");
        }
        let dir = TempDir::new("gunicorn")?;
        dir.write("app.py", app_source)?;
        let port = server_port(options.listen[0], options.netns.as_ref());
        let addrs: Vec<SocketAddr> = options
            .listen
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        let mut cmd = Command::new("gunicorn");
        cmd.env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .arg("-w")
            .arg(options.workers.to_string());
        for addr in &addrs {
            cmd.arg("-b").arg(addr.to_string());
        }
        cmd.arg("--chdir")
            .arg(dir.path())
            .args(["--log-level", "info"]);
        if let Some(t) = options.timeout {
            cmd.arg("--timeout").arg(t.to_string());
        }
        if let Some(secs) = options.keep_alive {
            cmd.args([
                "--worker-class",
                "gthread",
                "--threads",
                "4",
                "--keep-alive",
            ])
            .arg(secs.to_string());
        }
        if let Some(n) = options.max_requests {
            cmd.arg("--max-requests").arg(n.to_string());
        }
        cmd.arg("app:application");
        // SIGINT is gunicorn's quick shutdown (SIGTERM waits for workers up to 30 s).
        let placement = Placement {
            netns: options.netns.clone(),
            cgroups: options.cgroups.clone(),
        };
        let mut service = Service::spawn(
            "gunicorn",
            &mut cmd,
            &dir.path().join("gunicorn.log"),
            libc::SIGINT,
            &placement,
        )?;
        for addr in &addrs {
            service.wait_ready("listening socket", START_TIMEOUT, || {
                wait_listening_at(*addr, options.netns.as_ref(), Duration::from_millis(100)).ok()
            })?;
        }
        let arbiter = service.pid();
        let want = options.workers as usize;
        let log_path = dir.path().join("gunicorn.log");
        service.wait_ready("workers booting", START_TIMEOUT, || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            (log.matches("Booting worker with pid").count() >= want
                && children_of(arbiter).len() >= want)
                .then_some(())
        })?;
        Ok(Self {
            service,
            dir,
            addrs,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    /// The first address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every address it listens on (one per [`GunicornOptions::listen`] entry).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
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

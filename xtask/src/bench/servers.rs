//! The servers under steady load — a real nginx in front of php-fpm (TCP and unix pools) and
//! gunicorn, started by the integration-test harness (stopped on drop) — and wrk.

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use rsttrace_tests::{Gunicorn, GunicornOptions, Location, Nginx, PhpFpm, PhpFpmOptions, Pm};

use super::cpu;
use super::tracers::Proc;

const WSGI_APP: &str = r#"
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]
"#;
const PHP_SCRIPT: &str = "<?php\necho \"hello\\n\";\n";
/// wrk's own connections to nginx (nginx opens a new upstream connection per request).
pub const WRK_CONNECTIONS: u32 = 8;
const WRK_THREADS: u32 = 1;

/// The servers under load; dropping it stops them (harness Drop).
pub struct Servers {
    // Drop order: nginx before its upstreams.
    nginx: Nginx,
    gunicorn: Gunicorn,
    fpm: PhpFpm,
}

/// One upstream path through nginx.
pub struct Target {
    pub name: &'static str,
    pub url: String,
}

impl Servers {
    pub fn start() -> Result<Self> {
        let fpm = PhpFpm::start(PhpFpmOptions {
            pm: Pm::Static,
            max_children: 2,
            unix_socket: true,
            ..PhpFpmOptions::default()
        })
        .context("starting php-fpm")?;
        fpm.write_script("hello.php", PHP_SCRIPT)?;
        let gunicorn = Gunicorn::start(
            WSGI_APP,
            GunicornOptions {
                workers: 2,
                ..GunicornOptions::default()
            },
        )
        .context("starting gunicorn")?;
        let nginx = Nginx::start(&[
            Location::php(&fpm),
            Location::php_unix(&fpm),
            Location::py(gunicorn.port()),
        ])
        .context("starting nginx")?;
        Ok(Self {
            nginx,
            gunicorn,
            fpm,
        })
    }

    /// Every server process (masters and workers): the workload's CPU besides wrk's.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![
            self.nginx.master_pid(),
            self.fpm.master_pid(),
            self.gunicorn.arbiter_pid(),
        ];
        pids.extend(self.nginx.worker_pids());
        pids.extend(self.fpm.worker_pids());
        pids.extend(self.gunicorn.worker_pids());
        pids
    }

    pub fn targets(&self) -> Vec<Target> {
        let base = format!("http://127.0.0.1:{}", self.nginx.port());
        vec![
            Target {
                name: "nginx -> php-fpm (tcp)",
                url: format!("{base}/php/hello.php"),
            },
            Target {
                name: "nginx -> php-fpm (unix)",
                url: format!("{base}/php-unix/hello.php"),
            },
            Target {
                name: "nginx -> gunicorn",
                url: format!("{base}/py/hello"),
            },
        ]
    }
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub requests: u64,
    /// wrk's own CPU (getrusage of the reaped child).
    pub cpu: Duration,
}

/// Runs `wrk -t1 -c8 -dSECSs URL`; fails on any non-2xx answer or socket error, so a broken
/// upstream cannot pass as a fast one. No other child of the bench may be reaped meanwhile
/// (wrk's CPU is the RUSAGE_CHILDREN difference across it).
pub fn wrk(url: &str, secs: u64, tmp: &Path) -> Result<WrkResult> {
    let out_path = tmp.join("wrk.out");
    let out =
        File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
    let err = out.try_clone().context("duplicating wrk's output file")?;
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{WRK_CONNECTIONS}"))
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "5s"])
        .arg(url)
        .stdout(out)
        .stderr(err);
    let children_before = cpu::children_cpu()?;
    let mut proc = Proc::spawn("wrk", &mut cmd)?;
    let limit = Duration::from_secs(secs + 30);
    let Some(status) = proc.wait_timeout(limit)? else {
        bail!("wrk {url} did not finish within {limit:?}");
    };
    let cpu = cpu::children_cpu()?.saturating_sub(children_before);
    let text = fs::read_to_string(&out_path).context("reading wrk's output")?;
    if !status.success() {
        bail!("wrk {url} failed ({status}):\n{text}");
    }
    if text.contains("Non-2xx or 3xx responses") || text.contains("Socket errors") {
        bail!("wrk {url}: the upstream returned errors, the figure would be meaningless:\n{text}");
    }
    let requests_per_sec = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no `Requests/sec:` in wrk's output:\n{text}"))?;
    // "  12345 requests in 5.00s, 1.23MB read"
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no request count in wrk's output:\n{text}"))?;
    if requests == 0 {
        bail!("wrk {url} completed no request:\n{text}");
    }
    Ok(WrkResult {
        requests_per_sec,
        requests,
        cpu,
    })
}

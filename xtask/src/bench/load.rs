//! Steady load: wrk through a real nginx to php-fpm (TCP and unix pools) and to gunicorn,
//! started by the integration-test harness (stopped on drop), with and without rsttrace.

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use rsttrace_tests::{Gunicorn, GunicornOptions, Location, Nginx, PhpFpm, PhpFpmOptions, Pm};

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
    _gunicorn: Gunicorn,
    _fpm: PhpFpm,
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
            _gunicorn: gunicorn,
            _fpm: fpm,
        })
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
}

/// Runs `wrk -t1 -c8 -dSECSs URL`; fails on any non-2xx answer or socket error, so a broken
/// upstream cannot pass as a fast one.
pub fn wrk(url: &str, secs: u32, tmp: &Path) -> Result<WrkResult> {
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
    let mut proc = Proc::spawn("wrk", &mut cmd)?;
    let limit = Duration::from_secs(u64::from(secs) + 30);
    let Some(status) = proc.wait_timeout(limit)? else {
        bail!("wrk {url} did not finish within {limit:?}");
    };
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
    })
}

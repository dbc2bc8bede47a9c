//! A real Prometheus server (Debian's `prometheus`) on loopback with its own config and
//! storage in a temporary folder, scraping given targets every second; queried through its
//! HTTP API.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::http::http_request;
use crate::process::{free_port, Placement, Service};
use crate::tempdir::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Prometheus {
    // Field order is drop order: stop the server before removing its folder.
    service: Service,
    _dir: TempDir,
    port: u16,
}

impl Prometheus {
    /// Starts `prometheus` scraping `targets` (http://ADDR/metrics) every second and waits
    /// until it is ready.
    pub fn start(targets: &[SocketAddr]) -> Result<Self> {
        let dir = TempDir::new("prometheus")?;
        let port = free_port();
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: rsttrace\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let config = dir.write("prometheus.yml", config)?;
        let data = dir.subdir("data", 0o700)?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let mut service = Service::spawn(
            "prometheus",
            &mut cmd,
            &dir.path().join("prometheus.out"),
            libc::SIGTERM,
            &Placement::default(),
        )?;
        service.wait_ready("/-/ready", START_TIMEOUT, || {
            http_request(port, "GET", "/-/ready", b"", Duration::from_secs(2))
                .ok()
                .filter(|(status, _)| *status == 200)
        })?;
        Ok(Self {
            service,
            _dir: dir,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `GET /api/v1/query?query=EXPR`: the `data.result` vector.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = http_request(self.port, "GET", &path, b"", QUERY_TIMEOUT)?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("prometheus answered non-JSON ({status}): {body}"))?;
        if v["status"] != "success" {
            bail!("query {expr:?} failed ({status}): {body}");
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// `GET /api/v1/targets`: each active target's health and last error.
    pub fn targets(&self) -> Result<Value> {
        let (_, body) = http_request(self.port, "GET", "/api/v1/targets", b"", QUERY_TIMEOUT)?;
        serde_json::from_str(&body).context("prometheus /api/v1/targets")
    }

    pub fn log(&self) -> String {
        self.service.log()
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_queries() {
        assert_eq!(
            super::percent_encode("sum(x{a=\"b c\"})"),
            "sum%28x%7Ba%3D%22b%20c%22%7D%29"
        );
    }
}

//! `--metrics ADDR`: the counters of what rsttrace reported, as a Prometheus /metrics page.
//!
//! Exposition by `prometheus-client` (OpenMetrics text), served by hyper on the event
//! loop's own tokio runtime. Counters follow what is printed (after `--pid`/`--pid-of`),
//! like the summary. Labels are program names, never pids, and the label sets are capped
//! ([`MAX_LABEL_SETS`]): past the cap, new ones count under `receiver="other",peer="other"`.
use std::{
    collections::HashSet,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{body::Bytes, Request, Response, StatusCode};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, info::Info},
    registry::Registry,
};

use crate::model::Attribution;

/// Distinct `rsttrace_resets_total` label sets kept before new ones go to "other".
pub const MAX_LABEL_SETS: usize = 1000;
/// Scrapes served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResetLabels {
    pub cause: String,
    pub transport: String,
    /// The receiver's program name (comm), `unknown` when rsttrace did not see it.
    pub receiver: String,
    pub peer: String,
    /// `true`, `false` (a reset nobody read: harmless) or `unknown`.
    pub seen: String,
}

impl ResetLabels {
    pub fn of(a: &Attribution) -> Self {
        let comm = |t: Option<&crate::model::Task>| {
            t.map_or_else(|| "unknown".to_string(), |t| t.comm.to_string())
        };
        Self {
            cause: a.cause.as_str().to_string(),
            transport: a.transport.as_str().to_string(),
            receiver: comm(a.receiver.as_ref()),
            peer: comm(a.peer.as_ref()),
            seen: match a.seen_by_receiver {
                Some(true) => "true",
                Some(false) => "false",
                None => "unknown",
            }
            .to_string(),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    resets: Family<ResetLabels, Counter>,
    lost: Counter,
    skipped_runs: Counter,
    unexplained: Counter,
    label_sets: Mutex<HashSet<ResetLabels>>,
}

impl Metrics {
    pub fn new(version: &str, kernel: &str) -> Self {
        let mut registry = Registry::default();
        let resets = Family::<ResetLabels, Counter>::default();
        let lost = Counter::default();
        let skipped_runs = Counter::default();
        let unexplained = Counter::default();
        registry.register(
            "rsttrace_resets",
            "Resets reported, by cause, transport, receiver and peer program, and whether the receiver saw it",
            resets.clone(),
        );
        registry.register(
            "rsttrace_samples_lost",
            "Kernel samples dropped because the ring buffer was full",
            lost.clone(),
        );
        registry.register(
            "rsttrace_program_runs_skipped",
            "Program runs the kernel skipped (another BPF program was running on that CPU); each may have been a sample",
            skipped_runs.clone(),
        );
        registry.register(
            "rsttrace_nginx_unexplained",
            "nginx error.log reset lines that no reset rsttrace saw explains",
            unexplained.clone(),
        );
        registry.register(
            "rsttrace",
            "rsttrace's version and the kernel it runs on",
            Info::new(vec![
                ("version".to_string(), version.to_string()),
                ("kernel".to_string(), kernel.to_string()),
            ]),
        );
        Self {
            registry,
            resets,
            lost,
            skipped_runs,
            unexplained,
            label_sets: Mutex::new(HashSet::new()),
        }
    }

    pub fn reset(&self, a: &Attribution) {
        let mut labels = ResetLabels::of(a);
        if let Ok(mut sets) = self.label_sets.lock() {
            if !sets.contains(&labels) {
                if sets.len() >= MAX_LABEL_SETS {
                    labels.receiver = OTHER.into();
                    labels.peer = OTHER.into();
                } else {
                    sets.insert(labels.clone());
                }
            }
        }
        self.resets.get_or_create(&labels).inc();
    }

    pub fn lost(&self, samples: u64) {
        self.lost.inc_by(samples);
    }

    pub fn skipped_runs(&self, runs: u64) {
        self.skipped_runs.inc_by(runs);
    }

    pub fn unexplained(&self) {
        self.unexplained.inc();
    }

    /// The exposition, OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `--metrics` values: `PORT` (loopback), `HOST:PORT`, `[V6]:PORT`. Listening beyond
/// loopback takes an explicit address (`0.0.0.0:9477`).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = s
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = s.strip_prefix(':') {
        return Err(format!(
            "`{s}`: give the address too — `{port}` alone listens on loopback, `0.0.0.0{s}` on every address"
        ));
    }
    Err(format!(
        "`{s}` is not PORT, IP:PORT or [IPv6]:PORT (e.g. 9477 or 127.0.0.1:9477)"
    ))
}

/// Binds before anything is attached, so that a taken port stops rsttrace at once.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "address in use: another process listens there (`ss -ltnp 'sport = :{}'` names it); pick another port",
                addr.port()
            ),
            std::io::ErrorKind::AddrNotAvailable => {
                "no interface of this host has that address".to_string()
            }
            _ => e.to_string(),
        };
        anyhow::anyhow!("--metrics {addr}: {why}")
    })?;
    listener
        .set_nonblocking(true)
        .context("--metrics: making the listener non-blocking")?;
    Ok(listener)
}

/// Serves /metrics until the runtime ends. Within the runtime's context.
pub fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .context("--metrics: registering the listener")?;
    let open = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // EMFILE and the like: let the next accept try again.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                continue;
            }
            open.fetch_add(1, Ordering::Relaxed);
            let metrics = Arc::clone(&metrics);
            let open = Arc::clone(&open);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let metrics = Arc::clone(&metrics);
                    async move { Ok::<_, Infallible>(answer(&req, &metrics)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    Ok(())
}

fn answer<B>(req: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/" => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "rsttrace: the metrics are at /metrics\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the metrics are at /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cause, Task, Transport};

    fn reset(peer: &str) -> Attribution {
        let mut a = Attribution::pending(
            1,
            Transport::Tcp,
            "127.0.0.1:1".into(),
            "127.0.0.1:9000".into(),
            1,
            Some(Task {
                pid: 10,
                tid: 10,
                comm: "nginx".into(),
            }),
        );
        a.cause = Cause::Exit { exit_code: Some(3) };
        a.peer = Some(Task {
            pid: 20,
            tid: 20,
            comm: peer.into(),
        });
        a.seen_by_receiver = Some(true);
        a
    }

    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::new("0.1.0", "6.18.0");
        m.reset(&reset("php-fpm8.2"));
        m.reset(&reset("php-fpm8.2"));
        m.lost(3);
        m.skipped_runs(2);
        let text = m.encode();
        assert!(
            text.contains(
                "rsttrace_resets_total{cause=\"exit\",transport=\"tcp\",receiver=\"nginx\",peer=\"php-fpm8.2\",seen=\"true\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("rsttrace_samples_lost_total 3"), "{text}");
        assert!(
            text.contains("rsttrace_program_runs_skipped_total 2"),
            "{text}"
        );
        assert!(
            text.contains("rsttrace_info{version=\"0.1.0\",kernel=\"6.18.0\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn label_sets_are_capped() {
        let m = Metrics::new("v", "k");
        for i in 0..MAX_LABEL_SETS + 5 {
            m.reset(&reset(&format!("peer{i}")));
        }
        let text = m.encode();
        let sets = text
            .lines()
            .filter(|l| l.starts_with("rsttrace_resets_total{"))
            .count();
        assert_eq!(sets, MAX_LABEL_SETS + 1, "the cap plus one `other` set");
        assert!(
            text.contains("receiver=\"other\",peer=\"other\",seen=\"true\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("9477"),
            Ok("127.0.0.1:9477".parse().expect("addr"))
        );
        assert_eq!(
            parse_addr("0.0.0.0:9477"),
            Ok("0.0.0.0:9477".parse().expect("addr"))
        );
        assert_eq!(
            parse_addr("[::1]:9477"),
            Ok("[::1]:9477".parse().expect("addr"))
        );
        assert_eq!(
            parse_addr("localhost:9477"),
            Ok("127.0.0.1:9477".parse().expect("addr"))
        );
        assert!(parse_addr(":9477").is_err_and(|e| e.contains("0.0.0.0:9477")));
        assert!(parse_addr("nine").is_err());
    }

    #[test]
    fn a_taken_port_says_so() {
        let first = bind("127.0.0.1:0".parse().expect("addr")).expect("a free port");
        let taken = first.local_addr().expect("bound");
        let err = bind(taken).expect_err("in use").to_string();
        assert!(err.contains("address in use"), "{err}");
        assert!(err.contains(&taken.to_string()), "{err}");
    }
}

//! Ground truth from the kernel: tcp:tcp_receive_reset and tcp:tcp_send_reset recorded in a
//! private tracefs instance (its own buffer, so nothing else on the host is disturbed).

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::wait_until;

static COUNTER: AtomicU32 = AtomicU32::new(0);
const EVENTS: [&str; 2] = ["tcp/tcp_receive_reset", "tcp/tcp_send_reset"];

/// One line of the trace, e.g.
/// `nginx-812 [001] ..s1. 12.34: tcp_receive_reset: family=AF_INET sport=43210 dport=9000 ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// "tcp_receive_reset" or "tcp_send_reset".
    pub name: String,
    /// The task that was current when the event fired (on loopback, the sender for both).
    pub task_comm: String,
    pub task_pid: u32,
    /// The record's key=value fields as printed.
    pub fields: BTreeMap<String, String>,
    pub line: String,
}

impl TraceEvent {
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A numeric port field (receive_reset's sport/dport).
    pub fn port(&self, key: &str) -> Option<u16> {
        self.field(key)?.parse().ok()
    }

    /// The receiving socket's own end of a tcp_receive_reset record (saddrv6, sport).
    pub fn local(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.ip("saddrv6")?, self.port("sport")?))
    }

    /// The other end of a tcp_receive_reset record (daddrv6, dport): who sent the RST.
    pub fn remote(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.ip("daddrv6")?, self.port("dport")?))
    }

    /// An address field of TP_STORE_ADDRS (include/trace/events/tcp.h): the v6 fields hold
    /// an AF_INET socket's address v4-mapped, given back here in its IPv4 form.
    fn ip(&self, key: &str) -> Option<IpAddr> {
        let v6: Ipv6Addr = self.field(key)?.parse().ok()?;
        Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
    }

    /// The port of an "addr:port" field (send_reset's src/dest on kernels >= 6.10).
    pub fn addr_port(&self, key: &str) -> Option<u16> {
        self.field(key)?.rsplit(':').next()?.parse().ok()
    }

    fn parse(line: &str) -> Option<Self> {
        let (head, rest) = line.split_once(": tcp_")?;
        let (name, args) = rest.split_once(": ")?;
        // head: "<comm>-<pid> [cpu] flags timestamp"; comm may hold spaces or dashes.
        let task = head.get(..head.rfind(" [")?)?.trim();
        let (comm, pid) = task.rsplit_once('-')?;
        let fields = args
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Self {
            name: format!("tcp_{name}"),
            task_comm: comm.to_string(),
            task_pid: pid.parse().ok()?,
            fields,
            line: line.to_string(),
        })
    }
}

/// A tracefs instance recording TCP resets from creation until drop.
pub struct KernelResetTrace {
    dir: PathBuf,
}

impl KernelResetTrace {
    pub fn start() -> Result<Self> {
        let tracefs = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("instances").is_dir())
            .context("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)")?;
        let name = format!(
            "rsttrace-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tracefs.join("instances").join(name);
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let trace = Self { dir };
        for event in EVENTS {
            let enable = trace.dir.join("events").join(event).join("enable");
            if !enable.exists() {
                bail!("this kernel has no {event} tracepoint");
            }
            fs::write(&enable, "1").with_context(|| format!("enabling {}", enable.display()))?;
        }
        Ok(trace)
    }

    /// Everything recorded so far (the buffer is read, not consumed).
    pub fn events(&self) -> Vec<TraceEvent> {
        self.raw()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(TraceEvent::parse)
            .collect()
    }

    /// The raw trace text, for failure messages.
    pub fn raw(&self) -> String {
        fs::read_to_string(self.dir.join("trace")).unwrap_or_default()
    }

    /// Waits for a reset received by a socket whose remote port is `remote_port` (nginx's
    /// connection to the upstream on that port).
    pub fn wait_receive_reset(&self, remote_port: u16, timeout: Duration) -> Option<TraceEvent> {
        wait_until(timeout, || {
            self.events()
                .into_iter()
                .find(|e| e.name == "tcp_receive_reset" && e.port("dport") == Some(remote_port))
        })
    }

    /// Waits for a reset received by a socket connected to `remote` (address and port: the
    /// port alone may be another test's on another address).
    pub fn wait_receive_reset_from(
        &self,
        remote: SocketAddr,
        timeout: Duration,
    ) -> Option<TraceEvent> {
        wait_until(timeout, || {
            self.events()
                .into_iter()
                .find(|e| e.name == "tcp_receive_reset" && e.remote() == Some(remote))
        })
    }

    /// The tcp_send_reset that answered the connection `local_port` → `remote_port` (as seen
    /// from the receiving side), when this kernel prints addresses with ports (>= 6.10).
    pub fn send_reset_for(&self, local_port: u16, remote_port: u16) -> Option<TraceEvent> {
        self.events().into_iter().find(|e| {
            e.name == "tcp_send_reset"
                && e.addr_port("src") == Some(remote_port)
                && e.addr_port("dest") == Some(local_port)
        })
    }
}

impl Drop for KernelResetTrace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- kernel reset trace -----\n{}", self.raw());
        }
        for event in EVENTS {
            let _ = fs::write(self.dir.join("events").join(event).join("enable"), "0");
        }
        if let Err(e) = fs::remove_dir(&self.dir) {
            eprintln!("warning: could not remove {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TraceEvent;

    #[test]
    fn parses_receive_reset() {
        let line = "     php-fpm8.2-4242 [001] b.s3.   812.123456: tcp_receive_reset: \
                    family=AF_INET sport=43210 dport=9000 saddr=127.0.0.1 daddr=127.0.0.1 \
                    saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 sock_cookie=1f";
        let e = TraceEvent::parse(line).expect("a trace line");
        assert_eq!(e.name, "tcp_receive_reset");
        assert_eq!(e.task_comm, "php-fpm8.2");
        assert_eq!(e.task_pid, 4242);
        assert_eq!(e.port("sport"), Some(43210));
        assert_eq!(e.port("dport"), Some(9000));
        assert_eq!(e.local(), Some("127.0.0.1:43210".parse().expect("addr")));
        assert_eq!(e.remote(), Some("127.0.0.1:9000".parse().expect("addr")));
    }

    #[test]
    fn parses_an_ipv6_receive_reset() {
        let line = "  nginx-812 [000] ..s2. 9.5: tcp_receive_reset: family=AF_INET6 \
                    sport=43210 dport=9000 saddr=0.0.0.0 daddr=0.0.0.0 saddrv6=::1 \
                    daddrv6=::1 sock_cookie=2a";
        let e = TraceEvent::parse(line).expect("a trace line");
        assert_eq!(e.field("family"), Some("AF_INET6"));
        assert_eq!(e.local(), Some("[::1]:43210".parse().expect("addr")));
        assert_eq!(e.remote(), Some("[::1]:9000".parse().expect("addr")));
    }

    #[test]
    fn parses_send_reset() {
        let line = "  <idle>-0 [000] ..s2. 1.5: tcp_send_reset: skbaddr=0000 skaddr=0000 \
                    src=127.0.0.1:9000 dest=127.0.0.1:43210 state=TCP_ESTABLISHED \
                    reason=TCP_ABORT_ON_CLOSE";
        let e = TraceEvent::parse(line).expect("a trace line");
        assert_eq!(e.task_comm, "<idle>");
        assert_eq!(e.addr_port("src"), Some(9000));
        assert_eq!(e.addr_port("dest"), Some(43210));
        assert_eq!(e.field("reason"), Some("TCP_ABORT_ON_CLOSE"));
    }
}

//! A tiny TCP server that aborts connections: the upstream that resets on purpose.
//!
//! Per connection: `GET /ok...` (read up to the end of the headers) gets `200 ok` and a
//! normal close (FIN); anything else has at most 64 bytes read and is closed with SO_LINGER
//! {1, 0} while the rest of the request is unread — tcp_close() (net/ipv4/tcp.c) then sends a
//! RST (reason TCP_ABORT_ON_CLOSE, data was unread) instead of a FIN.
//!
//! Two implementations of one behaviour: [`ABORT_SERVER_PY`] for places that have the host's
//! python3 (a namespace, a docker container built from the host's /usr) and [`serve`] in Rust
//! for a guest kernel whose initramfs has no python (`rsttrace-vm-scenarios --serve ADDR`).
//! Both print `listening ADDR`, then a line per connection starting with `ok` or `abort`
//! and naming the peer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::Result;

use crate::netns::Netns;
use crate::process::{wait_listening_at, wait_until, Placement, Service};
use crate::tempdir::TempDir;

/// Bytes read from an aborted connection before the abort.
pub const ABORT_READ: usize = 64;
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The Python server: `python3 abort_server.py HOST PORT`.
pub const ABORT_SERVER_PY: &str = r#"
import socket, struct, sys, threading

def handle(conn, peer):
    data = conn.recv(64)
    if data.startswith(b"GET /ok"):
        while b"\r\n\r\n" not in data:
            more = conn.recv(4096)
            if not more:
                break
            data += more
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        conn.close()
        print("ok", peer[0], peer[1], flush=True)
        return
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    print("abort", peer[0], peer[1], "read", len(data), flush=True)

host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(64)
print("listening", host, port, flush=True)
while True:
    conn, peer = srv.accept()
    threading.Thread(target=handle, args=(conn, peer), daemon=True).start()
"#;

/// The Python server running under the harness (e.g. in a topology's backend namespace).
pub struct AbortServer {
    // Field order is drop order: stop the server before removing its folder.
    service: Service,
    _dir: TempDir,
    addr: SocketAddr,
}

impl AbortServer {
    /// Starts `python3 abort_server.py` on `addr` in `placement` and waits until it listens.
    pub fn start(addr: SocketAddr, placement: &Placement) -> Result<Self> {
        let dir = TempDir::new("abort-server")?;
        let script = dir.write("abort_server.py", ABORT_SERVER_PY)?;
        let mut cmd = python(&script);
        cmd.arg(addr.ip().to_string()).arg(addr.port().to_string());
        let log = dir.path().join("abort-server.log");
        let mut service = Service::spawn("abort-server", &mut cmd, &log, libc::SIGKILL, placement)?;
        let netns: Option<&Netns> = placement.netns.as_ref();
        service.wait_ready("listening socket", START_TIMEOUT, || {
            wait_listening_at(addr, netns, Duration::from_millis(100)).ok()
        })?;
        Ok(Self {
            service,
            _dir: dir,
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// Its output: `listening`, `ok PEER`, `abort PEER read N` lines.
    pub fn log(&self) -> String {
        self.service.log()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle).then_some(())).is_some()
    }
}

/// Debian's python3 (not a pyenv shim a developer's PATH may put first).
fn python(script: &Path) -> Command {
    let python = if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut cmd = Command::new(python);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .arg(script);
    cmd
}

/// The same server in Rust: serves `addr` until the process dies.
pub fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("listening {addr}");
    let _ = std::io::stdout().flush();
    for conn in listener.incoming() {
        let conn = conn?;
        thread::spawn(move || {
            let peer = conn
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |p| p.to_string());
            match handle(conn) {
                Ok(line) => println!("{line} {peer}"),
                Err(e) => println!("error {peer} {e}"),
            }
            let _ = std::io::stdout().flush();
        });
    }
    Ok(())
}

fn handle(mut conn: TcpStream) -> std::io::Result<String> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = [0u8; ABORT_READ];
    let n = conn.read(&mut buf)?;
    let head = &buf[..n];
    if head.starts_with(b"GET /ok") {
        let mut seen = head.to_vec();
        let mut more = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut more)? {
                0 => break,
                m => seen.extend_from_slice(&more[..m]),
            }
        }
        conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")?;
        return Ok("ok".into());
    }
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on the connection's own fd with a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(conn);
    Ok(format!("abort (read {n})"))
}

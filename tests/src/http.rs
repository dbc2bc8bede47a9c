//! A minimal HTTP/1.0 client over std's TcpStream (Connection: close, bounded waits).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Sends one request to 127.0.0.1:`port` and returns (status, body). The whole exchange must
/// finish within `timeout`. HTTP/1.0 keeps the response free of chunked encoding.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    http_request_at(addr, method, path, body, timeout)
}

/// [`http_request`] to any address (from inside a namespace: wrap it in
/// [`crate::Netns::enter`]).
pub fn http_request_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let what = format!("{method} http://{addr}{path}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("{what}: connecting"))?;
    stream
        .set_write_timeout(Some(timeout))
        .context("setting a write timeout")?;

    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .with_context(|| format!("{what}: sending the request"))?;

    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("{what}: no complete response within {timeout:?}");
        }
        stream
            .set_read_timeout(Some(left))
            .context("setting a read timeout")?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("{what}: no complete response within {timeout:?}")
            }
            Err(e) => return Err(e).with_context(|| format!("{what}: reading the response")),
        }
    }
    parse_response(&response).with_context(|| format!("{what}: parsing the response"))
}

/// [`http_request`] in a thread, for requests that hang until the test breaks the upstream.
pub fn spawn_http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> JoinHandle<Result<(u16, String)>> {
    let method = method.to_string();
    let path = path.to_string();
    thread::spawn(move || http_request(port, &method, &path, &body, timeout))
}

fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let status_line = text
        .lines()
        .next()
        .ok_or_else(|| anyhow!("empty response"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn parses_status_and_body() {
        let (status, body) =
            parse_response(b"HTTP/1.1 502 Bad Gateway\r\nServer: nginx\r\n\r\n<html>x</html>")
                .expect("valid response");
        assert_eq!(status, 502);
        assert_eq!(body, "<html>x</html>");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"hello\r\n\r\n").is_err());
    }
}

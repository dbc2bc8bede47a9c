//! Unit tests on lines real nginx wrote.
//!
//! testdata/nginx-1.22.1-error.log is byte for byte what Debian 12's nginx-light 1.22.1 wrote
//! on this machine (2026-11-30), started with `nginx -p DIR -c DIR/nginx.conf` on 127.0.0.1
//! and [::1]:18080, in front of:
//! - a Python server on 127.0.0.1:19081 and [::1]:19082 that closes with SO_LINGER 0 (a RST)
//!   right after the request (`recv() failed (104)`), after 1000 of 100000 body bytes
//!   (`readv() ... while reading upstream`), with a 16 MB request body unread (`writev()`),
//!   or closes plainly (a FIN: `upstream prematurely closed`);
//! - nothing on port 19089 (`connect() failed (111)`), no socket file / a socket file nobody
//!   listens on (`connect() to unix:... failed (2)` / `(111)`);
//! - php-fpm 8.2 on 127.0.0.1:19071 and on a unix socket, its worker killed with SIGKILL in
//!   the middle of a request (`recv() failed (104)`, as tests/scenarios.rs breaks it);
//! - raw requests with a fake upstream, quotes, a backslash and invalid UTF-8 in the URI,
//!   quotes in Host and a fake upstream in Referer; URIs of 1776-3000 bytes, so that nginx
//!   cut the line at 2047 bytes before, inside and after the upstream.

use std::path::PathBuf;

use super::parse::{ErrorLine, Kind, Level, Syscall, NGX_LINE_MAX};
use super::time::NginxTimeZone;
use super::upstream::{verify_upstream, UpstreamAddr, UpstreamMatch};

pub(super) const REAL_LOG: &[u8] = include_bytes!("testdata/nginx-1.22.1-error.log");

pub(super) fn real_lines() -> impl Iterator<Item = &'static [u8]> {
    REAL_LOG.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

/// The line of client connection `*n`, whose message starts with `start`.
pub(super) fn line(n: u64, start: &str) -> &'static [u8] {
    real_lines()
        .find(|l| {
            ErrorLine::parse(l)
                .is_some_and(|p| p.connection == Some(n) && p.message.starts_with(start.as_bytes()))
        })
        .unwrap_or_else(|| panic!("testdata has a line *{n} {start}"))
}

fn tcp(s: &str) -> UpstreamAddr {
    UpstreamAddr::Tcp(s.parse().expect("a socket address"))
}

fn unix(s: &str) -> UpstreamAddr {
    UpstreamAddr::Unix(PathBuf::from(s))
}

fn parsed(n: u64, start: &str) -> ErrorLine<'static> {
    ErrorLine::parse(line(n, start)).expect("parses")
}

#[test]
fn every_real_line_parses_from_the_left() {
    let mut count = 0;
    for l in real_lines() {
        let p = ErrorLine::parse(l).unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(l)));
        assert!(p.pid == 31641 || p.pid == 31409 || p.pid > 0, "pid");
        assert_eq!(p.pid as u64, p.tid, "nginx without threads logs pid#pid");
        assert_eq!(p.cut, l.len() >= NGX_LINE_MAX);
        count += 1;
    }
    assert!(count >= 50, "{count} lines");
}

#[test]
fn recv_reset_while_reading_response_header_tcp_and_v6() {
    let p = parsed(121, "recv()");
    assert_eq!(p.level, Level::Error);
    assert_eq!(p.pid, 31641);
    assert_eq!(p.kind, Kind::CallFailed(Syscall::Recv));
    let errno = p.errno.expect("errno");
    assert_eq!(
        (errno.code, errno.text),
        (104, b"Connection reset by peer".as_slice())
    );
    assert!(p.is_reset());
    assert_eq!(
        p.action,
        Some(b"reading response header from upstream".as_slice())
    );
    assert_eq!(
        p.message,
        b"recv() failed (104: Connection reset by peer) while reading response header from upstream"
    );
    let utc = p
        .time
        .to_utc(&NginxTimeZone::utc("test"))
        .expect("in range");
    assert_eq!(utc.earliest, 1_796_044_850); // 2026-11-30 13:20:50 (this machine runs in UTC)
    assert_eq!(
        p.verify_upstream(&tcp("127.0.0.1:19081")),
        UpstreamMatch::Confirmed
    );
    assert_eq!(
        p.verify_upstream(&tcp("127.0.0.1:1908")),
        UpstreamMatch::Mismatch
    );
    assert_eq!(
        p.verify_upstream(&tcp("127.0.0.1:19082")),
        UpstreamMatch::Mismatch
    );
    let ctx = p.request_context();
    assert_eq!(ctx.client, Some(b"127.0.0.1".as_slice()));
    assert_eq!(ctx.server, Some(b"localhost".as_slice()));
    assert_eq!(ctx.request, Some(b"GET /v4/recv HTTP/1.1".as_slice()));
    assert_eq!(
        ctx.upstream,
        Some(b"http://127.0.0.1:19081/v4/recv".as_slice())
    );
    assert_eq!(ctx.host, Some(b"127.0.0.1:18080".as_slice()));
    assert!(ctx.unambiguous);

    let v6 = parsed(123, "recv()");
    assert!(v6.is_reset());
    assert_eq!(
        v6.verify_upstream(&tcp("[::1]:19082")),
        UpstreamMatch::Confirmed
    );
    assert_eq!(
        v6.verify_upstream(&tcp("127.0.0.1:19082")),
        UpstreamMatch::Mismatch
    );
}

#[test]
fn readv_and_writev_resets() {
    let readv = parsed(125, "readv()");
    assert_eq!(readv.kind, Kind::CallFailed(Syscall::Readv));
    assert!(readv.is_reset());
    assert_eq!(readv.action, Some(b"reading upstream".as_slice()));
    assert_eq!(
        readv.verify_upstream(&tcp("127.0.0.1:19081")),
        UpstreamMatch::Confirmed
    );

    let writev = parsed(9, "writev()");
    assert_eq!(writev.kind, Kind::CallFailed(Syscall::Writev));
    assert!(writev.is_reset());
    assert_eq!(
        writev.action,
        Some(b"sending request to upstream".as_slice())
    );
    assert_eq!(
        writev.verify_upstream(&tcp("127.0.0.1:19081")),
        UpstreamMatch::Confirmed
    );
    assert_eq!(
        writev.request_context().request,
        Some(b"POST /v4/writev HTTP/1.1".as_slice())
    );
}

#[test]
fn prematurely_closed_is_a_fin_not_a_reset() {
    for (n, addr) in [(127, "127.0.0.1:19081"), (129, "[::1]:19082")] {
        let p = parsed(n, "upstream prematurely closed");
        assert_eq!(p.kind, Kind::PrematurelyClosed);
        assert_eq!(p.errno, None);
        assert!(!p.is_reset());
        assert_eq!(p.verify_upstream(&tcp(addr)), UpstreamMatch::Confirmed);
    }
}

#[test]
fn connect_refused_tcp_v4_v6_and_unix() {
    for (n, addr) in [
        (133, "127.0.0.1:19089"),
        (135, "[::1]:19089"),
        (137, "[::1]:19089"),
    ] {
        let p = parsed(n, "connect()");
        assert_eq!(p.kind, Kind::CallFailed(Syscall::Connect));
        assert!(p.is_refused() && !p.is_reset());
        assert_eq!(p.connect_to, None);
        assert_eq!(
            p.verify_upstream(&tcp(addr)),
            UpstreamMatch::Confirmed,
            "*{n}"
        );
    }
    let dead = parsed(141, "connect() to");
    assert!(dead.is_refused());
    assert_eq!(
        dead.connect_to,
        Some(b"unix:/tmp/ngxcap/dead.sock".as_slice())
    );
    assert_eq!(
        dead.verify_upstream(&unix("/tmp/ngxcap/dead.sock")),
        UpstreamMatch::Confirmed
    );
    assert_eq!(
        dead.verify_upstream(&unix("/tmp/ngxcap/dead.so")),
        UpstreamMatch::Mismatch
    );
    assert_eq!(
        dead.verify_upstream(&tcp("127.0.0.1:19089")),
        UpstreamMatch::Mismatch
    );

    let missing = parsed(139, "connect() to");
    assert_eq!(missing.level, Level::Crit);
    assert_eq!(missing.errno.map(|e| e.code), Some(2));
    assert_eq!(
        missing.verify_upstream(&unix("/tmp/ngxcap/missing.sock")),
        UpstreamMatch::Confirmed
    );
}

#[test]
fn php_fpm_worker_killed_tcp_and_unix() {
    let tcp_line = parsed(143, "recv()");
    assert!(tcp_line.is_reset());
    assert_eq!(
        tcp_line.verify_upstream(&tcp("127.0.0.1:19071")),
        UpstreamMatch::Confirmed
    );
    assert_eq!(
        tcp_line.request_context().upstream,
        Some(b"fastcgi://127.0.0.1:19071".as_slice())
    );
    let unix_line = parsed(145, "recv()");
    assert!(unix_line.is_reset());
    assert_eq!(
        unix_line.verify_upstream(&unix("/tmp/ngxcap/php.sock")),
        UpstreamMatch::Confirmed
    );
    assert_eq!(
        unix_line.request_context().upstream,
        Some(b"fastcgi://unix:/tmp/ngxcap/php.sock:".as_slice())
    );
}

#[test]
fn injected_text_in_uri_host_and_referer_changes_nothing() {
    // Referer: http://r.example/", upstream: "http://6.6.6.6:1/"
    let p = parsed(147, "recv()");
    assert_eq!(
        p.verify_upstream(&unix("/tmp/ngxcap/php.sock")),
        UpstreamMatch::Confirmed
    );
    assert_eq!(
        p.verify_upstream(&tcp("6.6.6.6:1")),
        UpstreamMatch::Mismatch
    );
    let ctx = p.request_context();
    assert_eq!(
        ctx.referrer,
        Some(b"http://r.example/\", upstream: \"http://6.6.6.6:1/\"".as_slice())
    );

    // URI: /v4/recv",upstream:"http://6.6.6.6:1/\"\xff\xfe ; Host: a"b\ ;
    // Referer: x", upstream: "http://[::1]:19082/v6/
    let p = parsed(149, "recv()");
    assert_eq!((p.pid, p.connection), (31641, Some(149)));
    assert!(p.is_reset());
    assert_eq!(
        p.verify_upstream(&tcp("127.0.0.1:19081")),
        UpstreamMatch::Confirmed
    );
    assert_eq!(
        p.verify_upstream(&tcp("6.6.6.6:1")),
        UpstreamMatch::Mismatch
    );
    assert_eq!(
        p.verify_upstream(&tcp("[::1]:19082")),
        UpstreamMatch::Mismatch
    );
    let ctx = p.request_context();
    assert_eq!(ctx.host, Some(b"a\"b\\".as_slice()));
    assert!(ctx
        .request
        .is_some_and(|r| r.ends_with(b"\xff\xfe HTTP/1.1")));
}

#[test]
fn http10_without_host_and_a_request_nginx_refused() {
    let p = parsed(151, "recv()");
    assert_eq!(
        p.verify_upstream(&tcp("127.0.0.1:19081")),
        UpstreamMatch::Confirmed
    );
    let ctx = p.request_context();
    assert_eq!(ctx.host, None);
    assert_eq!(ctx.referrer, Some(b"http://ref/".as_slice()));

    let refused = parsed(169, "client sent invalid request");
    assert_eq!(refused.level, Level::Info);
    assert_eq!(refused.kind, Kind::Other);
    assert_eq!(
        refused.verify_upstream(&tcp("127.0.0.1:19081")),
        UpstreamMatch::Unverifiable
    );
}

#[test]
fn lines_cut_at_2047_bytes() {
    // *153: cut right after `upstream: "http://127.0.0.1:19081`: is the port 19081 or 190810?
    let p = parsed(153, "recv()");
    assert!(p.cut && p.is_reset());
    assert_eq!(
        p.verify_upstream(&tcp("127.0.0.1:19081")),
        UpstreamMatch::Cut
    );
    assert_eq!(
        p.verify_upstream(&tcp("127.0.0.1:9")),
        UpstreamMatch::Mismatch
    );
    // *155, *157, *159: cut inside the address or inside `", upstream: "`.
    assert_eq!(
        parsed(155, "recv()").verify_upstream(&tcp("127.0.0.1:19081")),
        UpstreamMatch::Cut
    );
    assert_eq!(
        parsed(157, "recv()").verify_upstream(&tcp("127.0.0.1:19081")),
        UpstreamMatch::Cut
    );
    assert_eq!(
        parsed(159, "recv()").verify_upstream(&tcp("127.0.0.1:19081")),
        UpstreamMatch::Cut
    );
    // *161: a 3000-byte URI: the request line itself is cut, no upstream at all.
    let p = parsed(161, "recv()");
    assert_eq!(
        (p.pid, p.connection, p.is_reset()),
        (31641, Some(161), true)
    );
    assert_eq!(
        p.verify_upstream(&tcp("127.0.0.1:19081")),
        UpstreamMatch::Cut
    );
    // The boundary after the address is in the line: confirmed, in a cut line.
    let tcp_cut = real_lines()
        .find(|l| {
            l.len() == NGX_LINE_MAX && l.ends_with(b"upstream: \"http://127.0.0.1:19081/v4/r")
        })
        .expect("the 1803-byte URI line");
    assert_eq!(
        verify_upstream(tcp_cut, &tcp("127.0.0.1:19081")),
        UpstreamMatch::ConfirmedInCutLine
    );
    let unix_cut = real_lines()
        .find(|l| l.len() == NGX_LINE_MAX && l.ends_with(b"dead.sock:\", h"))
        .expect("the 1776-byte URI line");
    assert_eq!(
        verify_upstream(unix_cut, &unix("/tmp/ngxcap/dead.sock")),
        UpstreamMatch::ConfirmedInCutLine
    );
    // *163, *165, *167: unix peer cut before its closing `:` or inside the path.
    for n in [163, 165, 167] {
        assert_eq!(
            parsed(n, "connect() to").verify_upstream(&unix("/tmp/ngxcap/dead.sock")),
            UpstreamMatch::Cut,
            "*{n}"
        );
    }
}

#[test]
fn lines_without_a_connection_and_cri_wrapped_lines() {
    let notice = b"2026/11/30 13:20:03 [notice] 31408#31408: start worker process 31409";
    let p = ErrorLine::parse(notice).expect("parses");
    assert_eq!(
        (p.level, p.pid, p.connection, p.kind),
        (Level::Notice, 31408, None, Kind::Other)
    );
    assert_eq!(p.message, b"start worker process 31409");

    let mut cri = b"2026-11-30T13:20:50.123456789Z stderr F ".to_vec();
    cri.extend_from_slice(line(121, "recv()"));
    let p = ErrorLine::parse(&cri).expect("parses");
    assert_eq!(p.connection, Some(121));
    assert_eq!(
        p.verify_upstream(&tcp("127.0.0.1:19081")),
        UpstreamMatch::Confirmed
    );
    for junk in [
        &b""[..],
        b"\xff\xfe",
        b"2026/11/30 13:20:03 [nope] 1#1: x",
        b"2026/11/30 13:20:03",
    ] {
        assert!(ErrorLine::parse(junk).is_none());
    }
}

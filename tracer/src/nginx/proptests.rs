//! Property tests: text a client controls (URI, Host, Referer) and text nobody should send
//! (binary, 64 KiB) injected into lines laid out exactly as ngx_log_error_core() and
//! ngx_http_log_error_handler() lay them out (the layout the real lines in testdata show).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::parse::{ErrorLine, Kind, Level, Syscall, NGX_LINE_MAX};
use super::real_lines::real_lines;
use super::upstream::{UpstreamAddr, UpstreamMatch};

/// Injected pieces: fake upstreams in every shape nginx writes, quotes, escapes, the field
/// separators, invalid UTF-8, and random bytes.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"\", upstream: \"http://6.6.6.6:1/".to_vec()),
        Just(b"\", upstream: \"http://6.6.6.6:1\"".to_vec()),
        Just(b"\", upstream: \"fastcgi://unix:/run/evil.sock:\", host: \"x".to_vec()),
        Just(b"\",upstream:\"http://6.6.6.6:1/\"".to_vec()),
        Just(b" HTTP/1.1\", upstream: \"http://6.6.6.6:1/\", host: \"h".to_vec()),
        Just(b"\", subrequest: \"/x".to_vec()),
        Just(b"\", referrer: \"".to_vec()),
        Just(b", client: 6.6.6.6, server: evil, request: \"GET / HTTP/1.1".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\\\"".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"\xff\xfe\xc3\x28\xe2\x82".to_vec()),
        Just(b"%22%20".to_vec()),
        prop::collection::vec(any::<u8>(), 0..24),
    ]
}

fn injected(parts: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(fragment(), 0..parts).prop_map(|v| v.concat())
}

/// Mostly short, sometimes up to 64 KiB.
fn injected_or_huge() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => injected(6),
        1 => prop::collection::vec(any::<u8>(), 2000..66_000),
        1 => (injected(3), 2000usize..66_000).prop_map(|(mut v, n)| { v.resize(n, b'A'); v }),
    ]
}

/// What nginx 1.18-1.20 lets through in an HTTP/1.x URI: no CR, LF or NUL, and a space never
/// followed by `H` (src/http/ngx_http_parse.c, sw_http_09).
fn old_nginx_uri(raw: &[u8]) -> Vec<u8> {
    let mut uri = vec![b'/'];
    for &b in raw {
        let b = if matches!(b, b'\r' | b'\n' | 0) {
            b'x'
        } else {
            b
        };
        let b = if b == b'H' && uri.last() == Some(&b' ') {
            b'h'
        } else {
            b
        };
        uri.push(b);
    }
    uri
}

/// 1.21.1+: no byte <= 0x20 and no 0x7f in the URI.
fn modern_uri(raw: &[u8]) -> Vec<u8> {
    let mut uri = vec![b'/'];
    uri.extend(
        raw.iter()
            .map(|&b| if b <= 0x20 || b == 0x7f { b'_' } else { b }),
    );
    uri
}

/// A header value: no CR, LF or NUL.
fn header(raw: &[u8]) -> Vec<u8> {
    raw.iter()
        .map(|&b| {
            if matches!(b, b'\r' | b'\n' | 0) {
                b'x'
            } else {
                b
            }
        })
        .collect()
}

/// A Host nginx 1.21.1+ accepts (ngx_http_validate_host): nothing <= 0x20, no 0x7f, no `/`.
fn modern_host(raw: &[u8]) -> Vec<u8> {
    raw.iter()
        .map(|&b| {
            if b <= 0x20 || b == 0x7f || b == b'/' {
                b'h'
            } else {
                b
            }
        })
        .collect()
}

fn upstream() -> impl Strategy<Value = UpstreamAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), 1u16..)
            .prop_map(|(ip, port)| UpstreamAddr::Tcp((std::net::Ipv4Addr::from(ip), port).into())),
        (any::<[u16; 8]>(), 1u16..)
            .prop_map(|(ip, port)| UpstreamAddr::Tcp((std::net::Ipv6Addr::from(ip), port).into())),
        "/[a-z0-9_.-]{1,12}(/[a-z0-9_.-]{1,12}){0,3}"
            .prop_map(|p| UpstreamAddr::Unix(PathBuf::from(p))),
    ]
}

const FAKES: [&str; 2] = ["6.6.6.6:1", "/run/evil.sock"];

fn fake(s: &str) -> UpstreamAddr {
    match s.parse() {
        Ok(addr) => UpstreamAddr::Tcp(addr),
        Err(_) => UpstreamAddr::Unix(PathBuf::from(s)),
    }
}

/// The fixed messages nginx writes, with what the parser must read from them.
const MESSAGES: [(&str, Kind, Option<u32>); 6] = [
    (
        "recv() failed (104: Connection reset by peer) while reading response header from upstream",
        Kind::CallFailed(Syscall::Recv),
        Some(104),
    ),
    (
        "readv() failed (104: Connection reset by peer) while reading upstream",
        Kind::CallFailed(Syscall::Readv),
        Some(104),
    ),
    (
        "writev() failed (104: Connection reset by peer) while sending request to upstream",
        Kind::CallFailed(Syscall::Writev),
        Some(104),
    ),
    (
        "connect() failed (111: Connection refused) while connecting to upstream",
        Kind::CallFailed(Syscall::Connect),
        Some(111),
    ),
    (
        "upstream prematurely closed connection while reading response header from upstream",
        Kind::PrematurelyClosed,
        None,
    ),
    (
        "upstream timed out (110: Connection timed out) while reading response header from upstream",
        Kind::TimedOut,
        Some(110),
    ),
];

const LEVELS: [Level; 3] = [Level::Error, Level::Crit, Level::Warn];

#[derive(Debug, Clone)]
struct Spec {
    pid: u32,
    connection: u64,
    level: usize,
    message: usize,
    client: Vec<u8>,
    uri: Vec<u8>,
    upstream: UpstreamAddr,
    host: Option<Vec<u8>>,
    referrer: Option<Vec<u8>>,
}

impl Spec {
    /// The line as nginx writes it, cut at 2047 bytes as ngx_log_error_core() cuts it.
    fn render(&self) -> Vec<u8> {
        let mut l = format!(
            "2026/11/30 13:20:50 [{}] {}#{}: *{} {}, client: ",
            LEVELS[self.level].as_str(),
            self.pid,
            self.pid,
            self.connection,
            MESSAGES[self.message].0
        )
        .into_bytes();
        l.extend_from_slice(&self.client);
        l.extend_from_slice(b", server: localhost, request: \"GET ");
        l.extend_from_slice(&self.uri);
        l.extend_from_slice(b" HTTP/1.1\", upstream: \"");
        match &self.upstream {
            UpstreamAddr::Tcp(addr) => {
                // proxy_pass sends the raw URI when it holds no space (`valid_unparsed_uri`),
                // else an escaped one (ngx_escape_uri escapes the space and `"`).
                l.extend_from_slice(format!("http://{addr}").as_bytes());
                let escape = self.uri.contains(&b' ');
                for &b in &self.uri {
                    match b {
                        b' ' => l.extend_from_slice(b"%20"),
                        b'"' if escape => l.extend_from_slice(b"%22"),
                        _ => l.push(b),
                    }
                }
            }
            UpstreamAddr::Unix(path) => {
                l.extend_from_slice(format!("fastcgi://unix:{}:", path.display()).as_bytes())
            }
        }
        l.push(b'"');
        if let Some(h) = &self.host {
            l.extend_from_slice(b", host: \"");
            l.extend_from_slice(h);
            l.push(b'"');
        }
        if let Some(r) = &self.referrer {
            l.extend_from_slice(b", referrer: \"");
            l.extend_from_slice(r);
            l.push(b'"');
        }
        l.truncate(NGX_LINE_MAX);
        l
    }
}

prop_compose! {
    fn spec(uri: fn(&[u8]) -> Vec<u8>, host: fn(&[u8]) -> Vec<u8>)
        (pid in 1u32..4_194_304, connection in any::<u64>(), level in 0..LEVELS.len(),
         message in 0..MESSAGES.len(), upstream in upstream(),
         raw_uri in injected_or_huge(), raw_host in prop::option::of(injected(6)),
         raw_ref in prop::option::of(injected(6)))
        -> Spec {
        Spec {
            pid, connection, level, message, upstream,
            client: b"127.0.0.1".to_vec(),
            uri: uri(&raw_uri),
            host: raw_host.map(|h| host(&h)),
            referrer: raw_ref.map(|r| header(&r)),
        }
    }
}

fn assert_left_fields(spec: &Spec, line: &[u8]) {
    let p = ErrorLine::parse(line).expect("a line laid out by nginx parses");
    let (_, kind, errno) = MESSAGES[spec.message];
    assert_eq!(p.pid, spec.pid);
    assert_eq!(p.tid, u64::from(spec.pid));
    assert_eq!(p.connection, Some(spec.connection));
    assert_eq!(p.level, LEVELS[spec.level]);
    assert_eq!(p.kind, kind);
    assert_eq!(p.errno.map(|e| e.code), errno);
    assert_eq!(p.cut, line.len() == NGX_LINE_MAX);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever the client part holds, the fields left of it are read the same.
    #[test]
    fn left_fields_never_change(
        mut spec in spec(old_nginx_uri, header),
        client in injected_or_huge(),
    ) {
        spec.client = header(&client);
        let line = spec.render();
        assert_left_fields(&spec, &line);
        // Never panics, whatever the answer.
        let _ = ErrorLine::parse(&line).map(|p| (p.verify_upstream(&spec.upstream), p.request_context()));
    }

    /// nginx 1.18-1.20 (spaces in URI and Host allowed): a forgery can at worst make the
    /// answer Ambiguous; it never confirms a fake upstream, and never denies the true one.
    #[test]
    fn forgeries_never_confirm_a_fake_upstream(spec in spec(old_nginx_uri, header)) {
        let line = spec.render();
        assert_left_fields(&spec, &line);
        let p = ErrorLine::parse(&line).expect("parses");
        let truth = p.verify_upstream(&spec.upstream);
        if p.cut {
            prop_assert!(matches!(truth, UpstreamMatch::ConfirmedInCutLine | UpstreamMatch::Cut), "{truth:?}");
        } else {
            prop_assert!(matches!(truth, UpstreamMatch::Confirmed | UpstreamMatch::Ambiguous), "{truth:?}");
        }
        for f in FAKES.map(fake) {
            if f != spec.upstream {
                let v = p.verify_upstream(&f);
                prop_assert!(!matches!(v, UpstreamMatch::Confirmed | UpstreamMatch::ConfirmedInCutLine), "{f:?}: {v:?}");
            }
        }
    }

    /// nginx 1.21.1+ (Debian 12's 1.22, Ubuntu 24.04's 1.24): whatever the URI, Host and
    /// Referer hold, a whole line confirms the true upstream and no other.
    #[test]
    fn modern_nginx_lines_always_confirm_the_true_upstream(spec in spec(modern_uri, modern_host)) {
        let line = spec.render();
        assert_left_fields(&spec, &line);
        let p = ErrorLine::parse(&line).expect("parses");
        let truth = p.verify_upstream(&spec.upstream);
        if p.cut {
            prop_assert!(matches!(truth, UpstreamMatch::ConfirmedInCutLine | UpstreamMatch::Cut), "{truth:?}");
        } else {
            prop_assert_eq!(truth, UpstreamMatch::Confirmed);
            prop_assert!(p.request_context().unambiguous);
        }
        for f in FAKES.map(fake) {
            if f != spec.upstream {
                let v = p.verify_upstream(&f);
                prop_assert!(matches!(v, UpstreamMatch::Mismatch | UpstreamMatch::Cut), "{f:?}: {v:?}");
            }
        }
    }

    /// Random bytes, and real lines with bytes flipped or cut anywhere, never panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        pick in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        let _ = ErrorLine::parse(&bytes).map(|p| (p.verify_upstream(&fake(FAKES[0])), p.request_context()));
        let lines: Vec<&[u8]> = real_lines().collect();
        let mut real = lines[pick.index(lines.len())].to_vec();
        let at = flip.0.index(real.len());
        real[at] ^= flip.1;
        real.truncate(cut.index(real.len() + 1));
        let _ = ErrorLine::parse(&real).map(|p| (p.verify_upstream(&fake(FAKES[1])), p.request_context()));
    }
}

/// The worst lines for a search-based reader: 64 KiB of separators and fake upstreams, and
/// 64 KiB of binary. Each is parsed and verified well within a poll tick.
#[test]
fn huge_and_binary_lines_take_bounded_time() {
    let head = b"2026/11/30 13:20:50 [error] 7#7: *1 recv() failed (104: Connection reset by peer) \
                 while reading response header from upstream, client: 1.2.3.4, server: s, request: \"GET /";
    let mut attacks: Vec<Vec<u8>> = Vec::new();
    for filler in [
        &b"\", upstream: \""[..],
        b"\", upstream: \"http://6.6.6.6:1/\", host: \"",
        b" HTTP/1.1\", subrequest: \"",
        b"\", subrequest: \"\", upstream: \"http://6.6.6.6:1/ HTTP/1.1\"",
        b"\xff\x00\n\r\"\\",
    ] {
        let mut l = head.to_vec();
        while l.len() < 65_536 {
            l.extend_from_slice(filler);
        }
        attacks.push(l);
    }
    attacks.push(
        (0..65_536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    );
    for line in &attacks {
        let start = Instant::now();
        let parsed = ErrorLine::parse(line);
        if let Some(p) = &parsed {
            assert_eq!((p.pid, p.connection), (7, Some(1)));
            let v = p.verify_upstream(&fake(FAKES[0]));
            assert!(
                !matches!(
                    v,
                    UpstreamMatch::Confirmed | UpstreamMatch::ConfirmedInCutLine
                ),
                "{v:?}"
            );
            let _ = p.request_context();
        }
        let took = start.elapsed();
        // Unoptimised test builds on a loaded 2-core machine: still far below a 100 ms tick.
        assert!(
            took < Duration::from_millis(100),
            "{took:?} for a {}-byte line",
            line.len()
        );
    }
}

/// nginx before 1.21.1 let an HTTP/2 :path hold spaces and `H`, so a path can carry a whole
/// fake `HTTP/2.0", upstream: "..."`: both readings stand, and the answer is Ambiguous (the
/// join falls back to pid, connection and time) for the true upstream and the fake alike.
#[test]
fn old_http2_paths_and_client_subrequests_make_forgeries_ambiguous() {
    let line =
        b"2026/11/30 13:20:50 [error] 7#7: *1 recv() failed (104: Connection reset by peer) \
        while reading response header from upstream, client: 1.2.3.4, server: s, request: \
        \"GET /a HTTP/2.0\", upstream: \"http://6.6.6.6:1/\", host: \"x HTTP/2.0\", \
        upstream: \"http://127.0.0.1:9000/a%20HTTP/2.0%22\", host: \"h\"";
    let p = ErrorLine::parse(line).expect("parses");
    assert_eq!(
        p.verify_upstream(&fake("127.0.0.1:9000")),
        UpstreamMatch::Ambiguous
    );
    assert_eq!(p.verify_upstream(&fake(FAKES[0])), UpstreamMatch::Ambiguous);
    assert!(!p.request_context().unambiguous);

    // An SSI subrequest whose (decoded) URI the client chose.
    let line = b"2026/11/30 13:20:50 [error] 7#7: *1 recv() failed (104: Connection reset by peer) \
        while reading response header from upstream, client: 1.2.3.4, server: s, request: \
        \"GET /page HTTP/1.1\", subrequest: \"/inc/x\", upstream: \"fastcgi://unix:/run/evil.sock:\", host: \"y\", \
        upstream: \"fastcgi://unix:/run/php/php8.2-fpm.sock:\", host: \"h\"";
    let p = ErrorLine::parse(line).expect("parses");
    assert_eq!(
        p.verify_upstream(&fake("/run/php/php8.2-fpm.sock")),
        UpstreamMatch::Ambiguous
    );
    assert_eq!(p.verify_upstream(&fake(FAKES[1])), UpstreamMatch::Ambiguous);
    // Cut, the same forgery confirms nothing: subrequest readings do not count in cut lines.
    let mut cut = line[..line.len() - 70].to_vec();
    cut.resize(NGX_LINE_MAX, b'h');
    let p = ErrorLine::parse(&cut).expect("parses");
    assert_eq!(p.verify_upstream(&fake(FAKES[1])), UpstreamMatch::Cut);
}

//! Does an error.log line name upstream X? Verified where nginx writes it, never searched for.
//!
//! The context nginx appends (src/http/ngx_http_request.c, `ngx_http_log_error()` then
//! `ngx_http_log_error_handler()`, the same from 1.18 to 1.27) is, in this order:
//!
//! ```text
//! , client: ADDR, server: NAME, request: "REQUEST LINE"[, subrequest: "URI"]
//!   [, upstream: "SCHEME PEER[:]URI"][, host: "HOST"][, referrer: "REFERER"]
//! ```
//!
//! (`:` only for unix peers, so `fastcgi://unix:/run/php/php8.2-fpm.sock:`). The request
//! line, the subrequest URI, the upstream URI, Host and Referer come from the client, nginx
//! escapes none of them, and any of them can hold `", upstream: "http://...`. So this module
//! lists every way the line can be read under nginx's own grammar and only answers
//! "confirmed" when all of them agree. What keeps forged readings out:
//! - a request line is `METHOD SP+ URI[ SP+ HTTP/D.D]`; nginx's parser (src/http/ngx_http_parse.c,
//!   `sw_http_09`) never lets a space inside the URI be followed by `H` (1.21.1+ refuses spaces
//!   altogether), so a reading that swallows the real ` HTTP/1.1", upstream: ...` into a longer
//!   request line is not a request line;
//! - an HTTP/0.9 request (no version) has no headers, so no host or referrer can follow;
//! - the upstream value holds no space: nginx sends the upstream the raw URI only when it has
//!   none (`valid_unparsed_uri`), else an escaped one.
//!
//! The true reading is always among the readings, so a forged upstream can at worst make the
//! answer [`UpstreamMatch::Ambiguous`], never [`UpstreamMatch::Confirmed`].

use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::parse::{find, ErrorLine, NGX_LINE_MAX};

/// An upstream rsttrace knows for a reset: the peer of nginx's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    Tcp(SocketAddr),
    /// A unix socket path, as nginx names it (`fastcgi_pass unix:PATH`).
    Unix(PathBuf),
}

impl UpstreamAddr {
    /// How nginx prints this peer (ngx_sock_ntop with port; `unix:PATH` plus the `:` that
    /// ngx_http_log_error_handler puts between a unix peer and the URI).
    fn expected(&self) -> Vec<u8> {
        match self {
            UpstreamAddr::Tcp(SocketAddr::V4(a)) => format!("{}:{}", a.ip(), a.port()).into_bytes(),
            UpstreamAddr::Tcp(SocketAddr::V6(a)) => {
                format!("[{}]:{}", a.ip(), a.port()).into_bytes()
            }
            UpstreamAddr::Unix(path) => {
                let mut v = b"unix:".to_vec();
                v.extend_from_slice(path.as_os_str().as_bytes());
                v.push(b':');
                v
            }
        }
    }
}

/// The answer of [`verify_upstream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamMatch {
    /// Every reading of the line names this upstream, whole, in a line nginx wrote whole.
    Confirmed,
    /// As `Confirmed`, but the line was cut at 2 KiB after the upstream. Weaker: on nginx
    /// before 1.21.1 an HTTP/2 path may hold spaces, and a forged upstream in a 2 KiB path
    /// would look the same as this.
    ConfirmedInCutLine,
    /// The line names another upstream.
    Mismatch,
    /// The line was cut (nginx keeps 2047 bytes) before the upstream, or inside it: join on
    /// pid, connection and time alone, and say so.
    Cut,
    /// The line can be read with different upstreams: the client injected text. Join on pid,
    /// connection and time alone, and say so.
    Ambiguous,
    /// A whole line without an upstream (nginx had none for this request).
    Absent,
    /// A message nginx copies foreign text into (FastCGI stderr, ...), or no line of nginx's:
    /// its context cannot be located.
    Unverifiable,
}

/// Checks whether `line` carries `upstream: "SCHEME://<candidate>` where nginx puts it.
pub fn verify_upstream(line: &[u8], candidate: &UpstreamAddr) -> UpstreamMatch {
    match ErrorLine::parse(line) {
        Some(parsed) => parsed.verify_upstream(candidate),
        None => UpstreamMatch::Unverifiable,
    }
}

/// The request fields of a line, for display. Fields the grammar cannot pin down (several
/// readings) are `None` and `unambiguous` is false.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext<'a> {
    pub client: Option<&'a [u8]>,
    pub server: Option<&'a [u8]>,
    pub request: Option<&'a [u8]>,
    /// The upstream nginx wrote (`fastcgi://127.0.0.1:9000`); partial when `cut`.
    pub upstream: Option<&'a [u8]>,
    pub host: Option<&'a [u8]>,
    pub referrer: Option<&'a [u8]>,
    pub unambiguous: bool,
}

impl<'a> ErrorLine<'a> {
    /// See [`verify_upstream`].
    pub fn verify_upstream(&self, candidate: &UpstreamAddr) -> UpstreamMatch {
        let Some(readings) = self.readings() else {
            return UpstreamMatch::Unverifiable;
        };
        if readings.list.is_empty() {
            return if self.cut || readings.too_many {
                UpstreamMatch::Cut
            } else {
                UpstreamMatch::Absent
            };
        }
        if readings.too_many {
            return UpstreamMatch::Ambiguous;
        }
        let expected = candidate.expected();
        let unix = matches!(candidate, UpstreamAddr::Unix(_));
        let (mut yes, mut no, mut unknown) = (0, 0, 0);
        for r in &readings.list {
            match compare(r.value, r.complete, &expected, unix) {
                Some(true) => yes += 1,
                Some(false) => no += 1,
                None => unknown += 1,
            }
        }
        match (yes, no, unknown) {
            (_, 0, 0) if self.cut => UpstreamMatch::ConfirmedInCutLine,
            (_, 0, 0) => UpstreamMatch::Confirmed,
            (0, _, 0) => UpstreamMatch::Mismatch,
            (0, 0, _) => UpstreamMatch::Cut,
            _ => UpstreamMatch::Ambiguous,
        }
    }

    /// Client, server, request line, upstream, host and referrer as nginx wrote them.
    pub fn request_context(&self) -> RequestContext<'a> {
        let Some(ctx) = self.context.map(|c| bounded(c, self.cut)) else {
            return RequestContext::default();
        };
        let (client, server, request_part) = split_context(ctx);
        let mut out = RequestContext {
            client: Some(client),
            server,
            ..RequestContext::default()
        };
        let Some(readings) = self.readings() else {
            return out;
        };
        match readings.list.as_slice() {
            [only] if !readings.too_many => {
                out.request = Some(only.request);
                out.upstream = Some(only.value);
                (out.host, out.referrer) = host_and_referrer(only.tail);
                out.unambiguous = true;
            }
            [] if !readings.too_many => {
                if let Some(r) = request_part {
                    let end = [b"\", host: \"".as_slice(), b"\", referrer: \""]
                        .iter()
                        .filter_map(|sep| find(r, sep))
                        .min();
                    let (req, tail) = match end {
                        Some(at) => (&r[..at], &r[at + 1..]),
                        None => (r.strip_suffix(b"\"").unwrap_or(r), &r[r.len()..]),
                    };
                    out.request = Some(req);
                    (out.host, out.referrer) = host_and_referrer(tail);
                }
                out.unambiguous = true;
            }
            _ => {}
        }
        out
    }

    fn readings(&self) -> Option<Readings<'a>> {
        if !self.message_is_fixed() {
            return None;
        }
        let ctx = bounded(self.context?, self.cut);
        let (_, _, request_part) = split_context(ctx);
        let mut out = Readings::default();
        let Some(r) = request_part else {
            return Some(out);
        };
        const UPSTREAM: &[u8] = b"\", upstream: \"";
        let mut from = 0;
        while let Some(at) = find(&r[from..], UPSTREAM).map(|i| i + from) {
            from = at + 1;
            if let Some(reading) = reading(&r[..at], &r[at + UPSTREAM.len()..], self.cut) {
                if out.list.len() == MAX_READINGS {
                    out.too_many = true;
                    break;
                }
                out.list.push(reading);
            }
        }
        Some(out)
    }
}

/// More readings than this is an attack, not a log line: answer Ambiguous without more work.
const MAX_READINGS: usize = 8;

#[derive(Default)]
struct Readings<'a> {
    list: Vec<Reading<'a>>,
    too_many: bool,
}

/// One way of reading the line: the request line ends right before an `", upstream: "`.
struct Reading<'a> {
    request: &'a [u8],
    value: &'a [u8],
    /// The value's closing quote is in the line.
    complete: bool,
    /// After the value's closing quote: `, host: "..."...`, or empty.
    tail: &'a [u8],
}

/// Nothing nginx writes is longer than 2047 bytes: a longer "line" (another writer, or a
/// follower that joined lines) is read as nginx's first 2047 bytes, which also bounds the work.
fn bounded(ctx: &[u8], cut: bool) -> &[u8] {
    if cut {
        &ctx[..ctx.len().min(NGX_LINE_MAX)]
    } else {
        ctx
    }
}

/// `ADDR, server: NAME, request: "REST` -> (ADDR, NAME, REST). The client address and the
/// server name are nginx's own text (a formatted address, the configured name).
fn split_context(ctx: &[u8]) -> (&[u8], Option<&[u8]>, Option<&[u8]>) {
    let Some(s) = find(ctx, b", server: ") else {
        return (ctx, None, None);
    };
    let client = &ctx[..s];
    let rest = &ctx[s + b", server: ".len()..];
    match find(rest, b", request: \"") {
        Some(r) => (
            client,
            Some(&rest[..r]),
            Some(&rest[r + b", request: \"".len()..]),
        ),
        None => (client, Some(rest), None),
    }
}

fn reading<'a>(head: &'a [u8], after: &'a [u8], cut: bool) -> Option<Reading<'a>> {
    let (request, form, subrequest) = split_request(head)?;
    if cut && (form == Form::Http09 || subrequest) {
        // A cut line hides what follows: an HTTP/0.9-looking prefix or a client-made
        // subrequest URI could be a forgery whose real counterpart was cut off.
        return None;
    }
    let (value, complete, tail) = upstream_value(after, cut)?;
    if form == Form::Http09 && !tail.is_empty() {
        return None;
    }
    Some(Reading {
        request,
        value,
        complete,
        tail,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Versioned,
    Http09,
}

/// `REQUEST LINE[", subrequest: "URI]` -> (request line, form, has subrequest).
fn split_request(head: &[u8]) -> Option<(&[u8], Form, bool)> {
    if let Some(form) = request_line_form(head) {
        return Some((head, form, false));
    }
    const SUB: &[u8] = b"\", subrequest: \"";
    let mut from = 0;
    while let Some(at) = find(&head[from..], SUB).map(|i| i + from) {
        if let Some(form) = request_line_form(&head[..at]) {
            return Some((&head[..at], form, true));
        }
        from = at + 1;
    }
    None
}

/// nginx's request-line grammar (src/http/ngx_http_parse.c), as any 1.18-1.27 accepts it.
fn request_line_form(rl: &[u8]) -> Option<Form> {
    let method_len = rl
        .iter()
        .position(|b| !(b.is_ascii_uppercase() || *b == b'_' || *b == b'-'))?;
    let after_method = &rl[method_len..];
    let uri_start = after_method.iter().position(|b| *b != b' ')?;
    if method_len == 0 || uri_start == 0 || rl.iter().any(|b| *b == b'\r' || *b == b'\n') {
        return None;
    }
    let rest = &after_method[uri_start..];
    if let Some((uri, version)) = split_version(rest) {
        // HTTP/2 and HTTP/3 request lines are built by nginx from the :path pseudo-header,
        // which nginx before 1.21.1 let hold any byte but NUL, CR and LF.
        let built = matches!(version, b"2.0" | b"3.0");
        return (built || spaces_ok(uri, false)).then_some(Form::Versioned);
    }
    spaces_ok(rest, true).then_some(Form::Http09)
}

/// `URI SP+ HTTP/D.D` -> (URI, "D.D").
fn split_version(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = rest.windows(6).rposition(|w| w == b" HTTP/")?;
    let version = &rest[at + 6..];
    let dot = version.iter().position(|b| *b == b'.')?;
    let digits = |d: &[u8]| !d.is_empty() && d.len() <= 3 && d.iter().all(u8::is_ascii_digit);
    if !digits(&version[..dot]) || !digits(&version[dot + 1..]) {
        return None;
    }
    let uri = rest[..at].trim_ascii_end();
    (!uri.is_empty()).then_some((uri, version))
}

/// A space inside a URI is only followed by more URI, never by `H` (which nginx takes as the
/// start of `HTTP/`). An HTTP/0.9 line may end in spaces.
fn spaces_ok(uri: &[u8], trailing_allowed: bool) -> bool {
    if uri.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < uri.len() {
        if uri[i] == b' ' {
            let next = uri[i..].iter().position(|b| *b != b' ').map(|n| uri[i + n]);
            match next {
                None => return trailing_allowed,
                Some(b'H') => return false,
                Some(_) => {}
            }
        }
        i += 1;
    }
    true
}

/// The upstream value after `upstream: "`: (value, complete, tail after its closing quote).
fn upstream_value(after: &[u8], cut: bool) -> Option<(&[u8], bool, &[u8])> {
    let Some(space) = after.iter().position(|b| *b == b' ') else {
        if cut {
            return Some((after, false, &after[after.len()..]));
        }
        let value = after.strip_suffix(b"\"")?;
        return Some((value, true, &after[after.len()..]));
    };
    let value = after[..space].strip_suffix(b"\",")?;
    let tail = &after[space - 1..];
    let next = &after[space..];
    let known = [b" host: \"".as_slice(), b" referrer: \""];
    let fits = known
        .iter()
        .any(|k| next.starts_with(k) || (cut && k.starts_with(next)));
    fits.then_some((value, true, tail))
}

/// Some(true): the value names `expected` (after its scheme); None: cannot tell (cut).
fn compare(value: &[u8], complete: bool, expected: &[u8], unix: bool) -> Option<bool> {
    let scheme_end = value.iter().take(24).position(|b| !is_scheme_byte(*b));
    let addr = match scheme_end {
        Some(i) if value[i..].starts_with(b"://") && i > 0 => &value[i + 3..],
        Some(i) if !complete && b"://".starts_with(&value[i..]) => return None,
        None if !complete => return None,
        _ => return Some(false),
    };
    if let Some(boundary) = addr.strip_prefix(expected) {
        return match boundary.first() {
            None if complete => Some(true),
            None => None,
            // A unix peer is followed by the URI (`/...`) or nothing; a TCP peer's port must
            // not go on (`:80` is not `:8080`).
            Some(b) if unix => Some(*b == b'/'),
            Some(b) => Some(!b.is_ascii_digit()),
        };
    }
    if !complete && expected.starts_with(addr) {
        return None;
    }
    Some(false)
}

fn is_scheme_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
}

fn unquote(v: &[u8]) -> &[u8] {
    v.strip_suffix(b"\"").unwrap_or(v)
}

/// `, host: "H"[, referrer: "R"]` or `, referrer: "R"`, for display.
fn host_and_referrer(tail: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    if let Some(rest) = tail.strip_prefix(b", host: \"") {
        return match find(rest, b"\", referrer: \"") {
            Some(at) => (
                Some(&rest[..at]),
                Some(unquote(&rest[at + b"\", referrer: \"".len()..])),
            ),
            None => (Some(unquote(rest)), None),
        };
    }
    match tail.strip_prefix(b", referrer: \"") {
        Some(rest) => (None, Some(unquote(rest))),
        None => (None, None),
    }
}

//! One nginx error.log line, read from the left.
//!
//! nginx writes every line in one piece in `ngx_log_error_core()` (src/core/ngx_log.c):
//! `TIME [LEVEL] PID#TID: [*CONN ]MESSAGE[ (ERRNO: STRERROR)][ while ACTION][CONTEXT]`, where
//! CONTEXT is appended by the http log handler (src/http/ngx_http_request.c) and carries text
//! that the client wrote (the request line, Host, Referer). Everything this module returns
//! lies to the LEFT of that context, in fields nginx fills itself, so no request can change
//! it. The context is read by [`super::upstream`], which verifies instead of extracting.

use super::time::LogTime;

/// `NGX_MAX_ERROR_STR` (src/core/ngx_log.h) is 2048 and `ngx_log_error_core()` keeps one byte
/// for the newline: a line of this many bytes (without its `\n`) may have been cut.
pub const NGX_LINE_MAX: usize = 2047;

/// ECONNRESET on Linux: the errno nginx prints as `(104: Connection reset by peer)`.
pub const ECONNRESET: u32 = 104;
/// ECONNREFUSED: `(111: Connection refused)`.
pub const ECONNREFUSED: u32 = 111;

/// `[LEVEL]` (src/core/ngx_log.c `err_levels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Emerg,
    Alert,
    Crit,
    Error,
    Warn,
    Notice,
    Info,
    Debug,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Emerg => "emerg",
            Level::Alert => "alert",
            Level::Crit => "crit",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Notice => "notice",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        Some(match b {
            b"emerg" => Level::Emerg,
            b"alert" => Level::Alert,
            b"crit" => Level::Crit,
            b"error" => Level::Error,
            b"warn" => Level::Warn,
            b"notice" => Level::Notice,
            b"info" => Level::Info,
            b"debug" => Level::Debug,
            _ => return None,
        })
    }
}

/// The socket call nginx names in `CALL() failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscall {
    /// `recv()` (src/os/unix/ngx_recv.c): reading the response header.
    Recv,
    /// `readv()` (ngx_readv_chain.c): reading the response body through the event pipe.
    Readv,
    /// `writev()` (ngx_writev_chain.c): sending the request (body).
    Writev,
    /// `send()` (ngx_send.c).
    Send,
    /// `sendfile()` (ngx_linux_sendfile_chain.c).
    Sendfile,
    /// `connect() failed` (the asynchronous TCP connect, checked with SO_ERROR in
    /// ngx_http_upstream_test_connect) or `connect() to ADDR failed` (a connect that failed at
    /// once, as unix sockets do; src/event/ngx_event_connect.c).
    Connect,
    /// Another `NAME() failed`.
    Other,
}

/// What kind of failure the line reports: the fixed message at the start of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `CALL() failed (ERRNO: ...)`.
    CallFailed(Syscall),
    /// `upstream prematurely closed connection`: the upstream closed with a FIN before a
    /// whole response, not a reset.
    PrematurelyClosed,
    /// `upstream timed out (110: Connection timed out)`.
    TimedOut,
    /// Anything else. Its message may contain text nginx copied from elsewhere (a FastCGI
    /// stderr line, a header), so its context is not trusted: see [`ErrorLine::message_is_fixed`].
    Other,
}

/// `(104: Connection reset by peer)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno<'a> {
    pub code: u32,
    pub text: &'a [u8],
}

/// A parsed line. Borrowed from the caller's bytes; nothing is allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLine<'a> {
    /// Local time of the nginx process, 1 s resolution: see [`LogTime::to_utc`].
    pub time: LogTime,
    pub level: Level,
    /// The pid nginx logs: its own, in its own pid namespace (see [`super::discover::PidMap`]).
    pub pid: u32,
    pub tid: u64,
    /// `*N`: the number of the *client* connection (an upstream connection logs with the
    /// request's log), absent on lines without a connection.
    pub connection: Option<u64>,
    pub kind: Kind,
    pub errno: Option<Errno<'a>>,
    /// `ADDR` of `connect() to ADDR failed`: the peer name from nginx's configuration.
    pub connect_to: Option<&'a [u8]>,
    /// `ACTION` of ` while ACTION` (`reading response header from upstream`, ...), for lines
    /// whose message is fixed.
    pub action: Option<&'a [u8]>,
    /// The message: from after `*N ` up to the context (or the end of the line).
    pub message: &'a [u8],
    /// The context nginx appends (`, client: ..., server: ..., request: "..."...`), when the
    /// message is fixed and a context follows. Read it with [`super::upstream`].
    pub context: Option<&'a [u8]>,
    /// The line is [`NGX_LINE_MAX`] bytes long or more: nginx (or the follower) may have cut
    /// its end, so text that belongs at the end may be missing.
    pub cut: bool,
}

impl<'a> ErrorLine<'a> {
    /// Parses one line (with or without its trailing `\n`). A line from a CRI log file
    /// (`2026-11-30T12:58:42.123456789Z stderr F LINE`, Kubernetes' container logs) is
    /// unwrapped first. `None` when the line does not start like an nginx error.log line.
    pub fn parse(line: &'a [u8]) -> Option<Self> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = strip_cri(line).unwrap_or(line);
        let cut = line.len() >= NGX_LINE_MAX;
        let mut r = Reader { rest: line };
        let time = LogTime::parse(r.take(19)?)?;
        r.expect(b" [")?;
        let level = Level::from_bytes(r.until(b']')?)?;
        r.expect(b"] ")?;
        let pid = parse_u64(r.until(b'#')?).and_then(|p| u32::try_from(p).ok())?;
        r.expect(b"#")?;
        let tid = parse_u64(r.until(b':')?)?;
        r.expect(b": ")?;
        let connection = if r.rest.first() == Some(&b'*') {
            r.expect(b"*")?;
            let n = parse_u64(r.until(b' ')?)?;
            r.expect(b" ")?;
            Some(n)
        } else {
            None
        };
        let body = classify(r.rest);
        Some(Self {
            time,
            level,
            pid,
            tid,
            connection,
            kind: body.kind,
            errno: body.errno,
            connect_to: body.connect_to,
            action: body.action,
            message: body.message,
            context: body.context,
            cut,
        })
    }

    /// The message is one nginx writes itself (no foreign text before the context), so the
    /// context starts where this parser says it does.
    pub fn message_is_fixed(&self) -> bool {
        self.kind != Kind::Other
    }

    /// A socket call that failed with ECONNRESET (104): nginx received a reset.
    pub fn is_reset(&self) -> bool {
        matches!(self.kind, Kind::CallFailed(_)) && self.errno.map(|e| e.code) == Some(ECONNRESET)
    }

    /// `connect() ... (111: Connection refused)`.
    pub fn is_refused(&self) -> bool {
        self.kind == Kind::CallFailed(Syscall::Connect)
            && self.errno.map(|e| e.code) == Some(ECONNREFUSED)
    }
}

struct Body<'a> {
    kind: Kind,
    errno: Option<Errno<'a>>,
    connect_to: Option<&'a [u8]>,
    action: Option<&'a [u8]>,
    message: &'a [u8],
    context: Option<&'a [u8]>,
}

const CONTEXT_START: &[u8] = b", client: ";

/// Reads the fixed messages nginx writes for upstream failures; anything else is
/// [`Kind::Other`] with the whole rest of the line as its message.
fn classify(text: &[u8]) -> Body<'_> {
    let other = Body {
        kind: Kind::Other,
        errno: None,
        connect_to: None,
        action: None,
        message: text,
        context: None,
    };
    let (kind, connect_to, after) = if let Some(rest) = text.strip_prefix(b"connect() to ") {
        let Some(at) = find(rest, b" failed (") else {
            return other;
        };
        (
            Kind::CallFailed(Syscall::Connect),
            Some(&rest[..at]),
            &rest[at + b" failed".len()..],
        )
    } else if let Some(rest) = text.strip_prefix(b"upstream prematurely closed connection") {
        (Kind::PrematurelyClosed, None, rest)
    } else if let Some(rest) = text.strip_prefix(b"upstream timed out") {
        (Kind::TimedOut, None, rest)
    } else if let Some((call, rest)) = call_failed(text) {
        (Kind::CallFailed(call), None, rest)
    } else {
        return other;
    };
    let (errno, after) = match after.strip_prefix(b" (") {
        Some(rest) => match errno(rest) {
            Some((e, rest)) => (Some(e), rest),
            None => return other,
        },
        None => (None, after),
    };
    let (action, after) = match after.strip_prefix(b" while ") {
        // Actions are fixed strings in nginx's source (u->log.action etc.): the first context
        // start after them is the real one.
        Some(rest) => match find(rest, CONTEXT_START) {
            Some(at) => (Some(&rest[..at]), &rest[at..]),
            None => (Some(rest), &rest[rest.len()..]),
        },
        None => (None, after),
    };
    let message_len = text.len() - after.len();
    let context = after.strip_prefix(CONTEXT_START);
    if context.is_none() && !after.is_empty() {
        // Something other than a context follows a fixed message: not a shape we know.
        return other;
    }
    Body {
        kind,
        errno,
        connect_to,
        action,
        message: &text[..message_len],
        context,
    }
}

/// `NAME() failed` with NAME in `[a-zA-Z_0-9]`.
fn call_failed(text: &[u8]) -> Option<(Syscall, &[u8])> {
    let name_len = text
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))?;
    let rest = text[name_len..].strip_prefix(b"() failed")?;
    let call = match &text[..name_len] {
        b"recv" => Syscall::Recv,
        b"readv" => Syscall::Readv,
        b"writev" => Syscall::Writev,
        b"send" => Syscall::Send,
        b"sendfile" => Syscall::Sendfile,
        b"connect" => Syscall::Connect,
        b"" => return None,
        _ => Syscall::Other,
    };
    Some((call, rest))
}

/// `104: Connection reset by peer)` (after the opening parenthesis).
fn errno(text: &[u8]) -> Option<(Errno<'_>, &[u8])> {
    let colon = text.iter().position(|b| *b == b':')?;
    let code = u32::try_from(parse_u64(&text[..colon])?).ok()?;
    let rest = text[colon..].strip_prefix(b": ")?;
    // strerror() texts hold no parenthesis.
    let close = rest.iter().position(|b| *b == b')')?;
    Some((
        Errno {
            code,
            text: &rest[..close],
        },
        &rest[close + 1..],
    ))
}

/// `2026-11-30T12:58:42.123456789Z stderr F ` (the CRI log format kubelet writes; `P` marks
/// a partial line, which nginx's short lines never are, so only `F` is unwrapped).
fn strip_cri(line: &[u8]) -> Option<&[u8]> {
    if line.len() < 20 || line.get(4) != Some(&b'-') || line.get(10) != Some(&b'T') {
        return None;
    }
    let space = line.iter().take(40).position(|b| *b == b' ')?;
    let rest = &line[space + 1..];
    let rest = rest
        .strip_prefix(b"stderr F ")
        .or_else(|| rest.strip_prefix(b"stdout F "))?;
    Some(rest)
}

/// Where `needle` starts in `haystack`. Also searches whole nginx binaries (~1 MB) for
/// their configure arguments at start-up, hence memchr's vectorised search.
pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(haystack, needle)
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    fn expect(&mut self, prefix: &[u8]) -> Option<()> {
        self.rest = self.rest.strip_prefix(prefix)?;
        Some(())
    }

    /// The bytes before the next `stop` (at most 24: every field read this way is short).
    fn until(&mut self, stop: u8) -> Option<&'a [u8]> {
        let at = self.rest.iter().take(24).position(|b| *b == stop)?;
        let (head, tail) = self.rest.split_at(at);
        self.rest = tail;
        Some(head)
    }
}

//! The join as a stage of its own, between the attribution engine and the renderer.
//!
//! A reset verdict whose receiver is a worker of a followed nginx, connecting to its upstream,
//! waits (at most [`VERDICT_WAIT_NS`]) for the error.log line nginx writes right after its
//! failing `recv()`; a line waits (at most [`LINE_WAIT_NS`]) for its verdict. Lines are paired
//! per worker in the order the worker met the failures (`seen_ns`, the time its call failed),
//! since nginx writes a worker's lines in that order and several resets from one pool to one
//! upstream in the same second all pass [`super::join()`]. A `(104: ...)` line no verdict
//! claims is released as unexplained.
//!
//! Verdicts that do not wait (other receivers, resets nginx did not see, resets from nginx's
//! clients) are released at once, and those of nginx workers are remembered for
//! [`RECENT_NS`]: a line arriving after its verdict went out is consumed, not called
//! unexplained. The stage sees every verdict before the `--pid`/`--pid-of` filter, so a
//! filtered reset still claims its line.
//!
//! Pure: lines, verdicts and a clock in, released verdicts and unexplained lines out. The
//! follower, discovery and /proc are in [`super::live`]. What travels with a verdict is the
//! caller's (`P`, anything that borrows as a [`Verdict`]): the event loop renders a verdict
//! before it waits, since what rendering reads (a dead container's cgroup, /proc of an exited
//! peer) may be gone 1.5 s later.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use super::discover::PidMap;
use super::follow::Line;
use super::join::{join, Join, ResetKey, TIME_SLACK_S};
use super::parse::{ErrorLine, Kind, ECONNREFUSED, ECONNRESET};
use super::time::{NginxTimeZone, UtcSeconds};
use super::upstream::{UpstreamAddr, UpstreamMatch};
use crate::model::{Attribution, Role, Transport, Verdict};

/// How long a verdict waits for its line. nginx writes it within the event-loop iteration
/// of the failing recv(); the follower reads every ~100 ms.
pub const VERDICT_WAIT_NS: u64 = 1_500_000_000;
/// How long a line waits for its verdict (a verdict can be late behind a ring-buffer batch).
pub const LINE_WAIT_NS: u64 = 1_500_000_000;
/// How long a released verdict of an nginx worker can still consume a late line.
pub const RECENT_NS: u64 = 5_000_000_000;
/// Bounds on what waits; beyond them the oldest goes (a verdict without its line, a line
/// as if its wait were over).
pub const MAX_HELD: usize = 4096;
pub const MAX_LINES: usize = 4096;
pub const MAX_RECENT: usize = 4096;

/// The stage's clock: the kernel's (CLOCK_MONOTONIC) for waits, the wall clock for the
/// time-zone check of live lines.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub mono_ns: u64,
    pub unix_ns: i128,
}

/// An error.log line as rsttrace attaches or reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedLine {
    pub bytes: Vec<u8>,
    pub log_file: PathBuf,
    /// The follower cut it (longer than its line limit).
    pub cut: bool,
    /// The nginx process that wrote it, as a pid here.
    pub host_pid: Option<u32>,
    /// Its time in UTC, read in its nginx's zone.
    pub utc: Option<UtcSeconds>,
    /// How the upstream was checked, for a line joined to an upstream reset.
    pub upstream_check: Option<UpstreamMatch>,
}

/// What the stage lets go.
#[derive(Debug)]
pub enum Released<P = Verdict> {
    /// A verdict, with its line when one was found.
    Verdict(P, Option<Box<LoggedLine>>),
    /// A `(104: ...)` line that no reset rsttrace saw claims.
    Unexplained(Box<LoggedLine>),
}

/// Which connection of nginx a reset hit.
#[derive(Clone, Debug)]
enum Side {
    /// nginx connected: to its upstream.
    Upstream(UpstreamAddr),
    /// nginx accepted: from a client (an IP for TCP).
    Client(Option<IpAddr>),
}

/// What a verdict can claim: a line of its worker, near its time, naming its side.
#[derive(Clone, Debug)]
struct Claim {
    receiver_pid: u32,
    unix_ns: i128,
    side: Side,
}

struct Held<P> {
    verdict: P,
    claim: Claim,
    order_ns: u64,
    deadline: u64,
}

struct Pending {
    line: Line,
    deadline: u64,
    facts: Facts,
}

/// What the join needs of a line, read once: a storm of lines against a storm of waiting
/// verdicts must not parse and verify each line once per verdict.
struct Facts {
    /// (pid here, master, the line's time in that master's zone) of the nginx processes
    /// that may have written it.
    writers: Vec<Writer>,
    about_client: bool,
    /// How the line names each upstream asked about so far (pid and time are checked
    /// before, so the answer depends on the upstream alone).
    checked: Vec<(UpstreamAddr, Join)>,
}

#[derive(Clone, Copy, Debug)]
struct Writer {
    host: u32,
    master: u32,
    utc: Option<UtcSeconds>,
}

struct Recent {
    claim: Claim,
    until: u64,
}

struct Master {
    pids: PidMap,
    tz: NginxTimeZone,
}

pub struct JoinStage<P = Verdict> {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC: a verdict's ktime to the wall clock.
    offset_ns: i128,
    following: bool,
    masters: BTreeMap<u32, Master>,
    /// Followed file -> the master writing it, when discovery said so.
    files: HashMap<PathBuf, u32>,
    /// Waiting verdicts by receiver pid, oldest `order_ns` first.
    held: HashMap<u32, Vec<Held<P>>>,
    held_count: usize,
    lines: VecDeque<Pending>,
    recent: VecDeque<Recent>,
    unknown_writer: bool,
    notes: Vec<String>,
}

impl<P: Borrow<Verdict>> JoinStage<P> {
    pub fn new(offset_ns: i128) -> Self {
        Self {
            offset_ns,
            following: false,
            masters: BTreeMap::new(),
            files: HashMap::new(),
            held: HashMap::new(),
            held_count: 0,
            lines: VecDeque::new(),
            recent: VecDeque::new(),
            unknown_writer: false,
            notes: Vec::new(),
        }
    }

    /// A new CLOCK_REALTIME - CLOCK_MONOTONIC, read after the wall clock was stepped: nginx
    /// stamps its lines with the wall clock of the moment.
    pub fn set_offset(&mut self, offset_ns: i128) {
        self.offset_ns = offset_ns;
    }

    /// Whether any error.log is followed: without one no verdict waits.
    pub fn set_following(&mut self, following: bool) {
        self.following = following;
    }

    /// Adds an nginx master, or renews its pids (workers change on reload). A zone given
    /// for a known master is ignored: the one it has may have been corrected by live lines.
    pub fn set_master(&mut self, pids: PidMap, tz: NginxTimeZone) {
        match self.masters.get_mut(&pids.master()) {
            Some(m) => m.pids = pids,
            None => {
                self.masters.insert(pids.master(), Master { pids, tz });
            }
        }
        self.resolve_unknown_writers();
    }

    pub fn remove_master(&mut self, master: u32) {
        self.masters.remove(&master);
        self.files.retain(|_, m| *m != master);
    }

    pub fn masters(&self) -> impl Iterator<Item = u32> + '_ {
        self.masters.keys().copied()
    }

    /// `path` is written by `master` (its `error_log`).
    pub fn assign_file(&mut self, path: PathBuf, master: u32) {
        self.files.insert(path, master);
    }

    /// The master writing `path` and the zone its times are read in, when known.
    pub fn writer_of(&self, path: &Path) -> Option<(u32, &str)> {
        let master = *self.files.get(path)?;
        Some((master, self.masters.get(&master)?.tz.source.as_str()))
    }

    /// Whether `pid` is a process of a known nginx.
    pub fn is_worker(&self, pid: u32) -> bool {
        self.masters.values().any(|m| m.pids.contains_host(pid))
    }

    /// A line's pid matched no known nginx since the last call (a reload: new workers).
    pub fn take_unknown_writer(&mut self) -> bool {
        std::mem::take(&mut self.unknown_writer)
    }

    /// Things the operator may want to know (a time zone inferred from a line).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Verdicts waiting for their line.
    pub fn waiting(&self) -> usize {
        self.held_count
    }

    /// Lines waiting for their verdict.
    pub fn lines_waiting(&self) -> usize {
        self.lines.len()
    }

    /// Whether [`Self::offer`] would hold `verdict` for its line (unless the line is there).
    pub fn waits(&self, verdict: &Verdict) -> bool {
        self.claim_of(verdict).is_some_and(|(_, waits, _)| waits)
    }

    /// Takes a verdict from the engine: released at once with its line when the line was
    /// read already, held when it may still get one, else released as it is.
    pub fn offer(&mut self, verdict: P, now: Clock, out: &mut Vec<Released<P>>) {
        let Some((claim, waits, order_ns)) = self.claim_of(verdict.borrow()) else {
            out.push(Released::Verdict(verdict, None));
            return;
        };
        if let Some(line) = self.take_line(&claim) {
            out.push(Released::Verdict(verdict, Some(Box::new(line))));
            return;
        }
        if !waits {
            self.remember(claim, now);
            out.push(Released::Verdict(verdict, None));
            return;
        }
        if self.held_count >= MAX_HELD {
            self.release_oldest_held(now, out);
        }
        let list = self.held.entry(claim.receiver_pid).or_default();
        let at = list.partition_point(|h| h.order_ns <= order_ns);
        list.insert(
            at,
            Held {
                verdict,
                claim,
                order_ns,
                deadline: now.mono_ns.saturating_add(VERDICT_WAIT_NS),
            },
        );
        self.held_count += 1;
    }

    /// Takes the lines the follower read: each is paired with the oldest waiting verdict of
    /// its worker that it fits, else consumed by a verdict already released, else it waits.
    pub fn lines(&mut self, lines: Vec<Line>, now: Clock, out: &mut Vec<Released<P>>) {
        for line in lines {
            let Some(parsed) = ErrorLine::parse(&line.bytes) else {
                continue;
            };
            self.calibrate(&line.log_file, &parsed, now);
            if !eligible(&parsed) {
                continue;
            }
            let mut facts = self.facts(&line.log_file, &parsed);
            if facts.writers.is_empty() {
                self.unknown_writer = true;
            }
            if let Some((verdict, w, check)) = self.claim_line(&line.bytes, &mut facts) {
                let logged = logged(&line, Some(w.host), w.utc, check);
                out.push(Released::Verdict(verdict, Some(Box::new(logged))));
                continue;
            }
            if self.consumed_by_recent(&line.bytes, &mut facts) {
                continue;
            }
            if self.lines.len() >= MAX_LINES {
                if let Some(oldest) = self.lines.pop_front() {
                    expire_line(oldest, out);
                }
            }
            self.lines.push_back(Pending {
                line,
                deadline: now.mono_ns.saturating_add(LINE_WAIT_NS),
                facts,
            });
        }
    }

    /// Ends the waits that are over at `now`.
    pub fn tick(&mut self, now: Clock, out: &mut Vec<Released<P>>) {
        let mut due: Vec<Held<P>> = Vec::new();
        for list in self.held.values_mut() {
            let (over, keep): (Vec<Held<P>>, Vec<Held<P>>) =
                list.drain(..).partition(|h| h.deadline <= now.mono_ns);
            *list = keep;
            due.extend(over);
        }
        self.held.retain(|_, l| !l.is_empty());
        self.held_count -= due.len();
        due.sort_by_key(|h| h.order_ns);
        for h in due {
            self.remember(h.claim, now);
            out.push(Released::Verdict(h.verdict, None));
        }
        while self
            .lines
            .front()
            .is_some_and(|p| p.deadline <= now.mono_ns)
        {
            if let Some(p) = self.lines.pop_front() {
                expire_line(p, out);
            }
        }
        while self.recent.front().is_some_and(|r| r.until <= now.mono_ns) {
            self.recent.pop_front();
        }
    }

    /// At stop: every waiting verdict goes, with no line; every waiting reset line is
    /// unexplained.
    pub fn finish(&mut self, out: &mut Vec<Released<P>>) {
        let mut all: Vec<Held<P>> = self.held.drain().flat_map(|(_, l)| l).collect();
        self.held_count = 0;
        all.sort_by_key(|h| h.order_ns);
        out.extend(all.into_iter().map(|h| Released::Verdict(h.verdict, None)));
        while let Some(p) = self.lines.pop_front() {
            expire_line(p, out);
        }
        self.recent.clear();
    }

    /// The claim of a verdict whose receiver is a known nginx process; whether it waits for
    /// its line (an upstream reset nginx saw, or may have); the order nginx met it in.
    fn claim_of(&self, verdict: &Verdict) -> Option<(Claim, bool, u64)> {
        let Verdict::Reset(a) = verdict else {
            return None;
        };
        if !self.following {
            return None;
        }
        let receiver = a.receiver.as_ref()?;
        if !self.is_worker(receiver.pid) {
            return None;
        }
        let side = side_of(a)?;
        let order_ns = a.seen_ns.unwrap_or(a.time_ns);
        let waits = matches!(side, Side::Upstream(_)) && a.seen_by_receiver != Some(false);
        let claim = Claim {
            receiver_pid: receiver.pid,
            unix_ns: self.offset_ns + i128::from(order_ns),
            side,
        };
        Some((claim, waits, order_ns))
    }

    fn remember(&mut self, claim: Claim, now: Clock) {
        if self.recent.len() >= MAX_RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent {
            claim,
            until: now.mono_ns.saturating_add(RECENT_NS),
        });
    }

    fn release_oldest_held(&mut self, now: Clock, out: &mut Vec<Released<P>>) {
        let oldest = self
            .held
            .iter()
            .filter_map(|(pid, l)| l.first().map(|h| (h.order_ns, *pid)))
            .min();
        let Some((_, pid)) = oldest else {
            return;
        };
        let Some(list) = self.held.get_mut(&pid) else {
            return;
        };
        let h = list.remove(0);
        if list.is_empty() {
            self.held.remove(&pid);
        }
        self.held_count -= 1;
        self.remember(h.claim, now);
        out.push(Released::Verdict(h.verdict, None));
    }

    /// The oldest waiting line that `claim` fits.
    fn take_line(&mut self, claim: &Claim) -> Option<LoggedLine> {
        let masters = &self.masters;
        let found = self.lines.iter_mut().enumerate().find_map(|(i, p)| {
            let writers: Vec<Writer> = p
                .facts
                .writers
                .iter()
                .filter(|w| w.host == claim.receiver_pid)
                .copied()
                .collect();
            writers.into_iter().find_map(|w| {
                fits(masters, &p.line.bytes, &mut p.facts, w, claim).map(|check| (i, w, check))
            })
        });
        let (at, w, check) = found?;
        let p = self.lines.remove(at)?;
        Some(logged(&p.line, Some(w.host), w.utc, check))
    }

    /// The oldest waiting verdict of the line's worker that the line fits. Only verdicts
    /// within the line's time window are tried (each worker's list is in time order).
    fn claim_line(
        &mut self,
        bytes: &[u8],
        facts: &mut Facts,
    ) -> Option<(P, Writer, Option<UpstreamMatch>)> {
        let writers = facts.writers.clone();
        let (w, at, check) = writers.into_iter().find_map(|w| {
            let list = self.held.get(&w.host)?;
            let utc = w.utc?;
            let lo = i128::from(utc.earliest - TIME_SLACK_S) * 1_000_000_000;
            let hi = i128::from(utc.latest + 1 + TIME_SLACK_S) * 1_000_000_000;
            let start = list.partition_point(|h| h.claim.unix_ns < lo);
            list[start..]
                .iter()
                .take_while(|h| h.claim.unix_ns < hi)
                .enumerate()
                .find_map(|(i, h)| {
                    fits(&self.masters, bytes, facts, w, &h.claim).map(|c| (w, start + i, c))
                })
        })?;
        let list = self.held.get_mut(&w.host)?;
        let h = list.remove(at);
        if list.is_empty() {
            self.held.remove(&w.host);
        }
        self.held_count -= 1;
        Some((h.verdict, w, check))
    }

    fn consumed_by_recent(&mut self, bytes: &[u8], facts: &mut Facts) -> bool {
        let writers = facts.writers.clone();
        let found = self.recent.iter().position(|r| {
            writers
                .iter()
                .any(|w| fits(&self.masters, bytes, facts, *w, &r.claim).is_some())
        });
        match found {
            Some(i) => {
                self.recent.remove(i);
                true
            }
            None => false,
        }
    }

    /// What the join needs of a line: the nginx processes that may have written it (the
    /// file's own nginx when discovery named it, else any nginx that has such a pid: pid
    /// namespaces repeat pids), with its time in each one's zone.
    fn facts(&self, file: &Path, line: &ErrorLine) -> Facts {
        let only = self.files.get(file).copied();
        let writers = self
            .masters
            .iter()
            .filter(|(m, _)| only.is_none_or(|o| o == **m))
            .filter_map(|(m, master)| {
                master.pids.host_pid(line.pid).map(|host| Writer {
                    host,
                    master: *m,
                    utc: line.time.to_utc(&master.tz),
                })
            })
            .collect();
        Facts {
            writers,
            about_client: about_client(line),
            checked: Vec::new(),
        }
    }

    fn resolve_unknown_writers(&mut self) {
        let mut lines = std::mem::take(&mut self.lines);
        for p in lines.iter_mut().filter(|p| p.facts.writers.is_empty()) {
            if let Some(parsed) = ErrorLine::parse(&p.line.bytes) {
                p.facts = self.facts(&p.line.log_file, &parsed);
            }
        }
        self.lines = lines;
    }

    /// Corrects the writer's zone from a live line (nginx hides its TZ: see
    /// [`NginxTimeZone::calibrate`]), when the line says which nginx wrote it.
    fn calibrate(&mut self, file: &Path, line: &ErrorLine, now: Clock) {
        let master = self.files.get(file).copied().or_else(|| {
            let mut mapping = self
                .masters
                .iter()
                .filter(|(_, m)| m.pids.host_pid(line.pid).is_some());
            match (mapping.next(), mapping.next()) {
                (Some((id, _)), None) => Some(*id),
                _ => None,
            }
        });
        let Some(m) = master.and_then(|m| self.masters.get_mut(&m)) else {
            return;
        };
        let now_s = i64::try_from(now.unix_ns.div_euclid(1_000_000_000)).unwrap_or(i64::MAX);
        if m.tz.calibrate(&line.time, now_s) {
            self.notes.push(format!(
                "nginx {}: error.log times read as {}",
                m.pids.master(),
                m.tz.source
            ));
        }
    }
}

/// How many upstreams a line remembers its answer for.
const MAX_CHECKED: usize = 16;

/// Whether a line (`bytes`, its `facts`) written by `w` is the line of the reset `claim`
/// stands for: `Some(check)` with how its upstream was checked (None for a client's reset).
fn fits(
    masters: &BTreeMap<u32, Master>,
    bytes: &[u8],
    facts: &mut Facts,
    w: Writer,
    claim: &Claim,
) -> Option<Option<UpstreamMatch>> {
    let in_time = w
        .utc
        .is_some_and(|t| t.contains_ns(claim.unix_ns, TIME_SLACK_S));
    if w.host != claim.receiver_pid || !in_time {
        return None;
    }
    match &claim.side {
        Side::Upstream(upstream) => {
            if facts.about_client {
                return None;
            }
            let answer = match facts.checked.iter().find(|(u, _)| u == upstream) {
                Some((_, answer)) => *answer,
                None => {
                    let m = masters.get(&w.master)?;
                    let line = ErrorLine::parse(bytes)?;
                    let key = ResetKey {
                        receiver_pid: claim.receiver_pid,
                        upstream: upstream.clone(),
                        unix_ns: claim.unix_ns,
                    };
                    let answer = join(&line, &key, &m.pids, &m.tz);
                    if facts.checked.len() < MAX_CHECKED {
                        facts.checked.push((upstream.clone(), answer));
                    }
                    answer
                }
            };
            match answer {
                Join::Exact { cut_line: false } => Some(Some(UpstreamMatch::Confirmed)),
                Join::Exact { cut_line: true } => Some(Some(UpstreamMatch::ConfirmedInCutLine)),
                Join::WithoutUpstream(check) => Some(Some(check)),
                Join::No => None,
            }
        }
        Side::Client(ip) => {
            if !facts.about_client {
                return None;
            }
            // `client:` is nginx's own text for the peer address (c->addr_text).
            let same_client = match ip {
                Some(ip) => ErrorLine::parse(bytes)
                    .and_then(|l| {
                        l.request_context()
                            .client
                            .map(|c| c == ip.to_string().as_bytes())
                    })
                    .unwrap_or(true),
                None => true,
            };
            same_client.then_some(None)
        }
    }
}

/// A waiting line whose wait is over: a reset line is unexplained, others go.
fn expire_line<P>(p: Pending, out: &mut Vec<Released<P>>) {
    let Some(parsed) = ErrorLine::parse(&p.line.bytes) else {
        return;
    };
    if !parsed.is_reset() {
        return;
    }
    let (host, utc) = match p.facts.writers.as_slice() {
        [w] => (Some(w.host), w.utc),
        [w, ..] => (None, w.utc),
        [] => (
            None,
            parsed.time.to_utc(&NginxTimeZone::utc("no nginx known")),
        ),
    };
    out.push(Released::Unexplained(Box::new(logged(
        &p.line, host, utc, None,
    ))));
}

fn logged(
    line: &Line,
    host_pid: Option<u32>,
    utc: Option<UtcSeconds>,
    upstream_check: Option<UpstreamMatch>,
) -> LoggedLine {
    LoggedLine {
        bytes: line.bytes.clone(),
        log_file: line.log_file.clone(),
        cut: line.cut,
        host_pid,
        utc,
        upstream_check,
    }
}

/// Lines that can be a reset's: a socket call failing with ECONNRESET, or a connect
/// refused (a RST answering nginx's SYN). A FIN (`upstream prematurely closed`) or a
/// timeout is no reset.
fn eligible(line: &ErrorLine) -> bool {
    matches!(line.kind, Kind::CallFailed(_))
        && line
            .errno
            .is_some_and(|e| e.code == ECONNRESET || e.code == ECONNREFUSED)
}

/// nginx's actions are fixed strings: `reading client request line`, `sending to client`...
/// against `reading response header from upstream`, `connecting to upstream`...
fn about_client(line: &ErrorLine) -> bool {
    line.action
        .is_some_and(|a| super::parse::find(a, b"client").is_some())
}

fn side_of(a: &Attribution) -> Option<Side> {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    Some(match (a.transport, a.receiver_role) {
        (Transport::Tcp, Some(Role::Server)) => {
            Side::Client(a.remote.parse::<SocketAddr>().ok().map(|s| canon(s.ip())))
        }
        (Transport::Unix, Some(Role::Server)) => Side::Client(None),
        (Transport::Tcp, _) => {
            let remote: SocketAddr = a.remote.parse().ok()?;
            Side::Upstream(UpstreamAddr::Tcp(SocketAddr::new(
                canon(remote.ip()),
                remote.port(),
            )))
        }
        (Transport::Unix, _) if !a.remote.is_empty() => {
            Side::Upstream(UpstreamAddr::Unix(PathBuf::from(&a.remote)))
        }
        (Transport::Unix, _) => return None,
    })
}

#[cfg(test)]
mod tests;

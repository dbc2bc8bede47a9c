//! Does this error.log line belong to that reset? The test the event loop applies to each
//! (line, verdict) pair; pure, so it is tested without nginx.
//!
//! Several resets from one worker to one upstream within a second all pass it: nginx writes
//! a worker's lines in the order the worker saw the failures, so pair the oldest unmatched
//! reset with the oldest unmatched line that passes.

use super::discover::PidMap;
use super::parse::{ErrorLine, Kind};
use super::time::NginxTimeZone;
use super::upstream::{UpstreamAddr, UpstreamMatch};

/// How far (seconds) the line's time may be from the reset's: nginx's time is cached per
/// event loop iteration and has 1 s resolution.
pub const TIME_SLACK_S: i64 = 2;

/// What rsttrace knows of a reset nginx received.
#[derive(Debug, Clone)]
pub struct ResetKey {
    /// The nginx worker that received it, as a pid here.
    pub receiver_pid: u32,
    /// Its peer: the upstream.
    pub upstream: UpstreamAddr,
    /// When, in nanoseconds since the epoch.
    pub unix_ns: i128,
}

/// The answer of [`join`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Same worker, same time, and the line names this upstream where nginx writes it.
    Exact { cut_line: bool },
    /// Same worker and time; the upstream could not be checked (`Cut`: the line lost it at
    /// 2 KiB; `Ambiguous`: the client injected text). Say so next to the line.
    WithoutUpstream(UpstreamMatch),
    /// Not this reset's line.
    No,
}

/// Whether `line` is the line nginx logged for `key`. Only upstream failures qualify (a
/// failed socket call, a premature close, a timeout).
pub fn join(line: &ErrorLine, key: &ResetKey, pids: &PidMap, tz: &NginxTimeZone) -> Join {
    if matches!(line.kind, Kind::Other) || pids.host_pid(line.pid) != Some(key.receiver_pid) {
        return Join::No;
    }
    let in_time = line
        .time
        .to_utc(tz)
        .is_some_and(|t| t.contains_ns(key.unix_ns, TIME_SLACK_S));
    if !in_time {
        return Join::No;
    }
    match line.verify_upstream(&key.upstream) {
        UpstreamMatch::Confirmed => Join::Exact { cut_line: false },
        UpstreamMatch::ConfirmedInCutLine => Join::Exact { cut_line: true },
        m @ (UpstreamMatch::Cut | UpstreamMatch::Ambiguous) => Join::WithoutUpstream(m),
        UpstreamMatch::Mismatch | UpstreamMatch::Absent | UpstreamMatch::Unverifiable => Join::No,
    }
}

#[cfg(test)]
mod tests {
    use super::super::real_lines::line;
    use super::*;

    fn key(upstream: &str, unix_s: i64) -> ResetKey {
        ResetKey {
            receiver_pid: 31641,
            upstream: UpstreamAddr::Tcp(upstream.parse().expect("address")),
            unix_ns: i128::from(unix_s) * 1_000_000_000 + 400_000_000,
        }
    }

    #[test]
    fn joins_on_worker_time_and_upstream() {
        // The real lines' worker 31641 runs in our pid namespace: it maps to itself.
        let pids = PidMap::identity([31641]);
        let tz = NginxTimeZone::utc("test");
        let recv = ErrorLine::parse(line(121, "recv()")).expect("parses");
        let at = 1_796_044_850; // the line's 13:20:50 UTC
        assert_eq!(
            join(&recv, &key("127.0.0.1:19081", at), &pids, &tz),
            Join::Exact { cut_line: false }
        );
        assert_eq!(
            join(&recv, &key("127.0.0.1:19081", at + 2), &pids, &tz),
            Join::Exact { cut_line: false }
        );
        assert_eq!(
            join(&recv, &key("127.0.0.1:19081", at + 4), &pids, &tz),
            Join::No
        );
        assert_eq!(
            join(&recv, &key("127.0.0.1:19082", at), &pids, &tz),
            Join::No
        );
        let other_worker = ResetKey {
            receiver_pid: 4242,
            ..key("127.0.0.1:19081", at)
        };
        assert_eq!(join(&recv, &other_worker, &pids, &tz), Join::No);

        let cut = ErrorLine::parse(line(161, "recv()")).expect("parses");
        assert_eq!(
            join(&cut, &key("127.0.0.1:19081", at + 3), &pids, &tz),
            Join::WithoutUpstream(UpstreamMatch::Cut)
        );
        let refused = ErrorLine::parse(line(169, "client sent")).expect("parses");
        assert_eq!(
            join(&refused, &key("127.0.0.1:19081", at + 3), &pids, &tz),
            Join::No
        );
    }
}

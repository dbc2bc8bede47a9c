//! The stage on hand-made verdicts and lines shaped like real nginx 1.22 ones
//! (testdata/nginx-1.22.1-error.log).
use std::path::PathBuf;

use super::*;
use crate::model::{Cause, Task};

/// 2026-11-30 12:58:42 UTC is ktime 10 s.
const BASE_UNIX_S: i64 = 1_796_043_522;
const KTIME_10S: u64 = 10_000_000_000;
const MS: u64 = 1_000_000;
const WORKER: u32 = 4242;
const MASTER: u32 = 4241;

fn stage() -> JoinStage {
    let offset = i128::from(BASE_UNIX_S) * 1_000_000_000 - i128::from(KTIME_10S);
    let mut s = JoinStage::new(offset);
    s.set_following(true);
    s.set_master(
        PidMap::identity([MASTER, WORKER]),
        NginxTimeZone::utc("test"),
    );
    s.assign_file(PathBuf::from("/log/error.log"), MASTER);
    s
}

fn at(mono_ns: u64) -> Clock {
    let offset = i128::from(BASE_UNIX_S) * 1_000_000_000 - i128::from(KTIME_10S);
    Clock {
        mono_ns,
        unix_ns: offset + i128::from(mono_ns),
    }
}

fn verdict(pid: u32, remote: &str, transport: Transport, seen_ns: u64) -> Verdict {
    let mut a = Attribution::pending(
        seen_ns - MS,
        transport,
        String::new(),
        remote.to_string(),
        1,
        Some(Task {
            pid,
            tid: pid,
            comm: "nginx".into(),
        }),
    );
    a.cause = Cause::Abort { aborted_by: None };
    a.receiver_role = Some(Role::Client);
    a.seen_by_receiver = Some(true);
    a.seen_ns = Some(seen_ns);
    Verdict::Reset(Box::new(a))
}

fn tcp(seen_ns: u64) -> Verdict {
    verdict(WORKER, "127.0.0.1:9000", Transport::Tcp, seen_ns)
}

/// A line as nginx 1.22 writes a reset from php-fpm, at `time` (UTC here).
fn reset_line(time: &str, pid: u32, conn: u64, uri: &str, upstream: &str) -> Line {
    let text = format!(
        "{time} [error] {pid}#{pid}: *{conn} recv() failed (104: Connection reset by peer) \
         while reading response header from upstream, client: 127.0.0.1, server: localhost, \
         request: \"GET {uri} HTTP/1.1\", upstream: \"{upstream}\", host: \"localhost\""
    );
    raw(&text)
}

fn raw(text: &str) -> Line {
    Line {
        log_file: PathBuf::from("/log/error.log"),
        bytes: text.as_bytes().to_vec(),
        cut: false,
    }
}

fn php(conn: u64, uri: &str) -> Line {
    reset_line(
        "2026/11/30 12:58:42",
        WORKER,
        conn,
        uri,
        "fastcgi://127.0.0.1:9000",
    )
}

/// (verdict's seen_ns, the line's connection number) for each released verdict.
fn pairs(out: &[Released]) -> Vec<(u64, Option<u64>)> {
    out.iter()
        .filter_map(|r| match r {
            Released::Verdict(Verdict::Reset(a), line) => Some((
                a.seen_ns.unwrap_or(0),
                line.as_ref()
                    .and_then(|l| ErrorLine::parse(&l.bytes).and_then(|p| p.connection)),
            )),
            _ => None,
        })
        .collect()
}

fn unexplained(out: &[Released]) -> Vec<Option<u64>> {
    out.iter()
        .filter_map(|r| match r {
            Released::Unexplained(l) => Some(ErrorLine::parse(&l.bytes).and_then(|p| p.connection)),
            _ => None,
        })
        .collect()
}

/// The wall clock was stepped an hour forward after start (chrony's makestep, a VM resumed,
/// `date -s`): with the offset read at start no line joins; with the one read after the
/// step, lines join again.
#[test]
fn a_stepped_wall_clock_is_followed() {
    let offset = i128::from(BASE_UNIX_S) * 1_000_000_000 - i128::from(KTIME_10S);
    let hour = 3_600 * 1_000_000_000i128;
    let mut s = stage();
    s.set_offset(offset - hour);
    let mut out = Vec::new();
    s.offer(tcp(KTIME_10S), at(KTIME_10S + MS), &mut out);
    s.lines(vec![php(7, "/a.php")], at(KTIME_10S + 100 * MS), &mut out);
    assert!(pairs(&out).is_empty(), "an hour apart: {out:?}");

    let mut s = stage();
    s.set_offset(offset - hour);
    s.set_offset(offset);
    let mut out = Vec::new();
    s.offer(tcp(KTIME_10S), at(KTIME_10S + MS), &mut out);
    s.lines(vec![php(7, "/a.php")], at(KTIME_10S + 100 * MS), &mut out);
    assert_eq!(pairs(&out), [(KTIME_10S, Some(7))]);
}

#[test]
fn a_verdict_waits_for_its_line_and_gets_it() {
    let mut s = stage();
    let mut out = Vec::new();
    s.offer(tcp(KTIME_10S), at(KTIME_10S + MS), &mut out);
    assert!(out.is_empty(), "an nginx worker's upstream reset waits");
    assert_eq!(s.waiting(), 1);
    s.lines(vec![php(7, "/a.php")], at(KTIME_10S + 100 * MS), &mut out);
    assert_eq!(pairs(&out), [(KTIME_10S, Some(7))]);
    let Released::Verdict(_, Some(line)) = &out[0] else {
        panic!("joined: {out:?}");
    };
    assert_eq!(line.host_pid, Some(WORKER));
    assert_eq!(line.upstream_check, Some(UpstreamMatch::Confirmed));
    assert_eq!(line.utc.map(|u| u.earliest), Some(BASE_UNIX_S));
    assert_eq!(s.waiting(), 0);
}

#[test]
fn a_line_read_first_waits_for_its_verdict() {
    let mut s = stage();
    let mut out = Vec::new();
    s.lines(vec![php(7, "/a.php")], at(KTIME_10S), &mut out);
    assert!(out.is_empty());
    s.offer(tcp(KTIME_10S), at(KTIME_10S + 300 * MS), &mut out);
    assert_eq!(pairs(&out), [(KTIME_10S, Some(7))]);
}

#[test]
fn resets_of_one_worker_in_one_second_pair_in_the_order_nginx_met_them() {
    let mut s = stage();
    let mut out = Vec::new();
    // The engine may release them out of order (a send paired late); seen_ns orders them.
    for seen in [KTIME_10S + 3 * MS, KTIME_10S + MS, KTIME_10S + 2 * MS] {
        s.offer(tcp(seen), at(KTIME_10S + 5 * MS), &mut out);
    }
    let lines = vec![php(11, "/1.php"), php(12, "/2.php"), php(13, "/3.php")];
    s.lines(lines, at(KTIME_10S + 100 * MS), &mut out);
    assert_eq!(
        pairs(&out),
        [
            (KTIME_10S + MS, Some(11)),
            (KTIME_10S + 2 * MS, Some(12)),
            (KTIME_10S + 3 * MS, Some(13))
        ]
    );
    // Lines first, verdicts later: the same pairing.
    let mut s = stage();
    let mut out = Vec::new();
    s.lines(
        vec![php(21, "/1.php"), php(22, "/2.php")],
        at(KTIME_10S),
        &mut out,
    );
    s.offer(tcp(KTIME_10S + MS), at(KTIME_10S + 5 * MS), &mut out);
    s.offer(tcp(KTIME_10S + 2 * MS), at(KTIME_10S + 5 * MS), &mut out);
    assert_eq!(
        pairs(&out),
        [(KTIME_10S + MS, Some(21)), (KTIME_10S + 2 * MS, Some(22))]
    );
}

#[test]
fn lines_pair_only_with_their_worker_upstream_and_time() {
    let mut s = stage();
    s.set_master(PidMap::identity([5000, 5001]), NginxTimeZone::utc("t"));
    let mut out = Vec::new();
    s.offer(tcp(KTIME_10S), at(KTIME_10S), &mut out);
    let other_upstream = reset_line(
        "2026/11/30 12:58:42",
        WORKER,
        1,
        "/x",
        "fastcgi://127.0.0.1:9001",
    );
    let other_worker = reset_line(
        "2026/11/30 12:58:42",
        5001,
        2,
        "/x",
        "fastcgi://127.0.0.1:9000",
    );
    let other_time = reset_line(
        "2026/11/30 12:58:52",
        WORKER,
        3,
        "/x",
        "fastcgi://127.0.0.1:9000",
    );
    s.lines(
        vec![other_upstream, other_worker, other_time],
        at(KTIME_10S),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(s.waiting(), 1);
    s.tick(at(KTIME_10S + LINE_WAIT_NS), &mut out);
    assert_eq!(pairs(&out), [(KTIME_10S, None)]);
    assert_eq!(unexplained(&out), [Some(1), Some(2), Some(3)]);
}

#[test]
fn unix_upstreams_join_on_their_path() {
    let mut s = stage();
    let mut out = Vec::new();
    let v = verdict(
        WORKER,
        "/run/php/php8.2-fpm.sock",
        Transport::Unix,
        KTIME_10S,
    );
    s.offer(v, at(KTIME_10S), &mut out);
    let line = reset_line(
        "2026/11/30 12:58:42",
        WORKER,
        9,
        "/u.php",
        "fastcgi://unix:/run/php/php8.2-fpm.sock:",
    );
    s.lines(vec![line], at(KTIME_10S), &mut out);
    assert_eq!(pairs(&out), [(KTIME_10S, Some(9))]);
}

#[test]
fn a_reset_line_nobody_claims_is_unexplained_and_other_lines_are_not() {
    let mut s = stage();
    let mut out = Vec::new();
    let fin = raw(
        "2026/11/30 12:58:42 [error] 4242#4242: *5 upstream prematurely closed connection while \
         reading response header from upstream, client: 127.0.0.1, server: localhost, request: \
         \"GET /py/x HTTP/1.1\", upstream: \"http://127.0.0.1:8000/py/x\", host: \"localhost\"",
    );
    let refused = raw(
        "2026/11/30 12:58:42 [error] 4242#4242: *6 connect() failed (111: Connection refused) \
         while connecting to upstream, client: 127.0.0.1, server: localhost, request: \"GET /c \
         HTTP/1.1\", upstream: \"http://127.0.0.1:9/c\", host: \"localhost\"",
    );
    let start = raw("2026/11/30 12:58:42 [notice] 4241#4241: start worker processes");
    s.lines(
        vec![fin, refused, start, php(7, "/a.php")],
        at(KTIME_10S),
        &mut out,
    );
    s.tick(at(KTIME_10S + LINE_WAIT_NS - 1), &mut out);
    assert!(out.is_empty(), "still waiting: {out:?}");
    s.tick(at(KTIME_10S + LINE_WAIT_NS), &mut out);
    assert_eq!(unexplained(&out), [Some(7)]);
    let Released::Unexplained(l) = &out[0] else {
        panic!("{out:?}");
    };
    assert_eq!(l.host_pid, Some(WORKER));
    assert_eq!(l.upstream_check, None);
}

#[test]
fn a_verdict_waits_at_most_its_bound_and_a_late_line_is_consumed() {
    let mut s = stage();
    let mut out = Vec::new();
    s.offer(tcp(KTIME_10S), at(KTIME_10S), &mut out);
    s.tick(at(KTIME_10S + VERDICT_WAIT_NS - 1), &mut out);
    assert!(out.is_empty());
    s.tick(at(KTIME_10S + VERDICT_WAIT_NS), &mut out);
    assert_eq!(pairs(&out), [(KTIME_10S, None)]);
    out.clear();
    s.lines(
        vec![php(7, "/a.php")],
        at(KTIME_10S + 2 * VERDICT_WAIT_NS),
        &mut out,
    );
    s.finish(&mut out);
    assert!(out.is_empty(), "consumed by its released verdict: {out:?}");
}

#[test]
fn verdicts_that_do_not_wait_go_at_once_and_still_claim_their_line() {
    let mut s = stage();
    let mut out = Vec::new();
    // Not an nginx process.
    s.offer(
        verdict(77, "127.0.0.1:9000", Transport::Tcp, KTIME_10S),
        at(KTIME_10S),
        &mut out,
    );
    // nginx did not see it.
    let Verdict::Reset(mut unseen) = tcp(KTIME_10S) else {
        unreachable!()
    };
    unseen.seen_by_receiver = Some(false);
    s.offer(Verdict::Reset(unseen), at(KTIME_10S), &mut out);
    // A reset from one of nginx's clients (nginx accepted the connection).
    let Verdict::Reset(mut client) = tcp(KTIME_10S) else {
        unreachable!()
    };
    client.receiver_role = Some(Role::Server);
    client.remote = "127.0.0.1:51234".into();
    s.offer(Verdict::Reset(client), at(KTIME_10S), &mut out);
    assert_eq!(pairs(&out).len(), 3);
    assert_eq!(s.waiting(), 0);
    out.clear();
    let client_line = raw(
        "2026/11/30 12:58:42 [info] 4242#4242: *8 recv() failed (104: Connection reset by peer) \
         while reading client request line, client: 127.0.0.1, server: 127.0.0.1:8080",
    );
    s.lines(vec![client_line, php(7, "/a.php")], at(KTIME_10S), &mut out);
    s.finish(&mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn without_a_followed_log_nothing_waits() {
    let mut s = stage();
    s.set_following(false);
    let mut out = Vec::new();
    s.offer(tcp(KTIME_10S), at(KTIME_10S), &mut out);
    assert_eq!(pairs(&out), [(KTIME_10S, None)]);
}

#[test]
fn finish_releases_every_wait() {
    let mut s = stage();
    let mut out = Vec::new();
    s.offer(tcp(KTIME_10S + MS), at(KTIME_10S), &mut out);
    s.offer(tcp(KTIME_10S), at(KTIME_10S), &mut out);
    let other = reset_line(
        "2026/11/30 12:58:42",
        WORKER,
        3,
        "/x",
        "http://127.0.0.1:8000/x",
    );
    s.lines(vec![other], at(KTIME_10S), &mut out);
    assert!(out.is_empty());
    s.finish(&mut out);
    assert_eq!(pairs(&out), [(KTIME_10S, None), (KTIME_10S + MS, None)]);
    assert_eq!(unexplained(&out), [Some(3)]);
    assert_eq!(s.waiting(), 0);
}

#[test]
fn waits_are_bounded_in_count() {
    let mut s = stage();
    let mut out = Vec::new();
    for i in 0..MAX_HELD as u64 + 10 {
        s.offer(tcp(KTIME_10S + i), at(KTIME_10S), &mut out);
    }
    assert_eq!(s.waiting(), MAX_HELD);
    // The oldest went first.
    assert_eq!(
        pairs(&out),
        (0..10).map(|i| (KTIME_10S + i, None)).collect::<Vec<_>>()
    );
    out.clear();
    let lines = (0..MAX_LINES as u64 + 3)
        .map(|i| {
            reset_line(
                "2026/11/30 12:58:42",
                WORKER,
                i,
                "/x",
                "http://127.0.0.1:1/x",
            )
        })
        .collect();
    s.lines(lines, at(KTIME_10S), &mut out);
    assert_eq!(unexplained(&out), [Some(0), Some(1), Some(2)]);
}

#[test]
fn an_nginx_in_its_own_pid_namespace_and_time_zone() {
    let mut s = stage();
    // The container's nginx: master 1 and worker 7 in its namespace, 6001/6002 here. Its zone
    // reads as UTC from /proc (nginx hides TZ); its lines are in Tokyo time (UTC+9).
    s.set_master(
        PidMap::from_pairs(6001, [(1, 6001), (7, 6002)]),
        NginxTimeZone::utc("its /etc/localtime"),
    );
    s.assign_file(PathBuf::from("/proc/6001/root/logs/error.log"), 6001);
    let mut out = Vec::new();
    s.offer(
        verdict(6002, "127.0.0.1:8000", Transport::Tcp, KTIME_10S),
        at(KTIME_10S),
        &mut out,
    );
    let mut line = reset_line("2026/11/30 21:58:42", 7, 3, "/x", "http://127.0.0.1:8000/x");
    line.log_file = PathBuf::from("/proc/6001/root/logs/error.log");
    s.lines(vec![line], at(KTIME_10S + 100 * MS), &mut out);
    assert_eq!(pairs(&out), [(KTIME_10S, Some(3))]);
    let Released::Verdict(_, Some(l)) = &out[0] else {
        panic!("{out:?}");
    };
    assert_eq!(l.host_pid, Some(6002));
    assert_eq!(l.utc.map(|u| u.earliest), Some(BASE_UNIX_S));
    let notes = s.take_notes();
    assert!(notes[0].contains("UTC+09:00"), "{notes:?}");
}

#[test]
fn a_pid_nobody_knows_asks_for_a_refresh_and_is_resolved_by_it() {
    let mut s = stage();
    let mut out = Vec::new();
    // A worker started by a reload, unknown until the pids are read again; its verdict
    // arrives after the refresh.
    s.lines(
        vec![reset_line(
            "2026/11/30 12:58:42",
            4300,
            3,
            "/x",
            "fastcgi://127.0.0.1:9000",
        )],
        at(KTIME_10S),
        &mut out,
    );
    assert!(s.take_unknown_writer());
    s.set_master(
        PidMap::identity([MASTER, WORKER, 4300]),
        NginxTimeZone::utc("ignored"),
    );
    s.offer(
        verdict(4300, "127.0.0.1:9000", Transport::Tcp, KTIME_10S),
        at(KTIME_10S + 100 * MS),
        &mut out,
    );
    assert_eq!(pairs(&out), [(KTIME_10S, Some(3))]);
}

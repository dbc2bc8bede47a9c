//! The engine on event sequences in the order the kernel produces them (observed on 6.18
//! with real nginx, php-fpm and gunicorn; see ../shared/KERNEL-NOTES.md). Active resets
//! (close, exit) trace the receive *before* the send on loopback; passive ones (no socket)
//! trace the send first.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use super::*;

mod golden;
use crate::model::{
    CauseKind, OomVictim, ProcessExit, ResetReceived, ResetSent, SignalGenerated, SocketError,
    Task, Transport, UnixListen, UnixPeer, Verdict,
};

const NGINX: u32 = 1000;
const WORKER: u32 = 2000;
const MASTER: u32 = 1999;
const KILLER: u32 = 3000;
const NGINX_END: &str = "127.0.0.1:43210";
const UPSTREAM_END: &str = "127.0.0.1:9000";

fn reasons() -> HashMap<u32, String> {
    [
        (0, "SK_RST_REASON_NOT_SPECIFIED"),
        (1, "SK_RST_REASON_NO_SOCKET"),
        (3, "SK_RST_REASON_TCP_RFC7323_PAWS"),
        (8, "SK_RST_REASON_TCP_ABORT_ON_DATA"),
        (9, "SK_RST_REASON_TCP_TIMEWAIT_SOCKET"),
        (11, "SK_RST_REASON_TCP_ABORT_ON_CLOSE"),
        (12, "SK_RST_REASON_TCP_ABORT_ON_LINGER"),
        (13, "SK_RST_REASON_TCP_ABORT_ON_MEMORY"),
        (14, "SK_RST_REASON_TCP_STATE"),
        (15, "SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT"),
    ]
    .into_iter()
    .map(|(v, n)| (v, n.to_string()))
    .collect()
}

const ABORT_ON_CLOSE: u32 = 11;

fn task(pid: u32, comm: &str) -> Task {
    Task {
        pid,
        tid: pid,
        comm: comm.into(),
    }
}

fn nginx() -> Task {
    task(NGINX, "nginx")
}

fn worker() -> Task {
    task(WORKER, "php-fpm8.2")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn received(t: u64) -> KernelEvent {
    KernelEvent::ResetReceived(ResetReceived {
        time_ns: t,
        // on loopback the receive runs in the sender's context
        current: worker(),
        owner: Some(nginx()),
        owner_role: None,
        sk: 0xa,
        local: addr(NGINX_END),
        remote: addr(UPSTREAM_END),
        sock_cookie: Some(7),
        rcv_nxt: None,
        netns: None,
    })
}

fn sent(t: u64, current: Task, exiting: bool, reason: Option<u32>) -> KernelEvent {
    KernelEvent::ResetSent(ResetSent {
        time_ns: t,
        current,
        current_exiting: exiting,
        owner: None,
        sk: 0xb,
        reason,
        state: Some(7),
        orphan: false,
        seq: None,
        netns: None,
        src: addr(UPSTREAM_END),
        dst: addr(NGINX_END),
    })
}

fn signal(t: u64, sender: Task, sig: i32, code: i32, target: u32) -> KernelEvent {
    KernelEvent::Signal(SignalGenerated {
        time_ns: t,
        sender,
        sig,
        code,
        target_pid: target,
        target_comm: "php-fpm8.2".into(),
        result: Some(0),
    })
}

fn exit(t: u64, exit_code: i32) -> KernelEvent {
    KernelEvent::Exit(ProcessExit {
        time_ns: t,
        task: worker(),
        exit_code,
        memcg_id: 77,
        group_dead: Some(true),
    })
}

/// The reset verdicts among `out`.
fn resets(out: &[Verdict]) -> Vec<Attribution> {
    out.iter()
        .filter_map(|v| match v {
            Verdict::Reset(a) => Some((**a).clone()),
            Verdict::Refused(_) => None,
        })
        .collect()
}

fn run(events: Vec<KernelEvent>) -> Vec<Attribution> {
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    for e in events {
        engine.observe(e, &mut out);
    }
    engine.expire(u64::MAX, &mut out);
    let out = resets(&out);
    golden::check(&out);
    out
}

/// nginx's recv() on its socket 0xa failed with ECONNRESET.
fn nginx_saw_it(t: u64) -> KernelEvent {
    KernelEvent::SocketError(SocketError {
        time_ns: t,
        receiver: nginx(),
        sock: 0xa,
        family: 2,
        ret: -104,
        unix: None,
    })
}

fn only(mut events: Vec<KernelEvent>) -> Attribution {
    // nginx reads the socket the reset hit, as when it waits for a response: a
    // millisecond after the last event, well within SEEN_WAIT.
    if events
        .iter()
        .any(|e| matches!(e, KernelEvent::ResetReceived(_)))
    {
        let last = events.iter().map(KernelEvent::time_ns).max().unwrap_or(0);
        events.push(nginx_saw_it(last + 1_000_000));
    }
    let mut out = run(events);
    assert_eq!(out.len(), 1, "expected one verdict, got {out:#?}");
    out.remove(0)
}

#[test]
fn kill_9_of_a_worker_names_the_killer() {
    let a = only(vec![
        signal(100, task(KILLER, "kill"), 9, 0, WORKER),
        exit(200, 9),
        received(300),
        sent(301, worker(), true, Some(ABORT_ON_CLOSE)),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Signal);
    assert_eq!(a.receiver, Some(nginx()));
    assert_eq!(a.peer, Some(worker()));
    assert!(a.peer_exiting);
    let s = a.cause.signal().cloned().expect("signal evidence");
    assert_eq!((s.number, s.code), (9, 0));
    assert_eq!(s.sender.map(|t| t.pid), Some(KILLER));
    assert_eq!(a.kernel_reason, Some(ABORT_ON_CLOSE));
}

#[test]
fn a_dying_sender_wins_over_a_stale_owner_record() {
    // Socket memory is reused: an owner recorded for an earlier socket at the same address
    // (here a client that connected from it) must not be taken for the dying worker.
    let mut stale = sent(301, worker(), true, Some(ABORT_ON_CLOSE));
    if let KernelEvent::ResetSent(s) = &mut stale {
        s.owner = Some(task(4242, "http-client"));
    }
    let a = only(vec![
        signal(100, task(KILLER, "kill"), 9, 0, WORKER),
        exit(200, 9),
        received(300),
        stale,
    ]);
    assert_eq!(a.peer, Some(worker()));
    assert_eq!(a.cause.kind(), CauseKind::Signal);
}

#[test]
fn request_terminate_timeout_blames_the_master_not_the_reraise() {
    // php-fpm: the master sends SIGTERM, the worker's handler re-raises SIGTERM itself.
    let a = only(vec![
        signal(100, task(MASTER, "php-fpm8.2"), 15, 0, WORKER),
        signal(150, worker(), 15, -6, WORKER),
        exit(200, 15),
        received(300),
        sent(301, worker(), true, Some(ABORT_ON_CLOSE)),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Signal);
    assert_eq!(
        a.cause
            .signal()
            .and_then(|s| s.sender.as_ref())
            .map(|t| t.pid),
        Some(MASTER)
    );
}

#[test]
fn oom_kill_wins_over_the_sigkill_it_sends() {
    let a = only(vec![
        signal(100, worker(), 9, SI_KERNEL, WORKER),
        KernelEvent::OomVictim(OomVictim {
            time_ns: 110,
            victim_pid: WORKER,
            victim_comm: "php-fpm8.2".into(),
            killer: worker(),
            memcg_id: 77,
        }),
        exit(200, 9),
        received(300),
        sent(301, worker(), true, Some(ABORT_ON_CLOSE)),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::OomKill);
    let oom = a.cause.oom().cloned().expect("oom evidence");
    assert_eq!(oom.victim.pid, WORKER);
    assert_eq!(oom.memcg_id, 77);
    assert_eq!(a.cause.signal().map(|s| s.code), Some(SI_KERNEL));
}

/// The pid of an OOM victim from minutes ago now belongs to another worker, which an admin
/// kills: that is a signal, not the old OOM kill.
#[test]
fn an_old_oom_kill_of_a_reused_pid_is_not_a_new_deaths() {
    let s = 1_000_000_000;
    let a = only(vec![
        KernelEvent::OomVictim(OomVictim {
            time_ns: 10 * s,
            victim_pid: WORKER,
            victim_comm: "php-fpm8.2".into(),
            killer: worker(),
            memcg_id: 77,
        }),
        signal(200 * s, task(KILLER, "kill"), 9, 0, WORKER),
        exit(200 * s + 100, 9),
        received(200 * s + 300),
        sent(200 * s + 301, worker(), true, Some(ABORT_ON_CLOSE)),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Signal, "{a:#?}");
    assert_eq!(
        a.cause
            .signal()
            .and_then(|s| s.sender.as_ref())
            .map(|t| t.pid),
        Some(KILLER)
    );
}

#[test]
fn segfault_raised_by_the_kernel_is_a_crash() {
    let a = only(vec![
        signal(100, worker(), 11, 1, WORKER),
        exit(200, 11 | 0x80),
        received(300),
        sent(301, worker(), true, Some(ABORT_ON_CLOSE)),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Crash);
    assert_eq!(a.cause.signal().map(|s| (s.number, s.code)), Some((11, 1)));
}

#[test]
fn sigsegv_sent_by_another_process_is_a_signal() {
    let a = only(vec![
        signal(100, task(KILLER, "kill"), 11, 0, WORKER),
        exit(200, 11),
        received(300),
        sent(301, worker(), true, Some(ABORT_ON_CLOSE)),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Signal);
}

#[test]
fn abort_is_a_crash() {
    let a = only(vec![
        signal(100, worker(), 6, -6, WORKER),
        exit(200, 6),
        received(300),
        sent(301, worker(), true, Some(ABORT_ON_CLOSE)),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Crash);
}

#[test]
fn exit_with_unread_data_reports_the_code() {
    let a = only(vec![
        exit(200, 3 << 8),
        received(300),
        sent(301, worker(), true, Some(ABORT_ON_CLOSE)),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Exit);
    assert_eq!(a.cause.exit_code(), Some(3));
    assert!(a.cause.signal().is_none());
}

#[test]
fn live_close_with_unread_data_is_an_abort() {
    let a = only(vec![
        received(300),
        sent(301, worker(), false, Some(ABORT_ON_CLOSE)),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Abort);
    assert_eq!(a.peer, Some(worker()));
    assert!(!a.peer_exiting);
}

#[test]
fn closed_port_is_no_socket_send_first() {
    // tcp_v4_send_reset traces before transmitting: send, then receive.
    let a = only(vec![
        KernelEvent::ResetSent(ResetSent {
            time_ns: 100,
            current: nginx(),
            current_exiting: false,
            owner: None,
            sk: 0,
            reason: Some(1),
            state: None,
            orphan: false,
            seq: None,
            netns: None,
            src: addr(UPSTREAM_END),
            dst: addr(NGINX_END),
        }),
        received(101),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::NoSocket);
    assert_eq!(a.receiver, Some(nginx()));
    assert!(a.peer.is_none());
}

/// nginx's connect() (or its getsockopt(SO_ERROR)) on socket 0xa returning ECONNREFUSED.
fn nginx_refused(t: u64) -> KernelEvent {
    KernelEvent::SocketError(SocketError {
        time_ns: t,
        receiver: nginx(),
        sock: 0xa,
        family: 2,
        ret: -111,
        unix: None,
    })
}

#[test]
fn refused_connect_without_a_traced_send_is_no_socket() {
    // 6.1: tcp_v4_send_reset() with no socket is not traced; nginx's connect() (or its
    // getsockopt(SO_ERROR)) returning ECONNREFUSED says what happened.
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    engine.observe(received(100), &mut out);
    engine.expire(100 + RECEIVE_WAIT + 1, &mut out);
    engine.observe(nginx_refused(100 + RECEIVE_WAIT + 2), &mut out);
    let out = resets(&out);
    golden::check(&out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].cause.kind(), CauseKind::NoSocket);
    assert_eq!(out[0].seen_by_receiver, Some(true));
}

#[test]
fn keepalive_timeout_is_the_kernel() {
    let a = only(vec![
        received(300),
        // timer context: whatever task was on the CPU
        sent(301, task(4444, "swapper/1"), false, Some(15)),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Kernel);
    assert!(a.peer.is_none());
}

#[test]
fn reset_from_a_remote_host_is_the_network() {
    let a = only(vec![KernelEvent::ResetReceived(ResetReceived {
        time_ns: 1,
        current: task(0, "swapper/0"),
        owner: Some(nginx()),
        owner_role: None,
        sk: 0xa,
        local: addr("10.0.0.1:43210"),
        remote: addr("192.0.2.7:443"),
        sock_cookie: None,
        rcv_nxt: None,
        netns: None,
    })]);
    assert_eq!(a.cause.kind(), CauseKind::Network);
}

/// Without the packet hook a reset from a remote address may still be this host's own
/// REJECT (an OUTPUT rule to a container's address): the hint says so.
#[test]
fn a_remote_reset_without_segments_may_be_this_hosts_firewall() {
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    engine.set_segments_traced(false);
    let mut out = Vec::new();
    engine.observe(
        KernelEvent::ResetReceived(ResetReceived {
            time_ns: 1,
            current: task(0, "swapper/0"),
            owner: Some(nginx()),
            owner_role: None,
            sk: 0xa,
            local: addr("10.0.0.1:43210"),
            remote: addr("192.0.2.7:443"),
            sock_cookie: None,
            rcv_nxt: None,
            netns: None,
        }),
        &mut out,
    );
    engine.expire(u64::MAX, &mut out);
    let out = resets(&out);
    golden::check(&out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].cause.kind(), CauseKind::Network);
    assert!(out[0].unseen.segments);
}

#[test]
fn local_reset_without_a_send_is_unknown_after_the_wait() {
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    engine.observe(received(1_000), &mut out);
    assert!(out.is_empty(), "must wait for the send");
    engine.expire(1_000 + RECEIVE_WAIT / 2, &mut out);
    assert!(out.is_empty());
    engine.expire(1_000 + RECEIVE_WAIT + 1, &mut out);
    assert!(
        out.is_empty(),
        "a verdict without its send still waits for the receiver"
    );
    engine.expire(1_000 + RECEIVE_WAIT + SEEN_WAIT + 2, &mut out);
    let out = resets(&out);
    golden::check(&out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].seen_by_receiver, Some(false));
    assert_eq!(out[0].cause.kind(), CauseKind::Unknown);
}

/// Before 6.10 the kernel's answer for a closed port goes untraced, and so does a REJECT:
/// the hint names both, not only a loss.
#[test]
fn an_unexplained_local_reset_before_6_10_names_the_untraced_kernel_answer() {
    let mut engine = Attributor::new(&HashMap::new(), HashSet::new());
    let mut out = Vec::new();
    engine.observe(received(1_000), &mut out);
    engine.expire(u64::MAX, &mut out);
    let out = resets(&out);
    golden::check(&out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].cause.kind(), CauseKind::Unknown);
    assert!(out[0].unseen.no_socket_sends);
    assert!(!out[0].unseen.segments);
}

/// On 6.10+ without the packet hook (no CAP_NET_ADMIN, or the kernel refused it) a local
/// REJECT is still possible: the hint must not send the operator to lost samples only.
#[test]
fn an_unexplained_local_reset_without_segments_names_the_local_firewall() {
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    engine.set_segments_traced(false);
    let mut out = Vec::new();
    engine.observe(received(1_000), &mut out);
    engine.expire(u64::MAX, &mut out);
    let out = resets(&out);
    golden::check(&out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].cause.kind(), CauseKind::Unknown);
    assert!(!out[0].unseen.no_socket_sends);
    assert!(out[0].unseen.segments);
}

#[test]
fn a_reset_the_receiver_reads_is_seen_at_once() {
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    for e in [
        received(300),
        sent(301, worker(), false, Some(ABORT_ON_CLOSE)),
    ] {
        engine.observe(e, &mut out);
    }
    assert!(out.is_empty(), "waits to learn whether nginx saw it");
    engine.observe(nginx_saw_it(5_000), &mut out);
    let out = resets(&out);
    golden::check(&out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].seen_by_receiver, Some(true));
}

#[test]
fn the_receivers_error_may_come_before_the_send() {
    let a = only(vec![
        received(300),
        nginx_saw_it(301),
        sent(302, worker(), false, Some(ABORT_ON_CLOSE)),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Abort);
    assert_eq!(a.seen_by_receiver, Some(true));
}

#[test]
fn a_reset_after_the_response_is_not_seen() {
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    for e in [
        received(300),
        sent(301, worker(), false, Some(ABORT_ON_CLOSE)),
    ] {
        engine.observe(e, &mut out);
    }
    engine.expire(300 + SEEN_WAIT + 1, &mut out);
    let out = resets(&out);
    golden::check(&out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].seen_by_receiver, Some(false));
}

fn unix_error(t: u64, owner: Option<Task>) -> KernelEvent {
    KernelEvent::SocketError(SocketError {
        time_ns: t,
        receiver: nginx(),
        sock: 0xa,
        family: 1,
        ret: -104,
        unix: Some(UnixPeer {
            sock: 0xb,
            owner,
            path: Some("/run/php/php8.2-fpm.sock".into()),
        }),
    })
}

#[test]
fn unix_worker_killed_mid_request() {
    // No RST on unix sockets: nginx's recv() failing is the reset.
    let a = only(vec![
        signal(100, task(KILLER, "kill"), 9, 0, WORKER),
        exit(200, 9),
        unix_error(300, Some(worker())),
    ]);
    assert_eq!(a.transport, Transport::Unix);
    assert_eq!(a.cause.kind(), CauseKind::Signal);
    assert_eq!(a.remote, "/run/php/php8.2-fpm.sock");
    assert_eq!(a.peer.map(|p| p.pid), Some(WORKER));
    assert_eq!(a.seen_by_receiver, Some(true));
    assert!(!a.listener_closed);
}

#[test]
fn unix_live_abort() {
    let a = only(vec![unix_error(300, Some(worker()))]);
    assert_eq!(a.cause.kind(), CauseKind::Abort);
}

#[test]
fn unix_listener_closed_with_queued_connections() {
    // php-fpm's master gets SIGTERM, handles it, exits 0; its listener closes and the
    // connections still in the backlog (never accepted: no owner) are reset.
    let master = task(MASTER, "php-fpm8.2");
    let a = only(vec![
        KernelEvent::UnixListen(UnixListen {
            time_ns: 0,
            owner: master.clone(),
            path: "/run/php/php8.2-fpm.sock".into(),
        }),
        signal(100, task(KILLER, "kill"), 15, 0, MASTER),
        KernelEvent::Exit(ProcessExit {
            time_ns: 200,
            task: master.clone(),
            exit_code: 0,
            memcg_id: 0,
            group_dead: Some(true),
        }),
        unix_error(300, None),
    ]);
    assert!(a.listener_closed);
    assert_eq!(a.peer, Some(master));
    assert_eq!(a.cause.kind(), CauseKind::Signal);
    assert_eq!(
        a.cause
            .signal()
            .and_then(|s| s.sender.as_ref())
            .map(|t| t.pid),
        Some(KILLER)
    );
}

#[test]
fn unix_listener_closed_by_a_master_still_shutting_down() {
    // Observed with php-fpm 8.2: on SIGTERM the master closes its listeners at once and
    // exits only after its workers, so the queued connections are reset before it dies.
    let master = task(MASTER, "php-fpm8.2");
    let a = only(vec![
        KernelEvent::UnixListen(UnixListen {
            time_ns: 0,
            owner: master.clone(),
            path: "/run/php/php8.2-fpm.sock".into(),
        }),
        signal(100, task(KILLER, "kill"), 15, 0, MASTER),
        unix_error(300, None),
    ]);
    assert!(a.listener_closed);
    assert_eq!(a.peer, Some(master));
    assert_eq!(a.cause.kind(), CauseKind::Signal);
    assert_eq!(
        a.cause
            .signal()
            .and_then(|s| s.sender.as_ref())
            .map(|t| t.pid),
        Some(KILLER)
    );
}

#[test]
fn unix_reset_with_nothing_known_is_unknown() {
    let a = only(vec![unix_error(300, None)]);
    assert_eq!(a.cause.kind(), CauseKind::Unknown);
    assert!(!a.listener_closed);
}

#[test]
fn v4_mapped_endpoints_match_their_ipv4_form() {
    let a = only(vec![
        KernelEvent::ResetReceived(ResetReceived {
            time_ns: 300,
            current: worker(),
            owner: Some(nginx()),
            owner_role: None,
            sk: 0xa,
            local: addr("[::ffff:127.0.0.1]:43210"),
            remote: addr("[::ffff:127.0.0.1]:9000"),
            sock_cookie: None,
            rcv_nxt: None,
            netns: None,
        }),
        sent(301, worker(), false, Some(ABORT_ON_CLOSE)),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Abort);
}

#[test]
fn kernels_without_reasons_infer_from_the_task() {
    // Before ~6.10 tcp_send_reset has no reason field.
    let mut engine = Attributor::new(&HashMap::new(), HashSet::new());
    let mut out = Vec::new();
    for e in [
        signal(100, task(KILLER, "kill"), 9, 0, WORKER),
        exit(200, 9),
        received(300),
        sent(301, worker(), true, None),
        // a live abort on another connection
        KernelEvent::ResetReceived(ResetReceived {
            time_ns: 400,
            current: task(5000, "gunicorn"),
            owner: Some(nginx()),
            owner_role: None,
            sk: 0xc,
            local: addr("127.0.0.1:43211"),
            remote: addr("127.0.0.1:8000"),
            sock_cookie: None,
            rcv_nxt: None,
            netns: None,
        }),
        KernelEvent::ResetSent(ResetSent {
            time_ns: 401,
            current: task(5000, "gunicorn"),
            current_exiting: false,
            owner: Some(task(5000, "gunicorn")),
            sk: 0xd,
            reason: None,
            state: Some(7),
            orphan: false,
            seq: None,
            netns: None,
            src: addr("127.0.0.1:8000"),
            dst: addr("127.0.0.1:43211"),
        }),
    ] {
        engine.observe(e, &mut out);
    }
    engine.expire(u64::MAX, &mut out);
    let out = resets(&out);
    golden::check(&out);
    let causes: Vec<CauseKind> = out.iter().map(|a| a.cause.kind()).collect();
    assert_eq!(causes, vec![CauseKind::Signal, CauseKind::Abort]);
}

#[test]
fn a_million_resets_keep_state_bounded() {
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    for i in 0..1_000_000u64 {
        let port = (i % 60_000) as u16 + 1024;
        let t = i * 1_000;
        let nginx_end = SocketAddr::new(addr(NGINX_END).ip(), port);
        engine.observe(
            KernelEvent::ResetReceived(ResetReceived {
                time_ns: t,
                current: worker(),
                owner: Some(nginx()),
                owner_role: None,
                sk: i,
                local: nginx_end,
                remote: addr(UPSTREAM_END),
                sock_cookie: None,
                rcv_nxt: None,
                netns: None,
            }),
            &mut out,
        );
        engine.observe(
            KernelEvent::ResetSent(ResetSent {
                time_ns: t + 1,
                current: worker(),
                current_exiting: false,
                owner: None,
                sk: i,
                reason: Some(ABORT_ON_CLOSE),
                state: Some(7),
                orphan: false,
                seq: None,
                netns: None,
                src: addr(UPSTREAM_END),
                dst: nginx_end,
            }),
            &mut out,
        );
        engine.observe(
            KernelEvent::SocketError(SocketError {
                time_ns: t + 2,
                receiver: nginx(),
                sock: i,
                family: 2,
                ret: -104,
                unix: None,
            }),
            &mut out,
        );
        assert_eq!(out.len(), 1, "every reset gets exactly one verdict");
        out.clear();
    }
    assert!(
        engine.state_len() <= MAX_PENDING,
        "state {}",
        engine.state_len()
    );
}

// --- Resets whose sender is not `current`, TCP_STATE split by the send's state, which end
// the receiver is (see ../shared/KERNEL-NOTES.md "SO_LINGER 0 without unread data").

const TCP_STATE: u32 = 14;
const ABORT_ON_DATA: u32 = 8;
const TIMEWAIT_SOCKET: u32 = 9;
const ESTABLISHED: u32 = 1;
const FIN_WAIT2: u32 = 5;
const CLOSE: u32 = 7;

/// A send with its owner record, state and orphan flag spelled out.
fn sent_by(
    t: u64,
    current: Task,
    owner: Option<Task>,
    reason: u32,
    state: u32,
    orphan: bool,
) -> KernelEvent {
    KernelEvent::ResetSent(ResetSent {
        time_ns: t,
        current,
        current_exiting: false,
        owner,
        sk: 0xb,
        reason: Some(reason),
        state: Some(state),
        orphan,
        seq: None,
        netns: None,
        src: addr(UPSTREAM_END),
        dst: addr(NGINX_END),
    })
}

#[test]
fn linger_0_close_after_reading_everything_is_an_abort_by_the_owner() {
    // tcp_close() -> tcp_disconnect(): TCP_STATE sent in the closer's close(), state CLOSE.
    let a = only(vec![
        received(300),
        sent_by(301, worker(), Some(worker()), TCP_STATE, CLOSE, false),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Abort);
    assert_eq!(a.peer, Some(worker()));
    assert!(a.cause.aborted_by().is_none());
    assert_eq!(a.kernel_reason, Some(TCP_STATE));
}

#[test]
fn ss_kill_names_the_socket_owner_and_the_task_that_destroyed_it() {
    // tcp_abort() from `ss -K`: TCP_STATE while still ESTABLISHED, in ss's context.
    let ss = task(4100, "ss");
    let a = only(vec![
        sent_by(
            299,
            ss.clone(),
            Some(worker()),
            TCP_STATE,
            ESTABLISHED,
            false,
        ),
        received(300),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Abort);
    assert_eq!(a.peer, Some(worker()));
    assert_eq!(a.cause.aborted_by(), Some(&ss));
}

#[test]
fn fin_wait2_expiry_is_the_kernel_not_the_task_on_the_cpu() {
    let a = only(vec![
        sent_by(
            299,
            task(0, "swapper/1"),
            Some(worker()),
            TCP_STATE,
            FIN_WAIT2,
            true,
        ),
        received(300),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Kernel);
    assert_eq!(
        a.peer,
        Some(worker()),
        "the orphan's former owner, never current"
    );
}

#[test]
fn data_on_a_connection_the_upstream_closed_is_stale_and_never_blames_the_sender_of_the_data() {
    // tcp_rcv_state_process(): data reaching an orphan in FIN_WAIT2 -> TCP_ABORT_ON_DATA,
    // sent in the softirq of the data's sender: nginx itself on loopback.
    let a = only(vec![
        sent_by(299, nginx(), Some(worker()), ABORT_ON_DATA, FIN_WAIT2, true),
        received(300),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::StaleConnection);
    assert_eq!(a.peer, Some(worker()));
}

#[test]
fn stale_connection_with_no_owner_record_names_no_peer_rather_than_current() {
    let a = only(vec![
        sent_by(299, nginx(), None, ABORT_ON_DATA, FIN_WAIT2, true),
        received(300),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::StaleConnection);
    assert_eq!(a.peer, None, "not nginx, whose data it was");
}

#[test]
fn a_segment_to_a_time_wait_socket_is_stale_too() {
    let a = only(vec![
        sent_by(299, nginx(), None, TIMEWAIT_SOCKET, ESTABLISHED, false),
        received(300),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::StaleConnection);
    assert!(a.peer.is_none());
}

#[test]
fn stale_connection_after_the_worker_exited_is_that_exit() {
    // The worker exited (its sockets closed with a FIN); nginx reused the connection.
    let a = only(vec![
        exit(100, 0),
        sent_by(299, nginx(), Some(worker()), ABORT_ON_DATA, FIN_WAIT2, true),
        received(300),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Exit);
    assert_eq!(a.peer, Some(worker()));
}

#[test]
fn a_client_of_nginx_aborting_is_said_to_be_a_client() {
    // nginx accepted this connection: the reset comes from its client, not an upstream.
    let client = task(5100, "curl");
    let a = only(vec![
        KernelEvent::ResetReceived(ResetReceived {
            time_ns: 300,
            current: client.clone(),
            owner: Some(nginx()),
            owner_role: Some(crate::model::Role::Server),
            sk: 0xa,
            local: addr(UPSTREAM_END),
            remote: addr(NGINX_END),
            sock_cookie: None,
            rcv_nxt: None,
            netns: None,
        }),
        KernelEvent::ResetSent(ResetSent {
            time_ns: 301,
            current: client.clone(),
            current_exiting: false,
            owner: Some(client.clone()),
            sk: 0xb,
            reason: Some(TCP_STATE),
            state: Some(CLOSE),
            orphan: false,
            seq: None,
            netns: None,
            src: addr(NGINX_END),
            dst: addr(UPSTREAM_END),
        }),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Abort);
    assert_eq!(a.peer, Some(client));
    assert_eq!(a.receiver_role, Some(crate::model::Role::Server));
}

#[test]
fn a_receiver_nobody_saw_connect_is_named_by_its_failing_call() {
    // Keepalive timeout: the timed-out end resets from a timer; the other end's owner was
    // never seen connecting or accepting, but its recv() fails with ECONNRESET.
    let server = task(6100, "python3");
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    for e in [
        sent_by(299, task(0, "swapper/0"), None, 15, ESTABLISHED, false),
        KernelEvent::ResetReceived(ResetReceived {
            time_ns: 300,
            current: task(0, "swapper/0"),
            owner: None,
            owner_role: None,
            sk: 0xa,
            local: addr(NGINX_END),
            remote: addr(UPSTREAM_END),
            sock_cookie: None,
            rcv_nxt: None,
            netns: None,
        }),
        KernelEvent::SocketError(SocketError {
            time_ns: 5_000,
            receiver: server.clone(),
            sock: 0xa,
            family: 2,
            ret: -104,
            unix: None,
        }),
    ] {
        engine.observe(e, &mut out);
    }
    let out = resets(&out);
    golden::check(&out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].cause.kind(), CauseKind::Kernel);
    assert_eq!(out[0].receiver, Some(server));
    assert_eq!(out[0].seen_by_receiver, Some(true));
}

#[test]
fn an_error_of_another_process_on_a_reused_socket_address_is_not_the_receivers() {
    // nginx's socket 0xa got the reset; before nginx looked, the address was reused by a
    // socket of another process whose call failed: that says nothing about nginx.
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    for e in [
        received(300),
        sent(301, worker(), false, Some(ABORT_ON_CLOSE)),
        KernelEvent::SocketError(SocketError {
            time_ns: 400,
            receiver: task(7100, "other"),
            sock: 0xa,
            family: 2,
            ret: -104,
            unix: None,
        }),
    ] {
        engine.observe(e, &mut out);
    }
    assert!(out.is_empty(), "still waiting for nginx: {out:?}");
    engine.expire(301 + SEEN_WAIT + 1, &mut out);
    let out = resets(&out);
    golden::check(&out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].seen_by_receiver, Some(false));
    assert_eq!(out[0].receiver, Some(nginx()));
}

#[test]
fn tcp_memory_pressure_is_the_kernel() {
    let a = only(vec![
        received(300),
        sent_by(301, worker(), Some(worker()), 13, CLOSE, false),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Kernel);
}

// --- Containers, NAT and the network (issue: "explain every reset that no process on this
// host sent"). Addresses are none of rsttrace's own: pairing must not need them.

fn sent_in(t: u64, netns: u32, seq: u32, src: &str, dst: &str, current: Task) -> KernelEvent {
    KernelEvent::ResetSent(ResetSent {
        time_ns: t,
        current,
        current_exiting: false,
        owner: None,
        sk: 0xb,
        reason: Some(ABORT_ON_CLOSE),
        state: Some(7),
        orphan: false,
        seq: Some(seq),
        netns: Some(netns),
        src: addr(src),
        dst: addr(dst),
    })
}

fn received_in(t: u64, netns: u32, rcv_nxt: u32, local: &str, remote: &str) -> KernelEvent {
    KernelEvent::ResetReceived(ResetReceived {
        time_ns: t,
        current: worker(),
        owner: Some(nginx()),
        owner_role: None,
        sk: 0xa,
        local: addr(local),
        remote: addr(remote),
        sock_cookie: None,
        rcv_nxt: Some(rcv_nxt),
        netns: Some(netns),
    })
}

const NGINX_NS: u32 = 4_026_532_100;
const BACKEND_NS: u32 = 4_026_532_200;

#[test]
fn a_container_abort_pairs_across_namespaces_by_sequence_number() {
    let a = only(vec![
        received_in(300, NGINX_NS, 77, "10.0.1.2:40000", "10.0.2.2:8000"),
        sent_in(
            301,
            BACKEND_NS,
            77,
            "10.0.2.2:8000",
            "10.0.1.2:40000",
            worker(),
        ),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Abort);
    assert_eq!(a.peer, Some(worker()));
    assert_eq!(a.receiver_netns, Some(NGINX_NS));
    assert_eq!(a.peer_netns, Some(BACKEND_NS));
}

#[test]
fn equal_addresses_in_two_namespaces_never_pair_by_mistake() {
    // Two containers use the same addresses; only the sequence numbers tell them apart.
    let (one, two) = (task(2001, "gunicorn"), task(2002, "gunicorn"));
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    for e in [
        sent_in(
            100,
            1,
            1111,
            "172.17.0.2:8000",
            "172.17.0.1:40000",
            one.clone(),
        ),
        sent_in(
            101,
            2,
            2222,
            "172.17.0.2:8000",
            "172.17.0.1:40000",
            two.clone(),
        ),
        received_in(102, 3, 2222, "172.17.0.1:40000", "172.17.0.2:8000"),
        received_in(103, 4, 1111, "172.17.0.1:40000", "172.17.0.2:8000"),
    ] {
        engine.observe(e, &mut out);
    }
    engine.expire(u64::MAX, &mut out);
    let out = resets(&out);
    golden::check(&out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].peer, Some(two), "rcv_nxt 2222 is the second's");
    assert_eq!(out[1].peer, Some(one));
}

#[test]
fn a_dnat_service_address_pairs_on_the_sequence_number() {
    // nginx -> 10.96.0.10:80, DNAT'd (kube-proxy) to the backend 10.0.2.2:8000: the RST
    // comes back un-NATed, from the virtual address.
    let a = only(vec![
        received_in(300, NGINX_NS, 4242, "10.0.1.2:40000", "10.96.0.10:80"),
        sent_in(
            301,
            BACKEND_NS,
            4242,
            "10.0.2.2:8000",
            "10.0.1.2:40000",
            worker(),
        ),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Abort);
    assert_eq!(a.peer, Some(worker()));
}

#[test]
fn dnat_and_masquerade_together_still_pair() {
    // MASQUERADE rewrote the client's address and port too: only the sequence number is
    // the same on both sides.
    let a = only(vec![
        sent_in(
            299,
            BACKEND_NS,
            9001,
            "10.0.2.2:8000",
            "10.0.0.1:61000",
            worker(),
        ),
        received_in(300, NGINX_NS, 9001, "10.0.1.2:40000", "10.96.0.10:80"),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Abort);
    assert_eq!(a.peer, Some(worker()));
}

#[test]
fn refused_syns_in_two_namespaces_do_not_pair_on_sequence_zero() {
    // A RST answering a SYN has sequence number 0, shared by every refused connect.
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    for e in [
        sent_in(
            100,
            BACKEND_NS,
            0,
            "10.0.2.2:9000",
            "10.0.9.9:50000",
            worker(),
        ),
        received_in(101, NGINX_NS, 0, "10.0.1.2:40000", "10.96.0.10:80"),
    ] {
        engine.observe(e, &mut out);
    }
    engine.expire(u64::MAX, &mut out);
    let out = resets(&out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].peer, None, "unrelated send: {:?}", out[0]);
}

fn segment(t: u64, ttl: u8, expected: Option<u8>, ifindex: u32, ip_id: u16) -> KernelEvent {
    KernelEvent::RstSegment(crate::model::RstSegment {
        time_ns: t,
        cookie: 99,
        local: addr("10.0.1.2:40000"),
        remote: addr("10.0.2.2:8000"),
        seq: 77,
        tcp_flags: 0x04,
        ttl,
        ip_id: Some(ip_id),
        ifindex,
        expected: expected.map(|ttl| crate::model::Baseline {
            ttl,
            ifindex: 3,
            same_flow: true,
        }),
    })
}

fn network_verdict(seg: KernelEvent) -> Attribution {
    only(vec![
        seg,
        received_in(300, NGINX_NS, 77, "10.0.1.2:40000", "10.0.2.2:8000"),
    ])
}

#[test]
fn a_reset_forged_by_a_router_is_a_path_device() {
    // The router's REJECT: TTL 64 where the backend's SYN-ACK came with 63.
    let a = network_verdict(segment(299, 64, Some(63), 3, 0));
    assert_eq!(a.cause.kind(), CauseKind::Network);
    let n = a.network.expect("network evidence");
    assert_eq!(n.origin, crate::model::Origin::PathDevice);
    assert_eq!(n.segment.ttl, 64);
}

#[test]
fn a_reset_with_the_flows_ttl_is_the_remote_host() {
    let a = network_verdict(segment(299, 63, Some(63), 3, 4711));
    assert_eq!(
        a.network.map(|n| n.origin),
        Some(crate::model::Origin::RemoteHost)
    );
}

#[test]
fn a_reset_from_this_hosts_own_firewall_comes_in_on_loopback() {
    let a = network_verdict(segment(299, 64, Some(63), 1, 0));
    assert_eq!(a.cause.kind(), CauseKind::Network);
    assert_eq!(
        a.network.map(|n| n.origin),
        Some(crate::model::Origin::LocalFirewall)
    );
}

#[test]
fn a_reset_injected_on_loopback_by_a_raw_socket_is_not_the_firewall() {
    // tcpkill's or scapy's RST: loopback, no traced send, and an IP ID of its own, which
    // netfilter's REJECT and the kernel's answers for no socket never carry.
    let a = network_verdict(segment(299, 64, Some(63), 1, 4711));
    assert_eq!(a.cause.kind(), CauseKind::Network);
    assert_eq!(
        a.network.map(|n| n.origin),
        Some(crate::model::Origin::LocalInjected)
    );
}

#[test]
fn an_injected_reset_is_told_apart_before_6_10_too() {
    // The kernel's own untraced answers carry ID 0 there: an ID still says a raw socket.
    let mut engine = Attributor::new(&HashMap::new(), HashSet::new());
    let mut out = Vec::new();
    for e in [
        segment(299, 64, Some(63), 1, 4711),
        received_in(300, NGINX_NS, 77, "10.0.1.2:40000", "10.0.2.2:8000"),
    ] {
        engine.observe(e, &mut out);
    }
    engine.expire(300 + RECEIVE_WAIT + SEEN_WAIT + 1, &mut out);
    let out = resets(&out);
    golden::check(&out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].cause.kind(), CauseKind::Network);
    assert_eq!(
        out[0].network.as_ref().map(|n| n.origin),
        Some(crate::model::Origin::LocalInjected)
    );
}

#[test]
fn a_refused_connect_before_6_10_is_not_blamed_on_the_firewall() {
    // Debian 12's 6.1: connect() to a closed loopback port. The kernel answers the SYN from
    // its control socket (tcp_v4_send_reset(NULL, skb), untraced before 6.9), so only the
    // segment (loopback, IP ID 0, TTL 64: what netfilter's REJECT sends too) and the
    // receive are seen; the connecting process's ECONNREFUSED says nothing listened.
    let mut engine = Attributor::new(&HashMap::new(), HashSet::new());
    let mut out = Vec::new();
    let mut seg = segment(99, 64, None, 1, 0);
    if let KernelEvent::RstSegment(s) = &mut seg {
        (s.local, s.remote, s.seq, s.tcp_flags) = (addr(NGINX_END), addr(UPSTREAM_END), 0, 0x14);
    }
    engine.observe(seg, &mut out);
    let KernelEvent::ResetReceived(mut r) = received(100) else {
        unreachable!()
    };
    r.rcv_nxt = Some(0);
    engine.observe(KernelEvent::ResetReceived(r), &mut out);
    engine.expire(100 + RECEIVE_WAIT + 1, &mut out);
    engine.observe(nginx_refused(100 + RECEIVE_WAIT + 2), &mut out);
    let out = resets(&out);
    golden::check(&out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].cause.kind(), CauseKind::NoSocket);
    assert!(out[0].network.is_none(), "{:?}", out[0].network);
}

/// Ubuntu 24.04's 6.8: no send traced for a closed port (before 6.9) and no connect() or
/// getsockopt() traced either (the socket tracepoints serve instead, and see neither). The
/// reset's own error report, ECONNREFUSED (tcp_reset() in SYN_SENT), says it answered
/// nginx's SYN: nothing listened.
/// nginx's SYN answered by a RST no send explains, then the reset's own error report,
/// ECONNREFUSED (tcp_reset() in SYN_SENT), on a kernel with these reason names.
fn refused_syn_with_its_report(reasons: &HashMap<u32, String>) -> Vec<Verdict> {
    let mut engine = Attributor::new(reasons, HashSet::new());
    let mut out = Vec::new();
    let KernelEvent::ResetReceived(mut r) = received(100) else {
        unreachable!()
    };
    r.rcv_nxt = Some(0);
    let mut report = refused_event(101, 111);
    if let KernelEvent::Refused(e) = &mut report {
        (e.local, e.remote) = (addr(NGINX_END), addr(UPSTREAM_END));
    }
    engine.observe(KernelEvent::ResetReceived(r), &mut out);
    engine.observe(report, &mut out);
    engine.expire(u64::MAX, &mut out);
    out
}

/// Ubuntu 24.04's 6.8: no send traced for a closed port (before 6.9) and no connect() or
/// getsockopt() traced either (the socket tracepoints serve instead, and see neither). The
/// reset's own error report says it answered nginx's SYN: nothing listened.
#[test]
fn a_refused_connect_witnessed_only_by_its_error_report_is_no_socket() {
    let out = refused_syn_with_its_report(&HashMap::new());
    assert!(
        out.iter().all(|v| matches!(v, Verdict::Reset(_))),
        "the report is the reset's, not a refusal of its own: {out:?}"
    );
    let out = resets(&out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].cause.kind(), CauseKind::NoSocket, "{out:#?}");

    // Where the kernel traces its answers for no socket (6.10+), an untraced one is not
    // the kernel's: it stays unknown, and its hint names a local REJECT.
    let out = resets(&refused_syn_with_its_report(&reasons()));
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].cause.kind(), CauseKind::Unknown, "{out:#?}");
}

#[test]
fn without_a_baseline_the_origin_is_unknown_but_the_segment_is_told() {
    let a = network_verdict(segment(299, 64, None, 3, 0));
    let n = a.network.expect("network evidence");
    assert_eq!(n.origin, crate::model::Origin::Unknown);
    assert_eq!((n.segment.ttl, n.segment.ip_id), (64, Some(0)));
}

fn refused_event(t: u64, error: i32) -> KernelEvent {
    KernelEvent::Refused(crate::model::SocketRefused {
        time_ns: t,
        sock: 0xa,
        owner: Some(nginx()),
        owner_role: Some(crate::model::Role::Client),
        error,
        local: addr("10.0.1.2:40000"),
        remote: addr("10.96.0.11:80"),
        netns: Some(NGINX_NS),
    })
}

#[test]
fn an_icmp_refusal_is_its_own_event_naming_the_receiver() {
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    engine.observe(refused_event(100, 111), &mut out);
    let [Verdict::Refused(f)] = out.as_slice() else {
        panic!("expected one refusal: {out:?}")
    };
    assert_eq!(f.error, 111);
    assert_eq!(f.receiver, Some(nginx()));
    assert_eq!(f.remote, addr("10.96.0.11:80"));
}

#[test]
fn a_reset_is_not_reported_again_as_a_refusal() {
    // tcp_reset() in SYN_SENT reports ECONNREFUSED right after tracing the receive.
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    for e in [
        received_in(100, NGINX_NS, 0, "10.0.1.2:40000", "10.96.0.11:80"),
        refused_event(101, 111),
    ] {
        engine.observe(e, &mut out);
    }
    engine.expire(u64::MAX, &mut out);
    assert!(
        out.iter().all(|v| matches!(v, Verdict::Reset(_))),
        "{out:?}"
    );
}

/// A Service without endpoints refuses nginx's connects one after another; nginx closes each
/// socket and the next one often gets the same address. Every connect is its own refusal,
/// and a refusal right after a reset on an earlier socket at that address is not the
/// reset's report.
#[test]
fn refusals_of_connections_at_a_reused_socket_address_are_each_reported() {
    let ms = 1_000_000;
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    let at_port = |t: u64, port: u16| {
        let mut e = refused_event(t, 111);
        if let KernelEvent::Refused(r) = &mut e {
            r.local = addr(&format!("10.0.1.2:{port}"));
        }
        e
    };
    for e in [
        at_port(1_000 * ms, 40_000),
        at_port(1_000 * ms + 300_000, 40_002),
        at_port(1_000 * ms + 600_000, 40_004),
        // A repeated report of the last connection's error is not another refusal.
        at_port(1_000 * ms + 700_000, 40_004),
    ] {
        engine.observe(e, &mut out);
    }
    assert_eq!(out.len(), 3, "{out:?}");
    out.clear();
    for e in [
        received_in(5_000 * ms, NGINX_NS, 0, "10.0.1.2:41000", "10.96.0.11:80"),
        at_port(5_002 * ms, 41_002),
    ] {
        engine.observe(e, &mut out);
    }
    engine.expire(u64::MAX, &mut out);
    let refusals = out
        .iter()
        .filter(|v| matches!(v, Verdict::Refused(_)))
        .count();
    assert_eq!(refusals, 1, "{out:?}");
}

#[test]
fn a_thread_ending_is_no_death_of_its_process() {
    // sched_process_exit fires for every thread: a worker thread of a live server ending
    // must not explain the resets the server sends afterwards.
    let a = only(vec![
        KernelEvent::Exit(ProcessExit {
            time_ns: 100,
            task: Task {
                pid: WORKER,
                tid: WORKER + 1,
                comm: "php-fpm8.2".into(),
            },
            exit_code: 0,
            memcg_id: 77,
            group_dead: Some(false),
        }),
        received(300),
        sent(301, worker(), false, Some(ABORT_ON_CLOSE)),
    ]);
    assert_eq!(a.cause.kind(), CauseKind::Abort);
}

/// nginx's connect on socket 0xa was refused by ICMP (an error, no reset); the next socket
/// at the reused address 0xa is reset 5 ms later and read 1 ms after that. The old error
/// must not stand for the new reset's (its time came before the reset).
#[test]
fn an_error_on_an_earlier_socket_at_the_same_address_is_not_this_resets() {
    let ms = 1_000_000;
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    let mut refused = nginx_saw_it(1_000 * ms);
    if let KernelEvent::SocketError(e) = &mut refused {
        e.ret = -111;
    }
    for e in [
        refused,
        received(1_005 * ms),
        sent(1_005 * ms + 1_000, worker(), false, Some(ABORT_ON_CLOSE)),
        nginx_saw_it(1_006 * ms),
    ] {
        engine.observe(e, &mut out);
    }
    engine.expire(u64::MAX, &mut out);
    let out = resets(&out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].cause.kind(), CauseKind::Abort);
    assert_eq!(out[0].seen_ns, Some(1_006 * ms), "its own call's time");
}

fn sent_with(t: u64, who: Task, seq: u32, src: &str, dst: &str) -> KernelEvent {
    KernelEvent::ResetSent(ResetSent {
        time_ns: t,
        owner: Some(who.clone()),
        current: who,
        current_exiting: false,
        sk: 0xb,
        reason: Some(ABORT_ON_CLOSE),
        state: Some(7),
        orphan: false,
        seq: Some(seq),
        netns: Some(1),
        src: addr(src),
        dst: addr(dst),
    })
}

fn received_with(t: u64, rcv_nxt: u32, local: &str, remote: &str) -> KernelEvent {
    KernelEvent::ResetReceived(ResetReceived {
        time_ns: t,
        current: worker(),
        owner: Some(nginx()),
        owner_role: None,
        sk: 0xa,
        local: addr(local),
        remote: addr(remote),
        sock_cookie: None,
        rcv_nxt: Some(rcv_nxt),
        netns: Some(1),
    })
}

/// A worker's reset whose receive sample was lost waits as a send; two seconds later the
/// same ports carry another connection, reset by another worker (receive first, as on
/// loopback). The old send, with another sequence number, is not this reset's.
#[test]
fn an_old_send_on_the_same_ports_is_not_a_new_resets() {
    let ms = 1_000_000;
    let other = task(WORKER + 1, "php-fpm8.2");
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    for e in [
        sent_with(1_000 * ms, worker(), 100, UPSTREAM_END, NGINX_END),
        received_with(3_000 * ms, 900, NGINX_END, UPSTREAM_END),
        sent_with(
            3_000 * ms + 2_000,
            other.clone(),
            900,
            UPSTREAM_END,
            NGINX_END,
        ),
        nginx_saw_it(3_001 * ms),
    ] {
        engine.observe(e, &mut out);
    }
    engine.expire(u64::MAX, &mut out);
    let out = resets(&out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].peer.as_ref().map(|p| p.pid), Some(other.pid));
}

/// Sequence number 0 is every refused connect's (a RST answering a SYN). A kernel answer
/// for no socket in another namespace (10.0.2.2:80 to its own client) does not explain
/// nginx's refused connect to 192.0.2.10:80 just because both are port 80.
#[test]
fn refused_connects_sharing_only_a_server_port_do_not_pair() {
    let ms = 1_000_000;
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    let mut no_socket = sent_with(1_000 * ms, worker(), 0, "10.0.2.2:80", "10.0.9.9:50000");
    if let KernelEvent::ResetSent(s) = &mut no_socket {
        s.reason = Some(1);
        s.sk = 0;
        s.owner = None;
        s.netns = Some(2);
    }
    engine.observe(no_socket, &mut out);
    engine.observe(
        received_with(1_001 * ms, 0, "10.0.1.2:40000", "192.0.2.10:80"),
        &mut out,
    );
    engine.expire(u64::MAX, &mut out);
    let out = resets(&out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert!(!out[0].send_traced, "{out:#?}");
    assert_eq!(out[0].cause.kind(), CauseKind::Network);
}

/// php-fpm with pm.max_requests = 1 under load: 2,000 worker exits a second for 100 s, all
/// within half the evidence's lifetime. The records stay bounded.
#[test]
fn a_fork_storm_keeps_the_death_records_bounded() {
    let ms = 1_000_000;
    let mut engine = Attributor::new(&reasons(), HashSet::new());
    let mut out = Vec::new();
    for i in 0..200_000u64 {
        let pid = 10_000 + (i % 4_000_000) as u32;
        engine.observe(
            KernelEvent::Exit(ProcessExit {
                time_ns: 1_000 * ms + i * (ms / 2),
                task: task(pid, "php-fpm8.2"),
                exit_code: 0,
                memcg_id: 77,
                group_dead: Some(true),
            }),
            &mut out,
        );
    }
    // Pruned every 4,096 events, to at most 65,536 records of each kind.
    assert!(
        engine.state_len() <= 65_536 + 4_096,
        "{}",
        engine.state_len()
    );
}

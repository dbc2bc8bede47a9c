//! Root integration tests for resets whose sender is not the task on the CPU, or not the
//! socket's owner: aborts with nothing unread (SO_LINGER 0), sockets destroyed by another
//! task (`ss -K`), keepalive timeouts, data sent on a connection the other end had closed,
//! and resets nginx receives from its own clients. Each first proves what the kernel did
//! (its own tcp_send_reset reason and task, nginx's error.log, an iptables counter), then
//! checks rsttrace's JSON.
//!
//! Run as root, one test at a time: `cargo xtask test` (sets RSTTRACE_BIN).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use rsttrace_tests::fixtures::GUNICORN_APP;
use rsttrace_tests::{
    free_port, http_request, require_root, spawn_http_request, wait_for_file, Gunicorn,
    GunicornOptions, KernelResetTrace, Location, Nginx, PyProgram, Rsttrace, TraceEvent,
};
use serde_json::Value;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

fn pid_of(v: &Value) -> Option<u32> {
    v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

/// The kernel's own record of the reset sent from port `from` to port `to`.
fn kernel_send(trace: &KernelResetTrace, from: u16, to: u16) -> TraceEvent {
    rsttrace_tests::wait_until(REPORT_TIMEOUT, || trace.send_reset_for(to, from)).unwrap_or_else(
        || {
            panic!(
                "the kernel sent no RST from port {from} to port {to}; the scenario is broken, \
                 not rsttrace. Trace:\n{}",
                trace.raw()
            )
        },
    )
}

fn assert_error_log(nginx: &Nginx, needle: &str) {
    assert!(
        nginx.wait_error_log(needle, REPORT_TIMEOUT),
        "nginx's error.log lacks {needle:?}:\n{}",
        nginx.error_log_contents()
    );
}

/// rsttrace's verdict for the reset received on local port `local` from port `remote`.
fn verdict(tool: &Rsttrace, local: u16, remote: u16) -> Value {
    let event = tool
        .wait_for_reset(local, remote, REPORT_TIMEOUT)
        .unwrap_or_else(|| {
            panic!(
                "rsttrace reported no reset for port {local} <- {remote}:\n{}",
                tool.report()
            )
        });
    eprintln!("rsttrace: {event}");
    event
}

/// Whether the task (thread id, as the trace shows) is a thread of this test process.
fn ours(tid: u32) -> bool {
    std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

fn set_linger_0(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            libc::socklen_t::try_from(size_of::<libc::linger>()).expect("small"),
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_LINGER): {}",
        std::io::Error::last_os_error()
    );
}

fn gunicorn_behind_nginx() -> (Gunicorn, Nginx, u32) {
    let gunicorn = Gunicorn::start(GUNICORN_APP, GunicornOptions::default()).expect("gunicorn");
    let nginx = Nginx::start(&[Location::py(gunicorn.port())]).expect("starting nginx");
    let worker = *gunicorn.worker_pids().first().expect("a gunicorn worker");
    (gunicorn, nginx, worker)
}

#[test]
fn an_upstream_that_reads_everything_then_closes_with_linger_0_aborted() {
    require_root();
    let (gunicorn, nginx, worker) = gunicorn_behind_nginx();
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");

    let (status, _) = http_request(
        nginx.port(),
        "POST",
        "/py/linger0",
        b"all of it",
        REQUEST_TIMEOUT,
    )
    .expect("POST /py/linger0");
    assert_eq!(status, 502);
    assert_error_log(&nginx, "(104: Connection reset by peer)");
    let reset = trace
        .wait_receive_reset(gunicorn.port(), REPORT_TIMEOUT)
        .expect("the kernel delivered no RST to nginx");
    let nginx_port = reset.port("sport").expect("sport");
    let send = kernel_send(&trace, gunicorn.port(), nginx_port);
    eprintln!("kernel: {}", send.line.trim());
    // Ground truth: tcp_disconnect() in the worker's own close(), nothing unread.
    assert_eq!(send.field("reason"), Some("TCP_STATE"), "{}", send.line);
    assert_eq!(send.task_pid, worker, "{}", send.line);

    let event = verdict(&tool, nginx_port, gunicorn.port());
    assert_eq!(event["cause"], "abort", "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(worker), "{event}");
    assert_eq!(event["kernel_reason"], "TCP_STATE", "{event}");
    assert_eq!(event["receiver"]["comm"], "nginx", "{event}");
    assert_eq!(event["receiver_role"], "client", "{event}");
    assert!(event["aborted_by"].is_null(), "{event}");
    assert_eq!(event["seen_by_receiver"], true, "{event}");
    tool.stop().expect("rsttrace exits 0");
}

#[test]
fn a_client_of_nginx_closing_with_linger_0_is_the_client_not_an_upstream() {
    require_root();
    let (_gunicorn, nginx, _worker) = gunicorn_behind_nginx();
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");

    // A keepalive client: one complete exchange, then an abortive close of the idle
    // connection, as load balancers and load generators do.
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, nginx.port()));
    let mut stream = TcpStream::connect(addr).expect("connecting to nginx");
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .expect("read timeout");
    let client_port = stream.local_addr().expect("local address").port();
    stream
        .write_all(b"GET /py/pid HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("sending the request");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("\r\n\r\n")
        || !response.ends_with(b"\r\n0\r\n\r\n")
    {
        let n = stream.read(&mut buf).expect("reading the response");
        assert!(n > 0, "nginx closed the keepalive connection");
        response.extend_from_slice(&buf[..n]);
    }
    set_linger_0(&stream);
    drop(stream);

    let send = kernel_send(&trace, client_port, nginx.port());
    eprintln!("kernel: {}", send.line.trim());
    assert_eq!(send.field("reason"), Some("TCP_STATE"), "{}", send.line);
    assert!(
        ours(send.task_pid),
        "sent in this test's close(): {}",
        send.line
    );

    let event = verdict(&tool, nginx.port(), client_port);
    assert_eq!(event["cause"], "abort", "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(std::process::id()), "{event}");
    assert_eq!(event["receiver"]["comm"], "nginx", "{event}");
    assert_eq!(event["receiver_role"], "server", "{event}");
    let hint = event["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("client of nginx"), "{event}");
    tool.stop().expect("rsttrace exits 0");
}

#[test]
fn ss_k_on_nginx_upstream_connection_names_ss() {
    require_root();
    let (gunicorn, nginx, worker) = gunicorn_behind_nginx();
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");

    let marker = gunicorn.dir().join("serving");
    let request = spawn_http_request(
        nginx.port(),
        "GET",
        &format!("/py/sleep?{}", marker.display()),
        Vec::new(),
        REQUEST_TIMEOUT,
    );
    wait_for_file(&marker, REPORT_TIMEOUT).expect("the worker never took the request");
    // tcp_abort() of nginx's end of the upstream connection, from ss's own context.
    let ss = Command::new("ss")
        .args([
            "-K",
            "-t",
            "dst",
            "127.0.0.1",
            "dport",
            "=",
            &format!(":{}", gunicorn.port()),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running ss -K");
    let ss_pid = ss.id();
    let out = ss.wait_with_output().expect("waiting for ss");
    eprintln!(
        "ss -K (pid {ss_pid}):\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.status.success(), "ss -K failed: {out:?}");
    let _ = request.join();

    let reset = rsttrace_tests::wait_until(REPORT_TIMEOUT, || {
        trace
            .events()
            .into_iter()
            .find(|e| e.name == "tcp_receive_reset" && e.port("sport") == Some(gunicorn.port()))
    })
    .unwrap_or_else(|| panic!("gunicorn's socket got no RST:\n{}", trace.raw()));
    let nginx_port = reset.port("dport").expect("dport");
    let send = kernel_send(&trace, nginx_port, gunicorn.port());
    eprintln!("kernel: {}", send.line.trim());
    assert_eq!(send.field("reason"), Some("TCP_STATE"), "{}", send.line);
    assert_eq!(
        send.task_pid, ss_pid,
        "the RST was sent in ss: {}",
        send.line
    );
    assert_error_log(&nginx, "while reading response header from upstream");

    let event = verdict(&tool, gunicorn.port(), nginx_port);
    assert_eq!(event["cause"], "abort", "{event}");
    assert_eq!(pid_of(&event["receiver"]), Some(worker), "{event}");
    assert_eq!(event["receiver_role"], "server", "{event}");
    assert_eq!(event["peer"]["comm"], "nginx", "{event}");
    assert!(
        nginx
            .worker_pids()
            .contains(&pid_of(&event["peer"]).unwrap_or_default()),
        "{event}"
    );
    assert_eq!(pid_of(&event["aborted_by"]), Some(ss_pid), "{event}");
    assert_eq!(event["aborted_by"]["comm"], "ss", "{event}");
    tool.stop().expect("rsttrace exits 0");
}

/// A listener whose accepted connection waits in recv() for data that never comes
/// (connections closed at once, such as the harness's check that it listens, are skipped).
const SILENT_SERVER: &str = r#"
import socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen(8)
while True:
    conn, peer = listener.accept()
    try:
        if conn.recv(1) == b"":
            continue
    except ConnectionResetError as e:
        print("recv failed on", peer[1], "-", e, flush=True)
        break
"#;

/// A client that connects with short TCP keepalive timers and waits.
const KEEPALIVE_CLIENT: &str = r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
s.connect(("127.0.0.1", int(sys.argv[1])))
print("connected", s.getsockname()[1], flush=True)
try:
    s.recv(1)
except OSError as e:
    print("recv failed:", e, flush=True)
"#;

/// An iptables rule that drops what 127.0.0.1:`port` sends, removed on drop.
struct DropFromPort(u16);

impl DropFromPort {
    fn rule(&self) -> Vec<String> {
        [
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "tcp",
            "--sport",
            &self.0.to_string(),
            "-j",
            "DROP",
        ]
        .map(str::to_string)
        .to_vec()
    }

    fn add(port: u16) -> Self {
        let rule = Self(port);
        let status = Command::new("iptables")
            .arg("-I")
            .args(rule.rule())
            .status()
            .expect("running iptables");
        assert!(status.success(), "iptables -I failed");
        rule
    }

    /// Packets the rule dropped so far (`iptables -L OUTPUT -v -x -n`).
    fn dropped(&self) -> u64 {
        let out = Command::new("iptables")
            .args(["-L", "OUTPUT", "-v", "-x", "-n"])
            .output()
            .expect("listing iptables");
        let spt = format!("spt:{}", self.0);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("DROP") && l.contains(&spt))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for DropFromPort {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .arg("-D")
            .args(self.rule())
            .status();
    }
}

#[test]
fn a_keepalive_timeout_resets_the_silent_end_and_names_it() {
    require_root();
    let port = free_port();
    let server = PyProgram::serve("silent-server", SILENT_SERVER, port, &[]).expect("server");
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    let client = PyProgram::spawn("keepalive-client", KEEPALIVE_CLIENT, &[port.to_string()])
        .expect("client");
    assert!(
        client.wait_output("connected", REPORT_TIMEOUT),
        "{}",
        client.output()
    );
    // The server's answers to the keepalive probes are dropped from now on.
    let rule = DropFromPort::add(port);

    assert!(
        client.wait_output("recv failed", Duration::from_secs(20)),
        "the client's keepalive did not time out:\n{}",
        client.output()
    );
    assert!(
        server.wait_output("recv failed", REPORT_TIMEOUT),
        "{}",
        server.output()
    );
    assert!(rule.dropped() > 0, "the DROP rule never matched");
    let client_port: u16 = client
        .output()
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("the client's port");
    let send = kernel_send(&trace, client_port, port);
    eprintln!("kernel: {}", send.line.trim());
    assert_eq!(
        send.field("reason"),
        Some("TCP_KEEPALIVE_TIMEOUT"),
        "{}",
        send.line
    );

    let event = verdict(&tool, port, client_port);
    assert_eq!(event["cause"], "kernel", "{event}");
    assert_eq!(event["kernel_reason"], "TCP_KEEPALIVE_TIMEOUT", "{event}");
    assert_eq!(pid_of(&event["receiver"]), Some(server.pid()), "{event}");
    assert_eq!(event["seen_by_receiver"], true, "{event}");
    let hint = event["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("keepalive timed out"), "{event}");
    drop(rule);
    tool.stop().expect("rsttrace exits 0");
}

/// Answers one request per connection, then closes it at once, as an upstream with a
/// short keepalive or request limit does.
const ONE_SHOT_SERVER: &str = r#"
import socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen(8)
while True:
    conn, _ = listener.accept()
    try:
        if conn.recv(65536):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except OSError:
        pass
    conn.close()
"#;

#[test]
fn data_on_a_connection_the_server_closed_is_stale_and_not_the_senders_doing() {
    require_root();
    let port = free_port();
    let server = PyProgram::serve("one-shot", ONE_SHOT_SERVER, port, &[]).expect("server");
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");

    let mut stream =
        TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).expect("connecting");
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .expect("read timeout");
    let local = stream.local_addr().expect("local address").port();
    stream
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .expect("first request");
    let mut response = Vec::new();
    // Read to the server's FIN: its socket is now an orphan in FIN_WAIT2.
    stream
        .read_to_end(&mut response)
        .expect("the first response");
    assert!(
        response.ends_with(b"ok"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    // The next request on the closed connection: the server's kernel answers it with a
    // RST, processed in this (the sender's) task on loopback. (This end had its FIN: the
    // kernel reports EPIPE, not ECONNRESET, for a RST in CLOSE_WAIT -- tcp_reset(),
    // net/ipv4/tcp_input.c; nginx racing the FIN with its request gets the 104.)
    stream
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .expect("second request");

    let send = kernel_send(&trace, port, local);
    eprintln!("kernel: {}", send.line.trim());
    assert_eq!(
        send.field("reason"),
        Some("TCP_ABORT_ON_DATA"),
        "{}",
        send.line
    );
    assert!(
        ours(send.task_pid),
        "sent in the data's sender: {}",
        send.line
    );

    let event = verdict(&tool, local, port);
    assert_eq!(event["cause"], "stale_connection", "{event}");
    assert_eq!(
        pid_of(&event["receiver"]),
        Some(std::process::id()),
        "{event}"
    );
    assert_eq!(
        pid_of(&event["peer"]),
        Some(server.pid()),
        "the server closed it: {event}"
    );
    assert_eq!(event["kernel_reason"], "TCP_ABORT_ON_DATA", "{event}");
    tool.stop().expect("rsttrace exits 0");
}

/// Accepts, waits until the request arrives, closes with it unread: a RST per connection,
/// sent from a socket this process never read or wrote (its owner comes from close()).
const ABORTER: &str = r#"
import select, socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen(128)
while True:
    conn, _ = listener.accept()
    select.select([conn], [], [], 5)
    conn.close()
"#;

/// nginx -> an upstream that aborts every connection, under load from `threads` clients;
/// returns the requests made.
fn abort_storm(nginx_port: u16, requests: usize, threads: usize) -> usize {
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut made = 0;
                for _ in 0..requests / threads {
                    let (status, _) = http_request(nginx_port, "GET", "/py/", b"", REQUEST_TIMEOUT)
                        .expect("a request through nginx");
                    assert_eq!(status, 502, "the aborter answers nothing");
                    made += 1;
                }
                made
            })
        })
        .collect();
    workers
        .into_iter()
        .map(|w| w.join().expect("a client thread panicked"))
        .sum()
}

/// One php-fpm unix pool (pm.max_requests = 1: every request recycles its worker and its
/// socket) behind its own nginx, loaded, then one worker killed mid-request; returns the
/// socket path and the killed worker's pid, the only peer a verdict for this pool may name.
fn php_fpm_incarnation(round: usize) -> (String, u32) {
    let (fpm, nginx, path) =
        rsttrace_tests::fixtures::php_fpm_unix_behind_nginx(rsttrace_tests::PhpFpmOptions {
            max_children: 2,
            max_requests: Some(1),
            ..rsttrace_tests::PhpFpmOptions::default()
        });
    fpm.write_script("quick.php", "<?php echo 'ok';")
        .expect("writing quick.php");
    let marker = fpm.state_dir().join(format!("started-{round}"));
    fpm.write_script(
        "sleep.php",
        &rsttrace_tests::fixtures::php_script(&marker, "sleep(30);"),
    )
    .expect("writing sleep.php");
    for _ in 0..50 {
        let (status, _) = http_request(
            nginx.port(),
            "GET",
            "/php-unix/quick.php",
            b"",
            REQUEST_TIMEOUT,
        )
        .expect("a quick request");
        assert_eq!(status, 200);
    }
    let request = spawn_http_request(
        nginx.port(),
        "GET",
        "/php-unix/sleep.php",
        Vec::new(),
        REQUEST_TIMEOUT,
    );
    let worker = rsttrace_tests::fixtures::wait_for_php_worker(&marker);
    rsttrace_tests::fixtures::run_kill("-9", worker);
    let _ = request.join();
    assert!(
        nginx.wait_error_log("(104: Connection reset by peer)", REPORT_TIMEOUT),
        "nginx saw no reset from the killed worker:\n{}",
        nginx.error_log_contents()
    );
    (path, worker)
}

#[test]
fn a_thousand_recycled_sockets_never_lend_their_owner() {
    require_root();
    let port = free_port();
    let aborter = PyProgram::serve("aborter", ABORTER, port, &[]).expect("the aborter");
    let nginx = Nginx::start(&[Location::py(port)]).expect("starting nginx");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");

    // Beside the storm, another stack starts, churns its unix sockets and stops, three times.
    let churn = std::thread::spawn(|| (0..3).map(php_fpm_incarnation).collect::<Vec<_>>());
    let made = abort_storm(nginx.port(), 1200, 4);
    let pools = churn.join().expect("the php-fpm churn panicked");
    assert!(
        nginx.wait_error_log("(104: Connection reset by peer)", REPORT_TIMEOUT),
        "nginx logged no reset:\n{}",
        nginx.error_log_contents()
    );
    let aborted = |e: &Value| e["event"] == "reset" && e["remote"] == format!("127.0.0.1:{port}");
    let complete = rsttrace_tests::wait_until(REPORT_TIMEOUT, || {
        let n = tool.events().iter().filter(|e| aborted(e)).count();
        (n >= made).then_some(n)
    });
    let events = tool.stop().expect("rsttrace exits 0");
    let storm: Vec<&Value> = events.iter().filter(|e| aborted(e)).collect();
    assert!(
        complete.is_some() && storm.len() >= 1000,
        "{} verdicts for {made} aborted requests",
        storm.len()
    );
    for e in &storm {
        assert_eq!(pid_of(&e["peer"]), Some(aborter.pid()), "{e}");
        assert_eq!(e["cause"], "abort", "{e}");
        assert_eq!(e["receiver"]["comm"], "nginx", "{e}");
    }
    let mut named = 0;
    for (path, worker) in &pools {
        for e in events.iter().filter(|e| e["remote"] == path.as_str()) {
            assert_eq!(pid_of(&e["peer"]), Some(*worker), "{e}");
            named += 1;
        }
    }
    assert!(named >= pools.len(), "each killed worker is named: {named}");
    assert!(
        events.iter().all(|e| e["event"] != "lost"),
        "samples were lost"
    );
    eprintln!(
        "{} storm verdicts checked, {named} php-fpm verdicts checked",
        storm.len()
    );
}

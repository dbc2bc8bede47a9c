//! Proofs that the network test infrastructure works with real traffic: the three-namespace
//! topology with firewall rules and NAT, a container-shaped cgroup, a qemu guest kernel on a
//! tap link, and a real Docker Engine. Each test checks the kernel's own evidence (nginx's
//! error.log, iptables counters, tcp tracepoints) and that nothing is left behind.
//!
//! Run as root, one test at a time: `cargo xtask test` (docker last: it rewrites the host's
//! firewall, which the test restores).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rsttrace_tests::command::run_args;
use rsttrace_tests::netns::assert_none_left;
use rsttrace_tests::{
    http_request_at, require_root, AbortServer, ContainerCgroup, ContainerLayout, Family,
    FirewallSnapshot, Gunicorn, GunicornOptions, KernelResetTrace, Location, Nginx, NginxOptions,
    PhpFpm, PhpFpmOptions, Placement, Topology, TraceEvent,
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A WSGI app: `.../ok` answers at once; `.../slow` sends a first chunk, says so on stdout,
/// waits 3 s and sends the rest (time for the test to break the path mid-response).
const APP: &str = r#"
import time

def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path.endswith("/slow"):
        start_response("200 OK", [("Content-Type", "text/plain")])
        def body():
            yield b"first chunk\n" * 100
            print("slow: first chunk sent", flush=True)
            time.sleep(3)
            yield b"second chunk\n" * 100
        return body()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok from the backend namespace\n"]
"#;

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let v = f();
    eprintln!("timing: {what}: {:.2} s", started.elapsed().as_secs_f64());
    v
}

fn assert_error_log(nginx: &Nginx, needle: &str) -> String {
    assert!(
        nginx.wait_error_log(needle, REPORT_TIMEOUT),
        "nginx's error.log lacks {needle:?}:\n{}",
        nginx.error_log_contents()
    );
    let line = nginx
        .error_log_contents()
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
        .to_string();
    eprintln!("nginx error.log: {line}");
    line
}

fn receive_reset(trace: &KernelResetTrace, remote_port: u16) -> TraceEvent {
    let event = trace
        .wait_receive_reset(remote_port, REPORT_TIMEOUT)
        .unwrap_or_else(|| {
            panic!(
                "no tcp_receive_reset on a socket connected to port {remote_port}:\n{}",
                trace.raw()
            )
        });
    eprintln!("kernel: {}", event.line.trim());
    event
}

/// `ss -tnH state established` in a namespace, lines naming `peer`.
fn established_to(ns: &rsttrace_tests::Netns, peer: SocketAddr) -> Vec<String> {
    let out = ns
        .run("ss", &["-tnH", "state", "established"])
        .expect("ss in the client namespace");
    let peer = peer.to_string();
    out.lines()
        .filter(|l| l.contains(&peer))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn assert_clean(tag: &str, rules_before: &str) {
    assert_none_left(tag).expect("the topology left nothing behind");
    let rules_after = FirewallSnapshot::rules_now().expect("iptables-save");
    assert_eq!(
        rules_before, rules_after,
        "the host's own iptables changed (rules belong in the namespaces)"
    );
    eprintln!("cleanup: no netns, interface or host rule matching {tag:?} is left");
}

/// nginx (client netns) -> router netns -> gunicorn and php-fpm (backend netns), IPv4 and
/// IPv6, upstream keepalive; then the router forges resets: mid-response (recv() failed
/// (104)) and for a new connection (connect() failed (111)).
#[test]
fn topology_router_reject_resets_nginx_upstream() {
    require_root();
    let rules_before = FirewallSnapshot::rules_now().expect("iptables-save");
    let topo = timed("create topology", || {
        Topology::create().expect("creating the topology")
    });
    let tag = topo.tag().to_string();
    eprintln!(
        "topology {tag}: netns {} / {} / {}, links {}<->{} and {}<->{}",
        topo.client().name(),
        topo.router().name(),
        topo.backend().name(),
        topo.client_if(),
        topo.router_client_if(),
        topo.router_backend_if(),
        topo.backend_if()
    );
    let backend_v4 = topo.backend_ip(Family::V4);
    let backend_v6 = topo.backend_ip(Family::V6);
    let gunicorn = timed("start gunicorn in the backend netns", || {
        Gunicorn::start(
            APP,
            GunicornOptions {
                listen: vec![backend_v4, backend_v6],
                netns: Some(topo.backend().clone()),
                keep_alive: Some(3600),
                ..GunicornOptions::default()
            },
        )
        .expect("starting gunicorn")
    });
    let fpm = PhpFpm::start(PhpFpmOptions {
        listen: backend_v4,
        netns: Some(topo.backend().clone()),
        ..PhpFpmOptions::default()
    })
    .expect("starting php-fpm");
    fpm.write_script("ok.php", "<?php echo \"php ok\\n\";")
        .expect("writing ok.php");
    let [py4, py6] = [gunicorn.addrs()[0], gunicorn.addrs()[1]];
    let nginx = timed("start nginx in the client netns", || {
        Nginx::start_with(
            &[
                Location::http("/py/", py4),
                Location::http("/py6/", py6),
                Location::php(&fpm),
            ],
            NginxOptions {
                netns: Some(topo.client().clone()),
                upstream_keepalive: Some(4),
                ..NginxOptions::default()
            },
        )
        .expect("starting nginx")
    });
    let client = topo.client().clone();
    let get = |path: &str| {
        let addr = nginx.addr();
        let path = path.to_string();
        client
            .enter(move || http_request_at(addr, "GET", &path, b"", REQUEST_TIMEOUT))
            .expect("entering the client netns")
    };

    // Through the router, v4 and v6, HTTP and FastCGI.
    for path in ["/py/ok", "/py6/ok", "/php/ok.php"] {
        let (status, body) = get(path).expect("a request through the router");
        eprintln!("GET {path}: {status} {}", body.trim());
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    let idle = established_to(topo.client(), py4);
    eprintln!("client netns, idle upstream connections to {py4}: {idle:?}");
    assert_eq!(
        idle.len(),
        1,
        "upstream keepalive keeps one connection open"
    );

    // Mid-response: the router rejects nginx's ACKs of the second chunk with a forged RST.
    let trace = KernelResetTrace::start().expect("tracefs instance");
    let addr = nginx.addr();
    let slow = client.spawn(move || http_request_at(addr, "GET", "/py/slow", b"", REQUEST_TIMEOUT));
    assert!(
        gunicorn.wait_log("slow: first chunk sent", REPORT_TIMEOUT),
        "gunicorn never sent the first chunk:\n{}",
        gunicorn.log()
    );
    let port = py4.port().to_string();
    let reject = topo
        .router()
        .iptables(Family::V4)
        .reject_tcp_reset(
            "FORWARD",
            &["-d", &backend_v4.to_string(), "-p", "tcp", "--dport", &port],
        )
        .expect("adding the router's REJECT rule");
    let answer = slow
        .join()
        .expect("the request thread panicked")
        .expect("entering the client netns");
    eprintln!(
        "GET /py/slow: {:?}",
        answer.as_ref().map(|(status, body)| (status, body.len()))
    );
    // readv(), not recv(): nginx is past the header, reading the body into its buffers.
    assert_error_log(
        &nginx,
        "readv() failed (104: Connection reset by peer) while reading upstream",
    );
    let fired = reject
        .wait_packets_above(0, REPORT_TIMEOUT)
        .expect("the REJECT rule's counter");
    eprintln!("router rule: {}", reject.line().expect("the rule"));
    let received = receive_reset(&trace, py4.port());
    assert_eq!(
        received.field("saddr"),
        Some("10.231.1.2"),
        "{}",
        received.line
    );
    let events = trace.events();
    let backend_sent: Vec<&TraceEvent> = events
        .iter()
        .filter(|e| e.name == "tcp_send_reset" && e.addr_port("src") == Some(py4.port()))
        .collect();
    assert!(
        backend_sent.is_empty(),
        "the backend's kernel sent no RST (netfilter forged it): {backend_sent:?}"
    );
    eprintln!(
        "REJECT mid-response: rule fired {fired} time(s); no tcp_send_reset from the backend"
    );

    // IPv6: nginx's idle keepalive connection (from the first /py6/ok) is reused and its
    // request answered by the router's RST; the next request opens a new connection whose
    // SYN the router rejects.
    let port6 = py6.port().to_string();
    let idle6 = established_to(topo.client(), py6);
    eprintln!("client netns, idle upstream connections to {py6}: {idle6:?}");
    assert_eq!(
        idle6.len(),
        1,
        "upstream keepalive keeps one v6 connection open"
    );
    let reject6 = topo
        .router()
        .iptables(Family::V6)
        .reject_tcp_reset(
            "FORWARD",
            &[
                "-d",
                &backend_v6.to_string(),
                "-p",
                "tcp",
                "--dport",
                &port6,
            ],
        )
        .expect("adding the router's ip6tables REJECT rule");
    let (status, _) = get("/py6/ok").expect("a request nginx answers");
    assert_eq!(status, 502);
    assert_error_log(
        &nginx,
        "recv() failed (104: Connection reset by peer) while reading response header",
    );
    let kept = reject6
        .wait_packets_above(0, REPORT_TIMEOUT)
        .expect("the ip6tables REJECT rule's counter");
    let (status, _) = get("/py6/ok").expect("a request nginx answers");
    assert_eq!(status, 502);
    assert_error_log(&nginx, "connect() failed (111: Connection refused)");
    let fired6 = reject6
        .wait_packets_above(kept, REPORT_TIMEOUT)
        .expect("the ip6tables REJECT rule's counter");
    eprintln!("router rule: {}", reject6.line().expect("the rule"));
    eprintln!(
        "REJECT (v6): kept-alive connection reset, then SYN refused; rule fired {fired6} time(s)"
    );

    drop((reject, reject6, trace, nginx, fpm, gunicorn));
    timed("tear down topology", || drop(topo));
    assert_clean(&tag, &rules_before);
}

/// Sends `payload` on a fresh connection to `addr` from inside `ns` and reads until EOF or
/// an error: `Ok(bytes)` for an orderly end, `Err(kind)` for a reset or refusal.
fn exchange(
    ns: &rsttrace_tests::Netns,
    addr: SocketAddr,
    payload: Vec<u8>,
) -> Result<Vec<u8>, ErrorKind> {
    ns.enter(move || {
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.kind())?;
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(|e| e.kind())?;
        // The peer may reset while the payload is still being written.
        let _ = stream.write_all(&payload);
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map_err(|e| e.kind())?;
        Ok(answer)
    })
    .expect("entering the namespace")
}

/// The other helpers with real traffic: a container-shaped cgroup around an aborting server in
/// the backend, kube-proxy-like DNAT in the client, MASQUERADE in the router, ICMP REJECT (a
/// Service without endpoints), DROP, and a REJECT in the client's own OUTPUT chain.
#[test]
fn topology_nat_refusals_and_container_cgroup() {
    require_root();
    let rules_before = FirewallSnapshot::rules_now().expect("iptables-save");
    let topo = Topology::create().expect("creating the topology");
    let tag = topo.tag().to_string();
    let client = topo.client();
    let backend_v4 = topo.backend_ip(Family::V4);
    let service_v4 = topo.service_ip(Family::V4);

    let container = ContainerCgroup::create(ContainerLayout::Docker, Some(64 << 20))
        .expect("creating a docker-shaped cgroup");
    let server = AbortServer::start(
        SocketAddr::new(backend_v4, 8200),
        &Placement {
            netns: Some(topo.backend().clone()),
            cgroups: container.dirs().to_vec(),
        },
    )
    .expect("starting the aborting server");
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", server.pid()))
        .expect("reading the server's /proc/PID/cgroup");
    eprintln!("server pid {} in:\n{}", server.pid(), cgroups.trim());
    let expected = format!("/docker/{}", container.id());
    assert!(
        cgroups.lines().all(|l| l.ends_with(&expected)),
        "every hierarchy shows {expected}:\n{cgroups}"
    );
    assert_eq!(
        topo.backend().pids(),
        vec![server.pid()],
        "the server runs in the backend netns"
    );

    // DNAT: the client connects to the service address; the router masquerades.
    let service = SocketAddr::new(service_v4, 80);
    let dnat = client
        .iptables(Family::V4)
        .dnat("OUTPUT", service, server.addr())
        .expect("adding the DNAT rule");
    let masquerade = topo
        .router()
        .iptables(Family::V4)
        .masquerade(&topo.router_backend_if())
        .expect("adding MASQUERADE");
    let trace = KernelResetTrace::start().expect("tracefs instance");
    let ok = exchange(client, service, b"GET /ok HTTP/1.0\r\n\r\n".to_vec());
    let ok = String::from_utf8_lossy(&ok.expect("a response through DNAT")).into_owned();
    assert!(ok.starts_with("HTTP/1.0 200 OK"), "{ok}");
    let masqueraded = format!("ok {} ", topo.router_backend_ip(Family::V4));
    assert!(
        server.wait_log(&masqueraded, REPORT_TIMEOUT),
        "the server saw the router's address (MASQUERADE):\n{}",
        server.log()
    );
    let aborted = exchange(client, service, vec![b'x'; 16 * 1024]);
    assert_eq!(aborted, Err(ErrorKind::ConnectionReset));
    let received = receive_reset(&trace, 80);
    eprintln!(
        "abort through DNAT: client socket {}:{} -> {}:{} got the RST",
        received.field("saddr").unwrap_or("?"),
        received.port("sport").unwrap_or(0),
        received.field("daddr").unwrap_or("?"),
        received.port("dport").unwrap_or(0)
    );
    let sent = trace
        .events()
        .into_iter()
        .find(|e| e.name == "tcp_send_reset" && e.addr_port("src") == Some(8200))
        .unwrap_or_else(|| panic!("the backend's kernel sent the RST:\n{}", trace.raw()));
    eprintln!("kernel: {}", sent.line.trim());
    assert_eq!(
        sent.field("reason"),
        Some("TCP_ABORT_ON_CLOSE"),
        "{}",
        sent.line
    );
    for rule in [&dnat, &masquerade] {
        let n = rule
            .wait_packets_above(0, REPORT_TIMEOUT)
            .expect("NAT counter");
        eprintln!(
            "nat rule ({n} connection(s)): {}",
            rule.line().expect("rule")
        );
    }

    // A Service without endpoints: ICMP port unreachable, no RST at all.
    let empty = SocketAddr::new(service_v4, 81);
    let unreachable = client
        .iptables(Family::V4)
        .reject_unreachable(
            "OUTPUT",
            &["-d", &service_v4.to_string(), "-p", "tcp", "--dport", "81"],
        )
        .expect("adding the ICMP REJECT");
    assert_eq!(
        exchange(client, empty, Vec::new()),
        Err(ErrorKind::ConnectionRefused)
    );
    unreachable
        .wait_packets_above(0, REPORT_TIMEOUT)
        .expect("ICMP REJECT counter");
    assert!(
        trace.events().iter().all(|e| e.port("dport") != Some(81)),
        "an ICMP refusal is no RST:\n{}",
        trace.raw()
    );
    eprintln!("icmp reject: {}", unreachable.line().expect("rule"));

    // DROP in the router: the SYN vanishes, the client times out.
    let dropped = SocketAddr::new(backend_v4, 8201);
    let drop_rule = topo
        .router()
        .iptables(Family::V4)
        .drop("FORWARD", &["-p", "tcp", "--dport", "8201"])
        .expect("adding DROP");
    assert_eq!(
        exchange(client, dropped, Vec::new()),
        Err(ErrorKind::TimedOut)
    );
    drop_rule
        .wait_packets_above(0, REPORT_TIMEOUT)
        .expect("DROP counter");
    eprintln!("drop: {}", drop_rule.line().expect("rule"));

    // REJECT in the client's own OUTPUT chain: a local RST answers the client's SYN.
    let local = client
        .iptables(Family::V4)
        .reject_tcp_reset(
            "OUTPUT",
            &[
                "-d",
                &backend_v4.to_string(),
                "-p",
                "tcp",
                "--dport",
                "8200",
            ],
        )
        .expect("adding the OUTPUT REJECT");
    assert_eq!(
        exchange(client, server.addr(), Vec::new()),
        Err(ErrorKind::ConnectionRefused)
    );
    local
        .wait_packets_above(0, REPORT_TIMEOUT)
        .expect("OUTPUT REJECT counter");
    let local_rst = receive_reset(&trace, 8200);
    eprintln!("local reject: {}", local.line().expect("rule"));
    assert_eq!(
        local_rst.field("daddr"),
        Some("10.231.2.2"),
        "{}",
        local_rst.line
    );

    let container_path = container.path().to_string();
    drop((
        local,
        drop_rule,
        unreachable,
        masquerade,
        dnat,
        trace,
        server,
        container,
    ));
    drop(topo);
    assert_clean(&tag, &rules_before);
    let leftover = run_args(
        "find",
        &["/sys/fs/cgroup", "-path", &format!("*{container_path}")],
    )
    .expect("find in /sys/fs/cgroup");
    assert!(
        leftover.trim().is_empty(),
        "container cgroups left: {leftover}"
    );
}

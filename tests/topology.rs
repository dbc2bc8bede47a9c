//! Proofs that the network test infrastructure works with real traffic: the three-namespace
//! topology with firewall rules and NAT, a container-shaped cgroup, a qemu guest kernel on a
//! tap link, and a real Docker Engine. Each test checks the kernel's own evidence (nginx's
//! error.log, iptables counters, tcp tracepoints) and that nothing is left behind.
//!
//! Run as root, one test at a time: `cargo xtask test`. libtest runs tests in name order: the
//! `netN_` prefixes keep docker last (dockerd rewrites the host's firewall; the test restores it).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rsttrace_tests::abort_server::ABORT_SERVER_PY;
use rsttrace_tests::command::run_args;
use rsttrace_tests::docker::host_address;
use rsttrace_tests::netns::assert_none_left;
use rsttrace_tests::{
    free_port, http_request_at, is_alive, require_root, wait_until, AbortServer, ContainerCgroup,
    ContainerLayout, ContainerOptions, Docker, Family, FirewallSnapshot, Guest, GuestOptions,
    Gunicorn, GunicornOptions, KernelResetTrace, Location, Nginx, NginxOptions, OwnedNetns, PhpFpm,
    PhpFpmOptions, Placement, Publish, Topology, TraceEvent,
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
fn net1_router_reject_resets_nginx_upstream() {
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

/// Sends `payload` on a fresh connection to `addr` and reads until EOF or an error:
/// `Ok(bytes)` for an orderly end, `Err(kind)` for a reset, refusal or timeout.
fn talk(addr: SocketAddr, payload: Vec<u8>) -> Result<Vec<u8>, ErrorKind> {
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
}

/// [`talk`] from inside a namespace.
fn exchange(
    ns: &rsttrace_tests::Netns,
    addr: SocketAddr,
    payload: Vec<u8>,
) -> Result<Vec<u8>, ErrorKind> {
    ns.enter(move || talk(addr, payload))
        .expect("entering the namespace")
}

/// The other helpers with real traffic: a container-shaped cgroup around an aborting server in
/// the backend, kube-proxy-like DNAT in the client, MASQUERADE in the router, ICMP REJECT (a
/// Service without endpoints), DROP, and a REJECT in the client's own OUTPUT chain.
#[test]
fn net2_nat_refusals_and_container_cgroup() {
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

/// A real other kernel: Debian's 6.1 under qemu behind a tap in a namespace of its own; its
/// server aborts the connection, so the RST this host receives was sent by that kernel (no
/// tcp_send_reset fires here).
#[test]
fn net3_guest_kernel_aborts_over_a_tap() {
    require_root();
    let ns = OwnedNetns::create_unique("guest").expect("creating the guest's netns");
    let guest = timed("fetch kernel, build initramfs, boot guest", || {
        Guest::start(GuestOptions {
            netns: Some(ns.netns().clone()),
            ..GuestOptions::new(env!("CARGO_BIN_EXE_rsttrace-vm-scenarios"))
        })
        .expect("booting the guest")
    });
    eprintln!(
        "guest: kernel {} on tap {} in netns {}, server up {:.1} s after qemu started",
        guest.release(),
        guest.tap(),
        ns.name(),
        guest.boot_time().as_secs_f64()
    );
    for line in guest
        .console()
        .lines()
        .filter_map(|l| l.split_once("guest: "))
    {
        eprintln!("  console: guest: {}", line.1);
    }

    let ok = exchange(
        &ns,
        guest.addr(Family::V4),
        b"GET /ok HTTP/1.0\r\n\r\n".to_vec(),
    );
    let ok = String::from_utf8_lossy(&ok.expect("a response from the guest")).into_owned();
    assert!(ok.starts_with("HTTP/1.0 200 OK"), "{ok}");

    let trace = KernelResetTrace::start().expect("tracefs instance");
    for family in [Family::V4, Family::V6] {
        let addr = guest.addr(family);
        let aborted = exchange(&ns, addr, vec![b'x'; 16 * 1024]);
        assert_eq!(aborted, Err(ErrorKind::ConnectionReset), "{addr}");
    }
    let port = guest.addr(Family::V4).port();
    let received = receive_reset(&trace, port);
    let events = trace.events();
    let sent_here: Vec<&TraceEvent> = events
        .iter()
        .filter(|e| e.name == "tcp_send_reset" && e.addr_port("src") == Some(port))
        .collect();
    assert!(
        sent_here.is_empty(),
        "this kernel did not send the guest's RST: {sent_here:?}"
    );
    let receives: Vec<&TraceEvent> = events
        .iter()
        .filter(|e| e.name == "tcp_receive_reset" && e.port("dport") == Some(port))
        .collect();
    for event in &receives {
        eprintln!("kernel: {}", event.line.trim());
    }
    assert_eq!(receives.len(), 2, "one RST per family:\n{}", trace.raw());
    assert!(
        guest.wait_console("abort (read 64)", REPORT_TIMEOUT),
        "the guest's server logged the abort:\n{}",
        guest.console()
    );
    eprintln!(
        "received from the guest ({}): no tcp_send_reset on this host",
        received.field("family").unwrap_or("?")
    );

    let (qemu, tap, netns) = (
        guest.qemu_pid(),
        guest.tap().to_string(),
        ns.name().to_string(),
    );
    drop((trace, guest));
    assert!(!is_alive(qemu), "qemu {qemu} still runs");
    drop(ns);
    assert_none_left(&netns).expect("the guest's netns is gone");
    assert_none_left(&tap).expect("the tap is gone");
    let qemus = run_args("pgrep", &["-af", "qemu-system"]).unwrap_or_default();
    assert!(!qemus.contains(&tap), "a qemu on {tap} survived: {qemus}");
    eprintln!("cleanup: qemu {qemu} gone, no netns {netns}, no tap {tap}");
}

/// A real Docker Engine: a container (memory limit) whose python server aborts, reached (a) at
/// its bridge address, (b) at a port published on the host's address (DNAT), (c) at a port
/// published on 127.0.0.1 (docker-proxy relays; the client sees a FIN). Then the container and
/// dockerd stop and the host's iptables are exactly as before.
#[test]
fn net4_docker_container_aborts_through_bridge_dnat_and_proxy() {
    require_root();
    let rules_before = FirewallSnapshot::rules_now().expect("iptables-save");
    let started = Instant::now();
    let engine = Docker::start().expect("starting or reaching dockerd");
    eprintln!(
        "timing: docker engine {} ready: {:.2} s (started here: {}, dockerd pid {:?})",
        engine.version(),
        started.elapsed().as_secs_f64(),
        engine.started_here(),
        engine.dockerd_pid()
    );
    let host = host_address().expect("the host's address");
    let (dnat_port, proxy_port) = (free_port(), free_port());
    let t = Instant::now();
    let container = engine
        .run(&ContainerOptions {
            command: [
                "/usr/bin/python3",
                "/app/abort_server.py",
                "0.0.0.0",
                "8200",
            ]
            .map(String::from)
            .to_vec(),
            files: vec![("abort_server.py".into(), ABORT_SERVER_PY.into())],
            memory: Some(64 << 20),
            publish: vec![
                Publish {
                    host: SocketAddr::new(host, dnat_port),
                    container_port: 8200,
                },
                Publish {
                    host: SocketAddr::from(([127, 0, 0, 1], proxy_port)),
                    container_port: 8200,
                },
            ],
        })
        .expect("running the container");
    assert!(
        container.wait_log("listening", REPORT_TIMEOUT),
        "the container's server did not start:\n{}",
        container.logs()
    );
    let cgroup = container.cgroup_path().expect("the container's cgroup");
    eprintln!(
        "timing: container up: {:.2} s; id {} pid {} ip {} cgroup {cgroup}",
        t.elapsed().as_secs_f64(),
        container.id(),
        container.pid(),
        container.ip()
    );
    assert!(cgroup.ends_with(container.id()), "{cgroup}");

    let trace = KernelResetTrace::start().expect("tracefs instance");
    let bridge = SocketAddr::new(container.ip(), 8200);
    let published = SocketAddr::new(host, dnat_port);
    let proxied = SocketAddr::from(([127, 0, 0, 1], proxy_port));
    let ok = talk(bridge, b"GET /ok HTTP/1.0\r\n\r\n".to_vec());
    let ok = String::from_utf8_lossy(&ok.expect("a response from the container")).into_owned();
    assert!(ok.starts_with("HTTP/1.0 200 OK"), "{ok}");
    let mut bridge_client_port = 0;
    for (what, addr) in [("bridge", bridge), ("published (DNAT)", published)] {
        assert_eq!(
            talk(addr, vec![b'x'; 16 * 1024]),
            Err(ErrorKind::ConnectionReset),
            "{what} {addr}"
        );
        let received = receive_reset(&trace, addr.port());
        if addr == bridge {
            bridge_client_port = received.port("sport").unwrap_or_default();
        }
        eprintln!("{what}: the client's socket got the reset");
    }
    let relayed = talk(proxied, vec![b'x'; 16 * 1024]);
    assert_eq!(
        relayed,
        Ok(Vec::new()),
        "docker-proxy ends the client side with a FIN"
    );
    // docker-proxy's own connection to the container is the second socket reset on :8200.
    let proxy_side = wait_until(REPORT_TIMEOUT, || {
        trace.events().into_iter().find(|e| {
            e.name == "tcp_receive_reset"
                && e.port("dport") == Some(8200)
                && e.port("sport") != Some(bridge_client_port)
        })
    })
    .unwrap_or_else(|| panic!("docker-proxy's socket got no reset:\n{}", trace.raw()));
    eprintln!(
        "docker-proxy's upstream socket got the reset: {}",
        proxy_side.line.trim()
    );
    let events = trace.events();
    // By the container's address, not the port alone: docker-proxy's host listener on
    // 0.0.0.0:8200 may answer a late segment with a reset of its own (reason TCP_FLAGS,
    // src=0.0.0.0:8200), which is not the container's socket.
    let container_src = bridge.to_string();
    let sends: Vec<&TraceEvent> = events
        .iter()
        .filter(|e| e.name == "tcp_send_reset" && e.field("src") == Some(container_src.as_str()))
        .collect();
    for send in &sends {
        eprintln!("kernel: {}", send.line.trim());
    }
    assert_eq!(
        sends.len(),
        3,
        "the container's socket sent three RSTs:\n{}",
        trace.raw()
    );
    assert!(
        container.wait_log("abort", REPORT_TIMEOUT),
        "{}",
        container.logs()
    );

    let t = Instant::now();
    container.stop(1).expect("docker stop");
    assert!(!container.running(), "the container still runs");
    eprintln!(
        "timing: container stopped: {:.2} s, exit state {:?}",
        t.elapsed().as_secs_f64(),
        container.exit_state()
    );
    let dockerd = engine.dockerd_pid();
    drop((trace, container));
    let t = Instant::now();
    engine
        .stop()
        .expect("stopping dockerd and restoring the host");
    eprintln!(
        "timing: dockerd stopped and host restored: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    if let Some(pid) = dockerd {
        assert!(!is_alive(pid), "dockerd {pid} still runs");
        let left = run_args("pgrep", &["-x", "dockerd"]).unwrap_or_default();
        assert!(left.trim().is_empty(), "a dockerd still runs: {left}");
        let rules_after = FirewallSnapshot::rules_now().expect("iptables-save");
        assert_eq!(rules_before, rules_after, "iptables restored exactly");
        let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
        let docker_mounts: Vec<&str> = mounts.lines().filter(|l| l.contains("docker")).collect();
        assert!(
            docker_mounts.is_empty(),
            "docker mounts left: {docker_mounts:?}"
        );
        let links = rsttrace_tests::netns::host_links().expect("ip link");
        assert!(!links.iter().any(|l| l == "docker0"), "docker0 was deleted");
        eprintln!(
            "cleanup: dockerd gone, iptables-save identical to before, no docker0, no docker mount"
        );
    }
}

//! Root integration tests for resets across network namespaces and NAT, and for resets no
//! process on this host sent: nginx in a client namespace, a router namespace forwarding
//! between two veth links, upstreams in a backend namespace (as docker bridges and
//! Kubernetes nodes are built), and a real other kernel (a qemu guest on a tap).
//!
//! Each test first proves what the kernel did (nginx's error.log, the iptables rule's
//! counter, the worker's exit), then asserts rsttrace's JSON. Run as root, one at a time:
//! `cargo xtask test` (sets RSTTRACE_BIN). rsttrace itself runs in the host's namespace.

use std::net::SocketAddr;
use std::time::Duration;

use rsttrace_tests::fixtures::{php_script, run_kill, wait_for_php_worker};
use rsttrace_tests::{
    http_request_at, require_root, AbortServer, ContainerCgroup, ContainerLayout, Family, Guest,
    GuestOptions, Gunicorn, GunicornOptions, IptRule, Location, Netns, Nginx, NginxOptions,
    OwnedNetns, PhpFpm, PhpFpmOptions, Placement, Rsttrace, Topology,
};
use serde_json::Value;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// `.../ok` answers at once; `.../slow` sends a first chunk, says so, waits 3 s, sends a
/// second and, 2 s later, the rest (time to break the path mid-response). The pause after the
/// second chunk matters: nginx's ACK of the first may cross the router before the REJECT is
/// in place, and without upstream keepalive gunicorn closes right after its last chunk, so
/// nginx's first rejected segment must come while the response is still unfinished.
const APP: &str = r#"
import time

def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    start_response("200 OK", [("Content-Type", "text/plain")])
    if path.endswith("/slow"):
        def body():
            yield b"first chunk\n" * 100
            print("slow: first chunk sent", flush=True)
            time.sleep(3)
            yield b"second chunk\n" * 100
            time.sleep(2)
            yield b"third chunk\n" * 100
        return body()
    return [b"ok from the backend namespace\n"]
"#;

fn pid_of(v: &Value) -> Option<u32> {
    v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

fn inode(ns: &Netns) -> u64 {
    ns.inode().expect("the namespace's inode")
}

/// `CHAIN: -d ADDR -p tcp --dport PORT -j REJECT --reject-with tcp-reset` in `ns`, with the
/// iptables of `to`'s family.
fn reject_tcp_to(ns: &Netns, chain: &str, to: SocketAddr) -> IptRule {
    ns.iptables(Family::of(to.ip()))
        .reject_tcp_reset(
            chain,
            &[
                "-d",
                &to.ip().to_string(),
                "-p",
                "tcp",
                "--dport",
                &to.port().to_string(),
            ],
        )
        .unwrap_or_else(|e| panic!("REJECT to {to} in {chain}: {e:#}"))
}

fn assert_error_log(nginx: &Nginx, needle: &str) {
    assert!(
        nginx.wait_error_log(needle, REPORT_TIMEOUT),
        "nginx's error.log lacks {needle:?}:\n{}",
        nginx.error_log_contents()
    );
    let log = nginx.error_log_contents();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(needle))
        .unwrap_or_default();
    eprintln!("nginx error.log: {line}");
}

/// rsttrace's reset received by nginx from `remote`, the event printed for the record.
fn nginx_reset(tool: &Rsttrace, remote: SocketAddr) -> Value {
    let remote = remote.to_string();
    let event = tool
        .wait_for(
            |e| {
                e["event"] == "reset"
                    && e["remote"] == remote.as_str()
                    && e["receiver"]["comm"] == "nginx"
            },
            REPORT_TIMEOUT,
        )
        .unwrap_or_else(|| {
            panic!(
                "rsttrace reported no reset from {remote}:\n{}",
                tool.report()
            )
        });
    eprintln!("rsttrace: {event}");
    event
}

fn get(ns: &Netns, nginx: &Nginx, path: &str) -> u16 {
    let (addr, path) = (nginx.addr(), path.to_string());
    let (status, _) = ns
        .enter(move || http_request_at(addr, "GET", &path, b"", REQUEST_TIMEOUT))
        .expect("entering the client netns")
        .expect("a request nginx answers");
    status
}

/// nginx in the client namespace, gunicorn (v4 and v6) in the backend, upstream keepalive.
fn gunicorn_behind_nginx(topo: &Topology) -> (Gunicorn, Nginx) {
    let gunicorn = Gunicorn::start(
        APP,
        GunicornOptions {
            listen: vec![topo.backend_ip(Family::V4), topo.backend_ip(Family::V6)],
            netns: Some(topo.backend().clone()),
            keep_alive: Some(3600),
            ..GunicornOptions::default()
        },
    )
    .expect("starting gunicorn");
    let [py4, py6] = [gunicorn.addrs()[0], gunicorn.addrs()[1]];
    let nginx = Nginx::start_with(
        &[Location::http("/py/", py4), Location::http("/py6/", py6)],
        NginxOptions {
            netns: Some(topo.client().clone()),
            upstream_keepalive: Some(4),
            ..NginxOptions::default()
        },
    )
    .expect("starting nginx");
    (gunicorn, nginx)
}

/// The checks every path-device verdict shares: the router forged it, a hop closer than the
/// backend (its fresh TTL against the backend's, decremented once by the router).
fn assert_forged_by_router(event: &Value, topo: &Topology, ttl: u64) {
    assert_eq!(event["cause"], "network", "{event}");
    let n = &event["network"];
    assert_eq!(n["origin"], "path_device", "{event}");
    assert_eq!(n["ttl"], ttl, "{event}");
    assert_eq!(n["expected_ttl"], ttl - 1, "{event}");
    assert_eq!(n["hops"], 1, "{event}");
    assert_eq!(n["interface"], topo.client_if().as_str(), "{event}");
    assert_eq!(
        n["forged_in_netns"]["inode"].as_u64(),
        Some(inode(topo.router())),
        "forged in the router's namespace: {event}"
    );
    assert_eq!(
        event["receiver"]["netns"].as_u64(),
        Some(inode(topo.client())),
        "{event}"
    );
    assert!(event["peer"].is_null(), "no local process sent it: {event}");
}

#[test]
fn a_router_reject_mid_response_is_a_path_device_forged_in_the_router() {
    require_root();
    let topo = Topology::create().expect("creating the topology");
    let (gunicorn, nginx) = gunicorn_behind_nginx(&topo);
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    let py4 = gunicorn.addrs()[0];
    assert_eq!(get(topo.client(), &nginx, "/py/ok"), 200);

    let client = topo.client().clone();
    let addr = nginx.addr();
    let slow = client.spawn(move || http_request_at(addr, "GET", "/py/slow", b"", REQUEST_TIMEOUT));
    assert!(
        gunicorn.wait_log("slow: first chunk sent", REPORT_TIMEOUT),
        "{}",
        gunicorn.log()
    );
    let reject = reject_tcp_to(topo.router(), "FORWARD", py4);
    let _ = slow.join();
    assert_error_log(
        &nginx,
        "(104: Connection reset by peer) while reading upstream",
    );
    let fired = reject
        .wait_packets_above(0, REPORT_TIMEOUT)
        .expect("the REJECT rule fired");
    eprintln!(
        "router rule ({fired} packets): {}",
        reject.line().expect("rule")
    );

    let event = nginx_reset(&tool, py4);
    assert_forged_by_router(&event, &topo, 64);
    assert_eq!(event["network"]["ip_id"], 0, "netfilter's RST: {event}");
    assert_eq!(event["network"]["tcp_flags"], "RST", "{event}");
    let hint = event["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains(&format!(
            "ip netns exec {} iptables -S",
            topo.router().name()
        )),
        "{event}"
    );
    tool.stop().expect("rsttrace exits 0");
}

#[test]
fn the_same_over_ipv6_compares_hop_limits() {
    require_root();
    let topo = Topology::create().expect("creating the topology");
    let (gunicorn, nginx) = gunicorn_behind_nginx(&topo);
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    let py6 = gunicorn.addrs()[1];
    // The connection nginx keeps alive: its SYN-ACK gives the flow's hop limit.
    assert_eq!(get(topo.client(), &nginx, "/py6/ok"), 200);
    let reject = reject_tcp_to(topo.router(), "FORWARD", py6);
    assert_eq!(get(topo.client(), &nginx, "/py6/ok"), 502);
    assert_error_log(&nginx, "recv() failed (104: Connection reset by peer)");
    reject
        .wait_packets_above(0, REPORT_TIMEOUT)
        .expect("the REJECT rule fired");

    let event = nginx_reset(&tool, py6);
    assert_forged_by_router(&event, &topo, 64);
    assert!(
        event["network"]["ip_id"].is_null(),
        "IPv6 has no IP ID: {event}"
    );
    tool.stop().expect("rsttrace exits 0");
}

#[test]
fn a_keepalive_connection_older_than_rsttrace_still_gets_its_baseline() {
    require_root();
    let topo = Topology::create().expect("creating the topology");
    let (gunicorn, nginx) = gunicorn_behind_nginx(&topo);
    let py4 = gunicorn.addrs()[0];
    // The upstream connection is opened (SYN-ACK and all) before rsttrace starts.
    assert_eq!(get(topo.client(), &nginx, "/py/ok"), 200);
    let before = topo
        .client()
        .run(
            "ss",
            &["-tnH", "state", "established", "dst", &py4.to_string()],
        )
        .expect("ss");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    // Traffic on it after the start: the backend's segments give the flow's TTL.
    assert_eq!(get(topo.client(), &nginx, "/py/ok"), 200);
    let after = topo
        .client()
        .run(
            "ss",
            &["-tnH", "state", "established", "dst", &py4.to_string()],
        )
        .expect("ss");
    assert_eq!(before, after, "the same kept-alive connection served both");
    let reject = reject_tcp_to(topo.router(), "FORWARD", py4);
    assert_eq!(get(topo.client(), &nginx, "/py/ok"), 502);
    assert_error_log(&nginx, "(104: Connection reset by peer)");
    reject
        .wait_packets_above(0, REPORT_TIMEOUT)
        .expect("the REJECT rule fired");

    let event = nginx_reset(&tool, py4);
    assert_forged_by_router(&event, &topo, 64);
    tool.stop().expect("rsttrace exits 0");
}

#[test]
fn a_reject_in_nginx_own_output_chain_is_the_local_firewall() {
    require_root();
    let topo = Topology::create().expect("creating the topology");
    let (gunicorn, nginx) = gunicorn_behind_nginx(&topo);
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    let py4 = gunicorn.addrs()[0];
    let reject = reject_tcp_to(topo.client(), "OUTPUT", py4);
    assert_eq!(get(topo.client(), &nginx, "/py/ok"), 502);
    assert_error_log(&nginx, "connect() failed (111: Connection refused)");
    reject
        .wait_packets_above(0, REPORT_TIMEOUT)
        .expect("the REJECT rule fired");

    let event = nginx_reset(&tool, py4);
    assert_eq!(event["cause"], "network", "{event}");
    assert_eq!(event["network"]["origin"], "local_firewall", "{event}");
    assert_eq!(event["network"]["interface"], "lo", "{event}");
    let hint = event["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("iptables -S"), "{event}");
    tool.stop().expect("rsttrace exits 0");
}

/// The same REJECT with the packet hook left out: nothing tells it from a remote sender, so
/// the verdict must not point away from this host (a wrong hint is worse than none).
#[test]
fn without_the_packet_hook_a_local_reject_is_not_ruled_out() {
    require_root();
    let topo = Topology::create().expect("creating the topology");
    let (gunicorn, nginx) = gunicorn_behind_nginx(&topo);
    let mut tool = Rsttrace::start(&["--no-network-hooks"]).expect("starting rsttrace");
    let py4 = gunicorn.addrs()[0];
    let reject = reject_tcp_to(topo.client(), "OUTPUT", py4);
    assert_eq!(get(topo.client(), &nginx, "/py/ok"), 502);
    assert_error_log(&nginx, "connect() failed (111: Connection refused)");
    reject
        .wait_packets_above(0, REPORT_TIMEOUT)
        .expect("the REJECT rule fired");

    let event = nginx_reset(&tool, py4);
    assert_eq!(event["cause"], "network", "{event}");
    assert!(
        event.get("network").is_none(),
        "no segment was sampled: {event}"
    );
    let hint = event["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("this host's own firewall"), "{event}");
    assert!(hint.contains("--no-network-hooks"), "{event}");
    tool.stop().expect("rsttrace exits 0");
}

/// php-fpm (TCP) in the backend namespace, in a docker-shaped cgroup with a memory limit,
/// behind nginx in the client namespace.
fn php_fpm_in_a_container(
    topo: &Topology,
    options: PhpFpmOptions,
) -> (ContainerCgroup, PhpFpm, Nginx) {
    let container = ContainerCgroup::create(ContainerLayout::Docker, Some(64 << 20))
        .expect("a docker-shaped cgroup");
    let fpm = PhpFpm::start(PhpFpmOptions {
        listen: topo.backend_ip(Family::V4),
        netns: Some(topo.backend().clone()),
        cgroups: container.dirs().to_vec(),
        ..options
    })
    .expect("starting php-fpm");
    let nginx = Nginx::start_with(
        &[Location::php(&fpm)],
        NginxOptions {
            netns: Some(topo.client().clone()),
            ..NginxOptions::default()
        },
    )
    .expect("starting nginx");
    (container, fpm, nginx)
}

/// The peer is the worker, in the backend namespace, in the container.
fn assert_container_peer(event: &Value, topo: &Topology, container: &ContainerCgroup, worker: u32) {
    assert_eq!(pid_of(&event["peer"]), Some(worker), "{event}");
    assert_eq!(
        event["peer"]["netns"].as_u64(),
        Some(inode(topo.backend())),
        "{event}"
    );
    assert_eq!(
        event["receiver"]["netns"].as_u64(),
        Some(inode(topo.client())),
        "{event}"
    );
    assert_eq!(event["peer"]["container"]["id"], container.id(), "{event}");
    assert_eq!(event["peer"]["container"]["runtime"], "docker", "{event}");
    assert!(
        event["network"].is_null(),
        "a local send, not the network: {event}"
    );
}

#[test]
fn a_container_worker_killed_in_another_namespace_is_named_with_its_killer() {
    require_root();
    let topo = Topology::create().expect("creating the topology");
    let (container, fpm, nginx) = php_fpm_in_a_container(&topo, PhpFpmOptions::default());
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    let marker = fpm.state_dir().join("started");
    fpm.write_script("slow.php", &php_script(&marker, "sleep(30);"))
        .expect("writing slow.php");
    let (addr, client) = (nginx.addr(), topo.client().clone());
    let request =
        client.spawn(move || http_request_at(addr, "GET", "/php/slow.php", b"", REQUEST_TIMEOUT));
    let worker = wait_for_php_worker(&marker);
    let killer = run_kill("-9", worker);
    let _ = request.join();
    assert!(
        fpm.wait_log(
            &format!("child {worker} exited on signal 9"),
            REPORT_TIMEOUT
        ),
        "{}",
        fpm.log()
    );
    assert_error_log(&nginx, "(104: Connection reset by peer)");

    let event = nginx_reset(
        &tool,
        SocketAddr::new(topo.backend_ip(Family::V4), fpm.port()),
    );
    assert_eq!(event["cause"], "signal", "{event}");
    assert_eq!(pid_of(&event["signal"]["sender"]), Some(killer), "{event}");
    assert_container_peer(&event, &topo, &container, worker);
    tool.stop().expect("rsttrace exits 0");
}

#[test]
fn a_container_worker_oom_killed_in_its_memory_limit() {
    require_root();
    let topo = Topology::create().expect("creating the topology");
    let (container, fpm, nginx) = php_fpm_in_a_container(
        &topo,
        PhpFpmOptions {
            memory_limit: Some("-1".into()),
            ..PhpFpmOptions::default()
        },
    );
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    let marker = fpm.state_dir().join("hog");
    fpm.write_script(
        "hog.php",
        &php_script(
            &marker,
            "$c = []; for ($i = 0; $i < 512; $i++) { $c[] = str_repeat('x', 1 << 20); }",
        ),
    )
    .expect("writing hog.php");
    assert_eq!(get(topo.client(), &nginx, "/php/hog.php"), 502);
    let worker = wait_for_php_worker(&marker);
    assert!(
        container.oom_kills().unwrap_or(0) > 0,
        "the container's memory cgroup recorded no OOM kill"
    );
    assert_error_log(&nginx, "(104: Connection reset by peer)");

    let event = nginx_reset(
        &tool,
        SocketAddr::new(topo.backend_ip(Family::V4), fpm.port()),
    );
    assert_eq!(event["cause"], "oom_kill", "{event}");
    assert_eq!(event["oom"]["scope"], "cgroup", "{event}");
    assert_container_peer(&event, &topo, &container, worker);
    tool.stop().expect("rsttrace exits 0");
}

#[test]
fn request_terminate_timeout_and_linger_0_abort_across_namespaces() {
    require_root();
    let topo = Topology::create().expect("creating the topology");
    let (container, fpm, nginx) = php_fpm_in_a_container(
        &topo,
        PhpFpmOptions {
            request_terminate_timeout: Some(2),
            ..PhpFpmOptions::default()
        },
    );
    let abort = AbortServer::start(
        SocketAddr::new(topo.backend_ip(Family::V4), 8200),
        &Placement::netns(topo.backend()),
    )
    .expect("the aborting server");
    let abort_nginx = Nginx::start_with(
        &[Location::http("/abort/", abort.addr())],
        NginxOptions {
            netns: Some(topo.client().clone()),
            ..NginxOptions::default()
        },
    )
    .expect("nginx for the aborting server");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");

    let marker = fpm.state_dir().join("started");
    fpm.write_script("slow.php", &php_script(&marker, "sleep(30);"))
        .expect("writing slow.php");
    let (addr, client) = (nginx.addr(), topo.client().clone());
    let request =
        client.spawn(move || http_request_at(addr, "GET", "/php/slow.php", b"", REQUEST_TIMEOUT));
    let worker = wait_for_php_worker(&marker);
    let _ = request.join();
    assert!(
        fpm.wait_log("execution timed out", REPORT_TIMEOUT),
        "{}",
        fpm.log()
    );
    let event = nginx_reset(
        &tool,
        SocketAddr::new(topo.backend_ip(Family::V4), fpm.port()),
    );
    assert_eq!(event["cause"], "signal", "{event}");
    assert_eq!(
        pid_of(&event["signal"]["sender"]),
        Some(fpm.master_pid()),
        "{event}"
    );
    assert_container_peer(&event, &topo, &container, worker);

    assert_eq!(get(topo.client(), &abort_nginx, "/abort/x"), 502);
    assert_error_log(&abort_nginx, "(104: Connection reset by peer)");
    let event = nginx_reset(&tool, abort.addr());
    assert_eq!(event["cause"], "abort", "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(abort.pid()), "{event}");
    assert_eq!(
        event["peer"]["netns"].as_u64(),
        Some(inode(topo.backend())),
        "{event}"
    );
    tool.stop().expect("rsttrace exits 0");
}

#[test]
fn a_dnat_service_address_with_masquerade_still_names_the_aborting_backend() {
    require_root();
    let topo = Topology::create().expect("creating the topology");
    let abort = AbortServer::start(
        SocketAddr::new(topo.backend_ip(Family::V4), 8200),
        &Placement::netns(topo.backend()),
    )
    .expect("the aborting server");
    let service = SocketAddr::new(topo.service_ip(Family::V4), 80);
    // kube-proxy-like DNAT in nginx's namespace, MASQUERADE in the router.
    let dnat = topo
        .client()
        .iptables(Family::V4)
        .dnat("OUTPUT", service, abort.addr())
        .expect("DNAT");
    let masquerade = topo
        .router()
        .iptables(Family::V4)
        .masquerade(&topo.router_backend_if())
        .expect("MASQUERADE");
    let nginx = Nginx::start_with(
        &[Location::http("/svc/", service)],
        NginxOptions {
            netns: Some(topo.client().clone()),
            ..NginxOptions::default()
        },
    )
    .expect("starting nginx");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    assert_eq!(get(topo.client(), &nginx, "/svc/x"), 502);
    assert_error_log(&nginx, "(104: Connection reset by peer)");
    for rule in [&dnat, &masquerade] {
        rule.wait_packets_above(0, REPORT_TIMEOUT)
            .expect("NAT rule used");
        eprintln!("nat: {}", rule.line().expect("rule"));
    }
    assert!(
        abort.wait_log(
            &format!("abort {}", topo.router_backend_ip(Family::V4)),
            REPORT_TIMEOUT
        ),
        "the backend saw the router's address:\n{}",
        abort.log()
    );

    let event = nginx_reset(&tool, service);
    assert_eq!(event["cause"], "abort", "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(abort.pid()), "{event}");
    assert_eq!(event["kernel_reason"], "TCP_ABORT_ON_CLOSE", "{event}");
    tool.stop().expect("rsttrace exits 0");
}

#[test]
fn a_service_without_endpoints_is_refused_without_a_reset() {
    require_root();
    let topo = Topology::create().expect("creating the topology");
    let service = SocketAddr::new(topo.service_ip(Family::V4), 81);
    let reject = topo
        .client()
        .iptables(Family::V4)
        .reject_unreachable(
            "OUTPUT",
            &[
                "-d",
                &service.ip().to_string(),
                "-p",
                "tcp",
                "--dport",
                "81",
            ],
        )
        .expect("ICMP REJECT, as kube-proxy does for a Service with no endpoints");
    let nginx = Nginx::start_with(
        &[Location::http("/svc/", service)],
        NginxOptions {
            netns: Some(topo.client().clone()),
            ..NginxOptions::default()
        },
    )
    .expect("starting nginx");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    assert_eq!(get(topo.client(), &nginx, "/svc/x"), 502);
    assert_error_log(&nginx, "connect() failed (111: Connection refused)");
    reject
        .wait_packets_above(0, REPORT_TIMEOUT)
        .expect("the REJECT fired");

    let remote = service.to_string();
    let event = tool
        .wait_for(
            |e| e["event"] == "refused" && e["remote"] == remote.as_str(),
            REPORT_TIMEOUT,
        )
        .unwrap_or_else(|| panic!("no refused event:\n{}", tool.report()));
    eprintln!("rsttrace: {event}");
    assert_eq!(event["error"], "ECONNREFUSED", "{event}");
    assert_eq!(event["receiver"]["comm"], "nginx", "{event}");
    assert!(
        nginx
            .worker_pids()
            .contains(&pid_of(&event["receiver"]).unwrap_or_default()),
        "{event}"
    );
    let events = tool.stop().expect("rsttrace exits 0");
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "reset" && e["remote"] == remote.as_str()),
        "an ICMP refusal is no reset"
    );
}

#[test]
fn a_reset_from_a_real_other_kernel_is_the_remote_host() {
    require_root();
    let ns = OwnedNetns::create_unique("guest").expect("the guest's netns");
    let guest = Guest::start(GuestOptions {
        netns: Some(ns.netns().clone()),
        ..GuestOptions::new(env!("CARGO_BIN_EXE_rsttrace-vm-scenarios"))
    })
    .expect("booting the guest");
    eprintln!(
        "guest: kernel {} up in {:.1} s",
        guest.release(),
        guest.boot_time().as_secs_f64()
    );
    let upstream = guest.addr(Family::V4);
    let nginx = Nginx::start_with(
        &[Location::http("/guest/", upstream)],
        NginxOptions {
            listen: guest.host_ip(Family::V4),
            netns: Some(ns.netns().clone()),
            ..NginxOptions::default()
        },
    )
    .expect("starting nginx beside the guest");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    assert_eq!(get(ns.netns(), &nginx, "/guest/x"), 502);
    assert_error_log(&nginx, "(104: Connection reset by peer)");
    assert!(
        guest.wait_console("abort (read 64)", REPORT_TIMEOUT),
        "the guest's server aborted:\n{}",
        guest.console()
    );

    let event = nginx_reset(&tool, upstream);
    assert_eq!(event["cause"], "network", "{event}");
    let n = &event["network"];
    assert_eq!(n["origin"], "remote_host", "{event}");
    assert_eq!(n["ttl"], n["expected_ttl"], "{event}");
    assert_eq!(n["interface"], guest.tap(), "{event}");
    assert!(
        n["ip_id"].as_u64().is_some_and(|id| id != 0),
        "a Linux abort counts IP IDs: {event}"
    );
    tool.stop().expect("rsttrace exits 0");
}

/// The container's server (its PID 1): `/hog` allocates until the memory limit's OOM kill,
/// `/slow` waits, anything else is closed at once with SO_LINGER 0 (an abort).
const CONTAINER_SERVER: &str = r#"
import socket, struct, sys, threading, time

def handle(conn):
    data = conn.recv(4096)
    if b"/hog" in data:
        print("hog", flush=True)
        chunks = []
        while True:
            chunks.append(b"x" * (1 << 20))
    if b"/slow" in data:
        print("slow", flush=True)
        time.sleep(60)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    print("abort", flush=True)

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", 8200))
listener.listen(64)
print("listening", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"#;

fn container_options(publish: Vec<rsttrace_tests::Publish>) -> rsttrace_tests::ContainerOptions {
    rsttrace_tests::ContainerOptions {
        command: ["/usr/bin/python3", "/app/server.py"]
            .map(String::from)
            .to_vec(),
        files: vec![("server.py".into(), CONTAINER_SERVER.into())],
        memory: Some(64 << 20),
        publish,
    }
}

fn host_get(nginx: &Nginx, path: &str) -> u16 {
    http_request_at(nginx.addr(), "GET", path, b"", REQUEST_TIMEOUT)
        .expect("a request nginx answers")
        .0
}

/// The peer is the container's process, by its host pid, with its container id.
fn assert_docker_peer(event: &Value, container: &rsttrace_tests::Container) {
    assert_eq!(pid_of(&event["peer"]), Some(container.pid()), "{event}");
    assert_eq!(event["peer"]["container"]["id"], container.id(), "{event}");
    assert_eq!(event["peer"]["container"]["runtime"], "docker", "{event}");
}

/// Real Docker (Debian's docker.io): a container aborting, killed and OOM-killed, reached
/// from nginx on the host at its bridge address, at a port published on the host's address
/// (docker's DNAT), and through docker-proxy (a port published on 127.0.0.1). Runs last in
/// this file (`z_`): dockerd rewrites the host's firewall, and stopping it restores that.
#[test]
fn z_docker_containers_killed_oom_killed_and_aborting() {
    require_root();
    let engine = rsttrace_tests::Docker::start().expect("starting dockerd");
    let host = rsttrace_tests::docker::host_address().expect("the host's address");
    let (dnat_port, proxy_port) = (rsttrace_tests::free_port(), rsttrace_tests::free_port());
    let published = SocketAddr::new(host, dnat_port);
    let proxied = SocketAddr::from(([127, 0, 0, 1], proxy_port));
    let container = engine
        .run(&container_options(vec![
            rsttrace_tests::Publish {
                host: published,
                container_port: 8200,
            },
            rsttrace_tests::Publish {
                host: proxied,
                container_port: 8200,
            },
        ]))
        .expect("running the container");
    assert!(
        container.wait_log("listening", REPORT_TIMEOUT),
        "{}",
        container.logs()
    );
    let hog = engine
        .run(&container_options(Vec::new()))
        .expect("running the second container");
    assert!(hog.wait_log("listening", REPORT_TIMEOUT), "{}", hog.logs());
    let bridge = SocketAddr::new(container.ip(), 8200);
    let nginx = Nginx::start_with(
        &[
            Location::http("/bridge/", bridge),
            Location::http("/dnat/", published),
            Location::http("/proxy/", proxied),
            Location::http("/hog/", SocketAddr::new(hog.ip(), 8200)),
        ],
        NginxOptions::default(),
    )
    .expect("starting nginx on the host");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");

    // (a) the bridge address and (b) the published port (DNAT): the container aborts.
    for (path, remote) in [("/bridge/x", bridge), ("/dnat/x", published)] {
        assert_eq!(host_get(&nginx, path), 502, "{path}");
        let event = nginx_reset(&tool, remote);
        assert_eq!(event["cause"], "abort", "{path}: {event}");
        assert_docker_peer(&event, &container);
    }
    assert_error_log(&nginx, "(104: Connection reset by peer)");

    // (c) docker-proxy relays: the container's reset lands on docker-proxy's upstream
    // socket, and nginx sees docker-proxy close its side (a FIN).
    assert_eq!(host_get(&nginx, "/proxy/x"), 502);
    assert_error_log(&nginx, "upstream prematurely closed connection");
    let event = tool
        .wait_for(
            |e| e["event"] == "reset" && e["receiver"]["comm"] == "docker-proxy",
            REPORT_TIMEOUT,
        )
        .unwrap_or_else(|| panic!("no reset for docker-proxy:\n{}", tool.report()));
    eprintln!("rsttrace: {event}");
    assert_eq!(event["cause"], "abort", "{event}");
    assert_docker_peer(&event, &container);

    // Killed mid-request from the host, the request's body unread (else its socket would
    // close with a FIN, not a RST).
    let (addr, slow_path) = (nginx.addr(), "/bridge/slow".to_string());
    let slow = std::thread::spawn(move || {
        http_request_at(addr, "POST", &slow_path, &[b'x'; 1 << 20], REQUEST_TIMEOUT)
    });
    assert!(
        container.wait_log("slow", REPORT_TIMEOUT),
        "{}",
        container.logs()
    );
    let killer = run_kill("-9", container.pid());
    let _ = slow.join();
    let event = tool
        .wait_for(
            |e| {
                e["event"] == "reset"
                    && e["cause"] == "signal"
                    && e["remote"] == bridge.to_string().as_str()
            },
            REPORT_TIMEOUT,
        )
        .unwrap_or_else(|| panic!("no verdict for the killed container:\n{}", tool.report()));
    eprintln!("rsttrace: {event}");
    assert_eq!(pid_of(&event["signal"]["sender"]), Some(killer), "{event}");
    assert_docker_peer(&event, &container);

    // OOM-killed in the container's memory limit, the request's body unread.
    let (status, _) = http_request_at(
        nginx.addr(),
        "POST",
        "/hog/x",
        &[b'x'; 1 << 20],
        REQUEST_TIMEOUT,
    )
    .expect("a request nginx answers");
    assert_eq!(status, 502);
    let hog_remote = SocketAddr::new(hog.ip(), 8200);
    let event = nginx_reset(&tool, hog_remote);
    assert_eq!(event["cause"], "oom_kill", "{event}");
    assert_eq!(event["oom"]["scope"], "cgroup", "{event}");
    assert_docker_peer(&event, &hog);

    tool.stop().expect("rsttrace exits 0");
    drop((nginx, container, hog));
    engine
        .stop()
        .expect("stopping dockerd and restoring the host");
}

/// `bpftool cgroup tree ROOT`: (program id, name) of the root cgroup's ingress programs.
fn ingress_programs(root: &std::path::Path) -> Vec<(u32, String)> {
    let out = std::process::Command::new("bpftool")
        .args(["cgroup", "tree"])
        .arg(root)
        .output()
        .expect("running bpftool cgroup tree");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ingress"))
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let id = cols.next()?.parse().ok()?;
            Some((id, cols.last()?.to_string()))
        })
        .collect()
}

/// Ids of the BPF programs loaded right now (`bpftool prog show`).
fn program_ids() -> std::collections::HashSet<u32> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("running bpftool prog show");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .collect()
}

#[test]
fn the_root_cgroup_program_coexists_and_goes_with_a_killed_rsttrace() {
    require_root();
    let root = rsttrace_tests::foreign_bpf::cgroup2_root().expect("the cgroup2 root");
    let foreign = rsttrace_tests::foreign_bpf::ForeignCgroupProgram::attach(&root)
        .expect("attaching the other party's program");
    let topo = Topology::create().expect("creating the topology");
    let (gunicorn, nginx) = gunicorn_behind_nginx(&topo);
    let before = program_ids();
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    let ours: std::collections::HashSet<u32> = program_ids().difference(&before).copied().collect();
    let attached = ingress_programs(foreign.root());
    eprintln!("bpftool cgroup tree {}: {attached:?}", root.display());
    let name = rsttrace_tests::foreign_bpf::FOREIGN_NAME;
    assert!(attached.iter().any(|(_, n)| n == name), "{attached:?}");
    let our_hook = attached
        .iter()
        .find(|(id, n)| n == "rst_evidence" && ours.contains(id))
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("rsttrace's ingress program is not attached: {attached:?}"));

    // Traffic flows through both, and rsttrace's program sees the RST segment.
    assert_eq!(get(topo.client(), &nginx, "/py/ok"), 200);
    let py4 = gunicorn.addrs()[0];
    let reject = reject_tcp_to(topo.client(), "OUTPUT", py4);
    assert_eq!(get(topo.client(), &nginx, "/py/ok"), 502);
    let event = nginx_reset(&tool, py4);
    assert_eq!(event["network"]["origin"], "local_firewall", "{event}");
    drop(reject);

    // kill -9: no clean detach runs, yet the kernel drops rsttrace's links with its fds.
    let pid = tool.pid();
    run_kill("-9", pid);
    assert!(
        rsttrace_tests::wait_for_exit(pid, REPORT_TIMEOUT),
        "rsttrace {pid} still runs"
    );
    let gone = rsttrace_tests::wait_until(REPORT_TIMEOUT, || {
        let now = ingress_programs(foreign.root());
        (!now.iter().any(|(id, _)| *id == our_hook)).then_some(now)
    })
    .unwrap_or_else(|| {
        panic!(
            "rsttrace's program stayed attached: {:?}",
            ingress_programs(foreign.root())
        )
    });
    eprintln!("after kill -9 of rsttrace: {gone:?}");
    assert!(
        gone.iter().any(|(_, n)| n == name),
        "the other program stays: {gone:?}"
    );
    let unloaded = rsttrace_tests::wait_until(REPORT_TIMEOUT, || {
        program_ids().is_disjoint(&ours).then_some(())
    });
    assert!(
        unloaded.is_some(),
        "rsttrace's programs stayed loaded: {ours:?}"
    );
    assert_eq!(
        get(topo.client(), &nginx, "/py/ok"),
        200,
        "traffic still flows"
    );
    let _ = tool.stop();
}

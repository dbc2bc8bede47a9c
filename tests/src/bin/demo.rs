//! `cargo xtask demo`: real nginx in front of real php-fpm and gunicorn on loopback, broken
//! one way after another, with nginx's error.log line and rsttrace's explanation side by side.
use std::{
    net::SocketAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use rsttrace_tests::{
    fixtures::{php_script, run_kill, wait_for_php_worker, GUNICORN_APP},
    free_port, http_request_at, require_root, spawn_http_request, wait_until, AbortServer,
    ContainerCgroup, ContainerLayout, Family, Gunicorn, GunicornOptions, Location, MemCgroup,
    Nginx, NginxOptions, PhpFpm, PhpFpmOptions, Placement, Rsttrace, Topology,
};
use serde_json::Value;

const BIG_BODY: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    require_root();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the demo knows happened in a step: rsttrace must say the same, or the demo fails.
struct Expect {
    cause: &'static str,
    peer: Option<u32>,
    signal_sender: Option<u32>,
    /// The network origin, for resets no local process sent.
    origin: Option<&'static str>,
    /// The peer's container id.
    container: Option<String>,
}

impl Expect {
    fn cause(cause: &'static str) -> Self {
        Self {
            cause,
            peer: None,
            signal_sender: None,
            origin: None,
            container: None,
        }
    }

    fn origin(mut self, origin: &'static str) -> Self {
        self.origin = Some(origin);
        self
    }

    fn container(mut self, id: &str) -> Self {
        self.container = Some(id.to_string());
        self
    }

    fn peer(mut self, pid: u32) -> Self {
        self.peer = Some(pid);
        self
    }

    fn sent_by(mut self, pid: u32) -> Self {
        self.signal_sender = Some(pid);
        self
    }

    /// Why `e` contradicts what the demo did, if it does.
    fn mismatch(&self, e: &Value) -> Option<String> {
        let pid = |v: &Value| v["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
        if e["cause"] != self.cause {
            return Some(format!(
                "cause {} (the demo caused {})",
                e["cause"], self.cause
            ));
        }
        if self.peer.is_some() && pid(&e["peer"]) != self.peer {
            return Some(format!(
                "peer {} (the demo broke {:?})",
                e["peer"], self.peer
            ));
        }
        if self.origin.is_some() && e["network"]["origin"].as_str() != self.origin {
            return Some(format!(
                "network origin {} (the demo's router forged it: {:?})",
                e["network"]["origin"], self.origin
            ));
        }
        if self.container.is_some()
            && e["peer"]["container"]["id"].as_str() != self.container.as_deref()
        {
            return Some(format!(
                "container {} (the demo's is {:?})",
                e["peer"]["container"], self.container
            ));
        }
        if self.signal_sender.is_some() && pid(&e["signal"]["sender"]) != self.signal_sender {
            return Some(format!(
                "signal sender {} (the signal came from {:?})",
                e["signal"]["sender"], self.signal_sender
            ));
        }
        None
    }
}

struct Stage<'a> {
    nginx: &'a Nginx,
    tool: &'a Rsttrace,
    seen_events: usize,
    seen_log: usize,
}

impl Stage<'_> {
    /// Prints what nginx logged and what rsttrace said since the previous step, and fails
    /// unless every reset nginx got from its upstreams matches what the demo did.
    fn show(&mut self, what: &str, expect: Expect) -> Result<()> {
        println!("\n=== {what}");
        let deadline = Instant::now() + WAIT;
        let workers = self.nginx.worker_pids();
        let new_resets = loop {
            let events = self.tool.events();
            let resets: Vec<Value> = events[self.seen_events..]
                .iter()
                .filter(|e| {
                    // This demo's nginx's upstream connections (resets from its own clients
                    // are another matter: receiver_role "server"; other nginx on the host
                    // are not ours).
                    let receiver = e["receiver"]["pid"]
                        .as_u64()
                        .and_then(|p| u32::try_from(p).ok());
                    e["event"] == "reset"
                        && receiver.is_some_and(|p| workers.contains(&p))
                        && e["receiver_role"] != "server"
                })
                .cloned()
                .collect();
            if !resets.is_empty() || Instant::now() > deadline {
                self.seen_events = events.len();
                break resets;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let log = self.nginx.error_log_contents();
        for line in log.lines().skip(self.seen_log) {
            if line.contains("[error]") {
                // "... [error] 12#12: *2 recv() failed (104: ...) while reading ..." -> "recv() failed (104: ...)"
                let short = line.split(" while ").next().unwrap_or(line);
                let message = short
                    .split_once(": *")
                    .and_then(|(_, rest)| rest.split_once(' '))
                    .map_or(short, |(_, m)| m);
                println!("nginx error.log: {message}");
            }
        }
        self.seen_log = log.lines().count();
        if new_resets.is_empty() {
            bail!(
                "rsttrace reported no reset for this step:\n{}",
                self.tool.report()
            );
        }
        for e in &new_resets {
            println!(
                "rsttrace:        cause={}  {}",
                e["cause"].as_str().unwrap_or("?"),
                evidence(e)
            );
            println!(
                "                 {}",
                e["hint"].as_str().unwrap_or_default()
            );
        }
        for e in &new_resets {
            if let Some(wrong) = expect.mismatch(e) {
                bail!("WRONG VERDICT for \"{what}\": {wrong}\n{e}");
            }
        }
        println!("check:           matches what the demo did");
        Ok(())
    }
}

fn process(v: &Value) -> String {
    format!(
        "{}[{}]",
        v["comm"].as_str().unwrap_or("?"),
        v["pid"].as_u64().unwrap_or_default()
    )
}

fn evidence(e: &Value) -> String {
    let mut parts = vec![format!("receiver={}", process(&e["receiver"]))];
    if e["peer"].is_object() {
        parts.push(format!("peer={}", process(&e["peer"])));
    }
    if e["signal"].is_object() {
        let mut s = e["signal"]["name"].as_str().unwrap_or("?").to_string();
        if e["signal"]["sender"].is_object() {
            s.push_str(&format!(" from {}", process(&e["signal"]["sender"])));
        }
        parts.push(s);
    }
    if let Some(code) = e["exit_code"].as_i64() {
        parts.push(format!("exit_code={code}"));
    }
    if let Some(id) = e["peer"]["container"]["id"].as_str() {
        parts.push(format!("container={}", &id[..12.min(id.len())]));
    }
    if e["network"].is_object() {
        let n = &e["network"];
        parts.push(format!(
            "origin={} ttl={}/{}",
            n["origin"].as_str().unwrap_or("?"),
            n["ttl"],
            n["expected_ttl"]
        ));
        if let Some(ns) = n["forged_in_netns"]["name"].as_str() {
            parts.push(format!("forged_in={ns}"));
        }
    }
    if e["oom"].is_object() {
        parts.push(format!(
            "oom {} {}",
            e["oom"]["scope"].as_str().unwrap_or("?"),
            e["oom"]["cgroup"].as_str().unwrap_or_default()
        ));
    }
    if let Some(r) = e["kernel_reason"].as_str() {
        parts.push(format!("kernel_reason={r}"));
    }
    parts.join("  ")
}

/// Starts a request to `prefix` + `script` (a PHP script running `body`); returns the worker
/// serving it.
fn php_worker_request(
    nginx: &Nginx,
    fpm: &PhpFpm,
    prefix: &str,
    script: &str,
    body: &str,
) -> Result<u32> {
    let marker = fpm.state_dir().join(format!("{script}.started"));
    let _ = std::fs::remove_file(&marker);
    fpm.write_script(script, &php_script(&marker, body))?;
    let _request = spawn_http_request(
        nginx.port(),
        "GET",
        &format!("{prefix}{script}"),
        Vec::new(),
        WAIT,
    );
    Ok(wait_for_php_worker(&marker))
}

fn run() -> Result<()> {
    println!("Starting php-fpm (a TCP pool with request_terminate_timeout=2s, a pool on a unix socket, a pool in a 64 MiB memory cgroup), gunicorn and nginx on 127.0.0.1...");
    let fpm = PhpFpm::start(PhpFpmOptions {
        request_terminate_timeout: Some(2),
        ..PhpFpmOptions::default()
    })?;
    let cgroup = MemCgroup::create(64 << 20)?;
    let fpm_oom = PhpFpm::start(PhpFpmOptions {
        memory_limit: Some("-1".into()),
        cgroups: vec![cgroup.dir().to_path_buf()],
        ..PhpFpmOptions::default()
    })?;
    let fpm_unix = PhpFpm::start(PhpFpmOptions {
        unix_socket: true,
        ..PhpFpmOptions::default()
    })?;
    let gunicorn = Gunicorn::start(GUNICORN_APP, GunicornOptions::default())?;
    let closed = free_port();
    let mut oom_location = Location::php(&fpm_oom);
    oom_location.prefix = "/oom/".into();
    let nginx = Nginx::start(&[
        Location::php(&fpm),
        Location::php_unix(&fpm_unix),
        oom_location,
        Location::py(gunicorn.port()),
        Location::closed(closed),
    ])?;
    let tool = Rsttrace::start(&[])?;
    println!("{}", tool.stderr().trim());
    let mut stage = Stage {
        nginx: &nginx,
        tool: &tool,
        seen_events: 0,
        seen_log: nginx.error_log_contents().lines().count(),
    };

    let worker = php_worker_request(&nginx, &fpm, "/php/", "slow.php", "sleep(30);")?;
    let killer = run_kill("-9", worker);
    stage.show(
        &format!("kill -9 of php-fpm worker {worker} mid-request (kill ran as pid {killer})"),
        Expect::cause("signal").peer(worker).sent_by(killer),
    )?;

    let worker = php_worker_request(&nginx, &fpm_unix, "/php-unix/", "slow.php", "sleep(30);")?;
    let killer = run_kill("-9", worker);
    stage.show(
        &format!("the same over php-fpm's unix socket (Debian's default): kill -9 of worker {worker} (kill ran as pid {killer})"),
        Expect::cause("signal").peer(worker).sent_by(killer),
    )?;

    let worker = php_worker_request(&nginx, &fpm, "/php/", "slower.php", "sleep(30);")?;
    stage.show(
        "a request outlives php-fpm's request_terminate_timeout (2 s): the master terminates the worker",
        Expect::cause("signal").peer(worker).sent_by(fpm.master_pid()),
    )?;

    let marker = fpm_oom.state_dir().join("hog.started");
    fpm_oom.write_script(
        "hog.php",
        &php_script(
            &marker,
            "$c = []; for ($i = 0; $i < 512; $i++) { $c[] = str_repeat('x', 1 << 20); }",
        ),
    )?;
    let _hog = spawn_http_request(nginx.port(), "GET", "/oom/hog.php", Vec::new(), WAIT);
    let hog = wait_for_php_worker(&marker);
    stage.show(
        &format!(
            "a PHP script allocates 512 MiB in a pool limited to 64 MiB (memory cgroup {})",
            cgroup.path()
        ),
        Expect::cause("oom_kill").peer(hog),
    )?;

    for (path, what, cause) in [
        (
            "/py/segv",
            "a gunicorn worker segfaults (NULL read) with a 1 MiB request body unread",
            "crash",
        ),
        (
            "/py/abort",
            "a live gunicorn worker closes the connection (SO_LINGER 0) without reading the body",
            "abort",
        ),
        (
            "/py/exit3",
            "a gunicorn worker calls os._exit(3) with the body unread",
            "exit",
        ),
    ] {
        let workers = wait_until(WAIT, || {
            let w = gunicorn.worker_pids();
            (!w.is_empty()).then_some(w)
        })
        .context("gunicorn has no worker")?;
        let _r = spawn_http_request(nginx.port(), "POST", path, vec![b'x'; BIG_BODY], WAIT);
        stage.show(
            &format!("{what} (worker {})", workers[0]),
            Expect::cause(cause).peer(workers[0]),
        )?;
    }

    let _r = spawn_http_request(nginx.port(), "GET", "/closed/", Vec::new(), WAIT);
    stage.show(
        &format!("nginx proxies to 127.0.0.1:{closed}, where nothing listens"),
        Expect::cause("no_socket"),
    )?;

    drop(tool);
    network_act()?;

    println!("\nDone: every reset nginx saw from its upstreams was explained, and matched what the demo did. Stopping everything.");
    Ok(())
}

/// The network: nginx in a namespace of its own, a router namespace, upstreams in a
/// backend namespace; a container's process aborts, then the router forges a reset.
fn network_act() -> Result<()> {
    println!("\n--- The network: nginx in its own namespace, a router namespace, upstreams in a backend namespace");
    let topo = Topology::create()?;
    let container = ContainerCgroup::create(ContainerLayout::Docker, None)?;
    let abort = AbortServer::start(
        SocketAddr::new(topo.backend_ip(Family::V4), 8200),
        &Placement {
            netns: Some(topo.backend().clone()),
            cgroups: container.dirs().to_vec(),
        },
    )?;
    let gunicorn = Gunicorn::start(
        GUNICORN_APP,
        GunicornOptions {
            listen: vec![topo.backend_ip(Family::V4)],
            netns: Some(topo.backend().clone()),
            ..GunicornOptions::default()
        },
    )?;
    let nginx = Nginx::start_with(
        &[
            Location::http("/container/", abort.addr()),
            Location::http("/py/", gunicorn.addrs()[0]),
        ],
        NginxOptions {
            netns: Some(topo.client().clone()),
            upstream_keepalive: Some(4),
            ..NginxOptions::default()
        },
    )?;
    let tool = Rsttrace::start(&[])?;
    let mut stage = Stage {
        nginx: &nginx,
        tool: &tool,
        seen_events: 0,
        seen_log: nginx.error_log_contents().lines().count(),
    };
    let client = topo.client().clone();
    let request = |path: &'static str| {
        let (client, addr) = (client.clone(), nginx.addr());
        std::thread::spawn(move || {
            let _ = client.enter(move || http_request_at(addr, "GET", path, b"", WAIT));
        })
    };

    let _ = request("/container/x").join();
    stage.show(
        &format!(
            "a process in a container (cgroup {}) aborts nginx's connection from another namespace (pid {})",
            container.path(),
            abort.pid()
        ),
        Expect::cause("abort")
            .peer(abort.pid())
            .container(container.id()),
    )?;

    let _ = request("/py/pid").join();
    let port = gunicorn.addrs()[0].port().to_string();
    let _reject = topo
        .router()
        .iptables(Family::V4)
        .reject_tcp_reset("FORWARD", &["-p", "tcp", "--dport", &port])?;
    let _ = request("/py/pid").join();
    stage.show(
        &format!(
            "the router namespace {} rejects nginx's segments with a forged reset",
            topo.router().name()
        ),
        Expect::cause("network").origin("path_device"),
    )?;
    Ok(())
}

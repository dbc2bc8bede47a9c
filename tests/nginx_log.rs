//! rsttrace's nginx error.log library (`rsttrace::nginx`) against real nginx: the running
//! master's error_log discovered from its own configuration, followed across a logrotate-style
//! rename + reopen, the reset lines of real php-fpm workers killed with SIGKILL verified against
//! their real upstream, pids mapped; and an nginx in its own pid, mount and network namespaces
//! (its log on a tmpfs only its mount namespace sees, its time zone Asia/Tokyo).
//!
//! Run as root, one test at a time: `cargo xtask test nginx_log`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rsttrace::nginx::{
    discover, error_log_paths, ErrorLine, Follower, Limits, NginxTimeZone, PidMap, StartAt,
    UpstreamAddr, UpstreamMatch,
};
use rsttrace_tests::fixtures::{php_script, run_kill, wait_for_php_worker};
use rsttrace_tests::{
    children_of, free_port, is_alive, require_root, send_signal, spawn_http_request, wait_until,
    Location, NamespacedNginx, NamespacedNginxOptions, Nginx, PhpFpm, PhpFpmOptions, TempDir,
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls like the event loop does (every 100 ms) until a line satisfies `want`.
fn next_line(f: &mut Follower, want: impl Fn(&ErrorLine) -> bool) -> Vec<u8> {
    wait_until(LINE_TIMEOUT, || {
        std::thread::sleep(Duration::from_millis(100));
        f.poll()
            .into_iter()
            .find(|l| ErrorLine::parse(&l.bytes).is_some_and(|p| want(&p)))
            .map(|l| l.bytes)
    })
    .unwrap_or_else(|| panic!("no such line within {LINE_TIMEOUT:?}"))
}

fn now_s() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(now.as_secs()).expect("in range")
}

/// The line's time, read in the nginx's zone, is now (nginx's time has 1 s resolution).
fn assert_logged_now(p: &ErrorLine, tz: &NginxTimeZone) {
    let utc = p.time.to_utc(tz).expect("a valid local time");
    let skew = now_s() - utc.earliest;
    assert!(
        (0..=5).contains(&skew),
        "logged {skew} s ago (zone {})",
        tz.source
    );
}

/// A PHP request whose worker is then killed with SIGKILL; returns the worker's pid.
fn kill_php_worker(nginx: &Nginx, fpm: &PhpFpm, location: &str, name: &str) -> u32 {
    let marker = fpm.state_dir().join(name);
    fpm.write_script(&format!("{name}.php"), &php_script(&marker, "sleep(30);"))
        .expect("writing the script");
    let request = spawn_http_request(
        nginx.port(),
        "GET",
        &format!("{location}{name}.php"),
        Vec::new(),
        REQUEST_TIMEOUT,
    );
    let worker = wait_for_php_worker(&marker);
    run_kill("-9", worker);
    let (status, _) = request
        .join()
        .expect("the request thread")
        .expect("nginx answered");
    assert_eq!(status, 502);
    worker
}

#[test]
fn discovers_follows_and_verifies_real_resets_across_a_rename_rotation() {
    require_root();
    let fpm = PhpFpm::start(PhpFpmOptions {
        unix_socket: true,
        ..PhpFpmOptions::default()
    })
    .expect("starting php-fpm");
    let socket = fpm.unix_socket().expect("unix pool").to_path_buf();
    let nginx =
        Nginx::start(&[Location::php(&fpm), Location::php_unix(&fpm)]).expect("starting nginx");
    let master = nginx.master_pid();

    let instances = discover();
    let instance = instances
        .iter()
        .find(|i| i.master_pid == master)
        .unwrap_or_else(|| panic!("nginx master {master} not discovered: {instances:?}"));
    assert!(!instance.in_container, "{instance:?}");
    assert_eq!(instance.error_logs.len(), 1, "{instance:?}");
    let log = instance.error_logs[0].path.clone();
    // The harness writes `error_log DIR/error.log info;`: the file nginx really writes.
    assert_eq!(
        std::fs::read_to_string(&log).expect("reading the discovered log"),
        nginx.error_log_contents()
    );
    assert!(error_log_paths(&instances).contains(&log));
    eprintln!("discovered: {instance:?}");

    let tz = NginxTimeZone::of_process(master).expect("the zone of nginx");
    let pids = PidMap::of_master(master).expect("nginx's pids");
    let mut follower = Follower::new([log.clone()], StartAt::End, Limits::default());
    let tcp = UpstreamAddr::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, fpm.port())));
    let unix = UpstreamAddr::Unix(socket.clone());

    // A php-fpm worker on TCP killed: recv() (104), upstream fastcgi://127.0.0.1:PORT.
    kill_php_worker(&nginx, &fpm, "/php/", "tcp");
    let line = next_line(&mut follower, |p| p.is_reset());
    eprintln!("line: {}", String::from_utf8_lossy(&line));
    let p = ErrorLine::parse(&line).expect("parses");
    assert_eq!(p.verify_upstream(&tcp), UpstreamMatch::Confirmed);
    assert_eq!(p.verify_upstream(&unix), UpstreamMatch::Mismatch);
    let worker = pids.host_pid(p.pid).expect("the logged pid is nginx's");
    assert!(nginx.worker_pids().contains(&worker), "{worker}");
    assert_logged_now(&p, &tz);

    // logrotate: rename; nginx keeps writing to the renamed file until it reopens.
    std::fs::rename(&log, log.with_extension("log.1")).expect("rotating by rename");
    kill_php_worker(&nginx, &fpm, "/php-unix/", "before_reopen");
    let before = next_line(&mut follower, |p| p.is_reset());
    let p = ErrorLine::parse(&before).expect("parses");
    assert_eq!(p.verify_upstream(&unix), UpstreamMatch::Confirmed);
    assert!(
        std::fs::read(log.with_extension("log.1"))
            .expect("the renamed file")
            .ends_with(&[before.as_slice(), b"\n"].concat()),
        "the line went to the renamed file"
    );

    // postrotate: `nginx -s reopen` (USR1) makes nginx create DIR/error.log again.
    send_signal(master, libc::SIGUSR1).expect("USR1 to nginx");
    wait_until(LINE_TIMEOUT, || log.is_file().then_some(())).expect("nginx reopened its log");
    kill_php_worker(&nginx, &fpm, "/php-unix/", "after_reopen");
    let after = next_line(&mut follower, |p| p.is_reset());
    eprintln!("line after rotation: {}", String::from_utf8_lossy(&after));
    let p = ErrorLine::parse(&after).expect("parses");
    assert_eq!(p.verify_upstream(&unix), UpstreamMatch::Confirmed);
    assert_eq!(
        p.request_context().upstream,
        Some(format!("fastcgi://unix:{}:", socket.display()).as_bytes())
    );
    assert!(
        std::fs::read(&log)
            .expect("the new file")
            .ends_with(&[after.as_slice(), b"\n"].concat()),
        "the line went to the new file"
    );
}

#[test]
fn nginx_in_its_own_pid_mount_and_network_namespaces() {
    require_root();
    let dir = TempDir::new("nginx-ns").expect("temp dir");
    dir.subdir("logs", 0o755).expect("logs folder");
    let port = free_port();
    let ns = NamespacedNginx::start(
        dir.path(),
        &NamespacedNginxOptions {
            port,
            upstream_port: 9,
            upstream: None,
            tz: "Asia/Tokyo".into(),
            cri_log: None,
            log_links_to_stderr: false,
        },
    )
    .expect("nginx under unshare");
    let master = ns.master;

    let instance = wait_until(Duration::from_secs(10), || {
        discover().into_iter().find(|i| i.master_pid == master)
    })
    .expect("the namespaced master is discovered");
    eprintln!("discovered: {instance:?}");
    assert!(instance.in_container, "{instance:?}");
    assert_eq!(instance.root, PathBuf::from(format!("/proc/{master}/root")));
    let nginx_path = dir.path().join("logs/error.log");
    assert_eq!(instance.error_logs.len(), 1, "{instance:?}");
    assert_eq!(instance.error_logs[0].nginx_path, nginx_path);
    let log = instance.error_logs[0].path.clone();
    assert_eq!(
        log,
        instance
            .root
            .join(nginx_path.strip_prefix("/").expect("absolute"))
    );
    assert!(
        !nginx_path.exists(),
        "the tmpfs must be invisible from here"
    );

    // nginx's title overwrites its /proc environ, TZ included: the zone from its root's
    // /etc/localtime (UTC here) is corrected by the first live line.
    let mut tz = NginxTimeZone::of_process(master).expect("nginx's zone");
    eprintln!("zone before a line: {}", tz.source);
    let pids = PidMap::of_master(master).expect("NSpid of nginx");
    let mut follower = Follower::new([log], StartAt::Beginning, Limits::default());

    // The master logs as pid 1 of its namespace.
    let start = next_line(&mut follower, |p| p.message == b"start worker processes");
    eprintln!("line: {}", String::from_utf8_lossy(&start));
    let p = ErrorLine::parse(&start).expect("parses");
    tz.calibrate(&p.time, now_s());
    assert!(tz.source.starts_with("UTC+09:00"), "{}", tz.source);
    assert_eq!(p.pid, 1);
    assert_eq!(pids.host_pid(1), Some(master));
    // Tokyo is UTC+9: read as UTC the line would be 9 hours in the future.
    assert_logged_now(&p, &tz);

    // A worker's line: a request inside the namespace to an upstream port nobody listens on.
    let answer = ns.request("/x").expect("a request in nginx's netns");
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let refused = next_line(&mut follower, |p| p.is_refused());
    eprintln!("line: {}", String::from_utf8_lossy(&refused));
    let p = ErrorLine::parse(&refused).expect("parses");
    let upstream = UpstreamAddr::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 9)));
    assert_eq!(p.verify_upstream(&upstream), UpstreamMatch::Confirmed);
    let workers = children_of(master);
    assert_eq!(workers.len(), 1, "one worker: {workers:?}");
    assert_ne!(p.pid, workers[0], "the worker logs its namespace pid");
    assert_eq!(pids.host_pid(p.pid), Some(workers[0]));
    assert_logged_now(&p, &tz);

    drop(ns);
    assert!(!is_alive(master));
}

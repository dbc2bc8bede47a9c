//! The error.log join end to end: rsttrace against real nginx, php-fpm and a namespaced
//! nginx, each reset's `nginx` object checked against the line nginx really wrote, and the
//! lines no reset explains reported as `unexplained` — or not, when rsttrace saw the reset
//! but the filter hid it.
//!
//! Run as root, one test at a time: `cargo xtask test nginx_join`.

use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use rsttrace_tests::fixtures::{php_script, run_kill, wait_for_php_worker};
use rsttrace_tests::{
    free_port, require_root, send_signal, spawn_http_request, wait_until, KernelResetTrace,
    Location, NamespacedNginx, NamespacedNginxOptions, Nginx, PhpFpm, PhpFpmOptions, Rsttrace,
    TempDir,
};
use serde_json::Value;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than a line waits for its verdict (1.5 s) and a verdict for its line.
const JOIN_SETTLED: Duration = Duration::from_millis(2500);

/// An HTTP request in flight: (status, body) when it ends.
type Request = JoinHandle<Result<(u16, String)>>;

fn response(request: Request) -> u16 {
    request
        .join()
        .expect("the request thread panicked")
        .expect("the request to nginx failed")
        .0
}

fn pid_of(v: &Value) -> Option<u32> {
    v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

/// `kill -9 PIDS...` in one command: the workers die within microseconds of each other.
fn kill_all(pids: &[u32]) {
    let status = Command::new("kill")
        .arg("-9")
        .args(pids.iter().map(u32::to_string))
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -9 {pids:?}: {status}");
}

/// Requests to `prefix` + one script each (its own URI), held by distinct workers; returns the
/// requests and, per URI, the worker serving it.
fn concurrent_requests(
    nginx: &Nginx,
    fpm: &PhpFpm,
    prefix: &str,
    names: &[&str],
) -> Vec<(String, u32, Request)> {
    let mut out = Vec::new();
    for name in names {
        let marker = fpm.state_dir().join(format!("{name}.started"));
        fpm.write_script(&format!("{name}.php"), &php_script(&marker, "sleep(30);"))
            .expect("writing the script");
        let uri = format!("{prefix}{name}.php");
        let request = spawn_http_request(nginx.port(), "GET", &uri, Vec::new(), REQUEST_TIMEOUT);
        out.push((uri, wait_for_php_worker(&marker), request));
    }
    out
}

/// The reset whose peer is `worker`, once it is printed.
fn reset_of_worker(tool: &Rsttrace, worker: u32) -> Value {
    tool.wait_for(
        |e| e["event"] == "reset" && pid_of(&e["peer"]) == Some(worker),
        REPORT_TIMEOUT,
    )
    .unwrap_or_else(|| panic!("no reset with peer {worker}"))
}

/// Every `unexplained` line about `nginx`'s own log (another nginx on the host may have its
/// own).
fn unexplained_of(events: &[Value], nginx_log: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["event"] == "unexplained" && e["nginx"]["log_file"] == nginx_log)
        .cloned()
        .collect()
}

#[test]
fn concurrent_resets_from_one_pool_each_get_their_own_line() {
    require_root();
    let fpm = PhpFpm::start(PhpFpmOptions {
        max_children: 3,
        unix_socket: true,
        ..PhpFpmOptions::default()
    })
    .expect("starting php-fpm");
    let nginx =
        Nginx::start(&[Location::php(&fpm), Location::php_unix(&fpm)]).expect("starting nginx");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");

    for (prefix, pool) in [("/php/", "tcp"), ("/php-unix/", "unix")] {
        let names = ["alpha", "bravo", "charlie"].map(|n| format!("{pool}-{n}"));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let held = concurrent_requests(&nginx, &fpm, prefix, &names);
        let workers: Vec<u32> = held.iter().map(|(_, w, _)| *w).collect();
        let mut distinct = workers.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "three workers: {workers:?}");
        // Three resets from one pool to one upstream, within the same second of nginx's log.
        kill_all(&workers);
        let mut uris = Vec::new();
        for (uri, worker, request) in held {
            assert_eq!(response(request), 502, "{uri}");
            let needle = format!("child {worker} exited on signal 9 (SIGKILL)");
            assert!(fpm.wait_log(&needle, REPORT_TIMEOUT), "{}", fpm.log());
            uris.push((uri, worker));
        }
        for (uri, worker) in &uris {
            let line = format!("\"GET {uri} HTTP/1.0\"");
            assert!(
                nginx.wait_error_log(&line, REPORT_TIMEOUT),
                "nginx logged nothing for {uri}:\n{}",
                nginx.error_log_contents()
            );
            let event = reset_of_worker(&tool, *worker);
            eprintln!("rsttrace: {event}");
            let n = &event["nginx"];
            assert_eq!(n["request"], format!("GET {uri} HTTP/1.0"), "{event}");
            assert_eq!(n["errno"], 104, "{event}");
            assert_eq!(pid_of(&event["receiver"]), pid_of(n), "{event}");
            // The connection nginx logged is the one of this URI's request in error.log.
            let connection = n["connection"].as_u64().expect("connection");
            let logged = nginx
                .error_log_contents()
                .lines()
                .find(|l| l.contains(&line))
                .map(str::to_string)
                .unwrap_or_default();
            assert!(
                logged.contains(&format!("*{connection} recv() failed (104")),
                "{logged}\n{event}"
            );
        }
    }
    let all = tool.stop().expect("rsttrace exits 0");
    let log = nginx.error_log_path().display().to_string();
    assert_eq!(unexplained_of(&all, &log), Vec::<Value>::new());
}

#[test]
fn a_reset_hidden_by_the_filter_still_claims_its_line() {
    require_root();
    let fpm = PhpFpm::start(PhpFpmOptions::default()).expect("starting php-fpm");
    let nginx = Nginx::start(&[Location::php(&fpm)]).expect("starting nginx");
    let log = nginx.error_log_path().display().to_string();
    // Watching a program that is not involved: the reset is seen, joined, then filtered.
    let mut tool =
        Rsttrace::start(&["--pid-of", "no-such-program-here"]).expect("starting rsttrace");
    assert!(
        tool.stderr()
            .contains(&format!("following nginx error log {log}")),
        "{}",
        tool.stderr()
    );
    let marker = fpm.state_dir().join("started");
    fpm.write_script("sleep.php", &php_script(&marker, "sleep(30);"))
        .expect("writing the script");
    let request = spawn_http_request(
        nginx.port(),
        "GET",
        "/php/sleep.php",
        Vec::new(),
        REQUEST_TIMEOUT,
    );
    let worker = wait_for_php_worker(&marker);
    run_kill("-9", worker);
    assert_eq!(response(request), 502);
    assert!(
        nginx.wait_error_log("(104: Connection reset by peer)", REPORT_TIMEOUT),
        "{}",
        nginx.error_log_contents()
    );
    std::thread::sleep(JOIN_SETTLED);
    let all = tool.stop().expect("rsttrace exits 0");
    assert!(
        all.iter().all(|e| e["event"] != "reset"),
        "filtered out: {all:#?}"
    );
    assert_eq!(unexplained_of(&all, &log), Vec::<Value>::new());
    let summary = all.last().expect("a summary line");
    assert_eq!(summary["event"], "summary", "{summary}");
    assert_eq!(summary["resets"], 0, "{summary}");
}

/// A php-fpm worker killed mid-request; returns the worker and nginx's answer.
fn kill_php_worker(nginx: &Nginx, fpm: &PhpFpm, name: &str) -> u32 {
    let marker = fpm.state_dir().join(format!("{name}.started"));
    fpm.write_script(&format!("{name}.php"), &php_script(&marker, "sleep(30);"))
        .expect("writing the script");
    let uri = format!("/php/{name}.php");
    let request = spawn_http_request(nginx.port(), "GET", &uri, Vec::new(), REQUEST_TIMEOUT);
    let worker = wait_for_php_worker(&marker);
    run_kill("-9", worker);
    assert_eq!(response(request), 502);
    worker
}

/// The reset of `worker` carries the line nginx wrote for `name` into `file` (which may be a
/// renamed one).
fn assert_joined_from(tool: &Rsttrace, worker: u32, name: &str, file: &std::path::Path, log: &str) {
    let event = reset_of_worker(tool, worker);
    eprintln!("rsttrace: {event}");
    let n = &event["nginx"];
    assert_eq!(
        n["request"],
        format!("GET /php/{name}.php HTTP/1.0"),
        "{event}"
    );
    assert_eq!(n["log_file"], log, "the followed path names it: {event}");
    let connection = n["connection"].as_u64().expect("connection");
    let text = std::fs::read_to_string(file).expect("reading the log");
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("*{connection} recv() failed (104"))
                && l.contains(&format!("/php/{name}.php"))),
        "{} lacks the line:\n{text}",
        file.display()
    );
}

#[test]
fn rotation_by_rename_and_by_copytruncate_keeps_the_join() {
    require_root();
    let fpm = PhpFpm::start(PhpFpmOptions::default()).expect("starting php-fpm");
    let nginx = Nginx::start(&[Location::php(&fpm)]).expect("starting nginx");
    let path = nginx.error_log_path();
    let log = path.display().to_string();
    let mut tool = Rsttrace::start(&["--nginx-error-log", &log]).expect("starting rsttrace");

    let w = kill_php_worker(&nginx, &fpm, "before");
    assert_joined_from(&tool, w, "before", &path, &log);

    // logrotate's default: rename; nginx writes to the renamed file until it reopens.
    let renamed = path.with_extension("log.1");
    std::fs::rename(&path, &renamed).expect("renaming the log");
    let w = kill_php_worker(&nginx, &fpm, "renamed");
    assert_joined_from(&tool, w, "renamed", &renamed, &log);
    // postrotate: USR1 (nginx -s reopen) creates the file again.
    send_signal(nginx.master_pid(), libc::SIGUSR1).expect("USR1 to nginx");
    wait_until(REPORT_TIMEOUT, || path.is_file().then_some(())).expect("nginx reopened its log");
    let w = kill_php_worker(&nginx, &fpm, "reopened");
    assert_joined_from(&tool, w, "reopened", &path, &log);

    // copytruncate: copy, then cut the file nginx keeps writing (O_APPEND) to zero.
    std::fs::copy(&path, path.with_extension("log.2")).expect("copying the log");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(0))
        .expect("truncating the log");
    let w = kill_php_worker(&nginx, &fpm, "truncated");
    assert_joined_from(&tool, w, "truncated", &path, &log);

    let stderr = tool.stderr();
    assert!(stderr.contains("was rotated (renamed)"), "{stderr}");
    assert!(stderr.contains("was truncated (copytruncate)"), "{stderr}");
    let all = tool.stop().expect("rsttrace exits 0");
    assert_eq!(unexplained_of(&all, &log), Vec::<Value>::new());
}

#[test]
fn a_reset_from_before_rsttrace_attached_is_unexplained() {
    require_root();
    let fpm = PhpFpm::start(PhpFpmOptions::default()).expect("starting php-fpm");
    let nginx = Nginx::start(&[Location::php(&fpm)]).expect("starting nginx");
    let log = nginx.error_log_path().display().to_string();
    let workers = nginx.worker_pids();
    assert_eq!(workers.len(), 1, "{workers:?}");
    let nginx_worker = workers[0];
    let trace = KernelResetTrace::start().expect("starting the kernel trace");

    let marker = fpm.state_dir().join("started");
    fpm.write_script("early.php", &php_script(&marker, "sleep(30);"))
        .expect("writing the script");
    let request = spawn_http_request(
        nginx.port(),
        "GET",
        "/php/early.php",
        Vec::new(),
        REQUEST_TIMEOUT,
    );
    let worker = wait_for_php_worker(&marker);
    // nginx's worker is stopped: the RST reaches its socket now, but nginx reads it (and
    // logs it) only when it runs again — after rsttrace attached.
    send_signal(nginx_worker, libc::SIGSTOP).expect("SIGSTOP to nginx's worker");
    run_kill("-9", worker);
    let kernel = trace
        .wait_receive_reset(fpm.port(), REPORT_TIMEOUT)
        .unwrap_or_else(|| panic!("no RST reached nginx:\n{}", trace.raw()));
    eprintln!("kernel: {}", kernel.line.trim());
    assert!(
        !nginx.error_log_contents().contains("(104:"),
        "not logged yet"
    );

    // This nginx's log only: other nginx on the host (other tests) stay out of the count.
    let mut tool = Rsttrace::start(&["--nginx-error-log", &log]).expect("starting rsttrace");
    send_signal(nginx_worker, libc::SIGCONT).expect("SIGCONT to nginx's worker");
    assert_eq!(response(request), 502);
    assert!(
        nginx.wait_error_log("(104: Connection reset by peer)", REPORT_TIMEOUT),
        "{}",
        nginx.error_log_contents()
    );
    let event = tool
        .wait_for(
            |e| e["event"] == "unexplained" && e["nginx"]["log_file"] == log,
            REPORT_TIMEOUT,
        )
        .expect("an unexplained line");
    eprintln!("rsttrace: {event}");
    let n = &event["nginx"];
    assert_eq!(pid_of(n), Some(nginx_worker), "{event}");
    assert_eq!(n["errno"], 104, "{event}");
    assert_eq!(n["request"], "GET /php/early.php HTTP/1.0", "{event}");
    assert_eq!(
        n["upstream"],
        format!("fastcgi://127.0.0.1:{}", fpm.port()),
        "{event}"
    );
    assert!(event["hint"]
        .as_str()
        .is_some_and(|h| h.contains("before rsttrace attached")));
    let all = tool.stop().expect("rsttrace exits 0");
    assert!(
        all.iter()
            .all(|e| e["event"] != "reset" || pid_of(&e["receiver"]) != Some(nginx_worker)),
        "rsttrace saw no reset of nginx's: {all:#?}"
    );
    let summary = all.last().expect("a summary line");
    assert_eq!(summary["unexplained"], 1, "{summary}");
}

/// Closes each connection with SO_LINGER 0 after reading one byte of the request: a RST with
/// the rest unread (nginx: `recv() failed (104)`).
const ABORTING_UPSTREAM: &str = r#"
import socket, struct, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
while True:
    c, _ = s.accept()
    c.recv(1)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
"#;

#[test]
fn nginx_in_its_own_namespaces_and_time_zone_and_its_cri_log() {
    require_root();
    let dir = TempDir::new("nginx-ns-join").expect("temp dir");
    dir.subdir("logs", 0o755).expect("logs folder");
    let cri = dir.path().join("0.log");
    let ns = NamespacedNginx::start(
        dir.path(),
        &NamespacedNginxOptions {
            port: free_port(),
            upstream_port: free_port(),
            upstream: Some(ABORTING_UPSTREAM.into()),
            tz: "Asia/Tokyo".into(),
            cri_log: Some(cri.clone()),
            log_links_to_stderr: false,
        },
    )
    .expect("nginx under unshare");
    let log = ns.error_log_from_host();
    assert!(!ns.error_log.exists(), "the tmpfs is invisible from here");
    let workers = ns.workers();
    assert_eq!(workers.len(), 1, "{workers:?}");

    // One rsttrace finds the log itself (inside the container's root), another follows the
    // CRI file it is given, as for an nginx logging to stderr under Kubernetes.
    let mut found = Rsttrace::start(&[]).expect("starting rsttrace");
    let cri_arg = cri.display().to_string();
    let mut given = Rsttrace::start(&["--nginx-error-log", &cri_arg]).expect("starting rsttrace");
    let answer = ns.request("/ns/abort").expect("a request in its netns");
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let text = wait_until(REPORT_TIMEOUT, || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("(104: Connection reset by peer)"))
    })
    .expect("nginx logged the reset");
    // The CRI writer (a pipe away from nginx's stderr) may lag the file a little.
    let cri_text = wait_until(REPORT_TIMEOUT, || {
        std::fs::read_to_string(&cri)
            .ok()
            .filter(|t| t.contains("(104: Connection reset by peer)"))
    })
    .expect("the CRI file has the line");
    assert!(cri_text.contains(" stderr F "), "{cri_text}");

    for (tool, file) in [
        (&found, log.display().to_string()),
        (&given, cri_arg.clone()),
    ] {
        let event = tool
            .wait_for(
                |e| e["event"] == "reset" && pid_of(&e["receiver"]) == Some(workers[0]),
                REPORT_TIMEOUT,
            )
            .unwrap_or_else(|| panic!("no reset for nginx's worker {}", workers[0]));
        eprintln!("rsttrace: {event}");
        let n = &event["nginx"];
        assert_eq!(n["log_file"], file, "{event}");
        assert_eq!(event["peer"]["comm"], "python3", "{event}");
        assert_eq!(event["cause"], "abort", "{event}");
        // nginx logs the pid of its own namespace; rsttrace maps it to the receiver's.
        assert_ne!(pid_of(n), Some(workers[0]), "{event}");
        assert_eq!(n["host_pid"], workers[0], "{event}");
        let logged = format!("[error] {}#", n["pid"]);
        assert!(text.contains(&logged), "{logged} in:\n{text}");
        assert_eq!(n["request"], "GET /ns/abort HTTP/1.1", "{event}");
        // nginx wrote Tokyo's wall clock (its hidden TZ): rsttrace read it as UTC+9.
        let local = n["local_time"].as_str().unwrap_or_default();
        assert!(text.contains(local), "{local}");
        let hour = |s: &str, at: usize| s.get(at..at + 2).and_then(|h| h.parse::<i32>().ok());
        let utc = n["time"].as_str().unwrap_or_default();
        assert_eq!(
            hour(local, 11)
                .zip(hour(utc, 11))
                .map(|(l, u)| (l - u).rem_euclid(24)),
            Some(9),
            "{event}"
        );
    }
    assert!(
        found.stderr().contains("UTC+09:00"),
        "the zone nginx hides was inferred: {}",
        found.stderr()
    );
    found.stop().expect("rsttrace exits 0");
    given.stop().expect("rsttrace exits 0");
    drop(ns);
}

/// The official nginx image and ingress-nginx: `error.log` is a link to /dev/stderr, and the
/// container has its own /proc. rsttrace must not follow that link (to its own stderr, or to
/// nothing), must keep the nginx known, say what to do, and join the lines from the file
/// the stream goes to when given it.
#[test]
fn an_error_log_linked_to_stderr_is_named_and_its_cri_log_joins() {
    require_root();
    let dir = TempDir::new("nginx-ns-stderr").expect("temp dir");
    dir.subdir("logs", 0o755).expect("logs folder");
    let cri = dir.path().join("0.log");
    let ns = NamespacedNginx::start(
        dir.path(),
        &NamespacedNginxOptions {
            port: free_port(),
            upstream_port: free_port(),
            upstream: Some(ABORTING_UPSTREAM.into()),
            tz: "UTC".into(),
            cri_log: Some(cri.clone()),
            log_links_to_stderr: true,
        },
    )
    .expect("nginx under unshare");
    let workers = ns.workers();
    assert_eq!(workers.len(), 1, "{workers:?}");
    let mut found = Rsttrace::start(&[]).expect("starting rsttrace");
    let cri_arg = cri.display().to_string();
    let mut given = Rsttrace::start(&["--nginx-error-log", &cri_arg]).expect("starting rsttrace");
    let answer = ns.request("/ns/abort").expect("a request in its netns");
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let cri_text = wait_until(REPORT_TIMEOUT, || {
        std::fs::read_to_string(&cri)
            .ok()
            .filter(|t| t.contains("(104: Connection reset by peer)"))
    })
    .expect("nginx's stderr (its error.log link) reached the CRI file");
    assert!(cri_text.contains(" stderr F "), "{cri_text}");

    let event = given
        .wait_for(
            |e| e["event"] == "reset" && pid_of(&e["receiver"]) == Some(workers[0]),
            REPORT_TIMEOUT,
        )
        .unwrap_or_else(|| panic!("no reset for nginx's worker:\n{}", given.report()));
    eprintln!("rsttrace: {event}");
    assert_eq!(event["nginx"]["log_file"], cri_arg.as_str(), "{event}");
    assert_eq!(event["nginx"]["host_pid"], workers[0], "{event}");
    assert_eq!(event["cause"], "abort", "{event}");

    let note = format!(
        "nginx {}: error_log {}/logs/error.log: a link to nginx's standard error",
        ns.master,
        dir.path().display()
    );
    assert!(
        found.stderr().contains(&note),
        "{note:?} in:\n{}",
        found.stderr()
    );
    let event = found
        .wait_for(
            |e| e["event"] == "reset" && pid_of(&e["receiver"]) == Some(workers[0]),
            REPORT_TIMEOUT,
        )
        .unwrap_or_else(|| panic!("no reset for nginx's worker:\n{}", found.report()));
    let followed = event["nginx"]["log_file"].as_str().unwrap_or_default();
    assert!(
        !followed.contains("/proc/"),
        "followed a stream as a file: {event}"
    );
    found.stop().expect("rsttrace exits 0");
    given.stop().expect("rsttrace exits 0");
    drop(ns);
}

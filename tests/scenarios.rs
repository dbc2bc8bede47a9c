//! Root integration tests: real nginx in front of real php-fpm and gunicorn, an upstream
//! broken for real, the kernel's own reset checked through tracefs, then rsttrace's JSON.
//!
//! Run as root, one test at a time: `cargo xtask test` (sets RSTTRACE_BIN).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use rsttrace_tests::fixtures::{
    php_fpm_unix_behind_nginx, php_script, run_kill, wait_for_php_worker, GUNICORN_APP,
};
use rsttrace_tests::{
    free_port, http_request, is_alive, require_root, spawn_http_request, wait_for_exit, wait_until,
    Gunicorn, GunicornOptions, KernelResetTrace, Location, MemCgroup, Nginx, PhpFpm, PhpFpmOptions,
    Pm, Rsttrace, TraceEvent,
};
use serde_json::Value;

/// How long a request that the test breaks may hang at most.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the kernel and rsttrace get to report a reset that already happened.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body far larger than what an upstream reads before its app runs (gunicorn reads
/// the headers and at most a few KiB), so the upstream's receive queue holds unread data.
const BIG_BODY: usize = 1 << 20;

/// The loopback upstreams run on: 127.0.0.1, and ::1 for the IPv6 variants (nginx still
/// listens on 127.0.0.1; only its upstream connections are IPv6).
const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

const CAUSES: [&str; 9] = [
    "oom_kill",
    "signal",
    "crash",
    "exit",
    "abort",
    "no_socket",
    "kernel",
    "network",
    "unknown",
];

fn response(request: JoinHandle<Result<(u16, String)>>) -> (u16, String) {
    request
        .join()
        .expect("the request thread panicked")
        .expect("the request to nginx failed")
}

/// Ground truth: the kernel delivered a RST to a socket of the upstream's family connected to
/// `upstream` (nginx's upstream connection). Returns the tcp_receive_reset record.
fn kernel_reset_to_nginx(trace: &KernelResetTrace, upstream: SocketAddr) -> TraceEvent {
    let reset = trace
        .wait_receive_reset_from(upstream, REPORT_TIMEOUT)
        .unwrap_or_else(|| {
            panic!(
                "the kernel delivered no RST to a socket connected to {upstream}; the scenario \
                 is broken, not rsttrace. Trace:\n{}",
                trace.raw()
            )
        });
    eprintln!("kernel: {}", reset.line.trim());
    let family = if upstream.is_ipv6() {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    assert_eq!(reset.field("family"), Some(family), "{}", reset.line);
    if let Some(send) =
        trace.send_reset_for(reset.port("sport").unwrap_or_default(), upstream.port())
    {
        eprintln!("kernel: {}", send.line.trim());
    }
    reset
}

/// Ground truth from php-fpm's master: how the worker ended.
fn assert_fpm_child_exit(fpm: &PhpFpm, worker: u32, how: &str) {
    let needle = format!("child {worker} exited on {how}");
    assert!(
        fpm.wait_log(&needle, REPORT_TIMEOUT),
        "php-fpm's log lacks {needle:?}:\n{}",
        fpm.log()
    );
}

/// Ground truth from nginx: an error.log line with `needle` (the failed call and its 104)
/// naming the upstream, e.g. `recv() failed (104: Connection reset by peer) ... upstream:
/// "fastcgi://[::1]:9000"`.
fn assert_upstream_reset_logged(nginx: &Nginx, needle: &str, scheme: &str, upstream: SocketAddr) {
    let upstream = format!("upstream: \"{scheme}://{upstream}");
    let line = wait_until(REPORT_TIMEOUT, || {
        nginx
            .error_log_contents()
            .lines()
            .find(|l| l.contains(needle) && l.contains(&upstream))
            .map(str::to_string)
    })
    .unwrap_or_else(|| {
        panic!(
            "nginx's error.log has no {needle:?} line naming {upstream:?}:\n{}",
            nginx.error_log_contents()
        )
    });
    eprintln!("nginx: {line}");
}

fn assert_error_log(nginx: &Nginx, needle: &str) {
    assert!(
        nginx.wait_error_log(needle, REPORT_TIMEOUT),
        "nginx's error.log lacks {needle:?}:\n{}",
        nginx.error_log_contents()
    );
}

fn pid_of(v: &Value) -> Option<u32> {
    v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

/// Finds rsttrace's reset event for the connection the kernel reset and checks the parts of
/// the contract every event shares, its endpoints among them (as the kernel recorded them:
/// "127.0.0.1:PORT", or "[::1]:PORT" for an IPv6 connection).
fn rsttrace_reset(
    tool: &Rsttrace,
    trace: &KernelResetTrace,
    kernel: &TraceEvent,
    nginx: &Nginx,
) -> Value {
    let local_addr = kernel.local().expect("receive_reset has saddrv6 and sport");
    let remote_addr = kernel
        .remote()
        .expect("receive_reset has daddrv6 and dport");
    let (local, remote) = (local_addr.port(), remote_addr.port());
    let event = tool
        .wait_for_reset(local, remote, REPORT_TIMEOUT)
        .unwrap_or_else(|| {
            panic!(
                "rsttrace reported no reset for {local_addr} -> {remote_addr} within \
                 {REPORT_TIMEOUT:?}"
            )
        });
    eprintln!("rsttrace: {event}");

    assert_eq!(event["schema_version"], 1, "{event}");
    assert_eq!(event["transport"], "tcp", "{event}");
    assert_eq!(event["local"], local_addr.to_string(), "{event}");
    assert_eq!(event["remote"], remote_addr.to_string(), "{event}");
    let time = event["time"].as_str().unwrap_or_default();
    let unix = rfc3339_utc_seconds(time)
        .unwrap_or_else(|| panic!("time is not RFC 3339 UTC (…Z): {event}"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    assert!(
        unix.abs_diff(now) < 300,
        "time is {}s away from now (boot-relative clock?): {event}",
        i128::from(unix) - i128::from(now)
    );
    let cause = event["cause"].as_str().unwrap_or_default();
    assert!(CAUSES.contains(&cause), "unknown cause: {event}");
    assert_eq!(event["receiver"]["comm"], "nginx", "{event}");
    let receiver = pid_of(&event["receiver"]).expect("receiver.pid");
    assert!(
        nginx.worker_pids().contains(&receiver),
        "receiver.pid {receiver} is not nginx's worker {:?}: {event}",
        nginx.worker_pids()
    );
    // kernel_reason: kernels before 6.10 record none; where the kernel recorded one for this
    // reset (tcp_send_reset's reason), rsttrace must report that same name.
    let kernel_reason = trace
        .send_reset_for(local, remote)
        .and_then(|send| send.field("reason").map(str::to_string));
    if let Some(reason) = kernel_reason {
        assert_eq!(event["kernel_reason"], reason.as_str(), "{event}");
    }
    event
}

/// rsttrace joined nginx's own error.log line to the reset: written by the worker that
/// received it, about this upstream (`upstream` is how nginx writes it, up to the URI), with
/// nginx's errno; and that line is really in nginx's error.log.
fn assert_nginx_line(event: &Value, nginx: &Nginx, upstream: &str, errno: u32) {
    let line = &event["nginx"];
    assert!(line.is_object(), "no nginx line joined: {event}");
    // nginx runs in our pid namespace: the pid it logs is the receiver's.
    assert_eq!(line["pid"], event["receiver"]["pid"], "{event}");
    assert_eq!(line["host_pid"], event["receiver"]["pid"], "{event}");
    assert_eq!(line["errno"], errno, "{event}");
    let message = line["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("({errno}: ")), "{event}");
    let logged_upstream = line["upstream"].as_str().unwrap_or_default();
    assert!(logged_upstream.starts_with(upstream), "{upstream}: {event}");
    assert_eq!(line["upstream_check"], "confirmed", "{event}");
    assert_eq!(
        line["log_file"],
        nginx.error_log_path().display().to_string(),
        "{event}"
    );
    let connection = line["connection"].as_u64().expect("nginx.connection");
    let needle = format!("*{connection} {message}");
    assert!(
        nginx.error_log_contents().contains(&needle),
        "nginx's error.log lacks {needle:?}:\n{}",
        nginx.error_log_contents()
    );
}

/// The scenarios above serve nginx a 502: its recv()/writev()/connect() failed.
fn assert_seen(event: &Value) {
    assert_eq!(
        event["seen_by_receiver"], true,
        "nginx saw this reset: {event}"
    );
}

/// Seconds since the epoch of "YYYY-MM-DDTHH:MM:SS[.fraction]Z".
fn rfc3339_utc_seconds(time: &str) -> Option<u64> {
    let body = time.strip_suffix('Z')?;
    let (date, clock) = body.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let clock = clock.split('.').next()?;
    let mut clock = clock.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (clock.next()??, clock.next()??, clock.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[test]
fn rfc3339_parsing() {
    assert_eq!(rfc3339_utc_seconds("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        rfc3339_utc_seconds("2026-11-22T22:40:01.123456789Z"),
        Some(1_795_387_201)
    );
    assert_eq!(
        rfc3339_utc_seconds("2024-02-29T12:00:00Z"),
        Some(1_709_208_000)
    );
    assert_eq!(rfc3339_utc_seconds("2026-11-22T22:40:01"), None);
    assert_eq!(rfc3339_utc_seconds("2026-11-22 22:40:01Z"), None);
}

/// Stops rsttrace (clean exit required) and checks the event is among everything it printed.
fn stop_and_check(tool: &mut Rsttrace, event: &Value) {
    let all = tool.stop().expect("rsttrace must exit 0 on SIGINT");
    assert!(
        all.contains(event),
        "the event is missing from the final output"
    );
}

#[test]
fn php_fpm_tcp_worker_kill9() {
    php_fpm_tcp_worker_kill9_on(V4);
}

/// The same over IPv6: php-fpm listens on [::1], nginx has `fastcgi_pass [::1]:PORT`.
#[test]
fn php_fpm_tcp_worker_kill9_ipv6() {
    php_fpm_tcp_worker_kill9_on(V6);
}

fn php_fpm_tcp_worker_kill9_on(listen: IpAddr) {
    require_root();
    let fpm = PhpFpm::start(PhpFpmOptions {
        listen,
        ..PhpFpmOptions::default()
    })
    .expect("starting php-fpm");
    assert_eq!(fpm.addr().ip(), listen);
    let marker = fpm.state_dir().join("started");
    fpm.write_script("sleep.php", &php_script(&marker, "sleep(30);"))
        .expect("writing sleep.php");
    let nginx = Nginx::start(&[Location::php(&fpm)]).expect("starting nginx");
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");

    let request = spawn_http_request(
        nginx.port(),
        "GET",
        "/php/sleep.php",
        Vec::new(),
        REQUEST_TIMEOUT,
    );
    let worker = wait_for_php_worker(&marker);
    assert!(fpm.worker_pids().contains(&worker));
    // Why a RST: php-fpm reads the FastCGI params but not the (empty) STDIN record that nginx
    // sent with them; the dying worker's socket closes with unread data.
    let kill = run_kill("-9", worker);
    let (status, _) = response(request);
    assert_eq!(status, 502);
    assert_fpm_child_exit(&fpm, worker, "signal 9 (SIGKILL)");

    let kernel = kernel_reset_to_nginx(&trace, fpm.addr());
    assert_upstream_reset_logged(
        &nginx,
        "recv() failed (104: Connection reset by peer)",
        "fastcgi",
        fpm.addr(),
    );

    let event = rsttrace_reset(&tool, &trace, &kernel, &nginx);
    assert_eq!(event["remote"], fpm.addr().to_string(), "{event}");
    assert_eq!(event["receiver_role"], "client", "{event}");
    assert_eq!(event["cause"], "signal", "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(worker), "{event}");
    assert_eq!(event["signal"]["number"], 9, "{event}");
    assert_eq!(event["signal"]["name"], "SIGKILL", "{event}");
    assert_eq!(pid_of(&event["signal"]["sender"]), Some(kill), "{event}");
    assert_eq!(event["signal"]["sender"]["comm"], "kill", "{event}");
    assert_seen(&event);
    assert_nginx_line(
        &event,
        &nginx,
        // nginx writes the address as SocketAddr does: [::1]:PORT for IPv6.
        &format!("fastcgi://{}", fpm.addr()),
        104,
    );
    stop_and_check(&mut tool, &event);
}

#[test]
fn php_fpm_request_terminate_timeout() {
    require_root();
    let fpm = PhpFpm::start(PhpFpmOptions {
        request_terminate_timeout: Some(2),
        ..PhpFpmOptions::default()
    })
    .expect("starting php-fpm");
    let marker = fpm.state_dir().join("started");
    fpm.write_script("sleep.php", &php_script(&marker, "sleep(30);"))
        .expect("writing sleep.php");
    let nginx = Nginx::start(&[Location::php(&fpm)]).expect("starting nginx");
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");

    // Why a RST: after 2 s the master SIGTERMs the worker, which dies with nginx's unread
    // FastCGI STDIN record in its receive queue.
    let request = spawn_http_request(
        nginx.port(),
        "GET",
        "/php/sleep.php",
        Vec::new(),
        REQUEST_TIMEOUT,
    );
    let worker = wait_for_php_worker(&marker);
    let (status, _) = response(request);
    assert_eq!(status, 502);
    assert_fpm_child_exit(&fpm, worker, "signal 15 (SIGTERM)");
    assert!(
        fpm.wait_log("execution timed out", REPORT_TIMEOUT),
        "php-fpm did not report the timeout:\n{}",
        fpm.log()
    );

    let kernel = kernel_reset_to_nginx(&trace, fpm.addr());
    assert_error_log(&nginx, "(104: Connection reset by peer)");

    let event = rsttrace_reset(&tool, &trace, &kernel, &nginx);
    assert_eq!(event["cause"], "signal", "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(worker), "{event}");
    assert_eq!(event["signal"]["number"], 15, "{event}");
    assert_eq!(
        pid_of(&event["signal"]["sender"]),
        Some(fpm.master_pid()),
        "{event}"
    );
    assert_seen(&event);
    assert_nginx_line(
        &event,
        &nginx,
        &format!("fastcgi://127.0.0.1:{}", fpm.port()),
        104,
    );
    stop_and_check(&mut tool, &event);
}

#[test]
fn php_fpm_oom_in_memory_cgroup() {
    require_root();
    let cgroup = MemCgroup::create(64 << 20).expect("creating a 64 MiB memory cgroup");
    let fpm = PhpFpm::start(PhpFpmOptions {
        memory_limit: Some("-1".into()),
        cgroups: vec![cgroup.dir().to_path_buf()],
        ..PhpFpmOptions::default()
    })
    .expect("starting php-fpm in the cgroup");
    assert!(cgroup.pids().contains(&fpm.master_pid()));
    let marker = fpm.state_dir().join("started");
    let allocate = "$chunks = [];\n\
                    for ($i = 0; $i < 512; $i++) { $chunks[] = str_repeat('x', 1 << 20); }\n\
                    echo count($chunks);";
    fpm.write_script("hog.php", &php_script(&marker, allocate))
        .expect("writing hog.php");
    let nginx = Nginx::start(&[Location::php(&fpm)]).expect("starting nginx");
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    let oom_kills_before = cgroup.oom_kills().unwrap_or(0);

    // Why a RST: the worker outgrows the cgroup's 64 MiB, the OOM killer SIGKILLs it, and it
    // dies with nginx's unread FastCGI STDIN record in its receive queue.
    let request = spawn_http_request(
        nginx.port(),
        "GET",
        "/php/hog.php",
        Vec::new(),
        REQUEST_TIMEOUT,
    );
    // The worker may already be OOM-killed here: that it ran in the cgroup is shown by the
    // cgroup's oom_kill count below, and by rsttrace naming the cgroup.
    let worker = wait_for_php_worker(&marker);
    let (status, _) = response(request);
    assert_eq!(status, 502);
    assert_fpm_child_exit(&fpm, worker, "signal 9 (SIGKILL)");
    let oom_kills = cgroup.oom_kills();
    assert!(
        oom_kills.is_none_or(|n| n > oom_kills_before),
        "the cgroup's OOM kill count did not grow ({oom_kills_before} -> {oom_kills:?})"
    );

    let kernel = kernel_reset_to_nginx(&trace, fpm.addr());
    assert_error_log(&nginx, "(104: Connection reset by peer)");

    let event = rsttrace_reset(&tool, &trace, &kernel, &nginx);
    assert_eq!(event["cause"], "oom_kill", "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(worker), "{event}");
    assert_eq!(event["oom"]["scope"], "cgroup", "{event}");
    assert_eq!(event["oom"]["cgroup"], cgroup.path(), "{event}");
    assert_eq!(pid_of(&event["oom"]["victim"]), Some(worker), "{event}");
    assert_seen(&event);
    assert_nginx_line(
        &event,
        &nginx,
        &format!("fastcgi://127.0.0.1:{}", fpm.port()),
        104,
    );
    stop_and_check(&mut tool, &event);
}

/// Starts gunicorn (one worker) on `listen` and nginx (on 127.0.0.1) in front of it; returns
/// them and the worker's pid.
fn gunicorn_behind_nginx(listen: IpAddr) -> (Gunicorn, Nginx, u32) {
    let gunicorn = Gunicorn::start(
        GUNICORN_APP,
        GunicornOptions {
            listen: vec![listen],
            ..GunicornOptions::default()
        },
    )
    .expect("starting gunicorn");
    let workers = gunicorn.worker_pids();
    assert_eq!(
        workers.len(),
        1,
        "one gunicorn worker expected: {workers:?}"
    );
    let nginx = Nginx::start(&[Location::http("/py/", gunicorn.addr())]).expect("starting nginx");
    (gunicorn, nginx, workers[0])
}

#[test]
fn gunicorn_segfault() {
    require_root();
    let (gunicorn, nginx, worker) = gunicorn_behind_nginx(V4);
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");

    // Why a RST: the worker faults before reading the 1 MiB body nginx forwards, so it dies
    // with unread data in its receive queue.
    let (status, _) = http_request(
        nginx.port(),
        "POST",
        "/py/segv",
        &vec![b'x'; BIG_BODY],
        REQUEST_TIMEOUT,
    )
    .expect("POST /py/segv");
    assert_eq!(status, 502);
    assert!(
        gunicorn.wait_log(
            &format!("Worker with pid {worker} was terminated due to signal 11"),
            REPORT_TIMEOUT
        ),
        "gunicorn did not report the segfault:\n{}",
        gunicorn.log()
    );

    let kernel = kernel_reset_to_nginx(&trace, gunicorn.addr());
    assert_error_log(&nginx, "(104: Connection reset by peer)");

    let event = rsttrace_reset(&tool, &trace, &kernel, &nginx);
    assert_eq!(event["cause"], "crash", "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(worker), "{event}");
    assert_eq!(event["signal"]["number"], 11, "{event}");
    // A real fault is raised by the faulting task itself.
    if !event["signal"]["sender"].is_null() {
        assert_eq!(pid_of(&event["signal"]["sender"]), Some(worker), "{event}");
    }
    assert_seen(&event);
    assert_nginx_line(
        &event,
        &nginx,
        &format!("http://127.0.0.1:{}/py/segv", gunicorn.port()),
        104,
    );
    stop_and_check(&mut tool, &event);
}

#[test]
fn gunicorn_live_abort() {
    gunicorn_live_abort_on(V4);
}

/// The same over IPv6: gunicorn binds [::1], nginx has `proxy_pass http://[::1]:PORT`.
#[test]
fn gunicorn_live_abort_ipv6() {
    gunicorn_live_abort_on(V6);
}

fn gunicorn_live_abort_on(listen: IpAddr) {
    require_root();
    let (gunicorn, nginx, worker) = gunicorn_behind_nginx(listen);
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");

    // Why a RST: the app closes the connection (SO_LINGER 0) with the 1 MiB body unread.
    let (status, _) = http_request(
        nginx.port(),
        "POST",
        "/py/abort",
        &vec![b'x'; BIG_BODY],
        REQUEST_TIMEOUT,
    )
    .expect("POST /py/abort");
    assert_eq!(status, 502);

    let kernel = kernel_reset_to_nginx(&trace, gunicorn.addr());
    // tcp_close() (net/ipv4/tcp.c) in the worker's own close(): data was unread, so an
    // active reset instead of a FIN.
    let nginx_port = kernel.port("sport").expect("receive_reset has sport");
    let send = trace
        .send_reset_for(nginx_port, gunicorn.port())
        .unwrap_or_else(|| panic!("no tcp_send_reset for this connection:\n{}", trace.raw()));
    assert_eq!(
        send.field("reason"),
        Some("TCP_ABORT_ON_CLOSE"),
        "{}",
        send.line
    );
    assert_eq!(
        send.task_pid, worker,
        "sent in the worker's close(): {}",
        send.line
    );
    // recv() or writev(): the RST may land while nginx still sends the body.
    assert_upstream_reset_logged(
        &nginx,
        "(104: Connection reset by peer)",
        "http",
        gunicorn.addr(),
    );
    assert!(is_alive(worker), "the worker died:\n{}", gunicorn.log());
    let (status, body) = http_request(nginx.port(), "GET", "/py/pid", b"", REQUEST_TIMEOUT)
        .expect("GET /py/pid after the abort");
    assert_eq!((status, body.trim()), (200, worker.to_string().as_str()));

    let event = rsttrace_reset(&tool, &trace, &kernel, &nginx);
    assert_eq!(event["remote"], gunicorn.addr().to_string(), "{event}");
    assert_eq!(event["receiver_role"], "client", "{event}");
    assert_eq!(event["cause"], "abort", "{event}");
    assert_eq!(event["kernel_reason"], "TCP_ABORT_ON_CLOSE", "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(worker), "{event}");
    assert!(event["signal"].is_null(), "no signal is involved: {event}");
    assert_seen(&event);
    assert_nginx_line(
        &event,
        &nginx,
        &format!("http://{}/py/abort", gunicorn.addr()),
        104,
    );
    stop_and_check(&mut tool, &event);
}

#[test]
fn gunicorn_exit_3() {
    require_root();
    let (gunicorn, nginx, worker) = gunicorn_behind_nginx(V4);
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let mut tool = Rsttrace::start(&["--pid-of", "nginx"]).expect("starting rsttrace");

    // Why a RST: the worker exits before reading the 1 MiB body, so its socket is closed by
    // exit with unread data. (Exit code 3 is gunicorn's "worker failed to boot": the arbiter
    // shuts down too, which changes nothing for this connection.)
    let (status, _) = http_request(
        nginx.port(),
        "POST",
        "/py/exit3",
        &vec![b'x'; BIG_BODY],
        REQUEST_TIMEOUT,
    )
    .expect("POST /py/exit3");
    assert_eq!(status, 502);
    // gunicorn 20.1 reports exit code 3 as "Worker failed to boot." (and halts); others log
    // the code itself.
    let needles = [
        format!("Worker (pid:{worker}) exited with code 3"),
        "Reason: Worker failed to boot.".to_string(),
    ];
    assert!(
        wait_until(REPORT_TIMEOUT, || needles
            .iter()
            .any(|n| gunicorn.log().contains(n))
            .then_some(()))
        .is_some(),
        "gunicorn's log shows no exit with code 3:\n{}",
        gunicorn.log()
    );
    assert!(
        wait_for_exit(worker, REPORT_TIMEOUT),
        "the worker is still alive"
    );

    let kernel = kernel_reset_to_nginx(&trace, gunicorn.addr());
    assert_error_log(&nginx, "(104: Connection reset by peer)");

    let event = rsttrace_reset(&tool, &trace, &kernel, &nginx);
    assert_eq!(event["cause"], "exit", "{event}");
    assert_eq!(event["exit_code"], 3, "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(worker), "{event}");
    assert_seen(&event);
    assert_nginx_line(
        &event,
        &nginx,
        &format!("http://127.0.0.1:{}/py/exit3", gunicorn.port()),
        104,
    );
    stop_and_check(&mut tool, &event);
}

#[test]
fn nginx_to_closed_port() {
    require_root();
    let closed = free_port();
    let nginx = Nginx::start(&[Location::closed(closed)]).expect("starting nginx");
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let mut tool = Rsttrace::start(&["--pid-of", "nginx"]).expect("starting rsttrace");

    // Why a RST: nothing listens on the port, so the kernel answers nginx's SYN with a RST.
    let (status, _) = http_request(nginx.port(), "GET", "/closed/x", b"", REQUEST_TIMEOUT)
        .expect("GET /closed/x");
    assert_eq!(status, 502);

    let kernel = kernel_reset_to_nginx(&trace, SocketAddr::new(V4, closed));
    assert_error_log(&nginx, "(111: Connection refused)");

    let event = rsttrace_reset(&tool, &trace, &kernel, &nginx);
    assert_eq!(event["cause"], "no_socket", "{event}");
    assert_seen(&event);
    assert_nginx_line(
        &event,
        &nginx,
        &format!("http://127.0.0.1:{closed}/closed/x"),
        111,
    );
    stop_and_check(&mut tool, &event);
}

/// The harness itself, without rsttrace: every server answers through nginx (php-fpm over TCP
/// and a unix socket, static and ondemand; gunicorn). A failure here is the harness's, not the
/// tool's.
#[test]
fn harness_servers_answer_through_nginx() {
    require_root();
    for pm in [Pm::Static, Pm::Ondemand] {
        let fpm = PhpFpm::start(PhpFpmOptions {
            pm,
            max_children: 2,
            unix_socket: true,
            ..PhpFpmOptions::default()
        })
        .expect("starting php-fpm");
        fpm.write_script("pid.php", "<?php echo getmypid();")
            .expect("writing pid.php");
        let nginx =
            Nginx::start(&[Location::php(&fpm), Location::php_unix(&fpm)]).expect("starting nginx");
        for path in ["/php/pid.php", "/php-unix/pid.php"] {
            let (status, body) = http_request(nginx.port(), "GET", path, b"", REQUEST_TIMEOUT)
                .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
            assert_eq!(status, 200, "GET {path} ({pm:?}): {body}");
            let pid: u32 = body.trim().parse().expect("a pid");
            assert!(
                fpm.worker_pids().contains(&pid),
                "{path} ({pm:?}) answered from {pid}, not a worker of {:?}",
                fpm.worker_pids()
            );
        }
    }

    let (gunicorn, nginx, worker) = gunicorn_behind_nginx(V4);
    let (status, body) = http_request(nginx.port(), "POST", "/py/pid", b"hello", REQUEST_TIMEOUT)
        .expect("POST /py/pid");
    assert_eq!((status, body.trim()), (200, worker.to_string().as_str()));
    assert_eq!(gunicorn.worker_pids(), vec![worker]);
}

// ---- unix-domain upstreams (php-fpm's Debian/Ubuntu default) ------------------------------
//
// No RST exists on a unix socket and no tcp tracepoint fires: nginx's recv() failing with
// ECONNRESET is the reset. php-fpm leaves nginx's FastCGI STDIN record unread, so a worker
// that dies mid-request closes with unread data and its peer (nginx) gets ECONNRESET.

/// rsttrace's unix reset events for `path`, waiting until `pred` holds for one of them.
fn unix_reset(tool: &Rsttrace, nginx: &Nginx, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let event = tool
        .wait_for(
            |e| e["event"] == "reset" && e["transport"] == "unix" && e["remote"] == path && pred(e),
            REPORT_TIMEOUT,
        )
        .unwrap_or_else(|| panic!("rsttrace reported no matching unix reset on {path}"));
    eprintln!("rsttrace: {event}");
    assert_eq!(event["schema_version"], 1, "{event}");
    assert_eq!(event["receiver"]["comm"], "nginx", "{event}");
    let receiver = pid_of(&event["receiver"]).expect("receiver.pid");
    assert!(
        nginx.worker_pids().contains(&receiver),
        "receiver.pid {receiver} is not nginx's worker: {event}"
    );
    assert_eq!(event["seen_by_receiver"], true, "{event}");
    event
}

fn php_unix_request(
    nginx: &Nginx,
    fpm: &PhpFpm,
    script: &str,
    body: &str,
) -> (JoinHandle<Result<(u16, String)>>, u32) {
    let marker = fpm.state_dir().join(format!("{script}.started"));
    fpm.write_script(script, &php_script(&marker, body))
        .expect("writing the script");
    let request = spawn_http_request(
        nginx.port(),
        "GET",
        &format!("/php-unix/{script}"),
        Vec::new(),
        REQUEST_TIMEOUT,
    );
    (request, wait_for_php_worker(&marker))
}

#[test]
fn php_fpm_unix_worker_kill9() {
    require_root();
    let (fpm, nginx, path) = php_fpm_unix_behind_nginx(PhpFpmOptions::default());
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    let (request, worker) = php_unix_request(&nginx, &fpm, "sleep.php", "sleep(30);");
    let kill = run_kill("-9", worker);
    let (status, _) = response(request);
    assert_eq!(status, 502);
    assert_fpm_child_exit(&fpm, worker, "signal 9 (SIGKILL)");
    assert_error_log(&nginx, "(104: Connection reset by peer)");

    let event = unix_reset(&tool, &nginx, &path, |_| true);
    assert_eq!(event["cause"], "signal", "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(worker), "{event}");
    assert_eq!(event["signal"]["number"], 9, "{event}");
    assert_eq!(pid_of(&event["signal"]["sender"]), Some(kill), "{event}");
    assert_eq!(event["listener_closed"], false, "{event}");
    assert_nginx_line(&event, &nginx, &format!("fastcgi://unix:{path}:"), 104);
    stop_and_check(&mut tool, &event);
}

#[test]
fn php_fpm_unix_request_terminate_timeout() {
    require_root();
    let (fpm, nginx, path) = php_fpm_unix_behind_nginx(PhpFpmOptions {
        request_terminate_timeout: Some(2),
        ..PhpFpmOptions::default()
    });
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    let (request, worker) = php_unix_request(&nginx, &fpm, "sleep.php", "sleep(30);");
    let (status, _) = response(request);
    assert_eq!(status, 502);
    assert_fpm_child_exit(&fpm, worker, "signal 15 (SIGTERM)");

    let event = unix_reset(&tool, &nginx, &path, |_| true);
    assert_eq!(event["cause"], "signal", "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(worker), "{event}");
    assert_eq!(event["signal"]["number"], 15, "{event}");
    assert_eq!(
        pid_of(&event["signal"]["sender"]),
        Some(fpm.master_pid()),
        "the FPM master terminated the worker: {event}"
    );
    assert_nginx_line(&event, &nginx, &format!("fastcgi://unix:{path}:"), 104);
    stop_and_check(&mut tool, &event);
}

#[test]
fn php_fpm_unix_oom_in_memory_cgroup() {
    require_root();
    let cgroup = MemCgroup::create(64 << 20).expect("creating a 64 MiB memory cgroup");
    let (fpm, nginx, path) = php_fpm_unix_behind_nginx(PhpFpmOptions {
        memory_limit: Some("-1".into()),
        cgroups: vec![cgroup.dir().to_path_buf()],
        ..PhpFpmOptions::default()
    });
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    let (request, worker) = php_unix_request(
        &nginx,
        &fpm,
        "hog.php",
        "$c = []; for ($i = 0; $i < 512; $i++) { $c[] = str_repeat('x', 1 << 20); }",
    );
    let (status, _) = response(request);
    assert_eq!(status, 502);
    assert_fpm_child_exit(&fpm, worker, "signal 9 (SIGKILL)");

    let event = unix_reset(&tool, &nginx, &path, |_| true);
    assert_eq!(event["cause"], "oom_kill", "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(worker), "{event}");
    assert_eq!(event["oom"]["scope"], "cgroup", "{event}");
    assert_eq!(event["oom"]["cgroup"], cgroup.path(), "{event}");
    assert_nginx_line(&event, &nginx, &format!("fastcgi://unix:{path}:"), 104);
    stop_and_check(&mut tool, &event);
}

#[test]
fn php_fpm_unix_stopped_with_queued_requests() {
    require_root();
    // One worker, busy; the next requests wait in the listener's backlog, never accepted.
    let (fpm, nginx, path) = php_fpm_unix_behind_nginx(PhpFpmOptions::default());
    let master = fpm.master_pid();
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    let (busy, worker) = php_unix_request(&nginx, &fpm, "sleep.php", "sleep(30);");
    let queued: Vec<_> = (0..3)
        .map(|_| {
            spawn_http_request(
                nginx.port(),
                "GET",
                "/php-unix/sleep.php",
                Vec::new(),
                REQUEST_TIMEOUT,
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // What `systemctl restart php8.2-fpm` does first: SIGTERM to the master, which
    // terminates its workers and exits, closing the listener with connections queued.
    let kill = run_kill("-TERM", master);
    assert!(
        wait_for_exit(master, REPORT_TIMEOUT),
        "php-fpm's master did not exit"
    );
    for request in queued.into_iter().chain([busy]) {
        let (status, _) = response(request);
        assert_eq!(status, 502);
    }

    let closed = unix_reset(&tool, &nginx, &path, |e| e["listener_closed"] == true);
    assert_eq!(
        pid_of(&closed["peer"]),
        Some(master),
        "the listener's owner: {closed}"
    );
    assert_eq!(closed["cause"], "signal", "{closed}");
    assert_eq!(pid_of(&closed["signal"]["sender"]), Some(kill), "{closed}");
    // Verdicts of nginx's workers wait for nginx's line (up to 1.5 s): wait for all three.
    let listener_closed = |all: &[Value]| {
        all.iter()
            .filter(|e| e["transport"] == "unix" && e["listener_closed"] == true)
            .count()
    };
    let three = wait_until(REPORT_TIMEOUT, || {
        (listener_closed(&tool.events()) >= 3).then_some(())
    });
    let all = tool.events();
    assert!(three.is_some(), "one per queued request: {all:#?}");
    assert_eq!(listener_closed(&all), 3, "one per queued request: {all:#?}");
    let busy_event = unix_reset(&tool, &nginx, &path, |e| e["listener_closed"] == false);
    // nginx logged one 104 line per request; each reset carries its own.
    let unix_resets: Vec<Value> = tool
        .events()
        .into_iter()
        .filter(|e| e["event"] == "reset" && e["transport"] == "unix")
        .collect();
    let mut connections = Vec::new();
    for event in &unix_resets {
        assert_nginx_line(event, &nginx, &format!("fastcgi://unix:{path}:"), 104);
        connections.push(event["nginx"]["connection"].as_u64());
    }
    connections.sort_unstable();
    connections.dedup();
    assert_eq!(
        connections.len(),
        4,
        "four lines, one per reset: {unix_resets:#?}"
    );
    assert_eq!(pid_of(&busy_event["peer"]), Some(worker), "{busy_event}");
    assert_eq!(busy_event["cause"], "signal", "{busy_event}");
    assert_eq!(
        pid_of(&busy_event["signal"]["sender"]),
        Some(master),
        "{busy_event}"
    );
    stop_and_check(&mut tool, &closed);
}

#[test]
fn reset_after_a_complete_response_is_not_seen() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    require_root();
    // nginx cannot show this: it closes a finished upstream connection (a RST then meets
    // only a TIME_WAIT remnant, no socket) or, with upstream keepalive, reads the idle
    // connection and so sees the error. A client that got its whole response and simply
    // does not touch the socket again is the case: it is this test, talking to gunicorn.
    let (gunicorn, _nginx, worker) = gunicorn_behind_nginx(V4);
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
    let mut stream = TcpStream::connect(("127.0.0.1", gunicorn.port())).expect("connecting");
    let body = vec![b'x'; 64 << 10];
    let head = format!(
        "POST /py/late-reset HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .expect("sending the request");
    stream.write_all(&body).expect("sending the body");
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .expect("read timeout");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut buf).expect("reading the response");
        assert!(n > 0, "gunicorn closed before the whole response");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200"));
    // gunicorn aborts the connection 1 s after the response; we never read again.
    let local = stream.local_addr().expect("local address").port();
    let kernel = trace
        .wait_receive_reset(gunicorn.port(), REPORT_TIMEOUT)
        .expect("the kernel delivered no RST to the client");
    assert_eq!(kernel.port("sport"), Some(local), "{}", kernel.line);
    let event = tool
        .wait_for_reset(local, gunicorn.port(), REPORT_TIMEOUT)
        .expect("rsttrace reported no reset for the client's connection");
    eprintln!("rsttrace: {event}");
    assert_eq!(event["seen_by_receiver"], false, "{event}");
    assert_eq!(event["cause"], "abort", "{event}");
    assert_eq!(pid_of(&event["peer"]), Some(worker), "{event}");
    assert_eq!(
        pid_of(&event["receiver"]),
        Some(std::process::id()),
        "{event}"
    );
    drop(stream);
    stop_and_check(&mut tool, &event);
}

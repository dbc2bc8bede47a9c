//! Root reliability tests: clean detach, side-by-side instances, a closed output pipe, a
//! php-fpm restarted under a `--pid-of` watch. Run through `cargo xtask test`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rsttrace_tests::fixtures::{
    php_fpm_unix_behind_nginx, php_script, run_kill, wait_for_php_worker,
};
use rsttrace_tests::{
    require_root, spawn_http_request, Location, Nginx, PhpFpm, PhpFpmOptions, Rsttrace,
    RSTTRACE_BIN_ENV,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Ids of the BPF programs loaded right now (`bpftool prog show`).
fn bpf_program_ids() -> HashSet<u32> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("running bpftool (installed by cargo xtask setup)");
    assert!(out.status.success(), "bpftool prog show failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .collect()
}

/// Which of `ours` are still loaded, once the kernel has had up to a second to release them.
/// A process's last file references can be dropped after it was reaped: an exiting task's
/// fput() can no longer queue task work and goes to the delayed_fput workqueue
/// (fs/file_table.c), and a program's id lives until its last reference (a link, a map's)
/// is put (kernel/bpf/syscall.c). Seen here as one id left 1 in 3 runs, gone a moment later.
fn still_loaded(ours: &HashSet<u32>) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let left: Vec<u32> = bpf_program_ids().intersection(ours).copied().collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP reset to this process: connect to a port where nothing listens.
fn closed_port_reset() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    port
}

fn has_reset_from(events: &[Value], remote_port: u16) -> bool {
    events.iter().any(|e| {
        e["event"] == "reset"
            && e["cause"] == "no_socket"
            && e["remote"]
                .as_str()
                .is_some_and(|r| r.ends_with(&format!(":{remote_port}")))
    })
}

#[test]
fn sigint_and_sigterm_detach_every_program() {
    require_root();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let before = bpf_program_ids();
        let mut tool = Rsttrace::start(&[]).expect("starting rsttrace");
        let ours: HashSet<u32> = bpf_program_ids().difference(&before).copied().collect();
        assert!(
            ours.len() >= 9,
            "rsttrace loaded only {} programs",
            ours.len()
        );
        let port = closed_port_reset();
        assert!(
            tool.wait_for(|e| has_reset_from(std::slice::from_ref(e), port), TIMEOUT)
                .is_some(),
            "no reset reported:\n{}",
            tool.report()
        );
        tool.stop_with(signal).expect("rsttrace must exit 0");
        let left = still_loaded(&ours);
        assert!(
            left.is_empty(),
            "signal {signal} left programs {left:?} loaded"
        );
        assert!(tool.stderr().contains("detached"), "{}", tool.stderr());
    }
}

/// `--check` loads every program a run would attach through the verifier, attaches none
/// and leaves none loaded.
#[test]
fn check_loads_every_program_and_leaves_none() {
    require_root();
    let bin = std::env::var(RSTTRACE_BIN_ENV).expect("RSTTRACE_BIN (run through cargo xtask test)");
    let before = bpf_program_ids();
    let out = Command::new(&bin)
        .arg("--check")
        .output()
        .expect("running rsttrace --check");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "rsttrace --check: {out:?}");
    let line = report
        .lines()
        .find(|l| l.starts_with("programs: "))
        .unwrap_or_else(|| panic!("no `programs:` line:\n{report}"));
    let counts: Vec<u32> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        counts.len() >= 2 && counts[0] == counts[1] && counts[0] >= 12,
        "every program loads: {line}"
    );
    assert!(!report.contains("REFUSED"), "{report}");
    let left: Vec<u32> = bpf_program_ids().difference(&before).copied().collect();
    assert!(left.is_empty(), "--check left programs loaded: {left:?}");
}

/// Whoever waits for `attached` and stops rsttrace at once (a script, a unit's ExecStop)
/// must get the clean exit, never the signal's default action: the handlers are in place
/// before rsttrace says it is attached. stderr is read through a pipe, line by line, so
/// that the signal follows the word as closely as a script's would.
#[test]
fn stopped_the_moment_it_says_attached_it_exits_cleanly() {
    require_root();
    let bin = std::env::var(RSTTRACE_BIN_ENV).expect("RSTTRACE_BIN (run through cargo xtask test)");
    for round in 0..10 {
        let signal = if round % 2 == 0 {
            libc::SIGINT
        } else {
            libc::SIGTERM
        };
        let mut child = Command::new(&bin)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting rsttrace");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut said = String::new();
        loop {
            let mut line = String::new();
            let n = stderr
                .read_line(&mut line)
                .expect("reading rsttrace's stderr");
            assert!(n > 0, "rsttrace ended before attaching:\n{said}");
            said.push_str(&line);
            if line.split_whitespace().any(|w| w == "attached") {
                break;
            }
        }
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        let status = child.wait().expect("waiting for rsttrace");
        assert!(
            status.success() && rest.contains("detached"),
            "round {round}: signal {signal} right after `attached` gave {status}:\n{said}{rest}"
        );
    }
}

#[test]
fn two_instances_side_by_side_both_report() {
    require_root();
    let mut first = Rsttrace::start(&[]).expect("starting the first rsttrace");
    let mut second = Rsttrace::start(&[]).expect("starting the second rsttrace");
    let port = closed_port_reset();
    for tool in [&first, &second] {
        assert!(
            tool.wait_for(|e| has_reset_from(std::slice::from_ref(e), port), TIMEOUT)
                .is_some(),
            "an instance missed the reset:\n{}",
            tool.report()
        );
    }
    first.stop().expect("first exits 0");
    second.stop().expect("second exits 0");
}

#[test]
fn quiet_exit_when_the_reader_closes_the_pipe() {
    require_root();
    let bin = std::env::var(RSTTRACE_BIN_ENV).expect("RSTTRACE_BIN (run through cargo xtask test)");
    let mut child = Command::new(bin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting rsttrace");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    // "attached" ends start-up; what rsttrace follows is named before it.
    let mut said = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("reading stderr");
        assert!(n > 0, "rsttrace ended before attaching:\n{said}");
        said.push_str(&line);
        if line.contains("attached") {
            break;
        }
    }
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    closed_port_reset();
    let mut first = String::new();
    stdout
        .read_line(&mut first)
        .expect("reading the first line");
    assert!(first.contains("\"event\":\"reset\""), "{first}");
    drop(stdout); // the reader goes away, like `rsttrace | head -1`
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        closed_port_reset(); // something to write
        if let Some(status) = child.try_wait().expect("waiting") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "rsttrace kept running after its reader left"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut rest = String::new();
    for l in stderr.lines().map_while(Result::ok) {
        rest.push_str(&l);
        rest.push('\n');
    }
    assert_eq!(status.code(), Some(0), "stderr: {rest}");
    // Quiet: no error message (`rsttrace: error: ...`) and no panic. What rsttrace follows
    // may be named (`following nginx error log ...`).
    assert!(
        !rest.contains("panicked") && !rest.contains("error:"),
        "not quiet: {rest}"
    );
}

/// `rsttrace ... 2>&1 | head -3`: the reader of stderr goes away; rsttrace still stops with
/// 0 on its signal (eprintln! would panic on the closed pipe, exit 101).
#[test]
fn a_closed_stderr_is_no_failure() {
    require_root();
    let bin = std::env::var(RSTTRACE_BIN_ENV).expect("RSTTRACE_BIN (run through cargo xtask test)");
    let mut child = Command::new(bin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting rsttrace");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("reading stderr");
        assert!(n > 0, "rsttrace ended before attaching");
        if line.contains("attached") {
            break;
        }
    }
    drop(stderr);
    closed_port_reset();
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting") {
            break status;
        }
        assert!(Instant::now() < deadline, "rsttrace did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// `--count 1` with three resets in one batch: one line, then rsttrace stops by itself and
/// prints no reset it drains or flushes on the way out.
#[test]
fn count_prints_that_many_and_no_more() {
    require_root();
    let mut tool = Rsttrace::start(&["--count", "1"]).expect("starting rsttrace");
    let ports: Vec<u16> = (0..3).map(|_| closed_port_reset()).collect();
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline
        && tool
            .try_events()
            .map_or(true, |e| !e.iter().any(|e| e["event"] == "summary"))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = tool.stop().expect("rsttrace exits 0 by itself");
    let resets: Vec<&Value> = events.iter().filter(|e| e["event"] == "reset").collect();
    assert_eq!(resets.len(), 1, "{}", tool.report());
    assert!(
        ports.iter().any(|p| has_reset_from(&events, *p)),
        "{}",
        tool.report()
    );
    assert!(
        events.iter().any(|e| e["event"] == "summary"),
        "stopped by --count, with its summary: {}",
        tool.report()
    );
}

#[test]
fn pid_of_follows_a_restarted_php_fpm() {
    require_root();
    let old = PhpFpm::start(PhpFpmOptions::default()).expect("starting php-fpm");
    let mut tool = Rsttrace::start(&["--pid-of", "php-fpm"]).expect("starting rsttrace");
    let old_master = old.master_pid();
    drop(old); // stopped: the next master is a new process rsttrace never saw start
    let fpm = PhpFpm::start(PhpFpmOptions::default()).expect("restarting php-fpm");
    assert_ne!(fpm.master_pid(), old_master);
    let marker = fpm.state_dir().join("started");
    fpm.write_script("sleep.php", &php_script(&marker, "sleep(30);"))
        .expect("writing sleep.php");
    let nginx = Nginx::start(&[Location::php(&fpm)]).expect("starting nginx");
    let request = spawn_http_request(
        nginx.port(),
        "GET",
        "/php/sleep.php",
        Vec::new(),
        Duration::from_secs(60),
    );
    let worker = wait_for_php_worker(&marker);
    let kill = run_kill("-9", worker);
    let _ = request.join();
    let event = tool
        .wait_for(
            |e| e["event"] == "reset" && e["peer"]["pid"].as_u64() == Some(u64::from(worker)),
            TIMEOUT,
        )
        .unwrap_or_else(|| {
            panic!(
                "the new master's worker was not followed:\n{}",
                tool.report()
            )
        });
    assert_eq!(event["cause"], "signal", "{event}");
    assert_eq!(
        event["signal"]["sender"]["pid"].as_u64(),
        Some(u64::from(kill))
    );
    // The filter holds: resets between other processes are not reported.
    let port = closed_port_reset();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !has_reset_from(&tool.events(), port),
        "--pid-of let an unrelated reset through"
    );
    tool.stop().expect("rsttrace exits 0");
}

#[test]
fn worker_churn_keeps_attribution_right() {
    require_root();
    // pm.max_requests = 1: every request ends its worker and the master forks another, so
    // pids churn while rsttrace follows --pid-of php-fpm.
    let fpm = PhpFpm::start(PhpFpmOptions {
        max_children: 2,
        max_requests: Some(1),
        ..PhpFpmOptions::default()
    })
    .expect("starting php-fpm");
    fpm.write_script("quick.php", "<?php echo 'ok';")
        .expect("writing quick.php");
    let marker = fpm.state_dir().join("started");
    fpm.write_script("sleep.php", &php_script(&marker, "sleep(30);"))
        .expect("writing sleep.php");
    let nginx = Nginx::start(&[Location::php(&fpm)]).expect("starting nginx");
    let mut tool = Rsttrace::start(&["--pid-of", "php-fpm"]).expect("starting rsttrace");
    for _ in 0..60 {
        let (status, _) = rsttrace_tests::http_request(
            nginx.port(),
            "GET",
            "/php/quick.php",
            b"",
            Duration::from_secs(10),
        )
        .expect("a quick request");
        assert_eq!(status, 200);
    }
    let request = spawn_http_request(
        nginx.port(),
        "GET",
        "/php/sleep.php",
        Vec::new(),
        Duration::from_secs(60),
    );
    let worker = wait_for_php_worker(&marker);
    let kill = run_kill("-9", worker);
    let _ = request.join();
    let event = tool
        .wait_for(
            |e| e["event"] == "reset" && e["peer"]["pid"].as_u64() == Some(u64::from(worker)),
            TIMEOUT,
        )
        .unwrap_or_else(|| panic!("the killed worker's reset is missing:\n{}", tool.report()));
    assert_eq!(event["cause"], "signal", "{event}");
    assert_eq!(event["signal"]["number"], 9, "{event}");
    assert_eq!(
        event["signal"]["sender"]["pid"].as_u64(),
        Some(u64::from(kill))
    );
    // Recycled workers exit cleanly after their response: no reset may be blamed on them.
    let events = tool.events();
    let wrong: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "reset" && e["peer"]["pid"].as_u64() != Some(u64::from(worker)))
        .collect();
    assert!(
        wrong.is_empty(),
        "resets blamed on recycled workers: {wrong:#?}"
    );
    tool.stop().expect("rsttrace exits 0");
}

#[test]
fn a_full_ring_buffer_is_counted_never_silent() {
    require_root();
    // 4 KiB holds about 16 samples: a burst of refused connects overflows it.
    let mut tool = Rsttrace::start(&["--buffer-size", "4"]).expect("starting rsttrace");
    let made = 3000;
    let ports: Vec<u16> = (0..made).map(|_| closed_port_reset()).collect();
    std::thread::sleep(Duration::from_millis(1500));
    let events = tool.stop().expect("rsttrace exits 0");
    let reported = ports
        .iter()
        .filter(|p| has_reset_from(&events, **p))
        .count();
    let lost: u64 = events
        .iter()
        .filter(|e| e["event"] == "lost")
        .filter_map(|e| e["count"].as_u64())
        .sum();
    eprintln!("made {made} resets: {reported} reported, {lost} kernel samples lost");
    assert!(
        reported == made || lost > 0,
        "{} resets vanished without a lost event",
        made - reported
    );
}

#[test]
fn syscall_arguments_recorded_at_entry_work_too() {
    require_root();
    // Kernels without bpf_task_pt_regs (before 5.15) record socket syscall arguments at
    // entry; this host can read them at exit, so force the older path and check it.
    let hooks = |tool: &Rsttrace| -> u32 {
        let stderr = tool.stderr();
        stderr
            .split("attached ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no hook count in: {stderr}"))
    };
    // --syscall-hooks: the syscall tracepoints, as on kernels without sock_recv_length.
    let mut default = Rsttrace::start(&["--syscall-hooks"]).expect("starting rsttrace");
    let at_exit = hooks(&default);
    default.stop().expect("rsttrace exits 0");
    let mut tool = Rsttrace::start(&["--syscall-hooks", "--syscall-args-at-entry"])
        .expect("starting rsttrace");
    // the 8 socket syscalls' enter hooks come back
    assert_eq!(hooks(&tool), at_exit + 8, "{}", tool.stderr());
    let port = closed_port_reset();
    let event = tool
        .wait_for(|e| has_reset_from(std::slice::from_ref(e), port), TIMEOUT)
        .unwrap_or_else(|| panic!("no reset reported:\n{}", tool.report()));
    assert_eq!(event["seen_by_receiver"], true, "connect() failed: {event}");
    tool.stop().expect("rsttrace exits 0");
}

#[test]
fn without_syscall_hooks_tcp_resets_are_still_explained() {
    require_root();
    // As on a kernel without the socket tracepoints, told to attach no syscall tracepoint.
    let mut tool =
        Rsttrace::start(&["--syscall-hooks", "--no-syscall-hooks"]).expect("starting rsttrace");
    let port = closed_port_reset();
    let event = tool
        .wait_for(|e| has_reset_from(std::slice::from_ref(e), port), TIMEOUT)
        .unwrap_or_else(|| panic!("no reset reported:\n{}", tool.report()));
    assert_eq!(event["cause"], "no_socket", "{event}");
    assert!(
        event.get("seen_by_receiver").is_none(),
        "unknown without syscall hooks: {event}"
    );
    tool.stop().expect("rsttrace exits 0");
}

#[test]
fn the_syscall_hook_path_explains_unix_and_seen_resets_too() {
    require_root();
    // Kernels without sock:sock_recv_length take this path; this host can take both.
    let (fpm, nginx, path) = php_fpm_unix_behind_nginx(PhpFpmOptions::default());
    let mut tool = Rsttrace::start(&["--syscall-hooks"]).expect("starting rsttrace");
    let marker = fpm.state_dir().join("started");
    fpm.write_script("sleep.php", &php_script(&marker, "sleep(30);"))
        .expect("writing sleep.php");
    let request = spawn_http_request(
        nginx.port(),
        "GET",
        "/php-unix/sleep.php",
        Vec::new(),
        Duration::from_secs(60),
    );
    let worker = wait_for_php_worker(&marker);
    let kill = run_kill("-9", worker);
    let _ = request.join();
    let event = tool
        .wait_for(
            |e| e["event"] == "reset" && e["transport"] == "unix" && e["remote"] == path.as_str(),
            TIMEOUT,
        )
        .unwrap_or_else(|| panic!("no unix reset:\n{}", tool.report()));
    assert_eq!(event["cause"], "signal", "{event}");
    assert_eq!(
        event["peer"]["pid"].as_u64(),
        Some(u64::from(worker)),
        "{event}"
    );
    assert_eq!(
        event["signal"]["sender"]["pid"].as_u64(),
        Some(u64::from(kill))
    );
    tool.stop().expect("rsttrace exits 0");
}

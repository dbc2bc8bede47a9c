//! `--metrics` scraped by a real Prometheus server, and the `summary` event checked against
//! the lines rsttrace printed, after real resets through nginx to gunicorn.
//!
//! Run as root, one test at a time: `cargo xtask test metrics`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use rsttrace_tests::fixtures::GUNICORN_APP;
use rsttrace_tests::prometheus::Prometheus;
use rsttrace_tests::{
    free_port, http_request, require_root, send_signal, wait_until, Gunicorn, GunicornOptions,
    KernelResetTrace, Location, Nginx, Rsttrace, TempDir, RSTTRACE_BIN_ENV,
};
use serde_json::Value;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Prometheus scrapes every second; a few scrapes at most.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);
const BIG_BODY: usize = 1 << 20;

fn gunicorn_behind_nginx() -> (Gunicorn, Nginx) {
    let gunicorn =
        Gunicorn::start(GUNICORN_APP, GunicornOptions::default()).expect("starting gunicorn");
    let nginx = Nginx::start(&[Location::py(gunicorn.port())]).expect("starting nginx");
    (gunicorn, nginx)
}

/// The live abort of tests/scenarios.rs: gunicorn closes with the body unread and stays
/// alive; nginx answers 502 and logs `recv() failed (104)`.
fn abort_through_nginx(nginx: &Nginx, trace: &KernelResetTrace, gunicorn: &Gunicorn) {
    let (status, _) = http_request(
        nginx.port(),
        "POST",
        "/py/abort",
        &vec![b'x'; BIG_BODY],
        REQUEST_TIMEOUT,
    )
    .expect("POST /py/abort");
    assert_eq!(status, 502);
    assert!(
        trace
            .wait_receive_reset(gunicorn.port(), REPORT_TIMEOUT)
            .is_some(),
        "the kernel delivered no RST:\n{}",
        trace.raw()
    );
}

/// A client that reads its whole response and never touches the socket again; gunicorn
/// aborts the connection 1 s later: a reset nobody sees.
fn unseen_reset(gunicorn: &Gunicorn) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", gunicorn.port())).expect("connecting");
    stream
        .write_all(b"GET /py/late-reset HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("sending the request");
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
    stream
}

/// The value of the one series `expr` selects, once Prometheus has it equal to `want`.
fn scraped(prom: &Prometheus, expr: &str, want: &str) -> Value {
    let mut last = Vec::new();
    wait_until(SCRAPE_TIMEOUT, || {
        last = prom.query(expr).expect("querying prometheus");
        match last.as_slice() {
            [one] if one["value"][1] == want => Some(one.clone()),
            _ => None,
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "prometheus has {expr} = {last:?}, not {want}; targets: {}\n{}",
            prom.targets().unwrap_or_default(),
            prom.log()
        )
    })
}

#[test]
fn prometheus_scrapes_the_counters_and_the_summary_counts_what_was_printed() {
    require_root();
    let (gunicorn, nginx) = gunicorn_behind_nginx();
    let port = free_port();
    // Its one worker: `--pid` follows only the descendants it sees forked.
    let worker = gunicorn.worker_pids()[0].to_string();
    let mut tool = Rsttrace::start(&["--pid", &worker, "--metrics", &port.to_string()])
        .expect("starting rsttrace");
    let stderr = tool.stderr();
    assert!(
        stderr.contains(&format!(
            "serving metrics on http://127.0.0.1:{port}/metrics"
        )),
        "{stderr}"
    );
    let (status, page) =
        http_request(port, "GET", "/metrics", b"", REQUEST_TIMEOUT).expect("GET /metrics");
    assert_eq!(status, 200, "{page}");
    assert!(page.ends_with("# EOF\n"), "{page}");
    let (status, _) = http_request(port, "GET", "/nope", b"", REQUEST_TIMEOUT).expect("GET /nope");
    assert_eq!(status, 404);

    let prom = Prometheus::start(&[format!("127.0.0.1:{port}").parse().expect("address")])
        .expect("starting prometheus");
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    for _ in 0..3 {
        abort_through_nginx(&nginx, &trace, &gunicorn);
    }
    assert!(
        wait_until(REPORT_TIMEOUT, || {
            (nginx.error_log_contents().matches("(104: ").count() == 3).then_some(())
        })
        .is_some(),
        "nginx logged 3 resets:\n{}",
        nginx.error_log_contents()
    );
    let client = unseen_reset(&gunicorn);

    let seen = scraped(
        &prom,
        "rsttrace_resets_total{cause=\"abort\",transport=\"tcp\",receiver=\"nginx\",peer=\"gunicorn\",seen=\"true\"}",
        "3",
    );
    eprintln!("prometheus: {seen}");
    let unseen = scraped(
        &prom,
        "rsttrace_resets_total{cause=\"abort\",peer=\"gunicorn\",seen=\"false\"}",
        "1",
    );
    eprintln!("prometheus: {unseen}");
    scraped(&prom, "rsttrace_samples_lost_total", "0");
    scraped(&prom, "rsttrace_program_runs_skipped_total", "0");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let info = scraped(
        &prom,
        &format!("rsttrace_info{{kernel=\"{}\"}}", kernel.trim()),
        "1",
    );
    eprintln!("prometheus: {info}");
    assert!(info["metric"]["version"].is_string(), "{info}");
    drop(client);

    let all = tool.stop().expect("rsttrace exits 0");
    assert_summary_counts(&all, gunicorn.port());
}

/// The last line is the summary, and it counts exactly the lines printed before it.
fn assert_summary_counts(all: &[Value], gunicorn_port: u16) {
    let (summary, printed) = all.split_last().expect("output");
    eprintln!("rsttrace: {summary}");
    assert_eq!(summary["event"], "summary", "{summary}");
    let resets: Vec<&Value> = printed.iter().filter(|e| e["event"] == "reset").collect();
    assert_eq!(summary["resets"], resets.len(), "{summary}");
    assert_eq!(
        resets.len(),
        4,
        "three seen aborts and one unseen: {resets:#?}"
    );
    let count = |pred: &dyn Fn(&Value) -> bool| resets.iter().filter(|e| pred(e)).count();
    assert_eq!(
        summary["by_cause"]["abort"],
        count(&|e| e["cause"] == "abort")
    );
    assert_eq!(
        summary["by_peer"]["gunicorn"],
        count(&|e| e["peer"]["comm"] == "gunicorn")
    );
    assert_eq!(
        summary["by_upstream"][format!("127.0.0.1:{gunicorn_port}")],
        count(&|e| e["remote"] == format!("127.0.0.1:{gunicorn_port}"))
    );
    assert_eq!(
        summary["seen_by_receiver"]["true"],
        count(&|e| e["seen_by_receiver"] == true)
    );
    assert_eq!(
        summary["seen_by_receiver"]["false"],
        count(&|e| e["seen_by_receiver"] == false)
    );
    assert_eq!(
        summary["with_nginx_line"],
        count(&|e| e["nginx"].is_object())
    );
    assert_eq!(summary["with_nginx_line"], 3, "{summary}");
    let unexplained = printed
        .iter()
        .filter(|e| e["event"] == "unexplained")
        .count();
    assert_eq!(summary["unexplained"], unexplained, "{summary}");
    assert_eq!(summary["lost"]["samples"], 0, "{summary}");
}

/// rsttrace run by hand (the harness always asks for JSON): stdout and stderr in files.
struct Manual {
    child: std::process::Child,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
    _dir: TempDir,
}

impl Manual {
    fn start(args: &[&str]) -> Self {
        let bin = std::env::var_os(RSTTRACE_BIN_ENV).expect("RSTTRACE_BIN is set");
        let dir = TempDir::new("rsttrace-manual").expect("temp dir");
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("starting rsttrace");
        Self {
            child,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn wait(&mut self) -> Option<std::process::ExitStatus> {
        wait_until(REPORT_TIMEOUT, || self.child.try_wait().ok().flatten())
    }
}

impl Drop for Manual {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn text_summary_table_and_a_taken_metrics_port() {
    require_root();
    // Another process holds the port: rsttrace says so and exits 1 before attaching.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let taken = holder.local_addr().expect("bound").to_string();
    let mut refused = Manual::start(&["--metrics", &taken]);
    let status = refused.wait().expect("rsttrace exits");
    assert_eq!(status.code(), Some(1), "{}", refused.stderr());
    let stderr = refused.stderr();
    assert!(
        stderr.contains(&format!("--metrics {taken}: address in use")),
        "{stderr}"
    );
    assert!(!stderr.contains("attached"), "{stderr}");
    drop(holder);

    let (gunicorn, nginx) = gunicorn_behind_nginx();
    let trace = KernelResetTrace::start().expect("starting the kernel trace");
    let worker = gunicorn.worker_pids()[0].to_string();
    let mut text = Manual::start(&["--format", "text", "--pid", &worker]);
    wait_until(REPORT_TIMEOUT * 2, || {
        text.stderr().contains("attached").then_some(())
    })
    .unwrap_or_else(|| panic!("rsttrace did not attach: {}", text.stderr()));
    abort_through_nginx(&nginx, &trace, &gunicorn);
    wait_until(REPORT_TIMEOUT, || {
        text.stdout().contains(" abort ").then_some(())
    })
    .unwrap_or_else(|| panic!("no text line: {}", text.stdout()));
    send_signal(text.child.id(), libc::SIGINT).expect("SIGINT");
    let status = text.wait().expect("rsttrace exits");
    assert!(status.success(), "{}", text.stderr());
    let stdout = text.stdout();
    eprintln!("stdout:\n{stdout}");
    assert!(stdout.contains("\n    nginx: [error] *"), "{stdout}");
    assert!(
        !stdout.contains("summary"),
        "the table goes to stderr: {stdout}"
    );
    let stderr = text.stderr();
    eprintln!("stderr:\n{stderr}");
    let table = stderr
        .split_once("rsttrace: summary: 1 reset(s)")
        .map(|(_, t)| t.to_string())
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    assert_eq!(row("abort"), Some(vec!["abort", "1"]), "{table}");
    assert_eq!(row("gunicorn"), Some(vec!["gunicorn", "1"]), "{table}");
    let upstream = format!("127.0.0.1:{}", gunicorn.port());
    assert_eq!(
        row(&upstream),
        Some(vec![upstream.as_str(), "1"]),
        "{table}"
    );
}

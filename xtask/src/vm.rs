//! `cargo xtask vm-test`: rsttrace on the kernels its users run, not only on this host's.
//!
//! Fetches Debian's own kernels (12's 6.1 and the 6.12 backport, `*-amd64-unsigned`) with
//! `apt-get download`, keeps them in ~/.cache/rsttrace/vm/ (rsttrace_tests::vm::kernel),
//! builds a minimal initramfs (busybox, rsttrace, the `rsttrace-vm-scenarios` binary and the
//! glibc they link; rsttrace_tests::vm::initramfs) and boots each kernel under qemu (TCG: KVM guests hang on these machines). The guest's
//! /init prints `rsttrace --check`, runs the scenarios (real resets on loopback, rsttrace's JSON
//! checked) and powers off. The same scenarios also run directly on the host kernel. Prints a
//! kernel x scenario matrix and each kernel's `--check`; fails if anything failed.
//!
//! `RSTTRACE_VM_KERNELS=host,6.1,6.12` picks the columns (default: all);
//! `RSTTRACE_VM_TIMEOUT=SECS` bounds each boot (default 600);
//! `RSTTRACE_VM_BIN=PATH` tests that rsttrace binary instead of building target/debug/rsttrace
//! (a release build, a candidate fix built elsewhere). Console logs: target/vm/.
pub mod service;

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use rsttrace_tests::vm::{
    initramfs,
    kernel::{self, Kernel, Series, SERIES},
};

use crate::{build, cargo, display, libc_geteuid, run_checked, workspace_root};

const SCENARIOS_BIN: &str = "rsttrace-vm-scenarios";
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// The host run: the scenarios bound their own waits; this only catches a hang.
const HOST_TIMEOUT: Duration = Duration::from_secs(600);
/// Console lines kept to show when a guest fails or hangs.
const TAIL_LINES: usize = 60;

/// The guest's /init: mounts what rsttrace needs, prints `rsttrace --check`, runs the
/// scenarios and powers off. Console lines prefixed `vm: ` are read by xtask.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing || echo "vm: could not mount tracefs"
mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "vm: could not mount cgroup2"
ip link set lo up || ifconfig lo 127.0.0.1 up
# Keep kernel messages (OOM reports...) from splitting the result lines; shown on failure.
dmesg -n 1
btf=no; [ -e /sys/kernel/btf/vmlinux ] && btf=yes
echo "vm: kernel $(uname -r), $(nproc) cpu(s), BTF $btf"
echo "vm: check begin"
/rsttrace --check 2>&1
echo "vm: check end (exit $?)"
/rsttrace-vm-scenarios --rsttrace /rsttrace
rc=$?
if [ "$rc" != 0 ]; then
    dmesg | tail -n 60 | sed 's/^/vm: dmesg: /'
fi
echo "vm: done (exit $rc)"
poweroff -f
"#;

/// What one column of the matrix produced.
struct Run {
    label: String,
    /// `uname -r` of the kernel the scenarios ran on.
    release: String,
    check: Vec<String>,
    /// scenario -> Ok(pass note) / Err(why)
    results: BTreeMap<String, Result<String, String>>,
    /// `init: success|failure` seen.
    init: Option<bool>,
    /// Did not finish properly: timeout, qemu error, guest crashed.
    problem: Option<String>,
    console_tail: Vec<String>,
    log: PathBuf,
    secs: f64,
}

impl Run {
    fn failed(&self, scenarios: &[String]) -> bool {
        self.problem.is_some()
            || self.init != Some(true)
            || scenarios
                .iter()
                .any(|s| !matches!(self.results.get(s), Some(Ok(_))))
    }
}

pub fn vm_test() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("vm-test runs the scenarios on the host too (eBPF, memory cgroups) and apt-get: run it as root");
    }
    let started = Instant::now();
    let wanted = wanted_columns();
    let out_dir = workspace_root().join("target").join("vm");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut timings: Vec<(String, f64)> = Vec::new();

    // Binaries: rsttrace as the integration tests use it (debug) and the guest workload.
    let t = Instant::now();
    let built = build(false)?;
    let rsttrace = match std::env::var_os("RSTTRACE_VM_BIN") {
        Some(bin) => {
            let bin = PathBuf::from(bin);
            if !bin.is_file() {
                bail!("RSTTRACE_VM_BIN={} is not a file", bin.display());
            }
            eprintln!("xtask: vm: testing {} (RSTTRACE_VM_BIN)", bin.display());
            bin
        }
        None => built.clone(),
    };
    run_checked(cargo().args([
        "build",
        "--package",
        "rsttrace-tests",
        "--bin",
        SCENARIOS_BIN,
    ]))?;
    let scenarios_bin = built
        .parent()
        .context("rsttrace's binary has no folder")?
        .join(SCENARIOS_BIN);
    timings.push(("build rsttrace + scenarios".into(), secs(t)));
    let mut scenarios = list_scenarios(&scenarios_bin)?;
    scenarios.push("clean_stop".into());

    let mut runs = Vec::new();
    if wanted.iter().any(|w| w == "host") {
        let run = run_host(&rsttrace, &scenarios_bin, &out_dir)?;
        timings.push(("host: scenarios".into(), run.secs));
        runs.push(run);
    }

    let series: Vec<&Series> = SERIES
        .iter()
        .filter(|s| wanted.iter().any(|w| w == s.label))
        .collect();
    if !series.is_empty() {
        qemu_present()?;
        let mut kernels = Vec::new();
        for s in &series {
            let t = Instant::now();
            kernels.push(kernel::fetch(s)?);
            timings.push((format!("{}: fetch kernel", s.label), secs(t)));
        }
        let t = Instant::now();
        let initrd = initramfs::build(
            &out_dir,
            &initramfs::Contents {
                init: INIT,
                programs: &[
                    ("rsttrace", rsttrace.as_path()),
                    ("rsttrace-vm-scenarios", scenarios_bin.as_path()),
                ],
                files: &[],
            },
        )?;
        timings.push(("build initramfs".into(), secs(t)));
        let timeout = boot_timeout();
        for kernel in &kernels {
            let run = boot(kernel, &initrd, &out_dir, timeout)?;
            timings.push((format!("{}: boot + scenarios", kernel.label), run.secs));
            runs.push(run);
        }
    }

    report(&runs, &scenarios, &timings, secs(started));
    // The closing line CI reads: every kernel x scenario cell, counted.
    let cells = runs
        .iter()
        .flat_map(|r| scenarios.iter().map(move |s| r.results.get(s)));
    let (passed, failed_cells) = cells.fold((0, 0), |(p, f), cell| match cell {
        Some(Ok(_)) => (p + 1, f),
        _ => (p, f + 1),
    });
    println!("vm-test: {passed} passed, {failed_cells} failed");
    let failed: Vec<&str> = runs
        .iter()
        .filter(|r| r.failed(&scenarios))
        .map(|r| r.label.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "vm-test failed on: {} (details above; full console logs in {})",
            failed.join(", "),
            out_dir.display()
        );
    }
    Ok(())
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

fn wanted_columns() -> Vec<String> {
    match std::env::var("RSTTRACE_VM_KERNELS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => std::iter::once("host")
            .chain(SERIES.iter().map(|s| s.label))
            .map(String::from)
            .collect(),
    }
}

fn boot_timeout() -> Duration {
    std::env::var("RSTTRACE_VM_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map_or(DEFAULT_BOOT_TIMEOUT, Duration::from_secs)
}

fn list_scenarios(bin: &Path) -> Result<Vec<String>> {
    let out = Command::new(bin)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", bin.display()))?;
    if !out.status.success() {
        bail!("{} --list failed ({})", bin.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

fn qemu_present() -> Result<()> {
    match Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        _ => bail!(
            "qemu-system-x86_64 is missing: run `cargo xtask setup` (or apt-get install qemu-system-x86)"
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Running the scenarios: in a guest, or on the host

fn boot(kernel: &Kernel, initrd: &Path, out_dir: &Path, timeout: Duration) -> Result<Run> {
    let log = out_dir.join(format!("console-{}.log", kernel.label));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "1024"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init"]);
    eprintln!(
        "xtask: vm: booting {} ({}), console in {}",
        kernel.label,
        kernel.package,
        log.display()
    );
    eprintln!("xtask: $ {}", display(&cmd));
    let console = run_console(cmd, kernel.label, &log, timeout)?;
    Ok(parse_run(kernel.label, console, log))
}

fn run_host(rsttrace: &Path, scenarios_bin: &Path, out_dir: &Path) -> Result<Run> {
    let log = out_dir.join("console-host.log");
    let check = Command::new(rsttrace)
        .arg("--check")
        .output()
        .with_context(|| format!("running {} --check", rsttrace.display()))?;
    let mut lines = vec!["vm: check begin".to_string()];
    lines.extend(
        String::from_utf8_lossy(&check.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&check.stderr).lines())
            .map(String::from),
    );
    lines.push(format!(
        "vm: check end (exit {})",
        check.status.code().unwrap_or(-1)
    ));
    let mut cmd = Command::new(scenarios_bin);
    cmd.arg("--rsttrace").arg(rsttrace);
    eprintln!("xtask: vm: scenarios on the host kernel");
    eprintln!("xtask: $ {}", display(&cmd));
    let mut console = run_console(cmd, "host", &log, HOST_TIMEOUT)?;
    lines.append(&mut console.lines);
    console.lines = lines;
    let mut run = parse_run("host", console, log);
    run.release = kernel_release();
    Ok(run)
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

struct Console {
    lines: Vec<String>,
    timed_out: bool,
    status: Option<std::process::ExitStatus>,
    stderr: String,
    secs: f64,
}

/// Runs `cmd`, reading its stdout line by line (also into `log`) until it exits or `timeout`
/// passes (then it is killed). Result lines are echoed as they come, prefixed with `label`.
fn run_console(mut cmd: Command, label: &str, log: &Path, timeout: Duration) -> Result<Console> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", display(&cmd)))?;
    let mut log_file =
        fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let _ = log_file.write_all(&buf);
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\n', '\r'])
                .replace('\r', "");
            buf.clear();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let deadline = started + timeout;
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                if is_result_line(&line) && !line.starts_with("vm: dmesg: ") {
                    eprintln!("[{label}] {line}");
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    timed_out = true;
                    break;
                }
            }
        }
    }
    if timed_out {
        let _ = child.kill();
    }
    let status = wait_bounded(&mut child, Duration::from_secs(30));
    let _ = reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Console {
        lines,
        timed_out,
        status,
        stderr,
        secs: secs(started),
    })
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                return child.wait().ok();
            }
        }
    }
}

fn is_result_line(line: &str) -> bool {
    line.starts_with("scenario ")
        || line.starts_with("init: ")
        || line.starts_with("vm: ")
        || line.starts_with("vm-scenarios: ")
}

fn parse_run(label: &str, console: Console, log: PathBuf) -> Run {
    let mut run = Run {
        label: label.to_string(),
        release: String::new(),
        check: Vec::new(),
        results: BTreeMap::new(),
        init: None,
        problem: None,
        console_tail: Vec::new(),
        log,
        secs: console.secs,
    };
    let mut in_check = false;
    for line in &console.lines {
        if line == "vm: check begin" {
            in_check = true;
        } else if let Some(end) = line.strip_prefix("vm: check end") {
            in_check = false;
            run.check.push(format!("(--check{end})"));
        } else if in_check {
            run.check.push(line.clone());
        } else if let Some(rest) = line.strip_prefix("vm: kernel ") {
            run.release = rest.split(',').next().unwrap_or_default().to_string();
        } else if let Some(rest) = line.strip_prefix("scenario ") {
            if let Some((name, outcome)) = rest.split_once(": ") {
                let result = match outcome.strip_prefix("fail: ") {
                    Some(why) => Err(why.to_string()),
                    None if outcome.starts_with("pass") => Ok(outcome.to_string()),
                    None => Err(outcome.to_string()),
                };
                run.results.insert(name.to_string(), result);
            }
        } else if let Some(rest) = line.strip_prefix("init: ") {
            run.init = Some(rest.trim() == "success");
        }
    }
    run.console_tail = console.lines[console.lines.len().saturating_sub(TAIL_LINES)..].to_vec();
    // Every program must pass each kernel's verifier: a refused one would only cost its
    // evidence at run time, silently to the scenarios that do not need it.
    let refused: Vec<&str> = run
        .check
        .iter()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("REFUSED") || l.starts_with("programs: do not load")
        })
        .map(|l| l.trim())
        .collect();
    if !refused.is_empty() {
        run.problem = Some(format!(
            "rsttrace --check: this kernel refuses a program: {}",
            refused.join("; ")
        ));
    } else if console.timed_out {
        run.problem = Some(format!(
            "no result within {:.0} s: killed (guest hung or too slow; RSTTRACE_VM_TIMEOUT raises the limit)",
            console.secs
        ));
    } else if run.init.is_none() {
        let status = console
            .status
            .map_or_else(|| "unknown".to_string(), |s| s.to_string());
        let stderr = console.stderr.trim();
        run.problem = Some(format!(
            "finished ({status}) without an `init:` result line{}",
            if stderr.is_empty() {
                String::new()
            } else {
                format!("; stderr: {stderr}")
            }
        ));
    }
    run
}

// ---------------------------------------------------------------------------------------
// Report

fn report(runs: &[Run], scenarios: &[String], timings: &[(String, f64)], total: f64) {
    if runs.is_empty() {
        eprintln!("xtask: vm: nothing selected (RSTTRACE_VM_KERNELS)");
        return;
    }
    let width = scenarios.iter().map(String::len).max().unwrap_or(8).max(8) + 2;
    let headers: Vec<String> = runs
        .iter()
        .map(|r| {
            if r.release.is_empty() {
                r.label.clone()
            } else {
                format!("{} ({})", r.label, r.release)
            }
        })
        .collect();
    let col = headers.iter().map(String::len).max().unwrap_or(8) + 2;
    let mut out = String::new();
    out.push_str("\n=== rsttrace vm-test: kernel x scenario\n");
    out.push_str(&format!("{:width$}", "scenario"));
    for h in &headers {
        out.push_str(&format!("{h:col$}"));
    }
    out.push('\n');
    for scenario in scenarios {
        out.push_str(&format!("{scenario:width$}"));
        for run in runs {
            let cell = match run.results.get(scenario) {
                Some(Ok(_)) => "pass",
                Some(Err(_)) => "FAIL",
                None => "not run",
            };
            out.push_str(&format!("{cell:col$}"));
        }
        out.push('\n');
    }
    out.push_str(&format!("{:width$}", "overall"));
    for run in runs {
        let cell = if run.failed(scenarios) { "FAIL" } else { "ok" };
        out.push_str(&format!("{cell:col$}"));
    }
    out.push('\n');

    for run in runs {
        out.push_str(&format!("\n=== {}: rsttrace --check\n", headers_of(run)));
        if run.check.is_empty() {
            out.push_str("(no --check output)\n");
        }
        for line in &run.check {
            out.push_str(&format!("  {line}\n"));
        }
    }

    for run in runs.iter().filter(|r| r.failed(scenarios)) {
        out.push_str(&format!("\n=== {}: failures\n", headers_of(run)));
        if let Some(problem) = &run.problem {
            out.push_str(&format!("  {problem}\n"));
        }
        // The same reason for several scenarios (rsttrace did not start) is shown once.
        let mut reasons: Vec<(Vec<&str>, &str)> = Vec::new();
        for (name, result) in &run.results {
            if let Err(why) = result {
                match reasons.iter_mut().find(|(_, w)| *w == why.as_str()) {
                    Some((names, _)) => names.push(name),
                    None => reasons.push((vec![name], why)),
                }
            }
        }
        for (names, why) in reasons {
            out.push_str(&format!("  {}: {}\n", names.join(", "), abbreviate(why)));
        }
        for name in scenarios.iter().filter(|s| !run.results.contains_key(*s)) {
            out.push_str(&format!("  {name}: no result line\n"));
        }
        out.push_str(&format!(
            "  console tail ({} lines; all in {}):\n",
            run.console_tail.len(),
            run.log.display()
        ));
        for line in &run.console_tail {
            out.push_str(&format!("  | {line}\n"));
        }
    }

    out.push_str("\n=== timings\n");
    for (what, s) in timings {
        out.push_str(&format!("  {what:32}{s:8.1} s\n"));
    }
    out.push_str(&format!("  {:32}{total:8.1} s\n", "total"));
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// Long reasons (a verifier log) keep their start (which program) and their end (the
/// verifier's complaint); the console log has them whole.
fn abbreviate(why: &str) -> String {
    const HEAD: usize = 400;
    const TAIL: usize = 1200;
    let chars: Vec<char> = why.chars().collect();
    if chars.len() <= HEAD + TAIL + 100 {
        return why.to_string();
    }
    let head: String = chars[..HEAD].iter().collect();
    let tail: String = chars[chars.len() - TAIL..].iter().collect();
    format!(
        "{head} [... {} characters cut ...] {tail}",
        chars.len() - HEAD - TAIL
    )
}

fn headers_of(run: &Run) -> String {
    if run.release.is_empty() {
        run.label.clone()
    } else {
        format!("{} ({})", run.label, run.release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(lines: &[&str]) -> Console {
        Console {
            lines: lines.iter().map(|l| l.to_string()).collect(),
            timed_out: false,
            status: None,
            stderr: String::new(),
            secs: 1.0,
        }
    }

    #[test]
    fn a_program_the_kernel_refuses_fails_the_run_though_every_scenario_passed() {
        let refused = parse_run(
            "6.1",
            console(&[
                "vm: check begin",
                "  ok       raw sock:inet_sk_error_report            connections refused",
                "  REFUSED  cgroup_skb/ingress (root cgroup)         loading the cgroup_skb ingress program: the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). verifier: unknown func bpf_get_current_pid_tgid#14",
                "vm: check end (exit 0)",
                "scenario tcp_abort: pass (0.1 s)",
                "init: success",
            ]),
            PathBuf::from("console-6.1.log"),
        );
        assert!(
            refused
                .problem
                .as_deref()
                .is_some_and(|p| p.contains("unknown func")),
            "{:?}",
            refused.problem
        );
        let clean = parse_run(
            "6.1",
            console(&[
                "vm: check begin",
                "  ok       raw sock:inet_sk_error_report            connections refused",
                "vm: check end (exit 0)",
                "scenario tcp_abort: pass (0.1 s)",
                "init: success",
            ]),
            PathBuf::from("console-6.1.log"),
        );
        assert_eq!(clean.problem, None);
    }
}

//! `cargo xtask bench`: rsttrace's overhead, each figure a ratio measured side by side in
//! the same run (absolute times are context only):
//!
//! 1. reset storm: a loopback reset generator's rate with rsttrace attached / with nothing
//!    attached, the same for a bpftrace baseline, and resets reported / resets made;
//! 2. steady load: wrk through nginx to php-fpm (TCP and unix pools) and gunicorn, req/s with
//!    rsttrace / without;
//! 3. start-up: spawn to "attached" for rsttrace, next to bpftrace's;
//! 4. rsttrace's peak RSS during the storm, and the latency from a reset to its JSON line.
//!
//! Runs alternate (no tracer, rsttrace, bpftrace, in an order rotating each round) and
//! medians are taken, because the machine is small and noisy.

mod load;
mod stats;
mod storm;
mod tracers;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use stats::{endpoint_port, median, parse_rfc3339_utc, percentile};
use storm::{Outcome, Plan};
use tracers::{FileTracer, Proc, BPFTRACE_SCRIPT, STOP_TIMEOUT};

const TARGET_STORM_RATIO: f64 = 0.90;
const TARGET_LOAD_RATIO: f64 = 0.99;
const TARGET_STARTUP_S: f64 = 0.15;
const TARGET_RSS_MB: f64 = 30.0;
const TARGET_P99_MS: f64 = 50.0;

/// Paced latency run: one reset every 5 ms for 5 s (1000 samples).
const PACED_INTERVAL: Duration = Duration::from_millis(5);
const PACED_SECS: u64 = 5;
/// Latency under the storm (context): 2 s at full speed.
const STORM_LATENCY_SECS: u64 = 2;
/// How long to wait for rsttrace's last lines after the generator stopped.
const CATCH_UP: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Storm rounds; each runs the generator alone, under rsttrace and under bpftrace, in an
    /// order that rotates every round.
    #[arg(long, default_value_t = 5)]
    pub storm_rounds: u32,
    /// Length of each storm run, in seconds.
    #[arg(long, default_value_t = 3)]
    pub storm_secs: u64,
    /// Upper bound of resets per storm run.
    #[arg(long, default_value_t = 2_000_000)]
    pub storm_max_resets: u64,
    /// CPU the storm generator is pinned to.
    #[arg(long, default_value_t = 0)]
    pub storm_cpu: usize,
    /// Let the scheduler place the storm generator anywhere.
    #[arg(long)]
    pub no_pin: bool,
    /// Steady-load rounds (each: one run without rsttrace, one with).
    #[arg(long, default_value_t = 3)]
    pub load_rounds: u32,
    /// Length of each wrk run, in seconds.
    #[arg(long, default_value_t = 5)]
    pub load_secs: u32,
    /// Start-up measurements per tracer.
    #[arg(long, default_value_t = 7)]
    pub startup_runs: u32,
    /// Where to write the figures as JSON [default: target/bench/bench.json].
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// An extra argument for every rsttrace run (repeatable), e.g.
    /// `--rsttrace-arg=--no-syscall-hooks` to measure that mode.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub rsttrace_arg: Vec<String>,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let _ = tracers::RSTTRACE_EXTRA_ARGS.set(args.rsttrace_arg.clone());
    for (name, v) in [
        ("--storm-rounds", u64::from(args.storm_rounds)),
        ("--storm-secs", args.storm_secs),
        ("--storm-max-resets", args.storm_max_resets),
        ("--load-rounds", u64::from(args.load_rounds)),
        ("--load-secs", u64::from(args.load_secs)),
        ("--startup-runs", u64::from(args.startup_runs)),
    ] {
        if v == 0 {
            bail!("{name} must be at least 1");
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark attaches eBPF programs and starts servers: run `cargo xtask bench` as root");
    }
    crate::setup::setup()?;
    let bin = crate::build(true)?;
    let out_dir = crate::workspace_root().join("target").join("bench");
    let tmp = out_dir.join("tmp");
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let script = out_dir.join("resets.bt");
    fs::write(&script, BPFTRACE_SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    let started = Instant::now();

    eprintln!("bench: start-up ({} runs each)", args.startup_runs);
    let startup = startup(&bin, &script, args.startup_runs)?;
    eprintln!(
        "bench: reset storm ({} rounds x {} s x 3 modes)",
        args.storm_rounds, args.storm_secs
    );
    let storm = storm_rounds(&bin, &script, &tmp, args)?;
    eprintln!("bench: reset-to-line latency");
    let cpu = (!args.no_pin).then_some(args.storm_cpu);
    let paced = latency_run(
        &bin,
        &tmp,
        &Plan {
            max_resets: PACED_SECS * 1_000_000 / PACED_INTERVAL.as_micros() as u64,
            max_time: Duration::from_secs(PACED_SECS + 5),
            interval: Some(PACED_INTERVAL),
            record: true,
            cpu,
        },
    )?;
    let stormy = latency_run(
        &bin,
        &tmp,
        &Plan {
            max_resets: args.storm_max_resets,
            max_time: Duration::from_secs(STORM_LATENCY_SECS),
            interval: None,
            record: true,
            cpu,
        },
    )?;
    eprintln!(
        "bench: steady load ({} rounds x {} s, with and without rsttrace)",
        args.load_rounds, args.load_secs
    );
    let load = steady_load(&bin, &tmp, args)?;

    let report = Report {
        startup,
        storm,
        paced,
        stormy,
        load,
    };
    let machine = machine();
    let rows = report.rows();
    let table = render_table(&rows, &machine, args);
    println!("{table}");
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| out_dir.join("bench.json"));
    let doc = json!({
        "machine": machine.json(),
        "settings": {
            "storm_rounds": args.storm_rounds,
            "storm_secs": args.storm_secs,
            "storm_max_resets": args.storm_max_resets,
            "storm_cpu": cpu,
            "load_rounds": args.load_rounds,
            "load_secs": args.load_secs,
            "wrk_connections": load::WRK_CONNECTIONS,
            "startup_runs": args.startup_runs,
            "paced_interval_ms": PACED_INTERVAL.as_secs_f64() * 1e3,
        },
        "figures": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "raw": report.raw(),
        "methods": METHODS,
        "duration_s": started.elapsed().as_secs_f64(),
    });
    if let Some(parent) = json_path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(&doc).context("encoding the results")?;
    fs::write(&json_path, text + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let _ = fs::remove_dir_all(&tmp);
    eprintln!(
        "bench: wrote {} ({:.0} s in all)",
        json_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

const METHODS: &[&str] = &[
    "Ratios are taken side by side in this one invocation: each round runs every mode (no tracer, rsttrace, bpftrace; with and without rsttrace for steady load) in an order that rotates every round, and a figure is the median over rounds of (rate under the tracer / rate with no tracer in the same round). The absolute rates shown are medians per mode, context only.",
    "Reset storm: one thread (pinned) connects to a 127.0.0.1 listener, accepts, writes 1 byte, sets SO_LINGER 0 on the accepted socket and closes it with the byte unread (kernel RST, TCP_ABORT_ON_CLOSE); a reset counts as made only when the client's read fails with ECONNRESET. rsttrace runs unfiltered with --format json to a file; bpftrace prints pid/comm/ports/reason of tcp_receive_reset and tcp_send_reset to a file. Reported = rsttrace reset lines whose remote port is the generator's listener; lost = sum of its lost events.",
    "Steady load: wrk -t1 -c8 for each run through nginx (one worker, no upstream keepalive: one upstream connection per request) to php-fpm (static, 2 workers; TCP and unix pools) and gunicorn (2 sync workers); rsttrace unfiltered, --format json to a file.",
    "Start-up: wall time from spawn() to the moment the bench reads rsttrace's `attached` line on its stderr pipe (all hooks attached, reporting); for bpftrace, to its BEGIN printf line on stdout (printed after `Attaching N probes...` once every probe is attached).",
    "Peak RSS: VmHWM of rsttrace from /proc/PID/status, read right after each storm run and before stopping it; the maximum over runs.",
    "Reset-to-line latency: the generator stamps CLOCK_REALTIME just before the close() that sends each RST and notes the client port; the bench reads rsttrace's stdout pipe on its own thread and stamps CLOCK_REALTIME when each line arrives; latency = arrival - abort, matched by client port (and nearest kernel time, so reused ports cannot mix). Both stamps come from the same clock in processes on the same host, so no clock conversion is involved; the abort stamp precedes the kernel's reset by the close() syscall (microseconds), which makes the figure slightly pessimistic. As a cross-check, rsttrace's own `time` (the kernel's timestamp of the reset) is compared with the abort stamp (`kernel - abort` should be microseconds). The target applies to the paced run (one reset every 5 ms); the storm figure is context.",
];

// ---------------------------------------------------------------- start-up

struct Startup {
    rsttrace_s: Vec<f64>,
    rsttrace_self_ms: Vec<f64>,
    bpftrace_s: Vec<f64>,
}

fn startup(bin: &Path, script: &Path, runs: u32) -> Result<Startup> {
    let mut s = Startup {
        rsttrace_s: Vec::new(),
        rsttrace_self_ms: Vec::new(),
        bpftrace_s: Vec::new(),
    };
    for i in 0..runs {
        // Alternate which one goes first.
        let rst_first = i % 2 == 0;
        for turn in 0..2 {
            if (turn == 0) == rst_first {
                let r = tracers::startup_rsttrace(bin)?;
                s.rsttrace_s.push(r.wall.as_secs_f64());
                s.rsttrace_self_ms.extend(r.self_reported_ready_ms);
            } else {
                s.bpftrace_s
                    .push(tracers::startup_bpftrace(script)?.as_secs_f64());
            }
        }
    }
    Ok(s)
}

// ---------------------------------------------------------------- storm

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Rsttrace,
    Bpftrace,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Rsttrace => "rsttrace",
            Mode::Bpftrace => "bpftrace",
        }
    }
}

struct StormRun {
    round: u32,
    mode: Mode,
    made: u64,
    unexpected: u64,
    elapsed_s: f64,
    rate: f64,
    /// rsttrace: reset lines for the generator's listener; bpftrace: receive lines for it.
    reported: Option<u64>,
    /// rsttrace: of those, attributed as `abort` with receiver and peer = the generator.
    attributed: Option<u64>,
    lost: Option<u64>,
    peak_rss_bytes: Option<u64>,
    tracer_cpu_s: Option<f64>,
}

impl StormRun {
    fn json(&self) -> Value {
        json!({
            "round": self.round,
            "mode": self.mode.name(),
            "made": self.made,
            "unexpected": self.unexpected,
            "elapsed_s": self.elapsed_s,
            "rate_per_s": self.rate,
            "reported": self.reported,
            "attributed_abort": self.attributed,
            "lost": self.lost,
            "peak_rss_bytes": self.peak_rss_bytes,
            "tracer_cpu_s": self.tracer_cpu_s,
        })
    }
}

fn storm_rounds(bin: &Path, script: &Path, tmp: &Path, args: &BenchArgs) -> Result<Vec<StormRun>> {
    let plan = Plan {
        max_resets: args.storm_max_resets,
        max_time: Duration::from_secs(args.storm_secs),
        interval: None,
        record: false,
        cpu: (!args.no_pin).then_some(args.storm_cpu),
    };
    // Warm-up (not reported): page cache, socket slabs, CPU frequency.
    storm::run(&Plan {
        max_time: Duration::from_secs(2),
        ..plan.clone()
    })?;
    let modes = [Mode::None, Mode::Rsttrace, Mode::Bpftrace];
    let mut runs = Vec::new();
    for round in 0..args.storm_rounds {
        for k in 0..modes.len() {
            let mode = modes[(k + round as usize) % modes.len()];
            let run = storm_once(bin, script, tmp, &plan, mode, round)?;
            eprintln!(
                "bench:   round {} {:<8} {:>9.0} resets/s  made {}{}{}",
                round + 1,
                mode.name(),
                run.rate,
                run.made,
                run.reported
                    .map(|r| format!("  reported {r}"))
                    .unwrap_or_default(),
                run.lost.map(|l| format!("  lost {l}")).unwrap_or_default(),
            );
            runs.push(run);
        }
    }
    Ok(runs)
}

fn storm_once(
    bin: &Path,
    script: &Path,
    tmp: &Path,
    plan: &Plan,
    mode: Mode,
    round: u32,
) -> Result<StormRun> {
    let mut tracer = match mode {
        Mode::None => None,
        Mode::Rsttrace => Some(FileTracer::rsttrace(bin, tmp, "storm-rsttrace")?),
        Mode::Bpftrace => Some(FileTracer::bpftrace(script, tmp, "storm-bpftrace")?),
    };
    let cpu_before = match &tracer {
        Some(t) => Some(tracers::cpu_seconds(t.proc.pid())?),
        None => None,
    };
    let outcome = storm::run(plan)?;
    let mut run = StormRun {
        round,
        mode,
        made: outcome.made,
        unexpected: outcome.unexpected,
        elapsed_s: outcome.elapsed.as_secs_f64(),
        rate: outcome.rate(),
        reported: None,
        attributed: None,
        lost: None,
        peak_rss_bytes: None,
        tracer_cpu_s: None,
    };
    let Some(t) = tracer.as_mut() else {
        return Ok(run);
    };
    let pid = t.proc.pid();
    if mode == Mode::Rsttrace {
        run.peak_rss_bytes = Some(tracers::peak_rss_bytes(pid)?);
    }
    run.tracer_cpu_s = Some(tracers::cpu_seconds(pid)? - cpu_before.unwrap_or(0.0));
    t.stop(mode.name())?;
    match mode {
        Mode::Rsttrace => {
            let c = count_rsttrace(&t.stdout, &outcome)?;
            run.reported = Some(c.reported);
            run.attributed = Some(c.attributed);
            run.lost = Some(c.lost);
        }
        Mode::Bpftrace => run.reported = Some(count_bpftrace(&t.stdout, &outcome)?),
        Mode::None => {}
    }
    t.remove_files();
    Ok(run)
}

struct Counted {
    reported: u64,
    attributed: u64,
    lost: u64,
}

fn count_rsttrace(path: &Path, outcome: &Outcome) -> Result<Counted> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let me = u64::from(std::process::id());
    let mut c = Counted {
        reported: 0,
        attributed: 0,
        lost: 0,
    };
    for line in BufReader::with_capacity(1 << 20, file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("rsttrace printed a line that is not JSON: {line:?}"))?;
        match v["event"].as_str() {
            Some("reset")
                if v["remote"].as_str().and_then(endpoint_port) == Some(outcome.listener_port) =>
            {
                c.reported += 1;
                if v["cause"] == "abort"
                    && v["receiver"]["pid"].as_u64() == Some(me)
                    && v["peer"]["pid"].as_u64() == Some(me)
                {
                    c.attributed += 1;
                }
            }
            Some("lost") => c.lost += v["count"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    Ok(c)
}

fn count_bpftrace(path: &Path, outcome: &Outcome) -> Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let needle = format!(" dport={}", outcome.listener_port);
    let mut n = 0;
    for line in BufReader::with_capacity(1 << 20, file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.starts_with("receive ") && line.ends_with(&needle) {
            n += 1;
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------- latency

struct Latency {
    made: u64,
    matched: u64,
    rate: f64,
    /// Line arrival - abort stamp, ms.
    samples_ms: Vec<f64>,
    /// Line arrival - rsttrace's kernel `time`, ms.
    kernel_samples_ms: Vec<f64>,
    /// rsttrace's kernel `time` - abort stamp, µs (clock agreement check).
    kernel_minus_abort_us: Vec<f64>,
}

impl Latency {
    fn p(&self, q: f64) -> Option<f64> {
        percentile(&self.samples_ms, q)
    }

    fn json(&self) -> Value {
        json!({
            "made": self.made,
            "matched": self.matched,
            "rate_per_s": self.rate,
            "p50_ms": self.p(50.0),
            "p99_ms": self.p(99.0),
            "max_ms": self.p(100.0),
            "kernel_time_p50_ms": percentile(&self.kernel_samples_ms, 50.0),
            "kernel_time_p99_ms": percentile(&self.kernel_samples_ms, 99.0),
            "kernel_minus_abort_p50_us": percentile(&self.kernel_minus_abort_us, 50.0),
        })
    }
}

fn latency_run(bin: &Path, tmp: &Path, plan: &Plan) -> Result<Latency> {
    let stderr_path = tmp.join("latency-rsttrace.err");
    let mut cmd = Command::new(bin);
    cmd.args(["--format", "json"])
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path).context("creating rsttrace's stderr file")?);
    let mut proc = Proc::spawn("rsttrace", &mut cmd)?;
    let rx = tracers::read_lines(proc.take_stdout().context("rsttrace's stdout pipe")?);
    wait_attached(&mut proc, &stderr_path)?;
    let outcome = storm::run(plan)?;

    // Lines until every reset made has its line, or CATCH_UP passes; then stop and drain.
    let mut lines = Vec::new();
    let mut ours = 0u64;
    let deadline = Instant::now() + CATCH_UP;
    let is_ours = |text: &str| text.contains(&format!(":{}\"", outcome.listener_port));
    while ours < outcome.made {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                ours += u64::from(is_ours(&line.text));
                lines.push(line);
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = proc.stop(STOP_TIMEOUT)?;
    if !status.success() {
        bail!(
            "rsttrace exited with {status}; stderr:\n{}",
            fs::read_to_string(&stderr_path).unwrap_or_default()
        );
    }
    lines.extend(rx.try_iter());

    let mut by_port: HashMap<u16, Vec<i128>> = HashMap::new();
    for a in &outcome.aborts {
        by_port
            .entry(a.client_port)
            .or_default()
            .push(a.realtime_ns);
    }
    let mut l = Latency {
        made: outcome.made,
        matched: 0,
        rate: outcome.rate(),
        samples_ms: Vec::new(),
        kernel_samples_ms: Vec::new(),
        kernel_minus_abort_us: Vec::new(),
    };
    for line in &lines {
        let v: Value = serde_json::from_str(&line.text).with_context(|| {
            format!("rsttrace printed a line that is not JSON: {:?}", line.text)
        })?;
        if v["event"] != "reset"
            || v["remote"].as_str().and_then(endpoint_port) != Some(outcome.listener_port)
        {
            continue;
        }
        let Some(port) = v["local"].as_str().and_then(endpoint_port) else {
            continue;
        };
        let kernel_ns = v["time"]
            .as_str()
            .and_then(parse_rfc3339_utc)
            .with_context(|| format!("unparsable `time` in {:?}", line.text))?;
        let Some(abort_ns) = by_port
            .get(&port)
            .and_then(|c| c.iter().copied().min_by_key(|a| (a - kernel_ns).abs()))
        else {
            continue;
        };
        l.matched += 1;
        l.samples_ms
            .push((line.realtime_ns - abort_ns) as f64 / 1e6);
        l.kernel_samples_ms
            .push((line.realtime_ns - kernel_ns) as f64 / 1e6);
        l.kernel_minus_abort_us
            .push((kernel_ns - abort_ns) as f64 / 1e3);
    }
    let _ = fs::remove_file(&stderr_path);
    eprintln!(
        "bench:   {:>7.0} resets/s: {} made, {} lines matched, p50 {:.2} ms, p99 {:.2} ms",
        l.rate,
        l.made,
        l.matched,
        l.p(50.0).unwrap_or(f64::NAN),
        l.p(99.0).unwrap_or(f64::NAN)
    );
    Ok(l)
}

fn wait_attached(proc: &mut Proc, stderr: &Path) -> Result<()> {
    let deadline = Instant::now() + tracers::ATTACH_TIMEOUT;
    loop {
        let text = fs::read_to_string(stderr).unwrap_or_default();
        if text.contains("attached") {
            return Ok(());
        }
        if let Some(status) = proc.try_exit()? {
            bail!("rsttrace exited ({status}) before attaching; stderr:\n{text}");
        }
        if Instant::now() >= deadline {
            bail!(
                "rsttrace did not attach within {:?}; stderr:\n{text}",
                tracers::ATTACH_TIMEOUT
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------- steady load

struct LoadFigure {
    target: &'static str,
    without: Vec<f64>,
    with: Vec<f64>,
    resets_reported: u64,
}

impl LoadFigure {
    /// Median over rounds of (req/s with rsttrace / req/s without, same round).
    fn ratio(&self) -> Option<f64> {
        median(&self.paired())
    }

    fn paired(&self) -> Vec<f64> {
        self.with
            .iter()
            .zip(&self.without)
            .filter(|(_, w)| **w > 0.0)
            .map(|(a, b)| a / b)
            .collect()
    }
}

fn steady_load(bin: &Path, tmp: &Path, args: &BenchArgs) -> Result<Vec<LoadFigure>> {
    let servers = load::Servers::start()?;
    let targets = servers.targets();
    let mut figures: Vec<LoadFigure> = targets
        .iter()
        .map(|t| LoadFigure {
            target: t.name,
            without: Vec::new(),
            with: Vec::new(),
            resets_reported: 0,
        })
        .collect();
    // Warm-up (not reported), which also proves every path answers 200.
    for t in &targets {
        load::wrk(&t.url, 1, tmp).with_context(|| format!("warming up {}", t.name))?;
    }
    for round in 0..args.load_rounds {
        for (t, fig) in targets.iter().zip(figures.iter_mut()) {
            let traced_first = round % 2 == 1;
            for traced in [traced_first, !traced_first] {
                let rps = if traced {
                    let mut tracer = FileTracer::rsttrace(bin, tmp, "load-rsttrace")?;
                    let r = load::wrk(&t.url, args.load_secs, tmp)
                        .with_context(|| format!("{} with rsttrace", t.name))?;
                    tracer.stop("rsttrace")?;
                    let out = fs::read_to_string(&tracer.stdout).unwrap_or_default();
                    fig.resets_reported += out
                        .lines()
                        .filter(|l| l.contains("\"event\":\"reset\""))
                        .count() as u64;
                    tracer.remove_files();
                    fig.with.push(r.requests_per_sec);
                    r
                } else {
                    let r = load::wrk(&t.url, args.load_secs, tmp)
                        .with_context(|| format!("{} without rsttrace", t.name))?;
                    fig.without.push(r.requests_per_sec);
                    r
                };
                eprintln!(
                    "bench:   round {} {:<24} {:<16} {:>8.0} req/s ({} requests)",
                    round + 1,
                    t.name,
                    if traced { "with rsttrace" } else { "without" },
                    rps.requests_per_sec,
                    rps.requests
                );
            }
        }
    }
    drop(servers);
    Ok(figures)
}

// ---------------------------------------------------------------- report

struct Report {
    startup: Startup,
    storm: Vec<StormRun>,
    paced: Latency,
    stormy: Latency,
    load: Vec<LoadFigure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Miss,
    Context,
}

struct Row {
    key: &'static str,
    figure: String,
    value: String,
    number: Option<f64>,
    target: String,
    verdict: Verdict,
}

impl Row {
    fn new(key: &'static str, figure: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key,
            figure: figure.into(),
            value: value.into(),
            number: None,
            target: "-".into(),
            verdict: Verdict::Context,
        }
    }

    fn number(mut self, n: Option<f64>) -> Self {
        self.number = n;
        self
    }

    fn target(mut self, target: impl Into<String>, pass: bool) -> Self {
        self.target = target.into();
        self.verdict = if pass { Verdict::Pass } else { Verdict::Miss };
        self
    }

    fn json(&self) -> Value {
        json!({
            "key": self.key,
            "figure": self.figure,
            "value": self.number,
            "display": self.value,
            "target": self.target,
            "result": match self.verdict {
                Verdict::Pass => "PASS",
                Verdict::Miss => "MISS",
                Verdict::Context => "context",
            },
        })
    }
}

fn rates(runs: &[StormRun], mode: Mode) -> Vec<f64> {
    runs.iter()
        .filter(|r| r.mode == mode)
        .map(|r| r.rate)
        .collect()
}

/// Per round: the rate under `mode` / the rate with no tracer in the same round.
fn paired_ratios(runs: &[StormRun], mode: Mode) -> Vec<f64> {
    runs.iter()
        .filter(|r| r.mode == mode)
        .filter_map(|r| {
            let base = runs
                .iter()
                .find(|b| b.mode == Mode::None && b.round == r.round)?;
            (base.rate > 0.0).then(|| r.rate / base.rate)
        })
        .collect()
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}"))
}

impl Report {
    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let base = median(&rates(&self.storm, Mode::None));
        let rst = median(&rates(&self.storm, Mode::Rsttrace));
        let bpf = median(&rates(&self.storm, Mode::Bpftrace));
        let rst_ratio = median(&paired_ratios(&self.storm, Mode::Rsttrace));
        let bpf_ratio = median(&paired_ratios(&self.storm, Mode::Bpftrace));

        let rst_runs: Vec<&StormRun> = self
            .storm
            .iter()
            .filter(|r| r.mode == Mode::Rsttrace)
            .collect();
        let made: u64 = rst_runs.iter().map(|r| r.made).sum();
        let reported: u64 = rst_runs.iter().filter_map(|r| r.reported).sum();
        let attributed: u64 = rst_runs.iter().filter_map(|r| r.attributed).sum();
        let lost: u64 = rst_runs.iter().filter_map(|r| r.lost).sum();
        let unreported: u64 = rst_runs
            .iter()
            .map(|r| r.made.saturating_sub(r.reported.unwrap_or(0)))
            .sum();
        let unexpected: u64 = self.storm.iter().map(|r| r.unexpected).sum();

        rows.push(
            Row::new(
                "storm_ratio_rsttrace",
                "reset storm: rate with rsttrace / none",
                format!(
                    "{} ({} vs {} resets/s)",
                    fmt_opt(rst_ratio, 3),
                    fmt_opt(rst, 0),
                    fmt_opt(base, 0)
                ),
            )
            .number(rst_ratio)
            .target(
                format!(">= {TARGET_STORM_RATIO:.2}"),
                rst_ratio.is_some_and(|r| r >= TARGET_STORM_RATIO),
            ),
        );
        rows.push(
            Row::new(
                "storm_unreported",
                "reset storm: resets unreported by rsttrace",
                format!(
                    "{unreported} of {made} (reported {reported}, lost {lost}, {attributed} attributed abort)"
                ),
            )
            .number(Some(unreported as f64))
            .target("0 (lost 0)", unreported == 0 && lost == 0 && made > 0),
        );
        rows.push(
            Row::new(
                "storm_ratio_bpftrace",
                "reset storm: rate with bpftrace / none (baseline)",
                format!("{} ({} resets/s)", fmt_opt(bpf_ratio, 3), fmt_opt(bpf, 0)),
            )
            .number(bpf_ratio),
        );
        let bpf_runs: Vec<&StormRun> = self
            .storm
            .iter()
            .filter(|r| r.mode == Mode::Bpftrace)
            .collect();
        let bpf_made: u64 = bpf_runs.iter().map(|r| r.made).sum();
        let bpf_lines: u64 = bpf_runs.iter().filter_map(|r| r.reported).sum();
        rows.push(
            Row::new(
                "storm_bpftrace_lines",
                "reset storm: bpftrace receive lines / resets made",
                format!("{bpf_lines} / {bpf_made}"),
            )
            .number(Some(bpf_lines as f64 / bpf_made.max(1) as f64)),
        );
        let cpu_share = |mode: Mode| {
            let v: Vec<f64> = self
                .storm
                .iter()
                .filter(|r| r.mode == mode)
                .filter_map(|r| Some(r.tracer_cpu_s? / r.elapsed_s))
                .collect();
            median(&v)
        };
        rows.push(
            Row::new(
                "storm_tracer_cpu",
                "reset storm: tracer CPU (rsttrace / bpftrace)",
                format!(
                    "{} / {} of a core",
                    fmt_opt(cpu_share(Mode::Rsttrace).map(|c| c * 100.0), 0) + "%",
                    fmt_opt(cpu_share(Mode::Bpftrace).map(|c| c * 100.0), 0) + "%"
                ),
            )
            .number(cpu_share(Mode::Rsttrace)),
        );
        if unexpected > 0 {
            rows.push(
                Row::new(
                    "storm_unexpected",
                    "reset storm: connections without ECONNRESET",
                    unexpected.to_string(),
                )
                .number(Some(unexpected as f64)),
            );
        }

        for fig in &self.load {
            let r = fig.ratio();
            rows.push(
                Row::new(
                    "load_ratio",
                    format!("steady load {}: req/s with / without", fig.target),
                    format!(
                        "{} ({} vs {} req/s)",
                        fmt_opt(r, 3),
                        fmt_opt(median(&fig.with), 0),
                        fmt_opt(median(&fig.without), 0)
                    ),
                )
                .number(r)
                .target(
                    format!(">= {TARGET_LOAD_RATIO:.2}"),
                    r.is_some_and(|r| r >= TARGET_LOAD_RATIO),
                ),
            );
        }

        let st = median(&self.startup.rsttrace_s);
        rows.push(
            Row::new(
                "startup_rsttrace",
                "start-up rsttrace: spawn -> attached (median)",
                format!(
                    "{} s (self-reported ready {} ms)",
                    fmt_opt(st, 3),
                    fmt_opt(median(&self.startup.rsttrace_self_ms), 0)
                ),
            )
            .number(st)
            .target(
                format!("<= {TARGET_STARTUP_S:.2} s"),
                st.is_some_and(|s| s <= TARGET_STARTUP_S),
            ),
        );
        let bt = median(&self.startup.bpftrace_s);
        rows.push(
            Row::new(
                "startup_bpftrace",
                "start-up bpftrace: spawn -> BEGIN line (median)",
                format!("{} s", fmt_opt(bt, 3)),
            )
            .number(bt),
        );

        let rss = rst_runs
            .iter()
            .filter_map(|r| r.peak_rss_bytes)
            .max()
            .map(|b| b as f64 / 1e6);
        rows.push(
            Row::new(
                "peak_rss_mb",
                "peak RSS of rsttrace during the storm (VmHWM)",
                format!("{} MB", fmt_opt(rss, 1)),
            )
            .number(rss)
            .target(
                format!("<= {TARGET_RSS_MB:.0} MB"),
                rss.is_some_and(|m| m <= TARGET_RSS_MB),
            ),
        );

        let p = &self.paced;
        let p99 = p.p(99.0);
        rows.push(
            Row::new(
                "latency_paced",
                format!(
                    "reset -> JSON line, paced {:.0}/s: p50 / p99",
                    1.0 / PACED_INTERVAL.as_secs_f64()
                ),
                format!(
                    "{} / {} ms ({} of {} matched)",
                    fmt_opt(p.p(50.0), 2),
                    fmt_opt(p99, 2),
                    p.matched,
                    p.made
                ),
            )
            .number(p99)
            .target(
                format!("p99 <= {TARGET_P99_MS:.0} ms"),
                p99.is_some_and(|v| v <= TARGET_P99_MS) && p.matched == p.made,
            ),
        );
        let s = &self.stormy;
        rows.push(
            Row::new(
                "latency_storm",
                format!("reset -> JSON line, storm {:.0}/s: p50 / p99", s.rate),
                format!(
                    "{} / {} ms ({} of {} matched)",
                    fmt_opt(s.p(50.0), 2),
                    fmt_opt(s.p(99.0), 2),
                    s.matched,
                    s.made
                ),
            )
            .number(s.p(99.0)),
        );
        rows.push(
            Row::new(
                "clock_check",
                "cross-check: rsttrace `time` - abort stamp (p50)",
                format!(
                    "{} us paced, {} us storm",
                    fmt_opt(percentile(&p.kernel_minus_abort_us, 50.0), 1),
                    fmt_opt(percentile(&s.kernel_minus_abort_us, 50.0), 1)
                ),
            )
            .number(percentile(&p.kernel_minus_abort_us, 50.0)),
        );
        rows
    }

    fn raw(&self) -> Value {
        json!({
            "startup": {
                "rsttrace_s": self.startup.rsttrace_s,
                "rsttrace_self_reported_ready_ms": self.startup.rsttrace_self_ms,
                "bpftrace_s": self.startup.bpftrace_s,
            },
            "storm": self.storm.iter().map(StormRun::json).collect::<Vec<_>>(),
            "storm_per_round_ratios": {
                "rsttrace": paired_ratios(&self.storm, Mode::Rsttrace),
                "bpftrace": paired_ratios(&self.storm, Mode::Bpftrace),
            },
            "latency_paced": self.paced.json(),
            "latency_storm": self.stormy.json(),
            "load": self.load.iter().map(|f| json!({
                "target": f.target,
                "without_rps": f.without,
                "with_rsttrace_rps": f.with,
                "ratio": f.ratio(),
                "per_round_ratios": f.paired(),
                "resets_reported_during_load": f.resets_reported,
            })).collect::<Vec<_>>(),
        })
    }
}

struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    memory_gib: f64,
    bpftrace: String,
    commit: String,
}

impl Machine {
    fn json(&self) -> Value {
        json!({
            "cpus": self.cpus,
            "cpu_model": self.cpu_model,
            "kernel": self.kernel,
            "memory_gib": self.memory_gib,
            "bpftrace": self.bpftrace,
            "rsttrace_commit": self.commit,
        })
    }
}

fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let stdout = |cmd: &mut Command| {
        cmd.output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let mut commit = stdout(
        Command::new("git")
            .current_dir(crate::workspace_root())
            .args(["rev-parse", "--short", "HEAD"]),
    );
    let dirty = stdout(
        Command::new("git")
            .current_dir(crate::workspace_root())
            .args(["status", "--porcelain", "--untracked-files=no"]),
    );
    if !dirty.is_empty() {
        commit.push_str("+changes");
    }
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default(),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        memory_gib: mem_kib / 1024.0 / 1024.0,
        bpftrace: stdout(Command::new("bpftrace").arg("--version")),
        commit,
    }
}

fn render_table(rows: &[Row], m: &Machine, args: &BenchArgs) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nrsttrace bench: {} vCPU ({}), {:.0} GiB, kernel {}, {}, rsttrace {} (release)",
        m.cpus, m.cpu_model, m.memory_gib, m.kernel, m.bpftrace, m.commit
    );
    let _ = writeln!(
        out,
        "storm: {} rounds x {} s per mode; steady load: {} rounds x {} s; start-up: {} runs; medians\n",
        args.storm_rounds, args.storm_secs, args.load_rounds, args.load_secs, args.startup_runs
    );
    let w0 = rows.iter().map(|r| r.figure.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.value.len()).max().unwrap_or(0);
    let w2 = rows
        .iter()
        .map(|r| r.target.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let _ = writeln!(
        out,
        "| {:<w0$} | {:<w1$} | {:<w2$} | result  |",
        "figure", "value", "target"
    );
    let _ = writeln!(
        out,
        "|{}|{}|{}|---------|",
        "-".repeat(w0 + 2),
        "-".repeat(w1 + 2),
        "-".repeat(w2 + 2)
    );
    for r in rows {
        let verdict = match r.verdict {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Context => "context",
        };
        let _ = writeln!(
            out,
            "| {:<w0$} | {:<w1$} | {:<w2$} | {:<7} |",
            r.figure, r.value, r.target, verdict
        );
    }
    let missed: Vec<&str> = rows
        .iter()
        .filter(|r| r.verdict == Verdict::Miss)
        .map(|r| r.key)
        .collect();
    let _ = writeln!(
        out,
        "\n{}",
        if missed.is_empty() {
            "all targets met".to_string()
        } else {
            format!("targets missed: {}", missed.join(", "))
        }
    );
    out.push_str("\nhow each figure is measured:\n");
    for m in METHODS {
        let _ = writeln!(out, "- {m}");
    }
    out
}

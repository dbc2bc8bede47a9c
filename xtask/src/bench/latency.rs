//! Figure: reset -> JSON line latency, paced (one reset every 5 ms) and under the storm.

use std::collections::HashMap;
use std::fs::{self, File};
use std::process::Stdio;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rsttrace_tests::storm::{self, Outcome, Plan};
use serde_json::{json, Value};

use super::budget;
use super::cpu;
use super::stats::{endpoint_port, parse_rfc3339_utc, percentile};
use super::table::Row;
use super::tracers::{read_lines, Line, Proc, ATTACH_TIMEOUT, STOP_TIMEOUT};
use super::Ctx;

pub const METHOD: &str = "Reset-to-line latency: the generator stamps CLOCK_REALTIME just before the close() that sends each RST and notes the client port; the bench reads rsttrace's stdout pipe on its own thread and stamps CLOCK_REALTIME when each line arrives; latency = arrival - abort, matched by client port (and nearest kernel time, so reused ports cannot mix). Both stamps come from the same clock on the same host; the abort stamp precedes the kernel's reset by the close() syscall (microseconds), which makes the figure slightly pessimistic. As a cross-check, rsttrace's own `time` is compared with the abort stamp (`kernel - abort` should be microseconds). The target applies to the paced run (one reset every 5 ms); the storm figure is context.";

/// Paced latency run: one reset every 5 ms.
pub const PACED_INTERVAL: Duration = Duration::from_millis(5);
/// How long to wait for rsttrace's last lines after the generator stopped.
const CATCH_UP: Duration = Duration::from_secs(10);

pub struct Latency {
    pub made: u64,
    pub matched: u64,
    pub rate: f64,
    /// Line arrival - abort stamp, ms.
    pub samples_ms: Vec<f64>,
    /// rsttrace's kernel `time` - abort stamp, µs (clock agreement check).
    pub kernel_minus_abort_us: Vec<f64>,
}

pub struct Latencies {
    pub paced: Latency,
    pub storm: Latency,
}

pub fn measure(ctx: &Ctx) -> Result<Latencies> {
    let cpu = ctx.settings.storm_cpu;
    let secs = ctx.settings.paced_secs;
    let paced = run(
        ctx,
        &Plan {
            max_resets: secs * 1_000_000 / PACED_INTERVAL.as_micros() as u64,
            max_time: Duration::from_secs(secs + 5),
            interval: Some(PACED_INTERVAL),
            record: true,
            cpu,
        },
    )?;
    let storm = run(
        ctx,
        &Plan {
            record: true,
            ..super::storm::plan(ctx, ctx.settings.storm_secs.min(2))
        },
    )?;
    Ok(Latencies { paced, storm })
}

fn run(ctx: &Ctx, plan: &Plan) -> Result<Latency> {
    let stderr_path = ctx.tmp.join("latency-rsttrace.err");
    let mut cmd = ctx.rsttrace_command();
    cmd.args(["--format", "json"])
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path).context("creating rsttrace's stderr file")?);
    let mut proc = Proc::spawn("rsttrace", &mut cmd)?;
    let rx = read_lines(proc.take_stdout().context("rsttrace's stdout pipe")?);
    wait_attached(&mut proc, &stderr_path)?;
    let outcome = storm::run(plan)?;
    // Lines until every reset made has its line, or CATCH_UP passes; then stop and drain.
    let mut lines = Vec::new();
    let mut ours = 0u64;
    let deadline = Instant::now() + CATCH_UP;
    let needle = format!(":{}\"", outcome.listener_port);
    while ours < outcome.made {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                ours += u64::from(line.text.contains(&needle));
                lines.push(line);
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    ctx.memory
        .borrow_mut()
        .record("latency", cpu::peak_rss_bytes(proc.pid())?);
    let status = proc.stop(STOP_TIMEOUT)?;
    if !status.success() {
        bail!(
            "rsttrace exited with {status}; stderr:\n{}",
            fs::read_to_string(&stderr_path).unwrap_or_default()
        );
    }
    lines.extend(rx.try_iter());
    let _ = fs::remove_file(&stderr_path);
    let l = matched(&outcome, &lines)?;
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

/// Pairs each of rsttrace's reset lines for the generator with the abort it reports.
fn matched(outcome: &Outcome, lines: &[Line]) -> Result<Latency> {
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
        kernel_minus_abort_us: Vec::new(),
    };
    for line in lines {
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
        l.kernel_minus_abort_us
            .push((kernel_ns - abort_ns) as f64 / 1e3);
    }
    Ok(l)
}

fn wait_attached(proc: &mut Proc, stderr: &std::path::Path) -> Result<()> {
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        let text = fs::read_to_string(stderr).unwrap_or_default();
        if text.contains("attached") {
            return Ok(());
        }
        if let Some(status) = proc.try_exit()? {
            bail!("rsttrace exited ({status}) before attaching; stderr:\n{text}");
        }
        if Instant::now() >= deadline {
            bail!("rsttrace did not attach within {ATTACH_TIMEOUT:?}; stderr:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
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
            "kernel_minus_abort_p50_us": percentile(&self.kernel_minus_abort_us, 50.0),
        })
    }

    fn show(&self) -> String {
        let f = |v: Option<f64>| v.map_or_else(|| "n/a".into(), |v| format!("{v:.2}"));
        format!(
            "{} / {} ms ({} of {} matched)",
            f(self.p(50.0)),
            f(self.p(99.0)),
            self.matched,
            self.made
        )
    }
}

impl Latencies {
    pub fn rows(&self) -> Vec<Row> {
        let p99 = self.paced.p(99.0);
        let complete = self.paced.matched == self.paced.made && self.paced.made > 0;
        vec![
            Row::new(
                "latency_paced",
                format!(
                    "reset -> JSON line, paced {:.0}/s: p50 / p99",
                    1.0 / PACED_INTERVAL.as_secs_f64()
                ),
                self.paced.show(),
            )
            .number(p99)
            .target(
                format!("p99 <= {:.0} ms, all matched", budget::P99_MS),
                p99.map(|v| v <= budget::P99_MS && complete),
            ),
            Row::new(
                "latency_storm",
                format!(
                    "reset -> JSON line, storm {:.0}/s: p50 / p99",
                    self.storm.rate
                ),
                self.storm.show(),
            )
            .number(self.storm.p(99.0)),
            Row::new(
                "clock_check",
                "cross-check: rsttrace `time` - abort stamp (p50), us paced / storm",
                format!(
                    "{:.1} / {:.1}",
                    percentile(&self.paced.kernel_minus_abort_us, 50.0).unwrap_or(f64::NAN),
                    percentile(&self.storm.kernel_minus_abort_us, 50.0).unwrap_or(f64::NAN)
                ),
            ),
        ]
    }

    pub fn json(&self) -> Value {
        json!({"paced": self.paced.json(), "storm": self.storm.json()})
    }
}

//! Figure: start-up. Wall time from spawn() to the moment rsttrace says it is attached (all
//! hooks attached, reporting), next to bpftrace's time to its BEGIN line.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::budget;
use super::stats::{show, Spread};
use super::table::Row;
use super::tracers::{read_lines, wait_line, Proc, ATTACH_TIMEOUT, STOP_TIMEOUT};
use super::Ctx;

pub const METHOD: &str = "Start-up: wall time from spawn() to the moment the bench reads rsttrace's `attached` line on its stderr pipe (all hooks attached, reporting); for bpftrace, to its BEGIN printf line on stdout (printed after `Attaching N probes...` once every probe is attached). Runs alternate between the two.";

pub struct Startup {
    pub rsttrace_s: Vec<f64>,
    pub rsttrace_self_ms: Vec<f64>,
    pub bpftrace_s: Vec<f64>,
}

pub fn measure(ctx: &Ctx) -> Result<Startup> {
    let mut s = Startup {
        rsttrace_s: Vec::new(),
        rsttrace_self_ms: Vec::new(),
        bpftrace_s: Vec::new(),
    };
    for i in 0..ctx.settings.startup_runs {
        let rsttrace_first = i % 2 == 0;
        for turn in 0..2 {
            if (turn == 0) == rsttrace_first {
                let (wall, ready_ms) = rsttrace(ctx)?;
                s.rsttrace_s.push(wall.as_secs_f64());
                s.rsttrace_self_ms.extend(ready_ms);
            } else {
                s.bpftrace_s.push(bpftrace(ctx)?.as_secs_f64());
            }
        }
    }
    Ok(s)
}

/// Spawn to `attached`, and the `ready N ms after start` rsttrace reports itself.
fn rsttrace(ctx: &Ctx) -> Result<(Duration, Option<f64>)> {
    let mut cmd = ctx.rsttrace_command();
    cmd.args(["--format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut proc = Proc::spawn("rsttrace", &mut cmd)?;
    let rx = read_lines(proc.take_stderr().context("rsttrace's stderr pipe")?);
    let line = wait_line(&rx, "attached", ATTACH_TIMEOUT, "rsttrace")?;
    let wall = line.at.duration_since(t0);
    // Its SIGINT/SIGTERM handlers exist before it says `attached` (session::run), so a stop
    // right away is a clean detach: anything but exit 0 is a fault.
    let status = proc.stop(STOP_TIMEOUT)?;
    if !status.success() {
        bail!("rsttrace stopped right after `attached` exited with {status}");
    }
    // "rsttrace: attached 9 hooks in 36 ms (ready 50 ms after start); ..."
    let ready_ms = line
        .text
        .split_once("(ready ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    Ok((wall, ready_ms))
}

/// Spawn to bpftrace's BEGIN line.
fn bpftrace(ctx: &Ctx) -> Result<Duration> {
    let mut cmd = Command::new("bpftrace");
    cmd.arg(&ctx.script)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let t0 = Instant::now();
    let mut proc = Proc::spawn("bpftrace", &mut cmd)?;
    let rx = read_lines(proc.take_stdout().context("bpftrace's stdout pipe")?);
    wait_line(&rx, "Attaching", ATTACH_TIMEOUT, "bpftrace")?;
    let line = wait_line(&rx, "ready", ATTACH_TIMEOUT, "bpftrace")?;
    let wall = line.at.duration_since(t0);
    proc.stop(STOP_TIMEOUT)?;
    Ok(wall)
}

impl Startup {
    pub fn rows(&self) -> Vec<Row> {
        let rst = Spread::of(&self.rsttrace_s);
        let ready = Spread::of(&self.rsttrace_self_ms);
        let bpf = Spread::of(&self.bpftrace_s);
        vec![
            Row::new(
                "startup_rsttrace",
                "start-up rsttrace: spawn -> attached, s",
                format!(
                    "{} (self-reported ready {} ms)",
                    show(rst, 3),
                    show(ready, 0)
                ),
            )
            .spread(rst)
            .target(
                format!("<= {:.2} s", budget::STARTUP_S),
                rst.map(|s| s.median <= budget::STARTUP_S),
            ),
            Row::new(
                "startup_bpftrace",
                "start-up bpftrace: spawn -> BEGIN line, s",
                show(bpf, 3),
            )
            .spread(bpf),
        ]
    }

    pub fn json(&self) -> Value {
        json!({
            "rsttrace_s": self.rsttrace_s,
            "rsttrace_self_reported_ready_ms": self.rsttrace_self_ms,
            "bpftrace_s": self.bpftrace_s,
        })
    }
}

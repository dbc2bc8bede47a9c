//! Figure: the reset storm. A loopback generator aborts connections as fast as it can beside
//! each mode (nothing, the floor, rsttrace, bpftrace); the cost is the generator's CPU per
//! reset plus the tracer's own, over the generator's CPU per reset with nothing attached.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rsttrace_tests::storm::{self, Outcome, Plan};
use serde_json::{json, Value};

use super::budget::{self, Unit};
use super::cpu::{self, Snapshot};
use super::hookcost::HookCost;
use super::pairs::{self, Sample, Slot};
use super::stats::{endpoint_port, show, Spread};
use super::table::{HookRow, Row, Verdict};
use super::tracers::{FileTracer, Mode, Running};
use super::Ctx;

pub const METHOD: &str = "Reset storm: one thread (pinned) connects to a 127.0.0.1 listener, accepts, writes 1 byte, sets SO_LINGER 0 on the accepted socket and closes it with the byte unread (kernel RST, TCP_ABORT_ON_CLOSE); a reset counts as made only when the client's read fails with ECONNRESET, and the kernel's TcpExt TCPAbortOnClose delta is kept beside it. Each round runs it beside nothing, the floor, rsttrace (unfiltered, --format json to a file) and bpftrace (printing pid/comm/ports/reason of both reset tracepoints to a file), in an order rotating every round. CPU cost ratio = (generator thread CPU + ksoftirqd CPU + tracer process CPU from attach until drained) per reset / the same with nothing attached in that round; CPU from the scheduler's clocks (CLOCK_THREAD_CPUTIME_ID, clock_getcpuclockid). Reported = rsttrace reset lines whose remote port is the generator's listener; lost = sum of its `lost` events' count and skipped_runs (program runs the kernel skipped, each possibly a sample).";

/// One storm run beside one mode.
pub struct StormRun {
    pub sample: Sample,
    pub made: u64,
    pub unexpected: u64,
    /// The kernel's TCPAbortOnClose delta over the run (other aborts on the host add to it).
    pub kernel_aborts: u64,
    /// rsttrace: reset lines for the listener; bpftrace: receive lines for it.
    pub reported: Option<u64>,
    /// rsttrace: of those, attributed `abort` with receiver and peer = the generator.
    pub attributed: Option<u64>,
    pub lost: Option<u64>,
    /// The floor's own count of runs (all hooks).
    pub floor_runs: Option<u64>,
}

pub struct Storm {
    pub runs: Vec<StormRun>,
    pub hooks: HookCost,
}

pub const MODES: [Mode; 4] = [Mode::None, Mode::Floor, Mode::Rsttrace, Mode::Bpftrace];

pub fn plan(ctx: &Ctx, secs: u64) -> Plan {
    Plan {
        max_resets: ctx.settings.storm_max_resets,
        max_time: Duration::from_secs(secs),
        interval: None,
        record: false,
        cpu: ctx.settings.storm_cpu,
    }
}

pub fn measure(ctx: &Ctx) -> Result<Storm> {
    let plan = plan(ctx, ctx.settings.storm_secs);
    // Warm-up (not reported): page cache, socket slabs, CPU frequency.
    storm::run(&Plan {
        max_time: Duration::from_secs(1),
        ..plan.clone()
    })?;
    let mut runs = Vec::new();
    for slot in pairs::schedule(&MODES[1..], ctx.settings.storm_rounds) {
        let run = run_once(ctx, &plan, slot)?;
        eprintln!(
            "bench:   round {:>2} pair {:>2} {:<8} {:>7.0} resets/s  {:>5.2} us CPU/reset  made {}{}{}",
            slot.round + 1,
            slot.pair + 1,
            slot.mode.name(),
            run.sample.rate().unwrap_or(0.0),
            run.sample.cost_per_unit().unwrap_or(0.0) * 1e6,
            run.made,
            run.reported
                .map(|r| format!("  reported {r}"))
                .unwrap_or_default(),
            run.lost.map(|l| format!("  lost {l}")).unwrap_or_default(),
        );
        runs.push(run);
    }
    let hooks = HookCost::measure(ctx, "storm", Unit::Reset, || Ok(storm::run(&plan)?.made))?;
    Ok(Storm { runs, hooks })
}

fn run_once(ctx: &Ctx, plan: &Plan, slot: Slot) -> Result<StormRun> {
    let mode = slot.mode;
    let running = Running::start(ctx, mode, &format!("storm-{}", mode.name()))?;
    let softirqd = cpu::ksoftirqd_pids();
    let soft_before = Snapshot::take(&softirqd);
    let aborts_before = storm::tcp_abort_on_close()?;
    let outcome = storm::run(plan)?;
    let kernel_aborts = storm::tcp_abort_on_close()?.saturating_sub(aborts_before);
    let (soft, _) = Snapshot::take(&softirqd).since(&soft_before);
    let tracer_cpu = running.settled_cpu()?;
    let floor_runs = running.floor().map(|f| f.count()).transpose()?;
    let mut run = StormRun {
        sample: Sample {
            round: slot.round,
            pair: slot.pair,
            mode,
            units: outcome.made,
            secs: outcome.elapsed.as_secs_f64(),
            workload_cpu_s: (outcome.cpu + soft).as_secs_f64(),
            tracer_cpu_s: tracer_cpu.as_secs_f64(),
        },
        made: outcome.made,
        unexpected: outcome.unexpected,
        kernel_aborts,
        reported: None,
        attributed: None,
        lost: None,
        floor_runs,
    };
    if let Some(t) = running.stop(ctx, "storm")? {
        if mode == Mode::Rsttrace {
            let c = count_rsttrace(&t.stdout, &outcome)?;
            (run.reported, run.attributed, run.lost) = (Some(c.0), Some(c.1), Some(c.2));
            if c.0 != outcome.made || c.2 != 0 || c.1 != c.0 {
                keep_output(ctx, &t, slot, &outcome, c);
            }
        } else {
            run.reported = Some(count_bpftrace(&t.stdout, &outcome)?);
        }
        t.remove_files();
    }
    Ok(run)
}

/// The only trace of a reset gone missing: rsttrace's stdout and stderr of that run, moved
/// out of the bench's scratch directory (removed at the end) into target/bench, and named.
fn keep_output(ctx: &Ctx, t: &FileTracer, slot: Slot, outcome: &Outcome, c: (u64, u64, u64)) {
    let dir = ctx.tmp.parent().unwrap_or(&ctx.tmp);
    let stem = format!(
        "storm-rsttrace-round{}-pair{}",
        slot.round + 1,
        slot.pair + 1
    );
    let mut kept = Vec::new();
    for (from, ext) in [(&t.stdout, "out"), (&t.stderr, "err")] {
        let to = dir.join(format!("{stem}.{ext}"));
        match std::fs::rename(from, &to) {
            Ok(()) => kept.push(to.display().to_string()),
            Err(e) => eprintln!("xtask: bench: could not keep {}: {e}", from.display()),
        }
    }
    eprintln!(
        "xtask: bench: storm: rsttrace reported {} and lost {} of {} resets made, {} attributed; kept: {}",
        c.0,
        c.2,
        outcome.made,
        c.1,
        kept.join(", ")
    );
}

/// rsttrace's output: (reset lines for the listener, of those attributed `abort` to this
/// process on both ends, lost samples).
fn count_rsttrace(path: &Path, outcome: &Outcome) -> Result<(u64, u64, u64)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let me = u64::from(std::process::id());
    let (mut reported, mut attributed, mut lost) = (0, 0, 0);
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
                reported += 1;
                attributed += u64::from(
                    v["cause"] == "abort"
                        && v["receiver"]["pid"].as_u64() == Some(me)
                        && v["peer"]["pid"].as_u64() == Some(me),
                );
            }
            // A run the kernel skipped may have been a sample: counted as lost here.
            Some("lost") => {
                lost += v["count"].as_u64().unwrap_or(0) + v["skipped_runs"].as_u64().unwrap_or(0);
            }
            _ => {}
        }
    }
    Ok((reported, attributed, lost))
}

fn count_bpftrace(path: &Path, outcome: &Outcome) -> Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let needle = format!(" dport={}", outcome.listener_port);
    let mut n = 0;
    for line in BufReader::with_capacity(1 << 20, file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        n += u64::from(line.starts_with("receive ") && line.ends_with(&needle));
    }
    Ok(n)
}

impl Storm {
    fn samples(&self) -> Vec<Sample> {
        self.runs.iter().map(|r| r.sample.clone()).collect()
    }

    fn of(&self, mode: Mode) -> impl Iterator<Item = &StormRun> {
        self.runs.iter().filter(move |r| r.sample.mode == mode)
    }

    /// rsttrace's user-space CPU per reset (ratio rounds, statistics off), ns.
    fn user_ns_per_reset(&self) -> Option<Spread> {
        pairs::spread_of(&self.samples(), Mode::Rsttrace, |s| {
            (s.units > 0).then(|| s.tracer_cpu_s * 1e9 / s.units as f64)
        })
    }

    pub fn rows(&self) -> Vec<Row> {
        let samples = self.samples();
        let cost = Spread::of(&pairs::cost_ratios(&samples, Mode::Rsttrace));
        let rate = Spread::of(&pairs::rate_ratios(&samples, Mode::Rsttrace));
        let made: u64 = self.of(Mode::Rsttrace).map(|r| r.made).sum();
        let unreported: u64 = self
            .of(Mode::Rsttrace)
            .map(|r| r.made.saturating_sub(r.reported.unwrap_or(0)))
            .sum();
        let lost: u64 = self.of(Mode::Rsttrace).filter_map(|r| r.lost).sum();
        let complete = made > 0 && unreported == 0 && lost == 0;
        let mut rows = vec![
            Row::new(
                "storm_cost_rsttrace",
                "reset storm: CPU cost ratio rsttrace / none, per reset",
                show(cost, 3),
            )
            .spread(cost)
            .target(
                format!("<= {:.2} with 0 unreported", budget::STORM_COST_RATIO),
                cost.map(|c| c.median <= budget::STORM_COST_RATIO && complete),
            ),
            self.completeness_row(made, unreported, lost),
            Row::new(
                "storm_rate_rsttrace",
                "reset storm: rate ratio rsttrace / none",
                show(rate, 3),
            )
            .spread(rate)
            .target(
                format!(">= {:.2}", budget::STORM_RATE_RATIO),
                rate.map(|r| r.median >= budget::STORM_RATE_RATIO),
            ),
        ];
        rows.extend(self.context_rows(&samples));
        rows
    }

    fn completeness_row(&self, made: u64, unreported: u64, lost: u64) -> Row {
        let attributed: u64 = self.of(Mode::Rsttrace).filter_map(|r| r.attributed).sum();
        let kernel: u64 = self.of(Mode::Rsttrace).map(|r| r.kernel_aborts).sum();
        let unexpected: u64 = self.runs.iter().map(|r| r.unexpected).sum();
        Row::new(
            "storm_unreported",
            "reset storm: resets unreported / lost by rsttrace",
            format!(
                "{unreported} / {lost} of {made} made (kernel TCPAbortOnClose +{kernel}; \
                 {attributed} attributed `abort`; {unexpected} connections without ECONNRESET)"
            ),
        )
        .number(Some(unreported as f64))
        .target("0 / 0", Some(made > 0 && unreported == 0 && lost == 0))
    }

    fn context_rows(&self, samples: &[Sample]) -> Vec<Row> {
        let us = |mode: Mode| pairs::spread_of(samples, mode, |s| Some(s.cost_per_unit()? * 1e6));
        let rps = |mode: Mode| pairs::spread_of(samples, mode, Sample::rate);
        let mut rows = Vec::new();
        for mode in [Mode::Floor, Mode::Bpftrace] {
            let cost = Spread::of(&pairs::cost_ratios(samples, mode));
            let rate = Spread::of(&pairs::rate_ratios(samples, mode));
            rows.push(
                Row::new(
                    format!("storm_cost_{}", mode.name()),
                    format!(
                        "reset storm: CPU cost ratio {} / none (rate ratio)",
                        mode.name()
                    ),
                    format!("{} (rate {})", show(cost, 3), show(rate, 3)),
                )
                .spread(cost),
            );
        }
        let bpf_lines: u64 = self.of(Mode::Bpftrace).filter_map(|r| r.reported).sum();
        let bpf_made: u64 = self.of(Mode::Bpftrace).map(|r| r.made).sum();
        rows.push(
            Row::new(
                "storm_cpu_per_reset",
                "reset storm: CPU per reset, us (none / floor / rsttrace / bpftrace)",
                MODES.map(|m| show(us(m), 1)).join(" / "),
            )
            .spread(us(Mode::Rsttrace)),
        );
        rows.push(Row::new(
            "storm_rates",
            "reset storm: resets/s (none / floor / rsttrace / bpftrace); bpftrace lines",
            format!(
                "{}; {bpf_lines} of {bpf_made}",
                MODES.map(|m| show(rps(m), 0)).join(" / ")
            ),
        ));
        rows
    }

    /// The per-hook rows, plus rsttrace's user space per reset.
    pub fn hook_rows(&self) -> Vec<HookRow> {
        let mut rows = self.hooks.rows();
        let user = self.user_ns_per_reset();
        rows.push(HookRow::total(
            "storm".into(),
            Unit::Reset.name(),
            "rsttrace user space".into(),
            user.map(|u| u.median),
            format!("<= {:.0} ns/reset", budget::USER_NS_PER_RESET),
            Verdict::of(user.is_some_and(|u| u.median <= budget::USER_NS_PER_RESET)),
        ));
        rows
    }

    pub fn json(&self) -> Value {
        json!({
            "runs": self.runs.iter().map(|r| json!({
                "sample": r.sample.json(),
                "made": r.made,
                "unexpected": r.unexpected,
                "kernel_abort_on_close": r.kernel_aborts,
                "reported": r.reported,
                "attributed_abort": r.attributed,
                "lost": r.lost,
                "floor_runs": r.floor_runs,
            })).collect::<Vec<_>>(),
            "cost_ratios": MODES.map(|m| json!({m.name(): pairs::cost_ratios(&self.samples(), m)})),
            "rate_ratios": MODES.map(|m| json!({m.name(): pairs::rate_ratios(&self.samples(), m)})),
            "user_ns_per_reset": self.user_ns_per_reset().map(|s| s.json()),
            "hooks": self.hooks.json(),
        })
    }
}

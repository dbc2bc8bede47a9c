//! Figure: steady load through nginx. wrk drives nginx -> php-fpm (TCP), nginx -> php-fpm
//! (unix socket) and nginx -> gunicorn beside nothing, the floor and rsttrace; the cost is
//! the CPU of wrk, nginx and the upstreams (and ksoftirqd) per request plus rsttrace's own,
//! over the same with nothing attached.

use std::fs;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::budget::{self, Unit};
use super::cpu::{self, Snapshot};
use super::hookcost::HookCost;
use super::pairs::{self, Sample, Slot};
use super::servers::{self, Servers, Target};
use super::stats::{show, Spread};
use super::table::{HookRow, Row, Verdict};
use super::tracers::{Mode, Running, NO_NETWORK_HOOKS};
use super::Ctx;

pub const METHOD: &str = "Steady load: wrk -t1 -c8 through nginx (one worker, no upstream keepalive: one upstream connection per request) to php-fpm (static, 2 workers; TCP and unix pools) and gunicorn (2 sync workers), beside nothing, the floor, rsttrace (unfiltered, --format json to a file) and rsttrace with --no-network-hooks (no packet program; inet_sk_error_report stays, it serves refusals), each mode in a pair of its own (nothing / mode) in every round, the modes in an order rotating every round. The network hooks' share is, per round, rsttrace's cost ratio minus the one without network hooks (both pairs from the same round), and in CPU us/request that times the mean no-tracer cost of the two pairs; it is context: a share of the budget's size is far inside the rounds' spread, and the budget is held per hook, from the kernel's statistics. CPU cost ratio = (CPU of wrk [getrusage of the reaped child] + every nginx, php-fpm and gunicorn process + ksoftirqd [their CPU clocks] + rsttrace from attach until drained) per request / the same with nothing attached in that round.";

/// Each path runs a pair per traced mode per round. rsttrace without its network hooks has
/// a pair of its own in every round (rather than sharing rsttrace's no-tracer run), so its
/// ratio is taken exactly like rsttrace's and the two are comparable: their difference,
/// round by round, is the network hooks' share.
const MODES: [Mode; 4] = [Mode::None, Mode::Floor, Mode::Rsttrace, Mode::RsttraceNoNet];
/// How the table names the modes after `none`.
const MODE_NAMES: &str = "none / floor / rsttrace / without network hooks";

/// One upstream path's runs and statistics rounds.
pub struct TargetLoad {
    pub name: &'static str,
    pub samples: Vec<Sample>,
    /// Server processes that exited during a run (their last CPU slice is then missing).
    pub gone: usize,
    /// Reset lines rsttrace printed during the load (none expected).
    pub resets_reported: u64,
    pub hooks: Option<HookCost>,
}

pub struct Load {
    pub targets: Vec<TargetLoad>,
}

pub fn measure(ctx: &Ctx) -> Result<Load> {
    let servers = Servers::start()?;
    let paths = servers.targets();
    let mut targets: Vec<TargetLoad> = paths
        .iter()
        .map(|t| TargetLoad {
            name: t.name,
            samples: Vec::new(),
            gone: 0,
            resets_reported: 0,
            hooks: None,
        })
        .collect();
    // Warm-up (not reported), which also proves every path answers 200.
    for t in &paths {
        servers::wrk(&t.url, 1, &ctx.tmp).with_context(|| format!("warming up {}", t.name))?;
    }
    let slots = pairs::schedule(&MODES[1..], ctx.settings.load_rounds);
    let per_round = slots.len() / ctx.settings.load_rounds.max(1) as usize;
    for round in slots.chunks(per_round.max(1)) {
        for (path, target) in paths.iter().zip(targets.iter_mut()) {
            for &slot in round {
                run_once(ctx, &servers, path, slot, target)?;
            }
        }
    }
    for (path, target) in paths.iter().zip(targets.iter_mut()) {
        target.hooks = Some(HookCost::measure(ctx, path.name, Unit::Request, || {
            Ok(servers::wrk(&path.url, ctx.settings.load_secs, &ctx.tmp)?.requests)
        })?);
    }
    drop(servers);
    Ok(Load { targets })
}

fn run_once(
    ctx: &Ctx,
    servers: &Servers,
    path: &Target,
    slot: Slot,
    target: &mut TargetLoad,
) -> Result<()> {
    let mode = slot.mode;
    let running = Running::start(ctx, mode, &format!("load-{}", mode.name()))?;
    let mut pids = servers.pids();
    pids.extend(cpu::ksoftirqd_pids());
    let before = Snapshot::take(&pids);
    let wrk = servers::wrk(&path.url, ctx.settings.load_secs, &ctx.tmp)
        .with_context(|| format!("{} beside {}", path.name, mode.name()))?;
    let (servers_cpu, gone) = Snapshot::take(&pids).since(&before);
    let tracer_cpu = running.settled_cpu()?;
    if let Some(t) = running.stop(ctx, "steady load")? {
        let out = fs::read_to_string(&t.stdout).unwrap_or_default();
        target.resets_reported += out.matches("\"event\":\"reset\"").count() as u64;
        t.remove_files();
    }
    let sample = Sample {
        round: slot.round,
        pair: slot.pair,
        mode,
        units: wrk.requests,
        secs: wrk.requests as f64 / wrk.requests_per_sec.max(f64::MIN_POSITIVE),
        workload_cpu_s: (servers_cpu + wrk.cpu).as_secs_f64(),
        tracer_cpu_s: tracer_cpu.as_secs_f64(),
    };
    eprintln!(
        "bench:   round {:>2} pair {:>2} {:<24} {:<8} {:>7.0} req/s  {:>6.1} us CPU/request",
        slot.round + 1,
        slot.pair + 1,
        path.name,
        mode.name(),
        wrk.requests_per_sec,
        sample.cost_per_unit().unwrap_or(0.0) * 1e6,
    );
    target.gone += gone;
    target.samples.push(sample);
    Ok(())
}

impl TargetLoad {
    fn rows(&self) -> Vec<Row> {
        let cost = Spread::of(&pairs::cost_ratios(&self.samples, Mode::Rsttrace));
        let rate = Spread::of(&pairs::rate_ratios(&self.samples, Mode::Rsttrace));
        let floor = Spread::of(&pairs::cost_ratios(&self.samples, Mode::Floor));
        let us = |m: Mode| pairs::spread_of(&self.samples, m, |s| Some(s.cost_per_unit()? * 1e6));
        let rps = |m: Mode| pairs::spread_of(&self.samples, m, Sample::rate);
        let mut rows = vec![
            Row::new(
                format!("load_cost {}", self.name),
                format!(
                    "steady load {}: CPU cost ratio rsttrace / none, per request",
                    self.name
                ),
                show(cost, 3),
            )
            .spread(cost)
            .target(
                format!("<= {:.2}", budget::LOAD_COST_RATIO),
                cost.map(|c| c.median <= budget::LOAD_COST_RATIO),
            ),
            Row::new(
                format!("load_rate {}", self.name),
                format!("steady load {}: req/s ratio rsttrace / none", self.name),
                show(rate, 3),
            )
            .spread(rate)
            .target(
                format!(">= {:.2}", budget::LOAD_RATE_RATIO),
                rate.map(|r| r.median >= budget::LOAD_RATE_RATIO),
            ),
        ];
        rows.extend(self.network_rows(rate));
        rows.push(
            Row::new(
                format!("load_floor {}", self.name),
                format!(
                    "steady load {}: floor cost ratio; CPU us/request and req/s ({MODE_NAMES})",
                    self.name
                ),
                format!(
                    "{}; {}; {}",
                    show(floor, 3),
                    MODES.map(|m| show(us(m), 1)).join(" / "),
                    MODES.map(|m| show(rps(m), 0)).join(" / ")
                ),
            )
            .spread(floor),
        );
        rows
    }

    /// rsttrace with `--no-network-hooks` beside the same load, and the network hooks'
    /// share: rsttrace / none - without / none, round by round. Context: a share of the
    /// budget's size (0.5 us of ~200 us a request) is far inside these rounds' spread, so
    /// the per-hook table holds the budget, from the kernel's own statistics.
    fn network_rows(&self, rate: Option<Spread>) -> Vec<Row> {
        let no_net = Mode::RsttraceNoNet;
        let cost = Spread::of(&pairs::cost_ratios(&self.samples, no_net));
        let no_net_rate = Spread::of(&pairs::rate_ratios(&self.samples, no_net));
        let diff = pairs::cost_differences(&self.samples, Mode::Rsttrace, no_net);
        let share = Spread::of(&diff.iter().map(|d| d.0).collect::<Vec<_>>());
        let share_us = Spread::of(&diff.iter().map(|d| d.1).collect::<Vec<_>>());
        let rate_diff = rate
            .zip(no_net_rate)
            .map(|(r, n)| format!("{:+.3}", r.median - n.median));
        vec![
            Row::new(
                format!("load_cost_no_net {}", self.name),
                format!(
                    "steady load {}: CPU cost ratio rsttrace without network hooks \
                     ({NO_NETWORK_HOOKS}) / none, per request",
                    self.name
                ),
                show(cost, 3),
            )
            .spread(cost),
            Row::new(
                format!("load_network_share {}", self.name),
                format!(
                    "steady load {}: network hooks' share, rsttrace / none - without / none \
                     (per round); the same in CPU us/request",
                    self.name
                ),
                format!("{}; {}", show(share, 3), show(share_us, 1)),
            )
            .spread(share),
            Row::new(
                format!("load_rate_no_net {}", self.name),
                format!(
                    "steady load {}: req/s ratio rsttrace without network hooks / none \
                     (rsttrace's median - this one)",
                    self.name
                ),
                format!(
                    "{} ({})",
                    show(no_net_rate, 3),
                    rate_diff.unwrap_or_else(|| "n/a".into())
                ),
            )
            .spread(no_net_rate),
        ]
    }

    fn hook_rows(&self) -> Vec<HookRow> {
        let mut rows = self.hooks.as_ref().map(HookCost::rows).unwrap_or_default();
        let user = pairs::spread_of(&self.samples, Mode::Rsttrace, |s| {
            (s.units > 0).then(|| s.tracer_cpu_s * 1e9 / s.units as f64)
        });
        rows.push(HookRow::total(
            self.name.to_string(),
            Unit::Request.name(),
            "rsttrace user space".into(),
            user.map(|u| u.median),
            "-".into(),
            Verdict::Context,
        ));
        rows
    }
}

impl Load {
    pub fn rows(&self) -> Vec<Row> {
        self.targets.iter().flat_map(TargetLoad::rows).collect()
    }

    pub fn hook_rows(&self) -> Vec<HookRow> {
        self.targets
            .iter()
            .flat_map(TargetLoad::hook_rows)
            .collect()
    }

    pub fn json(&self) -> Value {
        Value::Array(
            self.targets
                .iter()
                .map(|t| {
                    json!({
                        "target": t.name,
                        "samples": t.samples.iter().map(Sample::json).collect::<Vec<_>>(),
                        "cost_ratios": MODES.map(|m| json!({m.name(): pairs::cost_ratios(&t.samples, m)})),
                        "rate_ratios": MODES.map(|m| json!({m.name(): pairs::rate_ratios(&t.samples, m)})),
                        "server_processes_gone": t.gone,
                        "resets_reported_during_load": t.resets_reported,
                        "hooks": t.hooks.as_ref().map(HookCost::json),
                    })
                })
                .collect(),
        )
    }
}

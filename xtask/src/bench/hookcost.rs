//! Per-hook cost from the kernel itself: rounds of their own (the ratio rounds run with
//! statistics off) in which BPF_ENABLE_STATS is held while rsttrace — or the floor — runs
//! beside one workload, and every program's run_cnt and run_time_ns is read before and after
//! it. Programs are found from the tracer's file descriptors, so hooks added to rsttrace are
//! measured without a change here.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsRawFd as _;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::budget::{self, HookBudget, Unit};
use super::progs::{self, ProgramFd};
use super::stats::Spread;
use super::table::{HookRow, Verdict};
use super::tracers::{Mode, Running};
use super::{bpf, Ctx};

pub const METHOD: &str = "Per hook: in rounds of their own (the ratio rounds run with statistics off) the bench holds bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME), which is scoped to its file descriptor, while rsttrace (or the floor) runs beside one workload run, and reads run_cnt and run_time_ns of every program rsttrace holds from /proc/PID/fdinfo before and after. ns/run = run time / runs; runs/unit = runs / resets made or requests completed (hooks are host-wide: other activity on the machine counts too); ns/unit = their product; `all programs` is the run time of every program per unit. `network hooks` sums what the network hooks (the packet program on cgroup ingress, inet_sk_error_report) add over the floor: per hook (median ns/run - floor ns/run, at least 0) x median runs/unit, the medians of their own rows, held against 500 ns per proxied request. `rsttrace user space` is its process CPU per unit in the ratio rounds. Floor ns/run is the count-only program on the same hook in the same kind of round; a hook's ns/run budget is counted over it (the kernel's run time includes a clock read and the call, ~100 ns on this VM), and a hook with fewer than 0.01 runs per unit is not on the workload's path (context).";

/// Per (program, hook): the rounds' ns/run and runs/unit.
type PerProgram = BTreeMap<(String, String), (Vec<f64>, Vec<f64>)>;

/// Below this many runs per unit of work a hook is not on the workload's path.
const MIN_RUNS_PER_UNIT: f64 = 0.01;

/// One program's runs and run time during one round.
#[derive(Debug, Clone)]
pub struct ProgramRun {
    pub program: String,
    pub hook: String,
    pub runs: u64,
    pub ns: u64,
}

/// One round with statistics on.
#[derive(Debug, Clone)]
pub struct StatsRound {
    pub mode: Mode,
    pub units: u64,
    pub programs: Vec<ProgramRun>,
}

/// (program name, hook name) by program id, and statistics by program id.
type Named = HashMap<u32, (String, String)>;

fn snapshot(running: &Running) -> Result<(Named, BTreeMap<u32, ProgramFd>)> {
    if let Some(pid) = running.pid() {
        let names = progs::attached(&pid.to_string())?
            .into_iter()
            .map(|h| (h.prog_id, (h.program, h.point.name())))
            .collect();
        return Ok((names, progs::programs(&pid.to_string())?));
    }
    let mut names = Named::new();
    let mut stats = BTreeMap::new();
    for p in running
        .floor()
        .map(|f| f.programs.as_slice())
        .unwrap_or_default()
    {
        let fd = p.prog.as_raw_fd();
        let prog = progs::program_fd("self", fd)
            .with_context(|| format!("reading the floor program's fdinfo ({fd})"))?;
        names.insert(prog.id, (format!("floor {}", p.hook), p.hook.clone()));
        stats.insert(prog.id, prog);
    }
    Ok((names, stats))
}

/// Runs `workload` (returning the units of work it did) once beside `mode` with the
/// kernel's statistics on.
pub fn stats_round(
    ctx: &Ctx,
    mode: Mode,
    tag: &str,
    workload: &mut dyn FnMut() -> Result<u64>,
) -> Result<StatsRound> {
    let stats = bpf::enable_stats()?;
    let running = Running::start(ctx, mode, tag)?;
    let (names, before) = snapshot(&running)?;
    let units = workload()?;
    running.settled_cpu()?;
    let (_, after) = snapshot(&running)?;
    drop(stats);
    if let Some(t) = running.stop(ctx, tag)? {
        t.remove_files();
    }
    let programs = after
        .values()
        .filter_map(|a| {
            let b = before.get(&a.id)?;
            let (program, hook) = names.get(&a.id)?.clone();
            Some(ProgramRun {
                program,
                hook,
                runs: a.run_cnt.saturating_sub(b.run_cnt),
                ns: a.run_time_ns.saturating_sub(b.run_time_ns),
            })
        })
        .collect();
    Ok(StatsRound {
        mode,
        units,
        programs,
    })
}

/// The statistics rounds of one workload (rsttrace and floor alternating).
pub struct HookCost {
    pub workload: String,
    pub unit: Unit,
    pub rounds: Vec<StatsRound>,
}

impl HookCost {
    pub fn measure(
        ctx: &Ctx,
        workload: &str,
        unit: Unit,
        mut run: impl FnMut() -> Result<u64>,
    ) -> Result<Self> {
        let mut rounds = Vec::new();
        for round in 0..ctx.settings.stats_rounds {
            for mode in super::tracers::rotation(&[Mode::Rsttrace, Mode::Floor], round) {
                let r = stats_round(ctx, mode, &format!("stats-{}", mode.name()), &mut run)?;
                eprintln!(
                    "bench:   stats {workload} beside {:<8} {} {}s, {} programs",
                    mode.name(),
                    r.units,
                    unit.name(),
                    r.programs.len()
                );
                rounds.push(r);
            }
        }
        Ok(Self {
            workload: workload.to_string(),
            unit,
            rounds,
        })
    }

    /// Per (program, hook) over the rounds of `mode`: ns per run and runs per unit.
    fn per_program(&self, mode: Mode) -> PerProgram {
        let mut out = PerProgram::new();
        for r in self.rounds.iter().filter(|r| r.mode == mode && r.units > 0) {
            for p in &r.programs {
                let e = out.entry((p.program.clone(), p.hook.clone())).or_default();
                if p.runs > 0 {
                    e.0.push(p.ns as f64 / p.runs as f64);
                }
                e.1.push(p.runs as f64 / r.units as f64);
            }
        }
        out
    }

    /// All of rsttrace's BPF time per unit, per round.
    pub fn bpf_ns_per_unit(&self) -> Option<Spread> {
        self.ns_per_unit(Mode::Rsttrace)
    }

    /// The run time of every program of `mode` per unit, per round.
    fn ns_per_unit(&self, mode: Mode) -> Option<Spread> {
        let per_round: Vec<f64> = self
            .rounds
            .iter()
            .filter(|r| r.mode == mode && r.units > 0)
            .map(|r| r.programs.iter().map(|p| p.ns as f64).sum::<f64>() / r.units as f64)
            .collect();
        Spread::of(&per_round)
    }

    pub fn rows(&self) -> Vec<HookRow> {
        let floor: HashMap<String, f64> = self
            .per_program(Mode::Floor)
            .into_iter()
            .filter_map(|((_, hook), (ns, _))| Some((hook, Spread::of(&ns)?.median)))
            .collect();
        let programs = self.per_program(Mode::Rsttrace);
        let network = self.network_row(&programs, &floor);
        let mut rows: Vec<HookRow> = programs
            .into_iter()
            .map(|((program, hook), (ns, runs))| {
                let budget = budget::hook_budget(&hook, self.unit);
                let (ns, runs) = (Spread::of(&ns), Spread::of(&runs));
                self.row(
                    program,
                    hook.clone(),
                    ns,
                    runs,
                    floor.get(&hook).copied(),
                    budget,
                )
            })
            .collect();
        rows.extend(network);
        let floor_total = self.ns_per_unit(Mode::Floor);
        rows.push(HookRow::total(
            self.workload.clone(),
            self.unit.name(),
            "all floor programs".into(),
            floor_total.map(|s| s.median),
            "-".into(),
            Verdict::Context,
        ));
        let total = self.bpf_ns_per_unit();
        let limit = match self.unit {
            Unit::Reset => budget::BPF_NS_PER_RESET,
            Unit::Request => budget::BPF_NS_PER_REQUEST,
        };
        rows.push(HookRow::total(
            self.workload.clone(),
            self.unit.name(),
            "all programs".into(),
            total.map(|s| s.median),
            format!("<= {limit:.0} ns/{}", self.unit.name()),
            Verdict::of(total.is_some_and(|t| t.median <= limit)),
        ));
        rows
    }

    /// The network hooks together, per unit, over the floor (`budget::network_ns_over_floor`
    /// on the medians the hooks' own rows show): held against its budget per request, context
    /// per reset. `None` when rsttrace attached none.
    fn network_row(&self, programs: &PerProgram, floor: &HashMap<String, f64>) -> Option<HookRow> {
        let mut hooks: Vec<(&str, &str, f64, f64)> = programs
            .iter()
            .filter(|((_, hook), _)| budget::is_network_hook(hook))
            .map(|((program, hook), (ns, runs))| {
                let median = |v: &[f64]| Spread::of(v).map_or(0.0, |s| s.median);
                (program.as_str(), hook.as_str(), median(ns), median(runs))
            })
            .collect();
        // Per packet (cgroup:...) before per connection (raw:...), as the issue names them.
        hooks.sort_by_key(|h| h.1);
        if hooks.is_empty() {
            return None;
        }
        let over_floor = budget::network_ns_over_floor(
            &hooks
                .iter()
                .map(|&(_, hook, ns, runs)| (hook, ns, runs, floor.get(hook).copied()))
                .collect::<Vec<_>>(),
        );
        let program_names = hooks.iter().map(|h| h.0).collect::<Vec<_>>().join(" + ");
        let attach_points = hooks.iter().map(|h| h.1).collect::<Vec<_>>().join(" + ");
        let counted = "over the floor: sum of (ns/run - floor ns/run) x runs/unit";
        let (budget, verdict) = match self.unit {
            Unit::Request => (
                format!(
                    "<= {:.0} ns/request {counted}",
                    budget::NETWORK_NS_PER_REQUEST
                ),
                Verdict::of(over_floor <= budget::NETWORK_NS_PER_REQUEST),
            ),
            Unit::Reset => (format!("- ({counted})"), Verdict::Context),
        };
        Some(HookRow {
            hook: attach_points,
            ..HookRow::total(
                self.workload.clone(),
                self.unit.name(),
                format!("network hooks ({program_names})"),
                Some(over_floor),
                budget,
                verdict,
            )
        })
    }

    fn row(
        &self,
        program: String,
        hook: String,
        ns: Option<Spread>,
        runs: Option<Spread>,
        floor_ns: Option<f64>,
        budget: HookBudget,
    ) -> HookRow {
        let ns_per_unit = ns.zip(runs).map(|(n, r)| n.median * r.median);
        let runs_median = runs.map_or(0.0, |r| r.median);
        HookRow {
            workload: self.workload.clone(),
            unit: self.unit.name(),
            program,
            hook,
            ns_per_run: ns,
            runs_per_unit: runs,
            ns_per_unit,
            floor_ns_per_run: floor_ns,
            budget: budget.show(),
            // A hook that (almost) never runs in this workload — resets during steady load,
            // forks from other activity on the host — is not part of its cost: a cold-cache
            // average of a handful of runs says nothing about the budget.
            verdict: if runs_median < MIN_RUNS_PER_UNIT {
                Verdict::Context
            } else {
                Verdict::of(budget.allows(ns.map_or(0.0, |n| n.median), floor_ns, runs_median))
            },
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "workload": self.workload,
            "unit": self.unit.name(),
            "rounds": self.rounds.iter().map(|r| json!({
                "mode": r.mode.name(),
                "units": r.units,
                "programs": r.programs.iter().map(|p| json!({
                    "program": p.program, "hook": p.hook, "runs": p.runs, "run_time_ns": p.ns,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

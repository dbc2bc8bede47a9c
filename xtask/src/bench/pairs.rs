//! Alternating pairs and the ratios taken from them. A pair is two back-to-back runs of the
//! same workload, one with nothing attached and one beside a mode, in an order that
//! alternates from pair to pair; a ratio is taken within a pair (the machine's speed drifts
//! less between adjacent runs than across a round), and the figure is the median over pairs
//! with its spread. The primary figure is CPU per unit of work — (workload CPU + tracer CPU) per
//! reset or per request, over the same without a tracer — because CPU seconds are much
//! steadier than rates on a small shared machine; rates are kept as secondary figures.

use serde_json::{json, Value};

use super::stats::Spread;
use super::tracers::Mode;

pub const METHOD: &str = "Ratios are taken side by side in one invocation, from alternating pairs: two back-to-back runs of the same workload, one with nothing attached and one beside a mode, the order alternating from pair to pair; each round has one pair per mode, the modes in an order rotating every round. A ratio is taken within a pair, and a figure is the median over pairs with its min–max. The primary figure is the CPU cost ratio: (workload CPU + tracer CPU) per unit of work (reset, request) beside the mode / workload CPU per unit with nothing attached; rates are secondary. The floor is count-only programs (a per-CPU counter increment, 12 instructions) that the bench loads itself and attaches to exactly the hooks rsttrace attaches (read from rsttrace's own links in /proc/PID/fdinfo); it has no user space.";

/// One run of a workload beside one mode.
#[derive(Debug, Clone)]
pub struct Sample {
    pub round: u32,
    /// The pair this run belongs to (its no-tracer partner has the same number).
    pub pair: u32,
    pub mode: Mode,
    /// Units of work done: resets made, requests completed.
    pub units: u64,
    /// Wall time of the workload, seconds.
    pub secs: f64,
    /// CPU of the workload's processes during it, seconds.
    pub workload_cpu_s: f64,
    /// CPU of the tracer's process from attach to drained, seconds (0: none, floor).
    pub tracer_cpu_s: f64,
}

impl Sample {
    pub fn rate(&self) -> Option<f64> {
        (self.secs > 0.0).then(|| self.units as f64 / self.secs)
    }

    /// (workload CPU + tracer CPU) per unit, seconds.
    pub fn cost_per_unit(&self) -> Option<f64> {
        (self.units > 0).then(|| (self.workload_cpu_s + self.tracer_cpu_s) / self.units as f64)
    }

    pub fn json(&self) -> Value {
        json!({
            "round": self.round,
            "pair": self.pair,
            "mode": self.mode.name(),
            "units": self.units,
            "secs": self.secs,
            "rate_per_s": self.rate(),
            "workload_cpu_s": self.workload_cpu_s,
            "tracer_cpu_s": self.tracer_cpu_s,
            "cost_per_unit_us": self.cost_per_unit().map(|c| c * 1e6),
        })
    }
}

/// One run to make: which round and pair it belongs to, and beside what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub round: u32,
    pub pair: u32,
    pub mode: Mode,
}

/// The runs of `rounds` rounds, in order: per round one pair for each of `traced` (their
/// order rotating every round), each pair's no-tracer run first or second in turn.
pub fn schedule(traced: &[Mode], rounds: u32) -> Vec<Slot> {
    let mut slots = Vec::new();
    let mut pair = 0;
    for round in 0..rounds {
        for mode in super::tracers::rotation(traced, round) {
            let mut two = [Mode::None, mode];
            if pair % 2 == 1 {
                two.reverse();
            }
            slots.extend(two.map(|mode| Slot { round, pair, mode }));
            pair += 1;
        }
    }
    slots
}

/// Per pair of `mode`: (its round, `f(mode's run)`, `f(its no-tracer partner)`), the
/// partner's figure positive.
fn paired_figures(
    samples: &[Sample],
    mode: Mode,
    f: &impl Fn(&Sample) -> Option<f64>,
) -> Vec<(u32, f64, f64)> {
    samples
        .iter()
        .filter(|s| s.mode == mode)
        .filter_map(|s| {
            let base = samples
                .iter()
                .find(|b| b.mode == Mode::None && b.pair == s.pair)?;
            let (a, b) = (f(s)?, f(base)?);
            (b > 0.0).then_some((s.round, a, b))
        })
        .collect()
}

/// Per pair: `f(mode's run) / f(its no-tracer partner)`.
fn paired(samples: &[Sample], mode: Mode, f: impl Fn(&Sample) -> Option<f64>) -> Vec<f64> {
    paired_figures(samples, mode, &f)
        .into_iter()
        .map(|(_, a, b)| a / b)
        .collect()
}

/// Per round holding a pair of each: (cost ratio of `a` - cost ratio of `b`, that difference
/// in microseconds per unit, i.e. times the mean cost per unit of the two pairs' no-tracer
/// runs). Both pairs of a round ran within a few seconds of each other, so the difference
/// carries less of the machine's drift than two medians taken over all rounds.
pub fn cost_differences(samples: &[Sample], a: Mode, b: Mode) -> Vec<(f64, f64)> {
    let cost = Sample::cost_per_unit;
    let of_b = paired_figures(samples, b, &cost);
    paired_figures(samples, a, &cost)
        .into_iter()
        .filter_map(|(round, ta, na)| {
            let &(_, tb, nb) = of_b.iter().find(|(r, ..)| *r == round)?;
            let diff = ta / na - tb / nb;
            Some((diff, diff * (na + nb) / 2.0 * 1e6))
        })
        .collect()
}

/// CPU cost ratio per pair: cost per unit beside `mode` / cost per unit with nothing.
pub fn cost_ratios(samples: &[Sample], mode: Mode) -> Vec<f64> {
    paired(samples, mode, Sample::cost_per_unit)
}

/// Rate ratio per pair: units per second beside `mode` / with nothing.
pub fn rate_ratios(samples: &[Sample], mode: Mode) -> Vec<f64> {
    paired(samples, mode, Sample::rate)
}

/// The spread of `f` over the runs of `mode`.
pub fn spread_of(
    samples: &[Sample],
    mode: Mode,
    f: impl Fn(&Sample) -> Option<f64>,
) -> Option<Spread> {
    let values: Vec<f64> = samples
        .iter()
        .filter(|s| s.mode == mode)
        .filter_map(f)
        .collect();
    Spread::of(&values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pair: u32, mode: Mode, units: u64, workload: f64, tracer: f64) -> Sample {
        Sample {
            round: 0,
            pair,
            mode,
            units,
            secs: 1.0,
            workload_cpu_s: workload,
            tracer_cpu_s: tracer,
        }
    }

    #[test]
    fn pairs_alternate_their_order_and_rotate_their_modes() {
        let traced = [Mode::Floor, Mode::Rsttrace];
        let modes: Vec<(u32, Mode)> = schedule(&traced, 2)
            .iter()
            .map(|s| (s.pair, s.mode))
            .collect();
        assert_eq!(
            modes,
            [
                (0, Mode::None),
                (0, Mode::Floor),
                (1, Mode::Rsttrace),
                (1, Mode::None),
                (2, Mode::None),
                (2, Mode::Rsttrace),
                (3, Mode::Floor),
                (3, Mode::None),
            ]
        );
    }

    #[test]
    fn ratios_are_per_unit_and_within_a_pair() {
        let samples = [
            sample(0, Mode::None, 100, 1.0, 0.0),
            // fewer units done, same CPU, plus the tracer's own: (1.0 + 0.1) / 80 vs 1.0 / 100
            sample(0, Mode::Rsttrace, 80, 1.0, 0.1),
            sample(1, Mode::Rsttrace, 100, 2.0, 0.0),
            sample(1, Mode::None, 100, 1.0, 0.0),
            sample(2, Mode::Rsttrace, 100, 1.0, 0.0), // no partner in pair 2: skipped
        ];
        let cost = cost_ratios(&samples, Mode::Rsttrace);
        assert_eq!(cost.len(), 2);
        assert!((cost[0] - 1.375).abs() < 1e-9, "{cost:?}");
        assert!((cost[1] - 2.0).abs() < 1e-9, "{cost:?}");
        let rate = rate_ratios(&samples, Mode::Rsttrace);
        assert!((rate[0] - 0.8).abs() < 1e-9, "{rate:?}");
    }

    #[test]
    fn differences_are_taken_within_a_round() {
        let in_round = |round, s: Sample| Sample { round, ..s };
        let samples = [
            // round 0: 1.2 - 1.1 = 0.1 of a 10 us (mean) baseline: 1 us
            in_round(0, sample(0, Mode::None, 100, 1.0e-3, 0.0)),
            in_round(0, sample(0, Mode::Rsttrace, 100, 1.2e-3, 0.0)),
            in_round(0, sample(1, Mode::RsttraceNoNet, 100, 1.1e-3, 0.0)),
            in_round(0, sample(1, Mode::None, 100, 1.0e-3, 0.0)),
            // round 1 has no RsttraceNoNet pair: no difference
            in_round(1, sample(2, Mode::None, 100, 1.0e-3, 0.0)),
            in_round(1, sample(2, Mode::Rsttrace, 100, 3.0e-3, 0.0)),
        ];
        let d = cost_differences(&samples, Mode::Rsttrace, Mode::RsttraceNoNet);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!((d[0].0 - 0.1).abs() < 1e-9, "{d:?}");
        assert!((d[0].1 - 1.0).abs() < 1e-9, "{d:?}");
    }
}

//! Figure: rsttrace's peak memory. VmHWM (the peak resident set) is read from
//! /proc/PID/status at the end of every rsttrace run of the bench, before it is stopped; the
//! figure is the largest, with the run it came from.

use serde_json::{json, Value};

use super::budget;
use super::table::Row;

pub const METHOD: &str = "Peak RSS: VmHWM of rsttrace from /proc/PID/status, read at the end of each of its runs (storm, steady load, statistics rounds, latency) before stopping it; the maximum over runs, with the run it came from.";

#[derive(Default)]
pub struct PeakRss {
    samples: Vec<(String, u64)>,
}

impl PeakRss {
    pub fn record(&mut self, run: &str, bytes: u64) {
        self.samples.push((run.to_string(), bytes));
    }

    fn peak(&self) -> Option<&(String, u64)> {
        self.samples.iter().max_by_key(|(_, b)| *b)
    }

    pub fn rows(&self) -> Vec<Row> {
        let peak = self.peak();
        let mb = peak.map(|(_, b)| *b as f64 / 1e6);
        vec![Row::new(
            "peak_rss_mb",
            "peak RSS of rsttrace (VmHWM), MB",
            peak.map_or_else(
                || "n/a".into(),
                |(run, b)| {
                    format!(
                        "{:.1} (in the {run} run; {} runs)",
                        *b as f64 / 1e6,
                        self.samples.len()
                    )
                },
            ),
        )
        .number(mb)
        .target(
            format!("<= {:.0} MB", budget::RSS_MB),
            mb.map(|m| m <= budget::RSS_MB),
        )]
    }

    pub fn json(&self) -> Value {
        json!(self
            .samples
            .iter()
            .map(|(run, b)| json!({"run": run, "vm_hwm_bytes": b}))
            .collect::<Vec<_>>())
    }
}

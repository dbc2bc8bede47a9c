//! The bench's output: a table of figures against their targets, a table of per-hook costs
//! against their budgets, both as Markdown (printed, and written into the README's
//! Performance section between markers) and as JSON (target/bench/bench.json).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::machine::Machine;
use super::stats::Spread;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    Context,
}

impl Verdict {
    pub fn of(pass: bool) -> Self {
        if pass {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Context => "context",
        }
    }
}

/// One figure: what it is, its value (median with spread where it has one), its target.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: String,
    pub figure: String,
    pub value: String,
    pub number: Option<f64>,
    pub spread: Option<Spread>,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    pub fn new(
        key: impl Into<String>,
        figure: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            figure: figure.into(),
            value: value.into(),
            number: None,
            spread: None,
            target: "-".into(),
            verdict: Verdict::Context,
        }
    }

    pub fn number(mut self, n: Option<f64>) -> Self {
        self.number = n;
        self
    }

    /// The figure's number is this spread's median.
    pub fn spread(mut self, s: Option<Spread>) -> Self {
        self.spread = s;
        self.number = s.map(|s| s.median);
        self
    }

    /// A target; no measured number is a miss.
    pub fn target(mut self, target: impl Into<String>, pass: Option<bool>) -> Self {
        self.target = target.into();
        self.verdict = Verdict::of(pass.unwrap_or(false));
        self
    }

    fn json(&self) -> Value {
        json!({
            "key": self.key,
            "figure": self.figure,
            "value": self.number,
            "spread": self.spread.map(|s| s.json()),
            "display": self.value,
            "target": self.target,
            "result": self.verdict.name(),
        })
    }
}

/// One program's cost in one workload (or a total line), from the kernel's statistics.
#[derive(Debug, Clone)]
pub struct HookRow {
    pub workload: String,
    pub unit: &'static str,
    pub program: String,
    pub hook: String,
    pub ns_per_run: Option<Spread>,
    pub runs_per_unit: Option<Spread>,
    pub ns_per_unit: Option<f64>,
    pub floor_ns_per_run: Option<f64>,
    pub budget: String,
    pub verdict: Verdict,
}

impl HookRow {
    /// A row of figures per unit only (a sum over programs, or user space): no hook, no
    /// per-run figures.
    pub fn total(
        workload: String,
        unit: &'static str,
        program: String,
        ns_per_unit: Option<f64>,
        budget: String,
        verdict: Verdict,
    ) -> Self {
        Self {
            workload,
            unit,
            program,
            hook: "-".into(),
            ns_per_run: None,
            runs_per_unit: None,
            ns_per_unit,
            floor_ns_per_run: None,
            budget,
            verdict,
        }
    }

    fn json(&self) -> Value {
        json!({
            "workload": self.workload,
            "unit": self.unit,
            "program": self.program,
            "hook": self.hook,
            "ns_per_run": self.ns_per_run.map(|s| s.json()),
            "runs_per_unit": self.runs_per_unit.map(|s| s.json()),
            "ns_per_unit": self.ns_per_unit,
            "floor_ns_per_run": self.floor_ns_per_run,
            "budget": self.budget,
            "result": self.verdict.name(),
        })
    }
}

/// Everything one bench run measured.
pub struct Report {
    pub machine: Machine,
    pub settings: Value,
    /// One sentence saying how many rounds of what (under the machine's line).
    pub settings_line: String,
    pub rows: Vec<Row>,
    pub hooks: Vec<HookRow>,
    pub methods: Vec<&'static str>,
    pub raw: Value,
    pub duration_s: f64,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

impl Report {
    /// The two tables, with the machine named: what goes into the README.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}\n{}\n", self.machine.describe(), self.settings_line);
        out.push_str(
            "| figure | measured: median (min–max) | target | result |\n|---|---|---|---|\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                r.figure,
                r.value,
                r.target,
                r.verdict.name()
            );
        }
        out.push_str(
            "\nPer hook, from the kernel's own run_cnt and run_time_ns (rounds of their own, \
             BPF_ENABLE_STATS):\n\n\
             | workload | program | hook | ns/run | runs/unit | ns/unit | floor ns/run | budget | result |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for h in &self.hooks {
            let _ = writeln!(
                out,
                "| {} (per {}) | {} | {} | {} | {} | {} | {} | {} | {} |",
                h.workload,
                h.unit,
                h.program,
                h.hook,
                opt(h.ns_per_run.map(|s| s.median), 0),
                opt(h.runs_per_unit.map(|s| s.median), 2),
                opt(h.ns_per_unit, 0),
                opt(h.floor_ns_per_run, 0),
                h.budget,
                h.verdict.name()
            );
        }
        out
    }

    /// The Markdown plus the verdict summary and how each figure is measured (stdout).
    pub fn text(&self) -> String {
        let mut out = self.markdown();
        let missed: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Miss)
            .map(|r| r.key.clone())
            .chain(
                self.hooks
                    .iter()
                    .filter(|h| h.verdict == Verdict::Miss)
                    .map(|h| format!("{}: {}", h.workload, h.program)),
            )
            .collect();
        let _ = writeln!(
            out,
            "\n{}",
            if missed.is_empty() {
                "all targets and budgets met".to_string()
            } else {
                format!("missed: {}", missed.join(", "))
            }
        );
        out.push_str("\nhow each figure is measured:\n");
        for m in &self.methods {
            let _ = writeln!(out, "- {m}");
        }
        out
    }

    pub fn json(&self) -> Value {
        json!({
            "machine": self.machine.json(),
            "settings": self.settings,
            "figures": self.rows.iter().map(Row::json).collect::<Vec<_>>(),
            "hooks": self.hooks.iter().map(HookRow::json).collect::<Vec<_>>(),
            "raw": self.raw,
            "methods": self.methods,
            "duration_s": self.duration_s,
        })
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let text = serde_json::to_string_pretty(&self.json()).context("encoding the results")?;
        fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

pub const README_BEGIN: &str = "<!-- bench:begin (written by `cargo xtask bench`) -->";
pub const README_END: &str = "<!-- bench:end -->";

/// Replaces what lies between the bench markers of `readme` with `block`.
pub fn update_readme(readme: &Path, block: &str) -> Result<()> {
    let text =
        fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let (Some(begin), Some(end)) = (text.find(README_BEGIN), text.find(README_END)) else {
        bail!(
            "{} has no `{README_BEGIN}` ... `{README_END}` block in its Performance section: \
             put one where the table belongs, or pass --no-readme",
            readme.display()
        );
    };
    if end < begin {
        bail!(
            "{}: the bench markers are in the wrong order",
            readme.display()
        );
    }
    let updated = format!(
        "{}{README_BEGIN}\n{}{}",
        &text[..begin],
        block.trim_end_matches('\n').to_string() + "\n",
        &text[end..]
    );
    fs::write(readme, updated).with_context(|| format!("writing {}", readme.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_block_is_replaced_between_markers() {
        let dir = std::env::temp_dir().join(format!("bench-readme-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("README.md");
        fs::write(
            &path,
            format!("# x\n{README_BEGIN}\nold\n{README_END}\nafter\n"),
        )
        .expect("write");
        update_readme(&path, "new table\n").expect("update");
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            format!("# x\n{README_BEGIN}\nnew table\n{README_END}\nafter\n")
        );
        fs::write(&path, "no markers").expect("write");
        assert!(update_readme(&path, "t").is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}

//! `cargo xtask bench`: what rsttrace costs, measured side by side in one run.
//!
//! One module per figure — `storm` (reset storm), `load` (steady load through nginx),
//! `startup`, `memory`, `latency` — each giving its rows to `table`, which prints them,
//! writes target/bench/bench.json and the README's Performance section. Costs are CPU
//! seconds per unit of work (`pairs`), with and without a tracer in alternating rounds,
//! beside the floor (count-only programs on rsttrace's own hooks: `floor`, `bpf`, `progs`)
//! and bpftrace; per-hook costs come from the kernel's own statistics (`hookcost`), held
//! against the budgets and targets in `budget`.

mod bpf;
mod budget;
mod cpu;
mod floor;
mod hookcost;
mod latency;
mod load;
mod machine;
mod memory;
mod pairs;
mod progs;
mod replay;
mod servers;
mod startup;
mod stats;
mod storm;
mod table;
mod tracers;

use std::cell::RefCell;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use progs::AttachedHook;
use table::Report;
use tracers::{FileTracer, BPFTRACE_SCRIPT};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  cargo xtask bench                      the full table (about 10 minutes), README updated
  cargo xtask bench --quick              a rough table in about 2 minutes (README untouched)
  cargo xtask bench --rsttrace-arg=--no-syscall-hooks   measure that mode")]
pub struct BenchArgs {
    /// Few and short rounds, for development: figures are rough, the README is not updated.
    #[arg(long)]
    pub quick: bool,
    /// Storm rounds, each one alternating pair (nothing / mode) for the floor, rsttrace and
    /// bpftrace: the number of pairs a figure is the median of [default: 10, quick 3].
    #[arg(long)]
    pub storm_rounds: Option<u32>,
    /// Length of each storm run, in seconds [default: 2, quick 1].
    #[arg(long)]
    pub storm_secs: Option<u64>,
    /// Upper bound of resets per storm run.
    #[arg(long, default_value_t = 2_000_000)]
    pub storm_max_resets: u64,
    /// CPU the storm generator is pinned to.
    #[arg(long, default_value_t = 0)]
    pub storm_cpu: usize,
    /// Let the scheduler place the storm generator anywhere.
    #[arg(long)]
    pub no_pin: bool,
    /// Steady-load rounds per path, each one alternating pair (nothing / mode) for the floor,
    /// rsttrace and rsttrace with --no-network-hooks [default: 10, quick 3].
    #[arg(long)]
    pub load_rounds: Option<u32>,
    /// Length of each wrk run, in seconds [default: 2, quick 1].
    #[arg(long)]
    pub load_secs: Option<u64>,
    /// Rounds with the kernel's per-program statistics on, per workload [default: 2, quick 1].
    #[arg(long)]
    pub stats_rounds: Option<u32>,
    /// Start-up measurements per tracer [default: 7, quick 3].
    #[arg(long)]
    pub startup_runs: Option<u32>,
    /// Where to write the figures as JSON [default: target/bench/bench.json].
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Do not write the table into README.md's Performance section.
    #[arg(long)]
    pub no_readme: bool,
    /// An extra argument for every rsttrace run (repeatable), e.g.
    /// `--rsttrace-arg=--no-syscall-hooks` to measure that mode.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub rsttrace_arg: Vec<String>,
}

/// The bench's settings, `--quick` and defaults resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub storm_rounds: u32,
    pub storm_secs: u64,
    pub storm_max_resets: u64,
    pub storm_cpu: Option<usize>,
    pub load_rounds: u32,
    pub load_secs: u64,
    pub stats_rounds: u32,
    pub startup_runs: u32,
    pub paced_secs: u64,
}

impl Settings {
    fn resolve(a: &BenchArgs) -> Result<Self> {
        let pick =
            |v: Option<u32>, full: u32, quick: u32| v.unwrap_or(if a.quick { quick } else { full });
        let s = Self {
            quick: a.quick,
            storm_rounds: pick(a.storm_rounds, 10, 3),
            storm_secs: a.storm_secs.unwrap_or(if a.quick { 1 } else { 2 }),
            storm_max_resets: a.storm_max_resets,
            storm_cpu: (!a.no_pin).then_some(a.storm_cpu),
            load_rounds: pick(a.load_rounds, 10, 3),
            load_secs: a.load_secs.unwrap_or(if a.quick { 1 } else { 2 }),
            stats_rounds: pick(a.stats_rounds, 2, 1),
            startup_runs: pick(a.startup_runs, 7, 3),
            paced_secs: if a.quick { 2 } else { 5 },
        };
        for (name, v) in [
            ("--storm-rounds", u64::from(s.storm_rounds)),
            ("--storm-secs", s.storm_secs),
            ("--storm-max-resets", s.storm_max_resets),
            ("--load-rounds", u64::from(s.load_rounds)),
            ("--load-secs", s.load_secs),
            ("--stats-rounds", u64::from(s.stats_rounds)),
            ("--startup-runs", u64::from(s.startup_runs)),
        ] {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
        }
        Ok(s)
    }

    fn describe(&self) -> String {
        format!(
            "Reset storm: {} alternating pairs of {} s runs (nothing / mode) for each of floor, \
             rsttrace, bpftrace; steady load: {} pairs of {} s runs for each of floor, rsttrace, \
             rsttrace --no-network-hooks and each path, wrk -t1 -c{}; {} rounds with the kernel's statistics on per workload and \
             mode; {} start-ups each. Figures are medians over pairs, (min–max) beside them.",
            self.storm_rounds,
            self.storm_secs,
            self.load_rounds,
            self.load_secs,
            servers::WRK_CONNECTIONS,
            self.stats_rounds,
            self.startup_runs
        )
    }
}

/// What every figure needs: the binaries, a scratch folder, the settings, rsttrace's hooks
/// (for the floor) and the peak-RSS record.
pub struct Ctx {
    pub bin: PathBuf,
    pub script: PathBuf,
    pub tmp: PathBuf,
    pub settings: Settings,
    pub rsttrace_args: Vec<String>,
    pub hooks: Vec<AttachedHook>,
    pub memory: RefCell<memory::PeakRss>,
}

impl Ctx {
    /// The release rsttrace with the bench-wide `--rsttrace-arg`s.
    pub fn rsttrace_command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.rsttrace_args);
        cmd
    }
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let settings = Settings::resolve(args)?;
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
    let mut ctx = Ctx {
        bin,
        script,
        tmp,
        settings,
        rsttrace_args: args.rsttrace_arg.clone(),
        hooks: Vec::new(),
        memory: RefCell::new(memory::PeakRss::default()),
    };
    ctx.hooks = discover(&ctx)?;
    let started = Instant::now();
    let report = measure(&ctx)?.report(&ctx, started.elapsed().as_secs_f64());
    println!("{}", report.text());
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| out_dir.join("bench.json"));
    report.write_json(&json_path)?;
    if !ctx.settings.quick && !args.no_readme {
        let readme = crate::workspace_root().join("README.md");
        table::update_readme(&readme, &report.markdown())?;
        eprintln!("bench: wrote the tables into {}", readme.display());
    }
    let _ = fs::remove_dir_all(&ctx.tmp);
    eprintln!(
        "bench: wrote {} ({:.0} s of measuring)",
        json_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The hooks rsttrace attaches here, read from a short run of it.
fn discover(ctx: &Ctx) -> Result<Vec<AttachedHook>> {
    let mut t = FileTracer::rsttrace(ctx, "discover")?;
    let hooks = progs::attached(&t.proc.pid().to_string())?;
    t.stop("rsttrace")?;
    t.remove_files();
    if hooks.is_empty() {
        bail!("rsttrace holds no attached BPF program: cannot build the floor");
    }
    eprintln!(
        "bench: rsttrace attaches {} programs: {}",
        hooks.len(),
        hooks
            .iter()
            .map(|h| format!("{} ({})", h.program, h.point.name()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let unmirrored = floor::unmirrored(&hooks);
    if !unmirrored.is_empty() {
        eprintln!("bench: the floor cannot mirror {}", unmirrored.join(", "));
    }
    Ok(hooks)
}

struct Measured {
    startup: startup::Startup,
    storm: storm::Storm,
    latency: latency::Latencies,
    load: load::Load,
    replay: replay::Replay,
}

fn measure(ctx: &Ctx) -> Result<Measured> {
    let s = &ctx.settings;
    eprintln!("bench: start-up ({} runs each)", s.startup_runs);
    let startup = startup::measure(ctx)?;
    eprintln!(
        "bench: reset storm ({} rounds x 3 pairs, {} s runs)",
        s.storm_rounds, s.storm_secs
    );
    let storm = storm::measure(ctx)?;
    eprintln!("bench: reset-to-line latency");
    let latency = latency::measure(ctx)?;
    eprintln!(
        "bench: steady load ({} rounds x 3 pairs x 3 paths, {} s runs)",
        s.load_rounds, s.load_secs
    );
    let load = load::measure(ctx)?;
    eprintln!("bench: user space in instructions (the storm replayed under callgrind)");
    let replay = replay::measure()?;
    Ok(Measured {
        startup,
        storm,
        latency,
        load,
        replay,
    })
}

impl Measured {
    fn report(&self, ctx: &Ctx, duration_s: f64) -> Report {
        let memory = ctx.memory.borrow();
        let mut rows = self.storm.rows();
        rows.extend(self.replay.rows());
        rows.extend(self.load.rows());
        rows.extend(self.startup.rows());
        rows.extend(memory.rows());
        rows.extend(self.latency.rows());
        let mut hooks = self.storm.hook_rows();
        hooks.extend(self.load.hook_rows());
        let s = &ctx.settings;
        Report {
            machine: machine::Machine::here(),
            settings: json!({
                "quick": s.quick, "storm_rounds": s.storm_rounds, "storm_secs": s.storm_secs,
                "storm_max_resets": s.storm_max_resets, "storm_cpu": s.storm_cpu,
                "load_rounds": s.load_rounds, "load_secs": s.load_secs,
                "wrk_connections": servers::WRK_CONNECTIONS, "stats_rounds": s.stats_rounds,
                "startup_runs": s.startup_runs, "paced_secs": s.paced_secs,
                "rsttrace_args": ctx.rsttrace_args,
                "hooks": ctx.hooks.iter().map(|h| json!({"program": h.program, "hook": h.point.name()})).collect::<Vec<_>>(),
            }),
            settings_line: s.describe(),
            rows,
            hooks,
            methods: vec![
                pairs::METHOD,
                storm::METHOD,
                load::METHOD,
                hookcost::METHOD,
                startup::METHOD,
                memory::METHOD,
                latency::METHOD,
                replay::METHOD,
            ],
            raw: json!({
                "storm": self.storm.json(),
                "load": self.load.json(),
                "startup": self.startup.json(),
                "memory": memory.json(),
                "latency": self.latency.json(),
                "replay": self.replay.json(),
            }),
            duration_s,
        }
    }
}

//! Figure: rsttrace's user-space work per storm reset, in instructions. The replay example
//! (tracer/examples/replay_storm) runs the samples of loopback aborts through decode,
//! attribution and rendering without a kernel, under callgrind: an instruction count is the
//! same twice for the same binary whatever else the machine does, where its CPU time moves
//! by a third between runs here.
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use super::table::Row;

pub const METHOD: &str = "User space in instructions: tracer/examples/replay_storm builds the three samples of each loopback abort as the programs write them on 6.18 (the receive, the send, the receiver's failing recv()) and decodes, attributes, renders (JSON lines into memory) and counts them as the session does; it runs for 20,000 resets under valgrind --tool=callgrind, and instructions executed (start-up included) / 20,000 is the figure. Deterministic for a given binary; it leaves out the ring buffer, the syscalls and /proc lookups.";

const RESETS: u64 = 20_000;

pub struct Replay {
    instructions: u64,
}

pub fn measure() -> Result<Replay> {
    let exe = crate::build_target(true, "--example", "replay_storm")?;
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(&exe)
        .arg(RESETS.to_string());
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running valgrind (installed by cargo xtask setup)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "valgrind {} failed ({}):\n{stderr}",
            exe.display(),
            out.status
        );
    }
    // ==123== Collected : 333066503
    let instructions = stderr
        .lines()
        .find_map(|l| {
            l.split_once("Collected :")
                .map(|(_, n)| n.trim().to_string())
        })
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no instruction count in callgrind's output:\n{stderr}"))?;
    Ok(Replay { instructions })
}

impl Replay {
    fn per_reset(&self) -> f64 {
        self.instructions as f64 / RESETS as f64
    }

    pub fn rows(&self) -> Vec<Row> {
        vec![Row::new(
            "storm_user_instructions",
            "reset storm: rsttrace user space, instructions per reset (replay under callgrind)",
            format!("{:.0}", self.per_reset()),
        )
        .number(Some(self.per_reset()))]
    }

    pub fn json(&self) -> Value {
        json!({"resets": RESETS, "instructions": self.instructions})
    }
}

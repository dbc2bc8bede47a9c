//! The machine a table was measured on, named in the README and the JSON.

use std::fs;
use std::process::Command;

use serde_json::{json, Value};

pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
    pub bpftrace: String,
    pub commit: String,
}

impl Machine {
    pub fn here() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let mut commit = stdout(Command::new("git").args(["rev-parse", "--short", "HEAD"]));
        let dirty =
            stdout(Command::new("git").args(["status", "--porcelain", "--untracked-files=no"]));
        if !dirty.is_empty() {
            commit.push_str("+changes");
        }
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_default(),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            bpftrace: stdout(Command::new("bpftrace").arg("--version")),
            commit,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "Measured on {} ({} cores), {:.0} GiB, kernel {}, {}, rsttrace {} (release build).",
            self.cpu_model, self.cpus, self.memory_gib, self.kernel, self.bpftrace, self.commit
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "cpus": self.cpus,
            "cpu_model": self.cpu_model,
            "kernel": self.kernel,
            "memory_gib": self.memory_gib,
            "bpftrace": self.bpftrace,
            "rsttrace_commit": self.commit,
        })
    }
}

fn stdout(cmd: &mut Command) -> String {
    cmd.current_dir(crate::workspace_root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

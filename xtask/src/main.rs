//! Developer and user entry point: `cargo xtask setup|build|run|test|demo|bench|package`.
//!
//! Everything a fresh machine lacks is installed by `setup`, idempotently; `test` and
//! `demo` call it first, so a newcomer runs one command.
mod bench;
mod package;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
pub use rsttrace_tests::command::display;

#[derive(Parser)]
#[command(about = "rsttrace developer tasks", long_about = None)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks: Debian packages, bpf-linker, the eBPF toolchain
    /// link, the servers the tests use. Idempotent; says what it did.
    Setup,
    /// Build rsttrace (kernel programs included).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run rsttrace as root with the given arguments: cargo xtask run -- --pid-of php-fpm
    Run {
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, formatting and lint checks, unit tests, then the root integration tests
    /// against real nginx, php-fpm and gunicorn, and a million real resets (release build).
    Test {
        /// Only run integration tests whose name contains this filter.
        filter: Option<String>,
    },
    /// Start nginx + php-fpm + gunicorn on loopback, break them one way after another and
    /// show rsttrace's explanation next to nginx's error.log line.
    Demo,
    /// Measure what rsttrace costs: CPU per reset (storm) and per proxied request (steady
    /// load through nginx) against nothing, the floor (count-only programs on the same hooks)
    /// and bpftrace, per-hook kernel statistics, start-up, peak memory, reset-to-line latency.
    Bench(bench::BenchArgs),
    /// Build the release binary and target/package/rsttrace_VERSION_ARCH.deb (dpkg-deb):
    /// the binary in /usr/sbin, rsttrace(8), bash/zsh/fish completions, README, copyright,
    /// and a systemd unit running it with capabilities instead of root.
    Package,
    /// Boot Debian 12 (its 6.1 kernel, systemd as PID 1) under qemu with the .deb: install
    /// it, start the service, make a reset, check the journal and the service's credentials.
    ServiceTest,
    /// Boot Debian's 6.1 and 6.12 kernels under qemu (and use the host's) and run real resets
    /// on loopback against rsttrace in each: a kernel x scenario matrix plus `--check` output.
    VmTest,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup::setup(),
        Task::Build { release } => build(release).map(|_| ()),
        Task::Run { release, args } => {
            let bin = build(release)?;
            let status = as_root(&bin, &args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { filter } => test(filter.as_deref()),
        Task::Demo => demo(),
        Task::Bench(args) => bench::bench(&args),
        Task::Package => package::package().map(|_| ()),
        Task::ServiceTest => {
            setup::setup()?;
            vm::service::service_test(&package::package()?)
        }
        Task::VmTest => {
            setup::setup()?;
            vm::vm_test()
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn run_checked(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", display(cmd));
    }
    Ok(())
}

/// Builds rsttrace and returns the binary cargo wrote: its path comes from cargo's own
/// artifact message, so a `CARGO_TARGET_DIR` (or `build.target-dir`) is honoured instead of
/// running a stale or missing `target/` binary of this checkout.
fn build(release: bool) -> Result<PathBuf> {
    build_target(release, "--bin", "rsttrace")
}

/// Builds target `name` of the rsttrace package (`kind`: `--bin` or `--example`) and
/// returns the executable cargo wrote.
fn build_target(release: bool, kind: &str, name: &str) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--package",
        "rsttrace",
        kind,
        name,
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        cmd.arg("--release");
    }
    eprintln!("xtask: $ {}", display(&cmd));
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("could not start {}", display(&cmd)))?;
    if !out.status.success() {
        bail!("{} failed ({})", display(&cmd), out.status);
    }
    built_executable(&String::from_utf8_lossy(&out.stdout), name)
        .with_context(|| format!("{} named no `{name}` executable", display(&cmd)))
}

/// The executable of binary target `name` in cargo's JSON messages (one per line).
fn built_executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

fn as_root(bin: &Path, args: &[String]) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } == 0 {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        cmd
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(bin).args(args);
        cmd
    }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn test(filter: Option<&str>) -> Result<()> {
    setup::setup()?;
    run_checked(cargo().args(["fmt", "--all", "--check"]))?;
    run_checked(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Unit tests (attribution engine on recorded sequences, decoders, CLI): no root needed.
    run_checked(cargo().args(["test", "--workspace", "--exclude", "rsttrace-tests"]))?;
    // Root integration tests: real nginx, php-fpm and gunicorn, broken for real; a million
    // real resets against the release build (the product's own CPU and memory); the .deb
    // installed and run with the service's capabilities; the DaemonSet's pod emulated.
    let bin = build(false)?;
    let release = build(true)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("the integration tests attach eBPF programs and start servers: run `cargo xtask test` as root");
    }
    let deb = package::package()?;
    let mut cmd = cargo();
    cmd.args(["test", "--package", "rsttrace-tests", "--lib"])
        .args([
            "--test",
            "scenarios",
            "--test",
            "reliability",
            "--test",
            "correctness",
        ])
        .args([
            "--test",
            "topology",
            "--test",
            "network",
            "--test",
            "nginx_log",
            "--test",
            "nginx_join",
            "--test",
            "metrics",
        ])
        .args([
            "--test",
            "million",
            "--test",
            "package",
            "--test",
            "daemonset",
            "--",
        ])
        .args(filter)
        .args(["--test-threads=1", "--nocapture"])
        .env("RSTTRACE_BIN", &bin)
        .env("RSTTRACE_RELEASE_BIN", &release)
        .env("RSTTRACE_DEB", &deb);
    let started = std::time::Instant::now();
    run_checked(&mut cmd)?;
    eprintln!(
        "xtask: integration tests took {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // The same resets on Debian's 6.1 and 6.12 kernels (qemu) and on this one: `vm-test`.
    vm::vm_test()?;
    // The packaged service under systemd on Debian 12's kernel: `service-test`.
    vm::service::service_test(&deb)
}

fn demo() -> Result<()> {
    setup::setup()?;
    let bin = build(false)?;
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--package",
        "rsttrace-tests",
        "--bin",
        "rsttrace-demo",
    ])
    .env("RSTTRACE_BIN", &bin);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("the demo attaches eBPF programs and starts servers: run `cargo xtask demo` as root");
    }
    run_checked(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_comes_from_cargos_artifact_message() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"tracer_ebpf"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"rsttrace"},"executable":"/t/release/rsttrace"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            built_executable(messages, "rsttrace"),
            Some(PathBuf::from("/t/release/rsttrace"))
        );
        assert_eq!(built_executable(messages, "other"), None);
    }
}

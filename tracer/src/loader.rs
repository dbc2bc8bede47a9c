//! Loads the kernel programs with this kernel's facts frozen in, attaches them, and hands
//! out the ring buffer and the lost-sample counter. Dropping [`Attached`] detaches all.
use std::time::Instant;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use tracer_ebpf::{
    Config, CONFIG_GLOBAL, EVENTS_MAP, LOST_MAP, NO_OFFSET, READER_MAP, READER_SLEEPS,
};

use crate::{
    hooks::{Attach, Hook, Tier},
    kernel::{is_syscall, KernelFacts},
    privileges::restrictive_perf_event_paranoid,
};

/// The compiled kernel programs (tracer-ebpf, built by build.rs for bpfel).
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rsttrace-ebpf"));

pub struct Attached {
    /// Owns the programs and their links: dropping it detaches everything (the ring buffer
    /// and the loss counter, taken out of it, stay readable).
    ebpf: Option<Ebpf>,
    lost: PerCpuArray<MapData, u64>,
    /// Whether rsttrace sleeps until a sample wakes it (see programs/mod.rs emit()).
    reader: Array<MapData, u32>,
    pub hooks: usize,
    /// Of those, syscall tracepoints: while any is attached, every syscall of every
    /// process takes the kernel's traced path (TIF_SYSCALL_TRACEPOINT).
    pub syscall_hooks: usize,
    pub elapsed_ms: u128,
    /// Optional hooks that exist here but could not be attached, with why.
    pub failed: Vec<(&'static Hook, String)>,
}

/// Returns the attached programs and the ring buffer their samples arrive on.
///
/// Socket syscall exits first read their arguments from the saved registers
/// (bpf_task_pt_regs, 5.15+); a kernel that refuses that gets the portable variant, with
/// enter hooks recording the arguments.
pub fn attach(
    facts: &KernelFacts,
    ring_bytes: u32,
    preload: Preload,
) -> Result<(Attached, RingBuf<MapData>)> {
    load_and_attach(facts, ring_bytes, preload, Mode::Attach)
}

/// Loads every program a run would attach, through the kernel's verifier, and attaches
/// none (`--check`): a program this kernel refuses shows in [`Attached::failed`] (optional
/// hooks) or as the error (required ones), as it would at start.
pub fn load_only(facts: &KernelFacts, preload: Preload) -> Result<Attached> {
    load_and_attach(facts, MIN_RING_BYTES, preload, Mode::LoadOnly).map(|(loaded, _)| loaded)
}

/// The smallest ring buffer the kernel takes (one page), for programs only loaded.
const MIN_RING_BYTES: u32 = 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Attach,
    LoadOnly,
}

fn load_and_attach(
    facts: &KernelFacts,
    ring_bytes: u32,
    preload: Preload,
    mode: Mode,
) -> Result<(Attached, RingBuf<MapData>)> {
    let mut config = facts.config;
    config.ring_wakeup_bytes = ring_bytes / 4;
    let mut loader = Some(preload.take());
    if config.regs_arg[0] != NO_OFFSET {
        let first = loader.take().unwrap_or_default();
        match attach_with(first, facts, &config, ring_bytes, false, mode) {
            Ok(attached) => return Ok(attached),
            // Other programs would be refused just the same.
            Err(err) if is_permission_error(&err) => return Err(explain_refusal(err)),
            Err(err) => {
                crate::note!(
                    "rsttrace: note: reading syscall arguments from registers is not possible \
                     here ({err:#}); recording them at syscall entry instead"
                );
                config.regs_arg = [NO_OFFSET; 4];
            }
        }
    }
    let loader = loader.take().unwrap_or_default();
    attach_with(loader, facts, &config, ring_bytes, true, mode).map_err(explain_refusal)
}

/// aya's EbpfLoader::new() parses all of vmlinux BTF (aya 0.14, aya-rs/aya#1172) although
/// rsttrace needs none of it there (`.btf(None)` below): tens of milliseconds of start-up
/// spent on a second core while the kernel's facts are resolved on the first.
pub struct Preload(Option<std::thread::JoinHandle<EbpfLoader<'static>>>);

impl Preload {
    pub fn start() -> Self {
        Self(
            std::thread::Builder::new()
                .name("preload".into())
                .spawn(EbpfLoader::new)
                .ok(),
        )
    }

    fn take(self) -> EbpfLoader<'static> {
        self.0
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default()
    }
}

fn attach_with<'a>(
    mut loader: EbpfLoader<'a>,
    facts: &KernelFacts,
    config: &'a Config,
    ring_bytes: u32,
    argument_recorders: bool,
    mode: Mode,
) -> Result<(Attached, RingBuf<MapData>)> {
    let started = Instant::now();
    let mut ebpf = loader
        // Offsets come from our own BTF parse (kernel.rs); the programs use no CO-RE
        // relocations, so aya need not parse vmlinux BTF a second time.
        .btf(None)
        .override_global(CONFIG_GLOBAL, config, true)
        .map_max_entries(EVENTS_MAP, ring_bytes)
        .load(PROGRAMS)
        .map_err(|e| explain_load_error(e.into()))?;

    let (mut hooks, mut syscall_hooks) = (0, 0);
    let mut failed = Vec::new();
    for hook in facts.attached() {
        if !argument_recorders && hook.tier == Tier::ArgumentRecorder {
            continue;
        }
        match attach_hook(&mut ebpf, hook, facts, mode) {
            Ok(()) => {
                hooks += 1;
                syscall_hooks += usize::from(is_syscall(hook));
            }
            // An optional hook the kernel refuses costs its capability, not the run.
            Err(err) if !hook.required && hook.tier == Tier::Always => {
                failed.push((hook, format!("{err:#}")));
            }
            Err(err) => return Err(err),
        }
    }

    let events = RingBuf::try_from(
        ebpf.take_map(EVENTS_MAP)
            .ok_or_else(|| anyhow!("map {EVENTS_MAP} missing"))?,
    )?;
    let lost = PerCpuArray::try_from(
        ebpf.take_map(LOST_MAP)
            .ok_or_else(|| anyhow!("map {LOST_MAP} missing"))?,
    )?;
    let reader = Array::try_from(
        ebpf.take_map(READER_MAP)
            .ok_or_else(|| anyhow!("map {READER_MAP} missing"))?,
    )?;
    Ok((
        Attached {
            ebpf: Some(ebpf),
            lost,
            reader,
            hooks,
            syscall_hooks,
            elapsed_ms: started.elapsed().as_millis(),
            failed,
        },
        events,
    ))
}

/// Loads `hook`'s program and attaches it where the catalogue says (`Mode::Attach`).
fn attach_hook(ebpf: &mut Ebpf, hook: &Hook, facts: &KernelFacts, mode: Mode) -> Result<()> {
    let program = ebpf
        .program_mut(hook.program)
        .ok_or_else(|| anyhow!("program {} missing from the eBPF object", hook.program))?;
    match hook.attach {
        Attach::RawTracepoint { event, .. } => {
            let program: &mut RawTracePoint = program
                .try_into()
                .with_context(|| format!("program {} is not a raw tracepoint", hook.program))?;
            program
                .load()
                .map_err(|e| explain_load_error(e.into()))
                .with_context(|| format!("loading the program for raw tracepoint {event}"))?;
            if mode == Mode::LoadOnly {
                return Ok(());
            }
            program
                .attach(event)
                .with_context(|| format!("attaching to raw tracepoint {event}"))?;
        }
        Attach::CgroupSkbIngress => {
            let root = facts
                .cgroup2
                .as_deref()
                .ok_or_else(|| anyhow!("no cgroup2 mount"))?;
            let cgroup = std::fs::File::open(root)
                .with_context(|| format!("opening the root cgroup {}", root.display()))?;
            let program: &mut CgroupSkb = program
                .try_into()
                .with_context(|| format!("program {} is not cgroup_skb", hook.program))?;
            program
                .load()
                .map_err(|e| explain_load_error(e.into()))
                .context("loading the cgroup_skb ingress program")?;
            if mode == Mode::LoadOnly {
                return Ok(());
            }
            // Through a bpf_link (aya uses one from 5.7): other programs on the root cgroup
            // (systemd's, Cilium's, Calico's) keep running, and the link goes with our fd.
            program
                .attach(
                    cgroup,
                    CgroupSkbAttachType::Ingress,
                    CgroupAttachMode::Single,
                )
                .with_context(|| {
                    format!(
                        "attaching cgroup_skb ingress to {} (needs CAP_NET_ADMIN and cgroup2)",
                        root.display()
                    )
                })?;
        }
        Attach::Tracepoint { category, event } => {
            let program: &mut TracePoint = program
                .try_into()
                .with_context(|| format!("program {} is not a tracepoint", hook.program))?;
            program
                .load()
                .map_err(|e| explain_load_error(e.into()))
                .with_context(|| format!("loading the program for {category}:{event}"))?;
            if mode == Mode::LoadOnly {
                return Ok(());
            }
            program
                .attach(category, event)
                .with_context(|| format!("attaching to tracepoint {category}:{event}"))?;
        }
    }
    Ok(())
}

impl Attached {
    /// Detaches and unloads every program now.
    pub fn detach(&mut self) {
        self.ebpf = None;
    }

    /// Tells the programs whether rsttrace is about to sleep until a sample wakes it (every
    /// sample then wakes it) or drains on its own timer (none does, short of a filling ring).
    pub fn set_reader_sleeps(&mut self, sleeps: bool) -> Result<()> {
        let value = if sleeps { READER_SLEEPS } else { 0 };
        self.reader
            .set(0, value, 0)
            .context("writing the reader's state for the programs")
    }

    /// Runs of these programs the kernel skipped since they were loaded. A tracing program
    /// does not run while another one runs on the same CPU (bpf_prog_active,
    /// trace_call_bpf() in kernel/trace/bpf_trace.c; raw tracepoints have a per-program
    /// guard): a RST delivered in a softirq that interrupted a program is not seen. Each
    /// skipped run may have been a sample. The kernel counts them in recursion_misses
    /// (/proc/self/fdinfo) only since raw tracepoints' runs call bpf_prog_inc_misses_counter()
    /// (6.2) and tracepoints' (6.7, trace_call_bpf()); before, a skip is neither counted
    /// nor shown, and this reads 0 for those programs.
    pub fn skipped_runs(&self) -> u64 {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let Some(ebpf) = &self.ebpf else {
            return 0;
        };
        ebpf.programs()
            .filter_map(|(_, program)| program.fd().ok())
            .filter_map(|fd| {
                let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
                std::fs::read_to_string(path).ok()
            })
            .map(|fdinfo| recursion_misses(&fdinfo))
            .sum()
    }

    /// Samples the kernel could not queue since start (ring buffer full), all CPUs and all
    /// kinds (the programs count per kind: see LOST in tracer-ebpf).
    pub fn lost_total(&self) -> u64 {
        (0..tracer_ebpf::event::EventKind::COUNT as u32)
            .filter_map(|kind| self.lost.get(&kind, 0).ok())
            .map(|per_cpu| per_cpu.iter().sum::<u64>())
            .sum()
    }
}

/// One line for a hook's failure: the error's context, and of a verifier log only its
/// verdict (the line before "verification time", e.g. "unknown func
/// bpf_get_current_pid_tgid#14"), not the thousands of lines before it.
pub fn failure_summary(error: &str) -> String {
    let Some((head, log)) = error.split_once("Verifier output:") else {
        return error.lines().next().unwrap_or_default().to_string();
    };
    let lines: Vec<&str> = log.lines().map(str::trim).collect();
    let verdict = lines
        .iter()
        .position(|l| l.starts_with("verification time"))
        .and_then(|i| lines[..i].iter().rev().find(|l| !l.is_empty()))
        .copied()
        .unwrap_or("see --check");
    format!("{} verifier: {verdict}", head.trim_end())
}

/// The `recursion_misses:` figure of a BPF program's fdinfo (0 when absent).
fn recursion_misses(fdinfo: &str) -> u64 {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether the kernel refused (EPERM, EACCES): a matter of privileges, not of a fault.
pub fn is_permission_error(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}");
    text.contains("Permission denied") || text.contains("Operation not permitted")
}

/// A refused attach on a kernel whose perf_event_paranoid level (Debian's and Ubuntu's 3
/// or 4) keeps perf_event_open() to CAP_SYS_ADMIN: say so, since the error alone
/// (EACCES) names neither the sysctl nor the capability.
fn explain_refusal(err: anyhow::Error) -> anyhow::Error {
    match restrictive_perf_event_paranoid() {
        Some(level) if is_permission_error(&err) => err.context(format!(
            "kernel.perf_event_paranoid is {level}: at that level Debian's and Ubuntu's kernels \
             let only CAP_SYS_ADMIN call perf_event_open(), which attaching a tracepoint uses \
             (CAP_PERFMON is not enough). Grant rsttrace CAP_SYS_ADMIN (the packaged service \
             does), or set the sysctl to 2"
        )),
        _ => err,
    }
}

fn explain_load_error(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        err.context(
            "the kernel refused to load eBPF programs: run rsttrace as root (or with CAP_BPF and \
             CAP_PERFMON), and check kernel.unprivileged_bpf_disabled / lockdown",
        )
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursion_misses_are_read_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_jited:\t1\n\
                      run_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t17\nverified_insns:\t512\n";
        assert_eq!(recursion_misses(fdinfo), 17);
        assert_eq!(
            recursion_misses("prog_type:\t5\n"),
            0,
            "kernels before 5.12"
        );
    }

    #[test]
    fn a_verifier_log_is_summed_up_by_its_verdict() {
        let error = "loading the cgroup_skb ingress program: the BPF_PROG_LOAD syscall returned \
                     Invalid argument (os error 22). Verifier output: 0: R1=ctx() R10=fp0\n\
                     439: (85) call bpf_get_current_pid_tgid#14\n\
                     unknown func bpf_get_current_pid_tgid#14\n\
                     verification time 11536 usec\nstack depth 248+0\n";
        assert_eq!(
            failure_summary(error),
            "loading the cgroup_skb ingress program: the BPF_PROG_LOAD syscall returned Invalid \
             argument (os error 22). verifier: unknown func bpf_get_current_pid_tgid#14"
        );
        assert_eq!(failure_summary("no cgroup2 mount"), "no cgroup2 mount");
    }
}

//! `rsttrace --check`: what this kernel supports, rendered from the hook catalogue —
//! each capability with the hooks serving it, each hook with what becomes of it here.
use std::fmt::Write as _;

use crate::{
    hooks::{Capability, Hook, Tier, HOOKS},
    kernel::{KernelFacts, Status, VMLINUX_BTF},
    loader::{failure_summary, Attached},
};

/// The report, and whether rsttrace can run here. `loaded`: every program a run would
/// attach, loaded through this kernel's verifier and not attached (loader::load_only).
pub fn report(facts: &KernelFacts, loaded: &anyhow::Result<Attached>) -> (String, bool) {
    let mut out = String::new();
    let refused: Vec<(&Hook, &str)> = match loaded {
        Ok(l) => l.failed.iter().map(|(h, why)| (*h, why.as_str())).collect(),
        Err(_) => Vec::new(),
    };
    kernel_lines(facts, &mut out);
    capability_lines(facts, &refused, &mut out);
    hook_lines(facts, &refused, &mut out);
    fact_lines(facts, &mut out);
    let loads = program_lines(loaded, &refused, &mut out);
    let usable = feature_lines(&mut out);
    (out, usable && loads)
}

/// Whether the programs load here; the kernel's full answer for each one refused.
fn program_lines(
    loaded: &anyhow::Result<Attached>,
    refused: &[(&Hook, &str)],
    out: &mut String,
) -> bool {
    match loaded {
        Ok(l) => {
            let _ = writeln!(
                out,
                "programs: {} of {} load through this kernel's verifier (loaded, not attached)",
                l.hooks,
                l.hooks + refused.len()
            );
            for (hook, why) in refused {
                let _ = writeln!(out, "  {} refused:", hook.program);
                for line in why.lines() {
                    let _ = writeln!(out, "    {line}");
                }
            }
            true
        }
        Err(e) => {
            let _ = writeln!(out, "programs: do not load here: {e:#}");
            false
        }
    }
}

fn kernel_lines(_facts: &KernelFacts, out: &mut String) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(out, "kernel {}", release.trim());
    let _ = writeln!(
        out,
        "BTF: {VMLINUX_BTF} (struct offsets, sk_rst_reason names)"
    );
}

fn capability_lines(facts: &KernelFacts, refused: &[(&Hook, &str)], out: &mut String) {
    let _ = writeln!(out, "capabilities:");
    for capability in Capability::ALL {
        // Argument recorders only stand in for the registers (see Tier::ArgumentRecorder).
        let served: Vec<String> = facts
            .attached()
            .filter(|h| h.capability == capability && h.tier != Tier::ArgumentRecorder)
            .filter(|h| !refused.iter().any(|(r, _)| r.program == h.program))
            .map(|h| h.attach.name())
            .collect();
        let describe = capability.describe();
        match (served.is_empty(), capability.fallback()) {
            (false, _) => {
                let _ = writeln!(out, "  ok       {describe}: {}", served.join(", "));
            }
            (true, Some(fallback)) => {
                let _ = writeln!(out, "  ok       {describe}: {fallback}");
            }
            (true, None) => {
                let _ = writeln!(out, "  MISSING  {describe}");
            }
        }
    }
}

fn hook_lines(facts: &KernelFacts, refused: &[(&Hook, &str)], out: &mut String) {
    let _ = writeln!(out, "hooks:");
    for state in &facts.hooks {
        let hook = state.hook;
        let name = hook.attach.name();
        let refusal = refused.iter().find(|(r, _)| r.program == hook.program);
        let line = match &state.status {
            Status::Attach if refusal.is_some() => format!(
                "  REFUSED  {name:<40} {}",
                refusal.map(|(_, why)| failure_summary(why)).unwrap_or_default()
            ),
            Status::Attach if hook.tier == Tier::ArgumentRecorder => format!(
                "  standby  {name:<40} records arguments only where the exit hook cannot read the saved registers"
            ),
            Status::Attach => format!("  ok       {name:<40} {}", hook.purpose),
            Status::Missing => format!("  missing  {name:<40} no {}", hook.purpose),
            Status::Unfit(why) => format!("  unfit    {name:<40} not used: {why}"),
            Status::NotNeeded(why) => format!("  unused   {name:<40} {why}"),
        };
        let _ = writeln!(out, "{line}");
    }
    debug_assert_eq!(facts.hooks.len(), HOOKS.len());
}

fn fact_lines(facts: &KernelFacts, out: &mut String) {
    let _ = writeln!(
        out,
        "reset reasons: {}",
        if facts.reset_reasons.is_empty() {
            "not reported by this kernel (before ~6.10): causes are inferred from the sending task"
                .to_string()
        } else {
            format!(
                "{} names from BTF (enum sk_rst_reason)",
                facts.reset_reasons.len()
            )
        }
    );
    if facts.degraded.is_empty() {
        let _ = writeln!(out, "struct offsets: all resolved from BTF");
    } else {
        let _ = writeln!(
            out,
            "struct offsets missing from BTF (degraded): {}",
            facts.degraded.join(", ")
        );
    }
}

/// Kernel BPF features (probed by loading tiny programs and maps); false when one rsttrace
/// needs is missing.
fn feature_lines(out: &mut String) -> bool {
    use aya::{
        maps::MapType,
        programs::ProgramType,
        sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
    };
    let yes = |r: bool| if r { "yes" } else { "no" };
    let tracepoints = is_program_supported(ProgramType::TracePoint).unwrap_or(false);
    let ring = is_map_supported(MapType::RingBuf).unwrap_or(false);
    let regs = is_helper_supported(ProgramType::TracePoint, BpfHelper::BPF_FUNC_task_pt_regs)
        .unwrap_or(false);
    let kprobes = std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists()
        || std::path::Path::new("/sys/kernel/debug/tracing/kprobe_events").exists();
    let raw_tp = is_program_supported(ProgramType::RawTracePoint).unwrap_or(false);
    let _ = writeln!(out, "kernel BPF features:");
    let _ = writeln!(
        out,
        "  tracepoint programs (required): {}",
        yes(tracepoints)
    );
    let _ = writeln!(out, "  BPF ring buffer, 5.8+ (required): {}", yes(ring));
    let _ = writeln!(
        out,
        "  bpf_task_pt_regs in tracepoints: {} ({})",
        yes(regs),
        if regs {
            "socket syscall exits read their arguments from registers"
        } else {
            "syscall arguments recorded at entry instead (more overhead)"
        }
    );
    let _ = writeln!(out, "  raw tracepoints: {} (not needed)", yes(raw_tp));
    let _ = writeln!(
        out,
        "  kprobes: {} (not needed: every capability is served by tracepoints)",
        yes(kprobes)
    );
    if !tracepoints || !ring {
        let _ = writeln!(
            out,
            "rsttrace cannot run here: it needs BPF tracepoint programs and BPF ring buffers \
             (Linux 5.8+ with CONFIG_BPF_SYSCALL and CONFIG_BPF_EVENTS)"
        );
    }
    tracepoints && ring
}

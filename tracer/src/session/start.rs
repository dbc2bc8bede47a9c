//! Start-up: whether this host can run rsttrace, the kernel's facts, which processes are
//! watched, and everything said on stderr before "attached" (whoever waits for that line
//! reads all of it).
use std::{path::Path, time::Instant};

use anyhow::Context as _;

use super::{FailWith as _, Failure, FailureKind, Options};
use crate::{
    cgroup::MemoryHierarchy,
    hooks::Capability,
    host::in_own_cgroup_namespace,
    kernel::KernelFacts,
    loader,
    privileges::missing_capabilities,
    watch::{self, Watch},
};

/// Checks that rsttrace can run here and resolves this kernel's facts, with the options
/// that change which hooks are used applied.
pub fn prepare(opts: &Options) -> Result<KernelFacts, Failure> {
    let missing = missing_capabilities()
        .context("reading this process's capabilities")
        .fail_with(FailureKind::Unsupported)?;
    if !missing.is_empty() {
        return Err(Failure {
            kind: FailureKind::Unsupported,
            error: anyhow::anyhow!(
                "rsttrace loads eBPF programs and attaches them to kernel tracepoints: it needs \
                 CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), and lacks {}. Run it as root \
                 (sudo rsttrace ...) or grant them (systemd: AmbientCapabilities=, see rsttrace(8))",
                missing.join(" and ")
            ),
        });
    }
    check_cgroup_root(opts.cgroup_root.as_deref())?;
    let mut facts =
        KernelFacts::resolve(opts.cgroup_root.as_deref()).fail_with(FailureKind::Unsupported)?;
    if opts.syscall_args_at_entry {
        facts.config.regs_arg = [tracer_ebpf::NO_OFFSET; 4];
    }
    if opts.syscall_hooks {
        facts.force_syscall_hooks();
    }
    if opts.no_syscall_hooks {
        facts.drop_syscall_hooks();
    }
    if opts.no_network_hooks {
        facts.drop_capability(Capability::NetworkEvidence, "--no-network-hooks");
    }
    Ok(facts)
}

/// A `--cgroup-root` must hold the host's memory controller; without one, a cgroup
/// namespace of our own hides every other container's cgroup: say so.
fn check_cgroup_root(root: Option<&Path>) -> Result<(), Failure> {
    match root {
        Some(dir) if MemoryHierarchy::locate(Some(dir)).is_none() => Err(Failure {
            kind: FailureKind::Usage,
            error: anyhow::anyhow!(
                "--cgroup-root {}: no cgroup file system with the memory controller is \
                 mounted at or under it (mount the host's /sys/fs/cgroup there)",
                dir.display()
            ),
        }),
        None if in_own_cgroup_namespace() => {
            crate::note!(
                "rsttrace: warning: rsttrace runs in a cgroup namespace of its own, so \
                 /sys/fs/cgroup shows only its own subtree: an OOM kill in another cgroup's \
                 limit cannot be told from a global one. Mount the host's /sys/fs/cgroup \
                 (e.g. at /host/sys/fs/cgroup) and pass --cgroup-root"
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

pub(super) fn watch_from(opts: &Options) -> Result<Watch, Failure> {
    for pid in &opts.pid {
        if !watch::pid_exists(*pid) {
            return Err(Failure {
                kind: FailureKind::Usage,
                error: anyhow::anyhow!("--pid {pid}: no such process"),
            });
        }
    }
    let mut watch = Watch::new(opts.pid_of.clone(), opts.pid.iter().copied());
    if !watch.is_everything() && !watch.names().is_empty() {
        let found = watch::scan_proc(&watch);
        if found.is_empty() {
            crate::note!(
                "rsttrace: warning: no process named {} yet; watching for it to start",
                watch.names().join(", ")
            );
        }
        for pid in found {
            watch.add_pid(pid);
        }
    }
    Ok(watch)
}

pub(super) fn announce(
    facts: &KernelFacts,
    opts: &Options,
    watch: &Watch,
    attached: &loader::Attached,
    started: Instant,
) {
    for state in facts
        .hooks
        .iter()
        .filter(|s| s.status == crate::kernel::Status::Missing)
    {
        crate::note!(
            "rsttrace: warning: {} is missing on this kernel: no {}",
            state.hook.attach.name(),
            state.hook.purpose
        );
    }
    // An optional hook the kernel refused costs its capability, not the run: say which.
    for (hook, why) in &attached.failed {
        crate::note!(
            "rsttrace: warning: could not attach {} ({}; `rsttrace --check` shows the kernel's \
             full answer); running without {}",
            hook.attach.name(),
            loader::failure_summary(why),
            hook.purpose
        );
    }
    let scope = if watch.is_everything() {
        "reporting every reset received on this host".to_string()
    } else {
        let mut parts: Vec<String> = opts.pid_of.iter().map(|n| format!("name {n}*")).collect();
        parts.extend(opts.pid.iter().map(|p| format!("pid {p}")));
        format!(
            "watching {} process(es) matching {}",
            watch.watched_pids(),
            parts.join(", ")
        )
    };
    crate::note!(
        "rsttrace: attached {} hooks in {} ms (ready {} ms after start); {scope}",
        attached.hooks,
        attached.elapsed_ms,
        started.elapsed().as_millis(),
    );
    announce_syscall_cost(facts, opts, attached.syscall_hooks);
}

/// Syscall tracepoints cost every process on the host, not just the traced ones: say so
/// whenever rsttrace imposes that, and say what is lost when it is told not to.
fn announce_syscall_cost(facts: &KernelFacts, opts: &Options, count: usize) {
    if count > 0 {
        let why = if opts.syscall_hooks {
            "--syscall-hooks"
        } else {
            "this kernel has no sock:sock_recv_length"
        };
        crate::note!(
            "rsttrace: warning: {count} syscall tracepoints in use ({why}): every syscall of \
             every process on this host takes the kernel's slower traced path while rsttrace \
             runs (~50 ns each); --no-syscall-hooks avoids that, without unix-socket resets \
             and seen_by_receiver"
        );
    } else if facts.syscall_hooks_dropped() {
        crate::note!(
            "rsttrace: note: --no-syscall-hooks on a kernel without sock:sock_recv_length: \
             unix-socket resets, seen_by_receiver and accept-side socket owners are not reported"
        );
    }
}

//! Process life: fatal signals (and who sent them), exits, forks, OOM kills.
use core::ffi::c_void;

use aya_ebpf::{macros::tracepoint, programs::TracePointContext, EbpfContext};
use tracer_ebpf::{
    event::{self, EventKind},
    Config, FATAL_SIGNAL_MASK,
};

use super::{config, copy_bytes, current_task, emit, read_field, record_field, record_len};

/// Kernfs id of current's memory cgroup: task->cgroups->subsys[memory]->cgroup->kn->id.
#[inline(always)]
fn current_memcg_id(cfg: &Config) -> u64 {
    // SAFETY: each step reads a pointer field of a live kernel object with
    // bpf_probe_read_kernel, which faults safely.
    unsafe {
        let Some(cgroups) = read_field::<u64>(current_task(), cfg.task_cgroups) else {
            return 0;
        };
        let Some(css) = read_field::<u64>(cgroups, cfg.css_set_memcg) else {
            return 0;
        };
        let Some(cgroup) = read_field::<u64>(css, cfg.css_cgroup) else {
            return 0;
        };
        let Some(kn) = read_field::<u64>(cgroup, cfg.cgroup_kn) else {
            return 0;
        };
        read_field(kn, cfg.kn_id).unwrap_or(0)
    }
}

/// Runs in the sender's context: the record names the target.
#[tracepoint]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let Some(sig) = record_field::<i32>(&ctx, cfg.signal_sig) else {
        return 0;
    };
    if !(1..=63).contains(&sig) || FATAL_SIGNAL_MASK & (1u64 << sig) == 0 {
        return 0;
    }
    let len = record_len(cfg, EventKind::Signal);
    emit::<event::SignalGenerated>(cfg, EventKind::Signal, |e| unsafe {
        (*e)._pad = 0;
        (*e).record_len = copy_bytes(&raw mut (*e).record, ctx.as_ptr() as *const c_void, len);
    });
    0
}

/// Runs in the exiting task, before exit_files() closes its sockets (kernel/exit.c); for
/// every thread, so the record's group_dead tells a process's death from a thread's end.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let cfg = config();
    // SAFETY: current is a valid task_struct for the duration of the program.
    let exit_code = unsafe { read_field::<i32>(current_task(), cfg.task_exit_code) }.unwrap_or(0);
    let group_dead = record_field::<u8>(&ctx, cfg.exit_group_dead).map_or(2, |d| u8::from(d != 0));
    let memcg_id = current_memcg_id(cfg);
    emit::<event::ProcessExit>(cfg, EventKind::Exit, |e| unsafe {
        (*e).exit_code = exit_code;
        (*e).group_dead = group_dead;
        (*e)._pad = [0; 3];
        (*e).memcg_id = memcg_id;
    });
    0
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let len = record_len(cfg, EventKind::Fork);
    emit::<event::ProcessFork>(cfg, EventKind::Fork, |e| unsafe {
        (*e)._pad = 0;
        (*e).record_len = copy_bytes(&raw mut (*e).record, ctx.as_ptr() as *const c_void, len);
    });
    0
}

/// Runs in the task that ran the OOM killer (often the victim itself).
#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let memcg_id = current_memcg_id(cfg);
    let len = record_len(cfg, EventKind::OomVictim);
    emit::<event::OomVictim>(cfg, EventKind::OomVictim, |e| unsafe {
        (*e)._pad = 0;
        (*e).memcg_id = memcg_id;
        (*e).record_len = copy_bytes(&raw mut (*e).record, ctx.as_ptr() as *const c_void, len);
    });
    0
}

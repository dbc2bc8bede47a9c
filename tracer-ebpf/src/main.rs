//! rsttrace kernel programs: classic tracepoints only, so they load on kernels without
//! kprobes or fentry (lockdown, CONFIG_KPROBES=n).
//!
//! The programs know no record layout: they copy each tracepoint record verbatim (up to
//! `Config::record_len`) and user space decodes it with the running kernel's tracefs format
//! files. The few fields they must read themselves (socket address, TCP states, signal
//! number) and every struct offset come from `CONFIG`, resolved by user space at start.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Built for the host only by workspace-wide tooling (clippy --workspace); the real
    // programs exist for target_arch = "bpf".
}

#[cfg(target_arch = "bpf")]
mod programs {
    use core::ffi::c_void;

    use aya_ebpf::{
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
            bpf_probe_read_kernel, generated,
        },
        macros::{map, tracepoint},
        maps::{LruHashMap, PerCpuArray, RingBuf},
        programs::TracePointContext,
        EbpfContext,
    };
    use tracer_ebpf::{
        kind, Config, Sample, SockOwner, FATAL_SIGNAL_MASK, NO_OFFSET, RAW_RECORD_MAX,
        TASK_COMM_LEN,
    };

    /// Frozen into .rodata by the loader (EbpfLoader::set_global), so the verifier sees
    /// the offsets as constants and prunes the branches for fields this kernel lacks.
    #[unsafe(no_mangle)]
    static CONFIG: Config = Config::EMPTY;

    /// Size is set by the loader (--buffer-size).
    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

    /// Ring buffer reservation failures, per CPU; user space reports them as `lost` events.
    #[map]
    static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    /// struct sock * -> the task that connected or accepted it.
    #[map]
    static SOCK_OWNERS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(65536, 0);

    const TCP_SYN_SENT: i32 = 2;
    const TCP_CLOSE: i32 = 7;
    const IPPROTO_TCP: u16 = 6;
    /// How long an owner stays valid after its socket reached TCP_CLOSE (see SockOwner).
    const OWNER_GRACE_NS: u64 = 1_000_000_000;

    #[inline(always)]
    fn config() -> Config {
        // SAFETY: CONFIG is a plain static; the volatile read stops the compiler from
        // folding the EMPTY initializer into the code.
        unsafe { core::ptr::read_volatile(&CONFIG) }
    }

    #[inline(always)]
    unsafe fn read_field<T>(base: u64, offset: u32) -> Option<T> {
        if base == 0 || offset == NO_OFFSET {
            return None;
        }
        unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
    }

    #[inline(always)]
    fn record_field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
        if offset == NO_OFFSET {
            return None;
        }
        unsafe { ctx.read_at::<T>(offset as usize).ok() }
    }

    #[inline(always)]
    fn current_task() -> u64 {
        unsafe { bpf_get_current_task() }
    }

    /// Kernfs id of current's memory cgroup: task->cgroups->subsys[memory]->cgroup->kn->id.
    #[inline(always)]
    fn current_memcg_id(cfg: &Config) -> u64 {
        unsafe {
            let cgroups: u64 = match read_field(current_task(), cfg.task_cgroups) {
                Some(p) => p,
                None => return 0,
            };
            let css: u64 = match read_field(cgroups, cfg.css_set_memcg) {
                Some(p) => p,
                None => return 0,
            };
            let cgroup: u64 = match read_field(css, cfg.css_cgroup) {
                Some(p) => p,
                None => return 0,
            };
            let kn: u64 = match read_field(cgroup, cfg.cgroup_kn) {
                Some(p) => p,
                None => return 0,
            };
            read_field(kn, cfg.kn_id).unwrap_or(0)
        }
    }

    #[inline(always)]
    fn current_owner() -> SockOwner {
        let pid_tgid = bpf_get_current_pid_tgid();
        SockOwner {
            tgid: (pid_tgid >> 32) as u32,
            pid: pid_tgid as u32,
            comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
            closed_ns: 0,
        }
    }

    #[inline(always)]
    fn lookup_owner(sk: u64, now: u64) -> SockOwner {
        let unknown = SockOwner {
            tgid: 0,
            pid: 0,
            comm: [0; TASK_COMM_LEN],
            closed_ns: 0,
        };
        if sk == 0 {
            return unknown;
        }
        // SAFETY: the value is copied out at once; a concurrent update can at worst give a
        // torn owner, which user space treats as evidence, not as a key.
        match unsafe { SOCK_OWNERS.get(&sk) } {
            Some(owner)
                if owner.closed_ns == 0 || now.saturating_sub(owner.closed_ns) < OWNER_GRACE_NS =>
            {
                *owner
            }
            _ => unknown,
        }
    }

    fn count_lost() {
        if let Some(counter) = LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *counter += 1 };
        }
    }

    /// Reserves a Sample, fills what every hook knows, copies the record, submits it.
    #[inline(always)]
    fn emit(ctx: &TracePointContext, cfg: &Config, kind: u32, sk_offset: u32, memcg: bool) {
        let now = unsafe { bpf_ktime_get_ns() };
        let owner = match record_field::<u64>(ctx, sk_offset) {
            Some(sk) => lookup_owner(sk, now),
            None => lookup_owner(0, now),
        };
        let task = current_task();
        let task_flags: u32 = unsafe { read_field(task, cfg.task_flags) }.unwrap_or(0);
        let exit_code: i32 = if kind == tracer_ebpf::kind::EXIT {
            unsafe { read_field(task, cfg.task_exit_code) }.unwrap_or(0)
        } else {
            0
        };
        let memcg_id = if memcg { current_memcg_id(cfg) } else { 0 };
        let mut len = match cfg.record_len.get(kind as usize) {
            Some(len) => *len,
            None => 0,
        };
        if len > RAW_RECORD_MAX as u32 {
            len = RAW_RECORD_MAX as u32;
        }

        let Some(mut entry) = EVENTS.reserve::<Sample>(0) else {
            count_lost();
            return;
        };
        let sample = entry.as_mut_ptr();
        // SAFETY: `sample` points at a reserved, exclusively owned ring buffer slot of
        // size_of::<Sample>() bytes; every field is written before submit.
        unsafe {
            (*sample).kind = kind;
            (*sample).ktime_ns = now;
            (*sample).pid_tgid = bpf_get_current_pid_tgid();
            (*sample).comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
            (*sample).task_flags = task_flags;
            (*sample).exit_code = exit_code;
            (*sample).owner = owner;
            (*sample).memcg_id = memcg_id;
            let copied = generated::bpf_probe_read_kernel(
                (*sample).raw.as_mut_ptr() as *mut c_void,
                len,
                ctx.as_ptr() as *const c_void,
            );
            (*sample).raw_len = if copied == 0 { len } else { 0 };
        }
        entry.submit(0);
    }

    #[tracepoint]
    pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
        let cfg = config();
        emit(&ctx, &cfg, kind::RESET_SENT, cfg.send_reset_skaddr, false);
        0
    }

    #[tracepoint]
    pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
        let cfg = config();
        emit(
            &ctx,
            &cfg,
            kind::RESET_RECEIVED,
            cfg.recv_reset_skaddr,
            false,
        );
        0
    }

    #[tracepoint]
    pub fn signal_generate(ctx: TracePointContext) -> u32 {
        let cfg = config();
        let Some(sig) = record_field::<i32>(&ctx, cfg.signal_sig) else {
            return 0;
        };
        if !(1..=63).contains(&sig) || FATAL_SIGNAL_MASK & (1u64 << sig) == 0 {
            return 0;
        }
        emit(&ctx, &cfg, kind::SIGNAL, NO_OFFSET, false);
        0
    }

    #[tracepoint]
    pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
        let cfg = config();
        emit(&ctx, &cfg, kind::EXIT, NO_OFFSET, true);
        0
    }

    #[tracepoint]
    pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
        let cfg = config();
        emit(&ctx, &cfg, kind::FORK, NO_OFFSET, false);
        0
    }

    #[tracepoint]
    pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
        let cfg = config();
        emit(&ctx, &cfg, kind::OOM_VICTIM, NO_OFFSET, true);
        0
    }

    /// Records who connects: CLOSE -> SYN_SENT runs in the connecting task
    /// (tcp_v4_connect/tcp_v6_connect). Marks the owner closed on -> CLOSE.
    #[tracepoint]
    pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
        let cfg = config();
        if record_field::<u16>(&ctx, cfg.set_state_protocol) != Some(IPPROTO_TCP) {
            return 0;
        }
        let (Some(sk), Some(old), Some(new)) = (
            record_field::<u64>(&ctx, cfg.set_state_skaddr),
            record_field::<i32>(&ctx, cfg.set_state_oldstate),
            record_field::<i32>(&ctx, cfg.set_state_newstate),
        ) else {
            return 0;
        };
        if old == TCP_CLOSE && new == TCP_SYN_SENT {
            let _ = SOCK_OWNERS.insert(&sk, &current_owner(), 0);
        } else if new == TCP_CLOSE {
            let now = unsafe { bpf_ktime_get_ns() };
            if let Some(owner) = SOCK_OWNERS.get_ptr_mut(&sk) {
                // SAFETY: map value pointer from the kernel, valid for this program run.
                unsafe { (*owner).closed_ns = now };
            }
        }
        0
    }

    /// accept()/accept4() returned a socket fd: current->files->fdt->fd[ret]->private_data
    /// is its struct socket, whose sk now belongs to current.
    #[inline(always)]
    fn record_accepted(ctx: &TracePointContext) {
        let cfg = config();
        let Some(fd) = record_field::<i64>(ctx, cfg.syscall_ret) else {
            return;
        };
        if fd < 0 {
            return;
        }
        unsafe {
            let Some(files) = read_field::<u64>(current_task(), cfg.task_files) else {
                return;
            };
            let Some(fdt) = read_field::<u64>(files, cfg.files_fdt) else {
                return;
            };
            let Some(max_fds) = read_field::<u32>(fdt, cfg.fdt_max_fds) else {
                return;
            };
            if fd as u64 >= max_fds as u64 {
                return;
            }
            let Some(fd_array) = read_field::<u64>(fdt, cfg.fdt_fd) else {
                return;
            };
            let Ok(file) = bpf_probe_read_kernel((fd_array + (fd as u64) * 8) as *const u64) else {
                return;
            };
            let Some(socket) = read_field::<u64>(file, cfg.file_private_data) else {
                return;
            };
            let Some(sk) = read_field::<u64>(socket, cfg.socket_sk) else {
                return;
            };
            if sk != 0 {
                let _ = SOCK_OWNERS.insert(&sk, &current_owner(), 0);
            }
        }
    }

    #[tracepoint]
    pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
        record_accepted(&ctx);
        0
    }

    #[tracepoint]
    pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
        record_accepted(&ctx);
        0
    }

    #[cfg(not(test))]
    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

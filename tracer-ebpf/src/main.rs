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
            bpf_probe_read_kernel, bpf_probe_read_user, generated,
        },
        macros::{map, tracepoint},
        maps::{LruHashMap, PerCpuArray, RingBuf},
        programs::TracePointContext,
        EbpfContext,
    };
    use tracer_ebpf::{
        kind, syscall, Config, PendingSyscall, Sample, SockOwner, AF_UNIX, ECONNREFUSED,
        ECONNRESET, FATAL_SIGNAL_MASK, NO_OFFSET, RAW_RECORD_MAX, TASK_COMM_LEN,
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

    /// What a sample says beyond what every hook knows about the current task.
    struct Extra {
        kind: u32,
        owner: SockOwner,
        exit_code: i32,
        memcg_id: u64,
        sock: u64,
        peer_sock: u64,
        sys_ret: i64,
        family: u16,
        syscall: u32,
    }

    impl Extra {
        #[inline(always)]
        fn new(kind: u32, owner: SockOwner) -> Self {
            Self {
                kind,
                owner,
                exit_code: 0,
                memcg_id: 0,
                sock: 0,
                peer_sock: 0,
                sys_ret: 0,
                family: 0,
                syscall: 0,
            }
        }
    }

    /// Reserves a Sample, fills it, copies `len` bytes from `raw` (a tracepoint record or
    /// a sockaddr_un) and submits it; counts the loss when the ring buffer is full.
    #[inline(always)]
    fn submit(cfg: &Config, extra: &Extra, raw: *const c_void, len: u32) {
        let len = if len > RAW_RECORD_MAX as u32 {
            RAW_RECORD_MAX as u32
        } else {
            len
        };
        let task_flags: u32 = unsafe { read_field(current_task(), cfg.task_flags) }.unwrap_or(0);
        let Some(mut entry) = EVENTS.reserve::<Sample>(0) else {
            count_lost();
            return;
        };
        let sample = entry.as_mut_ptr();
        // SAFETY: `sample` points at a reserved, exclusively owned ring buffer slot of
        // size_of::<Sample>() bytes; every field is written before submit.
        unsafe {
            (*sample).kind = extra.kind;
            (*sample).ktime_ns = bpf_ktime_get_ns();
            (*sample).pid_tgid = bpf_get_current_pid_tgid();
            (*sample).comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
            (*sample).task_flags = task_flags;
            (*sample).exit_code = extra.exit_code;
            (*sample).owner = extra.owner;
            (*sample).memcg_id = extra.memcg_id;
            (*sample).sock = extra.sock;
            (*sample).peer_sock = extra.peer_sock;
            (*sample).sys_ret = extra.sys_ret;
            (*sample).family = extra.family;
            (*sample)._pad = 0;
            (*sample).syscall = extra.syscall;
            (*sample).raw_len = 0;
            if len > 0 && !raw.is_null() {
                // Bound the length again right at the call: 6.1's verifier loses the
                // earlier clamp when the value is spilled to the stack ("R2 unbounded
                // memory access").
                let mut n = core::hint::black_box(len);
                if n > RAW_RECORD_MAX as u32 {
                    n = RAW_RECORD_MAX as u32;
                }
                let copied = generated::bpf_probe_read_kernel(
                    (*sample).raw.as_mut_ptr() as *mut c_void,
                    n,
                    raw,
                );
                if copied == 0 {
                    (*sample).raw_len = n;
                }
            }
        }
        let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
        let flags = if waiting >= cfg.ring_wakeup_bytes as u64 {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        };
        entry.submit(flags);
    }

    /// A sample carrying the tracepoint record; `sk_offset` names the record's socket
    /// (its owner is looked up), `memcg` asks for current's memory cgroup.
    #[inline(always)]
    fn emit(ctx: &TracePointContext, cfg: &Config, kind: u32, sk_offset: u32, memcg: bool) {
        let now = unsafe { bpf_ktime_get_ns() };
        let sk = record_field::<u64>(ctx, sk_offset).unwrap_or(0);
        let mut extra = Extra::new(kind, lookup_owner(sk, now));
        if kind == tracer_ebpf::kind::EXIT {
            extra.exit_code =
                unsafe { read_field(current_task(), cfg.task_exit_code) }.unwrap_or(0);
        }
        if memcg {
            extra.memcg_id = current_memcg_id(cfg);
        }
        let len = cfg.record_len.get(kind as usize).copied().unwrap_or(0);
        submit(cfg, &extra, ctx.as_ptr() as *const c_void, len);
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

    /// The struct sock * behind current's socket fd:
    /// current->files->fdt->fd[fd]->private_data (struct socket *)->sk.
    /// Only called for fds a socket syscall accepted or used, so private_data is a socket.
    #[inline(always)]
    fn fd_to_sock(cfg: &Config, fd: i64) -> Option<u64> {
        if fd < 0 {
            return None;
        }
        unsafe {
            let files = read_field::<u64>(current_task(), cfg.task_files)?;
            let fdt = read_field::<u64>(files, cfg.files_fdt)?;
            let max_fds = read_field::<u32>(fdt, cfg.fdt_max_fds)?;
            if fd as u64 >= max_fds as u64 {
                return None;
            }
            let fd_array = read_field::<u64>(fdt, cfg.fdt_fd)?;
            let file = bpf_probe_read_kernel((fd_array + (fd as u64) * 8) as *const u64).ok()?;
            let socket = read_field::<u64>(file, cfg.file_private_data)?;
            let sk = read_field::<u64>(socket, cfg.socket_sk)?;
            (sk != 0).then_some(sk)
        }
    }

    /// accept()/accept4() returned a socket fd, whose sk now belongs to current.
    #[inline(always)]
    fn record_accepted(ctx: &TracePointContext) {
        let cfg = config();
        let Some(fd) = record_field::<i64>(ctx, cfg.syscall_ret) else {
            return;
        };
        if let Some(sk) = fd_to_sock(&cfg, fd) {
            let _ = SOCK_OWNERS.insert(&sk, &current_owner(), 0);
        }
    }

    /// fd of the socket syscall in flight, by thread: the exit record has only the result.
    #[map]
    static SYSCALL_FD: LruHashMap<u32, PendingSyscall> = LruHashMap::with_max_entries(16384, 0);

    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;

    /// Argument `n` of the syscall in flight, from the registers saved at entry.
    #[inline(always)]
    fn syscall_arg(cfg: &Config, n: usize) -> Option<i64> {
        let offset = *cfg.regs_arg.get(n)?;
        if offset == NO_OFFSET {
            return None;
        }
        unsafe {
            let task = generated::bpf_get_current_task_btf();
            let regs = generated::bpf_task_pt_regs(task) as u64;
            read_field::<i64>(regs, offset)
        }
    }

    const SOL_SOCKET: i64 = 1;
    const SO_ERROR: i64 = 4;

    #[inline(always)]
    fn socket_syscall_enter(ctx: &TracePointContext, which: u32) {
        let cfg = config();
        let Some(fd) = record_field::<i64>(ctx, cfg.sys_enter_fd) else {
            return;
        };
        let mut optval = 0;
        if which == syscall::GETSOCKOPT {
            let level = record_field::<i64>(ctx, cfg.getsockopt_level);
            let optname = record_field::<i64>(ctx, cfg.getsockopt_optname);
            if level != Some(SOL_SOCKET) || optname != Some(SO_ERROR) {
                return;
            }
            optval = record_field::<u64>(ctx, cfg.getsockopt_optval).unwrap_or(0);
        }
        let tid = bpf_get_current_pid_tgid() as u32;
        let _ = SYSCALL_FD.insert(&tid, &PendingSyscall { fd, optval }, 0);
    }

    /// A socket syscall failed with ECONNRESET (connect: ECONNREFUSED): the receiver saw
    /// the reset. For AF_UNIX this is the only trace there is: no RST exists, the closing
    /// end sets sk_err = ECONNRESET on its peer (unix_release_sock(), net/unix/af_unix.c).
    #[inline(always)]
    fn socket_syscall_exit(ctx: &TracePointContext, which: u32) {
        let cfg = config();
        let Some(mut ret) = record_field::<i64>(ctx, cfg.syscall_ret) else {
            return;
        };
        let fd;
        if cfg.regs_arg[0] != NO_OFFSET {
            // Fast path: nothing was recorded at entry; only failures look further.
            if which == syscall::GETSOCKOPT {
                if ret != 0
                    || syscall_arg(&cfg, 1) != Some(SOL_SOCKET)
                    || syscall_arg(&cfg, 2) != Some(SO_ERROR)
                {
                    return;
                }
            } else if ret != -ECONNRESET && ret != -ECONNREFUSED {
                return;
            }
            let Some(arg0) = syscall_arg(&cfg, 0) else {
                return;
            };
            fd = arg0 as i32 as i64;
            if which == syscall::GETSOCKOPT {
                let Some(optval) = syscall_arg(&cfg, 3) else {
                    return;
                };
                let err: i32 = match unsafe { bpf_probe_read_user(optval as *const i32) } {
                    Ok(e) => e,
                    Err(_) => return,
                };
                ret = -(err as i64);
            }
        } else {
            let tid = bpf_get_current_pid_tgid() as u32;
            // SAFETY: copied out at once; the entry belongs to this thread.
            let pending = match unsafe { SYSCALL_FD.get(&tid) } {
                Some(p) => *p,
                None => return,
            };
            let _ = SYSCALL_FD.remove(&tid);
            fd = pending.fd;
            if which == syscall::GETSOCKOPT {
                if ret != 0 || pending.optval == 0 {
                    return;
                }
                // SO_ERROR's value, as the process will read it.
                let err: i32 = match unsafe { bpf_probe_read_user(pending.optval as *const i32) } {
                    Ok(e) => e,
                    Err(_) => return,
                };
                ret = -(err as i64);
            }
        }
        if ret != -ECONNRESET
            && !((which == syscall::CONNECT || which == syscall::GETSOCKOPT)
                && ret == -ECONNREFUSED)
        {
            return;
        }
        let Some(sk) = fd_to_sock(&cfg, fd) else {
            return;
        };
        let family: u16 = unsafe { read_field(sk, cfg.sock_family) }.unwrap_or(0);
        emit_socket_error(&cfg, sk, family, ret, which);
    }

    /// The receiver's socket call failed with ECONNRESET (or ECONNREFUSED); for AF_UNIX the
    /// sample also names the peer socket, its owner and the listener path it came through.
    #[inline(always)]
    fn emit_socket_error(cfg: &Config, sk: u64, family: u16, ret: i64, which: u32) {
        let mut peer: u64 = 0;
        let mut addr: u64 = 0;
        if family == AF_UNIX {
            peer = unsafe { read_field(sk, cfg.unix_peer) }.unwrap_or(0);
            addr = unsafe { read_field(peer, cfg.unix_addr) }.unwrap_or(0);
        }
        emit_socket(
            cfg,
            kind::SOCKET_ERROR,
            sk,
            peer,
            ret,
            family,
            which,
            addr,
            None,
        );
    }

    /// listen() on an AF_UNIX socket: remember who owns the listener at its path.
    #[inline(always)]
    fn unix_listen(ctx: &TracePointContext) {
        let cfg = config();
        let Some(fd) = record_field::<i64>(ctx, cfg.sys_enter_fd) else {
            return;
        };
        let Some(sk) = fd_to_sock(&cfg, fd) else {
            return;
        };
        let family: u16 = unsafe { read_field(sk, cfg.sock_family) }.unwrap_or(0);
        if family != AF_UNIX {
            return;
        }
        let addr: u64 = unsafe { read_field(sk, cfg.unix_addr) }.unwrap_or(0);
        let owner = current_owner();
        emit_socket(
            &cfg,
            kind::UNIX_LISTEN,
            sk,
            0,
            0,
            family,
            0,
            addr,
            Some(owner),
        );
    }

    /// A sample about a socket; `raw` gets the struct sockaddr_un at `unix_address`
    /// (struct unix_address: len, name[]), if any. `owner` defaults to the peer's.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn emit_socket(
        cfg: &Config,
        kind: u32,
        sk: u64,
        peer: u64,
        ret: i64,
        family: u16,
        which: u32,
        unix_address: u64,
        owner: Option<SockOwner>,
    ) {
        let now = unsafe { bpf_ktime_get_ns() };
        let owner = match owner {
            Some(o) => o,
            None => lookup_owner(peer, now),
        };
        let mut extra = Extra::new(kind, owner);
        extra.sock = sk;
        extra.peer_sock = peer;
        extra.sys_ret = ret;
        extra.family = family;
        extra.syscall = which;
        let len = unsafe { read_field::<i32>(unix_address, cfg.unix_address_len) }.unwrap_or(0);
        let name = if unix_address == 0 || cfg.unix_address_name == NO_OFFSET {
            core::ptr::null()
        } else {
            (unix_address + cfg.unix_address_name as u64) as *const c_void
        };
        submit(cfg, &extra, name, len.max(0) as u32);
    }

    /// sock:sock_recv_length / sock_send_length: every receive or send on a socket, in the
    /// task doing it, with the socket and the result. Where they exist they replace the
    /// syscall tracepoints, whose mere presence slows every syscall of every process.
    /// A failure with ECONNRESET is the receiver seeing the reset; any other call teaches
    /// who uses the socket (accepted sockets are first read by their process).
    #[inline(always)]
    fn socket_io(ctx: &TracePointContext, which: u32) {
        let cfg = config();
        let (Some(sk), Some(ret)) = (
            record_field::<u64>(ctx, cfg.sock_io_sk),
            record_field::<i32>(ctx, cfg.sock_io_ret),
        ) else {
            return;
        };
        if sk == 0 {
            return;
        }
        if ret as i64 != -ECONNRESET {
            // A socket doing I/O is open: an entry marked closed belonged to an earlier
            // socket at this address, so replace it.
            // SAFETY: the value is only tested.
            let known = matches!(unsafe { SOCK_OWNERS.get(&sk) }, Some(o) if o.closed_ns == 0);
            if !known {
                let _ = SOCK_OWNERS.insert(&sk, &current_owner(), 0);
            }
            return;
        }
        let family = record_field::<u16>(ctx, cfg.sock_io_family)
            .unwrap_or_else(|| unsafe { read_field(sk, cfg.sock_family) }.unwrap_or(0));
        emit_socket_error(&cfg, sk, family, ret as i64, which);
    }

    #[tracepoint]
    pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
        socket_io(&ctx, syscall::SOCK_RECV);
        0
    }

    #[tracepoint]
    pub fn sock_send_length(ctx: TracePointContext) -> u32 {
        socket_io(&ctx, syscall::SOCK_SEND);
        0
    }

    macro_rules! socket_syscall {
        ($enter:ident, $exit:ident, $which:expr) => {
            #[tracepoint]
            pub fn $enter(ctx: TracePointContext) -> u32 {
                socket_syscall_enter(&ctx, $which);
                0
            }

            #[tracepoint]
            pub fn $exit(ctx: TracePointContext) -> u32 {
                socket_syscall_exit(&ctx, $which);
                0
            }
        };
    }

    socket_syscall!(sys_enter_recvfrom, sys_exit_recvfrom, syscall::RECVFROM);
    socket_syscall!(sys_enter_recvmsg, sys_exit_recvmsg, syscall::RECVMSG);
    socket_syscall!(sys_enter_readv, sys_exit_readv, syscall::READV);
    socket_syscall!(sys_enter_sendto, sys_exit_sendto, syscall::SENDTO);
    socket_syscall!(sys_enter_sendmsg, sys_exit_sendmsg, syscall::SENDMSG);
    socket_syscall!(sys_enter_writev, sys_exit_writev, syscall::WRITEV);
    socket_syscall!(sys_enter_connect, sys_exit_connect, syscall::CONNECT);
    socket_syscall!(
        sys_enter_getsockopt,
        sys_exit_getsockopt,
        syscall::GETSOCKOPT
    );

    #[tracepoint]
    pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
        unix_listen(&ctx);
        0
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

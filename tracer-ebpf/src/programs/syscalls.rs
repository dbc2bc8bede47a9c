//! Syscall tracepoints, for kernels without the socket-level ones: socket calls failing
//! with ECONNRESET or ECONNREFUSED, accept() (who uses an accepted socket) and listen() on
//! unix sockets. Any syscall tracepoint puts every syscall of the host on the kernel's
//! slower traced path, so rsttrace attaches these only where it must.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user, generated},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use tracer_ebpf::{
    event::{self, source, EventKind},
    Config, PendingSyscall, AF_UNIX, ECONNREFUSED, ECONNRESET, NO_OFFSET,
};

use super::{
    config, current_task, emit, learn_owner, read_field, record_field,
    socket::{copy_unix_address, emit_socket_error},
};

/// fd of the socket syscall in flight, by thread: the exit record has only the result.
#[map]
static SYSCALL_FD: LruHashMap<u32, PendingSyscall> = LruHashMap::with_max_entries(16384, 0);

const SOL_SOCKET: i64 = 1;
const SO_ERROR: i64 = 4;

/// The struct sock * behind current's socket fd:
/// current->files->fdt->fd[fd]->private_data (struct socket *)->sk.
/// Only called for fds a socket syscall accepted or used, so private_data is a socket.
#[inline(always)]
fn fd_to_sock(cfg: &Config, fd: i64) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    // SAFETY: every step is a bpf_probe_read_kernel of a field of a live kernel object.
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
    if let Some(sk) = fd_to_sock(cfg, fd) {
        // SAFETY: sk is the live socket behind the fd.
        let family: u16 = unsafe { read_field(sk, cfg.sock_family) }.unwrap_or(0);
        learn_owner(cfg, sk, family, tracer_ebpf::role::SERVER);
    }
}

/// Argument `n` of the syscall in flight, from the registers saved at entry.
#[inline(always)]
fn syscall_arg(cfg: &Config, n: usize) -> Option<i64> {
    let offset = *cfg.regs_arg.get(n)?;
    if offset == NO_OFFSET {
        return None;
    }
    // SAFETY: bpf_task_pt_regs of current gives its saved user registers.
    unsafe {
        let task = generated::bpf_get_current_task_btf();
        let regs = generated::bpf_task_pt_regs(task) as u64;
        read_field::<i64>(regs, offset)
    }
}

#[inline(always)]
fn socket_syscall_enter(ctx: &TracePointContext, which: u16) {
    let cfg = config();
    let Some(fd) = record_field::<i64>(ctx, cfg.sys_enter_fd) else {
        return;
    };
    let mut optval = 0;
    if which == source::GETSOCKOPT {
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

/// SO_ERROR's value as the process will read it, from getsockopt's optval.
#[inline(always)]
fn so_error(optval: u64) -> Option<i64> {
    // SAFETY: a user pointer the syscall just wrote; a fault returns an error.
    let err: i32 = unsafe { bpf_probe_read_user(optval as *const i32) }.ok()?;
    Some(-(err as i64))
}

/// A socket syscall failed with ECONNRESET (connect: ECONNREFUSED): the receiver saw
/// the reset. For AF_UNIX this is the only trace there is: no RST exists, the closing
/// end sets sk_err = ECONNRESET on its peer (unix_release_sock(), net/unix/af_unix.c).
#[inline(always)]
fn socket_syscall_exit(ctx: &TracePointContext, which: u16) {
    let cfg = config();
    let Some(mut ret) = record_field::<i64>(ctx, cfg.syscall_ret) else {
        return;
    };
    let fd;
    if cfg.regs_arg[0] != NO_OFFSET {
        // Fast path: nothing was recorded at entry; only failures look further.
        if which == source::GETSOCKOPT {
            if ret != 0
                || syscall_arg(cfg, 1) != Some(SOL_SOCKET)
                || syscall_arg(cfg, 2) != Some(SO_ERROR)
            {
                return;
            }
        } else if ret != -ECONNRESET && ret != -ECONNREFUSED {
            return;
        }
        let Some(arg0) = syscall_arg(cfg, 0) else {
            return;
        };
        fd = arg0 as i32 as i64;
        if which == source::GETSOCKOPT {
            let Some(err) = syscall_arg(cfg, 3).and_then(|p| so_error(p as u64)) else {
                return;
            };
            ret = err;
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
        if which == source::GETSOCKOPT {
            if ret != 0 || pending.optval == 0 {
                return;
            }
            let Some(err) = so_error(pending.optval) else {
                return;
            };
            ret = err;
        }
    }
    if ret != -ECONNRESET
        && !((which == source::CONNECT || which == source::GETSOCKOPT) && ret == -ECONNREFUSED)
    {
        return;
    }
    let Some(sk) = fd_to_sock(cfg, fd) else {
        return;
    };
    // SAFETY: sk is the live socket behind the fd.
    let family: u16 = unsafe { read_field(sk, cfg.sock_family) }.unwrap_or(0);
    emit_socket_error(cfg, sk, family, ret, which);
}

/// listen() on an AF_UNIX socket: remember who owns the listener at its path.
#[inline(always)]
fn unix_listen(ctx: &TracePointContext) {
    let cfg = config();
    let Some(fd) = record_field::<i64>(ctx, cfg.sys_enter_fd) else {
        return;
    };
    let Some(sk) = fd_to_sock(cfg, fd) else {
        return;
    };
    // SAFETY: sk is the live socket behind the fd.
    let family: u16 = unsafe { read_field(sk, cfg.sock_family) }.unwrap_or(0);
    if family != AF_UNIX {
        return;
    }
    let address: u64 = unsafe { read_field(sk, cfg.unix_addr) }.unwrap_or(0);
    emit::<event::UnixListen>(cfg, EventKind::UnixListen, |e| unsafe {
        (*e).sock = sk;
        (*e)._pad = 0;
        (*e).path_len = copy_unix_address(cfg, &raw mut (*e).path, address);
    });
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

socket_syscall!(sys_enter_recvfrom, sys_exit_recvfrom, source::RECVFROM);
socket_syscall!(sys_enter_recvmsg, sys_exit_recvmsg, source::RECVMSG);
socket_syscall!(sys_enter_readv, sys_exit_readv, source::READV);
socket_syscall!(sys_enter_sendto, sys_exit_sendto, source::SENDTO);
socket_syscall!(sys_enter_sendmsg, sys_exit_sendmsg, source::SENDMSG);
socket_syscall!(sys_enter_writev, sys_exit_writev, source::WRITEV);
socket_syscall!(sys_enter_connect, sys_exit_connect, source::CONNECT);
socket_syscall!(
    sys_enter_getsockopt,
    sys_exit_getsockopt,
    source::GETSOCKOPT
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

//! Types shared by the kernel programs (`main.rs`, bpfel) and user space (`tracer`).
//!
//! Defined once here so the two sides cannot drift. Every type is `#[repr(C)]` and plain
//! old data; user space gets `aya::Pod` impls through the `user` feature.
#![no_std]

/// Bytes of a tracepoint record copied verbatim into a [`Sample`]. The largest record we
/// copy (tcp:tcp_send_reset on 6.10+) is 88 bytes; the layout itself is decoded in user
/// space from tracefs format files, so the kernel side never needs to know it.
pub const RAW_RECORD_MAX: usize = 128;
pub const TASK_COMM_LEN: usize = 16;

/// Which hook produced a [`Sample`]. Also the index into [`Config::record_len`].
pub mod kind {
    pub const RESET_SENT: u32 = 1;
    pub const RESET_RECEIVED: u32 = 2;
    pub const SIGNAL: u32 = 3;
    pub const EXIT: u32 = 4;
    pub const FORK: u32 = 5;
    pub const OOM_VICTIM: u32 = 6;
    /// A read/write/connect syscall on a socket returned ECONNRESET (or ECONNREFUSED for
    /// connect): the receiver saw the reset. Carries the socket, and for AF_UNIX its peer.
    pub const SOCKET_ERROR: u32 = 7;
    /// listen() on an AF_UNIX socket: who owns the listener at that path.
    pub const UNIX_LISTEN: u32 = 8;
    pub const COUNT: usize = 9;
}

/// Which syscall a `SOCKET_ERROR` sample comes from.
pub mod syscall {
    pub const RECVFROM: u32 = 1;
    pub const RECVMSG: u32 = 2;
    pub const READV: u32 = 3;
    pub const SENDTO: u32 = 4;
    pub const SENDMSG: u32 = 5;
    pub const WRITEV: u32 = 6;
    pub const CONNECT: u32 = 7;
    /// getsockopt(SOL_SOCKET, SO_ERROR): how event loops (nginx) learn that a non-blocking
    /// connect() failed.
    pub const GETSOCKOPT: u32 = 8;
    /// sock:sock_recv_length / sock:sock_send_length (6.x): any receive or send on a
    /// socket (recv*, read, readv / send*, write, writev), with no syscall tracepoint.
    pub const SOCK_RECV: u32 = 9;
    pub const SOCK_SEND: u32 = 10;
}

/// A socket syscall in flight (the exit record carries only the result).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingSyscall {
    pub fd: i64,
    /// getsockopt's optval (user pointer), 0 for the other syscalls.
    pub optval: u64,
}

pub const ECONNRESET: i64 = 104;
pub const ECONNREFUSED: i64 = 111;
pub const AF_UNIX: u16 = 1;

/// `task_struct::flags` bit set once a task has entered do_exit() (include/linux/sched.h).
pub const PF_EXITING: u32 = 0x0000_0004;

/// Offset value meaning "this kernel has no such field".
pub const NO_OFFSET: u32 = u32::MAX;

/// Who owns a TCP socket, recorded when a task connects or accepts it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOwner {
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; TASK_COMM_LEN],
    /// ktime of the socket's move to TCP_CLOSE, 0 while open. Kept for a short while after
    /// close because tcp_close() moves to TCP_CLOSE *before* sending its reset.
    pub closed_ns: u64,
}

/// One record pushed through the ring buffer: what every hook knows about the current
/// task, plus the raw tracepoint record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Sample {
    pub kind: u32,
    /// Valid bytes in `raw`.
    pub raw_len: u32,
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// bpf_get_current_pid_tgid() of the task on the CPU: tgid << 32 | pid.
    pub pid_tgid: u64,
    pub comm: [u8; TASK_COMM_LEN],
    /// current->flags (PF_EXITING...), 0 when the offset is unknown.
    pub task_flags: u32,
    /// current->exit_code (wait status), meaningful for `kind::EXIT`.
    pub exit_code: i32,
    /// Owner of the socket the record names (`tgid == 0`: unknown), for reset records.
    pub owner: SockOwner,
    /// Kernfs id of current's memory cgroup (= inode of its cgroupfs directory), 0 if
    /// unknown; filled for `kind::EXIT` and `kind::OOM_VICTIM`.
    pub memcg_id: u64,
    /// `SOCKET_ERROR`, `UNIX_LISTEN`: the struct sock * behind the syscall's fd.
    pub sock: u64,
    /// `SOCKET_ERROR` on AF_UNIX: unix_peer(sock), the other end (an accepted socket, or an
    /// embryo never accepted). `owner` is its owner when known.
    pub peer_sock: u64,
    /// `SOCKET_ERROR`: the syscall's return value (-104, -111).
    pub sys_ret: i64,
    /// `SOCKET_ERROR`: the socket's address family.
    pub family: u16,
    pub _pad: u16,
    /// `SOCKET_ERROR`: which syscall (`syscall::*`).
    pub syscall: u32,
    /// Tracepoint record, or for AF_UNIX samples the struct sockaddr_un of the listener's
    /// path (the peer's address for `SOCKET_ERROR`, the socket's own for `UNIX_LISTEN`).
    pub raw: [u8; RAW_RECORD_MAX],
}

/// Kernel facts resolved by user space at start (tracefs formats, BTF) and frozen into the
/// programs' read-only data. `NO_OFFSET` marks what this kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Bytes of each record to copy, by `kind` (0: do not copy).
    pub record_len: [u32; kind::COUNT],
    pub send_reset_skaddr: u32,
    pub recv_reset_skaddr: u32,
    pub set_state_skaddr: u32,
    pub set_state_oldstate: u32,
    pub set_state_newstate: u32,
    pub set_state_protocol: u32,
    pub signal_sig: u32,
    pub syscall_ret: u32,
    /// `fd` in syscalls:sys_enter_{recvfrom,readv,...,listen} records.
    pub sys_enter_fd: u32,
    /// Offsets in struct pt_regs of the first four syscall arguments (x86_64: di, si, dx,
    /// r10). Known: socket syscall exits read their arguments from the task's saved
    /// registers (bpf_task_pt_regs, 5.15+) and no enter hook runs on every syscall.
    pub regs_arg: [u32; 4],
    /// Force a reader wake-up once this many bytes wait in the ring buffer; below it,
    /// samples are submitted without waking rsttrace, which drains on a short timer
    /// (a wake-up per sample costs more than the sample itself in a reset storm).
    pub ring_wakeup_bytes: u32,
    /// `sk`, `family`, `ret` in sock:sock_recv_length and sock:sock_send_length (same layout).
    pub sock_io_sk: u32,
    pub sock_io_family: u32,
    pub sock_io_ret: u32,
    /// `level`, `optname`, `optval` in syscalls:sys_enter_getsockopt.
    pub getsockopt_level: u32,
    pub getsockopt_optname: u32,
    pub getsockopt_optval: u32,
    // struct offsets from BTF
    pub task_flags: u32,
    pub task_exit_code: u32,
    pub task_cgroups: u32,
    /// offsetof(css_set, subsys) + memory_cgrp_id * sizeof(void *)
    pub css_set_memcg: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub sock_family: u32,
    pub unix_peer: u32,
    pub unix_addr: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
}

impl Config {
    pub const EMPTY: Config = Config {
        record_len: [0; kind::COUNT],
        send_reset_skaddr: NO_OFFSET,
        recv_reset_skaddr: NO_OFFSET,
        set_state_skaddr: NO_OFFSET,
        set_state_oldstate: NO_OFFSET,
        set_state_newstate: NO_OFFSET,
        set_state_protocol: NO_OFFSET,
        signal_sig: NO_OFFSET,
        syscall_ret: NO_OFFSET,
        sys_enter_fd: NO_OFFSET,
        regs_arg: [NO_OFFSET; 4],
        sock_io_sk: NO_OFFSET,
        sock_io_family: NO_OFFSET,
        sock_io_ret: NO_OFFSET,
        ring_wakeup_bytes: 0,
        getsockopt_level: NO_OFFSET,
        getsockopt_optname: NO_OFFSET,
        getsockopt_optval: NO_OFFSET,
        task_flags: NO_OFFSET,
        task_exit_code: NO_OFFSET,
        task_cgroups: NO_OFFSET,
        css_set_memcg: NO_OFFSET,
        css_cgroup: NO_OFFSET,
        cgroup_kn: NO_OFFSET,
        kn_id: NO_OFFSET,
        task_files: NO_OFFSET,
        files_fdt: NO_OFFSET,
        fdt_max_fds: NO_OFFSET,
        fdt_fd: NO_OFFSET,
        file_private_data: NO_OFFSET,
        socket_sk: NO_OFFSET,
        sock_family: NO_OFFSET,
        unix_peer: NO_OFFSET,
        unix_addr: NO_OFFSET,
        unix_address_len: NO_OFFSET,
        unix_address_name: NO_OFFSET,
    };
}

/// Signals whose default action terminates the process (signal(7)); only those are sent
/// to user space. SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGURG and SIGWINCH
/// are not, which keeps busy hosts' job-control and child-reaping noise in the kernel.
pub const FATAL_SIGNAL_MASK: u64 = {
    let mut mask = 0u64;
    let mut sig = 1;
    while sig <= 31 {
        mask |= 1 << sig;
        sig += 1;
    }
    // 17 CHLD, 18 CONT, 19 STOP, 20 TSTP, 21 TTIN, 22 TTOU, 23 URG, 28 WINCH
    mask & !((1 << 17)
        | (1 << 18)
        | (1 << 19)
        | (1 << 20)
        | (1 << 21)
        | (1 << 22)
        | (1 << 23)
        | (1 << 28))
};

/// Name of the map counting ring buffer reservation failures (per CPU, index 0).
pub const LOST_MAP: &str = "LOST";
pub const EVENTS_MAP: &str = "EVENTS";
pub const CONFIG_GLOBAL: &str = "CONFIG";

#[cfg(feature = "user")]
mod user {
    // SAFETY: all three are repr(C), Copy, contain only integers and arrays of integers,
    // and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Sample {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SockOwner {}
    unsafe impl aya::Pod for super::PendingSyscall {}
}

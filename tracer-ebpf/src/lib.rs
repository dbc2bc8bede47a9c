//! Types shared by the kernel programs (`main.rs`, bpfel) and user space (`tracer`).
//!
//! Defined once here so the two sides cannot drift. Every type is `#[repr(C)]` and plain
//! old data; user space gets `aya::Pod` impls through the `user` feature.
//!
//! - [`event`]: what the programs send through the ring buffer, one type per kind of event
//!   behind a common [`event::Header`];
//! - [`config`]: the kernel facts user space resolves at start and freezes into the programs.
#![no_std]

pub mod config;
pub mod event;

pub use config::{Config, NO_OFFSET};

pub const TASK_COMM_LEN: usize = 16;

pub const ECONNRESET: i64 = 104;
pub const ECONNREFUSED: i64 = 111;
pub const AF_UNIX: u16 = 1;

/// `task_struct::flags` bit set once a task has entered do_exit() (include/linux/sched.h).
pub const PF_EXITING: u32 = 0x0000_0004;

/// A socket syscall in flight (the exit record carries only the result).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingSyscall {
    pub fd: i64,
    /// getsockopt's optval (user pointer), 0 for the other syscalls.
    pub optval: u64,
}

/// Who owns a socket: the task that connected it, accepted it, or first read or wrote it.
///
/// Kept in a map keyed by the socket's address, which the slab reuses at once (TCP sockets
/// are SLAB_TYPESAFE_BY_RCU): a TCP socket's record dies with it at tcp:tcp_destroy_sock;
/// unix sockets have no such tracepoint, so their record carries the inode numbers (never
/// reused) of the socket and of its peer: a record naming other inodes belonged to an
/// earlier connection at those addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOwner {
    /// 0: the owner is not known yet (only the role is).
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; TASK_COMM_LEN],
    /// Inode number of the socket, and of the peer it was connected to when the record was
    /// made (unix sockets; 0 for TCP).
    pub ino: u64,
    pub peer_ino: u64,
    /// ktime at which tcp:tcp_destroy_sock fired for the socket, 0 while it lives. The
    /// record outlives the socket for an instant: a reset answering an incoming segment is
    /// sent *after* tcp_reset() has destroyed the socket (tcp_rcv_state_process() returns
    /// to tcp_v4_do_rcv(), which sends it; net/ipv4/tcp_input.c, tcp_ipv4.c).
    pub destroyed_ns: u64,
    /// [`role`] of the socket in its connection.
    pub role: u8,
    pub _pad: [u8; 7],
}

impl SockOwner {
    pub const UNKNOWN: SockOwner = SockOwner {
        tgid: 0,
        pid: 0,
        comm: [0; TASK_COMM_LEN],
        ino: 0,
        peer_ino: 0,
        destroyed_ns: 0,
        role: role::UNKNOWN,
        _pad: [0; 7],
    };
}

/// Which end of its connection a socket is.
pub mod role {
    pub const UNKNOWN: u8 = 0;
    /// It connected (the active opener): nginx's upstream connections.
    pub const CLIENT: u8 = 1;
    /// It was accepted from a listener: nginx's client connections, upstreams' sockets.
    pub const SERVER: u8 = 2;
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
/// Name of the one-slot array in which rsttrace says whether it sleeps until woken
/// ([`READER_SLEEPS`]) or drains on its own timer (0).
pub const READER_MAP: &str = "READER";
pub const READER_SLEEPS: u32 = 1;
pub const CONFIG_GLOBAL: &str = "CONFIG";

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are repr(C), Copy, contain only integers and arrays of integers, and
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SockOwner {}
    unsafe impl aya::Pod for super::PendingSyscall {}
}

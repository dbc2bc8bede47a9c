//! TCP resets sent and received, and who owns each TCP socket.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext, EbpfContext,
};
use tracer_ebpf::{
    event::{self, EventKind},
    role, SockOwner,
};

use super::{
    config, copy_bytes, current_owner, current_task, emit, lookup_owner, read_field, record_field,
    record_len, SOCK_OWNERS,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let sk = record_field::<u64>(&ctx, cfg.send_reset_skaddr).unwrap_or(0);
    let owner = lookup_owner(sk);
    // SAFETY: current is a valid task_struct, sk a live socket, for the program's run.
    let task_flags = unsafe { read_field::<u32>(current_task(), cfg.task_flags) }.unwrap_or(0);
    let orphan = sk != 0 && unsafe { read_field::<u64>(sk, cfg.sock_socket) } == Some(0);
    let len = record_len(&cfg, EventKind::ResetSent);
    emit::<event::ResetSent>(&cfg, EventKind::ResetSent, |e| unsafe {
        (*e).task_flags = task_flags;
        (*e).owner = owner;
        (*e).orphan = u8::from(orphan);
        (*e)._pad = [0; 7];
        (*e).record_len = copy_bytes(&raw mut (*e).record, ctx.as_ptr() as *const c_void, len);
    });
    0
}

/// On loopback this runs in the *sender's* context (same softirq pass): the receiver is
/// the socket's recorded owner, never `current`.
#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let sk = record_field::<u64>(&ctx, cfg.recv_reset_skaddr).unwrap_or(0);
    let owner = lookup_owner(sk);
    let len = record_len(&cfg, EventKind::ResetReceived);
    emit::<event::ResetReceived>(&cfg, EventKind::ResetReceived, |e| unsafe {
        (*e)._pad = 0;
        (*e).owner = owner;
        (*e).record_len = copy_bytes(&raw mut (*e).record, ctx.as_ptr() as *const c_void, len);
    });
    0
}

/// Which end each TCP socket is: CLOSE -> SYN_SENT runs in the connecting task
/// (tcp_v4_connect/tcp_v6_connect), so it also names the owner; SYN_RECV -> ESTABLISHED is
/// an accepted socket completing its handshake in softirq, where `current` is nobody's, so
/// only the role is recorded (its first read or write names the owner).
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let (Some(old), Some(new)) = (
        record_field::<i32>(&ctx, cfg.set_state_oldstate),
        record_field::<i32>(&ctx, cfg.set_state_newstate),
    ) else {
        return 0;
    };
    let connecting = old == TCP_CLOSE && new == TCP_SYN_SENT;
    let accepted = old == TCP_SYN_RECV && new == TCP_ESTABLISHED;
    if !(connecting || accepted)
        || record_field::<u16>(&ctx, cfg.set_state_protocol) != Some(IPPROTO_TCP)
    {
        return 0;
    }
    let Some(sk) = record_field::<u64>(&ctx, cfg.set_state_skaddr) else {
        return 0;
    };
    if connecting {
        let _ = SOCK_OWNERS.insert(&sk, &current_owner(role::CLIENT, 0, 0), 0);
    } else {
        // An owner recorded by accept() on the syscall path stays; a destroyed socket's
        // record at this address goes.
        // SAFETY: the value is copied out at once.
        if let Some(o) = unsafe { SOCK_OWNERS.get(&sk) } {
            if o.destroyed_ns == 0 {
                return 0;
            }
        }
        let server = SockOwner {
            role: role::SERVER,
            ..SockOwner::UNKNOWN
        };
        let _ = SOCK_OWNERS.insert(&sk, &server, 0);
    }
    0
}

/// The kernel destroys the socket (tcp_v4_destroy_sock(), net/ipv4/tcp_ipv4.c): its
/// address may be reused at once by a new socket, so its owner record is marked destroyed
/// (see SockOwner::destroyed_ns) and no new socket inherits it.
#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let Some(sk) = record_field::<u64>(&ctx, cfg.destroy_skaddr) else {
        return 0;
    };
    if let Some(owner) = SOCK_OWNERS.get_ptr_mut(&sk) {
        // SAFETY: map value pointer from the kernel, valid for this program run.
        unsafe { (*owner).destroyed_ns = bpf_ktime_get_ns() };
    }
    0
}

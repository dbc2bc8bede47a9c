//! TCP resets sent and received, and who owns each TCP socket.
use core::ffi::c_void;

use aya_ebpf::{macros::tracepoint, programs::TracePointContext, EbpfContext};
use tracer_ebpf::event::{self, EventKind};

use super::{
    config, copy_bytes, current_owner, current_task, emit, lookup_owner, now_ns, read_field,
    record_field, record_len, SOCK_OWNERS,
};

const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let sk = record_field::<u64>(&ctx, cfg.send_reset_skaddr).unwrap_or(0);
    let owner = lookup_owner(sk, now_ns());
    // SAFETY: current is a valid task_struct for the duration of the program.
    let task_flags = unsafe { read_field::<u32>(current_task(), cfg.task_flags) }.unwrap_or(0);
    let len = record_len(&cfg, EventKind::ResetSent);
    emit::<event::ResetSent>(&cfg, EventKind::ResetSent, |e| unsafe {
        (*e).task_flags = task_flags;
        (*e).owner = owner;
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
    let owner = lookup_owner(sk, now_ns());
    let len = record_len(&cfg, EventKind::ResetReceived);
    emit::<event::ResetReceived>(&cfg, EventKind::ResetReceived, |e| unsafe {
        (*e)._pad = 0;
        (*e).owner = owner;
        (*e).record_len = copy_bytes(&raw mut (*e).record, ctx.as_ptr() as *const c_void, len);
    });
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
        let now = now_ns();
        if let Some(owner) = SOCK_OWNERS.get_ptr_mut(&sk) {
            // SAFETY: map value pointer from the kernel, valid for this program run.
            unsafe { (*owner).closed_ns = now };
        }
    }
    0
}

//! TCP resets sent and received, and who owns each TCP socket.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use tracer_ebpf::{
    event::{self, EventKind},
    role, Config, SockOwner,
};

use super::{
    config, copy_bytes, current_owner, current_task, emit, forget_learned, lookup_owner,
    mark_learned, read_field, record_field, record_len, record_owner, sock_netns, SOCK_OWNERS,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;

const TCP_FLAG_ACK: u8 = 0x10;

/// Where a sent RST goes on the wire: its sequence number, and the namespace it leaves.
/// An active reset (tcp_send_active_reset(), no segment) carries the socket's snd_nxt
/// (tcp_acceptable_seq(), net/ipv4/tcp_output.c); one answering a segment
/// (tcp_v4_send_reset()) carries that segment's ack_seq, or 0 when it had no ACK.
#[inline(always)]
fn sent_rst(cfg: &Config, sk: u64, skb: u64) -> (Option<u32>, u32) {
    if skb == 0 {
        // SAFETY: reads of a live socket's fields; a fault gives None.
        let seq = unsafe { read_field::<u32>(sk, cfg.tcp_snd_nxt) };
        return (seq, sock_netns(cfg, sk));
    }
    // SAFETY: skb is the segment being answered, alive for this program's run.
    unsafe {
        let head = read_field::<u64>(skb, cfg.skb_head).unwrap_or(0);
        let th = read_field::<u16>(skb, cfg.skb_transport_header)
            .map(|off| head + off as u64)
            .filter(|_| head != 0);
        let seq = th.and_then(|th| {
            let flags = bpf_probe_read_kernel((th + 13) as *const u8).ok()?;
            if flags & TCP_FLAG_ACK == 0 {
                return Some(0);
            }
            let ack_seq = bpf_probe_read_kernel((th + 8) as *const u32).ok()?;
            Some(u32::from_be(ack_seq))
        });
        let netns = if sk != 0 {
            sock_netns(cfg, sk)
        } else {
            let dev = read_field::<u64>(skb, cfg.skb_dev).unwrap_or(0);
            let net = read_field::<u64>(dev, cfg.dev_net).unwrap_or(0);
            read_field::<u32>(net, cfg.net_ns_inum).unwrap_or(0)
        };
        (seq, netns)
    }
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let sk = record_field::<u64>(&ctx, cfg.send_reset_skaddr).unwrap_or(0);
    let skb = record_field::<u64>(&ctx, cfg.send_reset_skbaddr).unwrap_or(0);
    let owner = lookup_owner(sk);
    // SAFETY: current is a valid task_struct, sk a live socket, for the program's run.
    let task_flags = unsafe { read_field::<u32>(current_task(), cfg.task_flags) }.unwrap_or(0);
    let orphan = sk != 0 && unsafe { read_field::<u64>(sk, cfg.sock_socket) } == Some(0);
    let (seq, netns) = sent_rst(cfg, sk, skb);
    let len = record_len(cfg, EventKind::ResetSent);
    emit::<event::ResetSent>(cfg, EventKind::ResetSent, |e| unsafe {
        (*e).task_flags = task_flags;
        (*e).owner = owner;
        (*e).orphan = u8::from(orphan);
        (*e).has_seq = u8::from(seq.is_some());
        (*e)._pad = [0; 2];
        (*e).seq = seq.unwrap_or(0);
        (*e).netns = netns;
        (*e)._pad2 = 0;
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
    // SAFETY: sk is the receiving socket, alive for this program's run.
    let rcv_nxt = unsafe { read_field::<u32>(sk, cfg.tcp_rcv_nxt) };
    let netns = sock_netns(cfg, sk);
    let len = record_len(cfg, EventKind::ResetReceived);
    emit::<event::ResetReceived>(cfg, EventKind::ResetReceived, |e| unsafe {
        (*e).rcv_nxt = rcv_nxt.unwrap_or(0);
        (*e).netns = netns;
        (*e).has_seq = u8::from(rcv_nxt.is_some());
        (*e)._pad = [0; 3];
        (*e).owner = owner;
        (*e).record_len = copy_bytes(&raw mut (*e).record, ctx.as_ptr() as *const c_void, len);
    });
    0
}

/// Which end each TCP socket is: CLOSE -> SYN_SENT runs in the connecting task
/// (tcp_v4_connect/tcp_v6_connect), so it also names the owner; SYN_RECV -> ESTABLISHED is
/// an accepted socket completing its handshake in softirq, where `current` is nobody's, so
/// only the role is recorded (its first read or write names the owner).
///
/// A raw tracepoint (arguments sk, oldstate, newstate): every TCP state change of the host
/// runs it, and the four transitions of six it does not need leave after two loads from
/// its context, with no record built and no helper called.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    // int arguments arrive zero-extended (__CAST_TO_U64, include/trace/bpf_probe.h).
    let old = ctx.arg::<u64>(1) as u32 as i32;
    let new = ctx.arg::<u64>(2) as u32 as i32;
    let connecting = old == TCP_CLOSE && new == TCP_SYN_SENT;
    let accepted = old == TCP_SYN_RECV && new == TCP_ESTABLISHED;
    if !(connecting || accepted) {
        return 0;
    }
    let cfg = config();
    let sk: u64 = ctx.arg(0);
    // SAFETY: the tracepoint's socket, alive for this program's run; a fault gives None.
    if unsafe { read_field::<u16>(sk, cfg.sock_protocol) } != Some(IPPROTO_TCP) {
        return 0;
    }
    let slot = SOCK_OWNERS.get_ptr_mut(&sk);
    if connecting {
        let owner = current_owner(role::CLIENT, 0, 0);
        record_owner(sk, slot, &owner);
        mark_learned(sk, owner.tgid, 0);
    } else {
        // An owner recorded by accept() on the syscall path stays; a destroyed socket's
        // record at this address goes.
        // SAFETY: a map value pointer, valid for this program run.
        if slot.is_some_and(|p| unsafe { (*p).destroyed_ns } == 0) {
            return 0;
        }
        let server = SockOwner {
            role: role::SERVER,
            ..SockOwner::UNKNOWN
        };
        record_owner(sk, slot, &server);
    }
    0
}

/// The kernel destroys the socket (tcp_v4_destroy_sock(), net/ipv4/tcp_ipv4.c): its
/// address may be reused at once by a new socket, so its owner record is marked destroyed
/// (see SockOwner::destroyed_ns) and no new socket inherits it. A raw tracepoint
/// (argument sk): no record is built for it.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    forget_learned(sk);
    if let Some(owner) = SOCK_OWNERS.get_ptr_mut(&sk) {
        // SAFETY: map value pointer from the kernel, valid for this program run.
        unsafe { (*owner).destroyed_ns = bpf_ktime_get_ns() };
    }
    0
}

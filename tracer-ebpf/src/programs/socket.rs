//! Socket calls failing with ECONNRESET: the receiver seeing a TCP reset, or for AF_UNIX
//! the reset itself. Where the kernel has sock:sock_recv_length/sock_send_length they catch
//! every receive and send without any syscall tracepoint; `syscalls` serves older kernels.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use tracer_ebpf::{
    event::{self, source, EventKind},
    Config, AF_UNIX, ECONNRESET,
};

use super::{
    already_learned, config, copy_bytes, emit, learn_owner, lookup_unix_peer_owner, mark_learned,
    read_field,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// The receiver's socket call failed with ECONNRESET (or ECONNREFUSED); for AF_UNIX the
/// event also names the peer socket, its owner and the listener path it came through.
#[inline(always)]
pub(super) fn emit_socket_error(cfg: &Config, sk: u64, family: u16, ret: i64, source: u16) {
    if family != AF_UNIX {
        emit::<event::SocketError>(cfg, EventKind::SocketError, |e| unsafe {
            (*e).sock = sk;
            (*e).ret = ret as i32;
            (*e).family = family;
            (*e).source = source;
        });
        return;
    }
    // SAFETY: sk is the live socket of the failing call; the reads fault safely.
    let peer: u64 = unsafe { read_field(sk, cfg.unix_peer) }.unwrap_or(0);
    let address: u64 = unsafe { read_field(peer, cfg.unix_addr) }.unwrap_or(0);
    let peer_owner = lookup_unix_peer_owner(cfg, peer, sk);
    emit::<event::UnixReset>(cfg, EventKind::UnixReset, |e| unsafe {
        (*e).sock = sk;
        (*e).peer_sock = peer;
        (*e).peer_owner = peer_owner;
        (*e).ret = ret as i32;
        (*e).source = source;
        (*e)._pad = 0;
        (*e)._pad2 = 0;
        (*e).path_len = copy_unix_address(cfg, &raw mut (*e).path, address);
    });
}

/// Copies the struct sockaddr_un held by a struct unix_address (len, name[]); returns its
/// length (0: unnamed or unknown).
#[inline(always)]
pub(super) unsafe fn copy_unix_address(
    cfg: &Config,
    dst: *mut [u8; event::UNIX_ADDR_LEN],
    address: u64,
) -> u32 {
    if address == 0 || cfg.unix_address_name == tracer_ebpf::NO_OFFSET {
        return 0;
    }
    let len = unsafe { read_field::<i32>(address, cfg.unix_address_len) }.unwrap_or(0);
    let name = (address + cfg.unix_address_name as u64) as *const c_void;
    unsafe { copy_bytes(dst, name, len.max(0) as u32) }
}

/// Every receive or send on a socket, in the task doing it, with the socket and the
/// result. A failure with ECONNRESET is the receiver seeing the reset; any other call
/// teaches who uses the socket (accepted sockets are first read by their process).
///
/// Raw tracepoints (arguments sk, ret, flags): they run on every socket call of the host,
/// so no record is built for them and the result is tested before anything is read.
#[inline(always)]
fn socket_io(ctx: &RawTracePointContext, source: u16) {
    let sk: u64 = ctx.arg(0);
    // int arguments arrive zero-extended (__CAST_TO_U64, include/trace/bpf_probe.h).
    let ret = ctx.arg::<u64>(1) as u32 as i32;
    if sk == 0 {
        return;
    }
    let failed = ret as i64 == -ECONNRESET;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let cfg = config();
    if !failed && already_learned(cfg, sk, tgid) {
        return;
    }
    // SAFETY: the call's socket, alive for this program's run; a fault gives 0.
    let family = unsafe { read_field::<u16>(sk, cfg.sock_family) }.unwrap_or(0);
    let stream = match family {
        AF_UNIX => true,
        AF_INET | AF_INET6 => {
            // SAFETY: as above.
            unsafe { read_field::<u16>(sk, cfg.sock_protocol) }.unwrap_or(IPPROTO_TCP)
                == IPPROTO_TCP
        }
        _ => false,
    };
    if !stream {
        return;
    }
    if !failed {
        // Who uses a socket is learnt from its first read or write: accepted sockets are
        // read by their process before anything else happens on them.
        let ino = learn_owner(cfg, sk, family, tracer_ebpf::role::UNKNOWN);
        // A unix socket is cached only with the inode that tells its reuse apart.
        if family != AF_UNIX || ino != 0 {
            mark_learned(sk, tgid, ino);
        }
        return;
    }
    emit_socket_error(cfg, sk, family, ret as i64, source);
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    socket_io(&ctx, source::SOCK_RECV);
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    socket_io(&ctx, source::SOCK_SEND);
    0
}

//! Evidence from the network: every segment a local socket receives passes the cgroup_skb
//! ingress hook of the root cgroup (net/core/filter.c sk_filter_trim_cap(), after NAT and
//! routing). RSTs that no traced send explains are sent to user space with what their
//! headers say (TTL, IP ID, flags, interface); the flow's earlier segments leave the TTL
//! they arrived with as its baseline.
//! Every other segment must leave after a header read or two: this runs for every packet
//! any socket of the host receives, and it always lets the packet through.
//!
//! Also: a socket error reported without a reset (ICMP port unreachable, timeouts), from
//! the raw tracepoint inet_sk_error_report, whose argument is the socket itself.
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_skb, map, raw_tracepoint},
    maps::Array,
    programs::{RawTracePointContext, SkBuffContext},
};
use tracer_ebpf::{
    event::{
        self, baseline, Baseline, EventKind, PeerBaseline, BASELINE_SLOTS, PEER_BASELINE_SLOTS,
    },
    Config,
};

use super::{config, emit, emit_packet, lookup_owner, read_field, sock_netns};

/// Per-flow TTL baselines, by socket cookie (see event::Baseline).
#[map]
static BASELINES: Array<Baseline> = Array::with_max_entries(BASELINE_SLOTS, 0);

/// Per-peer-address TTL baselines, from SYN-ACKs (see event::PeerBaseline).
#[map]
static PEER_BASELINES: Array<PeerBaseline> = Array::with_max_entries(PEER_BASELINE_SLOTS, 0);

const ETH_P_IP_BE: u32 = 0x0008;
const ETH_P_IPV6_BE: u32 = 0xdd86;
const IPPROTO_TCP: u8 = 6;
const TCP_RST: u8 = 0x04;
/// IP_DF (0x4000) in the first byte of the big-endian frag_off field.
const IP_DF_HIGH_BYTE: u8 = 0x40;
const TCP_SYN_ACK: u8 = 0x12;
/// The loopback device has this index in every namespace (LOOPBACK_IFINDEX).
const LOOPBACK_IFINDEX: u32 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const ECONNREFUSED: i32 = 111;
const ETIMEDOUT: i32 = 110;
const IPPROTO_TCP_U16: u16 = 6;

/// Where the IP and TCP headers of a segment lie in the linear data.
struct Segment {
    family: u16,
    ip: usize,
    tcp: usize,
    ttl: u8,
    flags: u8,
}

impl Segment {
    /// The source address (IPv4 in the first 4 bytes).
    #[inline(always)]
    fn source(&self) -> [u8; 16] {
        let mut addr = [0u8; 16];
        // SAFETY: within the IP header segment() bounds-checked.
        unsafe {
            if self.family == AF_INET {
                addr[..4].copy_from_slice(&*((self.ip + 12) as *const [u8; 4]));
            } else {
                addr = *((self.ip + 8) as *const [u8; 16]);
            }
        }
        addr
    }

    /// The destination address (IPv4 in the first 4 bytes).
    #[inline(always)]
    fn destination(&self) -> [u8; 16] {
        let mut addr = [0u8; 16];
        // SAFETY: as above.
        unsafe {
            if self.family == AF_INET {
                addr[..4].copy_from_slice(&*((self.ip + 16) as *const [u8; 4]));
            } else {
                addr = *((self.ip + 24) as *const [u8; 16]);
            }
        }
        addr
    }
}

/// The peer-address cache slot of `addr` (FNV-1a over its bytes).
#[inline(always)]
fn peer_slot(addr: &[u8; 16]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in addr {
        h = (h ^ *b as u32).wrapping_mul(0x0100_0193);
    }
    h % PEER_BASELINE_SLOTS
}

#[cgroup_skb(ingress)]
pub fn rst_evidence(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    if let Some(seg) = segment(skb) {
        if seg.flags & TCP_RST != 0 {
            report_rst(skb, &seg);
        } else {
            learn_baseline(skb, &seg);
        }
    }
    // Never drop: this program sees every packet of the host.
    1
}

/// The TCP segment in `skb`, if it is one with its headers in the linear data (tcp_v4_rcv()
/// and tcp_v6_rcv() have pulled them by the time the socket filter runs).
#[inline(always)]
fn segment(skb: *mut __sk_buff) -> Option<Segment> {
    // SAFETY: ctx fields of the program's own __sk_buff; packet bytes are read only after
    // the verifier-visible bound checks against data_end.
    unsafe {
        let data = (*skb).data as usize;
        let end = (*skb).data_end as usize;
        let protocol = (*skb).protocol;
        let (family, ip_len, ttl) = if protocol == ETH_P_IP_BE {
            if data + 20 > end || *((data + 9) as *const u8) != IPPROTO_TCP {
                return None;
            }
            let ihl = ((*(data as *const u8) & 0x0f) as usize) * 4;
            (AF_INET, ihl, *((data + 8) as *const u8))
        } else if protocol == ETH_P_IPV6_BE {
            // Extension headers before TCP are not followed: such segments give no evidence.
            if data + 40 > end || *((data + 6) as *const u8) != IPPROTO_TCP {
                return None;
            }
            (AF_INET6, 40, *((data + 7) as *const u8))
        } else {
            return None;
        };
        if ip_len < 20 || ip_len > 60 {
            return None;
        }
        let tcp = data + ip_len;
        if tcp + 20 > end {
            return None;
        }
        Some(Segment {
            family,
            ip: data,
            tcp,
            ttl,
            flags: *((tcp + 13) as *const u8),
        })
    }
}

/// Remembers the TTL of a flow's segments from its peer: always the SYN-ACK of a
/// connection this host opened; any other segment only when the flow has no baseline yet
/// (a connection older than rsttrace) and it did not come through loopback, where the
/// peer is this host and its sends are traced.
#[inline(always)]
fn learn_baseline(skb: *mut __sk_buff, seg: &Segment) {
    // SAFETY: ctx field read.
    let ifindex = unsafe { (*skb).ingress_ifindex };
    let syn_ack = seg.flags & TCP_SYN_ACK == TCP_SYN_ACK;
    if !syn_ack && ifindex == LOOPBACK_IFINDEX {
        return;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(skb as *mut core::ffi::c_void) };
    let Some(slot) = BASELINES.get_ptr_mut((cookie % BASELINE_SLOTS as u64) as u32) else {
        return;
    };
    // SAFETY: array slot pointer from the kernel, valid for this run; a concurrent writer
    // on another CPU can at worst leave a mixed entry, which the cookie check exposes.
    unsafe {
        if !syn_ack && (*slot).cookie == cookie {
            return;
        }
        (*slot).cookie = cookie;
        (*slot).ttl = seg.ttl;
        (*slot).ifindex = ifindex;
    }
    if syn_ack {
        let addr = seg.source();
        if let Some(peer) = PEER_BASELINES.get_ptr_mut(peer_slot(&addr)) {
            // SAFETY: as above; the address check exposes a mixed entry.
            unsafe {
                (*peer).addr = addr;
                (*peer).ttl = seg.ttl;
                (*peer).ifindex = ifindex;
            }
        }
    }
}

#[inline(always)]
fn report_rst(skb: *mut __sk_buff, seg: &Segment) {
    // An IPv4 RST on loopback with DF set and a non-zero IP ID was sent by a connected TCP
    // socket of this host: DF comes from its path MTU discovery and the ID from its own
    // counter (ip_select_ident_segs(), include/net/ip.h), and tcp:tcp_send_reset traces
    // that send, which explains the reset without this segment. The RSTs nothing traces
    // still go out: netfilter's (nf_reject_iphdr_put(), net/ipv4/netfilter/
    // nf_reject_ipv4.c: DF, ID 0), the per-CPU control socket's answers for no socket (DF,
    // no peer address, so ID 0), and those forged through raw sockets (tcpkill, scapy,
    // hping3: DF clear, or an ID of their own choosing with DF clear, which the kernel
    // leaves). A loopback reset storm thus costs one sample less per reset.
    // SAFETY: ctx field read; the IPv4 header is within the bounds segment() proved.
    if unsafe { (*skb).ingress_ifindex } == LOOPBACK_IFINDEX
        && seg.family == AF_INET
        && unsafe { *((seg.ip + 4) as *const u16) } != 0
        && unsafe { *((seg.ip + 6) as *const u8) } & IP_DF_HIGH_BYTE != 0
    {
        return;
    }
    let cfg = config();
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(skb as *mut core::ffi::c_void) };
    let (saddr, daddr) = (seg.source(), seg.destination());
    let flow = BASELINES
        .get((cookie % BASELINE_SLOTS as u64) as u32)
        .filter(|b| b.cookie == cookie)
        .map(|b| (b.ttl, b.ifindex, baseline::FLOW));
    let expected = flow.or_else(|| {
        PEER_BASELINES
            .get(peer_slot(&saddr))
            .filter(|p| p.addr == saddr)
            .map(|p| (p.ttl, p.ifindex, baseline::PEER))
    });
    // SAFETY: ctx field read; packet bytes within the bounds segment() proved.
    let ifindex = unsafe { (*skb).ingress_ifindex };
    let ip_id = if seg.family == AF_INET {
        // SAFETY: within the IPv4 header segment() bounds-checked.
        unsafe { u16::from_be(*((seg.ip + 4) as *const u16)) }
    } else {
        0
    };
    emit_packet::<event::RstSegment>(cfg, EventKind::RstSegment, |e| unsafe {
        (*e).cookie = cookie;
        (*e).family = seg.family;
        (*e).tcp_flags = seg.flags;
        (*e).ttl = seg.ttl;
        (*e).expected_ttl = expected.map_or(0, |b| b.0);
        (*e).expected_ifindex = expected.map_or(0, |b| b.1);
        (*e).baseline = expected.map_or(baseline::NONE, |b| b.2);
        (*e).ifindex = ifindex;
        (*e).sport = u16::from_be(*(seg.tcp as *const u16));
        (*e).dport = u16::from_be(*((seg.tcp + 2) as *const u16));
        (*e).seq = u32::from_be(*((seg.tcp + 4) as *const u32));
        (*e).ip_id = ip_id;
        (*e).saddr = saddr;
        (*e).daddr = daddr;
    });
}

/// sk_error_report() on an inet socket: TCP errors that came without a RST (a RST's error
/// is reported too, right after tcp:tcp_receive_reset; user space drops that duplicate).
///
/// An ICMP error for a connecting socket is first queued on its error queue and reported
/// with sk_err still 0 (ip_icmp_error() -> sock_queue_err_skb()); when the socket is busy in
/// connect() the error then only goes to sk_err_soft (tcp_v4_err(), net/ipv4/tcp_ipv4.c),
/// which the process's getsockopt(SO_ERROR) takes before it closes the socket. So the
/// queued error's errno is read here. User space keeps one report per socket.
#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let sk: u64 = ctx.arg(0);
    // Most reports are a RST's ECONNRESET (or EPIPE): leave on the error alone. A connecting
    // socket's ICMP error comes with sk_err 0 (see reported_error), so 0 goes on.
    // SAFETY: the tracepoint's socket, alive for this program's run; a fault reads as 0.
    let hard = unsafe { read_field::<i32>(sk, cfg.sock_err) }.unwrap_or(0);
    if hard != 0 && hard != ECONNREFUSED && hard != ETIMEDOUT {
        return 0;
    }
    // SAFETY: as above.
    let (protocol, family) = unsafe {
        (
            read_field::<u16>(sk, cfg.sock_protocol).unwrap_or(0),
            read_field::<u16>(sk, cfg.sock_family).unwrap_or(0),
        )
    };
    if protocol != IPPROTO_TCP_U16 || (family != AF_INET && family != AF_INET6) {
        return 0;
    }
    let error = reported_error(cfg, sk);
    if error != ECONNREFUSED && error != ETIMEDOUT {
        return 0;
    }
    emit_refused(cfg, sk, error, family);
    0
}

const TCP_SYN_SENT: u8 = 2;

/// The error being reported: sk_err, else for a connecting socket the errno of the error
/// just queued on its error queue.
#[inline(always)]
fn reported_error(cfg: &Config, sk: u64) -> i32 {
    // SAFETY: reads of the live socket and of the skb at the tail of its error queue
    // (queued in this very call chain); faults read as 0.
    unsafe {
        let hard = read_field::<i32>(sk, cfg.sock_err).unwrap_or(0);
        if hard != 0 || read_field::<u8>(sk, cfg.sock_state) != Some(TCP_SYN_SENT) {
            return hard;
        }
        if read_field::<u32>(sk, cfg.sock_errqueue_len).unwrap_or(0) == 0
            || cfg.skb_cb == tracer_ebpf::NO_OFFSET
        {
            return 0;
        }
        let tail = read_field::<u64>(sk, cfg.sock_errqueue_tail).unwrap_or(0);
        if tail == 0 {
            return 0;
        }
        let cb = tail + cfg.skb_cb as u64;
        read_field::<u32>(cb, cfg.exterr_errno).map_or(0, |e| e as i32)
    }
}

#[inline(always)]
fn emit_refused(cfg: &Config, sk: u64, error: i32, family: u16) {
    let owner = lookup_owner(sk);
    let netns = sock_netns(cfg, sk);
    // SAFETY: reads of the live socket's address fields; a fault leaves zeros.
    let (sport, dport) = unsafe {
        (
            read_field::<u16>(sk, cfg.sock_num).unwrap_or(0),
            u16::from_be(read_field::<u16>(sk, cfg.sock_dport).unwrap_or(0)),
        )
    };
    let (saddr, daddr) = unsafe {
        if family == AF_INET {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s[..4]
                .copy_from_slice(&read_field::<[u8; 4]>(sk, cfg.sock_rcv_saddr).unwrap_or([0; 4]));
            d[..4].copy_from_slice(&read_field::<[u8; 4]>(sk, cfg.sock_daddr).unwrap_or([0; 4]));
            (s, d)
        } else {
            (
                read_field::<[u8; 16]>(sk, cfg.sock_v6_rcv_saddr).unwrap_or([0; 16]),
                read_field::<[u8; 16]>(sk, cfg.sock_v6_daddr).unwrap_or([0; 16]),
            )
        }
    };
    emit::<event::SocketRefused>(cfg, EventKind::SocketRefused, |e| unsafe {
        (*e).sock = sk;
        (*e).owner = owner;
        (*e).error = error;
        (*e).family = family;
        (*e).sport = sport;
        (*e).dport = dport;
        (*e)._pad = 0;
        (*e).netns = netns;
        (*e).saddr = saddr;
        (*e).daddr = daddr;
    });
}

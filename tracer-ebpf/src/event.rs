//! What the kernel programs send user space, one `#[repr(C)]` type per kind of event.
//!
//! Each starts with a [`Header`] whose `kind` is a plain integer on the wire: user space
//! turns it into an [`EventKind`] with `TryFrom` (never by transmuting: an unknown value
//! read into an enum is undefined behaviour) and skips samples it does not know or that
//! are shorter than their kind. The programs reserve exactly the bytes of their kind.
//!
//! Tracepoint records whose layout changes between kernels are carried verbatim
//! (`record`) and decoded in user space with the running kernel's tracefs format; fields
//! the programs must read themselves come from offsets in [`crate::Config`].
use crate::{SockOwner, TASK_COMM_LEN};

/// Common to every event: what the program knew about the task on the CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// An [`EventKind`] value.
    pub kind: u32,
    pub _reserved: u32,
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// bpf_get_current_pid_tgid() of the task on the CPU: tgid << 32 | pid; 0 (and an empty
    /// comm) in samples of the packet program, which may not ask.
    pub pid_tgid: u64,
    pub comm: [u8; TASK_COMM_LEN],
}

/// Kinds of events, as numbered on the wire.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// tcp:tcp_send_reset — [`ResetSent`].
    ResetSent = 1,
    /// tcp:tcp_receive_reset — [`ResetReceived`].
    ResetReceived = 2,
    /// signal:signal_generate, fatal signals only — [`SignalGenerated`].
    Signal = 3,
    /// sched:sched_process_exit — [`ProcessExit`].
    Exit = 4,
    /// sched:sched_process_fork — [`ProcessFork`].
    Fork = 5,
    /// oom:mark_victim — [`OomVictim`].
    OomVictim = 6,
    /// A receive, send or connect on a TCP socket failed with ECONNRESET (connect:
    /// ECONNREFUSED): the receiver saw the reset — [`SocketError`].
    SocketError = 7,
    /// listen() on an AF_UNIX socket: who owns the listener at that path — [`UnixListen`].
    UnixListen = 8,
    /// A receive or send on an AF_UNIX socket failed with ECONNRESET: for unix sockets this
    /// is the reset itself — [`UnixReset`].
    UnixReset = 9,
    /// A RST segment reaching a local socket, as it arrived (cgroup_skb ingress) —
    /// [`RstSegment`].
    RstSegment = 10,
    /// A TCP socket's error was reported without a reset: refused by ICMP, timed out —
    /// [`SocketRefused`].
    SocketRefused = 11,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::ResetSent,
        EventKind::ResetReceived,
        EventKind::Signal,
        EventKind::Exit,
        EventKind::Fork,
        EventKind::OomVictim,
        EventKind::SocketError,
        EventKind::UnixListen,
        EventKind::UnixReset,
        EventKind::RstSegment,
        EventKind::SocketRefused,
    ];
    /// One past the largest value: the length of per-kind tables.
    pub const COUNT: usize = 12;

    /// Bytes of the tracepoint record this kind carries verbatim (0: none).
    pub const fn record_capacity(self) -> usize {
        match self {
            EventKind::ResetSent => RESET_SENT_RECORD,
            EventKind::ResetReceived => RESET_RECEIVED_RECORD,
            EventKind::Signal => SIGNAL_RECORD,
            EventKind::Fork => FORK_RECORD,
            EventKind::OomVictim => OOM_RECORD,
            EventKind::Exit
            | EventKind::SocketError
            | EventKind::UnixListen
            | EventKind::UnixReset
            | EventKind::RstSegment
            | EventKind::SocketRefused => 0,
        }
    }

    /// Size of the event type on the wire.
    pub const fn wire_size(self) -> usize {
        match self {
            EventKind::ResetSent => size_of::<ResetSent>(),
            EventKind::ResetReceived => size_of::<ResetReceived>(),
            EventKind::Signal => size_of::<SignalGenerated>(),
            EventKind::Exit => size_of::<ProcessExit>(),
            EventKind::Fork => size_of::<ProcessFork>(),
            EventKind::OomVictim => size_of::<OomVictim>(),
            EventKind::SocketError => size_of::<SocketError>(),
            EventKind::UnixListen => size_of::<UnixListen>(),
            EventKind::UnixReset => size_of::<UnixReset>(),
            EventKind::RstSegment => size_of::<RstSegment>(),
            EventKind::SocketRefused => size_of::<SocketRefused>(),
        }
    }
}

impl TryFrom<u32> for EventKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        let mut i = 0;
        while i < EventKind::ALL.len() {
            if EventKind::ALL[i] as u32 == value {
                return Ok(EventKind::ALL[i]);
            }
            i += 1;
        }
        Err(value)
    }
}

// Record capacities: the largest fixed part seen (tcp_send_reset is 88 bytes from ~6.10,
// 74 before), plus room; mark_victim's comm is a __data_loc string after its fixed part.
pub const RESET_SENT_RECORD: usize = 96;
pub const RESET_RECEIVED_RECORD: usize = 80;
pub const SIGNAL_RECORD: usize = 64;
pub const FORK_RECORD: usize = 64;
pub const OOM_RECORD: usize = 128;
/// struct sockaddr_un: family (2) + sun_path (108), rounded up.
pub const UNIX_ADDR_LEN: usize = 112;

/// tcp:tcp_send_reset.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ResetSent {
    pub header: Header,
    /// current->flags (PF_EXITING...), 0 when the offset is unknown.
    pub task_flags: u32,
    /// Valid bytes in `record`.
    pub record_len: u32,
    /// Who connected or accepted the sending socket (`tgid == 0`: unknown).
    pub owner: SockOwner,
    /// 1 when the sending socket has no owning file any more (sock_orphan(): closed by
    /// its process, reset later from a timer or an incoming segment), 0 otherwise or with
    /// no socket.
    pub orphan: u8,
    /// 1 when `seq` is known.
    pub has_seq: u8,
    pub _pad: [u8; 2],
    /// The RST's sequence number as it leaves: the socket's snd_nxt for an active reset
    /// (tcp_send_active_reset()), the answered segment's ack_seq (0 without ACK) for one
    /// answering a segment (tcp_v4_send_reset()). NAT rewrites addresses, not this.
    pub seq: u32,
    /// Inode of the network namespace the reset was sent from (0: unknown).
    pub netns: u32,
    pub _pad2: u32,
    pub record: [u8; RESET_SENT_RECORD],
}

/// tcp:tcp_receive_reset.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ResetReceived {
    pub header: Header,
    pub record_len: u32,
    /// The receiving socket's rcv_nxt: the kernel accepts a RST only at exactly this
    /// sequence number in a synchronized state (tcp_validate_incoming(), RFC 5961).
    pub rcv_nxt: u32,
    /// Inode of the receiving socket's network namespace (0: unknown).
    pub netns: u32,
    /// 1 when `rcv_nxt` is known.
    pub has_seq: u8,
    pub _pad: [u8; 3],
    /// Who connected or accepted the receiving socket.
    pub owner: SockOwner,
    pub record: [u8; RESET_RECEIVED_RECORD],
}

/// signal:signal_generate.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SignalGenerated {
    pub header: Header,
    pub record_len: u32,
    pub _pad: u32,
    pub record: [u8; SIGNAL_RECORD],
}

/// sched:sched_process_exit, read in the exiting task.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessExit {
    pub header: Header,
    /// current->exit_code (a wait status).
    pub exit_code: i32,
    /// 1 when this was the last thread of its process (the record's group_dead, 6.x), 0
    /// when other threads live on, 2 when the kernel does not say.
    pub group_dead: u8,
    pub _pad: [u8; 3],
    /// Kernfs id of current's memory cgroup (= inode of its cgroupfs directory), 0 if unknown.
    pub memcg_id: u64,
}

/// sched:sched_process_fork.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessFork {
    pub header: Header,
    pub record_len: u32,
    pub _pad: u32,
    pub record: [u8; FORK_RECORD],
}

/// oom:mark_victim, in the task that ran the OOM killer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomVictim {
    pub header: Header,
    pub record_len: u32,
    pub _pad: u32,
    /// The killer's memory cgroup (see [`ProcessExit::memcg_id`]).
    pub memcg_id: u64,
    pub record: [u8; OOM_RECORD],
}

/// Where a socket error or unix reset was caught.
pub mod source {
    pub const RECVFROM: u16 = 1;
    pub const RECVMSG: u16 = 2;
    pub const READV: u16 = 3;
    pub const SENDTO: u16 = 4;
    pub const SENDMSG: u16 = 5;
    pub const WRITEV: u16 = 6;
    pub const CONNECT: u16 = 7;
    /// getsockopt(SOL_SOCKET, SO_ERROR): how event loops (nginx) learn that a non-blocking
    /// connect() failed.
    pub const GETSOCKOPT: u16 = 8;
    /// sock:sock_recv_length / sock:sock_send_length (6.x): any receive or send on a
    /// socket (recv*, read, readv / send*, write, writev), with no syscall tracepoint.
    pub const SOCK_RECV: u16 = 9;
    pub const SOCK_SEND: u16 = 10;
}

/// A TCP socket call of the task on the CPU (the receiver) failed with ECONNRESET, or a
/// connect with ECONNREFUSED.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketError {
    pub header: Header,
    /// The struct sock * behind the call's fd.
    pub sock: u64,
    /// The call's result (-104, -111).
    pub ret: i32,
    pub family: u16,
    /// Which call ([`source`]).
    pub source: u16,
}

/// An AF_UNIX socket call of the task on the CPU failed with ECONNRESET: no RST exists for
/// unix sockets, the closing end sets sk_err on its peer (unix_release_sock(),
/// net/unix/af_unix.c), so this is the reset itself.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnixReset {
    pub header: Header,
    pub sock: u64,
    /// unix_peer(sock): the other end (an accepted socket, or an embryo never accepted).
    pub peer_sock: u64,
    /// The peer's owner when known (`tgid == 0`: unknown).
    pub peer_owner: SockOwner,
    pub ret: i32,
    pub source: u16,
    pub _pad: u16,
    /// Valid bytes in `path`.
    pub path_len: u32,
    pub _pad2: u32,
    /// struct sockaddr_un of the listener the peer was accepted from.
    pub path: [u8; UNIX_ADDR_LEN],
}

/// listen() on an AF_UNIX socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnixListen {
    pub header: Header,
    pub sock: u64,
    pub path_len: u32,
    pub _pad: u32,
    /// struct sockaddr_un the socket is bound to.
    pub path: [u8; UNIX_ADDR_LEN],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_values_are_refused() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::try_from(k as u32), Ok(k));
            assert!((k as usize) < EventKind::COUNT);
        }
        assert_eq!(EventKind::try_from(0), Err(0));
        assert_eq!(EventKind::try_from(99), Err(99));
    }
}

/// A RST segment as it reached a local socket, read from its IP and TCP headers at the
/// cgroup_skb ingress hook (after NAT: the addresses are those the receiving socket knows).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RstSegment {
    pub header: Header,
    /// Cookie of the receiving socket.
    pub cookie: u64,
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// The TCP flags byte.
    pub tcp_flags: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 identification (0 for IPv6).
    pub ip_id: u16,
    /// Ports in host order: the segment's source is the remote end.
    pub sport: u16,
    pub dport: u16,
    /// TTL of the flow's earlier packets from the same peer (its SYN-ACK, or any segment
    /// of a connection older than rsttrace); 0 when none was seen.
    pub expected_ttl: u8,
    /// Where `expected_ttl` comes from: [`baseline::FLOW`], or [`baseline::PEER`] (the
    /// last SYN-ACK from the same address, for a flow that has none: a refused SYN).
    pub baseline: u8,
    /// skb_iif: the interface the segment arrived on, in the receiver's namespace.
    pub ifindex: u32,
    /// The interface the flow's earlier packets arrived on (0: no baseline).
    pub expected_ifindex: u32,
    pub seq: u32,
    /// Source and destination addresses (IPv4 in the first 4 bytes).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// A TCP socket's error reported without a reset (sk_error_report()): ECONNREFUSED from an
/// ICMP port unreachable, ETIMEDOUT from retransmissions or keepalive.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketRefused {
    pub header: Header,
    pub sock: u64,
    /// Who connected or accepted the socket.
    pub owner: SockOwner,
    /// sk_err: 111 ECONNREFUSED, 110 ETIMEDOUT...
    pub error: i32,
    pub family: u16,
    /// Local and remote ports in host order.
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    /// Inode of the socket's network namespace.
    pub netns: u32,
    /// Local and remote addresses (IPv4 in the first 4 bytes).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// The TTL seen on a flow's packets from its peer, by socket cookie: a direct-mapped
/// cache (slot = cookie % BASELINE_SLOTS), so that a per-packet refresh costs an array
/// read and no hash lookup. A collision forgets a flow's baseline (its verdict then says
/// so); it never gives one flow another's.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Baseline {
    pub cookie: u64,
    pub ttl: u8,
    pub _pad: [u8; 3],
    pub ifindex: u32,
}

pub const BASELINE_SLOTS: u32 = 16384;

/// The TTL of the last SYN-ACK from a peer address, for a RST whose own flow has no
/// baseline (one answering a SYN), in a direct-mapped cache by address hash.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PeerBaseline {
    pub addr: [u8; 16],
    pub ttl: u8,
    pub _pad: [u8; 3],
    pub ifindex: u32,
}

pub const PEER_BASELINE_SLOTS: u32 = 4096;

/// Where a RST's expected TTL comes from.
pub mod baseline {
    pub const NONE: u8 = 0;
    pub const FLOW: u8 = 1;
    pub const PEER: u8 = 2;
}

//! The domain: kernel events as decoded, and the verdicts the attribution engine gives.
use std::net::SocketAddr;

/// A task as the kernel saw it. `pid` is the process (tgid), `tid` the thread.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
}

/// A task's name as the kernel keeps it (TASK_COMM_LEN, 16 bytes with its NUL), held
/// inline: every sample names one or two tasks, and a storm decodes three samples per
/// reset, so a String each was most of the allocations made per reset.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm {
    bytes: [u8; Comm::CAPACITY],
    len: u8,
}

impl Comm {
    pub const CAPACITY: usize = 16;

    /// From the kernel's NUL-padded bytes; invalid UTF-8 becomes U+FFFD, as
    /// String::from_utf8_lossy writes it, cut at a character to fit.
    pub fn from_kernel(raw: &[u8]) -> Self {
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let name = &raw[..end];
        // Names are nearly always ASCII, which is UTF-8 cut anywhere: std's from_utf8 cost
        // more than the rest of the decode of a name.
        if name.len() <= Self::CAPACITY && name.is_ascii() {
            let mut bytes = [0u8; Self::CAPACITY];
            bytes[..name.len()].copy_from_slice(name);
            return Self {
                bytes,
                len: name.len() as u8,
            };
        }
        match std::str::from_utf8(name) {
            Ok(s) => Self::from(s),
            Err(_) => Self::from(String::from_utf8_lossy(name).as_ref()),
        }
    }

    pub fn as_str(&self) -> &str {
        let bytes = &self.bytes[..usize::from(self.len).min(Self::CAPACITY)];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: `bytes` and `len` are only ever set by From<&str>, to a prefix of a str
        // that ends at a character boundary, or by from_kernel to ASCII: valid UTF-8.
        // Validating again on every read cost 3% of a storm's user-space instructions
        // (names are read for every line).
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

impl From<&str> for Comm {
    /// The first 16 bytes' worth of whole characters of `s`.
    fn from(s: &str) -> Self {
        let mut len = s.len().min(Self::CAPACITY);
        while !s.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0u8; Self::CAPACITY];
        bytes[..len].copy_from_slice(&s.as_bytes()[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }
}

impl std::ops::Deref for Comm {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for Comm {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Which end of its connection a socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// It connected: nginx's upstream connections.
    Client,
    /// It was accepted from a listener: nginx's client connections, an upstream's socket.
    Server,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// tcp:tcp_send_reset — this host sent a RST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetSent {
    pub time_ns: u64,
    /// The task on the CPU: the closing or dying process for resets sent from close()
    /// or do_exit(); an unrelated one for resets sent from softirq or timers.
    pub current: Task,
    pub current_exiting: bool,
    /// The process that connected or accepted the socket, when rsttrace saw it do so.
    pub owner: Option<Task>,
    /// struct sock * of the sending socket, 0 when the segment matched no socket.
    pub sk: u64,
    /// enum sk_rst_reason (kernels 6.10+).
    pub reason: Option<u32>,
    /// The sending socket's TCP state when it sent (include/net/tcp_states.h).
    pub state: Option<u32>,
    /// The sending socket was orphaned: its process had closed it already.
    pub orphan: bool,
    /// The RST's sequence number on the wire (see [`ResetReceived::rcv_nxt`]).
    pub seq: Option<u32>,
    /// Inode of the network namespace it was sent from.
    pub netns: Option<u32>,
    /// The sender's end.
    pub src: SocketAddr,
    /// The end the RST goes to.
    pub dst: SocketAddr,
}

/// tcp:tcp_receive_reset — a local socket got a RST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetReceived {
    pub time_ns: u64,
    /// On loopback, the *sender's* context (same softirq pass), not the receiver.
    pub current: Task,
    /// The process that connected or accepted the receiving socket.
    pub owner: Option<Task>,
    /// Whether the receiving socket connected or was accepted, when rsttrace saw which.
    pub owner_role: Option<Role>,
    pub sk: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub sock_cookie: Option<u64>,
    /// The receiving socket's rcv_nxt: a RST is accepted only at exactly this sequence
    /// number, and the sender's RST carries it whatever NAT did to the addresses.
    pub rcv_nxt: Option<u32>,
    /// Inode of the receiving socket's network namespace.
    pub netns: Option<u32>,
}

/// A RST segment reaching a local socket, as its headers say (cgroup_skb ingress: after
/// NAT, so `local` and `remote` are the receiving socket's own view).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RstSegment {
    pub time_ns: u64,
    pub cookie: u64,
    /// The segment's destination: the receiving socket's end.
    pub local: SocketAddr,
    /// The segment's source.
    pub remote: SocketAddr,
    pub seq: u32,
    pub tcp_flags: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 identification (None for IPv6).
    pub ip_id: Option<u16>,
    /// The interface it arrived on, in the receiver's namespace.
    pub ifindex: u32,
    /// The TTL the peer's segments arrive with, and the interface they came in on.
    pub expected: Option<Baseline>,
}

/// What a RST's TTL is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Baseline {
    pub ttl: u8,
    pub ifindex: u32,
    /// From the flow's own earlier segments (true), or from the last SYN-ACK of the same
    /// peer address (false: the RST answered a SYN, its flow had none).
    pub same_flow: bool,
}

/// A TCP socket's error reported without a reset (ICMP port unreachable, timeout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketRefused {
    pub time_ns: u64,
    pub sock: u64,
    pub owner: Option<Task>,
    pub owner_role: Option<Role>,
    /// Positive errno: 111 ECONNREFUSED, 110 ETIMEDOUT.
    pub error: i32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub netns: Option<u32>,
}

/// signal:signal_generate for a signal whose default action terminates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalGenerated {
    pub time_ns: u64,
    pub sender: Task,
    pub sig: i32,
    /// si_code: 0 SI_USER (kill), 0x80 SI_KERNEL, -6 SI_TKILL, >0 a fault (SEGV_MAPERR...).
    pub code: i32,
    /// Target thread id (the process id for process-directed signals).
    pub target_pid: u32,
    pub target_comm: String,
    /// 0 delivered, 1 ignored, 2 already pending, 3 ... (TRACE_SIGNAL_*).
    pub result: Option<i32>,
}

/// sched:sched_process_exit, read in the exiting task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessExit {
    pub time_ns: u64,
    pub task: Task,
    /// current->exit_code: a wait(2) status (signal in the low 7 bits, else code << 8).
    pub exit_code: i32,
    pub memcg_id: u64,
    /// Whether the process died with this task (its last thread), when the kernel says.
    pub group_dead: Option<bool>,
}

impl ProcessExit {
    /// Whether this exit ends the process, not just one of its threads: the kernel's
    /// group_dead where it has it, else the thread group leader's exit.
    pub fn ends_process(&self) -> bool {
        self.group_dead.unwrap_or(self.task.tid == self.task.pid)
    }

    pub fn death(&self) -> Death {
        let sig = self.exit_code & 0x7f;
        if sig != 0 {
            Death::Signal(sig)
        } else {
            Death::Exited((self.exit_code >> 8) & 0xff)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Death {
    Signal(i32),
    Exited(i32),
}

/// sched:sched_process_fork.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessFork {
    pub time_ns: u64,
    pub parent_pid: u32,
    pub child_pid: u32,
    /// Process of the forking task (a thread's parent_pid is a thread id).
    pub parent_tgid: u32,
}

/// oom:mark_victim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomVictim {
    pub time_ns: u64,
    pub victim_pid: u32,
    pub victim_comm: String,
    /// The allocating task that ran the OOM killer.
    pub killer: Task,
    pub memcg_id: u64,
}

/// A socket syscall of `receiver` failed with ECONNRESET (connect: ECONNREFUSED): the
/// receiver saw a reset. For AF_UNIX sockets this is the reset itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketError {
    pub time_ns: u64,
    pub receiver: Task,
    pub sock: u64,
    pub family: u16,
    /// Negative errno.
    pub ret: i64,
    pub unix: Option<UnixPeer>,
}

/// The other end of a unix stream socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixPeer {
    pub sock: u64,
    /// The process that accepted it (None: accepted before rsttrace started, or never
    /// accepted — an embryo in a listener's backlog).
    pub owner: Option<Task>,
    /// The listening path it was connected through (`@name` for abstract sockets).
    pub path: Option<String>,
}

/// A process listens on a unix socket path (listen(), or found by the start-up scan).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixListen {
    pub time_ns: u64,
    pub owner: Task,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    ResetSent(ResetSent),
    ResetReceived(ResetReceived),
    Signal(SignalGenerated),
    Exit(ProcessExit),
    Fork(ProcessFork),
    OomVictim(OomVictim),
    SocketError(SocketError),
    UnixListen(UnixListen),
    RstSegment(RstSegment),
    Refused(SocketRefused),
}

impl KernelEvent {
    pub fn time_ns(&self) -> u64 {
        match self {
            KernelEvent::ResetSent(e) => e.time_ns,
            KernelEvent::ResetReceived(e) => e.time_ns,
            KernelEvent::Signal(e) => e.time_ns,
            KernelEvent::Exit(e) => e.time_ns,
            KernelEvent::Fork(e) => e.time_ns,
            KernelEvent::OomVictim(e) => e.time_ns,
            KernelEvent::SocketError(e) => e.time_ns,
            KernelEvent::UnixListen(e) => e.time_ns,
            KernelEvent::RstSegment(e) => e.time_ns,
            KernelEvent::Refused(e) => e.time_ns,
        }
    }
}

/// Why a reset happened, with the evidence that says so: a cause cannot be built without
/// its evidence, nor evidence attached to a cause it does not belong to. `report` gives
/// each its hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The peer was OOM-killed: the OOM kill and the SIGKILL it sent.
    OomKill {
        oom: OomEvidence,
        signal: SignalEvidence,
    },
    /// The peer died from a signal another process sent, or exited on its own right after
    /// another process asked it to terminate (`exit_code` then says how it exited).
    Signal {
        signal: SignalEvidence,
        exit_code: Option<i32>,
    },
    /// The peer died from a fault the kernel raised in it, or abort().
    Crash {
        signal: SignalEvidence,
    },
    /// The peer exited on its own (`exit_code` None: its exit record was not seen).
    Exit {
        exit_code: Option<i32>,
    },
    /// A live process aborted the connection: its owner closing it with unread data or
    /// SO_LINGER 0, or another task destroying the socket (`ss -K`, bpf_sock_destroy).
    Abort {
        aborted_by: Option<Task>,
    },
    /// The peer had already closed the connection when the receiver's segment reached it
    /// (TCP_ABORT_ON_DATA, TCP_TIMEWAIT_SOCKET): a stale connection was reused.
    StaleConnection,
    NoSocket,
    Kernel,
    Network,
    Unknown,
}

/// The name of a [`Cause`], without its evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CauseKind {
    OomKill,
    Signal,
    Crash,
    Exit,
    Abort,
    StaleConnection,
    NoSocket,
    Kernel,
    Network,
    Unknown,
}

impl CauseKind {
    pub const ALL: [CauseKind; 10] = [
        CauseKind::OomKill,
        CauseKind::Signal,
        CauseKind::Crash,
        CauseKind::Exit,
        CauseKind::Abort,
        CauseKind::StaleConnection,
        CauseKind::NoSocket,
        CauseKind::Kernel,
        CauseKind::Network,
        CauseKind::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CauseKind::OomKill => "oom_kill",
            CauseKind::Signal => "signal",
            CauseKind::Crash => "crash",
            CauseKind::Exit => "exit",
            CauseKind::Abort => "abort",
            CauseKind::StaleConnection => "stale_connection",
            CauseKind::NoSocket => "no_socket",
            CauseKind::Kernel => "kernel",
            CauseKind::Network => "network",
            CauseKind::Unknown => "unknown",
        }
    }
}

impl Cause {
    pub fn kind(&self) -> CauseKind {
        match self {
            Cause::OomKill { .. } => CauseKind::OomKill,
            Cause::Signal { .. } => CauseKind::Signal,
            Cause::Crash { .. } => CauseKind::Crash,
            Cause::Exit { .. } => CauseKind::Exit,
            Cause::Abort { .. } => CauseKind::Abort,
            Cause::StaleConnection => CauseKind::StaleConnection,
            Cause::NoSocket => CauseKind::NoSocket,
            Cause::Kernel => CauseKind::Kernel,
            Cause::Network => CauseKind::Network,
            Cause::Unknown => CauseKind::Unknown,
        }
    }

    pub fn as_str(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The signal that killed (or stopped) the peer.
    pub fn signal(&self) -> Option<&SignalEvidence> {
        match self {
            Cause::OomKill { signal, .. }
            | Cause::Signal { signal, .. }
            | Cause::Crash { signal } => Some(signal),
            _ => None,
        }
    }

    /// How the peer exited, when it exited on its own.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Cause::Signal { exit_code, .. } | Cause::Exit { exit_code } => *exit_code,
            _ => None,
        }
    }

    /// The task that destroyed another process's socket (`ss -K`).
    pub fn aborted_by(&self) -> Option<&Task> {
        match self {
            Cause::Abort { aborted_by } => aborted_by.as_ref(),
            _ => None,
        }
    }

    pub fn oom(&self) -> Option<&OomEvidence> {
        match self {
            Cause::OomKill { oom, .. } => Some(oom),
            _ => None,
        }
    }
}

/// The signal that killed the peer, with who sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalEvidence {
    pub number: i32,
    pub code: i32,
    /// None when rsttrace did not see the signal being sent (before it started).
    pub sender: Option<Task>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomEvidence {
    pub victim: Task,
    pub killer: Task,
    pub memcg_id: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Unix,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
        }
    }
}

/// One verdict per reset received by a local socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution {
    pub time_ns: u64,
    pub cause: Cause,
    pub transport: Transport,
    /// tcp: `ip:port`; unix: the receiving socket's own path (empty when unnamed).
    pub local: String,
    /// tcp: `ip:port`; unix: the path of the listener the upstream accepted on.
    pub remote: String,
    /// The receiving socket (struct sock *), to match the receiver's syscall error.
    pub receiver_sock: u64,
    /// A syscall of the receiver returned ECONNRESET for it (None: not known yet).
    pub seen_by_receiver: Option<bool>,
    /// When that syscall failed (ktime): the moment the receiver met the error, which is
    /// the order nginx writes its error.log lines in (a TCP reset may be read later).
    pub seen_ns: Option<u64>,
    /// unix: the peer was never accepted; its listener was closed (the peer is then the
    /// process that owned the listener).
    pub listener_closed: bool,
    pub receiver: Option<Task>,
    /// Whether the receiver connected (`Client`: a reset from its upstream) or accepted
    /// (`Server`: from its client) the connection.
    pub receiver_role: Option<Role>,
    pub peer: Option<Task>,
    /// sk_rst_reason value of the matching send, when the kernel has reasons.
    pub kernel_reason: Option<u32>,
    /// The peer was in do_exit() when its socket sent the reset.
    pub peer_exiting: bool,
    /// Network namespaces (inodes) of the receiving and the sending socket.
    pub receiver_netns: Option<u32>,
    pub peer_netns: Option<u32>,
    /// What the RST segment itself says, for resets no local socket sent.
    pub network: Option<NetworkEvidence>,
    /// The TCP reset's send was traced on this host (and explains it).
    pub send_traced: bool,
    /// What this run could not see, for a TCP reset no traced send explains: the hint
    /// names only the senders that could have escaped it here.
    pub unseen: Unseen,
}

/// Senders of a TCP reset that this run cannot see, for a reset no traced send explains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unseen {
    /// The kernel's own answer for a closed port or a connection already gone: traced only
    /// since the tcp_send_reset tracepoint took a NULL sk (6.9, just before enum
    /// sk_rst_reason); a netfilter REJECT then looks the same on the wire.
    pub no_socket_sends: bool,
    /// RST segments are not sampled (the packet hook is not attached), so a netfilter
    /// REJECT, never traced as a send (nf_send_reset(), net/ipv4/netfilter/nf_reject_ipv4.c),
    /// is not told apart.
    pub segments: bool,
}

/// Where a reset no local process sent came from, as its segment tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Forged by this host's own firewall (netfilter's REJECT answers the receiver's
    /// segment through the local delivery path: it arrived on loopback).
    LocalFirewall,
    /// Made on this host, not by netfilter: it arrived on loopback with an IPv4 ID, which
    /// netfilter's REJECT and the kernel's answers for no socket never set, and no traced
    /// socket sent it. A raw or packet socket injected it (tcpkill, an IPS, a test tool).
    LocalInjected,
    /// A device on the path forged it: its TTL differs from the flow's.
    PathDevice,
    /// The peer host's own kernel sent it: its TTL is the flow's.
    RemoteHost,
    /// No earlier segment of the flow was seen to compare with.
    Unknown,
}

impl Origin {
    /// Made on this host (it came in on loopback), by the firewall or a raw socket.
    pub fn made_here(self) -> bool {
        matches!(self, Origin::LocalFirewall | Origin::LocalInjected)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Origin::LocalFirewall => "local_firewall",
            Origin::LocalInjected => "local_injected",
            Origin::PathDevice => "path_device",
            Origin::RemoteHost => "remote_host",
            Origin::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkEvidence {
    pub origin: Origin,
    pub segment: RstSegment,
}

/// A connection that failed without a reset: refused by ICMP (a Service without endpoints,
/// a REJECT with icmp-port-unreachable) or timed out (SYNs or data dropped silently).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub time_ns: u64,
    pub error: i32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub receiver: Option<Task>,
    pub receiver_role: Option<Role>,
    pub netns: Option<u32>,
}

/// What the engine concludes, one per reset or refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Reset(Box<Attribution>),
    Refused(Refusal),
}

impl Attribution {
    /// A verdict before any evidence is weighed: cause unknown, nothing else known.
    pub fn pending(
        time_ns: u64,
        transport: Transport,
        local: String,
        remote: String,
        receiver_sock: u64,
        receiver: Option<Task>,
    ) -> Self {
        Self {
            time_ns,
            cause: Cause::Unknown,
            transport,
            local,
            remote,
            receiver_sock,
            seen_by_receiver: None,
            seen_ns: None,
            listener_closed: false,
            receiver,
            receiver_role: None,
            peer: None,
            kernel_reason: None,
            peer_exiting: false,
            receiver_netns: None,
            peer_netns: None,
            network: None,
            send_traced: false,
            unseen: Unseen::default(),
        }
    }
}

#[cfg(test)]
mod comm_tests {
    use super::Comm;

    #[test]
    fn comms_read_as_the_kernel_wrote_them() {
        assert_eq!(Comm::from_kernel(b"php-fpm8.2\0\0\0\0\0\0"), "php-fpm8.2");
        assert_eq!(Comm::from_kernel(b"0123456789abcdef"), "0123456789abcdef");
        assert_eq!(Comm::from_kernel(b"\0garbage"), "");
        // Invalid UTF-8 reads as String::from_utf8_lossy reads it, cut at a whole character.
        assert_eq!(Comm::from_kernel(b"ab\xffcd\0"), "ab\u{fffd}cd");
        let cut = Comm::from_kernel(b"\xff\xff\xff\xff\xff\xff");
        assert_eq!(cut, "\u{fffd}".repeat(5).as_str());
        assert_eq!(Comm::from("tâche-très-longue"), "tâche-très-lon");
        assert_eq!(format!("{:?}", Comm::from("a\"b")), "\"a\\\"b\"");
    }
}

/// sk_rst_reason names in the form users know from the kernel's tracepoint output:
/// `SK_RST_REASON_TCP_ABORT_ON_CLOSE` -> `TCP_ABORT_ON_CLOSE`.
pub fn short_reason_name(name: &str) -> &str {
    name.strip_prefix("SK_RST_REASON_").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_lose_their_prefix() {
        assert_eq!(short_reason_name("SK_RST_REASON_NO_SOCKET"), "NO_SOCKET");
        assert_eq!(short_reason_name("TCP_STATE"), "TCP_STATE");
    }
}

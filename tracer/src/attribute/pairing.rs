//! TCP resets: a receive paired with the send that made it on this host, and the verdict
//! from the send's evidence (its reason, its sending task, that task's death).
//!
//! A send and its receive on this host are close in time but come in either order:
//! tcp_v4_send_reset() (no socket, bad segments) traces before transmitting, while
//! tcp_send_active_reset() (close with unread data, exit, linger 0) traces *after*
//! tcp_transmit_skb(), and on loopback the receiver's softirq has already run by then
//! (net/ipv4/tcp_output.c). So each side waits briefly for the other.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use crate::{
    kernel::short_reason_name,
    model::{Attribution, Cause, ResetReceived, ResetSent, Task, Transport},
};

use super::{deaths::Deaths, drain_older, MAX_PENDING, SECOND};

/// A send not matched by a receive within this time was for a remote host.
const SEND_TTL: u64 = 5 * SECOND;
/// A receive from a local address waits this long for its send (see above); in practice
/// the send follows within microseconds.
pub const RECEIVE_WAIT: u64 = 20_000_000;

/// What a kernel reset reason says about who decided to reset (enum sk_rst_reason,
/// include/net/rstreason.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReasonClass {
    /// A segment matched no socket.
    NoSocket,
    /// A process closed its socket with unread data, or lingered-0 it, or died doing so.
    OwnerClose,
    /// TCP_STATE: tcp_disconnect() in a closer's close() (state CLOSE), tcp_abort() run by
    /// any task (`ss -K`, bpf_sock_destroy: the state is still ESTABLISHED...), or the
    /// FIN_WAIT2 timer of an orphan. The send's state tells which.
    State,
    /// The peer had closed its end already when the receiver's segment arrived
    /// (TCP_ABORT_ON_DATA, TCP_TIMEWAIT_SOCKET): sent while processing that segment, so
    /// `current` is whoever ran the softirq (on loopback the segment's sender).
    Stale,
    /// Sent while processing an incoming segment the stack rejected (PAWS, bad ACK or
    /// flags): `current` is not the sender either.
    BadSegment,
    /// The TCP stack itself (memory, keepalive timeout...).
    Kernel,
}

fn classify_reason(name: &str) -> ReasonClass {
    match short_reason_name(name) {
        "NO_SOCKET" => ReasonClass::NoSocket,
        "NOT_SPECIFIED"
        | "TCP_ABORT_ON_CLOSE"
        | "TCP_ABORT_ON_LINGER"
        | "TCP_DISCONNECT_WITH_DATA" => ReasonClass::OwnerClose,
        "TCP_STATE" => ReasonClass::State,
        "TCP_ABORT_ON_DATA" | "TCP_TIMEWAIT_SOCKET" => ReasonClass::Stale,
        "TCP_INVALID_ACK_SEQUENCE"
        | "TCP_RFC7323_PAWS"
        | "TCP_TOO_OLD_ACK"
        | "TCP_ACK_UNSENT_DATA"
        | "TCP_FLAGS"
        | "TCP_OLD_ACK"
        | "INVALID_SYN" => ReasonClass::BadSegment,
        _ => ReasonClass::Kernel,
    }
}

/// TCP states (include/net/tcp_states.h) a TCP_STATE reset is told apart by.
const TCP_FIN_WAIT2: u32 = 5;
const TCP_CLOSE: u32 = 7;

/// Who sent a reset, as the send's evidence tells.
struct Sender {
    peer: Option<Task>,
    exiting: bool,
    /// Another task destroyed the peer's socket (tcp_abort()).
    aborted_by: Option<Task>,
}

/// Who sent it: a dying task closes its own sockets in do_exit(); a closer's close() runs
/// in the closer; but resets sent while processing an incoming segment, or from a timer,
/// run in whatever task the softirq interrupted, so only the socket's owner can say.
fn sender(send: &ResetSent, class: Option<ReasonClass>) -> Sender {
    let owner_or_nobody = || Sender {
        peer: send.owner.clone(),
        exiting: false,
        aborted_by: None,
    };
    if matches!(class, Some(ReasonClass::Stale | ReasonClass::BadSegment)) {
        return owner_or_nobody();
    }
    if send.current_exiting {
        // Closing its files in do_exit(): the socket is the dying task's, whatever a
        // (possibly stale) owner record says.
        return Sender {
            peer: Some(send.current.clone()),
            exiting: true,
            aborted_by: None,
        };
    }
    match class {
        Some(ReasonClass::State) => match send.state {
            Some(TCP_CLOSE) => Sender {
                peer: send.owner.clone().or_else(|| Some(send.current.clone())),
                exiting: false,
                aborted_by: None,
            },
            Some(TCP_FIN_WAIT2) if send.orphan => owner_or_nobody(),
            // tcp_abort(): the socket was destroyed, by its owner or by another task.
            _ => Sender {
                aborted_by: (send.owner.as_ref().map(|o| o.pid) != Some(send.current.pid))
                    .then(|| send.current.clone()),
                ..owner_or_nobody()
            },
        },
        Some(ReasonClass::Kernel) => owner_or_nobody(),
        _ => Sender {
            peer: send.owner.clone().or_else(|| Some(send.current.clone())),
            exiting: false,
            aborted_by: None,
        },
    }
}

/// The cause when no death explains the send.
fn live_cause(send: &ResetSent, class: Option<ReasonClass>, who: Sender) -> Cause {
    match class {
        Some(ReasonClass::Stale) => Cause::StaleConnection,
        Some(ReasonClass::Kernel | ReasonClass::BadSegment) => Cause::Kernel,
        Some(ReasonClass::State) if send.state == Some(TCP_FIN_WAIT2) && send.orphan => {
            Cause::Kernel
        }
        Some(_) => Cause::Abort {
            aborted_by: who.aborted_by,
        },
        // No reasons on this kernel: a live process on the CPU with its own socket
        // aborted; anything else came from the stack.
        None if who.peer.is_some() => Cause::Abort { aborted_by: None },
        None => Cause::Kernel,
    }
}

pub struct Pairing {
    reasons: HashMap<u32, ReasonClass>,
    local_addrs: HashSet<IpAddr>,
    /// (sender end, receiver end) -> the send, waiting for its receive.
    sends: HashMap<(SocketAddr, SocketAddr), ResetSent>,
    /// (sender end, receiver end) -> a receive from a local sender, waiting for its send.
    receives: HashMap<(SocketAddr, SocketAddr), ResetReceived>,
}

impl Pairing {
    pub fn new(reasons: &HashMap<u32, String>, local_addrs: HashSet<IpAddr>) -> Self {
        Self {
            reasons: reasons
                .iter()
                .map(|(v, n)| (*v, classify_reason(n)))
                .collect(),
            local_addrs,
            sends: HashMap::new(),
            receives: HashMap::new(),
        }
    }

    /// Takes a send; returns the receive that waited for it, now ready.
    pub fn on_send(&mut self, s: ResetSent) -> Option<ResetReceived> {
        let key = (canon(s.src), canon(s.dst));
        if self.sends.len() >= MAX_PENDING {
            self.prune(s.time_ns);
        }
        self.sends.insert(key, s);
        self.receives.remove(&key)
    }

    /// Whether a receive can be attributed now: its send is known, or it came from
    /// another host.
    pub fn ready(&self, r: &ResetReceived) -> bool {
        let key = (canon(r.remote), canon(r.local));
        self.sends.contains_key(&key) || !self.is_local(r.remote.ip())
    }

    /// Keeps a receive until its send comes; returns an earlier receive of the same
    /// connection that it displaced, due now.
    pub fn wait(&mut self, r: ResetReceived) -> Option<ResetReceived> {
        self.receives.insert((canon(r.remote), canon(r.local)), r)
    }

    /// Whether the receives waiting for their sends are at the bound.
    pub fn full(&self) -> bool {
        self.receives.len() >= MAX_PENDING
    }

    pub fn has_waiting(&self) -> bool {
        !self.receives.is_empty()
    }

    pub fn waiting(&self) -> usize {
        self.receives.len()
    }

    /// Receives whose wait for a send ended at or before `cutoff`, oldest first.
    pub fn due(&mut self, now: u64) -> Vec<ResetReceived> {
        drain_older(&mut self.receives, now.saturating_sub(RECEIVE_WAIT), |r| {
            r.time_ns
        })
    }

    /// The verdict for a receive, from its send when this host sent one.
    pub fn verdict(&mut self, r: ResetReceived, deaths: &Deaths) -> Attribution {
        let mut out = Attribution::pending(
            r.time_ns,
            Transport::Tcp,
            r.local.to_string(),
            r.remote.to_string(),
            r.sk,
            r.owner.clone(),
        );
        out.receiver_role = r.owner_role;
        let Some(send) = self.sends.remove(&(canon(r.remote), canon(r.local))) else {
            out.cause = if self.is_local(r.remote.ip()) {
                // A local sender whose send we did not see (hook missing, or the send was
                // lost): say so rather than blame the network.
                Cause::Unknown
            } else {
                Cause::Network
            };
            return out;
        };
        out.kernel_reason = send.reason;
        let class = send
            .reason
            .map(|v| self.reasons.get(&v).copied().unwrap_or(ReasonClass::Kernel));
        if send.sk == 0 || class == Some(ReasonClass::NoSocket) {
            out.cause = Cause::NoSocket;
            return out;
        }
        let who = sender(&send, class);
        out.peer_exiting = who.exiting;
        out.peer = who.peer.clone();
        if let Some(peer) = &who.peer {
            if let Some(exit) = deaths.death_behind_send(peer.pid, send.time_ns, who.exiting) {
                out.cause = deaths.explain(exit);
                return out;
            }
            if who.exiting {
                // In do_exit() but its exit record was not seen (lost, or rsttrace started
                // in between): an exit, code unknown.
                out.cause = Cause::Exit { exit_code: None };
                return out;
            }
        }
        out.cause = live_cause(&send, class, who);
        out
    }

    pub fn prune(&mut self, now: u64) {
        let keep = now.saturating_sub(SEND_TTL);
        self.sends.retain(|_, s| s.time_ns >= keep);
        if self.sends.len() >= MAX_PENDING {
            // All recent: a storm of resets to remote hosts. Their receives never come here.
            self.sends.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.sends.len() + self.receives.len()
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        let ip = canon_ip(ip);
        ip.is_loopback() || self.local_addrs.contains(&ip)
    }
}

fn canon_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// v4-mapped IPv6 endpoints (dual-stack sockets) match their IPv4 form.
fn canon(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canon_ip(a.ip()), a.port())
}

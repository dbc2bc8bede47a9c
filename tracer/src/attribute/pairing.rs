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
    model::{Attribution, Cause, ResetReceived, ResetSent, Transport},
};

use super::{deaths::Deaths, drain_older, MAX_PENDING, SECOND};

/// A send not matched by a receive within this time was for a remote host.
const SEND_TTL: u64 = 5 * SECOND;
/// A receive from a local address waits this long for its send (see above); in practice
/// the send follows within microseconds.
pub const RECEIVE_WAIT: u64 = 20_000_000;

/// What a kernel reset reason says about who decided to reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReasonClass {
    /// A segment matched no socket.
    NoSocket,
    /// A process closed, disconnected or lingered-0 its socket (or died doing so).
    ProcessClose,
    /// The TCP stack itself (memory, timers, PAWS, bad ACKs, TIME_WAIT...).
    Kernel,
}

fn classify_reason(name: &str) -> ReasonClass {
    match short_reason_name(name) {
        "NO_SOCKET" => ReasonClass::NoSocket,
        "NOT_SPECIFIED"
        | "TCP_ABORT_ON_CLOSE"
        | "TCP_ABORT_ON_LINGER"
        | "TCP_ABORT_ON_DATA"
        | "TCP_DISCONNECT_WITH_DATA" => ReasonClass::ProcessClose,
        _ => ReasonClass::Kernel,
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

        // Who sent it: a dying task closes its own sockets in do_exit(); otherwise the
        // socket's owner, else the task in whose close() the reset was sent.
        let peer = if send.current_exiting {
            // Closing its files in do_exit(): the socket is the dying task's, whatever a
            // (possibly stale) owner record says.
            Some(send.current.clone())
        } else if send.owner.is_some() {
            send.owner.clone()
        } else if class != Some(ReasonClass::Kernel) {
            Some(send.current.clone())
        } else {
            None
        };
        out.peer_exiting = send.current_exiting;
        out.peer = peer.clone();

        if let Some(peer) = &peer {
            if let Some(exit) = deaths.death_behind_send(peer.pid, send.time_ns, out.peer_exiting) {
                out.cause = deaths.explain(exit);
                return out;
            }
            if out.peer_exiting {
                // In do_exit() but its exit record was not seen (lost, or rsttrace started
                // in between): an exit, code unknown.
                out.cause = Cause::Exit { exit_code: None };
                return out;
            }
        }
        out.cause = match class {
            Some(ReasonClass::Kernel) => Cause::Kernel,
            Some(_) => Cause::Abort,
            // No reasons on this kernel: a live process on the CPU with its own socket
            // aborted; anything else came from the stack.
            None if peer.is_some() => Cause::Abort,
            None => Cause::Kernel,
        };
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

//! The attribution engine: typed kernel events in, one verdict per received reset (or
//! refused connection) out.
//!
//! Pure: no I/O and one clock, the events' ktime (CLOCK_MONOTONIC; `expire` takes a time
//! on that same clock), so it is tested on recorded event sequences. One room per kind of
//! evidence:
//! - [`pairing`]: a TCP receive and the send that made it on this host, across namespaces
//!   and NAT;
//! - [`sends`]: what a send says (its reason, its sending task);
//! - [`deaths`]: signals, exits and OOM kills that explain a peer's end;
//! - [`network`]: what the RST segment says when no local socket sent it;
//! - [`unix`]: unix-socket resets and who owned each listener;
//! - [`seen`]: whether the receiver saw its reset;
//! - [`refusals`]: connections refused or timed out without a reset.
//!
//! It relies on orderings the kernel guarantees:
//! - signal_generate precedes the death it causes; oom:mark_victim follows the SIGKILL
//!   (SI_KERNEL) the OOM killer sends and precedes the victim's exit;
//! - do_exit() fires sched_process_exit *before* exit_files() closes the dying task's
//!   sockets (kernel/exit.c), so a dying peer's exit record precedes its resets;
//! - a RST's segment passes the cgroup_skb ingress hook before tcp_reset() traces it;
//! - a send and its receive come in either order (see [`pairing`]).
mod deaths;
mod expiring;
mod network;
mod pairing;
mod refusals;
mod seen;
mod sends;
mod unix;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

pub use deaths::{SI_KERNEL, SI_TKILL};
pub use network::{hops_away, hops_closer, initial_ttl};
pub use pairing::RECEIVE_WAIT;
pub use seen::SEEN_WAIT;

use crate::model::{
    Attribution, Cause, KernelEvent, ResetReceived, ResetSent, Transport, Unseen, Verdict,
};
use deaths::Deaths;
use network::Segments;
use pairing::{canon_ip, Pairing};
use refusals::Refusals;
use seen::SeenGate;
use sends::Reasons;
use unix::UnixResets;

const SECOND: u64 = 1_000_000_000;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// Bound on each kind of pending state (reset storms): beyond it the oldest go.
/// The engine's maps are keyed by kernel pointers, pids, sequence numbers and addresses, and
/// are hit several times per event: a fast hasher (seeded per process) instead of SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

const MAX_PENDING: usize = 65_536;
const PRUNE_EVERY: u64 = 4096;

pub struct Attributor {
    reasons: Reasons,
    /// This host's own addresses: without segment evidence, a reset from one of them that
    /// no traced send explains is "unknown", not the network.
    local_addrs: HashSet<IpAddr>,
    pairing: Pairing,
    deaths: Deaths,
    segments: Segments,
    unix: UnixResets,
    seen: SeenGate,
    refusals: Refusals,
    /// Whether RST segments are sampled (the packet hook is attached).
    segments_traced: bool,
    events_seen: u64,
}

impl Attributor {
    /// `reasons`: enum sk_rst_reason value -> name, from BTF (empty before 6.10).
    /// `local_addrs`: this host's addresses (loopback is always local).
    pub fn new(reasons: &HashMap<u32, String>, local_addrs: HashSet<IpAddr>) -> Self {
        Self {
            reasons: Reasons::new(reasons),
            local_addrs,
            pairing: Pairing::default(),
            deaths: Deaths::default(),
            segments: Segments::default(),
            unix: UnixResets::default(),
            seen: SeenGate::default(),
            refusals: Refusals::default(),
            segments_traced: true,
            events_seen: 0,
        }
    }

    /// Whether RST segments are sampled; without them a local firewall's reset is not told
    /// apart from a lost sample, and the verdict says so.
    pub fn set_segments_traced(&mut self, traced: bool) {
        self.segments_traced = traced;
    }

    /// Whether the receiver's socket calls are traced; without them `seen_by_receiver`
    /// is unknown and verdicts go out at once.
    pub fn set_receiver_syscalls_traced(&mut self, traced: bool) {
        self.seen.set_traced(traced);
    }

    /// Takes one event; pushes the verdicts it completes (and those of receives whose
    /// wait for a send has run out) onto `out`.
    pub fn observe(&mut self, event: KernelEvent, out: &mut Vec<Verdict>) {
        self.events_seen += 1;
        let now = event.time_ns();
        if self.events_seen.is_multiple_of(PRUNE_EVERY) {
            self.pairing.prune(now);
            self.deaths.prune(now);
            self.segments.prune(now);
        }
        if self.pairing.has_waiting() {
            self.expire(now, out);
        }
        match event {
            KernelEvent::ResetSent(s) => {
                if let Some((r, s)) = self.pairing.on_send(s) {
                    self.tcp_verdict(r, Some(s), out);
                }
            }
            KernelEvent::ResetReceived(r) => {
                self.refusals
                    .on_reset(r.sk, r.local.port(), r.remote.port(), r.time_ns);
                if self.pairing.full() {
                    self.expire(u64::MAX, out);
                }
                if let Some((r, s)) = self.pairing.on_receive(r) {
                    self.tcp_verdict(r, Some(s), out);
                }
            }
            KernelEvent::RstSegment(seg) => self.segments.on_segment(seg),
            KernelEvent::Refused(e) => {
                if let Some(refusal) = self.refusals.on_refused(e) {
                    out.push(Verdict::Refused(refusal));
                }
            }
            KernelEvent::Signal(s) => self.deaths.on_signal(s),
            KernelEvent::Exit(e) => self.deaths.on_exit(e),
            KernelEvent::OomVictim(o) => self.deaths.on_oom_victim(o),
            KernelEvent::Fork(_) => {}
            KernelEvent::SocketError(e) => match (e.family, &e.unix) {
                (AF_INET | AF_INET6, _) => self.seen.on_error(e, out),
                (_, Some(peer)) => out.push(Verdict::Reset(Box::new(self.unix.attribute(
                    &e,
                    peer,
                    &self.deaths,
                )))),
                _ => {}
            },
            KernelEvent::UnixListen(l) => self.unix.on_listen(l),
        }
    }

    /// The verdict for a TCP reset received here, from its send when this host sent it,
    /// else from its segment.
    fn tcp_verdict(&mut self, r: ResetReceived, send: Option<ResetSent>, out: &mut Vec<Verdict>) {
        let mut a = Attribution::pending(
            r.time_ns,
            Transport::Tcp,
            endpoint(r.local),
            endpoint(r.remote),
            r.sk,
            r.owner.clone(),
        );
        a.receiver_role = r.owner_role;
        a.receiver_netns = r.netns;
        let segment = self.segments.take(&r);
        match send {
            Some(send) => {
                a.send_traced = true;
                self.reasons.explain(&mut a, &send, &self.deaths);
            }
            None => {
                // Before 6.10 the kernel's own answers for no socket go untraced too.
                let no_socket_sends_unseen = !self.reasons.traces_no_socket_sends();
                let evidence = segment.map(network::evidence);
                // Came in on loopback: made on this host, whatever the (DNAT'd) address says.
                let local = evidence.as_ref().is_some_and(|e| e.origin.made_here())
                    || self.is_local(r.remote.ip());
                let evidence = evidence
                    // A RST made on this host that no socket sent is netfilter's, unless
                    // the kernel's own answers for no socket go untraced here: those look
                    // the same (loopback, IP ID 0, TTL 64), so the segment tells nothing.
                    .filter(|e| {
                        e.origin != crate::model::Origin::LocalFirewall || !no_socket_sends_unseen
                    });
                // A reset from a loopback or own address that no traced send explains
                // was lost on its way to us, unless its segment says who on this host made
                // it (the firewall, or a raw socket).
                let refused =
                    self.refusals
                        .take_refused_reset(r.sk, r.local.port(), r.remote.port())
                        && no_socket_sends_unseen;
                a.cause = match &evidence {
                    Some(e) if e.origin.made_here() => Cause::Network,
                    // The RST answered this socket's SYN, on this host, and no traced send
                    // made it, on a kernel that does not trace its answers for no socket:
                    // nothing listened, as the receiver's ECONNREFUSED says where its
                    // connect is traced (a local REJECT looks the same; the hint says so).
                    // Where those answers are traced, an untraced one is not the kernel's.
                    _ if local && refused => Cause::NoSocket,
                    _ if local => Cause::Unknown,
                    _ => Cause::Network,
                };
                a.unseen = Unseen {
                    no_socket_sends: no_socket_sends_unseen,
                    segments: !self.segments_traced,
                };
                a.network = evidence;
            }
        }
        self.seen.settle(a, out);
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        let ip = canon_ip(ip);
        ip.is_loopback() || self.local_addrs.contains(&ip)
    }

    /// Gives up waiting for the sends of receives older than RECEIVE_WAIT at `now_ns`, and
    /// for the receivers of verdicts older than SEEN_WAIT; `u64::MAX` flushes all (at exit).
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Verdict>) {
        for r in self.pairing.due(now_ns) {
            self.tcp_verdict(r, None, out);
        }
        self.seen.expire(now_ns, out);
    }

    /// Verdicts still waiting for their send or for their receiver's call.
    pub fn waiting(&self) -> usize {
        self.pairing.waiting() + self.seen.waiting()
    }

    /// Remembered state, for the bounded-memory checks.
    pub fn state_len(&self) -> usize {
        self.pairing.len() + self.deaths.len() + self.segments.len()
    }
}

/// `ip:port` (`[ip]:port` for IPv6), as SocketAddr's Display writes it; IPv4 without the
/// formatting machinery, which cost more than the rest of a verdict in a reset storm.
fn endpoint(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        return addr.to_string();
    };
    // "255.255.255.255:65535" at most: written into the stack, then one allocation.
    let mut text = [0u8; 21];
    let mut len = 0;
    let mut digits = itoa::Buffer::new();
    let mut put = |part: &[u8]| {
        text[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    };
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            put(b".");
        }
        put(digits.format(octet).as_bytes());
    }
    put(b":");
    put(digits.format(v4.port()).as_bytes());
    let text = &text[..len];
    debug_assert!(text.is_ascii());
    // SAFETY: only ASCII digits, dots and a colon were written. Validating again cost a
    // third of this function (std's from_utf8 on a short string).
    unsafe { std::str::from_utf8_unchecked(text) }.to_owned()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod endpoint_tests {
    use super::endpoint;

    #[test]
    fn endpoints_read_as_socket_addr_displays_them() {
        for text in [
            "127.0.0.1:80",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.20.3.4:9000",
            "[::1]:8080",
            "[fd00::2]:443",
        ] {
            let addr: std::net::SocketAddr = text.parse().expect("an address");
            assert_eq!(endpoint(addr), addr.to_string());
            assert_eq!(endpoint(addr), text);
        }
    }
}

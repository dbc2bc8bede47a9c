//! A TCP reset received here paired with the send that made it on this host, whatever
//! namespace each end lives in and whatever NAT did to the addresses between them.
//!
//! The key is the RST's sequence number: the sender's RST carries its snd_nxt (or the
//! answered segment's ack_seq), and the receiver accepts a RST only at exactly its rcv_nxt
//! (tcp_validate_incoming(), net/ipv4/tcp_input.c); NAT rewrites addresses and ports, not
//! sequence numbers. Ports, addresses and time break ties; equal address pairs in two
//! namespaces (containers reuse 10.x, 172.17.x) never pair when their sequence numbers
//! differ. Kernels whose offsets rsttrace could not resolve pair on addresses alone.
//!
//! A send and its receive come in either order: tcp_v4_send_reset() (no socket, bad
//! segments) traces before transmitting, while tcp_send_active_reset() (close with unread
//! data, exit, linger 0) traces *after* tcp_transmit_skb(), and on loopback and veth the
//! receiver's softirq has already run by then (net/ipv4/tcp_output.c). So each side waits
//! briefly for the other.
use std::net::{IpAddr, SocketAddr};

use crate::model::{ResetReceived, ResetSent};

use super::{expiring::Expiring, FastMap as HashMap};

use super::{MAX_PENDING, SECOND};

/// A send not matched by a receive within this time was for a remote host.
const SEND_TTL: u64 = 5 * SECOND;
/// A receive waits this long for its send (see above); in practice the send follows
/// within microseconds.
pub const RECEIVE_WAIT: u64 = 20_000_000;

/// (sender's end, receiver's end), v4-mapped addresses in their IPv4 form.
type Tuple = (SocketAddr, SocketAddr);

/// What pairing needs of a send or a receive.
trait Side {
    fn seq(&self) -> Option<u32>;
    fn tuple(&self) -> Tuple;
    fn time(&self) -> u64;
}

impl Side for ResetSent {
    fn seq(&self) -> Option<u32> {
        self.seq
    }
    fn tuple(&self) -> Tuple {
        (canon(self.src), canon(self.dst))
    }
    fn time(&self) -> u64 {
        self.time_ns
    }
}

impl Side for ResetReceived {
    fn seq(&self) -> Option<u32> {
        self.rcv_nxt
    }
    fn tuple(&self) -> Tuple {
        (canon(self.remote), canon(self.local))
    }
    fn time(&self) -> u64 {
        self.time_ns
    }
}

/// How well a send fits a receive (higher is better), None when it cannot be its send.
fn fit(send: &ResetSent, recv: &ResetReceived) -> Option<u8> {
    if send.time_ns.abs_diff(recv.time_ns) > SEND_TTL {
        return None;
    }
    let (s, r) = (send.tuple(), recv.tuple());
    if s == r {
        // Same addresses: the same connection, unless the sequence numbers say two
        // namespaces happen to use the same addresses. Within one namespace the addresses
        // are unique: a RST cut short by a closed window (tcp_acceptable_seq()) still
        // belongs to its connection.
        return match (send.seq, recv.rcv_nxt) {
            // Cut short by a window: sent and received in the same moment. A send long
            // before is of an earlier connection on the same ports, whose receive was lost.
            (Some(a), Some(b)) if a != b => (send.netns.is_some()
                && send.netns == recv.netns
                && send.time_ns.abs_diff(recv.time_ns) <= RECEIVE_WAIT)
                .then_some(1),
            _ => Some(3),
        };
    }
    let (Some(a), Some(b)) = (send.seq, recv.rcv_nxt) else {
        return None;
    };
    if a != b {
        return None;
    }
    // NAT between the ends: DNAT rewrote the sender's end as the receiver sees it, SNAT
    // or MASQUERADE the receiver's end as the sender sees it; one port usually survives.
    let ports = s.0.port() == r.0.port() || s.1.port() == r.1.port();
    match (ports, a) {
        // 0 (a RST answering a SYN) is every refused connect's: only the receiver's own
        // port, which DNAT keeps, and the same moment say it is this one. A shared server
        // port (every client of :80) says nothing.
        (_, 0) => (s.1.port() == r.1.port() && send.time_ns.abs_diff(recv.time_ns) <= RECEIVE_WAIT)
            .then_some(2),
        (true, _) => Some(2),
        (false, _) => Some(1),
    }
}

/// The sequence index's key: the sequence number, except 0, which every refused connect
/// shares and which is filed under the receiver's port instead (see `fit`): a port scan
/// answered by thousands of seq-0 RSTs must not make one list that every seq-0 receive and
/// every removal walks.
fn seq_key(seq: Option<u32>, receiver_port: impl FnOnce() -> u16) -> Option<u64> {
    match seq? {
        0 => Some(1 << 32 | u64::from(receiver_port())),
        seq => Some(u64::from(seq)),
    }
}

/// Ids of the waiting items under one index key: almost always one, so inline (a storm
/// indexes two items per reset, and a Vec each was two allocations).
type Ids = smallvec::SmallVec<[u64; 2]>;

/// Items waiting for their other half, indexed by sequence number and by addresses.
struct Waiting<T> {
    items: Expiring<u64, T>,
    by_seq: HashMap<u64, Ids>,
    by_tuple: HashMap<Tuple, Ids>,
    next: u64,
}

impl<T: Side> Waiting<T> {
    fn new() -> Self {
        Self {
            items: Expiring::default(),
            by_seq: HashMap::default(),
            by_tuple: HashMap::default(),
            next: 0,
        }
    }

    fn insert(&mut self, item: T) {
        let id = self.next;
        self.next += 1;
        if let Some(key) = seq_key(item.seq(), || item.tuple().1.port()) {
            self.by_seq.entry(key).or_default().push(id);
        }
        self.by_tuple.entry(item.tuple()).or_default().push(id);
        let time = item.time();
        self.items.insert(id, item, time);
    }

    /// The ids of items sharing `seq` or `tuple` with something.
    fn candidates(&self, seq: Option<u32>, tuple: Tuple) -> impl Iterator<Item = u64> + '_ {
        let by_seq = seq_key(seq, || tuple.1.port())
            .and_then(|k| self.by_seq.get(&k))
            .into_iter()
            .flatten();
        let by_tuple = self.by_tuple.get(&tuple).into_iter().flatten();
        by_seq.chain(by_tuple).copied()
    }

    fn remove(&mut self, id: u64) -> Option<T> {
        let item = self.items.remove(&id)?;
        if let Some(key) = seq_key(item.seq(), || item.tuple().1.port()) {
            unindex(&mut self.by_seq, key, id);
        }
        unindex(&mut self.by_tuple, item.tuple(), id);
        Some(item)
    }

    /// Removes and returns, oldest first, the items from at or before `cutoff`.
    fn drain_older(&mut self, cutoff: u64) -> Vec<T> {
        let drained = self.items.drain_older(cutoff, Side::time);
        // The ids went with the items: each index key they were under keeps its ids still
        // waiting, once per key (many drained items can share one).
        let mut seqs: Vec<u64> = drained
            .iter()
            .filter_map(|i| seq_key(i.seq(), || i.tuple().1.port()))
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        for key in seqs {
            retain_live(&mut self.by_seq, key, &self.items);
        }
        let mut tuples: Vec<Tuple> = drained.iter().map(Side::tuple).collect();
        tuples.sort_unstable();
        tuples.dedup();
        for key in tuples {
            retain_live(&mut self.by_tuple, key, &self.items);
        }
        drained
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// Keeps under `key` only the ids still waiting.
fn retain_live<K: std::hash::Hash + Eq, T>(
    index: &mut HashMap<K, Ids>,
    key: K,
    live: &Expiring<u64, T>,
) {
    if let Some(ids) = index.get_mut(&key) {
        ids.retain(|i| live.get(i).is_some());
        if ids.is_empty() {
            index.remove(&key);
        }
    }
}

fn unindex<K: std::hash::Hash + Eq>(index: &mut HashMap<K, Ids>, key: K, id: u64) {
    if let Some(ids) = index.get_mut(&key) {
        ids.retain(|i| *i != id);
        if ids.is_empty() {
            index.remove(&key);
        }
    }
}

pub struct Pairing {
    sends: Waiting<ResetSent>,
    receives: Waiting<ResetReceived>,
}

impl Default for Pairing {
    fn default() -> Self {
        Self {
            sends: Waiting::new(),
            receives: Waiting::new(),
        }
    }
}

impl Pairing {
    /// Takes a send; returns the receive that waited for it, with it, if one did.
    pub fn on_send(&mut self, s: ResetSent) -> Option<(ResetReceived, ResetSent)> {
        let best = self
            .receives
            .candidates(s.seq, s.tuple())
            .filter_map(|id| {
                let r = self.receives.items.get(&id)?;
                Some((
                    fit(&s, r)?,
                    std::cmp::Reverse(r.time_ns.abs_diff(s.time_ns)),
                    id,
                ))
            })
            .max();
        if let Some((_, _, id)) = best {
            return self.receives.remove(id).map(|r| (r, s));
        }
        if self.sends.len() >= MAX_PENDING {
            self.prune(s.time_ns);
        }
        self.sends.insert(s);
        None
    }

    /// Takes a receive; returns it with its send when that came already, else keeps it.
    pub fn on_receive(&mut self, r: ResetReceived) -> Option<(ResetReceived, ResetSent)> {
        let best = self
            .sends
            .candidates(r.rcv_nxt, r.tuple())
            .filter_map(|id| {
                let s = self.sends.items.get(&id)?;
                Some((
                    fit(s, &r)?,
                    std::cmp::Reverse(s.time_ns.abs_diff(r.time_ns)),
                    id,
                ))
            })
            .max();
        if let Some((_, _, id)) = best {
            return self.sends.remove(id).map(|s| (r, s));
        }
        self.receives.insert(r);
        None
    }

    /// Whether the receives waiting for their sends are at the bound.
    pub fn full(&self) -> bool {
        self.receives.len() >= MAX_PENDING
    }

    pub fn has_waiting(&self) -> bool {
        self.receives.len() > 0
    }

    pub fn waiting(&self) -> usize {
        self.receives.len()
    }

    /// Receives whose wait for a send is over at `now`, oldest first.
    pub fn due(&mut self, now: u64) -> Vec<ResetReceived> {
        self.receives.drain_older(now.saturating_sub(RECEIVE_WAIT))
    }

    pub fn prune(&mut self, now: u64) {
        let _ = self.sends.drain_older(now.saturating_sub(SEND_TTL));
        if self.sends.len() >= MAX_PENDING {
            // All recent: a storm of resets to remote hosts. Their receives never come here.
            self.sends = Waiting::new();
        }
    }

    pub fn len(&self) -> usize {
        self.sends.len() + self.receives.len()
    }
}

pub fn canon_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// v4-mapped IPv6 endpoints (dual-stack sockets) match their IPv4 form.
pub fn canon(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canon_ip(a.ip()), a.port())
}

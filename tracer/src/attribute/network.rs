//! What a RST segment says about a reset no local socket sent: the TTL it arrived with
//! against the flow's (the SYN-ACK's, or an earlier segment's), its IP ID and flags, and
//! the interface it came in on.
//!
//! - It came in on loopback but no local socket sent it: this host's own firewall forged
//!   it (netfilter's REJECT answers through the local delivery path, nf_send_reset(),
//!   net/ipv4/netfilter/nf_reject_ipv4.c, and is not traced as a TCP send), or, when it
//!   carries an IPv4 ID, which netfilter never sets, a raw socket injected it.
//! - Its TTL is the flow's: the peer host's kernel sent it.
//! - Its TTL differs: a device on the path forged it (a firewall's REJECT, a load balancer
//!   or NAT expiring the flow, a middlebox).
//!
//! Limits: a device that rewrites TTLs, ECMP or asymmetric routes defeat the comparison; a
//! peer may send from another initial TTL than its SYN-ACK did. The verdict says what it
//! compared, not more.
use std::net::SocketAddr;

use super::FastMap as HashMap;

use crate::model::{NetworkEvidence, Origin, ResetReceived, RstSegment};

use super::{pairing::canon, MAX_PENDING};

const LOOPBACK_IFINDEX: u32 = 1;
/// A segment is joined to the receive traced right after it on the same CPU (cgroup_skb
/// ingress runs before tcp_reset()); allow for the two being reordered by a few ms.
const JOIN_WINDOW: u64 = 50_000_000;

#[derive(Default)]
pub struct Segments {
    /// (local, remote) as the receiver knows them -> recent RST segments.
    recent: HashMap<(SocketAddr, SocketAddr), Vec<RstSegment>>,
    len: usize,
}

impl Segments {
    pub fn on_segment(&mut self, seg: RstSegment) {
        if self.len >= MAX_PENDING {
            self.prune(seg.time_ns);
        }
        self.len += 1;
        self.recent
            .entry((canon(seg.local), canon(seg.remote)))
            .or_default()
            .push(seg);
    }

    /// The segment that carried `r`'s RST, if it was seen.
    pub fn take(&mut self, r: &ResetReceived) -> Option<RstSegment> {
        let key = (canon(r.local), canon(r.remote));
        let list = self.recent.get_mut(&key)?;
        let i = list.iter().position(|s| {
            s.time_ns.abs_diff(r.time_ns) <= JOIN_WINDOW && r.rcv_nxt.is_none_or(|n| n == s.seq)
        })?;
        let seg = list.remove(i);
        if list.is_empty() {
            self.recent.remove(&key);
        }
        self.len -= 1;
        Some(seg)
    }

    pub fn prune(&mut self, now: u64) {
        let keep = now.saturating_sub(JOIN_WINDOW);
        self.recent.retain(|_, l| {
            l.retain(|s| s.time_ns >= keep);
            !l.is_empty()
        });
        self.len = self.recent.values().map(Vec::len).sum();
        if self.len >= MAX_PENDING {
            self.recent.clear();
            self.len = 0;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

/// Where a reset no local socket sent came from.
pub fn evidence(seg: RstSegment) -> NetworkEvidence {
    let origin = if seg.ifindex == LOOPBACK_IFINDEX {
        // Netfilter's RSTs carry IP ID 0 (nf_reject_iphdr_put()); so do the kernel's own
        // answers for no socket, and a socket's numbered RSTs are left out in the kernel
        // (net.rs report_rst). IPv6 has no ID to tell by.
        match seg.ip_id {
            Some(id) if id != 0 => Origin::LocalInjected,
            _ => Origin::LocalFirewall,
        }
    } else {
        match seg.expected {
            None => Origin::Unknown,
            Some(b) if b.ttl == seg.ttl => Origin::RemoteHost,
            Some(_) => Origin::PathDevice,
        }
    };
    NetworkEvidence {
        origin,
        segment: seg,
    }
}

/// The initial TTL a sender used, from one arriving with `ttl`: the usual initial values
/// are 64 (Linux, BSDs), 128 (Windows) and 255 (network gear).
pub fn initial_ttl(ttl: u8) -> u8 {
    match ttl {
        0..=64 => 64,
        65..=128 => 128,
        _ => 255,
    }
}

/// How many hops closer than the peer the RST was forged, when both TTLs started from the
/// same initial value.
pub fn hops_closer(ttl: u8, expected: u8) -> Option<u8> {
    (initial_ttl(ttl) == initial_ttl(expected) && ttl > expected).then(|| ttl - expected)
}

/// How many hops away from the receiver the RST was forged (1: the first hop).
pub fn hops_away(ttl: u8) -> u8 {
    initial_ttl(ttl) - ttl + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_arithmetic() {
        assert_eq!(initial_ttl(63), 64);
        assert_eq!(initial_ttl(64), 64);
        assert_eq!(initial_ttl(120), 128);
        assert_eq!(initial_ttl(250), 255);
        assert_eq!(hops_closer(64, 63), Some(1));
        assert_eq!(hops_closer(64, 60), Some(4));
        assert_eq!(hops_closer(63, 63), None);
        assert_eq!(hops_closer(254, 62), None, "different initial TTL");
        assert_eq!(
            hops_closer(60, 63),
            None,
            "farther than the peer: not computable"
        );
        assert_eq!(hops_away(64), 1);
        assert_eq!(hops_away(62), 3);
    }
}

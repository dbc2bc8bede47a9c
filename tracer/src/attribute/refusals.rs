//! Connections that failed without a reset: a SYN answered by ICMP port unreachable (a
//! Kubernetes Service without endpoints, a REJECT with icmp-port-unreachable), or a socket
//! timing out (SYNs or data dropped silently). sk_error_report() reports those; it also
//! reports a RST's error right after tcp:tcp_receive_reset, which is a reset, not this.
use super::FastMap as HashMap;

use crate::model::{Refusal, SocketRefused};

/// A connection: its socket and its ports. The socket's address alone is reused at once
/// (nginx closes a refused socket and connects again, often at the same address), and would
/// make the next connection's refusal look like a repeat of this one's; its new connection
/// has a new local port. (Ports, not addresses: in a storm these maps hold 65,536 entries.)
type Conn = (u64, u16, u16);

use super::MAX_PENDING;

/// A RST's error report follows its receive in the same call (tcp_reset() ->
/// tcp_done_with_error(), net/ipv4/tcp_input.c).
const REPORT_FOLLOWS_RESET: u64 = 10_000_000;

/// One socket reports its error several times (queued, then hard; again at disconnect).
const REPORTS_OF_ONE_ERROR: u64 = 1_000_000_000;

#[derive(Default)]
pub struct Refusals {
    /// Receiving connections of recent resets, with the reset's time.
    reset_socks: HashMap<Conn, u64>,
    /// Connections whose reset was reported as ECONNREFUSED: the reset answered their SYN
    /// (tcp_reset() gives that error in SYN_SENT only, net/ipv4/tcp_input.c).
    refused_resets: HashMap<Conn, u64>,
    /// Connections whose refusal was reported, with its time.
    reported: HashMap<Conn, u64>,
}

impl Refusals {
    pub fn on_reset(&mut self, sk: u64, local: u16, remote: u16, time_ns: u64) {
        insert_bounded(
            &mut self.reset_socks,
            (sk, local, remote),
            time_ns,
            REPORT_FOLLOWS_RESET,
        );
    }

    /// Whether the reset received on this connection answered its SYN (its own report said
    /// ECONNREFUSED): a refused connect. Asked once, when its verdict is made without a
    /// traced send; before 6.10 (tcp_v4_send_reset() with no socket is not traced) and
    /// where connect() and getsockopt() are not traced (the socket tracepoints of 6.3+ see
    /// neither), it is the only witness.
    pub fn take_refused_reset(&mut self, sk: u64, local: u16, remote: u16) -> bool {
        self.refused_resets.remove(&(sk, local, remote)).is_some()
    }

    /// The refusal `e` reports, unless it is a reset's own error report.
    pub fn on_refused(&mut self, e: SocketRefused) -> Option<Refusal> {
        let conn = (e.sock, e.local.port(), e.remote.port());
        if let Some(t) = self.reset_socks.get(&conn) {
            if e.time_ns.saturating_sub(*t) <= REPORT_FOLLOWS_RESET {
                if e.error == libc::ECONNREFUSED {
                    insert_bounded(
                        &mut self.refused_resets,
                        conn,
                        e.time_ns,
                        REPORTS_OF_ONE_ERROR,
                    );
                }
                return None;
            }
        }
        if let Some(t) = insert_bounded(&mut self.reported, conn, e.time_ns, REPORTS_OF_ONE_ERROR) {
            if e.time_ns.saturating_sub(t) <= REPORTS_OF_ONE_ERROR {
                return None;
            }
        }
        Some(Refusal {
            time_ns: e.time_ns,
            error: e.error,
            local: e.local,
            remote: e.remote,
            receiver: e.owner,
            receiver_role: e.owner_role,
            netns: e.netns,
        })
    }
}

/// Records `key` at `time_ns`; returns the time it replaced. At MAX_PENDING entries, those
/// older than `window` go first (a storm's worth of connections).
fn insert_bounded(
    map: &mut HashMap<Conn, u64>,
    key: Conn,
    time_ns: u64,
    window: u64,
) -> Option<u64> {
    if map.len() >= MAX_PENDING {
        map.retain(|_, t| time_ns.saturating_sub(*t) <= window);
    }
    map.insert(key, time_ns)
}

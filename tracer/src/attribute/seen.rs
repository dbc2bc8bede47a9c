//! Whether the receiver saw its reset: a TCP verdict waits (SEEN_WAIT) for a call of its
//! receiver on that socket to fail with ECONNRESET, and goes out at once when one does.
//! The receiver's failing call can also come first: its sample may beat the send's to the
//! ring buffer from another CPU.

use crate::model::{Attribution, CauseKind, SocketError, Verdict};

use super::{expiring::Expiring, MAX_PENDING};

/// How long a TCP verdict waits for a syscall of its receiver to fail with ECONNRESET
/// (`seen_by_receiver`). A process waiting on the socket (nginx waiting for a response)
/// is woken by the reset at once; one that does not look within this time did not see it.
pub const SEEN_WAIT: u64 = 250_000_000;

pub struct SeenGate {
    /// Whether receivers' socket calls are traced; without them `seen_by_receiver` is
    /// unknown and verdicts go out at once.
    traced: bool,
    /// TCP verdicts waiting to learn whether their receiver saw the reset, by receiving sock.
    /// Boxed as they will go out (Verdict::Reset): an Attribution is large, and moving it
    /// into the map and out again was a tenth of a storm's copying.
    awaiting: Expiring<u64, Box<Attribution>>,
    /// Receiving socks whose call already failed, before their verdict was complete.
    early: Expiring<u64, SocketError>,
}

impl Default for SeenGate {
    fn default() -> Self {
        Self {
            traced: true,
            awaiting: Expiring::default(),
            early: Expiring::default(),
        }
    }
}

impl SeenGate {
    pub fn set_traced(&mut self, traced: bool) {
        self.traced = traced;
    }

    /// A completed TCP verdict: out at once if its receiver already failed a call on
    /// the socket, else it waits for that.
    pub fn settle(&mut self, mut a: Attribution, out: &mut Vec<Verdict>) {
        if !self.traced {
            out.push(Verdict::Reset(Box::new(a)));
            return;
        }
        if let Some(e) = self.early.remove(&a.receiver_sock) {
            // Its own reset comes before the call that failed on it; an older failure was
            // on an earlier socket at this reused address (an ICMP-refused connect, an
            // error whose verdict was lost), and would give this one its time and errno.
            if same_owner(&a, &e) && e.time_ns >= a.time_ns {
                seen(&mut a, &e);
                out.push(Verdict::Reset(Box::new(a)));
                return;
            }
        }
        if a.receiver_sock == 0 {
            a.seen_by_receiver = Some(false);
            out.push(Verdict::Reset(Box::new(a)));
            return;
        }
        if a.cause.kind() == CauseKind::NoSocket {
            // A refused connect always reaches the connecting process (connect()'s result,
            // SO_ERROR, or its next read or write), whether or not that syscall is traced.
            a.seen_by_receiver = Some(true);
            out.push(Verdict::Reset(Box::new(a)));
            return;
        }
        let (sock, time) = (a.receiver_sock, a.time_ns);
        if let Some(mut previous) = self.awaiting.insert(sock, Box::new(a), time) {
            previous.seen_by_receiver = Some(false);
            out.push(Verdict::Reset(previous));
        }
    }

    /// A TCP call of a receiver failed with ECONNRESET or ECONNREFUSED.
    pub fn on_error(&mut self, e: SocketError, out: &mut Vec<Verdict>) {
        if self
            .awaiting
            .get(&e.sock)
            .is_some_and(|a| same_owner(a, &e))
        {
            if let Some(mut a) = self.awaiting.remove(&e.sock) {
                seen(&mut a, &e);
                out.push(Verdict::Reset(a));
            }
        } else if self.early.len() < MAX_PENDING {
            let (sock, time) = (e.sock, e.time_ns);
            self.early.insert(sock, e, time);
        }
    }

    /// Releases the verdicts whose receiver did not look within SEEN_WAIT of `now`;
    /// `u64::MAX` releases all as not known (at exit).
    pub fn expire(&mut self, now: u64, out: &mut Vec<Verdict>) {
        let cutoff = now.saturating_sub(SEEN_WAIT);
        let _ = self.early.drain_older(cutoff, |e| e.time_ns);
        for mut a in self.awaiting.drain_older(cutoff, |a| a.time_ns) {
            a.seen_by_receiver = (now != u64::MAX).then_some(false);
            out.push(Verdict::Reset(a));
        }
    }

    pub fn waiting(&self) -> usize {
        self.awaiting.len()
    }
}

/// Socket addresses are reused at once (SLAB_TYPESAFE_BY_RCU): a failing call of another
/// process at the same address is on another socket, not the one the verdict's reset hit.
fn same_owner(a: &Attribution, e: &SocketError) -> bool {
    a.receiver.as_ref().is_none_or(|r| r.pid == e.receiver.pid)
}

/// The receiver's call `e` failed on the socket the verdict's reset hit.
fn seen(a: &mut Attribution, e: &SocketError) {
    a.seen_by_receiver = Some(true);
    a.seen_ns = Some(e.time_ns);
    // The task whose call failed owns the socket: it names a receiver whose connect or
    // accept rsttrace did not see (a connection older than rsttrace, a keepalive timeout's
    // other end that never read before).
    if a.receiver.is_none() {
        a.receiver = Some(e.receiver.clone());
    }
    // connect() refused (ECONNREFUSED, directly or through SO_ERROR) is a RST answering a
    // SYN: nothing listened. Kernels before ~6.10 do not trace that send
    // (tcp_v4_send_reset() with no socket), so the receiver's errno is the only witness.
    if a.cause.kind() == CauseKind::Unknown && e.ret == -i64::from(libc::ECONNREFUSED) {
        a.cause = crate::model::Cause::NoSocket;
    }
}

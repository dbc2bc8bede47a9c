//! What a send says: the kernel's reason for the reset, the task that sent it, and so the
//! cause — unless a death explains it better (see [`super::deaths`]).
use std::collections::HashMap;

use crate::model::{short_reason_name, Attribution, Cause, ResetSent, Task};

use super::deaths::Deaths;

/// What a kernel reset reason says about who decided to reset (enum sk_rst_reason,
/// include/net/rstreason.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasonClass {
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

/// Reason names (enum sk_rst_reason values, from BTF) to what they say.
pub struct Reasons(HashMap<u32, ReasonClass>);

impl Reasons {
    pub fn new(names: &HashMap<u32, String>) -> Self {
        Self(
            names
                .iter()
                .map(|(v, n)| (*v, classify_reason(n)))
                .collect(),
        )
    }

    /// Whether this kernel traces the resets it sends for no socket (a segment to a closed
    /// port or a connection already gone). tcp_v4_send_reset() traces them since the
    /// tracepoint's sk may be NULL (6.9, "trace: tcp: fully support trace_tcp_send_reset"),
    /// which came just before enum sk_rst_reason (6.10): a kernel with reasons has both.
    pub fn traces_no_socket_sends(&self) -> bool {
        !self.0.is_empty()
    }

    /// Explains `out`'s reset with the send that made it on this host.
    pub fn explain(&self, out: &mut Attribution, send: &ResetSent, deaths: &Deaths) {
        out.kernel_reason = send.reason;
        out.peer_netns = send.netns;
        let class = send
            .reason
            .map(|v| self.0.get(&v).copied().unwrap_or(ReasonClass::Kernel));
        if send.sk == 0 || class == Some(ReasonClass::NoSocket) {
            out.cause = Cause::NoSocket;
            return;
        }
        let who = sender(send, class);
        out.peer_exiting = who.exiting;
        out.peer = who.peer.clone();
        if let Some(peer) = &who.peer {
            if let Some(exit) = deaths.death_behind_send(peer.pid, send.time_ns, who.exiting) {
                out.cause = deaths.explain(exit);
                return;
            }
            if who.exiting {
                // In do_exit() but its exit record was not seen (lost, or rsttrace started
                // in between): an exit, code unknown.
                out.cause = Cause::Exit { exit_code: None };
                return;
            }
        }
        out.cause = live_cause(send, class, who);
    }
}

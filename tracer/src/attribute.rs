//! The attribution engine: typed kernel events in, one verdict per received reset out.
//!
//! Pure: no I/O and no clock of its own (time is the events' ktime), so it is tested on
//! recorded event sequences. It relies on orderings the kernel guarantees:
//! - signal_generate precedes the death it causes; oom:mark_victim follows the SIGKILL
//!   (SI_KERNEL) the OOM killer sends and precedes the victim's exit;
//! - do_exit() fires sched_process_exit *before* exit_files() closes the dying task's
//!   sockets (kernel/exit.c), so a dying peer's exit record precedes its resets;
//! - a send and its receive on this host are close in time but come in either order:
//!   tcp_v4_send_reset() (no socket, bad segments) traces before transmitting, while
//!   tcp_send_active_reset() (close with unread data, exit, linger 0) traces *after*
//!   tcp_transmit_skb(), and on loopback the receiver's softirq has already run by then
//!   (net/ipv4/tcp_output.c). So each side waits briefly for the other.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use crate::{
    kernel::short_reason_name,
    model::{
        Attribution, Cause, Death, KernelEvent, OomEvidence, OomVictim, ProcessExit, ResetReceived,
        ResetSent, SignalEvidence, SignalGenerated, SocketError, Task, Transport, UnixPeer,
    },
};

const SECOND: u64 = 1_000_000_000;
/// A send not matched by a receive within this time was for a remote host.
const SEND_TTL: u64 = 5 * SECOND;
/// A receive from a local address waits this long for its send (see above); in practice
/// the send follows within microseconds.
pub const RECEIVE_WAIT: u64 = 20_000_000;
/// How long a TCP verdict waits for a syscall of its receiver to fail with ECONNRESET
/// (`seen_by_receiver`). A process waiting on the socket (nginx waiting for a response)
/// is woken by the reset at once; one that does not look within this time did not see it.
pub const SEEN_WAIT: u64 = 250_000_000;
/// A process that exits on its own this soon after another sent it SIGTERM, SIGINT or
/// SIGQUIT exited *because* of it (php-fpm's master, gunicorn workers handle them).
const HANDLED_SIGNAL_EXPLAINS_EXIT: u64 = 30 * SECOND;
const AF_INET: u16 = 2;
const ECONNREFUSED: i64 = 111;
const AF_INET6: u16 = 10;
const MAX_LISTENERS_PER_PATH: usize = 4;
/// How long deaths, signals and OOM kills stay usable as evidence.
const EVIDENCE_TTL: u64 = 300 * SECOND;
/// A death explains a reset sent by its (then orphaned) socket this long afterwards.
const DEATH_EXPLAINS_FOR: u64 = 10 * SECOND;
/// Bounds on remembered state (reset storms, fork storms): beyond it the oldest go.
const MAX_PENDING_SENDS: usize = 65_536;
const MAX_PROCESS_RECORDS: usize = 65_536;
const MAX_SIGNALS_PER_TARGET: usize = 8;
const PRUNE_EVERY: u64 = 4096;

pub const SI_KERNEL: i32 = 0x80;
pub const SI_TKILL: i32 = -6;
const SIGINT: i32 = 2;
const SIGQUIT: i32 = 3;
const SIGTERM: i32 = 15;
const SIGILL: i32 = 4;
const SIGTRAP: i32 = 5;
const SIGABRT: i32 = 6;
const SIGBUS: i32 = 7;
const SIGFPE: i32 = 8;
const SIGSEGV: i32 = 11;
const SIGSYS: i32 = 31;

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

pub struct Attributor {
    reasons: HashMap<u32, (String, ReasonClass)>,
    local_addrs: HashSet<IpAddr>,
    /// (sender end, receiver end) -> the send, waiting for its receive.
    sends: HashMap<(SocketAddr, SocketAddr), ResetSent>,
    /// (sender end, receiver end) -> a receive from a local sender, waiting for its send.
    receives: HashMap<(SocketAddr, SocketAddr), ResetReceived>,
    /// Latest exit by process id.
    exits: HashMap<u32, ProcessExit>,
    /// Fatal signals by target (thread or process id).
    signals: HashMap<u32, Vec<SignalGenerated>>,
    /// OOM victims by pid.
    oom: HashMap<u32, OomVictim>,
    /// TCP verdicts waiting to learn whether their receiver saw the reset, by receiving sock.
    awaiting_seen: HashMap<u64, Attribution>,
    /// Receiving socks whose syscall already failed (time, -errno), before their verdict
    /// was complete.
    seen_early: HashMap<u64, (u64, i64)>,
    /// unix listening path -> processes that listened on it (latest last).
    listeners: HashMap<String, Vec<Task>>,
    receiver_syscalls_traced: bool,
    events_seen: u64,
}

impl Attributor {
    /// `reasons`: enum sk_rst_reason value -> name, from BTF (empty before 6.10).
    /// `local_addrs`: this host's addresses (loopback is always local).
    pub fn new(reasons: &HashMap<u32, String>, local_addrs: HashSet<IpAddr>) -> Self {
        Self {
            reasons: reasons
                .iter()
                .map(|(v, n)| (*v, (short_reason_name(n).to_string(), classify_reason(n))))
                .collect(),
            local_addrs,
            sends: HashMap::new(),
            receives: HashMap::new(),
            exits: HashMap::new(),
            signals: HashMap::new(),
            oom: HashMap::new(),
            awaiting_seen: HashMap::new(),
            seen_early: HashMap::new(),
            listeners: HashMap::new(),
            receiver_syscalls_traced: true,
            events_seen: 0,
        }
    }

    pub fn reason_name(&self, reason: u32) -> Option<&str> {
        self.reasons.get(&reason).map(|(n, _)| n.as_str())
    }

    /// Takes one event; pushes the verdicts it completes (and those of receives whose
    /// wait for a send has run out) onto `out`.
    pub fn observe(&mut self, event: KernelEvent, out: &mut Vec<Attribution>) {
        self.events_seen += 1;
        let now = event.time_ns();
        if self.events_seen.is_multiple_of(PRUNE_EVERY) {
            self.prune(now);
        }
        if !self.receives.is_empty() {
            self.expire(now, out);
        }
        match event {
            KernelEvent::ResetSent(s) => {
                let key = (canon(s.src), canon(s.dst));
                if self.sends.len() >= MAX_PENDING_SENDS {
                    self.prune_sends(s.time_ns);
                }
                self.sends.insert(key, s);
                if let Some(r) = self.receives.remove(&key) {
                    let a = self.attribute(r);
                    self.settle(a, out);
                }
            }
            KernelEvent::ResetReceived(r) => {
                let key = (canon(r.remote), canon(r.local));
                if self.sends.contains_key(&key) || !self.is_local(r.remote.ip()) {
                    let a = self.attribute(r);
                    self.settle(a, out);
                } else {
                    if self.receives.len() >= MAX_PENDING_SENDS {
                        self.expire(u64::MAX, out);
                    }
                    if let Some(previous) = self.receives.insert(key, r) {
                        let a = self.attribute(previous);
                        self.settle(a, out);
                    }
                }
            }
            KernelEvent::Signal(sig) => {
                let list = self.signals.entry(sig.target_pid).or_default();
                if list.len() >= MAX_SIGNALS_PER_TARGET {
                    list.remove(0);
                }
                list.push(sig);
            }
            KernelEvent::Exit(e) => {
                self.exits.insert(e.task.pid, e);
            }
            KernelEvent::OomVictim(o) => {
                self.oom.insert(o.victim_pid, o);
            }
            KernelEvent::Fork(_) => {}
            KernelEvent::SocketError(e) => self.socket_error(e, out),
            KernelEvent::UnixListen(l) => {
                let owners = self.listeners.entry(l.path).or_default();
                owners.retain(|t| t.pid != l.owner.pid);
                if owners.len() >= MAX_LISTENERS_PER_PATH {
                    owners.remove(0);
                }
                owners.push(l.owner);
            }
        }
    }

    /// A completed TCP verdict: out at once if its receiver already failed a syscall on
    /// the socket, else it waits (SEEN_WAIT) for that.
    /// Whether the receiver's socket syscalls are traced; without them `seen_by_receiver`
    /// is unknown and verdicts go out at once.
    pub fn set_receiver_syscalls_traced(&mut self, traced: bool) {
        self.receiver_syscalls_traced = traced;
    }

    fn settle(&mut self, mut a: Attribution, out: &mut Vec<Attribution>) {
        if !self.receiver_syscalls_traced {
            out.push(a);
            return;
        }
        if let Some((_, ret)) = self.seen_early.remove(&a.receiver_sock) {
            a.seen_by_receiver = Some(true);
            refused_means_no_socket(&mut a, ret);
            out.push(a);
            return;
        }
        if a.receiver_sock == 0 {
            a.seen_by_receiver = Some(false);
            out.push(a);
            return;
        }
        if a.cause == Cause::NoSocket {
            // A refused connect always reaches the connecting process (connect()'s result,
            // SO_ERROR, or its next read or write), whether or not that syscall is traced.
            a.seen_by_receiver = Some(true);
            out.push(a);
            return;
        }
        if let Some(mut previous) = self.awaiting_seen.insert(a.receiver_sock, a) {
            previous.seen_by_receiver = Some(false);
            out.push(previous);
        }
    }

    fn socket_error(&mut self, e: SocketError, out: &mut Vec<Attribution>) {
        match (e.family, &e.unix) {
            (AF_INET | AF_INET6, _) => {
                if let Some(mut a) = self.awaiting_seen.remove(&e.sock) {
                    a.seen_by_receiver = Some(true);
                    refused_means_no_socket(&mut a, e.ret);
                    out.push(a);
                } else if self.seen_early.len() < MAX_PENDING_SENDS {
                    // The receiver's syscall can beat the send's trace to the ring buffer
                    // (another CPU): remember it for the verdict still being completed.
                    self.seen_early.insert(e.sock, (e.time_ns, e.ret));
                }
            }
            (_, Some(peer)) => {
                let a = self.attribute_unix(&e, peer);
                out.push(a);
            }
            _ => {}
        }
    }

    /// A unix stream socket's syscall failed with ECONNRESET: its peer was released with
    /// unread data, or was an embryo of a listener that closed (unix_release_sock()).
    fn attribute_unix(&self, e: &SocketError, peer: &UnixPeer) -> Attribution {
        let mut out = Attribution::pending(
            e.time_ns,
            Transport::Unix,
            String::new(),
            peer.path.clone().unwrap_or_default(),
            e.sock,
            Some(e.receiver.clone()),
        );
        // For unix sockets the receiver's failed syscall is the reset itself.
        out.seen_by_receiver = Some(true);
        if let Some(owner) = &peer.owner {
            out.peer = Some(owner.clone());
            match self.recent_death(owner.pid, e.time_ns) {
                Some(exit) => {
                    out.peer_exiting = true;
                    self.explain_death(&mut out, &exit);
                }
                None => out.cause = Cause::Abort,
            }
            return out;
        }
        // Never accepted while rsttrace watched: an embryo reset because its listener was
        // closed, when a process that listened on that path has just died, or has just
        // been asked to terminate (php-fpm's master closes its listeners on SIGTERM, then
        // waits for its workers before it exits).
        let owners = peer
            .path
            .as_ref()
            .and_then(|p| self.listeners.get(p))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let died = owners
            .iter()
            .filter_map(|t| self.recent_death(t.pid, e.time_ns).map(|d| (t, d)))
            .max_by_key(|(_, d)| d.time_ns);
        if let Some((owner, exit)) = died {
            out.listener_closed = true;
            out.peer = Some(owner.clone());
            out.peer_exiting = true;
            self.explain_death(&mut out, &exit);
            return out;
        }
        let asked = owners
            .iter()
            .find_map(|t| self.termination_request(t, e.time_ns).map(|s| (t, s)));
        if let Some((owner, s)) = asked {
            out.listener_closed = true;
            out.peer = Some(owner.clone());
            out.cause = Cause::Signal;
            out.signal = Some(SignalEvidence {
                number: s.sig,
                code: s.code,
                sender: Some(s.sender.clone()),
            });
        }
        out
    }

    /// The first SIGTERM, SIGINT or SIGQUIT another process sent `task` in the
    /// HANDLED_SIGNAL_EXPLAINS_EXIT before `now`: processes that handle those shut down
    /// cleanly (close listeners, exit 0).
    fn termination_request(&self, task: &Task, now: u64) -> Option<&SignalGenerated> {
        [task.pid, task.tid]
            .iter()
            .filter_map(|id| self.signals.get(id))
            .flatten()
            .filter(|s| {
                matches!(s.sig, SIGINT | SIGQUIT | SIGTERM)
                    && s.sender.pid != task.pid
                    && s.time_ns <= now
                    && now - s.time_ns <= HANDLED_SIGNAL_EXPLAINS_EXIT
            })
            .min_by_key(|s| s.time_ns)
    }

    fn recent_death(&self, pid: u32, now: u64) -> Option<ProcessExit> {
        self.exits
            .get(&pid)
            .filter(|d| d.time_ns <= now && now - d.time_ns <= DEATH_EXPLAINS_FOR)
            .cloned()
    }

    /// Gives up waiting for the sends of receives older than RECEIVE_WAIT at `now_ns`
    /// (CLOCK_MONOTONIC, like the events); `u64::MAX` flushes all (at exit).
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Attribution>) {
        let due = drain_older(
            &mut self.receives,
            now_ns.saturating_sub(RECEIVE_WAIT),
            |r| r.time_ns,
        );
        for r in due {
            let a = self.attribute(r);
            self.settle(a, out);
        }
        let seen_cutoff = now_ns.saturating_sub(SEEN_WAIT);
        self.seen_early.retain(|_, (t, _)| *t > seen_cutoff);
        let unseen = drain_older(&mut self.awaiting_seen, seen_cutoff, |a| a.time_ns);
        for mut a in unseen {
            // At shutdown (now = MAX) nothing is known yet: leave it unknown.
            a.seen_by_receiver = (now_ns != u64::MAX).then_some(false);
            out.push(a);
        }
    }

    /// Verdicts still waiting for their send or for their receiver's syscall.
    pub fn waiting(&self) -> usize {
        self.receives.len() + self.awaiting_seen.len()
    }

    fn attribute(&mut self, r: ResetReceived) -> Attribution {
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
        let class = send.reason.map(|v| {
            self.reasons
                .get(&v)
                .map_or(ReasonClass::Kernel, |(_, c)| *c)
        });
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
            let death = self.exits.get(&peer.pid).filter(|e| {
                e.time_ns <= send.time_ns
                    && (out.peer_exiting || send.time_ns - e.time_ns <= DEATH_EXPLAINS_FOR)
            });
            if let Some(exit) = death.cloned() {
                self.explain_death(&mut out, &exit);
                return out;
            }
            if out.peer_exiting {
                // In do_exit() but its exit record was not seen (lost, or rsttrace started
                // in between): an exit, code unknown.
                out.cause = Cause::Exit;
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

    fn explain_death(&self, out: &mut Attribution, exit: &ProcessExit) {
        match exit.death() {
            Death::Exited(code) => {
                out.cause = Cause::Exit;
                out.exit_code = Some(code);
                // A clean exit right after another process asked it to terminate: that
                // request is the cause (the first one, as for signal deaths).
                let asked = self.termination_request(&exit.task, exit.time_ns);
                if let Some(s) = asked {
                    out.cause = Cause::Signal;
                    out.signal = Some(SignalEvidence {
                        number: s.sig,
                        code: s.code,
                        sender: Some(s.sender.clone()),
                    });
                }
            }
            Death::Signal(sig) => {
                let ids = [exit.task.pid, exit.task.tid];
                let candidates: Vec<&SignalGenerated> = ids
                    .iter()
                    .filter_map(|id| self.signals.get(id))
                    .flatten()
                    .filter(|s| s.sig == sig && s.time_ns <= exit.time_ns)
                    .collect();
                let oom = ids.iter().find_map(|id| self.oom.get(id));
                if let Some(victim) = oom.filter(|_| sig == 9) {
                    out.cause = Cause::OomKill;
                    out.oom = Some(OomEvidence {
                        victim: Task {
                            pid: exit.task.pid,
                            tid: exit.task.tid,
                            comm: exit.task.comm.clone(),
                        },
                        killer: victim.killer.clone(),
                        memcg_id: if exit.memcg_id != 0 {
                            exit.memcg_id
                        } else {
                            victim.memcg_id
                        },
                    });
                    let kernel_kill = candidates.iter().find(|s| s.code == SI_KERNEL);
                    out.signal = Some(SignalEvidence {
                        number: sig,
                        code: SI_KERNEL,
                        sender: kernel_kill.map(|s| s.sender.clone()),
                    });
                    return;
                }
                let external = candidates
                    .iter()
                    .filter(|s| s.sender.pid != exit.task.pid)
                    .min_by_key(|s| s.time_ns);
                let own = candidates
                    .iter()
                    .filter(|s| s.sender.pid == exit.task.pid)
                    .min_by_key(|s| s.time_ns);
                let evidence = |s: &SignalGenerated| SignalEvidence {
                    number: s.sig,
                    code: s.code,
                    sender: Some(s.sender.clone()),
                };
                (out.cause, out.signal) = match (external, own) {
                    // The first fatal signal from another process wins over the worker's
                    // own re-raise (php-fpm workers re-raise SIGTERM from their handler).
                    (Some(ext), _) => (Cause::Signal, Some(evidence(ext))),
                    (None, Some(own)) if is_crash(own.sig, own.code) => {
                        (Cause::Crash, Some(evidence(own)))
                    }
                    (None, Some(own)) => (Cause::Signal, Some(evidence(own))),
                    (None, None) => (
                        if is_fault_signal(sig) {
                            Cause::Crash
                        } else {
                            Cause::Signal
                        },
                        Some(SignalEvidence {
                            number: sig,
                            code: 0,
                            sender: None,
                        }),
                    ),
                };
            }
        }
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        let ip = canon_ip(ip);
        ip.is_loopback() || self.local_addrs.contains(&ip)
    }

    fn prune(&mut self, now: u64) {
        self.prune_sends(now);
        let keep = now.saturating_sub(EVIDENCE_TTL);
        self.exits.retain(|_, e| e.time_ns >= keep);
        self.oom.retain(|_, o| o.time_ns >= keep);
        self.signals.retain(|_, l| {
            l.retain(|s| s.time_ns >= keep);
            !l.is_empty()
        });
        for map_len in [self.exits.len(), self.oom.len(), self.signals.len()] {
            if map_len > MAX_PROCESS_RECORDS {
                // A fork/kill storm beyond any sane rate: forget the oldest half.
                let cutoff = now.saturating_sub(EVIDENCE_TTL / 2);
                self.exits.retain(|_, e| e.time_ns >= cutoff);
                self.oom.retain(|_, o| o.time_ns >= cutoff);
                self.signals
                    .retain(|_, l| l.iter().any(|s| s.time_ns >= cutoff));
            }
        }
    }

    fn prune_sends(&mut self, now: u64) {
        let keep = now.saturating_sub(SEND_TTL);
        self.sends.retain(|_, s| s.time_ns >= keep);
        if self.sends.len() >= MAX_PENDING_SENDS {
            // All recent: a storm of resets to remote hosts. Their receives never come here.
            self.sends.clear();
        }
    }

    /// Remembered state, for the bounded-memory checks.
    pub fn state_len(&self) -> usize {
        self.sends.len()
            + self.receives.len()
            + self.exits.len()
            + self.signals.len()
            + self.oom.len()
    }
}

/// Removes and returns, oldest first, the entries of `map` whose time is at or before
/// `cutoff`.
fn drain_older<K: Eq + std::hash::Hash + Clone, V>(
    map: &mut HashMap<K, V>,
    cutoff: u64,
    time: impl Fn(&V) -> u64,
) -> Vec<V> {
    let old: Vec<K> = map
        .iter()
        .filter(|(_, v)| time(v) <= cutoff)
        .map(|(k, _)| k)
        .cloned()
        .collect();
    let mut drained: Vec<V> = old.iter().filter_map(|k| map.remove(k)).collect();
    drained.sort_by_key(|v| time(v));
    drained
}

/// connect() refused (ECONNREFUSED, directly or through SO_ERROR) is a RST answering a
/// SYN: nothing listened. Kernels before ~6.10 do not trace that send (tcp_v4_send_reset()
/// with no socket), so the receiver's errno is the only witness there.
fn refused_means_no_socket(a: &mut Attribution, ret: i64) {
    if a.cause == Cause::Unknown && ret == -ECONNREFUSED {
        a.cause = Cause::NoSocket;
    }
}

/// A signal the kernel raised in the task itself for a fault, or abort().
fn is_crash(sig: i32, code: i32) -> bool {
    (is_fault_signal(sig) && code > 0) || (sig == SIGABRT && (code == SI_TKILL || code <= 0))
}

fn is_fault_signal(sig: i32) -> bool {
    matches!(
        sig,
        SIGSEGV | SIGBUS | SIGILL | SIGFPE | SIGABRT | SIGTRAP | SIGSYS
    )
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

#[cfg(test)]
mod tests;

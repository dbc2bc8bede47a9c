//! Evidence about the peer's process: fatal signals (and who sent them), exits, OOM kills.
//! From these a death becomes a [`Cause`]: the deepest explanation wins — an OOM kill over
//! the SIGKILL it sends, the first fatal signal from another process over the worker's own
//! re-raise, a termination request over the clean exit it led to.
use super::FastMap as HashMap;

use crate::model::{
    Cause, Death, OomEvidence, OomVictim, ProcessExit, SignalEvidence, SignalGenerated, Task,
};

use super::SECOND;

/// How long deaths, signals and OOM kills stay usable as evidence.
const EVIDENCE_TTL: u64 = 300 * SECOND;
/// A death explains a reset sent by its (then orphaned) socket this long afterwards.
pub const DEATH_EXPLAINS_FOR: u64 = 10 * SECOND;
/// A process that exits on its own this soon after another sent it SIGTERM, SIGINT or
/// SIGQUIT exited *because* of it (php-fpm's master, gunicorn workers handle them).
const HANDLED_SIGNAL_EXPLAINS_EXIT: u64 = 30 * SECOND;
/// How long before its death a fatal signal or an OOM kill can be its cause.
const FATAL_EVIDENCE_FOR: u64 = 60 * SECOND;
const MAX_PROCESS_RECORDS: usize = 65_536;
const MAX_SIGNALS_PER_TARGET: usize = 8;

pub const SI_KERNEL: i32 = 0x80;
pub const SI_TKILL: i32 = -6;
const SIGINT: i32 = 2;
const SIGQUIT: i32 = 3;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const SIGILL: i32 = 4;
const SIGTRAP: i32 = 5;
const SIGABRT: i32 = 6;
const SIGBUS: i32 = 7;
const SIGFPE: i32 = 8;
const SIGSEGV: i32 = 11;
const SIGSYS: i32 = 31;

#[derive(Default)]
pub struct Deaths {
    /// Latest exit by process id.
    exits: HashMap<u32, ProcessExit>,
    /// Fatal signals by target (thread or process id).
    signals: HashMap<u32, Vec<SignalGenerated>>,
    /// OOM victims by pid.
    oom: HashMap<u32, OomVictim>,
}

impl Deaths {
    pub fn on_signal(&mut self, sig: SignalGenerated) {
        let list = self.signals.entry(sig.target_pid).or_default();
        if list.len() >= MAX_SIGNALS_PER_TARGET {
            list.remove(0);
        }
        list.push(sig);
    }

    /// A task exited; only the end of a whole process is a death (a worker thread ending
    /// explains nothing about its process's sockets).
    pub fn on_exit(&mut self, exit: ProcessExit) {
        if exit.ends_process() {
            self.exits.insert(exit.task.pid, exit);
        }
    }

    pub fn on_oom_victim(&mut self, victim: OomVictim) {
        self.oom.insert(victim.victim_pid, victim);
    }

    /// `pid`'s exit, if it happened at most DEATH_EXPLAINS_FOR before `now`.
    pub fn recent_death(&self, pid: u32, now: u64) -> Option<&ProcessExit> {
        self.exits
            .get(&pid)
            .filter(|d| d.time_ns <= now && now - d.time_ns <= DEATH_EXPLAINS_FOR)
    }

    /// `pid`'s exit that explains a reset its socket sent at `sent_at`: any earlier one
    /// when the sender was dying then, else one at most DEATH_EXPLAINS_FOR before.
    pub fn death_behind_send(&self, pid: u32, sent_at: u64, dying: bool) -> Option<&ProcessExit> {
        self.exits.get(&pid).filter(|e| {
            e.time_ns <= sent_at && (dying || sent_at - e.time_ns <= DEATH_EXPLAINS_FOR)
        })
    }

    /// The first SIGTERM, SIGINT or SIGQUIT another process sent `task` in the
    /// HANDLED_SIGNAL_EXPLAINS_EXIT before `now`: processes that handle those shut down
    /// cleanly (close listeners, exit 0).
    pub fn termination_request(&self, task: &Task, now: u64) -> Option<&SignalGenerated> {
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

    /// Why `exit`'s process died.
    pub fn explain(&self, exit: &ProcessExit) -> Cause {
        match exit.death() {
            Death::Exited(code) => match self.termination_request(&exit.task, exit.time_ns) {
                // A clean exit right after another process asked it to terminate: that
                // request is the cause (the first one, as for signal deaths).
                Some(s) => Cause::Signal {
                    signal: evidence(s),
                    exit_code: Some(code),
                },
                None => Cause::Exit {
                    exit_code: Some(code),
                },
            },
            Death::Signal(sig) => self.explain_signal_death(exit, sig),
        }
    }

    fn explain_signal_death(&self, exit: &ProcessExit, sig: i32) -> Cause {
        let ids = [exit.task.pid, exit.task.tid];
        // A pid is reused within EVIDENCE_TTL on a busy host: evidence from before this
        // death's own moment belongs to an earlier process with that pid. A fatal signal
        // kills at its delivery, an OOM victim once it leaves the allocation (or the OOM
        // reaper takes its memory): both within seconds, unless it sleeps uninterruptibly.
        let recent = |t: u64| t <= exit.time_ns && exit.time_ns - t <= FATAL_EVIDENCE_FOR;
        let candidates: Vec<&SignalGenerated> = ids
            .iter()
            .filter_map(|id| self.signals.get(id))
            .flatten()
            .filter(|s| s.sig == sig && recent(s.time_ns))
            .collect();
        let oom = ids
            .iter()
            .filter_map(|id| self.oom.get(id))
            .find(|o| recent(o.time_ns));
        if let Some(victim) = oom.filter(|_| sig == SIGKILL) {
            let kernel_kill = candidates.iter().find(|s| s.code == SI_KERNEL);
            return Cause::OomKill {
                oom: OomEvidence {
                    victim: exit.task.clone(),
                    killer: victim.killer.clone(),
                    memcg_id: if exit.memcg_id != 0 {
                        exit.memcg_id
                    } else {
                        victim.memcg_id
                    },
                },
                signal: SignalEvidence {
                    number: sig,
                    code: SI_KERNEL,
                    sender: kernel_kill.map(|s| s.sender.clone()),
                },
            };
        }
        let external = candidates
            .iter()
            .filter(|s| s.sender.pid != exit.task.pid)
            .min_by_key(|s| s.time_ns);
        let own = candidates
            .iter()
            .filter(|s| s.sender.pid == exit.task.pid)
            .min_by_key(|s| s.time_ns);
        match (external, own) {
            // The first fatal signal from another process wins over the worker's own
            // re-raise (php-fpm workers re-raise SIGTERM from their handler).
            (Some(ext), _) => Cause::Signal {
                signal: evidence(ext),
                exit_code: None,
            },
            (None, Some(own)) if is_crash(own.sig, own.code) => Cause::Crash {
                signal: evidence(own),
            },
            (None, Some(own)) => Cause::Signal {
                signal: evidence(own),
                exit_code: None,
            },
            (None, None) => {
                let signal = SignalEvidence {
                    number: sig,
                    code: 0,
                    sender: None,
                };
                if is_fault_signal(sig) {
                    Cause::Crash { signal }
                } else {
                    Cause::Signal {
                        signal,
                        exit_code: None,
                    }
                }
            }
        }
    }

    pub fn prune(&mut self, now: u64) {
        let keep = now.saturating_sub(EVIDENCE_TTL);
        self.exits.retain(|_, e| e.time_ns >= keep);
        self.oom.retain(|_, o| o.time_ns >= keep);
        self.signals.retain(|_, l| {
            l.retain(|s| s.time_ns >= keep);
            !l.is_empty()
        });
        // A fork/kill storm beyond any sane rate (php-fpm with pm.max_requests = 1 under
        // load, a CGI host): forget the oldest half of the lifetime, and if that is not
        // enough, all but the newest records, so that they stay bounded whatever the rate.
        let over =
            |d: &Self| d.exits.len().max(d.oom.len()).max(d.signals.len()) > MAX_PROCESS_RECORDS;
        if over(self) {
            self.retain_from(now.saturating_sub(EVIDENCE_TTL / 2));
        }
        if over(self) {
            let times = self
                .exits
                .values()
                .map(|e| e.time_ns)
                .chain(self.oom.values().map(|o| o.time_ns))
                .chain(self.signals.values().flatten().map(|s| s.time_ns));
            let cutoff = newest(times, MAX_PROCESS_RECORDS / 2);
            self.retain_from(cutoff);
        }
    }

    fn retain_from(&mut self, cutoff: u64) {
        self.exits.retain(|_, e| e.time_ns >= cutoff);
        self.oom.retain(|_, o| o.time_ns >= cutoff);
        self.signals
            .retain(|_, l| l.iter().any(|s| s.time_ns >= cutoff));
    }

    pub fn len(&self) -> usize {
        self.exits.len() + self.signals.len() + self.oom.len()
    }
}

/// The time from which `keep` of `times` are at or after it (the keep-th newest).
fn newest(times: impl Iterator<Item = u64>, keep: usize) -> u64 {
    let mut times: Vec<u64> = times.collect();
    if times.len() <= keep || keep == 0 {
        return 0;
    }
    let at = times.len() - keep;
    *times.select_nth_unstable(at).1
}

fn evidence(s: &SignalGenerated) -> SignalEvidence {
    SignalEvidence {
        number: s.sig,
        code: s.code,
        sender: Some(s.sender.clone()),
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

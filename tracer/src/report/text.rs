//! The human form: one line per reset with its evidence, then its hint.
use std::fmt::Write as _;

use super::{RefusedJson, ResetJson};

pub fn render_text(j: &ResetJson) -> String {
    let mut line = format!(
        "{} {:<9} {} {} <- {}",
        j.time, j.cause, j.transport, j.local, j.remote
    );
    if let Some(r) = &j.receiver {
        let _ = write!(line, " receiver={}[{}]", r.comm, r.pid);
    }
    if let Some(role) = j.receiver_role {
        let _ = write!(line, " ({role})");
    }
    if let Some(p) = &j.peer {
        let _ = write!(line, " peer={}[{}]", p.comm, p.pid);
    }
    if let Some(by) = &j.aborted_by {
        let _ = write!(line, " aborted_by={}[{}]", by.comm, by.pid);
    }
    if let Some(s) = &j.signal {
        let _ = write!(line, " {}", s.name);
        if let Some(from) = &s.sender {
            let _ = write!(line, " from {}[{}]", from.comm, from.pid);
        }
    }
    if let Some(c) = j.exit_code {
        let _ = write!(line, " exit_code={c}");
    }
    if let Some(o) = &j.oom {
        let _ = write!(line, " oom={}", o.scope);
        if let Some(cg) = &o.cgroup {
            let _ = write!(line, ":{cg}");
        }
    }
    if let Some(r) = &j.kernel_reason {
        let _ = write!(line, " reason={r}");
    }
    if j.listener_closed == Some(true) {
        line.push_str(" listener_closed");
    }
    if j.seen_by_receiver == Some(false) {
        line.push_str(" (not seen by the receiver)");
    }
    if let Some(n) = &j.network {
        let _ = write!(line, " origin={} ttl={}", n.origin, n.ttl);
        if let Some(e) = n.expected_ttl {
            let _ = write!(line, "/{e}");
        }
        if let Some(ns) = &n.forged_in_netns {
            let _ = write!(line, " forged_in_netns={}", ns.inode);
        }
    }
    let _ = write!(line, "\n    {}", j.hint);
    line
}

pub fn render_refused_text(j: &RefusedJson) -> String {
    let mut line = format!(
        "{} {:<9} {} {} -> {} {}",
        j.time, j.event, j.transport, j.local, j.remote, j.error
    );
    if let Some(r) = &j.receiver {
        let _ = write!(line, " receiver={}[{}]", r.comm, r.pid);
    }
    let _ = write!(line, "\n    {}", j.hint);
    line
}

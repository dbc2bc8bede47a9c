//! The human form: one line per reset with its evidence, then its hint.
use std::fmt::Write as _;

use super::{NginxJson, RefusedJson, ResetJson, SummaryJson, UnexplainedJson};

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
    if let Some(n) = &j.nginx {
        let _ = write!(line, "\n    nginx: {}", nginx_text(n));
    }
    let _ = write!(line, "\n    {}", j.hint);
    line
}

/// `[error] *12 recv() failed (104: ...) while ... request="GET /x HTTP/1.1" upstream=...`
fn nginx_text(n: &NginxJson) -> String {
    let mut out = format!("[{}]", n.level);
    if let Some(c) = n.connection {
        let _ = write!(out, " *{c}");
    }
    let _ = write!(out, " {}", n.message);
    if let Some(r) = &n.request {
        let _ = write!(out, " request={r:?}");
    }
    if let Some(u) = &n.upstream {
        let _ = write!(out, " upstream={u}");
    }
    out
}

pub fn render_unexplained_text(j: &UnexplainedJson) -> String {
    let n = &j.nginx;
    format!(
        "{} {:<9} nginx[{}] {} ({})\n    {}",
        j.time,
        "unexplained",
        n.host_pid.unwrap_or(n.pid),
        nginx_text(n),
        n.log_file,
        j.hint
    )
}

/// The summary as a small table (for stderr).
pub fn render_summary_text(j: &SummaryJson) -> String {
    let mut out = format!(
        "rsttrace: summary: {} reset(s) in {:.1} s ({} with nginx's line), {} refused, {} timed out, \
         {} unexplained nginx line(s), {} kernel sample(s) lost",
        j.resets,
        j.duration_s,
        j.with_nginx_line,
        j.refused,
        j.timed_out,
        j.unexplained,
        j.lost.samples
    );
    let tables = [
        ("cause", &j.by_cause),
        ("peer", &j.by_peer),
        ("upstream", &j.by_upstream),
        ("seen", &j.seen_by_receiver),
    ];
    let width = tables
        .iter()
        .flat_map(|(title, t)| t.keys().map(String::len).chain([title.len()]))
        .max()
        .unwrap_or(0);
    for (title, table) in tables {
        if table.is_empty() {
            continue;
        }
        let _ = write!(out, "\n  {title:<width$}  resets");
        for (key, n) in table {
            let _ = write!(out, "\n  {key:<width$}  {n:>6}");
        }
    }
    out
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

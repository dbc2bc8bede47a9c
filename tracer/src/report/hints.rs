//! One sentence per verdict: what to look at or change. Hints live with rendering, not in
//! the engine: they are words for the operator, chosen from the verdict's evidence.
use crate::model::{Attribution, Cause};

use super::OomJson;

pub fn hint(a: &Attribution, oom: Option<&OomJson>, reason: Option<&str>) -> String {
    if a.listener_closed {
        let who = a.peer.as_ref().map_or_else(
            || "its owner".to_string(),
            |p| format!("{} (pid {})", p.comm, p.pid),
        );
        return format!(
            "The upstream's listening socket was closed with this connection still queued in its backlog: {who} stopped or restarted ({}); reload gracefully (php-fpm: SIGUSR2) or drain before stopping.",
            a.cause.as_str()
        );
    }
    match &a.cause {
        Cause::OomKill { .. } => match oom {
            Some(OomJson {
                scope: "cgroup",
                cgroup: Some(cg),
                ..
            }) => format!(
                "The upstream worker was OOM-killed by the limit of memory cgroup {cg}: raise that limit or cut the worker's memory use (PHP memory_limit, fewer/lighter workers)."
            ),
            _ => "The upstream worker was OOM-killed by the global OOM killer: the host ran out of memory; see dmesg and reduce memory use or add memory.".into(),
        },
        Cause::Signal { signal, .. } => {
            let who = signal
                .sender
                .as_ref()
                .map(|s| format!("{} (pid {})", s.comm, s.pid));
            match who {
                Some(who) => format!(
                    "The upstream worker was killed mid-request by {who}: if that is the process manager, a timeout fired (php-fpm request_terminate_timeout, gunicorn --timeout); otherwise check what runs it (deploys, admins, watchdogs)."
                ),
                None => "The upstream worker was killed by a signal rsttrace did not see being sent (it was sent before rsttrace started).".into(),
            }
        }
        Cause::Crash { .. } => "The upstream worker crashed (a fault signal raised by the kernel, or abort()): look for a core dump and the upstream's error log at this time.".into(),
        Cause::Exit { .. } => "The upstream worker exited with the request unread: worker recycling (pm.max_requests, gunicorn --max-requests) racing nginx keepalive, or an exit in the application.".into(),
        Cause::Abort => "A live upstream closed the connection with unread data or SO_LINGER 0: check its own limits (request body size, timeouts) and its error log.".into(),
        Cause::NoSocket => "Nothing was listening at the remote address: the upstream is down or restarting, or nginx points at the wrong port.".into(),
        Cause::Kernel => format!(
            "The kernel reset the connection itself ({}): look at socket memory (tcp_mem), keepalive and timestamp settings.",
            reason.unwrap_or("no reason given by this kernel")
        ),
        Cause::Network => "The reset came from another host or a device in the path (firewall, load balancer, conntrack): capture on the wire to see which.".into(),
        Cause::Unknown => "A local reset whose sender rsttrace did not see; check for `lost` events and run `rsttrace --check`.".into(),
    }
}

//! One sentence per verdict: what to look at or change. Hints live with rendering, not in
//! the engine: they are words for the operator, chosen from the verdict's evidence.
use std::borrow::Cow;

use crate::model::{Attribution, Cause, Role, Task, Unseen};

use super::{NetworkJson, OomJson};

fn who(t: &Task) -> String {
    format!("{} (pid {})", t.comm, t.pid)
}

pub fn hint(
    a: &Attribution,
    oom: Option<&OomJson>,
    reason: Option<&str>,
    network: Option<&NetworkJson>,
) -> Cow<'static, str> {
    if a.listener_closed {
        let owner = a.peer.as_ref().map_or_else(|| "its owner".to_string(), who);
        return format!(
            "The upstream's listening socket was closed with this connection still queued in its backlog: {owner} stopped or restarted ({}); reload gracefully (php-fpm: SIGUSR2) or drain before stopping.",
            a.cause.as_str()
        )
        .into();
    }
    let peers_doing = matches!(
        a.cause,
        Cause::OomKill { .. }
            | Cause::Signal { .. }
            | Cause::Crash { .. }
            | Cause::Exit { .. }
            | Cause::Abort { aborted_by: None }
            | Cause::StaleConnection
            | Cause::NoSocket
    );
    if peers_doing && a.receiver_role == Some(Role::Server) {
        return client_hint(a);
    }
    if let (Cause::Network, Some(n)) = (&a.cause, network) {
        return network_hint(n);
    }
    upstream_hint(a, oom, reason)
}

/// The receiver connected, or which end it is is not known: the peer is taken for its
/// upstream (nginx's 502s).
fn upstream_hint(
    a: &Attribution,
    oom: Option<&OomJson>,
    reason: Option<&str>,
) -> Cow<'static, str> {
    match &a.cause {
        Cause::OomKill { .. } => match oom {
            Some(OomJson {
                scope: "cgroup",
                cgroup: Some(cg),
                ..
            }) => format!(
                "The upstream worker was OOM-killed by the limit of memory cgroup {cg}: raise that limit or cut the worker's memory use (PHP memory_limit, fewer/lighter workers)."
            )
            .into(),
            _ => "The upstream worker was OOM-killed by the global OOM killer: the host ran out of memory; see dmesg and reduce memory use or add memory.".into(),
        },
        Cause::Signal { signal, .. } => match &signal.sender {
            Some(sender) => format!(
                "The upstream worker was killed mid-request by {}: if that is the process manager, a timeout fired (php-fpm request_terminate_timeout, gunicorn --timeout); otherwise check what runs it (deploys, admins, watchdogs).",
                who(sender)
            )
            .into(),
            None => "The upstream worker was killed by a signal rsttrace did not see being sent (it was sent before rsttrace started).".into(),
        },
        Cause::Crash { .. } => "The upstream worker crashed (a fault signal raised by the kernel, or abort()): look for a core dump and the upstream's error log at this time.".into(),
        Cause::Exit { .. } => "The upstream worker exited with the request unread: worker recycling (pm.max_requests, gunicorn --max-requests) racing nginx keepalive, or an exit in the application.".into(),
        Cause::Abort {
            aborted_by: Some(by),
        } => format!(
            "{} destroyed the socket of {} (`ss -K` or bpf_sock_destroy), which reset the connection: look at what ran it.",
            who(by),
            a.peer.as_ref().map_or_else(|| "another process".to_string(), who)
        )
        .into(),
        Cause::Abort { aborted_by: None } => "A live upstream closed the connection with unread data or SO_LINGER 0: check its own limits (request body size, timeouts) and its error log.".into(),
        Cause::StaleConnection => "The upstream had already closed this connection when the request was sent on it (a stale keepalive connection): set keepalive_timeout inside nginx's upstream{} block below the upstream's idle timeout, and keepalive_requests at most the upstream's requests per connection.".into(),
        // Read from the receiver's ECONNREFUSED, with no send traced (before 6.10 the
        // kernel's answer for a closed port is not): a local REJECT looks the same.
        Cause::NoSocket if !a.send_traced => "Nothing was listening at the remote address (the upstream is down or restarting, or nginx points at the wrong port), or a firewall REJECT on this host refused the connection: the reset's sender was not traced.".into(),
        Cause::NoSocket => "Nothing was listening at the remote address: the upstream is down or restarting, or nginx points at the wrong port.".into(),
        Cause::Kernel => kernel_hint(reason),
        Cause::Network => network_unseen_hint(a.unseen).into(),
        Cause::Unknown if a.transport == crate::model::Transport::Tcp => unknown_tcp_hint(a.unseen).into(),
        Cause::Unknown => "A local reset whose sender rsttrace did not see; check for `lost` events and run `rsttrace --check`.".into(),
    }
}

/// A reset from a remote address that no traced send explains and whose segment said
/// nothing: this host's own firewall is among the senders unless the segment could have
/// told it apart.
fn network_unseen_hint(unseen: Unseen) -> &'static str {
    if unseen.segments {
        "The reset came from another host, a device in the path (firewall, load balancer, conntrack) or this host's own firewall: the packet hook that tells them apart is not attached (--no-network-hooks, or refused at start: see rsttrace's warnings). Look at `iptables -S` / `nft list ruleset` here, and capture on the wire."
    } else if unseen.no_socket_sends {
        "The reset came from another host, a device in the path (firewall, load balancer, conntrack), or this host's own firewall or its kernel answering for a closed port (before 6.10 neither is traced, and they look alike). Look at `iptables -S` / `nft list ruleset` here, and capture on the wire."
    } else {
        "The reset came from another host or a device in the path (firewall, load balancer, conntrack): capture on the wire to see which."
    }
}

/// A local TCP reset that no traced send explains, by what this run could not see.
/// Netfilter's REJECT is never traced as a send (nf_send_reset(),
/// net/ipv4/netfilter/nf_reject_ipv4.c), and before 6.10 neither is the kernel's answer for
/// a closed port or connection (tcp_v4_send_reset(), net/ipv4/tcp_ipv4.c); where both
/// are seen, the segment tells a REJECT apart (`local_firewall`), and only a loss is left.
fn unknown_tcp_hint(unseen: Unseen) -> &'static str {
    if unseen.no_socket_sends {
        "A reset from this host that no traced send explains: this kernel (before 6.10) does not trace its own answer for a closed port or a connection already gone, nor can a local firewall REJECT be told apart from it; else a lost sample (check for `lost` events and run `rsttrace --check`)."
    } else if unseen.segments {
        "A reset from this host that no traced send explains: a local firewall REJECT (netfilter's resets are never traced as sends, and the packet hook that tells them apart is not attached: see rsttrace's start-up warnings), or a lost sample (check for `lost` events and run `rsttrace --check`)."
    } else {
        "A reset from this host that neither a traced send nor its segment explains: check for `lost` events and run `rsttrace --check`; if neither shows a gap, rsttrace could not pair this reset (please report it with this line)."
    }
}

/// The receiver accepted the connection: the peer is its client (a browser, a load
/// balancer, a health checker), not an upstream.
fn client_hint(a: &Attribution) -> Cow<'static, str> {
    let receiver = a
        .receiver
        .as_ref()
        .map_or_else(|| "the receiver".to_string(), who);
    let what = match &a.cause {
        Cause::OomKill { .. } => "was OOM-killed",
        Cause::Signal { .. } => "was killed by a signal",
        Cause::Crash { .. } => "crashed",
        Cause::Exit { .. } => "exited",
        Cause::Abort { .. } => {
            "aborted it (closed with unread data or SO_LINGER 0, as load balancers, health checkers and load generators do)"
        }
        Cause::StaleConnection => "had already closed it when data was sent on it",
        Cause::NoSocket => "no longer had a socket for it",
        // hint() sends only the peer's own doings here.
        Cause::Kernel | Cause::Network | Cause::Unknown => "reset it",
    };
    format!(
        "A client of {receiver} {what}: not an upstream failure; nginx logs such a client as 499 or 'while reading client request'."
    )
    .into()
}

/// Kernel resets, by the kernel's own reason (enum sk_rst_reason).
fn kernel_hint(reason: Option<&str>) -> Cow<'static, str> {
    match reason {
        Some("TCP_KEEPALIVE_TIMEOUT") => "The sender's TCP keepalive timed out: the other end, or the path to it, stopped answering (a host down, a firewall or NAT dropping the idle flow); look at that end and the path, or at the keepalive settings (TCP_KEEPIDLE/INTVL/CNT, nginx's so_keepalive).".into(),
        Some("TCP_ABORT_ON_MEMORY") => "The kernel was short of TCP memory and aborted a closing connection: check `ss -s` (orphans), net.ipv4.tcp_mem and net.ipv4.tcp_max_orphans.".into(),
        Some("TCP_STATE") => "A connection its process had closed stayed in FIN_WAIT2 past net.ipv4.tcp_fin_timeout (the other end never closed its side), and the kernel reset it.".into(),
        Some("TCP_RFC7323_PAWS") => "The kernel rejected a segment carrying an older TCP timestamp (PAWS): hosts sharing one NAT address, or a peer that restarted; check NAT on the path and net.ipv4.tcp_timestamps.".into(),
        Some(r @ ("TCP_INVALID_ACK_SEQUENCE" | "TCP_TOO_OLD_ACK" | "TCP_ACK_UNSENT_DATA" | "TCP_OLD_ACK" | "TCP_FLAGS" | "INVALID_SYN")) => format!(
            "The kernel rejected a segment that did not fit the connection ({r}): a restarted peer, a middlebox rewriting sequence numbers, or a reused stale connection."
        )
        .into(),
        Some(r) => format!(
            "The kernel reset the connection itself ({r}): look at socket memory (tcp_mem), keepalive and timestamp settings."
        )
        .into(),
        None => "The kernel reset the connection itself (no reason given by this kernel): look at socket memory (tcp_mem), keepalive and timestamp settings.".into(),
    }
}

/// A reset no local socket sent, by where its segment says it came from.
fn network_hint(n: &NetworkJson) -> Cow<'static, str> {
    match n.origin {
        "local_firewall" => "This host's own firewall forged the reset (netfilter REJECT --reject-with tcp-reset in the receiver's network namespace: the OUTPUT chain, or INPUT on loopback): look at `iptables -S` / `nft list ruleset` there.".into(),
        "local_injected" => "A process on this host injected the reset through a raw or packet socket (it carries an IP ID, which netfilter's REJECT never sets): tcpkill, an IPS or a test tool; `ss -w -p` and `ss -0 -p` list who holds raw and packet sockets.".into(),
        "remote_host" => format!(
            "The peer host's own kernel sent the reset (TTL {} is the flow's): a process there aborted, crashed or restarted, or its firewall rejected the segment; run rsttrace on that host.",
            n.ttl
        )
        .into(),
        "path_device" => {
            let hops = n.hops.map_or_else(
                || "A device on the path".to_string(),
                |h| format!("A device {h} hop(s) closer than the peer"),
            );
            let mut hint = format!(
                "{hops} forged the reset (TTL {} where the flow's is {}): a firewall's REJECT, or a load balancer or NAT expiring an idle flow; if it is an idle timeout, nginx's upstream keepalive_timeout (inside upstream{{}}, not the server one) must be below the device's. Most stateful firewalls and Linux conntrack drop silently at idle expiry rather than reset.",
                n.ttl,
                n.expected_ttl.map_or_else(|| "?".to_string(), |t| t.to_string()),
            );
            if let Some(ns) = &n.forged_in_netns {
                let inspect = match (&ns.name, ns.pid) {
                    (Some(name), _) => format!(": `ip netns exec {name} iptables -S`"),
                    (None, Some(pid)) => format!(": `nsenter -n -t {pid} iptables -S`"),
                    (None, None) => String::new(),
                };
                hint.push_str(&format!(
                    " It was forged in network namespace {} on this host{inspect}.",
                    ns.inode
                ));
            }
            hint.into()
        }
        _ => "The reset came from the network, and no earlier segment of this flow was seen to compare its TTL with (a connection older than rsttrace that stayed idle): capture on the wire to see which device sent it.".into(),
    }
}

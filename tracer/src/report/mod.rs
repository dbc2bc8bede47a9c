//! Rendering: the JSON lines contract (schema_version 1, documented in README.md), the
//! hints ([`hints`]) and the human text form ([`text`]).
mod hints;
mod nginx;
mod recorded;
mod text;

use std::{borrow::Cow, rc::Rc};

use serde::{ser::SerializeStruct as _, Serialize, Serializer};

pub use crate::cgroup::MemcgInfo;
pub use nginx::{
    nginx_json, unexplained_json, LostTotals, NginxJson, SummaryJson, UnexplainedJson,
};
pub use recorded::{record, Recorded};
pub use text::{render_refused_text, render_summary_text, render_text, render_unexplained_text};

use crate::{
    attribute::{hops_away, hops_closer, initial_ttl, SI_KERNEL},
    container::{container_of, Container},
    model::{Attribution, NetworkEvidence, Origin, Refusal, Role, Task, Transport},
    timefmt::Rfc3339,
};

pub const SCHEMA_VERSION: u32 = 1;

/// Facts the renderer needs that the pure engine does not have (names, paths).
pub trait Resolve {
    fn reason_name(&self, reason: u32) -> Option<&str>;
    /// Memory cgroup id -> (path, scope "cgroup" | "global", limit in bytes).
    fn memcg(&self, memcg_id: u64) -> Option<MemcgInfo>;
    fn wall_time_ns(&self, ktime_ns: u64) -> i128;
    /// The cgroup of a process (alive, or seen exiting): shared, since every reset of a
    /// busy worker names it again.
    fn cgroup(&self, _pid: u32) -> Option<Rc<CgroupInfo>> {
        None
    }
    /// The name of interface `ifindex` in network namespace `netns`.
    fn interface(&self, _netns: Option<u32>, _ifindex: u32) -> Option<String> {
        None
    }
    /// The namespace on this host at the other end of interface `ifindex` of `netns` (a
    /// veth's peer), when there is one.
    fn far_side(&self, _netns: Option<u32>, _ifindex: u32) -> Option<NetnsJson> {
        None
    }
}

/// A network namespace on this host: its inode, a process in it (for `nsenter -t`), and
/// its name under /run/netns when it has one.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct NetnsJson {
    pub inode: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A process's cgroup path and the container that path says it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupInfo {
    pub path: String,
    pub container: Option<Container>,
}

impl CgroupInfo {
    pub fn new(path: String) -> Self {
        Self {
            container: container_of(&path),
            path,
        }
    }
}

/// An end of the connection, or a process named as evidence; borrows from the verdict
/// (one JSON line is written per reset, and a storm writes many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessJson<'a> {
    pub pid: u32,
    pub comm: &'a str,
    /// Inode of the network namespace of its socket (for the receiver and the peer).
    pub netns: Option<u32>,
    /// `cgroup` and `container` in the JSON.
    pub cgroup: Option<Rc<CgroupInfo>>,
}

impl Serialize for ProcessJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let cgroup = self.cgroup.as_deref();
        let container = cgroup.and_then(|c| c.container.as_ref());
        let fields = 2
            + usize::from(self.netns.is_some())
            + usize::from(cgroup.is_some())
            + usize::from(container.is_some());
        let mut s = serializer.serialize_struct("ProcessJson", fields)?;
        s.serialize_field("pid", &self.pid)?;
        s.serialize_field("comm", self.comm)?;
        if let Some(netns) = self.netns {
            s.serialize_field("netns", &netns)?;
        }
        if let Some(c) = cgroup {
            s.serialize_field("cgroup", &c.path)?;
        }
        if let Some(c) = container {
            s.serialize_field("container", c)?;
        }
        s.end()
    }
}

impl<'a> From<&'a Task> for ProcessJson<'a> {
    fn from(t: &'a Task) -> Self {
        Self {
            pid: t.pid,
            comm: t.comm.as_str(),
            netns: None,
            cgroup: None,
        }
    }
}

impl<'a> ProcessJson<'a> {
    /// An end of the connection: the process, its socket's namespace, its cgroup and the
    /// container that cgroup says it runs in.
    fn end(t: &'a Task, netns: Option<u32>, r: &dyn Resolve) -> Self {
        Self {
            netns,
            cgroup: r.cgroup(t.pid),
            ..Self::from(t)
        }
    }
}

/// What the RST segment said, for a reset no local socket sent.
#[derive(Serialize, Debug, Clone)]
pub struct NetworkJson {
    pub origin: &'static str,
    pub ttl: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_ttl: Option<u8>,
    /// Where expected_ttl comes from: "flow" (the connection's own earlier segments) or
    /// "peer_address" (the last SYN-ACK from that address: the RST answered a SYN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<&'static str>,
    /// How many hops closer than the peer a path device forged it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hops: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_id: Option<u16>,
    pub tcp_flags: String,
    pub ifindex: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The namespace on this host that forged it, when the forging hop is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forged_in_netns: Option<NetnsJson>,
    /// What the comparison could not settle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

fn tcp_flags(flags: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x01, "FIN"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
    ];
    let set: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    set.join("|")
}

fn network_json(e: &NetworkEvidence, netns: Option<u32>, r: &dyn Resolve) -> NetworkJson {
    let seg = &e.segment;
    let expected = seg.expected.map(|b| b.ttl);
    let mut note = None;
    let hops = match (e.origin, expected) {
        (Origin::PathDevice, Some(exp)) => {
            let hops = hops_closer(seg.ttl, exp);
            if hops.is_none() {
                note = Some(if initial_ttl(seg.ttl) == initial_ttl(exp) {
                    "the RST arrived with a lower TTL than the flow's: asymmetric or changed route"
                } else {
                    "different initial TTL: the device that forged it is not the peer's kind"
                });
            }
            hops
        }
        _ => None,
    };
    // Only the first hop is known to sit at the other end of the ingress interface.
    let forged_in_netns = (e.origin == Origin::PathDevice && hops_away(seg.ttl) == 1)
        .then(|| r.far_side(netns, seg.ifindex))
        .flatten();
    NetworkJson {
        origin: e.origin.as_str(),
        ttl: seg.ttl,
        expected_ttl: expected,
        baseline: seg
            .expected
            .map(|b| if b.same_flow { "flow" } else { "peer_address" }),
        hops,
        ip_id: seg.ip_id,
        tcp_flags: tcp_flags(seg.tcp_flags),
        ifindex: seg.ifindex,
        interface: r.interface(netns, seg.ifindex),
        forged_in_netns,
        note,
    }
}

#[derive(Serialize, Debug, Clone)]
pub struct SignalJson<'a> {
    pub number: i32,
    pub name: &'static str,
    pub code: i32,
    pub code_name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<ProcessJson<'a>>,
}

#[derive(Serialize, Debug, Clone)]
pub struct OomJson<'a> {
    pub scope: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
    pub victim: ProcessJson<'a>,
    pub killer: ProcessJson<'a>,
}

/// `event: "reset"`, borrowing from its verdict.
#[derive(Serialize, Debug, Clone)]
pub struct ResetJson<'a> {
    pub schema_version: u32,
    pub event: &'static str,
    pub time: Rfc3339,
    pub cause: &'static str,
    pub transport: &'static str,
    pub local: &'a str,
    pub remote: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver: Option<ProcessJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver_role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<ProcessJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted_by: Option<ProcessJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom: Option<OomJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_reason: Option<&'a str>,
    pub peer_exiting: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seen_by_receiver: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener_closed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkJson>,
    /// The line nginx wrote in its error.log for this reset (see `--nginx-error-log`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nginx: Option<NginxJson>,
    pub hint: Cow<'static, str>,
}

/// `event: "refused"` / `"timed_out"`: a connection that failed without a reset.
#[derive(Serialize, Debug, Clone)]
pub struct RefusedJson<'a> {
    pub schema_version: u32,
    pub event: &'static str,
    pub time: Rfc3339,
    pub transport: &'static str,
    pub local: String,
    pub remote: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver: Option<ProcessJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver_role: Option<&'static str>,
    pub errno: i32,
    pub error: &'static str,
    pub hint: String,
}

pub fn refused_json<'a>(f: &'a Refusal, r: &dyn Resolve) -> RefusedJson<'a> {
    let (event, error, hint) = match f.error {
        111 => (
            "refused",
            "ECONNREFUSED",
            "The connection was refused without a reset: an ICMP port unreachable, from a REJECT rule (iptables --reject-with icmp-port-unreachable) or kube-proxy answering for a Service with no ready endpoints; check the Service's endpoints and the firewall rules on the path.",
        ),
        _ => (
            "timed_out",
            "ETIMEDOUT",
            "The kernel gave up on the connection: its SYNs or data went unanswered (dropped silently by a firewall or a dead peer); look for DROP rules and at the peer's health.",
        ),
    };
    RefusedJson {
        schema_version: SCHEMA_VERSION,
        event,
        time: Rfc3339(r.wall_time_ns(f.time_ns)),
        transport: "tcp",
        local: f.local.to_string(),
        remote: f.remote.to_string(),
        receiver: f.receiver.as_ref().map(|t| ProcessJson::end(t, f.netns, r)),
        receiver_role: f.receiver_role.map(Role::as_str),
        errno: f.error,
        error,
        hint: hint.into(),
    }
}

#[derive(Serialize, Debug, Clone)]
pub struct LostJson {
    pub schema_version: u32,
    pub event: &'static str,
    pub time: Rfc3339,
    /// Kernel samples dropped since the previous `lost` event (ring buffer full).
    pub count: u64,
    /// Dropped since start.
    pub total: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_errors: Option<u64>,
    /// Runs of rsttrace's programs the kernel skipped since the previous `lost` event (a
    /// tracing program does not run while another runs on its CPU); each may have been a
    /// sample. Absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_runs: Option<u64>,
    /// Skipped since start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_runs_total: Option<u64>,
}

/// Appends `value` as one JSON line to `out`: every line rsttrace prints goes through here
/// (sonic-rs: the same Serialize impls as serde_json, and the same bytes, as the goldens
/// check, with SIMD string escaping).
pub fn json_line<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> std::io::Result<()> {
    sonic_rs::to_writer(&mut *out, value).map_err(std::io::Error::other)?;
    out.push(b'\n');
    Ok(())
}

pub fn reset_json<'a>(a: &'a Attribution, r: &'a dyn Resolve) -> ResetJson<'a> {
    let oom = a.cause.oom().map(|o| {
        let info = r.memcg(o.memcg_id);
        let (scope, cgroup, limit) = match &info {
            Some(MemcgInfo {
                limited_by: Some(by),
                limit_bytes,
                ..
            }) => ("cgroup", Some(by.clone()), *limit_bytes),
            Some(MemcgInfo { path, .. }) => ("global", Some(path.clone()), None),
            None => ("global", None, None),
        };
        OomJson {
            scope,
            cgroup,
            limit_bytes: limit,
            victim: (&o.victim).into(),
            killer: (&o.killer).into(),
        }
    });
    let kernel_reason = a.kernel_reason.and_then(|v| r.reason_name(v));
    let network = a
        .network
        .as_ref()
        .map(|e| network_json(e, a.receiver_netns, r));
    let hint = hints::hint(a, oom.as_ref(), kernel_reason, network.as_ref());
    ResetJson {
        schema_version: SCHEMA_VERSION,
        event: "reset",
        time: Rfc3339(r.wall_time_ns(a.time_ns)),
        cause: a.cause.as_str(),
        transport: a.transport.as_str(),
        local: &a.local,
        remote: &a.remote,
        receiver: a
            .receiver
            .as_ref()
            .map(|t| ProcessJson::end(t, a.receiver_netns, r)),
        receiver_role: a.receiver_role.map(Role::as_str),
        peer: a
            .peer
            .as_ref()
            .map(|t| ProcessJson::end(t, a.peer_netns, r)),
        aborted_by: a.cause.aborted_by().map(Into::into),
        signal: a.cause.signal().map(|s| SignalJson {
            number: s.number,
            name: signal_name(s.number),
            code: s.code,
            code_name: signal_code_name(s.number, s.code),
            sender: s.sender.as_ref().map(Into::into),
        }),
        exit_code: a.cause.exit_code(),
        oom,
        kernel_reason,
        peer_exiting: a.peer_exiting,
        seen_by_receiver: a.seen_by_receiver,
        listener_closed: (a.transport == Transport::Unix).then_some(a.listener_closed),
        network,
        nginx: None,
        hint,
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    const NAMES: [&str; 32] = [
        "SIG0",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(sig)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("SIGRT")
}

/// si_code names (include/uapi/asm-generic/siginfo.h).
pub fn signal_code_name(sig: i32, code: i32) -> &'static str {
    match code {
        0 => "SI_USER",
        SI_KERNEL => "SI_KERNEL",
        -1 => "SI_QUEUE",
        -2 => "SI_TIMER",
        -3 => "SI_MESGQ",
        -4 => "SI_ASYNCIO",
        -5 => "SI_SIGIO",
        -6 => "SI_TKILL",
        1 if sig == 11 => "SEGV_MAPERR",
        2 if sig == 11 => "SEGV_ACCERR",
        1 if sig == 7 => "BUS_ADRALN",
        2 if sig == 7 => "BUS_ADRERR",
        1 if sig == 8 => "FPE_INTDIV",
        c if c > 0 => "fault",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cause, CauseKind, OomEvidence, SignalEvidence};

    struct Fixed;
    impl Resolve for Fixed {
        fn reason_name(&self, reason: u32) -> Option<&str> {
            (reason == 11).then_some("TCP_ABORT_ON_CLOSE")
        }
        fn memcg(&self, id: u64) -> Option<MemcgInfo> {
            (id == 7).then(|| MemcgInfo {
                path: "/pool".into(),
                limited_by: Some("/pool".into()),
                limit_bytes: Some(64 << 20),
            })
        }
        fn wall_time_ns(&self, ktime_ns: u64) -> i128 {
            1_700_000_000_000_000_000 + ktime_ns as i128
        }
    }

    fn task(pid: u32, comm: &str) -> Task {
        Task {
            pid,
            tid: pid,
            comm: comm.into(),
        }
    }

    fn attribution(cause: Cause) -> Attribution {
        Attribution {
            time_ns: 5,
            cause,
            transport: Transport::Tcp,
            local: "127.0.0.1:43210".into(),
            remote: "127.0.0.1:9000".into(),
            receiver_sock: 1,
            seen_by_receiver: Some(true),
            seen_ns: None,
            listener_closed: false,
            receiver: Some(task(10, "nginx")),
            receiver_role: None,
            peer: Some(task(20, "php-fpm8.2")),
            kernel_reason: Some(11),
            peer_exiting: true,
            receiver_netns: None,
            peer_netns: None,
            network: None,
            send_traced: false,
            unseen: Default::default(),
        }
    }

    #[test]
    fn json_lines_are_what_serde_json_writes() {
        // Whatever a comm or a path holds: quotes, backslashes, control bytes, non-ASCII.
        let tricky = "a\"b\\c\n\t\r\u{1}\u{1f}\u{7f} é 😀 </script>";
        let p = ProcessJson {
            pid: 7,
            comm: tricky,
            netns: Some(4026531833),
            cgroup: None,
        };
        let floats =
            serde_json::json!({"duration_s": 5.877, "tiny": 1e-7, "big": 1.5e300, "n": -3});
        for value in [serde_json::to_value(&p).expect("json"), floats] {
            let mut line = Vec::new();
            json_line(&mut line, &value).expect("json line");
            let expected = serde_json::to_string(&value).expect("json") + "\n";
            assert_eq!(String::from_utf8(line).expect("utf-8"), expected);
        }
        let mut line = Vec::new();
        json_line(&mut line, &p).expect("json line");
        assert_eq!(
            String::from_utf8(line).expect("utf-8"),
            serde_json::to_string(&p).expect("json") + "\n"
        );
    }

    #[test]
    fn json_has_the_documented_field_names() {
        let a = attribution(Cause::Signal {
            signal: SignalEvidence {
                number: 9,
                code: 0,
                sender: Some(task(30, "kill")),
            },
            exit_code: None,
        });
        let v = serde_json::to_value(reset_json(&a, &Fixed)).expect("json");
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["event"], "reset");
        assert_eq!(v["time"], "2023-11-14T22:13:20.000000005Z");
        assert_eq!(v["cause"], "signal");
        assert_eq!(v["transport"], "tcp");
        assert_eq!(v["local"], "127.0.0.1:43210");
        assert_eq!(v["remote"], "127.0.0.1:9000");
        assert_eq!(v["receiver"]["comm"], "nginx");
        assert_eq!(v["peer"]["pid"], 20);
        assert_eq!(v["signal"]["name"], "SIGKILL");
        assert_eq!(v["signal"]["code_name"], "SI_USER");
        assert_eq!(v["signal"]["sender"]["pid"], 30);
        assert_eq!(v["kernel_reason"], "TCP_ABORT_ON_CLOSE");
        assert!(v.get("exit_code").is_none());
        assert_eq!(v["seen_by_receiver"], true);
        assert!(v.get("listener_closed").is_none(), "unix only");
        assert!(v.get("oom").is_none());
        assert!(v["hint"]
            .as_str()
            .is_some_and(|h| h.contains("kill (pid 30)")));
    }

    #[test]
    fn oom_scope_comes_from_the_memcg() {
        let oom_in = |memcg_id| Cause::OomKill {
            oom: OomEvidence {
                victim: task(20, "php-fpm8.2"),
                killer: task(20, "php-fpm8.2"),
                memcg_id,
            },
            signal: SignalEvidence {
                number: 9,
                code: SI_KERNEL,
                sender: Some(task(20, "php-fpm8.2")),
            },
        };
        let a = attribution(oom_in(7));
        let v = serde_json::to_value(reset_json(&a, &Fixed)).expect("json");
        assert_eq!(v["oom"]["scope"], "cgroup");
        assert_eq!(v["oom"]["cgroup"], "/pool");
        assert_eq!(v["oom"]["limit_bytes"], 64 << 20);
        let a = attribution(oom_in(1));
        let v = serde_json::to_value(reset_json(&a, &Fixed)).expect("json");
        assert_eq!(v["oom"]["scope"], "global");
    }

    #[test]
    fn every_cause_has_a_one_sentence_hint() {
        let signal = SignalEvidence {
            number: 9,
            code: 0,
            sender: None,
        };
        let oom = OomEvidence {
            victim: task(20, "php-fpm8.2"),
            killer: task(20, "php-fpm8.2"),
            memcg_id: 7,
        };
        let causes = [
            Cause::OomKill {
                oom,
                signal: signal.clone(),
            },
            Cause::Signal {
                signal: signal.clone(),
                exit_code: None,
            },
            Cause::Crash { signal },
            Cause::Exit { exit_code: Some(3) },
            Cause::Abort { aborted_by: None },
            Cause::StaleConnection,
            Cause::NoSocket,
            Cause::Kernel,
            Cause::Network,
            Cause::Unknown,
        ];
        let kinds: Vec<CauseKind> = causes.iter().map(Cause::kind).collect();
        assert_eq!(kinds, CauseKind::ALL, "every cause is covered");
        for cause in causes {
            let cause_name = cause.as_str();
            let verdict = attribution(cause);
            let j = reset_json(&verdict, &Fixed);
            assert!(
                !j.hint.is_empty() && j.hint.ends_with('.'),
                "{cause_name}: {}",
                j.hint
            );
            assert!(render_text(&j).contains(cause_name));
        }
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(40), "SIGRT");
        assert_eq!(signal_name(-1), "SIGRT");
        assert_eq!(signal_code_name(11, 1), "SEGV_MAPERR");
        assert_eq!(signal_code_name(9, 0x80), "SI_KERNEL");
    }
}

//! The catalogue of kernel hooks: each is one value naming its program, where it attaches,
//! how its presence is probed, which capability it serves and what is lost without it.
//! Resolving the kernel's facts, attaching and `--check` all walk [`HOOKS`]: adding a hook
//! is adding one entry here (and its program, event type, decoder arm and engine room).
use tracer_ebpf::{event::EventKind, Config, NO_OFFSET};

use crate::record::RecordFormat;

/// What rsttrace can tell; every hook serves one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    ResetsReceived,
    ResetSenders,
    Signals,
    Deaths,
    OomKills,
    Forks,
    SocketOwners,
    ReceiverErrors,
    UnixListeners,
    NetworkEvidence,
    Refusals,
}

impl Capability {
    pub const ALL: [Capability; 11] = [
        Capability::ResetsReceived,
        Capability::ResetSenders,
        Capability::Signals,
        Capability::Deaths,
        Capability::OomKills,
        Capability::Forks,
        Capability::SocketOwners,
        Capability::ReceiverErrors,
        Capability::UnixListeners,
        Capability::NetworkEvidence,
        Capability::Refusals,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Capability::ResetsReceived => "TCP resets received",
            Capability::ResetSenders => "who sent a TCP reset, and the kernel's reason",
            Capability::Signals => "who killed a process (signals)",
            Capability::Deaths => "process deaths, exit codes, memory cgroups",
            Capability::OomKills => "OOM kills",
            Capability::Forks => "following --pid children",
            Capability::SocketOwners => "socket owners (receiver, peer)",
            Capability::ReceiverErrors => "unix-socket resets, seen_by_receiver",
            Capability::UnixListeners => "unix listener owners",
            Capability::NetworkEvidence => {
                "where a reset no local process sent came from (TTL, IP ID, interface)"
            }
            Capability::Refusals => "connections refused or timed out without a reset",
        }
    }

    /// How rsttrace still serves the capability when no hook does.
    pub fn fallback(self) -> Option<&'static str> {
        match self {
            Capability::UnixListeners => Some("/proc/net/unix, rescanned every second"),
            _ => None,
        }
    }
}

/// Where a hook's program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A classic tracepoint, probed in tracefs (`events/<category>/<event>`).
    Tracepoint {
        category: &'static str,
        event: &'static str,
    },
    /// A raw tracepoint: the tracepoint's own arguments (pointers to kernel objects)
    /// instead of its record, which the kernel then does not build; probed in tracefs like
    /// the classic one, its argument count checked in BTF (`btf_trace_<event>`).
    RawTracepoint {
        category: &'static str,
        event: &'static str,
        args: usize,
    },
    /// cgroup_skb ingress at the root of the cgroup2 hierarchy, by bpf_link (it coexists
    /// with programs already there and detaches when rsttrace exits, even killed): every
    /// segment any local socket receives.
    CgroupSkbIngress,
}

impl Attach {
    pub fn name(&self) -> String {
        match self {
            Attach::Tracepoint { category, event } => format!("{category}:{event}"),
            Attach::RawTracepoint {
                category, event, ..
            } => format!("raw {category}:{event}"),
            Attach::CgroupSkbIngress => "cgroup_skb/ingress (root cgroup)".to_string(),
        }
    }
}

/// When an available hook is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Wherever it exists.
    Always,
    /// Socket-level tracepoints (sock:sock_recv_length/sock_send_length, 6.x): preferred
    /// to the syscall tracepoints where both sets exist.
    SocketIo,
    /// Syscall tracepoints: only where the socket-level ones are missing, because while
    /// any is attached every syscall of every process takes the kernel's slower traced path.
    Syscall,
    /// A syscall-entry hook that only records its syscall's arguments for the exit hook:
    /// only where the exit cannot read them from the saved registers.
    ArgumentRecorder,
}

/// Why a hook's record does not fit what its program expects (it is then not attached).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfit(pub String);

pub struct Hook {
    /// The program's name in the eBPF object.
    pub program: &'static str,
    pub attach: Attach,
    pub capability: Capability,
    pub tier: Tier,
    /// Without it rsttrace cannot do its job (start fails).
    pub required: bool,
    /// What it gives, and so what is lost without it.
    pub purpose: &'static str,
    /// The event whose tracepoint record it copies verbatim for user space to decode.
    pub record: Option<EventKind>,
    /// Reads the record offsets its program needs into `Config`.
    pub configure: fn(&RecordFormat, &mut Config) -> Result<(), Unfit>,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("program", &self.program)
            .field("attach", &self.attach)
            .finish_non_exhaustive()
    }
}

fn offset(format: &RecordFormat, name: &str) -> u32 {
    format
        .offset_of(name)
        .and_then(|o| u32::try_from(o).ok())
        .unwrap_or(NO_OFFSET)
}

/// Sets a `Config` offset that several hooks share (one program serves them all), or
/// refuses a hook whose record puts the field elsewhere.
fn shared_offset(slot: &mut u32, format: &RecordFormat, name: &str) -> Result<(), Unfit> {
    let here = offset(format, name);
    if *slot == NO_OFFSET {
        *slot = here;
    }
    if here != *slot {
        return Err(Unfit(format!(
            "its `{name}` field lies elsewhere than in the other syscall records"
        )));
    }
    Ok(())
}

fn nothing(_: &RecordFormat, _: &mut Config) -> Result<(), Unfit> {
    Ok(())
}

const fn tracepoint(category: &'static str, event: &'static str) -> Attach {
    Attach::Tracepoint { category, event }
}

const fn raw_tracepoint(category: &'static str, event: &'static str, args: usize) -> Attach {
    Attach::RawTracepoint {
        category,
        event,
        args,
    }
}

/// A syscall exit hook of a socket call that can fail with ECONNRESET.
const fn socket_call_exit(
    program: &'static str,
    event: &'static str,
    purpose: &'static str,
) -> Hook {
    Hook {
        program,
        attach: tracepoint("syscalls", event),
        capability: Capability::ReceiverErrors,
        tier: Tier::Syscall,
        required: false,
        purpose,
        record: None,
        configure: |f, c| shared_offset(&mut c.syscall_ret, f, "ret"),
    }
}

/// The entry hook recording the arguments of a socket call for its exit hook.
const fn socket_call_enter(
    program: &'static str,
    event: &'static str,
    purpose: &'static str,
) -> Hook {
    Hook {
        program,
        attach: tracepoint("syscalls", event),
        capability: Capability::ReceiverErrors,
        tier: Tier::ArgumentRecorder,
        required: false,
        purpose,
        record: None,
        configure: |f, c| shared_offset(&mut c.sys_enter_fd, f, "fd"),
    }
}

const SEEN_RECV: &str =
    "whether the receiver saw the reset (recv() returning ECONNRESET); unix-socket resets";
const SEEN_RECVMSG: &str =
    "whether the receiver saw the reset (recvmsg() returning ECONNRESET); unix-socket resets";
const SEEN_READV: &str =
    "whether the receiver saw the reset (readv() returning ECONNRESET); unix-socket resets";
const SEEN_SEND: &str =
    "whether the receiver saw the reset (send() returning ECONNRESET); unix-socket resets";
const SEEN_SENDMSG: &str =
    "whether the receiver saw the reset (sendmsg() returning ECONNRESET); unix-socket resets";
const SEEN_WRITEV: &str =
    "whether the receiver saw the reset (writev() returning ECONNRESET); unix-socket resets";
const SEEN_CONNECT: &str =
    "whether the receiver saw the reset (connect() returning ECONNRESET); unix-socket resets";
const SEEN_SO_ERROR: &str = "whether the receiver saw a refused non-blocking connect (SO_ERROR)";
const ACCEPTED: &str = "which process accepted a socket (the peer)";

pub static HOOKS: &[Hook] = &[
    Hook {
        program: "tcp_receive_reset",
        attach: tracepoint("tcp", "tcp_receive_reset"),
        capability: Capability::ResetsReceived,
        tier: Tier::Always,
        required: true,
        purpose: "resets received by local sockets",
        record: Some(EventKind::ResetReceived),
        configure: |f, c| {
            c.recv_reset_skaddr = offset(f, "skaddr");
            Ok(())
        },
    },
    Hook {
        program: "tcp_send_reset",
        attach: tracepoint("tcp", "tcp_send_reset"),
        capability: Capability::ResetSenders,
        tier: Tier::Always,
        required: true,
        purpose: "resets sent by this host, with the sending task and reason",
        record: Some(EventKind::ResetSent),
        configure: |f, c| {
            c.send_reset_skaddr = offset(f, "skaddr");
            c.send_reset_skbaddr = offset(f, "skbaddr");
            Ok(())
        },
    },
    Hook {
        program: "signal_generate",
        attach: tracepoint("signal", "signal_generate"),
        capability: Capability::Signals,
        tier: Tier::Always,
        required: false,
        purpose: "who sent a fatal signal",
        record: Some(EventKind::Signal),
        configure: |f, c| {
            c.signal_sig = offset(f, "sig");
            Ok(())
        },
    },
    Hook {
        program: "sched_process_exit",
        attach: tracepoint("sched", "sched_process_exit"),
        capability: Capability::Deaths,
        tier: Tier::Always,
        required: false,
        purpose: "process deaths and exit codes",
        record: None,
        configure: |f, c| {
            c.exit_group_dead = offset(f, "group_dead");
            Ok(())
        },
    },
    Hook {
        program: "sched_process_fork",
        attach: tracepoint("sched", "sched_process_fork"),
        capability: Capability::Forks,
        tier: Tier::Always,
        required: false,
        purpose: "following watched processes' children",
        record: Some(EventKind::Fork),
        configure: nothing,
    },
    Hook {
        program: "oom_mark_victim",
        attach: tracepoint("oom", "mark_victim"),
        capability: Capability::OomKills,
        tier: Tier::Always,
        required: false,
        purpose: "OOM kills",
        record: Some(EventKind::OomVictim),
        configure: nothing,
    },
    Hook {
        program: "inet_sock_set_state",
        attach: raw_tracepoint("sock", "inet_sock_set_state", 3),
        capability: Capability::SocketOwners,
        tier: Tier::Always,
        required: false,
        purpose: "which process connected a socket (the receiver)",
        record: None,
        configure: nothing,
    },
    Hook {
        program: "tcp_destroy_sock",
        attach: raw_tracepoint("tcp", "tcp_destroy_sock", 1),
        capability: Capability::SocketOwners,
        tier: Tier::Always,
        required: false,
        purpose:
            "forgetting a socket's owner when the kernel frees it (its address is reused at once)",
        record: None,
        configure: nothing,
    },
    Hook {
        program: "sock_recv_length",
        attach: raw_tracepoint("sock", "sock_recv_length", 3),
        capability: Capability::ReceiverErrors,
        tier: Tier::SocketIo,
        required: false,
        purpose:
            "receives failing with ECONNRESET (seen_by_receiver, unix-socket resets), socket users",
        record: None,
        configure: nothing,
    },
    Hook {
        program: "sock_send_length",
        attach: raw_tracepoint("sock", "sock_send_length", 3),
        capability: Capability::ReceiverErrors,
        tier: Tier::SocketIo,
        required: false,
        purpose:
            "sends failing with ECONNRESET (seen_by_receiver, unix-socket resets), socket users",
        record: None,
        configure: nothing,
    },
    Hook {
        program: "sys_exit_accept4",
        attach: tracepoint("syscalls", "sys_exit_accept4"),
        capability: Capability::SocketOwners,
        tier: Tier::Syscall,
        required: false,
        purpose: ACCEPTED,
        record: None,
        configure: |f, c| shared_offset(&mut c.syscall_ret, f, "ret"),
    },
    Hook {
        program: "sys_exit_accept",
        attach: tracepoint("syscalls", "sys_exit_accept"),
        capability: Capability::SocketOwners,
        tier: Tier::Syscall,
        required: false,
        purpose: ACCEPTED,
        record: None,
        configure: |f, c| shared_offset(&mut c.syscall_ret, f, "ret"),
    },
    socket_call_enter("sys_enter_recvfrom", "sys_enter_recvfrom", SEEN_RECV),
    socket_call_exit("sys_exit_recvfrom", "sys_exit_recvfrom", SEEN_RECV),
    socket_call_enter("sys_enter_recvmsg", "sys_enter_recvmsg", SEEN_RECVMSG),
    socket_call_exit("sys_exit_recvmsg", "sys_exit_recvmsg", SEEN_RECVMSG),
    socket_call_enter("sys_enter_readv", "sys_enter_readv", SEEN_READV),
    socket_call_exit("sys_exit_readv", "sys_exit_readv", SEEN_READV),
    socket_call_enter("sys_enter_sendto", "sys_enter_sendto", SEEN_SEND),
    socket_call_exit("sys_exit_sendto", "sys_exit_sendto", SEEN_SEND),
    socket_call_enter("sys_enter_sendmsg", "sys_enter_sendmsg", SEEN_SENDMSG),
    socket_call_exit("sys_exit_sendmsg", "sys_exit_sendmsg", SEEN_SENDMSG),
    socket_call_enter("sys_enter_writev", "sys_enter_writev", SEEN_WRITEV),
    socket_call_exit("sys_exit_writev", "sys_exit_writev", SEEN_WRITEV),
    socket_call_enter("sys_enter_connect", "sys_enter_connect", SEEN_CONNECT),
    socket_call_exit("sys_exit_connect", "sys_exit_connect", SEEN_CONNECT),
    Hook {
        program: "sys_enter_getsockopt",
        attach: tracepoint("syscalls", "sys_enter_getsockopt"),
        capability: Capability::ReceiverErrors,
        tier: Tier::ArgumentRecorder,
        required: false,
        purpose: SEEN_SO_ERROR,
        record: None,
        configure: |f, c| {
            c.getsockopt_level = offset(f, "level");
            c.getsockopt_optname = offset(f, "optname");
            c.getsockopt_optval = offset(f, "optval");
            shared_offset(&mut c.sys_enter_fd, f, "fd")
        },
    },
    socket_call_exit("sys_exit_getsockopt", "sys_exit_getsockopt", SEEN_SO_ERROR),
    Hook {
        program: "sys_enter_listen",
        attach: tracepoint("syscalls", "sys_enter_listen"),
        capability: Capability::UnixListeners,
        tier: Tier::Syscall,
        required: false,
        purpose: "which process owns a unix listening socket",
        record: None,
        configure: |f, c| shared_offset(&mut c.sys_enter_fd, f, "fd"),
    },
    Hook {
        program: "rst_evidence",
        attach: Attach::CgroupSkbIngress,
        capability: Capability::NetworkEvidence,
        tier: Tier::Always,
        required: false,
        purpose: "the TTL, IP ID, flags and interface of each RST a local socket receives, and its flow's baseline TTL",
        record: None,
        configure: nothing,
    },
    Hook {
        program: "inet_sk_error_report",
        attach: raw_tracepoint("sock", "inet_sk_error_report", 1),
        capability: Capability::Refusals,
        tier: Tier::Always,
        required: false,
        purpose: "connections refused by ICMP or timed out, which no RST explains",
        record: None,
        configure: nothing,
    },
];

/// The hook whose program is `name`.
pub fn by_program(name: &str) -> Option<&'static Hook> {
    HOOKS.iter().find(|h| h.program == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_appears_once_and_every_capability_is_served() {
        for (i, h) in HOOKS.iter().enumerate() {
            assert!(
                HOOKS[i + 1..].iter().all(|o| o.program != h.program),
                "{} twice",
                h.program
            );
        }
        for c in Capability::ALL {
            assert!(HOOKS.iter().any(|h| h.capability == c), "{c:?} unserved");
        }
    }

    #[test]
    fn records_fit_their_event_types() {
        for h in HOOKS {
            if let Some(kind) = h.record {
                assert!(
                    kind.record_capacity() > 0,
                    "{} copies into {kind:?}",
                    h.program
                );
            }
        }
    }
}

//! Everything that depends on the running kernel, resolved once at start and passed down
//! as data: tracepoint record layouts (tracefs), struct offsets and enum names (BTF).
use std::{collections::HashMap, path::Path};

use anyhow::{bail, Context as _, Result};
use btf_rs::{Backend, Btf, Type};
use tracer_ebpf::{kind, Config, NO_OFFSET};

use crate::tracefs::{RecordFormat, Tracefs};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A tracepoint rsttrace attaches to, and the program serving it.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    pub category: &'static str,
    pub event: &'static str,
    pub program: &'static str,
    /// Sample kind the program emits (None: the program keeps state in the kernel only).
    pub kind: Option<u32>,
    /// Without it rsttrace cannot do its job.
    pub required: bool,
    pub purpose: &'static str,
}

pub const HOOKS: &[Hook] = &[
    Hook {
        category: "tcp",
        event: "tcp_receive_reset",
        program: "tcp_receive_reset",
        kind: Some(kind::RESET_RECEIVED),
        required: true,
        purpose: "resets received by local sockets",
    },
    Hook {
        category: "tcp",
        event: "tcp_send_reset",
        program: "tcp_send_reset",
        kind: Some(kind::RESET_SENT),
        required: true,
        purpose: "resets sent by this host, with the sending task and reason",
    },
    Hook {
        category: "signal",
        event: "signal_generate",
        program: "signal_generate",
        kind: Some(kind::SIGNAL),
        required: false,
        purpose: "who sent a fatal signal",
    },
    Hook {
        category: "sched",
        event: "sched_process_exit",
        program: "sched_process_exit",
        kind: Some(kind::EXIT),
        required: false,
        purpose: "process deaths and exit codes",
    },
    Hook {
        category: "sched",
        event: "sched_process_fork",
        program: "sched_process_fork",
        kind: Some(kind::FORK),
        required: false,
        purpose: "following watched processes' children",
    },
    Hook {
        category: "oom",
        event: "mark_victim",
        program: "oom_mark_victim",
        kind: Some(kind::OOM_VICTIM),
        required: false,
        purpose: "OOM kills",
    },
    Hook {
        category: "sock",
        event: "inet_sock_set_state",
        program: "inet_sock_set_state",
        kind: None,
        required: false,
        purpose: "which process connected a socket (the receiver)",
    },
    Hook {
        category: "sock",
        event: "sock_recv_length",
        program: "sock_recv_length",
        kind: None,
        required: false,
        purpose: "receives failing with ECONNRESET (seen_by_receiver, unix-socket resets), socket users",
    },
    Hook {
        category: "sock",
        event: "sock_send_length",
        program: "sock_send_length",
        kind: None,
        required: false,
        purpose: "sends failing with ECONNRESET (seen_by_receiver, unix-socket resets), socket users",
    },
    Hook {
        category: "syscalls",
        event: "sys_exit_accept4",
        program: "sys_exit_accept4",
        kind: None,
        required: false,
        purpose: "which process accepted a socket (the peer)",
    },
    Hook {
        category: "syscalls",
        event: "sys_exit_accept",
        program: "sys_exit_accept",
        kind: None,
        required: false,
        purpose: "which process accepted a socket (the peer)",
    },
    Hook {
        category: "syscalls",
        event: "sys_enter_recvfrom",
        program: "sys_enter_recvfrom",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (recv() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_exit_recvfrom",
        program: "sys_exit_recvfrom",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (recv() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_enter_recvmsg",
        program: "sys_enter_recvmsg",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (recvmsg() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_exit_recvmsg",
        program: "sys_exit_recvmsg",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (recvmsg() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_enter_readv",
        program: "sys_enter_readv",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (readv() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_exit_readv",
        program: "sys_exit_readv",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (readv() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_enter_sendto",
        program: "sys_enter_sendto",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (send() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_exit_sendto",
        program: "sys_exit_sendto",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (send() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_enter_sendmsg",
        program: "sys_enter_sendmsg",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (sendmsg() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_exit_sendmsg",
        program: "sys_exit_sendmsg",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (sendmsg() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_enter_writev",
        program: "sys_enter_writev",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (writev() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_exit_writev",
        program: "sys_exit_writev",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (writev() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_enter_connect",
        program: "sys_enter_connect",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (connect() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_exit_connect",
        program: "sys_exit_connect",
        kind: None,
        required: false,
        purpose: "whether the receiver saw the reset (connect() returning ECONNRESET); unix-socket resets",
    },
    Hook {
        category: "syscalls",
        event: "sys_enter_getsockopt",
        program: "sys_enter_getsockopt",
        kind: None,
        required: false,
        purpose: "whether the receiver saw a refused non-blocking connect (SO_ERROR)",
    },
    Hook {
        category: "syscalls",
        event: "sys_exit_getsockopt",
        program: "sys_exit_getsockopt",
        kind: None,
        required: false,
        purpose: "whether the receiver saw a refused non-blocking connect (SO_ERROR)",
    },
    Hook {
        category: "syscalls",
        event: "sys_enter_listen",
        program: "sys_enter_listen",
        kind: None,
        required: false,
        purpose: "which process owns a unix listening socket",
    },
];

/// Record layouts of the events user space decodes, by sample kind.
#[derive(Clone, Debug, Default)]
pub struct Layouts {
    pub by_kind: HashMap<u32, RecordFormat>,
}

impl Layouts {
    pub fn get(&self, kind: u32) -> Option<&RecordFormat> {
        self.by_kind.get(&kind)
    }
}

#[derive(Clone, Debug)]
pub struct KernelFacts {
    pub config: Config,
    pub layouts: Layouts,
    /// enum sk_rst_reason value -> name (empty on kernels without reasons).
    pub reset_reasons: HashMap<u32, String>,
    /// Hooks whose tracepoint exists here.
    pub available: Vec<Hook>,
    /// Optional hooks missing here, with what is lost.
    pub missing: Vec<Hook>,
    /// Struct offsets BTF did not give (the capability degrades, the run goes on).
    pub degraded: Vec<String>,
    /// Syscall hooks this kernel has but rsttrace does not attach, because socket-level
    /// tracepoints serve instead.
    pub syscall_hooks: Vec<Hook>,
}

/// Whether a hook only records a syscall's arguments for its exit hook, which reads them
/// from the saved registers instead where it can (Config::regs_arg).
pub fn is_argument_recorder(hook: &Hook) -> bool {
    hook.category == "syscalls"
        && hook.event.starts_with("sys_enter_")
        && hook.event != "sys_enter_listen"
}

impl KernelFacts {
    pub fn resolve() -> Result<Self> {
        let tracefs = Tracefs::locate()?;
        if !Path::new(VMLINUX_BTF).exists() {
            bail!(
                "this kernel exposes no BTF ({VMLINUX_BTF} is missing): rsttrace needs a kernel \
                 built with CONFIG_DEBUG_INFO_BTF=y (the default on Debian 11+, Ubuntu 20.10+, RHEL 8.2+)"
            );
        }
        let btf = open_vmlinux_btf()?;

        let mut config = Config::EMPTY;
        let mut layouts = Layouts::default();
        let mut available = Vec::new();
        let mut missing = Vec::new();
        for hook in HOOKS {
            if !tracefs.exists(hook.category, hook.event) {
                if hook.required {
                    bail!(
                        "tracepoint {}:{} does not exist on this kernel; rsttrace cannot see {}",
                        hook.category,
                        hook.event,
                        hook.purpose
                    );
                }
                missing.push(*hook);
                continue;
            }
            let format = tracefs.format(hook.category, hook.event)?;
            let off = |name: &str| {
                format
                    .offset_of(name)
                    .and_then(|o| u32::try_from(o).ok())
                    .unwrap_or(NO_OFFSET)
            };
            match hook.program {
                "tcp_send_reset" => config.send_reset_skaddr = off("skaddr"),
                "tcp_receive_reset" => config.recv_reset_skaddr = off("skaddr"),
                "signal_generate" => config.signal_sig = off("sig"),
                "inet_sock_set_state" => {
                    config.set_state_skaddr = off("skaddr");
                    config.set_state_oldstate = off("oldstate");
                    config.set_state_newstate = off("newstate");
                    config.set_state_protocol = off("protocol");
                }
                "sys_exit_accept4" | "sys_exit_accept" => config.syscall_ret = off("ret"),
                "sock_recv_length" | "sock_send_length" => {
                    config.sock_io_sk = off("sk");
                    config.sock_io_family = off("family");
                    config.sock_io_ret = off("ret");
                }
                p if p.starts_with("sys_exit_") => {
                    if config.syscall_ret == NO_OFFSET {
                        config.syscall_ret = off("ret");
                    }
                    if off("ret") != config.syscall_ret {
                        missing.push(*hook);
                        continue;
                    }
                }
                "sys_enter_getsockopt" => {
                    config.getsockopt_level = off("level");
                    config.getsockopt_optname = off("optname");
                    config.getsockopt_optval = off("optval");
                    if config.sys_enter_fd == NO_OFFSET {
                        config.sys_enter_fd = off("fd");
                    }
                    if off("fd") != config.sys_enter_fd {
                        missing.push(*hook);
                        continue;
                    }
                }
                p if p.starts_with("sys_enter_") => {
                    // One offset serves every syscall program (the first argument of
                    // each); a kernel where they differ loses that hook only.
                    if config.sys_enter_fd == NO_OFFSET {
                        config.sys_enter_fd = off("fd");
                    }
                    if off("fd") != config.sys_enter_fd {
                        missing.push(*hook);
                        continue;
                    }
                }
                _ => {}
            }
            if let Some(k) = hook.kind {
                // Strings behind __data_loc (mark_victim's comm) follow the fixed part:
                // copy the whole window for those; tracepoint records sit in a per-CPU
                // buffer far larger than that.
                let len = if format.fields.values().any(|f| f.is_data_loc()) {
                    tracer_ebpf::RAW_RECORD_MAX
                } else {
                    format.fixed_len().min(tracer_ebpf::RAW_RECORD_MAX)
                };
                config.record_len[k as usize] = u32::try_from(len).unwrap_or(0);
                layouts.by_kind.insert(k, format);
            }
            available.push(*hook);
        }

        let mut degraded = Vec::new();
        let mut offset = |path: &str| -> u32 {
            match struct_offset(&btf, path) {
                Some(o) => o,
                None => {
                    degraded.push(path.to_string());
                    NO_OFFSET
                }
            }
        };
        config.task_flags = offset("task_struct.flags");
        config.task_exit_code = offset("task_struct.exit_code");
        config.task_cgroups = offset("task_struct.cgroups");
        config.css_cgroup = offset("cgroup_subsys_state.cgroup");
        config.cgroup_kn = offset("cgroup.kn");
        config.kn_id = offset("kernfs_node.id");
        config.task_files = offset("task_struct.files");
        config.files_fdt = offset("files_struct.fdt");
        config.fdt_max_fds = offset("fdtable.max_fds");
        config.fdt_fd = offset("fdtable.fd");
        config.file_private_data = offset("file.private_data");
        config.socket_sk = offset("socket.sk");
        config.sock_family = offset("sock.__sk_common.skc_family");
        config.unix_peer = offset("unix_sock.peer");
        config.unix_addr = offset("unix_sock.addr");
        config.unix_address_len = offset("unix_address.len");
        config.unix_address_name = offset("unix_address.name");
        let subsys = offset("css_set.subsys");
        config.css_set_memcg = match (
            subsys,
            enum_value(&btf, "cgroup_subsys_id", "memory_cgrp_id"),
        ) {
            (NO_OFFSET, _) => NO_OFFSET,
            (base, Some(id)) => base.saturating_add(id.saturating_mul(8)),
            (_, None) => {
                degraded.push("memory cgroup controller (cgroup_subsys_id.memory_cgrp_id)".into());
                NO_OFFSET
            }
        };

        // Syscall arguments from the registers saved at entry (x86_64's syscall ABI: di,
        // si, dx, r10), so the exit hooks need no enter hook on every recv/send.
        if cfg!(target_arch = "x86_64") {
            let regs = ["pt_regs.di", "pt_regs.si", "pt_regs.dx", "pt_regs.r10"]
                .map(|f| struct_offset(&btf, f).unwrap_or(NO_OFFSET));
            if !regs.contains(&NO_OFFSET) {
                config.regs_arg = regs;
            }
        }

        let reset_reasons = enum_names(&btf, "sk_rst_reason");
        let mut facts = Self {
            config,
            layouts,
            reset_reasons,
            available,
            missing,
            degraded,
            syscall_hooks: Vec::new(),
        };
        let sock_io = ["sock_recv_length", "sock_send_length"]
            .iter()
            .all(|e| facts.available.iter().any(|h| h.event == *e));
        if sock_io {
            // Socket-level tracepoints serve what the syscall ones would; and any syscall
            // tracepoint slows every syscall of every process (~50 ns each).
            let (syscalls, rest) = facts
                .available
                .into_iter()
                .partition(|h| h.category == "syscalls");
            facts.syscall_hooks = syscalls;
            facts.available = rest;
        } else {
            // The syscall tracepoints serve instead: the socket ones are not "missing".
            facts.available.retain(|h| !is_socket_io(h));
            facts.missing.retain(|h| !is_socket_io(h));
        }
        Ok(facts)
    }

    /// Use the syscall tracepoints even where the socket-level ones exist (tests of the
    /// path older kernels take).
    pub fn force_syscall_hooks(&mut self) {
        if !self.syscall_hooks.is_empty() {
            self.available.retain(|h| !is_socket_io(h));
            self.available.append(&mut self.syscall_hooks);
        }
    }

    /// Attach no syscall tracepoint (`--no-syscall-hooks`).
    pub fn drop_syscall_hooks(&mut self) {
        self.available.retain(|h| h.category != "syscalls");
        self.syscall_hooks.clear();
    }

    /// Whether receivers' failing socket calls are traced (seen_by_receiver, unix resets).
    pub fn traces_receiver_errors(&self) -> bool {
        self.available
            .iter()
            .any(|h| is_socket_io(h) || h.event == "sys_exit_recvfrom")
    }

    /// Whether listen() is traced (else unix listeners are found by rescanning /proc).
    pub fn traces_listen(&self) -> bool {
        self.available.iter().any(|h| h.event == "sys_enter_listen")
    }
}

fn is_socket_io(hook: &Hook) -> bool {
    hook.category == "sock"
        && (hook.event == "sock_recv_length" || hook.event == "sock_send_length")
}

/// mmap()ing /sys/kernel/btf/vmlinux is fastest but only possible on recent kernels
/// (~6.16; older ones answer ENODEV): read it whole there.
pub fn open_vmlinux_btf() -> Result<Btf> {
    Btf::from_file_with_backend(VMLINUX_BTF, Backend::Mmap)
        .or_else(|_| Btf::from_file_with_backend(VMLINUX_BTF, Backend::Cache))
        .with_context(|| format!("parsing {VMLINUX_BTF}"))
}

/// Byte offset of `struct.member[.member...]`, looking through anonymous unions and structs.
pub fn struct_offset(btf: &Btf, path: &str) -> Option<u32> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut ty = named_struct(btf, first)?;
    let mut total = 0u32;
    for member in parts {
        let (bits, member_ty) = find_member(btf, &ty, member)?;
        total = total.checked_add(bits / 8)?;
        ty = member_ty;
    }
    Some(total)
}

fn named_struct(btf: &Btf, name: &str) -> Option<Type> {
    btf.resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
}

/// Finds `name` in a struct or union, descending into anonymous members. Returns the bit
/// offset from the start of `ty` and the member's (typedef-resolved) type.
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Option<(u32, Type)> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return None,
    };
    for m in members {
        let member_name = btf.resolve_name(m).unwrap_or_default();
        let member_ty = resolve_through_qualifiers(btf, btf.resolve_chained_type(m).ok()?)?;
        if member_name == name {
            return Some((m.bit_offset(), member_ty));
        }
        if member_name.is_empty() {
            if let Some((inner, t)) = find_member(btf, &member_ty, name) {
                return Some((m.bit_offset() + inner, t));
            }
        }
    }
    None
}

fn resolve_through_qualifiers(btf: &Btf, mut ty: Type) -> Option<Type> {
    for _ in 0..16 {
        match &ty {
            Type::Typedef(_)
            | Type::Const(_)
            | Type::Volatile(_)
            | Type::Restrict(_)
            | Type::TypeTag(_) => {
                let next = btf.resolve_chained_type(ty.as_btf_type()?).ok()?;
                ty = next;
            }
            _ => return Some(ty),
        }
    }
    None
}

fn enum_value(btf: &Btf, enum_name: &str, member: &str) -> Option<u32> {
    enum_names(btf, enum_name)
        .into_iter()
        .find_map(|(v, n)| (n == member).then_some(v))
}

fn enum_names(btf: &Btf, enum_name: &str) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    let Ok(types) = btf.resolve_types_by_name(enum_name) else {
        return out;
    };
    for ty in types {
        if let Type::Enum(e) = ty {
            for m in &e.members {
                if let Ok(name) = btf.resolve_name(m) {
                    out.insert(m.val(), name);
                }
            }
        }
    }
    out
}

/// sk_rst_reason names in the form users know from the kernel's tracepoint output:
/// `SK_RST_REASON_TCP_ABORT_ON_CLOSE` -> `TCP_ABORT_ON_CLOSE`.
pub fn short_reason_name(name: &str) -> &str {
    name.strip_prefix("SK_RST_REASON_").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_lose_their_prefix() {
        assert_eq!(short_reason_name("SK_RST_REASON_NO_SOCKET"), "NO_SOCKET");
        assert_eq!(short_reason_name("TCP_STATE"), "TCP_STATE");
    }

    /// Runs against the build machine's own BTF when it has one; the offsets it checks are
    /// ABI-stable in practice (first member of task_struct's thread_info on x86 is flags-free).
    #[test]
    fn resolves_real_offsets_when_btf_is_present() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!(
                "no {VMLINUX_BTF}: skipping the live BTF check (the decoder tests still run)"
            );
            return;
        }
        let btf = open_vmlinux_btf().expect("btf");
        let sk = struct_offset(&btf, "socket.sk").expect("socket.sk");
        assert!(sk > 0 && sk < 256, "socket.sk at {sk}");
        assert!(struct_offset(&btf, "task_struct.exit_code").is_some());
        assert!(struct_offset(&btf, "file.private_data").is_some());
        assert!(struct_offset(&btf, "task_struct.no_such_member").is_none());
    }
}

//! Everything that depends on the running kernel, resolved once at start and passed down
//! as data: which hooks of the catalogue exist and will be attached, tracepoint record
//! layouts (read by [`tracefs`], parsed by [`crate::record`]), struct offsets and enum names
//! ([`btf`]).
pub mod btf;
pub mod tracefs;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};
use tracer_ebpf::{event::EventKind, Config, NO_OFFSET};

use crate::{
    hooks::{Attach, Capability, Hook, Tier, HOOKS},
    record::RecordFormat,
};
use btf::Vmlinux;
use tracefs::Tracefs;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Record layouts of the events user space decodes, by event kind.
#[derive(Clone, Debug, Default)]
pub struct Layouts {
    pub by_kind: HashMap<EventKind, RecordFormat>,
}

impl Layouts {
    pub fn get(&self, kind: EventKind) -> Option<&RecordFormat> {
        self.by_kind.get(&kind)
    }
}

/// What becomes of one catalogue hook on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// It exists and will be attached.
    Attach,
    /// This kernel does not have it.
    Missing,
    /// It exists but its record does not fit the program.
    Unfit(String),
    /// It exists, but rsttrace does not need it here (why).
    NotNeeded(&'static str),
}

#[derive(Clone, Debug)]
pub struct HookState {
    pub hook: &'static Hook,
    pub status: Status,
}

#[derive(Clone, Debug)]
pub struct KernelFacts {
    pub config: Config,
    pub layouts: Layouts,
    /// enum sk_rst_reason value -> name (empty on kernels without reasons).
    pub reset_reasons: HashMap<u32, String>,
    /// Every catalogue hook, in catalogue order, with what becomes of it here.
    pub hooks: Vec<HookState>,
    /// Struct offsets BTF did not give (the capability degrades, the run goes on).
    pub degraded: Vec<String>,
    /// The cgroup2 mount, where the root-cgroup network hook attaches.
    pub cgroup2: Option<PathBuf>,
}

/// The `Config` field an offset goes into.
type OffsetSlot = fn(&mut Config) -> &mut u32;

/// Struct offsets the programs read, from BTF: `struct.member[...]` -> its `Config` field.
const STRUCT_OFFSETS: &[(&str, OffsetSlot)] = &[
    ("task_struct.flags", |c| &mut c.task_flags),
    ("task_struct.exit_code", |c| &mut c.task_exit_code),
    ("task_struct.cgroups", |c| &mut c.task_cgroups),
    ("cgroup_subsys_state.cgroup", |c| &mut c.css_cgroup),
    ("cgroup.kn", |c| &mut c.cgroup_kn),
    ("kernfs_node.id", |c| &mut c.kn_id),
    ("task_struct.files", |c| &mut c.task_files),
    ("files_struct.fdt", |c| &mut c.files_fdt),
    ("fdtable.max_fds", |c| &mut c.fdt_max_fds),
    ("fdtable.fd", |c| &mut c.fdt_fd),
    ("file.private_data", |c| &mut c.file_private_data),
    ("socket.sk", |c| &mut c.socket_sk),
    ("sock.__sk_common.skc_family", |c| &mut c.sock_family),
    ("unix_sock.peer", |c| &mut c.unix_peer),
    ("unix_sock.addr", |c| &mut c.unix_addr),
    ("unix_address.len", |c| &mut c.unix_address_len),
    ("unix_address.name", |c| &mut c.unix_address_name),
    ("sock.sk_socket", |c| &mut c.sock_socket),
    ("tcp_sock.snd_nxt", |c| &mut c.tcp_snd_nxt),
    ("tcp_sock.rcv_nxt", |c| &mut c.tcp_rcv_nxt),
    ("sock.__sk_common.skc_net.net", |c| &mut c.sock_net),
    ("net.ns.inum", |c| &mut c.net_ns_inum),
    ("sk_buff.head", |c| &mut c.skb_head),
    ("sk_buff.transport_header", |c| &mut c.skb_transport_header),
    ("sk_buff.dev", |c| &mut c.skb_dev),
    ("net_device.nd_net.net", |c| &mut c.dev_net),
    ("sock.sk_err", |c| &mut c.sock_err),
    ("sock.sk_err_soft", |c| &mut c.sock_err_soft),
    ("sock.__sk_common.skc_state", |c| &mut c.sock_state),
    ("sock.sk_error_queue.prev", |c| &mut c.sock_errqueue_tail),
    ("sock.sk_error_queue.qlen", |c| &mut c.sock_errqueue_len),
    ("sk_buff.cb", |c| &mut c.skb_cb),
    ("sock_exterr_skb.ee.ee_errno", |c| &mut c.exterr_errno),
    ("sock.sk_protocol", |c| &mut c.sock_protocol),
    ("sock.__sk_common.skc_daddr", |c| &mut c.sock_daddr),
    ("sock.__sk_common.skc_rcv_saddr", |c| &mut c.sock_rcv_saddr),
    ("sock.__sk_common.skc_dport", |c| &mut c.sock_dport),
    ("sock.__sk_common.skc_num", |c| &mut c.sock_num),
    ("sock.__sk_common.skc_v6_daddr", |c| &mut c.sock_v6_daddr),
    ("sock.__sk_common.skc_v6_rcv_saddr", |c| {
        &mut c.sock_v6_rcv_saddr
    }),
];

/// Other types looked up in BTF (besides those in STRUCT_OFFSETS).
const BTF_NAMES_TOO: &[&str] = &[
    "css_set",
    "cgroup_subsys_id",
    "socket_alloc",
    "inode",
    "pt_regs",
    "sk_rst_reason",
];

impl KernelFacts {
    /// `cgroup_root`: `--cgroup-root`, where the host's cgroup tree is mounted.
    pub fn resolve(cgroup_root: Option<&Path>) -> Result<Self> {
        let tracefs = Tracefs::locate()?;
        if !Path::new(VMLINUX_BTF).exists() {
            bail!(
                "this kernel exposes no BTF ({VMLINUX_BTF} is missing): rsttrace needs a kernel \
                 built with CONFIG_DEBUG_INFO_BTF=y (the default on Debian 11+, Ubuntu 20.10+, RHEL 8.2+)"
            );
        }

        let btf = open_btf()?;
        let mut config = Config::EMPTY;
        let mut layouts = Layouts::default();
        let cgroup2 = crate::cgroup::cgroup2_root(cgroup_root);
        let mut hooks = Vec::with_capacity(HOOKS.len());
        for hook in HOOKS {
            let status = match hook.attach {
                Attach::Tracepoint { category, event } => {
                    probe_tracepoint(hook, category, event, &tracefs, &mut config, &mut layouts)?
                }
                Attach::RawTracepoint {
                    category,
                    event,
                    args,
                } => probe_raw_tracepoint(&tracefs, &btf, category, event, args),
                Attach::CgroupSkbIngress => match &cgroup2 {
                    Some(_) => Status::Attach,
                    None => Status::Unfit("no cgroup2 mount in /proc/self/mountinfo".into()),
                },
            };
            hooks.push(HookState { hook, status });
        }
        choose_receiver_error_hooks(&mut hooks);
        let degraded = struct_offsets(&btf, &mut config);
        Ok(Self {
            config,
            layouts,
            reset_reasons: btf.enum_names("sk_rst_reason"),
            hooks,
            degraded,
            cgroup2,
        })
    }

    /// The hooks to attach.
    pub fn attached(&self) -> impl Iterator<Item = &'static Hook> + '_ {
        self.hooks
            .iter()
            .filter(|s| s.status == Status::Attach)
            .map(|s| s.hook)
    }

    /// Use the syscall tracepoints even where socket-level ones exist (tests of the path
    /// older kernels take).
    pub fn force_syscall_hooks(&mut self) {
        let have_syscalls = self
            .hooks
            .iter()
            .any(|s| is_syscall(s.hook) && s.status != Status::Missing);
        if !have_syscalls {
            return;
        }
        for s in &mut self.hooks {
            match s.hook.tier {
                Tier::SocketIo if s.status == Status::Attach => {
                    s.status = Status::NotNeeded("--syscall-hooks");
                }
                Tier::Syscall | Tier::ArgumentRecorder
                    if matches!(s.status, Status::NotNeeded(_)) =>
                {
                    s.status = Status::Attach;
                }
                _ => {}
            }
        }
    }

    /// Attach no syscall tracepoint (`--no-syscall-hooks`).
    pub fn drop_syscall_hooks(&mut self) {
        for s in &mut self.hooks {
            if is_syscall(s.hook) && s.status == Status::Attach {
                s.status = Status::NotNeeded("--no-syscall-hooks");
            }
        }
    }

    /// Attach none of the hooks serving `capability` (`--no-network-hooks`).
    pub fn drop_capability(&mut self, capability: Capability, why: &'static str) {
        for s in &mut self.hooks {
            if s.hook.capability == capability && s.status == Status::Attach {
                s.status = Status::NotNeeded(why);
            }
        }
    }

    /// Whether `--no-syscall-hooks` took away hooks this kernel had no stand-in for.
    pub fn syscall_hooks_dropped(&self) -> bool {
        self.hooks
            .iter()
            .any(|s| s.status == Status::NotNeeded("--no-syscall-hooks"))
    }

    /// Whether receivers' failing socket calls are traced (seen_by_receiver, unix resets).
    pub fn traces_receiver_errors(&self) -> bool {
        self.attached()
            .any(|h| h.capability == Capability::ReceiverErrors && h.tier != Tier::ArgumentRecorder)
    }

    /// Whether RST segments are sampled (TTL, IP ID, interface): the packet hook.
    pub fn traces_rst_segments(&self) -> bool {
        self.attached()
            .any(|h| h.capability == Capability::NetworkEvidence)
    }

    /// Whether listen() is traced (else unix listeners are found by rescanning /proc).
    pub fn traces_listen(&self) -> bool {
        self.attached()
            .any(|h| h.capability == Capability::UnixListeners)
    }
}

/// Whether the hook is a syscall tracepoint.
pub fn is_syscall(hook: &Hook) -> bool {
    matches!(hook.tier, Tier::Syscall | Tier::ArgumentRecorder)
}

/// Whether a tracepoint hook exists here and fits its program; fills the offsets and
/// record layout it needs.
/// vmlinux BTF, indexed for every type rsttrace looks up.
fn open_btf() -> Result<Vmlinux> {
    let raw_tracepoints: Vec<String> = HOOKS
        .iter()
        .filter_map(|h| match h.attach {
            Attach::RawTracepoint { event, .. } => Some(format!("btf_trace_{event}")),
            _ => None,
        })
        .collect();
    Vmlinux::open(
        STRUCT_OFFSETS
            .iter()
            .filter_map(|(path, _)| path.split('.').next())
            .chain(BTF_NAMES_TOO.iter().copied())
            .chain(raw_tracepoints.iter().map(String::as_str)),
    )
}

/// Fills `config`'s struct offsets from BTF; returns what this kernel lacks (the
/// capability that needs it degrades, the run goes on).
fn struct_offsets(btf: &Vmlinux, config: &mut Config) -> Vec<String> {
    let mut degraded = Vec::new();
    for (path, slot) in STRUCT_OFFSETS {
        *slot(config) = btf.struct_offset(path).unwrap_or_else(|| {
            degraded.push((*path).to_string());
            NO_OFFSET
        });
    }
    config.css_set_memcg = match (
        btf.struct_offset("css_set.subsys"),
        btf.enum_value("cgroup_subsys_id", "memory_cgrp_id"),
    ) {
        (None, _) => {
            degraded.push("css_set.subsys".into());
            NO_OFFSET
        }
        (Some(base), Some(id)) => base.saturating_add(id.saturating_mul(8)),
        (Some(_), None) => {
            degraded.push("memory cgroup controller (cgroup_subsys_id.memory_cgrp_id)".into());
            NO_OFFSET
        }
    };
    // A socket's inode sits after it in its struct socket_alloc (SOCK_INODE()).
    config.socket_ino = match (
        btf.struct_offset("socket_alloc.vfs_inode"),
        btf.struct_offset("inode.i_ino"),
    ) {
        (Some(inode), Some(ino)) => inode.saturating_add(ino),
        _ => {
            degraded.push("socket_alloc.vfs_inode, inode.i_ino".into());
            NO_OFFSET
        }
    };
    // Syscall arguments from the registers saved at entry (x86_64's syscall ABI: di, si,
    // dx, r10), so the exit hooks need no enter hook on every recv/send.
    if cfg!(target_arch = "x86_64") {
        let regs = ["pt_regs.di", "pt_regs.si", "pt_regs.dx", "pt_regs.r10"]
            .map(|f| btf.struct_offset(f).unwrap_or(NO_OFFSET));
        if !regs.contains(&NO_OFFSET) {
            config.regs_arg = regs;
        }
    }
    degraded
}

/// A raw tracepoint's program reads its arguments by position: one whose prototype has
/// another arity on this kernel is not attached (its arguments would be misread).
fn probe_raw_tracepoint(
    tracefs: &Tracefs,
    btf: &Vmlinux,
    category: &str,
    event: &str,
    args: usize,
) -> Status {
    if !tracefs.exists(category, event) {
        return Status::Missing;
    }
    match btf.raw_tracepoint_args(event) {
        Some(n) if n != args => Status::Unfit(format!(
            "it passes {n} arguments here, the program expects {args}"
        )),
        _ => Status::Attach,
    }
}

fn probe_tracepoint(
    hook: &'static Hook,
    category: &str,
    event: &str,
    tracefs: &Tracefs,
    config: &mut Config,
    layouts: &mut Layouts,
) -> Result<Status> {
    if !tracefs.exists(category, event) {
        if hook.required {
            bail!(
                "tracepoint {category}:{event} does not exist on this kernel; rsttrace cannot see {}",
                hook.purpose
            );
        }
        return Ok(Status::Missing);
    }
    let format = tracefs.format(category, event)?;
    if let Err(unfit) = (hook.configure)(&format, config) {
        return Ok(Status::Unfit(unfit.0));
    }
    if let Some(kind) = hook.record {
        // Strings behind __data_loc (mark_victim's comm) follow the fixed part: copy the
        // whole window for those; tracepoint records sit in a per-CPU buffer far larger.
        let capacity = kind.record_capacity();
        let len = if format.fields.values().any(|f| f.is_data_loc()) {
            capacity
        } else {
            format.fixed_len().min(capacity)
        };
        config.record_len[kind as usize] = u32::try_from(len).unwrap_or(0);
        layouts.by_kind.insert(kind, format);
    }
    Ok(Status::Attach)
}

/// Socket-level tracepoints serve what the syscall ones would where both exist, and any
/// syscall tracepoint slows every syscall of every process (~50 ns each); where they do
/// not, the syscall tracepoints serve instead and the socket ones are simply not needed.
fn choose_receiver_error_hooks(hooks: &mut [HookState]) {
    let socket_io = hooks
        .iter()
        .filter(|s| s.hook.tier == Tier::SocketIo)
        .all(|s| s.status == Status::Attach);
    for s in hooks.iter_mut() {
        match s.hook.tier {
            Tier::Syscall | Tier::ArgumentRecorder if socket_io && s.status == Status::Attach => {
                s.status = Status::NotNeeded("socket tracepoints serve instead");
            }
            Tier::SocketIo if !socket_io => {
                s.status = Status::NotNeeded("syscall tracepoints serve instead");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(socket_io: Status) -> Vec<HookState> {
        HOOKS
            .iter()
            .map(|hook| HookState {
                hook,
                status: if hook.tier == Tier::SocketIo {
                    socket_io.clone()
                } else {
                    Status::Attach
                },
            })
            .collect()
    }

    #[test]
    fn socket_tracepoints_replace_every_syscall_hook() {
        let mut hooks = states(Status::Attach);
        choose_receiver_error_hooks(&mut hooks);
        for s in &hooks {
            assert_eq!(
                s.status == Status::Attach,
                !is_syscall(s.hook),
                "{:?}",
                s.hook
            );
        }
    }

    #[test]
    fn without_socket_tracepoints_the_syscall_hooks_serve() {
        let mut hooks = states(Status::Missing);
        choose_receiver_error_hooks(&mut hooks);
        for s in &hooks {
            let expected = if s.hook.tier == Tier::SocketIo {
                Status::NotNeeded("syscall tracepoints serve instead")
            } else {
                Status::Attach
            };
            assert_eq!(s.status, expected, "{:?}", s.hook);
        }
    }
}

//! What every program shares: the frozen kernel facts, the maps, and the helpers that read
//! kernel memory and send events.
mod net;
mod process;
mod socket;
mod syscalls;
mod tcp;

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated,
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tracer_ebpf::{
    event::{EventKind, Header},
    Config, SockOwner, AF_UNIX, NO_OFFSET, READER_SLEEPS, TASK_COMM_LEN,
};

/// Frozen into .rodata by the loader (EbpfLoader::override_global), so the verifier sees
/// the offsets as constants and prunes the branches for fields this kernel lacks.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::EMPTY;

/// Size is set by the loader (--buffer-size).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Whether rsttrace sleeps until a sample wakes it (READER_SLEEPS) or drains on its own
/// 10 ms timer (0); written by rsttrace around its sleeps.
#[map]
static READER: Array<u32> = Array::with_max_entries(1, 0);

/// Ring buffer reservation failures, per CPU and per event kind; user space sums them and
/// reports them as `lost` events. Per kind, because a count is a load and a store, not one
/// step: the packet program (and raw tracepoints such as inet_sk_error_report) run in a
/// softirq that can interrupt another program on the same CPU between the two, and in a
/// storm both fail to reserve. Different kinds come from different programs, and a program
/// does not interrupt itself (tracepoints: bpf_prog_active; raw tracepoints: a guard of
/// their own since 6.2, and softirqs do not nest), so no count is overwritten. (The bpfel
/// target's core offers no 64-bit atomic add.)
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(EventKind::COUNT as u32, 0);

/// struct sock * -> who owns it (see SockOwner for how stale records are avoided).
#[map]
static SOCK_OWNERS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(65536, 0);

/// Sockets whose owner the task using them was already recorded for, by slot: the
/// socket-call hooks run on every send and receive of the host, and this answers most of
/// them without reading the socket or the owner map. A slot holds one (socket, tgid) pair;
/// tcp:tcp_destroy_sock clears a TCP socket's, since its address is reused at once. Nothing
/// reports a unix socket's release, so its slot also holds the socket's inode number (never
/// reused, see SockOwner::ino), read again on every hit: two loads where the owner map
/// costs a hash lookup. Global, not per CPU, so that the destruction clears whichever CPU
/// learnt it; racing writes at worst cost a lookup.
#[map]
static LEARNED: Array<Learned> = Array::with_max_entries(LEARNED_SLOTS, 0);

const LEARNED_SLOTS: u32 = 4096;

#[repr(C)]
#[derive(Clone, Copy)]
struct Learned {
    sk: u64,
    tgid: u32,
    _pad: u32,
    /// The unix socket's inode number; 0 for TCP.
    ino: u64,
}

/// Sockets lie 1 KiB (unix_sock) to 2.3 KiB (tcp_sock) apart in their slabs: the bits above
/// that vary.
#[inline(always)]
fn learned_slot(sk: u64) -> u32 {
    ((sk >> 10) ^ (sk >> 22)) as u32 & (LEARNED_SLOTS - 1)
}

#[inline(always)]
fn already_learned(cfg: &Config, sk: u64, tgid: u32) -> bool {
    let Some(l) = LEARNED.get(learned_slot(sk)) else {
        return false;
    };
    l.sk == sk && l.tgid == tgid && (l.ino == 0 || l.ino == sock_ino(cfg, sk))
}

#[inline(always)]
fn mark_learned(sk: u64, tgid: u32, ino: u64) {
    if let Some(slot) = LEARNED.get_ptr_mut(learned_slot(sk)) {
        // SAFETY: a map value pointer, valid for this program run; a racing writer on
        // another CPU can only make the next lookup miss.
        unsafe {
            (*slot).sk = sk;
            (*slot).tgid = tgid;
            (*slot).ino = ino;
        }
    }
}

#[inline(always)]
fn forget_learned(sk: u64) {
    if let Some(slot) = LEARNED.get_ptr_mut(learned_slot(sk)) {
        // SAFETY: as in mark_learned.
        unsafe {
            if (*slot).sk == sk {
                (*slot).sk = 0;
            }
        }
    }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// The frozen facts, read field by field where used. The pointer goes through black_box so
/// that the compiler cannot fold the EMPTY initializer into the code; the verifier still
/// sees each field as a constant (a load from a frozen read-only map). Copying the whole
/// Config instead (a volatile read) cost every run of every program ~80 loads.
#[inline(always)]
fn config() -> &'static Config {
    // SAFETY: CONFIG is a plain static, never written after load.
    unsafe { &*core::hint::black_box(&raw const CONFIG) }
}

/// A field of a kernel struct at `base + offset` (offset from BTF), None when this kernel
/// lacks it or the read faults.
#[inline(always)]
unsafe fn read_field<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == NO_OFFSET {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// A field of the tracepoint record at `offset` (from its tracefs format).
#[inline(always)]
fn record_field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == NO_OFFSET {
        return None;
    }
    unsafe { ctx.read_at::<T>(offset as usize).ok() }
}

#[inline(always)]
fn current_task() -> u64 {
    unsafe { bpf_get_current_task() }
}

#[inline(always)]
fn current_owner(role: u8, ino: u64, peer_ino: u64) -> SockOwner {
    let pid_tgid = bpf_get_current_pid_tgid();
    SockOwner {
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
        ino,
        peer_ino,
        destroyed_ns: 0,
        role,
        _pad: [0; 7],
    }
}

/// The inode number of `sk`'s socket (sk->sk_socket, allocated with its inode in a
/// struct socket_alloc: SOCK_INODE(), include/net/sock.h); 0 once orphaned or unknown.
#[inline(always)]
fn sock_ino(cfg: &Config, sk: u64) -> u64 {
    // SAFETY: reads of a live socket's fields; a fault gives None.
    unsafe {
        let socket = read_field::<u64>(sk, cfg.sock_socket).unwrap_or(0);
        read_field::<u64>(socket, cfg.socket_ino).unwrap_or(0)
    }
}

/// How long the record of a destroyed socket still answers (see SockOwner::destroyed_ns):
/// the reset follows the destruction in the same softirq pass.
const DESTROYED_GRACE_NS: u64 = 1_000_000;

/// The recorded owner of `sk`.
#[inline(always)]
fn lookup_owner(sk: u64) -> SockOwner {
    if sk == 0 {
        return SockOwner::UNKNOWN;
    }
    // SAFETY: the value is copied out at once; a concurrent update can at worst give a
    // torn owner, which user space treats as evidence, not as a key.
    match unsafe { SOCK_OWNERS.get(&sk) }.copied() {
        Some(o) if o.destroyed_ns == 0 => o,
        // SAFETY: no preconditions.
        Some(o)
            if unsafe { bpf_ktime_get_ns() }.saturating_sub(o.destroyed_ns)
                < DESTROYED_GRACE_NS =>
        {
            o
        }
        _ => SockOwner::UNKNOWN,
    }
}

/// The recorded owner of the unix socket `peer`, whose other end is `sk`. The peer may be
/// released already (its inode gone), but `sk` lives: a record made while `peer` was
/// connected to another socket names another inode, and is stale (see SockOwner).
#[inline(always)]
fn lookup_unix_peer_owner(cfg: &Config, peer: u64, sk: u64) -> SockOwner {
    let owner = lookup_owner(peer);
    if owner.peer_ino != sock_ino(cfg, sk) {
        return SockOwner::UNKNOWN;
    }
    owner
}

/// Records current as the owner of `sk` unless a live record names one already, keeping
/// the role a state change recorded. Returns the socket's inode number for a unix socket
/// (0 for TCP).
#[inline(always)]
fn learn_owner(cfg: &Config, sk: u64, family: u16, role: u8) -> u64 {
    let ino = if family == AF_UNIX {
        sock_ino(cfg, sk)
    } else {
        0
    };
    let slot = SOCK_OWNERS.get_ptr_mut(&sk);
    // SAFETY: a map value pointer, valid for this program run, copied out at once.
    let known = slot.map(|p| unsafe { *p });
    let role = match known {
        // A destroyed socket's record belongs to a socket that no longer exists.
        Some(o) if o.destroyed_ns != 0 => role,
        Some(o) if o.tgid != 0 && o.ino == ino => return ino,
        Some(o) if role == tracer_ebpf::role::UNKNOWN && o.ino == ino => o.role,
        _ => role,
    };
    let peer_ino = if family == AF_UNIX {
        // SAFETY: a read of a live socket's field.
        let peer = unsafe { read_field::<u64>(sk, cfg.unix_peer) }.unwrap_or(0);
        sock_ino(cfg, peer)
    } else {
        0
    };
    record_owner(sk, slot, &current_owner(role, ino, peer_ino));
    ino
}

/// Records `owner` for `sk`, over `slot` (its record, looked up by the caller) when it has
/// one. The slab gives a new socket the address of one just freed, whose record is usually
/// still in the map (marked destroyed): overwriting it where it lies costs the lookup alone,
/// where an insert into the full LRU map takes an element from its free lists, evicting one
/// (kernel/bpf/bpf_lru_list.c), and frees the old. Written in place, a record can be seen
/// half-written by a program on another CPU; nothing reads the record of a socket being
/// connected, and a torn owner is evidence user space checks, not a key.
#[inline(always)]
fn record_owner(sk: u64, slot: Option<*mut SockOwner>, owner: &SockOwner) {
    match slot {
        // SAFETY: a map value pointer, valid for this program run.
        Some(p) => unsafe { *p = *owner },
        None => {
            let _ = SOCK_OWNERS.insert(&sk, owner, 0);
        }
    }
}

fn count_lost(kind: EventKind) {
    if let Some(counter) = LOST.get_ptr_mut(kind as u32) {
        // SAFETY: this CPU's slot of this kind; see LOST for why no other writer is inside.
        unsafe { *counter += 1 };
    }
}

/// Reserves an event of type `T` (whose first field is a [`Header`]), fills the header,
/// lets `fill` write the rest, and submits it; counts the loss when the ring is full.
///
/// Samples are submitted without waking rsttrace, which drains on a short timer while
/// samples come, until `ring_wakeup_bytes` wait: a wake-up per sample costs more than the
/// sample in a storm. While rsttrace sleeps (idle, READER says so), every sample wakes it.
/// A wake-up is an irq_work (kernel/bpf/ringbuf.c, bpf_ringbuf_commit), on x86 a self-IPI
/// whose handler runs inside this program: 20-40 us each on this project's VMs, measured as
/// the program's own run time. Waking on "the first sample into an empty ring" instead paid
/// it once per 10 ms drain even while rsttrace was awake (sched_process_exit: 5.8 us/run in
/// a fork loop, 1.4 us without forced wake-ups).
#[inline(always)]
fn emit<T: 'static>(cfg: &Config, kind: EventKind, fill: impl FnOnce(*mut T)) {
    emit_sample::<T, true>(cfg, kind, fill);
}

/// [`emit`] for a packet program: its header names no task. The verifier of 6.1 and 6.12
/// refuses bpf_get_current_pid_tgid() and bpf_get_current_comm() in cgroup_skb programs
/// (6.1: "unknown func", 6.12: "program of this type cannot use helper"); 6.18 allows
/// them. On loopback the task on the CPU would be the segment's sender (its softirq runs
/// in the sending task), which a forged RST could have named; the packet's own headers
/// are the evidence kept.
#[inline(always)]
fn emit_packet<T: 'static>(cfg: &Config, kind: EventKind, fill: impl FnOnce(*mut T)) {
    emit_sample::<T, false>(cfg, kind, fill);
}

#[inline(always)]
fn emit_sample<T: 'static, const TASK: bool>(
    cfg: &Config,
    kind: EventKind,
    fill: impl FnOnce(*mut T),
) {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count_lost(kind);
        return;
    };
    let event = entry.as_mut_ptr();
    let header = event as *mut Header;
    // SAFETY: `event` points at a reserved, exclusively owned ring buffer slot of
    // size_of::<T>() bytes, and every event type starts with its Header (repr(C)).
    unsafe {
        (*header).kind = kind as u32;
        (*header)._reserved = 0;
        (*header).ktime_ns = bpf_ktime_get_ns();
        if TASK {
            (*header).pid_tgid = bpf_get_current_pid_tgid();
            (*header).comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
        } else {
            (*header).pid_tgid = 0;
            (*header).comm = [0; TASK_COMM_LEN];
        }
    }
    fill(event);
    // rsttrace sets READER, takes a last look at the ring, and sleeps only if that look
    // found nothing. The flag is read before the commit (the commit takes the flags), so a
    // sample reserved before the flag was set and committed after the last look wakes no
    // one: a window of this program's last instructions, once per idle transition. The
    // event loop's 1 s tick drains the ring as the backstop for it.
    let sleeps = READER.get(0).is_some_and(|r| *r == READER_SLEEPS);
    let flags = if sleeps || EVENTS.query(BPF_RB_AVAIL_DATA) >= cfg.ring_wakeup_bytes as u64 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
}

/// Copies up to `len` bytes (at most `CAP`) from kernel memory `src` into `dst`; returns
/// the bytes copied (0 on a fault).
#[inline(always)]
unsafe fn copy_bytes<const CAP: usize>(dst: *mut [u8; CAP], src: *const c_void, len: u32) -> u32 {
    if len == 0 || src.is_null() {
        return 0;
    }
    // Bound the length again right at the call: 6.1's verifier loses an earlier clamp when
    // the value is spilled to the stack ("R2 unbounded memory access").
    let mut n = core::hint::black_box(len);
    if n > CAP as u32 {
        n = CAP as u32;
    }
    let copied = unsafe { generated::bpf_probe_read_kernel(dst as *mut c_void, n, src) };
    if copied == 0 {
        n
    } else {
        0
    }
}

/// Inode of the network namespace `sk` lives in (sock_net(sk)->ns.inum), 0 if unknown.
#[inline(always)]
fn sock_netns(cfg: &Config, sk: u64) -> u32 {
    // SAFETY: reads of a live socket's fields; a fault gives None.
    unsafe {
        let net = read_field::<u64>(sk, cfg.sock_net).unwrap_or(0);
        read_field::<u32>(net, cfg.net_ns_inum).unwrap_or(0)
    }
}

/// Bytes of this kind's tracepoint record to copy (from its tracefs format).
#[inline(always)]
fn record_len(cfg: &Config, kind: EventKind) -> u32 {
    cfg.record_len.get(kind as usize).copied().unwrap_or(0)
}

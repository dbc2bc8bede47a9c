//! What every program shares: the frozen kernel facts, the maps, and the helpers that read
//! kernel memory and send events.
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
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tracer_ebpf::{
    event::{EventKind, Header},
    Config, SockOwner, AF_UNIX, NO_OFFSET, TASK_COMM_LEN,
};

/// Frozen into .rodata by the loader (EbpfLoader::override_global), so the verifier sees
/// the offsets as constants and prunes the branches for fields this kernel lacks.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::EMPTY;

/// Size is set by the loader (--buffer-size).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Ring buffer reservation failures, per CPU; user space reports them as `lost` events.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// struct sock * -> who owns it (see SockOwner for how stale records are avoided).
#[map]
static SOCK_OWNERS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(65536, 0);

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

#[inline(always)]
fn config() -> Config {
    // SAFETY: CONFIG is a plain static; the volatile read stops the compiler from
    // folding the EMPTY initializer into the code.
    unsafe { core::ptr::read_volatile(&CONFIG) }
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
fn current_owner(role: u8, unix_peer: u64) -> SockOwner {
    let pid_tgid = bpf_get_current_pid_tgid();
    SockOwner {
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
        unix_peer,
        destroyed_ns: 0,
        role,
        _pad: [0; 7],
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

/// The recorded owner of the unix socket `peer`, whose other end is `sk`; a record made
/// while `peer`'s address held another connection is stale (see SockOwner). The peer may
/// be released already (unix_release_sock() clears its unix_peer), so the record, not the
/// socket, says whom it was connected to.
#[inline(always)]
fn lookup_unix_peer_owner(peer: u64, sk: u64) -> SockOwner {
    let owner = lookup_owner(peer);
    if owner.unix_peer != sk {
        return SockOwner::UNKNOWN;
    }
    owner
}

/// Records current as the owner of `sk` unless a live record names one already, keeping
/// the role a state change recorded.
#[inline(always)]
fn learn_owner(cfg: &Config, sk: u64, family: u16, role: u8) {
    let unix_peer = if family == AF_UNIX {
        // SAFETY: a read of a live socket's field.
        unsafe { read_field::<u64>(sk, cfg.unix_peer) }.unwrap_or(0)
    } else {
        0
    };
    // SAFETY: the value is copied out at once.
    let known = unsafe { SOCK_OWNERS.get(&sk) }.copied();
    let role = match known {
        // A destroyed socket's record belongs to a socket that no longer exists.
        Some(o) if o.destroyed_ns != 0 => role,
        Some(o) if o.tgid != 0 && o.unix_peer == unix_peer => return,
        Some(o) if role == tracer_ebpf::role::UNKNOWN && o.unix_peer == unix_peer => o.role,
        _ => role,
    };
    let _ = SOCK_OWNERS.insert(&sk, &current_owner(role, unix_peer), 0);
}

fn count_lost() {
    if let Some(counter) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Reserves an event of type `T` (whose first field is a [`Header`]), fills the header,
/// lets `fill` write the rest, and submits it; counts the loss when the ring is full.
///
/// Samples are submitted without waking rsttrace, which drains on a short timer, until
/// `ring_wakeup_bytes` wait: a wake-up per sample costs more than the sample in a storm.
#[inline(always)]
fn emit<T: 'static>(cfg: &Config, kind: EventKind, fill: impl FnOnce(*mut T)) {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count_lost();
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
        (*header).pid_tgid = bpf_get_current_pid_tgid();
        (*header).comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
    }
    fill(event);
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    let flags = if waiting >= cfg.ring_wakeup_bytes as u64 {
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

/// Bytes of this kind's tracepoint record to copy (from its tracefs format).
#[inline(always)]
fn record_len(cfg: &Config, kind: EventKind) -> u32 {
    cfg.record_len.get(kind as usize).copied().unwrap_or(0)
}

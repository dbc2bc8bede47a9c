//! The few bpf(2) and perf_event_open(2) calls the bench makes itself: switching the kernel's
//! per-program statistics on for as long as a file descriptor is held (BPF_ENABLE_STATS), and
//! loading the floor's count-only programs (a dozen instructions, so no compiler and no
//! object file) and attaching them where rsttrace's programs are attached. Every attachment
//! is owned by a file descriptor: closing it (drop, or the bench dying) detaches it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use anyhow::{bail, Context as _, Result};

// Commands, types and attach types from include/uapi/linux/bpf.h.
const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_LOOKUP_ELEM: i64 = 1;
const BPF_PROG_LOAD: i64 = 5;
const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;
const BPF_LINK_CREATE: i64 = 28;
const BPF_ENABLE_STATS: i64 = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;

pub const PROG_TYPE_TRACEPOINT: u32 = 5;
pub const PROG_TYPE_CGROUP_SKB: u32 = 8;
pub const PROG_TYPE_SOCK_OPS: u32 = 13;
pub const PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

// include/uapi/linux/perf_event.h
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// _IOW('$', 8, __u32)
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// The attr union is 144+ bytes in recent kernels; the kernel zero-fills what we do not pass
/// and refuses non-zero bytes it does not know, so a zeroed prefix of this size is enough.
const ATTR_SIZE: usize = 128;

fn sys_bpf(cmd: i64, attr: &[u8; ATTR_SIZE]) -> io::Result<i64> {
    // SAFETY: `attr` is a readable buffer of ATTR_SIZE bytes laid out as union bpf_attr for
    // `cmd`; the pointers inside it point to live buffers owned by the caller.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), ATTR_SIZE as libc::c_uint) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fd_from(rc: i64) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(rc).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes `value` at `offset` of the attr buffer (native endianness, as the kernel reads it).
fn put(attr: &mut [u8; ATTR_SIZE], offset: usize, value: &[u8]) {
    attr[offset..offset + value.len()].copy_from_slice(value);
}

/// Turns on run_cnt/run_time_ns accounting of every BPF program until the returned fd is
/// closed. Scoped to the fd (unlike the sysctl kernel.bpf_stats_enabled, which would stay on
/// if the bench died), and off during the ratio rounds: it adds two clock reads per run.
pub fn enable_stats() -> Result<OwnedFd> {
    let mut attr = [0u8; ATTR_SIZE];
    put(&mut attr, 0, &BPF_STATS_RUN_TIME.to_ne_bytes());
    sys_bpf(BPF_ENABLE_STATS, &attr)
        .and_then(fd_from)
        .context("bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME) (kernel 5.8+, CAP_SYS_ADMIN)")
}

/// A per-CPU array of one u64: the floor programs' counter.
pub fn counter_map() -> Result<OwnedFd> {
    let mut attr = [0u8; ATTR_SIZE];
    put(&mut attr, 0, &BPF_MAP_TYPE_PERCPU_ARRAY.to_ne_bytes());
    put(&mut attr, 4, &4u32.to_ne_bytes()); // key_size
    put(&mut attr, 8, &8u32.to_ne_bytes()); // value_size
    put(&mut attr, 12, &1u32.to_ne_bytes()); // max_entries
    put(&mut attr, 28, b"floor_count\0"); // map_name, after numa_node
    sys_bpf(BPF_MAP_CREATE, &attr)
        .and_then(fd_from)
        .context("creating the floor's per-CPU counter map")
}

/// The sum over CPUs of the counter in `map`.
pub fn counter_sum(map: &OwnedFd) -> Result<u64> {
    let cpus = possible_cpus()?;
    let mut values = vec![0u64; cpus];
    let key = 0u32;
    let mut attr = [0u8; ATTR_SIZE];
    put(&mut attr, 0, &(map.as_raw_fd() as u32).to_ne_bytes());
    put(
        &mut attr,
        8,
        &(std::ptr::from_ref(&key) as u64).to_ne_bytes(),
    );
    put(&mut attr, 16, &(values.as_mut_ptr() as u64).to_ne_bytes());
    sys_bpf(BPF_MAP_LOOKUP_ELEM, &attr).context("reading the floor's counter")?;
    Ok(values.iter().sum())
}

/// Number of possible CPUs (the per-CPU value count), from /sys/devices/system/cpu/possible
/// ("0-1", "0", "0-3,5").
fn possible_cpus() -> Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .context("reading /sys/devices/system/cpu/possible")?;
    let mut max = 0usize;
    for part in text.trim().split(',') {
        let last = part.rsplit('-').next().unwrap_or(part);
        let n: usize = last
            .parse()
            .with_context(|| format!("unexpected CPU list {text:?}"))?;
        max = max.max(n);
    }
    Ok(max + 1)
}

/// One eBPF instruction (struct bpf_insn).
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0x0f);
    b[2..4].copy_from_slice(&off.to_ne_bytes());
    b[4..8].copy_from_slice(&imm.to_ne_bytes());
    b
}

/// `counter[0] += 1` (this CPU's slot), then return `ret`: the least a program on a hook can
/// do while still doing something observable.
fn count_only(map_fd: RawFd, ret: i32) -> Vec<u8> {
    const R0: u8 = 0;
    const R1: u8 = 1;
    const R2: u8 = 2;
    const R10: u8 = 10;
    [
        insn(0x62, R10, 0, -4, 0),                     // *(u32 *)(r10 - 4) = 0
        insn(0xbf, R2, R10, 0, 0),                     // r2 = r10
        insn(0x07, R2, 0, 0, -4),                      // r2 += -4
        insn(0x18, R1, BPF_PSEUDO_MAP_FD, 0, map_fd),  // r1 = map (ld_imm64, 1/2)
        insn(0x00, 0, 0, 0, 0),                        //          (2/2)
        insn(0x85, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM), // r0 = lookup(r1, r2)
        insn(0x15, R0, 0, 3, 0),                       // if r0 == 0 goto +3
        insn(0x79, R1, R0, 0, 0),                      // r1 = *(u64 *)(r0 + 0)
        insn(0x07, R1, 0, 0, 1),                       // r1 += 1
        insn(0x7b, R0, R1, 0, 0),                      // *(u64 *)(r0 + 0) = r1
        insn(0xb7, R0, 0, 0, ret),                     // r0 = ret
        insn(0x95, 0, 0, 0, 0),                        // exit
    ]
    .concat()
}

/// Loads a count-only program of `prog_type` (with `expected_attach_type` for cgroup ones)
/// counting into `map`. Cgroup programs return 1 (let the packet or operation through).
pub fn load_counter(
    prog_type: u32,
    expected_attach_type: u32,
    name: &str,
    map: &OwnedFd,
) -> Result<OwnedFd> {
    let ret = match prog_type {
        PROG_TYPE_CGROUP_SKB | PROG_TYPE_SOCK_OPS => 1,
        _ => 0,
    };
    let code = count_only(map.as_raw_fd(), ret);
    let license = b"GPL\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; ATTR_SIZE];
    put(&mut attr, 0, &prog_type.to_ne_bytes());
    put(&mut attr, 4, &((code.len() / 8) as u32).to_ne_bytes());
    put(&mut attr, 8, &(code.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 24, &1u32.to_ne_bytes()); // log_level
    put(&mut attr, 28, &(log.len() as u32).to_ne_bytes());
    put(&mut attr, 32, &(log.as_mut_ptr() as u64).to_ne_bytes());
    let short: Vec<u8> = name
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .take(15)
        .collect();
    put(&mut attr, 48, &short); // prog_name[16], NUL-terminated by the zeroed buffer
    put(&mut attr, 68, &expected_attach_type.to_ne_bytes());
    match sys_bpf(BPF_PROG_LOAD, &attr).and_then(fd_from) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            bail!(
                "loading the floor's count-only program for {name} (type {prog_type}): {e}; \
                 verifier log:\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        }
    }
}

/// Attaches a tracepoint program to tracefs event `id` (perf_event_open + PERF_EVENT_IOC_SET_BPF,
/// the way libbpf and aya do): the program runs on every CPU; closing the fd detaches it.
pub fn attach_tracepoint(prog: &OwnedFd, id: u64, what: &str) -> Result<OwnedFd> {
    // struct perf_event_attr, PERF_ATTR_SIZE_VER0 (64 bytes): type, size, config, then zeros
    // (counting event, enabled at creation).
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&64u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: `attr` is a valid perf_event_attr of the size it declares; pid -1 / cpu 0 is
    // the system-wide form a tracepoint program needs.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1i32,
            0i32,
            -1i32,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("perf_event_open for tracepoint {what} (id {id})"));
    }
    let perf = fd_from(rc)?;
    // SAFETY: both fds are open; the ioctl takes the program fd by value.
    let rc = unsafe { libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("attaching the floor program to tracepoint {what}"));
    }
    Ok(perf)
}

/// Attaches a raw-tracepoint program to tracepoint `name` (BPF_RAW_TRACEPOINT_OPEN).
pub fn attach_raw_tracepoint(prog: &OwnedFd, name: &str) -> Result<OwnedFd> {
    let cname = CString::new(name).context("tracepoint name with a NUL byte")?;
    let mut attr = [0u8; ATTR_SIZE];
    put(&mut attr, 0, &(cname.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 8, &(prog.as_raw_fd() as u32).to_ne_bytes());
    sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &attr)
        .and_then(fd_from)
        .with_context(|| format!("attaching the floor program to raw tracepoint {name}"))
}

/// Attaches a cgroup program to the cgroup open at `cgroup` through a BPF link
/// (BPF_LINK_CREATE, 5.7+), so that closing the link detaches it; multi-attach is implied.
pub fn attach_cgroup(prog: &OwnedFd, cgroup: &OwnedFd, attach_type: u32) -> Result<OwnedFd> {
    let mut attr = [0u8; ATTR_SIZE];
    put(&mut attr, 0, &(prog.as_raw_fd() as u32).to_ne_bytes());
    put(&mut attr, 4, &(cgroup.as_raw_fd() as u32).to_ne_bytes());
    put(&mut attr, 8, &attach_type.to_ne_bytes());
    sys_bpf(BPF_LINK_CREATE, &attr)
        .and_then(fd_from)
        .with_context(|| {
            format!("attaching the floor program to a cgroup (attach type {attach_type})")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_only_program_is_twelve_instructions_jumping_to_its_exit_value() {
        let code = count_only(7, 1);
        assert_eq!(code.len(), 12 * 8);
        // the conditional jump skips exactly the three increment instructions
        let jump = &code[6 * 8..7 * 8];
        assert_eq!(jump[0], 0x15);
        assert_eq!(i16::from_ne_bytes([jump[2], jump[3]]), 3);
        let mov = &code[10 * 8..11 * 8];
        assert_eq!(i32::from_ne_bytes([mov[4], mov[5], mov[6], mov[7]]), 1);
        // ld_imm64 carries the map fd and the pseudo-map-fd source register
        assert_eq!(code[3 * 8 + 1] >> 4, BPF_PSEUDO_MAP_FD);
        assert_eq!(
            i32::from_ne_bytes([code[28], code[29], code[30], code[31]]),
            7
        );
    }
}

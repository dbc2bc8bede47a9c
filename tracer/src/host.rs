//! Facts about this host that the engine takes as data.
use std::{collections::HashSet, net::IpAddr};

/// This host's addresses, so a reset from one of them is never blamed on the network.
pub fn local_addresses() -> HashSet<IpAddr> {
    let mut out = HashSet::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills ifap with a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: family is AF_INET.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.insert(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: family is AF_INET6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.insert(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: ifap came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    out
}

/// CLOCK_MONOTONIC now, the clock of the kernel's event times (bpf_ktime_get_ns).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The initial cgroup namespace's inode, fixed by the kernel (PROC_CGROUP_INIT_INO in
/// include/linux/proc_ns.h): pid 1's namespace cannot always be read to compare with.
const INIT_CGROUP_NAMESPACE: &str = "cgroup:[4026531835]";

/// Whether this process runs in a cgroup namespace other than the host's (false when
/// that cannot be read).
pub fn in_own_cgroup_namespace() -> bool {
    std::fs::read_link("/proc/self/ns/cgroup")
        .is_ok_and(|ns| ns.as_os_str() != INIT_CGROUP_NAMESPACE)
}

/// Capability numbers (include/uapi/linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities rsttrace cannot run without that this process lacks (empty when it
/// can run): loading programs and maps needs CAP_BPF, attaching tracepoint programs and
/// reading kernel memory from them needs CAP_PERFMON (kernel/bpf/syscall.c,
/// bpf_prog_load); CAP_SYS_ADMIN, which kernels before 5.8 required, still stands in for
/// both. Checked on the effective set, not on the uid: a root in a container may lack
/// them, and a non-root service may hold them (systemd AmbientCapabilities=).
pub fn missing_capabilities() -> std::io::Result<Vec<&'static str>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    Ok(missing_from(effective_set(&status).ok_or_else(|| {
        std::io::Error::other("no readable CapEff line in /proc/self/status")
    })?))
}

fn effective_set(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn missing_from(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_from_proc_status() {
        // Root's full set, then a service holding CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN,
        // CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH only, then nobody.
        let status = |eff: &str| format!("Name:\tx\nCapPrm:\t0\nCapEff:\t{eff}\nCapBnd:\t0\n");
        let root = effective_set(&status("000001fffeffffff")).expect("parsed");
        assert!(missing_from(root).is_empty());
        let service = effective_set(&status("000000c000081004")).expect("parsed");
        assert!(missing_from(service).is_empty());
        assert_eq!(missing_from(0), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_from(1 << CAP_BPF), ["CAP_PERFMON"]);
        assert!(missing_from(1 << CAP_SYS_ADMIN).is_empty());
        assert_eq!(effective_set("Name:\tx\n"), None);
    }
}

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

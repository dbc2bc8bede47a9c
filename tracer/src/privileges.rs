//! Which capabilities rsttrace runs with: checked on the effective set at start, not on
//! the uid (a root in a container may lack them, a service holds them without root:
//! systemd's AmbientCapabilities=), and those only attaching needs given up once attached.
use caps::{errors::CapsError, CapSet, Capability, CapsHashSet};

/// What loading and attaching need, and nothing after: CAP_BPF for maps and programs,
/// CAP_PERFMON for tracing programs and the perf_event_open() that attaches a tracepoint
/// (kernel/bpf/syscall.c, bpf_prog_load; kernel/events/core.c), CAP_SYS_ADMIN where that
/// stands in for both (kernels before 5.8) or where Debian's and Ubuntu's
/// perf_event_paranoid levels above 2 demand it for perf_event_open(), CAP_NET_ADMIN for
/// cgroup socket programs. The map and ring buffer fds already open need none of them.
const ATTACH_ONLY: [Capability; 4] = [
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_NET_ADMIN,
];

/// The capabilities rsttrace cannot start without that this process lacks (empty when
/// it can start).
pub fn missing_capabilities() -> Result<Vec<&'static str>, CapsError> {
    Ok(missing_from(&caps::read(None, CapSet::Effective)?))
}

fn missing_from(effective: &CapsHashSet) -> Vec<&'static str> {
    if effective.contains(&Capability::CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [
        (Capability::CAP_BPF, "CAP_BPF"),
        (Capability::CAP_PERFMON, "CAP_PERFMON"),
    ]
    .into_iter()
    .filter(|(cap, _)| !effective.contains(cap))
    .map(|(_, name)| name)
    .collect()
}

/// Gives up the capabilities only attaching needed, for good: what runs for weeks keeps
/// only what reading /proc and logs needs (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH).
/// capset() changes the calling thread only: call it before any other thread exists.
///
/// `keep_sys_admin`: CAP_SYS_ADMIN stays while network evidence is reported, because
/// naming the interfaces of other network namespaces enters them (setns(CLONE_NEWNET),
/// kernel/nsproxy.c, needs CAP_SYS_ADMIN).
pub fn drop_attach_capabilities(keep_sys_admin: bool) -> Result<(), CapsError> {
    // Effective first: it may never hold what permitted does not. Ambient bits go with
    // permitted (security/commoncap.c, cap_capset).
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        let mut held = caps::read(None, set)?;
        held.retain(|cap| {
            !ATTACH_ONLY.contains(cap) || (keep_sys_admin && *cap == Capability::CAP_SYS_ADMIN)
        });
        caps::set(None, set, &held)?;
    }
    Ok(())
}

/// Whether a permission error from attaching comes from Debian's or Ubuntu's extra
/// perf_event_paranoid levels (3, 4; mainline stops at 2), which keep perf_event_open()
/// to CAP_SYS_ADMIN even with CAP_PERFMON: the value, when it is such a level.
pub fn restrictive_perf_event_paranoid() -> Option<i64> {
    let value: i64 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let admin = caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).ok()?;
    (value > 2 && !admin).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_and_perfmon_or_sys_admin() {
        let set = |caps: &[Capability]| caps.iter().copied().collect::<CapsHashSet>();
        assert_eq!(missing_from(&set(&[])), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_from(&set(&[Capability::CAP_BPF])), ["CAP_PERFMON"]);
        assert!(missing_from(&set(&[Capability::CAP_BPF, Capability::CAP_PERFMON])).is_empty());
        assert!(missing_from(&set(&[Capability::CAP_SYS_ADMIN])).is_empty());
    }
}

//! The BPF programs a process holds and where they are attached, read from the kernel's own
//! description of its file descriptors (/proc/PID/fd and /proc/PID/fdinfo): a program's fdinfo
//! carries its id, type, run_cnt and run_time_ns; a link's carries its program id and its
//! attach point (tracepoint name, cgroup id and attach type). Nothing here knows rsttrace's
//! program names, so hooks the tracer adds are measured without touching the bench.
//! (Debian 12's bpftool is built without the `pids` field, so bpftool is used for names only.)

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

/// One program fd: its id and its kernel statistics (counted only while stats are enabled).
#[derive(Debug, Clone, Copy)]
pub struct ProgramFd {
    pub id: u32,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// Where a program is attached, as its link says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachPoint {
    /// A classic tracepoint (perf link, event_type tracepoint).
    Tracepoint { category: String, event: String },
    /// A raw or BTF-typed tracepoint (raw_tracepoint link: tp_btf programs too).
    RawTracepoint { event: String },
    /// A cgroup attachment (cgroup link): ingress/egress skb, sockops, ...
    Cgroup { cgroup_id: u64, attach_type: u32 },
    /// Anything else (the floor cannot mirror it; the per-hook figures still cover it).
    Other(String),
}

impl AttachPoint {
    /// The hook's name as the tables show it, also the key of its budget.
    pub fn name(&self) -> String {
        match self {
            AttachPoint::Tracepoint { category, event } => format!("{category}:{event}"),
            AttachPoint::RawTracepoint { event } => format!("raw:{event}"),
            AttachPoint::Cgroup { attach_type, .. } => {
                format!("cgroup:{}", cgroup_attach_name(*attach_type))
            }
            AttachPoint::Other(what) => what.clone(),
        }
    }
}

/// Names of enum bpf_attach_type values a cgroup link may carry (include/uapi/linux/bpf.h).
pub fn cgroup_attach_name(attach_type: u32) -> String {
    match attach_type {
        0 => "ingress".into(),
        1 => "egress".into(),
        2 => "sock_create".into(),
        3 => "sockops".into(),
        other => format!("attach_type_{other}"),
    }
}

/// A program of the process and where it is attached.
#[derive(Debug, Clone)]
pub struct AttachedHook {
    pub program: String,
    pub prog_id: u32,
    pub point: AttachPoint,
}

/// `/proc/<proc_dir>/fdinfo/<fd>` as key/value pairs, for every fd whose link target is
/// `anon_inode:<kind>`.
fn fdinfos(proc_dir: &str, kind: &str) -> Result<Vec<HashMap<String, String>>> {
    let fd_dir = PathBuf::from(format!("/proc/{proc_dir}/fd"));
    let entries = fs::read_dir(&fd_dir).with_context(|| format!("listing {}", fd_dir.display()))?;
    let want = format!("anon_inode:{kind}");
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        if target.to_string_lossy() != want {
            continue;
        }
        if let Ok(info) = fdinfo(proc_dir, &entry.file_name().to_string_lossy()) {
            out.push(info);
        }
    }
    Ok(out)
}

fn fdinfo(proc_dir: &str, fd: &str) -> Result<HashMap<String, String>> {
    let path = format!("/proc/{proc_dir}/fdinfo/{fd}");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

fn program_of(info: &HashMap<String, String>) -> Option<ProgramFd> {
    Some(ProgramFd {
        id: field(info, "prog_id")?,
        run_cnt: field(info, "run_cnt").unwrap_or(0),
        run_time_ns: field(info, "run_time_ns").unwrap_or(0),
    })
}

/// The program behind file descriptor `fd` of `proc_dir` ("self" or a pid).
pub fn program_fd(proc_dir: &str, fd: i32) -> Result<ProgramFd> {
    program_of(&fdinfo(proc_dir, &fd.to_string())?)
        .with_context(|| format!("fd {fd} of {proc_dir} is not a BPF program"))
}

fn field<T: std::str::FromStr>(info: &HashMap<String, String>, key: &str) -> Option<T> {
    info.get(key)?.parse().ok()
}

/// The programs held by `proc_dir` ("self" or a pid), one entry per program id.
pub fn programs(proc_dir: &str) -> Result<BTreeMap<u32, ProgramFd>> {
    Ok(fdinfos(proc_dir, "bpf-prog")?
        .iter()
        .filter_map(program_of)
        .map(|p| (p.id, p))
        .collect())
}

fn attach_point(info: &HashMap<String, String>) -> Result<AttachPoint> {
    let link_type = info.get("link_type").map_or("?", String::as_str);
    let tp_name = info.get("tp_name").cloned();
    Ok(match (link_type, tp_name) {
        ("perf", Some(event))
            if info.get("event_type").map(String::as_str) == Some("tracepoint") =>
        {
            AttachPoint::Tracepoint {
                category: tracepoint_category(&event)?,
                event,
            }
        }
        ("raw_tracepoint", Some(event)) => AttachPoint::RawTracepoint { event },
        ("cgroup", _) => AttachPoint::Cgroup {
            cgroup_id: field(info, "cgroup_id").unwrap_or(0),
            attach_type: field(info, "attach_type").unwrap_or(u32::MAX),
        },
        (other, tp) => AttachPoint::Other(format!(
            "{other}:{}",
            tp.or_else(|| info.get("attach_type").cloned())
                .unwrap_or_default()
        )),
    })
}

/// Every program `proc_dir` holds with its attach point (programs without a link are left
/// out: they never run).
pub fn attached(proc_dir: &str) -> Result<Vec<AttachedHook>> {
    let names = program_names()?;
    let mut hooks = Vec::new();
    for info in fdinfos(proc_dir, "bpf_link")? {
        let Some(prog_id) = field::<u32>(&info, "prog_id") else {
            continue;
        };
        hooks.push(AttachedHook {
            program: names
                .get(&prog_id)
                .cloned()
                .unwrap_or_else(|| format!("prog{prog_id}")),
            prog_id,
            point: attach_point(&info)?,
        });
    }
    hooks.sort_by(|a, b| a.program.cmp(&b.program));
    Ok(hooks)
}

/// Program names by id, from `bpftool prog show --json` (full names: bpftool reads them from
/// BTF where the kernel's 15-character name is cut).
pub fn program_names() -> Result<HashMap<u32, String>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running `bpftool prog show --json` (installed by `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!(
            "`bpftool prog show --json` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list: Vec<Value> =
        serde_json::from_slice(&out.stdout).context("parsing `bpftool prog show --json`")?;
    Ok(list
        .iter()
        .filter_map(|p| {
            let id = u32::try_from(p["id"].as_u64()?).ok()?;
            Some((id, p["name"].as_str()?.to_string()))
        })
        .collect())
}

/// The tracefs folder holding `events/`.
pub fn tracefs() -> Result<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
        .context(
            "tracefs is not mounted (rsttrace mounts it at /sys/kernel/tracing when it starts)",
        )
}

/// The category (`tcp`, `sock`, ...) of tracepoint `event`: a perf link names only the event.
fn tracepoint_category(event: &str) -> Result<String> {
    let events = tracefs()?.join("events");
    let dirs = fs::read_dir(&events).with_context(|| format!("listing {}", events.display()))?;
    let found: Vec<String> = dirs
        .flatten()
        .filter(|d| d.path().join(event).join("id").is_file())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("tracepoint {event} is not in {}", events.display()),
        many => bail!("tracepoint {event} exists in several categories: {many:?}"),
    }
}

/// The tracefs id of `category:event` (what perf_event_open attaches to).
pub fn tracepoint_id(category: &str, event: &str) -> Result<u64> {
    let path = tracefs()?
        .join("events")
        .join(category)
        .join(event)
        .join("id");
    fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} is not a number", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn links_name_their_attach_points() {
        let raw = info(&[("link_type", "raw_tracepoint"), ("tp_name", "tcp_probe")]);
        assert_eq!(
            attach_point(&raw).ok().map(|p| p.name()),
            Some("raw:tcp_probe".into())
        );
        let cg = info(&[
            ("link_type", "cgroup"),
            ("cgroup_id", "1"),
            ("attach_type", "3"),
        ]);
        assert_eq!(
            attach_point(&cg).ok(),
            Some(AttachPoint::Cgroup {
                cgroup_id: 1,
                attach_type: 3
            })
        );
        assert_eq!(cgroup_attach_name(0), "ingress");
        let kp = info(&[("link_type", "kprobe_multi")]);
        assert!(matches!(attach_point(&kp), Ok(AttachPoint::Other(_))));
    }
}

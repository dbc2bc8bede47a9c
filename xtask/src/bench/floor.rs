//! The floor: count-only programs on exactly the hooks rsttrace attaches (found at run time
//! from rsttrace's own links, see `progs`), so "floor / none" is what merely having a program
//! on those hooks costs (the tracepoint's record formatting, the program call, one per-CPU
//! increment), and "rsttrace / floor" is what rsttrace's work adds on top.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use super::bpf;
use super::progs::{self, AttachPoint, AttachedHook};

/// One count-only program, attached; dropping it detaches it.
pub struct FloorProgram {
    /// The attach point's name (as in [`AttachPoint::name`]).
    pub hook: String,
    pub prog: OwnedFd,
    map: OwnedFd,
    _attachment: OwnedFd,
}

/// Count-only programs on every hook rsttrace uses that the bench can mirror.
pub struct Floor {
    pub programs: Vec<FloorProgram>,
}

impl Floor {
    pub fn attach(hooks: &[AttachedHook]) -> Result<Self> {
        let mut programs = Vec::new();
        for hook in hooks {
            if let Some(p) = mirror(hook)? {
                programs.push(p);
            }
        }
        Ok(Self { programs })
    }

    /// Total runs counted by all floor programs so far.
    pub fn count(&self) -> Result<u64> {
        self.programs.iter().map(|p| bpf::counter_sum(&p.map)).sum()
    }
}

/// Hooks the floor cannot mirror (named in the table, so a partial floor is visible).
pub fn unmirrored(hooks: &[AttachedHook]) -> Vec<String> {
    hooks
        .iter()
        .filter(|h| matches!(h.point, AttachPoint::Other(_)))
        .map(|h| format!("{} ({})", h.program, h.point.name()))
        .collect()
}

fn mirror(hook: &AttachedHook) -> Result<Option<FloorProgram>> {
    let name = hook.point.name();
    let map = bpf::counter_map()?;
    let (prog, attachment) = match &hook.point {
        AttachPoint::Tracepoint { category, event } => {
            let prog = bpf::load_counter(bpf::PROG_TYPE_TRACEPOINT, 0, event, &map)?;
            let id = progs::tracepoint_id(category, event)?;
            let link = bpf::attach_tracepoint(&prog, id, &name)?;
            (prog, link)
        }
        AttachPoint::RawTracepoint { event } => {
            // tp_btf programs too: a raw tracepoint is the same call site without BTF types.
            let prog = bpf::load_counter(bpf::PROG_TYPE_RAW_TRACEPOINT, 0, event, &map)?;
            let link = bpf::attach_raw_tracepoint(&prog, event)?;
            (prog, link)
        }
        AttachPoint::Cgroup {
            cgroup_id,
            attach_type,
        } => {
            let prog_type = match attach_type {
                0 | 1 => bpf::PROG_TYPE_CGROUP_SKB,
                3 => bpf::PROG_TYPE_SOCK_OPS,
                _ => return Ok(None),
            };
            let prog = bpf::load_counter(prog_type, *attach_type, &name, &map)?;
            let dir = cgroup_dir(*cgroup_id)?;
            let cgroup = fs::File::open(&dir)
                .with_context(|| format!("opening cgroup {}", dir.display()))?;
            let link = bpf::attach_cgroup(&prog, &OwnedFd::from(cgroup), *attach_type)?;
            (prog, link)
        }
        AttachPoint::Other(_) => return Ok(None),
    };
    Ok(Some(FloorProgram {
        hook: name,
        prog,
        map,
        _attachment: attachment,
    }))
}

/// The cgroup v2 folder whose id (its inode number on cgroup2) is `id`.
fn cgroup_dir(id: u64) -> Result<PathBuf> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    // "36 25 0:31 / /sys/fs/cgroup/unified rw,... - cgroup2 cgroup2 rw,..."
    let roots: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect();
    for root in &roots {
        if let Some(dir) = find_inode(root, id, 0) {
            return Ok(dir);
        }
    }
    bail!("no cgroup with id {id} under the cgroup2 mounts {roots:?}")
}

fn find_inode(dir: &Path, ino: u64, depth: u32) -> Option<PathBuf> {
    if fs::metadata(dir).ok()?.ino() == ino {
        return Some(dir.to_path_buf());
    }
    if depth > 16 {
        return None;
    }
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| find_inode(&e.path(), ino, depth + 1))
}

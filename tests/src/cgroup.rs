//! A memory cgroup with a hard limit and no swap, on cgroup v1 or v2 (detected).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{send_signal, wait_until};

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// A memory cgroup created for one test; drop kills what is left in it and removes it.
#[derive(Debug)]
pub struct MemCgroup {
    version: CgroupVersion,
    dir: PathBuf,
    path: String,
}

impl MemCgroup {
    /// Creates `/rsttrace-test-<pid>-<n>` under the memory hierarchy's root with a limit of
    /// `limit_bytes` and swap disabled.
    pub fn create(limit_bytes: u64) -> Result<Self> {
        let (version, root) = memory_hierarchy()?;
        let path = format!(
            "/rsttrace-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        if version == CgroupVersion::V2 {
            enable_memory_controller(&root)?;
        }
        let dir = root.join(path.trim_start_matches('/'));
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        let cgroup = Self { version, dir, path };
        limit_memory(version, &cgroup.dir, limit_bytes)?;
        Ok(cgroup)
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The cgroup's path relative to the memory hierarchy's root, e.g. "/rsttrace-test-42-0".
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Its folder in the cgroup file system.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file to write a pid to in order to move that process into the cgroup.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Processes in the cgroup now.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// How many processes the OOM killer killed in this cgroup (v1 memory.oom_control,
    /// v2 memory.events), if the kernel reports it.
    pub fn oom_kills(&self) -> Option<u64> {
        oom_kills(self.version, &self.dir)
    }
}

/// Sets a hard memory limit of `limit_bytes` on the cgroup folder `dir` and disables swap.
pub(crate) fn limit_memory(version: CgroupVersion, dir: &Path, limit_bytes: u64) -> Result<()> {
    let limit = limit_bytes.to_string();
    let write = |file: &str, value: &str| {
        let path = dir.join(file);
        fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))
    };
    match version {
        CgroupVersion::V1 => {
            write("memory.limit_in_bytes", &limit)?;
            // memsw (memory + swap) may only be set once the memory limit is in place.
            if dir.join("memory.memsw.limit_in_bytes").exists() {
                write("memory.memsw.limit_in_bytes", &limit)?;
            }
            if dir.join("memory.swappiness").exists() {
                write("memory.swappiness", "0")?;
            }
        }
        CgroupVersion::V2 => {
            write("memory.max", &limit)?;
            if dir.join("memory.swap.max").exists() {
                write("memory.swap.max", "0")?;
            }
        }
    }
    Ok(())
}

/// How many processes the OOM killer killed in the memory cgroup folder `dir`.
pub(crate) fn oom_kills(version: CgroupVersion, dir: &Path) -> Option<u64> {
    let file = match version {
        CgroupVersion::V1 => "memory.oom_control",
        CgroupVersion::V2 => "memory.events",
    };
    fs::read_to_string(dir.join(file))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // Only processes the test put there (its servers) can be inside.
        let emptied = wait_until(Duration::from_secs(5), || {
            let pids = self.pids();
            for pid in &pids {
                let _ = send_signal(*pid, libc::SIGKILL);
            }
            pids.is_empty().then_some(())
        });
        if emptied.is_none() {
            eprintln!(
                "warning: cgroup {} still holds {:?}",
                self.path,
                self.pids()
            );
        }
        let removed = wait_until(Duration::from_secs(5), || fs::remove_dir(&self.dir).ok());
        if removed.is_none() {
            eprintln!("warning: could not remove cgroup {}", self.dir.display());
        }
    }
}

/// Finds where the memory controller is mounted: a v1 hierarchy with the `memory` option, or
/// a cgroup2 mount whose cgroup.controllers lists `memory` (/sys/fs/cgroup on v2-only hosts,
/// /sys/fs/cgroup/unified on hybrid ones when v1 does not hold the controller).
pub fn memory_hierarchy() -> Result<(CgroupVersion, PathBuf)> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mut v2 = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mount_point, fstype, options, ..] = fields[..] else {
            continue;
        };
        let mount_point = PathBuf::from(mount_point.replace("\\040", " "));
        match fstype {
            "cgroup" if options.split(',').any(|o| o == "memory") => {
                return Ok((CgroupVersion::V1, mount_point));
            }
            "cgroup2" if v2.is_none() => {
                let controllers =
                    fs::read_to_string(mount_point.join("cgroup.controllers")).unwrap_or_default();
                if controllers.split_whitespace().any(|c| c == "memory") {
                    v2 = Some(mount_point);
                }
            }
            _ => {}
        }
    }
    match v2 {
        Some(root) => Ok((CgroupVersion::V2, root)),
        None => bail!("no memory cgroup controller is mounted (neither v1 nor v2)"),
    }
}

/// Lets the children of the cgroup2 folder `root` use the memory controller.
pub(crate) fn enable_memory_controller(root: &Path) -> Result<()> {
    let control = root.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).unwrap_or_default();
    if enabled.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    fs::write(&control, "+memory")
        .with_context(|| format!("enabling the memory controller in {}", control.display()))
}

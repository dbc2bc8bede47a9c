//! A cgroup whose path looks like a container runtime's, created in every mounted hierarchy
//! (each cgroup v1 controller, `name=systemd`, and the cgroup2 mount: this host has the
//! hybrid layout, a v2-only host just the one), so /proc/PID/cgroup and the task's cgroups in
//! the kernel show the same container path everywhere, as docker's cgroupfs driver does.
//! Tests container detection without a container runtime.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::cgroup::{
    enable_memory_controller, limit_memory, memory_hierarchy, oom_kills, CgroupVersion,
};
use crate::process::{send_signal, wait_until};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The cgroup path shapes of common runtimes (`<id>` is a 64-hex container id, `<uid>` a pod
/// UID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerLayout {
    /// Docker, cgroupfs driver: `/docker/<id>`.
    Docker,
    /// Docker, systemd driver: `/system.slice/docker-<id>.scope`.
    DockerSystemd,
    /// Kubernetes, systemd driver, containerd:
    /// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`.
    KubepodsContainerd,
    /// Kubernetes, systemd driver, CRI-O: as above ending in `crio-<id>.scope`.
    KubepodsCrio,
    /// Kubernetes, cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>`.
    KubepodsCgroupfs,
    /// Podman: `/machine.slice/libpod-<id>.scope`.
    Podman,
}

impl ContainerLayout {
    /// The cgroup path for a container `id` in pod `pod_uid` (dashed UUID form).
    pub fn path(self, id: &str, pod_uid: &str) -> String {
        let pod_systemd = pod_uid.replace('-', "_");
        let kube = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_systemd}.slice"
        );
        match self {
            Self::Docker => format!("/docker/{id}"),
            Self::DockerSystemd => format!("/system.slice/docker-{id}.scope"),
            Self::KubepodsContainerd => format!("{kube}/cri-containerd-{id}.scope"),
            Self::KubepodsCrio => format!("{kube}/crio-{id}.scope"),
            Self::KubepodsCgroupfs => format!("/kubepods/burstable/pod{pod_uid}/{id}"),
            Self::Podman => format!("/machine.slice/libpod-{id}.scope"),
        }
    }

    /// Whether the path names a pod.
    pub fn has_pod(self) -> bool {
        matches!(
            self,
            Self::KubepodsContainerd | Self::KubepodsCrio | Self::KubepodsCgroupfs
        )
    }
}

/// One container's cgroup in every hierarchy; drop kills what is inside and removes the
/// folders it created (never ones that existed already, like a real /docker).
#[derive(Debug)]
pub struct ContainerCgroup {
    layout: ContainerLayout,
    id: String,
    pod_uid: String,
    path: String,
    /// The container's folder in each hierarchy.
    leaves: Vec<PathBuf>,
    /// Folders this created, outermost first.
    created: Vec<PathBuf>,
    memory: Option<(CgroupVersion, PathBuf)>,
}

impl ContainerCgroup {
    /// Creates the path of `layout` for a fresh random-looking id, with a memory limit (and no
    /// swap) when `memory_limit` is given.
    pub fn create(layout: ContainerLayout, memory_limit: Option<u64>) -> Result<Self> {
        let id = hex_id(4);
        let uid = hex_id(2);
        let pod_uid = format!(
            "{}-{}-{}-{}-{}",
            &uid[0..8],
            &uid[8..12],
            &uid[12..16],
            &uid[16..20],
            &uid[20..32]
        );
        let path = layout.path(&id, &pod_uid);
        let mut cgroup = Self {
            layout,
            id,
            pod_uid,
            path,
            leaves: Vec::new(),
            created: Vec::new(),
            memory: None,
        };
        for (root, version) in hierarchies()? {
            let leaf = cgroup.make_path(&root, version)?;
            cgroup.leaves.push(leaf);
        }
        if let Some(limit) = memory_limit {
            cgroup.limit_memory(limit)?;
        }
        Ok(cgroup)
    }

    /// Creates each level of the path under `root`; a new v1 cpuset gets its parent's CPUs
    /// and memory nodes (an empty cpuset refuses tasks: ENOSPC), a new v2 level passes the
    /// memory controller down when the root offers it.
    fn make_path(&mut self, root: &Path, version: CgroupVersion) -> Result<PathBuf> {
        let mut dir = root.to_path_buf();
        for part in self.path.trim_start_matches('/').split('/') {
            let parent = dir.clone();
            dir.push(part);
            if dir.is_dir() {
                continue;
            }
            if version == CgroupVersion::V2 && offers_memory(&parent) {
                enable_memory_controller(&parent)?;
            }
            fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
            self.created.push(dir.clone());
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if version == CgroupVersion::V1 && parent.join(file).exists() {
                    let value = fs::read_to_string(parent.join(file)).unwrap_or_default();
                    fs::write(dir.join(file), value.trim())
                        .with_context(|| format!("writing {file} of {}", dir.display()))?;
                }
            }
        }
        Ok(dir)
    }

    fn limit_memory(&mut self, limit: u64) -> Result<()> {
        let (version, root) = memory_hierarchy()?;
        let dir = root.join(self.path.trim_start_matches('/'));
        limit_memory(version, &dir, limit)?;
        self.memory = Some((version, dir));
        Ok(())
    }

    pub fn layout(&self) -> ContainerLayout {
        self.layout
    }

    /// The 64-hex container id in the path.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pod UID (dashed) for the Kubernetes layouts.
    pub fn pod_uid(&self) -> Option<&str> {
        self.layout.has_pod().then_some(self.pod_uid.as_str())
    }

    /// The path inside each hierarchy, e.g. `/docker/3f…`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The container's folder in every hierarchy: what [`crate::Placement::cgroups`] takes.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.leaves
    }

    /// Moves a running process into the container's cgroup in every hierarchy.
    pub fn add(&self, pid: u32) -> Result<()> {
        for dir in &self.leaves {
            fs::write(dir.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("moving {pid} into {}", dir.display()))?;
        }
        Ok(())
    }

    /// Processes inside (read from the first hierarchy).
    pub fn pids(&self) -> Vec<u32> {
        let Some(dir) = self.leaves.first() else {
            return Vec::new();
        };
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// OOM kills in the container's memory cgroup (when a limit was set).
    pub fn oom_kills(&self) -> Option<u64> {
        let (version, dir) = self.memory.as_ref()?;
        oom_kills(*version, dir)
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
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
        // Innermost first; a dying task leaves its cgroup a moment after it is reaped.
        for dir in self.created.iter().rev() {
            if wait_until(Duration::from_secs(5), || fs::remove_dir(dir).ok()).is_none() {
                eprintln!("warning: could not remove cgroup {}", dir.display());
            }
        }
    }
}

/// Mount points of every cgroup hierarchy (v1 with any controller or name, and cgroup2).
fn hierarchies() -> Result<Vec<(PathBuf, CgroupVersion)>> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mut found = Vec::new();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mount_point, fstype, ..] = fields[..] else {
            continue;
        };
        let version = match fstype {
            "cgroup" => CgroupVersion::V1,
            "cgroup2" => CgroupVersion::V2,
            _ => continue,
        };
        let dir = PathBuf::from(mount_point.replace("\\040", " "));
        if !found.iter().any(|(d, _)| *d == dir) {
            found.push((dir, version));
        }
    }
    if found.is_empty() {
        anyhow::bail!("no cgroup hierarchy is mounted");
    }
    Ok(found)
}

fn offers_memory(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == "memory")
}

/// `words` x 16 hex digits, distinct per call (pid, counter and clock mixed by splitmix64).
fn hex_id(words: usize) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut state = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ u64::from(COUNTER.fetch_add(1, Ordering::Relaxed));
    (0..words)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}", z ^ (z >> 31))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{hex_id, ContainerLayout};

    #[test]
    fn layouts() {
        let id = "a".repeat(64);
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(
            ContainerLayout::Docker.path(&id, uid),
            format!("/docker/{id}")
        );
        assert_eq!(
            ContainerLayout::KubepodsContainerd.path(&id, uid),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\
                 0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-{id}.scope"
            )
        );
        assert_eq!(
            ContainerLayout::KubepodsCgroupfs.path(&id, uid),
            format!("/kubepods/burstable/pod{uid}/{id}")
        );
    }

    #[test]
    fn ids_are_hex_and_distinct() {
        let (a, b) = (hex_id(4), hex_id(4));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}

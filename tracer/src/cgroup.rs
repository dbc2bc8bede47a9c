//! Memory cgroup ids (kernfs ids, read in the kernel) to paths, and whether an OOM kill in
//! them was a cgroup limit or the global OOM killer.
//!
//! A kernfs id is the inode number of the cgroup's directory in its hierarchy: the memory
//! controller's v1 mount, or the cgroup2 mount.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Where the cgroup2 hierarchy is mounted, from /proc/self/mountinfo: /sys/fs/cgroup on
/// unified hosts, /sys/fs/cgroup/unified on hybrid ones (systemd's v1 + v2 layout). Its
/// root directory is the root cgroup, which every socket of the host descends from. With
/// `under` (`--cgroup-root`), only a mount at or below that folder: in a container with a
/// cgroup namespace of its own, /sys/fs/cgroup is the container's subtree, and a program
/// attached there would see the container's packets only.
pub fn cgroup2_root(under: Option<&Path>) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_from_mountinfo(&info, under)
}

fn cgroup2_from_mountinfo(info: &str, under: Option<&Path>) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut l = left.split_whitespace();
        // id parent major:minor root mount-point ...: a mount of a subtree (a cgroup
        // namespace, a bind mount) has a root other than "/" and is not the host's root.
        let root = l.nth(3)?;
        let mount_point = l.next()?;
        if under.is_some_and(|dir| !Path::new(mount_point).starts_with(dir)) {
            return None;
        }
        (right.split_whitespace().next()? == "cgroup2" && root == "/")
            .then(|| PathBuf::from(mount_point))
    })
}

/// A memory cgroup as a verdict names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemcgInfo {
    pub path: String,
    /// The cgroup whose limit was hit, when it is one (else a global OOM).
    pub limited_by: Option<String>,
    pub limit_bytes: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct MemoryHierarchy {
    root: PathBuf,
    v2: bool,
}

impl MemoryHierarchy {
    /// The mount that carries the memory controller, from /proc/self/mountinfo; with
    /// `under`, only mounts at or below that folder: the host's tree mounted into a
    /// container, whose own /sys/fs/cgroup (in a cgroup namespace) shows only its own
    /// subtree and would leave other containers' cgroups unnamed.
    pub fn locate(under: Option<&Path>) -> Option<Self> {
        let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
        Self::from_mountinfo(&info, under, |p| p.join("cgroup.controllers"))
    }

    fn from_mountinfo(
        info: &str,
        under: Option<&Path>,
        controllers: impl Fn(&Path) -> PathBuf,
    ) -> Option<Self> {
        let mut v2_root = None;
        for line in info.lines() {
            // 36 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split_whitespace().nth(4)?;
            if under.is_some_and(|dir| !Path::new(mount_point).starts_with(dir)) {
                continue;
            }
            let mut r = right.split_whitespace();
            let fstype = r.next()?;
            let _source = r.next();
            let options = r.next().unwrap_or_default();
            if fstype == "cgroup" && options.split(',').any(|o| o == "memory") {
                return Some(Self {
                    root: PathBuf::from(mount_point),
                    v2: false,
                });
            }
            if fstype == "cgroup2" && v2_root.is_none() {
                let root = PathBuf::from(mount_point);
                let has_memory = fs::read_to_string(controllers(&root))
                    .map(|c| c.split_whitespace().any(|w| w == "memory"))
                    .unwrap_or(false);
                if has_memory {
                    v2_root = Some(root);
                }
            }
        }
        v2_root.map(|root| Self { root, v2: true })
    }

    /// Path of the cgroup with that kernfs id, relative to the hierarchy ("/" for root).
    pub fn path_of(&self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        let mut stack = vec![self.root.clone()];
        let mut visited = 0usize;
        while let Some(dir) = stack.pop() {
            visited += 1;
            if visited > 100_000 {
                return None;
            }
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            if meta.ino() == id {
                let rel = dir.strip_prefix(&self.root).ok()?;
                return Some(format!("/{}", rel.display()));
            }
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        None
    }

    /// Resolves an id and finds the nearest cgroup, from it up to the root, that has a
    /// memory limit and hit it: then the OOM kill was that cgroup's, not the host's.
    pub fn describe(&self, id: u64) -> Option<MemcgInfo> {
        let path = self.path_of(id)?;
        let mut cur = PathBuf::from(&path);
        loop {
            if cur.as_os_str() == "/" {
                break;
            }
            if let Some(limit) = self.limit_hit(&cur) {
                return Some(MemcgInfo {
                    path: path.clone(),
                    limited_by: Some(cur.display().to_string()),
                    limit_bytes: Some(limit),
                });
            }
            if !cur.pop() {
                break;
            }
        }
        Some(MemcgInfo {
            path,
            limited_by: None,
            limit_bytes: None,
        })
    }

    fn limit_hit(&self, rel: &Path) -> Option<u64> {
        let dir = self.root.join(rel.strip_prefix("/").unwrap_or(rel));
        let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
        if self.v2 {
            let limit = read("memory.max")?.trim().parse::<u64>().ok()?;
            let events = read("memory.events")?;
            let count = |key: &str| {
                events.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse::<u64>().unwrap_or(0))
                })
            };
            (count("oom").unwrap_or(0) > 0 || count("max").unwrap_or(0) > 0).then_some(limit)
        } else {
            let limit = read("memory.limit_in_bytes")?.trim().parse::<u64>().ok()?;
            // "unlimited" is PAGE_COUNTER_MAX pages, rounded: anything near u64::MAX / 2.
            if limit >= (1 << 62) {
                return None;
            }
            let failcnt = read("memory.failcnt")?.trim().parse::<u64>().ok()?;
            let oom_kills = read("memory.oom_control")
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("oom_kill ").map(|v| v.trim().parse::<u64>()))
                })
                .and_then(Result::ok)
                .unwrap_or(0);
            (failcnt > 0 || oom_kills > 0).then_some(limit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_root_on_hybrid_and_unified_hosts() {
        let hybrid = "25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
            26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
            36 25 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            cgroup2_from_mountinfo(hybrid, None),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_from_mountinfo(unified, None),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let namespaced = "30 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_from_mountinfo(namespaced, None), None);
        // A pod's own cgroup2 mount (its namespace's root shows as "/") beside the host's
        // tree mounted at a fixed path: --cgroup-root picks the host's.
        let pod = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                   41 23 0:26 / /host/sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_from_mountinfo(pod, Some(Path::new("/host/sys/fs/cgroup"))),
            Some(PathBuf::from("/host/sys/fs/cgroup"))
        );
    }

    #[test]
    fn prefers_the_v1_memory_mount() {
        let info = "25 1 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                    30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                    33 25 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let h = MemoryHierarchy::from_mountinfo(info, None, |_| PathBuf::from("/nonexistent"))
            .expect("hierarchy");
        assert_eq!(h.root, PathBuf::from("/sys/fs/cgroup/memory"));
        assert!(!h.v2);
    }

    #[test]
    fn only_mounts_under_the_given_root() {
        // A container in its own cgroup namespace: the runtime's /sys/fs/cgroup (its own
        // subtree) is listed before the host's tree mounted at /host/sys/fs/cgroup.
        let info = "40 30 0:29 / /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n\
                    51 30 0:29 /../.. /host/sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n";
        let none = |_: &Path| PathBuf::from("/nonexistent");
        let host =
            MemoryHierarchy::from_mountinfo(info, Some(Path::new("/host/sys/fs/cgroup")), none)
                .expect("hierarchy");
        assert_eq!(host.root, PathBuf::from("/host/sys/fs/cgroup/memory"));
        let own = MemoryHierarchy::from_mountinfo(info, None, none).expect("hierarchy");
        assert_eq!(own.root, PathBuf::from("/sys/fs/cgroup/memory"));
        assert!(
            MemoryHierarchy::from_mountinfo(info, Some(Path::new("/elsewhere")), none).is_none()
        );
    }

    #[test]
    fn falls_back_to_cgroup2_with_memory_controller() {
        let dir = std::env::temp_dir().join(format!("rsttrace-cg-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("cgroup.controllers"), "cpu io memory pids\n").expect("write");
        let info = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let d = dir.clone();
        let h = MemoryHierarchy::from_mountinfo(info, None, move |_| d.join("cgroup.controllers"))
            .expect("hierarchy");
        assert!(h.v2);
        assert_eq!(h.root, PathBuf::from("/sys/fs/cgroup"));
        let _ = fs::remove_dir_all(dir);
    }
}

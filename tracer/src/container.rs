//! Which container a process runs in, from its cgroup path: the layouts container runtimes
//! and Kubernetes create (cgroupfs and systemd drivers alike).
use serde::Serialize;

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The runtime's container id (64 hex digits).
    pub id: String,
    /// "docker", "containerd", "cri-o", "podman", or "kubernetes" when only the pod layout
    /// says so (the cgroupfs driver names no runtime).
    pub runtime: &'static str,
    /// The Kubernetes pod's uid, for containers of a pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `prefix<id>suffix` -> id.
fn scoped_id<'a>(segment: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    let id = segment.strip_prefix(prefix)?.strip_suffix(suffix)?;
    is_container_id(id).then_some(id)
}

/// The pod uid in a kubepods path: `pod<uid>` (cgroupfs driver) or
/// `kubepods-<qos>-pod<uid with _ for ->.slice` (systemd driver).
fn pod_uid(path: &str) -> Option<String> {
    path.split('/').find_map(|seg| {
        let seg = seg.strip_suffix(".slice").unwrap_or(seg);
        let at = seg.rfind("pod")?;
        let uid = &seg[at + 3..];
        let uid = uid.replace('_', "-");
        (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
    })
}

/// The container `path` (a cgroup path such as /proc/PID/cgroup shows) belongs to.
pub fn container_of(path: &str) -> Option<Container> {
    let pod = path.contains("kubepods").then(|| pod_uid(path)).flatten();
    for seg in path.split('/').rev() {
        let found = [
            ("docker-", ".scope", "docker"),
            ("cri-containerd-", ".scope", "containerd"),
            ("crio-", ".scope", "cri-o"),
            ("libpod-", ".scope", "podman"),
        ]
        .into_iter()
        .find_map(|(prefix, suffix, runtime)| {
            scoped_id(seg, prefix, suffix).map(|id| (id, runtime))
        });
        if let Some((id, runtime)) = found {
            return Some(Container {
                id: id.to_string(),
                runtime,
                pod_uid: pod,
            });
        }
        if is_container_id(seg) {
            // A bare id: Docker's cgroupfs driver (/docker/<id>), or a pod's container
            // under the cgroupfs driver (/kubepods/<qos>/pod<uid>/<id>).
            let runtime = if pod.is_some() {
                "kubernetes"
            } else if path.contains("/docker/") {
                "docker"
            } else {
                continue;
            };
            return Some(Container {
                id: seg.to_string(),
                runtime,
                pod_uid: pod,
            });
        }
    }
    None
}

/// The cgroup path of a process from /proc/PID/cgroup's text: one that names a container
/// (on hybrid hosts the runtime may keep containers in the v1 hierarchies only), else the
/// cgroup2 line ("0::"), else the memory controller's, else the first.
pub fn cgroup_path(proc_cgroup: &str) -> Option<String> {
    let lines: Vec<(&str, &str)> = proc_cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?, parts.next()?))
        })
        .collect();
    let pick = |want: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .find(|(controllers, path)| want(controllers) && *path != "/")
    };
    lines
        .iter()
        .find(|(_, path)| container_of(path).is_some())
        .or_else(|| pick(&|c| c.is_empty()))
        .or_else(|| pick(&|c| c.split(',').any(|x| x == "memory")))
        .or_else(|| lines.iter().find(|(_, path)| *path != "/"))
        .or_else(|| lines.first())
        .map(|(_, path)| (*path).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4a1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccddeeff0";

    #[test]
    fn docker_cgroupfs_and_systemd_drivers() {
        let c = container_of(&format!("/docker/{ID}")).expect("docker cgroupfs");
        assert_eq!((c.id.as_str(), c.runtime), (ID, "docker"));
        let c = container_of(&format!("/system.slice/docker-{ID}.scope")).expect("systemd");
        assert_eq!((c.id.as_str(), c.runtime), (ID, "docker"));
    }

    #[test]
    fn containerd_crio_and_podman_scopes() {
        let c = container_of(&format!(
            "/system.slice/containerd.service/cri-containerd-{ID}.scope"
        ))
        .expect("containerd");
        assert_eq!(c.runtime, "containerd");
        assert_eq!(
            container_of(&format!("/crio-{ID}.scope")).map(|c| c.runtime),
            Some("cri-o")
        );
        assert_eq!(
            container_of(&format!("/machine.slice/libpod-{ID}.scope/container")).map(|c| c.runtime),
            Some("podman")
        );
    }

    #[test]
    fn kubernetes_pods_under_both_drivers() {
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod0b6e1c3a_8d4f_4c2e_9a7b_1f2e3d4c5b6a.slice/cri-containerd-{ID}.scope"
        );
        let c = container_of(&systemd).expect("systemd-driver pod");
        assert_eq!(c.runtime, "containerd");
        assert_eq!(
            c.pod_uid.as_deref(),
            Some("0b6e1c3a-8d4f-4c2e-9a7b-1f2e3d4c5b6a")
        );
        let cgroupfs = format!("/kubepods/besteffort/pod0b6e1c3a-8d4f-4c2e-9a7b-1f2e3d4c5b6a/{ID}");
        let c = container_of(&cgroupfs).expect("cgroupfs-driver pod");
        assert_eq!((c.id.as_str(), c.runtime), (ID, "kubernetes"));
        assert_eq!(
            c.pod_uid.as_deref(),
            Some("0b6e1c3a-8d4f-4c2e-9a7b-1f2e3d4c5b6a")
        );
    }

    #[test]
    fn plain_services_are_no_containers() {
        assert_eq!(container_of("/system.slice/php8.2-fpm.service"), None);
        assert_eq!(
            container_of("/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(container_of(&format!("/system.slice/{ID}")), None);
        assert_eq!(container_of("/"), None);
    }

    #[test]
    fn cgroup_paths_prefer_cgroup2_then_memory() {
        let hybrid =
            "12:memory:/system.slice/m\n1:name=systemd:/system.slice/x\n0::/system.slice/y\n";
        assert_eq!(cgroup_path(hybrid).as_deref(), Some("/system.slice/y"));
        let docker = format!("12:memory:/docker/{ID}\n0::/\n");
        assert_eq!(cgroup_path(&docker), Some(format!("/docker/{ID}")));
        let v1 = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n";
        assert_eq!(cgroup_path(v1).as_deref(), Some("/docker/abc"));
        let unified = "0::/kubepods.slice/x.scope\n";
        assert_eq!(
            cgroup_path(unified).as_deref(),
            Some("/kubepods.slice/x.scope")
        );
        assert_eq!(cgroup_path("0::/\n").as_deref(), Some("/"));
    }
}

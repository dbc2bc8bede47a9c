//! The Kubernetes DaemonSet (deploy/kubernetes/rsttrace-daemonset.yaml), as far as it can
//! be tried without a cluster: the manifest validated against Kubernetes' schemas, then
//! rsttrace started the way a container runtime starts that pod — in a cgroup and a
//! mount namespace of its own (hostPID and hostNetwork: no pid or network namespace), its
//! /sys/fs/cgroup the pod's own subtree, the host's tree mounted where the manifest's
//! hostPath volume puts it, uid 0 with exactly the manifest's capabilities and its
//! arguments — and shown to explain a real OOM kill in another cgroup: a memory cgroup
//! outside the pod's subtree, named relative to the host's tree. Run through `cargo xtask
//! test`.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rsttrace_tests::{
    capabilities, memory_hierarchy, require_root, CgroupVersion, MemCgroup, PythonPeer, Rsttrace,
    TempDir, PYTHON, RSTTRACE_BIN_ENV,
};
use serde_json::Value;

const MANIFEST: &str = "deploy/kubernetes/rsttrace-daemonset.yaml";
/// Kubernetes releases whose schemas the manifest must satisfy: the oldest and newest
/// that kubernetes-validate carries.
const KUBERNETES_VERSIONS: &[&str] = &["1.25.0", "1.37.0"];
const TIMEOUT: Duration = Duration::from_secs(20);
const VICTIM_LIMIT: u64 = 64 << 20;

/// What the kubelet and the runtime do before the container's entry point runs: the pod's
/// cgroup, then a cgroup and a mount namespace of its own (unshare --fork stays as the
/// parent: SIGINT goes to rsttrace itself, and reaches it if unshare is killed).
const POD: &str = r#"
set -e
echo $$ > "$POD_CGROUP_PROCS"
exec unshare --cgroup --mount --propagation private --fork --kill-child=SIGINT -- sh "$POD_INSIDE" "$@"
"#;

/// Inside the namespaces: the hostPath volume first (a bind of the host's tree, made
/// before anything covers it); then, in place of the host's /sys/fs/cgroup, the runtime's
/// own cgroup mount, which in a cgroup namespace shows only the pod's subtree (a tmpfs
/// holding the memory hierarchy on v1 hosts, as runtimes lay it out); then uid 0 with the
/// manifest's capabilities and none inheritable, as runtimes start containers.
const POD_INSIDE: &str = r#"
set -e
mount --rbind /sys/fs/cgroup "$HOST_CGROUP"
umount -R /sys/fs/cgroup
if [ "$POD_MEMORY_ROOT" != /sys/fs/cgroup ]; then
    mount -t tmpfs pod-cgroups /sys/fs/cgroup
    mkdir -p "$POD_MEMORY_ROOT"
fi
mount -t "$POD_MEMORY_FSTYPE" -o "$POD_MEMORY_OPTIONS" pod-memory "$POD_MEMORY_ROOT"
exec setpriv --inh-caps=-all --bounding-set="$POD_CAPABILITIES" -- "$@"
"#;

/// An upstream in a memory cgroup of its own that outgrows it while a request to it
/// waits unread: the OOM killer ends it, its socket sends the reset.
const OOM_VICTIM: &str = r#"
import socket, sys
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
conn.recv(1, socket.MSG_PEEK)  # the request is there; it stays unread
hog = []
while True:
    hog.append(b"\x01" * (8 << 20))  # touched pages, charged to the cgroup
"#;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn kubernetes_validate() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/share/rsttrace/kubernetes-validate/bin/kubernetes-validate")
}

/// The DaemonSet document of the manifest, read with Debian's PyYAML.
fn daemonset() -> Value {
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(workspace_root().join(MANIFEST))
        .output()
        .expect("running python3 (python3-yaml, installed by cargo xtask setup)");
    assert!(out.status.success(), "reading the manifest: {out:?}");
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON from PyYAML");
    docs.into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in the manifest")
}

/// How the manifest runs rsttrace.
struct PodSpec {
    args: Vec<String>,
    capabilities: Vec<String>,
    /// Where the host's /sys/fs/cgroup is mounted in the container.
    host_cgroup: String,
}

fn pod_spec(ds: &Value) -> PodSpec {
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostPID"], true,
        "rsttrace must see the host's processes"
    );
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["runAsUser"], 0, "capabilities work for uid 0 only");
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|s| s.as_str().expect("a string").to_string())
            .collect()
    };
    let host_path = |volume: &str| {
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == volume)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .map(str::to_string)
    };
    let host_cgroup = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| {
            m["name"]
                .as_str()
                .and_then(host_path)
                .is_some_and(|p| p == "/sys/fs/cgroup")
        })
        .and_then(|m| m["mountPath"].as_str())
        .expect("the host's /sys/fs/cgroup mounted in the container")
        .to_string();
    PodSpec {
        args: strings(&container["args"]),
        capabilities: strings(&security["capabilities"]["add"]),
        host_cgroup,
    }
}

#[test]
fn manifest_satisfies_the_kubernetes_schemas() {
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(kubernetes_validate())
            .args(["--strict", "--kubernetes-version", version])
            .arg(workspace_root().join(MANIFEST))
            .output()
            .expect("running kubernetes-validate (installed by cargo xtask setup)");
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        assert!(out.status.success(), "Kubernetes {version}: {out:?}");
    }
}

/// A running emulation of the DaemonSet's pod; dropping it stops rsttrace and removes the
/// pod's cgroup.
struct Pod {
    tool: Rsttrace,
    _cgroup: MemCgroup,
    _dir: TempDir,
}

/// Starts rsttrace as the manifest does, with `args` (the manifest's, its cgroup mount
/// path replaced by a folder of this test: the namespace is private, the folder is not).
fn start_pod(spec: &PodSpec, args: &[String]) -> Pod {
    require_root();
    let bin = std::env::var(RSTTRACE_BIN_ENV)
        .unwrap_or_else(|_| panic!("{RSTTRACE_BIN_ENV} is not set; run through cargo xtask test"));
    let dir = TempDir::new("pod").expect("temp dir");
    let host_cgroup = dir.subdir("host-cgroup", 0o755).expect("mount point");
    let pod_sh = dir.write("pod.sh", POD).expect("writing pod.sh");
    let inside_sh = dir
        .write("pod-inside.sh", POD_INSIDE)
        .expect("writing pod-inside.sh");
    // The pod's own memory cgroup, which becomes its cgroup namespace's root.
    let cgroup = MemCgroup::create(1 << 30).expect("the pod's cgroup");
    let (version, memory_root) = memory_hierarchy().expect("memory hierarchy");
    assert!(
        memory_root.starts_with("/sys/fs/cgroup"),
        "the memory controller is mounted at {}, not under /sys/fs/cgroup",
        memory_root.display()
    );
    let (fstype, options) = match version {
        CgroupVersion::V1 => ("cgroup", "memory"),
        CgroupVersion::V2 => ("cgroup2", "rw"),
    };
    let capabilities: String = spec
        .capabilities
        .iter()
        .map(|c| format!(",+{}", c.to_lowercase()))
        .collect();
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if *a == spec.host_cgroup {
                host_cgroup.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let mut cmd = Command::new("sh");
    cmd.arg(&pod_sh)
        .arg(&bin)
        .args(&args)
        .env("POD_CGROUP_PROCS", cgroup.procs_file())
        .env("POD_INSIDE", &inside_sh)
        .env("HOST_CGROUP", &host_cgroup)
        .env("POD_MEMORY_ROOT", &memory_root)
        .env("POD_MEMORY_FSTYPE", fstype)
        .env("POD_MEMORY_OPTIONS", options)
        .env("POD_CAPABILITIES", format!("-all{capabilities}"));
    let tool = Rsttrace::start_command(cmd, libc::SIGKILL).expect("rsttrace starts in the pod");
    Pod {
        tool,
        _cgroup: cgroup,
        _dir: dir,
    }
}

fn link(path: &str) -> PathBuf {
    std::fs::read_link(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The pod is what it claims to be: its own cgroup namespace, rooted at the pod's cgroup
/// (its memory cgroup reads as "/"), the host's pids, the manifest's capabilities.
fn assert_pod_view(pod: &Pod, spec: &PodSpec) {
    let pid = pod.tool.pid();
    // The initial cgroup namespace's inode is fixed (include/linux/proc_ns.h).
    assert_ne!(
        link(&format!("/proc/{pid}/ns/cgroup")),
        Path::new("cgroup:[4026531835]"),
        "rsttrace is not in a cgroup namespace of its own"
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroups");
    assert!(
        cgroups
            .lines()
            .any(|l| (l.contains(":memory:") || l.starts_with("0::")) && l.ends_with(":/")),
        "the pod's memory cgroup is not its namespace's root:\n{cgroups}"
    );
    let wanted: BTreeSet<String> = spec
        .capabilities
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    let bounding = capabilities(pid, "CapBnd").expect("rsttrace's bounding set");
    assert_eq!(bounding, wanted, "capabilities differ from the manifest's");
    // Attached: what only attaching needs is given up. CAP_SYS_ADMIN stays because the
    // manifest reports network evidence, whose interface names in other namespaces are
    // read from inside them (setns(CLONE_NEWNET)).
    let effective = capabilities(pid, "CapEff").expect("rsttrace's capabilities");
    let kept = BTreeSet::from([
        "CAP_DAC_READ_SEARCH".to_string(),
        "CAP_SYS_ADMIN".to_string(),
        "CAP_SYS_PTRACE".to_string(),
    ]);
    assert_eq!(effective, kept, "after attaching");
}

#[test]
fn without_the_host_cgroup_tree_rsttrace_says_what_it_cannot_name() {
    let spec = pod_spec(&daemonset());
    let mut args = spec.args.clone();
    let at = args
        .iter()
        .position(|a| a == "--cgroup-root")
        .expect("the manifest passes --cgroup-root");
    args.drain(at..at + 2);
    let mut pod = start_pod(&spec, &args);
    assert_pod_view(&pod, &spec);
    let stderr = pod.tool.stderr();
    assert!(
        stderr.contains("cgroup namespace of its own") && stderr.contains("--cgroup-root"),
        "no warning about the pod's cgroup view:\n{stderr}"
    );
    pod.tool.stop().expect("rsttrace stops cleanly");
}

#[test]
fn daemonset_pod_explains_an_oom_kill_in_another_cgroup() {
    let spec = pod_spec(&daemonset());
    eprintln!(
        "pod: rsttrace {:?}, capabilities {:?}, host cgroups at {}",
        spec.args, spec.capabilities, spec.host_cgroup
    );
    let mut pod = start_pod(&spec, &spec.args);
    assert_pod_view(&pod, &spec);
    assert!(
        !pod.tool.stderr().contains("warning"),
        "{}",
        pod.tool.stderr()
    );

    // Another pod's upstream: a sibling of the pod's cgroup, outside its subtree.
    let victim_cgroup = MemCgroup::create(VICTIM_LIMIT).expect("the victim's cgroup");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().expect("address").port().to_string();
    let (victim, _) = PythonPeer::start(
        "oom-victim",
        OOM_VICTIM,
        &[&port],
        Some(&victim_cgroup.procs_file()),
    )
    .expect("starting the victim");
    let (mut conn, victim_addr) = listener.accept().expect("the victim connects");
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("sending");
    conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let err = conn
        .read(&mut [0; 64])
        .expect_err("the victim is OOM-killed");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(
        victim_cgroup.oom_kills().is_none_or(|n| n > 0),
        "the kernel counted no OOM kill in {}; victim output:\n{}",
        victim_cgroup.path(),
        victim.output()
    );

    let remote = victim_addr.to_string();
    let event = pod
        .tool
        .wait_for(|e| e["remote"] == remote.as_str(), TIMEOUT)
        .unwrap_or_else(|| panic!("no reset from {remote}:\n{}", pod.tool.report()));
    eprintln!("rsttrace in the pod: {event}");
    assert_eq!(event["cause"], "oom_kill", "{event}");
    assert_eq!(event["peer"]["pid"], victim.pid(), "{event}");
    assert_eq!(event["oom"]["scope"], "cgroup", "{event}");
    assert_eq!(event["oom"]["cgroup"], victim_cgroup.path(), "{event}");
    assert_eq!(event["oom"]["limit_bytes"], VICTIM_LIMIT, "{event}");
    pod.tool.stop().expect("rsttrace stops cleanly");
}

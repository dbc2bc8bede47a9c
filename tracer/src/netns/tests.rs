//! Real namespaces and veths made with iproute2 (root), removed by guards even when an
//! assertion fails. `ip -d link` is the independent witness of what the kernel set up.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::{Namespaces, NetnsRef, MAX_TABLES};

fn require_root() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the netns tests create network namespaces and veth pairs and must run as root; \
         run `cargo test -p rsttrace --lib` as root (CI does)"
    );
}

/// Interface names are at most 15 bytes (IFNAMSIZ): a short tag plus this test run's pid.
fn ifname(tag: &str) -> String {
    format!("rt{}{tag}", std::process::id() % 100_000)
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2, installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip [-n NS] -o -d link show DEV`: the kernel's own account of one interface.
fn show(netns: Option<&Netns>, dev: &str) -> String {
    match netns {
        Some(ns) => ip(&["-n", &ns.name, "-o", "-d", "link", "show", dev]),
        None => ip(&["-o", "-d", "link", "show", dev]),
    }
}

fn ifindex(netns: Option<&Netns>, dev: &str) -> u32 {
    let line = show(netns, dev);
    line.split(':')
        .next()
        .and_then(|index| index.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in `ip link show {dev}`: {line}"))
}

fn namespace_inode(path: &str) -> u32 {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {path}: {e}"));
    u32::try_from(meta.ino()).expect("namespace inodes fit in 32 bits")
}

/// A named namespace (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
    inode: u32,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("rsttrace-netns-{}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        let inode = namespace_inode(&format!("/run/netns/{name}"));
        Self { name, inode }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// An interface of rsttrace's own namespace, deleted on drop (with its veth peer).
struct HostLink(String);

impl Drop for HostLink {
    fn drop(&mut self) {
        // Usually gone already: deleting either end of a veth pair deletes both.
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// A process living in a namespace, killed on drop.
struct Resident(Child);

impl Resident {
    fn new(netns: &Netns) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &netns.name, "sleep", "60"])
            .spawn()
            .expect("starting `ip netns exec NAME sleep 60`");
        let resident = Self(child);
        // ip netns exec enters the namespace and then execs sleep under the same pid.
        let path = format!("/proc/{}/ns/net", resident.0.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::metadata(&path).map(|m| m.ino()).ok() != Some(u64::from(netns.inode)) {
            assert!(
                Instant::now() < deadline,
                "pid {} never entered {}",
                resident.0.id(),
                netns.name
            );
            thread::sleep(Duration::from_millis(10));
        }
        resident
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn veth_between_two_named_namespaces() {
    require_root();
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    let (va, vb, sa, sb, br) = (
        ifname("va"),
        ifname("vb"),
        ifname("sa"),
        ifname("sb"),
        ifname("br"),
    );
    ip(&[
        "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns", &b.name,
    ]);
    ip(&[
        "-n", &a.name, "link", "add", &sa, "type", "veth", "peer", "name", &sb,
    ]);
    ip(&["-n", &b.name, "link", "add", &br, "type", "bridge"]);
    let resident = Resident::new(&b);
    // What the kernel says before asking rsttrace: va's peer is in b, sa's is beside it.
    assert!(show(Some(&a), &va).contains(&format!("link-netns {}", b.name)));
    assert!(show(Some(&b), &vb).contains(&format!("link-netns {}", a.name)));
    assert!(!show(Some(&a), &sa).contains("link-netns"));
    let (ia, ib) = (ifindex(Some(&a), &va), ifindex(Some(&b), &vb));
    let (isa, isb, ibr) = (
        ifindex(Some(&a), &sa),
        ifindex(Some(&a), &sb),
        ifindex(Some(&b), &br),
    );
    eprintln!(
        "{}={} {va}={ia}, {}={} {vb}={ib} (pid {}), {sa}={isa} {sb}={isb} {br}={ibr}",
        a.name,
        a.inode,
        b.name,
        b.inode,
        resident.0.id()
    );

    let mut namespaces = Namespaces::new();
    let (na, nb) = (Some(a.inode), Some(b.inode));
    assert_eq!(namespaces.interface_name(na, ia), Some(va.clone()));
    assert_eq!(namespaces.interface_name(nb, ib), Some(vb.clone()));
    assert_eq!(namespaces.interface_name(na, isa), Some(sa.clone()));
    assert_eq!(namespaces.interface_name(nb, ibr), Some(br.clone()));
    assert_eq!(namespaces.interface_name(na, 1).as_deref(), Some("lo"));
    assert_eq!(namespaces.interface_name(na, 999_999), None);
    assert_eq!(
        namespaces.interface_name(Some(1), 1),
        None,
        "no such namespace"
    );

    let peer_of_va = namespaces.veth_peer(na, ia);
    let expected = NetnsRef {
        inode: b.inode,
        pid: Some(resident.0.id()),
        name: Some(b.name.clone()),
    };
    assert_eq!(peer_of_va, Some(expected));
    let expected = NetnsRef {
        inode: a.inode,
        pid: None,
        name: Some(a.name.clone()),
    };
    assert_eq!(namespaces.veth_peer(nb, ib), Some(expected));
    assert_eq!(
        namespaces.veth_peer(na, isa),
        None,
        "peer in the same namespace"
    );
    assert_eq!(
        namespaces.veth_peer(na, isb),
        None,
        "peer in the same namespace"
    );
    assert_eq!(namespaces.veth_peer(nb, ibr), None, "a bridge is no veth");
    assert_eq!(namespaces.veth_peer(na, 1), None, "lo is no veth");
    assert_eq!(namespaces.veth_peer(na, 999_999), None);
}

/// Two pairs whose four ends all have ifindex 2: matching indexes alone cannot tell which
/// namespace holds a peer, the namespace id (RTM_GETNSID) must.
#[test]
fn a_decoy_with_the_same_indexes_is_not_the_peer() {
    require_root();
    let [a, b, c, d] = ["ea", "eb", "ec", "ed"].map(Netns::new);
    let [xa, xb, xc, xd] = ["xa", "xb", "xc", "xd"].map(ifname);
    for (one, two, end, other) in [(&xa, &a, &xb, &b), (&xc, &c, &xd, &d)] {
        ip(&[
            "link",
            "add",
            one,
            "netns",
            &two.name,
            "type",
            "veth",
            "peer",
            "name",
            end,
            "netns",
            &other.name,
        ]);
    }
    let indexes = [
        ifindex(Some(&a), &xa),
        ifindex(Some(&b), &xb),
        ifindex(Some(&c), &xc),
        ifindex(Some(&d), &xd),
    ];
    assert_eq!(
        indexes, [2; 4],
        "fresh namespaces number their first veth 2"
    );
    assert!(show(Some(&a), &xa).contains(&format!("link-netns {}", b.name)));

    let mut namespaces = Namespaces::new();
    let started = Instant::now();
    let peer = namespaces
        .veth_peer(Some(a.inode), 2)
        .map(|peer| peer.inode);
    let cold = started.elapsed();
    assert_eq!(peer, Some(b.inode));
    let started = Instant::now();
    let peer = namespaces
        .veth_peer(Some(a.inode), 2)
        .map(|peer| peer.inode);
    let warm = started.elapsed();
    assert_eq!(peer, Some(b.inode));
    eprintln!("veth_peer: {cold:?} from the kernel, {warm:?} from the cache");
    assert_eq!(
        namespaces.veth_peer(Some(c.inode), 2).map(|p| p.inode),
        Some(d.inode)
    );
    assert_eq!(
        namespaces.veth_peer(Some(d.inode), 2).map(|p| p.inode),
        Some(c.inode)
    );
    assert_eq!(
        namespaces.veth_peer(Some(b.inode), 2).map(|p| p.inode),
        Some(a.inode)
    );
}

#[test]
fn veth_between_host_and_a_namespace() {
    require_root();
    let c = Netns::new("c");
    let (hc, nc) = (ifname("hc"), ifname("nc"));
    let host_link = HostLink(hc.clone());
    ip(&[
        "link", "add", &hc, "type", "veth", "peer", "name", &nc, "netns", &c.name,
    ]);
    assert!(show(None, &hc).contains(&format!("link-netns {}", c.name)));
    let (ih, ic) = (ifindex(None, &hc), ifindex(Some(&c), &nc));
    let host = namespace_inode("/proc/self/ns/net");
    eprintln!("host={host} {hc}={ih}, {}={} {nc}={ic}", c.name, c.inode);

    let mut namespaces = Namespaces::new();
    assert_eq!(namespaces.interface_name(None, ih), Some(hc.clone()));
    assert_eq!(namespaces.interface_name(Some(host), ih), Some(hc.clone()));
    assert_eq!(
        namespaces.interface_name(Some(c.inode), ic),
        Some(nc.clone())
    );
    let expected = NetnsRef {
        inode: c.inode,
        pid: None,
        name: Some(c.name.clone()),
    };
    assert_eq!(namespaces.veth_peer(None, ih), Some(expected.clone()));
    assert_eq!(namespaces.veth_peer(Some(host), ih), Some(expected));

    let back = namespaces
        .veth_peer(Some(c.inode), ic)
        .expect("the namespace's end of the pair has its peer in the host namespace");
    assert_eq!(back.inode, host);
    assert_eq!(back.name, None, "the host namespace has no /run/netns name");
    let pid = back.pid.expect("the host namespace has processes");
    assert_eq!(namespace_inode(&format!("/proc/{pid}/ns/net")), host);
    assert_eq!(namespaces.veth_peer(None, 1), None, "lo is no veth");
    drop(host_link);
}

#[test]
fn answers_expire() {
    require_root();
    let d = Netns::new("d");
    let (hd, nd) = (ifname("hd"), ifname("nd"));
    let host_link = HostLink(hd.clone());
    ip(&[
        "link", "add", &hd, "type", "veth", "peer", "name", &nd, "netns", &d.name,
    ]);
    let ih = ifindex(None, &hd);
    let validity = Duration::from_secs(2);
    let mut namespaces = Namespaces::with_validity(validity);
    let asked = Instant::now();
    let peer = namespaces.veth_peer(None, ih).map(|peer| peer.inode);
    assert_eq!(peer, Some(d.inode));

    ip(&["link", "del", &hd]);
    let gone = Command::new("ip")
        .args(["link", "show", &hd])
        .output()
        .expect("running ip link show");
    assert!(
        !gone.status.success(),
        "{hd} still exists after ip link del"
    );
    let cached = namespaces.veth_peer(None, ih).map(|peer| peer.inode);
    assert!(
        asked.elapsed() < validity,
        "deleting one veth took over {validity:?}: this machine is too loaded for this test"
    );
    assert_eq!(cached, Some(d.inode), "answered from the cache");
    thread::sleep(validity + Duration::from_millis(100));
    assert_eq!(namespaces.veth_peer(None, ih), None);
    assert_ne!(namespaces.interface_name(None, ih), Some(hd));
    drop(host_link);
}

#[test]
fn link_tables_are_bounded() {
    require_root();
    let mut namespaces = Namespaces::new();
    let host = namespace_inode("/proc/self/ns/net");
    assert_eq!(
        namespaces.interface_name(Some(host), 1).as_deref(),
        Some("lo")
    );
    // Unknown namespaces fail before a table is made; only readable ones take room.
    for _ in 0..3 {
        let _ = namespaces.interface_name(Some(1), 1);
    }
    assert_eq!(namespaces.tables.len(), 1);
    for key in 0..(MAX_TABLES as u32 * 2) {
        let table = super::Table {
            at: Instant::now(),
            links: Vec::new(),
            nsids: Default::default(),
        };
        namespaces.keep(Some(key), table);
        assert!(namespaces.tables.len() <= MAX_TABLES);
    }
}

/// 120 links take several netlink datagrams to dump (a link message is over 1 KiB): the
/// last one must still be found, and named.
#[test]
fn a_dump_spanning_many_datagrams() {
    require_root();
    use std::io::Write;
    let e = Netns::new("many");
    let mut batch = Command::new("ip")
        .args(["-n", &e.name, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("running ip -batch");
    let mut commands = String::new();
    for i in 0..60 {
        commands.push_str(&format!("link add m{i}a type veth peer name m{i}b\n"));
    }
    batch
        .stdin
        .take()
        .expect("ip -batch's stdin")
        .write_all(commands.as_bytes())
        .expect("writing to ip -batch");
    assert!(batch.wait().expect("waiting for ip -batch").success());
    let dump = ip(&["-n", &e.name, "link", "show"]);
    let dumped = dump.lines().filter(|l| !l.starts_with(' ')).count();
    assert_eq!(dumped, 121, "lo and 60 veth pairs");
    let last = ifindex(Some(&e), "m59b");

    let mut namespaces = Namespaces::new();
    assert_eq!(
        namespaces.interface_name(Some(e.inode), last).as_deref(),
        Some("m59b")
    );
    let table = namespaces
        .table(Some(e.inode))
        .expect("the namespace's links");
    assert_eq!(table.links.len(), 121);
    assert_eq!(
        namespaces.veth_peer(Some(e.inode), last),
        None,
        "peer beside it"
    );
}

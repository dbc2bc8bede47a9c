//! Names the interface a reset arrived on, in whichever network namespace received it, and
//! for a veth, the namespace at its other end (where a router or the host forwarded it).
//!
//! rsttrace asks only about resets no local socket sent, so answers come from the kernel on
//! demand — rtnetlink, from a short-lived thread that entered the namespace — and are kept
//! a few seconds, because namespaces and veths come and go. sysfs (/sys/class/net) cannot
//! serve: it shows the namespace it was mounted in, not the reader's.
use std::{
    collections::HashMap,
    fs::{self, File},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::procfs;

mod rtnl;
#[cfg(test)]
mod tests;

use rtnl::Link;

/// How long an answer about a namespace or its links is trusted.
const VALIDITY: Duration = Duration::from_secs(3);
/// Link tables kept at most (one per namespace asked about).
const MAX_TABLES: usize = 32;

/// A network namespace of this host, told so an operator can enter it:
/// `nsenter -n -t PID` or `ip netns exec NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsRef {
    /// The namespace's inode, as in `readlink /proc/PID/ns/net` = `net:[INODE]`.
    pub inode: u32,
    /// A process living in it (the lowest pid found); none for a named namespace no
    /// process has entered.
    pub pid: Option<u32>,
    /// Its name under /run/netns, if it has one.
    pub name: Option<String>,
}

/// Answers about interfaces of any network namespace, cached for a few seconds.
pub struct Namespaces {
    validity: Duration,
    directory: Option<(Instant, HashMap<u32, Known>)>,
    tables: HashMap<Option<u32>, Table>,
}

/// A namespace found under /run/netns or /proc/*/ns/net, and the file that opens it.
struct Known {
    path: PathBuf,
    dev: u64,
    pid: Option<u32>,
    name: Option<String>,
}

/// One namespace's links, and the ids it gives other namespaces (nsid -> inode, None when
/// no known namespace has that id), learned as veth peers are asked about.
struct Table {
    at: Instant,
    links: Vec<Link>,
    nsids: HashMap<i32, Option<u32>>,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self::new()
    }
}

impl Namespaces {
    pub fn new() -> Self {
        Self::with_validity(VALIDITY)
    }

    fn with_validity(validity: Duration) -> Self {
        Self {
            validity,
            directory: None,
            tables: HashMap::new(),
        }
    }

    /// Name of interface `ifindex` in namespace `netns` (None = rsttrace's own namespace).
    pub fn interface_name(&mut self, netns: Option<u32>, ifindex: u32) -> Option<String> {
        self.link(netns, ifindex)?.name
    }

    /// The namespace holding the peer of veth `ifindex` of namespace `netns` (None =
    /// rsttrace's own). None when the interface is not a veth, when its peer is in the same
    /// namespace, or when the peer's namespace cannot be found or read.
    pub fn veth_peer(&mut self, netns: Option<u32>, ifindex: u32) -> Option<NetnsRef> {
        let link = self.link(netns, ifindex).filter(|link| link.veth)?;
        // A veth whose peer is gone reports IFLA_LINK 0 (veth_get_iflink, drivers/net/veth.c).
        let peer_index = link.peer_index.filter(|&index| index != 0)?;
        let inode = self.namespace_of_nsid(netns, link.peer_nsid?)?;
        // The id and both tables may be a few seconds old and ids are reused once a
        // namespace dies: the peer must still be a veth pointing back at this one.
        let points_back = self.link(Some(inode), peer_index).is_some_and(|peer| {
            peer.veth && peer.peer_nsid.is_some() && peer.peer_index == Some(ifindex)
        });
        if !points_back {
            return None;
        }
        let known = self.directory().get(&inode)?;
        Some(NetnsRef {
            inode,
            pid: known.pid,
            name: known.name.clone(),
        })
    }

    fn link(&mut self, netns: Option<u32>, ifindex: u32) -> Option<Link> {
        let table = self.table(netns)?;
        table
            .links
            .iter()
            .find(|link| link.index == ifindex)
            .cloned()
    }

    /// The namespace `netns` calls `nsid` (IFLA_LINK_NETNSID is in the id space of the
    /// namespace that dumped the link): asked of `netns` for each known namespace in turn
    /// with RTM_GETNSID, until one has that id.
    fn namespace_of_nsid(&mut self, netns: Option<u32>, nsid: i32) -> Option<u32> {
        if let Some(&answer) = self.table(netns)?.nsids.get(&nsid) {
            return answer;
        }
        let entry = self.open(netns)?;
        let candidates: Vec<(u32, PathBuf, u64)> = self
            .directory()
            .iter()
            .map(|(&inode, known)| (inode, known.path.clone(), known.dev))
            .collect();
        // Each candidate is opened inside the worker, one at a time: a host with many
        // namespaces would otherwise hold that many descriptors at once.
        let answer = rtnl::in_namespace(entry, move || {
            let socket = rtnl::open()?;
            candidates.into_iter().find_map(|(inode, path, dev)| {
                let file = open_namespace(&path, dev, inode)?;
                (rtnl::nsid_of(&socket, &file)? == nsid).then_some(inode)
            })
        });
        if let Some(table) = self.tables.get_mut(&netns) {
            table.nsids.insert(nsid, answer);
        }
        answer
    }

    /// The links of `netns`, dumped afresh once the cached table is too old. A namespace
    /// that cannot be read gets an empty table, so a burst of questions about it is cheap.
    fn table(&mut self, netns: Option<u32>) -> Option<&Table> {
        let now = Instant::now();
        let fresh = self
            .tables
            .get(&netns)
            .is_some_and(|table| now.duration_since(table.at) < self.validity);
        if !fresh {
            let entry = self.open(netns)?;
            let links = rtnl::in_namespace(entry, || rtnl::links(&rtnl::open()?));
            self.keep(
                netns,
                Table {
                    at: now,
                    links: links.unwrap_or_default(),
                    nsids: HashMap::new(),
                },
            );
        }
        self.tables.get(&netns)
    }

    fn keep(&mut self, netns: Option<u32>, table: Table) {
        let (now, validity) = (table.at, self.validity);
        self.tables
            .retain(|_, kept| now.duration_since(kept.at) < validity);
        if self.tables.len() >= MAX_TABLES {
            let oldest = self.tables.iter().min_by_key(|(_, kept)| kept.at);
            if let Some(oldest) = oldest.map(|(&key, _)| key) {
                self.tables.remove(&oldest);
            }
        }
        self.tables.insert(netns, table);
    }

    /// A descriptor for entering `netns`: Some(None) for rsttrace's own namespace, which
    /// needs no entering; None when the namespace is not (or no longer) on this host.
    fn open(&mut self, netns: Option<u32>) -> Option<Option<File>> {
        let Some(inode) = netns else {
            return Some(None);
        };
        let known = self.directory().get(&inode)?;
        let (path, dev) = (known.path.clone(), known.dev);
        open_namespace(&path, dev, inode).map(Some)
    }

    fn directory(&mut self) -> &HashMap<u32, Known> {
        let now = Instant::now();
        let stale = self
            .directory
            .as_ref()
            .is_none_or(|(at, _)| now.duration_since(*at) >= self.validity);
        if stale {
            self.directory = None;
        }
        &self.directory.get_or_insert_with(|| (now, scan())).1
    }
}

/// Every network namespace reachable through /run/netns (named, maybe with no process) or a
/// process's /proc/PID/ns/net. A namespace held only by an open descriptor or a bind mount
/// elsewhere is not found.
fn scan() -> HashMap<u32, Known> {
    let mut found = HashMap::new();
    // Every namespace file lives on the one nsfs superblock; a leftover /run/netns file
    // whose bind mount is gone is a plain tmpfs file with an unrelated inode.
    let Some(nsfs) = fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev()) else {
        return found;
    };
    let mut named: Vec<PathBuf> = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    named.sort();
    for path in named {
        let name = path.file_name().and_then(|n| n.to_str()).map(str::to_owned);
        if let Some(inode) = namespace_inode(&path, nsfs) {
            found.entry(inode).or_insert(Known {
                path,
                dev: nsfs,
                pid: None,
                name,
            });
        }
    }
    for (pid, dir) in procfs::processes() {
        let path = dir.join("ns/net");
        if let Some(inode) = namespace_inode(&path, nsfs) {
            let known = found.entry(inode).or_insert(Known {
                path,
                dev: nsfs,
                pid: None,
                name: None,
            });
            known.pid = Some(known.pid.map_or(pid, |seen| seen.min(pid)));
        }
    }
    found
}

fn namespace_inode(path: &Path, nsfs: u64) -> Option<u32> {
    let meta = fs::metadata(path).ok()?;
    (meta.dev() == nsfs)
        .then(|| u32::try_from(meta.ino()).ok())
        .flatten()
}

/// Opens a namespace file and checks it is still the namespace the directory saw: a pid
/// may have exited and been reused since the scan.
fn open_namespace(path: &Path, dev: u64, inode: u32) -> Option<File> {
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    (meta.dev() == dev && meta.ino() == u64::from(inode)).then_some(file)
}

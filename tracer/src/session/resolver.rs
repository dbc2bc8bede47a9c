//! What the renderer asks of the world outside the pure engine: kernel reason names,
//! memory cgroups, wall time, interface names, cgroup paths. Each answer is cached or
//! bounded: a storm of resets from one process must not cost a file read each.
use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    rc::Rc,
    time::{Duration, Instant},
};

use crate::{
    cgroup::MemoryHierarchy,
    model::short_reason_name,
    netns::Namespaces,
    report::{CgroupInfo, MemcgInfo, NetnsJson, Resolve},
};

/// Names and paths the renderer needs that the pure engine does not have.
pub(super) struct Resolver {
    pub(super) reasons: HashMap<u32, String>,
    pub(super) memory: Option<MemoryHierarchy>,
    pub(super) offset_ns: i128,
    /// Memory cgroups of processes seen exiting: a dead peer's /proc entry is gone by
    /// the time its verdict is rendered.
    pub(super) exited: ExitedMemcgs,
    /// Interfaces and veth peers of the host's network namespaces, asked rarely (for resets
    /// no local socket sent), cached briefly.
    pub(super) namespaces: RefCell<Namespaces>,
    /// Cgroup paths by pid, read from /proc once per pid: a storm of resets from one
    /// process must not cost a file read each.
    pub(super) cgroups: RefCell<CgroupCache>,
}

/// pid -> cgroup path, bounded; an entry older than a few seconds is read again (a pid
/// may be reused, a process moved).
#[derive(Default)]
pub(super) struct CgroupCache {
    by_pid: crate::attribute::FastMap<u32, (Instant, Option<Rc<CgroupInfo>>)>,
}

impl CgroupCache {
    const MAX: usize = 4096;
    const FRESH: Duration = Duration::from_secs(5);

    fn get(
        &mut self,
        pid: u32,
        read: impl FnOnce() -> Option<Rc<CgroupInfo>>,
    ) -> Option<Rc<CgroupInfo>> {
        let now = Instant::now();
        if let Some((at, path)) = self.by_pid.get(&pid) {
            if now.duration_since(*at) < Self::FRESH {
                return path.clone();
            }
        }
        if self.by_pid.len() >= Self::MAX {
            self.by_pid
                .retain(|_, (at, _)| now.duration_since(*at) < Self::FRESH);
        }
        let path = read();
        self.by_pid.insert(pid, (now, path.clone()));
        path
    }
}

/// pid -> memory cgroup id of recent exits, bounded.
#[derive(Default)]
pub(super) struct ExitedMemcgs {
    order: VecDeque<u32>,
    by_pid: HashMap<u32, u64>,
}

impl ExitedMemcgs {
    const MAX: usize = 4096;

    pub(super) fn insert(&mut self, pid: u32, memcg_id: u64) {
        if memcg_id == 0 {
            return;
        }
        if self.by_pid.insert(pid, memcg_id).is_none() {
            self.order.push_back(pid);
        }
        while self.order.len() > Self::MAX {
            if let Some(old) = self.order.pop_front() {
                self.by_pid.remove(&old);
            }
        }
    }
}

impl Resolve for Resolver {
    fn reason_name(&self, reason: u32) -> Option<&str> {
        self.reasons.get(&reason).map(|n| short_reason_name(n))
    }
    fn memcg(&self, memcg_id: u64) -> Option<MemcgInfo> {
        self.memory.as_ref()?.describe(memcg_id)
    }
    fn wall_time_ns(&self, ktime_ns: u64) -> i128 {
        i128::from(ktime_ns) + self.offset_ns
    }
    fn interface(&self, netns: Option<u32>, ifindex: u32) -> Option<String> {
        self.namespaces.borrow_mut().interface_name(netns, ifindex)
    }
    fn far_side(&self, netns: Option<u32>, ifindex: u32) -> Option<NetnsJson> {
        let peer = self.namespaces.borrow_mut().veth_peer(netns, ifindex)?;
        Some(NetnsJson {
            inode: peer.inode,
            pid: peer.pid,
            name: peer.name,
        })
    }
    fn cgroup(&self, pid: u32) -> Option<Rc<CgroupInfo>> {
        self.cgroups.borrow_mut().get(pid, || {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|text| crate::container::cgroup_path(&text))
                .or_else(|| {
                    let id = *self.exited.by_pid.get(&pid)?;
                    self.memory.as_ref()?.path_of(id)
                })
                .map(|path| Rc::new(CgroupInfo::new(path)))
        })
    }
}

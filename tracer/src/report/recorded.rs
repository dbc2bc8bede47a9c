//! The facts a rendering asked for, kept for a later rendering of the same verdict.
//!
//! A verdict that waits for nginx's error.log line (up to 1.5 s) is rendered when the line
//! comes, and by then what rendering reads may be gone: the memory cgroup of a container that
//! was just OOM-killed, /proc of an exited peer. So when such a verdict leaves the engine it is
//! rendered once against the live facts through a [`Recorder`], and later from the
//! [`Recorded`] answers.
use std::{cell::RefCell, collections::HashMap, rc::Rc};

use super::{CgroupInfo, MemcgInfo, NetnsJson, Resolve};

/// Answers as the live facts gave them.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    offset_ns: i128,
    reasons: HashMap<u32, Option<String>>,
    memcgs: HashMap<u64, Option<MemcgInfo>>,
    cgroups: HashMap<u32, Option<Rc<CgroupInfo>>>,
    interfaces: HashMap<(Option<u32>, u32), Option<String>>,
    far_sides: HashMap<(Option<u32>, u32), Option<NetnsJson>>,
}

/// Runs `render` against `live`, keeping every answer it got.
pub fn record(live: &dyn Resolve, render: impl FnOnce(&dyn Resolve)) -> Recorded {
    let recorder = Recorder {
        live,
        kept: RefCell::new(Recorded {
            offset_ns: live.wall_time_ns(0),
            ..Recorded::default()
        }),
    };
    render(&recorder);
    recorder.kept.into_inner()
}

struct Recorder<'a> {
    live: &'a dyn Resolve,
    kept: RefCell<Recorded>,
}

impl Resolve for Recorder<'_> {
    fn reason_name(&self, reason: u32) -> Option<&str> {
        let name = self.live.reason_name(reason);
        self.kept
            .borrow_mut()
            .reasons
            .insert(reason, name.map(str::to_string));
        name
    }
    fn memcg(&self, memcg_id: u64) -> Option<MemcgInfo> {
        let info = self.live.memcg(memcg_id);
        self.kept.borrow_mut().memcgs.insert(memcg_id, info.clone());
        info
    }
    fn wall_time_ns(&self, ktime_ns: u64) -> i128 {
        self.live.wall_time_ns(ktime_ns)
    }
    fn cgroup(&self, pid: u32) -> Option<Rc<CgroupInfo>> {
        let cgroup = self.live.cgroup(pid);
        self.kept.borrow_mut().cgroups.insert(pid, cgroup.clone());
        cgroup
    }
    fn interface(&self, netns: Option<u32>, ifindex: u32) -> Option<String> {
        let name = self.live.interface(netns, ifindex);
        self.kept
            .borrow_mut()
            .interfaces
            .insert((netns, ifindex), name.clone());
        name
    }
    fn far_side(&self, netns: Option<u32>, ifindex: u32) -> Option<NetnsJson> {
        let side = self.live.far_side(netns, ifindex);
        self.kept
            .borrow_mut()
            .far_sides
            .insert((netns, ifindex), side.clone());
        side
    }
}

impl Resolve for Recorded {
    fn reason_name(&self, reason: u32) -> Option<&str> {
        self.reasons.get(&reason)?.as_deref()
    }
    fn memcg(&self, memcg_id: u64) -> Option<MemcgInfo> {
        self.memcgs.get(&memcg_id)?.clone()
    }
    fn wall_time_ns(&self, ktime_ns: u64) -> i128 {
        i128::from(ktime_ns) + self.offset_ns
    }
    fn cgroup(&self, pid: u32) -> Option<Rc<CgroupInfo>> {
        self.cgroups.get(&pid)?.clone()
    }
    fn interface(&self, netns: Option<u32>, ifindex: u32) -> Option<String> {
        self.interfaces.get(&(netns, ifindex))?.clone()
    }
    fn far_side(&self, netns: Option<u32>, ifindex: u32) -> Option<NetnsJson> {
        self.far_sides.get(&(netns, ifindex))?.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Facts that are there once: a container's cgroup removed after the first look.
    struct Fleeting {
        asked: Cell<u32>,
    }

    impl Resolve for Fleeting {
        fn reason_name(&self, reason: u32) -> Option<&str> {
            (reason == 11).then_some("TCP_ABORT_ON_CLOSE")
        }
        fn memcg(&self, memcg_id: u64) -> Option<MemcgInfo> {
            self.asked.set(self.asked.get() + 1);
            (self.asked.get() == 1).then(|| MemcgInfo {
                path: format!("/docker/{memcg_id}"),
                limited_by: Some(format!("/docker/{memcg_id}")),
                limit_bytes: Some(64 << 20),
            })
        }
        fn wall_time_ns(&self, ktime_ns: u64) -> i128 {
            i128::from(ktime_ns) + 1_000
        }
        fn cgroup(&self, pid: u32) -> Option<Rc<CgroupInfo>> {
            Some(Rc::new(CgroupInfo::new(format!("/pod/{pid}"))))
        }
    }

    #[test]
    fn later_renderings_see_what_the_first_one_saw() {
        let live = Fleeting {
            asked: Cell::new(0),
        };
        let recorded = record(&live, |r| {
            assert!(r.memcg(7).is_some());
            assert_eq!(r.reason_name(11), Some("TCP_ABORT_ON_CLOSE"));
            assert!(r.cgroup(42).is_some());
        });
        assert!(live.memcg(7).is_none(), "gone from the live facts");
        assert_eq!(
            recorded.memcg(7).and_then(|m| m.limit_bytes),
            Some(64 << 20)
        );
        assert_eq!(recorded.reason_name(11), Some("TCP_ABORT_ON_CLOSE"));
        assert_eq!(
            recorded.cgroup(42).map(|c| c.path.clone()),
            Some("/pod/42".to_string())
        );
        assert_eq!(recorded.wall_time_ns(5), 1_005);
        assert!(recorded.cgroup(43).is_none(), "never asked");
    }
}

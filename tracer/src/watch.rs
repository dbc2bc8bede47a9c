//! `--pid` / `--pid-of`: which resets the operator asked about.
//!
//! A reset is shown when its receiver or its peer is watched. A process is watched when
//! - it was named by `--pid`, or descends from one (forks seen since start);
//! - its name matches a `--pid-of` NAME: its comm, or its command line's program name,
//!   starts with NAME (`php-fpm` matches Debian's `php-fpm8.2` and the workers'
//!   `php-fpm: pool www` title), or it descends from such a process. The comm match is
//!   made on each event too, so a new master after a restart is followed at once.
use std::{collections::HashSet, fs};

use crate::model::{ProcessFork, Task};

#[derive(Clone, Debug, Default)]
pub struct Watch {
    names: Vec<String>,
    pids: HashSet<u32>,
    everything: bool,
}

impl Watch {
    pub fn everything() -> Self {
        Self {
            everything: true,
            ..Self::default()
        }
    }

    pub fn new(names: Vec<String>, pids: impl IntoIterator<Item = u32>) -> Self {
        let everything = names.is_empty();
        let pids: HashSet<u32> = pids.into_iter().collect();
        Self {
            everything: everything && pids.is_empty(),
            names,
            pids,
        }
    }

    pub fn is_everything(&self) -> bool {
        self.everything
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn add_pid(&mut self, pid: u32) {
        self.pids.insert(pid);
    }

    pub fn watched_pids(&self) -> usize {
        self.pids.len()
    }

    pub fn name_matches(&self, name: &str) -> bool {
        self.names.iter().any(|n| name.starts_with(n.as_str()))
    }

    pub fn on_fork(&mut self, fork: &ProcessFork) {
        if self.everything {
            return;
        }
        if self.pids.contains(&fork.parent_tgid) || self.pids.contains(&fork.parent_pid) {
            self.pids.insert(fork.child_pid);
        }
    }

    pub fn matches(&self, task: Option<&Task>) -> bool {
        let Some(task) = task else {
            return false;
        };
        self.everything || self.pids.contains(&task.pid) || self.name_matches(&task.comm)
    }
}

/// Processes whose comm or program name (argv[0]'s base name, or its first word for
/// rewritten titles such as `php-fpm: pool www`) starts with one of `names`.
pub fn scan_proc(watch: &Watch) -> Vec<u32> {
    let mut found = Vec::new();
    for (pid, base) in crate::procfs::processes() {
        let comm = fs::read_to_string(base.join("comm")).unwrap_or_default();
        let cmdline = fs::read(base.join("cmdline")).unwrap_or_default();
        if watch.name_matches(comm.trim_end()) || watch.name_matches(&program_name(&cmdline)) {
            found.push(pid);
        }
    }
    found
}

fn program_name(cmdline: &[u8]) -> String {
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    let first_word = argv0.split([' ', ':']).next().unwrap_or_default();
    first_word
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

pub fn pid_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(pid: u32, comm: &str) -> Task {
        Task {
            pid,
            tid: pid,
            comm: comm.into(),
        }
    }

    #[test]
    fn names_match_as_prefixes() {
        let w = Watch::new(vec!["php-fpm".into()], []);
        assert!(w.matches(Some(&task(1, "php-fpm8.2"))));
        assert!(!w.matches(Some(&task(1, "nginx"))));
        assert!(!w.matches(None));
    }

    #[test]
    fn children_of_watched_pids_are_watched() {
        let mut w = Watch::new(vec![], [100]);
        assert!(!w.is_everything());
        w.on_fork(&ProcessFork {
            time_ns: 1,
            parent_pid: 100,
            child_pid: 200,
            parent_tgid: 100,
        });
        w.on_fork(&ProcessFork {
            time_ns: 2,
            parent_pid: 200,
            child_pid: 300,
            parent_tgid: 200,
        });
        assert!(w.matches(Some(&task(300, "worker"))));
        assert!(!w.matches(Some(&task(400, "other"))));
    }

    #[test]
    fn no_filter_watches_everything() {
        let w = Watch::new(vec![], []);
        assert!(w.is_everything());
        assert!(w.matches(Some(&task(5, "anything"))));
    }

    #[test]
    fn program_names_from_rewritten_titles() {
        assert_eq!(program_name(b"php-fpm: pool www\0\0"), "php-fpm");
        assert_eq!(
            program_name(b"/usr/bin/python3\0/usr/bin/gunicorn\0"),
            "python3"
        );
        assert_eq!(program_name(b"/usr/sbin/php-fpm8.2\0-y\0x"), "php-fpm8.2");
        assert_eq!(program_name(b""), "");
    }
}

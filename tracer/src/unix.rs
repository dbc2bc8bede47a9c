//! Unix listeners that exist before rsttrace starts: who owns each listening path.
//!
//! listen() calls made later are traced (syscalls:sys_enter_listen); this start-up scan
//! covers the php-fpm master that has been running for weeks. It reads /proc/net/unix for
//! listening stream sockets and /proc/*/fd for the processes holding them, like `ss -xlp`.
use std::{
    collections::{HashMap, HashSet},
    fs,
};

use crate::model::{Task, UnixListen};

/// __SO_ACCEPTCON in /proc/net/unix's Flags column (include/linux/net.h).
const SO_ACCEPTCON: u32 = 1 << 16;
const SOCK_STREAM: u32 = 1;

/// One UnixListen per listening path, owned by the process at the root of its holders
/// (a master whose workers inherited the socket).
pub fn scan_listeners() -> Vec<UnixListen> {
    ListenerScanner::default().scan_new()
}

/// Finds listeners created since its previous scan. Where listen() is not traced (the
/// socket-level tracepoints need no syscall tracepoint), rsttrace rescans every second:
/// reading /proc/net/unix is cheap, and the /proc/*/fd walk only happens for new ones.
#[derive(Debug, Default)]
pub struct ListenerScanner {
    known: HashSet<u64>,
}

impl ListenerScanner {
    pub fn scan_new(&mut self) -> Vec<UnixListen> {
        let Ok(table) = fs::read_to_string("/proc/net/unix") else {
            return Vec::new();
        };
        let mut by_inode = parse_listeners(&table);
        let current: HashSet<u64> = by_inode.keys().copied().collect();
        by_inode.retain(|inode, _| !self.known.contains(inode));
        self.known = current;
        owners(by_inode)
    }
}

fn owners(by_inode: HashMap<u64, String>) -> Vec<UnixListen> {
    if by_inode.is_empty() {
        return Vec::new();
    }
    let mut holders: HashMap<u64, Vec<u32>> = HashMap::new();
    for (pid, dir) in crate::procfs::processes() {
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if by_inode.contains_key(&inode) {
                holders.entry(inode).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    for (inode, path) in by_inode {
        let Some(pids) = holders.get(&inode) else {
            continue;
        };
        let set: HashSet<u32> = pids.iter().copied().collect();
        for &pid in pids {
            if parent_of(pid).is_some_and(|ppid| set.contains(&ppid)) {
                continue;
            }
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push(UnixListen {
                time_ns: 0,
                owner: Task {
                    pid,
                    tid: pid,
                    comm: comm.trim_end().into(),
                },
                path: path.clone(),
            });
        }
    }
    out
}

/// inode -> path of listening unix stream sockets.
fn parse_listeners(table: &str) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    for line in table.lines().skip(1) {
        // Num RefCount Protocol Flags Type St Inode Path
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 8 {
            continue;
        }
        let flags = u32::from_str_radix(cols[3], 16).unwrap_or(0);
        let ty = u32::from_str_radix(cols[4], 16).unwrap_or(0);
        if flags & SO_ACCEPTCON == 0 || ty != SOCK_STREAM {
            continue;
        }
        if let Ok(inode) = cols[6].parse::<u64>() {
            out.insert(inode, cols[7..].join(" "));
        }
    }
    out
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_stream_sockets_only() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1234 /run/php/php8.2-fpm.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 1235 /run/php/php8.2-fpm.sock\n\
            0000000000000000: 00000002 00000000 00010000 0002 01 1236 /run/dgram.sock\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1237 @abstract\n\
            0000000000000000: 00000002 00000000 00000000 0001 03 1238\n";
        let l = parse_listeners(table);
        assert_eq!(l.len(), 2);
        assert_eq!(
            l.get(&1234).map(String::as_str),
            Some("/run/php/php8.2-fpm.sock")
        );
        assert_eq!(l.get(&1237).map(String::as_str), Some("@abstract"));
    }

    #[test]
    fn scan_finds_a_live_listener_and_its_owner() {
        let path = std::env::temp_dir().join(format!("rsttrace-scan-{}.sock", std::process::id()));
        let _ = fs::remove_file(&path);
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let found = scan_listeners();
        let _ = fs::remove_file(&path);
        let ours: Vec<_> = found
            .iter()
            .filter(|l| l.path == path.display().to_string())
            .collect();
        assert_eq!(ours.len(), 1, "{found:?}");
        assert_eq!(ours[0].owner.pid, std::process::id());
    }

    #[test]
    fn a_rescan_reports_only_new_listeners() {
        let mut scanner = ListenerScanner::default();
        let _ = scanner.scan_new();
        let path =
            std::env::temp_dir().join(format!("rsttrace-rescan-{}.sock", std::process::id()));
        let _ = fs::remove_file(&path);
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let new = scanner.scan_new();
        let again = scanner.scan_new();
        let _ = fs::remove_file(&path);
        let name = path.display().to_string();
        assert!(new.iter().any(|l| l.path == name), "{new:?}");
        assert!(!again.iter().any(|l| l.path == name), "{again:?}");
    }

    #[test]
    fn parent_of_self_is_known() {
        assert_eq!(
            parent_of(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }
}

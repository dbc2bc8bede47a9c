//! Network namespaces the tests create (iproute2's named ones, /run/netns/NAME), a way into
//! them for the test's own threads, and the three-namespace topology built from them.
//!
//! A [`Netns`] is a cheap handle (a name) that server options and firewall rules carry; an
//! [`OwnedNetns`] deletes its namespace on drop after killing whatever still runs inside.

mod iptables;
mod topology;

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

pub use iptables::{Family, FirewallSnapshot, IptRule, Iptables};
pub use topology::Topology;

use crate::command::{run, run_args};
use crate::process::{send_signal, wait_until};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short tag unique across the test processes of one run: `<pid hex>-<counter hex>`
/// (at most 9 characters, so interface names built on it stay within IFNAMSIZ - 1 = 15).
pub(crate) fn unique_tag() -> String {
    format!(
        "{:x}-{:x}",
        std::process::id() & 0xff_ffff,
        COUNTER.fetch_add(1, Ordering::Relaxed) & 0xff
    )
}

/// A named network namespace (`/run/netns/NAME`). Cloning copies the name only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A handle on an existing namespace (see `ip netns list`).
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The namespace's inode: what the kernel calls its `ns.inum` (struct net's
    /// `ns.inum`), as rsttrace reports it, and what `/proc/PID/ns/net` links to.
    pub fn inode(&self) -> Result<u64> {
        fs::metadata(self.path())
            .map(|m| m.ino())
            .with_context(|| format!("netns {} does not exist", self.name))
    }

    /// `ip netns exec NAME PROGRAM`: a Command running `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args...` inside the namespace; returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    /// `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_args("ip", &all)
    }

    /// Runs `f` on a thread that has joined this namespace (setns applies per thread), and
    /// returns its result. Sockets `f` creates belong to the namespace.
    ///
    /// # Panics
    /// Re-raises a panic of `f`.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = fs::File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        thread::scope(|scope| {
            let handle = scope.spawn(move || {
                join_netns(&file)?;
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// [`Self::enter`] on a detached thread, for work that outlives the caller's next step
    /// (a request that hangs until the test breaks the upstream).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<Result<T>> {
        let file = fs::File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()));
        thread::spawn(move || {
            join_netns(&file?)?;
            Ok(f())
        })
    }

    /// Writes a sysctl of this namespace (`net.ipv4.ip_forward` ...): /proc/sys/net shows the
    /// namespace of the task that opens it.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.enter(|| fs::write(&path, value))?
            .with_context(|| format!("setting {key}={value} in netns {}", self.name))
    }

    /// Reads a sysctl of this namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.enter(|| fs::read_to_string(&path))?
            .map(|v| v.trim().to_string())
            .with_context(|| format!("reading {key} in netns {}", self.name))
    }

    /// Processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<u32> {
        let Ok(inode) = self.inode() else {
            return Vec::new();
        };
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == inode)
            })
            .collect()
    }

    /// iptables (`Family::V4`) or ip6tables in this namespace.
    pub fn iptables(&self, family: Family) -> Iptables {
        Iptables::new(Some(self.clone()), family)
    }
}

fn join_netns(file: &fs::File) -> Result<()> {
    // SAFETY: plain syscall on an fd we own; it only changes this thread's namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
    }
    Ok(())
}

/// A namespace created for a test: drop kills what still runs inside and deletes it (its
/// interfaces, addresses, routes and iptables rules go with it).
#[derive(Debug)]
pub struct OwnedNetns {
    netns: Netns,
}

impl OwnedNetns {
    /// `ip netns add NAME` and brings its loopback up.
    pub fn create(name: &str) -> Result<Self> {
        if Netns::named(name).path().exists() {
            bail!("netns {name} exists already (left by an earlier run? `ip netns del {name}`)");
        }
        run_args("ip", &["netns", "add", name])?;
        let owned = Self {
            netns: Netns::named(name),
        };
        owned.netns.ip(&["link", "set", "lo", "up"])?;
        Ok(owned)
    }

    /// Creates `rsttrace-<unique tag>-<role>`.
    pub fn create_unique(role: &str) -> Result<Self> {
        Self::create(&format!("rsttrace-{}-{role}", unique_tag()))
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

impl std::ops::Deref for OwnedNetns {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        &self.netns
    }
}

impl Drop for OwnedNetns {
    fn drop(&mut self) {
        // Servers normally stopped already (their guards drop first); anything left would keep
        // the namespace alive after its name is gone.
        let left = wait_until(Duration::from_secs(5), || {
            let pids = self.netns.pids();
            for pid in &pids {
                let _ = send_signal(*pid, libc::SIGKILL);
            }
            pids.is_empty().then_some(())
        });
        if left.is_none() {
            eprintln!(
                "warning: processes {:?} still run in netns {}",
                self.netns.pids(),
                self.netns.name
            );
        }
        if let Err(e) = run_args("ip", &["netns", "del", &self.netns.name]) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Names from `ip netns list` (the first word of each line).
pub fn list_netns() -> Result<Vec<String>> {
    Ok(run_args("ip", &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect())
}

/// Interface names of the host's namespace (`ip -o link`).
pub fn host_links() -> Result<Vec<String>> {
    Ok(run_args("ip", &["-o", "link", "show"])?
        .lines()
        .filter_map(|l| {
            // "3: name@peer: <...>" or "3: name: <...>"
            let name = l.split(": ").nth(1)?;
            Some(name.split('@').next().unwrap_or(name).to_string())
        })
        .collect())
}

/// Fails unless no namespace and no host interface whose name contains `needle` exists:
/// the check a test makes after its guards dropped.
pub fn assert_none_left(needle: &str) -> Result<()> {
    let netns: Vec<String> = list_netns()?
        .into_iter()
        .filter(|n| n.contains(needle))
        .collect();
    let links: Vec<String> = host_links()?
        .into_iter()
        .filter(|n| n.contains(needle))
        .collect();
    if netns.is_empty() && links.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "left behind: netns {netns:?}, host interfaces {links:?} (matching {needle:?})"
        ))
    }
}

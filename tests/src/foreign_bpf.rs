//! Another party's eBPF program on the root cgroup, as systemd, Cilium or Calico attach
//! theirs: a cgroup_skb ingress program that lets every packet through, loaded and attached
//! with the plain bpf(2) syscall (BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI, the legacy way that
//! outlives its loader), detached on drop.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `r0 = 1; exit`: allow.
const ALLOW: [[u8; 8]; 2] = [[0xb7, 0, 0, 0, 1, 0, 0, 0], [0x95, 0, 0, 0, 0, 0, 0, 0]];

pub const FOREIGN_NAME: &str = "foreign_allow";

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn put(attr: &mut [u8; 128], at: usize, bytes: &[u8]) {
    attr[at..at + bytes.len()].copy_from_slice(bytes);
}

pub struct ForeignCgroupProgram {
    prog: OwnedFd,
    cgroup: File,
    root: PathBuf,
}

impl ForeignCgroupProgram {
    /// Loads the program and attaches it to the cgroup2 directory `root`.
    pub fn attach(root: &Path) -> Result<Self> {
        let insns: Vec<u8> = ALLOW.concat();
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &BPF_PROG_TYPE_CGROUP_SKB.to_ne_bytes());
        put(&mut attr, 4, &(ALLOW.len() as u32).to_ne_bytes());
        put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
        put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
        put(&mut attr, 48, FOREIGN_NAME.as_bytes());
        put(&mut attr, 68, &BPF_CGROUP_INET_INGRESS.to_ne_bytes());
        let fd = bpf(BPF_PROG_LOAD, &mut attr).context("BPF_PROG_LOAD of the foreign program")?;
        // SAFETY: a fresh fd the kernel just returned to us.
        let prog = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).context("fd range")?) };
        let cgroup = File::open(root).with_context(|| format!("opening {}", root.display()))?;
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &(cgroup.as_raw_fd() as u32).to_ne_bytes());
        put(&mut attr, 4, &(prog.as_raw_fd() as u32).to_ne_bytes());
        put(&mut attr, 8, &BPF_CGROUP_INET_INGRESS.to_ne_bytes());
        put(&mut attr, 12, &BPF_F_ALLOW_MULTI.to_ne_bytes());
        if let Err(e) = bpf(BPF_PROG_ATTACH, &mut attr) {
            bail!("BPF_PROG_ATTACH to {}: {e}", root.display());
        }
        Ok(Self {
            prog,
            cgroup,
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for ForeignCgroupProgram {
    fn drop(&mut self) {
        let mut attr = [0u8; 128];
        put(
            &mut attr,
            0,
            &(self.cgroup.as_raw_fd() as u32).to_ne_bytes(),
        );
        put(&mut attr, 4, &(self.prog.as_raw_fd() as u32).to_ne_bytes());
        put(&mut attr, 8, &BPF_CGROUP_INET_INGRESS.to_ne_bytes());
        if let Err(e) = bpf(BPF_PROG_DETACH, &mut attr) {
            eprintln!("warning: detaching the foreign program: {e}");
        }
    }
}

/// The cgroup2 hierarchy's root directory, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split_whitespace();
            let root = l.nth(3)?;
            let mount = l.next()?;
            (right.starts_with("cgroup2 ") && root == "/").then(|| PathBuf::from(mount))
        })
        .context("no cgroup2 mount")
}

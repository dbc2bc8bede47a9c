//! A real other kernel as a backend: Debian's 6.1 kernel under qemu (TCG: KVM guests hang on
//! these machines), on a tap device in a network namespace (or the host's), running the
//! aborting server of [`crate::abort_server`] (`rsttrace-vm-scenarios --serve`). A RST it
//! sends was made by *that* kernel: rsttrace on this host can only see it arrive.
//!
//! | side                  | IPv4          | IPv6              |
//! |-----------------------|---------------|-------------------|
//! | tap (`t<tag>`)        | 10.231.9.1/24 | fd72:7374:9::1/64 |
//! | guest `eth0`          | 10.231.9.2/24 | fd72:7374:9::2/64 |
//!
//! The guest routes everything via the tap side, so with the tap in a topology's backend
//! namespace (forwarding on there) the client namespace reaches it through the router.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::command::run_args;
use crate::netns::{unique_tag, Family, Netns};
use crate::process::{wait_until, Placement, Service};
use crate::tempdir::TempDir;
use crate::vm::initramfs::{self, Contents};
use crate::vm::kernel::{self, Kernel};

const HOST_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 9, 1);
const GUEST_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 9, 2);
const HOST_V6: Ipv6Addr = Ipv6Addr::new(0xfd72, 0x7374, 9, 0, 0, 0, 0, 1);
const GUEST_V6: Ipv6Addr = Ipv6Addr::new(0xfd72, 0x7374, 9, 0, 0, 0, 0, 2);
const GUEST_MAC: &str = "52:54:00:72:73:74";
/// Booting under TCG takes ~5-10 s on these machines; a loaded CI runner may take longer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Console markers of the boot steps, timed from the host's side.
const BOOT_STEPS: [(&str, &str); 4] = [
    ("firmware", "SeaBIOS"),
    ("kernel's /init", "guest: kernel"),
    ("eth0 up", "guest: eth0 up"),
    ("server started", "listening [::]"),
];

/// The emulated network card (its driver is a module in Debian's kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nic {
    /// virtio-net-pci: modules virtio_pci, virtio_net and their dependencies.
    Virtio,
    /// e1000: module e1000.
    E1000,
}

impl Nic {
    fn qemu_device(self) -> &'static str {
        match self {
            Self::Virtio => "virtio-net-pci",
            Self::E1000 => "e1000",
        }
    }

    fn modules(self) -> &'static [&'static str] {
        match self {
            Self::Virtio => &["virtio_pci", "virtio_net"],
            Self::E1000 => &["e1000"],
        }
    }
}

#[derive(Debug, Clone)]
pub struct GuestOptions {
    /// The server binary: `rsttrace-vm-scenarios` (integration tests get its path from
    /// `env!("CARGO_BIN_EXE_rsttrace-vm-scenarios")`).
    pub server_bin: PathBuf,
    /// Debian kernel series ("6.1" or "6.12").
    pub series: &'static str,
    /// Where the tap device lives (default: the host's namespace).
    pub netns: Option<Netns>,
    /// The server's port in the guest (it listens on [::], IPv4 and IPv6).
    pub port: u16,
    pub nic: Nic,
    pub memory_mb: u32,
}

impl GuestOptions {
    pub fn new(server_bin: impl Into<PathBuf>) -> Self {
        Self {
            server_bin: server_bin.into(),
            series: "6.1",
            netns: None,
            port: 8300,
            nic: Nic::Virtio,
            memory_mb: 256,
        }
    }
}

/// A booted guest; drop kills qemu and deletes the tap.
pub struct Guest {
    // Field order is drop order: qemu lets go of the tap before the tap is deleted.
    service: Service,
    tap: Tap,
    dir: TempDir,
    kernel: Kernel,
    port: u16,
    boot_time: Duration,
}

impl Guest {
    /// Fetches the kernel (cached after the first time), builds the initramfs, creates the
    /// tap, boots, and waits until the guest's server listens.
    pub fn start(options: GuestOptions) -> Result<Self> {
        if !options.server_bin.is_file() {
            bail!(
                "the guest's server {} is not a file (build rsttrace-vm-scenarios)",
                options.server_bin.display()
            );
        }
        let kernel = kernel::fetch(kernel::series(options.series)?)?;
        let dir = TempDir::new("guest")?;
        let initrd = build_initramfs(&dir, &kernel, &options)?;
        let tap = Tap::create(options.netns.clone())?;
        let console = dir.path().join("console.log");
        let mut cmd = qemu(&kernel, &initrd, &tap, &options);
        let placement = Placement {
            netns: options.netns.clone(),
            cgroups: Vec::new(),
        };
        let started = Instant::now();
        let mut service = Service::spawn("qemu", &mut cmd, &console, libc::SIGTERM, &placement)?;
        let ready = format!("listening [::]:{}", options.port);
        // Host-side time at which each boot step first shows on the console.
        let mut steps: Vec<(&str, Duration)> = Vec::new();
        service
            .wait_ready("the guest's server", BOOT_TIMEOUT, || {
                let text = fs::read_to_string(&console).unwrap_or_default();
                for (step, marker) in &BOOT_STEPS {
                    if !steps.iter().any(|(s, _)| s == step) && text.contains(*marker) {
                        steps.push((step, started.elapsed()));
                    }
                }
                if text.contains("guest: failed") {
                    return Some(Err(text));
                }
                text.contains(&ready).then_some(Ok(()))
            })?
            .map_err(|console| anyhow::anyhow!("the guest failed to come up:\n{console}"))?;
        let boot_time = started.elapsed();
        let steps: Vec<String> = steps
            .iter()
            .map(|(step, at)| format!("{step} {:.1} s", at.as_secs_f64()))
            .collect();
        eprintln!(
            "guest: {} booted: {}, server listening {:.1} s",
            kernel.release,
            steps.join(", "),
            boot_time.as_secs_f64()
        );
        Ok(Self {
            service,
            tap,
            dir,
            kernel,
            port: options.port,
            boot_time,
        })
    }

    /// The guest's server (IPv4 or IPv6).
    pub fn addr(&self, family: Family) -> SocketAddr {
        let ip: IpAddr = match family {
            Family::V4 => GUEST_V4.into(),
            Family::V6 => GUEST_V6.into(),
        };
        SocketAddr::new(ip, self.port)
    }

    /// The tap side's address: the guest's gateway.
    pub fn host_ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => HOST_V4.into(),
            Family::V6 => HOST_V6.into(),
        }
    }

    /// The tap device's name (in [`GuestOptions::netns`]).
    pub fn tap(&self) -> &str {
        &self.tap.name
    }

    /// From starting qemu to the guest's server listening.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The kernel it runs (`uname -r`).
    pub fn release(&self) -> &str {
        &self.kernel.release
    }

    pub fn qemu_pid(&self) -> u32 {
        self.service.pid()
    }

    /// Everything the guest printed on its serial console.
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Waits until the console shows `needle` (the server prints `ok PEER` / `abort ... PEER`).
    pub fn wait_console(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.console().contains(needle).then_some(())).is_some()
    }
}

fn build_initramfs(dir: &TempDir, kernel: &Kernel, options: &GuestOptions) -> Result<PathBuf> {
    let modules = kernel.module_load_order(options.nic.modules())?;
    let files: Vec<(String, PathBuf)> = modules
        .iter()
        .map(|ko| {
            let name = ko
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (format!("modules/{name}"), ko.clone())
        })
        .collect();
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    let init = init_script(&names, options.port);
    initramfs::build(
        dir.path(),
        &Contents {
            init: &init,
            programs: &[("server", options.server_bin.as_path())],
            files: &files,
        },
    )
}

/// The guest's /init: drivers, address, routes, then the server in the foreground of PID 1's
/// shell (its output is the console).
fn init_script(modules: &[&str], port: u16) -> String {
    let insmod: String = modules
        .iter()
        .map(|m| format!("insmod /{m} || echo \"guest: failed: insmod {m}\"\n"))
        .collect();
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
dmesg -n 1
echo "guest: kernel $(uname -r) running after $(cut -d' ' -f1 /proc/uptime) s"
{insmod}i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
[ -e /sys/class/net/eth0 ] || echo "guest: failed: no eth0"
ip link set lo up
# No duplicate address detection: the address is usable at once (busybox's ip has no nodad).
echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
ip link set eth0 up
ip addr add {GUEST_V4}/24 dev eth0
ip -6 addr add {GUEST_V6}/64 dev eth0
# e1000 reports carrier a moment after the link is set up.
i=0
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
[ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ] || echo "guest: failed: eth0 has no carrier"
ip route add default via {HOST_V4}
ip -6 route add default via {HOST_V6}
echo "guest: eth0 up after $(cut -d' ' -f1 /proc/uptime) s"
ip addr show dev eth0
/server --serve [::]:{port}
echo "guest: failed: server exited ($?)"
poweroff -f
"#
    )
}

fn qemu(kernel: &Kernel, initrd: &Path, tap: &Tap, options: &GuestOptions) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
        .arg("-m")
        .arg(options.memory_mb.to_string())
        .args(["-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 rdinit=/init quiet",
            "-netdev",
            &format!("tap,id=net0,ifname={},script=no,downscript=no", tap.name),
            "-device",
            // No option ROM: iPXE is not needed to boot from -kernel and costs boot time.
            &format!(
                "{},netdev=net0,mac={GUEST_MAC},romfile=",
                options.nic.qemu_device()
            ),
        ]);
    cmd
}

/// A tap device with the host side's addresses; drop deletes it.
struct Tap {
    name: String,
    netns: Option<Netns>,
}

impl Tap {
    fn create(netns: Option<Netns>) -> Result<Self> {
        let tap = Self {
            name: format!("t{}", unique_tag()),
            netns,
        };
        tap.ip(&["tuntap", "add", "dev", &tap.name, "mode", "tap"])?;
        tap.ip(&["addr", "add", &format!("{HOST_V4}/24"), "dev", &tap.name])?;
        tap.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{HOST_V6}/64"),
            "dev",
            &tap.name,
            "nodad",
        ])?;
        tap.ip(&["link", "set", &tap.name, "up"])?;
        Ok(tap)
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        match &self.netns {
            Some(ns) => ns.ip(args),
            None => run_args("ip", args),
        }
        .with_context(|| format!("setting up tap {}", self.name))
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if self.netns.as_ref().is_some_and(|ns| !ns.path().exists()) {
            return; // gone with its namespace
        }
        if let Err(e) = self.ip(&["link", "del", &self.name]) {
            eprintln!("warning: {e:#}");
        }
    }
}

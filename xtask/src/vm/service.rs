//! `cargo xtask service-test`: the .deb's systemd unit run by real systemd, on Debian 12's
//! own kernel — what no check on this host can show (no systemd runs here as PID 1, and
//! this kernel lacks Debian's perf_event_paranoid levels).
//!
//! A Debian 12 root file system with systemd (mmdebstrap, cached as a cpio archive in
//! ~/.cache/rsttrace/vm/) is booted as the initramfs of Debian 12's 6.1 kernel under qemu,
//! systemd as PID 1, with a second archive on top holding the .deb and a one-shot test
//! unit. Inside: `dpkg -i`, `systemctl start rsttrace`, a live abort on loopback, the
//! service's journal and credentials; also rsttrace without CAP_SYS_ADMIN. Console lines
//! `vm: service: ` carry the results; the console is kept in target/vm/.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use rsttrace_tests::vm::kernel::{self, SERIES};

use super::{qemu_present, run_console};
use crate::{display, run_checked, workspace_root};

/// Bump when the root file system's contents change.
const ROOTFS: &str = "debian12-systemd-v1.cpio.gz";
const PACKAGES: &str = "systemd-sysv,python3-minimal,procps";
const MIRRORS: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];
const TIMEOUT: Duration = Duration::from_secs(900);
const PREFIX: &str = "vm: service: ";
/// CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE
/// (include/uapi/linux/capability.h: 39, 38, 21, 12, 2, 19): the unit's bounding set.
const UNIT_SET: u64 = 1 << 39 | 1 << 38 | 1 << 21 | 1 << 12 | 1 << 2 | 1 << 19;
/// What rsttrace keeps once attached with network evidence (the unit's default):
/// CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, and CAP_SYS_ADMIN to enter other network
/// namespaces when naming their interfaces.
const KEPT_SET: u64 = 1 << 2 | 1 << 19 | 1 << 21;

/// The guest's test, run by a one-shot unit once the system is up.
const GUEST_TEST: &str = r#"#!/bin/sh
say() { echo "vm: service: $*" > /dev/console; }
say "kernel $(uname -r), $(systemctl --version | head -n 1), perf_event_paranoid $(cat /proc/sys/kernel/perf_event_paranoid)"
dpkg -i /rsttrace.deb > /tmp/dpkg.log 2>&1; rc=$?
sed 's/^/vm: service: dpkg: /' /tmp/dpkg.log > /dev/console
say "dpkg exit $rc"
systemctl start rsttrace; say "start exit $?"
for i in $(seq 1 300); do
    journalctl -u rsttrace -o cat | grep -q 'rsttrace: attached' && break
    sleep 0.2
done
pid=$(systemctl show -p MainPID --value rsttrace)
say "status $(grep -E '^(Uid|CapEff|CapBnd)' /proc/$pid/status | tr -s '\t\n' '  ')"
python3 /usr/local/sbin/abort.py 2>&1 | sed 's/^/vm: service: /' > /dev/console
sleep 2
systemctl stop rsttrace
say "stopped $(systemctl show rsttrace -p Result -p ExecMainStatus | tr '\n' ' ')"
journalctl -u rsttrace -o cat | sed 's/^/vm: service: journal: /' > /dev/console
caps=+bpf,+perfmon,+net_admin,+dac_read_search,+sys_ptrace
out=$(setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all,$caps \
    --ambient-caps=-all,$caps --bounding-set=-all,$caps \
    /usr/sbin/rsttrace --no-syscall-hooks --duration 1s 2>&1)
say "without CAP_SYS_ADMIN: exit $? $(echo "$out" | tr '\n' ' ')"
say done
systemctl poweroff
"#;

/// A live abort on loopback: the peer closes with the request unread.
const ABORT: &str = r#"import os, socket, time
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
pid = os.fork()
if pid == 0:
    conn, _ = srv.accept()
    conn.recv(1, socket.MSG_PEEK)
    conn.close()
    time.sleep(3)
    os._exit(0)
c = socket.create_connection(srv.getsockname())
c.sendall(b"GET / HTTP/1.0\r\n\r\n")
try:
    c.recv(10)
except OSError as e:
    print("client", os.getpid(), "got", e)
print("peer", pid)
"#;

const TEST_UNIT: &str = "[Unit]
Description=rsttrace package test
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/rsttrace-guest-test
";

/// systemd as PID 1 from the initramfs (the kernel runs /init there).
const INIT: &str = "#!/bin/sh\nexec /lib/systemd/systemd \"$@\"\n";

pub fn service_test(deb: &Path) -> Result<()> {
    qemu_present()?;
    let cache = kernel::cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let kernel = kernel::fetch(&SERIES[0])?;
    let rootfs = root_file_system(&cache)?;
    let out_dir = workspace_root().join("target").join("vm");
    let overlay = overlay(deb, &out_dir)?;
    let initrd = out_dir.join("service-initrd.cpio.gz");
    let mut joined = fs::read(&rootfs).with_context(|| format!("reading {}", rootfs.display()))?;
    // The kernel unpacks concatenated archives in turn (init/initramfs.c).
    joined.extend(fs::read(&overlay)?);
    fs::write(&initrd, joined)?;

    let log = out_dir.join("console-service.log");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-cpu", "max", "-m", "2048"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init quiet systemd.show_status=0 systemd.wants=rsttrace-guest-test.service"]);
    eprintln!(
        "xtask: service-test: Debian 12 with systemd on {} ({}), console in {}",
        kernel.label,
        kernel.package,
        log.display()
    );
    eprintln!("xtask: $ {}", display(&qemu));
    let console = run_console(qemu, "service", &log, TIMEOUT)?;
    let lines: Vec<&str> = console
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix(PREFIX))
        .collect();
    if console.timed_out || !lines.contains(&"done") {
        bail!(
            "the guest did not finish (timed out: {}); console in {}",
            console.timed_out,
            log.display()
        );
    }
    judge(&lines).with_context(|| format!("console in {}", log.display()))?;
    eprintln!("xtask: service-test: passed ({:.0} s)", console.secs);
    Ok(())
}

/// What the guest printed must show the service working as packaged.
fn judge(lines: &[&str]) -> Result<()> {
    let find = |prefix: &str| lines.iter().find_map(|l| l.strip_prefix(prefix));
    expect(find("dpkg exit ") == Some("0"), "dpkg -i failed")?;
    expect(find("start exit ") == Some("0"), "systemctl start failed")?;
    let status = find("status ").context("no status line")?;
    let field = |name: &str| -> Option<&str> {
        let mut words = status.split_whitespace();
        words.find(|w| *w == name)?;
        words.next()
    };
    let mask = |name: &str| field(name).and_then(|v| u64::from_str_radix(v, 16).ok());
    expect(
        field("Uid:").is_some_and(|uid| uid != "0"),
        "the service runs as root",
    )?;
    expect(
        mask("CapBnd:") == Some(UNIT_SET),
        "bounding set is not the unit's",
    )?;
    expect(
        mask("CapEff:") == Some(KEPT_SET),
        "rsttrace did not give up what only attaching needs",
    )?;
    let peer: u64 = find("peer ")
        .and_then(|p| p.trim().parse().ok())
        .context("the peer did not run")?;
    let journal: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("journal: "))
        .collect();
    let reset = journal
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["peer"]["pid"] == peer);
    let reset = reset.context("no reset from the peer in the journal")?;
    expect(reset["cause"] == "abort", "the reset is not an abort")?;
    expect(
        journal
            .iter()
            .any(|l| l.contains("--no-syscall-hooks on a kernel without")),
        "no note about what --no-syscall-hooks costs on this kernel",
    )?;
    expect(
        journal.iter().any(|l| l.starts_with("rsttrace: detached")),
        "rsttrace did not detach on stop",
    )?;
    expect(
        find("stopped ")
            .is_some_and(|s| s.contains("Result=success") && s.contains("ExecMainStatus=0")),
        "the service did not stop cleanly",
    )?;
    expect(
        find("without CAP_SYS_ADMIN: ")
            .is_some_and(|s| s.starts_with("exit 3 ") && s.contains("perf_event_paranoid is 3")),
        "without CAP_SYS_ADMIN rsttrace should exit 3 naming perf_event_paranoid",
    )?;
    eprintln!("xtask: service-test: {reset}");
    Ok(())
}

fn expect(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        bail!("service-test: {what}")
    }
}

/// Debian 12 with systemd, as a gzipped cpio archive, built once (mmdebstrap).
fn root_file_system(cache: &Path) -> Result<PathBuf> {
    let archive = cache.join(ROOTFS);
    if archive.is_file() {
        return Ok(archive);
    }
    let dir = cache.join("debian12-systemd");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    run_checked(
        Command::new("mmdebstrap")
            .args([
                "--variant=apt",
                &format!("--include={PACKAGES}"),
                "bookworm",
            ])
            .arg(&dir)
            .args(MIRRORS),
    )?;
    // The initramfs is the root file system: nothing to mount or check.
    fs::write(dir.join("etc/fstab"), "")?;
    fs::write(dir.join("etc/hostname"), "rsttrace-guest\n")?;
    cpio(&dir, &archive)?;
    fs::remove_dir_all(&dir)?;
    Ok(archive)
}

/// The .deb and the guest's test, as a second archive.
fn overlay(deb: &Path, out_dir: &Path) -> Result<PathBuf> {
    let dir = out_dir.join("service-overlay");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    let put = |path: &str, data: &[u8], mode: u32| -> Result<()> {
        let dest = dir.join(path);
        fs::create_dir_all(dest.parent().context("a file has a folder")?)?;
        fs::write(&dest, data)?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put("init", INIT.as_bytes(), 0o755)?;
    put("rsttrace.deb", &fs::read(deb)?, 0o644)?;
    put(
        "usr/local/sbin/rsttrace-guest-test",
        GUEST_TEST.as_bytes(),
        0o755,
    )?;
    put("usr/local/sbin/abort.py", ABORT.as_bytes(), 0o644)?;
    put(
        "etc/systemd/system/rsttrace-guest-test.service",
        TEST_UNIT.as_bytes(),
        0o644,
    )?;
    let archive = out_dir.join("service-overlay.cpio.gz");
    cpio(&dir, &archive)?;
    Ok(archive)
}

/// `dir`'s tree as a gzipped cpio "newc" archive, every entry owned by root.
fn cpio(dir: &Path, archive: &Path) -> Result<()> {
    let script = "find . -mindepth 1 | cpio --quiet -o -H newc -R 0:0 | gzip -1 > \"$1\"";
    run_checked(
        Command::new("sh")
            .current_dir(dir)
            .args(["-c", script, "sh"])
            .arg(archive),
    )
}

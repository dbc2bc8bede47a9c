//! `cargo xtask setup`: brings a fresh machine to the state the build and the tests need.
//!
//! Two routes to an eBPF-capable Rust compiler exist (../shared/TOOLCHAIN.md):
//! - Debian: `rustc-web` ships a prebuilt core for bpfel-unknown-none; a rustup "custom
//!   toolchain" wraps it (RUSTC_BOOTSTRAP=1 for aya-ebpf's asm feature) and bpf-linker is
//!   built against Debian's LLVM 22.
//! - elsewhere: a rustup nightly with rust-src (build-std) and a stock bpf-linker.
//!
//! Either way the toolchain is linked under the name tracer/build.rs uses.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{display, run_checked};

pub const TOOLCHAIN_NAME: &str = "rsttrace-bpf";
const BPF_LINKER_VERSION: &str = "0.13.0";
const DEBIAN_TOOLCHAIN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];
/// Servers and tools the integration tests and the demo run for real.
const TEST_PACKAGES: &[&str] = &[
    "nginx-light",
    "php8.2-fpm",
    "gunicorn",
    "python3",
    "procps",
    "iproute2",
    "iptables", // tests: rules whose packet counters prove the kernel dropped or rejected
    "bpftool",
    "bpftrace", // cargo xtask bench: the baseline tracer and the load generator
    "wrk",
    "valgrind", // cargo xtask bench: the storm's user space in instructions (callgrind)
    "qemu-system-x86", // cargo xtask vm-test: Debian's kernels under qemu, busybox as their init
    "busybox-static",
    "kmod",     // depmod: modules.dep of a guest kernel's network drivers (tests' guest)
    "xz-utils", // 6.12's modules are .ko.xz; busybox's insmod takes plain ones
    "iptables", // tests' topology: REJECT, DROP, NAT in namespaces, with counters
    "nftables", // nft delete table: dockerd's tables removed after the docker test
    // A real Docker Engine for the container tests, driven with its own client
    // /usr/bin/docker (machines may have a newer client-only /usr/local/bin/docker).
    "docker.io",
    // cargo xtask package and its tests (tests/package.rs, tests/daemonset.rs): build the
    // .deb, check it, read its man page, try its completions and systemd unit, run it with
    // a capability set, in namespaces, and read the Kubernetes manifest.
    "dpkg-dev", // dpkg-shlibdeps
    "binutils", // strip
    "lintian",
    "man-db",
    "systemd",     // systemd-analyze (systemd need not be running)
    "libcap2-bin", // capsh
    "util-linux",  // setpriv, unshare
    "bash",
    "zsh",
    "fish",
    "python3-yaml",
    "python3-venv", // kubernetes-validate's virtual environment
    "mmdebstrap",   // cargo xtask service-test: a Debian 12 root file system with systemd
    "cpio",
    // tests/metrics.rs: a real Prometheus server scrapes rsttrace's --metrics.
    "prometheus",
];
/// Validates Kubernetes manifests against the API's schemas offline (PyPI).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

pub fn setup() -> Result<()> {
    check_null_device(Path::new("/dev/null"))?;
    let mut did = Vec::new();
    let debian_route = is_debian_bookworm() && apt_has("libstd-rust-web-dev-bpf");
    let mut packages: Vec<&str> = TEST_PACKAGES.to_vec();
    if debian_route {
        packages.extend_from_slice(DEBIAN_TOOLCHAIN_PACKAGES);
    }
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
        did.push(format!("installed Debian packages: {}", missing.join(" ")));
    }

    if debian_route {
        let dir = toolchain_dir();
        if write_debian_toolchain(&dir)? {
            did.push(format!("wrote toolchain wrapper in {}", dir.display()));
        }
        if link_toolchain(&dir)? {
            did.push(format!(
                "linked rustup toolchain {TOOLCHAIN_NAME} -> {}",
                dir.display()
            ));
        }
        if !bpf_linker_ok() {
            run_checked(
                Command::new("cargo")
                    .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                    .args(["--locked", "--no-default-features", "--features", "llvm-22"])
                    .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
            )?;
            did.push(format!(
                "built bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22"
            ));
        }
    } else {
        // Standard aya route: nightly + rust-src, stock bpf-linker.
        if !command_ok(
            Command::new("rustup").args([
                "component",
                "list",
                "--toolchain",
                "nightly",
                "--installed",
            ]),
            "rust-src",
        ) {
            run_checked(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--component",
                "rust-src",
            ]))?;
            did.push("installed rustup nightly with rust-src".into());
        }
        let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
        if link_toolchain(Path::new(sysroot.trim()))? {
            did.push(format!(
                "linked rustup toolchain {TOOLCHAIN_NAME} -> nightly"
            ));
        }
        if !bpf_linker_ok() {
            run_checked(Command::new("cargo").args(["install", "bpf-linker", "--locked"]))?;
            did.push("installed bpf-linker".into());
        }
    }

    if install_kubernetes_validate()? {
        did.push(format!(
            "installed {KUBERNETES_VALIDATE} in {}",
            kubernetes_validate_dir().display()
        ));
    }

    if !Path::new("/sys/kernel/tracing/events").exists() {
        let status = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
        match status {
            Ok(s) if s.success() => did.push("mounted tracefs on /sys/kernel/tracing".into()),
            _ => eprintln!("xtask: warning: could not mount tracefs (rsttrace will say how)"),
        }
    }

    if did.is_empty() {
        eprintln!("xtask: setup: everything already in place");
    } else {
        for line in did {
            eprintln!("xtask: setup: {line}");
        }
    }
    Ok(())
}

/// A /dev/null that some command replaced with a regular file keeps what is written to it,
/// and cargo's probe `rustc - --print=cfg` (stdin from /dev/null) then compiles another
/// build's error messages: "unknown start of token" in the eBPF build, far from the cause.
fn check_null_device(path: &Path) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.file_type().is_char_device() && meta.rdev() == libc::makedev(1, 3) {
        return Ok(());
    }
    bail!(
        "{} is not the null device (something replaced it, e.g. `mv`/`install`/`cp --remove-destination` onto it as root), \
         so builds read back what others wrote there; restore it with `rm /dev/null && mknod -m 666 /dev/null c 1 3`",
        path.display()
    )
}

/// tests/daemonset.rs reads it from here.
fn kubernetes_validate_dir() -> PathBuf {
    state_dir().join("kubernetes-validate")
}

/// A virtual environment of Debian's Python holding kubernetes-validate; returns whether
/// it had to be made.
fn install_kubernetes_validate() -> Result<bool> {
    let dir = kubernetes_validate_dir();
    let wanted = KUBERNETES_VALIDATE.trim_start_matches("kubernetes-validate==");
    if command_ok(
        Command::new(dir.join("bin/kubernetes-validate")).arg("--version"),
        wanted,
    ) {
        return Ok(false);
    }
    run_checked(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&dir),
    )?;
    run_checked(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(KUBERNETES_VALIDATE),
    )?;
    Ok(true)
}

fn state_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(".local/share/rsttrace")
}

fn toolchain_dir() -> PathBuf {
    state_dir().join("bpf-toolchain")
}

/// Writes the wrapper toolchain folder; returns whether anything changed.
fn write_debian_toolchain(dir: &Path) -> Result<bool> {
    let bin = dir.join("bin");
    let script = "#!/bin/sh\n# rsttrace: Debian's rustc with unstable features for aya-ebpf (asm_experimental_arch)\nRUSTC_BOOTSTRAP=1 exec /usr/bin/rustc \"$@\"\n";
    let rustc = bin.join("rustc");
    let mut changed = false;
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    fs::create_dir_all(dir.join("lib"))?;
    if fs::read_to_string(&rustc).ok().as_deref() != Some(script) {
        fs::write(&rustc, script)?;
        fs::set_permissions(&rustc, fs::Permissions::from_mode(0o755))?;
        changed = true;
    }
    for tool in ["cargo", "rustdoc"] {
        let link = bin.join(tool);
        let target = PathBuf::from("/usr/bin").join(tool);
        if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link)?;
            changed = true;
        }
    }
    Ok(changed)
}

fn link_toolchain(dir: &Path) -> Result<bool> {
    let list = output(Command::new("rustup").args(["toolchain", "list", "-v"]))?;
    let wanted = dir.display().to_string();
    if list
        .lines()
        .any(|l| l.starts_with(TOOLCHAIN_NAME) && l.contains(&wanted))
    {
        return Ok(false);
    }
    if list.lines().any(|l| l.starts_with(TOOLCHAIN_NAME)) {
        run_checked(Command::new("rustup").args(["toolchain", "uninstall", TOOLCHAIN_NAME]))?;
    }
    run_checked(
        Command::new("rustup")
            .args(["toolchain", "link", TOOLCHAIN_NAME])
            .arg(dir),
    )?;
    Ok(true)
}

fn bpf_linker_ok() -> bool {
    command_ok(
        Command::new("bpf-linker").arg("--version"),
        BPF_LINKER_VERSION,
    )
}

fn is_debian_bookworm() -> bool {
    fs::read_to_string("/etc/os-release")
        .map(|s| s.contains("VERSION_CODENAME=bookworm"))
        .unwrap_or(false)
}

fn dpkg_installed(package: &str) -> bool {
    command_ok(
        Command::new("dpkg-query").args(["-W", "-f=${Status}", package]),
        "install ok installed",
    )
}

fn apt_has(package: &str) -> bool {
    if dpkg_installed(package) {
        return true;
    }
    let known = || {
        command_ok(
            Command::new("apt-cache").args(["show", package]),
            "Package:",
        )
    };
    if known() {
        return true;
    }
    // A fresh machine has no package lists yet.
    let _ = Command::new("apt-get").args(["update", "-q"]).status();
    known()
}

fn apt_install(packages: &[&str]) -> Result<()> {
    run_checked(Command::new("apt-get").args(["update", "-q"]))?;
    let mut cmd = Command::new("apt-get");
    cmd.args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_checked(&mut cmd)
}

fn command_ok(cmd: &mut Command, needle: &str) -> bool {
    match cmd.output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).contains(needle),
        _ => false,
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not run {}", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            display(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_not_the_null_device() {
        assert!(check_null_device(Path::new("/dev/null")).is_ok());
        let file = std::env::temp_dir().join(format!("xtask-null-{}", std::process::id()));
        fs::write(&file, "error[E0554]").expect("writing a temporary file");
        let err = check_null_device(&file).expect_err("a regular file");
        let _ = fs::remove_file(&file);
        assert!(err.to_string().contains("mknod -m 666"), "{err}");
    }
}

//! Debian's own kernels (12's 6.1 and the 6.12 backport, `*-amd64-unsigned`) from the
//! archive: `apt-get download`, unpacked once into ~/.cache/rsttrace/vm/<package>/ as
//! `vmlinuz`, `config` and `modules/` (the network drivers a guest needs, with the
//! `modules.dep` depmod made for the whole tree). Shared by `cargo xtask vm-test` and
//! [`crate::guest`].

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::command::{display, run};

/// Drivers kept from each kernel's modules (the rest of the ~400 MB tree is dropped):
/// qemu's virtio-net-pci and e1000 NICs.
pub const NET_MODULES: &[&str] = &["virtio_pci", "virtio_net", "e1000"];

/// A Debian kernel flavour.
pub struct Series {
    pub label: &'static str,
    /// `apt-cache search --names-only` regex.
    search: &'static str,
    /// The exact shape of a package name of this series (the regex is only a pre-filter).
    matches: fn(&str) -> bool,
}

pub const SERIES: &[Series] = &[
    Series {
        label: "6.1",
        search: r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
        matches: |name| {
            name.strip_prefix("linux-image-6.1.0-")
                .and_then(|r| r.strip_suffix("-amd64-unsigned"))
                .is_some_and(all_digits)
        },
    },
    Series {
        label: "6.12",
        search: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$",
        matches: |name| {
            name.strip_prefix("linux-image-6.12.")
                .and_then(|r| r.strip_suffix("+deb12-amd64-unsigned"))
                .is_some_and(all_digits)
        },
    },
];

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A kernel image ready to boot, with its network modules.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub label: &'static str,
    pub package: String,
    pub vmlinuz: PathBuf,
    /// `uname -r` of that kernel (its /lib/modules folder name).
    pub release: String,
    /// Holds `modules.dep` and the kept `.ko` files at their paths in it.
    pub modules: PathBuf,
}

impl Kernel {
    /// The `.ko` files to insmod, dependencies first, for the modules named `wanted` (e.g.
    /// "virtio_net"), from modules.dep.
    pub fn module_load_order(&self, wanted: &[&str]) -> Result<Vec<PathBuf>> {
        let dep_file = self.modules.join("modules.dep");
        let text = fs::read_to_string(&dep_file)
            .with_context(|| format!("reading {}", dep_file.display()))?;
        let deps = parse_modules_dep(&text);
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in wanted {
            let path = deps
                .iter()
                .find(|(path, _)| module_name(path) == *name)
                .map(|(path, _)| path.clone())
                .with_context(|| format!("{name} is not in {}", dep_file.display()))?;
            visit(&path, &deps, &mut seen, &mut order)?;
        }
        Ok(order.into_iter().map(|p| self.modules.join(p)).collect())
    }
}

/// (module path with any compression suffix removed, its dependencies likewise).
fn parse_modules_dep(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((
                uncompressed(module.trim()).to_string(),
                deps.split_whitespace()
                    .map(|d| uncompressed(d).to_string())
                    .collect(),
            ))
        })
        .collect()
}

fn visit(
    path: &str,
    deps: &[(String, Vec<String>)],
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) -> Result<()> {
    if !seen.insert(path.to_string()) {
        return Ok(());
    }
    let (_, needs) = deps
        .iter()
        .find(|(p, _)| p == path)
        .with_context(|| format!("{path} is not in modules.dep"))?;
    for need in needs {
        visit(need, deps, seen, order)?;
    }
    order.push(path.to_string());
    Ok(())
}

fn uncompressed(path: &str) -> &str {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| path.strip_suffix(ext))
        .unwrap_or(path)
}

/// "kernel/drivers/net/virtio_net.ko" -> "virtio_net".
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".ko").unwrap_or(file)
}

/// ~/.cache/rsttrace/vm (or $XDG_CACHE_HOME/rsttrace/vm).
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    base.join("rsttrace").join("vm")
}

/// The series labelled `label` ("6.1", "6.12").
pub fn series(label: &str) -> Result<&'static Series> {
    SERIES
        .iter()
        .find(|s| s.label == label)
        .with_context(|| format!("no kernel series {label:?} (known: 6.1, 6.12)"))
}

/// The newest package of `series` in apt's lists, cached (downloaded and unpacked when
/// missing; ~70 MB and ~10 s once).
pub fn fetch(series: &Series) -> Result<Kernel> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut packages = apt_search(series)?;
    if packages.is_empty() {
        eprintln!(
            "vm: no {} kernel in apt's lists; apt-get update",
            series.label
        );
        run(Command::new("apt-get").args(["update", "-q"]))?;
        packages = apt_search(series)?;
    }
    let Some(package) = packages.into_iter().max_by_key(|p| version_key(p)) else {
        // Offline with a warm cache still works.
        if let Some(kernel) = cached(series, &cache) {
            eprintln!(
                "vm: warning: apt knows no {} kernel; using the cached {}",
                series.label, kernel.package
            );
            return Ok(kernel);
        }
        bail!(
            "Debian's archive offers no package matching {} (apt-cache search --names-only '{}'): \
             is bookworm / bookworm-security in /etc/apt/sources.list?",
            series.label,
            series.search
        );
    };
    let dir = cache.join(&package);
    if !complete(&dir) {
        // An older cache kept vmlinuz only: unpack again for the modules.
        let _ = fs::remove_dir_all(&dir);
        let deb = download(&package, &cache)?;
        unpack(&deb, &dir)?;
        let _ = fs::remove_file(&deb);
        eprintln!("vm: cached {package} in {}", dir.display());
    }
    // Older kernels of this series are never used again.
    if let Ok(entries) = fs::read_dir(&cache) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != package && (series.matches)(&name) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    load(series, &cache, &package)
}

/// vmlinuz is written last: its presence (with modules/) means "cached".
fn complete(dir: &Path) -> bool {
    dir.join("vmlinuz").is_file()
        && dir.join("modules").join("modules.dep").is_file()
        && dir.join("release").is_file()
}

fn load(series: &Series, cache: &Path, package: &str) -> Result<Kernel> {
    let dir = cache.join(package);
    let release = fs::read_to_string(dir.join("release"))
        .with_context(|| format!("reading {}/release", dir.display()))?;
    Ok(Kernel {
        label: series.label,
        package: package.to_string(),
        vmlinuz: dir.join("vmlinuz"),
        release: release.trim().to_string(),
        modules: dir.join("modules"),
    })
}

fn cached(series: &Series, cache: &Path) -> Option<Kernel> {
    let package = fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| (series.matches)(name) && complete(&cache.join(name)))
        .max_by_key(|name| version_key(name))?;
    load(series, cache, &package).ok()
}

/// Numbers in a package name, in order: "linux-image-6.12.117+deb12-..." -> [6, 12, 117, 12, ...].
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn apt_search(series: &Series) -> Result<Vec<String>> {
    let out = run(Command::new("apt-cache").args(["search", "--names-only", series.search]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| (series.matches)(name))
        .map(String::from)
        .collect())
}

/// `apt-get download`s `package` into `cache` (unless a .deb of it is already there).
fn download(package: &str, cache: &Path) -> Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        fs::read_dir(cache)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    eprintln!("vm: downloading {package} from Debian's archive");
    let attempt = || -> Result<String> {
        // The sandbox user _apt cannot write to root's cache folder: download as root.
        run(Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
            .current_dir(cache))
    };
    if let Err(first) = attempt() {
        // Stale lists name a version the archive no longer has.
        eprintln!("vm: {first:#}; retrying after apt-get update");
        run(Command::new("apt-get").args(["update", "-q"]))?;
        attempt().with_context(|| {
            format!("downloading {package} from Debian's archive (is it reachable?)")
        })?;
    }
    find().with_context(|| {
        format!(
            "apt-get download {package} succeeded but left no {package}_*.deb in {}",
            cache.display()
        )
    })
}

/// Unpacks the .deb, keeps boot/vmlinuz-* (as `dir`/vmlinuz), its config, and the network
/// modules with their dependencies (decompressed: busybox's insmod takes plain .ko files).
fn unpack(deb: &Path, dir: &Path) -> Result<()> {
    let tmp = dir.with_extension("extract");
    let _ = fs::remove_dir_all(&tmp);
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    let result = keep_parts(deb, &tmp, dir);
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn keep_parts(deb: &Path, tmp: &Path, dir: &Path) -> Result<()> {
    let boot = tmp.join("boot");
    let mut vmlinuz = None;
    let mut config = None;
    for entry in fs::read_dir(&boot)
        .with_context(|| format!("{} holds no boot/ folder", deb.display()))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("vmlinuz-") {
            vmlinuz = Some(entry.path());
        } else if name.starts_with("config-") {
            config = Some(entry.path());
        }
    }
    let vmlinuz = vmlinuz.with_context(|| format!("{} holds no boot/vmlinuz-*", deb.display()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("vmlinuz file name without a release")?
        .to_string();
    fs::create_dir_all(dir)?;
    if let Some(config) = config {
        fs::copy(&config, dir.join("config"))?;
    }
    keep_modules(tmp, &release, &dir.join("modules"))?;
    fs::write(dir.join("release"), &release)?;
    // Written last, under its final name only when complete: its presence means "cached".
    fs::copy(&vmlinuz, dir.join("vmlinuz.part"))?;
    fs::rename(dir.join("vmlinuz.part"), dir.join("vmlinuz"))?;
    Ok(())
}

/// Runs depmod on the unpacked tree (the package ships no modules.dep: its postinst makes it)
/// and copies [`NET_MODULES`] and what they need into `to`.
fn keep_modules(tmp: &Path, release: &str, to: &Path) -> Result<()> {
    let mut depmod = Command::new("depmod");
    depmod.arg("-b").arg(tmp).arg(release);
    run(&mut depmod).with_context(|| {
        format!(
            "`{}`: depmod comes with Debian's kmod (cargo xtask setup installs it)",
            display(&depmod)
        )
    })?;
    let tree = tmp.join("lib").join("modules").join(release);
    let dep_text = fs::read_to_string(tree.join("modules.dep"))
        .with_context(|| format!("depmod left no {}/modules.dep", tree.display()))?;
    fs::create_dir_all(to)?;
    fs::write(to.join("modules.dep"), &dep_text)?;
    // The closure of NET_MODULES, by the raw (possibly compressed) file names.
    let raw: Vec<(String, Vec<String>)> = dep_text
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((
                m.trim().to_string(),
                d.split_whitespace().map(String::from).collect(),
            ))
        })
        .collect();
    let mut todo: Vec<String> = raw
        .iter()
        .filter(|(m, _)| NET_MODULES.contains(&module_name(uncompressed(m))))
        .map(|(m, _)| m.clone())
        .collect();
    let mut kept = BTreeSet::new();
    while let Some(module) = todo.pop() {
        if !kept.insert(module.clone()) {
            continue;
        }
        if let Some((_, deps)) = raw.iter().find(|(m, _)| *m == module) {
            todo.extend(deps.iter().cloned());
        }
    }
    for module in &kept {
        copy_module(&tree.join(module), &to.join(uncompressed(module)))?;
    }
    Ok(())
}

fn copy_module(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    match from.extension().and_then(|e| e.to_str()) {
        Some("ko") => {
            fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
        }
        Some("xz") => {
            let out = Command::new("xz")
                .arg("-dc")
                .arg(from)
                .output()
                .with_context(|| format!("running xz -dc {}", from.display()))?;
            if !out.status.success() {
                bail!("xz -dc {} failed", from.display());
            }
            fs::write(to, out.stdout)?;
        }
        other => bail!(
            "{}: unsupported module compression {other:?}",
            from.display()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_modules_dep, visit};
    use std::collections::BTreeSet;

    #[test]
    fn load_order_puts_dependencies_first() {
        let dep = "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n\
                   kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz \
                   kernel/net/core/failover.ko.xz kernel/drivers/virtio/virtio.ko \
                   kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz\n\
                   kernel/net/core/failover.ko.xz:\n";
        let deps = parse_modules_dep(dep);
        let mut order = Vec::new();
        visit(
            "kernel/drivers/net/virtio_net.ko",
            &deps,
            &mut BTreeSet::new(),
            &mut order,
        )
        .expect("all modules known");
        assert_eq!(
            order,
            [
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/net/virtio_net.ko",
            ]
        );
    }
}

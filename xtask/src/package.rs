//! `cargo xtask package`: the release binary and a Debian package of it.
//!
//! Built with dpkg-deb from a staged tree: Debian's own tool, on every Debian machine and
//! offline. The man page and the completions come from the binary itself (`rsttrace
//! --generate`), a step cargo-deb would need done first anyway; cargo-deb would add a
//! `cargo install` of its own to set-up for what is otherwise three Debian commands
//! (dpkg-shlibdeps, md5sum, dpkg-deb). Its rules are followed: stripped binary, gzip -9n
//! man page and docs, conffiles, md5sums, dependencies from dpkg-shlibdeps.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::{build, cargo, display, run_checked, workspace_root};

const NAME: &str = "rsttrace";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const CONFFILES: &[&str] = &["/etc/default/rsttrace"];

/// Builds target/package/rsttrace_VERSION_ARCH.deb; returns its path.
pub fn package() -> Result<PathBuf> {
    let bin = build(true)?;
    let arch = text_of(Command::new("dpkg").arg("--print-architecture"))?;
    let out_dir = workspace_root().join("target").join("package");
    let stage = out_dir.join(format!("{NAME}_{VERSION}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    stage_files(&bin, &stage)?;
    control_files(&stage, &arch)?;
    let deb = out_dir.join(format!("{NAME}_{VERSION}_{arch}.deb"));
    run_checked(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    run_checked(Command::new("dpkg-deb").arg("--contents").arg(&deb))?;
    eprintln!("xtask: package: {}", deb.display());
    Ok(deb)
}

/// Everything the package installs, under `stage`.
fn stage_files(bin: &Path, stage: &Path) -> Result<()> {
    let root = workspace_root();
    let packaging = root.join("packaging");
    let sbin = put(stage, "usr/sbin/rsttrace", &read(bin)?, 0o755)?;
    // As dh_strip does for programs: no symbols, no .comment/.note (the build id stays).
    run_checked(
        Command::new("strip")
            .args(["--remove-section=.comment", "--remove-section=.note"])
            .arg(&sbin),
    )?;
    let generated = |kind: &str| bytes_of(Command::new(&sbin).args(["--generate", kind]));
    put(
        stage,
        "usr/share/man/man8/rsttrace.8.gz",
        &gzip(&generated("man")?)?,
        0o644,
    )?;
    for (kind, path) in [
        (
            "complete-bash",
            "usr/share/bash-completion/completions/rsttrace",
        ),
        ("complete-zsh", "usr/share/zsh/vendor-completions/_rsttrace"),
        (
            "complete-fish",
            "usr/share/fish/vendor_completions.d/rsttrace.fish",
        ),
    ] {
        put(stage, path, &generated(kind)?, 0o644)?;
    }
    let doc = "usr/share/doc/rsttrace";
    put(
        stage,
        &format!("{doc}/README.md.gz"),
        &gzip(&read(&root.join("README.md"))?)?,
        0o644,
    )?;
    put(
        stage,
        &format!("{doc}/changelog.gz"),
        &gzip(changelog(&packaging)?.as_bytes())?,
        0o644,
    )?;
    let copyright = fs::read_to_string(packaging.join("copyright"))
        .context("reading packaging/copyright")?
        .replace("{bundled}", &bundled_crates()?);
    put(
        stage,
        &format!("{doc}/copyright"),
        copyright.as_bytes(),
        0o644,
    )?;
    put(
        stage,
        "lib/systemd/system/rsttrace.service",
        &read(&packaging.join("rsttrace.service"))?,
        0o644,
    )?;
    put(
        stage,
        "etc/default/rsttrace",
        &read(&packaging.join("rsttrace.default"))?,
        0o644,
    )?;
    Ok(())
}

/// packaging/changelog (Debian's format: this is a native package), whose newest entry
/// must be this version.
fn changelog(packaging: &Path) -> Result<String> {
    let text =
        fs::read_to_string(packaging.join("changelog")).context("reading packaging/changelog")?;
    let newest = format!("{NAME} ({VERSION})");
    if !text.starts_with(&newest) {
        bail!(
            "packaging/changelog must start with an entry for `{newest}` (the workspace \
             version): add one"
        );
    }
    Ok(text)
}

/// DEBIAN/control (from packaging/control), conffiles and md5sums.
fn control_files(stage: &Path, arch: &str) -> Result<()> {
    let files = files_under(stage, stage)?;
    let sbin = stage.join("usr/sbin/rsttrace");
    let control = fs::read_to_string(workspace_root().join("packaging").join("control"))
        .context("reading packaging/control")?
        .replace("{version}", VERSION)
        .replace("{architecture}", arch)
        .replace("{installed_size}", &installed_size_kib(stage)?.to_string())
        .replace("{depends}", &shared_library_depends(&sbin)?);
    put(stage, "DEBIAN/control", control.as_bytes(), 0o644)?;
    let conffiles: String = CONFFILES.iter().map(|f| format!("{f}\n")).collect();
    put(stage, "DEBIAN/conffiles", conffiles.as_bytes(), 0o644)?;
    let mut md5sum = Command::new("md5sum");
    md5sum.current_dir(stage).args(&files);
    put(stage, "DEBIAN/md5sums", &bytes_of(&mut md5sum)?, 0o644)?;
    Ok(())
}

/// Which library packages the binary needs, as Debian computes it (dpkg-shlibdeps reads
/// the ELF's NEEDED entries and the libraries' symbol versions): `libc6 (>= 2.34), ...`.
fn shared_library_depends(binary: &Path) -> Result<String> {
    // dpkg-shlibdeps insists on running in a source tree with debian/control.
    let dir = workspace_root()
        .join("target")
        .join("package")
        .join("shlibdeps");
    fs::create_dir_all(dir.join("debian"))?;
    fs::write(
        dir.join("debian").join("control"),
        format!("Source: {NAME}\n\nPackage: {NAME}\nArchitecture: any\n"),
    )?;
    let out = text_of(
        Command::new("dpkg-shlibdeps")
            .current_dir(&dir)
            .arg("-O")
            .arg(binary),
    )?;
    match out.strip_prefix("shlibs:Depends=") {
        Some(depends) if !depends.trim().is_empty() => Ok(depends.trim().to_string()),
        _ => bail!("dpkg-shlibdeps said {out:?}, not shlibs:Depends=..."),
    }
}

/// The crates linked into the binary, one `name version: license` line each, indented
/// for a DEP-5 field (proc-macros and their dependencies run at build time only;
/// workspace crates are ours).
fn bundled_crates() -> Result<String> {
    let tree = text_of(cargo().args([
        "tree",
        "--quiet",
        "--package",
        "rsttrace",
        "--edges",
        "normal,no-proc-macro",
        "--prefix",
        "none",
        "--format",
        "{p}\t{l}",
    ]))?;
    let mut lines: Vec<String> = tree
        .lines()
        .filter(|l| !l.contains(" (/"))
        .filter_map(|l| {
            let (package, license) = l.trim_end_matches(" (*)").split_once('\t')?;
            Some(format!(" {package}: {}", license.trim_end_matches(" (*)")))
        })
        .collect();
    lines.sort();
    lines.dedup();
    if lines.is_empty() {
        bail!("cargo tree listed no dependencies of rsttrace");
    }
    Ok(lines.join("\n"))
}

/// As dpkg-gencontrol counts it: each file rounded up to a KiB, each directory one.
fn installed_size_kib(stage: &Path) -> Result<u64> {
    let mut kib = 0;
    for entry in walk(stage)? {
        if entry.starts_with(stage.join("DEBIAN")) {
            continue;
        }
        let meta = fs::symlink_metadata(&entry)?;
        kib += if meta.is_file() {
            meta.len().div_ceil(1024)
        } else {
            1
        };
    }
    Ok(kib)
}

/// Files (not directories) under `dir`, relative to `base`, sorted; DEBIAN/ left out.
fn files_under(dir: &Path, base: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = walk(dir)?
        .into_iter()
        .filter(|p| p.is_file())
        .filter_map(|p| p.strip_prefix(base).ok().map(Path::to_path_buf))
        .filter(|p| !p.starts_with("DEBIAN"))
        .collect();
    files.sort();
    Ok(files)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    Ok(out)
}

/// Writes `bytes` to `stage/path` with `mode`, creating its folders (0755).
fn put(stage: &Path, path: &str, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    let dest = stage.join(path);
    let mut dir = dest.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(stage)) {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        dir = d.parent();
    }
    fs::write(&dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
    Ok(dest)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// `gzip -9n`: best compression, no name or time stamp (reproducible, as Debian wants).
fn gzip(input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .arg("-9n")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting gzip")?;
    child
        .stdin
        .take()
        .context("gzip's stdin")?
        .write_all(input)
        .context("feeding gzip")?;
    let out = child.wait_with_output().context("waiting for gzip")?;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}

fn bytes_of(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("could not run {}", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

fn text_of(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&bytes_of(cmd)?).trim().to_string())
}

//! A guest's initramfs: busybox, the caller's /init script, programs (stripped, with the
//! glibc pieces they link) and plain files such as kernel modules. Written as a cpio "newc"
//! archive directly (entries owned by root, a /dev/console node, no staging folder or mknod
//! needed), then gzipped. Used by `cargo xtask vm-test` and [`crate::guest`].
use std::{
    collections::BTreeSet,
    fs,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::command::{display, run};

const BUSYBOX: &str = "/bin/busybox";

/// What goes into the archive besides busybox.
pub struct Contents<'a> {
    /// The /init script (run by the kernel as PID 1; `#!/bin/busybox sh`).
    pub init: &'a str,
    /// (path in the guest, program on the host): stripped of debug info, shared libraries
    /// added at the paths `ldd` shows.
    pub programs: &'a [(&'a str, &'a Path)],
    /// (path in the guest, file on the host): copied as they are (mode 0644).
    pub files: &'a [(String, PathBuf)],
}

/// Builds `out_dir`/initrd.gz; returns its path.
pub fn build(out_dir: &Path, contents: &Contents<'_>) -> Result<PathBuf> {
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} is missing: run `cargo xtask setup` (or apt-get install busybox-static)");
    }
    let staging = out_dir.join("bin");
    fs::create_dir_all(&staging)?;

    let cpio_path = out_dir.join("initrd.cpio");
    let mut cpio = Cpio::new(BufWriter::new(
        fs::File::create(&cpio_path)
            .with_context(|| format!("creating {}", cpio_path.display()))?,
    ));
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root",
        "etc",
    ] {
        cpio.dir(dir)?;
    }
    cpio.char_dev("dev/console", 0o600, 5, 1)?;
    cpio.file("init", 0o755, contents.init.as_bytes())?;
    cpio.file("bin/busybox", 0o755, &read(Path::new(BUSYBOX))?)?;
    // glibc is found at the paths ldd shows (no ld.so.cache: those are the default dirs).
    let mut libs = BTreeSet::new();
    for (name, program) in contents.programs {
        let name = name.trim_start_matches('/');
        let file_name = Path::new(name)
            .file_name()
            .context("a program path without a name")?;
        let small = stripped(program, &staging.join(file_name))?;
        cpio.parents(name)?;
        cpio.file(name, 0o755, &read(&small)?)?;
        libs.extend(shared_libraries(program)?);
    }
    for lib in &libs {
        let name = lib.to_string_lossy();
        let name = name.trim_start_matches('/');
        cpio.parents(name)?;
        cpio.file(name, 0o755, &read(lib)?)?;
    }
    for (name, file) in contents.files {
        let name = name.trim_start_matches('/');
        cpio.parents(name)?;
        cpio.file(name, 0o644, &read(file)?)?;
    }
    cpio.finish()?;

    let gz = out_dir.join("initrd.cpio.gz");
    let _ = fs::remove_file(&gz);
    run(Command::new("gzip")
        .args(["-6", "-n", "-f"])
        .arg(&cpio_path))?;
    let initrd = out_dir.join("initrd.gz");
    fs::rename(&gz, &initrd)?;
    let size = fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "vm: initramfs {} ({:.1} MiB: busybox, {}, {} file(s), {})",
        initrd.display(),
        size as f64 / f64::from(1 << 20),
        contents
            .programs
            .iter()
            .map(|(name, _)| name.trim_start_matches('/'))
            .collect::<Vec<_>>()
            .join(", "),
        contents.files.len(),
        libs.iter()
            .filter_map(|l| l.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(initrd)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A copy of `bin` without debug info (the debug build is ~10x larger), or `bin` itself when
/// `strip` is unavailable.
fn stripped(bin: &Path, to: &Path) -> Result<PathBuf> {
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(bin)
        .status();
    match status {
        Ok(s) if s.success() => Ok(to.to_path_buf()),
        _ => {
            eprintln!(
                "vm: warning: could not strip {}; packing it whole",
                bin.display()
            );
            Ok(bin.to_path_buf())
        }
    }
}

/// Absolute paths of the shared objects `ldd` lists for `bin`, the dynamic loader included.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = Command::new("ldd");
    cmd.arg(bin);
    let out = cmd
        .output()
        .with_context(|| format!("running {}", display(&cmd)))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!(
            "{} failed: {}",
            display(&cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            Some("not") => bail!("{}: a library is missing: {}", bin.display(), line.trim()),
            _ => {} // linux-vdso.so.1: provided by the kernel
        }
    }
    Ok(libs)
}

/// A cpio "newc" (SVR4, no CRC) archive writer.
struct Cpio<W: Write> {
    out: W,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Cpio<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn dir(&mut self, name: &str) -> Result<()> {
        if self.dirs.insert(name.to_string()) {
            self.entry(name, 0o040_755, 2, 0, 0, &[])?;
        }
        Ok(())
    }

    /// The folders above `name`, outermost first.
    fn parents(&mut self, name: &str) -> Result<()> {
        let parts: Vec<&str> = name.split('/').collect();
        for i in 1..parts.len() {
            self.dir(&parts[..i].join("/"))?;
        }
        Ok(())
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.entry(name, 0o100_000 | perm, 1, 0, 0, data)
    }

    fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.entry(name, 0o020_000 | perm, 1, major, minor, &[])
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev_major: u32,
        rdev_minor: u32,
        data: &[u8],
    ) -> Result<()> {
        let size = u32::try_from(data.len()).context("file too large for cpio newc")?;
        let namesize = u32::try_from(name.len() + 1).context("name too long")?;
        let fields = [
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev_major, rdev_minor, namesize, 0,
        ];
        self.ino += 1;
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())?;
        Ok(())
    }

    fn pad(&mut self, len: usize) -> Result<()> {
        let zeros = [0u8; 3];
        self.out.write_all(&zeros[..(4 - len % 4) % 4])?;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.entry("TRAILER!!!", 0, 1, 0, 0, &[])?;
        self.out.flush()?;
        Ok(())
    }
}

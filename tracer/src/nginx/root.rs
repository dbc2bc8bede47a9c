//! Paths as a process under another root (a container's /proc/PID/root) names them.
use std::{
    ffi::OsString,
    path::{Component, Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// A path that names a standard stream of whoever opens it: /dev/stderr and friends are
/// links to /proc/self/fd/N. nginx's error.log in the official image and ingress-nginx is
/// such a link; opened by rsttrace it would be rsttrace's own stream, and inside a
/// container's /proc (another pid namespace) `self` does not even resolve.
#[derive(Debug)]
pub struct StandardStream(pub PathBuf);

impl std::fmt::Display for StandardStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is a standard stream of the process writing it",
            self.0.display()
        )
    }
}

impl std::error::Error for StandardStream {}

/// Where paths stop naming files and start naming the opener's own descriptors.
fn is_process_relative(inside: &Path) -> bool {
    [
        "dev/stdin",
        "dev/stdout",
        "dev/stderr",
        "dev/fd",
        "proc/self",
        "proc/thread-self",
    ]
    .iter()
    .any(|p| inside == Path::new(p))
}

/// `path` (absolute, as a process whose `/` is `root` names it) as a path rsttrace can open.
/// For `root` = `/` the path itself. Otherwise every symlink is followed inside `root`: the
/// kernel would resolve an absolute link under /proc/PID/root against *our* root. Either
/// way a path that leads to a standard stream is a [`StandardStream`] error.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    let resolved = walk(root, path)?;
    if root == Path::new("/") {
        return Ok(path.to_path_buf());
    }
    Ok(resolved)
}

fn walk(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut inside = PathBuf::new();
    let mut pending: Vec<OsString> = components(path);
    pending.reverse();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            inside.pop();
            continue;
        }
        let next = inside.join(&part);
        if is_process_relative(&next) {
            return Err(StandardStream(path.to_path_buf()).into());
        }
        let full = root.join(&next);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    bail!(
                        "{}: too many symlinks inside {}",
                        path.display(),
                        root.display()
                    );
                }
                let target = std::fs::read_link(&full)
                    .with_context(|| format!("reading the link {}", full.display()))?;
                if target.is_absolute() {
                    inside = PathBuf::new();
                }
                let mut more = components(&target);
                more.reverse();
                pending.extend(more);
            }
            // Missing parts are kept: the file may be created later (a rotated log).
            _ => inside = next,
        }
    }
    Ok(root.join(inside))
}

fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The official nginx image: error.log -> /dev/stderr -> /proc/self/fd/2.
    #[test]
    fn a_log_linked_to_stderr_is_a_standard_stream() {
        let root = std::env::temp_dir().join(format!("rsttrace-stream-{}", std::process::id()));
        std::fs::create_dir_all(root.join("var/log/nginx")).expect("temp dir");
        std::fs::create_dir_all(root.join("dev")).expect("temp dir");
        std::os::unix::fs::symlink("/dev/stderr", root.join("var/log/nginx/error.log"))
            .expect("symlink");
        std::os::unix::fs::symlink("/proc/self/fd/2", root.join("dev/stderr")).expect("symlink");
        let err = resolve_in_root(&root, Path::new("/var/log/nginx/error.log"))
            .expect_err("a stream, not a file");
        assert!(err.downcast_ref::<StandardStream>().is_some(), "{err:#}");
        assert!(resolve_in_root(&root, Path::new("/proc/self/fd/2"))
            .is_err_and(|e| e.is::<StandardStream>()));
        // On the host too: rsttrace must not follow its own stderr.
        assert!(resolve_in_root(Path::new("/"), Path::new("/dev/stderr"))
            .is_err_and(|e| e.is::<StandardStream>()));
        assert_eq!(
            resolve_in_root(Path::new("/"), Path::new("/var/log/nginx/error.log")).expect("a file"),
            Path::new("/var/log/nginx/error.log")
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = std::env::temp_dir().join(format!("rsttrace-root-{}", std::process::id()));
        let logs = root.join("var/log/nginx");
        std::fs::create_dir_all(&logs).expect("temp dir");
        std::fs::create_dir_all(root.join("data")).expect("temp dir");
        // An absolute link, as in a container image: it must land inside `root`.
        std::os::unix::fs::symlink("/data", root.join("var/log/nginx/current")).expect("symlink");
        std::os::unix::fs::symlink("../../../data/../data", root.join("var/log/rel"))
            .expect("symlink");
        let got = resolve_in_root(&root, Path::new("/var/log/nginx/current/error.log"))
            .expect("resolves");
        assert_eq!(got, root.join("data/error.log"));
        let got = resolve_in_root(&root, Path::new("/var/log/rel/x")).expect("resolves");
        assert_eq!(got, root.join("data/x"));
        std::os::unix::fs::symlink("loop", root.join("loop")).expect("symlink");
        assert!(resolve_in_root(&root, Path::new("/loop")).is_err());
        assert_eq!(
            resolve_in_root(Path::new("/"), Path::new("/a/b")).expect("identity"),
            PathBuf::from("/a/b")
        );
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}

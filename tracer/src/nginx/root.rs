//! Paths as a process under another root (a container's /proc/PID/root) names them.
use std::{
    ffi::OsString,
    path::{Component, Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// `path` (absolute, as a process whose `/` is `root` names it) as a path rsttrace can open.
/// For `root` = `/` the path itself. Otherwise every symlink is followed inside `root`: the
/// kernel would resolve an absolute link under /proc/PID/root against *our* root.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    if root == Path::new("/") {
        return Ok(path.to_path_buf());
    }
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

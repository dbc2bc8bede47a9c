//! Temporary folders that the servers' unprivileged users (www-data) can read.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A folder under the system temp dir, mode 0755, removed with its content on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/rsttrace-<prefix>-<pid>-<n>-<nanos>` with mode 0755.
    pub fn new(prefix: &str) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "rsttrace-{prefix}-{}-{n}-{nanos}",
            std::process::id()
        ));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let dir = Self { path };
        dir.set_mode(&dir.path, 0o755)?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a sub-folder (and its parents) with the given mode, e.g. 0o777 for a folder
    /// that a www-data worker writes to.
    pub fn subdir(&self, name: &str, mode: u32) -> Result<PathBuf> {
        let path = self.path.join(name);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        self.set_mode(&path, mode)?;
        Ok(path)
    }

    /// Writes a file (mode 0644) inside the folder and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        let path = self.path.join(name);
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        self.set_mode(&path, 0o644)?;
        Ok(path)
    }

    fn set_mode(&self, path: &Path, mode: u32) -> Result<()> {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:o} {}", path.display()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}

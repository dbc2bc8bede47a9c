//! The running kernel's tracefs: which tracepoints exist, and their record layouts
//! ([`RecordFormat`]) read from their format files.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::record::RecordFormat;

/// Where tracefs may be mounted, newest convention first.
const TRACEFS_CANDIDATES: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A mounted tracefs.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    pub fn locate() -> Result<Self> {
        for candidate in TRACEFS_CANDIDATES {
            let root = Path::new(candidate);
            match fs::read_dir(root.join("events")) {
                Ok(_) => {
                    return Ok(Self {
                        root: root.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                    "cannot read {}: permission denied (tracefs is root's only): run rsttrace \
                     as root or with CAP_DAC_READ_SEARCH",
                    root.display()
                ),
                Err(_) => {}
            }
        }
        bail!(
            "tracefs is not mounted (no /sys/kernel/tracing/events): mount it with \
             `mount -t tracefs nodev /sys/kernel/tracing` and run rsttrace again"
        )
    }

    pub fn exists(&self, category: &str, event: &str) -> bool {
        self.root.join("events").join(category).join(event).is_dir()
    }

    pub fn format(&self, category: &str, event: &str) -> Result<RecordFormat> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(event)
            .join("format");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        RecordFormat::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

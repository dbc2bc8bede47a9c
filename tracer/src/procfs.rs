//! The few /proc walks rsttrace makes at start (name matching, unix listener owners).
use std::{fs, path::PathBuf};

/// Every process visible in /proc, with its directory.
pub fn processes() -> impl Iterator<Item = (u32, PathBuf)> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, entry.path()))
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_this_process() {
        assert!(super::processes().any(|(pid, _)| pid == std::process::id()));
    }
}

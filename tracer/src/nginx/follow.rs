//! Follows error.log files by polling: new complete lines, across rotations, in bounded memory.
//!
//! Call [`Follower::poll`] from a timer (every ~100 ms); it never blocks on more than the bytes
//! it reads and starts no thread. Rotation:
//! - **rename** (logrotate's default, `create`): the path now names another inode. nginx
//!   keeps writing to the renamed file until it reopens its logs (`nginx -s reopen`, USR1, in
//!   logrotate's postrotate), so the old file stays open and is drained until it has been
//!   quiet for [`Limits::drain_quiet`], while the new file is read from its start.
//! - **copytruncate**: same inode, now shorter than what was read: read again from 0.
//!
//! Only whole lines (ending in `\n`) are returned; a line longer than [`Limits::max_line`] is
//! returned cut to that length with `cut` set, the rest skipped up to its newline.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bounds on memory and work per poll.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest line kept (nginx writes at most 2048 bytes a line; CRI adds ~40).
    pub max_line: usize,
    /// Bytes read per file per poll: a burst or a binary file is spread over several polls.
    pub max_read_per_poll: usize,
    /// How long a renamed-away file must stay unchanged before it is closed.
    pub drain_quiet: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: 16 * 1024,
            max_read_per_poll: 1024 * 1024,
            drain_quiet: Duration::from_secs(5),
        }
    }
}

/// Where to start in files that exist when following starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Only lines written from now on (files that appear later are read from their start).
    End,
    Beginning,
}

/// One complete line (without its `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The path being followed (as given), even when the line came from its renamed file.
    pub log_file: PathBuf,
    pub bytes: Vec<u8>,
    /// Longer than [`Limits::max_line`]: only its start is here.
    pub cut: bool,
}

/// Something the operator may want to know; never fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Opened(PathBuf),
    Rotated(PathBuf),
    Truncated(PathBuf),
    /// The file cannot be opened or read (missing files are waited for silently).
    Unreadable {
        path: PathBuf,
        error: String,
    },
}

/// Follows one or more files.
pub struct Follower {
    files: Vec<Followed>,
    limits: Limits,
    notices: Vec<Notice>,
}

struct Followed {
    path: PathBuf,
    current: Option<Reader>,
    /// Renamed-away files still being drained.
    draining: Vec<Reader>,
    start_at_end: bool,
    reported_error: bool,
}

struct Reader {
    file: File,
    dev: u64,
    ino: u64,
    offset: u64,
    pending: Vec<u8>,
    /// Inside an over-long line: drop bytes up to the next newline.
    skipping: bool,
    last_change: Instant,
}

impl Follower {
    pub fn new(paths: impl IntoIterator<Item = PathBuf>, start: StartAt, limits: Limits) -> Self {
        let files = paths
            .into_iter()
            .map(|path| Followed {
                path,
                current: None,
                draining: Vec::new(),
                start_at_end: start == StartAt::End,
                reported_error: false,
            })
            .collect();
        let mut follower = Self {
            files,
            limits,
            notices: Vec::new(),
        };
        // Open now so that StartAt::End means "from the moment following started".
        for f in &mut follower.files {
            f.open_if_needed(&mut follower.notices);
            f.start_at_end = false;
        }
        follower
    }

    /// Reads what was appended since the last poll and returns the complete lines.
    pub fn poll(&mut self) -> Vec<Line> {
        let mut lines = Vec::new();
        for f in &mut self.files {
            f.poll(&self.limits, &mut self.notices, &mut lines);
        }
        lines
    }

    /// Notices gathered since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }
}

impl Followed {
    fn poll(&mut self, limits: &Limits, notices: &mut Vec<Notice>, out: &mut Vec<Line>) {
        let path = self.path.clone();
        // Old files first: their lines are older.
        self.draining.retain_mut(|old| {
            let got = old.read_lines(&path, limits, out);
            got || old.last_change.elapsed() < limits.drain_quiet
        });
        self.open_if_needed(notices);
        let Some(reader) = self.current.as_mut() else {
            return;
        };
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.dev() != reader.dev || meta.ino() != reader.ino => {
                // Renamed away (or removed and recreated): drain the old, open the new.
                let mut old = self.current.take();
                if let Some(old) = old.as_mut() {
                    old.read_lines(&path, limits, out);
                }
                self.draining.extend(old);
                notices.push(Notice::Rotated(path.clone()));
                self.open_if_needed(notices);
            }
            Ok(meta) if meta.len() < reader.offset => {
                // copytruncate: the same file, cut back. What was pending belonged to the
                // copy; nginx (O_APPEND) now writes from the new end.
                reader.offset = 0;
                reader.pending.clear();
                reader.skipping = false;
                notices.push(Notice::Truncated(path.clone()));
            }
            _ => {}
        }
        if let Some(reader) = self.current.as_mut() {
            reader.read_lines(&path, limits, out);
        }
    }

    fn open_if_needed(&mut self, notices: &mut Vec<Notice>) {
        if self.current.is_some() {
            return;
        }
        match Reader::open(&self.path, self.start_at_end) {
            Ok(reader) => {
                self.current = Some(reader);
                self.reported_error = false;
                notices.push(Notice::Opened(self.path.clone()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                if !self.reported_error {
                    self.reported_error = true;
                    notices.push(Notice::Unreadable {
                        path: self.path.clone(),
                        error: e.to_string(),
                    });
                }
            }
        }
    }
}

impl Reader {
    fn open(path: &Path, at_end: bool) -> std::io::Result<Self> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            // A pipe or a terminal (`error_log /dev/stderr`) cannot be followed by position.
            return Err(std::io::Error::other(
                "not a regular file (nginx logs to a pipe or terminal here)",
            ));
        }
        let offset = if at_end { meta.len() } else { 0 };
        file.seek(SeekFrom::Start(offset))?;
        Ok(Self {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            offset,
            pending: Vec::new(),
            skipping: false,
            last_change: Instant::now(),
        })
    }

    /// Reads up to the per-poll budget; returns whether anything was read.
    fn read_lines(&mut self, path: &Path, limits: &Limits, out: &mut Vec<Line>) -> bool {
        if self.file.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut budget = limits.max_read_per_poll;
        let mut any = false;
        while budget > 0 {
            let want = buf.len().min(budget);
            let n = match self.file.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            any = true;
            budget -= n;
            self.offset += n as u64;
            self.split(&buf[..n], path, limits.max_line, out);
        }
        if any {
            self.last_change = Instant::now();
        }
        any
    }

    fn split(&mut self, mut data: &[u8], path: &Path, max_line: usize, out: &mut Vec<Line>) {
        while !data.is_empty() {
            let newline = data.iter().position(|b| *b == b'\n');
            let (chunk, rest, complete) = match newline {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if self.skipping {
                self.skipping = !complete;
                continue;
            }
            let room = max_line.saturating_sub(self.pending.len());
            let over = chunk.len() > room;
            self.pending
                .extend_from_slice(&chunk[..chunk.len().min(room)]);
            if over {
                out.push(Line {
                    log_file: path.to_path_buf(),
                    bytes: std::mem::take(&mut self.pending),
                    cut: true,
                });
                self.skipping = !complete;
            } else if complete {
                out.push(Line {
                    log_file: path.to_path_buf(),
                    bytes: std::mem::take(&mut self.pending),
                    cut: false,
                });
            }
        }
    }
}

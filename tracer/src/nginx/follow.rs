//! Follows error.log files by polling: new complete lines, across rotations, in bounded memory.
//!
//! Call [`Follower::poll`] from a timer (every ~100 ms); it never blocks on more than the bytes
//! it reads and starts no thread. Rotation:
//! - **rename** (logrotate's default, `create`): the path now names another inode. nginx
//!   keeps writing to the renamed file until it reopens its logs (`nginx -s reopen`, USR1, in
//!   logrotate's postrotate), so the old file stays open and is drained until it has been
//!   quiet for [`Limits::drain_quiet`], while the new file is read from its start.
//! - **copytruncate**: same inode, now shorter than what was read, or no longer holding the
//!   bytes last read where they were (truncated, then appended to past the old size before
//!   this poll): read again from 0.
//!
//! Only whole lines (ending in `\n`) are returned; a line longer than [`Limits::max_line`] is
//! returned cut to that length with `cut` set, the rest skipped up to its newline.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
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
    /// The last bytes read (up to [`TAIL`]), which end at `offset`: if the file no longer
    /// holds them there, it was truncated and written again.
    tail: Vec<u8>,
}

/// Bytes kept to recognise a file rewritten in place. nginx's lines start with a time and
/// carry a connection number, so 64 bytes differ between any two.
const TAIL: usize = 64;

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

    /// Follows one more file (an nginx that started after us); nothing if it is followed
    /// already. Its lines from now on with [`StartAt::End`].
    pub fn add(&mut self, path: PathBuf, start: StartAt) {
        if self.files.iter().any(|f| f.path == path) {
            return;
        }
        let mut followed = Followed {
            path,
            current: None,
            draining: Vec::new(),
            start_at_end: start == StartAt::End,
            reported_error: false,
        };
        followed.open_if_needed(&mut self.notices);
        followed.start_at_end = false;
        self.files.push(followed);
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
                    // Its quiet counts from the rotation: a log quiet for longer than
                    // drain_quiet before it still gets nginx's lines until the reopen.
                    old.last_change = Instant::now();
                }
                self.draining.extend(old);
                notices.push(Notice::Rotated(path.clone()));
                self.open_if_needed(notices);
            }
            Ok(meta) if meta.len() < reader.offset || reader.rewritten() => {
                // copytruncate: the same file, cut back. What was pending belonged to the
                // copy; nginx (O_APPEND) now writes from the new end.
                reader.offset = 0;
                reader.pending.clear();
                reader.tail.clear();
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
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. A pipe
        // or a terminal (`error_log /dev/stderr`) cannot be followed by position anyway.
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
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
            tail: Vec::new(),
        })
    }

    /// The bytes last read are no longer where they were read.
    fn rewritten(&self) -> bool {
        if self.tail.is_empty() {
            return false;
        }
        let at = self.offset - self.tail.len() as u64;
        let mut now = vec![0u8; self.tail.len()];
        match self.file.read_exact_at(&mut now, at) {
            Ok(()) => now != self.tail,
            // Shorter than that: the size check says so.
            Err(_) => false,
        }
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
            let keep = n.min(TAIL);
            let drop = (self.tail.len() + keep).saturating_sub(TAIL);
            self.tail.drain(..drop);
            self.tail.extend_from_slice(&buf[n - keep..n]);
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("rsttrace-follow-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            Self(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Opens like nginx does (O_APPEND), so writes land at the end even after a truncate.
    fn appender(path: &Path) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open for append")
    }

    /// What logrotate's copytruncate does to the file, after its copy.
    fn truncate(path: &Path) {
        OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open")
            .set_len(0)
            .expect("truncate");
    }

    fn texts(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
            .collect()
    }

    fn quick() -> Limits {
        Limits {
            drain_quiet: Duration::from_millis(50),
            ..Limits::default()
        }
    }

    #[test]
    fn partial_writes_wait_for_their_newline() {
        let dir = Dir::new("partial");
        let path = dir.0.join("error.log");
        let mut w = appender(&path);
        w.write_all(b"old line\n").expect("write");
        let mut f = Follower::new([path.clone()], StartAt::End, quick());
        assert!(f.poll().is_empty(), "lines before the start are skipped");
        w.write_all(b"first\nsec").expect("write");
        assert_eq!(texts(&f.poll()), ["first"]);
        assert!(f.poll().is_empty(), "half a line is not a line");
        w.write_all(b"ond\n").expect("write");
        let lines = f.poll();
        assert_eq!(texts(&lines), ["second"]);
        assert_eq!(lines[0].log_file, path);
        assert!(!lines[0].cut);
        let mut from_start = Follower::new([path], StartAt::Beginning, quick());
        assert_eq!(texts(&from_start.poll()), ["old line", "first", "second"]);
    }

    #[test]
    fn rename_rotation_drains_the_old_file_then_follows_the_new() {
        let dir = Dir::new("rename");
        let path = dir.0.join("error.log");
        let mut nginx = appender(&path);
        let mut f = Follower::new([path.clone()], StartAt::End, quick());
        nginx.write_all(b"a\n").expect("write");
        assert_eq!(texts(&f.poll()), ["a"]);
        // logrotate: rename, create a new file; nginx writes to the old one until reopen.
        std::fs::rename(&path, dir.0.join("error.log.1")).expect("rename");
        let mut fresh = appender(&path);
        nginx
            .write_all(b"b (old file, before reopen)\n")
            .expect("write");
        assert_eq!(texts(&f.poll()), ["b (old file, before reopen)"]);
        assert!(f.take_notices().contains(&Notice::Rotated(path.clone())));
        nginx.write_all(b"c (old file, still)\n").expect("write");
        fresh.write_all(b"d (new file)\n").expect("write");
        assert_eq!(texts(&f.poll()), ["c (old file, still)", "d (new file)"]);
        std::thread::sleep(Duration::from_millis(80));
        f.poll();
        nginx
            .write_all(b"e (old file, after it went quiet)\n")
            .expect("write");
        fresh.write_all(b"f\n").expect("write");
        assert_eq!(texts(&f.poll()), ["f"], "the quiet old file was closed");
    }

    /// logrotate renames a log that has been quiet for a while, and nginx writes to the old
    /// file before its reopen (postrotate's USR1 comes a moment later).
    #[test]
    fn a_quiet_log_renamed_still_gives_the_lines_before_the_reopen() {
        let dir = Dir::new("quiet-rename");
        let path = dir.0.join("error.log");
        let mut nginx = appender(&path);
        let mut f = Follower::new([path.clone()], StartAt::End, quick());
        nginx.write_all(b"a\n").expect("write");
        assert_eq!(texts(&f.poll()), ["a"]);
        std::thread::sleep(Duration::from_millis(80));
        assert!(f.poll().is_empty());
        std::fs::rename(&path, dir.0.join("error.log.1")).expect("rename");
        let _fresh = appender(&path);
        assert!(f.poll().is_empty(), "the rename is seen");
        assert!(f.poll().is_empty(), "a poll before nginx writes again");
        nginx
            .write_all(b"b (old file, before reopen)\n")
            .expect("write");
        assert_eq!(texts(&f.poll()), ["b (old file, before reopen)"]);
    }

    #[test]
    fn copytruncate_restarts_from_the_start() {
        let dir = Dir::new("truncate");
        let path = dir.0.join("error.log");
        let mut nginx = appender(&path);
        let mut f = Follower::new([path.clone()], StartAt::End, quick());
        nginx.write_all(b"one\ntwo\nthree\npartial").expect("write");
        assert_eq!(texts(&f.poll()), ["one", "two", "three"]);
        // logrotate copytruncate: copy, then truncate in place; nginx's O_APPEND writes
        // continue at the new end.
        std::fs::copy(&path, dir.0.join("error.log.1")).expect("copy");
        truncate(&path);
        nginx.write_all(b"four\n").expect("write");
        assert_eq!(texts(&f.poll()), ["four"]);
        assert!(f.take_notices().contains(&Notice::Truncated(path.clone())));
        // Truncated, then written past the old size before the next poll: the bytes last
        // read are gone from where they were.
        truncate(&path);
        nginx
            .write_all(b"five, a longer line than four was\n")
            .expect("write");
        assert_eq!(texts(&f.poll()), ["five, a longer line than four was"]);
        assert!(f.take_notices().contains(&Notice::Truncated(path)));
    }

    #[test]
    fn a_huge_line_is_cut_and_the_next_one_kept() {
        let dir = Dir::new("huge");
        let path = dir.0.join("error.log");
        let mut w = appender(&path);
        let limits = Limits {
            max_line: 1024,
            ..quick()
        };
        let mut f = Follower::new([path], StartAt::End, limits);
        w.write_all(&vec![b'x'; 300_000]).expect("write");
        let lines = f.poll();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].cut && lines[0].bytes.len() == 1024);
        w.write_all(&vec![b'y'; 300_000]).expect("write");
        assert!(f.poll().is_empty(), "the rest of the cut line is skipped");
        w.write_all(b"\nok\n").expect("write");
        assert_eq!(texts(&f.poll()), ["ok"]);
    }

    #[test]
    fn reads_per_poll_are_capped_and_binary_is_bounded() {
        let dir = Dir::new("cap");
        let path = dir.0.join("error.log");
        let mut w = appender(&path);
        let limits = Limits {
            max_read_per_poll: 100_000,
            max_line: 2048,
            ..quick()
        };
        let mut f = Follower::new([path], StartAt::End, limits);
        let line = [b'z'; 99];
        for _ in 0..5000 {
            w.write_all(&line).expect("write");
            w.write_all(b"\n").expect("write");
        }
        let mut polls = 0;
        let mut total = 0;
        while total < 5000 {
            let got = f.poll().len();
            assert!(
                got <= 1000,
                "{got} lines in one poll: over the 100 kB budget"
            );
            total += got;
            polls += 1;
            assert!(polls < 20, "stalled at {total} lines");
        }
        assert_eq!((total, polls), (5000, 5));
        // 1 MiB of binary without a newline: one cut line, nothing piles up.
        let noise: Vec<u8> = (0..1_048_576u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .map(|b| if b == b'\n' { 0 } else { b })
            .collect();
        w.write_all(&noise).expect("write");
        let mut cut = 0;
        for _ in 0..12 {
            for l in f.poll() {
                assert!(l.bytes.len() <= 2048);
                cut += usize::from(l.cut);
            }
        }
        assert_eq!(cut, 1);
    }

    #[test]
    fn files_that_appear_later_and_files_that_cannot_be_followed() {
        let dir = Dir::new("later");
        let later = dir.0.join("later.log");
        let fifo = dir.0.join("fifo");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("no NUL");
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let mut f = Follower::new([later.clone(), fifo.clone()], StartAt::End, quick());
        let notices = f.take_notices();
        assert!(
            notices
                .iter()
                .any(|n| matches!(n, Notice::Unreadable { path, .. } if *path == fifo)),
            "{notices:?}"
        );
        assert!(f.poll().is_empty());
        std::fs::write(&later, b"created after start\n").expect("write");
        assert_eq!(texts(&f.poll()), ["created after start"]);
    }
}

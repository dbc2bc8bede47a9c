//! nginx's log time (`2026/11/30 12:58:42`: local time of the nginx process, 1 s resolution)
//! to UTC.
//!
//! The zone is the nginx process's own: `TZ` from /proc/PID/environ when set (glibc rules:
//! `:NAME`, `NAME`, `/path` or a POSIX rule like `CET-1CEST,M3.5.0,M10.5.0/3`), else
//! /etc/localtime *of its root* (a container has its own), else UTC. TZif files are read from
//! that root and handed to `jiff`, which also parses POSIX rules and resolves the hour a DST
//! change repeats (both readings are returned) — chosen over chrono-tz, whose zone data is
//! compiled in and so cannot follow the container's own /etc/localtime.

use std::path::Path;

use anyhow::{bail, Context, Result};
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

use super::root::resolve_in_root;

/// The time at the start of an nginx error.log line (`ngx_cached_err_log_time`, updated once
/// per event loop iteration: it can lag the event by the loop's latency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogTime {
    pub year: i16,
    pub month: i8,
    pub day: i8,
    pub hour: i8,
    pub minute: i8,
    pub second: i8,
}

/// The UTC seconds a [`LogTime`] can stand for: `earliest == latest` except in the hour a DST
/// change repeats. The event happened within `[earliest, latest + 1)` seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcSeconds {
    pub earliest: i64,
    pub latest: i64,
}

impl UtcSeconds {
    /// Whether `unix_ns` (nanoseconds since the epoch) falls within these seconds, widened by
    /// `slack_s` on both sides.
    pub fn contains_ns(&self, unix_ns: i128, slack_s: i64) -> bool {
        let lo = i128::from(self.earliest - slack_s) * 1_000_000_000;
        let hi = i128::from(self.latest + 1 + slack_s) * 1_000_000_000;
        (lo..hi).contains(&unix_ns)
    }
}

impl LogTime {
    /// `YYYY/MM/DD HH:MM:SS` (exactly 19 bytes).
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() != 19 || b[4] != b'/' || b[7] != b'/' || b[10] != b' ' {
            return None;
        }
        if b[13] != b':' || b[16] != b':' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i16> {
            let digits = b.get(r)?;
            digits.iter().try_fold(0i16, |n, d| {
                d.is_ascii_digit().then(|| n * 10 + i16::from(d - b'0'))
            })
        };
        let small = |r| num(r).and_then(|n| i8::try_from(n).ok());
        let t = Self {
            year: num(0..4)?,
            month: small(5..7)?,
            day: small(8..10)?,
            hour: small(11..13)?,
            minute: small(14..16)?,
            second: small(17..19)?,
        };
        // Validate once here so that to_utc only fails on a zone problem.
        t.civil()?;
        Some(t)
    }

    fn civil(&self) -> Option<DateTime> {
        DateTime::new(
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        )
        .ok()
    }

    /// The UTC seconds this local time stands for in `tz`.
    pub fn to_utc(&self, tz: &NginxTimeZone) -> Option<UtcSeconds> {
        let ambiguous = tz.zone.to_ambiguous_timestamp(self.civil()?);
        let earliest = ambiguous.earlier().ok()?.as_second();
        let latest = ambiguous.later().ok()?.as_second();
        Some(UtcSeconds { earliest, latest })
    }
}

/// How far (seconds) a line seen live may be from the moment it was read and still count as
/// live: nginx's cached time lags a little, the follower polls every ~100 ms.
const LIVE_SLACK_S: i64 = 120;

/// The time zone an nginx process writes its log times in, and where it came from.
#[derive(Debug, Clone)]
pub struct NginxTimeZone {
    zone: TimeZone,
    /// `TZ=Europe/Berlin`, `/proc/123/root/etc/localtime`, `UTC (no /etc/localtime)`, ...
    pub source: String,
}

impl NginxTimeZone {
    pub fn utc(source: &str) -> Self {
        Self {
            zone: TimeZone::UTC,
            source: source.to_string(),
        }
    }

    /// The zone of process `pid` (as seen from this pid namespace): its `TZ`, else its root's
    /// /etc/localtime, else UTC.
    pub fn of_process(pid: u32) -> Result<Self> {
        let proc_dir = Path::new("/proc").join(pid.to_string());
        let environ = std::fs::read(proc_dir.join("environ")).with_context(|| {
            format!("reading /proc/{pid}/environ (needs root or CAP_SYS_PTRACE)")
        })?;
        let tz = environ
            .split(|b| *b == 0)
            .find_map(|var| var.strip_prefix(b"TZ="))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        Self::from_tz(&proc_dir.join("root"), tz.as_deref())
    }

    /// glibc's reading of `TZ` (None: unset) for a process whose `/` is `root`.
    pub fn from_tz(root: &Path, tz: Option<&str>) -> Result<Self> {
        let Some(value) = tz else {
            return Ok(Self::from_file(root, "/etc/localtime")
                .unwrap_or_else(|_| Self::utc("UTC (no TZ, no /etc/localtime)")));
        };
        let name = value.strip_prefix(':').unwrap_or(value);
        if name.is_empty() {
            return Ok(Self::utc("UTC (TZ is empty)"));
        }
        if name.starts_with('/') {
            return Self::from_file(root, name);
        }
        if let Ok(zone) = Self::from_file(root, &format!("/usr/share/zoneinfo/{name}")) {
            return Ok(zone);
        }
        match TimeZone::posix(name) {
            Ok(zone) => Ok(Self {
                zone,
                source: format!("TZ={value} (POSIX rule)"),
            }),
            // glibc falls back to UTC for a name it cannot find; so does nginx's clock.
            Err(_) if matches!(name, "UTC" | "GMT" | "UTC0" | "GMT0") => Ok(Self::utc(name)),
            Err(e) => bail!("TZ={value} is neither a zone file under {}/usr/share/zoneinfo nor a POSIX rule: {e}", root.display()),
        }
    }

    /// Checks the zone against a line read as soon as nginx wrote it (`seen_unix_s`: when it
    /// was read). nginx moves its environment away to make room for its process title
    /// (ngx_init_setproctitle, src/os/unix/ngx_setproctitle.c) and the title overwrites the
    /// old place, so /proc/PID/environ of an nginx never shows its `TZ`: a `TZ` given to
    /// nginx (`docker run -e TZ=...`, systemd `Environment=`) is only visible in its lines.
    /// When this zone puts the line elsewhere than now, the zone becomes the fixed offset
    /// (in 15-minute steps) that does; returns whether it changed. Call it with live lines
    /// only (not a backlog read from a file's start).
    pub fn calibrate(&mut self, time: &LogTime, seen_unix_s: i64) -> bool {
        let Some(utc) = time.to_utc(self) else {
            return false;
        };
        if (utc.earliest - LIVE_SLACK_S..=utc.latest + LIVE_SLACK_S).contains(&seen_unix_s) {
            return false;
        }
        let Some(wall) = time.to_utc(&Self::utc("wall clock")) else {
            return false;
        };
        let offset = wall.earliest - seen_unix_s;
        let rounded = (offset + offset.signum() * 450) / 900 * 900;
        if (offset - rounded).abs() > LIVE_SLACK_S {
            return false;
        }
        let Some(fixed) = i32::try_from(rounded)
            .ok()
            .and_then(|s| jiff::tz::Offset::from_seconds(s).ok())
        else {
            return false;
        };
        self.zone = TimeZone::fixed(fixed);
        let sign = if rounded < 0 { '-' } else { '+' };
        let abs = rounded.abs();
        self.source = format!(
            "UTC{sign}{:02}:{:02} inferred from a line seen live (was {}; nginx hides its TZ)",
            abs / 3600,
            abs % 3600 / 60,
            self.source
        );
        true
    }

    /// A TZif file at `path` inside `root` (symlinks resolved inside that root).
    pub fn from_file(root: &Path, path: &str) -> Result<Self> {
        let resolved = resolve_in_root(root, Path::new(path))?;
        let data =
            std::fs::read(&resolved).with_context(|| format!("reading {}", resolved.display()))?;
        // The zone's name only labels it; the data decides.
        let zone = TimeZone::tzif(path, &data)
            .with_context(|| format!("{} is not a TZif file", resolved.display()))?;
        Ok(Self {
            zone,
            source: resolved.display().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> LogTime {
        LogTime::parse(s.as_bytes()).expect("a valid nginx time")
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            t("2026/11/30 12:58:42"),
            LogTime {
                year: 2026,
                month: 11,
                day: 30,
                hour: 12,
                minute: 58,
                second: 42
            }
        );
        for bad in [
            "2026/13/30 12:58:42",
            "2026/02/30 12:58:42",
            "2026-11-30 12:58:42",
            "2026/11/30 12:58:4x",
            "2026/11/30 12:58",
        ] {
            assert_eq!(LogTime::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn utc_and_posix_rules_and_the_repeated_hour() {
        let root = Path::new("/nonexistent-root");
        let utc = NginxTimeZone::from_tz(root, Some("UTC")).expect("UTC");
        let s = t("2026/11/30 12:58:42").to_utc(&utc).expect("in range");
        assert_eq!(s.earliest, 1_796_043_522);
        assert_eq!(s.earliest, s.latest);

        let berlin =
            NginxTimeZone::from_tz(root, Some("CET-1CEST,M3.5.0,M10.5.0/3")).expect("a POSIX rule");
        let winter = t("2026/11/30 13:58:42").to_utc(&berlin).expect("in range");
        assert_eq!(winter.earliest, 1_796_043_522);
        // 2026-10-25 02:30 happens twice in Berlin: 00:30 UTC (CEST) and 01:30 UTC (CET).
        let fold = t("2026/10/25 02:30:00").to_utc(&berlin).expect("in range");
        assert_eq!(fold.latest - fold.earliest, 3600);
        assert!(fold.contains_ns(i128::from(fold.latest) * 1_000_000_000 + 999_999_999, 0));
        assert!(!fold.contains_ns(i128::from(fold.latest + 1) * 1_000_000_000, 0));
    }

    #[test]
    fn calibration_from_live_lines() {
        let mut tz = NginxTimeZone::utc("test");
        let seen = 1_796_043_522; // 2026-11-30 12:58:42 UTC
                                  // Consistent (1 s late): unchanged.
        assert!(!tz.calibrate(&t("2026/11/30 12:58:41"), seen));
        // 37 minutes off is no zone: a backlog line, unchanged.
        assert!(!tz.calibrate(&t("2026/11/30 13:35:42"), seen));
        // Tokyo's wall clock, read 2 s after it was written.
        assert!(tz.calibrate(&t("2026/11/30 21:58:40"), seen));
        assert!(tz.source.starts_with("UTC+09:00 inferred"), "{}", tz.source);
        let s = t("2026/11/30 21:58:40").to_utc(&tz).expect("in range");
        assert_eq!(s.earliest, seen - 2);
        // Newfoundland, UTC-03:30.
        assert!(tz.calibrate(&t("2026/11/30 09:28:42"), seen));
        assert!(tz.source.starts_with("UTC-03:30"), "{}", tz.source);
    }

    #[test]
    fn tzif_files_from_a_root() {
        // This machine's own tz database stands in for a container root.
        let zone = NginxTimeZone::from_tz(Path::new("/"), Some(":Asia/Tokyo"))
            .expect("tzdata is installed (Debian package tzdata)");
        let s = t("2026/11/30 21:58:42").to_utc(&zone).expect("in range");
        assert_eq!(s.earliest, 1_796_043_522);
        assert!(zone.source.ends_with("Asia/Tokyo"), "{}", zone.source);
        let err = NginxTimeZone::from_tz(Path::new("/"), Some("No/Such_Zone"))
            .expect_err("neither a file nor a POSIX rule");
        assert!(err.to_string().contains("No/Such_Zone"), "{err}");
    }
}

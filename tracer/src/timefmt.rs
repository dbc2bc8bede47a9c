//! Kernel ktime (CLOCK_MONOTONIC) to RFC 3339 UTC with nanoseconds.

/// CLOCK_REALTIME - CLOCK_MONOTONIC, sampled once at start; added to bpf_ktime_get_ns().
pub fn realtime_offset_ns() -> i128 {
    fn now(clock: libc::clockid_t) -> i128 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid, writable timespec.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    }
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

/// `2026-11-22T22:40:01.123456789Z`
pub fn rfc3339_utc(unix_ns: i128) -> String {
    Rfc3339(unix_ns).to_string()
}

/// Nanoseconds since the epoch, shown as `2026-11-22T22:40:01.123456789Z`; serialized as
/// that string without allocating (one is written per reset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc3339(pub i128);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Years 0..=9999 only (four digits); the clock is far inside that.
        let secs = i64::try_from(self.0.div_euclid(1_000_000_000)).unwrap_or(0);
        let nanos = self.0.rem_euclid(1_000_000_000) as u32;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400) as u32;
        let mut buf = *b"0000-00-00T00:00:00.000000000Z";
        put_digits(&mut buf[0..4], y.clamp(0, 9999) as u32);
        put_digits(&mut buf[5..7], m as u32);
        put_digits(&mut buf[8..10], d as u32);
        put_digits(&mut buf[11..13], sod / 3600);
        put_digits(&mut buf[14..16], (sod / 60) % 60);
        put_digits(&mut buf[17..19], sod % 60);
        put_digits(&mut buf[20..29], nanos);
        // Every byte is an ASCII digit or one of "-T:.Z": from_utf8 cannot fail.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| std::fmt::Error)?)
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Writes `value` as decimal digits filling `out` (leading zeros).
fn put_digits(out: &mut [u8], mut value: u32) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_utc(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        // leap day
        assert_eq!(
            rfc3339_utc(1_709_164_800_000_000_000),
            "2024-02-29T00:00:00.000000000Z"
        );
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn offset_is_plausible() {
        // realtime is after 2020 and monotonic is much smaller
        assert!(realtime_offset_ns() > 1_577_836_800_000_000_000);
    }
}

//! Medians, spreads, percentiles and the time format the benchmark compares.

use serde_json::{json, Value};

/// Median of `values` (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// Nearest-rank percentile (`p` in 0..=100) of `values`; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// A median with the range it was taken from: figures are printed with their spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// `None` when there is no finite value.
    pub fn of(values: &[f64]) -> Option<Self> {
        let finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        Some(Self {
            median: median(&finite)?,
            min: finite.iter().copied().fold(f64::INFINITY, f64::min),
            max: finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n: finite.len(),
        })
    }

    /// `1.234 (1.101–1.400)`
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }

    pub fn json(&self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max, "n": self.n})
    }
}

/// `Spread::show`, or `n/a`.
pub fn show(spread: Option<Spread>, digits: usize) -> String {
    spread.map_or_else(|| "n/a".into(), |s| s.show(digits))
}

/// Parses rsttrace's `time` (`2026-11-22T22:45:37.792763761Z`: RFC 3339, UTC, 0–9 fraction
/// digits) into nanoseconds since the Unix epoch.
pub fn parse_rfc3339_utc(s: &str) -> Option<i128> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let second: i64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || frac.len() > 9 {
        return None;
    }
    let mut nanos: i128 = 0;
    for (i, c) in frac
        .chars()
        .chain(std::iter::repeat('0'))
        .take(9)
        .enumerate()
    {
        if i < frac.len() && !c.is_ascii_digit() {
            return None;
        }
        nanos = nanos * 10 + i128::from(c.to_digit(10)?);
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The port of an `ip:port` or `[v6]:port` endpoint string.
pub fn endpoint_port(endpoint: &str) -> Option<u16> {
    endpoint.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }

    #[test]
    fn spreads() {
        let s = Spread::of(&[1.2, f64::NAN, 1.0, 1.1]).expect("finite values");
        assert_eq!((s.median, s.min, s.max, s.n), (1.1, 1.0, 1.2, 3));
        assert_eq!(s.show(2), "1.10 (1.00–1.20)");
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_utc("1970-01-01T00:00:01.5Z"),
            Some(1_500_000_000)
        );
        // date -u -d 2026-11-22T22:45:37Z +%s → 1795387537
        assert_eq!(
            parse_rfc3339_utc("2026-11-22T22:45:37.792763761Z"),
            Some(1_795_387_537_792_763_761)
        );
        assert_eq!(parse_rfc3339_utc("2026-11-22 22:45:37Z"), None);
        assert_eq!(parse_rfc3339_utc("2026-11-22T22:45:37.1x2Z"), None);
    }

    #[test]
    fn ports() {
        assert_eq!(endpoint_port("127.0.0.1:9000"), Some(9000));
        assert_eq!(endpoint_port("[::1]:80"), Some(80));
        assert_eq!(endpoint_port("nope"), None);
    }
}

//! Event-time helpers: parsing and formatting ISO-8601 / RFC 3339 timestamps as [`Millis`].
//!
//! Hand-written because this is the hot path (two timestamps per record): no allocation, no
//! calendar library, just fixed-position digit reads and the days-from-civil algorithm
//! (H. Hinnant, <https://howardhinnant.github.io/date_algorithms.html>).

use std::fmt;

use crate::event::Millis;

const MS_PER_SECOND: i64 = 1_000;
const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// Parses an ISO-8601 / RFC 3339 date-time into milliseconds since the Unix epoch (UTC).
///
/// Accepted shape: `YYYY-MM-DD` then `T`, `t` or a space, then `hh:mm:ss`, an optional fraction
/// (`.` or `,` followed by 1–9 digits, truncated to milliseconds) and an optional zone: `Z`, `z`,
/// `±hh:mm`, `±hhmm` or `±hh`. Without a zone the time is naive and read as UTC (as in the TLC CSV
/// files, `2015-01-15 19:05:39`).
///
/// Ranges are validated: year 0000–9999, month 1–12, day within the month (leap years
/// included), hour ≤ 23, minute ≤ 59, second ≤ 60. A leap second (`:60`) is accepted and clamped
/// to `:59` (keeping the fraction), since [`Millis`] has no representation for it. Offsets must be
/// ≤ 23:59. Anything else, including surrounding whitespace, gives `None`.
pub fn parse_timestamp(s: &[u8]) -> Option<Millis> {
    // Fixed part: "YYYY-MM-DDThh:mm:ss" is 19 bytes.
    let fixed: &[u8; 19] = s.get(..19)?.try_into().ok()?;
    if fixed[4] != b'-'
        || fixed[7] != b'-'
        || !matches!(fixed[10], b'T' | b't' | b' ')
        || fixed[13] != b':'
        || fixed[16] != b':'
    {
        return None;
    }
    let year = digits4(fixed[0], fixed[1], fixed[2], fixed[3])?;
    let month = digits2(fixed[5], fixed[6])?;
    let day = digits2(fixed[8], fixed[9])?;
    let hour = digits2(fixed[11], fixed[12])?;
    let minute = digits2(fixed[14], fixed[15])?;
    let second = digits2(fixed[17], fixed[18])?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Leap second: clamp (documented above).
    let second = second.min(59);

    let mut rest = &s[19..];
    let mut millis: u32 = 0;
    if let [b'.' | b',', frac @ ..] = rest {
        let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        // Truncate to milliseconds: take the first three digits, padding with zeros.
        for i in 0..3 {
            millis = millis * 10 + frac.get(i).filter(|_| i < n).map_or(0, |d| u32::from(d - b'0'));
        }
        rest = &frac[n..];
    }

    let offset_ms: i64 = match rest {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), zone @ ..] => {
            let (oh, om) = match zone {
                [h1, h2] => (digits2(*h1, *h2)?, 0),
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => (digits2(*h1, *h2)?, digits2(*m1, *m2)?),
                _ => return None,
            };
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh) * MS_PER_HOUR + i64::from(om) * MS_PER_MINUTE;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };

    let days = days_from_civil(i64::from(year), month, day);
    let local = days * MS_PER_DAY
        + i64::from(hour) * MS_PER_HOUR
        + i64::from(minute) * MS_PER_MINUTE
        + i64::from(second) * MS_PER_SECOND
        + i64::from(millis);
    // Local time = UTC + offset, so UTC = local − offset.
    Some(local - offset_ms)
}

/// The wall clock, in milliseconds since the Unix epoch (0 before it).
pub fn wall_clock_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX))
}

/// Formats `t` as RFC 3339 UTC: `2016-01-01T00:10:00Z`, with `.123` milliseconds only when they
/// are non-zero.
pub fn format_timestamp(t: Millis) -> String {
    let mut s = String::with_capacity(24);
    // Writing into a String cannot fail.
    let _ = write_timestamp(&mut s, t);
    s
}

/// Writes `t` as [`format_timestamp`] does, without allocating.
///
/// Years outside 0000–9999 (which [`parse_timestamp`] rejects) are written with as many digits
/// as needed and a sign when negative, so every [`Millis`] value formats without panicking.
pub fn write_timestamp(out: &mut impl fmt::Write, t: Millis) -> fmt::Result {
    let days = t.div_euclid(MS_PER_DAY);
    let ms_of_day = t.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let hour = ms_of_day / MS_PER_HOUR;
    let minute = ms_of_day % MS_PER_HOUR / MS_PER_MINUTE;
    let second = ms_of_day % MS_PER_MINUTE / MS_PER_SECOND;
    let millis = ms_of_day % MS_PER_SECOND;
    write!(out, "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}")?;
    if millis != 0 {
        write!(out, ".{millis:03}")?;
    }
    out.write_char('Z')
}

/// Two ASCII digits as a number, or `None`.
#[inline(always)]
fn digits2(a: u8, b: u8) -> Option<u32> {
    let (a, b) = (a.wrapping_sub(b'0'), b.wrapping_sub(b'0'));
    (a < 10 && b < 10).then(|| u32::from(a) * 10 + u32::from(b))
}

/// Four ASCII digits as a number, or `None`.
#[inline(always)]
fn digits4(a: u8, b: u8, c: u8, d: u8) -> Option<u32> {
    Some(digits2(a, b)? * 100 + digits2(c, d)?)
}

/// Gregorian leap year rule.
fn is_leap_year(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

/// Days in `month` (1–12) of `year`.
fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1–12, day 1–31).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 }; // March-based month, [0, 11]
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in range by construction; the fallbacks are unreachable.
    (year, u32::try_from(month).unwrap_or(1), u32::try_from(day).unwrap_or(1))
}

/// Serde (de)serialization of [`Millis`] as RFC 3339 UTC strings, for `#[serde(with = ...)]`.
pub mod serde_timestamp {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Millis, format_timestamp, parse_timestamp};

    /// Writes the instant as `2016-01-01T00:10:00Z`.
    pub fn serialize<S: Serializer>(t: &Millis, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_timestamp(*t))
    }

    /// Reads any timestamp [`parse_timestamp`] accepts.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse_timestamp(s.as_bytes()).ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Option<Millis> {
        parse_timestamp(s.as_bytes())
    }

    #[test]
    fn parses_basic_forms() {
        assert_eq!(p("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(p("2016-01-01T00:05:39Z"), Some(1_451_606_739_000));
        assert_eq!(p("2016-01-01T00:05:39z"), Some(1_451_606_739_000));
        assert_eq!(p("2016-01-01t00:05:39Z"), Some(1_451_606_739_000));
        assert_eq!(p("2016-01-01 00:05:39Z"), Some(1_451_606_739_000));
        // Naive = UTC.
        assert_eq!(p("2016-01-01 00:05:39"), Some(1_451_606_739_000));
        assert_eq!(p("2015-01-15 19:05:39"), Some(1_421_348_739_000));
        assert_eq!(p("1969-12-31T23:59:59Z"), Some(-1000));
    }

    #[test]
    fn parses_fractions_truncating_to_millis() {
        let base = 1_451_606_739_000;
        assert_eq!(p("2016-01-01T00:05:39.123Z"), Some(base + 123));
        assert_eq!(p("2016-01-01T00:05:39.1Z"), Some(base + 100));
        assert_eq!(p("2016-01-01T00:05:39.12Z"), Some(base + 120));
        assert_eq!(p("2016-01-01T00:05:39.1239Z"), Some(base + 123));
        assert_eq!(p("2016-01-01T00:05:39.999999999Z"), Some(base + 999));
        assert_eq!(p("2016-01-01T00:05:39,5Z"), Some(base + 500));
        assert_eq!(p("2016-01-01T00:05:39.5"), Some(base + 500));
        assert_eq!(p("2016-01-01T00:05:39.5+01:00"), Some(base + 500 - 3_600_000));
        assert_eq!(p("2016-01-01T00:05:39.Z"), None);
        assert_eq!(p("2016-01-01T00:05:39.1234567890Z"), None);
        assert_eq!(p("2016-01-01T00:05:39."), None);
    }

    #[test]
    fn parses_offsets() {
        let utc = p("2016-01-01T00:05:39Z");
        assert_eq!(p("2016-01-01T05:35:39+05:30"), utc);
        assert_eq!(p("2016-01-01T05:35:39+0530"), utc);
        assert_eq!(p("2015-12-31T20:05:39-04:00"), utc);
        assert_eq!(p("2015-12-31T20:05:39-0400"), utc);
        assert_eq!(p("2015-12-31T20:05:39-04"), utc);
        assert_eq!(p("2016-01-01T00:05:39+00:00"), utc);
        assert_eq!(p("2016-01-01T00:05:39-00:00"), utc);
        assert_eq!(p("2016-01-01T00:05:39+24:00"), None);
        assert_eq!(p("2016-01-01T00:05:39+05:60"), None);
        assert_eq!(p("2016-01-01T00:05:39+5:30"), None);
        assert_eq!(p("2016-01-01T00:05:39+05:3"), None);
        assert_eq!(p("2016-01-01T00:05:39+05:300"), None);
        assert_eq!(p("2016-01-01T00:05:39+"), None);
    }

    #[test]
    fn validates_calendar() {
        assert!(p("2016-02-29T00:00:00Z").is_some()); // leap (÷4)
        assert!(p("2000-02-29T00:00:00Z").is_some()); // leap (÷400)
        assert_eq!(p("1900-02-29T00:00:00Z"), None); // not leap (÷100)
        assert_eq!(p("2015-02-29T00:00:00Z"), None);
        assert_eq!(p("2016-02-30T00:00:00Z"), None);
        assert_eq!(p("2016-04-31T00:00:00Z"), None);
        assert!(p("2016-12-31T23:59:59Z").is_some());
        assert_eq!(p("2016-13-01T00:00:00Z"), None);
        assert_eq!(p("2016-00-01T00:00:00Z"), None);
        assert_eq!(p("2016-01-00T00:00:00Z"), None);
        assert_eq!(p("2016-01-32T00:00:00Z"), None);
        assert_eq!(p("2016-01-01T24:00:00Z"), None);
        assert_eq!(p("2016-01-01T00:60:00Z"), None);
        assert_eq!(p("2016-01-01T00:00:61Z"), None);
        // Leap second clamps to :59.
        assert_eq!(p("2016-12-31T23:59:60Z"), p("2016-12-31T23:59:59Z"));
        assert_eq!(p("2016-12-31T23:59:60.5Z"), p("2016-12-31T23:59:59.5Z"));
        // Year bounds.
        assert_eq!(p("0000-01-01T00:00:00Z"), Some(-62_167_219_200_000));
        assert_eq!(p("9999-12-31T23:59:59.999Z"), Some(253_402_300_799_999));
        assert_eq!(p("0000-02-29T00:00:00Z"), Some(-62_162_121_600_000)); // year 0 is leap
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "2016",
            "2016-01-01",
            "2016-01-01T00:05",
            "2016-01-01T00:05Z",
            "2016/01/01T00:05:39Z",
            "2016-01-01X00:05:39Z",
            "2016-1-01T00:05:39Z",
            "２016-01-01T00:05:39Z",
            "+2016-01-01T00:05:39Z",
            "2016-01-01T00:05:39ZZ",
            "2016-01-01T00:05:39 ",
            " 2016-01-01T00:05:39Z",
            "2016-01-01T00:05:39UTC",
            "2016-01-01T0a:05:39Z",
            "abcd-ef-ghTij:kl:mn",
        ] {
            assert_eq!(p(s), None, "{s:?}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_timestamp(1_451_607_000_000), "2016-01-01T00:10:00Z");
        assert_eq!(format_timestamp(1_451_607_000_123), "2016-01-01T00:10:00.123Z");
        assert_eq!(format_timestamp(1_451_607_000_005), "2016-01-01T00:10:00.005Z");
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_timestamp(951_782_400_000), "2000-02-29T00:00:00Z");
        // Extremes never panic.
        let _ = format_timestamp(i64::MIN);
        let _ = format_timestamp(i64::MAX);
        let mut s = String::new();
        write_timestamp(&mut s, 1_000).unwrap();
        assert_eq!(s, "1970-01-01T00:00:01Z");
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(t in 0i64..4_102_444_800_000) {
            // 1970-01-01 .. 2100-01-01.
            let s = format_timestamp(t);
            prop_assert_eq!(parse_timestamp(s.as_bytes()), Some(t));
        }

        #[test]
        fn round_trip_full_year_range(t in -62_167_219_200_000i64..253_402_300_800_000) {
            let s = format_timestamp(t);
            prop_assert_eq!(parse_timestamp(s.as_bytes()), Some(t));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse_timestamp(&bytes);
        }

        #[test]
        fn never_panics_on_near_misses(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}([.,][0-9]{0,11})?(Z|[+-][0-9]{1,5}|:)?") {
            if let Some(t) = parse_timestamp(s.as_bytes()) {
                // Anything accepted is within the year range (± a day of offset).
                prop_assert!((-62_167_305_600_000..253_402_387_200_000).contains(&t));
            }
        }
    }
}

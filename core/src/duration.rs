//! Durations as text, in one grammar everywhere: Go's `time.ParseDuration`, which is also what
//! Kubernetes uses and what CEL's `duration()` accepts on the API server. The CLI flags, the CRD
//! fields and the chart values all read and write durations through this module, so `1.5s` or
//! `1h30m` means the same thing in each, and `1d` is refused by each (Go has no day unit).
//!
//! The grammar: an optional sign, then one or more decimal numbers, each with a unit (`ns`, `us`,
//! `µs`, `ms`, `s`, `m`, `h`), like `1h30m`, `1.5s` or `.5ms`; or a bare `0`. No spaces.

use std::time::Duration;

/// Why a duration string is not a valid Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not Go duration syntax (`[-+]` then one or more `<number><unit>`, or `0`).
    #[error("invalid duration {0:?}: expected Go syntax like 500ms, 10s, 1m or 1h30m")]
    Syntax(String),
    /// A number without a unit, like `10`.
    #[error("invalid duration {0:?}: missing unit (ns, us, µs, ms, s, m or h)")]
    MissingUnit(String),
    /// A unit Go does not know, like `d`.
    #[error("invalid duration {input:?}: unknown unit {unit:?} (use ns, us, µs, ms, s, m or h)")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit found.
        unit: String,
    },
    /// Longer than Go's `time.Duration` holds (about 292 years).
    #[error("invalid duration {0:?}: out of range")]
    Overflow(String),
    /// A negative duration where only zero or more makes sense.
    #[error("invalid duration {0:?}: must not be negative")]
    Negative(String),
}

/// Parses a Go duration (`time.ParseDuration`) into whole nanoseconds, signed as in Go: an optional
/// `+`/`-`, then one or more decimal numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`,
/// `h`), like `1h30m`, `1.5s`, `.5ms` or `-2m`; or a bare `0`. Spaces are not allowed. This is what
/// the API server's CEL `duration()` accepts.
pub fn parse_nanos(input: &str) -> Result<i64, DurationError> {
    const LIMIT: u64 = 1 << 63;
    let syntax = || DurationError::Syntax(input.to_owned());
    let overflow = || DurationError::Overflow(input.to_owned());

    let mut s = input.as_bytes();
    let mut negative = false;
    if let Some((&sign @ (b'-' | b'+'), rest)) = s.split_first() {
        negative = sign == b'-';
        s = rest;
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(syntax());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(syntax());
        }
        // Integer part; like Go, it may be empty when a fraction follows (".5s").
        let int_len = s.iter().take_while(|c| c.is_ascii_digit()).count();
        let mut value: u64 = 0;
        for &c in &s[..int_len] {
            value = value.checked_mul(10).filter(|v| *v <= LIMIT).ok_or_else(overflow)?;
            value = value.checked_add(u64::from(c - b'0')).filter(|v| *v <= LIMIT).ok_or_else(overflow)?;
        }
        s = &s[int_len..];
        // Fraction: digits past what fits are ignored, as Go does.
        let mut fraction: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut fraction_len = 0;
        if s.first() == Some(&b'.') {
            s = &s[1..];
            fraction_len = s.iter().take_while(|c| c.is_ascii_digit()).count();
            let mut fraction_overflowed = false;
            for &c in &s[..fraction_len] {
                if fraction_overflowed {
                    continue;
                }
                match fraction.checked_mul(10).and_then(|v| v.checked_add(u64::from(c - b'0'))) {
                    Some(next) if fraction <= (LIMIT - 1) / 10 && next <= LIMIT => {
                        fraction = next;
                        scale *= 10.0;
                    }
                    _ => fraction_overflowed = true,
                }
            }
            s = &s[fraction_len..];
        }
        if int_len == 0 && fraction_len == 0 {
            return Err(syntax());
        }
        // Unit: everything up to the next digit or dot. Those are ASCII, so the cut is on a char
        // boundary and `µ` (two bytes) stays whole.
        let unit_len = s.iter().take_while(|&&c| c != b'.' && !c.is_ascii_digit()).count();
        if unit_len == 0 {
            return Err(DurationError::MissingUnit(input.to_owned()));
        }
        let unit_text = String::from_utf8_lossy(&s[..unit_len]);
        let unit: u64 = match unit_text.as_ref() {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => {
                return Err(DurationError::UnknownUnit { input: input.to_owned(), unit: other.to_owned() });
            }
        };
        s = &s[unit_len..];
        if value > LIMIT / unit {
            return Err(overflow());
        }
        value *= unit;
        if fraction > 0 {
            // Same float arithmetic as Go (`uint64(float64(f) * (float64(unit) / scale))`), so the
            // rounding matches to the nanosecond; `as` saturates where Go's conversion would not, but
            // the product stays below 2^63 · 10 and is checked right after.
            let extra = (fraction as f64 * (unit as f64 / scale)) as u64;
            value = value.checked_add(extra).filter(|v| *v <= LIMIT).ok_or_else(overflow)?;
        }
        total = total.checked_add(value).filter(|v| *v <= LIMIT).ok_or_else(overflow)?;
    }
    if negative {
        // 2^63 is allowed only as a negative value (i64::MIN).
        return Ok(0_i64.wrapping_sub_unsigned(total));
    }
    i64::try_from(total).map_err(|_| overflow())
}

/// Parses a Go duration string (see [`parse_nanos`]) into a [`Duration`]. Negative
/// durations are rejected (`-0s` is zero).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let nanos = parse_nanos(s)?;
    let nanos = u64::try_from(nanos).map_err(|_| DurationError::Negative(s.to_owned()))?;
    Ok(Duration::from_nanos(nanos))
}

/// Writes a duration the way a person would type it, in this grammar: the largest units first and
/// zero parts left out (`1h30m`, `10s`, `1m`, `1.5s`, `250ms`, `0s`). [`parse`] reads it back exactly.
pub fn format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let secs = d.as_secs();
    let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    let nanos = d.subsec_nanos();
    if seconds > 0 && nanos == 0 {
        out.push_str(&format!("{seconds}s"));
    } else if nanos > 0 && (seconds > 0 || !nanos.is_multiple_of(1_000_000)) {
        // A fraction of a second: written as seconds with the trailing zeros cut.
        let fraction = format!("{nanos:09}");
        out.push_str(&format!("{seconds}.{}s", fraction.trim_end_matches('0')));
    } else if nanos > 0 {
        out.push_str(&format!("{}ms", nanos / 1_000_000));
    }
    out
}

/// [`format()`] of a duration held in (event-time) milliseconds; negative counts as zero.
pub fn format_millis(ms: i64) -> String {
    format(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: i64 = 1;
    const US: i64 = 1_000;
    const MS: i64 = 1_000_000;
    const SEC: i64 = 1_000_000_000;
    const MIN: i64 = 60 * SEC;
    const HOUR: i64 = 60 * MIN;

    #[test]
    fn go_durations_parse_like_time_parse() {
        // Cases from Go's time.ParseDuration tests and documentation.
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("5s", 5 * SEC),
            ("30s", 30 * SEC),
            ("1478s", 1478 * SEC),
            ("-5s", -5 * SEC),
            ("+5s", 5 * SEC),
            ("-0", 0),
            ("+0", 0),
            ("5.0s", 5 * SEC),
            ("5.6s", 5 * SEC + 600 * MS),
            ("5.s", 5 * SEC),
            (".5s", 500 * MS),
            ("1.0s", SEC),
            ("1.00s", SEC),
            ("1.004s", SEC + 4 * MS),
            ("1.0040s", SEC + 4 * MS),
            ("100.00100s", 100 * SEC + MS),
            ("10ns", 10 * NS),
            ("11us", 11 * US),
            ("12µs", 12 * US),
            ("12μs", 12 * US),
            ("13ms", 13 * MS),
            ("14s", 14 * SEC),
            ("15m", 15 * MIN),
            ("16h", 16 * HOUR),
            ("3h30m", 3 * HOUR + 30 * MIN),
            ("10.5s4m", 4 * MIN + 10 * SEC + 500 * MS),
            ("-2m3.4s", -(2 * MIN + 3 * SEC + 400 * MS)),
            ("1h2m3s4ms5us6ns", HOUR + 2 * MIN + 3 * SEC + 4 * MS + 5 * US + 6 * NS),
            ("39h9m14.425s", 39 * HOUR + 9 * MIN + 14 * SEC + 425 * MS),
            ("52763797000ns", 52_763_797_000 * NS),
            ("0.3333333333333333333h", 20 * MIN),
            ("9007199254740993ns", 9_007_199_254_740_993 * NS),
            ("9223372036854775807ns", i64::MAX),
            ("9223372036854775.807us", i64::MAX),
            ("9223372036s854ms775us807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("-9223372036854775.808us", i64::MIN),
            ("-2562047h47m16.854775808s", i64::MIN),
            ("0.100000000000000000000h", 6 * MIN),
            ("0.830103483285477580700h", 49 * MIN + 48 * SEC + 372_539_827 * NS),
            ("10m", 10 * MIN),
            ("500ms", 500 * MS),
            ("1h30m", HOUR + 30 * MIN),
            ("0s", 0),
            ("0h0m", 0),
        ];
        for &(input, want) in cases {
            assert_eq!(parse_nanos(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn malformed_go_durations_are_rejected() {
        for input in [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "1w",
            "3000000h",
            "9223372036854775808ns",
            "9223372036854775.808us",
            "9223372036854ms775us808ns",
            "-9223372036854775809ns",
            " 1s",
            "1s ",
            "1 s",
            "1e3s",
            "1.5.s",
            "1s-2m",
            "00",
            "inf",
            "1S",
            "1H",
        ] {
            assert!(parse_nanos(input).is_err(), "{input:?} must be rejected");
        }
        assert_eq!(parse_nanos("10"), Err(DurationError::MissingUnit("10".to_owned())));
        assert_eq!(parse_nanos("1d"), Err(DurationError::UnknownUnit { input: "1d".to_owned(), unit: "d".to_owned() }));
        assert_eq!(parse_nanos("3000000h"), Err(DurationError::Overflow("3000000h".to_owned())));
    }

    #[test]
    fn parse_duration_gives_std_durations_and_refuses_negatives() {
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5µs"), Ok(Duration::from_nanos(1500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("-0s"), Ok(Duration::ZERO));
        assert_eq!(parse("-1s"), Err(DurationError::Negative("-1s".to_owned())));
    }

    #[test]
    fn format_writes_what_parse_reads_back() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_secs(3661), "1h1m1s"),
            (Duration::from_nanos(1_500), "0.0000015s"),
        ] {
            assert_eq!(format(d), text);
            assert_eq!(parse(text), Ok(d), "{text}");
        }
    }
}

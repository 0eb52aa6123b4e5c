//! Numbers and times as JSON text, without allocation: integers, amounts in hundredths, degrees
//! with 6 decimals and ISO-8601 UTC timestamps.

use crate::event::Millis;

pub(super) fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

fn push_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    push_u64(buf, v.unsigned_abs());
}

/// Writes `n` as exactly `width` decimal digits (`n` < 10^width).
fn push_padded(buf: &mut Vec<u8>, n: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let mut v = n;
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    buf.extend_from_slice(&digits[..width]);
}

/// An amount in hundredths as the shortest decimal: `1100` → `11.0`, `236` → `2.36`, `50` → `0.5`.
pub(super) fn push_cents(buf: &mut Vec<u8>, cents: i64) {
    if cents < 0 {
        buf.push(b'-');
    }
    let c = cents.unsigned_abs();
    push_u64(buf, c / 100);
    buf.push(b'.');
    let frac = (c % 100) as u32;
    if frac.is_multiple_of(10) {
        buf.push(b'0' + (frac / 10) as u8);
    } else {
        push_padded(buf, frac, 2);
    }
}

/// Degrees with exactly 6 decimals (the value is already rounded to 6 decimals).
pub(super) fn push_degrees(buf: &mut Vec<u8>, deg: f64) {
    let micro = (deg * 1e6).round() as i64;
    if micro < 0 {
        buf.push(b'-');
    }
    let m = micro.unsigned_abs();
    push_u64(buf, m / 1_000_000);
    buf.push(b'.');
    push_padded(buf, (m % 1_000_000) as u32, 6);
}

/// `at` as ISO-8601 UTC, `2016-01-01T00:05:39Z`, with `.mmm` only when it has milliseconds.
pub(super) fn push_timestamp(buf: &mut Vec<u8>, at: Millis) {
    let secs = at.div_euclid(1000);
    let millis = at.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    if (0..=9999).contains(&year) {
        push_padded(buf, year as u32, 4);
    } else {
        push_i64(buf, year);
    }
    buf.push(b'-');
    push_padded(buf, month, 2);
    buf.push(b'-');
    push_padded(buf, day, 2);
    buf.push(b'T');
    push_padded(buf, of_day / 3600, 2);
    buf.push(b':');
    push_padded(buf, of_day / 60 % 60, 2);
    buf.push(b':');
    push_padded(buf, of_day % 60, 2);
    if millis != 0 {
        buf.push(b'.');
        push_padded(buf, millis, 3);
    }
    buf.push(b'Z');
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::super::JAN_1_2016_MS;
    use super::super::test_support::timestamp;
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(JAN_1_2016_MS + 339_000), "2016-01-01T00:05:39Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(timestamp(1_456_790_399_500), "2016-02-29T23:59:59.500Z");
        assert_eq!(timestamp(4_102_444_800_000), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn formats_numbers() {
        let mut b = Vec::new();
        for c in [1100, 50, 0, 236, 1466, 5, 100_001] {
            push_cents(&mut b, c);
            b.push(b' ');
        }
        push_degrees(&mut b, -73.981712);
        b.push(b' ');
        push_degrees(&mut b, 40.75);
        b.push(b' ');
        push_degrees(&mut b, -0.000001);
        b.push(b' ');
        push_u64(&mut b, u64::MAX);
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "11.0 0.5 0.0 2.36 14.66 0.05 1000.01 -73.981712 40.750000 -0.000001 18446744073709551615"
        );
    }
}

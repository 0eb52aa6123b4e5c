//! The JSON event lines: writing a data set, one record as a line, a trip's line with plausible
//! 2016 fares, and the invalid lines a parser must reject.

use std::io::{self, BufWriter, Write};

use super::demand::hour_of_day;
use super::format::{push_cents, push_degrees, push_timestamp, push_u64};
use super::places::{JFK_BOX, LGA_BOX, Point, in_box, in_manhattan};
use super::rng::Rng;
use super::{DAY_MS, GeneratedRecord, GeneratorConfig, TripGenerator};
use crate::event::Trip;

/// What [`write_json_lines`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenerateStats {
    /// Trip lines.
    pub trips: u64,
    /// Watermark lines.
    pub watermarks: u64,
    /// Invalid lines.
    pub invalid: u64,
    /// Bytes written, newlines included.
    pub bytes: u64,
}

/// Writes the data set of `config` to `out` as JSON lines through a [`BufWriter`],
/// flushes it and returns what was written.
///
/// # Errors
/// Any error of `out`.
pub fn write_json_lines<W: Write>(config: &GeneratorConfig, out: W) -> io::Result<GenerateStats> {
    let mut out = BufWriter::with_capacity(1 << 17, out);
    let mut stats = GenerateStats::default();
    let mut line = Vec::with_capacity(512);
    for record in TripGenerator::new(config) {
        line.clear();
        encode_json_line(config.seed, &record, &mut line);
        out.write_all(&line)?;
        stats.bytes += line.len() as u64;
        match record {
            GeneratedRecord::Trip(_) => stats.trips += 1,
            GeneratedRecord::Watermark(_) => stats.watermarks += 1,
            GeneratedRecord::Invalid(_) => stats.invalid += 1,
        }
    }
    out.flush()?;
    Ok(stats)
}

/// Appends `record` to `buf` as one JSON line, newline included.
///
/// A trip's other fields (vendor, passengers, distance, fare, tip, …) are derived from `seed`, the
/// trip id and the trip itself, so they are the same whoever encodes the trip; pass the seed of
/// the [`GeneratorConfig`] that produced it.
pub fn encode_json_line(seed: u64, record: &GeneratedRecord, buf: &mut Vec<u8>) {
    match record {
        GeneratedRecord::Trip(trip) => encode_trip(seed, trip, buf),
        GeneratedRecord::Watermark(at) => {
            buf.extend_from_slice(b"{\"watermark\":\"");
            push_timestamp(buf, *at);
            buf.extend_from_slice(b"\",\"type\":\"watermark\"}");
        }
        GeneratedRecord::Invalid(raw) => buf.extend_from_slice(raw.as_bytes()),
    }
    buf.push(b'\n');
}

// Invalid lines: one or more per rejection reason (`InvalidReason`).

pub(super) const INVALID_LINES: &[&str] = &[
    // not JSON
    "2016-01-01 00:00:00,2016-01-01 00:12:03,1,2.63,-73.981712,40.752613",
    "{\"vendor_id\":\"2\",\"pickup_datetime\":\"2016-01-01T00:00:00Z\",\"dropoff_datetime\":\"2016-01",
    // not an object
    "[\"trip\",1,\"2016-01-01T00:00:00Z\"]",
    // missing type
    "{\"pickup_datetime\":\"2016-01-01T00:00:00Z\",\"dropoff_datetime\":\"2016-01-01T00:12:03Z\",\"pickup_longitude\":-73.981712,\"pickup_latitude\":40.752613,\"dropoff_longitude\":-73.970535,\"dropoff_latitude\":40.762741,\"trip_id\":0}",
    // unknown type
    "{\"pickup_datetime\":\"2016-01-01T00:00:00Z\",\"dropoff_datetime\":\"2016-01-01T00:12:03Z\",\"pickup_longitude\":-73.981712,\"pickup_latitude\":40.752613,\"dropoff_longitude\":-73.970535,\"dropoff_latitude\":40.762741,\"trip_id\":0,\"type\":\"fare\"}",
    // missing field (dropoff_datetime)
    "{\"pickup_datetime\":\"2016-01-01T00:00:00Z\",\"pickup_longitude\":-73.981712,\"pickup_latitude\":40.752613,\"dropoff_longitude\":-73.970535,\"dropoff_latitude\":40.762741,\"trip_id\":0,\"type\":\"trip\"}",
    // missing field (coordinates)
    "{\"pickup_datetime\":\"2016-01-01T00:00:00Z\",\"dropoff_datetime\":\"2016-01-01T00:12:03Z\",\"trip_id\":0,\"type\":\"trip\"}",
    // bad field (timestamp)
    "{\"pickup_datetime\":\"yesterday\",\"dropoff_datetime\":\"2016-01-01T00:12:03Z\",\"pickup_longitude\":-73.981712,\"pickup_latitude\":40.752613,\"dropoff_longitude\":-73.970535,\"dropoff_latitude\":40.762741,\"trip_id\":0,\"type\":\"trip\"}",
    // bad field (coordinate as text)
    "{\"pickup_datetime\":\"2016-01-01T00:00:00Z\",\"dropoff_datetime\":\"2016-01-01T00:12:03Z\",\"pickup_longitude\":\"\",\"pickup_latitude\":40.752613,\"dropoff_longitude\":-73.970535,\"dropoff_latitude\":40.762741,\"trip_id\":0,\"type\":\"trip\"}",
    // coordinate out of range
    "{\"pickup_datetime\":\"2016-01-01T00:00:00Z\",\"dropoff_datetime\":\"2016-01-01T00:12:03Z\",\"pickup_longitude\":-73.981712,\"pickup_latitude\":140.752613,\"dropoff_longitude\":-73.970535,\"dropoff_latitude\":40.762741,\"trip_id\":0,\"type\":\"trip\"}",
    "{\"pickup_datetime\":\"2016-01-01T00:00:00Z\",\"dropoff_datetime\":\"2016-01-01T00:12:03Z\",\"pickup_longitude\":-73.981712,\"pickup_latitude\":40.752613,\"dropoff_longitude\":-273.970535,\"dropoff_latitude\":40.762741,\"trip_id\":0,\"type\":\"trip\"}",
    // dropoff before pickup
    "{\"pickup_datetime\":\"2016-01-01T00:12:03Z\",\"dropoff_datetime\":\"2016-01-01T00:00:00Z\",\"pickup_longitude\":-73.981712,\"pickup_latitude\":40.752613,\"dropoff_longitude\":-73.970535,\"dropoff_latitude\":40.762741,\"trip_id\":0,\"type\":\"trip\"}",
];

// The trip line: the reference architecture's event format, with plausible 2016 fares.

fn encode_trip(seed: u64, trip: &Trip, buf: &mut Vec<u8>) {
    let mut rng = Rng::new(seed ^ trip.trip_id.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ 0x5EED_FA2E);
    let duration_min = trip.duration_ms() as f64 / 60_000.0;
    let pickup = Point::new(trip.pickup.lat, trip.pickup.lon);
    let dropoff = Point::new(trip.dropoff.lat, trip.dropoff.lon);
    let zero = pickup == Point::ZERO || dropoff == Point::ZERO;
    let miles = if zero {
        // The meter still ran: a distance that fits the duration.
        duration_min * (0.12 + 0.1 * rng.f64())
    } else {
        pickup.km_to(dropoff) * (1.2 + 0.2 * rng.f64()) / 1.609
    };
    let miles_cents = ((miles * 100.0).round() as i64).max(0);
    let at_jfk = in_box(dropoff, JFK_BOX) || in_box(pickup, JFK_BOX);
    let manhattan_end = in_manhattan(pickup) || in_manhattan(dropoff);
    let rate_code: u8 = if at_jfk && manhattan_end { 2 } else { 1 };
    let airport_run = at_jfk || in_box(dropoff, LGA_BOX) || in_box(pickup, LGA_BOX);

    // Fares in cents: $2.50 flag drop, $2.50 a mile, $0.50 a minute stuck in traffic; JFK flat $52.
    let fare = if rate_code == 2 {
        5200
    } else {
        let slow_min = (duration_min - miles * 2.5).max(0.0) * 0.6;
        let metered = 250.0 + miles * 250.0 + slow_min * 50.0;
        ((metered / 50.0).round() as i64).max(5) * 50
    };
    let pickup_hour = hour_of_day(trip.pickup_time);
    let weekday = (trip.pickup_time.div_euclid(DAY_MS) + 3).rem_euclid(7) < 5; // 1970-01-01: Thu
    let extra = if !(6.0..20.0).contains(&pickup_hour) {
        50
    } else if weekday && (16.0..20.0).contains(&pickup_hour) && rate_code != 2 {
        100
    } else {
        0
    };
    let mta_tax = 50;
    let tolls = if (airport_run && rng.f64() < 0.6) || (miles > 10.0 && rng.f64() < 0.3) { 554 } else { 0 };
    let card = rng.f64() < 0.62;
    let payment: &[u8] = if card {
        b"CRD"
    } else if rng.f64() < 0.97 {
        b"CSH"
    } else if rng.f64() < 0.5 {
        b"NOC"
    } else {
        b"DIS"
    };
    let tip = if card {
        let pct = match rng.below(10) {
            0 => 0.0,
            1..=5 => 0.2,
            6 | 7 => 0.15 + 0.1 * rng.f64(),
            8 => 0.25,
            _ => 0.3,
        };
        ((fare + extra + mta_tax + 30) as f64 * pct).round() as i64
    } else {
        0
    };
    let total = fare + extra + mta_tax + tip + tolls + 30; // + $0.30 improvement surcharge
    let passengers = match rng.below(100) {
        0..=69 => 1,
        70..=83 => 2,
        84..=87 => 3,
        88..=89 => 4,
        90..=95 => 5,
        _ => 6,
    };
    let vendor: &[u8] = if rng.f64() < 0.45 { b"1" } else { b"2" };
    let stored: &[u8] = if rng.f64() < 0.01 { b"Y" } else { b"N" };

    buf.extend_from_slice(b"{\"vendor_id\":\"");
    buf.extend_from_slice(vendor);
    buf.extend_from_slice(b"\",\"pickup_datetime\":\"");
    push_timestamp(buf, trip.pickup_time);
    buf.extend_from_slice(b"\",\"dropoff_datetime\":\"");
    push_timestamp(buf, trip.dropoff_time);
    buf.extend_from_slice(b"\",\"passenger_count\":");
    push_u64(buf, passengers);
    buf.extend_from_slice(b",\"trip_distance\":");
    push_cents(buf, miles_cents);
    buf.extend_from_slice(b",\"pickup_longitude\":");
    push_degrees(buf, trip.pickup.lon);
    buf.extend_from_slice(b",\"pickup_latitude\":");
    push_degrees(buf, trip.pickup.lat);
    buf.extend_from_slice(b",\"rate_code\":");
    push_u64(buf, u64::from(rate_code));
    buf.extend_from_slice(b",\"store_and_fwd_flag\":\"");
    buf.extend_from_slice(stored);
    buf.extend_from_slice(b"\",\"dropoff_longitude\":");
    push_degrees(buf, trip.dropoff.lon);
    buf.extend_from_slice(b",\"dropoff_latitude\":");
    push_degrees(buf, trip.dropoff.lat);
    buf.extend_from_slice(b",\"payment_type\":\"");
    buf.extend_from_slice(payment);
    buf.extend_from_slice(b"\",\"fare_amount\":");
    push_cents(buf, fare);
    buf.extend_from_slice(b",\"extra\":");
    push_cents(buf, extra);
    buf.extend_from_slice(b",\"mta_tax\":");
    push_cents(buf, mta_tax);
    buf.extend_from_slice(b",\"tip_amount\":");
    push_cents(buf, tip);
    buf.extend_from_slice(b",\"tolls_amount\":");
    push_cents(buf, tolls);
    buf.extend_from_slice(b",\"total_amount\":");
    push_cents(buf, total);
    buf.extend_from_slice(b",\"trip_id\":");
    push_u64(buf, trip.trip_id);
    buf.extend_from_slice(b",\"type\":\"trip\"}");
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{bytes_of, config, timestamp};
    use super::*;

    #[test]
    fn lines_are_json_in_the_event_format() {
        let c = GeneratorConfig { watermark_every: Some(100), invalid_ratio: 0.02, ..config(5_000, 11) };
        let records: Vec<_> = TripGenerator::new(&c).collect();
        let text = String::from_utf8(bytes_of(&c)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), records.len());
        assert!(text.ends_with('\n'));
        const KEYS: [&str; 21] = [
            "vendor_id",
            "pickup_datetime",
            "dropoff_datetime",
            "passenger_count",
            "trip_distance",
            "pickup_longitude",
            "pickup_latitude",
            "rate_code",
            "store_and_fwd_flag",
            "dropoff_longitude",
            "dropoff_latitude",
            "payment_type",
            "fare_amount",
            "extra",
            "mta_tax",
            "tip_amount",
            "tolls_amount",
            "total_amount",
            "trip_id",
            "type",
            "",
        ];
        let mut total_len = 0;
        for (line, record) in lines.iter().zip(&records) {
            match record {
                GeneratedRecord::Trip(t) => {
                    total_len += line.len() + 1;
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    let obj = v.as_object().unwrap();
                    assert_eq!(obj.len(), 20, "{line}");
                    for k in &KEYS[..20] {
                        assert!(obj.contains_key(*k), "{k} in {line}");
                    }
                    assert!(line.ends_with(",\"type\":\"trip\"}"), "{line}");
                    assert_eq!(obj["trip_id"].as_u64(), Some(t.trip_id));
                    assert_eq!(obj["pickup_latitude"].as_f64(), Some(t.pickup.lat));
                    assert_eq!(obj["pickup_longitude"].as_f64(), Some(t.pickup.lon));
                    assert_eq!(obj["dropoff_latitude"].as_f64(), Some(t.dropoff.lat));
                    assert_eq!(obj["dropoff_longitude"].as_f64(), Some(t.dropoff.lon));
                    assert_eq!(obj["pickup_datetime"].as_str().unwrap(), timestamp(t.pickup_time));
                    assert_eq!(obj["dropoff_datetime"].as_str().unwrap(), timestamp(t.dropoff_time));
                    let sum: f64 = ["fare_amount", "extra", "mta_tax", "tip_amount", "tolls_amount"]
                        .iter()
                        .map(|k| obj[*k].as_f64().unwrap())
                        .sum::<f64>()
                        + 0.3;
                    assert!((sum - obj["total_amount"].as_f64().unwrap()).abs() < 0.005, "{line}");
                    assert!(obj["trip_distance"].as_f64().unwrap() >= 0.0);
                }
                GeneratedRecord::Watermark(w) => {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert_eq!(v["type"], "watermark");
                    assert_eq!(v["watermark"].as_str().unwrap(), timestamp(*w));
                    assert!(line.ends_with(",\"type\":\"watermark\"}"));
                }
                GeneratedRecord::Invalid(raw) => {
                    assert_eq!(line, raw);
                    let v: Option<serde_json::Value> = serde_json::from_str(line).ok();
                    // Either not JSON, not an object, or a trip that cannot pass validation.
                    if let Some(obj) = v.as_ref().and_then(|v| v.as_object()) {
                        assert!(obj.get("trip_id").and_then(|id| id.as_u64()) == Some(0));
                    }
                }
            }
        }
        let avg = total_len as f64 / 5_000.0;
        assert!((400.0..480.0).contains(&avg), "{avg} bytes per trip line");
    }
}

//! The synthetic NYC trip generator behind `taxi-worker generate`.
//!
//! [`TripGenerator`] yields a day of NYC-like yellow-cab trips, in the order a producer would send
//! them: by dropoff time (the event time) with a bounded disorder, interleaved with optional
//! watermark events and invalid lines. [`write_json_lines`] writes them in the JSON event format
//! that [`crate::input::parse_json_record`] reads, one object per line.
//!
//! Everything is a pure function of the [`GeneratorConfig`]: the PRNG (SplitMix64 seeding
//! xoshiro256**) and all arithmetic are defined here, so a seed gives the same bytes forever on
//! every platform.
//!
//! What makes the data realistic enough for the hot-spot and airport analyses:
//! - demand follows a weekday NYC diurnal curve (trough at 4–5 am, morning and evening peaks),
//!   read on the hour of day of the timestamps themselves (TLC times are local times);
//! - pickups are a mixture of hot spots (Midtown, Upper East/West Side, downtown, Brooklyn, the
//!   airports), Gaussian around their centres (stretched along the avenues in Manhattan), over a
//!   uniform background on the NYC box; about 1 % of trips leave the box (0,0 coordinates as in real
//!   TLC files, or suburbs);
//! - about 4 % of trips end inside the JFK or LaGuardia box, most of them picked up at a few busy
//!   Midtown spots, so the airport analysis has many keys with at least two trips per window;
//! - durations follow distance and the hour's congestion, at least one minute, airport runs 25–70.
//!
//! The parts: `generator` (the iterator, routes and durations), `demand` (the day's demand and
//! traffic), `places` (hot spots, airports and the region's boxes), `json` (the event lines and
//! their fares), `format` (numbers and times as text) and `rng` (the portable PRNG).

mod demand;
mod format;
mod generator;
mod json;
mod places;
mod rng;
#[cfg(test)]
mod test_support;

pub use generator::TripGenerator;
pub use json::{GenerateStats, encode_json_line, write_json_lines};

use crate::event::{Millis, Trip};

/// One millisecond-valued day.
const DAY_MS: i64 = 86_400_000;

/// 2016-01-01T00:00:00Z in milliseconds since the Unix epoch.
const JAN_1_2016_MS: Millis = 1_451_606_400_000;

/// Settings of one generated data set.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorConfig {
    /// Number of trips to generate; trip ids are `1..=trips` in emission order.
    pub trips: u64,
    /// PRNG seed: the same configuration and seed always give the same records and bytes.
    pub seed: u64,
    /// Start of the generated day: dropoff times lie in `[start, start + 24 h]` (rounded up to
    /// whole seconds). Pickups of the first trips may start before it.
    pub start: Millis,
    /// Bound of the disorder, in milliseconds: every emitted trip's dropoff time is at least the
    /// largest dropoff time emitted before it minus this bound. Negative values mean 0. Keep it
    /// below the engine's `maxOutOfOrderness` (60 s by default) or trips will be late.
    pub max_disorder_ms: i64,
    /// When set to `Some(k)` with `k > 0`, a watermark follows every `k`-th trip, valued at the
    /// largest dropoff time emitted so far minus `max_disorder_ms` (a correct watermark: no later
    /// trip is older).
    pub watermark_every: Option<u64>,
    /// Fraction of non-watermark lines that are invalid (not JSON, a missing field, dropoff before
    /// pickup, …), in `[0, 0.99]`; invalid lines do not consume trip ids. `0.0` writes none.
    pub invalid_ratio: f64,
}

impl Default for GeneratorConfig {
    /// One realistic day: about 400 000 trips (a 2016 weekday of NYC yellow cabs), seed 42, from
    /// 2016-01-01T00:00:00Z, disorder bounded by 30 s, no watermarks and no invalid lines.
    fn default() -> Self {
        GeneratorConfig {
            trips: 400_000,
            seed: 42,
            start: JAN_1_2016_MS,
            max_disorder_ms: 30_000,
            watermark_every: None,
            invalid_ratio: 0.0,
        }
    }
}

/// One generated input record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GeneratedRecord {
    /// A valid trip (coordinates already rounded to 6 decimals, times to whole seconds).
    Trip(Trip),
    /// A watermark event.
    Watermark(Millis),
    /// A raw invalid line (without its newline) that a parser must reject.
    Invalid(&'static str),
}

#[cfg(test)]
mod tests {
    use super::test_support::{bytes_of, config, timestamp, trips_of};
    use super::*;

    #[test]
    fn default_is_one_realistic_day() {
        let c = GeneratorConfig::default();
        assert_eq!(c.trips, 400_000);
        assert_eq!(c.seed, 42);
        assert_eq!(timestamp(c.start), "2016-01-01T00:00:00Z");
        assert!(c.max_disorder_ms > 0 && c.max_disorder_ms < 60_000);
        assert_eq!(c.watermark_every, None);
        assert_eq!(c.invalid_ratio, 0.0);
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let c = GeneratorConfig { watermark_every: Some(100), invalid_ratio: 0.01, ..config(20_000, 7) };
        let a = bytes_of(&c);
        assert_eq!(a, bytes_of(&c));
        assert_ne!(a, bytes_of(&GeneratorConfig { seed: 8, ..c.clone() }));
        // Pinned: the same seed gives the same file forever, on every platform (no libm, no
        // platform RNG). Change this only on purpose, and say so: published data sets change.
        let fnv =
            a.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3));
        assert_eq!((a.len(), fnv), (9_059_297, 16_436_178_591_122_547_842));
    }

    #[test]
    fn counts_and_ids() {
        for n in [0u64, 1, 2, 10, 12_345] {
            let trips = trips_of(&config(n, 3));
            assert_eq!(trips.len() as u64, n);
            assert!(trips.iter().enumerate().all(|(i, t)| t.trip_id == i as u64 + 1));
        }
        let c = GeneratorConfig { watermark_every: Some(50), invalid_ratio: 0.05, ..config(10_000, 1) };
        let mut out = Vec::new();
        let stats = write_json_lines(&c, &mut out).unwrap();
        assert_eq!(stats.trips, 10_000);
        assert_eq!(stats.watermarks, 200);
        let expected_invalid = 10_000.0 * 0.05 / 0.95;
        assert!((stats.invalid as f64 - expected_invalid).abs() <= 1.0, "{stats:?}");
        assert_eq!(stats.bytes, out.len() as u64);
        let ids: Vec<u64> = trips_of(&c).iter().map(|t| t.trip_id).collect();
        assert_eq!(ids, (1..=10_000).collect::<Vec<_>>());
    }
}

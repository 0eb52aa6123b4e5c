//! The generator proper: trips placed on the day by the demand curve, routes drawn between the
//! places, durations from distance and traffic, and the watermark and invalid lines mixed in.

use super::demand::{congestion, demand, drive_minutes, hour_of_day};
use super::json::INVALID_LINES;
use super::places::{
    AIRPORT_FEEDERS, AVENUE, CITY_SPOTS, JFK, JFK_BOX, LGA, LGA_BOX, PICKUP_SPOTS, Point, SUBURBS, in_box, pick,
    sample_spot,
};
use super::rng::{Rng, exp};
use super::{GeneratedRecord, GeneratorConfig};
use crate::event::{Millis, Trip};

/// The synthetic trip source: an iterator over [`GeneratedRecord`]s, ordered by dropoff time with
/// bounded disorder (see [`GeneratorConfig::max_disorder_ms`]).
///
/// Trip dropoff times are placed by the inverse CDF of the diurnal demand curve at stratified
/// positions `(i + U) / trips`, which makes them non-decreasing; each trip is then moved back by a
/// random delay of at most the disorder bound, which is what bounds the disorder.
#[derive(Clone, Debug)]
pub struct TripGenerator {
    rng: Rng,
    trips: u64,
    /// Index of the next trip, `0..trips`.
    next: u64,
    /// `start` rounded up to whole seconds: no dropoff is earlier.
    first_ms: Millis,
    /// Milliseconds since the Unix epoch of the start of the demand table.
    start: Millis,
    /// Disorder bound in whole seconds (what delays are drawn from).
    disorder_s: i64,
    /// Disorder bound in milliseconds (what watermarks subtract).
    disorder_ms: i64,
    /// Cumulative demand per minute of the day from `start`: `MINUTES + 1` entries from 0 to 1.
    cdf: Vec<f64>,
    /// Current minute in `cdf` (positions only grow).
    bin: usize,
    max_dropoff: Millis,
    watermark_every: u64,
    pending_watermark: Option<Millis>,
    invalid_per_trip: f64,
    invalid_acc: f64,
    pending_invalid: u64,
}

/// Minutes in the generated day (one demand bin each).
const MINUTES: usize = 1440;

impl TripGenerator {
    /// A generator for `config`.
    pub fn new(config: &GeneratorConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let disorder_ms = config.max_disorder_ms.max(0);
        let mut cdf = Vec::with_capacity(MINUTES + 1);
        cdf.push(0.0);
        let mut total = 0.0;
        for minute in 0..MINUTES as i64 {
            let at = config.start.saturating_add(minute * 60_000 + 30_000);
            total += demand(hour_of_day(at));
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        let ratio = if config.invalid_ratio.is_finite() { config.invalid_ratio.clamp(0.0, 0.99) } else { 0.0 };
        let invalid_acc = if ratio > 0.0 { rng.f64() } else { 0.0 };
        TripGenerator {
            trips: config.trips,
            next: 0,
            first_ms: ceil_to_second(config.start),
            start: config.start,
            disorder_s: disorder_ms / 1000,
            disorder_ms,
            cdf,
            bin: 0,
            max_dropoff: Millis::MIN,
            watermark_every: config.watermark_every.unwrap_or(0),
            pending_watermark: None,
            invalid_per_trip: ratio / (1.0 - ratio),
            invalid_acc,
            pending_invalid: 0,
            rng,
        }
    }

    /// The next trip's dropoff time before its delay: non-decreasing in the trip index.
    fn base_dropoff(&mut self) -> Millis {
        let u = (self.next as f64 + self.rng.f64()) / self.trips as f64;
        while self.bin + 1 < MINUTES && self.cdf[self.bin + 1] < u {
            self.bin += 1;
        }
        let (lo, hi) = (self.cdf[self.bin], self.cdf[self.bin + 1]);
        let frac = if hi > lo { ((u - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 0.0 };
        let offset = ((self.bin as f64 + frac) * 60_000.0) as i64;
        ceil_to_second(self.start.saturating_add(offset)).max(self.first_ms)
    }

    /// Generates trip number `self.next + 1`.
    fn make_trip(&mut self) -> Trip {
        let base = self.base_dropoff();
        // Half of the trips arrive a little late, by up to the disorder bound.
        let mut delay_s = 0;
        if self.disorder_s > 0 && self.rng.f64() < 0.5 {
            delay_s = 1 + self.rng.below(self.disorder_s as u64) as i64;
        }
        let dropoff_time = (base - delay_s * 1000).max(self.first_ms);
        let mut route = self.route();
        if in_box(route.dropoff, JFK_BOX) || in_box(route.dropoff, LGA_BOX) {
            // A hop that happens to end at an airport is an airport run.
            route.kind = RouteKind::Airport;
        }
        let duration_s = self.duration_s(&route, dropoff_time);
        Trip {
            trip_id: self.next + 1,
            pickup_time: dropoff_time - duration_s * 1000,
            dropoff_time,
            pickup: route.pickup.to_geo(),
            dropoff: route.dropoff.to_geo(),
        }
    }

    /// Draws a pickup and a dropoff.
    fn route(&mut self) -> Route {
        let rng = &mut self.rng;
        let r = rng.f64();
        // ~0.5 %: zero coordinates, as real TLC files have (outside the region).
        if r < 0.005 {
            let pickup = if rng.f64() < 0.7 { Point::ZERO } else { sample_spot(rng, PICKUP_SPOTS) };
            let km = rng.lognormal(2.0, 0.7);
            return Route { pickup, dropoff: Point::ZERO, kind: RouteKind::Local { km } };
        }
        // ~0.5 %: a ride out to the suburbs, beyond the NYC box.
        if r < 0.010 {
            let pickup = sample_spot(rng, PICKUP_SPOTS);
            let dropoff = sample_spot(rng, SUBURBS);
            let km = pickup.km_to(dropoff);
            return Route { pickup, dropoff, kind: RouteKind::Long { km } };
        }
        // ~3.5 % (+ a few airport-to-airport rides): to JFK or LGA, mostly from Midtown feeders.
        if r < 0.045 {
            let airport = if rng.f64() < 0.55 { &JFK } else { &LGA };
            let pickup = if rng.f64() < 0.7 { sample_spot(rng, AIRPORT_FEEDERS) } else { sample_spot(rng, CITY_SPOTS) };
            let dropoff = airport.sample_inside(rng);
            return Route { pickup, dropoff, kind: RouteKind::Airport };
        }
        let spot = pick(rng, PICKUP_SPOTS);
        let pickup = spot.sample(rng);
        if spot.airport {
            // From the airport into town, now and then to the other airport.
            if rng.f64() < 0.08 {
                let other = if spot.center.lat < 40.7 { &LGA } else { &JFK };
                let dropoff = other.sample_inside(rng);
                return Route { pickup, dropoff, kind: RouteKind::Airport };
            }
            let dropoff = sample_spot(rng, CITY_SPOTS);
            let km = pickup.km_to(dropoff);
            return Route { pickup, dropoff, kind: RouteKind::Long { km } };
        }
        if rng.f64() < 0.25 {
            // Across town, to another hot spot.
            let dropoff = sample_spot(rng, CITY_SPOTS);
            let km = pickup.km_to(dropoff);
            return Route { pickup, dropoff, kind: RouteKind::Local { km } };
        }
        // A short hop: median 2 km, along the avenues in Manhattan.
        let km = rng.lognormal(2.0, 0.7).min(25.0);
        let (mut east, mut north) = rng.direction();
        if spot.manhattan && rng.f64() < 0.7 {
            let sign = if north >= 0.0 { 1.0 } else { -1.0 };
            let wobble = rng.normal() * 0.15;
            east = sign * (AVENUE.0 + wobble * AVENUE.1);
            north = sign * (AVENUE.1 - wobble * AVENUE.0);
        }
        let dropoff = pickup.offset_km(east * km, north * km);
        Route { pickup, dropoff, kind: RouteKind::Local { km } }
    }

    /// Trip duration in whole seconds for `route`, ending at `dropoff`.
    fn duration_s(&mut self, route: &Route, dropoff: Millis) -> i64 {
        let congestion = congestion(hour_of_day(dropoff));
        let noise = exp(0.18 * self.rng.normal());
        let minutes = match route.kind {
            RouteKind::Local { km } => {
                let road = km * 1.3;
                1.0 + drive_minutes(road) * congestion * noise
            }
            RouteKind::Long { km } => {
                let road = km * 1.25;
                (2.0 + drive_minutes(road) * congestion * noise).min(240.0)
            }
            RouteKind::Airport => {
                let road = route.pickup.km_to(route.dropoff) * 1.25;
                (3.0 + drive_minutes(road) * congestion * noise).clamp(25.0, 70.0)
            }
        };
        ((minutes * 60.0).round() as i64).max(60)
    }
}

impl Iterator for TripGenerator {
    type Item = GeneratedRecord;

    fn next(&mut self) -> Option<GeneratedRecord> {
        if let Some(at) = self.pending_watermark.take() {
            return Some(GeneratedRecord::Watermark(at));
        }
        if self.pending_invalid > 0 {
            self.pending_invalid -= 1;
            let raw = INVALID_LINES[self.rng.below(INVALID_LINES.len() as u64) as usize];
            return Some(GeneratedRecord::Invalid(raw));
        }
        if self.next >= self.trips {
            return None;
        }
        let trip = self.make_trip();
        self.next += 1;
        self.max_dropoff = self.max_dropoff.max(trip.dropoff_time);
        if self.watermark_every > 0 && self.next.is_multiple_of(self.watermark_every) {
            self.pending_watermark = Some(self.max_dropoff.saturating_sub(self.disorder_ms));
        }
        self.invalid_acc += self.invalid_per_trip;
        while self.invalid_acc >= 1.0 {
            self.invalid_acc -= 1.0;
            self.pending_invalid += 1;
        }
        Some(GeneratedRecord::Trip(trip))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.trips - self.next)
            .saturating_add(self.pending_invalid)
            .saturating_add(u64::from(self.pending_watermark.is_some()));
        (usize::try_from(left).unwrap_or(usize::MAX), None)
    }
}

/// How a route's duration is computed.
#[derive(Clone, Copy, Debug)]
enum RouteKind {
    /// City driving over this straight-line distance (km).
    Local { km: f64 },
    /// A long ride over this straight-line distance (km).
    Long { km: f64 },
    /// To an airport: 25–70 minutes.
    Airport,
}

struct Route {
    pickup: Point,
    dropoff: Point,
    kind: RouteKind,
}

/// Rounds up to a whole second.
fn ceil_to_second(at: Millis) -> Millis {
    let rem = at.rem_euclid(1000);
    if rem == 0 { at } else { at.saturating_add(1000 - rem) }
}

#[cfg(test)]
mod tests {
    use super::super::places::{NYC_LAT, NYC_LON};
    use super::super::test_support::{config, trips_of};
    use super::super::{DAY_MS, GeneratedRecord, GeneratorConfig};
    use super::*;
    use crate::event::GeoPoint;
    use std::collections::HashMap;

    fn in_nyc(p: GeoPoint) -> bool {
        (NYC_LAT.0..=NYC_LAT.1).contains(&p.lat) && (NYC_LON.0..=NYC_LON.1).contains(&p.lon)
    }

    fn airport_of(p: GeoPoint) -> Option<&'static str> {
        let p = Point::new(p.lat, p.lon);
        if in_box(p, JFK_BOX) {
            Some("JFK")
        } else if in_box(p, LGA_BOX) {
            Some("LGA")
        } else {
            None
        }
    }

    /// Standard base32 geohash (for the analysis-shaped checks).
    fn geohash(p: GeoPoint, precision: usize) -> String {
        const ALPHABET: &[u8] = b"0123456789bcdefghjkmnpqrstuvwxyz";
        let (mut lat, mut lon) = ((-90.0f64, 90.0f64), (-180.0f64, 180.0f64));
        let mut out = String::new();
        let (mut bits, mut value, mut even) = (0, 0usize, true);
        while out.len() < precision {
            let (range, x) = if even { (&mut lon, p.lon) } else { (&mut lat, p.lat) };
            let mid = (range.0 + range.1) / 2.0;
            value <<= 1;
            if x >= mid {
                value |= 1;
                range.0 = mid;
            } else {
                range.1 = mid;
            }
            even = !even;
            bits += 1;
            if bits == 5 {
                out.push(ALPHABET[value] as char);
                bits = 0;
                value = 0;
            }
        }
        out
    }

    #[test]
    fn disorder_is_bounded() {
        for seed in 0..6 {
            for bound in [0, 999, 1_500, 30_000, 45_000] {
                let c = GeneratorConfig { max_disorder_ms: bound, ..config(20_000, seed) };
                let mut max = Millis::MIN;
                let mut disordered = 0;
                for t in trips_of(&c) {
                    assert!(t.dropoff_time >= max.saturating_sub(bound), "seed {seed} bound {bound}");
                    if t.dropoff_time < max {
                        disordered += 1;
                    }
                    max = max.max(t.dropoff_time);
                }
                if bound >= 30_000 {
                    assert!(disordered > 1_000, "seed {seed} bound {bound}: {disordered}");
                } else if bound >= 1_000 {
                    assert!(disordered > 0, "seed {seed} bound {bound}");
                } else {
                    assert_eq!(disordered, 0);
                }
            }
        }
    }

    #[test]
    fn watermarks_are_correct() {
        let c = GeneratorConfig { watermark_every: Some(37), max_disorder_ms: 12_345, ..config(5_000, 9) };
        let records: Vec<_> = TripGenerator::new(&c).collect();
        let mut max = Millis::MIN;
        let mut seen = 0;
        let mut last_watermark = Millis::MIN;
        for (i, r) in records.iter().enumerate() {
            match *r {
                GeneratedRecord::Trip(t) => {
                    assert!(t.dropoff_time >= last_watermark);
                    max = max.max(t.dropoff_time);
                    seen += 1;
                }
                GeneratedRecord::Watermark(w) => {
                    assert_eq!(seen % 37, 0);
                    assert_eq!(w, max - 12_345);
                    assert!(w >= last_watermark);
                    assert!(matches!(records[i - 1], GeneratedRecord::Trip(_)));
                    last_watermark = w;
                }
                GeneratedRecord::Invalid(_) => unreachable!(),
            }
        }
        assert_eq!(seen, 5_000);
    }

    #[test]
    fn durations_and_times_are_plausible() {
        let c = config(50_000, 5);
        let end = c.start + DAY_MS + 1_000;
        for t in trips_of(&c) {
            assert!(t.duration_ms() >= 60_000, "{t:?}");
            assert_eq!(t.dropoff_time % 1000, 0);
            assert_eq!(t.pickup_time % 1000, 0);
            assert!((c.start..=end).contains(&t.dropoff_time), "{t:?}");
            assert!(t.pickup_time >= c.start - 4 * 3_600_000, "{t:?}");
            if airport_of(t.dropoff).is_some() && in_nyc(t.pickup) {
                let min = t.duration_ms() / 60_000;
                assert!((25..=70).contains(&min), "{t:?}");
            }
        }
        // A few trips still spread over the day; an odd start is honoured.
        let few = trips_of(&GeneratorConfig { start: c.start + 1_234, ..config(10, 1) });
        assert!(few[0].dropoff_time >= c.start + 1_234);
        assert!(few[9].dropoff_time - few[0].dropoff_time > 12 * 3_600_000);
    }

    #[test]
    fn demand_follows_the_day() {
        let c = config(100_000, 2);
        let mut per_hour = [0u32; 24];
        for t in trips_of(&c) {
            per_hour[hour_of_day(t.dropoff_time) as usize] += 1;
        }
        assert!(per_hour[4] * 3 < per_hour[8], "{per_hour:?}");
        assert!(per_hour[5] * 4 < per_hour[19], "{per_hour:?}");
        assert!(per_hour[19] > per_hour[12], "{per_hour:?}");
        let minutes = |h: usize| {
            let ts: Vec<_> = trips_of(&c)
                .into_iter()
                .filter(|t| hour_of_day(t.dropoff_time) as usize == h && airport_of(t.dropoff).is_none())
                .collect();
            ts.iter().map(|t| t.duration_ms() as f64).sum::<f64>() / ts.len() as f64 / 60_000.0
        };
        assert!(minutes(18) > minutes(4) * 1.4, "rush hour slower");
    }

    #[test]
    fn places_are_realistic() {
        let c = GeneratorConfig::default();
        let trips = trips_of(&c);
        let n = trips.len() as f64;
        let inside = trips.iter().filter(|t| in_nyc(t.pickup) && in_nyc(t.dropoff)).count() as f64;
        assert!(inside / n >= 0.97 && inside / n <= 0.995, "inside {}", inside / n);
        let zero = trips.iter().filter(|t| t.pickup.lat == 0.0 || t.dropoff.lat == 0.0).count();
        assert!(zero > 0);

        let airport = trips.iter().filter(|t| airport_of(t.dropoff).is_some()).count() as f64;
        assert!((0.03..=0.06).contains(&(airport / n)), "airport share {}", airport / n);

        // Hot spots: the busiest 0.01° cell has far more pickups than the average cell.
        let mut cells: HashMap<(i64, i64), u32> = HashMap::new();
        for t in &trips {
            if in_nyc(t.pickup) {
                *cells
                    .entry(((t.pickup.lat * 100.0).floor() as i64, (t.pickup.lon * 100.0).floor() as i64))
                    .or_default() += 1;
            }
        }
        let max = *cells.values().max().unwrap() as f64;
        let mean = cells.values().map(|&v| f64::from(v)).sum::<f64>() / cells.len() as f64;
        assert!(max > 20.0 * mean, "max {max} mean {mean}");

        // The analyses have plenty to show: 10-minute windows, geohash-6 keys.
        let window = |t: &Trip| t.dropoff_time.div_euclid(600_000);
        let mut hot: HashMap<(i64, String), u32> = HashMap::new();
        let mut air: HashMap<(i64, String, &str), u32> = HashMap::new();
        for t in trips.iter().filter(|t| in_nyc(t.pickup) && in_nyc(t.dropoff)) {
            *hot.entry((window(t), geohash(t.pickup, 6))).or_default() += 1;
            if let Some(a) = airport_of(t.dropoff) {
                *air.entry((window(t), geohash(t.pickup, 6), a)).or_default() += 1;
            }
        }
        let hot_keys = hot.values().filter(|&&c| c >= 2).count();
        let air_keys = air.values().filter(|&&c| c >= 2).count();
        let air_windows: std::collections::HashSet<i64> =
            air.iter().filter(|(_, c)| **c >= 2).map(|(k, _)| k.0).collect();
        assert!(hot_keys > 15_000, "{hot_keys} hot-spot keys");
        assert!(air_keys > 1_000, "{air_keys} airport keys");
        assert!(air_windows.len() >= 130, "{} windows with airport results", air_windows.len());
    }
}

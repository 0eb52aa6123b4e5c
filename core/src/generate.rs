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

use std::io::{self, BufWriter, Write};

use crate::event::{GeoPoint, Millis, Trip};

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

// ------------------------------------------------------------------------------------------------
// The generator.

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

// ------------------------------------------------------------------------------------------------
// Demand, congestion and driving times.

/// Share of the day's trips per hour of day on a 2016 weekday (TLC yellow data, rounded): trough
/// at 4–5 am, morning rush 8–9, shift-change dip at 16, evening peak 18–19.
const HOURLY_DEMAND: [f64; 24] = [
    3.8, 2.8, 2.1, 1.5, 1.1, 1.0, 2.0, 3.6, 4.4, 4.5, 4.3, 4.4, 4.6, 4.6, 4.8, 4.7, 4.2, 5.0, 6.0, 6.2, 5.6, 5.5, 5.4,
    4.7,
];

/// Travel-time factor per hour of day (1 = a normal daytime hour).
const HOURLY_CONGESTION: [f64; 24] = [
    0.75, 0.7, 0.68, 0.68, 0.68, 0.72, 0.85, 1.1, 1.3, 1.3, 1.2, 1.15, 1.15, 1.15, 1.2, 1.3, 1.35, 1.4, 1.4, 1.25,
    1.05, 0.95, 0.9, 0.82,
];

/// Reads an hourly table as a smooth function: linear between hour midpoints, wrapping at midnight.
fn interpolate_hourly(table: &[f64; 24], hour: f64) -> f64 {
    let x = hour - 0.5;
    let lo = x.floor();
    let frac = x - lo;
    let i = (lo as i64).rem_euclid(24) as usize;
    let j = (i + 1) % 24;
    table[i] * (1.0 - frac) + table[j] * frac
}

/// Relative demand at an hour of day.
fn demand(hour: f64) -> f64 {
    interpolate_hourly(&HOURLY_DEMAND, hour)
}

/// Travel-time factor at an hour of day.
fn congestion(hour: f64) -> f64 {
    interpolate_hourly(&HOURLY_CONGESTION, hour)
}

/// Hour of day (0 ≤ h < 24, fractional) of a timestamp, read as written (TLC times are local).
fn hour_of_day(at: Millis) -> f64 {
    at.rem_euclid(DAY_MS) as f64 / 3_600_000.0
}

/// Free-flow-ish driving minutes for a road distance: city streets (~3 min/km) for the first 5 km,
/// then avenues and highways (~1.5 min/km).
fn drive_minutes(road_km: f64) -> f64 {
    let city = road_km.min(5.0);
    let fast = (road_km - 5.0).max(0.0);
    city * 3.0 + fast * 1.5
}

// ------------------------------------------------------------------------------------------------
// Places.

/// A point in micro-degrees: coordinates are rounded to 6 decimals once, where they are made.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    lat: f64,
    lon: f64,
}

/// km per degree of latitude.
const KM_PER_DEG_LAT: f64 = 111.2;
/// km per degree of longitude at 40.75° N.
const KM_PER_DEG_LON: f64 = 84.3;
/// Unit vector (east, north) of Manhattan's avenues: 29° east of true north.
const AVENUE: (f64, f64) = (0.4848, 0.8746);

impl Point {
    const ZERO: Point = Point { lat: 0.0, lon: 0.0 };

    const fn new(lat: f64, lon: f64) -> Self {
        Point { lat, lon }
    }

    /// Equirectangular distance in km (good enough at city scale; huge for (0,0)).
    fn km_to(self, other: Point) -> f64 {
        let dy = (other.lat - self.lat) * KM_PER_DEG_LAT;
        let dx = (other.lon - self.lon) * KM_PER_DEG_LON;
        (dx * dx + dy * dy).sqrt()
    }

    fn offset_km(self, east: f64, north: f64) -> Point {
        Point::new(self.lat + north / KM_PER_DEG_LAT, self.lon + east / KM_PER_DEG_LON)
    }

    /// The point rounded to 6 decimals, as written.
    fn to_geo(self) -> GeoPoint {
        GeoPoint { lat: round6(self.lat), lon: round6(self.lon) }
    }
}

/// Rounds degrees to 6 decimals, giving exactly the `f64` a parser reads from the written text.
fn round6(deg: f64) -> f64 {
    (deg * 1e6).round() / 1e6
}

/// A place trips start or end around.
#[derive(Clone, Copy, Debug)]
struct Spot {
    center: Point,
    /// Standard deviation of the spread, km (along the avenues in Manhattan).
    sigma_km: f64,
    /// Relative weight in its list.
    weight: f64,
    /// Spread stretched along Manhattan's avenues.
    manhattan: bool,
    /// An airport pickup area.
    airport: bool,
    /// Uniform over the NYC box instead of a Gaussian (the background).
    uniform: bool,
}

const fn spot(lat: f64, lon: f64, sigma_km: f64, weight: f64, manhattan: bool) -> Spot {
    Spot { center: Point::new(lat, lon), sigma_km, weight, manhattan, airport: false, uniform: false }
}

const fn airport(lat: f64, lon: f64, sigma_km: f64, weight: f64) -> Spot {
    Spot { airport: true, ..spot(lat, lon, sigma_km, weight, false) }
}

/// The NYC region box as a uniform background.
const BACKGROUND: Spot = Spot {
    center: Point::new(40.6975, -73.97975),
    sigma_km: 0.0,
    weight: 0.04,
    manhattan: false,
    airport: false,
    uniform: true,
};

/// Where trips start, weighted like 2016 yellow-cab pickups.
const PICKUP_SPOTS: &[Spot] = &[
    spot(40.7580, -73.9855, 0.5, 0.09, true),   // Times Square
    spot(40.7506, -73.9935, 0.4, 0.06, true),   // Penn Station
    spot(40.7527, -73.9772, 0.4, 0.07, true),   // Grand Central
    spot(40.7614, -73.9776, 0.6, 0.07, true),   // Midtown East / Fifth Avenue
    spot(40.7411, -73.9897, 0.6, 0.07, true),   // Chelsea / Flatiron
    spot(40.7736, -73.9566, 1.0, 0.09, true),   // Upper East Side
    spot(40.7870, -73.9754, 1.0, 0.07, true),   // Upper West Side
    spot(40.7075, -74.0113, 0.5, 0.05, true),   // Financial District
    spot(40.7233, -74.0030, 0.6, 0.04, true),   // SoHo / Tribeca
    spot(40.7336, -74.0027, 0.5, 0.06, true),   // Greenwich Village
    spot(40.7265, -73.9815, 0.6, 0.05, true),   // East Village / Lower East Side
    spot(40.7440, -73.9780, 0.6, 0.05, true),   // Murray Hill / Gramercy
    spot(40.8116, -73.9465, 1.2, 0.02, true),   // Harlem
    spot(40.7081, -73.9571, 0.8, 0.02, false),  // Williamsburg
    spot(40.6928, -73.9903, 0.8, 0.015, false), // Downtown Brooklyn
    spot(40.7447, -73.9485, 1.0, 0.01, false),  // Long Island City
    airport(40.6446, -73.7821, 0.35, 0.022),    // JFK terminals
    airport(40.7740, -73.8720, 0.25, 0.018),    // LaGuardia terminals
    BACKGROUND,
];

/// Where trips across town go: the city hot spots, without the airports.
const CITY_SPOTS: &[Spot] = &[
    spot(40.7580, -73.9855, 0.6, 0.08, true),
    spot(40.7506, -73.9935, 0.5, 0.05, true),
    spot(40.7527, -73.9772, 0.5, 0.06, true),
    spot(40.7614, -73.9776, 0.7, 0.07, true),
    spot(40.7411, -73.9897, 0.7, 0.07, true),
    spot(40.7736, -73.9566, 1.1, 0.10, true),
    spot(40.7870, -73.9754, 1.1, 0.08, true),
    spot(40.7075, -74.0113, 0.6, 0.05, true),
    spot(40.7233, -74.0030, 0.7, 0.04, true),
    spot(40.7336, -74.0027, 0.6, 0.06, true),
    spot(40.7265, -73.9815, 0.7, 0.05, true),
    spot(40.7440, -73.9780, 0.7, 0.05, true),
    spot(40.8116, -73.9465, 1.3, 0.03, true),
    spot(40.7081, -73.9571, 1.0, 0.03, false),
    spot(40.6928, -73.9903, 1.0, 0.025, false),
    spot(40.6782, -73.9442, 1.5, 0.02, false), // Crown Heights / Bed-Stuy
    spot(40.7447, -73.9485, 1.0, 0.015, false),
    spot(40.7282, -73.7949, 2.0, 0.01, false), // Queens
];

/// Where most airport runs start: a few busy Midtown curbs (tight spread: few geohash cells).
const AIRPORT_FEEDERS: &[Spot] = &[
    spot(40.7527, -73.9772, 0.12, 0.25, false), // Grand Central
    spot(40.7506, -73.9935, 0.12, 0.2, false),  // Penn Station
    spot(40.7570, -73.9900, 0.12, 0.15, false), // Port Authority / Times Square
    spot(40.7565, -73.9745, 0.12, 0.15, false), // Park Avenue hotels
    spot(40.7681, -73.9819, 0.12, 0.15, false), // Columbus Circle
    spot(40.7359, -73.9911, 0.12, 0.1, false),  // Union Square
];

/// Destinations beyond the NYC box.
const SUBURBS: &[Spot] = &[
    spot(41.0340, -73.7629, 1.5, 0.25, false), // White Plains
    spot(40.9312, -73.8988, 1.0, 0.2, false),  // Yonkers
    spot(40.7268, -73.6343, 1.5, 0.2, false),  // Garden City
    spot(41.0262, -73.6282, 1.5, 0.15, false), // Greenwich, CT
    spot(40.7968, -74.4815, 1.5, 0.2, false),  // Morristown, NJ
];

/// An airport dropoff area: a Gaussian around the terminals, kept inside the airport's analysis box.
struct AirportBox {
    center: Point,
    sigma_km: f64,
    /// (lat min, lat max, lon min, lon max), 0.0005° inside the analysis box.
    inner: (f64, f64, f64, f64),
}

const JFK: AirportBox =
    AirportBox { center: Point::new(40.6440, -73.7815), sigma_km: 0.5, inner: (40.6325, 40.6535, -73.7995, -73.7615) };

const LGA: AirportBox =
    AirportBox { center: Point::new(40.7725, -73.8710), sigma_km: 0.3, inner: (40.7665, 40.7775, -73.8805, -73.8595) };

impl AirportBox {
    fn sample_inside(&self, rng: &mut Rng) -> Point {
        let (lat0, lat1, lon0, lon1) = self.inner;
        for _ in 0..8 {
            let (a, b) = rng.normal_pair();
            let p = self.center.offset_km(a * self.sigma_km, b * self.sigma_km);
            if (lat0..=lat1).contains(&p.lat) && (lon0..=lon1).contains(&p.lon) {
                return p;
            }
        }
        self.center
    }
}

/// Picks a spot by weight.
fn pick<'a>(rng: &mut Rng, spots: &'a [Spot]) -> &'a Spot {
    let total: f64 = spots.iter().map(|s| s.weight).sum();
    let mut x = rng.f64() * total;
    for s in spots {
        if x < s.weight {
            return s;
        }
        x -= s.weight;
    }
    &spots[spots.len() - 1]
}

/// Picks a spot by weight and a point around it.
fn sample_spot(rng: &mut Rng, spots: &[Spot]) -> Point {
    pick(rng, spots).sample(rng)
}

impl Spot {
    fn sample(&self, rng: &mut Rng) -> Point {
        if self.uniform {
            return Point::new(
                NYC_LAT.0 + rng.f64() * (NYC_LAT.1 - NYC_LAT.0),
                NYC_LON.0 + rng.f64() * (NYC_LON.1 - NYC_LON.0),
            );
        }
        let (a, b) = rng.normal_pair();
        let (east, north) = if self.manhattan {
            // 1.6 σ along the avenues, 0.6 σ across.
            let along = a * self.sigma_km * 1.6;
            let across = b * self.sigma_km * 0.6;
            (along * AVENUE.0 + across * AVENUE.1, along * AVENUE.1 - across * AVENUE.0)
        } else {
            (a * self.sigma_km, b * self.sigma_km)
        };
        self.center.offset_km(east, north)
    }
}

/// The NYC region (the same box as `BoundingBox::NYC`).
const NYC_LAT: (f64, f64) = (40.4774, 40.9176);
const NYC_LON: (f64, f64) = (-74.2591, -73.7004);

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

// ------------------------------------------------------------------------------------------------
// Invalid lines: one or more per rejection reason (`InvalidReason`).

const INVALID_LINES: &[&str] = &[
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

// ------------------------------------------------------------------------------------------------
// The trip line: the seed's event format, with plausible 2016 fares.

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

/// (lat min, lat max, lon min, lon max) of the airport boxes, as `BoundingBox::JFK` and `::LGA`.
const JFK_BOX: (f64, f64, f64, f64) = (40.632, 40.654, -73.800, -73.761);
const LGA_BOX: (f64, f64, f64, f64) = (40.766, 40.778, -73.881, -73.859);

fn in_box(p: Point, (lat0, lat1, lon0, lon1): (f64, f64, f64, f64)) -> bool {
    (lat0..=lat1).contains(&p.lat) && (lon0..=lon1).contains(&p.lon)
}

/// Roughly Manhattan (for the JFK flat fare).
fn in_manhattan(p: Point) -> bool {
    (40.70..=40.88).contains(&p.lat) && (-74.02..=-73.91).contains(&p.lon)
}

// ------------------------------------------------------------------------------------------------
// Number and time formatting without allocation.

fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
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
fn push_cents(buf: &mut Vec<u8>, cents: i64) {
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
fn push_degrees(buf: &mut Vec<u8>, deg: f64) {
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
fn push_timestamp(buf: &mut Vec<u8>, at: Millis) {
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

/// Rounds up to a whole second.
fn ceil_to_second(at: Millis) -> Millis {
    let rem = at.rem_euclid(1000);
    if rem == 0 { at } else { at.saturating_add(1000 - rem) }
}

// ------------------------------------------------------------------------------------------------
// The PRNG: xoshiro256** seeded by SplitMix64, fully specified here.

#[derive(Clone, Debug)]
struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    fn new(seed: u64) -> Self {
        let mut state = seed;
        Rng { s: [splitmix64(&mut state), splitmix64(&mut state), splitmix64(&mut state), splitmix64(&mut state)] }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 bits.
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n` > 0; Lemire's multiply-shift, bias below 2^-64 · n).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A standard normal, approximately: the Irwin–Hall sum of six uniforms, rescaled (bounded at
    /// ±4.24 σ). Only `+` and `*`, so it is bit-identical on every platform, unlike `ln`/`cos`.
    fn normal(&mut self) -> f64 {
        let mut sum = 0.0;
        for _ in 0..6 {
            sum += self.f64();
        }
        (sum - 3.0) * std::f64::consts::SQRT_2
    }

    /// Two independent standard normals.
    fn normal_pair(&mut self) -> (f64, f64) {
        (self.normal(), self.normal())
    }

    /// Log-normal with this median and log-space standard deviation.
    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * exp(sigma * self.normal())
    }

    /// A uniformly random unit vector (east, north), by rejection from the unit disc (`sqrt` is
    /// correctly rounded everywhere; `sin`/`cos` are not).
    fn direction(&mut self) -> (f64, f64) {
        loop {
            let x = 2.0 * self.f64() - 1.0;
            let y = 2.0 * self.f64() - 1.0;
            let r2 = x * x + y * y;
            if r2 > 1e-6 && r2 <= 1.0 {
                let r = r2.sqrt();
                return (x / r, y / r);
            }
        }
    }
}

/// `e^x` from basic IEEE operations only, so the output does not depend on the platform's libm
/// (relative error about 1e-15; `x` is clamped to ±700).
fn exp(x: f64) -> f64 {
    let x = x.clamp(-700.0, 700.0);
    let k = (x * std::f64::consts::LOG2_E).round();
    let r = x - k * std::f64::consts::LN_2; // |r| ≤ ln 2 / 2
    let mut p = 1.0;
    for i in (1..=14).rev() {
        p = 1.0 + r * p / f64::from(i);
    }
    // 2^k, with k in [-1010, 1010]: a normal f64 built from its exponent bits.
    let two_k = f64::from_bits(((k as i64 + 1023) as u64) << 52);
    p * two_k
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(trips: u64, seed: u64) -> GeneratorConfig {
        GeneratorConfig { trips, seed, ..GeneratorConfig::default() }
    }

    fn trips_of(config: &GeneratorConfig) -> Vec<Trip> {
        TripGenerator::new(config)
            .filter_map(|r| match r {
                GeneratedRecord::Trip(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    fn bytes_of(config: &GeneratorConfig) -> Vec<u8> {
        let mut out = Vec::new();
        write_json_lines(config, &mut out).unwrap();
        out
    }

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

    fn timestamp(at: Millis) -> String {
        let mut buf = Vec::new();
        push_timestamp(&mut buf, at);
        String::from_utf8(buf).unwrap()
    }

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
    fn formats_timestamps() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(JAN_1_2016_MS + 339_000), "2016-01-01T00:05:39Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(timestamp(1_456_790_399_500), "2016-02-29T23:59:59.500Z");
        assert_eq!(timestamp(4_102_444_800_000), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn exp_is_accurate() {
        for i in -400..=400 {
            let x = f64::from(i) / 40.0;
            let (ours, libm) = (exp(x), x.exp());
            assert!(((ours - libm) / libm).abs() < 1e-14, "{x}: {ours} vs {libm}");
        }
        assert_eq!(exp(0.0), 1.0);
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

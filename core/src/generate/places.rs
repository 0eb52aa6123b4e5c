//! Where trips start and end: points in degrees, the weighted hot spots of the city, the airports'
//! dropoff areas and the boxes the analyses draw around the region and the airports.

use super::rng::Rng;
use crate::event::GeoPoint;

/// A point in micro-degrees: coordinates are rounded to 6 decimals once, where they are made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Point {
    pub(super) lat: f64,
    pub(super) lon: f64,
}

/// km per degree of latitude.
const KM_PER_DEG_LAT: f64 = 111.2;
/// km per degree of longitude at 40.75° N.
const KM_PER_DEG_LON: f64 = 84.3;
/// Unit vector (east, north) of Manhattan's avenues: 29° east of true north.
pub(super) const AVENUE: (f64, f64) = (0.4848, 0.8746);

impl Point {
    pub(super) const ZERO: Point = Point { lat: 0.0, lon: 0.0 };

    pub(super) const fn new(lat: f64, lon: f64) -> Self {
        Point { lat, lon }
    }

    /// Equirectangular distance in km (good enough at city scale; huge for (0,0)).
    pub(super) fn km_to(self, other: Point) -> f64 {
        let dy = (other.lat - self.lat) * KM_PER_DEG_LAT;
        let dx = (other.lon - self.lon) * KM_PER_DEG_LON;
        (dx * dx + dy * dy).sqrt()
    }

    pub(super) fn offset_km(self, east: f64, north: f64) -> Point {
        Point::new(self.lat + north / KM_PER_DEG_LAT, self.lon + east / KM_PER_DEG_LON)
    }

    /// The point rounded to 6 decimals, as written.
    pub(super) fn to_geo(self) -> GeoPoint {
        GeoPoint { lat: round6(self.lat), lon: round6(self.lon) }
    }
}

/// Rounds degrees to 6 decimals, giving exactly the `f64` a parser reads from the written text.
fn round6(deg: f64) -> f64 {
    (deg * 1e6).round() / 1e6
}

/// A place trips start or end around.
#[derive(Clone, Copy, Debug)]
pub(super) struct Spot {
    pub(super) center: Point,
    /// Standard deviation of the spread, km (along the avenues in Manhattan).
    sigma_km: f64,
    /// Relative weight in its list.
    weight: f64,
    /// Spread stretched along Manhattan's avenues.
    pub(super) manhattan: bool,
    /// An airport pickup area.
    pub(super) airport: bool,
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
pub(super) const PICKUP_SPOTS: &[Spot] = &[
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
pub(super) const CITY_SPOTS: &[Spot] = &[
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
pub(super) const AIRPORT_FEEDERS: &[Spot] = &[
    spot(40.7527, -73.9772, 0.12, 0.25, false), // Grand Central
    spot(40.7506, -73.9935, 0.12, 0.2, false),  // Penn Station
    spot(40.7570, -73.9900, 0.12, 0.15, false), // Port Authority / Times Square
    spot(40.7565, -73.9745, 0.12, 0.15, false), // Park Avenue hotels
    spot(40.7681, -73.9819, 0.12, 0.15, false), // Columbus Circle
    spot(40.7359, -73.9911, 0.12, 0.1, false),  // Union Square
];

/// Destinations beyond the NYC box.
pub(super) const SUBURBS: &[Spot] = &[
    spot(41.0340, -73.7629, 1.5, 0.25, false), // White Plains
    spot(40.9312, -73.8988, 1.0, 0.2, false),  // Yonkers
    spot(40.7268, -73.6343, 1.5, 0.2, false),  // Garden City
    spot(41.0262, -73.6282, 1.5, 0.15, false), // Greenwich, CT
    spot(40.7968, -74.4815, 1.5, 0.2, false),  // Morristown, NJ
];

/// An airport dropoff area: a Gaussian around the terminals, kept inside the airport's analysis box.
pub(super) struct AirportBox {
    center: Point,
    sigma_km: f64,
    /// (lat min, lat max, lon min, lon max), 0.0005° inside the analysis box.
    inner: (f64, f64, f64, f64),
}

pub(super) const JFK: AirportBox =
    AirportBox { center: Point::new(40.6440, -73.7815), sigma_km: 0.5, inner: (40.6325, 40.6535, -73.7995, -73.7615) };

pub(super) const LGA: AirportBox =
    AirportBox { center: Point::new(40.7725, -73.8710), sigma_km: 0.3, inner: (40.7665, 40.7775, -73.8805, -73.8595) };

impl AirportBox {
    pub(super) fn sample_inside(&self, rng: &mut Rng) -> Point {
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
pub(super) fn pick<'a>(rng: &mut Rng, spots: &'a [Spot]) -> &'a Spot {
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
pub(super) fn sample_spot(rng: &mut Rng, spots: &[Spot]) -> Point {
    pick(rng, spots).sample(rng)
}

impl Spot {
    pub(super) fn sample(&self, rng: &mut Rng) -> Point {
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
pub(super) const NYC_LAT: (f64, f64) = (40.4774, 40.9176);
pub(super) const NYC_LON: (f64, f64) = (-74.2591, -73.7004);

/// (lat min, lat max, lon min, lon max) of the airport boxes, as `BoundingBox::JFK` and `::LGA`.
pub(super) const JFK_BOX: (f64, f64, f64, f64) = (40.632, 40.654, -73.800, -73.761);
pub(super) const LGA_BOX: (f64, f64, f64, f64) = (40.766, 40.778, -73.881, -73.859);

pub(super) fn in_box(p: Point, (lat0, lat1, lon0, lon1): (f64, f64, f64, f64)) -> bool {
    (lat0..=lat1).contains(&p.lat) && (lon0..=lon1).contains(&p.lon)
}

/// Roughly Manhattan (for the JFK flat fare).
pub(super) fn in_manhattan(p: Point) -> bool {
    (40.70..=40.88).contains(&p.lat) && (-74.02..=-73.91).contains(&p.lon)
}

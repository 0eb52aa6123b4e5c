//! Geography of the analyses: geohash cells, bounding boxes, the NYC region and the
//! airport geofences.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::GeoPoint;

/// An axis-aligned latitude/longitude box; all bounds are inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoundingBox {
    /// Southern edge (degrees).
    pub min_lat: f64,
    /// Northern edge (degrees).
    pub max_lat: f64,
    /// Western edge (degrees).
    pub min_lon: f64,
    /// Eastern edge (degrees).
    pub max_lon: f64,
}

impl BoundingBox {
    /// The NYC region filter.
    pub const NYC: BoundingBox =
        BoundingBox { min_lat: 40.4774, max_lat: 40.9176, min_lon: -74.2591, max_lon: -73.7004 };

    /// JFK airport.
    pub const JFK: BoundingBox = BoundingBox { min_lat: 40.632, max_lat: 40.654, min_lon: -73.800, max_lon: -73.761 };

    /// LaGuardia airport.
    pub const LGA: BoundingBox = BoundingBox { min_lat: 40.766, max_lat: 40.778, min_lon: -73.881, max_lon: -73.859 };

    /// Whether `p` lies inside the box (edges included).
    #[inline]
    pub fn contains(&self, p: GeoPoint) -> bool {
        p.lat >= self.min_lat && p.lat <= self.max_lat && p.lon >= self.min_lon && p.lon <= self.max_lon
    }

    /// Whether the bounds describe a non-empty box inside the valid coordinate ranges.
    pub fn is_valid(&self) -> bool {
        self.min_lat <= self.max_lat
            && self.min_lon <= self.max_lon
            && self.min_lat >= -90.0
            && self.max_lat <= 90.0
            && self.min_lon >= -180.0
            && self.max_lon <= 180.0
    }
}

/// A named bounding box, e.g. an airport.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Geofence {
    /// Name used in results (`"JFK"`).
    pub name: String,
    /// The area it covers.
    pub bounds: BoundingBox,
}

impl Geofence {
    /// The default airports, in match order: JFK, then LGA.
    pub fn default_airports() -> Vec<Geofence> {
        vec![
            Geofence { name: "JFK".to_owned(), bounds: BoundingBox::JFK },
            Geofence { name: "LGA".to_owned(), bounds: BoundingBox::LGA },
        ]
    }
}

/// The index of the first geofence containing `p`, in list order.
#[inline]
pub fn first_match(fences: &[Geofence], p: GeoPoint) -> Option<usize> {
    fences.iter().position(|f| f.bounds.contains(p))
}

/// Longest supported geohash.
pub const MAX_GEOHASH_PRECISION: u8 = 12;

const BASE32: &[u8; 32] = b"0123456789bcdefghjkmnpqrstuvwxyz";

/// A geohash cell, stored packed (5 bits per character) so it hashes and compares without
/// allocating. For one precision, numeric order equals the order of the base32 strings because
/// the alphabet is in ASCII order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Geohash {
    bits: u64,
    precision: u8,
}

/// Why a string is not a geohash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeohashError {
    /// Empty or longer than [`MAX_GEOHASH_PRECISION`].
    #[error("geohash must have 1 to {MAX_GEOHASH_PRECISION} characters, got {0}")]
    BadLength(usize),
    /// A character outside the geohash base32 alphabet.
    #[error("invalid geohash character {0:?}")]
    BadCharacter(char),
}

impl Geohash {
    /// Encodes a point at `precision` characters (clamped to 1..=12) with the standard bisection:
    /// even bits split longitude, odd bits latitude, a point on a split line goes to the upper half.
    pub fn encode(p: GeoPoint, precision: u8) -> Geohash {
        let precision = precision.clamp(1, MAX_GEOHASH_PRECISION);
        let (mut lat_lo, mut lat_hi) = (-90.0_f64, 90.0_f64);
        let (mut lon_lo, mut lon_hi) = (-180.0_f64, 180.0_f64);
        let mut bits = 0_u64;
        for i in 0..u32::from(precision) * 5 {
            bits <<= 1;
            if i % 2 == 0 {
                let mid = (lon_lo + lon_hi) / 2.0;
                if p.lon >= mid {
                    bits |= 1;
                    lon_lo = mid;
                } else {
                    lon_hi = mid;
                }
            } else {
                let mid = (lat_lo + lat_hi) / 2.0;
                if p.lat >= mid {
                    bits |= 1;
                    lat_lo = mid;
                } else {
                    lat_hi = mid;
                }
            }
        }
        Geohash { bits, precision }
    }

    /// Number of characters.
    pub fn precision(self) -> u8 {
        self.precision
    }

    /// The base32 characters, without allocating.
    pub fn chars(self) -> impl Iterator<Item = char> {
        let n = u32::from(self.precision);
        (0..n).map(move |i| {
            let shift = (n - 1 - i) * 5;
            char::from(BASE32[((self.bits >> shift) & 0x1f) as usize])
        })
    }

    /// The cell's bounds.
    pub fn bounds(self) -> BoundingBox {
        let (mut lat_lo, mut lat_hi) = (-90.0_f64, 90.0_f64);
        let (mut lon_lo, mut lon_hi) = (-180.0_f64, 180.0_f64);
        let total = u32::from(self.precision) * 5;
        for i in 0..total {
            let bit = (self.bits >> (total - 1 - i)) & 1 == 1;
            if i % 2 == 0 {
                let mid = (lon_lo + lon_hi) / 2.0;
                if bit { lon_lo = mid } else { lon_hi = mid }
            } else {
                let mid = (lat_lo + lat_hi) / 2.0;
                if bit { lat_lo = mid } else { lat_hi = mid }
            }
        }
        BoundingBox { min_lat: lat_lo, max_lat: lat_hi, min_lon: lon_lo, max_lon: lon_hi }
    }

    /// The cell's centre.
    pub fn center(self) -> GeoPoint {
        let b = self.bounds();
        GeoPoint { lat: (b.min_lat + b.max_lat) / 2.0, lon: (b.min_lon + b.max_lon) / 2.0 }
    }
}

impl fmt::Display for Geohash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        self.chars().try_for_each(|c| f.write_char(c))
    }
}

impl std::str::FromStr for Geohash {
    type Err = GeohashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let len = s.chars().count();
        if len == 0 || len > usize::from(MAX_GEOHASH_PRECISION) {
            return Err(GeohashError::BadLength(len));
        }
        let mut bits = 0_u64;
        for c in s.chars() {
            let lower = c.to_ascii_lowercase();
            let value = BASE32.iter().position(|&b| char::from(b) == lower).ok_or(GeohashError::BadCharacter(c))?;
            bits = (bits << 5) | value as u64;
        }
        // `len` is at most 12, checked above.
        Ok(Geohash { bits, precision: len as u8 })
    }
}

impl Serialize for Geohash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Geohash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lat: f64, lon: f64) -> GeoPoint {
        GeoPoint { lat, lon }
    }

    #[test]
    fn encodes_the_reference_vector() {
        assert_eq!(Geohash::encode(p(57.64911, 10.40744), 11).to_string(), "u4pruydqqvj");
    }

    #[test]
    fn encodes_nyc_points_computed_independently() {
        // Expected values computed with an independent Python implementation of the bisection.
        assert_eq!(Geohash::encode(p(40.758896, -73.985130), 6).to_string(), "dr5ru7");
        assert_eq!(Geohash::encode(p(40.6413, -73.7781), 6).to_string(), "dr5x1n");
        assert_eq!(Geohash::encode(p(40.7769, -73.8740), 7).to_string(), "dr5ryzn");
        assert_eq!(Geohash::encode(p(40.706, -74.0088), 5).to_string(), "dr5re");
    }

    #[test]
    fn every_precision_is_a_prefix_of_the_longer_one() {
        let full = Geohash::encode(p(40.7484, -73.9857), 12).to_string();
        for n in 1..=12 {
            assert_eq!(Geohash::encode(p(40.7484, -73.9857), n).to_string(), full[..usize::from(n)]);
        }
    }

    #[test]
    fn precision_is_clamped() {
        assert_eq!(Geohash::encode(p(1.0, 1.0), 0).precision(), 1);
        assert_eq!(Geohash::encode(p(1.0, 1.0), 20).precision(), 12);
    }

    #[test]
    fn parses_and_round_trips_through_serde() {
        let g: Geohash = "dr5RU7".parse().expect("valid geohash");
        assert_eq!(g.to_string(), "dr5ru7");
        let json = serde_json::to_string(&g).expect("serialize");
        assert_eq!(json, "\"dr5ru7\"");
        assert_eq!(serde_json::from_str::<Geohash>(&json).expect("deserialize"), g);
        assert_eq!("dr5ra".parse::<Geohash>(), Err(GeohashError::BadCharacter('a')));
        assert_eq!("".parse::<Geohash>(), Err(GeohashError::BadLength(0)));
    }

    #[test]
    fn cell_bounds_contain_the_point_and_centre_encodes_to_the_cell() {
        let point = p(40.7128, -74.0060);
        for n in 1..=12 {
            let cell = Geohash::encode(point, n);
            assert!(cell.bounds().contains(point), "precision {n}");
            assert_eq!(Geohash::encode(cell.center(), n), cell);
        }
        let b = Geohash::encode(point, 6).bounds();
        // Precision 6 cells are 0.0109863 degrees wide and 0.0054932 degrees high.
        assert!((b.max_lon - b.min_lon - 360.0 / 32768.0).abs() < 1e-12);
        assert!((b.max_lat - b.min_lat - 180.0 / 32768.0).abs() < 1e-12);
    }

    #[test]
    fn numeric_order_matches_string_order() {
        let a = Geohash::encode(p(40.70, -74.01), 6);
        let b = Geohash::encode(p(40.80, -73.95), 6);
        assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
    }

    #[test]
    fn boxes_include_their_edges() {
        let nyc = BoundingBox::NYC;
        assert!(nyc.contains(p(40.4774, -74.2591)));
        assert!(nyc.contains(p(40.9176, -73.7004)));
        assert!(!nyc.contains(p(40.9177, -73.9)));
        assert!(!nyc.contains(p(0.0, 0.0)));
        // Upper Manhattan (the reference architecture's geofence dropped its centre cell).
        assert!(nyc.contains(p(40.8500, -73.9350)));
    }

    #[test]
    fn airports_match_in_order() {
        let airports = Geofence::default_airports();
        assert_eq!(first_match(&airports, p(40.6413, -73.7781)), Some(0));
        assert_eq!(first_match(&airports, p(40.7769, -73.8740)), Some(1));
        assert_eq!(first_match(&airports, p(40.7500, -73.9900)), None);
    }
}

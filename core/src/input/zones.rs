//! Taxi zones as places: a user-supplied table of zone centroids (`LocationID,lat,lon`), and the
//! TLC layouts from July 2016 on, which name each trip's pickup and dropoff zone
//! (`PULocationID`, `DOLocationID`) instead of its coordinates. With the table, such a trip is
//! placed at the centroids of its two zones; a zone the table lacks makes the row invalid
//! ([`InvalidReason::UnknownZone`]).

use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

use super::csv::{NEEDED, ZONE_ID_COLUMNS, preview, split_fields};
use super::json::validate_trip;
use crate::event::{Event, GeoPoint, InvalidReason, ParsedRecord, Trip};
use crate::time::parse_timestamp;

/// The centroid of each taxi zone, by its `LocationID`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ZoneCentroids {
    by_id: FxHashMap<i64, GeoPoint>,
}

/// Why a centroid file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CentroidError {
    /// The file could not be read.
    #[error("failed to read the zone centroid file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `LocationID,lat,lon`.
    #[error(
        "zone centroid file {}, line {line}: {problem}; each line after the header is LocationID,lat,lon \
         (e.g. 132,40.6413,-73.7781); the line is \"{text}\"",
        path.display()
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: &'static str,
        /// The line, escaped (shortened when long).
        text: String,
    },
    /// The file has a header but no zone.
    #[error("zone centroid file {} holds no zone: expected a header line, then LocationID,lat,lon lines", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

impl ZoneCentroids {
    /// Reads a centroid file: a header line, then one `LocationID,lat,lon` line per zone (blank
    /// lines are ignored). A zone listed twice, a coordinate out of range or a line that is not
    /// three numbers is an error naming the line.
    pub fn load(path: &Path) -> Result<ZoneCentroids, CentroidError> {
        let text = std::fs::read(path).map_err(|source| CentroidError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses the content of a centroid file; `path` names it in errors.
    pub fn parse(text: &[u8], path: &Path) -> Result<ZoneCentroids, CentroidError> {
        let mut by_id = FxHashMap::default();
        let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
        let mut lines = text.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.trim_ascii().is_empty());
        // The header names the columns; its names are the user's, so they are not checked.
        lines.next();
        for (index, raw) in lines {
            let line = raw.trim_ascii();
            let malformed = |problem| CentroidError::Malformed {
                path: path.to_owned(),
                line: index + 1,
                problem,
                text: preview(line, 80),
            };
            let fields: Vec<&str> = std::str::from_utf8(line)
                .map_err(|_| malformed("it is not UTF-8"))?
                .split(',')
                .map(str::trim)
                .collect();
            let [id, lat, lon] = fields[..] else {
                return Err(malformed("it does not have three columns"));
            };
            let id: i64 = id.parse().map_err(|_| malformed("the LocationID is not an integer"))?;
            let lat: f64 = lat.parse().map_err(|_| malformed("the latitude is not a number"))?;
            let lon: f64 = lon.parse().map_err(|_| malformed("the longitude is not a number"))?;
            if !(lat.abs() <= 90.0 && lon.abs() <= 180.0) {
                return Err(malformed("the latitude must lie within ±90 and the longitude within ±180"));
            }
            if by_id.insert(id, GeoPoint { lat, lon }).is_some() {
                return Err(malformed("this LocationID is listed twice"));
            }
        }
        if by_id.is_empty() {
            return Err(CentroidError::Empty { path: path.to_owned() });
        }
        Ok(ZoneCentroids { by_id })
    }

    /// The centroid of zone `id`, if the table has it.
    pub fn get(&self, id: i64) -> Option<GeoPoint> {
        self.by_id.get(&id).copied()
    }

    /// Number of zones.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when the table has no zone.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// A trip between zones `pickup` and `dropoff` (each a zone id or `None` when missing), at
    /// their centroids.
    pub fn place(
        &self,
        trip_id: u64,
        pickup_time: i64,
        dropoff_time: i64,
        pickup: Option<i64>,
        dropoff: Option<i64>,
    ) -> ParsedRecord {
        let centroid =
            |zone: Option<i64>| self.get(zone.ok_or(InvalidReason::MissingField)?).ok_or(InvalidReason::UnknownZone);
        let trip = Trip { trip_id, pickup_time, dropoff_time, pickup: centroid(pickup)?, dropoff: centroid(dropoff)? };
        validate_trip(trip).map(Event::Trip)
    }
}

/// Where the columns of a zone-placed trip sit in a TLC CSV row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneLayout {
    /// Column index of the pickup date-time.
    pub pickup_time: usize,
    /// Column index of the dropoff date-time.
    pub dropoff_time: usize,
    /// Column index of `PULocationID`.
    pub pickup_zone: usize,
    /// Column index of `DOLocationID`.
    pub dropoff_zone: usize,
}

impl ZoneLayout {
    /// Recognises a TLC header with both times and both zone columns (names trimmed and
    /// case-insensitive, a BOM ignored); `None` when one is missing.
    pub fn from_header(line: &[u8]) -> Option<ZoneLayout> {
        let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line).trim_ascii();
        let position = |names: &[&str]| {
            split_fields(line)
                .position(|name| names.iter().any(|n| name.trim_ascii().eq_ignore_ascii_case(n.as_bytes())))
        };
        Some(ZoneLayout {
            pickup_time: position(NEEDED[0].1)?,
            dropoff_time: position(NEEDED[1].1)?,
            pickup_zone: position(&[ZONE_ID_COLUMNS[0]])?,
            dropoff_zone: position(&[ZONE_ID_COLUMNS[1]])?,
        })
    }
}

/// Parses one TLC CSV row of a zone layout into a trip at its zones' centroids, `trip_id` being
/// the data-row number. A row too short is [`InvalidReason::MissingField`], an unreadable time or
/// zone id [`InvalidReason::BadField`], a zone the table lacks [`InvalidReason::UnknownZone`].
pub fn parse_zone_row(layout: &ZoneLayout, centroids: &ZoneCentroids, row: &[u8], trip_id: u64) -> ParsedRecord {
    let row = row.strip_suffix(b"\n").unwrap_or(row);
    let row = row.strip_suffix(b"\r").unwrap_or(row);
    let targets = [layout.pickup_time, layout.dropoff_time, layout.pickup_zone, layout.dropoff_zone];
    let last = targets.iter().copied().max().unwrap_or(0);
    let mut cols: [Option<&[u8]>; 4] = [None; 4];
    for (i, field) in split_fields(row).enumerate().take(last + 1) {
        for (col, &t) in cols.iter_mut().zip(&targets) {
            if t == i {
                *col = Some(field.trim_ascii());
            }
        }
    }
    let [Some(pt), Some(dt), Some(pu), Some(dz)] = cols else {
        return Err(InvalidReason::MissingField);
    };
    let time = |b: &[u8]| parse_timestamp(b).ok_or(InvalidReason::BadField);
    let zone = |b: &[u8]| {
        let text = std::str::from_utf8(b).map_err(|_| InvalidReason::BadField)?;
        text.parse::<i64>().map_err(|_| InvalidReason::BadField)
    };
    let (pickup_time, dropoff_time) = (time(pt)?, time(dt)?);
    centroids.place(trip_id, pickup_time, dropoff_time, Some(zone(pu)?), Some(zone(dz)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,\
                          RatecodeID,store_and_fwd_flag,PULocationID,DOLocationID,payment_type,fare_amount";

    fn table() -> ZoneCentroids {
        ZoneCentroids::parse(b"LocationID,lat,lon\n132,40.6413,-73.7781\n\n161,40.758,-73.9776\r\n", Path::new("z.csv"))
            .expect("parses")
    }

    #[test]
    fn a_centroid_file_maps_ids_to_points() {
        let zones = table();
        assert_eq!(zones.len(), 2);
        assert_eq!(zones.get(132), Some(GeoPoint { lat: 40.6413, lon: -73.7781 }));
        assert_eq!(zones.get(161), Some(GeoPoint { lat: 40.758, lon: -73.9776 }));
        assert_eq!(zones.get(1), None);
    }

    #[test]
    fn a_malformed_centroid_file_names_the_file_and_line() {
        let cases: [(&str, usize, &str); 6] = [
            ("id,lat,lon\n1,40.7,-73.9\n2,40.7\n", 3, "three columns"),
            ("id,lat,lon\nx,40.7,-73.9\n", 2, "LocationID is not an integer"),
            ("id,lat,lon\n\n1,north,-73.9\n", 3, "latitude is not a number"),
            ("id,lat,lon\n1,40.7,west\n", 2, "longitude is not a number"),
            ("id,lat,lon\n1,-73.9,40.7\n1,95,40\n", 3, "within ±90"),
            ("id,lat,lon\n1,40.7,-73.9\n1,40.8,-73.9\n", 3, "listed twice"),
        ];
        for (text, line, problem) in cases {
            let err = ZoneCentroids::parse(text.as_bytes(), Path::new("/data/zones.csv")).expect_err(text);
            assert!(matches!(err, CentroidError::Malformed { line: l, .. } if l == line), "{text}: {err}");
            let message = err.to_string();
            assert!(message.starts_with(&format!("zone centroid file /data/zones.csv, line {line}: ")), "{message}");
            assert!(message.contains(problem), "{message}");
            assert!(message.contains("LocationID,lat,lon"), "{message}");
        }
        let err = ZoneCentroids::parse(b"LocationID,lat,lon\n", Path::new("z.csv")).expect_err("empty");
        assert!(matches!(err, CentroidError::Empty { .. }), "{err}");
        let err = ZoneCentroids::load(Path::new("/nonexistent/zones.csv")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/zones.csv"), "{err}");
    }

    #[test]
    fn zone_rows_are_placed_at_the_centroids() {
        let layout = ZoneLayout::from_header(HEADER.as_bytes()).expect("a zone layout");
        assert_eq!(layout, ZoneLayout { pickup_time: 1, dropoff_time: 2, pickup_zone: 7, dropoff_zone: 8 });
        let zones = table();
        let row = b"2,2023-01-01 00:32:10,2023-01-01 00:40:36,1,0.97,1,N,161,132,2,9.3";
        let Ok(Event::Trip(trip)) = parse_zone_row(&layout, &zones, row, 7) else { panic!("not a trip") };
        assert_eq!(trip.trip_id, 7);
        assert_eq!(trip.pickup, GeoPoint { lat: 40.758, lon: -73.9776 });
        assert_eq!(trip.dropoff, GeoPoint { lat: 40.6413, lon: -73.7781 });
        assert_eq!(trip.pickup_time, parse_timestamp(b"2023-01-01T00:32:10Z").expect("time"));
        let cases: [(&[u8], InvalidReason); 4] = [
            (b"2,2023-01-01 00:32:10,2023-01-01 00:40:36,1,0.97,1,N,161,999,2,9.3", InvalidReason::UnknownZone),
            (b"2,2023-01-01 00:32:10,2023-01-01 00:40:36,1,0.97,1,N,161,", InvalidReason::BadField),
            (b"2,2023-01-01 00:32:10,2023-01-01 00:40:36,1,0.97,1,N,161", InvalidReason::MissingField),
            (b"2,yesterday,2023-01-01 00:40:36,1,0.97,1,N,161,132", InvalidReason::BadField),
        ];
        for (row, reason) in cases {
            assert_eq!(parse_zone_row(&layout, &zones, row, 1), Err(reason), "{}", String::from_utf8_lossy(row));
        }
        assert_eq!(ZoneLayout::from_header(b"tpep_pickup_datetime,tpep_dropoff_datetime,PULocationID"), None);
    }
}

//! NYC TLC yellow-trip CSV rows: the 2009, 2010–2014 and 2015–2016 layouts.
//!
//! The header names the layout. Rather than hard-coding three column lists, each needed column
//! is looked up by its known names (trimmed, case-insensitive), so reordered or extended files
//! with the same names still work. TLC files are unquoted, so a row is split on every comma.

use memchr::memchr_iter;

use super::InputError;
use super::json::{parse_f64, validate_trip};
use crate::event::{Event, GeoPoint, InvalidReason, ParsedRecord, Trip};
use crate::time::parse_timestamp;

/// Where the columns a trip needs sit in a TLC CSV row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsvLayout {
    /// Column index of the pickup date-time.
    pub pickup_time: usize,
    /// Column index of the dropoff date-time.
    pub dropoff_time: usize,
    /// Column index of the pickup latitude.
    pub pickup_lat: usize,
    /// Column index of the pickup longitude.
    pub pickup_lon: usize,
    /// Column index of the dropoff latitude.
    pub dropoff_lat: usize,
    /// Column index of the dropoff longitude.
    pub dropoff_lon: usize,
    /// Number of columns in the header.
    pub columns: usize,
}

/// The columns a trip needs, each with the names the TLC layouts use for it
/// (2009 / 2010–2014 / 2015–2016, lower case).
pub(super) const NEEDED: [(&str, &[&str]); 6] = [
    ("pickup time", &["trip_pickup_datetime", "pickup_datetime", "tpep_pickup_datetime"]),
    ("dropoff time", &["trip_dropoff_datetime", "dropoff_datetime", "tpep_dropoff_datetime"]),
    ("pickup latitude", &["start_lat", "pickup_latitude"]),
    ("pickup longitude", &["start_lon", "pickup_longitude"]),
    ("dropoff latitude", &["end_lat", "dropoff_latitude"]),
    ("dropoff longitude", &["end_lon", "dropoff_longitude"]),
];

/// The zone columns of the TLC's files from July 2016 on, which hold no coordinates.
pub(super) const ZONE_ID_COLUMNS: [&str; 2] = ["pulocationid", "dolocationid"];

impl CsvLayout {
    /// Recognises a TLC yellow-trip header line (a trailing `\r` / `\n` and a UTF-8 BOM are
    /// ignored; names are matched trimmed and case-insensitively).
    ///
    /// Fails with [`InputError::UnknownCsvHeader`] naming every needed column it could not find.
    pub fn from_header(line: &[u8]) -> Result<CsvLayout, InputError> {
        let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        let line = line.trim_ascii();
        let mut found = [None::<usize>; 6];
        let mut columns = 0;
        let mut zone_ids = false;
        for (i, name) in split_fields(line).enumerate() {
            columns = i + 1;
            let name = name.trim_ascii();
            zone_ids |= ZONE_ID_COLUMNS.iter().any(|n| name.eq_ignore_ascii_case(n.as_bytes()));
            for (slot, (_, names)) in found.iter_mut().zip(NEEDED.iter()) {
                // The first matching column wins, should a name repeat.
                if slot.is_none() && names.iter().any(|n| name.eq_ignore_ascii_case(n.as_bytes())) {
                    *slot = Some(i);
                }
            }
        }
        match found {
            [
                Some(pickup_time),
                Some(dropoff_time),
                Some(pickup_lat),
                Some(pickup_lon),
                Some(dropoff_lat),
                Some(dropoff_lon),
            ] => Ok(CsvLayout { pickup_time, dropoff_time, pickup_lat, pickup_lon, dropoff_lat, dropoff_lon, columns }),
            // Not the missing columns one by one: the layout has none of them.
            _ if zone_ids => Err(InputError::ZoneIdsInsteadOfCoordinates { origin: "input".to_owned() }),
            _ => {
                let missing = found
                    .iter()
                    .zip(NEEDED.iter())
                    .filter(|(slot, _)| slot.is_none())
                    .map(|(_, (what, names))| format!("{what} ({})", names.join(" / ")))
                    .collect::<Vec<_>>()
                    .join(", ");
                Err(InputError::UnknownCsvHeader { origin: "input".to_owned(), missing, header: preview(line, 200) })
            }
        }
    }

    /// The highest column index a row must reach.
    fn last_needed(&self) -> usize {
        self.pickup_time
            .max(self.dropoff_time)
            .max(self.pickup_lat)
            .max(self.pickup_lon)
            .max(self.dropoff_lat)
            .max(self.dropoff_lon)
    }
}

/// Parses one TLC CSV data row into a trip whose `trip_id` is `trip_id` (the data-row number).
///
/// Naive timestamps are UTC. A row too short to hold every needed column is
/// [`InvalidReason::MissingField`]; an empty or unparsable timestamp or coordinate is
/// [`InvalidReason::BadField`]. Coordinates of 0,0 parse fine (the engine counts them as outside
/// the region); only |lat| > 90 or |lon| > 180 is [`InvalidReason::CoordinateOutOfRange`].
/// Never panics.
pub fn parse_csv_row(layout: &CsvLayout, row: &[u8], trip_id: u64) -> ParsedRecord {
    let row = row.strip_suffix(b"\n").unwrap_or(row);
    let row = row.strip_suffix(b"\r").unwrap_or(row);
    let last = layout.last_needed();
    let mut cols: [&[u8]; 6] = [&[]; 6];
    let mut seen = 0;
    for (i, field) in split_fields(row).enumerate().take(last + 1) {
        seen = i + 1;
        let targets = [
            layout.pickup_time,
            layout.dropoff_time,
            layout.pickup_lat,
            layout.pickup_lon,
            layout.dropoff_lat,
            layout.dropoff_lon,
        ];
        for (col, &t) in cols.iter_mut().zip(targets.iter()) {
            if t == i {
                *col = field.trim_ascii();
            }
        }
    }
    if seen <= last {
        return Err(InvalidReason::MissingField);
    }
    let [pt, dt, plat, plon, dlat, dlon] = cols;
    let time = |b: &[u8]| parse_timestamp(b).ok_or(InvalidReason::BadField);
    let num = |b: &[u8]| parse_f64(b).ok_or(InvalidReason::BadField);
    let trip = Trip {
        trip_id,
        pickup_time: time(pt)?,
        dropoff_time: time(dt)?,
        pickup: GeoPoint { lat: num(plat)?, lon: num(plon)? },
        dropoff: GeoPoint { lat: num(dlat)?, lon: num(dlon)? },
    };
    validate_trip(trip).map(Event::Trip)
}

/// Splits a line on commas (TLC files are unquoted).
pub(super) fn split_fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr_iter(b',', line).chain(std::iter::once(line.len())).map(move |end| {
        let field = line.get(start..end).unwrap_or_default();
        start = end + 1;
        field
    })
}

/// A short, printable rendering of raw bytes for error messages.
pub(crate) fn preview(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    let mut s = String::from_utf8_lossy(cut).escape_debug().to_string();
    if bytes.len() > max {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Millis;

    pub(crate) const HEADER_2009: &str = "vendor_name,Trip_Pickup_DateTime,Trip_Dropoff_DateTime,Passenger_Count,Trip_Distance,Start_Lon,Start_Lat,Rate_Code,store_and_forward,End_Lon,End_Lat,Payment_Type,Fare_Amt,surcharge,mta_tax,Tip_Amt,Tolls_Amt,Total_Amt";
    pub(crate) const HEADER_2010: &str = "vendor_id, pickup_datetime, dropoff_datetime, passenger_count, trip_distance, pickup_longitude, pickup_latitude, rate_code, store_and_fwd_flag, dropoff_longitude, dropoff_latitude, payment_type, fare_amount, surcharge, mta_tax, tip_amount, tolls_amount, total_amount\r";
    pub(crate) const HEADER_2015: &str = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,pickup_longitude,pickup_latitude,RateCodeID,store_and_fwd_flag,dropoff_longitude,dropoff_latitude,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount";

    const PICKUP: Millis = 1_421_348_739_000; // 2015-01-15 19:05:39
    const DROPOFF: Millis = 1_421_349_335_000; // 2015-01-15 19:15:35

    fn trip(id: u64) -> Event {
        Event::Trip(Trip {
            trip_id: id,
            pickup_time: PICKUP,
            dropoff_time: DROPOFF,
            pickup: GeoPoint { lat: 40.750111, lon: -73.993896 },
            dropoff: GeoPoint { lat: 40.641525, lon: -73.974785 },
        })
    }

    #[test]
    fn layout_2009() {
        let l = CsvLayout::from_header(HEADER_2009.as_bytes()).unwrap();
        assert_eq!(
            l,
            CsvLayout {
                pickup_time: 1,
                dropoff_time: 2,
                pickup_lon: 5,
                pickup_lat: 6,
                dropoff_lon: 9,
                dropoff_lat: 10,
                columns: 18
            }
        );
        let row = "CMT,2015-01-15 19:05:39,2015-01-15 19:15:35,1,1.5,-73.993896,40.750111,,,-73.974785,40.641525,CASH,8.9,0.5,,0,0,9.4";
        assert_eq!(parse_csv_row(&l, row.as_bytes(), 3), Ok(trip(3)));
    }

    #[test]
    fn layout_2010_with_leading_spaces_and_cr() {
        let l = CsvLayout::from_header(HEADER_2010.as_bytes()).unwrap();
        assert_eq!((l.pickup_time, l.dropoff_lat, l.columns), (1, 10, 18));
        let row = "VTS,2015-01-15 19:05:39,2015-01-15 19:15:35,1,1.5,-73.993896,40.750111,1,,-73.974785,40.641525,CRD,8.9,0.5,0.5,0,0,9.9\r\n";
        assert_eq!(parse_csv_row(&l, row.as_bytes(), 1), Ok(trip(1)));
    }

    #[test]
    fn layout_2015() {
        let l = CsvLayout::from_header(HEADER_2015.as_bytes()).unwrap();
        assert_eq!((l.pickup_time, l.pickup_lon, l.columns), (1, 5, 19));
        let row = "2,2015-01-15 19:05:39,2015-01-15 19:15:35,1,1.59,-73.993896,40.750111,1,N,-73.974785,40.641525,1,12,1,0.5,3.25,0,0.3,17.05\r";
        assert_eq!(parse_csv_row(&l, row.as_bytes(), 9), Ok(trip(9)));
    }

    #[test]
    fn header_with_bom_and_upper_case() {
        let h = format!("\u{feff}{}", HEADER_2015.to_uppercase());
        assert!(CsvLayout::from_header(h.as_bytes()).is_ok());
    }

    #[test]
    fn unknown_header_names_missing_columns() {
        let err = CsvLayout::from_header(b"VendorID,lpep_pickup,pickup_longitude,foo").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, InputError::UnknownCsvHeader { .. }));
        assert!(msg.contains("pickup time"), "{msg}");
        assert!(msg.contains("dropoff latitude"), "{msg}");
        assert!(!msg.contains("pickup longitude ("), "{msg}");
        assert!(msg.contains("lpep_pickup"), "{msg}");
        assert!(CsvLayout::from_header(b"").is_err());
    }

    #[test]
    fn bad_rows() {
        let l = CsvLayout::from_header(HEADER_2015.as_bytes()).unwrap();
        let ok = "2,2015-01-15 19:05:39,2015-01-15 19:15:35,1,1.59,-73.993896,40.750111,1,N,-73.974785,40.641525,1";
        assert_eq!(parse_csv_row(&l, ok.as_bytes(), 4), Ok(trip(4)));
        let cases: [(&str, InvalidReason); 10] = [
            ("2,2015-01-15 19:05:39,2015-01-15 19:15:35,1,1.59,-73.99,40.75,1,N,-73.97", InvalidReason::MissingField),
            ("", InvalidReason::MissingField),
            ("2,,2015-01-15 19:15:35,1,1.59,-73.99,40.75,1,N,-73.97,40.64", InvalidReason::BadField),
            ("2,2015-01-15 19:05:39,2015-01-15 25:15:35,1,1.59,-73.99,40.75,1,N,-73.97,40.64", InvalidReason::BadField),
            ("2,2015-01-15 19:05:39,2015-01-15 19:15:35,1,1.59,,40.75,1,N,-73.97,40.64", InvalidReason::BadField),
            ("2,2015-01-15 19:05:39,2015-01-15 19:15:35,1,1.59,-73.99,x,1,N,-73.97,40.64", InvalidReason::BadField),
            ("2,2015-01-15 19:05:39,2015-01-15 19:15:35,1,1.59,-73.99,40.75,1,N,-73.97,nan", InvalidReason::BadField),
            (
                "2,2015-01-15 19:05:39,2015-01-15 19:15:35,1,1.59,-73.99,40.75,1,N,-273.97,40.64",
                InvalidReason::CoordinateOutOfRange,
            ),
            (
                "2,2015-01-15 19:05:39,2015-01-15 19:15:35,1,1.59,-73.99,90.75,1,N,-73.97,40.64",
                InvalidReason::CoordinateOutOfRange,
            ),
            (
                "2,2015-01-15 19:15:39,2015-01-15 19:15:35,1,1.59,-73.99,40.75,1,N,-73.97,40.64",
                InvalidReason::DropoffBeforePickup,
            ),
        ];
        for (row, want) in cases {
            assert_eq!(parse_csv_row(&l, row.as_bytes(), 1), Err(want), "{row}");
        }
        // Zero coordinates parse (the engine filters them by region).
        let zeros = "2,2015-01-15 19:05:39,2015-01-15 19:15:35,1,1.59,0,0,1,N,0,0";
        assert!(parse_csv_row(&l, zeros.as_bytes(), 1).is_ok());
        // Arbitrary bytes never panic.
        assert!(parse_csv_row(&l, b"\xff,\xfe,,,,,,,,,,,,,,", 1).is_err());
    }
}

//! NYC TLC trip records in Parquet, as the TLC publishes them today: the trips of one object as
//! [`ParsedRecord`]s, the same records a CSV file of the same trips gives.
//!
//! Columns are found by the names the CSV layouts use (the 2009, 2010–2014 and 2015–2016 names,
//! case-insensitive; one table in `csv.rs` holds them), and only those are read: the rows are
//! decoded through a projection of the file's schema, row group after row group, never the whole
//! file at once, and only the footer and the projected column chunks are fetched. Times may be
//! Parquet timestamps (milliseconds, microseconds or nanoseconds) or strings as in the CSV files;
//! coordinates floating-point or integer columns, or strings. A file that places trips by taxi
//! zone (`PULocationID`, `DOLocationID`, as the TLC's files from July 2016 on do) is read when a
//! [`ZoneCentroids`] table is given, each trip at its zones' centroids, and refused otherwise.
//! Trip ids are row numbers, counted from 1 (or from where the object starts in its input) as for
//! CSV data rows, so the same trips give the same results in either format.

use std::path::Path;
use std::sync::Arc;

use parquet::basic::{LogicalType, TimeUnit};
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::reader::SerializedFileReader;
use parquet::file::serialized_reader::ReadOptionsBuilder;
use parquet::record::reader::RowIter;
use parquet::record::{Field, Row};
use parquet::schema::types::Type;

use super::csv::{NEEDED, ZONE_ID_COLUMNS};
use super::json::validate_trip;
use super::ranges::ObjectBytes;
use super::{InputError, InputObject, LocalFile, ZoneCentroids};
use crate::event::{Event, GeoPoint, InvalidReason, ParsedRecord, Trip};
use crate::time::parse_timestamp;

/// The trips of one Parquet object, in row order.
pub struct ParquetTrips {
    source: ObjectBytes,
    /// `input file <path>` or the object's name, for error messages.
    origin: String,
    /// The file's schema cut to the columns read, in the order [`trip_of`] takes them.
    projection: Type,
    /// How the projected columns make a trip.
    columns: Columns,
    /// Rows of each row group, from the footer.
    group_rows: Vec<u64>,
    /// The decoder, created at the first row read (so skipping can leave whole row groups out).
    rows: Option<RowIter<'static>>,
    /// Rows skipped before the decoder was created.
    skipped_before_start: u64,
    /// The trip id of the next row.
    next_trip_id: u64,
    /// Decoding failed: the iterator has ended.
    failed: bool,
}

impl std::fmt::Debug for ParquetTrips {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetTrips")
            .field("origin", &self.origin)
            .field("columns", &self.columns)
            .field("next_trip_id", &self.next_trip_id)
            .finish_non_exhaustive()
    }
}

/// How the projected columns make a trip: two times, then four coordinates or two zone ids.
#[derive(Clone, Debug)]
struct Columns {
    /// Units of the pickup and dropoff times when stored as plain 64-bit integers.
    time_units: [Option<TimeUnit>; 2],
    /// `None`: coordinates (lat, lon, lat, lon); `Some`: zone ids placed at these centroids.
    zones: Option<Arc<ZoneCentroids>>,
}

impl ParquetTrips {
    /// Opens the file at `path` and finds the columns a trip needs in its schema (coordinates
    /// only: a file placing trips by zone is refused).
    pub fn open(path: &Path) -> Result<ParquetTrips, InputError> {
        ParquetTrips::from_object(&LocalFile::new(path), None)
    }

    /// Opens `object` by ranges: reads its footer and finds the columns a trip needs. With
    /// `zones`, a file that places trips by taxi zone is read too.
    pub fn from_object(
        object: &dyn InputObject,
        zones: Option<Arc<ZoneCentroids>>,
    ) -> Result<ParquetTrips, InputError> {
        let origin = object.origin().to_owned();
        let source = ObjectBytes::new(object.random_access()?);
        let metadata = ParquetMetaDataReader::new().parse_and_finish(&source).map_err(|e| unreadable(&origin, &e))?;
        let (projection, columns) = projection(metadata.file_metadata().schema(), &origin, zones)?;
        let group_rows = metadata.row_groups().iter().map(|g| u64::try_from(g.num_rows()).unwrap_or(0)).collect();
        Ok(ParquetTrips {
            source,
            origin,
            projection,
            columns,
            group_rows,
            rows: None,
            skipped_before_start: 0,
            next_trip_id: 1,
            failed: false,
        })
    }

    /// Numbers the next row `first` (the object's first row, when it follows others in an input).
    pub fn number_from(&mut self, first: u64) {
        self.next_trip_id = first;
    }

    /// The number of rows, from the footer.
    pub fn rows(&self) -> u64 {
        self.group_rows.iter().sum()
    }

    /// Skips the next `n` rows, returning how many were skipped: fewer than `n` only at the end.
    /// Before any row is read, whole row groups are skipped by their row counts, unread.
    pub fn skip_rows(&mut self, n: u64) -> Result<u64, InputError> {
        let skipped = match &mut self.rows {
            None => {
                let left = self.rows().saturating_sub(self.skipped_before_start);
                let skipped = n.min(left);
                self.skipped_before_start += skipped;
                skipped
            }
            Some(rows) => {
                let mut skipped = 0;
                while skipped < n {
                    match rows.next() {
                        Some(Ok(_)) => skipped += 1,
                        Some(Err(e)) => return Err(unreadable(&self.origin, &e)),
                        None => break,
                    }
                }
                skipped
            }
        };
        self.next_trip_id += skipped;
        Ok(skipped)
    }

    /// The decoder over the row groups left after the skipped rows, positioned at the next row.
    fn start(&mut self) -> Result<RowIter<'static>, InputError> {
        let mut first_group = 0;
        let mut before = 0;
        while first_group < self.group_rows.len() && before + self.group_rows[first_group] <= self.skipped_before_start
        {
            before += self.group_rows[first_group];
            first_group += 1;
        }
        let options = ReadOptionsBuilder::new().with_predicate(Box::new(move |_, i| i >= first_group)).build();
        let reader = SerializedFileReader::new_with_options(self.source.clone(), options)
            .map_err(|e| unreadable(&self.origin, &e))?;
        let mut rows = RowIter::from_file_into(Box::new(reader))
            .project(Some(self.projection.clone()))
            .map_err(|e| unreadable(&self.origin, &e))?;
        for _ in before..self.skipped_before_start {
            if let Some(Err(e)) = rows.next() {
                return Err(unreadable(&self.origin, &e));
            }
        }
        Ok(rows)
    }
}

impl Iterator for ParquetTrips {
    type Item = Result<ParsedRecord, InputError>;

    /// The next row as a trip (or the reason it is invalid); an error when the file cannot be
    /// decoded, after which the iterator ends.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.rows.is_none() {
            match self.start() {
                Ok(rows) => self.rows = Some(rows),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        let row = match self.rows.as_mut()?.next()? {
            Ok(row) => row,
            Err(e) => {
                self.failed = true;
                return Some(Err(unreadable(&self.origin, &e)));
            }
        };
        let trip_id = self.next_trip_id;
        self.next_trip_id += 1;
        Some(Ok(trip_of(&row, &self.columns, trip_id)))
    }
}

/// The file's schema cut to the columns a trip needs: the two times, then the four coordinates in
/// the order of [`NEEDED`] or, with `zones`, the two zone ids. A file that places trips by zone
/// without `zones` gets the error that says so.
fn projection(schema: &Type, origin: &str, zones: Option<Arc<ZoneCentroids>>) -> Result<(Type, Columns), InputError> {
    let columns = schema.get_fields();
    let find = |names: &[&str]| columns.iter().find(|c| names.iter().any(|n| c.name().eq_ignore_ascii_case(n)));
    let found: Vec<Option<&Arc<Type>>> = NEEDED.iter().map(|(_, names)| find(names)).collect();
    let zone_columns: Vec<Option<&Arc<Type>>> = ZONE_ID_COLUMNS.iter().map(|zone| find(&[zone])).collect();
    let (fields, zones) = if found.iter().all(Option::is_some) {
        (found.iter().flatten().map(|c| Arc::clone(c)).collect::<Vec<_>>(), None)
    } else if zone_columns.iter().any(Option::is_some) {
        let Some(zones) = zones else {
            return Err(InputError::ZoneIdsInsteadOfCoordinates { origin: origin.to_owned() });
        };
        let times = found[..2].iter();
        if times.clone().chain(&zone_columns).any(Option::is_none) {
            return Err(missing_columns(origin, columns, &found[..2], &zone_columns));
        }
        (times.chain(&zone_columns).flatten().map(|c| Arc::clone(c)).collect(), Some(zones))
    } else {
        return Err(missing_columns(origin, columns, &found, &[]));
    };
    let time_units = [time_unit(&fields[0]), time_unit(&fields[1])];
    let projection =
        Type::group_type_builder(schema.name()).with_fields(fields).build().map_err(|e| unreadable(origin, &e))?;
    Ok((projection, Columns { time_units, zones }))
}

/// The unit of a timestamp column stored as a 64-bit integer (which the decoder hands over as a
/// plain integer when its unit is nanoseconds).
fn time_unit(column: &Type) -> Option<TimeUnit> {
    match column.get_basic_info().logical_type_ref() {
        Some(LogicalType::Timestamp { unit, .. }) => Some(*unit),
        _ => None,
    }
}

/// The error naming the needed columns a file lacks (`found` in the order of [`NEEDED`], then
/// `zones` in the order of [`ZONE_ID_COLUMNS`]).
fn missing_columns(
    origin: &str,
    columns: &[Arc<Type>],
    found: &[Option<&Arc<Type>>],
    zones: &[Option<&Arc<Type>>],
) -> InputError {
    let needed = NEEDED.iter().map(|(what, names)| (*what, names.join(" / ")));
    let zone_names = [("pickup zone", ZONE_ID_COLUMNS[0]), ("dropoff zone", ZONE_ID_COLUMNS[1])];
    let missing = needed
        .zip(found)
        .chain(zone_names.iter().map(|(what, name)| (*what, (*name).to_owned())).zip(zones))
        .filter(|(_, column)| column.is_none())
        .map(|((what, names), _)| format!("{what} ({names})"))
        .collect::<Vec<_>>()
        .join(", ");
    let names = columns.iter().map(|c| c.name()).collect::<Vec<_>>().join(",");
    InputError::UnknownCsvHeader { origin: origin.to_owned(), missing, header: names }
}

/// One projected row, its columns in the order of [`projection`], as a trip.
fn trip_of(row: &Row, columns: &Columns, trip_id: u64) -> ParsedRecord {
    let mut fields = row.get_column_iter().map(|(_, field)| field);
    let mut next = || fields.next().ok_or(InvalidReason::MissingField);
    let pickup_time = time(next()?, columns.time_units[0])?;
    let dropoff_time = time(next()?, columns.time_units[1])?;
    if let Some(zones) = &columns.zones {
        let (pickup, dropoff) = (zone(next()?)?, zone(next()?)?);
        return zones.place(trip_id, pickup_time, dropoff_time, pickup, dropoff);
    }
    let pickup = GeoPoint { lat: number(next()?)?, lon: number(next()?)? };
    let dropoff = GeoPoint { lat: number(next()?)?, lon: number(next()?)? };
    validate_trip(Trip { trip_id, pickup_time, dropoff_time, pickup, dropoff }).map(Event::Trip)
}

/// Milliseconds since the epoch, UTC, of a timestamp or a time string; a missing value is a
/// missing field. `unit` is the column's, for timestamps the decoder hands over as integers.
fn time(field: &Field, unit: Option<TimeUnit>) -> Result<i64, InvalidReason> {
    match (field, unit) {
        (Field::Null, _) => Err(InvalidReason::MissingField),
        (Field::TimestampMillis(ms), _) | (Field::Long(ms), Some(TimeUnit::MILLIS)) => Ok(*ms),
        (Field::TimestampMicros(us), _) | (Field::Long(us), Some(TimeUnit::MICROS)) => Ok(us.div_euclid(1_000)),
        (Field::Long(ns), Some(TimeUnit::NANOS)) => Ok(ns.div_euclid(1_000_000)),
        (Field::Str(text), _) => parse_timestamp(text.as_bytes()).ok_or(InvalidReason::BadField),
        _ => Err(InvalidReason::BadField),
    }
}

/// A coordinate of any numeric column; a missing value is a missing field.
fn number(field: &Field) -> Result<f64, InvalidReason> {
    match field {
        Field::Null => Err(InvalidReason::MissingField),
        Field::Double(v) => Ok(*v),
        Field::Float(v) => Ok(f64::from(*v)),
        Field::Int(v) => Ok(f64::from(*v)),
        Field::Str(text) => text.trim().parse().map_err(|_| InvalidReason::BadField),
        _ => Err(InvalidReason::BadField),
    }
}

/// A zone id of an integer column (`None` when missing); anything else is a bad field.
fn zone(field: &Field) -> Result<Option<i64>, InvalidReason> {
    match field {
        Field::Null => Ok(None),
        Field::Int(v) => Ok(Some(i64::from(*v))),
        Field::Long(v) => Ok(Some(*v)),
        Field::Short(v) => Ok(Some(i64::from(*v))),
        Field::UInt(v) => Ok(Some(i64::from(*v))),
        _ => Err(InvalidReason::BadField),
    }
}

fn unreadable(origin: &str, error: &parquet::errors::ParquetError) -> InputError {
    InputError::Read { origin: origin.to_owned(), source: std::io::Error::other(error.to_string()) }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::sync::Arc;

    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    use super::*;
    use crate::input::{CsvLayout, parse_csv_row};

    /// One column's values for [`write`]; `None` is a null (the column must be optional).
    pub(super) enum Column {
        Micros(Vec<Option<i64>>),
        Text(Vec<Option<&'static str>>),
        Double(Vec<Option<f64>>),
        Int(Vec<Option<i32>>),
        Long(Vec<Option<i64>>),
    }

    /// Writes `row_groups` (each a list of columns in the schema's order) to a Parquet file.
    pub(super) fn write(dir: &Path, schema: &str, row_groups: Vec<Vec<Column>>) -> std::path::PathBuf {
        let path = dir.join("trips.parquet");
        let file = File::create(&path).expect("create");
        let schema = Arc::new(parse_message_type(schema).expect("schema"));
        let mut writer =
            SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build())).expect("writer");
        for columns in row_groups {
            let mut group = writer.next_row_group().expect("row group");
            for column in columns {
                let mut out = group.next_column().expect("column").expect("a column left");
                fn split<T: Clone + Default>(values: &[Option<T>]) -> (Vec<T>, Vec<i16>) {
                    let defined = values.iter().map(|v| i16::from(v.is_some())).collect();
                    (values.iter().flatten().cloned().collect(), defined)
                }
                match column {
                    Column::Micros(values) | Column::Long(values) => {
                        let (v, d) = split(&values);
                        out.typed::<Int64Type>().write_batch(&v, Some(&d), None).expect("write");
                    }
                    Column::Text(values) => {
                        let bytes: Vec<Option<ByteArray>> = values.iter().map(|v| v.map(ByteArray::from)).collect();
                        let (v, d) = split(&bytes);
                        out.typed::<ByteArrayType>().write_batch(&v, Some(&d), None).expect("write");
                    }
                    Column::Double(values) => {
                        let (v, d) = split(&values);
                        out.typed::<DoubleType>().write_batch(&v, Some(&d), None).expect("write");
                    }
                    Column::Int(values) => {
                        let (v, d) = split(&values);
                        out.typed::<Int32Type>().write_batch(&v, Some(&d), None).expect("write");
                    }
                }
                out.close().expect("close column");
            }
            group.close().expect("close row group");
        }
        writer.close().expect("close file");
        path
    }

    const LAYOUT_2015: &str = "message schema {
        optional int32 VendorID;
        optional int64 tpep_pickup_datetime (TIMESTAMP(MICROS,false));
        optional int64 tpep_dropoff_datetime (TIMESTAMP(MICROS,false));
        optional double pickup_longitude;
        optional double pickup_latitude;
        optional double dropoff_longitude;
        optional double dropoff_latitude;
    }";

    /// 2016-01-01T00:10:00Z + `minutes`, in microseconds.
    fn micros(minutes: i64) -> Option<i64> {
        Some((1_451_607_000 + minutes * 60) * 1_000_000)
    }

    fn all(path: &Path) -> Vec<ParsedRecord> {
        ParquetTrips::open(path).expect("open").map(|r| r.expect("decodes")).collect()
    }

    #[test]
    fn the_2015_layout_gives_the_trips_its_csv_form_gives_in_row_order_across_row_groups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let group = |first: i64| {
            vec![
                Column::Int(vec![Some(2), Some(1)]),
                Column::Micros(vec![micros(first), micros(first + 1)]),
                Column::Micros(vec![micros(first + 20), micros(first + 31)]),
                Column::Double(vec![Some(-73.98), Some(-73.87)]),
                Column::Double(vec![Some(40.75), Some(40.77)]),
                Column::Double(vec![Some(-73.78), Some(-73.99)]),
                Column::Double(vec![Some(40.64), Some(40.73)]),
            ]
        };
        let path = write(dir.path(), LAYOUT_2015, vec![group(0), group(5)]);
        let csv = CsvLayout::from_header(
            b"VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,pickup_longitude,pickup_latitude,\
              dropoff_longitude,dropoff_latitude",
        )
        .expect("header");
        let rows = [
            "2,2016-01-01 00:10:00,2016-01-01 00:30:00,-73.98,40.75,-73.78,40.64",
            "1,2016-01-01 00:11:00,2016-01-01 00:41:00,-73.87,40.77,-73.99,40.73",
            "2,2016-01-01 00:15:00,2016-01-01 00:35:00,-73.98,40.75,-73.78,40.64",
            "1,2016-01-01 00:16:00,2016-01-01 00:46:00,-73.87,40.77,-73.99,40.73",
        ];
        let from_csv: Vec<ParsedRecord> =
            rows.iter().zip(1..).map(|(row, id)| parse_csv_row(&csv, row.as_bytes(), id)).collect();
        assert!(from_csv.iter().all(Result::is_ok), "{from_csv:?}");
        assert_eq!(all(&path), from_csv);
    }

    #[test]
    fn the_2009_names_match_in_any_case_and_times_may_be_strings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = "message schema {
            required binary Trip_Pickup_DateTime (STRING);
            required binary Trip_Dropoff_DateTime (STRING);
            required double Start_Lon;
            required double Start_Lat;
            required double End_Lon;
            required double End_Lat;
        }";
        let path = write(
            dir.path(),
            schema,
            vec![vec![
                Column::Text(vec![Some("2009-01-04 02:52:00"), Some("2009-01-04 03:31:00")]),
                Column::Text(vec![Some("2009-01-04 03:02:00"), Some("not a time")]),
                Column::Double(vec![Some(-73.99), Some(-73.96)]),
                Column::Double(vec![Some(40.72), Some(40.77)]),
                Column::Double(vec![Some(-73.99), Some(-73.95)]),
                Column::Double(vec![Some(40.69), Some(40.78)]),
            ]],
        );
        let records = all(&path);
        let Ok(Event::Trip(trip)) = &records[0] else { panic!("{records:?}") };
        assert_eq!((trip.trip_id, trip.pickup_time), (1, parse_timestamp(b"2009-01-04T02:52:00Z").expect("time")));
        assert_eq!(trip.pickup, GeoPoint { lat: 40.72, lon: -73.99 });
        assert_eq!(records[1], Err(InvalidReason::BadField));
    }

    #[test]
    fn nulls_are_missing_fields_and_impossible_coordinates_are_refused_per_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            LAYOUT_2015,
            vec![vec![
                Column::Int(vec![Some(1), Some(1), Some(1)]),
                Column::Micros(vec![micros(0), micros(0), None]),
                Column::Micros(vec![micros(9), micros(9), micros(9)]),
                Column::Double(vec![None, Some(-200.0), Some(-73.9)]),
                Column::Double(vec![Some(40.7), Some(40.7), Some(40.7)]),
                Column::Double(vec![Some(-73.9), Some(-73.9), Some(-73.9)]),
                Column::Double(vec![Some(40.7), Some(40.7), Some(40.7)]),
            ]],
        );
        assert_eq!(
            all(&path),
            [
                Err(InvalidReason::MissingField),
                Err(InvalidReason::CoordinateOutOfRange),
                Err(InvalidReason::MissingField)
            ]
        );
    }

    #[test]
    fn a_file_with_zone_ids_or_without_the_columns_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let zones = "message schema {
            optional int64 tpep_pickup_datetime (TIMESTAMP(MICROS,false));
            optional int64 tpep_dropoff_datetime (TIMESTAMP(MICROS,false));
            optional int32 PULocationID;
            optional int32 DOLocationID;
        }";
        let columns = || {
            vec![
                Column::Micros(vec![micros(0)]),
                Column::Micros(vec![micros(9)]),
                Column::Int(vec![Some(161)]),
                Column::Int(vec![Some(132)]),
            ]
        };
        let path = write(dir.path(), zones, vec![columns()]);
        let err = ParquetTrips::open(&path).expect_err("zone ids");
        assert!(matches!(err, InputError::ZoneIdsInsteadOfCoordinates { .. }), "{err}");
        assert!(err.to_string().contains("trips.parquet places trips by taxi zone"), "{err}");

        let other = "message schema {
            optional int64 tpep_pickup_datetime (TIMESTAMP(MICROS,false));
            optional int64 tpep_dropoff_datetime (TIMESTAMP(MICROS,false));
            optional int32 fare;
            optional int32 tip;
        }";
        let path = write(dir.path(), other, vec![columns()]);
        let err = ParquetTrips::open(&path).expect_err("no coordinates");
        assert!(err.to_string().contains("no column for pickup latitude"), "{err}");
    }
}

/// Taxi zones, nanosecond timestamps and skipping in the TLC layout of July 2016 on.
#[cfg(test)]
pub(super) mod zone_tests {
    use std::sync::Arc;

    use super::tests::{Column, write};
    use super::*;
    use crate::input::ZoneCentroids;

    const MODERN: &str = "message schema {
        optional int32 VendorID;
        optional int64 tpep_pickup_datetime (TIMESTAMP(NANOS,false));
        optional int64 tpep_dropoff_datetime (TIMESTAMP(NANOS,false));
        optional double trip_distance;
        optional int64 PULocationID;
        optional int64 DOLocationID;
        optional double fare_amount;
    }";

    /// 2023-01-01T00:00:00Z + `minutes`, in nanoseconds.
    fn nanos(minutes: i64) -> Option<i64> {
        Some((1_672_531_200 + minutes * 60) * 1_000_000_000)
    }

    pub(in crate::input) fn zones() -> Arc<ZoneCentroids> {
        let table = b"LocationID,lat,lon\n132,40.6413,-73.7781\n161,40.758,-73.9776\n";
        Arc::new(ZoneCentroids::parse(table, Path::new("zones.csv")).expect("table"))
    }

    /// Two row groups of three rows: row `i` (0-based) picks up at minute `i` in zone 161 and
    /// drops off in zone 132, except the fifth, which drops off in zone 7 (unknown).
    pub(in crate::input) fn modern_file(dir: &Path) -> std::path::PathBuf {
        let group = |first: i64| {
            let minutes = [first, first + 1, first + 2];
            vec![
                Column::Int(vec![Some(2); 3]),
                Column::Long(minutes.iter().map(|m| nanos(*m)).collect()),
                Column::Long(minutes.iter().map(|m| nanos(m + 15)).collect()),
                Column::Double(vec![Some(1.5); 3]),
                Column::Long(vec![Some(161); 3]),
                Column::Long(if first == 0 { vec![Some(132); 3] } else { vec![Some(132), Some(7), Some(132)] }),
                Column::Double(vec![Some(9.3); 3]),
            ]
        };
        write(dir, MODERN, vec![group(0), group(3)])
    }

    #[test]
    fn zone_ids_are_placed_at_their_centroids_and_nanoseconds_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = modern_file(dir.path());
        let err = ParquetTrips::open(&path).expect_err("no table");
        assert!(matches!(err, InputError::ZoneIdsInsteadOfCoordinates { .. }), "{err}");
        assert!(err.to_string().contains("--zone-centroids FILE"), "{err}");

        let trips = ParquetTrips::from_object(&LocalFile::new(&path), Some(zones())).expect("open");
        assert_eq!(trips.rows(), 6);
        let records: Vec<ParsedRecord> = trips.map(|r| r.expect("decodes")).collect();
        assert_eq!(records.len(), 6);
        assert_eq!(records[4], Err(InvalidReason::UnknownZone));
        let Ok(Event::Trip(first)) = records[0] else { panic!("{records:?}") };
        assert_eq!(first.trip_id, 1);
        assert_eq!(first.pickup_time, 1_672_531_200_000);
        assert_eq!(first.dropoff_time, 1_672_531_200_000 + 15 * 60_000);
        assert_eq!(first.pickup, GeoPoint { lat: 40.758, lon: -73.9776 });
        assert_eq!(first.dropoff, GeoPoint { lat: 40.6413, lon: -73.7781 });
    }

    #[test]
    fn skipping_leaves_whole_row_groups_out_then_rows_and_numbers_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = modern_file(dir.path());
        let open = || ParquetTrips::from_object(&LocalFile::new(&path), Some(zones())).expect("open");
        let all: Vec<ParsedRecord> = open().map(|r| r.expect("decodes")).collect();
        for skip in 0..=7u64 {
            let mut trips = open();
            trips.number_from(11);
            assert_eq!(trips.skip_rows(skip).expect("skip"), skip.min(6));
            let rest: Vec<ParsedRecord> = trips.map(|r| r.expect("decodes")).collect();
            let expected: Vec<ParsedRecord> = all[skip.min(6) as usize..]
                .iter()
                .map(|r| {
                    r.map(|e| match e {
                        Event::Trip(t) => Event::Trip(Trip { trip_id: t.trip_id + 10, ..t }),
                        other => other,
                    })
                })
                .collect();
            assert_eq!(rest, expected, "skip {skip}");
        }
        // Skipping after reading has begun reads the rows it skips.
        let mut trips = open();
        assert!(trips.next().is_some());
        assert_eq!(trips.skip_rows(2).expect("skip"), 2);
        let Some(Ok(Ok(Event::Trip(t)))) = trips.next() else { panic!("a trip") };
        assert_eq!(t.trip_id, 4);
    }
}

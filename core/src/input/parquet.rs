//! NYC TLC trip records in Parquet, as the TLC publishes them today: the trips of one file as
//! [`ParsedRecord`]s, the same records a CSV file of the same trips gives.
//!
//! Columns are found by the names the CSV layouts use (the 2009, 2010–2014 and 2015–2016 names,
//! case-insensitive; one table in `csv.rs` holds them), and only those six are read: the rows are
//! decoded through a projection of the file's schema, row group after row group, never the whole
//! file at once. Times may be Parquet timestamps (milliseconds or microseconds) or strings as in
//! the CSV files; coordinates floating-point or integer columns, or strings. A file that places trips by taxi
//! zone instead of coordinates is refused, as its CSV form is. Trip ids are row numbers, counted
//! from 1 as for CSV data rows, so the same trips give the same results in either format.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::{Field, Row};
use parquet::schema::types::Type;

use super::InputError;
use super::csv::{NEEDED, ZONE_ID_COLUMNS};
use super::json::validate_trip;
use crate::event::{Event, GeoPoint, InvalidReason, ParsedRecord, Trip};
use crate::time::parse_timestamp;

/// The trips of one Parquet file, in row order.
pub struct ParquetTrips {
    rows: RowIter<'static>,
    /// `input file <path>`, for error messages.
    origin: String,
    /// The trip id of the next row.
    next_trip_id: u64,
}

impl std::fmt::Debug for ParquetTrips {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetTrips")
            .field("origin", &self.origin)
            .field("next_trip_id", &self.next_trip_id)
            .finish_non_exhaustive()
    }
}

impl ParquetTrips {
    /// Opens `path` and finds the six columns a trip needs in its schema.
    pub fn open(path: &Path) -> Result<ParquetTrips, InputError> {
        let origin = format!("input file {}", path.display());
        let file = File::open(path).map_err(|source| InputError::Open { path: path.to_owned(), source })?;
        let reader = SerializedFileReader::new(file).map_err(|e| unreadable(&origin, &e))?;
        let projection = projection(reader.metadata().file_metadata().schema(), &origin)?;
        let rows =
            RowIter::from_file_into(Box::new(reader)).project(Some(projection)).map_err(|e| unreadable(&origin, &e))?;
        Ok(ParquetTrips { rows, origin, next_trip_id: 1 })
    }
}

impl Iterator for ParquetTrips {
    type Item = Result<ParsedRecord, InputError>;

    /// The next row as a trip (or the reason it is invalid); an error when the file cannot be
    /// decoded, after which the iterator ends.
    fn next(&mut self) -> Option<Self::Item> {
        let row = match self.rows.next()? {
            Ok(row) => row,
            Err(e) => return Some(Err(unreadable(&self.origin, &e))),
        };
        let trip_id = self.next_trip_id;
        self.next_trip_id += 1;
        Some(Ok(trip_of(&row, trip_id)))
    }
}

/// The file's schema cut to the six needed columns, in the order of [`NEEDED`]. A file whose
/// coordinates are missing but that has taxi zone columns gets the error that says so.
fn projection(schema: &Type, origin: &str) -> Result<Type, InputError> {
    let columns = schema.get_fields();
    let find = |names: &[&str]| columns.iter().find(|c| names.iter().any(|n| c.name().eq_ignore_ascii_case(n)));
    let found: Vec<Option<&Arc<Type>>> = NEEDED.iter().map(|(_, names)| find(names)).collect();
    if found.iter().all(Option::is_some) {
        let fields = found.into_iter().flatten().map(Arc::clone).collect();
        return Type::group_type_builder(schema.name()).with_fields(fields).build().map_err(|e| unreadable(origin, &e));
    }
    if ZONE_ID_COLUMNS.iter().any(|zone| find(&[zone]).is_some()) {
        return Err(InputError::ZoneIdsInsteadOfCoordinates { origin: origin.to_owned() });
    }
    let missing = NEEDED
        .iter()
        .zip(&found)
        .filter(|(_, column)| column.is_none())
        .map(|((what, names), _)| format!("{what} ({})", names.join(" / ")))
        .collect::<Vec<_>>()
        .join(", ");
    let names = columns.iter().map(|c| c.name()).collect::<Vec<_>>().join(",");
    Err(InputError::UnknownCsvHeader { origin: origin.to_owned(), missing, header: names })
}

/// One projected row, its columns in the order of [`NEEDED`], as a trip.
fn trip_of(row: &Row, trip_id: u64) -> ParsedRecord {
    let mut fields = row.get_column_iter().map(|(_, field)| field);
    let mut next = || fields.next().ok_or(InvalidReason::MissingField);
    let (pickup_time, dropoff_time) = (time(next()?)?, time(next()?)?);
    let pickup = GeoPoint { lat: number(next()?)?, lon: number(next()?)? };
    let dropoff = GeoPoint { lat: number(next()?)?, lon: number(next()?)? };
    validate_trip(Trip { trip_id, pickup_time, dropoff_time, pickup, dropoff }).map(Event::Trip)
}

/// Milliseconds since the epoch, UTC, of a timestamp or a time string; a missing value is a
/// missing field.
fn time(field: &Field) -> Result<i64, InvalidReason> {
    match field {
        Field::Null => Err(InvalidReason::MissingField),
        Field::TimestampMillis(ms) => Ok(*ms),
        Field::TimestampMicros(us) => Ok(us.div_euclid(1_000)),
        Field::Str(text) => parse_timestamp(text.as_bytes()).ok_or(InvalidReason::BadField),
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

fn unreadable(origin: &str, error: &parquet::errors::ParquetError) -> InputError {
    InputError::Read { origin: origin.to_owned(), source: std::io::Error::other(error.to_string()) }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    use super::*;
    use crate::input::{CsvLayout, parse_csv_row};

    /// One column's values for [`write`]; `None` is a null (the column must be optional).
    enum Column {
        Micros(Vec<Option<i64>>),
        Text(Vec<Option<&'static str>>),
        Double(Vec<Option<f64>>),
        Int(Vec<Option<i32>>),
    }

    /// Writes `row_groups` (each a list of columns in the schema's order) to a Parquet file.
    fn write(dir: &Path, schema: &str, row_groups: Vec<Vec<Column>>) -> std::path::PathBuf {
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
                    Column::Micros(values) => {
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

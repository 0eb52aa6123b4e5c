//! One archive file being written: rows buffered into row groups and encoded into an in-memory
//! Parquet file, so a file costs about its encoded size in memory while it fills.

use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::ColumnPath;
use parquet::schema::types::Type;

use super::{ArchiveError, ArchiveRow};

/// The archive's Parquet schema, in the column order rows are written. Times are UTC instants in
/// milliseconds, which Athena, Spark and DuckDB read as timestamps.
pub const SCHEMA: &str = "message trip {
    REQUIRED INT64 trip_id;
    REQUIRED INT64 pickup_datetime (TIMESTAMP(MILLIS,true));
    REQUIRED INT64 dropoff_datetime (TIMESTAMP(MILLIS,true));
    REQUIRED DOUBLE pickup_latitude;
    REQUIRED DOUBLE pickup_longitude;
    REQUIRED DOUBLE dropoff_latitude;
    REQUIRED DOUBLE dropoff_longitude;
    REQUIRED BYTE_ARRAY shard_id (STRING);
    REQUIRED BYTE_ARRAY sequence_number (STRING);
    REQUIRED INT64 sub_sequence_number;
    OPTIONAL INT64 arrival_time (TIMESTAMP(MILLIS,true));
}";

/// Rows per row group: groups of about 1–2 MiB encoded, large enough for good compression and
/// column statistics, small enough that the unencoded buffer stays a few MiB.
const ROW_GROUP_ROWS: usize = 65_536;

/// An unencoded row's size in the buffer, for the file-size estimate before its group is encoded.
const BUFFERED_ROW_BYTES: u64 = 24;

/// An open archive file: encoded row groups plus the rows of the group being filled.
pub(super) struct ParquetFile {
    writer: SerializedFileWriter<Vec<u8>>,
    group: Columns,
}

impl std::fmt::Debug for ParquetFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetFile")
            .field("encoded_bytes", &self.writer.bytes_written())
            .field("buffered_rows", &self.group.len())
            .finish()
    }
}

impl ParquetFile {
    /// A new, empty file.
    pub(super) fn new() -> Result<ParquetFile, ArchiveError> {
        // Chosen on the archive benchmark's CPU share: dictionaries only where values repeat
        // (the shard id), statistics per column chunk rather than per page, and Snappy.
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled(ColumnPath::from("shard_id"), true)
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_created_by(format!("taxipipeline {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = SerializedFileWriter::new(Vec::new(), schema(), Arc::new(props)).map_err(encode_error)?;
        Ok(ParquetFile { writer, group: Columns::default() })
    }

    /// Appends a row; a full row group is encoded.
    pub(super) fn push(&mut self, row: &ArchiveRow, shard_id: &ByteArray) -> Result<(), ArchiveError> {
        self.group.push(row, shard_id);
        if self.group.len() >= ROW_GROUP_ROWS { self.flush_group() } else { Ok(()) }
    }

    /// The file's size so far: encoded bytes plus an estimate for the buffered rows.
    pub(super) fn estimated_bytes(&self) -> u64 {
        self.writer.bytes_written() as u64 + self.group.len() as u64 * BUFFERED_ROW_BYTES
    }

    /// The complete file's bytes.
    pub(super) fn finish(mut self) -> Result<Vec<u8>, ArchiveError> {
        self.flush_group()?;
        self.writer.into_inner().map_err(encode_error)
    }

    fn flush_group(&mut self) -> Result<(), ArchiveError> {
        if self.group.len() == 0 {
            return Ok(());
        }
        let group = std::mem::take(&mut self.group);
        let mut rows = self.writer.next_row_group().map_err(encode_error)?;
        let mut index = 0;
        while let Some(mut column) = rows.next_column().map_err(encode_error)? {
            let written = match index {
                0 => column.typed::<Int64Type>().write_batch(&group.trip_id, None, None),
                1 => column.typed::<Int64Type>().write_batch(&group.pickup, None, None),
                2 => column.typed::<Int64Type>().write_batch(&group.dropoff, None, None),
                3 => column.typed::<DoubleType>().write_batch(&group.pickup_lat, None, None),
                4 => column.typed::<DoubleType>().write_batch(&group.pickup_lon, None, None),
                5 => column.typed::<DoubleType>().write_batch(&group.dropoff_lat, None, None),
                6 => column.typed::<DoubleType>().write_batch(&group.dropoff_lon, None, None),
                7 => column.typed::<ByteArrayType>().write_batch(&group.shard_id, None, None),
                8 => column.typed::<ByteArrayType>().write_batch(&group.sequence_number, None, None),
                9 => column.typed::<Int64Type>().write_batch(&group.sub_sequence, None, None),
                _ => column.typed::<Int64Type>().write_batch(&group.arrival, Some(&group.arrival_defined), None),
            };
            written.map_err(encode_error)?;
            column.close().map_err(encode_error)?;
            index += 1;
        }
        rows.close().map_err(encode_error)?;
        Ok(())
    }
}

/// The schema of [`SCHEMA`].
pub fn schema() -> Arc<Type> {
    // The schema is a constant, parsed by the unit tests: it cannot fail at run time.
    #[allow(clippy::expect_used)]
    Arc::new(parse_message_type(SCHEMA).expect("the archive schema parses"))
}

fn encode_error(e: parquet::errors::ParquetError) -> ArchiveError {
    ArchiveError::Encode(e.to_string())
}

/// The buffered rows of one row group, column by column.
#[derive(Default)]
struct Columns {
    trip_id: Vec<i64>,
    pickup: Vec<i64>,
    dropoff: Vec<i64>,
    pickup_lat: Vec<f64>,
    pickup_lon: Vec<f64>,
    dropoff_lat: Vec<f64>,
    dropoff_lon: Vec<f64>,
    shard_id: Vec<ByteArray>,
    sequence_number: Vec<ByteArray>,
    sub_sequence: Vec<i64>,
    /// Arrival times of the rows that have one.
    arrival: Vec<i64>,
    /// Per row: 1 when it has an arrival time (Parquet's definition level).
    arrival_defined: Vec<i16>,
}

impl Columns {
    fn len(&self) -> usize {
        self.trip_id.len()
    }

    fn push(&mut self, row: &ArchiveRow, shard_id: &ByteArray) {
        let trip = &row.trip;
        // Trip ids beyond i64 do not occur (row numbers and generated ids); saturate rather than wrap.
        self.trip_id.push(i64::try_from(trip.trip_id).unwrap_or(i64::MAX));
        self.pickup.push(trip.pickup_time);
        self.dropoff.push(trip.dropoff_time);
        self.pickup_lat.push(trip.pickup.lat);
        self.pickup_lon.push(trip.pickup.lon);
        self.dropoff_lat.push(trip.dropoff.lat);
        self.dropoff_lon.push(trip.dropoff.lon);
        self.shard_id.push(shard_id.clone());
        self.sequence_number.push(ByteArray::from(row.id.sequence_number.as_bytes().to_vec()));
        self.sub_sequence.push(i64::try_from(row.id.sub_sequence).unwrap_or(i64::MAX));
        match row.arrival {
            Some(t) => {
                self.arrival.push(t);
                self.arrival_defined.push(1);
            }
            None => self.arrival_defined.push(0),
        }
    }
}

//! The input layer: parsing records and reading input files.
//!
//! - [`parse_json_record`]: one Kinesis record's data or one JSON-lines line (hot path);
//! - [`CsvLayout`], [`parse_csv_row`]: NYC TLC yellow-trip CSV rows;
//! - [`ZoneCentroids`], [`ZoneLayout`]: trips placed by taxi zone, at their zones' centroids;
//! - [`ChunkReader`]: reads a plain, gzip or zstd file (detected from content) as [`Chunk`]s of
//!   complete lines, for a parallel parser downstream;
//! - [`ParquetTrips`]: the trips of a Parquet file, decoded row group by row group;
//! - [`InputReader`]: an input of several [`InputObject`]s read in order, each in its own format,
//!   as [`InputChunk`]s; [`read_records`] is the simple sequential form.
//!
//! Record numbering: data lines (the CSV header excluded) that are not blank, and Parquet rows, are
//! numbered from 1 across all the objects of an input; blank lines are skipped everywhere and are
//! not records. A CSV row's or Parquet row's `trip_id` is its number, so the same trips give the
//! same results however they are split into objects.

mod csv;
mod json;
mod object;
mod parquet;
mod ranges;
mod reader;
mod sequence;
mod zones;

use std::path::PathBuf;
use std::sync::Arc;

pub use self::parquet::ParquetTrips;
pub use csv::{CsvLayout, parse_csv_row};
pub use json::parse_json_record;
pub use object::{InputObject, LocalFile, RandomAccess};
pub use reader::{Chunk, ChunkReader};
pub use sequence::{ChunkData, InputChunk, InputReader, Records, read_records};
pub use zones::{CentroidError, ZoneCentroids, ZoneLayout, parse_zone_row};

use crate::event::{InvalidReason, ParsedRecord};

/// The format of an input file of lines.
#[derive(Clone, Debug, PartialEq)]
pub enum Format {
    /// One JSON record per line.
    JsonLines,
    /// NYC TLC yellow-trip CSV with this layout (the header line is not a record).
    Csv(CsvLayout),
    /// NYC TLC CSV that places trips by taxi zone, read with a centroid table.
    CsvZones(ZoneLayout, Arc<ZoneCentroids>),
}

/// The longest input line read as a record: the largest record Kinesis accepts. Longer lines are
/// [`InvalidReason::LineTooLong`]; the reader keeps only their first `MAX_LINE_BYTES + 1` bytes.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Parses one non-blank line of a file in `format`; `record_no` (1-based) is the CSV `trip_id`.
pub fn parse_line(format: &Format, line: &[u8], record_no: u64) -> ParsedRecord {
    if line.len() > MAX_LINE_BYTES {
        return Err(InvalidReason::LineTooLong);
    }
    match format {
        Format::JsonLines => parse_json_record(line),
        Format::Csv(layout) => parse_csv_row(layout, line, record_no),
        Format::CsvZones(layout, centroids) => parse_zone_row(layout, centroids, line, record_no),
    }
}

/// True when `line` holds only ASCII whitespace (or nothing): such lines are not records.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Why an input file could not be read. Invalid records are never errors: they are
/// [`ParsedRecord`] values.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened.
    #[error("failed to open input file {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading (or decompressing) failed.
    #[error("failed to read {origin}: {source}")]
    Read {
        /// The file (`input file …`) or `input stream`.
        origin: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The first non-blank line is neither a JSON object nor a CSV header.
    #[error(
        "failed to detect the format of {origin}: it is neither JSON lines (a line starting with '{{') nor a TLC CSV header; it starts with \"{preview}\""
    )]
    UnknownFormat {
        /// The file or stream.
        origin: String,
        /// The first bytes, escaped.
        preview: String,
    },
    /// A CSV header that lacks columns a trip needs.
    #[error(
        "failed to recognise the CSV header of {origin} as a TLC yellow-trip layout: no column for {missing}; header: \"{header}\""
    )]
    UnknownCsvHeader {
        /// The file or stream.
        origin: String,
        /// The needed columns not found, each with the names accepted for it.
        missing: String,
        /// The header line, escaped (shortened when long).
        header: String,
    },
    /// A TLC header or Parquet schema that places trips by taxi zone (`PULocationID`,
    /// `DOLocationID`) instead of coordinates, as the TLC's trip files from July 2016 on do, read
    /// without a zone centroid table.
    #[error(
        "{origin} places trips by taxi zone (PULocationID, DOLocationID), as the TLC's trip files from July 2016 on \
         do; the analyses need pickup and dropoff coordinates, which the yellow-trip files of January 2009 to June \
         2016 carry. To place each trip at its zones' centroids, pass --zone-centroids FILE: a CSV file with a \
         header line, then one LocationID,lat,lon line per taxi zone"
    )]
    ZoneIdsInsteadOfCoordinates {
        /// The file or stream.
        origin: String,
    },
    /// A Parquet file (magic `PAR1`) given as a stream: Parquet is read by byte ranges, its
    /// footer first.
    #[error(
        "{origin} is a Parquet file, which is read by byte ranges (its footer first), not front to back: give it as \
         an input file or object"
    )]
    ParquetStream {
        /// The stream.
        origin: String,
    },
    /// The input holds no non-blank line.
    #[error("failed to detect the format of {origin}: it is empty")]
    Empty {
        /// The file or stream.
        origin: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines() {
        assert!(is_blank(b""));
        assert!(is_blank(b" \t\r"));
        assert!(!is_blank(b" x "));
        assert!(!is_blank("\u{a0}".as_bytes()));
    }

    #[test]
    fn parse_line_dispatches() {
        let layout = CsvLayout {
            pickup_time: 0,
            dropoff_time: 1,
            pickup_lat: 2,
            pickup_lon: 3,
            dropoff_lat: 4,
            dropoff_lon: 5,
            columns: 6,
        };
        let row = b"2016-01-01 00:00:00,2016-01-01 00:10:00,40.1,-73.1,40.2,-73.2";
        let Ok(crate::event::Event::Trip(t)) = parse_line(&Format::Csv(layout), row, 42) else {
            panic!("not a trip");
        };
        assert_eq!(t.trip_id, 42);
        assert_eq!(parse_line(&Format::JsonLines, row, 42), Err(crate::event::InvalidReason::NotJson));
    }
}

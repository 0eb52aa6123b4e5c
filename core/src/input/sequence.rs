//! An input as a list of objects read in order, each in its own format: JSON lines or TLC CSV
//! (plain, gzip or zstd) through a [`ChunkReader`], or Parquet through [`ParquetTrips`].
//!
//! Records are numbered across objects (the third record of the second object after one of ten
//! records is record 13), so CSV and Parquet trip ids, and so the results, do not depend on how
//! the trips are split into objects. Lines travel as they are, for a parallel parser downstream;
//! Parquet rows are decoded here, a chunk's worth at a time, and travel as parsed records.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use super::reader::{PARQUET_MAGIC, numbered_lines, read_magic};
use super::{ChunkReader, Format, InputError, InputObject, LocalFile, ParquetTrips, ZoneCentroids, parse_line};
use crate::event::ParsedRecord;

/// Bytes a decoded Parquet row is counted as when sizing a chunk: a chunk of `target_bytes`
/// holds about as many Parquet rows as it would hold JSON trip lines.
const PARQUET_ROW_BYTES: usize = 128;
/// Chunk size used by [`Records`].
const RECORDS_CHUNK_BYTES: usize = 1 << 20;

/// A run of consecutive records of an input, all from one object.
#[derive(Clone, Debug, PartialEq)]
pub struct InputChunk {
    /// Number of the first record (1-based, counted across the input's objects).
    pub first_record: u64,
    /// How many records the chunk holds.
    pub records: u32,
    /// The records.
    pub data: ChunkData,
}

/// The records of a chunk: lines still to be parsed, or rows already decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum ChunkData {
    /// Complete lines of a JSON-lines or CSV object, parsed with `format`.
    Lines {
        /// The object's format.
        format: Format,
        /// The lines, each ending in `\n` except possibly the object's last.
        data: Vec<u8>,
    },
    /// Rows of a Parquet object, decoded.
    Trips(Vec<ParsedRecord>),
}

impl InputChunk {
    /// The non-blank lines of a [`ChunkData::Lines`] chunk as `(record_no, line)` (nothing for
    /// decoded rows).
    pub fn lines(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let data = match &self.data {
            ChunkData::Lines { data, .. } => &data[..],
            ChunkData::Trips(_) => &[],
        };
        numbered_lines(data, self.first_record)
    }

    /// Every record as `(record_no, its line if it has one, the parsed record)`, in order.
    pub fn records(&self) -> impl Iterator<Item = (u64, Option<&[u8]>, ParsedRecord)> {
        let (lines, rows) = match &self.data {
            ChunkData::Lines { format, .. } => {
                (Some(self.lines().map(move |(no, line)| (no, Some(line), parse_line(format, line, no)))), None)
            }
            ChunkData::Trips(rows) => {
                (None, Some(rows.iter().zip(self.first_record..).map(|(row, no)| (no, None, *row))))
            }
        };
        lines.into_iter().flatten().chain(rows.into_iter().flatten())
    }
}

/// The object being read.
enum Current {
    Lines(ChunkReader),
    Parquet(ParquetTrips),
}

/// Reads the objects of an input in order as [`InputChunk`]s.
pub struct InputReader {
    /// Objects not opened yet.
    objects: VecDeque<Arc<dyn InputObject>>,
    /// The centroid table for inputs that place trips by taxi zone.
    zones: Option<Arc<ZoneCentroids>>,
    current: Option<Current>,
    /// Number of the next record to hand out.
    next_record: u64,
}

impl std::fmt::Debug for InputReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputReader")
            .field("objects_left", &self.objects.len())
            .field("next_record", &self.next_record)
            .finish_non_exhaustive()
    }
}

impl InputReader {
    /// Opens the first of `objects` (so a missing file or an unknown format is reported at once);
    /// the others are opened when reading reaches them. With `zones`, CSV and Parquet objects
    /// that place trips by taxi zone are read, each trip at its zones' centroids.
    pub fn new(
        objects: Vec<Arc<dyn InputObject>>,
        zones: Option<Arc<ZoneCentroids>>,
    ) -> Result<InputReader, InputError> {
        let mut reader = InputReader { objects: objects.into(), zones, current: None, next_record: 1 };
        reader.open_next()?;
        Ok(reader)
    }

    /// An input of one stream of lines, already opened.
    pub fn from_lines(reader: ChunkReader) -> InputReader {
        let next_record = reader.next_record_no();
        InputReader { objects: VecDeque::new(), zones: None, current: Some(Current::Lines(reader)), next_record }
    }

    /// The number the next record handed out will have (1 before any).
    pub fn next_record_no(&self) -> u64 {
        self.next_record
    }

    /// Opens the next object; `false` when none is left.
    fn open_next(&mut self) -> Result<bool, InputError> {
        let Some(object) = self.objects.pop_front() else {
            self.current = None;
            return Ok(false);
        };
        let mut raw = object.stream()?;
        let head = read_magic(&mut raw, object.origin())?;
        let current = if head == PARQUET_MAGIC {
            // Parquet is read by ranges, footer first: the stream is not needed.
            drop(raw);
            let mut trips = ParquetTrips::from_object(&*object, self.zones.clone())?;
            trips.number_from(self.next_record);
            Current::Parquet(trips)
        } else {
            let mut lines = ChunkReader::from_head(head, raw, object.origin().to_owned(), self.zones.clone())?;
            lines.number_from(self.next_record);
            Current::Lines(lines)
        };
        self.current = Some(current);
        Ok(true)
    }

    /// The next run of records, about `target_bytes` of lines or as many Parquet rows as would
    /// make that many bytes of JSON, or `None` at the end of the last object. A chunk holds at
    /// least one record and never spans two objects.
    pub fn next_chunk(&mut self, target_bytes: usize) -> Result<Option<InputChunk>, InputError> {
        loop {
            let chunk = match &mut self.current {
                None => {
                    if self.open_next()? {
                        continue;
                    }
                    return Ok(None);
                }
                Some(Current::Lines(reader)) => reader.next_chunk(target_bytes)?.map(|chunk| InputChunk {
                    first_record: chunk.first_record,
                    records: chunk.records,
                    data: ChunkData::Lines { format: reader.format().clone(), data: chunk.data },
                }),
                Some(Current::Parquet(trips)) => {
                    let rows = (target_bytes / PARQUET_ROW_BYTES).clamp(1, u32::MAX as usize);
                    let decoded = trips.by_ref().take(rows).collect::<Result<Vec<_>, _>>()?;
                    (!decoded.is_empty()).then(|| InputChunk {
                        first_record: self.next_record,
                        records: u32::try_from(decoded.len()).unwrap_or(u32::MAX),
                        data: ChunkData::Trips(decoded),
                    })
                }
            };
            match chunk {
                Some(chunk) => {
                    self.next_record = chunk.first_record + u64::from(chunk.records);
                    return Ok(Some(chunk));
                }
                None => self.current = None,
            }
        }
    }

    /// Skips the next `n` records (to resume after them), across objects, returning how many
    /// were skipped: fewer than `n` only at the end of the input. Parquet row groups wholly
    /// skipped are not read.
    pub fn skip_records(&mut self, n: u64) -> Result<u64, InputError> {
        let mut skipped = 0;
        while skipped < n {
            let got = match &mut self.current {
                None => {
                    if self.open_next()? {
                        continue;
                    }
                    break;
                }
                Some(Current::Lines(reader)) => reader.skip_records(n - skipped)?,
                Some(Current::Parquet(trips)) => trips.skip_rows(n - skipped)?,
            };
            skipped += got;
            self.next_record += got;
            if skipped < n {
                // The object ended first.
                self.current = None;
            }
        }
        Ok(skipped)
    }

    /// Turns the reader into a sequential iterator of parsed records.
    pub fn into_records(self) -> Records {
        Records { reader: self, queue: VecDeque::new(), done: false }
    }
}

/// Opens the file at `path` (JSON lines, TLC CSV with coordinates, or Parquet) and reads its
/// records in order.
pub fn read_records(path: &Path) -> Result<Records, InputError> {
    Ok(InputReader::new(vec![Arc::new(LocalFile::new(path))], None)?.into_records())
}

/// Sequential records of an input: `(record_no, parsed record)`, or a read error (after which the
/// iterator ends).
pub struct Records {
    reader: InputReader,
    queue: VecDeque<(u64, ParsedRecord)>,
    done: bool,
}

impl Iterator for Records {
    type Item = Result<(u64, ParsedRecord), InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.queue.pop_front() {
                return Some(Ok(r));
            }
            if self.done {
                return None;
            }
            match self.reader.next_chunk(RECORDS_CHUNK_BYTES) {
                Ok(Some(chunk)) => self.queue.extend(chunk.records().map(|(no, _, parsed)| (no, parsed))),
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::event::{Event, InvalidReason};
    use crate::input::parquet::zone_tests::{modern_file, zones};

    const JSON_TRIP: &str = r#"{"type":"trip","trip_id":99,"pickup_datetime":"2023-01-01T00:00:00Z","dropoff_datetime":"2023-01-01T00:10:00Z","pickup_latitude":40.75,"pickup_longitude":-73.98,"dropoff_latitude":40.64,"dropoff_longitude":-73.78}"#;
    const CSV_ZONES: &str = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,PULocationID,DOLocationID\n\
                             2,2023-01-01 00:32:10,2023-01-01 00:40:36,161,132\n\
                             \n\
                             2,2023-01-01 00:33:10,2023-01-01 00:41:36,161,999\n";

    fn file(dir: &Path, name: &str, content: &[u8]) -> Arc<dyn InputObject> {
        let path = dir.join(name);
        std::fs::write(&path, content).expect("write");
        Arc::new(LocalFile::new(path))
    }

    /// A JSON-lines file of 3 records, a zone CSV of 2 (gzip) and the 6-row Parquet file.
    fn three_formats(dir: &Path) -> Vec<Arc<dyn InputObject>> {
        let json = format!("{JSON_TRIP}\nnot json\n{JSON_TRIP}\n");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, CSV_ZONES.as_bytes()).expect("gzip");
        let parquet: PathBuf = modern_file(dir);
        vec![
            file(dir, "a.jsonl", json.as_bytes()),
            file(dir, "b.csv.gz", &gz.finish().expect("gzip")),
            Arc::new(LocalFile::new(parquet)),
        ]
    }

    fn all(reader: InputReader) -> Vec<(u64, ParsedRecord)> {
        reader.into_records().map(|r| r.expect("reads")).collect()
    }

    fn trip_id(record: &ParsedRecord) -> Option<u64> {
        match record {
            Ok(Event::Trip(t)) => Some(t.trip_id),
            _ => None,
        }
    }

    #[test]
    fn objects_of_any_format_are_numbered_across_the_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = all(InputReader::new(three_formats(dir.path()), Some(zones())).expect("open"));
        let numbers: Vec<u64> = records.iter().map(|r| r.0).collect();
        assert_eq!(numbers, (1..=11).collect::<Vec<_>>());
        // JSON keeps its own trip ids; CSV rows and Parquet rows take their record numbers.
        let ids: Vec<Option<u64>> = records.iter().map(|r| trip_id(&r.1)).collect();
        assert_eq!(ids, [Some(99), None, Some(99), Some(4), None, Some(6), Some(7), Some(8), Some(9), None, Some(11)]);
        assert_eq!(records[1].1, Err(InvalidReason::NotJson));
        assert_eq!(records[4].1, Err(InvalidReason::UnknownZone));
        assert_eq!(records[9].1, Err(InvalidReason::UnknownZone));

        // Chunks never span two objects and carry each object's own format.
        let mut reader = InputReader::new(three_formats(dir.path()), Some(zones())).expect("open");
        let mut kinds = Vec::new();
        while let Some(chunk) = reader.next_chunk(1 << 20).expect("chunk") {
            kinds.push(match &chunk.data {
                ChunkData::Lines { format: Format::JsonLines, .. } => ("json", chunk.first_record, chunk.records),
                ChunkData::Lines { format: Format::CsvZones(..), .. } => ("zones", chunk.first_record, chunk.records),
                ChunkData::Lines { format: Format::Csv(_), .. } => ("csv", chunk.first_record, chunk.records),
                ChunkData::Trips(_) => ("parquet", chunk.first_record, chunk.records),
            });
        }
        assert_eq!(kinds, [("json", 1, 3), ("zones", 4, 2), ("parquet", 6, 6)]);
    }

    #[test]
    fn skipping_crosses_objects_and_resumes_at_the_same_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let everything = all(InputReader::new(three_formats(dir.path()), Some(zones())).expect("open"));
        for n in 0..=12u64 {
            let mut reader = InputReader::new(three_formats(dir.path()), Some(zones())).expect("open");
            assert_eq!(reader.skip_records(n).expect("skip"), n.min(11), "skip {n}");
            assert_eq!(reader.next_record_no(), n.min(11) + 1);
            assert_eq!(all(reader), everything[n.min(11) as usize..], "skip {n}");
        }
        // Tiny chunks give the same records.
        let mut reader = InputReader::new(three_formats(dir.path()), Some(zones())).expect("open");
        let mut tiny = Vec::new();
        while let Some(chunk) = reader.next_chunk(1).expect("chunk") {
            assert_eq!(chunk.first_record, tiny.len() as u64 + 1);
            tiny.extend(chunk.records().map(|(no, _, parsed)| (no, parsed)));
        }
        assert_eq!(tiny, everything);
    }

    #[test]
    fn without_a_centroid_table_zone_inputs_are_refused_when_reached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = three_formats(dir.path());
        let mut records = InputReader::new(objects, None).expect("the first object is JSON").into_records();
        for _ in 0..3 {
            assert!(records.next().expect("a record").is_ok());
        }
        let err = records.next().expect("an error").expect_err("zone CSV without a table");
        assert!(matches!(err, InputError::ZoneIdsInsteadOfCoordinates { .. }), "{err}");
        assert!(err.to_string().starts_with(&format!("input file {}", dir.path().join("b.csv.gz").display())), "{err}");
        assert!(records.next().is_none(), "the error ends the records");
        // A missing first file is reported at once.
        let missing: Vec<Arc<dyn InputObject>> = vec![Arc::new(LocalFile::new(dir.path().join("nope.jsonl")))];
        assert!(matches!(InputReader::new(missing, None), Err(InputError::Open { .. })));
    }

    #[test]
    fn read_records_reads_parquet_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = modern_file(dir.path());
        let Err(err) = read_records(&path) else { panic!("zones without a table") };
        assert!(matches!(err, InputError::ZoneIdsInsteadOfCoordinates { .. }), "{err}");
    }
}

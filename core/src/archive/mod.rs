//! The archive of raw trips: every trip a worker reads, written once to Parquet files under
//! Hive-style event-hour partitions (`dt=2016-01-01/hour=07/`).
//!
//! Exactly once, after any crash, handoff or reshard, rests on three rules:
//! - **A file's content is fixed by its name.** A file holds the rows of one shard and one
//!   partition with ids (sequence number, sub-sequence number) from its first to its last,
//!   and is named after them; Kinesis never changes a shard's records, so writing a name again
//!   writes the same rows.
//! - **A file is decided before it is written.** A checkpoint lists the files to close
//!   ([`ClosingMark`]: partition, first and last id) before any of them is uploaded, and the
//!   files still open ([`OpenMark`]: partition and first id). Its successor drops a closing
//!   mark only once that file is uploaded.
//! - **Rows not yet uploaded are read again.** A shard resumed from a checkpoint with marks is
//!   read from the earliest marked id; records up to the checkpoint's position only rebuild the
//!   marked files (they were processed already), and nothing else is archived twice.
//!
//! This module is pure: [`ShardArchive`] routes rows to files and encodes them; the worker
//! uploads what it hands out and writes the marks into the shard's checkpoint.

mod encode;

use std::cmp::Ordering;
use std::collections::BTreeMap;

use ::parquet::data_type::ByteArray;
use serde::{Deserialize, Serialize};

use crate::event::{Millis, Trip};
use crate::time::format_timestamp;

use self::encode::ParquetFile;
pub use self::encode::{SCHEMA, schema};

/// Why an archive file could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The Parquet encoder failed (a bug, or memory exhausted).
    #[error("failed to encode an archive file as Parquet: {0}")]
    Encode(String),
}

/// Where a row is in its shard: a Kinesis sequence number and, inside a KPL aggregate, the
/// index of the user record (0 for a plain record).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RowId {
    /// The Kinesis record's sequence number (decimal digits).
    pub sequence_number: String,
    /// The user record's index inside an aggregate; 0 for a plain record.
    #[serde(default)]
    pub sub_sequence: u64,
}

impl RowId {
    /// The id of user record `sub_sequence` of the record `sequence_number`.
    pub fn new(sequence_number: impl Into<String>, sub_sequence: u64) -> RowId {
        RowId { sequence_number: sequence_number.into(), sub_sequence }
    }
}

impl Ord for RowId {
    /// Shard order: sequence numbers compare as decimal numbers, then sub-sequence numbers.
    fn cmp(&self, other: &RowId) -> Ordering {
        compare_sequence_numbers(&self.sequence_number, &other.sequence_number)
            .then(self.sub_sequence.cmp(&other.sub_sequence))
    }
}

impl PartialOrd for RowId {
    fn partial_cmp(&self, other: &RowId) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares two Kinesis sequence numbers (decimal digits without leading zeros) numerically.
pub fn compare_sequence_numbers(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// An event hour: the partition a trip is archived under, by its event time (dropoff).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Partition {
    /// The hour's first millisecond (UTC).
    pub hour_start: Millis,
}

const MS_PER_HOUR: Millis = 3_600_000;

impl Partition {
    /// The partition of a trip.
    pub fn of(trip: &Trip) -> Partition {
        Partition { hour_start: trip.event_time().div_euclid(MS_PER_HOUR) * MS_PER_HOUR }
    }

    /// Its Hive-style path: `dt=2016-01-01/hour=07`.
    pub fn path(&self) -> String {
        let stamp = format_timestamp(self.hour_start);
        let (date, time) = stamp.split_once('T').unwrap_or((&stamp, "00"));
        format!("dt={date}/hour={}", &time[..2.min(time.len())])
    }
}

/// One archived trip: the trip as read, where it is in its shard and when it arrived.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveRow {
    /// The trip.
    pub trip: Trip,
    /// Its place in the shard.
    pub id: RowId,
    /// Kinesis's approximate arrival time.
    pub arrival: Option<Millis>,
}

/// A file still open at a checkpoint: its rows from `first` on are read again after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenMark {
    /// Its partition.
    pub partition: Partition,
    /// Its first row.
    pub first: RowId,
}

/// A file decided at a checkpoint and not yet known to be uploaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosingMark {
    /// Its partition.
    pub partition: Partition,
    /// Its first row.
    pub first: RowId,
    /// Its last row.
    pub last: RowId,
    /// How many rows it holds.
    pub rows: u64,
}

/// The archive's part of a shard checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveMarks {
    /// Files open at the checkpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open: Vec<OpenMark>,
    /// Files decided and not yet uploaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub closing: Vec<ClosingMark>,
}

impl ArchiveMarks {
    /// True when no file is open or closing.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.closing.is_empty()
    }

    /// The earliest row a restart must read again, if any.
    pub fn earliest(&self) -> Option<&RowId> {
        self.open.iter().map(|m| &m.first).chain(self.closing.iter().map(|m| &m.first)).min()
    }
}

/// A complete file, ready to upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosedFile {
    /// Its partition.
    pub partition: Partition,
    /// Its first row.
    pub first: RowId,
    /// Its last row.
    pub last: RowId,
    /// How many rows it holds.
    pub rows: u64,
    /// The Parquet file.
    pub bytes: Vec<u8>,
    /// When its first row was added (wall clock), for the archive's lag.
    pub opened_at: Millis,
}

impl ClosedFile {
    /// Its key under the archive's prefix:
    /// `dt=…/hour=…/<shard>-<first seq>-<first sub>-<last seq>-<last sub>.parquet`.
    pub fn key(&self, shard_id: &str) -> String {
        file_key(shard_id, self.partition, &self.first, &self.last)
    }

    fn mark(&self) -> ClosingMark {
        ClosingMark { partition: self.partition, first: self.first.clone(), last: self.last.clone(), rows: self.rows }
    }
}

/// The key of the file of `shard_id`'s rows `first..=last` in `partition`.
pub fn file_key(shard_id: &str, partition: Partition, first: &RowId, last: &RowId) -> String {
    format!(
        "{}/{shard_id}-{}-{}-{}-{}.parquet",
        partition.path(),
        first.sequence_number,
        first.sub_sequence,
        last.sequence_number,
        last.sub_sequence
    )
}

/// A file being filled.
#[derive(Debug)]
struct OpenFile {
    first: RowId,
    /// Its last row so far (`None` while a restored file has none yet).
    last: Option<RowId>,
    rows: u64,
    file: ParquetFile,
    opened_at: Millis,
}

impl OpenFile {
    fn new(first: RowId, opened_at: Millis) -> Result<OpenFile, ArchiveError> {
        Ok(OpenFile { first, last: None, rows: 0, file: ParquetFile::new()?, opened_at })
    }

    fn push(&mut self, row: ArchiveRow, shard_id: &ByteArray) -> Result<(), ArchiveError> {
        self.file.push(&row, shard_id)?;
        self.last = Some(row.id);
        self.rows += 1;
        Ok(())
    }

    fn finish(self, partition: Partition) -> Result<Option<ClosedFile>, ArchiveError> {
        let Some(last) = self.last else { return Ok(None) };
        let bytes = self.file.finish()?;
        Ok(Some(ClosedFile { partition, first: self.first, last, rows: self.rows, bytes, opened_at: self.opened_at }))
    }
}

/// A file decided at an earlier checkpoint, rebuilt from the rows read again.
#[derive(Debug)]
struct Rebuild {
    mark: ClosingMark,
    file: OpenFile,
}

/// A file in the state between its decision and its upload.
#[derive(Debug)]
enum Closing {
    /// Rows of it are still to be read again.
    Rebuilding(Box<Rebuild>),
    /// Complete.
    Ready(ClosedFile),
}

impl Closing {
    fn mark(&self) -> ClosingMark {
        match self {
            Closing::Rebuilding(r) => r.mark.clone(),
            Closing::Ready(f) => f.mark(),
        }
    }

    fn opened_at(&self) -> Millis {
        match self {
            Closing::Rebuilding(r) => r.file.opened_at,
            Closing::Ready(f) => f.opened_at,
        }
    }
}

/// What a rebuilt file holds that its mark did not promise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the archive file {key} was decided with {expected} rows but {found} were read again")]
pub struct RebuildMismatch {
    /// The file's key.
    pub key: String,
    /// Rows its mark names.
    pub expected: u64,
    /// Rows read again.
    pub found: u64,
}

/// One shard's archive: its open files (one per partition), and the files decided but not yet
/// uploaded.
#[derive(Debug)]
pub struct ShardArchive {
    shard_id: String,
    /// The shard id as the files store it (shared by every row).
    shard_bytes: ByteArray,
    open: BTreeMap<Partition, OpenFile>,
    closing: Vec<Closing>,
}

impl ShardArchive {
    /// An archive with nothing open (a shard read from its start, or resumed without marks).
    pub fn new(shard_id: impl Into<String>) -> ShardArchive {
        let shard_id = shard_id.into();
        let shard_bytes = ByteArray::from(shard_id.as_bytes().to_vec());
        ShardArchive { shard_id, shard_bytes, open: BTreeMap::new(), closing: Vec::new() }
    }

    /// Resumes from the marks of the checkpoint a shard restarts from; `now` is the wall clock.
    pub fn resume(
        shard_id: impl Into<String>,
        marks: &ArchiveMarks,
        now: Millis,
    ) -> Result<ShardArchive, ArchiveError> {
        let mut archive = ShardArchive::new(shard_id);
        for mark in &marks.open {
            archive.open.insert(mark.partition, OpenFile::new(mark.first.clone(), now)?);
        }
        for mark in &marks.closing {
            let file = OpenFile::new(mark.first.clone(), now)?;
            archive.closing.push(Closing::Rebuilding(Box::new(Rebuild { mark: mark.clone(), file })));
        }
        Ok(archive)
    }

    /// The shard.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// Adds a row read for the first time.
    pub fn push(&mut self, row: ArchiveRow, now: Millis) -> Result<(), ArchiveError> {
        let partition = Partition::of(&row.trip);
        let file = match self.open.entry(partition) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(OpenFile::new(row.id.clone(), now)?),
        };
        file.push(row, &self.shard_bytes)
    }

    /// Offers a row read again after a restart (it was processed before): it goes into the
    /// marked file that covers it, if any; rows of files already uploaded are dropped. A rebuilt
    /// file whose last row arrives becomes ready; one whose row count differs from its mark is
    /// reported (and kept, with the rows read).
    pub fn push_again(&mut self, row: ArchiveRow) -> Result<Option<RebuildMismatch>, ArchiveError> {
        let partition = Partition::of(&row.trip);
        let rebuild = self.closing.iter_mut().position(|c| {
            matches!(c, Closing::Rebuilding(r) if r.mark.partition == partition && r.mark.first <= row.id && row.id <= r.mark.last)
        });
        if let Some(index) = rebuild {
            let Closing::Rebuilding(r) = &mut self.closing[index] else { return Ok(None) };
            let complete = row.id == r.mark.last;
            r.file.push(row, &self.shard_bytes)?;
            if !complete {
                return Ok(None);
            }
            let Closing::Rebuilding(r) = self.closing.remove(index) else { return Ok(None) };
            let (expected, found) = (r.mark.rows, r.file.rows);
            let Some(closed) = r.file.finish(partition)? else { return Ok(None) };
            let mismatch =
                (expected != found).then(|| RebuildMismatch { key: closed.key(&self.shard_id), expected, found });
            self.closing.insert(index, Closing::Ready(closed));
            return Ok(mismatch);
        }
        if let Some(file) = self.open.get_mut(&partition)
            && file.first <= row.id
        {
            file.push(row, &self.shard_bytes)?;
        }
        Ok(None)
    }

    /// Closes the open files that hold at least `max_bytes`, or whose first row was added at least
    /// `max_age_ms` before `now`. Not while rows are being read again (see [`ShardArchive::close_all`]).
    pub fn close_due(&mut self, now: Millis, max_bytes: u64, max_age_ms: u64) -> Result<(), ArchiveError> {
        let max_age = Millis::try_from(max_age_ms).unwrap_or(Millis::MAX);
        let due: Vec<Partition> = self
            .open
            .iter()
            .filter(|(_, f)| f.rows > 0 && (f.file.estimated_bytes() >= max_bytes || now - f.opened_at >= max_age))
            .map(|(p, _)| *p)
            .collect();
        for partition in due {
            self.close(partition)?;
        }
        Ok(())
    }

    /// Closes every open file (the shard ended, or stops). Not while rows are being read again:
    /// a file closed then would miss the rows of it still to come.
    pub fn close_all(&mut self) -> Result<(), ArchiveError> {
        let all: Vec<Partition> = self.open.keys().copied().collect();
        for partition in all {
            self.close(partition)?;
        }
        Ok(())
    }

    /// Completes every rebuild with the rows it got: the shard was read to its end, so no more
    /// will come. Returns the rebuilt files that got fewer rows than their marks promised (rows
    /// Kinesis no longer holds).
    pub fn finish_rebuilds(&mut self) -> Result<Vec<RebuildMismatch>, ArchiveError> {
        let mut mismatches = Vec::new();
        for closing in std::mem::take(&mut self.closing) {
            match closing {
                Closing::Ready(file) => self.closing.push(Closing::Ready(file)),
                Closing::Rebuilding(r) => {
                    let expected = r.mark.rows;
                    let key = file_key(&self.shard_id, r.mark.partition, &r.mark.first, &r.mark.last);
                    mismatches.push(RebuildMismatch { key, expected, found: r.file.rows });
                    if let Some(file) = r.file.finish(r.mark.partition)? {
                        self.closing.push(Closing::Ready(file));
                    }
                }
            }
        }
        Ok(mismatches)
    }

    fn close(&mut self, partition: Partition) -> Result<(), ArchiveError> {
        if let Some(file) = self.open.remove(&partition)
            && let Some(closed) = file.finish(partition)?
        {
            self.closing.push(Closing::Ready(closed));
        }
        Ok(())
    }

    /// True when an open file has reached `max_bytes` (the worker then checkpoints early).
    pub fn any_full(&self, max_bytes: u64) -> bool {
        self.open.values().any(|f| f.file.estimated_bytes() >= max_bytes)
    }

    /// The marks a checkpoint records: every file open or closing.
    pub fn marks(&self) -> ArchiveMarks {
        ArchiveMarks {
            open: self.open.iter().map(|(p, f)| OpenMark { partition: *p, first: f.first.clone() }).collect(),
            closing: self.closing.iter().map(Closing::mark).collect(),
        }
    }

    /// Takes the complete files to upload. Each must be uploaded, or handed back with
    /// [`ShardArchive::give_back`], before the next checkpoint's marks are taken.
    pub fn take_ready(&mut self) -> Vec<ClosedFile> {
        let (ready, rest): (Vec<Closing>, Vec<Closing>) =
            std::mem::take(&mut self.closing).into_iter().partition(|c| matches!(c, Closing::Ready(_)));
        self.closing = rest;
        ready.into_iter().filter_map(|c| if let Closing::Ready(f) = c { Some(f) } else { None }).collect()
    }

    /// Hands back a file whose upload failed, to be tried again.
    pub fn give_back(&mut self, file: ClosedFile) {
        self.closing.push(Closing::Ready(file));
    }

    /// True while a file decided before a restart still has rows to read again.
    pub fn rebuilding(&self) -> bool {
        self.closing.iter().any(|c| matches!(c, Closing::Rebuilding(_)))
    }

    /// How long the oldest row not yet uploaded has waited, in milliseconds (0 when none).
    pub fn lag_ms(&self, now: Millis) -> u64 {
        let oldest = self
            .open
            .values()
            .filter(|f| f.rows > 0)
            .map(|f| f.opened_at)
            .chain(self.closing.iter().map(Closing::opened_at))
            .min();
        oldest.map_or(0, |t| u64::try_from(now - t).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::record::Field;

use super::*;
use crate::event::GeoPoint;

const HOUR: Millis = 3_600_000;
/// 2016-01-01T00:00:00Z.
const DAY: Millis = 1_451_606_400_000;

fn row(seq: u64, sub: u64, dropoff: Millis) -> ArchiveRow {
    let trip = Trip {
        trip_id: seq * 10 + sub,
        pickup_time: dropoff - 600_000,
        dropoff_time: dropoff,
        pickup: GeoPoint { lat: 40.75, lon: -73.99 },
        dropoff: GeoPoint { lat: 40.64, lon: -73.78 },
    };
    ArchiveRow { trip, id: RowId::new(seq.to_string(), sub), arrival: Some(DAY + seq as Millis) }
}

/// Reads a file back: (trip_id, sequence number, sub-sequence number, arrival) per row.
fn read_back(bytes: &[u8]) -> Vec<(i64, String, i64, Option<i64>)> {
    let mut file = tempfile::tempfile().expect("temp file");
    file.write_all(bytes).expect("write");
    let reader = SerializedFileReader::new(file).expect("a Parquet file");
    let schema = reader.metadata().file_metadata().schema_descr().root_schema().clone();
    assert_eq!(schema, *schema_type(), "the documented schema");
    reader
        .get_row_iter(None)
        .expect("rows")
        .map(|row| {
            let row = row.expect("row");
            let cols: BTreeMap<String, Field> = row.into_columns().into_iter().collect();
            let int = |name: &str| match &cols[name] {
                Field::Long(v) => *v,
                Field::TimestampMillis(v) => *v,
                other => panic!("{name}: {other:?}"),
            };
            let seq = match &cols["sequence_number"] {
                Field::Str(s) => s.clone(),
                other => panic!("{other:?}"),
            };
            let arrival = match &cols["arrival_time"] {
                Field::Null => None,
                Field::TimestampMillis(v) => Some(*v),
                other => panic!("{other:?}"),
            };
            (int("trip_id"), seq, int("sub_sequence_number"), arrival)
        })
        .collect()
}

fn schema_type() -> std::sync::Arc<::parquet::schema::types::Type> {
    schema()
}

#[test]
fn partitions_are_event_hours_in_hive_form() {
    let r = row(1, 0, DAY + 7 * HOUR + 59 * 60_000);
    assert_eq!(Partition::of(&r.trip).path(), "dt=2016-01-01/hour=07");
    assert_eq!(Partition::of(&row(1, 0, DAY - 1).trip).path(), "dt=2015-12-31/hour=23");
}

#[test]
fn sequence_numbers_compare_as_numbers() {
    assert!(RowId::new("9", 5) < RowId::new("10", 0));
    assert!(RowId::new("10", 0) < RowId::new("10", 1));
    assert_eq!(
        compare_sequence_numbers(
            "49590338271490256608559692538361571095921575989136588898",
            "49590338271490256608559692538361571095921575989136588898"
        ),
        Ordering::Equal
    );
}

#[test]
fn a_file_holds_its_rows_in_the_documented_schema_and_is_named_after_them() {
    let mut archive = ShardArchive::new("shardId-000000000001");
    for seq in 1..=5 {
        archive.push(row(seq, 0, DAY + HOUR), DAY).expect("push");
    }
    let mut no_arrival = row(6, 2, DAY + HOUR);
    no_arrival.arrival = None;
    archive.push(no_arrival, DAY).expect("push");
    archive.close_all().expect("close");
    let files = archive.take_ready();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].key("shardId-000000000001"), "dt=2016-01-01/hour=01/shardId-000000000001-1-0-6-2.parquet");
    let rows = read_back(&files[0].bytes);
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0], (10, "1".to_owned(), 0, Some(DAY + 1)));
    assert_eq!(rows[5], (62, "6".to_owned(), 2, None));
    assert_eq!(archive.lag_ms(DAY + 5), 0, "nothing left to upload");
}

#[test]
fn files_close_at_their_size_or_their_age() {
    let mut archive = ShardArchive::new("shardId-000000000001");
    archive.push(row(1, 0, DAY), DAY).expect("push");
    archive.push(row(2, 0, DAY + HOUR), DAY + 1_000).expect("push");
    archive.close_due(DAY + 59_999, u64::MAX, 60_000).expect("close");
    assert!(archive.take_ready().is_empty(), "younger than a minute");
    assert_eq!(archive.lag_ms(DAY + 59_999), 59_999);
    archive.close_due(DAY + 60_000, u64::MAX, 60_000).expect("close");
    let closed = archive.take_ready();
    assert_eq!(
        closed.iter().map(|f| f.first.sequence_number.as_str()).collect::<Vec<_>>(),
        ["1"],
        "the older file only"
    );
    for seq in 3..70_000 {
        archive.push(row(seq, 0, DAY + HOUR), DAY + 1_000).expect("push");
    }
    assert!(archive.any_full(40_000));
    archive.close_due(DAY + 2_000, 40_000, 60_000).expect("close");
    let closed = archive.take_ready();
    assert_eq!(closed.len(), 1);
    assert!(closed[0].bytes.len() >= 40_000 / 2, "an estimate near the encoded size: {}", closed[0].bytes.len());
    assert_eq!(read_back(&closed[0].bytes).len(), 69_998);
}

/// A shard of `n` rows over a few hours, out of order across hour boundaries, some in
/// KPL aggregates.
fn shard_rows(n: u64) -> Vec<ArchiveRow> {
    (1..=n)
        .flat_map(|seq| {
            let subs = if seq % 7 == 0 { 3 } else { 1 };
            (0..subs).map(move |sub| {
                let jitter = ((seq * 7919 + sub * 104_729) % 900) as Millis * 1_000;
                row(seq, sub, DAY + seq as Millis * 20_000 + jitter)
            })
        })
        .collect()
}

/// Runs the worker's checkpoint cycle over `rows` with crashes: every `crash_every`-th checkpoint
/// the process dies after the checkpoint is written and after `uploaded_before_crash` of its
/// files were uploaded; the next process resumes from that checkpoint. Returns the objects in the
/// archive (by key, a later write replacing an earlier one).
fn run_with_crashes(
    rows: &[ArchiveRow],
    rows_per_checkpoint: usize,
    crash_every: usize,
    uploaded_before_crash: usize,
) -> BTreeMap<String, Vec<u8>> {
    let mut store: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // The durable checkpoint: the index of the last processed row, and the marks.
    let mut checkpoint: (Option<usize>, ArchiveMarks) = (None, ArchiveMarks::default());
    let mut clock = DAY;
    let mut checkpoints = 0;
    'process: loop {
        let (position, marks) = checkpoint.clone();
        let mut archive = ShardArchive::resume("s", &marks, clock).expect("resume");
        let start = match marks.earliest() {
            Some(first) => rows.iter().position(|r| r.id == *first).expect("marked row exists"),
            None => position.map_or(0, |p| p + 1),
        };
        let mut since_checkpoint = 0;
        for (i, r) in rows.iter().enumerate().skip(start) {
            clock += 1_000;
            if position.is_some_and(|p| i <= p) {
                assert_eq!(archive.push_again(r.clone()).expect("push"), None, "rebuilt files match their marks");
                continue;
            }
            archive.push(r.clone(), clock).expect("push");
            since_checkpoint += 1;
            if since_checkpoint < rows_per_checkpoint && i + 1 < rows.len() {
                continue;
            }
            since_checkpoint = 0;
            // The checkpoint: decide, write the marks, then upload.
            if i + 1 == rows.len() {
                archive.close_all().expect("close");
            } else {
                archive.close_due(clock, 40_000, 120_000).expect("close");
            }
            checkpoint = (Some(i), archive.marks());
            checkpoints += 1;
            let crash = checkpoints % crash_every == 0;
            for (n, file) in archive.take_ready().into_iter().enumerate() {
                if crash && n >= uploaded_before_crash {
                    break;
                }
                store.insert(file.key("s"), file.bytes);
            }
            if crash {
                continue 'process;
            }
        }
        // The end: nothing may be left unwritten.
        if checkpoint.1.is_empty() {
            return store;
        }
        // The last checkpoint still lists files (uploaded after it): one more checkpoint drops them.
        checkpoint.1 = archive.marks();
        for file in archive.take_ready() {
            store.insert(file.key("s"), file.bytes);
        }
        checkpoint.1 = archive.marks();
        assert!(checkpoint.1.is_empty(), "everything uploaded");
        return store;
    }
}

fn assert_exactly_once(rows: &[ArchiveRow], store: &BTreeMap<String, Vec<u8>>) {
    let by_id: BTreeMap<(String, u64), &ArchiveRow> =
        rows.iter().map(|r| ((r.id.sequence_number.clone(), r.id.sub_sequence), r)).collect();
    let mut seen = BTreeSet::new();
    for (key, bytes) in store {
        for (trip_id, seq, sub, _) in read_back(bytes) {
            assert!(seen.insert((seq.clone(), sub)), "row {seq}/{sub} twice (again in {key})");
            let expected = by_id[&(seq.clone(), sub as u64)];
            assert_eq!(trip_id as u64, expected.trip.trip_id);
            let partition = Partition::of(&expected.trip).path();
            assert!(key.starts_with(&partition), "{key} holds a row of {partition}");
        }
    }
    assert_eq!(seen.len(), rows.len(), "every row archived");
}

#[test]
fn every_row_is_archived_exactly_once_without_crashes() {
    let rows = shard_rows(1_500);
    let store = run_with_crashes(&rows, 47, usize::MAX, 0);
    assert!(store.len() > 5, "several files: {}", store.len());
    assert_exactly_once(&rows, &store);
}

#[test]
fn every_row_is_archived_exactly_once_across_crashes_at_any_point_of_the_upload() {
    let rows = shard_rows(1_500);
    for crash_every in [1, 3] {
        for uploaded_before_crash in [0, 1, usize::MAX] {
            let store = run_with_crashes(&rows, 47, crash_every, uploaded_before_crash);
            assert_exactly_once(&rows, &store);
        }
    }
}

#[test]
fn a_rebuilt_file_with_fewer_rows_than_its_mark_is_reported() {
    let marks = ArchiveMarks {
        open: Vec::new(),
        closing: vec![ClosingMark {
            partition: Partition::of(&row(1, 0, DAY).trip),
            first: RowId::new("1", 0),
            last: RowId::new("3", 0),
            rows: 3,
        }],
    };
    let mut archive = ShardArchive::resume("s", &marks, DAY).expect("resume");
    assert!(archive.rebuilding());
    assert_eq!(archive.push_again(row(1, 0, DAY)).expect("push"), None);
    let mismatch = archive.push_again(row(3, 0, DAY)).expect("push").expect("row 2 is missing");
    assert_eq!((mismatch.expected, mismatch.found), (3, 2));
    assert!(!archive.rebuilding());
    assert_eq!(archive.take_ready().len(), 1);
}

#[test]
fn marks_round_trip_through_json() {
    let mut archive = ShardArchive::new("shardId-000000000001");
    archive.push(row(1, 0, DAY), DAY).expect("push");
    archive.push(row(2, 1, DAY + HOUR), DAY).expect("push");
    archive.close_due(DAY, 1, 0).expect("close");
    archive.push(row(3, 0, DAY), DAY).expect("push");
    let marks = archive.marks();
    assert_eq!((marks.open.len(), marks.closing.len()), (1, 2));
    let json = serde_json::to_string(&marks).expect("json");
    assert_eq!(serde_json::from_str::<ArchiveMarks>(&json).expect("parse"), marks);
    assert_eq!(marks.earliest(), Some(&RowId::new("1", 0)));
}

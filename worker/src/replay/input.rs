//! Reading the input: a blocking thread reads the input's objects chunk by chunk with the reader of
//! `taxi-worker local` and converts every record into what is sent for it ([`InputRecord`]);
//! [`trip_json`] and [`watermark_json`] are the lines, in the reference architecture's format, the producer sends.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use taxi_core::event::{Event, InvalidReason, Millis, Trip};
use taxi_core::input::{ChunkData, Format, InputChunk, InputError, InputObject, InputReader, ZoneCentroids};
use taxi_core::time::format_timestamp;

/// Bytes of input per chunk read by the reader thread.
const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks the reader thread may read ahead.
pub(super) const READ_AHEAD: usize = 4;

/// One record of the input, ready to send.
#[derive(Debug)]
pub(super) enum InputRecord {
    /// A valid trip.
    Trip {
        /// Its id (the partition key in decimal).
        trip_id: u64,
        /// Its event time.
        event_time: Millis,
        /// The bytes to send.
        data: Bytes,
    },
    /// An invalid line, sent as it is.
    Invalid {
        /// Its record number (the partition key in decimal).
        record_no: u64,
        /// The line.
        data: Bytes,
    },
}

/// What the reader thread sends.
pub(super) enum ReaderMsg {
    /// The records of one chunk, and how many watermark lines it held.
    Records(Vec<InputRecord>, u64),
    /// The input could not be read.
    Failed(InputError),
    /// The end of the input.
    End,
}

/// The reader thread: reads and parses the objects of the input in order, sending a message per
/// chunk.
pub(super) fn read_input(
    objects: Vec<Arc<dyn InputObject>>,
    zone_centroids: Option<Arc<ZoneCentroids>>,
    tx: &mpsc::Sender<ReaderMsg>,
) {
    let mut reader = match InputReader::new(objects, zone_centroids) {
        Ok(reader) => reader,
        Err(e) => {
            let _ = tx.blocking_send(ReaderMsg::Failed(e));
            return;
        }
    };
    loop {
        let msg = match reader.next_chunk(CHUNK_BYTES) {
            Ok(Some(chunk)) => convert_chunk(&chunk),
            Ok(None) => ReaderMsg::End,
            Err(e) => ReaderMsg::Failed(e),
        };
        let last = !matches!(msg, ReaderMsg::Records(..));
        // A send fails only when the replay has stopped: then there is nobody to read for.
        if tx.blocking_send(msg).is_err() || last {
            return;
        }
    }
}

/// Parses a chunk into the records to send: a JSON line's trip as its line, any other trip
/// re-encoded as JSON; an invalid line as it is, an invalid Parquet row as [`invalid_row_json`].
fn convert_chunk(chunk: &InputChunk) -> ReaderMsg {
    let keep_lines = matches!(chunk.data, ChunkData::Lines { format: Format::JsonLines, .. });
    let mut records = Vec::with_capacity(usize::try_from(chunk.records).unwrap_or(0));
    let mut watermarks = 0;
    for (record_no, line, parsed) in chunk.records() {
        match (parsed, line) {
            (Ok(Event::Trip(trip)), line) => {
                let data = match line {
                    Some(line) if keep_lines => Bytes::copy_from_slice(line),
                    _ => Bytes::from(trip_json(&trip)),
                };
                records.push(InputRecord::Trip { trip_id: trip.trip_id, event_time: trip.event_time(), data });
            }
            (Ok(Event::Watermark(_)), _) => watermarks += 1,
            (Err(_), Some(line)) => {
                records.push(InputRecord::Invalid { record_no, data: Bytes::copy_from_slice(line) })
            }
            (Err(reason), None) => {
                records.push(InputRecord::Invalid { record_no, data: Bytes::from(invalid_row_json(record_no, reason)) })
            }
        }
    }
    ReaderMsg::Records(records, watermarks)
}

/// What is sent for an invalid Parquet row, which has no line of its own: a JSON object that is
/// not an event (so the worker counts it invalid, as `local` does), naming the row and why.
pub fn invalid_row_json(record_no: u64, reason: InvalidReason) -> String {
    format!("{{\"type\":\"invalid_row\",\"record\":{record_no},\"reason\":\"{reason}\"}}")
}

/// A trip as a JSON line in the reference architecture's format (without newline).
pub fn trip_json(trip: &Trip) -> String {
    format!(
        "{{\"type\":\"trip\",\"trip_id\":{},\"pickup_datetime\":\"{}\",\"dropoff_datetime\":\"{}\",\
         \"pickup_latitude\":{},\"pickup_longitude\":{},\"dropoff_latitude\":{},\"dropoff_longitude\":{}}}",
        trip.trip_id,
        format_timestamp(trip.pickup_time),
        format_timestamp(trip.dropoff_time),
        trip.pickup.lat,
        trip.pickup.lon,
        trip.dropoff.lat,
        trip.dropoff.lon,
    )
}

/// A watermark event's data.
pub fn watermark_json(at: Millis) -> String {
    format!("{{\"watermark\":\"{}\",\"type\":\"watermark\"}}", format_timestamp(at))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::replay::fake::{MemoryKinesis, even_shards, options, write_file};
    use crate::replay::{ReplayOptions, ReplayProgress, replay};
    use taxi_core::input::{LocalFile, ZoneCentroids, parse_json_record};

    #[tokio::test]
    async fn csv_trips_are_re_encoded_as_json() {
        let csv = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,\
                   pickup_longitude,pickup_latitude,RateCodeID,store_and_fwd_flag,dropoff_longitude,\
                   dropoff_latitude,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,\
                   improvement_surcharge,total_amount\n\
                   2,2015-01-15 19:05:39,2015-01-15 19:23:42,1,1.59,-73.993896484375,40.750110626220703,1,N,\
                   -73.974784851074219,40.750617980957031,1,12,1,0.5,3.25,0,0.3,17.05\n\
                   1,2015-01-10 20:33:38,garbage,1,3.30,-74.00164794921875,40.7242431640625,1,N,\
                   -73.994415283203125,40.759109497070313,1,14.5,0.5,0.5,2,0,0.3,17.8\n\
                   1,2015-01-10 20:33:38,2015-01-10 20:53:28,1,3.30,-74.00164794921875,40.7242431640625,1,N,\
                   -73.994415283203125,40.759109497070313,1,14.5,0.5,0.5,2,0,0.3,17.8\n";
        let file = write_file(csv.as_bytes());
        let fake = Arc::new(MemoryKinesis::new(even_shards(1, 0)));
        let summary = replay(Arc::clone(&fake), &options(&file, 0.0), &ReplayProgress::new()).await.expect("replay");
        assert_eq!((summary.trips, summary.invalid), (2, 1));
        let expected: Vec<(u64, taxi_core::event::ParsedRecord)> =
            taxi_core::input::read_records(file.path()).expect("read").map(|r| r.expect("record")).collect();
        let st = fake.stream();
        for (no, parsed) in expected {
            let record = st.records.iter().find(|r| r.partition_key == no.to_string()).expect("stored");
            match parsed {
                Ok(trip) => assert_eq!(parse_json_record(&record.data), Ok(trip)),
                Err(_) => assert!(parse_json_record(&record.data).is_err()),
            }
        }
    }

    /// Every user record stored, as (partition key, parsed event), in key order.
    fn stored_events(fake: &MemoryKinesis) -> Vec<(String, taxi_core::event::ParsedRecord)> {
        let mut events: Vec<_> = fake
            .stream()
            .records
            .iter()
            .filter(|r| r.partition_key != crate::replay::WATERMARK_PARTITION_KEY)
            .map(|r| (r.partition_key.clone(), parse_json_record(&r.data)))
            .collect();
        events.sort_by(|a, b| a.0.cmp(&b.0));
        events
    }

    #[tokio::test]
    async fn parquet_trips_are_sent_as_their_json_form_is() {
        let Some(python) = taxi_testkit::parquet::python() else { return };
        let input = taxi_testkit::parquet::ZoneInput::generate(2_000, 4);
        let dir = tempfile::tempdir().expect("tempdir");
        let table = dir.path().join("zones.csv");
        taxi_testkit::parquet::write_centroids(&input.centroids, &table);
        let parquet = dir.path().join("trips.parquet");
        let unit = taxi_testkit::parquet::TimeUnit::Micros;
        taxi_testkit::parquet::write_tlc_parquet(&python, &input.trips, unit, 700, &parquet);
        let json = write_file(input.json_lines().as_bytes());

        let from_json = Arc::new(MemoryKinesis::new(even_shards(2, 0)));
        replay(Arc::clone(&from_json), &options(&json, 0.0), &ReplayProgress::new()).await.expect("replay json");
        let from_parquet = Arc::new(MemoryKinesis::new(even_shards(2, 0)));
        let parquet_options = ReplayOptions {
            input: vec![Arc::new(LocalFile::new(&parquet))],
            zone_centroids: Some(Arc::new(ZoneCentroids::load(&table).expect("centroids"))),
            ..options(&json, 0.0)
        };
        let summary =
            replay(Arc::clone(&from_parquet), &parquet_options, &ReplayProgress::new()).await.expect("replay parquet");
        assert_eq!((summary.trips, summary.invalid), (input.trips.len() as u64, 0));
        let sent = stored_events(&from_parquet);
        assert_eq!(sent.len(), input.trips.len());
        assert!(sent.iter().all(|(_, event)| event.is_ok()), "every trip is sent as a valid JSON trip");
        assert_eq!(sent, stored_events(&from_json));
    }

    #[test]
    fn an_invalid_parquet_row_is_sent_as_a_record_the_worker_counts_invalid() {
        let data = super::invalid_row_json(42, taxi_core::event::InvalidReason::UnknownZone);
        assert_eq!(data, r#"{"type":"invalid_row","record":42,"reason":"unknown_zone"}"#);
        assert_eq!(parse_json_record(data.as_bytes()), Err(taxi_core::event::InvalidReason::UnknownType));
    }
}

//! The reading side of the pipeline: the source thread reads the input in chunks and hands them to
//! the parse threads round robin, with barriers for checkpoints, stop requests and the record limit;
//! each parse thread turns its chunks into per-shard batches of events.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{LocalError, LocalInput};
use taxi_core::event::{Event, Millis, ParsedRecord};
use taxi_core::generate::write_json_lines;
use taxi_core::input::{ChunkData, ChunkReader, InputChunk, InputError, InputReader, parse_line};
use taxi_core::partition::ShardRouter;
use taxi_core::shard::Counters;

/// Bytes of input per chunk: large enough to amortize channel hops, small enough to keep memory
/// flat (a few chunks are in flight per stage).
const CHUNK_BYTES: usize = 512 * 1024;

/// A point in the input where the run checkpoints (and stops, with `stop`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Barrier {
    /// Input records before the barrier.
    pub(super) records: u64,
    /// The run stops here.
    pub(super) stop: bool,
}

/// What the source hands a parse thread.
pub(super) enum Job {
    /// Records to parse, none past `limit`.
    Chunk {
        chunk: InputChunk,
        limit: Option<u64>,
    },
    Barrier(Barrier),
    End,
    Failed(InputError),
}

/// The events of one chunk, by shard, in input order.
pub(super) struct ParsedBatch {
    /// The events for each shard.
    pub(super) per_shard: Vec<Vec<Event>>,
    /// What parsing counted.
    pub(super) counters: Counters,
    /// The number of the chunk's last record taken (0 when none).
    pub(super) last_record: u64,
    /// The latest event time in the batch (for pacing).
    pub(super) max_event_time: Option<Millis>,
}

/// What a parse thread hands the dispatcher: its jobs, in order, parsed.
pub(super) enum Parsed {
    Batch(ParsedBatch),
    Barrier(Barrier),
    End,
    Failed(InputError),
}

/// Opens the input: its objects, or a pipe the generator writes into.
pub(super) fn open_input(input: &LocalInput) -> Result<InputReader, LocalError> {
    match input {
        LocalInput::Objects { objects, zone_centroids } => {
            Ok(InputReader::new(objects.clone(), zone_centroids.clone())?)
        }
        LocalInput::Generate(config) => {
            // The generator writes JSON lines into a pipe, so generated input takes exactly the
            // path a file does (parsing included).
            let (reader, writer) =
                std::io::pipe().map_err(|source| InputError::Read { origin: "generator pipe".into(), source })?;
            let config = config.clone();
            std::thread::spawn(move || {
                // A closed pipe (the run stopped early) ends the generator; nothing to report.
                let _ = write_json_lines(&config, writer);
            });
            Ok(InputReader::from_lines(ChunkReader::from_reader(Box::new(reader))?))
        }
    }
}

/// Reads chunks and hands them to the parse threads round robin, with barriers for checkpoints,
/// stop requests and the record limit.
pub(super) fn run_source(
    mut reader: InputReader,
    jobs: Vec<mpsc::Sender<Job>>,
    mut records: u64,
    limit: Option<u64>,
    checkpoint_interval: Option<Duration>,
    stop: &AtomicBool,
) {
    let mut turn = 0;
    let mut send = |job: Job| {
        let ok = jobs[turn].blocking_send(job).is_ok();
        turn = (turn + 1) % jobs.len();
        ok
    };
    let mut last_checkpoint = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            send(Job::Barrier(Barrier { records, stop: true }));
            return;
        }
        if checkpoint_interval.is_some_and(|i| last_checkpoint.elapsed() >= i) {
            last_checkpoint = Instant::now();
            if !send(Job::Barrier(Barrier { records, stop: false })) {
                return;
            }
        }
        let chunk = match reader.next_chunk(CHUNK_BYTES) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                send(Job::End);
                return;
            }
            Err(e) => {
                // Reported in input order, so the dispatcher fails with the cause.
                send(Job::Failed(e));
                return;
            }
        };
        let chunk_end = chunk.first_record + u64::from(chunk.records).saturating_sub(1);
        match limit {
            Some(l) if chunk_end >= l && chunk.records > 0 => {
                send(Job::Chunk { chunk, limit: Some(l) });
                send(Job::Barrier(Barrier { records: l.max(records), stop: true }));
                return;
            }
            _ => {
                if chunk.records > 0 {
                    records = chunk_end;
                }
                if !send(Job::Chunk { chunk, limit: None }) {
                    return;
                }
            }
        }
    }
}

/// Parses chunks into per-shard batches, preserving the order of records within each shard.
pub(super) fn run_parser(router: &ShardRouter, mut jobs: mpsc::Receiver<Job>, out: mpsc::Sender<Parsed>) {
    while let Some(job) = jobs.blocking_recv() {
        let parsed = match job {
            Job::Chunk { chunk, limit } => Parsed::Batch(parse_chunk(router, &chunk, limit)),
            Job::Barrier(b) => Parsed::Barrier(b),
            Job::End => Parsed::End,
            Job::Failed(e) => Parsed::Failed(e),
        };
        if out.blocking_send(parsed).is_err() {
            return;
        }
    }
}

/// Parses the records of `chunk` (none past `limit`) and routes them to their shards. Lines are
/// parsed here; Parquet rows come decoded and are only routed.
fn parse_chunk(router: &ShardRouter, chunk: &InputChunk, limit: Option<u64>) -> ParsedBatch {
    let mut batch = ParsedBatch {
        per_shard: (0..router.shards()).map(|_| Vec::new()).collect(),
        counters: Counters::default(),
        last_record: 0,
        max_event_time: None,
    };
    let within = |record_no: u64| limit.is_none_or(|l| record_no <= l);
    match &chunk.data {
        ChunkData::Lines { format, .. } => {
            for (record_no, line) in chunk.lines().take_while(|(no, _)| within(*no)) {
                batch.take(router, record_no, parse_line(format, line, record_no));
            }
        }
        ChunkData::Trips(records) => {
            for (record_no, record) in (chunk.first_record..).zip(records).take_while(|(no, _)| within(*no)) {
                batch.take(router, record_no, *record);
            }
        }
    }
    batch
}

impl ParsedBatch {
    /// Counts record `record_no` and routes its event to its shards.
    #[inline]
    fn take(&mut self, router: &ShardRouter, record_no: u64, parsed: ParsedRecord) {
        self.last_record = record_no;
        match parsed {
            Ok(Event::Trip(trip)) => {
                self.counters.records += 1;
                self.counters.trips += 1;
                self.max_event_time = self.max_event_time.max(Some(trip.event_time()));
                self.per_shard[router.shard_for_trip(trip.trip_id)].push(Event::Trip(trip));
            }
            Ok(watermark @ Event::Watermark(t)) => {
                // A watermark event reaches every shard, as the producer sends it.
                self.counters.records += 1;
                self.max_event_time = self.max_event_time.max(Some(t));
                self.counters.watermarks += 1;
                self.per_shard.iter_mut().for_each(|events| events.push(watermark));
            }
            Err(reason) => self.counters.count_invalid(reason),
        }
    }
}

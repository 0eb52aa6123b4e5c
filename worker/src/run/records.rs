//! Feeding one shard's Kinesis records to its [`ShardProcessor`] (and its archive): plain records
//! and KPL aggregates, records read again after a restart (inside an aggregate that was partly
//! processed, or from the earliest row of an archive file not yet written: those only rebuild
//! archive files), and the record budget of `stop_after_records` (which may run out inside an
//! aggregate).

use taxi_core::archive::{ArchiveError, ArchiveRow, RowId, ShardArchive};
use taxi_core::checkpoint::Position;
use taxi_core::event::{Event, InvalidReason, Millis};
use taxi_core::input::parse_json_record;
use taxi_core::shard::ShardProcessor;
use taxi_core::time::wall_clock_millis;
use taxi_io::kinesis::kpl::{self, Deaggregated};

/// A shard's processor and how far it got: the position the next checkpoint records.
pub(super) struct Progress {
    /// The shard's event-time state.
    pub(super) processor: ShardProcessor,
    /// The last record processed (inside an aggregate: the last user record).
    pub(super) position: Position,
    /// After a restart: user records up to this one were processed before, and are read again
    /// only to rebuild archive files (or, inside an aggregate, because Kinesis returns it whole).
    processed_through: Option<RowId>,
    /// User records this task may still process (`RunOptions::stop_after_records`).
    budget: Option<u64>,
    /// The shard's archive, when the run keeps one.
    pub(super) archive: Option<ShardArchive>,
    /// The first archive failure since it was last taken (the shard task reports it).
    archive_error: Option<ArchiveError>,
}

impl Progress {
    /// Resumes from a claimed checkpoint at `position`: every user record up to it was processed
    /// (inside an aggregate, up to its `sub_sequence`), so records up to it that are read again
    /// only go to the archive.
    pub(super) fn resume(
        processor: ShardProcessor,
        position: Position,
        archive: Option<ShardArchive>,
        budget: Option<u64>,
    ) -> Progress {
        let processed_through = match &position {
            Position::Sequence { sequence_number, sub_sequence } => {
                Some(RowId::new(sequence_number.clone(), sub_sequence.unwrap_or(u64::MAX)))
            }
            _ => None,
        };
        Progress { processor, position, processed_through, budget, archive, archive_error: None }
    }

    /// True when the user record `id` was processed before the restart.
    fn processed_before(&mut self, id: &RowId) -> bool {
        match &self.processed_through {
            Some(through) if id <= through => true,
            Some(_) => {
                self.processed_through = None;
                false
            }
            None => false,
        }
    }

    /// True while records processed before the restart are being read again: archive files must
    /// not close then, or they would miss rows still to come.
    pub(super) fn reading_again(&self) -> bool {
        self.processed_through.is_some()
    }

    /// Takes the first archive failure since the last call.
    pub(super) fn take_archive_error(&mut self) -> Option<ArchiveError> {
        self.archive_error.take()
    }

    /// Processes one Kinesis record: a plain event or a KPL aggregate of events. Returns `false`
    /// when the record budget ran out inside it (the position then points into the aggregate).
    pub(super) fn process_record(
        &mut self,
        shard_id: &str,
        sequence_number: &str,
        data: &[u8],
        arrival: Option<Millis>,
    ) -> bool {
        let within = self.process_or_archive(shard_id, sequence_number, data, arrival);
        // The record at the position was read again: what follows is new.
        if self.processed_through.as_ref().is_some_and(|t| t.sequence_number == sequence_number) {
            self.processed_through = None;
        }
        within
    }

    fn process_or_archive(
        &mut self,
        shard_id: &str,
        sequence_number: &str,
        data: &[u8],
        arrival: Option<Millis>,
    ) -> bool {
        let at = |sub_sequence| Position::Sequence { sequence_number: sequence_number.to_owned(), sub_sequence };
        let id = |sub_sequence| RowId::new(sequence_number, sub_sequence);
        match kpl::deaggregate(data) {
            Ok(Deaggregated::Plain(payload)) => {
                let id = id(0);
                if self.processed_before(&id) {
                    self.archive_again(payload, id, arrival);
                    return true;
                }
                self.process_payload(shard_id, payload, id, arrival);
            }
            Ok(Deaggregated::Aggregated(users)) => {
                let last = users.len().saturating_sub(1) as u64;
                let mut processed_any = false;
                for (index, user) in users.iter().enumerate() {
                    let index = index as u64;
                    let id = id(index);
                    if self.processed_before(&id) {
                        self.archive_again(user.data, id, arrival);
                        continue;
                    }
                    processed_any = true;
                    self.process_payload(shard_id, user.data, id, arrival);
                    if index < last && self.budget_exhausted() {
                        self.position = at(Some(index));
                        return false;
                    }
                }
                if !processed_any {
                    return true;
                }
            }
            Err(e) => {
                if self.processed_before(&id(0)) {
                    return true;
                }
                tracing::warn!(shard = %shard_id, sequence_number, error = %e, "corrupt KPL aggregate skipped");
                self.processor.process_invalid(InvalidReason::NotJson);
            }
        }
        self.position = at(None);
        !self.budget_exhausted()
    }

    /// Counts one user record against `stop_after_records`; true once the budget is spent.
    fn budget_exhausted(&mut self) -> bool {
        match &mut self.budget {
            Some(0) => true,
            Some(left) => {
                *left -= 1;
                *left == 0
            }
            None => false,
        }
    }

    fn process_payload(&mut self, shard_id: &str, payload: &[u8], id: RowId, arrival: Option<Millis>) {
        match parse_json_record(payload) {
            Ok(event) => {
                self.processor.process(&event, arrival);
                match event {
                    Event::Trip(trip) => {
                        if let Some(archive) = &mut self.archive
                            && let Err(e) = archive.push(ArchiveRow { trip, id, arrival }, wall_clock_millis())
                        {
                            self.archive_error.get_or_insert(e);
                        }
                    }
                    Event::Watermark(_) => tracing::trace!(shard = %shard_id, "watermark event"),
                }
            }
            Err(reason) => self.processor.process_invalid(reason),
        }
    }

    /// A user record processed before the restart, read again: only its archive file, if one
    /// is still to be written, takes it.
    fn archive_again(&mut self, payload: &[u8], id: RowId, arrival: Option<Millis>) {
        let Some(archive) = &mut self.archive else { return };
        let Ok(Event::Trip(trip)) = parse_json_record(payload) else { return };
        match archive.push_again(ArchiveRow { trip, id, arrival }) {
            Ok(None) => {}
            Ok(Some(mismatch)) => {
                // Kinesis trimmed rows of it (retention) or a record changed: the file keeps the
                // rows that are left, under the name decided before.
                tracing::error!(shard = archive.shard_id(), %mismatch, "an archive file was rebuilt with other rows than decided");
            }
            Err(e) => {
                self.archive_error.get_or_insert(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use taxi_core::config::EngineConfig;
    use taxi_io::kinesis::kpl::Aggregator;

    use super::*;

    const WATERMARK: &str = r#"{"type":"watermark","watermark":"2016-01-01T00:00:00Z"}"#;

    fn progress(position: Position, budget: Option<u64>) -> Progress {
        Progress::resume(ShardProcessor::new(Arc::new(EngineConfig::default())), position, None, budget)
    }

    /// A KPL aggregate of `n` watermark events.
    fn aggregate(n: usize) -> Vec<u8> {
        let mut aggregator = Aggregator::default();
        for i in 0..n {
            assert!(aggregator.push(&format!("k{i}"), None, WATERMARK.as_bytes()).is_none(), "one aggregate");
        }
        aggregator.flush().expect("not empty").data
    }

    fn at(sequence_number: &str, sub_sequence: Option<u64>) -> Position {
        Position::Sequence { sequence_number: sequence_number.to_owned(), sub_sequence }
    }

    #[test]
    fn plain_records_are_processed_and_the_position_follows_them() {
        let mut p = progress(Position::Start, None);
        assert!(p.process_record("s", "100", WATERMARK.as_bytes(), None));
        assert!(p.process_record("s", "101", b"not json", None));
        assert_eq!(p.position, at("101", None));
        let counters = p.processor.counters();
        assert_eq!((counters.records, counters.watermarks), (2, 1));
        assert_eq!(counters.invalid[InvalidReason::NotJson.index()], 1);
    }

    #[test]
    fn every_user_record_of_an_aggregate_is_processed() {
        let mut p = progress(Position::Start, None);
        assert!(p.process_record("s", "200", &aggregate(3), None));
        assert_eq!(p.position, at("200", None), "the whole aggregate is done");
        assert_eq!(p.processor.counters().watermarks, 3);
    }

    #[test]
    fn an_aggregate_with_a_broken_checksum_is_one_invalid_record() {
        let mut data = aggregate(2);
        let last = data.len() - 1;
        data[last] ^= 0xff;
        let mut p = progress(Position::Start, None);
        assert!(p.process_record("s", "300", &data, None));
        assert_eq!(p.position, at("300", None), "passed over, not read again");
        let counters = p.processor.counters();
        assert_eq!((counters.records, counters.invalid[InvalidReason::NotJson.index()]), (1, 1));
    }

    #[test]
    fn a_budget_spent_inside_an_aggregate_stops_at_that_user_record() {
        let mut p = progress(Position::Start, Some(3));
        assert!(p.process_record("s", "400", WATERMARK.as_bytes(), None), "2 left");
        assert!(!p.process_record("s", "401", &aggregate(4), None), "spent at its second user record");
        assert_eq!(p.position, at("401", Some(1)));
        assert_eq!(p.processor.counters().watermarks, 3);
    }

    #[test]
    fn a_budget_spent_on_the_last_user_record_completes_the_aggregate() {
        let mut p = progress(Position::Start, Some(2));
        assert!(!p.process_record("s", "500", &aggregate(2), None));
        assert_eq!(p.position, at("500", None), "nothing of it is left to read");
        let mut unlimited = progress(Position::Start, None);
        for seq in 0..50 {
            assert!(unlimited.process_record("s", &seq.to_string(), WATERMARK.as_bytes(), None));
        }
    }

    #[test]
    fn a_resumed_aggregate_skips_the_user_records_already_processed() {
        // The budget ran out at user record 1 of "401"; the restart reads "401" again.
        let mut p = progress(at("401", Some(1)), None);
        assert!(p.process_record("s", "401", &aggregate(4), None));
        assert_eq!(p.processor.counters().watermarks, 2, "user records 2 and 3 only");
        assert_eq!(p.position, at("401", None));
        // Only that one aggregate: the next one is read whole.
        assert!(p.process_record("s", "402", &aggregate(4), None));
        assert_eq!(p.processor.counters().watermarks, 6);
    }

    #[test]
    fn records_up_to_the_position_are_not_processed_again() {
        let mut p = progress(at("401", None), None);
        assert!(p.process_record("s", "401", &aggregate(2), None), "read again whole");
        assert_eq!(p.processor.counters().watermarks, 0);
        assert_eq!(p.position, at("401", None), "the position does not move back");
        assert!(p.process_record("s", "402", &aggregate(2), None));
        assert_eq!(p.processor.counters().watermarks, 2);
    }

    fn trip_json(trip_id: u64) -> String {
        format!(
            r#"{{"type":"trip","trip_id":{trip_id},"pickup_datetime":"2016-01-01T00:00:00Z","dropoff_datetime":"2016-01-01T00:10:00Z","pickup_lat":40.75,"pickup_lon":-73.99,"dropoff_lat":40.64,"dropoff_lon":-73.78}}"#
        )
    }

    #[test]
    fn records_read_again_only_rebuild_the_archive_files_still_open() {
        // The checkpoint at 105 had one file open since 102; what came before went into a file
        // that was uploaded.
        let mut before = progress(Position::Start, None);
        before.archive = Some(ShardArchive::new("s"));
        for seq in 100..=105u64 {
            if seq == 102 {
                let archive = before.archive.as_mut().expect("archive");
                archive.close_all().expect("close");
                assert_eq!(archive.take_ready().len(), 1);
            }
            assert!(before.process_record("s", &seq.to_string(), trip_json(seq).as_bytes(), None));
        }
        let marks = before.archive.as_ref().expect("archive").marks();
        assert_eq!(marks.earliest(), Some(&RowId::new("102", 0)));

        let resumed = ShardArchive::resume("s", &marks, 0).expect("resume");
        let mut after = Progress::resume(before.processor.clone(), at("105", None), Some(resumed), None);
        for seq in 102..=107u64 {
            assert_eq!(after.reading_again(), seq <= 105, "reading again up to the position, at {seq}");
            assert!(after.process_record("s", &seq.to_string(), trip_json(seq).as_bytes(), None));
        }
        assert_eq!(after.processor.counters().trips, 8, "6 before, 106 and 107 after the restart");
        assert_eq!(after.position, at("107", None));
        let archive = after.archive.as_mut().expect("archive");
        archive.close_all().expect("close");
        let files = archive.take_ready();
        assert_eq!(files.len(), 1);
        let file = &files[0];
        assert_eq!(
            (file.first.sequence_number.as_str(), file.last.sequence_number.as_str(), file.rows),
            ("102", "107", 6)
        );
        assert!(after.take_archive_error().is_none());
    }
}

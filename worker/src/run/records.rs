//! Feeding one shard's Kinesis records to its [`ShardProcessor`]: plain records and KPL
//! aggregates, resuming inside an aggregate that was partly processed before a restart, and the
//! record budget of `stop_after_records` (which may run out inside an aggregate).

use taxi_core::checkpoint::Position;
use taxi_core::event::{Event, InvalidReason, Millis};
use taxi_core::input::parse_json_record;
use taxi_core::shard::ShardProcessor;
use taxi_io::kinesis::kpl::{self, Deaggregated};

/// A shard's processor and how far it got: the position the next checkpoint records.
pub(super) struct Progress {
    /// The shard's event-time state.
    pub(super) processor: ShardProcessor,
    /// The last record processed (inside an aggregate: the last user record).
    pub(super) position: Position,
    /// Inside a KPL aggregate read again after a restart: user records up to this index of
    /// this sequence number were already processed.
    skip: Option<(String, u64)>,
    /// User records this task may still process (`RunOptions::stop_after_records`).
    budget: Option<u64>,
}

impl Progress {
    /// Resumes from a claimed checkpoint: `skip_upto` is the last user record already processed
    /// of the aggregate at `position` (from [`taxi_io::kinesis::reader::resume_position`]).
    pub(super) fn resume(
        processor: ShardProcessor,
        position: Position,
        skip_upto: Option<u64>,
        budget: Option<u64>,
    ) -> Progress {
        let skip = match (&position, skip_upto) {
            (Position::Sequence { sequence_number, .. }, Some(done)) => Some((sequence_number.clone(), done)),
            _ => None,
        };
        Progress { processor, position, skip, budget }
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
        let at = |sub_sequence| Position::Sequence { sequence_number: sequence_number.to_owned(), sub_sequence };
        match kpl::deaggregate(data) {
            Ok(Deaggregated::Plain(payload)) => {
                self.process_payload(shard_id, payload, arrival);
            }
            Ok(Deaggregated::Aggregated(users)) => {
                let skip_upto = match &self.skip {
                    Some((seq, done)) if seq == sequence_number => Some(*done),
                    _ => None,
                };
                let last = users.len().saturating_sub(1) as u64;
                for (index, user) in users.iter().enumerate() {
                    let index = index as u64;
                    if skip_upto.is_some_and(|done| index <= done) {
                        continue;
                    }
                    self.process_payload(shard_id, user.data, arrival);
                    if index < last && self.budget_exhausted() {
                        self.position = at(Some(index));
                        return false;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(shard = %shard_id, sequence_number, error = %e, "corrupt KPL aggregate skipped");
                self.processor.process_invalid(InvalidReason::NotJson);
            }
        }
        self.skip = None;
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

    fn process_payload(&mut self, shard_id: &str, payload: &[u8], arrival: Option<Millis>) {
        match parse_json_record(payload) {
            Ok(event) => {
                self.processor.process(&event, arrival);
                if let Event::Watermark(_) = event {
                    tracing::trace!(shard = %shard_id, "watermark event");
                }
            }
            Err(reason) => self.processor.process_invalid(reason),
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

    fn progress(position: Position, skip_upto: Option<u64>, budget: Option<u64>) -> Progress {
        Progress::resume(ShardProcessor::new(Arc::new(EngineConfig::default())), position, skip_upto, budget)
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
        let mut p = progress(Position::Start, None, None);
        assert!(p.process_record("s", "100", WATERMARK.as_bytes(), None));
        assert!(p.process_record("s", "101", b"not json", None));
        assert_eq!(p.position, at("101", None));
        let counters = p.processor.counters();
        assert_eq!((counters.records, counters.watermarks), (2, 1));
        assert_eq!(counters.invalid[InvalidReason::NotJson.index()], 1);
    }

    #[test]
    fn every_user_record_of_an_aggregate_is_processed() {
        let mut p = progress(Position::Start, None, None);
        assert!(p.process_record("s", "200", &aggregate(3), None));
        assert_eq!(p.position, at("200", None), "the whole aggregate is done");
        assert_eq!(p.processor.counters().watermarks, 3);
    }

    #[test]
    fn an_aggregate_with_a_broken_checksum_is_one_invalid_record() {
        let mut data = aggregate(2);
        let last = data.len() - 1;
        data[last] ^= 0xff;
        let mut p = progress(Position::Start, None, None);
        assert!(p.process_record("s", "300", &data, None));
        assert_eq!(p.position, at("300", None), "passed over, not read again");
        let counters = p.processor.counters();
        assert_eq!((counters.records, counters.invalid[InvalidReason::NotJson.index()]), (1, 1));
    }

    #[test]
    fn a_budget_spent_inside_an_aggregate_stops_at_that_user_record() {
        let mut p = progress(Position::Start, None, Some(3));
        assert!(p.process_record("s", "400", WATERMARK.as_bytes(), None), "2 left");
        assert!(!p.process_record("s", "401", &aggregate(4), None), "spent at its second user record");
        assert_eq!(p.position, at("401", Some(1)));
        assert_eq!(p.processor.counters().watermarks, 3);
    }

    #[test]
    fn a_budget_spent_on_the_last_user_record_completes_the_aggregate() {
        let mut p = progress(Position::Start, None, Some(2));
        assert!(!p.process_record("s", "500", &aggregate(2), None));
        assert_eq!(p.position, at("500", None), "nothing of it is left to read");
        let mut unlimited = progress(Position::Start, None, None);
        for seq in 0..50 {
            assert!(unlimited.process_record("s", &seq.to_string(), WATERMARK.as_bytes(), None));
        }
    }

    #[test]
    fn a_resumed_aggregate_skips_the_user_records_already_processed() {
        // The budget ran out at user record 1 of "401"; the restart reads "401" again.
        let mut p = progress(at("401", Some(1)), Some(1), None);
        assert!(p.process_record("s", "401", &aggregate(4), None));
        assert_eq!(p.processor.counters().watermarks, 2, "user records 2 and 3 only");
        assert_eq!(p.position, at("401", None));
        // Only that one aggregate: the next one is read whole.
        assert!(p.process_record("s", "402", &aggregate(4), None));
        assert_eq!(p.processor.counters().watermarks, 6);
    }

    #[test]
    fn only_a_position_inside_an_aggregate_skips_anything() {
        let mut p = progress(Position::Start, Some(5), None);
        assert!(p.process_record("s", "401", &aggregate(2), None));
        assert_eq!(p.processor.counters().watermarks, 2);
    }
}

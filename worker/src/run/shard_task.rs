//! One shard's task: claim it, then the read → process → sink → checkpoint loop, down to how it
//! ends: read to its end (a finished checkpoint its children wait for), stopped, released to its
//! next owner, or fenced by another owner's checkpoint.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::claim::{Claim, Claimed, checkpoint_key, claim};
use super::control::{Control, ShardExit};
use super::discovery::StartableShard;
use super::ownership::Grant;
use super::records::Progress;
use super::{CONTROL_RETRY, RunError, Shared};
use crate::handoff::HandoffOutcome;
use taxi_core::archive::ShardArchive;
use taxi_core::checkpoint::{Owner, Position, ShardCheckpoint};
use taxi_core::document::documents_for;
use taxi_core::event::InvalidReason;
use taxi_core::shard::Counters;
use taxi_core::status::ShardState;
use taxi_core::time::wall_clock_millis;
use taxi_io::kinesis::api::{KinesisApi, KinesisError, KinesisRecord, StartingPosition};
use taxi_io::kinesis::efo::EfoReader;
use taxi_io::kinesis::reader::{PollingReader, ReadOutcome, ReaderStats, resume_position};
use taxi_io::retry::Backoff;
use taxi_io::store::{ETag, Precondition, StoreError};

/// The reader of one shard, by consumer kind.
enum ShardSource<K: KinesisApi> {
    Polling(Box<PollingReader<K>>),
    Efo(Box<EfoReader<K>>),
}

impl<K: KinesisApi> ShardSource<K> {
    /// A reader of `shard_id` from `start`: by polling, or through the enhanced fan-out consumer
    /// when the run registered one.
    fn open(shared: &Shared<K>, shard_id: &str, start: StartingPosition) -> ShardSource<K> {
        let (api, options) = (shared.api.clone(), &shared.options);
        match &shared.consumer_arn {
            None => ShardSource::Polling(Box::new(PollingReader::new(
                api,
                &options.stream,
                shard_id,
                start,
                options.polling.clone(),
            ))),
            Some(arn) => ShardSource::Efo(Box::new(EfoReader::new(
                api,
                &options.stream,
                shard_id,
                arn,
                start,
                options.polling.clone(),
            ))),
        }
    }

    async fn next(&mut self) -> Result<ReadOutcome, KinesisError> {
        match self {
            ShardSource::Polling(r) => r.next().await,
            ShardSource::Efo(r) => r.next().await,
        }
    }

    fn stats(&self) -> ReaderStats {
        match self {
            ShardSource::Polling(r) => r.stats().clone(),
            ShardSource::Efo(r) => r.stats(),
        }
    }

    fn mark_closed(&mut self) {
        if let ShardSource::Efo(r) = self {
            r.mark_closed();
        }
    }
}

/// One shard's reading loop.
pub(super) struct ShardTask<K> {
    shared: Arc<Shared<K>>,
    shard_id: String,
    /// This process, at the epoch under which the shard started.
    owner: Owner,
    /// Its processor and how far it got.
    progress: Progress,
    /// The version of the checkpoint this task last wrote (the claim's at first).
    etag: Option<ETag>,
    /// Counters already published to the metrics and the run's totals.
    reported: Counters,
}

/// How writing a checkpoint went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    Yes,
    /// Another owner took the shard (412).
    Fenced,
    /// The store failed; the state is kept for the next attempt.
    Failed,
}

/// The claimed shard to read, or how its task ends without reading it (shown in `/status`).
fn after_claim<K>(shared: &Shared<K>, shard_id: &str, claim: Claim) -> ControlFlow<ShardExit, Claimed> {
    let (state, exit) = match claim {
        Claim::Claimed(claimed) => return ControlFlow::Continue(*claimed),
        // Its state was shown when it was fenced.
        Claim::Fenced => return ControlFlow::Break(ShardExit::Fenced),
        Claim::Finished => (ShardState::Finished, ShardExit::Finished),
        Claim::Interrupted(Control::Release { epoch }) => {
            tracing::info!(shard = %shard_id, epoch, "moved away before it was claimed");
            (ShardState::Released, ShardExit::Released)
        }
        Claim::Interrupted(_) => (ShardState::Stopped, ShardExit::Stopped),
    };
    shared.state.update(shard_id, |s| s.state = state);
    ControlFlow::Break(exit)
}

impl<K: KinesisApi> ShardTask<K> {
    /// Runs one shard from its claim to its end (the coordinator spawns this per started shard).
    pub(super) async fn start(
        shared: Arc<Shared<K>>,
        shard: StartableShard,
        mut control: watch::Receiver<Control>,
        grant: Grant,
    ) -> Result<ShardExit, RunError> {
        let StartableShard { info: shard, parents } = shard;
        let mut owner = Owner { epoch: grant.epoch, ..shared.owner.clone() };
        let claim = claim(&shared, &shard.shard_id, &parents, &mut owner, &grant, &mut control).await?;
        let claimed = match after_claim(&shared, &shard.shard_id, claim) {
            ControlFlow::Continue(claimed) => claimed,
            ControlFlow::Break(exit) => return Ok(exit),
        };
        let Claimed { processor, position, etag, handoff, archive: marks } = claimed;
        let Some(mut start) = resume_position(&position) else {
            return Ok(ShardExit::Finished);
        };
        let archive = match &shared.archive {
            Some(_) => Some(ShardArchive::resume(shard.shard_id.clone(), &marks, wall_clock_millis())?),
            None => None,
        };
        if archive.is_some()
            && let Some(earliest) = marks.earliest()
        {
            // Rows of files not yet written are read again: from the earliest one.
            tracing::info!(shard = %shard.shard_id, from = %earliest.sequence_number, "reading again to rebuild archive files");
            start = StartingPosition::AtSequenceNumber(earliest.sequence_number.clone());
        }
        tracing::info!(shard = %shard.shard_id, ?start, epoch = grant.epoch, "starting shard");
        let reported = processor.counters().clone();
        let budget = shared.options.stop_after_records;
        let mut task = ShardTask {
            shard_id: shard.shard_id.clone(),
            owner,
            progress: Progress::resume(processor, position, archive, budget),
            etag: Some(etag),
            reported,
            shared,
        };
        let reader = ShardSource::open(&task.shared, &task.shard_id, start);
        let elapsed = task.shared.state.elapsed_ms();
        let pause = handoff.map(|outcome| task.note_handoff(outcome, grant.requested_at.elapsed()));
        task.shared.state.update(&task.shard_id, |s| {
            s.state = ShardState::Reading;
            s.error = None;
            s.started_at_ms = Some(elapsed);
            if pause.is_some() {
                s.handoff_pause_ms = pause;
            }
        });
        task.read(reader, control).await
    }

    /// Counts a handoff to this worker and its pause; returns the pause in ms.
    fn note_handoff(&self, outcome: HandoffOutcome, pause: Duration) -> u64 {
        let metrics = &self.shared.state.metrics;
        metrics.shard_handoffs.with_label_values(&[outcome.as_str()]).inc();
        metrics.handoff_pause_seconds.observe(pause.as_secs_f64());
        let pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(shard = %self.shard_id, outcome = outcome.as_str(), pause_ms, epoch = self.owner.epoch, "shard handed over to this worker");
        pause_ms
    }

    /// Reads the shard until it ends, is stopped, released or fenced, checkpointing every
    /// `checkpoint_interval` on the way.
    async fn read(
        &mut self,
        mut reader: ShardSource<K>,
        mut control: watch::Receiver<Control>,
    ) -> Result<ShardExit, RunError> {
        let interval = self.shared.options.checkpoint_interval;
        let mut next_checkpoint = Instant::now() + interval;
        let mut seen = ReaderStats::default();
        loop {
            if self.shared.closed_shards.lock().is_ok_and(|closed| closed.contains(&self.shard_id)) {
                reader.mark_closed();
            }
            let requested = *control.borrow_and_update();
            match requested {
                Control::Run => {}
                Control::Stop { emit_open_windows } => return self.stop(emit_open_windows).await,
                Control::Release { epoch } => return self.release(epoch).await,
            }
            if Instant::now() >= next_checkpoint {
                if !self.checkpoint().await? {
                    return Ok(ShardExit::Fenced);
                }
                next_checkpoint = Instant::now() + interval;
            }
            let outcome = tokio::select! {
                outcome = reader.next() => outcome,
                // A stop request interrupts an idle wait (the read is retried from the same place).
                _ = control.changed() => continue,
            };
            self.publish_reader_stats(&reader.stats(), &mut seen);
            match outcome {
                Ok(ReadOutcome::Records { records, millis_behind_latest }) => {
                    self.note_progress(records.is_empty(), millis_behind_latest);
                    if let Some(exit) = self.process_page(&records).await? {
                        return Ok(exit);
                    }
                }
                Ok(ReadOutcome::End { children }) => return self.finish(&children, &mut control).await,
                Err(e) => {
                    // Not retryable by the reader (e.g. access denied): surface it and keep trying
                    // at the reader's back-off pace; the operator sees it in metrics and status.
                    self.shared.state.metrics.kinesis_errors.with_label_values(&["GetRecords", e.category()]).inc();
                    tracing::warn!(shard = %self.shard_id, error = %e, "reading the shard failed");
                    if matches!(e, KinesisError::NotFound { .. }) {
                        return Err(e.into());
                    }
                }
            }
        }
    }

    /// Stops with a final checkpoint; with `emit_open_windows`, writes the open windows first as
    /// not-final documents.
    async fn stop(&mut self, emit_open_windows: bool) -> Result<ShardExit, RunError> {
        if emit_open_windows {
            let open = self.progress.processor.open_windows();
            self.emit(&open, false).await?;
        }
        // Open archive files are written now (a checkpoint lists them first), so a stopped
        // pipeline's archive is complete; the final checkpoint below then lists none.
        if !self.progress.reading_again()
            && let Some(archive) = self.progress.archive.as_mut()
        {
            archive.close_all()?;
            if !self.checkpoint().await? {
                return Ok(ShardExit::Fenced);
            }
        }
        if !self.checkpoint().await? {
            return Ok(ShardExit::Fenced);
        }
        self.shared.state.update(&self.shard_id, |s| s.state = ShardState::Stopped);
        Ok(ShardExit::Stopped)
    }

    /// Processes one page of records and writes the documents of the windows it closed. `Some`
    /// when the record budget ran out: the shard then stops with a checkpoint.
    async fn process_page(&mut self, records: &[KinesisRecord]) -> Result<Option<ShardExit>, RunError> {
        let metrics = &self.shared.state.metrics;
        metrics.records_read.with_label_values(&[&self.shard_id]).inc_by(records.len() as u64);
        let bytes: usize = records.iter().map(|r| r.data.len()).sum();
        metrics.bytes_read.with_label_values(&[&self.shard_id]).inc_by(bytes as u64);
        let mut within_budget = true;
        for record in records {
            within_budget =
                self.progress.process_record(&self.shard_id, &record.sequence_number, &record.data, record.arrival);
            if !within_budget {
                break;
            }
        }
        if let Some(e) = self.progress.take_archive_error() {
            return Err(e.into());
        }
        let closed = self.progress.processor.take_closed();
        self.emit(&closed, true).await?;
        self.report();
        if within_budget {
            // A full archive file closes now rather than at the next interval.
            let full = match (&self.shared.archive, &self.progress.archive) {
                (Some(target), Some(archive)) => archive.any_full(target.settings.max_file_bytes),
                _ => false,
            };
            if full && !self.checkpoint().await? {
                return Ok(Some(ShardExit::Fenced));
            }
            return Ok(None);
        }
        tracing::info!(shard = %self.shard_id, position = ?self.progress.position, "record budget spent: stopping the shard");
        Ok(Some(if self.checkpoint().await? { ShardExit::Stopped } else { ShardExit::Fenced }))
    }

    /// The shard was read to its end: writes the documents of every window left and the finished
    /// checkpoint its children wait for.
    async fn finish(
        &mut self,
        children: &[String],
        control: &mut watch::Receiver<Control>,
    ) -> Result<ShardExit, RunError> {
        tracing::info!(shard = %self.shard_id, ?children, "shard read to its end");
        self.shared.caught_up.forget(&self.shard_id);
        // The shard ended: no record of it can reach its windows any more. Its trip ids
        // stay in the final checkpoint for its children.
        let closed = self.progress.processor.end();
        self.emit(&closed, true).await?;
        if let Some(exit) = self.archive_everything(control).await? {
            return Ok(exit);
        }
        self.progress.position = Position::Finished;
        self.report();
        if let Some(exit) = self.write_finished(control).await? {
            return Ok(exit);
        }
        let elapsed = self.shared.state.elapsed_ms();
        self.shared.state.update(&self.shard_id, |s| {
            s.state = ShardState::Finished;
            s.finished_at_ms = Some(elapsed);
        });
        self.shared.caught_up.forget(&self.shard_id);
        Ok(ShardExit::Finished)
    }

    /// Publishes what the reader counted since the last look.
    fn publish_reader_stats(&self, now: &ReaderStats, seen: &mut ReaderStats) {
        let metrics = &self.shared.state.metrics;
        let operation = if self.shared.consumer_arn.is_some() { "SubscribeToShard" } else { "GetRecords" };
        if now.calls > seen.calls {
            metrics.get_records_seconds.with_label_values(&[&self.shard_id]).observe(now.last_call.as_secs_f64());
        }
        for (category, n) in [
            ("throttled", now.throttles.saturating_sub(seen.throttles)),
            ("transient", now.transient_errors.saturating_sub(seen.transient_errors)),
            ("expired_iterator", now.expired_iterators.saturating_sub(seen.expired_iterators)),
        ] {
            if n > 0 {
                metrics.kinesis_errors.with_label_values(&[operation, category]).inc_by(n);
            }
        }
        *seen = now.clone();
    }

    /// Notes how far behind the tip the last page was (for idle detection, metrics and status).
    fn note_progress(&self, empty: bool, millis_behind_latest: Option<i64>) {
        self.shared.caught_up.note_page(&self.shard_id, empty, millis_behind_latest, Instant::now());
        if let Some(m) = millis_behind_latest {
            self.shared.state.metrics.millis_behind_latest.with_label_values(&[&self.shard_id]).set(m);
        }
        self.shared.state.update(&self.shard_id, |s| s.millis_behind_latest = millis_behind_latest);
    }

    /// Writes the documents of `windows` to the sink, marked final when the shard closed them.
    async fn emit(&self, windows: &taxi_core::analysis::ClosedWindows, is_final: bool) -> Result<(), RunError> {
        if windows.is_empty() {
            return Ok(());
        }
        let records = self.progress.processor.counters().records;
        let (pipeline, config) = (&self.shared.identity, &self.shared.config);
        let docs = documents_for(pipeline, &self.shard_id, config, windows, is_final, records);
        let count = docs.len() as u64;
        self.shared.sink.write(docs).await?;
        self.shared.state.metrics.sink_documents.with_label_values(&[self.shared.sink.kind()]).inc_by(count);
        Ok(())
    }

    /// Writes the checkpoint that marks the shard finished, retrying with back-off until it is
    /// durable: children (on this worker or another) start only once it is. `Some(exit)` when the
    /// shard ends otherwise first: fenced by another owner, stopped, or released (a restart then
    /// reads the end of the shard again from its last durable checkpoint).
    async fn write_finished(&mut self, control: &mut watch::Receiver<Control>) -> Result<Option<ShardExit>, RunError> {
        let exit = self.checkpoint_until(control, |_| true).await?;
        if exit == Some(ShardExit::Stopped) {
            tracing::warn!(shard = %self.shard_id, "stopped before its finished checkpoint was written; a restart reads its end again");
        }
        Ok(exit)
    }

    /// Writes checkpoints, with back-off after each failure, until one is stored and `enough`
    /// says it suffices. `Some(exit)` when the shard ends otherwise first: fenced by another
    /// owner, stopped, or released.
    async fn checkpoint_until(
        &mut self,
        control: &mut watch::Receiver<Control>,
        enough: fn(&Self) -> bool,
    ) -> Result<Option<ShardExit>, RunError> {
        let mut backoff = Backoff::new(CONTROL_RETRY);
        loop {
            match self.write_checkpoint(None).await? {
                Written::Fenced => return Ok(Some(ShardExit::Fenced)),
                Written::Yes if enough(self) => return Ok(None),
                Written::Yes | Written::Failed => {}
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                _ = control.changed() => {}
            }
            let requested = *control.borrow_and_update();
            match requested {
                Control::Run => {}
                Control::Stop { .. } => {
                    self.shared.state.update(&self.shard_id, |s| s.state = ShardState::Stopped);
                    return Ok(Some(ShardExit::Stopped));
                }
                Control::Release { epoch } => return self.release(epoch).await.map(Some),
            }
        }
    }

    /// Gives the shard up to its new owner: flushes the sink and writes a final
    /// checkpoint marked released at `epoch`. Open windows stay in the checkpoint's partials for
    /// the new owner. A store failure is retried until the takeover timeout, after which the new
    /// owner takes the shard over anyway.
    async fn release(&mut self, epoch: u64) -> Result<ShardExit, RunError> {
        let deadline = Instant::now() + self.shared.options.takeover_timeout;
        loop {
            match self.write_checkpoint(Some(epoch)).await? {
                Written::Yes => {
                    self.shared
                        .state
                        .metrics
                        .shard_handoffs
                        .with_label_values(&[HandoffOutcome::Released.as_str()])
                        .inc();
                    tracing::info!(shard = %self.shard_id, epoch, position = ?self.progress.position, "shard released to its new owner");
                    break;
                }
                Written::Fenced => return Ok(ShardExit::Fenced),
                Written::Failed if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
                Written::Failed => {
                    tracing::warn!(shard = %self.shard_id, epoch, "could not write the release; the new owner takes the shard over after its timeout");
                    break;
                }
            }
        }
        self.shared.state.update(&self.shard_id, |s| s.state = ShardState::Released);
        Ok(ShardExit::Released)
    }

    /// Flushes the sink, then writes the checkpoint. `Ok(false)`: fenced by another owner; a store
    /// failure is retried at the next interval.
    async fn checkpoint(&mut self) -> Result<bool, RunError> {
        Ok(self.write_checkpoint(None).await? != Written::Fenced)
    }

    /// The shard ended: closes every archive file and writes them, with a checkpoint that lists
    /// them first, so the finished checkpoint lists none. `Some(exit)` when the shard ends otherwise
    /// first (as in [`ShardTask::write_finished`]).
    async fn archive_everything(
        &mut self,
        control: &mut watch::Receiver<Control>,
    ) -> Result<Option<ShardExit>, RunError> {
        let Some(archive) = self.progress.archive.as_mut() else { return Ok(None) };
        archive.close_all()?;
        for mismatch in archive.finish_rebuilds()? {
            tracing::error!(shard = %self.shard_id, %mismatch, "an archive file was rebuilt with fewer rows than decided");
        }
        // Until a stored checkpoint lists no archive file: every file is written.
        self.checkpoint_until(control, |task| task.progress.archive.as_ref().is_none_or(|a| a.marks().is_empty())).await
    }

    /// Writes the archive files decided by the checkpoint just written, and shows the archive's
    /// lag. True when none is left to write.
    async fn write_archive_files(&mut self) -> bool {
        let (Some(target), Some(archive)) = (self.shared.archive.as_ref(), self.progress.archive.as_mut()) else {
            return true;
        };
        let done = target.upload_ready(archive, &self.shared.state.metrics).await;
        let lag_ms = archive.lag_ms(wall_clock_millis());
        let lag_seconds = i64::try_from(lag_ms / 1000).unwrap_or(i64::MAX);
        self.shared.state.metrics.archive_lag_seconds.with_label_values(&[&self.shard_id]).set(lag_seconds);
        self.shared.state.update(&self.shard_id, |s| s.archive_lag_ms = Some(lag_ms));
        done
    }

    /// Flushes the sink, then writes the checkpoint, marked released at `released` if given. With
    /// an archive, the checkpoint first decides which files close (size or age) and lists every
    /// file open or decided; the decided files are written after it (a released shard leaves
    /// them to its new owner, which rebuilds them).
    async fn write_checkpoint(&mut self, released: Option<u64>) -> Result<Written, RunError> {
        let started = Instant::now();
        self.shared.sink.flush().await?;
        let reading_again = self.progress.reading_again();
        if let (Some(target), Some(archive)) = (&self.shared.archive, &mut self.progress.archive)
            && !reading_again
        {
            target.close_due(archive)?;
        }
        let mut checkpoint = ShardCheckpoint::capture(
            &self.shard_id,
            self.progress.position.clone(),
            &self.owner,
            &self.progress.processor,
            &self.shared.config,
        );
        checkpoint.released_epoch = released;
        checkpoint.archive = self.progress.archive.as_ref().map(ShardArchive::marks).unwrap_or_default();
        let bytes = checkpoint.to_bytes()?;
        let key = checkpoint_key(&self.shared.identity, &self.shard_id);
        let precondition = self.etag.clone().map_or(Precondition::Absent, Precondition::Matches);
        let mut result = self.shared.store.put(&key, &bytes, &precondition).await;
        if let Err(StoreError::Conflict { .. }) = result
            && let Some(tag) = self.own_unacknowledged_write(&key).await
        {
            // An earlier checkpoint of ours was stored but its answer lost: not a fence.
            tracing::info!(shard = %self.shard_id, "the stored checkpoint is an earlier one of ours; writing over it");
            result = self.shared.store.put(&key, &bytes, &Precondition::Matches(tag)).await;
        }
        let metrics = &self.shared.state.metrics;
        match result {
            Ok(etag) => {
                self.etag = Some(etag);
                metrics
                    .checkpoint_seconds
                    .with_label_values(&[self.shared.store.kind()])
                    .observe(started.elapsed().as_secs_f64());
                let written_at = wall_clock_millis();
                metrics.checkpoint_written(&self.shard_id, written_at, bytes.len());
                let now = taxi_core::time::format_timestamp(written_at);
                let position = match &self.progress.position {
                    Position::Sequence { sequence_number, .. } => Some(sequence_number.clone()),
                    _ => None,
                };
                self.shared.state.update(&self.shard_id, |s| {
                    s.last_checkpoint = Some(now);
                    s.checkpoint_error = None;
                    s.position = position;
                });
                if released.is_none() {
                    self.write_archive_files().await;
                }
                Ok(Written::Yes)
            }
            Err(StoreError::Conflict { .. }) => {
                metrics.checkpoint_failures.with_label_values(&["conflict"]).inc();
                tracing::warn!(shard = %self.shard_id, "checkpoint fenced: another worker owns the shard; stopping it");
                self.shared.state.update(&self.shard_id, |s| s.state = ShardState::Fenced);
                Ok(Written::Fenced)
            }
            Err(e) => {
                // Keep the in-memory state and try again at the next interval.
                metrics.checkpoint_failures.with_label_values(&["io"]).inc();
                tracing::warn!(shard = %self.shard_id, error = %e, "checkpoint failed; will retry");
                let message = e.to_string();
                self.shared.state.update(&self.shard_id, |s| s.checkpoint_error = Some(message));
                Ok(Written::Failed)
            }
        }
    }

    /// After a conflict: the tag of the stored checkpoint when this very owner (process and
    /// epoch) wrote it, so an earlier write of ours whose answer was lost does not fence us.
    async fn own_unacknowledged_write(&self, key: &str) -> Option<ETag> {
        let (bytes, tag) = self.shared.store.get(key).await.ok().flatten()?;
        let stored = ShardCheckpoint::from_bytes(&bytes).ok()?;
        let ours = stored.owner_id == self.owner.id && stored.owner_epoch == self.owner.epoch;
        (ours && stored.released_epoch.is_none()).then_some(tag)
    }

    /// Publishes counter deltas and the watermark.
    fn report(&mut self) {
        let now = self.progress.processor.counters().clone();
        let delta = now.since(&std::mem::replace(&mut self.reported, now.clone()));
        if let Ok(mut totals) = self.shared.totals.lock() {
            totals.add(&delta);
        }
        let metrics = &self.shared.state.metrics;
        let aggregated = delta.trips.saturating_sub(delta.outside_region + delta.late + delta.duplicates);
        metrics.records.with_label_values(&["aggregated"]).inc_by(aggregated);
        metrics.records.with_label_values(&["outside_region"]).inc_by(delta.outside_region);
        metrics.records.with_label_values(&["late"]).inc_by(delta.late);
        metrics.records.with_label_values(&["duplicate"]).inc_by(delta.duplicates);
        metrics.records.with_label_values(&["watermark"]).inc_by(delta.watermarks);
        for reason in InvalidReason::ALL {
            let n = delta.invalid[reason.index()];
            if n > 0 {
                metrics.records.with_label_values(&["invalid"]).inc_by(n);
                metrics.invalid.with_label_values(&[reason.as_str()]).inc_by(n);
            }
        }
        let watermark = self.progress.processor.watermark();
        if let Some(w) = watermark {
            metrics.watermark_lag_seconds.with_label_values(&[&self.shard_id]).set((wall_clock_millis() - w) / 1000);
        }
        let records = now.records;
        self.shared.state.update(&self.shard_id, |s| {
            s.records = records;
            s.watermark = watermark.map(taxi_core::time::format_timestamp);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::RunOptions;
    use super::super::testing::{self, MemoryKinesis, shard};
    use super::*;
    use taxi_core::topology::ShardInfo;

    const SHARD: &str = "shardId-000000000000";

    struct Run {
        shared: Arc<Shared<MemoryKinesis>>,
        _dir: tempfile::TempDir,
    }

    /// A run over one shard holding `records` records, closed or open.
    async fn run(closed: bool, records: usize, configure: impl FnOnce(&mut RunOptions)) -> Run {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = Arc::new(MemoryKinesis::new(vec![shard(SHARD, &[], closed)]));
        testing::add_watermarks(&api, SHARD, records);
        let mut options = testing::options(dir.path());
        configure(&mut options);
        Run { shared: Arc::new(testing::shared(api, options).await), _dir: dir }
    }

    impl Run {
        fn info(&self) -> ShardInfo {
            shard(SHARD, &[], false)
        }

        /// Starts the shard's task; the sender asks things of it.
        fn start(&self) -> (watch::Sender<Control>, tokio::task::JoinHandle<Result<ShardExit, RunError>>) {
            let (control, rx) = watch::channel(Control::Run);
            let grant = Grant { epoch: 0, requested_at: Instant::now(), wait_for_release: false };
            let shard = StartableShard { info: self.info(), parents: Vec::new() };
            (control, tokio::spawn(ShardTask::start(self.shared.clone(), shard, rx, grant)))
        }

        async fn checkpoint(&self) -> (ShardCheckpoint, ETag) {
            let key = checkpoint_key(&self.shared.identity, SHARD);
            let (bytes, tag) = self.shared.store.get(&key).await.expect("read").expect("a checkpoint");
            (ShardCheckpoint::from_bytes(&bytes).expect("readable"), tag)
        }

        fn state(&self) -> ShardState {
            self.shared.state.status().shards.get(SHARD).map(|s| s.state).unwrap_or_default()
        }

        /// Waits until the shard has processed `records` records.
        async fn until_processed(&self, records: u64) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.shared.state.status().shards.get(SHARD).is_none_or(|s| s.records < records) {
                assert!(Instant::now() < deadline, "the shard never processed {records} records");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        /// Stores a checkpoint changed behind the task's back, written by `owner`.
        async fn overwrite(&self, owner: &Owner) {
            let (mut checkpoint, tag) = self.checkpoint().await;
            checkpoint.owner_id.clone_from(&owner.id);
            checkpoint.owner_epoch = owner.epoch;
            checkpoint.counters.records += 1;
            let key = checkpoint_key(&self.shared.identity, SHARD);
            let bytes = checkpoint.to_bytes().expect("encode");
            self.shared.store.put(&key, &bytes, &Precondition::Matches(tag)).await.expect("overwrite");
        }
    }

    async fn ended(task: tokio::task::JoinHandle<Result<ShardExit, RunError>>) -> ShardExit {
        let result =
            tokio::time::timeout(Duration::from_secs(10), task).await.expect("the task ends").expect("no panic");
        result.expect("no failure")
    }

    fn at(sequence_number: &str) -> Position {
        Position::Sequence { sequence_number: sequence_number.to_owned(), sub_sequence: None }
    }

    #[tokio::test]
    async fn a_closed_shard_is_read_to_its_end_and_checkpointed_finished() {
        let run = run(true, 3, |_| {}).await;
        let (_control, task) = run.start();
        assert_eq!(ended(task).await, ShardExit::Finished);
        let (checkpoint, _) = run.checkpoint().await;
        assert_eq!(checkpoint.position, Position::Finished);
        assert_eq!(checkpoint.counters.records, 3);
        let status = run.shared.state.status();
        assert_eq!(status.shards[SHARD].state, ShardState::Finished);
        assert_eq!(status.shards[SHARD].records, 3);
        assert!(status.shards[SHARD].finished_at_ms >= status.shards[SHARD].started_at_ms);
        assert_eq!(run.shared.totals.lock().expect("totals").watermarks, 3, "counted into the run's totals");
    }

    /// The rows of every archive file under `dir`, by trip id.
    fn archived_trips(dir: &std::path::Path) -> Vec<u64> {
        let mut trips = Vec::new();
        let mut folders = vec![dir.to_owned()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    folders.push(path);
                    continue;
                }
                let reader =
                    parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).expect("open"))
                        .expect("a Parquet file");
                for row in parquet::file::reader::FileReader::get_row_iter(&reader, None).expect("rows") {
                    let row = row.expect("row");
                    trips.push(parquet::record::RowAccessor::get_long(&row, 0).expect("trip_id") as u64);
                }
            }
        }
        trips.sort_unstable();
        trips
    }

    fn archive_into(dir: &std::path::Path, options: &mut RunOptions) {
        let mut settings = taxi_core::settings::ArchiveSettings::at(format!("file://{}", dir.display()));
        settings.max_file_age_ms = 1_000;
        options.archive = Some(settings);
    }

    #[tokio::test]
    async fn a_shard_read_to_its_end_writes_every_archive_file_before_its_finished_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = run(true, 0, |o| archive_into(dir.path(), o)).await;
        testing::add_trips(&run.shared.api, SHARD, 1, 150);
        let (_control, task) = run.start();
        assert_eq!(ended(task).await, ShardExit::Finished);
        let (checkpoint, _) = run.checkpoint().await;
        assert_eq!(checkpoint.position, Position::Finished);
        assert!(checkpoint.archive.is_empty(), "the finished checkpoint lists no archive file");
        assert_eq!(archived_trips(dir.path()), (1..=150).collect::<Vec<u64>>());
        assert_eq!(run.shared.state.metrics.archive_trips.get(), 150);
        assert!(run.shared.state.metrics.archive_files.get() >= 3, "one file per event hour at least");
    }

    #[tokio::test]
    async fn a_refused_archive_write_stays_listed_in_the_checkpoints_and_is_written_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("archive");
        // A file where the archive's folders go: every write fails until it is removed.
        std::fs::write(&archive, b"in the way").expect("block the archive");
        let run = run(false, 0, |o| archive_into(&archive, o)).await;
        testing::add_trips(&run.shared.api, SHARD, 1, 20);
        let (control, task) = run.start();
        let metrics = run.shared.state.metrics.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while metrics.archive_failures.get() == 0 {
            assert!(Instant::now() < deadline, "no archive write was tried");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (checkpoint, _) = run.checkpoint().await;
        assert!(!checkpoint.archive.closing.is_empty(), "the refused file is still listed: {:?}", checkpoint.archive);
        assert!(run.shared.state.status().shards[SHARD].archive_lag_ms.is_some_and(|lag| lag >= 1_000));

        std::fs::remove_file(&archive).expect("unblock");
        while metrics.archive_trips.get() < 20 {
            assert!(Instant::now() < deadline + Duration::from_secs(10), "the file was never written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        control.send(Control::Stop { emit_open_windows: false }).expect("stop");
        assert_eq!(ended(task).await, ShardExit::Stopped);
        assert!(run.checkpoint().await.0.archive.closing.is_empty(), "written, so no longer listed");
        assert_eq!(archived_trips(&archive), (1..=20).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn a_finished_checkpoint_ends_the_task_before_it_reads() {
        let run = run(true, 3, |_| {}).await;
        let (_control, task) = run.start();
        assert_eq!(ended(task).await, ShardExit::Finished);
        let (_control, again) = run.start();
        assert_eq!(ended(again).await, ShardExit::Finished);
        assert_eq!(run.shared.totals.lock().expect("totals").records, 3, "nothing read twice");
    }

    #[tokio::test]
    async fn a_spent_record_budget_stops_the_shard_with_a_checkpoint() {
        let run = run(false, 5, |o| o.stop_after_records = Some(2)).await;
        let (_control, task) = run.start();
        assert_eq!(ended(task).await, ShardExit::Stopped);
        assert_eq!(run.checkpoint().await.0.position, at("00002"));

        // The next run goes on from there.
        let (_control, task) = run.start();
        assert_eq!(ended(task).await, ShardExit::Stopped);
        assert_eq!(run.checkpoint().await.0.position, at("00004"));
    }

    #[tokio::test]
    async fn a_stop_writes_a_final_checkpoint() {
        let run = run(false, 4, |_| {}).await;
        let (control, task) = run.start();
        run.until_processed(4).await;
        control.send_replace(Control::Stop { emit_open_windows: true });
        assert_eq!(ended(task).await, ShardExit::Stopped);
        assert_eq!(run.checkpoint().await.0.position, at("00004"));
        assert_eq!(run.state(), ShardState::Stopped);
    }

    #[tokio::test]
    async fn a_release_writes_a_checkpoint_marked_released() {
        let run = run(false, 2, |_| {}).await;
        let (control, task) = run.start();
        run.until_processed(2).await;
        control.send_replace(Control::Release { epoch: 3 });
        assert_eq!(ended(task).await, ShardExit::Released);
        let (checkpoint, _) = run.checkpoint().await;
        assert_eq!((checkpoint.position, checkpoint.released_epoch), (at("00002"), Some(3)));
        assert_eq!(run.state(), ShardState::Released);
        let released = run.shared.state.metrics.shard_handoffs.with_label_values(&["released"]).get();
        assert_eq!(released, 1);
    }

    #[tokio::test]
    async fn another_owners_checkpoint_fences_the_task() {
        let run = run(false, 1, |_| {}).await;
        let (_control, task) = run.start();
        run.until_processed(1).await;
        run.overwrite(&Owner { epoch: 0, id: "another-worker".to_owned(), ordinal: None }).await;
        assert_eq!(ended(task).await, ShardExit::Fenced, "at its next checkpoint");
        assert_eq!(run.state(), ShardState::Fenced);
        assert_eq!(run.checkpoint().await.0.owner_id, "another-worker", "the other owner's state stays");
        let conflicts = run.shared.state.metrics.checkpoint_failures.with_label_values(&["conflict"]).get();
        assert_eq!(conflicts, 1);
    }

    #[tokio::test]
    async fn an_earlier_checkpoint_of_its_own_does_not_fence_the_task() {
        let run = run(false, 1, |_| {}).await;
        let (control, task) = run.start();
        run.until_processed(1).await;
        // Stored, but its answer lost: the task still holds the tag before it.
        let me = Owner { epoch: 0, ..run.shared.owner.clone() };
        run.overwrite(&me).await;
        let key = checkpoint_key(&run.shared.identity, SHARD);
        let (before, _) = run.shared.store.get(&key).await.expect("read").expect("some");
        let deadline = Instant::now() + Duration::from_secs(10);
        while run.shared.store.get(&key).await.expect("read").is_some_and(|(now, _)| now == before) {
            assert!(Instant::now() < deadline, "no checkpoint written over it");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        control.send_replace(Control::Stop { emit_open_windows: false });
        assert_eq!(ended(task).await, ShardExit::Stopped);
        assert_eq!(run.checkpoint().await.0.counters.records, 1, "its own state, written over the earlier one");
    }
}

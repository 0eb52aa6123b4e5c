//! Taking a shard's checkpoint over before reading it: where the pipeline's checkpoints live
//! ([`key_in_use`], [`checkpoint_key`]), the claim itself ([`claim`]: read, maybe wait for the
//! previous owner's release, then a conditional write that fences any previous owner still
//! running), and the state a claimed shard starts from (its own checkpoint, a readable history
//! copy of a corrupt one, or its parents' final checkpoints for a new child).

use std::time::Duration;

use tokio::sync::watch;

use super::control::{Control, wait_or_interrupt};
use super::ownership::Grant;
use super::{RunError, Shared};
use crate::handoff::{ClaimDecision, Claimant, HandoffOutcome, Holder, decide_claim};
use taxi_core::archive::ArchiveMarks;
use taxi_core::checkpoint::{Owner, Position, ShardCheckpoint, child_of};
use taxi_core::event::Millis;
use taxi_core::identity::PipelineId;
use taxi_core::shard::ShardProcessor;
use taxi_core::start_position::{InitialPosition, initial_position};
use taxi_core::status::ShardState;
use taxi_core::time::wall_clock_millis;
use taxi_io::store::{CheckpointStore, ETag, Precondition, StoreError};

/// Attempts to claim a shard whose checkpoint keeps changing under us before giving up.
const CLAIM_ATTEMPTS: u32 = 5;

/// The key of `shard_id`'s checkpoint under the pipeline key `pipeline`.
pub(super) fn checkpoint_key(pipeline: &str, shard_id: &str) -> String {
    format!("{pipeline}/shards/{shard_id}.json")
}

/// The key the pipeline's state lives under: [`PipelineId::key`], except for a pipeline whose
/// checkpoints were all written before namespaces were part of the identity. That one keeps its
/// layout (moving the checkpoints would also change every document id, and the old documents
/// would count twice next to the new ones), and says so.
pub(super) async fn key_in_use(store: &CheckpointStore, id: &PipelineId) -> Result<String, StoreError> {
    let Some(legacy) = id.legacy() else { return Ok(id.key()) };
    if !store.list(&format!("{}/shards", id.key())).await?.is_empty()
        || store.list(&format!("{}/shards", legacy.key())).await?.is_empty()
    {
        return Ok(id.key());
    }
    tracing::warn!(
        pipeline = %id,
        legacy = %legacy,
        "checkpoints of this pipeline exist only under its name without the namespace, as written before \
         namespaces were part of a pipeline's identity: this pipeline goes on using them and its document ids. \
         A pipeline of the same name in another namespace would share them; give one of them another name, \
         or delete the old checkpoints to start this one afresh under its namespace"
    );
    Ok(legacy.key())
}

/// A claimed shard: its restored state and the version of the checkpoint the claim wrote.
pub(super) struct Claimed {
    /// The shard's restored (or new) event-time state.
    pub(super) processor: ShardProcessor,
    /// Where reading resumes; a shard with nothing processed yet has its start resolved.
    pub(super) position: Position,
    /// The version the claim wrote: the next checkpoint replaces exactly this one.
    pub(super) etag: ETag,
    /// Set when the shard came from another owner (or back from a release).
    pub(super) handoff: Option<HandoffOutcome>,
    /// The archive files the checkpoint lists as open or decided, to rebuild.
    pub(super) archive: ArchiveMarks,
}

/// How claiming a shard ended.
pub(super) enum Claim {
    /// Ours now.
    Claimed(Box<Claimed>),
    /// Read to its end already: nothing to claim.
    Finished,
    /// Another owner kept writing the checkpoint.
    Fenced,
    /// Stopped or released before it was claimed.
    Interrupted(Control),
}

/// What a stored checkpoint says about who holds the shard.
fn holder_of(checkpoint: &ShardCheckpoint) -> Holder<'_> {
    Holder {
        finished: checkpoint.position == Position::Finished,
        owner_id: &checkpoint.owner_id,
        owner_ordinal: checkpoint.owner_ordinal,
        owner_epoch: checkpoint.owner_epoch,
        released_epoch: checkpoint.released_epoch,
    }
}

/// Where a claimed shard resumes: its checkpointed position, or, with nothing processed yet, the
/// configured start resolved now, once (the claim checkpoints it). A `child` always starts at
/// its beginning.
fn resume_from(position: Position, start: &InitialPosition, child: bool, now: Millis) -> Position {
    match position {
        Position::Start => initial_position(start, child, now),
        position => position,
    }
}

/// Claims a shard: reads its checkpoint, waits for the previous owner's release
/// when [`decide_claim`] says so, then writes the checkpoint back conditional on the version read.
/// From then on a previous owner still running is fenced at its next checkpoint.
///
/// The claim is made at the worker's current epoch: a shard granted at E and still owned at a
/// later epoch (the task would have been told to release it otherwise) accepts a release made at
/// that later epoch, and writes it as its owner epoch.
pub(super) async fn claim<K>(
    shared: &Shared<K>,
    shard_id: &str,
    parents: &[String],
    owner: &mut Owner,
    grant: &Grant,
    control: &mut watch::Receiver<Control>,
) -> Result<Claim, RunError> {
    let key = checkpoint_key(&shared.identity, shard_id);
    let mut conflicts = 0;
    let mut waiting = false;
    loop {
        let requested = *control.borrow_and_update();
        if requested != Control::Run {
            return Ok(Claim::Interrupted(requested));
        }
        owner.epoch = grant.epoch.max(shared.state.assignment_epoch().unwrap_or(0));
        let me = Claimant {
            id: &owner.id,
            ordinal: owner.ordinal,
            epoch: owner.epoch,
            wait_for_release: grant.wait_for_release,
        };
        let stored = match shared.store.get(&key).await {
            Ok(stored) => stored,
            Err(e @ StoreError::S3 { retryable: true, .. }) => {
                wait_out_store_failure(shared, shard_id, "read the checkpoint to claim", &e, control).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let (checkpoint, etag) = match stored {
            Some((bytes, etag)) => (Some(readable_checkpoint(shared, &key, &bytes).await?), Some(etag)),
            None => (None, None),
        };
        let holder = checkpoint.as_ref().map(holder_of);
        let handoff =
            match decide_claim(holder.as_ref(), &me, grant.requested_at.elapsed(), shared.options.takeover_timeout) {
                ClaimDecision::Finished => return Ok(Claim::Finished),
                ClaimDecision::Claim(handoff) => handoff,
                ClaimDecision::Wait => {
                    if !waiting {
                        waiting = true;
                        tracing::info!(
                            shard = shard_id,
                            epoch = grant.epoch,
                            "waiting for the previous owner to release the shard"
                        );
                        shared.state.update(shard_id, |s| s.state = ShardState::WaitingForRelease);
                    }
                    wait_or_interrupt(control).await;
                    continue;
                }
            };
        let (processor, position, archive) = match checkpoint {
            Some(checkpoint) => (checkpoint.restore(shared.config.clone())?, checkpoint.position, checkpoint.archive),
            None => match parent_checkpoints(shared, parents).await {
                Ok(parents) => (child_of(&parents, shared.config.clone()), Position::Start, ArchiveMarks::default()),
                Err(RunError::Store(e @ StoreError::S3 { retryable: true, .. })) => {
                    wait_out_store_failure(shared, shard_id, "read a parent's checkpoint", &e, control).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        let position = resume_from(position, &shared.options.start, !parents.is_empty(), wall_clock_millis());
        let mut claimed = ShardCheckpoint::capture(shard_id, position.clone(), owner, &processor, &shared.config);
        // The files the previous owner decided or left open stay listed until they are written.
        claimed.archive = archive.clone();
        let precondition = etag.map_or(Precondition::Absent, Precondition::Matches);
        match shared.store.put(&key, &claimed.to_bytes()?, &precondition).await {
            Ok(etag) => return Ok(Claim::Claimed(Box::new(Claimed { processor, position, etag, handoff, archive }))),
            Err(StoreError::Conflict { .. }) if conflicts < CLAIM_ATTEMPTS => {
                // The previous owner wrote in between: read its newer state and decide again.
                conflicts += 1;
                tokio::time::sleep(Duration::from_millis(50 + fastrand::u64(..100))).await;
            }
            Err(StoreError::Conflict { .. }) => {
                tracing::warn!(shard = shard_id, "could not claim the shard: another owner keeps writing it");
                shared.state.update(shard_id, |s| s.state = ShardState::Fenced);
                return Ok(Claim::Fenced);
            }
            Err(e @ StoreError::S3 { retryable: true, .. }) => {
                wait_out_store_failure(shared, shard_id, "write the claim", &e, control).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The final checkpoints of a new child shard's parents, which were each read to their end and
/// checkpointed before the child could start. A parent without a checkpoint held no record.
async fn parent_checkpoints<K>(shared: &Shared<K>, parents: &[String]) -> Result<Vec<ShardCheckpoint>, RunError> {
    let mut checkpoints = Vec::with_capacity(parents.len());
    for parent in parents {
        let key = checkpoint_key(&shared.identity, parent);
        if let Some((bytes, _)) = shared.store.get(&key).await? {
            checkpoints.push(readable_checkpoint(shared, &key, &bytes).await?);
        }
    }
    Ok(checkpoints)
}

/// The checkpoint in `bytes`, or, when they cannot be read (corrupted in the store, or cut short),
/// the newest history copy that can. The claim then writes over the corrupt object, and the
/// records after that copy are read again: their documents carry the same versions as before, so
/// nothing is counted twice.
async fn readable_checkpoint<K>(shared: &Shared<K>, key: &str, bytes: &[u8]) -> Result<ShardCheckpoint, RunError> {
    let error = match ShardCheckpoint::from_bytes(bytes) {
        Ok(checkpoint) => return Ok(checkpoint),
        Err(error) => error,
    };
    tracing::error!(key, %error, "the latest checkpoint is corrupt; looking for the newest readable history copy");
    shared.state.metrics.checkpoint_failures.with_label_values(&["corrupt"]).inc();
    for stamp in shared.store.history(key).await?.iter().rev() {
        let Some(copy) = shared.store.get_history(key, stamp).await? else { continue };
        match ShardCheckpoint::from_bytes(&copy) {
            Ok(checkpoint) => {
                tracing::warn!(key, stamp, position = ?checkpoint.position, "restoring from a history copy");
                return Ok(checkpoint);
            }
            Err(e) => tracing::warn!(key, stamp, error = %e, "history copy is not readable either"),
        }
    }
    Err(RunError::CorruptCheckpoint { key: key.to_owned(), reason: error.to_string() })
}

/// A store that failed while claiming is unavailable for now: the shard waits (as a previous owner
/// must too) while the worker and its other shards go on. The failure is logged, counted and shown
/// in `/status` and `/readyz`; then it sleeps until the next attempt.
async fn wait_out_store_failure<K>(
    shared: &Shared<K>,
    shard_id: &str,
    action: &str,
    error: &StoreError,
    control: &mut watch::Receiver<Control>,
) {
    tracing::warn!(shard = shard_id, %error, "failed to {action}; retrying");
    shared.state.metrics.checkpoint_failures.with_label_values(&["io"]).inc();
    let message = error.to_string();
    shared.state.update(shard_id, |s| s.checkpoint_error = Some(message));
    wait_or_interrupt(control).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::super::{RunOptions, testing};
    use super::*;
    use taxi_core::config::EngineConfig;

    const SHARD: &str = "shardId-000000000001";

    /// This worker (ordinal 1) about to claim a shard, over a fresh checkpoint directory.
    struct Setup {
        shared: Shared<()>,
        owner: Owner,
        _dir: tempfile::TempDir,
    }

    async fn setup(configure: impl FnOnce(&mut RunOptions)) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = testing::options(dir.path());
        options.ordinal = Some(1);
        configure(&mut options);
        let shared = testing::shared(Arc::new(()), options).await;
        let owner = shared.owner.clone();
        Setup { shared, owner, _dir: dir }
    }

    fn grant(epoch: u64, wait_for_release: bool) -> Grant {
        Grant { epoch, requested_at: Instant::now(), wait_for_release }
    }

    /// Stores a checkpoint of `shard` at `position`, as written by `owner` (released at `released`).
    async fn store_checkpoint(
        shared: &Shared<()>,
        shard: &str,
        position: Position,
        owner: &Owner,
        released: Option<u64>,
    ) {
        let processor = ShardProcessor::new(shared.config.clone());
        let mut checkpoint = ShardCheckpoint::capture(shard, position, owner, &processor, &shared.config);
        checkpoint.released_epoch = released;
        let key = checkpoint_key(&shared.identity, shard);
        let bytes = checkpoint.to_bytes().expect("encode");
        shared.store.put(&key, &bytes, &Precondition::None).await.expect("store");
    }

    async fn stored(shared: &Shared<()>, shard: &str) -> ShardCheckpoint {
        let (bytes, _) = shared.store.get(&checkpoint_key(&shared.identity, shard)).await.expect("read").expect("some");
        ShardCheckpoint::from_bytes(&bytes).expect("readable")
    }

    fn other_worker(epoch: u64) -> Owner {
        Owner { epoch, id: "worker-0-pid-7".to_owned(), ordinal: Some(0) }
    }

    fn at(sequence_number: &str) -> Position {
        Position::Sequence { sequence_number: sequence_number.to_owned(), sub_sequence: None }
    }

    async fn claimed(s: &mut Setup, parents: &[String], grant: Grant) -> Result<Claim, RunError> {
        let (_control, mut rx) = watch::channel(Control::Run);
        claim(&s.shared, SHARD, parents, &mut s.owner, &grant, &mut rx).await
    }

    fn expect_claimed(claim: Result<Claim, RunError>) -> Claimed {
        match claim {
            Ok(Claim::Claimed(claimed)) => *claimed,
            Ok(_) => panic!("not claimed"),
            Err(e) => panic!("claim failed: {e}"),
        }
    }

    #[test]
    fn a_checkpoint_key_is_the_pipeline_then_the_shard() {
        assert_eq!(checkpoint_key("nyc", "shardId-000000000007"), "nyc/shards/shardId-000000000007.json");
        assert_eq!(checkpoint_key("taxi/nyc", "shardId-1"), "taxi/nyc/shards/shardId-1.json");
    }

    #[test]
    fn only_a_shard_with_nothing_processed_resolves_its_start() {
        let latest = InitialPosition::Latest;
        let now = 1_700_000_000_000;
        assert_eq!(resume_from(Position::Start, &latest, false, now), Position::ArrivedFrom { timestamp: now });
        assert_eq!(resume_from(Position::Start, &latest, true, now), Position::Start, "a child reads everything");
        assert_eq!(resume_from(at("42"), &latest, false, now), at("42"));
        assert_eq!(resume_from(Position::Finished, &latest, false, now), Position::Finished);
    }

    #[test]
    fn a_checkpoint_tells_who_holds_the_shard() {
        let config = Arc::new(EngineConfig::default());
        let processor = ShardProcessor::new(config.clone());
        let mut checkpoint = ShardCheckpoint::capture(SHARD, at("1"), &other_worker(3), &processor, &config);
        checkpoint.released_epoch = Some(4);
        let holder = holder_of(&checkpoint);
        assert_eq!(
            holder,
            Holder {
                finished: false,
                owner_id: "worker-0-pid-7",
                owner_ordinal: Some(0),
                owner_epoch: 3,
                released_epoch: Some(4)
            }
        );
        checkpoint.position = Position::Finished;
        assert!(holder_of(&checkpoint).finished);
    }

    #[tokio::test]
    async fn the_legacy_key_is_kept_only_while_every_checkpoint_is_under_it() {
        let s = setup(|_| {}).await;
        let store = &s.shared.store;
        let namespaced = PipelineId::new(Some("taxi"), "nyc");
        assert_eq!(key_in_use(store, &PipelineId::new(None, "nyc")).await.expect("key"), "nyc");
        assert_eq!(key_in_use(store, &namespaced).await.expect("key"), "taxi/nyc", "a new pipeline");

        store.put(&checkpoint_key("nyc", SHARD), b"{}", &Precondition::Absent).await.expect("legacy checkpoint");
        assert_eq!(key_in_use(store, &namespaced).await.expect("key"), "nyc", "keeps its old layout");

        store.put(&checkpoint_key("taxi/nyc", SHARD), b"{}", &Precondition::Absent).await.expect("new checkpoint");
        assert_eq!(key_in_use(store, &namespaced).await.expect("key"), "taxi/nyc");
    }

    #[tokio::test]
    async fn a_shard_nobody_holds_is_claimed_at_once_from_its_resolved_start() {
        let mut s = setup(|o| o.start = InitialPosition::Latest).await;
        let before = wall_clock_millis();
        let claimed = expect_claimed(claimed(&mut s, &[], grant(2, true)).await);
        assert_eq!(claimed.handoff, None);
        let Position::ArrivedFrom { timestamp } = claimed.position else { panic!("{:?}", claimed.position) };
        assert!(timestamp >= before && timestamp <= wall_clock_millis());

        let checkpoint = stored(&s.shared, SHARD).await;
        assert_eq!(checkpoint.position, claimed.position, "the resolved start is checkpointed");
        assert_eq!((checkpoint.owner_id.as_str(), checkpoint.owner_epoch), (s.owner.id.as_str(), 2));
        assert_eq!(checkpoint.owner_ordinal, Some(1));
        let (_, tag) = s.shared.store.get(&checkpoint_key("nyc", SHARD)).await.expect("read").expect("some");
        assert_eq!(claimed.etag, tag, "the next checkpoint replaces exactly the claim");
    }

    #[tokio::test]
    async fn a_finished_shard_is_not_claimed() {
        let mut s = setup(|_| {}).await;
        store_checkpoint(&s.shared, SHARD, Position::Finished, &other_worker(1), None).await;
        assert!(matches!(claimed(&mut s, &[], grant(1, true)).await, Ok(Claim::Finished)));
        assert_eq!(stored(&s.shared, SHARD).await.owner_id, "worker-0-pid-7", "nothing written");
    }

    #[tokio::test]
    async fn a_release_at_the_current_epoch_is_claimed_at_once_and_resumes_where_it_stopped() {
        let mut s = setup(|_| {}).await;
        store_checkpoint(&s.shared, SHARD, at("00042"), &other_worker(1), Some(2)).await;
        // Granted at epoch 1; the worker follows epoch 2 by now.
        s.shared.state.update_assignment(|a| a.epoch = Some(2));
        let claimed = expect_claimed(claimed(&mut s, &[], grant(1, true)).await);
        assert_eq!(claimed.handoff, Some(HandoffOutcome::ClaimedAfterRelease));
        assert_eq!(claimed.position, at("00042"));
        let checkpoint = stored(&s.shared, SHARD).await;
        assert_eq!((checkpoint.owner_epoch, checkpoint.released_epoch), (2, None), "claimed at the current epoch");
        assert_eq!(s.owner.epoch, 2);
    }

    #[tokio::test]
    async fn a_shard_still_held_is_taken_over_after_the_timeout() {
        let timeout = Duration::from_millis(400);
        let mut s = setup(|o| o.takeover_timeout = timeout).await;
        store_checkpoint(&s.shared, SHARD, at("00007"), &other_worker(1), None).await;
        let started = Instant::now();
        let claimed = expect_claimed(claimed(&mut s, &[], grant(1, true)).await);
        assert!(started.elapsed() >= timeout, "waited for a release first");
        assert_eq!(claimed.handoff, Some(HandoffOutcome::TakenOverAfterTimeout));
        assert_eq!(claimed.position, at("00007"));
        assert_eq!(s.shared.state.status().shards[SHARD].state, ShardState::WaitingForRelease);
        assert_eq!(stored(&s.shared, SHARD).await.owner_id, s.owner.id);
    }

    #[tokio::test]
    async fn without_waiting_for_releases_a_held_shard_is_claimed_at_once() {
        let mut s = setup(|o| o.takeover_timeout = Duration::from_secs(3600)).await;
        store_checkpoint(&s.shared, SHARD, at("00007"), &other_worker(0), None).await;
        let claimed = expect_claimed(claimed(&mut s, &[], grant(0, false)).await);
        assert_eq!((claimed.handoff, claimed.position), (None, at("00007")));
    }

    #[tokio::test]
    async fn a_stop_or_release_ends_the_wait_for_the_previous_owner() {
        let mut s = setup(|o| o.takeover_timeout = Duration::from_secs(3600)).await;
        store_checkpoint(&s.shared, SHARD, at("00007"), &other_worker(1), None).await;
        for request in [Control::Stop { emit_open_windows: false }, Control::Release { epoch: 2 }] {
            let (control, mut rx) = watch::channel(Control::Run);
            let asked = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                control.send_replace(request);
                control
            });
            let result = claim(&s.shared, SHARD, &[], &mut s.owner, &grant(1, true), &mut rx).await;
            assert!(matches!(result, Ok(Claim::Interrupted(c)) if c == request), "{request:?}");
            drop(asked.await);
        }
        assert_eq!(stored(&s.shared, SHARD).await.owner_id, "worker-0-pid-7", "never claimed");
    }

    #[tokio::test]
    async fn a_corrupt_checkpoint_is_restored_from_the_newest_readable_copy() {
        let mut s = setup(|o| o.checkpoint_retain = 3).await;
        store_checkpoint(&s.shared, SHARD, at("00005"), &other_worker(0), None).await;
        store_checkpoint(&s.shared, SHARD, at("00009"), &other_worker(0), None).await;
        let key = checkpoint_key(&s.shared.identity, SHARD);
        // A torn write: the object and its newest history copy are cut short.
        s.shared.store.put(&key, b"{\"format_version\":", &Precondition::None).await.expect("store");
        let claimed = expect_claimed(claimed(&mut s, &[], grant(0, false)).await);
        assert_eq!(claimed.position, at("00009"));
        let corrupt = s.shared.state.metrics.checkpoint_failures.with_label_values(&["corrupt"]).get();
        assert_eq!(corrupt, 1);
        assert_eq!(stored(&s.shared, SHARD).await.position, at("00009"), "the claim wrote over it");
    }

    #[tokio::test]
    async fn a_corrupt_checkpoint_without_a_readable_copy_fails_the_shard() {
        let mut s = setup(|o| o.checkpoint_retain = 0).await;
        let key = checkpoint_key(&s.shared.identity, SHARD);
        s.shared.store.put(&key, b"not a checkpoint", &Precondition::None).await.expect("store");
        let result = claimed(&mut s, &[], grant(0, false)).await;
        assert!(matches!(result, Err(RunError::CorruptCheckpoint { .. })));
    }

    #[tokio::test]
    async fn a_new_child_starts_at_its_beginning_from_its_parents_final_state() {
        let mut s = setup(|o| o.start = InitialPosition::Latest).await;
        let parents = ["shardId-p1".to_owned(), "shardId-p2".to_owned()];
        // p1 is read to its end; p2 held no record and has no checkpoint.
        store_checkpoint(&s.shared, &parents[0], Position::Finished, &other_worker(0), None).await;
        let child = expect_claimed(claimed(&mut s, &parents, grant(0, false)).await);
        assert_eq!(child.position, Position::Start, "whatever the configured start");
        assert_eq!(stored(&s.shared, SHARD).await.position, Position::Start);

        // A parent whose checkpoint cannot be read stops the child.
        let mut s = setup(|o| o.checkpoint_retain = 0).await;
        let key = checkpoint_key(&s.shared.identity, &parents[1]);
        s.shared.store.put(&key, b"garbage", &Precondition::None).await.expect("store");
        assert!(claimed(&mut s, &parents, grant(0, false)).await.is_err());
    }
}

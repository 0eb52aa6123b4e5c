//! Shard discovery: list the stream's shards and find the owned ones that may start now. A shard
//! starts once each parent still listed was read to its end and checkpointed as finished (by this
//! run, an earlier one or another worker); the others wait for their parents.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::Shared;
use super::claim::checkpoint_key;
use super::ownership::Ownership;
use super::retries::Retries;
use taxi_core::assignment::startable;
use taxi_core::checkpoint::{Position, ShardCheckpoint};
use taxi_core::status::ShardState;
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{KinesisApi, KinesisError};

/// A shard that may start now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StartableShard {
    /// The shard as listed.
    pub(super) info: ShardInfo,
    /// Its parents still listed, each read to its end and checkpointed first. A shard with any
    /// starts at its beginning whatever the configured start position, from their final state.
    pub(super) parents: Vec<String>,
}

/// What one discovery found among the owned shards.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Discovered {
    /// Owned shards that may start now, in listing order.
    pub(super) start: Vec<StartableShard>,
    /// Owned shards waiting for a parent to be read to its end.
    pub(super) waiting: Vec<String>,
}

/// The listed shards whose checkpoints may say they are finished and matter here: the owned ones
/// and their parents, unless `known` (finished or running) already.
fn worth_checking(shards: &[ShardInfo], owns: impl Fn(&str) -> bool, known: impl Fn(&str) -> bool) -> Vec<&str> {
    let relevant: HashSet<&str> = shards
        .iter()
        .filter(|s| owns(&s.shard_id))
        .flat_map(|s| std::iter::once(s.shard_id.as_str()).chain(s.parents()))
        .collect();
    shards.iter().map(|s| s.shard_id.as_str()).filter(|id| relevant.contains(id) && !known(id)).collect()
}

/// Sorts the owned shards not `busy` (running, parked or waiting for a retry) and not finished
/// into those that may start now (parent before child; a parent no longer listed has expired from
/// the stream) and those that wait for their parents.
fn sort_owned(
    shards: &[ShardInfo],
    owns: impl Fn(&str) -> bool,
    finished: &HashSet<String>,
    busy: impl Fn(&str) -> bool,
) -> Discovered {
    let ready: HashSet<&str> = startable(shards, finished).into_iter().map(|s| s.shard_id.as_str()).collect();
    let mut discovered = Discovered::default();
    for shard in shards.iter().filter(|s| owns(&s.shard_id)) {
        let id = shard.shard_id.as_str();
        if finished.contains(id) || busy(id) {
            continue;
        }
        if ready.contains(id) {
            let parents =
                shard.parents().filter(|p| shards.iter().any(|s| s.shard_id == *p)).map(str::to_owned).collect();
            discovered.start.push(StartableShard { info: shard.clone(), parents });
        } else {
            discovered.waiting.push(id.to_owned());
        }
    }
    discovered
}

/// Lists shards and returns the owned ones that can start now, and those that wait for their
/// parents. Failed shards that left the stream or this worker are forgotten; shards `finished`
/// by an earlier run or another worker are added to `finished`.
pub(super) async fn discover<K: KinesisApi, R>(
    shared: &Shared<K>,
    ownership: &Ownership,
    finished: &mut HashSet<String>,
    running: &HashMap<String, R>,
    parked: &HashMap<String, u64>,
    retries: &mut Retries,
) -> Result<Discovered, KinesisError> {
    let shards = shared.api.list_shards(&shared.options.stream).await?;
    // A failed shard that vanished from the stream, or was moved away, is not retried here.
    retries.retain(|id| ownership.owns(id) && shards.iter().any(|s| s.shard_id == id));
    if let Ok(mut closed) = shared.closed_shards.lock() {
        closed.extend(shards.iter().filter(|s| !s.is_open()).map(|s| s.shard_id.clone()));
    }
    // A shard is finished when this run finished it or its checkpoint says so (read once here,
    // so a parent finished by an earlier run or another worker is seen too).
    let unknown =
        worth_checking(&shards, |id| ownership.owns(id), |id| finished.contains(id) || running.contains_key(id));
    for id in unknown {
        if checkpoint_finished(shared, id).await {
            finished.insert(id.to_owned());
            shared.state.update(id, |s| s.state = ShardState::Finished);
        }
    }
    let (epoch, now) = (ownership.epoch(), Instant::now());
    let busy = |id: &str| {
        running.contains_key(id) || parked.get(id).is_some_and(|at| *at >= epoch) || retries.waiting(id, now)
    };
    let discovered = sort_owned(&shards, |id| ownership.owns(id), finished, busy);
    for id in &discovered.waiting {
        shared.state.update(id, |s| s.state = ShardState::WaitingForParents);
    }
    Ok(discovered)
}

/// Whether the shard's checkpoint marks it finished. A store failure counts as "not yet": the
/// next discovery asks again.
async fn checkpoint_finished<K>(shared: &Shared<K>, shard_id: &str) -> bool {
    match shared.store.get(&checkpoint_key(&shared.identity, shard_id)).await {
        Ok(Some((bytes, _))) => ShardCheckpoint::from_bytes(&bytes).is_ok_and(|c| c.position == Position::Finished),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(shard = shard_id, error = %e, "failed to read a checkpoint during discovery");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::testing::{self, MemoryKinesis, shard};
    use super::*;
    use taxi_core::checkpoint::Owner;
    use taxi_core::shard::ShardProcessor;
    use taxi_io::store::Precondition;

    /// p was split into a and b, which were merged into m; x is a child whose parent expired
    /// from the stream.
    fn graph() -> Vec<ShardInfo> {
        vec![
            shard("p", &[], true),
            shard("a", &["p"], true),
            shard("b", &["p"], true),
            shard("m", &["a", "b"], false),
            shard("x", &["expired"], false),
        ]
    }

    fn finished(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The shards to start, each as `id` or `id after parent,parent` (its listed parents), and
    /// the ids of those waiting.
    fn sorted(discovered: Discovered) -> (Vec<String>, Vec<String>) {
        let start = discovered
            .start
            .into_iter()
            .map(|s| {
                if s.parents.is_empty() {
                    s.info.shard_id
                } else {
                    format!("{} after {}", s.info.shard_id, s.parents.join(","))
                }
            })
            .collect();
        (start, discovered.waiting)
    }

    fn all(_: &str) -> bool {
        true
    }

    fn none(_: &str) -> bool {
        false
    }

    #[test]
    fn parents_are_read_to_their_end_before_their_children_start() {
        let shards = graph();
        let (start, waiting) = sorted(sort_owned(&shards, all, &finished(&[]), none));
        assert_eq!(start, ["p", "x"], "an expired parent holds nothing back");
        assert_eq!(waiting, ["a", "b", "m"]);

        let (start, waiting) = sorted(sort_owned(&shards, all, &finished(&["p"]), none));
        assert_eq!(start, ["a after p", "b after p", "x"]);
        assert_eq!(waiting, ["m"]);

        let (start, waiting) = sorted(sort_owned(&shards, all, &finished(&["p", "a"]), none));
        assert_eq!(start, ["b after p", "x"]);
        assert_eq!(waiting, ["m"], "a merge waits for both parents");

        let (start, waiting) = sorted(sort_owned(&shards, all, &finished(&["p", "a", "b", "x"]), none));
        assert_eq!(start, ["m after a,b"]);
        assert!(waiting.is_empty());
    }

    #[test]
    fn only_owned_shards_that_are_not_busy_are_sorted() {
        let shards = graph();
        let owns = |id: &str| id == "m" || id == "a" || id == "x";
        let busy = |id: &str| id == "x";
        let (start, waiting) = sorted(sort_owned(&shards, owns, &finished(&["p"]), busy));
        assert_eq!(start, ["a after p"], "x is running, parked or waiting for its retry");
        assert_eq!(waiting, ["m"], "b belongs to another worker");
    }

    #[test]
    fn the_checkpoints_worth_reading_are_of_owned_shards_and_their_parents() {
        let shards = graph();
        let only_m = |id: &str| id == "m";
        assert_eq!(worth_checking(&shards, only_m, none), ["a", "b", "m"]);
        assert_eq!(worth_checking(&shards, only_m, |id| id == "a"), ["b", "m"], "a is known finished or running");
        assert_eq!(worth_checking(&shards, |id| id == "x", none), ["x"], "an expired parent is not listed");
        assert_eq!(worth_checking(&shards, all, none), ["p", "a", "b", "m", "x"]);
    }

    #[tokio::test]
    async fn discovery_sees_parents_finished_elsewhere_and_skips_busy_shards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = Arc::new(MemoryKinesis::new(graph()));
        let shared = testing::shared(api, testing::options(dir.path())).await;
        // Another worker read p to its end.
        let other = Owner { epoch: 0, id: "elsewhere".to_owned(), ordinal: None };
        let processor = ShardProcessor::new(shared.config.clone());
        let done = ShardCheckpoint::capture("p", Position::Finished, &other, &processor, &shared.config);
        let key = checkpoint_key(&shared.identity, "p");
        shared.store.put(&key, &done.to_bytes().expect("encode"), &Precondition::Absent).await.expect("store");

        let ownership = Ownership::All { epoch: 0 };
        let mut finished = HashSet::new();
        let running: HashMap<String, ()> = [("x".to_owned(), ())].into();
        let parked: HashMap<String, u64> = [("b".to_owned(), 0)].into();
        let mut retries = Retries::default();
        let later = Instant::now() + Duration::from_secs(600);
        retries.failed("vanished", "gone".to_owned(), later);
        retries.failed("m", "sink down".to_owned(), later);

        let discovered =
            discover(&shared, &ownership, &mut finished, &running, &parked, &mut retries).await.expect("listed");
        let (start, waiting) = sorted(discovered);
        assert_eq!(start, ["a after p"], "b is parked, x is running");
        assert!(waiting.is_empty(), "m waits for its retry");
        assert_eq!(finished, HashSet::from(["p".to_owned()]));
        assert_eq!(retries.failures().len(), 1, "the shard that left the stream is forgotten");

        let status = shared.state.status();
        assert_eq!(status.shards["p"].state, ShardState::Finished);
        let closed = shared.closed_shards.lock().expect("closed").clone();
        assert_eq!(closed, HashSet::from(["p", "a", "b"].map(str::to_owned)));

        // Without its retry pending, m waits for its parents and shows it.
        retries.succeeded("m");
        let discovered =
            discover(&shared, &ownership, &mut finished, &running, &parked, &mut retries).await.expect("listed");
        assert_eq!(discovered.waiting, ["m"]);
        assert_eq!(shared.state.status().shards["m"].state, ShardState::WaitingForParents);
    }
}

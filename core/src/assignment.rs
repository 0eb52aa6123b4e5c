//! Shard assignment: which worker ordinal owns which shard, at which epoch.
//!
//! The operator computes it and writes it into ConfigMap `<pipeline>-assignment`, key
//! [`ASSIGNMENT_KEY`]; workers read it from there (or from a file outside Kubernetes). This module is
//! the one definition of that document, used by the operator, the worker and the tests.
//!
//! It also holds the pure algorithm behind the document ([`assign`]), the diff that tells which
//! shards pause on a change ([`moved_shards`]) and the parent-before-child gate
//! ([`startable`]).
//!
//! # How [`assign`] places shards
//!
//! Shards are taken in hash-key order (then shard id), never in hash-map order, so the result only
//! depends on the listing and the previous document. Open and closed shards form two groups, each
//! balanced on its own: closed shards still drain, and a reshard closes a burst of them at once.
//!
//! Within a group of `n` shards over `r` ordinals, every balanced placement gives each ordinal a
//! capacity ⌊n/r⌋, and exactly `n % r` of them one more (counts within one that sum to `n` force
//! this). A shard *keeps* its previous owner when that owner is `< r`; let `k[o]` be how many shards
//! of the group keep ordinal `o`. At most `min(k[o], cap[o])` of them can stay there, so any balanced
//! placement moves at least
//!
//! ```text
//! unowned + Σ_o max(0, k[o] − cap[o])   =   n − Σ_o min(k[o], ⌊n/r⌋) − min(n % r, |{o : k[o] > ⌊n/r⌋}|)
//! ```
//!
//! shards (`unowned` = shards new to the document or whose owner is gone): an extra slot only saves
//! a move on an ordinal keeping more than ⌊n/r⌋. [`assign`] gives the extra slots to those ordinals
//! first and then keeps exactly `min(k[o], cap[o])` shards on each, so it meets this bound. Only the
//! remaining shards move: a shard new to the document joins the owner of its parent (then of its
//! adjacent parent) if that ordinal has room, so a child waits for its parent on the same worker;
//! the others go to the least-loaded ordinal with room, lowest ordinal first.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::topology::ShardInfo;

/// The ConfigMap key (and file format) holding the assignment document.
pub const ASSIGNMENT_KEY: &str = "assignment.json";

/// Name of the ConfigMap holding a pipeline's assignment.
pub fn config_map_name(pipeline: &str) -> String {
    format!("{pipeline}-assignment")
}

/// Which worker ordinal owns each shard, at an epoch that only grows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// Grows by one with every change of `owners` or `replicas`.
    pub epoch: u64,
    /// Worker replicas the shards are spread over (ordinals `0..replicas`).
    pub replicas: u32,
    /// Owner ordinal per shard id.
    pub owners: BTreeMap<String, u32>,
}

/// An assignment document that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AssignmentError {
    /// Not the JSON of an assignment document.
    #[error("failed to parse the assignment document: {0}")]
    Parse(#[from] serde_json::Error),
    /// A shard owned by an ordinal outside `0..replicas`.
    #[error("shard {shard} is assigned to ordinal {ordinal}, but there are only {replicas} replicas")]
    OrdinalOutOfRange {
        /// The shard.
        shard: String,
        /// Its owner.
        ordinal: u32,
        /// Replicas of the assignment.
        replicas: u32,
    },
}

impl Assignment {
    /// Parses and checks an assignment document.
    pub fn from_json(bytes: &[u8]) -> Result<Assignment, AssignmentError> {
        let assignment: Assignment = serde_json::from_slice(bytes)?;
        if let Some((shard, &ordinal)) = assignment.owners.iter().find(|(_, o)| **o >= assignment.replicas) {
            return Err(AssignmentError::OrdinalOutOfRange {
                shard: shard.clone(),
                ordinal,
                replicas: assignment.replicas,
            });
        }
        Ok(assignment)
    }

    /// The document, as stored (compact JSON with shards in id order).
    pub fn to_json(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The ordinal that owns `shard`, if it is assigned.
    pub fn owner_of(&self, shard: &str) -> Option<u32> {
        self.owners.get(shard).copied()
    }

    /// The shards owned by `ordinal`, in id order.
    pub fn shards_of(&self, ordinal: u32) -> impl Iterator<Item = &str> {
        self.owners.iter().filter(move |(_, o)| **o == ordinal).map(|(s, _)| s.as_str())
    }
}

/// Assigns every listed shard to one of `replicas` ordinals.
///
/// Deterministic (the order of `shards` does not matter), balanced within one separately for open
/// and closed shards, and stable: with a `previous` document only the shards that must move for
/// balance, or whose owner is gone, change owner (see the module docs for the bound it meets).
/// Without a previous owner for any listed shard, each group is laid out in contiguous hash-key runs,
/// ordinal 0 first. `replicas == 0` owns nothing. The epoch is 1 without `previous`, stays the same
/// when neither owners nor replicas change, and grows by one otherwise.
pub fn assign(shards: &[ShardInfo], replicas: u32, previous: Option<&Assignment>) -> Assignment {
    let owners = if replicas == 0 { BTreeMap::new() } else { place(shards, replicas, previous) };
    let epoch = match previous {
        None => 1,
        Some(p) if p.replicas == replicas && p.owners == owners => p.epoch,
        Some(p) => p.epoch.saturating_add(1),
    };
    Assignment { epoch, replicas, owners }
}

/// `next` (from [`assign`]) with an epoch above `recorded`, the highest epoch known to have been
/// published, whenever the stored document is older than that (deleted, malformed, or replaced by
/// an older copy): workers ignore a document older than the one they follow, so epochs must only
/// grow.
pub fn above_recorded(mut next: Assignment, stored: Option<&Assignment>, recorded: Option<u64>) -> Assignment {
    if let Some(recorded) = recorded
        && stored.is_none_or(|s| s.epoch < recorded)
        && next.epoch <= recorded
    {
        next.epoch = recorded.saturating_add(1);
    }
    next
}

/// Shards whose owner differs between two documents, including shards only one of them lists,
/// sorted by id: the shards that pause on the change from `before` to `after`.
pub fn moved_shards(before: &Assignment, after: &Assignment) -> Vec<String> {
    let ids: BTreeSet<&String> = before.owners.keys().chain(after.owners.keys()).collect();
    ids.into_iter().filter(|id| before.owners.get(*id) != after.owners.get(*id)).cloned().collect()
}

/// The listed shards that may start reading now, in listing order: not finished themselves, and
/// every parent finished or no longer listed (expired from the stream). Parent before child;
/// the same rule as the worker's discovery.
pub fn startable<'a>(shards: &'a [ShardInfo], finished: &HashSet<String>) -> Vec<&'a ShardInfo> {
    let listed: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    shards
        .iter()
        .filter(|s| !finished.contains(&s.shard_id))
        .filter(|s| s.parents().all(|p| !listed.contains(p) || finished.contains(p)))
        .collect()
}

/// Owners for `replicas` ≥ 1; see [`assign`].
fn place(shards: &[ShardInfo], replicas: u32, previous: Option<&Assignment>) -> BTreeMap<String, u32> {
    let ordered = in_hash_order(shards);
    let (open, closed): (Vec<&ShardInfo>, Vec<&ShardInfo>) = ordered.iter().copied().partition(|s| s.is_open());
    let mut owners = BTreeMap::new();
    if ordered.iter().all(|s| kept_owner(previous, s, replicas).is_none()) {
        // Nothing carries over (first document, or every owner gone): lay out afresh.
        lay_out_contiguously(&closed, replicas, &mut owners);
        lay_out_contiguously(&open, replicas, &mut owners);
    } else {
        // Closed first, so new open children can follow their (closed) parents.
        balance(&closed, replicas, previous, &mut owners);
        balance(&open, replicas, previous, &mut owners);
    }
    owners
}

/// The shards by starting hash key, then id; a repeated id counts once.
fn in_hash_order(shards: &[ShardInfo]) -> Vec<&ShardInfo> {
    let mut ordered: Vec<&ShardInfo> = shards.iter().collect();
    ordered.sort_by(|a, b| (a.starting_hash_key, &a.shard_id).cmp(&(b.starting_hash_key, &b.shard_id)));
    let mut seen = HashSet::new();
    ordered.retain(|&s| seen.insert(s.shard_id.as_str()));
    ordered
}

/// The shard's previous owner, if that ordinal still exists.
fn kept_owner(previous: Option<&Assignment>, shard: &ShardInfo, replicas: u32) -> Option<u32> {
    previous.and_then(|p| p.owner_of(&shard.shard_id)).filter(|&o| o < replicas)
}

/// Where a shard new to the document would like to go: the owner (in `owners`, decided so far) of
/// its parent, else of its adjacent parent.
fn lineage_owner(previous: Option<&Assignment>, shard: &ShardInfo, owners: &BTreeMap<String, u32>) -> Option<u32> {
    if previous.is_some_and(|p| p.owners.contains_key(&shard.shard_id)) {
        return None;
    }
    shard.parents().find_map(|p| owners.get(p).copied())
}

/// Contiguous runs in hash-key order: ordinal 0 takes the first ⌈n/r⌉ or ⌊n/r⌋ shards, and so on.
fn lay_out_contiguously(group: &[&ShardInfo], replicas: u32, owners: &mut BTreeMap<String, u32>) {
    let (base, extra) = (group.len() / replicas as usize, group.len() % replicas as usize);
    let mut shards = group.iter();
    for o in 0..replicas {
        let run = base + usize::from((o as usize) < extra);
        for s in shards.by_ref().take(run) {
            owners.insert(s.shard_id.clone(), o);
        }
    }
}

/// Places one group (shards in hash-key order) with the fewest moves the balance allows.
fn balance(group: &[&ShardInfo], replicas: u32, previous: Option<&Assignment>, owners: &mut BTreeMap<String, u32>) {
    let kept: Vec<Option<u32>> = group.iter().map(|s| kept_owner(previous, s, replicas)).collect();
    let wished: Vec<Option<u32>> = group.iter().map(|s| lineage_owner(previous, s, owners)).collect();
    let mut fill = Fill::new(capacities(group.len(), replicas, &kept, &wished));
    // Shards stay while their owner has room; an over-full owner sheds its highest hash keys.
    let mut moving = Vec::new();
    for (&shard, &k) in group.iter().zip(&kept) {
        match k.filter(|&o| fill.has_room(o)) {
            Some(o) => fill.put(shard, o, owners),
            None => moving.push(shard),
        }
    }
    // New children join their parent's owner when it has room (a parent kept just above counts).
    let mut rest = Vec::new();
    for shard in moving {
        match lineage_owner(previous, shard, owners).filter(|&o| fill.has_room(o)) {
            Some(o) => fill.put(shard, o, owners),
            None => rest.push(shard),
        }
    }
    for shard in rest {
        let o = fill.least_loaded();
        fill.put(shard, o, owners);
    }
}

/// Per-ordinal capacity for `n` shards: ⌊n/r⌋ each, and one more for `n % r` ordinals. Those extra
/// slots go first to ordinals keeping more than ⌊n/r⌋ shards (the only place they save a move),
/// then to those most shards want (kept, or new children of their shards), then to the lowest.
fn capacities(n: usize, replicas: u32, kept: &[Option<u32>], wished: &[Option<u32>]) -> Vec<usize> {
    let r = replicas as usize;
    let (base, extra) = (n / r, n % r);
    let (mut keeps, mut wants) = (vec![0_usize; r], vec![0_usize; r]);
    kept.iter().flatten().for_each(|&o| keeps[o as usize] += 1);
    wished.iter().flatten().for_each(|&o| wants[o as usize] += 1);
    let mut order: Vec<usize> = (0..r).collect();
    order.sort_by_key(|&o| (Reverse(keeps[o] > base), Reverse(keeps[o] + wants[o]), o));
    let mut caps = vec![base; r];
    order.iter().take(extra).for_each(|&o| caps[o] += 1);
    caps
}

/// How full each ordinal is, within one group, against its capacity.
struct Fill {
    caps: Vec<usize>,
    load: Vec<usize>,
}

impl Fill {
    fn new(caps: Vec<usize>) -> Fill {
        let load = vec![0; caps.len()];
        Fill { caps, load }
    }

    fn has_room(&self, o: u32) -> bool {
        self.load[o as usize] < self.caps[o as usize]
    }

    /// The ordinal with room and the fewest shards, lowest first. Capacities sum to the group size,
    /// so one with room exists while shards are left (0 is a fallback that cannot happen).
    fn least_loaded(&self) -> u32 {
        let ordinals = 0..u32::try_from(self.caps.len()).unwrap_or(u32::MAX);
        ordinals.filter(|&o| self.has_room(o)).min_by_key(|&o| (self.load[o as usize], o)).unwrap_or(0)
    }

    fn put(&mut self, shard: &ShardInfo, o: u32, owners: &mut BTreeMap<String, u32>) {
        self.load[o as usize] += 1;
        owners.insert(shard.shard_id.clone(), o);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::partition::even_ranges;

    fn id(n: u32) -> String {
        format!("shardId-{n:012}")
    }

    fn ids(ns: impl IntoIterator<Item = u32>) -> Vec<String> {
        ns.into_iter().map(id).collect()
    }

    fn owned_by(a: &Assignment, ordinal: u32) -> Vec<String> {
        a.shards_of(ordinal).map(str::to_owned).collect()
    }

    #[test]
    fn epochs_continue_above_the_recorded_one_when_the_stored_document_is_lost_or_older() {
        let shards = Stream::new(4).shards;
        let fresh = || assign(&shards, 2, None);
        assert_eq!(fresh().epoch, 1);
        // The document was deleted (or is malformed) after epoch 7 was published.
        assert_eq!(above_recorded(fresh(), None, Some(7)).epoch, 8);
        // An older copy (epoch 5) was restored over it.
        let old = Assignment { epoch: 5, ..fresh() };
        let unchanged = assign(&shards, 2, Some(&old));
        assert_eq!(unchanged.epoch, 5);
        assert_eq!(above_recorded(unchanged, Some(&old), Some(7)).epoch, 8);
        // The stored document is the recorded one: nothing changes.
        let current = Assignment { epoch: 7, ..fresh() };
        let same = assign(&shards, 2, Some(&current));
        assert_eq!(above_recorded(same, Some(&current), Some(7)).epoch, 7);
        assert_eq!(above_recorded(fresh(), None, None).epoch, 1, "a new pipeline starts at 1");
    }

    /// A stream's shard listing as reshards and retention change it: ids grow with creation, a split
    /// or merge closes its parents and lists children with the right parent fields and hash ranges.
    struct Stream {
        shards: Vec<ShardInfo>,
        next: u32,
    }

    impl Stream {
        /// `n` open shards evenly over the key space, as CreateStream makes them.
        fn new(n: u32) -> Stream {
            let mut stream = Stream { shards: Vec::new(), next: 0 };
            for range in even_ranges(n) {
                stream.add(range.start, range.end, None, None);
            }
            stream
        }

        fn add(&mut self, start: u128, end: u128, parent: Option<String>, adjacent_parent: Option<String>) {
            let shard_id = id(self.next);
            self.next += 1;
            let (starting_hash_key, ending_hash_key) = (start, end);
            let ending_sequence_number = None;
            self.shards.push(ShardInfo {
                shard_id,
                parent,
                adjacent_parent,
                starting_hash_key,
                ending_hash_key,
                ending_sequence_number,
            });
        }

        /// Positions in `shards` of the open shards, in hash-key order.
        fn open(&self) -> Vec<usize> {
            let mut open: Vec<usize> = (0..self.shards.len()).filter(|&i| self.shards[i].is_open()).collect();
            open.sort_by_key(|&i| self.shards[i].starting_hash_key);
            open
        }

        /// Closes the shard at `i`, returning its id and hash range.
        fn close(&mut self, i: usize) -> (String, u128, u128) {
            let shard = &mut self.shards[i];
            shard.ending_sequence_number = Some("49000000000000000000".to_owned());
            (shard.shard_id.clone(), shard.starting_hash_key, shard.ending_hash_key)
        }

        fn split_shard(&mut self, shard: u32) {
            let Some(i) = self.shards.iter().position(|s| s.shard_id == id(shard) && s.is_open()) else { return };
            let (start, end) = (self.shards[i].starting_hash_key, self.shards[i].ending_hash_key);
            if start == end {
                return;
            }
            let (parent, _, _) = self.close(i);
            let mid = start + (end - start) / 2;
            self.add(start, mid, Some(parent.clone()), None);
            self.add(mid + 1, end, Some(parent), None);
        }

        /// Splits the `pick`-th open shard (up to 64 open shards).
        fn split(&mut self, pick: usize) {
            let open = self.open();
            if open.len() < 64 {
                let i = open[pick % open.len()];
                let n = self.shards[i].shard_id["shardId-".len()..].parse().expect("our ids");
                self.split_shard(n);
            }
        }

        /// Merges the `pick`-th open shard with its upper neighbour in hash-key order.
        fn merge(&mut self, pick: usize) {
            let open = self.open();
            if open.len() >= 2 {
                let j = pick % (open.len() - 1);
                let (low, start, _) = self.close(open[j]);
                let (high, _, end) = self.close(open[j + 1]);
                self.add(start, end, Some(low), Some(high));
            }
        }

        /// Retention drops the oldest closed shard.
        fn expire(&mut self) {
            if let Some(i) = self.shards.iter().position(|s| !s.is_open()) {
                self.shards.remove(i);
            }
        }

        fn apply(&mut self, (kind, pick): (u8, u16)) {
            match kind % 4 {
                0 | 1 => self.split(usize::from(pick)),
                2 => self.merge(usize::from(pick)),
                _ => self.expire(),
            }
        }
    }

    /// Owners of an older listing as an operator might have left them (unbalanced, some missing).
    fn arbitrary_previous(shards: &[ShardInfo], replicas: u32, seed: u64) -> Assignment {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut owner = || (rng.u8(0..8) != 0).then(|| rng.u32(0..replicas));
        let owners = shards.iter().filter_map(|s| Some((s.shard_id.clone(), owner()?))).collect();
        Assignment { epoch: rng.u64(1..100), replicas, owners }
    }

    /// A listing, the replicas to spread it over, and what the document said before.
    #[derive(Clone, Debug)]
    struct Case {
        shards: Vec<ShardInfo>,
        replicas: u32,
        previous: Option<Assignment>,
    }

    /// A stream history (1..=64 shards, random splits, merges, expiries); the previous document is
    /// none, computed for an older listing with other replicas, or arbitrary owners of that listing.
    fn case() -> impl Strategy<Value = Case> {
        let history = (1_u32..=64, prop::collection::vec(any::<(u8, u16)>(), 0..48), any::<prop::sample::Index>());
        (history, 1_u32..=16, 1_u32..=16, 0_u8..3, any::<u64>()).prop_map(
            |((n, ops, cut), replicas, previous_replicas, kind, seed)| {
                let mut stream = Stream::new(n);
                let (before, after) = ops.split_at(cut.index(ops.len() + 1));
                before.iter().for_each(|&op| stream.apply(op));
                let older = stream.shards.clone();
                after.iter().for_each(|&op| stream.apply(op));
                let previous = match kind {
                    0 => None,
                    1 => Some(assign(&older, previous_replicas, None)),
                    _ => Some(arbitrary_previous(&older, previous_replicas, seed)),
                };
                Case { shards: stream.shards, replicas, previous }
            },
        )
    }

    /// Shards of one group (open or closed) per ordinal.
    fn counts(shards: &[ShardInfo], a: &Assignment, open: bool) -> Vec<usize> {
        let mut counts = vec![0; a.replicas as usize];
        for s in shards.iter().filter(|s| s.is_open() == open) {
            counts[a.owner_of(&s.shard_id).expect("assigned") as usize] += 1;
        }
        counts
    }

    /// Listed shards whose owner is not their previous one (new shards included).
    fn moved_listed(c: &Case, a: &Assignment) -> usize {
        let previous = |s: &ShardInfo| c.previous.as_ref().and_then(|p| p.owner_of(&s.shard_id));
        c.shards.iter().filter(|s| previous(s) != a.owner_of(&s.shard_id)).count()
    }

    /// The fewest moves any balanced placement needs, from the module docs: per group of `n`,
    /// `n − Σ_o min(k[o], ⌊n/r⌋) − min(n % r, |{o : k[o] > ⌊n/r⌋}|)`, with `k[o]` the shards whose
    /// previous owner `o` still exists. Computed here independently of [`assign`].
    fn lower_bound(c: &Case) -> usize {
        let r = c.replicas as usize;
        let group = |open: bool| {
            let shards: Vec<&ShardInfo> = c.shards.iter().filter(|s| s.is_open() == open).collect();
            let (n, base, extra) = (shards.len(), shards.len() / r, shards.len() % r);
            let mut keeps = vec![0_usize; r];
            for s in shards {
                let owner = c.previous.as_ref().and_then(|p| p.owner_of(&s.shard_id));
                if let Some(o) = owner.filter(|&o| o < c.replicas) {
                    keeps[o as usize] += 1;
                }
            }
            let over = keeps.iter().filter(|&&k| k > base).count();
            n - keeps.iter().map(|&k| k.min(base)).sum::<usize>() - extra.min(over)
        };
        group(true) + group(false)
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn every_listed_shard_is_assigned_once_and_each_group_is_balanced(c in case()) {
            let a = assign(&c.shards, c.replicas, c.previous.as_ref());
            let listed: BTreeSet<&str> = c.shards.iter().map(|s| s.shard_id.as_str()).collect();
            prop_assert_eq!(a.owners.keys().map(String::as_str).collect::<BTreeSet<_>>(), listed);
            prop_assert!(a.owners.values().all(|&o| o < c.replicas));
            prop_assert_eq!(a.replicas, c.replicas);
            for open in [true, false] {
                let counts = counts(&c.shards, &a, open);
                let (min, max) = (counts.iter().min(), counts.iter().max());
                prop_assert!(max.zip(min).is_some_and(|(max, min)| max - min <= 1), "open={} {:?}", open, counts);
            }
        }

        #[test]
        fn is_deterministic_and_ignores_the_listing_order(c in case(), seed in any::<u64>()) {
            let a = assign(&c.shards, c.replicas, c.previous.as_ref());
            prop_assert_eq!(&assign(&c.shards, c.replicas, c.previous.as_ref()), &a);
            let mut shuffled = c.shards.clone();
            fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
            prop_assert_eq!(&assign(&shuffled, c.replicas, c.previous.as_ref()), &a);
        }

        #[test]
        fn a_fresh_layout_is_contiguous_runs_in_hash_key_order(c in case()) {
            let a = assign(&c.shards, c.replicas, None);
            for open in [true, false] {
                let mut group: Vec<&ShardInfo> = c.shards.iter().filter(|s| s.is_open() == open).collect();
                group.sort_by_key(|s| s.starting_hash_key);
                let owners: Vec<u32> = group.iter().filter_map(|s| a.owner_of(&s.shard_id)).collect();
                prop_assert!(owners.windows(2).all(|w| w[0] <= w[1]), "open={} {:?}", open, owners);
            }
        }

        #[test]
        fn moves_exactly_as_many_shards_as_balance_requires(c in case()) {
            let a = assign(&c.shards, c.replicas, c.previous.as_ref());
            prop_assert_eq!(moved_listed(&c, &a), lower_bound(&c));
        }

        #[test]
        fn epoch_grows_only_when_the_document_changes(c in case()) {
            let a = assign(&c.shards, c.replicas, c.previous.as_ref());
            let expected = match &c.previous {
                None => 1,
                Some(p) if p.owners == a.owners && p.replicas == a.replicas => p.epoch,
                Some(p) => p.epoch + 1,
            };
            prop_assert_eq!(a.epoch, expected);
            // Unchanged input is a fixed point; other replicas are a new epoch.
            prop_assert_eq!(&assign(&c.shards, c.replicas, Some(&a)), &a);
            prop_assert_eq!(assign(&c.shards, c.replicas + 1, Some(&a)).epoch, a.epoch + 1);
        }

        #[test]
        fn growing_from_two_to_three_replicas_moves_a_third(
            n in 1_u32..=64,
            ops in prop::collection::vec(any::<(u8, u16)>(), 0..48),
        ) {
            let mut stream = Stream::new(n);
            ops.iter().for_each(|&op| stream.apply(op));
            let two = assign(&stream.shards, 2, None);
            let three = assign(&stream.shards, 3, Some(&two));
            // Ordinal 2 takes ⌊n/3⌋ of each group, all from the other two; nothing else moves.
            let open = stream.shards.iter().filter(|s| s.is_open()).count();
            let closed = stream.shards.len() - open;
            prop_assert_eq!(moved_shards(&two, &three).len(), open / 3 + closed / 3);
        }

        #[test]
        fn startable_is_exactly_the_unfinished_shards_with_finished_or_expired_parents(
            n in 1_u32..=64,
            ops in prop::collection::vec(any::<(u8, u16)>(), 0..48),
            seed in any::<u64>(),
        ) {
            let mut stream = Stream::new(n);
            ops.iter().for_each(|&op| stream.apply(op));
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut finished: HashSet<String> =
                stream.shards.iter().filter(|_| rng.bool()).map(|s| s.shard_id.clone()).collect();
            finished.insert(id(9_999)); // finished and since expired: harmless
            let listed: HashSet<&str> = stream.shards.iter().map(|s| s.shard_id.as_str()).collect();
            let started = startable(&stream.shards, &finished);
            for shard in &started {
                prop_assert!(!finished.contains(&shard.shard_id));
                for parent in shard.parents() {
                    prop_assert!(!listed.contains(parent) || finished.contains(parent), "{} before {}", shard.shard_id, parent);
                }
            }
            let expected: Vec<&ShardInfo> = stream
                .shards
                .iter()
                .filter(|s| !finished.contains(&s.shard_id))
                .filter(|s| s.parents().all(|p| !listed.contains(p) || finished.contains(p)))
                .collect();
            prop_assert_eq!(started, expected);
        }
    }

    #[test]
    fn eight_shards_over_two_then_three_then_one_replicas() {
        let shards = Stream::new(8).shards;
        let two = assign(&shards, 2, None);
        assert_eq!((two.epoch, owned_by(&two, 0), owned_by(&two, 1)), (1, ids(0..4), ids(4..8)));

        // The new ordinal 2 takes the highest hash keys of each run; six shards do not pause.
        let three = assign(&shards, 3, Some(&two));
        assert_eq!(three.epoch, 2);
        assert_eq!(moved_shards(&two, &three), ids([3, 7]));
        assert_eq!(
            [owned_by(&three, 0), owned_by(&three, 1), owned_by(&three, 2)],
            [ids([0, 1, 2]), ids([4, 5, 6]), ids([3, 7])]
        );

        // Down to one: everything not already on ordinal 0 moves there.
        let one = assign(&shards, 1, Some(&three));
        assert_eq!(one.epoch, 3);
        assert_eq!(moved_shards(&three, &one), ids([3, 4, 5, 6, 7]));
        assert_eq!(owned_by(&one, 0), ids(0..8));

        // Nothing changed: same document, same epoch.
        assert_eq!(assign(&shards, 1, Some(&one)), one);
    }

    #[test]
    fn split_children_join_their_parent() {
        let mut stream = Stream::new(8);
        let before = assign(&stream.shards, 2, None);
        stream.split_shard(1); // children 8 and 9, parent 1 on ordinal 0
        let after = assign(&stream.shards, 2, Some(&before));
        assert_eq!(moved_shards(&before, &after), ids([8, 9]));
        // Ordinal 0 takes the ninth open shard: that is where both children want to be.
        assert_eq!(owned_by(&after, 0), ids([0, 1, 2, 3, 8, 9]));
        assert_eq!(owned_by(&after, 1), ids(4..8));
        assert_eq!(after.epoch, 2);
    }

    #[test]
    fn merge_child_joins_its_first_parent() {
        let mut stream = Stream::new(8);
        let before = assign(&stream.shards, 2, None);
        stream.merge(3); // shards 3 (ordinal 0) and 4 (ordinal 1) into 8
        let after = assign(&stream.shards, 2, Some(&before));
        assert_eq!(moved_shards(&before, &after), ids([8]));
        assert_eq!(after.owner_of(&id(8)), Some(0));
        assert_eq!((after.owner_of(&id(3)), after.owner_of(&id(4))), (Some(0), Some(1)));
    }

    #[test]
    fn a_full_reshard_keeps_lineage_and_expiry_only_drops_parents() {
        let mut stream = Stream::new(4);
        let before = assign(&stream.shards, 2, None);
        (0..4).for_each(|s| stream.split_shard(s)); // 0 → 4,5; 1 → 6,7; 2 → 8,9; 3 → 10,11
        let resharded = assign(&stream.shards, 2, Some(&before));
        assert_eq!(moved_shards(&before, &resharded), ids(4..12));
        assert_eq!(owned_by(&resharded, 0), ids([0, 1, 4, 5, 6, 7]));
        assert_eq!(owned_by(&resharded, 1), ids([2, 3, 8, 9, 10, 11]));

        (0..4).for_each(|_| stream.expire());
        let expired = assign(&stream.shards, 2, Some(&resharded));
        assert_eq!(moved_shards(&resharded, &expired), ids(0..4));
        assert_eq!(expired.epoch, resharded.epoch + 1);
    }

    #[test]
    fn a_burst_of_closed_parents_is_spread() {
        let mut stream = Stream::new(6);
        let before = assign(&stream.shards, 3, None); // 0: 0,1  1: 2,3  2: 4,5
        (0..3).for_each(|s| stream.split_shard(s)); // 0 → 6,7; 1 → 8,9; 2 → 10,11
        let after = assign(&stream.shards, 3, Some(&before));
        // Closed 0, 1, 2 get one ordinal each: parent 1 leaves the crowded ordinal 0 for 2, and its
        // child 8 follows it there; 9 finds ordinal 2 full and goes to the least loaded, 0.
        assert_eq!(owned_by(&after, 0), ids([0, 6, 7, 9]));
        assert_eq!(owned_by(&after, 1), ids([2, 3, 10, 11]));
        assert_eq!(owned_by(&after, 2), ids([1, 4, 5, 8]));
        assert_eq!(moved_shards(&before, &after), ids([1, 6, 7, 8, 9, 10, 11]));
    }

    #[test]
    fn fresh_layout_is_contiguous_per_group() {
        let mut stream = Stream::new(5);
        stream.split_shard(1); // closed 1; open in hash-key order 0, 5, 6, 2, 3, 4
        let a = assign(&stream.shards, 3, None);
        assert_eq!(owned_by(&a, 0), ids([0, 1, 5]));
        assert_eq!(owned_by(&a, 1), ids([2, 6]));
        assert_eq!(owned_by(&a, 2), ids([3, 4]));
    }

    #[test]
    fn zero_replicas_own_nothing_and_scaling_up_again_lays_out_afresh() {
        let shards = Stream::new(4).shards;
        let two = assign(&shards, 2, None);
        let zero = assign(&shards, 0, Some(&two));
        assert_eq!((zero.epoch, zero.replicas, zero.owners.len()), (2, 0, 0));
        let again = assign(&shards, 2, Some(&zero));
        assert_eq!((again.epoch, &again.owners), (3, &two.owners));
    }

    #[test]
    fn a_repeated_listing_entry_counts_once() {
        let mut shards = Stream::new(3).shards;
        shards.push(shards[0].clone());
        let a = assign(&shards, 3, None);
        assert_eq!([owned_by(&a, 0), owned_by(&a, 1), owned_by(&a, 2)], [ids([0]), ids([1]), ids([2])]);
    }

    #[test]
    fn moved_shards_lists_changed_new_and_dropped_shards() {
        let doc = |owners: &[(u32, u32)]| Assignment {
            epoch: 1,
            replicas: 2,
            owners: owners.iter().map(|&(s, o)| (id(s), o)).collect(),
        };
        let before = doc(&[(0, 0), (1, 0), (2, 1)]);
        let after = doc(&[(0, 0), (1, 1), (3, 1)]);
        assert_eq!(moved_shards(&before, &after), ids([1, 2, 3]));
        assert!(moved_shards(&after, &after).is_empty());
    }

    #[test]
    fn children_start_after_their_parents_finish_or_expire() {
        let mut stream = Stream::new(3);
        stream.split_shard(0); // 0 → 3, 4
        stream.merge(2); // open order 3, 4, 1, 2: merges 1 and 2 into 5
        let startable_ids = |stream: &Stream, finished: &[u32]| {
            let finished: HashSet<String> = ids(finished.iter().copied()).into_iter().collect();
            startable(&stream.shards, &finished).into_iter().map(|s| s.shard_id.clone()).collect::<Vec<_>>()
        };
        assert_eq!(startable_ids(&stream, &[]), ids([0, 1, 2]));
        // Merge child 5 waits for both parents; finished shards are not returned.
        assert_eq!(startable_ids(&stream, &[0, 1]), ids([2, 3, 4]));
        assert_eq!(startable_ids(&stream, &[0, 1, 2]), ids([3, 4, 5]));
        // An expired parent no longer holds its children back.
        stream.expire();
        assert_eq!(startable_ids(&stream, &[1, 2]), ids([3, 4, 5]));
    }

    #[test]
    fn parses_the_design_document_and_answers_owners() {
        let doc = br#"{"epoch":7,"replicas":2,"owners":{"shardId-000000000000":0,"shardId-000000000001":1}}"#;
        let a = Assignment::from_json(doc).expect("valid");
        assert_eq!(a.epoch, 7);
        assert_eq!(a.owner_of("shardId-000000000001"), Some(1));
        assert_eq!(a.owner_of("shardId-000000000009"), None);
        assert_eq!(a.shards_of(0).collect::<Vec<_>>(), ["shardId-000000000000"]);
        assert_eq!(Assignment::from_json(a.to_json().as_bytes()).expect("round trip"), a);
    }

    #[test]
    fn rejects_an_owner_outside_the_replicas() {
        let doc = br#"{"epoch":1,"replicas":2,"owners":{"shardId-000000000000":2}}"#;
        let err = Assignment::from_json(doc).expect_err("ordinal 2 of 2");
        assert!(err.to_string().contains("only 2 replicas"), "{err}");
    }
}

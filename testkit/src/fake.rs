//! [`FaultyKinesis`]: a [`KinesisApi`] around a real one (usually the emulator's) that injects
//! the faults a test asks for: errors on chosen calls of a method, a shard that vanishes from
//! the stream, and delays.
//!
//! ```no_run
//! # use taxi_testkit::fake::{FaultyKinesis, KinesisCall};
//! # use taxi_io::kinesis::api::KinesisError;
//! # let real = taxi_testkit::kinesis::client("http://127.0.0.1:4567");
//! // The first six GetRecords calls are throttled, the 14th and 15th find their iterator expired.
//! let code = "ProvisionedThroughputExceededException".to_owned();
//! let throttled = KinesisError::Throttled { operation: "GetRecords", code };
//! let expired = KinesisError::ExpiredIterator { operation: "GetRecords" };
//! let api = FaultyKinesis::new(real)
//!     .failing(KinesisCall::GetRecords, 0..6, throttled)
//!     .failing(KinesisCall::GetRecords, 13..15, expired);
//! ```

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{
    KinesisApi, KinesisError, PutEntry, PutOutcome, RecordsPage, SdkKinesis, StartingPosition, StreamState,
};

/// The methods of [`KinesisApi`], to aim a fault at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KinesisCall {
    /// [`KinesisApi::list_shards`].
    ListShards,
    /// [`KinesisApi::get_shard_iterator`].
    GetShardIterator,
    /// [`KinesisApi::get_records`].
    GetRecords,
    /// [`KinesisApi::put_records`].
    PutRecords,
    /// [`KinesisApi::stream_state`].
    StreamState,
    /// [`KinesisApi::create_stream`].
    CreateStream,
    /// [`KinesisApi::update_shard_count`].
    UpdateShardCount,
    /// [`KinesisApi::register_consumer`].
    RegisterConsumer,
    /// [`KinesisApi::deregister_consumer`].
    DeregisterConsumer,
    /// [`KinesisApi::subscribe_to_shard`].
    SubscribeToShard,
}

/// Errors for the calls of one method whose index is in `calls`.
#[derive(Debug)]
struct Failure {
    call: KinesisCall,
    calls: Range<u32>,
    error: KinesisError,
}

/// A shard that is listed `listings` times, then no more, and never readable.
#[derive(Debug)]
struct Vanishing {
    shard_id: String,
    listings: u32,
}

/// What happened so far.
#[derive(Debug, Default)]
struct Tally {
    /// Calls made, per method (failed ones included).
    calls: HashMap<KinesisCall, u32>,
    /// Errors injected, per [`KinesisError::category`].
    injected: HashMap<&'static str, u32>,
}

/// A [`KinesisApi`] that forwards to `inner` except where a fault was asked for. Calls of a
/// method are counted from 0, over every caller, in the order they reach the wrapper.
#[derive(Debug)]
pub struct FaultyKinesis<K = SdkKinesis> {
    inner: K,
    failures: Vec<Failure>,
    vanishing: Vec<Vanishing>,
    delays: HashMap<KinesisCall, Duration>,
    tally: Mutex<Tally>,
}

impl<K: KinesisApi> FaultyKinesis<K> {
    /// Forwards every call to `inner` until faults are added.
    pub fn new(inner: K) -> FaultyKinesis<K> {
        FaultyKinesis {
            inner,
            failures: Vec::new(),
            vanishing: Vec::new(),
            delays: HashMap::new(),
            tally: Mutex::default(),
        }
    }

    /// Fails the calls of `call` whose index (from 0) is in `calls` with `error`, without
    /// forwarding them. The first matching rule, in the order they were added, applies.
    pub fn failing(mut self, call: KinesisCall, calls: Range<u32>, error: KinesisError) -> Self {
        self.failures.push(Failure { call, calls, error });
        self
    }

    /// Makes `shard_id` vanish, as an expired shard does: listed by the first `listings`
    /// ListShards calls, then no more, and never readable (no iterator, no subscription).
    pub fn vanishing_shard(mut self, shard_id: &str, listings: u32) -> Self {
        self.vanishing.push(Vanishing { shard_id: shard_id.to_owned(), listings });
        self
    }

    /// Delays every call of `call` by `delay` before it is answered.
    pub fn delaying(mut self, call: KinesisCall, delay: Duration) -> Self {
        self.delays.insert(call, delay);
        self
    }

    /// Calls of `call` made so far, failed ones included.
    pub fn calls(&self, call: KinesisCall) -> u32 {
        self.tally.lock().expect("tally").calls.get(&call).copied().unwrap_or(0)
    }

    /// Errors injected so far, of a [`KinesisError::category`] (e.g. `"throttled"`).
    pub fn injected(&self, category: &str) -> u32 {
        self.tally.lock().expect("tally").injected.get(category).copied().unwrap_or(0)
    }

    /// Counts the call, waits its delay, and returns its index or the error to answer instead.
    async fn enter(&self, call: KinesisCall) -> Result<u32, KinesisError> {
        let (index, failure) = {
            let mut tally = self.tally.lock().expect("tally");
            let count = tally.calls.entry(call).or_default();
            let index = *count;
            *count += 1;
            let failure = self.failures.iter().find(|f| f.call == call && f.calls.contains(&index));
            if let Some(f) = failure {
                *tally.injected.entry(f.error.category()).or_default() += 1;
            }
            (index, failure.map(|f| f.error.clone()))
        };
        if let Some(delay) = self.delays.get(&call) {
            tokio::time::sleep(*delay).await;
        }
        failure.map_or(Ok(index), Err)
    }

    /// The error for a read of a vanished shard, if `shard_id` is one; `within` says where it
    /// was looked for (the stream, or the consumer of a subscription).
    fn vanished(&self, operation: &'static str, shard_id: &str, within: &str) -> Result<(), KinesisError> {
        if self.vanishing.iter().any(|v| v.shard_id == shard_id) {
            let message = format!("Shard {shard_id} in {within} does not exist");
            return Err(KinesisError::NotFound { operation, message });
        }
        Ok(())
    }
}

impl<K: KinesisApi> KinesisApi for FaultyKinesis<K> {
    type Subscription = K::Subscription;

    async fn list_shards(&self, stream: &str) -> Result<Vec<ShardInfo>, KinesisError> {
        let listing = self.enter(KinesisCall::ListShards).await?;
        let mut shards = self.inner.list_shards(stream).await?;
        shards.retain(|s| !self.vanishing.iter().any(|v| v.shard_id == s.shard_id && listing >= v.listings));
        Ok(shards)
    }
    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<String, KinesisError> {
        self.enter(KinesisCall::GetShardIterator).await?;
        self.vanished("GetShardIterator", shard_id, &format!("stream {stream}"))?;
        self.inner.get_shard_iterator(stream, shard_id, position).await
    }
    async fn get_records(&self, iterator: &str, limit: i32) -> Result<RecordsPage, KinesisError> {
        self.enter(KinesisCall::GetRecords).await?;
        self.inner.get_records(iterator, limit).await
    }
    async fn put_records(&self, stream: &str, entries: Vec<PutEntry>) -> Result<Vec<PutOutcome>, KinesisError> {
        self.enter(KinesisCall::PutRecords).await?;
        self.inner.put_records(stream, entries).await
    }
    async fn stream_state(&self, stream: &str) -> Result<StreamState, KinesisError> {
        self.enter(KinesisCall::StreamState).await?;
        self.inner.stream_state(stream).await
    }
    async fn create_stream(&self, stream: &str, shards: u32) -> Result<(), KinesisError> {
        self.enter(KinesisCall::CreateStream).await?;
        self.inner.create_stream(stream, shards).await
    }
    async fn update_shard_count(&self, stream: &str, target_open_shards: u32) -> Result<(), KinesisError> {
        self.enter(KinesisCall::UpdateShardCount).await?;
        self.inner.update_shard_count(stream, target_open_shards).await
    }
    async fn register_consumer(&self, stream: &str, name: &str) -> Result<String, KinesisError> {
        self.enter(KinesisCall::RegisterConsumer).await?;
        self.inner.register_consumer(stream, name).await
    }
    async fn deregister_consumer(&self, stream: &str, name: &str) -> Result<(), KinesisError> {
        self.enter(KinesisCall::DeregisterConsumer).await?;
        self.inner.deregister_consumer(stream, name).await
    }
    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<Self::Subscription, KinesisError> {
        self.enter(KinesisCall::SubscribeToShard).await?;
        self.vanished("SubscribeToShard", shard_id, consumer_arn)?;
        self.inner.subscribe_to_shard(consumer_arn, shard_id, position).await
    }
}

#[cfg(test)]
mod tests {
    use taxi_io::kinesis::api::{Subscription, SubscriptionEvent};

    use super::*;

    /// A stream of two shards that answers every read with an empty page.
    struct TwoShards;

    struct NoEvents;

    impl Subscription for NoEvents {
        async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>, KinesisError> {
            Ok(None)
        }
    }

    fn shard(id: &str) -> ShardInfo {
        ShardInfo {
            shard_id: id.to_owned(),
            parent: None,
            adjacent_parent: None,
            starting_hash_key: 0,
            ending_hash_key: u128::MAX,
            ending_sequence_number: None,
        }
    }

    impl KinesisApi for TwoShards {
        type Subscription = NoEvents;

        async fn list_shards(&self, _: &str) -> Result<Vec<ShardInfo>, KinesisError> {
            Ok(vec![shard("shard-a"), shard("shard-b")])
        }
        async fn get_shard_iterator(
            &self,
            _: &str,
            shard_id: &str,
            _: &StartingPosition,
        ) -> Result<String, KinesisError> {
            Ok(format!("iterator-{shard_id}"))
        }
        async fn get_records(&self, _: &str, _: i32) -> Result<RecordsPage, KinesisError> {
            Ok(RecordsPage::default())
        }
        async fn put_records(&self, _: &str, _: Vec<PutEntry>) -> Result<Vec<PutOutcome>, KinesisError> {
            Ok(Vec::new())
        }
        async fn stream_state(&self, _: &str) -> Result<StreamState, KinesisError> {
            Ok(StreamState::Active { open_shards: 2 })
        }
        async fn create_stream(&self, _: &str, _: u32) -> Result<(), KinesisError> {
            Ok(())
        }
        async fn update_shard_count(&self, _: &str, _: u32) -> Result<(), KinesisError> {
            Ok(())
        }
        async fn register_consumer(&self, _: &str, name: &str) -> Result<String, KinesisError> {
            Ok(format!("arn:{name}"))
        }
        async fn deregister_consumer(&self, _: &str, _: &str) -> Result<(), KinesisError> {
            Ok(())
        }
        async fn subscribe_to_shard(&self, _: &str, _: &str, _: &StartingPosition) -> Result<NoEvents, KinesisError> {
            Ok(NoEvents)
        }
    }

    fn throttled() -> KinesisError {
        KinesisError::Throttled { operation: "GetRecords", code: "ProvisionedThroughputExceededException".into() }
    }

    #[tokio::test]
    async fn the_calls_in_a_range_fail_and_the_others_are_forwarded() {
        let expired = KinesisError::ExpiredIterator { operation: "GetRecords" };
        let api = FaultyKinesis::new(TwoShards).failing(KinesisCall::GetRecords, 0..2, throttled()).failing(
            KinesisCall::GetRecords,
            3..4,
            expired.clone(),
        );
        let mut answers = Vec::new();
        for _ in 0..5 {
            answers.push(api.get_records("it", 10).await);
        }
        assert_eq!(
            answers,
            [Err(throttled()), Err(throttled()), Ok(RecordsPage::default()), Err(expired), Ok(RecordsPage::default())]
        );
        assert_eq!((api.injected("throttled"), api.injected("expired_iterator")), (2, 1));
        assert_eq!(api.calls(KinesisCall::GetRecords), 5, "failed calls count too");
        assert_eq!(api.calls(KinesisCall::ListShards), 0, "each method is counted on its own");
        api.list_shards("s").await.expect("other methods are untouched");
    }

    #[tokio::test]
    async fn a_vanishing_shard_is_listed_as_often_as_asked_then_no_more_and_never_readable() {
        let api = FaultyKinesis::new(TwoShards).vanishing_shard("shard-a", 1);
        let ids = |shards: Vec<ShardInfo>| shards.into_iter().map(|s| s.shard_id).collect::<Vec<_>>();
        assert_eq!(ids(api.list_shards("s").await.expect("list")), ["shard-a", "shard-b"]);
        assert_eq!(ids(api.list_shards("s").await.expect("list")), ["shard-b"]);
        let gone = api.get_shard_iterator("s", "shard-a", &StartingPosition::TrimHorizon).await;
        let Err(KinesisError::NotFound { message, .. }) = gone else { panic!("expected NotFound, got {gone:?}") };
        assert_eq!(message, "Shard shard-a in stream s does not exist");
        assert!(api.subscribe_to_shard("arn", "shard-a", &StartingPosition::Latest).await.is_err());
        let other = api.get_shard_iterator("s", "shard-b", &StartingPosition::TrimHorizon).await;
        assert_eq!(other, Ok("iterator-shard-b".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_call_is_answered_after_its_delay() {
        let api = FaultyKinesis::new(TwoShards).delaying(KinesisCall::StreamState, Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        api.stream_state("s").await.expect("state");
        assert!(started.elapsed() >= Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        api.list_shards("s").await.expect("list");
        assert!(started.elapsed() < Duration::from_secs(1), "other methods are not delayed");
    }
}

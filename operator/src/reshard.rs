//! Stream scaling: with `spec.stream.manage`, the operator creates the stream
//! when it is missing and reshards it with UpdateShardCount (UNIFORM_SCALING) when
//! `spec.stream.shards` changes, within the limits Kinesis sets on that call:
//! - one call may at most double or halve the open shard count, and only on an ACTIVE stream;
//! - at most [`MAX_CALLS_PER_WINDOW`] calls per stream in any rolling [`CALL_WINDOW`].
//!
//! A larger change is made in steps, one per reconcile pass once the stream is ACTIVE again.
//! Each step goes as far towards the desired count as one call may ([`next_step`]):
//! up, `min(desired, 2 × open)`; down, `max(desired, ⌈open / 2⌉)`. So 8 → 3 goes 8 → 4 → 3 and
//! 4 → 20 goes 4 → 8 → 16 → 20: the fewest calls (⌈log2(max/min)⌉), full doublings or halvings
//! first and the remainder last.
//!
//! The times of the calls are kept in `status.reshardCalls`: the reconcile pass gives them to
//! [`manage_stream`] and stores the list it returns (calls older than 24 h dropped, the new call
//! appended). When the budget is spent, the pass says so ([`Plan::RateLimited`], with the time the
//! next call becomes possible) instead of failing.
//!
//! [`plan_stream`] is the pure decision, from what the stream looks like now; [`manage_stream`]
//! reads the stream, decides and makes the call the plan names.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;
use taxi_io::kinesis::api::{KinesisError, StreamState};

use crate::observe::{StreamRef, Streams};

/// Most UpdateShardCount calls Kinesis accepts for one stream in any rolling [`CALL_WINDOW`].
pub const MAX_CALLS_PER_WINDOW: usize = 10;
/// The rolling window of [`MAX_CALLS_PER_WINDOW`].
pub const CALL_WINDOW: SignedDuration = SignedDuration::from_hours(24);
/// Most open shards of a stream the operator asks for (the CRD's bound of `spec.stream.shards`).
pub const MAX_SHARDS: u32 = 10_000;
/// Time to the next pass while the stream is being created or resharded.
pub const RESHARD_REQUEUE: Duration = Duration::from_secs(5);

/// What the operator does about the stream in this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// `spec.stream.manage` is false: the stream is only read, never created or resharded.
    NotManaged {
        /// Open shards, when the stream is ACTIVE.
        open: Option<u32>,
        /// `spec.stream.shards`.
        desired: u32,
    },
    /// The stream does not exist: create it.
    Create {
        /// Shards to create it with.
        shards: u32,
    },
    /// The stream is being created, resharded or deleted: nothing can be done until it is ACTIVE.
    WaitForActive,
    /// Call UpdateShardCount for the next step towards the desired count.
    Update {
        /// Open shards now.
        from: u32,
        /// Open shards after this call (within ×2 / ÷2 of `from`).
        to: u32,
    },
    /// A step is needed but every call of the rolling window is spent.
    RateLimited {
        /// When the oldest call of the window leaves it, so the next call is allowed.
        next_at: Timestamp,
    },
    /// The stream is ACTIVE with the desired number of open shards.
    Stable,
}

impl Plan {
    /// The reason of the `StreamResharding` condition for this plan.
    pub fn reason(&self) -> &'static str {
        match self {
            Plan::NotManaged { .. } => "NotManaged",
            Plan::Create { .. } => "Creating",
            Plan::WaitForActive => "WaitingForActive",
            Plan::Update { .. } => "Resharding",
            Plan::RateLimited { .. } => "RateLimited",
            Plan::Stable => "Stable",
        }
    }
}

/// The `StreamResharding` condition a pass sets (type [`crate::crd::STREAM_RESHARDING`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamCondition {
    /// `True` while the shard count is being changed or a change waits (creating, resharding,
    /// waiting for ACTIVE, rate limited); `False` when stable or not managed.
    pub status: bool,
    /// [`Plan::reason`].
    pub reason: &'static str,
    /// Progress, or what the pass waits for, in words.
    pub message: String,
}

/// A Kubernetes Event a pass publishes on the TaxiPipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEvent {
    /// Normal for a call made, Warning when rate limited.
    pub type_: EventType,
    /// `CreatingStream`, `Resharding` or `ReshardRateLimited`.
    pub reason: &'static str,
    /// The Kinesis call: `CreateStream` or `UpdateShardCount`.
    pub action: &'static str,
    /// What happened, in words.
    pub note: String,
}

/// What a pass decided about the stream, for the reconcile loop to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamStep {
    /// The decision (already carried out by [`manage_stream`]).
    pub plan: Plan,
    /// The `StreamResharding` condition.
    pub condition: StreamCondition,
    /// An Event to publish: when a call was made, and on every rate-limited pass (the Recorder
    /// folds repeats into one Event series).
    pub event: Option<StreamEvent>,
    /// The new `status.reshardCalls`: the given calls of the last [`CALL_WINDOW`], oldest first,
    /// with this pass's UpdateShardCount call appended when one was made.
    pub reshard_calls: Vec<Timestamp>,
    /// Requeue no later than this: [`RESHARD_REQUEUE`] while creating, resharding or waiting for
    /// ACTIVE, the time until the next call is possible when rate limited; `None` when stable or
    /// not managed.
    pub requeue_after: Option<Duration>,
}

/// The open shard count after the next UpdateShardCount call from `open` towards `desired`: as
/// far as one call may go, `min(desired, 2 × open)` up and `max(desired, ⌈open / 2⌉)` down;
/// `open` itself when equal. (An ACTIVE stream has at least one open shard; `open` 0 steps to 1.)
pub fn next_step(open: u32, desired: u32) -> u32 {
    if desired > open { desired.min(open.saturating_mul(2).max(1)) } else { desired.max(open.div_ceil(2)) }
}

/// The calls of the rolling window ending at `now` (those less than [`CALL_WINDOW`] old; a call
/// exactly 24 hours old has left it), oldest first.
pub fn recent_calls(calls: &[Timestamp], now: Timestamp) -> Vec<Timestamp> {
    let mut recent: Vec<Timestamp> = calls.iter().copied().filter(|t| now.duration_since(*t) < CALL_WINDOW).collect();
    recent.sort_unstable();
    recent
}

/// When the next call becomes possible, given the calls of the window (oldest first): `None`
/// when one is possible now, else when enough of them have left the window.
pub fn next_call_at(recent: &[Timestamp]) -> Option<Timestamp> {
    let excess = recent.len().checked_sub(MAX_CALLS_PER_WINDOW)?;
    let oldest_to_leave = recent.get(excess)?;
    Some(oldest_to_leave.checked_add(CALL_WINDOW).unwrap_or(Timestamp::MAX))
}

/// Decides what to do about `stream` (its name is used in Event notes only): the pure part of
/// [`manage_stream`]. `desired` is `spec.stream.shards`, clamped to 1..=[`MAX_SHARDS`]; `calls`
/// are `status.reshardCalls`.
pub fn plan_stream(
    stream: &str,
    manage: bool,
    desired: u32,
    state: StreamState,
    calls: &[Timestamp],
    now: Timestamp,
) -> StreamStep {
    let desired = desired.clamp(1, MAX_SHARDS);
    let recent = recent_calls(calls, now);
    let plan = match state {
        _ if !manage => Plan::NotManaged {
            open: match state {
                StreamState::Active { open_shards } => Some(open_shards),
                StreamState::Missing | StreamState::Busy => None,
            },
            desired,
        },
        StreamState::Missing => Plan::Create { shards: desired },
        StreamState::Busy => Plan::WaitForActive,
        StreamState::Active { open_shards } if open_shards == desired => Plan::Stable,
        StreamState::Active { open_shards } => match next_call_at(&recent) {
            Some(next_at) => Plan::RateLimited { next_at },
            None => Plan::Update { from: open_shards, to: next_step(open_shards, desired) },
        },
    };
    let open = match state {
        StreamState::Active { open_shards } => open_shards,
        StreamState::Missing | StreamState::Busy => 0,
    };
    let condition = |status: bool, message: String| StreamCondition { status, reason: plan.reason(), message };
    let (condition, event, requeue_after) = match &plan {
        Plan::NotManaged { open: Some(open), desired } if open == desired => (
            condition(false, format!("{open} open shards as spec.stream.shards says; spec.stream.manage is false")),
            None,
            None,
        ),
        Plan::NotManaged { open: Some(open), desired } => (
            condition(
                false,
                format!(
                    "the stream has {open} open shards and spec.stream.shards is {desired}; \
                     set spec.stream.manage to reshard"
                ),
            ),
            None,
            None,
        ),
        Plan::NotManaged { open: None, .. } => (
            condition(
                false,
                match state {
                    StreamState::Missing => {
                        "the stream does not exist and spec.stream.manage is false: create it or set spec.stream.manage"
                    }
                    _ => "the stream is not ACTIVE (being created, resharded or deleted); spec.stream.manage is false",
                }
                .to_owned(),
            ),
            None,
            None,
        ),
        Plan::Create { shards } => (
            condition(true, format!("creating the stream with {shards} shards, waiting for ACTIVE")),
            Some(StreamEvent {
                type_: EventType::Normal,
                reason: "CreatingStream",
                action: "CreateStream",
                note: format!("creating stream {stream} with {shards} shards"),
            }),
            Some(RESHARD_REQUEUE),
        ),
        Plan::WaitForActive => (
            condition(
                true,
                format!(
                    "the stream is not ACTIVE (being created, resharded or deleted); \
                     {desired} open shards wanted once it is"
                ),
            ),
            None,
            Some(RESHARD_REQUEUE),
        ),
        Plan::Update { from, to } => {
            let call = recent.len() + 1;
            (
                condition(true, format!("{from} → {desired}: step {from} → {to} requested, waiting for ACTIVE")),
                Some(StreamEvent {
                    type_: EventType::Normal,
                    reason: "Resharding",
                    action: "UpdateShardCount",
                    note: format!(
                        "stream {stream}: UpdateShardCount {from} → {to} towards {desired} \
                         (call {call} of {MAX_CALLS_PER_WINDOW} in 24 h)"
                    ),
                }),
                Some(RESHARD_REQUEUE),
            )
        }
        Plan::RateLimited { next_at } => {
            let message = format!(
                "{open} → {desired}: Kinesis allows {MAX_CALLS_PER_WINDOW} UpdateShardCount calls per stream \
                 in 24 h and they are spent; the next call is possible at {next_at}"
            );
            let wait = Duration::try_from(next_at.duration_since(now)).unwrap_or(Duration::ZERO);
            (
                condition(true, message.clone()),
                Some(StreamEvent {
                    type_: EventType::Warning,
                    reason: "ReshardRateLimited",
                    action: "UpdateShardCount",
                    note: format!("stream {stream}: {message}"),
                }),
                Some(wait.max(Duration::from_secs(1))),
            )
        }
        Plan::Stable => (condition(false, format!("{open} open shards as spec.stream.shards says")), None, None),
    };
    let mut reshard_calls = recent;
    if matches!(plan, Plan::Update { .. }) {
        reshard_calls.push(now);
    }
    StreamStep { plan, condition, event, reshard_calls, requeue_after }
}

/// One pass over the stream, as the reconcile loop makes it: reads the stream's state, decides
/// ([`plan_stream`]) and makes the call the plan names (CreateStream or UpdateShardCount).
/// `desired` is `spec.stream.shards`; `calls` is `status.reshardCalls`; store the returned
/// [`StreamStep::reshard_calls`] there, set the condition, publish the Event.
///
/// A failed Kinesis call is returned as it is (retryable or not: [`KinesisError::is_retryable`]),
/// and a failed UpdateShardCount is not counted in the call list.
pub async fn manage_stream<S: Streams>(
    streams: &S,
    stream: &StreamRef,
    manage: bool,
    desired: u32,
    calls: &[Timestamp],
    now: Timestamp,
) -> Result<StreamStep, KinesisError> {
    let state = streams.stream_state(stream).await?;
    let step = plan_stream(&stream.name, manage, desired, state, calls, now);
    match step.plan {
        Plan::Create { shards } => streams.create_stream(stream, shards).await?,
        Plan::Update { to, .. } => streams.update_shard_count(stream, to).await?,
        Plan::NotManaged { .. } | Plan::WaitForActive | Plan::RateLimited { .. } | Plan::Stable => {}
    }
    Ok(step)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use proptest::prelude::*;
    use taxi_core::topology::ShardInfo;

    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn now() -> Timestamp {
        at("2026-11-27T12:00:00Z")
    }

    fn hours(h: i64) -> SignedDuration {
        SignedDuration::from_hours(h)
    }

    fn active(open_shards: u32) -> StreamState {
        StreamState::Active { open_shards }
    }

    /// The steps from `open` to `desired`, each one call.
    fn path(mut open: u32, desired: u32) -> Vec<u32> {
        let mut steps = Vec::new();
        while open != desired {
            open = next_step(open, desired);
            steps.push(open);
            assert!(steps.len() <= 64, "no progress towards {desired}: {steps:?}");
        }
        steps
    }

    #[test]
    fn steps_double_or_halve_first_and_take_the_remainder_last() {
        assert_eq!(path(8, 3), [4, 3]);
        assert_eq!(path(4, 20), [8, 16, 20]);
        assert_eq!(path(4, 8), [8]);
        assert_eq!(path(3, 1), [2, 1]);
        assert_eq!(path(1, 10_000), [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 10_000]);
        assert_eq!(path(5, 5), Vec::<u32>::new());
    }

    #[test]
    fn a_missing_managed_stream_is_created_with_the_desired_shards() {
        let step = plan_stream("taxi-trips", true, 4, StreamState::Missing, &[], now());
        assert_eq!(step.plan, Plan::Create { shards: 4 });
        assert_eq!(
            step.condition,
            StreamCondition {
                status: true,
                reason: "Creating",
                message: "creating the stream with 4 shards, waiting for ACTIVE".into()
            }
        );
        let event = step.event.expect("an Event");
        assert_eq!((event.type_, event.reason, event.action), (EventType::Normal, "CreatingStream", "CreateStream"));
        assert_eq!(event.note, "creating stream taxi-trips with 4 shards");
        assert!(step.reshard_calls.is_empty(), "CreateStream is not an UpdateShardCount call");
        assert_eq!(step.requeue_after, Some(RESHARD_REQUEUE));
    }

    #[test]
    fn a_step_is_requested_and_counted_then_the_pass_waits_for_active() {
        let earlier = now() - hours(3);
        let step = plan_stream("taxi-trips", true, 3, active(8), &[earlier], now());
        assert_eq!(step.plan, Plan::Update { from: 8, to: 4 });
        assert_eq!(step.condition.reason, "Resharding");
        assert_eq!(step.condition.message, "8 → 3: step 8 → 4 requested, waiting for ACTIVE");
        assert!(step.condition.status);
        let event = step.event.expect("an Event");
        assert_eq!((event.type_, event.reason, event.action), (EventType::Normal, "Resharding", "UpdateShardCount"));
        assert_eq!(event.note, "stream taxi-trips: UpdateShardCount 8 → 4 towards 3 (call 2 of 10 in 24 h)");
        assert_eq!(step.reshard_calls, [earlier, now()]);
        assert_eq!(step.requeue_after, Some(RESHARD_REQUEUE));

        let busy = plan_stream("taxi-trips", true, 3, StreamState::Busy, &step.reshard_calls, now());
        assert_eq!(busy.plan, Plan::WaitForActive);
        assert_eq!((busy.condition.status, busy.condition.reason), (true, "WaitingForActive"));
        assert_eq!(busy.event, None);
        assert_eq!(busy.reshard_calls, [earlier, now()], "waiting makes no call");
        assert_eq!(busy.requeue_after, Some(RESHARD_REQUEUE));
    }

    #[test]
    fn a_stream_with_the_desired_shards_is_stable() {
        let old = now() - hours(30);
        let step = plan_stream("taxi-trips", true, 3, active(3), &[old], now());
        assert_eq!(step.plan, Plan::Stable);
        assert_eq!(
            step.condition,
            StreamCondition {
                status: false,
                reason: "Stable",
                message: "3 open shards as spec.stream.shards says".into()
            }
        );
        assert_eq!((step.event, step.requeue_after), (None, None));
        assert!(step.reshard_calls.is_empty(), "a call older than 24 h is dropped");
    }

    #[test]
    fn a_spent_budget_waits_for_the_oldest_call_to_leave_the_window() {
        // Ten calls, the oldest 23 h ago: the next is possible in one hour.
        let calls: Vec<Timestamp> = (0..10).map(|i| now() - hours(23) + SignedDuration::from_mins(10 * i)).collect();
        let step = plan_stream("taxi-trips", true, 16, active(8), &calls, now());
        assert_eq!(step.plan, Plan::RateLimited { next_at: at("2026-11-27T13:00:00Z") });
        assert_eq!((step.condition.status, step.condition.reason), (true, "RateLimited"));
        assert_eq!(
            step.condition.message,
            "8 → 16: Kinesis allows 10 UpdateShardCount calls per stream in 24 h and they are spent; \
             the next call is possible at 2026-11-27T13:00:00Z"
        );
        let event = step.event.expect("an Event");
        assert_eq!((event.type_, event.reason), (EventType::Warning, "ReshardRateLimited"));
        assert!(event.note.starts_with("stream taxi-trips: 8 → 16:"), "{}", event.note);
        assert_eq!(step.reshard_calls, calls, "no call made");
        assert_eq!(step.requeue_after, Some(Duration::from_secs(3600)));

        // At that instant the oldest call is exactly 24 h old and has left the window.
        let later = plan_stream("taxi-trips", true, 16, active(8), &calls, at("2026-11-27T13:00:00Z"));
        assert_eq!(later.plan, Plan::Update { from: 8, to: 16 });
        assert_eq!(later.reshard_calls.len(), 10, "nine left in the window and the new one");
    }

    #[test]
    fn an_unmanaged_stream_is_only_described() {
        let differs = plan_stream("taxi-trips", false, 3, active(8), &[], now());
        assert_eq!(differs.plan, Plan::NotManaged { open: Some(8), desired: 3 });
        assert_eq!(
            differs.condition.message,
            "the stream has 8 open shards and spec.stream.shards is 3; set spec.stream.manage to reshard"
        );
        assert!(!differs.condition.status);
        let equal = plan_stream("taxi-trips", false, 4, active(4), &[], now());
        assert_eq!(equal.condition.reason, "NotManaged");
        assert_eq!(equal.condition.message, "4 open shards as spec.stream.shards says; spec.stream.manage is false");
        let missing = plan_stream("taxi-trips", false, 4, StreamState::Missing, &[], now());
        assert_eq!(missing.plan, Plan::NotManaged { open: None, desired: 4 });
        assert!(missing.condition.message.contains("does not exist"), "{}", missing.condition.message);
        for step in [differs, equal, missing] {
            assert_eq!((step.event, step.requeue_after), (None, None));
        }
    }

    #[test]
    fn the_desired_count_is_clamped_to_what_kinesis_allows() {
        assert_eq!(plan_stream("s", true, 0, StreamState::Missing, &[], now()).plan, Plan::Create { shards: 1 });
        assert_eq!(
            plan_stream("s", true, 50_000, active(8_000), &[], now()).plan,
            Plan::Update { from: 8_000, to: MAX_SHARDS }
        );
    }

    #[test]
    fn a_call_less_than_24_hours_old_stays_in_the_window_and_future_ones_are_kept() {
        let calls = [now() - hours(24), now() - hours(24) + SignedDuration::from_secs(1), now() + hours(1)];
        assert_eq!(recent_calls(&calls, now()), [calls[1], calls[2]]);
        assert_eq!(next_call_at(&calls[1..]), None);
    }

    /// Records the calls [`manage_stream`] makes; the stream is in `state`.
    struct Recording {
        state: Result<StreamState, KinesisError>,
        fail_update: bool,
        calls: Mutex<Vec<String>>,
    }

    impl Recording {
        fn new(state: StreamState) -> Recording {
            Recording { state: Ok(state), fail_update: false, calls: Mutex::default() }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().expect("calls").clone()
        }

        fn record(&self, call: String) {
            self.calls.lock().expect("calls").push(call);
        }
    }

    impl Streams for Recording {
        async fn list_shards(&self, _: &StreamRef) -> Result<Vec<ShardInfo>, KinesisError> {
            self.record("ListShards".into());
            Ok(Vec::new())
        }
        async fn stream_state(&self, _: &StreamRef) -> Result<StreamState, KinesisError> {
            self.record("DescribeStreamSummary".into());
            self.state.clone()
        }
        async fn create_stream(&self, stream: &StreamRef, shards: u32) -> Result<(), KinesisError> {
            self.record(format!("CreateStream {} {shards}", stream.name));
            Ok(())
        }
        async fn update_shard_count(&self, stream: &StreamRef, target: u32) -> Result<(), KinesisError> {
            self.record(format!("UpdateShardCount {} {target}", stream.name));
            if self.fail_update {
                return Err(KinesisError::Transient { operation: "UpdateShardCount", message: "in use".into() });
            }
            Ok(())
        }
        async fn deregister_consumer(&self, stream: &StreamRef, consumer: &str) -> Result<(), KinesisError> {
            self.record(format!("DeregisterStreamConsumer {} {consumer}", stream.name));
            Ok(())
        }
    }

    fn stream() -> StreamRef {
        StreamRef { name: "taxi-trips".into(), region: None, endpoint_url: None }
    }

    #[tokio::test]
    async fn manage_stream_makes_the_call_the_plan_names() {
        let missing = Recording::new(StreamState::Missing);
        let step = manage_stream(&missing, &stream(), true, 4, &[], now()).await.expect("step");
        assert_eq!(step.plan, Plan::Create { shards: 4 });
        assert_eq!(missing.calls(), ["DescribeStreamSummary", "CreateStream taxi-trips 4"]);

        let eight = Recording::new(active(8));
        let step = manage_stream(&eight, &stream(), true, 3, &[], now()).await.expect("step");
        assert_eq!(step.plan, Plan::Update { from: 8, to: 4 });
        assert_eq!(eight.calls(), ["DescribeStreamSummary", "UpdateShardCount taxi-trips 4"]);

        for state in [StreamState::Busy, active(3)] {
            let waiting = Recording::new(state);
            manage_stream(&waiting, &stream(), true, 3, &[], now()).await.expect("step");
            assert_eq!(waiting.calls(), ["DescribeStreamSummary"], "{state:?}");
        }
    }

    #[tokio::test]
    async fn manage_stream_returns_kinesis_errors_and_does_not_count_a_failed_call() {
        let mut failing = Recording::new(active(8));
        failing.fail_update = true;
        let error = manage_stream(&failing, &stream(), true, 3, &[], now()).await.expect_err("fails");
        assert!(error.is_retryable());
        let unreachable = Recording {
            state: Err(KinesisError::Permanent { operation: "DescribeStreamSummary", message: "denied".into() }),
            ..Recording::new(active(8))
        };
        let error = manage_stream(&unreachable, &stream(), true, 3, &[], now()).await.expect_err("fails");
        assert_eq!(error.category(), "permanent");
        assert_eq!(unreachable.calls(), ["DescribeStreamSummary"]);
    }

    #[tokio::test]
    async fn manage_stream_never_changes_an_unmanaged_stream() {
        for state in [StreamState::Missing, StreamState::Busy, active(8)] {
            let streams = Recording::new(state);
            let step = manage_stream(&streams, &stream(), false, 3, &[], now()).await.expect("step");
            assert!(matches!(step.plan, Plan::NotManaged { .. }));
            assert_eq!(streams.calls(), ["DescribeStreamSummary"], "{state:?}");
        }
    }

    fn any_state() -> impl Strategy<Value = StreamState> {
        prop_oneof![Just(StreamState::Missing), Just(StreamState::Busy), (1..=MAX_SHARDS).prop_map(active)]
    }

    /// Call times within two days before `now`, in any order.
    fn any_calls() -> impl Strategy<Value = Vec<Timestamp>> {
        proptest::collection::vec(0..(2 * 86_400i64), 0..14)
            .prop_map(|ages| ages.into_iter().map(|s| now() - SignedDuration::from_secs(s)).collect())
    }

    proptest! {
        #[test]
        fn every_step_is_within_double_or_half_and_moves_towards_the_target(
            open in 1..=MAX_SHARDS, desired in 1..=MAX_SHARDS,
        ) {
            let to = next_step(open, desired);
            prop_assert!(to <= open * 2 && to * 2 >= open, "{open} → {to}");
            prop_assert!(to >= open.min(desired) && to <= open.max(desired), "{open} → {to} overshoots {desired}");
            prop_assert_eq!(to == open, open == desired);
        }

        #[test]
        fn any_target_is_reached_in_the_fewest_calls(open in 1..=MAX_SHARDS, desired in 1..=MAX_SHARDS) {
            let steps = path(open, desired).len();
            // One call covers a factor of 2 at most, so ⌈log2(max / min)⌉ calls are needed, and they suffice.
            let (lo, hi) = (f64::from(open.min(desired)), f64::from(open.max(desired)));
            let fewest = (hi / lo).log2().ceil() as usize;
            prop_assert_eq!(steps, fewest, "{} → {}", open, desired);
            prop_assert!(steps <= 14);
        }

        #[test]
        fn a_rate_limited_plan_names_the_instant_the_window_frees_a_call(calls in any_calls(), open in 1..=MAX_SHARDS) {
            let desired = if open == 1 { 2 } else { open - 1 };
            let step = plan_stream("s", true, desired, active(open), &calls, now());
            let recent: Vec<Timestamp> = calls.iter().copied().filter(|t| now().duration_since(*t) < hours(24)).collect();
            if recent.len() >= MAX_CALLS_PER_WINDOW {
                let Plan::RateLimited { next_at } = step.plan else {
                    return Err(TestCaseError::fail(format!("expected RateLimited: {step:?}")));
                };
                prop_assert!(next_at > now());
                // At next_at, fewer than ten calls are in the window; an instant before, ten.
                let in_window = |t: Timestamp| calls.iter().filter(|c| t.duration_since(**c) < hours(24)).count();
                prop_assert!(in_window(next_at) < MAX_CALLS_PER_WINDOW);
                prop_assert!(in_window(next_at - SignedDuration::from_nanos(1)) >= MAX_CALLS_PER_WINDOW);
                prop_assert_eq!(step.reshard_calls.len(), recent.len());
            } else {
                prop_assert!(matches!(step.plan, Plan::Update { .. }), "{:?}", step.plan);
                prop_assert_eq!(step.reshard_calls.len(), recent.len() + 1);
            }
        }

        #[test]
        fn an_unmanaged_stream_is_never_created_or_resharded(
            state in any_state(), desired in 1..=MAX_SHARDS, calls in any_calls(),
        ) {
            let step = plan_stream("s", false, desired, state, &calls, now());
            prop_assert!(matches!(step.plan, Plan::NotManaged { .. }), "{:?}", step.plan);
            prop_assert_eq!(step.event, None);
            prop_assert!(!step.condition.status);
            prop_assert_eq!(step.reshard_calls, recent_calls(&calls, now()));
        }

        /// The reconcile loop over simulated days: passes at random intervals, `spec.stream.shards`
        /// changed now and then, each call keeping the stream busy for a few passes. In any 24 h
        /// window at most ten calls are made, each from the open count within ×2 / ÷2.
        #[test]
        fn the_loop_never_makes_more_than_ten_calls_in_any_24_hours(
            changes in proptest::collection::vec((1..=64u32, 0..200usize), 1..40)
                .prop_map(|mut c| { c.sort_by_key(|(_, at)| *at); c }),
            gaps in proptest::collection::vec(1..7_200i64, 400),
            busy_passes in 0..4usize,
        ) {
            let mut time = now();
            let mut state = StreamState::Missing;
            let mut busy_left = 0;
            let mut pending = None;
            let mut status: Vec<Timestamp> = Vec::new();
            let mut made: Vec<Timestamp> = Vec::new();
            let mut desired = changes[0].0;
            let mut change = changes.iter().peekable();
            for (pass, gap) in gaps.iter().enumerate() {
                if let Some((shards, _)) = change.next_if(|(_, at)| *at <= pass) {
                    desired = *shards;
                }
                if busy_left > 0 {
                    busy_left -= 1;
                } else if let Some(open) = pending.take() {
                    state = active(open);
                }
                let step = plan_stream("s", true, desired, if pending.is_some() { StreamState::Busy } else { state }, &status, time);
                match step.plan {
                    Plan::Create { shards } => { pending = Some(shards); busy_left = busy_passes; }
                    Plan::Update { from, to } => {
                        prop_assert_eq!(state, active(from));
                        prop_assert!(to <= from * 2 && to * 2 >= from);
                        made.push(time);
                        pending = Some(to);
                        busy_left = busy_passes;
                    }
                    _ => {}
                }
                status = step.reshard_calls;
                prop_assert!(status.len() <= MAX_CALLS_PER_WINDOW);
                time += SignedDuration::from_secs(*gap);
            }
            for (i, start) in made.iter().enumerate() {
                let in_window = made[i..].iter().filter(|t| t.duration_since(*start) < hours(24)).count();
                prop_assert!(in_window <= MAX_CALLS_PER_WINDOW, "{} calls within 24 h of {}", in_window, start);
            }
        }
    }
}

//! The autoscaling policy: how many worker replicas a pipeline wants, as one pure function
//! of the `spec.autoscaling` settings, a fresh [`Observation`] and a small [`History`].
//!
//! The operator calls [`recommend`] once per reconcile pass with what it just saw (open shards from
//! Kinesis; per-shard lag and throughput from the workers' `/status`), applies
//! [`Decision::replicas`], writes [`Decision::reason`] into `status.scalingReason` and
//! [`Decision::recommended`] into `status.desiredReplicas`, and keeps the returned [`History`] in
//! memory for the next pass of the same pipeline. The history is plain data (serde) and small: a few
//! timestamps, one capacity estimate, the previous pass's lags and at most one recommendation per
//! distinct replica count.
//!
//! # Rules
//!
//! Let `N` be the open shards, `R` the current replicas, `L` the largest lag (MillisBehindLatest)
//! over the reported shards and `maxLag`, `up`, `down` the settings.
//!
//! - **Baseline**: `⌈N / targetShardsPerReplica⌉`. Raising `R` to it happens at once (a shard count
//!   is not noisy).
//! - **Scale up** when `L > maxLag` has held at every pass for `up` (*lag high*), or when `L ≥ maxLag/4`
//!   has grown at every pass for `up` (*lag rising*: the workers are saturated and the lag is on its
//!   way to `maxLag`; waiting for it to get there would only add to the backlog). Both windows restart
//!   at the last scale, so the effect of a rescale is seen before the next one. The new count is sized
//!   from the catch-up need, not one step at a time (see *Sizing*); it only replaces `R` when larger.
//! - **Scale down** only when `L < maxLag/2` has held at every pass for `down` (and since the last
//!   scale), and then to the largest recommendation of the last `down` (HPA-style stabilization). A
//!   pass with low lag recommends the sized count for its throughput, never more than `R`; the gap
//!   between the thresholds (`maxLag` up, `maxLag/2` down), the 80 % target utilisation and the
//!   window maximum are the hysteresis.
//! - **Bounds**, applied last and at once: `minReplicas ≤ replicas ≤ maxReplicas`, then never more than
//!   `max(N, 1)` (a worker needs at least one shard; when `minReplicas > N` the shard cap wins, as the
//!   extra workers would own nothing).
//! - Without any shard sample (no worker answered) the lag is unknown: the count is held, and every
//!   lag window starts again.
//!
//! # Sizing
//!
//! Per shard `s` with lag `L_s`, consumed rate `μ_s` and incoming rate `λ_s` (records/s):
//!
//! ```text
//! λ_s    = the reported incoming rate, or else  μ_s / (1 − min(dL_s/dt, 0.9))
//! need_s = λ_s / U  +  L_s · λ_s / maxLag          (U = TARGET_UTILISATION = 0.8)
//! ```
//!
//! A FIFO shard behind by `L_s` holds a backlog of about `L_s · λ_s` records, and its lag grows at
//! `dL/dt = 1 − μ/λ`, which gives the estimate of `λ_s` from the lag's slope between two passes (a
//! shard with lag but no throughput, e.g. paused by a handoff, takes the largest rate of the others).
//! `need_s` is the rate that keeps up with the input at 80 % utilisation and drains the backlog
//! within `maxLag`. Shards are spread evenly, so with `n` replicas the busiest owns
//! `⌈N/n⌉` shards; with a per-replica capacity `c` a replica can serve `k = ⌊c / max_s need_s⌋`
//! shards, hence
//!
//! ```text
//! replicas = ⌈N / k⌉          (N when k = 0: one shard alone needs more than one replica)
//! ```
//!
//! and only counts that lower `⌈N/n⌉` are ever chosen (with 8 shards: 1, 2, 3, 4 or 8).
//! The capacity `c` is learnt: while some shard's lag is at least `maxLag/4` its owner reads as fast
//! as it can, so when that held at this pass and the previous one, with no rescale in between (moved
//! shards pause), the largest per-replica consumed rate (the sum over the shards it owns, or the mean
//! over replicas when owners are unknown) is the capacity; any other measurement is only a lower
//! bound, kept if larger. A pass sizes with the larger of the learnt capacity and its own
//! per-replica consumption, neither of which depends on the lag, so more lag never lowers the
//! capacity used. Without throughput at all, a scale-up adds one replica.
//!
//! The policy is monotone: with the same history and throughput, more lag on any shard never gives
//! fewer replicas (property-tested with the decision).
//!
//! The parts: `policy` (the settings, parsed), `observation` and `history` (what a pass sees and
//! what it leaves for the next), `sizing` (capacity, incoming rates and the catch-up count),
//! `decide` (the rules, as [`recommend`]) and `reason` (why, as words and as metric labels).

mod decide;
mod history;
mod observation;
mod policy;
mod reason;
mod sizing;
#[cfg(test)]
mod test_support;

pub use decide::{Decision, Outcome, recommend};
pub use history::{History, PreviousLags, TimedRecommendation};
pub use observation::{Observation, ShardSample};
pub use policy::{Policy, PolicyError};
pub use reason::Reason;
pub use sizing::TARGET_UTILISATION;

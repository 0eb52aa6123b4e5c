//! A deterministic, time-stepped simulation of one pipeline under an autoscaling policy,
//! behind `taxi-operator simulate`: an input rate trace goes into a stream of open shards, worker
//! replicas consume it, a policy picks the replica count every reconcile period, and the run is
//! summed up as one [`SimReport`].
//!
//! # Model (defaults in brackets)
//!
//! - **Time** advances in steps of [`STEP`] (1 s). The policy is asked every `interval` (30 s, the
//!   operator's steady requeue) with what the operator would see then.
//! - **Input**: a [`Trace`] gives the stream's rate in records/s for each second; records hash evenly
//!   over the `shards` open shards (8), so each shard receives `rate / shards`.
//! - **Consumption**: shards are assigned to replicas with the operator's own [`assign`] (balanced,
//!   stable). A replica consumes at most `capacity` records/s (2500) in total, shared fairly over the
//!   shards it owns that have records waiting (water-filling: a shard that needs less leaves the rest
//!   to the others). A replica with no shard does nothing, so the usable capacity is at most
//!   `min(replicas, shards) × capacity`, and less when shards do not divide evenly (8 shards on 5
//!   replicas: the replicas with 2 shards limit).
//! - **Rescale**: the policy's count is the StatefulSet's size at once (billed from then on). A
//!   scale-up moves shards only when the new pods are ready, `pod_startup` later (20 s); a scale-down
//!   moves them at once. Every shard whose owner changes pauses for `handoff_pause` (10 s: release,
//!   final checkpoint, takeover); the others keep reading. Every policy runs on these same
//!   mechanics, so the comparison is about when and how far each one scales.
//! - **Lag** of a shard = the age of its oldest unconsumed record (what Kinesis reports as
//!   MillisBehindLatest), exact for a FIFO shard: with `A(t)` the records that arrived by `t` and `D`
//!   those consumed, lag = `now − A⁻¹(D)` (linear within a step), 0 when caught up. The pipeline's
//!   lag is the largest over the shards.
//! - **What the policies see**: per shard its lag, owner and consumed records/s over the last
//!   interval (the incoming rate is not reported: `ours` estimates it); `cpu` sees the utilisation
//!   `consumed / (replicas × capacity)`.
//!
//! # Report
//!
//! - `time_to_recover_s`: from the first second the lag exceeds `maxLag` to the first second after
//!   which it never exceeds it again; `0` when it never exceeded it, `null` when it still exceeds it
//!   at the end of the run.
//! - `max_lag_s`: the largest lag of the run, in seconds (0.1 s resolution).
//! - `scale_events`: changes of the replica count.
//! - `replica_seconds`: the StatefulSet's size summed over every second of the run.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use taxi_core::assignment::{Assignment, assign, moved_shards};
use taxi_core::partition::{even_ranges, shard_id};
use taxi_core::topology::ShardInfo;

use crate::autoscale::{self, History, Observation, Policy, ShardSample};

/// Length of one simulation step.
pub const STEP: Duration = Duration::from_secs(1);

/// Peak of the `diurnal` trace as a multiple of the base rate.
pub const DIURNAL_PEAK: f64 = 2.75;

/// Relative taxi demand at each hour of a weekday (0 h … 23 h; 1.0 = the evening peak), NYC-like:
/// lowest around 4–5 am, a morning peak at 8–9 am, a higher evening peak at 7 pm.
const DIURNAL_SHAPE: [f64; 24] = [
    0.62, 0.46, 0.34, 0.25, 0.18, 0.17, 0.30, 0.55, 0.76, 0.78, 0.70, 0.70, 0.74, 0.75, 0.78, 0.77, 0.72, 0.80, 0.95,
    1.00, 0.94, 0.90, 0.87, 0.76,
];

/// An input rate trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Trace {
    /// The base rate, ×3 from 10 minutes on; 1 hour.
    Step,
    /// From the base rate linearly up to ×4 at the end; 1 hour.
    Ramp,
    /// The base rate with ±30 % uniform noise per second from a seeded PRNG; 1 hour.
    Noisy,
    /// A weekday of NYC-like demand from midnight, peaking at 2.75 × the base rate at
    /// 7 pm (11000 records/s by default: 10 % over what the 4-replica baseline consumes); 24 hours.
    Diurnal,
}

impl Trace {
    /// Every trace, in a fixed order.
    pub const ALL: [Trace; 4] = [Trace::Step, Trace::Ramp, Trace::Noisy, Trace::Diurnal];

    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Trace::Step => "step",
            Trace::Ramp => "ramp",
            Trace::Noisy => "noisy",
            Trace::Diurnal => "diurnal",
        }
    }

    /// How long the trace runs unless told otherwise.
    pub fn default_duration(self) -> Duration {
        match self {
            Trace::Step | Trace::Ramp | Trace::Noisy => Duration::from_secs(3600),
            Trace::Diurnal => Duration::from_secs(86_400),
        }
    }

    /// The rate in records/s of each second `0..seconds`. `noisy` draws from `seed`.
    pub fn rates(self, base_rate: f64, seconds: u64, seed: u64) -> Vec<f64> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let ramp_over = self.default_duration().as_secs_f64();
        (0..seconds)
            .map(|t| match self {
                Trace::Step => {
                    if t < 600 {
                        base_rate
                    } else {
                        3.0 * base_rate
                    }
                }
                Trace::Ramp => base_rate * (1.0 + 3.0 * (t as f64 / ramp_over).min(1.0)),
                Trace::Noisy => base_rate * (1.0 + 0.3 * (2.0 * rng.f64() - 1.0)),
                Trace::Diurnal => {
                    let hours = (t % 86_400) as f64 / 3600.0;
                    let hour = hours.floor();
                    let (i, frac) = (hour as usize % 24, hours - hour);
                    let shape = DIURNAL_SHAPE[i] + (DIURNAL_SHAPE[(i + 1) % 24] - DIURNAL_SHAPE[i]) * frac;
                    base_rate * DIURNAL_PEAK * shape
                }
            })
            .collect()
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scaling policy to simulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyKind {
    /// The operator's own policy (`autoscale::recommend`), as the operator runs it.
    Ours,
    /// KEDA's Kinesis scaler with its default `shardCount: 2`: `⌈open shards / 2⌉`, whatever the lag.
    Keda,
    /// Managed Service for Apache Flink's autoscaling: ×2 when the utilisation stayed ≥ 75 % for
    /// 15 minutes, ÷2 when it stayed < 10 % for 6 hours.
    Cpu,
}

impl PolicyKind {
    /// Every policy, in a fixed order.
    pub const ALL: [PolicyKind; 3] = [PolicyKind::Ours, PolicyKind::Keda, PolicyKind::Cpu];

    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Ours => "ours",
            PolicyKind::Keda => "keda",
            PolicyKind::Cpu => "cpu",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything a run depends on. Durations are used in whole seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The policy deciding the replicas.
    pub policy: PolicyKind,
    /// The input rate trace.
    pub trace: Trace,
    /// Open shards of the stream (8).
    pub shards: u32,
    /// Records/s one replica can consume (2500).
    pub capacity_per_replica: f64,
    /// The trace's base rate in records/s (4000: 40 % utilisation at the 4-replica baseline of 8
    /// shards; the step's ×3 overloads it by 20 %).
    pub base_rate: f64,
    /// `spec.autoscaling` for `ours`; its bounds also bound `keda` and `cpu`, and every policy starts
    /// at its shard baseline.
    pub autoscaling: Policy,
    /// How often the policy is asked (30 s).
    pub interval: Duration,
    /// How long a moved shard pauses (10 s).
    pub handoff_pause: Duration,
    /// How long new pods take to become ready before shards move to them (20 s).
    pub pod_startup: Duration,
    /// Seed of the `noisy` trace.
    pub seed: u64,
    /// Length of the run; the trace's own by default.
    pub duration: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            policy: PolicyKind::Ours,
            trace: Trace::Step,
            shards: 8,
            capacity_per_replica: 2500.0,
            base_rate: 4000.0,
            autoscaling: Policy::default(),
            interval: Duration::from_secs(30),
            handoff_pause: Duration::from_secs(10),
            pod_startup: Duration::from_secs(20),
            seed: 42,
            duration: None,
        }
    }
}

/// A configuration that cannot be simulated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// A setting out of its range.
    #[error("invalid simulation setting {setting}: {problem}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

impl SimConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), SimError> {
        let invalid = |setting, problem| Err(SimError::Invalid { setting, problem });
        let policy = &self.autoscaling;
        if self.shards == 0 {
            return invalid("shards", "must be at least 1");
        }
        if !(self.capacity_per_replica.is_finite() && self.capacity_per_replica > 0.0) {
            return invalid("capacity", "must be a positive number of records/s");
        }
        if !(self.base_rate.is_finite() && self.base_rate >= 0.0) {
            return invalid("rate", "must be a non-negative number of records/s");
        }
        if self.interval.as_secs() == 0 {
            return invalid("interval", "must be at least 1s");
        }
        if self.duration.is_some_and(|d| d.as_secs() == 0) {
            return invalid("duration", "must be at least 1s");
        }
        if policy.min_replicas == 0 || policy.min_replicas > policy.max_replicas {
            return invalid("min/max replicas", "need 1 <= min <= max");
        }
        if policy.target_shards_per_replica == 0 {
            return invalid("target shards per replica", "must be at least 1");
        }
        if policy.max_lag.is_zero() {
            return invalid("max lag", "must be positive");
        }
        Ok(())
    }

    fn seconds(&self) -> u64 {
        self.duration.unwrap_or_else(|| self.trace.default_duration()).as_secs()
    }

    /// The replicas every policy starts with: the bounded shard baseline.
    pub fn initial_replicas(&self) -> u32 {
        let policy = &self.autoscaling;
        policy.bound(policy.shard_baseline(self.shards), self.shards)
    }
}

/// The outcome of one run: the JSON object `taxi-operator simulate` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    /// The policy's name.
    pub policy: &'static str,
    /// The trace's name.
    pub trace: &'static str,
    /// See the module docs; `None` (null) when the lag is above maxLag at the end.
    pub time_to_recover_s: Option<u64>,
    /// Largest lag, seconds.
    pub max_lag_s: f64,
    /// Changes of the replica count.
    pub scale_events: u32,
    /// Replicas × seconds.
    pub replica_seconds: u64,
}

impl SimReport {
    /// One line of JSON.
    pub fn to_json(&self) -> String {
        // Strings, integers and a finite float always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A policy as the simulation drives it.
trait Scaler {
    /// Replicas wanted after seeing `observation`.
    fn decide(&mut self, observation: &Observation) -> u32;
}

struct Ours {
    policy: Policy,
    history: History,
}

impl Scaler for Ours {
    fn decide(&mut self, observation: &Observation) -> u32 {
        let outcome = autoscale::recommend(&self.policy, observation, &self.history);
        self.history = outcome.history;
        outcome.decision.replicas
    }
}

struct Keda {
    replicas: u32,
}

impl Scaler for Keda {
    fn decide(&mut self, _: &Observation) -> u32 {
        self.replicas
    }
}

/// Managed Flink's rule on the mean utilisation; both windows restart at a rescale.
struct Cpu {
    capacity_per_replica: f64,
    min: u32,
    max: u32,
    high_since_ms: Option<u64>,
    low_since_ms: Option<u64>,
    last_scale_ms: u64,
}

impl Cpu {
    const UP_AT: f64 = 0.75;
    const UP_AFTER_MS: u64 = 15 * 60 * 1000;
    const DOWN_BELOW: f64 = 0.10;
    const DOWN_AFTER_MS: u64 = 6 * 3600 * 1000;
}

impl Scaler for Cpu {
    fn decide(&mut self, observation: &Observation) -> u32 {
        let now = observation.at_ms;
        let replicas = observation.current_replicas.max(1);
        let consumed: f64 = observation.shards.iter().map(|s| s.consumed_per_s).sum();
        let utilisation = consumed / (f64::from(replicas) * self.capacity_per_replica);
        self.high_since_ms = (utilisation >= Cpu::UP_AT).then(|| self.high_since_ms.unwrap_or(now));
        self.low_since_ms = (utilisation < Cpu::DOWN_BELOW).then(|| self.low_since_ms.unwrap_or(now));
        let held = |since: Option<u64>| since.map(|s| now.saturating_sub(s.max(self.last_scale_ms)));
        let wanted = if held(self.high_since_ms).is_some_and(|h| h >= Cpu::UP_AFTER_MS) {
            replicas.saturating_mul(2).min(self.max)
        } else if held(self.low_since_ms).is_some_and(|h| h >= Cpu::DOWN_AFTER_MS) {
            replicas.div_ceil(2).max(self.min)
        } else {
            replicas
        };
        if wanted != replicas {
            self.last_scale_ms = now;
        }
        wanted
    }
}

/// The stream and the workers: per-shard arrivals, consumption, pauses and owners.
struct Pipeline {
    shards: Vec<ShardInfo>,
    /// Records that arrived on each shard by second `i` (the same for every shard).
    arrived: Vec<f64>,
    consumed: Vec<f64>,
    /// Per shard, the second `i` with `arrived[i] <= consumed < arrived[i + 1]` last time.
    cursor: Vec<usize>,
    paused_until: Vec<u64>,
    assignment: Assignment,
    /// Shard indices per owner ordinal.
    owned: Vec<Vec<usize>>,
    capacity: f64,
    /// Scratch of `step`: (records waiting, shard index).
    waiting: Vec<(f64, usize)>,
}

impl Pipeline {
    fn new(shard_count: u32, rates: &[f64], capacity: f64) -> Pipeline {
        let shards: Vec<ShardInfo> = even_ranges(shard_count)
            .into_iter()
            .enumerate()
            .map(|(i, range)| ShardInfo {
                shard_id: shard_id(i),
                parent: None,
                adjacent_parent: None,
                starting_hash_key: range.start,
                ending_hash_key: range.end,
                ending_sequence_number: None,
            })
            .collect();
        let n = shards.len();
        let mut arrived = Vec::with_capacity(rates.len() + 1);
        arrived.push(0.0);
        let mut total = 0.0;
        for r in rates {
            total += r / n as f64;
            arrived.push(total);
        }
        Pipeline {
            shards,
            arrived,
            consumed: vec![0.0; n],
            cursor: vec![0; n],
            paused_until: vec![0; n],
            assignment: Assignment::default(),
            owned: Vec::new(),
            capacity,
            waiting: Vec::with_capacity(n),
        }
    }

    /// Assigns the shards over `replicas`; the shards that move pause until `resume_at`.
    fn reassign(&mut self, replicas: u32, resume_at: u64) {
        let next = assign(&self.shards, replicas, Some(&self.assignment));
        for moved in moved_shards(&self.assignment, &next) {
            if let Some(i) = self.shards.iter().position(|s| s.shard_id == moved) {
                self.paused_until[i] = resume_at;
            }
        }
        self.owned = vec![Vec::new(); replicas as usize];
        for (i, shard) in self.shards.iter().enumerate() {
            if let Some(owner) = next.owner_of(&shard.shard_id).and_then(|o| self.owned.get_mut(o as usize)) {
                owner.push(i);
            }
        }
        self.assignment = next;
    }

    /// Consumes during second `t` (from `t` to `t + 1`).
    fn step(&mut self, t: u64) {
        let Some(&available) = self.arrived.get(t as usize + 1) else { return };
        for owned in &self.owned {
            self.waiting.clear();
            self.waiting.extend(
                owned
                    .iter()
                    .filter(|&&s| self.paused_until[s] <= t)
                    .map(|&s| (available - self.consumed[s], s))
                    .filter(|(w, _)| *w > 0.0),
            );
            self.waiting.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut budget = self.capacity * STEP.as_secs_f64();
            let mut left = self.waiting.len();
            for &(waiting, s) in &self.waiting {
                let share = budget / left as f64;
                if waiting <= share {
                    self.consumed[s] = available;
                    budget -= waiting;
                } else {
                    self.consumed[s] += share;
                    budget -= share;
                }
                left -= 1;
            }
        }
    }

    /// The lag of shard `s` at second `now`, in seconds.
    fn lag(&mut self, s: usize, now: u64) -> f64 {
        let d = self.consumed[s];
        let now = now as usize;
        if d >= self.arrived[now] {
            return 0.0;
        }
        let mut i = self.cursor[s];
        while i + 1 < now && self.arrived[i + 1] <= d {
            i += 1;
        }
        self.cursor[s] = i;
        let span = self.arrived[i + 1] - self.arrived[i];
        let arrival = i as f64 + if span > 0.0 { (d - self.arrived[i]) / span } else { 1.0 };
        now as f64 - arrival
    }
}

/// The pipeline at one reconcile pass of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the start.
    pub t_s: u64,
    /// Input rate of that second, records/s.
    pub rate: f64,
    /// Replicas after the policy's decision.
    pub replicas: u32,
    /// Largest shard lag before the decision, seconds.
    pub lag_s: f64,
}

/// Runs one simulation.
pub fn run(config: &SimConfig) -> Result<SimReport, SimError> {
    run_with_timeline(config).map(|(report, _)| report)
}

/// Runs one simulation and also returns the pipeline at every reconcile pass.
pub fn run_with_timeline(config: &SimConfig) -> Result<(SimReport, Vec<TimelinePoint>), SimError> {
    config.validate()?;
    let seconds = config.seconds();
    let interval = config.interval.as_secs();
    let pause = config.handoff_pause.as_secs();
    let startup = config.pod_startup.as_secs();
    let max_lag = config.autoscaling.max_lag.as_secs_f64();
    let rates = config.trace.rates(config.base_rate, seconds, config.seed);
    let mut pipeline = Pipeline::new(config.shards, &rates, config.capacity_per_replica);
    let initial = config.initial_replicas();
    let mut scaler: Box<dyn Scaler> = match config.policy {
        PolicyKind::Ours => Box::new(Ours { policy: config.autoscaling.clone(), history: History::default() }),
        PolicyKind::Keda => Box::new(Keda {
            replicas: config.shards.div_ceil(2).clamp(config.autoscaling.min_replicas, config.autoscaling.max_replicas),
        }),
        PolicyKind::Cpu => Box::new(Cpu {
            capacity_per_replica: config.capacity_per_replica,
            min: config.autoscaling.min_replicas,
            max: config.autoscaling.max_replicas,
            high_since_ms: None,
            low_since_ms: None,
            last_scale_ms: 0,
        }),
    };

    pipeline.reassign(initial, 0);
    let shard_count = pipeline.shards.len();
    let mut replicas = initial;
    let mut pending: Option<(u32, u64)> = None;
    let mut lags = vec![0.0f64; shard_count];
    let mut consumed_at_last_look = vec![0.0; shard_count];
    let (mut scale_events, mut replica_seconds, mut max_seen) = (0u32, 0u64, 0.0f64);
    let (mut first_above, mut last_above): (Option<u64>, Option<u64>) = (None, None);
    let mut timeline = Vec::with_capacity(usize::try_from(seconds / interval + 1).unwrap_or(0));

    for t in 0..seconds {
        if t % interval == 0 {
            let observation = Observation {
                at_ms: t * 1000,
                open_shards: config.shards,
                current_replicas: replicas,
                shards: pipeline
                    .shards
                    .iter()
                    .enumerate()
                    .map(|(i, shard)| ShardSample {
                        shard_id: shard.shard_id.clone(),
                        owner: pipeline.assignment.owner_of(&shard.shard_id),
                        lag_ms: (lags[i] * 1000.0).round() as u64,
                        consumed_per_s: if t == 0 {
                            0.0
                        } else {
                            (pipeline.consumed[i] - consumed_at_last_look[i]) / interval as f64
                        },
                        incoming_per_s: None,
                    })
                    .collect(),
            };
            consumed_at_last_look.clone_from(&pipeline.consumed);
            let wanted = scaler.decide(&observation);
            timeline.push(TimelinePoint {
                t_s: t,
                rate: rates[t as usize],
                replicas: wanted,
                lag_s: lags.iter().copied().fold(0.0, f64::max),
            });
            if wanted != replicas {
                scale_events += 1;
                replicas = wanted;
                if wanted > pipeline.assignment.replicas {
                    pending = Some((wanted, pending.map_or(t + startup, |(_, ready)| ready)));
                } else {
                    pending = None;
                    if wanted != pipeline.assignment.replicas {
                        pipeline.reassign(wanted, t + pause);
                    }
                }
            }
        }
        if let Some((wanted, ready)) = pending
            && ready <= t
        {
            pipeline.reassign(wanted, t + pause);
            pending = None;
        }
        replica_seconds += u64::from(replicas);
        pipeline.step(t);
        let now = t + 1;
        let mut lag = 0.0f64;
        for (i, slot) in lags.iter_mut().enumerate() {
            *slot = pipeline.lag(i, now);
            lag = lag.max(*slot);
        }
        max_seen = max_seen.max(lag);
        if lag > max_lag {
            first_above.get_or_insert(now);
            last_above = Some(now);
        }
    }

    let time_to_recover_s = time_to_recover(first_above, last_above, seconds);
    let report = SimReport {
        policy: config.policy.name(),
        trace: config.trace.name(),
        time_to_recover_s,
        max_lag_s: (max_seen * 10.0).round() / 10.0,
        scale_events,
        replica_seconds,
    };
    Ok((report, timeline))
}

/// `time_to_recover_s` from the first and last second the lag was above maxLag, in a run of
/// `seconds` (lags are sampled at seconds `1..=seconds`).
fn time_to_recover(first_above: Option<u64>, last_above: Option<u64>, seconds: u64) -> Option<u64> {
    match (first_above, last_above) {
        (None, _) => Some(0),
        (Some(first), Some(last)) if last < seconds => Some(last + 1 - first),
        (Some(_), _) => None,
    }
}

/// Replica-seconds of a clairvoyant policy on the same trace: every second, the fewest replicas
/// (not below the bounded shard baseline, within the bounds) whose busiest replica, owning
/// `⌈shards / replicas⌉` shards, keeps up with that second's input; it rescales instantly and
/// without pauses. A yardstick for how much a real policy over-provisions.
pub fn oracle_replica_seconds(config: &SimConfig) -> Result<u64, SimError> {
    config.validate()?;
    let policy = &config.autoscaling;
    let lowest = config.initial_replicas();
    let highest = policy.bound(policy.max_replicas, config.shards);
    let shards = f64::from(config.shards);
    let rates = config.trace.rates(config.base_rate, config.seconds(), config.seed);
    Ok(rates
        .iter()
        .map(|rate| {
            let per_shard = rate / shards;
            let fits = |n: u32| f64::from(config.shards.div_ceil(n)) * per_shard <= config.capacity_per_replica;
            u64::from((lowest..=highest).find(|&n| fits(n)).unwrap_or(highest))
        })
        .sum())
}

/// Runs every (policy, trace) pair of `base` (its policy and trace are replaced), policies first.
pub fn run_all(base: &SimConfig) -> Result<Vec<SimReport>, SimError> {
    let mut reports = Vec::new();
    for policy in PolicyKind::ALL {
        for trace in Trace::ALL {
            reports.push(run(&SimConfig { policy, trace, ..base.clone() })?);
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(policy: PolicyKind, trace: Trace) -> SimConfig {
        SimConfig { policy, trace, ..SimConfig::default() }
    }

    #[test]
    fn traces_have_their_shapes() {
        let step = Trace::Step.rates(4000.0, 3600, 1);
        assert_eq!((step.len(), step[599], step[600], step[3599]), (3600, 4000.0, 12_000.0, 12_000.0));

        let ramp = Trace::Ramp.rates(4000.0, 3600, 1);
        assert_eq!((ramp[0], ramp[1800]), (4000.0, 10_000.0));
        assert!((ramp[3599] - 16_000.0).abs() < 4.0, "{}", ramp[3599]);

        let noisy = Trace::Noisy.rates(4000.0, 3600, 7);
        assert!(noisy.iter().all(|r| (2800.0..=5200.0).contains(r)));
        let mean = noisy.iter().sum::<f64>() / noisy.len() as f64;
        assert!((mean - 4000.0).abs() < 40.0, "{mean}");
        assert_eq!(noisy, Trace::Noisy.rates(4000.0, 3600, 7), "seeded");
        assert_ne!(noisy, Trace::Noisy.rates(4000.0, 3600, 8));

        let day = Trace::Diurnal.rates(4000.0, 86_400, 1);
        let at = |h: f64| day[(h * 3600.0) as usize];
        let lowest = (0..day.len()).min_by(|&a, &b| day[a].total_cmp(&day[b])).unwrap_or(0);
        let highest = (0..day.len()).max_by(|&a, &b| day[a].total_cmp(&day[b])).unwrap_or(0);
        assert!((4 * 3600..=5 * 3600).contains(&lowest), "low at {lowest} s");
        assert_eq!(highest, 19 * 3600, "evening peak");
        assert_eq!(at(19.0), 4000.0 * DIURNAL_PEAK);
        assert!(at(8.5) > at(6.0) && at(8.5) > at(11.0), "morning peak");
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_unread_record() {
        // One shard, one replica of 1000/s: 500/s for 10 min, then 1500/s. Behind from 600 s on,
        // consuming 1000 of every 1500 records: the lag grows by 1/3 s per second.
        let one = SimConfig {
            policy: PolicyKind::Keda,
            shards: 1,
            capacity_per_replica: 1000.0,
            base_rate: 500.0,
            ..SimConfig::default()
        };
        let (report, timeline) = run_with_timeline(&one).unwrap();
        assert_eq!(report.max_lag_s, 1000.0);
        assert_eq!(report.time_to_recover_s, None, "still behind at the end");
        let at = |t: u64| timeline.iter().find(|p| p.t_s == t).map(|p| p.lag_s).unwrap_or(f64::NAN);
        assert_eq!(at(600), 0.0);
        assert!((at(900) - 100.0).abs() < 1e-6, "{}", at(900));
        assert!((at(1800) - 400.0).abs() < 1e-6, "{}", at(1800));
    }

    #[test]
    fn a_replica_shares_its_capacity_with_the_shards_that_need_it() {
        let mut pipeline = Pipeline::new(2, &[1000.0; 4], 1500.0);
        pipeline.reassign(1, 0);
        pipeline.paused_until[0] = 2;
        pipeline.step(0);
        pipeline.step(1);
        // Shard 0 paused for 2 s; shard 1 had all 1500/s for its 500/s.
        assert_eq!(pipeline.consumed, [0.0, 1000.0]);
        assert_eq!((pipeline.lag(0, 2), pipeline.lag(1, 2)), (2.0, 0.0));
        // Then shard 1 needs 500/s and leaves 1000/s to shard 0's backlog of 1500.
        pipeline.step(2);
        assert_eq!(pipeline.consumed, [1000.0, 1500.0]);
        assert!((pipeline.lag(0, 3) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn moved_shards_pause_and_the_others_keep_reading() {
        let mut pipeline = Pipeline::new(8, &[8000.0; 60], 2500.0);
        pipeline.reassign(4, 0);
        assert!(pipeline.paused_until.iter().all(|p| *p == 0), "the first assignment pauses nothing");
        pipeline.reassign(8, 40);
        assert_eq!(pipeline.paused_until.iter().filter(|p| **p == 40).count(), 4, "4 → 8 moves 4 shards");
        assert_eq!(pipeline.owned.iter().map(Vec::len).collect::<Vec<_>>(), [1; 8]);
    }

    #[test]
    fn recovery_runs_from_the_first_breach_to_the_last() {
        assert_eq!(time_to_recover(None, None, 3600), Some(0));
        assert_eq!(time_to_recover(Some(100), Some(100), 3600), Some(1));
        assert_eq!(time_to_recover(Some(100), Some(460), 3600), Some(361));
        assert_eq!(time_to_recover(Some(100), Some(3600), 3600), None);
    }

    #[test]
    fn the_oracle_scales_to_the_fewest_replicas_that_keep_up() {
        // Step: 4 replicas for 10 min, then 12000/s needs one shard (1500/s) per replica: 8.
        assert_eq!(oracle_replica_seconds(&config(PolicyKind::Ours, Trace::Step)), Ok(4 * 600 + 8 * 3000));
    }

    #[test]
    fn keda_holds_half_the_shards_and_cpu_doubles_after_a_quarter_hour() {
        let keda = run(&config(PolicyKind::Keda, Trace::Step)).unwrap();
        assert_eq!((keda.scale_events, keda.replica_seconds), (0, 4 * 3600));
        let (cpu, timeline) = run_with_timeline(&config(PolicyKind::Cpu, Trace::Step)).unwrap();
        // Saturated from 600 s; the first pass that saw it is at 630 s, so the doubling is at 1530 s.
        let doubled = timeline.iter().find(|p| p.replicas == 8).map(|p| p.t_s);
        assert_eq!(doubled, Some(1530));
        assert_eq!(cpu.scale_events, 1);
    }

    #[test]
    fn invalid_settings_are_refused() {
        let bad = [
            SimConfig { shards: 0, ..SimConfig::default() },
            SimConfig { capacity_per_replica: 0.0, ..SimConfig::default() },
            SimConfig { base_rate: f64::NAN, ..SimConfig::default() },
            SimConfig { interval: Duration::from_millis(500), ..SimConfig::default() },
            SimConfig {
                autoscaling: Policy { min_replicas: 3, max_replicas: 2, ..Policy::default() },
                ..SimConfig::default()
            },
        ];
        for config in bad {
            assert!(run(&config).is_err(), "{config:?}");
        }
    }
}

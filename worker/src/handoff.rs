//! Shard handoff between workers: where a worker's assignment comes from, which shards
//! it owns at each epoch, and when it may claim a shard that moved to it.
//!
//! - An assignment source ([`subscribe`]: a polled file, or the operator's ConfigMap watched through
//!   the Kubernetes API) yields a `watch` channel of validated assignments whose epochs only grow;
//!   a missing, malformed or older document is logged, counted in `taxi_assignment_errors_total`
//!   and the current assignment kept.
//! - [`plan_epoch`] diffs a new epoch against what the worker runs: shards no longer owned are
//!   released (final checkpoint marked released at that epoch); newly owned shards start.
//! - [`decide_claim`] tells a new owner whether to claim a shard's checkpoint now or to wait for
//!   the previous owner's release (at most the takeover timeout).
//!
//! The coordinator and the shard tasks that act on these decisions live in [`crate::run`].

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::metrics::WorkerMetrics;
use taxi_core::assignment::{ASSIGNMENT_KEY, Assignment, config_map_name};

/// How often `--assignment file:PATH` reads the file.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often a new owner reads the checkpoint of a shard it waits for.
pub const RELEASE_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a new owner waits for the previous owner's release before taking the shard over.
pub const DEFAULT_TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Where Kubernetes mounts the pod's namespace.
pub const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Where a worker learns which shards it owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AssignmentSource {
    /// Every shard of the stream (a single worker, or tests): no handoffs.
    #[default]
    All,
    /// An assignment document in a file, read every [`FILE_POLL_INTERVAL`].
    File(PathBuf),
    /// The operator's ConfigMap `<pipeline>-assignment` in the pod's namespace, watched.
    ConfigMap,
}

impl FromStr for AssignmentSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(AssignmentSource::All),
            "configmap" => Ok(AssignmentSource::ConfigMap),
            other => match other.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(AssignmentSource::File(PathBuf::from(path))),
                _ => Err(format!("invalid assignment source {other:?}: expected all, file:PATH or configmap")),
            },
        }
    }
}

impl fmt::Display for AssignmentSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssignmentSource::All => f.write_str("all"),
            AssignmentSource::File(path) => write!(f, "file:{}", path.display()),
            AssignmentSource::ConfigMap => f.write_str("configmap"),
        }
    }
}

/// The ordinal of a StatefulSet pod from its name: the number after the last `-`
/// (`nyc-worker-2` → 2).
pub fn ordinal_from_pod_name(name: &str) -> Option<u32> {
    let (_, suffix) = name.trim().rsplit_once('-')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

/// The worker's ordinal from the pod name (env `POD_NAME`, else `HOSTNAME`, as given here).
pub fn pod_ordinal(pod_name: Option<&str>, hostname: Option<&str>) -> Result<u32, String> {
    let name = [pod_name, hostname]
        .into_iter()
        .flatten()
        .find(|n| !n.trim().is_empty())
        .ok_or("cannot tell the worker ordinal: POD_NAME and HOSTNAME are unset; pass --ordinal N")?;
    ordinal_from_pod_name(name).ok_or_else(|| {
        format!("cannot tell the worker ordinal from pod name {name:?}: it does not end in -N; pass --ordinal N")
    })
}

/// The pod's namespace: env `POD_NAMESPACE`, else the service-account namespace file's contents.
pub fn pod_namespace(env: Option<&str>, service_account_file: Option<&str>) -> Option<String> {
    [env, service_account_file].into_iter().flatten().map(str::trim).find(|n| !n.is_empty()).map(str::to_owned)
}

/// Why an assignment document was not used: the `reason` label of `taxi_assignment_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceProblem {
    /// The file or ConfigMap (or its key) does not exist.
    Missing,
    /// Not a valid assignment document.
    Malformed,
    /// An epoch older than the current one (epochs only grow), or the current epoch with other owners.
    StaleEpoch,
    /// The Kubernetes watch failed (it reconnects with back-off).
    Watch,
}

impl SourceProblem {
    /// The metric label (one of [`crate::metrics::ASSIGNMENT_ERROR_REASONS`]).
    pub fn as_str(self) -> &'static str {
        match self {
            SourceProblem::Missing => "missing",
            SourceProblem::Malformed => "malformed",
            SourceProblem::StaleEpoch => "stale_epoch",
            SourceProblem::Watch => "watch",
        }
    }
}

/// Failures starting an assignment source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No client for the Kubernetes API.
    #[error("failed to connect to the Kubernetes API to watch the assignment ConfigMap: {0}")]
    Kubernetes(String),
    /// The namespace to watch in is unknown.
    #[error(
        "failed to find the pod's namespace: set POD_NAMESPACE or mount the service account ({SERVICE_ACCOUNT_NAMESPACE})"
    )]
    Namespace,
    /// The source's task ended (it runs as long as the worker listens).
    #[error("failed to follow the shard assignment: its source stopped unexpectedly")]
    Ended,
}

/// Forwards assignments whose epoch grows and keeps the current one otherwise; logs and counts
/// each problem once, until the source changes again.
struct Feed {
    tx: watch::Sender<Option<Assignment>>,
    metrics: WorkerMetrics,
    origin: String,
    last_problem: Option<String>,
}

impl Feed {
    fn new(metrics: WorkerMetrics, origin: String) -> (Feed, watch::Receiver<Option<Assignment>>) {
        let (tx, rx) = watch::channel(None);
        (Feed { tx, metrics, origin, last_problem: None }, rx)
    }

    fn offer_json(&mut self, bytes: &[u8]) {
        match Assignment::from_json(bytes) {
            Ok(assignment) => self.offer(assignment),
            Err(e) => self.problem(SourceProblem::Malformed, e.to_string()),
        }
    }

    fn offer(&mut self, assignment: Assignment) {
        let current = self.tx.borrow().clone();
        match current {
            Some(current) if assignment.epoch < current.epoch => self.problem(
                SourceProblem::StaleEpoch,
                format!("epoch {} is older than the current epoch {}", assignment.epoch, current.epoch),
            ),
            Some(current) if assignment.epoch == current.epoch && assignment != current => self.problem(
                SourceProblem::StaleEpoch,
                format!("epoch {} again, with other owners (epochs must grow with every change)", assignment.epoch),
            ),
            Some(current) if assignment.epoch == current.epoch => self.last_problem = None,
            _ => {
                tracing::info!(
                    source = %self.origin,
                    epoch = assignment.epoch,
                    replicas = assignment.replicas,
                    shards = assignment.owners.len(),
                    "new shard assignment"
                );
                self.last_problem = None;
                self.tx.send_replace(Some(assignment));
            }
        }
    }

    fn problem(&mut self, problem: SourceProblem, detail: String) {
        let key = format!("{}: {detail}", problem.as_str());
        if self.last_problem.as_deref() == Some(key.as_str()) {
            return;
        }
        self.metrics.assignment_errors.with_label_values(&[problem.as_str()]).inc();
        tracing::warn!(source = %self.origin, reason = problem.as_str(), "assignment not used: {detail}; keeping the current one");
        self.last_problem = Some(key);
    }
}

/// Starts the assignment source; `None` for [`AssignmentSource::All`]. The channel holds `None`
/// until a first valid assignment is seen. Must be called inside a Tokio runtime.
pub fn subscribe(
    source: &AssignmentSource,
    pipeline: &str,
    metrics: &WorkerMetrics,
) -> Result<Option<watch::Receiver<Option<Assignment>>>, SourceError> {
    match source {
        AssignmentSource::All => Ok(None),
        AssignmentSource::File(path) => Ok(Some(watch_file(path.clone(), FILE_POLL_INTERVAL, metrics.clone()))),
        AssignmentSource::ConfigMap => {
            let config = kube::Config::incluster().map_err(|e| SourceError::Kubernetes(e.to_string()))?;
            let client = kube::Client::try_from(config).map_err(|e| SourceError::Kubernetes(e.to_string()))?;
            let namespace = pod_namespace(
                std::env::var("POD_NAMESPACE").ok().as_deref(),
                std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok().as_deref(),
            )
            .ok_or(SourceError::Namespace)?;
            Ok(Some(watch_config_map(client, &namespace, &config_map_name(pipeline), metrics.clone())))
        }
    }
}

/// Reads the assignment file every `poll` (only a changed file is parsed again). Stops when every
/// receiver is gone.
pub fn watch_file(path: PathBuf, poll: Duration, metrics: WorkerMetrics) -> watch::Receiver<Option<Assignment>> {
    let (mut feed, rx) = Feed::new(metrics, format!("file {}", path.display()));
    tokio::spawn(async move {
        let mut last: Option<Vec<u8>> = None;
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = feed.tx.closed() => return,
            }
            match tokio::fs::read(&path).await {
                Ok(bytes) if last.as_ref() == Some(&bytes) => {}
                Ok(bytes) => {
                    feed.offer_json(&bytes);
                    last = Some(bytes);
                }
                Err(e) => {
                    last = None;
                    let detail = match e.kind() {
                        std::io::ErrorKind::NotFound => "the file does not exist".to_owned(),
                        _ => format!("failed to read the file: {e}"),
                    };
                    feed.problem(SourceProblem::Missing, detail);
                }
            }
        }
    });
    rx
}

/// The assignment document of the operator's ConfigMap.
pub fn assignment_from_config_map(config_map: &ConfigMap) -> Result<Assignment, (SourceProblem, String)> {
    let document = config_map
        .data
        .as_ref()
        .and_then(|data| data.get(ASSIGNMENT_KEY))
        .ok_or_else(|| (SourceProblem::Missing, format!("the ConfigMap has no key {ASSIGNMENT_KEY}")))?;
    Assignment::from_json(document.as_bytes()).map_err(|e| (SourceProblem::Malformed, e.to_string()))
}

/// Watches ConfigMap `name` in `namespace` (a field selector on its name; kube's watcher
/// re-lists and reconnects with back-off). Stops when every receiver is gone.
pub fn watch_config_map(
    client: kube::Client,
    namespace: &str,
    name: &str,
    metrics: WorkerMetrics,
) -> watch::Receiver<Option<Assignment>> {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let (mut feed, rx) = Feed::new(metrics, format!("ConfigMap {namespace}/{name}"));
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = feed.tx.closed() => return,
            };
            match event {
                Some(Ok(watcher::Event::Apply(config_map) | watcher::Event::InitApply(config_map))) => {
                    match assignment_from_config_map(&config_map) {
                        Ok(assignment) => feed.offer(assignment),
                        Err((problem, detail)) => feed.problem(problem, detail),
                    }
                }
                Some(Ok(watcher::Event::Delete(_))) => {
                    feed.problem(SourceProblem::Missing, "the ConfigMap was deleted".to_owned());
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                Some(Err(e)) => feed.problem(SourceProblem::Watch, e.to_string()),
                None => return,
            }
        }
    });
    rx
}

/// What changes for a worker when an assignment takes effect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochPlan {
    /// The assignment's epoch.
    pub epoch: u64,
    /// Every shard the worker owns at this epoch (none when its ordinal ≥ replicas).
    pub owned: BTreeSet<String>,
    /// Running shards no longer owned: they are released.
    pub release: BTreeSet<String>,
    /// Owned shards that were not owned at the previous epoch: they start (parents first) and may
    /// have to wait for their previous owner's release.
    pub granted: BTreeSet<String>,
}

/// Diffs `assignment` against the shards `ordinal` owned before and the shards it runs.
pub fn plan_epoch<'a>(
    assignment: &Assignment,
    ordinal: u32,
    previously_owned: &BTreeSet<String>,
    running: impl IntoIterator<Item = &'a str>,
) -> EpochPlan {
    let owned: BTreeSet<String> = if ordinal < assignment.replicas {
        assignment.shards_of(ordinal).map(str::to_owned).collect()
    } else {
        BTreeSet::new()
    };
    let release = running.into_iter().filter(|s| !owned.contains(*s)).map(str::to_owned).collect();
    let granted = owned.difference(previously_owned).cloned().collect();
    EpochPlan { epoch: assignment.epoch, owned, release, granted }
}

/// How a shard changed hands: the `outcome` label of `taxi_shard_handoffs_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffOutcome {
    /// The old owner wrote its final checkpoint marked released.
    Released,
    /// The new owner claimed a released checkpoint.
    ClaimedAfterRelease,
    /// The new owner claimed after the takeover timeout, without a release.
    TakenOverAfterTimeout,
}

impl HandoffOutcome {
    /// The metric label (one of [`crate::metrics::HANDOFF_OUTCOMES`]).
    pub fn as_str(self) -> &'static str {
        match self {
            HandoffOutcome::Released => "released",
            HandoffOutcome::ClaimedAfterRelease => "claimed_after_release",
            HandoffOutcome::TakenOverAfterTimeout => "taken_over_after_timeout",
        }
    }
}

/// What a shard's stored checkpoint says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder<'a> {
    /// Read to its end: nothing to claim.
    pub finished: bool,
    /// Process that wrote it.
    pub owner_id: &'a str,
    /// Ordinal of the worker that wrote it, if it followed an assignment.
    pub owner_ordinal: Option<u32>,
    /// Assignment epoch of the owner that wrote it.
    pub owner_epoch: u64,
    /// Epoch at which it was released, if it was.
    pub released_epoch: Option<u64>,
}

/// The worker that wants to claim a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant<'a> {
    /// This process's owner id.
    pub id: &'a str,
    /// This worker's ordinal, if it follows an assignment.
    pub ordinal: Option<u32>,
    /// The worker's current assignment epoch (at least the one that granted it the shard).
    pub epoch: u64,
    /// Wait for the previous owner's release (assignments); `false` claims at once (`all`).
    pub wait_for_release: bool,
}

/// What a new owner does with a shard's checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimDecision {
    /// The shard was read to its end: do not start it.
    Finished,
    /// Claim it now (conditional write); `Some` when this is a handoff from another owner.
    Claim(Option<HandoffOutcome>),
    /// Another owner may still be reading it: read the checkpoint again later.
    Wait,
}

/// Whether `me` may claim a shard whose checkpoint is held by `holder` (`None`: no checkpoint),
/// having waited `waited` since the assignment granted it.
///
/// Claim at once when there is no checkpoint, when it is released at this epoch or earlier, or
/// when it was written by this process or by an earlier process of the same ordinal (a restarted
/// pod: a StatefulSet runs one pod per ordinal). Otherwise wait for the release until `timeout`,
/// then take over; a zombie previous owner is fenced at its next checkpoint. An owner of a newer
/// epoch than ours is never taken over: our assignment is stale, and the next one moves the shard
/// away from us.
pub fn decide_claim(
    holder: Option<&Holder<'_>>,
    me: &Claimant<'_>,
    waited: Duration,
    timeout: Duration,
) -> ClaimDecision {
    let Some(holder) = holder else { return ClaimDecision::Claim(None) };
    if holder.finished {
        return ClaimDecision::Finished;
    }
    if !me.wait_for_release {
        return ClaimDecision::Claim(None);
    }
    match holder.released_epoch {
        Some(released) if released <= me.epoch => {
            return ClaimDecision::Claim(Some(HandoffOutcome::ClaimedAfterRelease));
        }
        // Released for the owner of a newer epoch than ours: our assignment is stale; wait.
        Some(_) => {}
        None if holder.owner_id == me.id || (me.ordinal.is_some() && holder.owner_ordinal == me.ordinal) => {
            return ClaimDecision::Claim(None);
        }
        None => {}
    }
    if holder.owner_epoch > me.epoch {
        return ClaimDecision::Wait;
    }
    if waited >= timeout {
        ClaimDecision::Claim(Some(HandoffOutcome::TakenOverAfterTimeout))
    } else {
        ClaimDecision::Wait
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::sync::mpsc::UnboundedSender;

    use super::*;

    fn assignment(epoch: u64, replicas: u32, owners: &[(&str, u32)]) -> Assignment {
        Assignment {
            epoch,
            replicas,
            owners: owners.iter().map(|(s, o)| ((*s).to_owned(), *o)).collect::<BTreeMap<_, _>>(),
        }
    }

    fn set(shards: &[&str]) -> BTreeSet<String> {
        shards.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_assignment_sources() {
        assert_eq!("all".parse(), Ok(AssignmentSource::All));
        assert_eq!("configmap".parse(), Ok(AssignmentSource::ConfigMap));
        assert_eq!("file:/tmp/a.json".parse(), Ok(AssignmentSource::File(PathBuf::from("/tmp/a.json"))));
        for bad in ["file:", "File:/x", "some", ""] {
            assert!(bad.parse::<AssignmentSource>().is_err(), "{bad:?}");
        }
        assert_eq!(AssignmentSource::File(PathBuf::from("a.json")).to_string(), "file:a.json");
    }

    #[test]
    fn the_ordinal_is_the_numeric_suffix_of_the_pod_name() {
        assert_eq!(ordinal_from_pod_name("nyc-worker-2"), Some(2));
        assert_eq!(ordinal_from_pod_name("nyc-worker-17\n"), Some(17));
        assert_eq!(ordinal_from_pod_name("w-0"), Some(0));
        for bad in ["nyc-worker", "nyc-worker-", "nyc-worker-2a", "7", "w-+1", "w-99999999999"] {
            assert_eq!(ordinal_from_pod_name(bad), None, "{bad:?}");
        }
        assert_eq!(pod_ordinal(Some("nyc-worker-3"), Some("other-1")), Ok(3), "POD_NAME first");
        assert_eq!(pod_ordinal(Some(""), Some("nyc-worker-1")), Ok(1), "then HOSTNAME");
        assert!(pod_ordinal(None, Some("laptop")).expect_err("no suffix").contains("--ordinal"));
        assert!(pod_ordinal(None, None).is_err());
    }

    #[test]
    fn the_namespace_comes_from_the_environment_then_the_service_account() {
        assert_eq!(pod_namespace(Some("taxi"), Some("other")), Some("taxi".to_owned()));
        assert_eq!(pod_namespace(None, Some("taxi\n")), Some("taxi".to_owned()));
        assert_eq!(pod_namespace(Some(" "), None), None);
    }

    #[test]
    fn a_new_epoch_releases_what_moved_away_and_grants_what_moved_here() {
        let before = set(&["a", "b", "c"]);
        let next = assignment(5, 3, &[("a", 1), ("b", 2), ("c", 1), ("d", 1), ("e", 0)]);
        // b moved to 2; d is new here (e.g. a child); a and c stay and keep running.
        let plan = plan_epoch(&next, 1, &before, ["a", "b", "c"]);
        assert_eq!(plan.epoch, 5);
        assert_eq!(plan.owned, set(&["a", "c", "d"]));
        assert_eq!(plan.release, set(&["b"]));
        assert_eq!(plan.granted, set(&["d"]));
    }

    #[test]
    fn an_ordinal_beyond_the_replicas_owns_nothing_and_releases_everything() {
        let next = assignment(9, 2, &[("a", 0), ("b", 1)]);
        let plan = plan_epoch(&next, 2, &set(&["c"]), ["c", "x"]);
        assert!(plan.owned.is_empty() && plan.granted.is_empty());
        assert_eq!(plan.release, set(&["c", "x"]));
    }

    #[test]
    fn a_shard_given_away_and_back_is_granted_again() {
        let first = plan_epoch(&assignment(1, 2, &[("a", 0)]), 0, &BTreeSet::new(), []);
        let away = plan_epoch(&assignment(2, 2, &[("a", 1)]), 0, &first.owned, ["a"]);
        assert_eq!(away.release, set(&["a"]));
        let back = plan_epoch(&assignment(3, 2, &[("a", 0)]), 0, &away.owned, []);
        assert_eq!(back.granted, set(&["a"]));
    }

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn me(epoch: u64) -> Claimant<'static> {
        Claimant { id: "w1-pid-1", ordinal: Some(1), epoch, wait_for_release: true }
    }

    fn held_by(owner_id: &str, owner_ordinal: Option<u32>, released_epoch: Option<u64>) -> Holder<'_> {
        Holder { finished: false, owner_id, owner_ordinal, owner_epoch: 3, released_epoch }
    }

    #[test]
    fn a_new_owner_claims_at_once_what_nobody_holds() {
        let fresh = Duration::ZERO;
        assert_eq!(decide_claim(None, &me(4), fresh, TIMEOUT), ClaimDecision::Claim(None));
        let finished = Holder { finished: true, ..held_by("w0", Some(0), None) };
        assert_eq!(decide_claim(Some(&finished), &me(4), fresh, TIMEOUT), ClaimDecision::Finished);
        let released = held_by("w0", Some(0), Some(4));
        assert_eq!(
            decide_claim(Some(&released), &me(4), fresh, TIMEOUT),
            ClaimDecision::Claim(Some(HandoffOutcome::ClaimedAfterRelease))
        );
        let mine = held_by("w1-pid-1", Some(1), None);
        assert_eq!(decide_claim(Some(&mine), &me(4), fresh, TIMEOUT), ClaimDecision::Claim(None));
        let my_previous_pod = held_by("w1-pid-0", Some(1), None);
        assert_eq!(decide_claim(Some(&my_previous_pod), &me(4), fresh, TIMEOUT), ClaimDecision::Claim(None));
    }

    #[test]
    fn a_new_owner_waits_for_the_release_then_takes_over_after_the_timeout() {
        let reading = held_by("w0", Some(0), None);
        assert_eq!(decide_claim(Some(&reading), &me(4), Duration::from_secs(29), TIMEOUT), ClaimDecision::Wait);
        assert_eq!(
            decide_claim(Some(&reading), &me(4), TIMEOUT, TIMEOUT),
            ClaimDecision::Claim(Some(HandoffOutcome::TakenOverAfterTimeout))
        );
        // Released for the owner of a newer epoch: this worker's assignment is stale.
        let released_later = held_by("w0", Some(0), Some(5));
        assert_eq!(decide_claim(Some(&released_later), &me(4), Duration::ZERO, TIMEOUT), ClaimDecision::Wait);
    }

    #[test]
    fn an_owner_of_a_newer_epoch_is_never_taken_over() {
        // It fenced us; our assignment is stale until the next one arrives and moves the shard away.
        let newer = Holder { owner_epoch: 5, ..held_by("w0", Some(0), None) };
        assert_eq!(decide_claim(Some(&newer), &me(4), TIMEOUT * 10, TIMEOUT), ClaimDecision::Wait);
        assert_eq!(
            decide_claim(Some(&newer), &me(5), TIMEOUT, TIMEOUT),
            ClaimDecision::Claim(Some(HandoffOutcome::TakenOverAfterTimeout))
        );
    }

    #[test]
    fn with_every_shard_owned_claims_never_wait() {
        let all = Claimant { id: "w", ordinal: None, epoch: 0, wait_for_release: false };
        let reading = held_by("other", None, None);
        assert_eq!(decide_claim(Some(&reading), &all, Duration::ZERO, TIMEOUT), ClaimDecision::Claim(None));
        // No ordinal: another worker without one is not "the same pod".
        let waiting = Claimant { wait_for_release: true, ..all };
        assert_eq!(decide_claim(Some(&reading), &waiting, Duration::ZERO, TIMEOUT), ClaimDecision::Wait);
    }

    async fn next_epoch(rx: &mut watch::Receiver<Option<Assignment>>) -> u64 {
        tokio::time::timeout(Duration::from_secs(5), rx.changed()).await.expect("a new assignment").expect("open");
        rx.borrow_and_update().as_ref().map_or(0, |a| a.epoch)
    }

    fn errors(metrics: &WorkerMetrics, reason: &str) -> u64 {
        metrics.assignment_errors.with_label_values(&[reason]).get()
    }

    /// Writes like an operator should: a temporary file renamed over the document.
    fn write_atomically(path: &std::path::Path, contents: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, contents).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

    #[tokio::test]
    async fn the_file_source_skips_missing_and_malformed_files_and_older_epochs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("assignment.json");
        let metrics = WorkerMetrics::new();
        let poll = Duration::from_millis(10);
        let mut rx = watch_file(path.clone(), poll, metrics.clone());
        tokio::time::sleep(poll * 5).await;
        assert!(rx.borrow().is_none(), "no assignment before the file exists");
        assert_eq!(errors(&metrics, "missing"), 1, "a missing file is counted once, not at every poll");

        write_atomically(&path, &assignment(2, 2, &[("a", 0), ("b", 1)]).to_json());
        assert_eq!(next_epoch(&mut rx).await, 2);

        write_atomically(&path, r#"{"epoch":3,"replicas":2,"owners":{"a":"zero"}}"#);
        tokio::time::sleep(poll * 5).await;
        assert_eq!(errors(&metrics, "malformed"), 1);
        write_atomically(&path, &assignment(1, 1, &[("a", 0), ("b", 0)]).to_json());
        tokio::time::sleep(poll * 5).await;
        assert_eq!(errors(&metrics, "stale_epoch"), 1);
        std::fs::remove_file(&path).expect("remove");
        tokio::time::sleep(poll * 5).await;
        assert_eq!(errors(&metrics, "missing"), 2);
        assert!(!rx.has_changed().expect("open"), "the assignment of epoch 2 is kept through all of that");
        assert_eq!(rx.borrow().as_ref().map(|a| a.owner_of("b")), Some(Some(1)));

        write_atomically(&path, &assignment(3, 3, &[("a", 0), ("b", 2)]).to_json());
        assert_eq!(next_epoch(&mut rx).await, 3);
    }

    fn config_map_json(name: &str, version: u32, document: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": name, "namespace": "taxi", "resourceVersion": version.to_string() },
            "data": { ASSIGNMENT_KEY: document },
        })
    }

    /// The request lines a fake API server received.
    type Requests = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

    /// A Kubernetes API server that knows one ConfigMap: it answers the watcher's list with it and
    /// its watch with the events sent into the returned channel. Returns its URL and the requests.
    async fn fake_api_server(initial: serde_json::Value) -> (String, UnboundedSender<serde_json::Value>, Requests) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (events, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
        let requests = Requests::default();
        let seen = requests.clone();
        tokio::spawn(async move {
            let mut rx = Some(rx);
            loop {
                let Ok((socket, _)) = listener.accept().await else { return };
                let (read, mut write) = socket.into_split();
                let mut read = BufReader::new(read);
                // One connection serves requests in turn (the client keeps it alive).
                loop {
                    let mut request_line = String::new();
                    if read.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        break;
                    }
                    let mut header = String::new();
                    while read.read_line(&mut header).await.unwrap_or(0) > 2 {
                        header.clear();
                    }
                    seen.lock().expect("requests").push(request_line.trim().to_owned());
                    if request_line.contains("watch=true") {
                        let head =
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                        let _ = write.write_all(head.as_bytes()).await;
                        let Some(mut events) = rx.take() else { return };
                        while let Some(event) = events.recv().await {
                            let line = format!("{event}\n");
                            let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                            let _ = write.write_all(chunk.as_bytes()).await;
                        }
                        return;
                    }
                    let list = serde_json::json!({
                        "apiVersion": "v1",
                        "kind": "ConfigMapList",
                        "metadata": { "resourceVersion": "1" },
                        "items": [initial.clone()],
                    })
                    .to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{list}",
                        list.len()
                    );
                    let _ = write.write_all(response.as_bytes()).await;
                }
            }
        });
        (url, events, requests)
    }

    #[tokio::test]
    async fn the_config_map_source_follows_the_watch_and_keeps_the_last_good_document() {
        let name = config_map_name("nyc");
        let first = assignment(1, 2, &[("a", 0), ("b", 1)]);
        let (url, events, requests) = fake_api_server(config_map_json(&name, 1, &first.to_json())).await;
        let client = kube::Client::try_from(kube::Config::new(url.parse().expect("url"))).expect("client");
        let metrics = WorkerMetrics::new();
        let mut rx = watch_config_map(client, "taxi", &name, metrics.clone());
        assert_eq!(next_epoch(&mut rx).await, 1, "from the initial list");
        let list = requests.lock().expect("requests")[0].clone();
        assert!(list.contains("/api/v1/namespaces/taxi/configmaps?"), "{list}");
        assert!(list.contains("fieldSelector=metadata.name%3Dnyc-assignment"), "{list}");

        let modified = |version, document: &str| serde_json::json!({ "type": "MODIFIED", "object": config_map_json(&name, version, document) });
        events.send(modified(2, "{not json")).expect("send");
        events.send(modified(3, &assignment(0, 1, &[("a", 0), ("b", 0)]).to_json())).expect("send");
        events.send(modified(4, &assignment(2, 3, &[("a", 0), ("b", 2)]).to_json())).expect("send");
        assert_eq!(next_epoch(&mut rx).await, 2, "the malformed and the older document were skipped");
        assert_eq!(rx.borrow().as_ref().and_then(|a| a.owner_of("b")), Some(2));
        assert_eq!((errors(&metrics, "malformed"), errors(&metrics, "stale_epoch")), (1, 1));
    }

    #[test]
    fn a_config_map_holds_the_document_under_its_key() {
        let mut config_map = ConfigMap::default();
        assert_eq!(assignment_from_config_map(&config_map).map_err(|e| e.0), Err(SourceProblem::Missing));
        let doc = assignment(4, 1, &[("a", 0)]);
        config_map.data = Some([(ASSIGNMENT_KEY.to_owned(), doc.to_json())].into());
        assert_eq!(assignment_from_config_map(&config_map).map_err(|e| e.0), Ok(doc));
        config_map.data = Some([(ASSIGNMENT_KEY.to_owned(), "{".to_owned())].into());
        assert_eq!(assignment_from_config_map(&config_map).map_err(|e| e.0), Err(SourceProblem::Malformed));
    }
}

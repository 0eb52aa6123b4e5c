//! The election against the API server: [`LeaderElector`] reads the Lease, creates, renews, takes
//! over or releases it with `resourceVersion`-guarded writes, and runs the election loop that
//! publishes whether this replica leads.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use taxi_io::retry::{BackoffPolicy, Jitter};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Decision, FIELD_MANAGER, LeaderError, LeaseConfig, decide};
use crate::error_chain::ErrorChain;
use crate::metrics::OperatorMetrics;

/// First delay after a failed attempt; it doubles per failure up to the renew interval.
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// The current time as a Kubernetes `MicroTime` value.
fn now() -> Timestamp {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or_default();
    Timestamp::from_microsecond(i64::try_from(micros).unwrap_or(i64::MAX)).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Acquires, renews and releases the operator's Lease.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector").field("config", &self.config).finish_non_exhaustive()
    }
}

impl LeaderElector {
    /// An elector for the Lease `config.namespace/config.name`; fails on settings that cannot work
    /// (empty names, a renew interval not shorter than the lease duration).
    pub fn new(client: kube::Client, config: LeaseConfig) -> Result<LeaderElector, LeaderError> {
        config.validate()?;
        Ok(LeaderElector { api: Api::namespaced(client, &config.namespace), config })
    }

    /// The settings this elector runs with.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    fn post_params() -> PostParams {
        PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() }
    }

    /// One election step: reads the Lease and creates, renews or takes it over as [`decide`] says.
    /// `Ok(true)` means we hold the Lease for another term; `Ok(false)` means another replica holds
    /// it or won a race for it (`409 Conflict`, `AlreadyExists`).
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaderError> {
        let current = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|source| LeaderError::Get { lease: self.lease_ref(), source })?;
        let now = now();
        let micro = MicroTime(now);
        let duration = self.config.duration_seconds();
        match (decide(current.as_ref(), &self.config.identity, now, self.config.clock_skew), current) {
            (Decision::Wait { holder, remaining }, _) => {
                tracing::trace!(%holder, ?remaining, lease = %self.lease_ref(), "Lease held by another replica");
                Ok(false)
            }
            (Decision::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        acquire_time: Some(micro.clone()),
                        renew_time: Some(micro),
                        lease_duration_seconds: Some(duration),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                match self.api.create(&Self::post_params(), &lease).await {
                    Ok(_) => {
                        let (identity, lease) = (&self.config.identity, self.lease_ref());
                        tracing::info!(%identity, %lease, "created the Lease: leading");
                        Ok(true)
                    }
                    Err(kube::Error::Api(status)) if status.is_already_exists() || status.is_conflict() => Ok(false),
                    Err(source) => Err(LeaderError::Create { lease: self.lease_ref(), source }),
                }
            }
            (Decision::Renew, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.renew_time = Some(micro);
                spec.lease_duration_seconds = Some(duration);
                self.replace(&lease, "renew").await
            }
            (Decision::TakeOver, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                let previous = spec.holder_identity.replace(self.config.identity.clone());
                spec.acquire_time = Some(micro.clone());
                spec.renew_time = Some(micro);
                spec.lease_duration_seconds = Some(duration);
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
                let taken = self.replace(&lease, "take over").await?;
                if taken {
                    tracing::info!(
                        identity = %self.config.identity,
                        previous = previous.as_deref().unwrap_or(""),
                        lease = %self.lease_ref(),
                        "took over the Lease: leading"
                    );
                }
                Ok(taken)
            }
        }
    }

    /// `PUT` of a Lease read just before (so it carries that `resourceVersion`); a conflict means
    /// another writer got there first.
    async fn replace(&self, lease: &Lease, action: &'static str) -> Result<bool, LeaderError> {
        match self.api.replace(&self.config.name, &Self::post_params(), lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {
                tracing::debug!(action, lease = %self.lease_ref(), "lost the race for the Lease");
                Ok(false)
            }
            Err(source) => Err(LeaderError::Replace { action, lease: self.lease_ref(), source }),
        }
    }

    /// Releases the Lease if we hold it, by clearing `holderIdentity`, so a successor need not wait
    /// for it to expire. `Ok(true)` when released, `Ok(false)` when it was not ours (or changed
    /// under us).
    pub async fn step_down(&self) -> Result<bool, LeaderError> {
        let current = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|source| LeaderError::Get { lease: self.lease_ref(), source })?;
        let Some(mut lease) = current else { return Ok(false) };
        let ours =
            lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.config.identity.as_str());
        if !ours {
            return Ok(false);
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
        }
        let released = self.replace(&lease, "release").await?;
        if released {
            tracing::info!(identity = %self.config.identity, lease = %self.lease_ref(), "released the Lease");
        }
        Ok(released)
    }

    /// Runs the election until `shutdown` turns `true` (or its sender is dropped): acquires or renews
    /// every renew interval, publishes on `leading` whether this replica leads (and on the metrics'
    /// leader gauge), retries failures with a capped exponential backoff, counts them in
    /// `taxi_operator_lease_errors_total`, and publishes `false` once renewals have failed for the
    /// whole lease duration. On shutdown it publishes `false`, then releases the Lease if it held
    /// it, so stop the controller before signalling shutdown.
    pub async fn run(
        &self,
        mut shutdown: watch::Receiver<bool>,
        leading: watch::Sender<bool>,
        metrics: &OperatorMetrics,
    ) {
        let publish = |value: bool| {
            metrics.set_leader(value);
            leading.send_if_modified(|current| std::mem::replace(current, value) != value);
        };
        publish(false);
        // Start of the last successful acquisition or renewal, while we believe we hold the Lease.
        let mut held_since: Option<Instant> = None;
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let started = Instant::now();
            let term_end = held_since.map(|t| t + self.config.lease_duration);
            if term_end.is_some_and(|end| started >= end) {
                tracing::warn!(lease = %self.lease_ref(), "could not renew the Lease within its duration: not leading");
                held_since = None;
                publish(false);
            }
            // An attempt may take at most one renew interval, and never beyond the end of our term.
            let limit = match held_since.and(term_end) {
                Some(end) => self.config.renew_interval.min(end.saturating_duration_since(started)),
                None => self.config.renew_interval,
            };
            let outcome = match tokio::time::timeout(limit, self.try_acquire_or_renew()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(LeaderError::Timeout { lease: self.lease_ref(), after: limit }),
            };
            let delay = match outcome {
                Ok(true) => {
                    failures = 0;
                    held_since = Some(started);
                    publish(true);
                    self.config.renew_interval
                }
                Ok(false) => {
                    failures = 0;
                    if held_since.take().is_some() {
                        tracing::warn!(lease = %self.lease_ref(), "lost the Lease to another replica: not leading");
                    }
                    publish(false);
                    jittered(self.config.renew_interval)
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    metrics.lease_error(error.category());
                    tracing::warn!(error = %ErrorChain(&error), failures, "leader election attempt failed");
                    BackoffPolicy::new(FIRST_RETRY, self.config.renew_interval, Jitter::Equal).delay(failures)
                }
            };
            // While leading, wake up at the end of the term at the latest, to stop leading in time.
            let delay = match held_since.map(|t| t + self.config.lease_duration) {
                Some(end) => delay.min(end.saturating_duration_since(Instant::now())),
                None => delay,
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                changed = shutdown.changed() => if changed.is_err() { break },
            }
        }
        publish(false);
        if held_since.is_some() {
            match tokio::time::timeout(self.config.renew_interval, self.step_down()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    metrics.lease_error(error.category());
                    tracing::warn!(error = %ErrorChain(&error), "could not release the Lease; it expires by itself");
                }
                Err(_) => tracing::warn!("releasing the Lease timed out; it expires by itself"),
            }
        }
    }
}

/// `delay` plus up to a quarter more, so replicas do not poll in lockstep.
fn jittered(delay: Duration) -> Duration {
    delay + delay.mul_f64(fastrand::f64() / 4.0)
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock::{self, Handle};

    use super::super::test_support::{ME, NS, OLD, OTHER, lease_json};
    use super::super::{DEFAULT_LEASE_DURATION, DEFAULT_RENEW_INTERVAL};
    use super::*;

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/taxi-system/leases";
    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/taxi-system/leases/taxi-operator-leader";

    fn not_found() -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
               "message": "leases.coordination.k8s.io \"taxi-operator-leader\" not found"})
    }

    fn conflict() -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
               "message": "the object has been modified; please apply your changes to the latest version"})
    }

    fn recent() -> String {
        now().to_string()
    }

    // --- against a mocked API server ---

    /// The API server side of a mocked client: each call states the request it expects next.
    struct ApiServer(Handle<Request<Body>, Response<Body>>);

    impl ApiServer {
        /// Waits (up to 10 s) for the next request, checks its method and path, answers `status`
        /// with `body` and returns the request's JSON body (`Null` when it had none).
        async fn expect(&mut self, method: Method, path: &str, status: StatusCode, body: Value) -> Value {
            let next = tokio::time::timeout(Duration::from_secs(10), self.0.next_request()).await;
            let Ok(Some((request, respond))) = next else {
                panic!("expected {method} {path}, but no request came");
            };
            let (parts, request_body) = request.into_parts();
            assert_eq!(
                (&parts.method, parts.uri.path()),
                (&method, path),
                "unexpected request {} {}",
                parts.method,
                parts.uri
            );
            if method != Method::GET {
                assert!(
                    parts.uri.query().unwrap_or_default().contains("fieldManager=taxi-operator"),
                    "write without field manager: {}",
                    parts.uri
                );
            }
            let bytes = request_body.collect_bytes().await.expect("request body");
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
                .expect("response");
            respond.send_response(response);
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON request body") }
        }

        /// Asserts that no request comes within 200 ms.
        async fn expect_nothing(&mut self) {
            if let Ok(Some((request, _))) =
                tokio::time::timeout(Duration::from_millis(200), self.0.next_request()).await
            {
                panic!("expected no request, got {} {}", request.method(), request.uri());
            }
        }
    }

    fn elector() -> (LeaderElector, ApiServer) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let elector = LeaderElector::new(client, LeaseConfig::new(NS, ME)).expect("valid settings");
        (elector, ApiServer(handle))
    }

    fn spec_field<'a>(body: &'a Value, field: &str) -> &'a Value {
        &body["spec"][field]
    }

    #[tokio::test]
    async fn absent_lease_is_created_with_us_as_holder() {
        let (elector, mut server) = elector();
        let api = async {
            server.expect(Method::GET, LEASE, StatusCode::NOT_FOUND, not_found()).await;
            let created = lease_json(Some(ME), &recent(), 0);
            server.expect(Method::POST, LEASES, StatusCode::CREATED, created).await
        };
        let (leading, sent) = tokio::join!(elector.try_acquire_or_renew(), api);
        assert!(leading.expect("no error"));
        assert_eq!(sent["metadata"]["name"], "taxi-operator-leader");
        assert_eq!(spec_field(&sent, "holderIdentity"), ME);
        assert_eq!(spec_field(&sent, "leaseDurationSeconds"), 15);
        assert_eq!(spec_field(&sent, "leaseTransitions"), 0);
        assert_eq!(spec_field(&sent, "acquireTime"), spec_field(&sent, "renewTime"));
        let renewed: Timestamp = spec_field(&sent, "renewTime").as_str().expect("renewTime").parse().expect("time");
        assert!(now().duration_since(renewed).as_secs() < 5);
    }

    #[tokio::test]
    async fn own_lease_is_renewed_with_the_resource_version_read() {
        let (elector, mut server) = elector();
        let api = async {
            server.expect(Method::GET, LEASE, StatusCode::OK, lease_json(Some(ME), OLD, 3)).await;
            server.expect(Method::PUT, LEASE, StatusCode::OK, lease_json(Some(ME), &recent(), 3)).await
        };
        let (leading, sent) = tokio::join!(elector.try_acquire_or_renew(), api);
        assert!(leading.expect("no error"));
        assert_eq!(sent["metadata"]["resourceVersion"], "4711");
        assert_eq!(spec_field(&sent, "holderIdentity"), ME);
        assert_eq!(spec_field(&sent, "leaseTransitions"), 3);
        assert_eq!(spec_field(&sent, "acquireTime"), OLD);
        assert_ne!(spec_field(&sent, "renewTime"), OLD);
    }

    #[tokio::test]
    async fn expired_foreign_lease_is_taken_over_as_a_new_term() {
        let (elector, mut server) = elector();
        let api = async {
            let expired = lease_json(Some(OTHER), OLD, 3);
            server.expect(Method::GET, LEASE, StatusCode::OK, expired).await;
            server.expect(Method::PUT, LEASE, StatusCode::OK, lease_json(Some(ME), &recent(), 4)).await
        };
        let (leading, sent) = tokio::join!(elector.try_acquire_or_renew(), api);
        assert!(leading.expect("no error"));
        assert_eq!(sent["metadata"]["resourceVersion"], "4711");
        assert_eq!(spec_field(&sent, "holderIdentity"), ME);
        assert_eq!(spec_field(&sent, "leaseTransitions"), 4);
        assert_eq!(spec_field(&sent, "acquireTime"), spec_field(&sent, "renewTime"));
        assert_ne!(spec_field(&sent, "acquireTime"), OLD);
    }

    #[tokio::test]
    async fn valid_foreign_lease_is_left_alone() {
        let (elector, mut server) = elector();
        let api = async {
            server.expect(Method::GET, LEASE, StatusCode::OK, lease_json(Some(OTHER), &recent(), 3)).await;
        };
        let (leading, ()) = tokio::join!(elector.try_acquire_or_renew(), api);
        assert!(!leading.expect("no error"));
        server.expect_nothing().await;
    }

    #[tokio::test]
    async fn conflict_on_renewal_means_not_leading() {
        let (elector, mut server) = elector();
        let api = async {
            server.expect(Method::GET, LEASE, StatusCode::OK, lease_json(Some(ME), &recent(), 3)).await;
            server.expect(Method::PUT, LEASE, StatusCode::CONFLICT, conflict()).await;
        };
        let (leading, ()) = tokio::join!(elector.try_acquire_or_renew(), api);
        assert!(!leading.expect("a conflict is not an error"));
    }

    #[tokio::test]
    async fn racing_creation_means_not_leading() {
        let (elector, mut server) = elector();
        let exists = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists",
                            "code": 409, "message": "already exists"});
        let api = async {
            server.expect(Method::GET, LEASE, StatusCode::NOT_FOUND, not_found()).await;
            server.expect(Method::POST, LEASES, StatusCode::CONFLICT, exists).await;
        };
        let (leading, ()) = tokio::join!(elector.try_acquire_or_renew(), api);
        assert!(!leading.expect("a lost race is not an error"));
    }

    #[tokio::test]
    async fn forbidden_read_is_an_error_with_category() {
        let (elector, mut server) = elector();
        let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                               "code": 403, "message": "leases.coordination.k8s.io is forbidden"});
        let api = async {
            server.expect(Method::GET, LEASE, StatusCode::FORBIDDEN, forbidden).await;
        };
        let (result, ()) = tokio::join!(elector.try_acquire_or_renew(), api);
        let error = result.expect_err("403 is an error");
        assert_eq!(error.category(), "forbidden");
        assert_eq!(error.to_string(), "failed to read Lease taxi-system/taxi-operator-leader");
    }

    #[tokio::test]
    async fn step_down_clears_the_holder() {
        let (elector, mut server) = elector();
        let api = async {
            server.expect(Method::GET, LEASE, StatusCode::OK, lease_json(Some(ME), &recent(), 3)).await;
            server.expect(Method::PUT, LEASE, StatusCode::OK, lease_json(None, &recent(), 3)).await
        };
        let (released, sent) = tokio::join!(elector.step_down(), api);
        assert!(released.expect("no error"));
        assert_eq!(sent["metadata"]["resourceVersion"], "4711");
        assert!(spec_field(&sent, "holderIdentity").is_null(), "{sent}");
        assert_eq!(spec_field(&sent, "leaseTransitions"), 3);
    }

    #[tokio::test]
    async fn step_down_leaves_a_foreign_lease_alone() {
        let (elector, mut server) = elector();
        let api = async {
            server.expect(Method::GET, LEASE, StatusCode::OK, lease_json(Some(OTHER), &recent(), 3)).await;
        };
        let (released, ()) = tokio::join!(elector.step_down(), api);
        assert!(!released.expect("no error"));
        server.expect_nothing().await;
    }

    #[tokio::test(start_paused = true)]
    async fn run_publishes_leadership_stops_leading_when_renewals_fail_and_steps_down() {
        let (elector, mut server) = elector();
        let metrics = OperatorMetrics::new().expect("metrics");
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (leading_tx, mut leading_rx) = watch::channel(false);
        let run = tokio::spawn({
            let metrics = metrics.clone();
            async move { elector.run(shutdown_rx, leading_tx, &metrics).await }
        });
        server.expect(Method::GET, LEASE, StatusCode::NOT_FOUND, not_found()).await;
        server.expect(Method::POST, LEASES, StatusCode::CREATED, lease_json(Some(ME), &recent(), 0)).await;
        leading_rx.wait_for(|l| *l).await.expect("leading");
        let became_leader = Instant::now();
        assert!(metrics.render().contains("taxi_operator_leader 1"));

        // The API server fails from now on: leadership ends once the lease duration has passed.
        let unavailable = json!({"kind": "Status", "status": "Failure", "reason": "InternalError", "code": 500});
        loop {
            tokio::select! {
                lost = leading_rx.wait_for(|l| !*l) => { lost.expect("channel open"); break; }
                _ = server.expect(Method::GET, LEASE, StatusCode::INTERNAL_SERVER_ERROR, unavailable.clone()) => {
                    assert!(became_leader.elapsed() <= DEFAULT_LEASE_DURATION * 2, "still leading without renewals");
                }
            }
        }
        let led_for = became_leader.elapsed();
        assert!(led_for <= DEFAULT_LEASE_DURATION, "kept leading for {led_for:?}");
        assert!(led_for >= DEFAULT_LEASE_DURATION - DEFAULT_RENEW_INTERVAL, "stopped after {led_for:?}");
        assert!(metrics.render().contains("taxi_operator_leader 0"));
        assert!(metrics.render().contains(r#"taxi_operator_lease_errors_total{category="api"}"#));

        // The API server recovers: the Lease is still ours, so we renew and lead again.
        server.expect(Method::GET, LEASE, StatusCode::OK, lease_json(Some(ME), OLD, 0)).await;
        server.expect(Method::PUT, LEASE, StatusCode::OK, lease_json(Some(ME), &recent(), 0)).await;
        leading_rx.wait_for(|l| *l).await.expect("leading again");

        // Shutdown: leadership is withdrawn first, then the Lease released.
        shutdown_tx.send(true).expect("run listens");
        leading_rx.wait_for(|l| !*l).await.expect("channel open");
        server.expect(Method::GET, LEASE, StatusCode::OK, lease_json(Some(ME), &recent(), 0)).await;
        let sent = server.expect(Method::PUT, LEASE, StatusCode::OK, lease_json(None, &recent(), 0)).await;
        assert!(spec_field(&sent, "holderIdentity").is_null());
        run.await.expect("run ends");
    }

    #[tokio::test(start_paused = true)]
    async fn run_stands_by_while_another_replica_leads_and_exits_without_writing() {
        let (elector, mut server) = elector();
        let metrics = OperatorMetrics::new().expect("metrics");
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (leading_tx, leading_rx) = watch::channel(true);
        let run = tokio::spawn({
            let metrics = metrics.clone();
            async move { elector.run(shutdown_rx, leading_tx, &metrics).await }
        });
        for _ in 0..3 {
            server.expect(Method::GET, LEASE, StatusCode::OK, lease_json(Some(OTHER), &recent(), 1)).await;
            assert!(!*leading_rx.borrow());
        }
        drop(shutdown_tx);
        run.await.expect("run ends when its shutdown sender is dropped");
        server.expect_nothing().await;
    }
}

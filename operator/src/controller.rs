//! `taxi-operator run`: the controller wired to the cluster — watches, leader election, HTTP
//! endpoints and shutdown. The decisions live in [`reconcile`](crate::reconcile).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client};
use taxi_io::kinesis::api::KinesisEndpoint;
use tokio::sync::watch;

use crate::crd::TaxiPipeline;
use crate::leader::{LeaderElector, LeaseConfig, holder_identity, run_while_leading};
use crate::metrics::{OperatorMetrics, OperatorState};
use crate::observe::{HttpProbe, SdkStreams};
use crate::policy::WorkerPolicy;
use crate::reconcile::{Context, error_policy, reconcile};
use crate::resources::network_policy::IngressPeers;
use crate::validate::{Defaults, SecretKey};

/// Settings of `taxi-operator run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Namespaces whose TaxiPipelines are reconciled; empty: every namespace.
    pub namespaces: Vec<String>,
    /// Kinesis region and endpoint for pipelines that name none.
    pub kinesis: KinesisEndpoint,
    /// Address of `/healthz`, `/readyz`, `/metrics` and `/status`.
    pub http_addr: SocketAddr,
    /// Worker image for pipelines that name none.
    pub worker_image: String,
    /// Secrets appended to every worker pod's `imagePullSecrets`.
    pub worker_image_pull_secrets: Vec<String>,
    /// CA bundle of `https://` sinks whose spec names none.
    pub default_sink_ca_secret: Option<SecretKey>,
    /// Whether pipelines that do not say get a NetworkPolicy.
    pub worker_network_policy: bool,
    /// Labels of the operator's pods, which the workers' NetworkPolicies admit.
    pub operator_pod_labels: BTreeMap<String, String>,
    /// Labels of the namespaces whose pods may scrape the workers.
    pub metrics_namespace_labels: BTreeMap<String, String>,
    /// Labels of the pods that may scrape the workers.
    pub metrics_pod_labels: BTreeMap<String, String>,
    /// What the platform team lets pipelines ask for (worker images, ServiceAccounts).
    pub policy: WorkerPolicy,
    /// Elect a leader through a Lease (required with more than one operator replica).
    pub leader_election: bool,
    /// The operator's own namespace: the Lease's, and where its pods run.
    pub lease_namespace: String,
    /// This pod's name, for the Lease holder identity and Events.
    pub pod_name: String,
}

impl RunConfig {
    /// What every pipeline gets from these settings.
    pub fn defaults(&self) -> Defaults {
        Defaults {
            worker_image: self.worker_image.clone(),
            image_pull_secrets: self.worker_image_pull_secrets.clone(),
            sink_ca_secret: self.default_sink_ca_secret.clone(),
            network_policy: self.worker_network_policy,
            ingress: IngressPeers {
                operator_namespace: self.lease_namespace.clone(),
                operator_pod_labels: self.operator_pod_labels.clone(),
                metrics_namespace_labels: self.metrics_namespace_labels.clone(),
                metrics_pod_labels: self.metrics_pod_labels.clone(),
            },
        }
    }
}

/// Why the operator could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes configuration (in-cluster or kubeconfig).
    #[error("failed to configure the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The metrics registry rejected a metric.
    #[error("failed to register the operator metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    /// The HTTP address could not be bound.
    #[error("failed to listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The leader elector could not be built.
    #[error("failed to set up leader election: {0}")]
    Leader(#[source] crate::leader::LeaderError),
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(config: RunConfig) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let (leading_tx, leading_rx) = watch::channel(!config.leader_election);
    let metrics = OperatorMetrics::new().map_err(RunError::Metrics)?;
    let state = Arc::new(OperatorState::new(metrics, leading_rx.clone()));
    let (addr, serve) = taxi_io::http::bind(config.http_addr, state.clone())
        .await
        .map_err(|source| RunError::Listen { addr: config.http_addr, source })?;
    eprintln!("taxi-operator: serving http://{addr}/metrics, /healthz, /readyz and /status");
    let server = tokio::spawn(serve);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Without election this replica always leads: the sender is kept so `leading` stays `true`.
    let (elector, _always_leading) = if config.leader_election {
        let lease = LeaseConfig::new(config.lease_namespace.clone(), holder_identity(&config.pod_name));
        let elector = LeaderElector::new(client.clone(), lease).map_err(RunError::Leader)?;
        let (state, shutdown) = (state.clone(), shutdown_rx.clone());
        (Some(tokio::spawn(async move { elector.run(shutdown, leading_tx, &state.metrics).await })), None)
    } else {
        state.metrics.set_leader(true);
        (None, Some(leading_tx))
    };

    let controllers = run_while_leading(leading_rx, || run_controllers(client.clone(), &config, state.clone()));
    tokio::select! {
        () = controllers => {}
        () = taxi_io::signals::terminated() => tracing::info!("shutting down"),
    }
    // Stop reconciling before the Lease is released, so no successor overlaps with us.
    let _ = shutdown_tx.send(true);
    if let Some(elector) = elector {
        let _ = elector.await;
    }
    server.abort();
    Ok(())
}

/// One controller per watched namespace (or one over every namespace), until they stop.
async fn run_controllers(client: Client, config: &RunConfig, state: Arc<OperatorState>) {
    state.mark_watch_unsynced();
    let reporter = Reporter { controller: "taxi-operator".into(), instance: Some(config.pod_name.clone()) };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        streams: SdkStreams::new(config.kinesis.clone()),
        probe: HttpProbe::default(),
        state: state.clone(),
        defaults: config.defaults(),
        policy: config.policy.clone(),
        now: k8s_openapi::jiff::Timestamp::now,
        failures: Mutex::new(HashMap::new()),
        scaling: Mutex::new(HashMap::new()),
    });
    let scopes: Vec<Option<String>> =
        if config.namespaces.is_empty() { vec![None] } else { config.namespaces.iter().cloned().map(Some).collect() };
    let runs = scopes.into_iter().map(|namespace| controller(client.clone(), namespace, ctx.clone()));
    futures::future::join_all(runs).await;
}

async fn controller(client: Client, namespace: Option<String>, ctx: Arc<Context<SdkStreams, HttpProbe>>) {
    let pipelines: Api<DeserializeGuard<TaxiPipeline>> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let stateful_sets: Api<StatefulSet> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    // Status writes do not change the generation: only spec edits (and deletion) trigger a pass,
    // so the status this controller writes never re-triggers it. A change of the finalizers does
    // too: the pass that adds ours ends there and waits for that change to come back.
    let trigger = watcher(pipelines, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation.combine(predicates::finalizers), Default::default());
    let synced = {
        let (reader, state) = (reader.clone(), ctx.state.clone());
        tokio::spawn(async move {
            if reader.wait_until_ready().await.is_ok() {
                state.mark_watch_synced();
            }
        })
    };
    let workers = watcher::Config::default().labels("app.kubernetes.io/managed-by=taxi-operator");
    Controller::for_stream(trigger, reader)
        .owns(stateful_sets, workers)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(pipeline = %object_name(&object), "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
    synced.abort();
}

fn object_name(object: &ObjectRef<DeserializeGuard<TaxiPipeline>>) -> String {
    format!("{}/{}", object.namespace.as_deref().unwrap_or(""), object.name)
}

//! The `taxi-operator` command line: its clap types, what each flag turns into, and the commands
//! themselves. `main.rs` only parses and dispatches here.
//!
//! The types live in the library (not in `main.rs`) so that the command-line reference
//! (`docs/reference/cli.md`) is generated from them, as the worker's is from `taxi_worker::cli`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use taxi_io::kinesis::api::KinesisEndpoint;

use crate::autoscale::Policy;
use crate::controller::{RunConfig, run as run_controller};
use crate::policy::{PolicyError, ServiceAccountPolicy, WorkerPolicy};
use crate::simulate::{self, PolicyKind, SimConfig, Trace};
use crate::validate::FlagError;
use crate::validate::defaults::{parse_ca_secret, parse_labels, parse_names};

/// Command line of the operator binary.
#[derive(Debug, Parser)]
#[command(name = "taxi-operator", version, about)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// What the operator binary can do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller against the current Kubernetes cluster (in-cluster or kubeconfig).
    Run(RunArgs),
    /// Print the TaxiPipeline CustomResourceDefinition as YAML (what `crds/` holds).
    Crd,
    /// Simulate a pipeline under an autoscaling policy and print the outcome as one JSON line.
    Simulate(SimulateArgs),
}

/// `taxi-operator run`: where the controller watches, and what every pipeline gets by default.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Namespaces whose TaxiPipelines are reconciled, comma-separated; empty: every namespace.
    #[arg(long, env = "TAXI_WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Default AWS region for pipelines that name none (else the AWS configuration chain).
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
    /// Default Kinesis endpoint for pipelines that name none, e.g. an emulator.
    #[arg(long, env = "TAXI_KINESIS_ENDPOINT_URL")]
    kinesis_endpoint_url: Option<String>,
    /// Address of /healthz, /readyz, /metrics and /status.
    #[arg(long, env = "TAXI_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Worker image for pipelines that do not set spec.worker.image.
    #[arg(long, env = "TAXI_WORKER_IMAGE", default_value = concat!("ghcr.io/taxipipeline/taxi:", env!("CARGO_PKG_VERSION")))]
    worker_image: String,
    /// Worker images a pipeline may name in spec.worker.image, comma-separated: a repository
    /// (ghcr.io/team/taxi, any tag or digest), a prefix ending in / (ghcr.io/team/), or * for any.
    /// Empty: only the repository of --worker-image.
    #[arg(long, env = "TAXI_ALLOWED_IMAGE_REPOSITORIES", value_delimiter = ',')]
    allowed_image_repositories: Vec<String>,
    /// Whether spec.worker.serviceAccountName may name an existing ServiceAccount: forbid,
    /// labeled (only one labeled taxipipeline.io/workers-allowed: "true") or any.
    #[arg(long, env = "TAXI_SERVICE_ACCOUNT_POLICY", default_value_t = ServiceAccountPolicy::Labeled)]
    service_account_policy: ServiceAccountPolicy,
    /// Elect a leader through a coordination.k8s.io Lease (needed with more than one replica).
    #[arg(long, env = "TAXI_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This pod's name (Lease holder identity, Event reporter).
    #[arg(long, env = "POD_NAME", default_value = "taxi-operator")]
    pod_name: String,
    /// Secrets appended to every worker pod's imagePullSecrets, comma-separated (Secrets in each
    /// pipeline's namespace).
    #[arg(long, env = "TAXI_WORKER_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    worker_image_pull_secrets: Vec<String>,
    /// CA bundle Secret `name[:key]` (key default ca.crt) for https sinks whose spec names no
    /// caSecretRef; a Secret of that name must exist in each pipeline's namespace.
    #[arg(long, env = "TAXI_DEFAULT_SINK_CA_SECRET")]
    default_sink_ca_secret: Option<String>,
    /// Give pipelines that do not set spec.worker.networkPolicy.enabled a NetworkPolicy admitting
    /// only the operator and the metrics scrapers to the workers' port 8080.
    #[arg(long, env = "TAXI_WORKER_NETWORK_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    worker_network_policy: bool,
    /// Labels `k=v,...` of the operator's pods (in its namespace, POD_NAMESPACE), which the workers'
    /// NetworkPolicy admits; empty: every pod of that namespace.
    #[arg(long, env = "TAXI_OPERATOR_POD_LABELS", value_delimiter = ',')]
    operator_pod_labels: Vec<String>,
    /// Labels `k=v,...` of the namespaces whose pods may scrape the workers' metrics.
    #[arg(long, env = "TAXI_METRICS_NAMESPACE_LABELS", value_delimiter = ',')]
    metrics_namespace_labels: Vec<String>,
    /// Labels `k=v,...` of the pods that may scrape the workers' metrics: in the namespaces of
    /// --metrics-namespace-labels, or without it in the pipeline's own.
    #[arg(long, env = "TAXI_METRICS_POD_LABELS", value_delimiter = ',')]
    metrics_pod_labels: Vec<String>,
}

/// A flag value `taxi-operator run` cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A policy flag.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A flag of what every pipeline gets.
    #[error(transparent)]
    Flag(#[from] FlagError),
}

impl RunArgs {
    /// The settings of the run, or the first flag value the operator cannot use.
    pub fn config(self) -> Result<RunConfig, ConfigError> {
        let policy =
            WorkerPolicy::new(&self.allowed_image_repositories, self.service_account_policy, &self.worker_image)?;
        Ok(RunConfig {
            namespaces: self.namespaces.into_iter().filter(|n| !n.is_empty()).collect(),
            kinesis: KinesisEndpoint { region: self.region, endpoint_url: self.kinesis_endpoint_url },
            http_addr: self.http_addr,
            worker_image: self.worker_image,
            policy,
            worker_image_pull_secrets: parse_names(&self.worker_image_pull_secrets),
            default_sink_ca_secret: parse_ca_secret(
                "--default-sink-ca-secret",
                self.default_sink_ca_secret.as_deref().unwrap_or_default(),
            )?,
            worker_network_policy: self.worker_network_policy,
            operator_pod_labels: parse_labels("--operator-pod-labels", &self.operator_pod_labels)?,
            metrics_namespace_labels: parse_labels("--metrics-namespace-labels", &self.metrics_namespace_labels)?,
            metrics_pod_labels: parse_labels("--metrics-pod-labels", &self.metrics_pod_labels)?,
            leader_election: self.leader_election,
            lease_namespace: self.lease_namespace,
            pod_name: self.pod_name,
        })
    }
}

/// `taxi-operator simulate`: every setting defaults to `simulate::SimConfig::default()`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The policy deciding the replicas.
    #[arg(long, value_enum, default_value_t = PolicyKind::Ours)]
    policy: PolicyKind,
    /// The input rate trace.
    #[arg(long, value_enum, default_value_t = Trace::Step)]
    trace: Trace,
    /// Run every (policy, trace) pair, one JSON line each.
    #[arg(long, conflicts_with_all = ["policy", "trace"])]
    all: bool,
    /// Open shards [default: 8].
    #[arg(long)]
    shards: Option<u32>,
    /// Records/s one replica consumes at most [default: 2500].
    #[arg(long)]
    capacity: Option<f64>,
    /// Base input rate of the trace, records/s [default: 4000].
    #[arg(long)]
    rate: Option<f64>,
    /// autoscaling.maxLag [default: 1m].
    #[arg(long, value_parser = taxi_core::duration::parse)]
    max_lag: Option<Duration>,
    /// autoscaling.scaleUpStabilization [default: 1m].
    #[arg(long, value_parser = taxi_core::duration::parse)]
    scale_up_stabilization: Option<Duration>,
    /// autoscaling.scaleDownStabilization [default: 10m].
    #[arg(long, value_parser = taxi_core::duration::parse)]
    scale_down_stabilization: Option<Duration>,
    /// autoscaling.minReplicas [default: 1].
    #[arg(long)]
    min_replicas: Option<u32>,
    /// autoscaling.maxReplicas [default: 10].
    #[arg(long)]
    max_replicas: Option<u32>,
    /// autoscaling.targetShardsPerReplica [default: 2].
    #[arg(long)]
    target_shards_per_replica: Option<u32>,
    /// How often the policy is asked [default: 30s].
    #[arg(long, value_parser = taxi_core::duration::parse)]
    interval: Option<Duration>,
    /// How long a moved shard pauses [default: 10s].
    #[arg(long, value_parser = taxi_core::duration::parse)]
    handoff_pause: Option<Duration>,
    /// How long new pods take to become ready [default: 20s].
    #[arg(long, value_parser = taxi_core::duration::parse)]
    pod_startup: Option<Duration>,
    /// Seed of the noisy trace [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Length of the run [default: the trace's, 1h or 24h for diurnal].
    #[arg(long, value_parser = taxi_core::duration::parse)]
    duration: Option<Duration>,
}

impl SimulateArgs {
    /// The simulation these flags describe.
    pub fn config(&self) -> SimConfig {
        let base = SimConfig::default();
        let policy = base.autoscaling.clone();
        SimConfig {
            policy: self.policy,
            trace: self.trace,
            shards: self.shards.unwrap_or(base.shards),
            capacity_per_replica: self.capacity.unwrap_or(base.capacity_per_replica),
            base_rate: self.rate.unwrap_or(base.base_rate),
            autoscaling: Policy {
                min_replicas: self.min_replicas.unwrap_or(policy.min_replicas),
                max_replicas: self.max_replicas.unwrap_or(policy.max_replicas),
                target_shards_per_replica: self.target_shards_per_replica.unwrap_or(policy.target_shards_per_replica),
                max_lag: self.max_lag.unwrap_or(policy.max_lag),
                scale_up_stabilization: self.scale_up_stabilization.unwrap_or(policy.scale_up_stabilization),
                scale_down_stabilization: self.scale_down_stabilization.unwrap_or(policy.scale_down_stabilization),
            },
            interval: self.interval.unwrap_or(base.interval),
            handoff_pause: self.handoff_pause.unwrap_or(base.handoff_pause),
            pod_startup: self.pod_startup.unwrap_or(base.pod_startup),
            seed: self.seed.unwrap_or(base.seed),
            duration: self.duration.or(base.duration),
        }
    }
}

/// `taxi-operator simulate`: one JSON line per simulated (policy, trace) pair.
pub fn simulate(args: &SimulateArgs) -> ExitCode {
    let config = args.config();
    let reports = if args.all { simulate::run_all(&config) } else { simulate::run(&config).map(|r| vec![r]) };
    match reports {
        Ok(reports) => {
            for report in reports {
                println!("{}", report.to_json());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("taxi-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `taxi-operator run`: logs to stderr (`RUST_LOG`, default `info,kube=warn`), then runs the
/// controller until it stops.
pub fn run(args: RunArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let config = match args.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("taxi-operator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("taxi-operator: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_controller(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taxi-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `taxi-operator crd`: prints the CustomResourceDefinition.
pub fn crd() -> ExitCode {
    print!("{}", crate::crd::crd_yaml());
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::resources::network_policy::IngressPeers;
    use crate::validate::{Defaults, SecretKey};

    use super::*;

    fn run_config(args: &[&str]) -> Result<RunConfig, ConfigError> {
        let cli = Cli::try_parse_from(["taxi-operator", "run"].iter().chain(args)).expect("the flags parse");
        match cli.command {
            Command::Run(args) => args.config(),
            other => panic!("not run: {other:?}"),
        }
    }

    fn labels(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_shared_cluster_flags_reach_every_pipelines_defaults() {
        let config = run_config(&[
            "--worker-image=registry.example.com/taxi:1",
            "--lease-namespace=taxi-system",
            "--worker-image-pull-secrets=team-registry,platform-registry",
            "--default-sink-ca-secret=platform-ca:bundle.pem",
            "--worker-network-policy=false",
            "--operator-pod-labels=app.kubernetes.io/name=taxi-pipeline,app.kubernetes.io/instance=taxi",
            "--metrics-namespace-labels=kubernetes.io/metadata.name=monitoring",
            "--metrics-pod-labels=app.kubernetes.io/name=prometheus",
        ])
        .expect("valid flags");
        assert_eq!(
            config.defaults(),
            Defaults {
                worker_image: "registry.example.com/taxi:1".to_owned(),
                image_pull_secrets: vec!["team-registry".to_owned(), "platform-registry".to_owned()],
                sink_ca_secret: Some(SecretKey { name: "platform-ca".to_owned(), key: "bundle.pem".to_owned() }),
                network_policy: false,
                ingress: IngressPeers {
                    operator_namespace: "taxi-system".to_owned(),
                    operator_pod_labels: labels(&[
                        ("app.kubernetes.io/instance", "taxi"),
                        ("app.kubernetes.io/name", "taxi-pipeline"),
                    ]),
                    metrics_namespace_labels: labels(&[("kubernetes.io/metadata.name", "monitoring")]),
                    metrics_pod_labels: labels(&[("app.kubernetes.io/name", "prometheus")]),
                },
            }
        );
    }

    #[test]
    fn without_the_flags_every_pipeline_gets_a_network_policy_and_nothing_else() {
        let config = run_config(&["--worker-image=registry.example.com/taxi:1", "--lease-namespace=taxi-system"])
            .expect("valid flags");
        assert_eq!(config.defaults(), Defaults::new("registry.example.com/taxi:1", "taxi-system"));
    }

    #[test]
    fn a_bad_flag_value_stops_the_operator_naming_the_flag() {
        let error = run_config(&["--metrics-pod-labels=prometheus"]).expect_err("not key=value");
        assert!(error.to_string().starts_with("--metrics-pod-labels: `prometheus`"), "{error}");
        let error = run_config(&["--default-sink-ca-secret=Platform_CA"]).expect_err("not a Secret name");
        assert!(error.to_string().starts_with("--default-sink-ca-secret:"), "{error}");
    }
}

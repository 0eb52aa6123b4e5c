//! `taxi-operator`: reconciles `TaxiPipeline` resources into shard-assigned worker StatefulSets.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use taxi_operator::controller::{RunConfig, run};
use taxi_worker::kinesis::api::KinesisEndpoint;

/// Command line of the operator binary.
#[derive(Debug, Parser)]
#[command(name = "taxi-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What the operator binary can do.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller against the current Kubernetes cluster (in-cluster or kubeconfig).
    Run(RunArgs),
    /// Print the TaxiPipeline CustomResourceDefinition as YAML (what `crds/` holds).
    Crd,
}

#[derive(Debug, Args)]
struct RunArgs {
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
    /// Elect a leader through a coordination.k8s.io Lease (needed with more than one replica).
    #[arg(long, env = "TAXI_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This pod's name (Lease holder identity, Event reporter).
    #[arg(long, env = "POD_NAME", default_value = "taxi-operator")]
    pod_name: String,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", taxi_operator::crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            let filter =
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            let config = RunConfig {
                namespaces: args.namespaces.into_iter().filter(|n| !n.is_empty()).collect(),
                kinesis: KinesisEndpoint { region: args.region, endpoint_url: args.kinesis_endpoint_url },
                http_addr: args.http_addr,
                worker_image: args.worker_image,
                leader_election: args.leader_election,
                lease_namespace: args.lease_namespace,
                pod_name: args.pod_name,
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("taxi-operator: failed to start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("taxi-operator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

//! `taxi-worker`: the TaxiPipeline worker binary.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use taxi_core::analysis::MergedResult;
use taxi_core::config::{
    AirportTripsConfig, EngineConfig, EventTimeConfig, HotSpotConfig, WatermarkStrategy, parse_duration, to_millis,
};
use taxi_core::document::merge_documents;
use taxi_core::generate::{GeneratorConfig, write_json_lines};
use taxi_core::geo::BoundingBox;
use taxi_core::settings::{
    CheckpointSettings, ConsumerSetting, SigV4Service, SinkAuthSetting, SinkSettings, StreamSettings, WorkerSettings,
};
use taxi_core::start_position;
use taxi_core::time::{format_timestamp, parse_timestamp};
use taxi_io::kinesis::api::{KinesisEndpoint, SdkKinesis};
use taxi_io::kinesis::reader::PollingConfig;
use taxi_io::sink::file::read_documents;
use taxi_io::sink::opensearch::{BulkSettings, OpenSearchAuth, OpenSearchSettings};
use taxi_io::store::S3Settings;
use taxi_worker::dashboard::{Dashboard, RunState};
use taxi_worker::handoff::{AssignmentSource, pod_ordinal};
use taxi_worker::local::{CheckpointOptions, LocalInput, LocalOptions, LocalRun, Outcome, Progress, run_local};
use taxi_worker::replay::{ReplayOptions, ReplayProgress};
use taxi_worker::run::{RunOptions, WorkerState, run_worker};

/// Command line of the worker binary.
#[derive(Debug, Parser)]
#[command(name = "taxi-worker", version, about = "TaxiPipeline worker: event-time NYC taxi analytics")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole pipeline in this process: read (or generate) trips, partition them over
    /// in-memory shards, compute the windowed analyses and merge the results.
    ///
    /// With no arguments it generates a realistic synthetic day of NYC trips and runs on it.
    Local(LocalArgs),
    /// Write synthetic NYC taxi trips as JSON lines (the seed's event format).
    Generate(GenerateArgs),
    /// Read the shards of a Kinesis stream (the pod command; also runs outside Kubernetes).
    Run(Box<RunArgs>),
    /// Print the merged results of a pipeline's partial documents (the local --output format).
    Results(ResultsArgs),
    /// Replay trips into a Kinesis stream (the producer), paced by event time.
    Replay(ReplayArgs),
    /// Inspect or purge the documents the sink refused, kept under the checkpoint location until
    /// the worker re-delivers them.
    DeadLetter(DeadLetterArgs),
}

#[derive(Debug, Args)]
struct DeadLetterArgs {
    #[command(subcommand)]
    action: DeadLetterAction,
    /// The pipeline whose dead letters these are: `<namespace>/<name>` for a pipeline of the
    /// operator, its name otherwise.
    #[arg(long, global = true, env = "TAXI_PIPELINE", default_value = "taxi")]
    pipeline: String,
    /// Checkpoint store: s3://bucket/prefix, file:///dir or a directory.
    #[arg(long, global = true, env = "TAXI_CHECKPOINT")]
    checkpoint: Option<String>,
    /// S3 endpoint for S3-compatible servers (default: AWS).
    #[arg(long, global = true, env = "TAXI_S3_ENDPOINT_URL")]
    s3_endpoint_url: Option<String>,
    /// Path-style S3 addressing (http://host/bucket/key), as most S3-compatible servers need.
    #[arg(long, global = true, env = "TAXI_S3_FORCE_PATH_STYLE")]
    s3_force_path_style: bool,
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// Print every dead letter as a JSON line: status, error type, reason and the document.
    List,
    /// Delete every dead letter (they are lost for good); needs --yes.
    Purge {
        /// Confirm that the refused documents are to be discarded.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Input file: JSON lines or NYC TLC yellow-trip CSV, plain, gzip or zstd.
    #[arg(long)]
    input: PathBuf,
    #[command(flatten)]
    kinesis: KinesisArgs,
    /// Event time runs this many times faster than wall time (6480: a day in ~13 s); 0 = as fast
    /// as possible.
    #[arg(long, default_value_t = 6480.0)]
    speedup: f64,
    /// Pack records into KPL aggregates (one per shard).
    #[arg(long)]
    aggregate: bool,
    /// Time between watermark events sent to every open shard.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    watermark_interval: Duration,
    /// Most PutRecords calls in flight.
    #[arg(long, default_value_t = 8)]
    max_in_flight: usize,
    /// Create the stream with this many shards when it does not exist.
    #[arg(long)]
    create_stream: Option<u32>,
    /// Print the progress line even when stderr is not a terminal.
    #[arg(long)]
    progress: bool,
    /// Write the replay summary here as JSON.
    #[arg(long)]
    summary: Option<PathBuf>,
}

/// Which stream, and how to reach Kinesis.
#[derive(Debug, Args)]
struct KinesisArgs {
    /// Kinesis stream name.
    #[arg(long, env = "TAXI_STREAM")]
    stream: String,
    /// AWS region (default: from the AWS configuration chain).
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
    /// Kinesis endpoint, e.g. a local emulator (http://127.0.0.1:4567).
    #[arg(long, env = "TAXI_KINESIS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
}

impl KinesisArgs {
    /// Connects with credentials from the default AWS chain.
    async fn connect(&self) -> SdkKinesis {
        SdkKinesis::connect(&KinesisEndpoint { region: self.region.clone(), endpoint_url: self.endpoint_url.clone() })
            .await
    }
}

/// How the worker talks to OpenSearch.
#[derive(Debug, Args)]
struct OpenSearchArgs {
    /// OpenSearch authentication.
    #[arg(long, value_enum, default_value = "none", env = "TAXI_SINK_AUTH")]
    sink_auth: SinkAuth,
    /// User name for --sink-auth basic.
    #[arg(long, env = "TAXI_SINK_USERNAME", hide_env_values = true)]
    sink_username: Option<String>,
    /// Password for --sink-auth basic (from the environment only, so it never shows in `ps`).
    #[arg(skip = std::env::var("TAXI_SINK_PASSWORD").ok())]
    sink_password: Option<String>,
    /// SigV4 service: es (OpenSearch Service) or aoss (OpenSearch Serverless).
    #[arg(long, value_enum, default_value = "es")]
    sigv4_service: SigV4Kind,
    /// SigV4 region (default: from the AWS configuration chain).
    #[arg(long)]
    sigv4_region: Option<String>,
    /// Index name prefix: documents go to <prefix>-hot-spots and <prefix>-airport-trips.
    #[arg(long, default_value = "taxi", env = "TAXI_INDEX_PREFIX")]
    index_prefix: String,
    /// PEM file of CA certificates to trust for https:// (besides the system roots).
    #[arg(long, env = "TAXI_SINK_CA_CERT")]
    sink_ca_cert: Option<PathBuf>,
    /// A bulk request carries at most this many documents.
    #[arg(long, default_value_t = 5000)]
    bulk_max_docs: usize,
    /// A bulk request carries at most this many bytes.
    #[arg(long, default_value_t = 5 * 1024 * 1024)]
    bulk_max_bytes: usize,
    /// A document waits at most this long for its bulk request.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    bulk_max_delay: Duration,
}

/// OpenSearch authentication choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SinkAuth {
    /// No authentication.
    None,
    /// HTTP basic (TAXI_SINK_USERNAME / TAXI_SINK_PASSWORD).
    Basic,
    /// AWS SigV4 with the default AWS credential chain.
    Sigv4,
}

/// SigV4 service names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SigV4Kind {
    /// Amazon OpenSearch Service.
    Es,
    /// Amazon OpenSearch Serverless.
    Aoss,
}

impl OpenSearchArgs {
    fn settings(&self, url: &str) -> Result<OpenSearchSettings, String> {
        let auth = match self.sink_auth {
            SinkAuth::None => OpenSearchAuth::None,
            SinkAuth::Basic => OpenSearchAuth::Basic {
                username: self.sink_username.clone().ok_or("--sink-auth basic needs TAXI_SINK_USERNAME")?,
                password: self.sink_password.clone().ok_or("--sink-auth basic needs TAXI_SINK_PASSWORD")?,
            },
            SinkAuth::Sigv4 => OpenSearchAuth::SigV4 {
                service: match self.sigv4_service {
                    SigV4Kind::Es => SigV4Service::Es,
                    SigV4Kind::Aoss => SigV4Service::Aoss,
                },
                region: self.sigv4_region.clone(),
            },
        };
        let defaults = OpenSearchSettings::default();
        Ok(OpenSearchSettings {
            url: url.to_owned(),
            auth,
            index_prefix: self.index_prefix.clone(),
            ca_cert: self.sink_ca_cert.clone(),
            bulk: BulkSettings {
                max_docs: self.bulk_max_docs,
                max_bytes: self.bulk_max_bytes,
                max_delay: self.bulk_max_delay,
                ..defaults.bulk.clone()
            },
            ..defaults
        })
    }
}

/// How `run` consumes shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Consumer {
    /// GetRecords polling (shared throughput, 5 calls/s per shard).
    Polling,
    /// Enhanced fan-out (SubscribeToShard, dedicated throughput).
    Efo,
}

/// `run`: the pipeline settings come either from `--config` (the operator's worker ConfigMap) or
/// from the pipeline flags; the per-process flags apply either way.
#[derive(Debug, Args)]
struct RunArgs {
    /// Read the pipeline settings from this JSON file (the `worker.json` the operator renders)
    /// instead of the pipeline flags below, which then must not be given.
    #[arg(long, env = "TAXI_WORKER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Exit after every shard has been caught up and quiet this long, writing open windows as
    /// not-final documents (a later run completes them: they stay in the checkpoints).
    #[arg(long, value_parser = parse_duration)]
    stop_when_idle: Option<Duration>,
    /// Records per GetRecords call (1–10 000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    max_records: i32,
    /// Address of /healthz, /readyz, /metrics and /status.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Which shards this worker owns: all, file:PATH (an assignment document, read
    /// every 250 ms) or configmap (the operator's ConfigMap <pipeline>-assignment, watched).
    #[arg(long, default_value = "all", env = "TAXI_ASSIGNMENT")]
    assignment: AssignmentSource,
    /// This worker's ordinal in the assignment. Required with file:PATH; with configmap it
    /// defaults to the numeric suffix of the pod name (env POD_NAME, else HOSTNAME).
    #[arg(long)]
    ordinal: Option<u32>,
    /// How long a new owner waits for the previous owner to release a shard before taking it over.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    takeover_timeout: Duration,
}

/// The pipeline flags of `run`: another way to fill [`WorkerSettings`].
#[derive(Debug, Args)]
struct PipelineArgs {
    /// Pipeline name: used in document ids and checkpoint keys.
    #[arg(long, env = "TAXI_PIPELINE", required_unless_present = "config", conflicts_with = "config")]
    pipeline: Option<String>,
    /// The pipeline's Kubernetes namespace, part of its identity: checkpoints and document ids
    /// are keyed `<namespace>/<pipeline>` (set by the operator; leave it out elsewhere).
    #[arg(long, conflicts_with = "config")]
    namespace: Option<String>,
    /// Kinesis stream name.
    #[arg(long, env = "TAXI_STREAM", required_unless_present = "config", conflicts_with = "config")]
    stream: Option<String>,
    /// AWS region (default: from the AWS configuration chain).
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
    /// Kinesis endpoint, e.g. a local emulator (http://127.0.0.1:4567).
    #[arg(long, env = "TAXI_KINESIS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// Polling (GetRecords) or enhanced fan-out.
    #[arg(long, value_enum, default_value = "polling")]
    consumer: Consumer,
    /// Name of the enhanced fan-out consumer (default: taxi-<pipeline>).
    #[arg(long)]
    efo_consumer_name: Option<String>,
    /// Where a shard with nothing read yet starts: trim-horizon, latest, or an ISO-8601 timestamp.
    /// Fixed at the shard's first claim; shards created by a reshard start at trim-horizon.
    #[arg(long, default_value = "trim-horizon", value_parser = validate_start_position)]
    start_position: String,
    /// Checkpoint store: s3://bucket/prefix, file:///dir or a directory.
    #[arg(long, env = "TAXI_CHECKPOINT", required_unless_present = "config", conflicts_with = "config")]
    checkpoint: Option<String>,
    /// S3 endpoint for S3-compatible servers (default: AWS).
    #[arg(long, env = "TAXI_S3_ENDPOINT_URL")]
    s3_endpoint_url: Option<String>,
    /// Path-style S3 addressing (http://host/bucket/key), as most S3-compatible servers need.
    #[arg(long, env = "TAXI_S3_FORCE_PATH_STYLE")]
    s3_force_path_style: bool,
    /// Previous checkpoints kept per shard under history/ for inspection (0 = none).
    #[arg(long, default_value_t = taxi_core::settings::DEFAULT_RETAIN)]
    checkpoint_retain: usize,
    /// Time between checkpoints of a shard.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    checkpoint_interval: Duration,
    /// Where per-shard partial documents go: an OpenSearch URL (https://host:port) or
    /// file:///path/partials.jsonl.
    #[arg(long, env = "TAXI_SINK", required_unless_present = "config", conflicts_with = "config")]
    sink: Option<String>,
    #[command(flatten)]
    opensearch: OpenSearchArgs,
    /// Time between ListShards calls that discover new shards.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    shard_discovery_interval: Duration,
    #[command(flatten)]
    engine: EngineArgs,
}

impl RunArgs {
    /// The pipeline settings, from `--config` or from the flags.
    fn settings(&self) -> Result<WorkerSettings, String> {
        let settings = match &self.config {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| format!("failed to read {}: {e}", path.display()))?;
                WorkerSettings::from_json(&bytes).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => self.pipeline.settings()?,
        };
        settings.validate().map_err(|e| e.to_string())?;
        Ok(settings)
    }
}

impl PipelineArgs {
    fn settings(&self) -> Result<WorkerSettings, String> {
        let required = |value: &Option<String>, flag: &str| value.clone().ok_or(format!("{flag} is required"));
        let os = &self.opensearch;
        Ok(WorkerSettings {
            pipeline: required(&self.pipeline, "--pipeline")?,
            namespace: self.namespace.clone(),
            stream: StreamSettings {
                name: required(&self.stream, "--stream")?,
                region: self.region.clone(),
                endpoint_url: self.endpoint_url.clone(),
                start_position: self.start_position.clone(),
                consumer: match self.consumer {
                    Consumer::Polling => ConsumerSetting::Polling,
                    Consumer::Efo => ConsumerSetting::Efo,
                },
                efo_consumer_name: self.efo_consumer_name.clone(),
                discovery_interval_ms: millis_u64(self.shard_discovery_interval),
            },
            checkpoint: CheckpointSettings {
                uri: required(&self.checkpoint, "--checkpoint")?,
                interval_ms: millis_u64(self.checkpoint_interval),
                retain: self.checkpoint_retain,
                s3_endpoint_url: self.s3_endpoint_url.clone(),
                s3_force_path_style: self.s3_force_path_style,
            },
            sink: SinkSettings {
                url: required(&self.sink, "--sink")?,
                index_prefix: os.index_prefix.clone(),
                auth: match os.sink_auth {
                    SinkAuth::None => SinkAuthSetting::None,
                    SinkAuth::Basic => SinkAuthSetting::Basic,
                    SinkAuth::Sigv4 => SinkAuthSetting::Sigv4 {
                        service: match os.sigv4_service {
                            SigV4Kind::Es => SigV4Service::Es,
                            SigV4Kind::Aoss => SigV4Service::Aoss,
                        },
                        region: os.sigv4_region.clone(),
                    },
                },
                ca_cert: os.sink_ca_cert.clone(),
                bulk_max_docs: os.bulk_max_docs,
                bulk_max_bytes: os.bulk_max_bytes,
                bulk_max_delay_ms: millis_u64(os.bulk_max_delay),
            },
            engine: self.engine.config(),
        })
    }
}

fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Args)]
struct ResultsArgs {
    /// Partial documents written by `run --sink file://…`.
    #[arg(long, required_unless_present = "opensearch_url", conflicts_with = "opensearch_url")]
    sink: Option<String>,
    /// Read the partial documents from this OpenSearch cluster instead.
    #[arg(long = "opensearch", value_name = "URL")]
    opensearch_url: Option<String>,
    /// Only this pipeline's documents (required with --opensearch): `<namespace>/<name>` for a
    /// pipeline of the operator, its name otherwise.
    #[arg(long)]
    pipeline: Option<String>,
    #[command(flatten)]
    opensearch: OpenSearchArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

fn validate_start_position(s: &str) -> Result<String, String> {
    start_position::parse(s).map(|_| s.to_owned())
}

/// Analysis and event-time flags, shared by every command that runs the engine.
#[derive(Debug, Args)]
struct EngineArgs {
    /// Tumbling window size of both analyses (e.g. 10m, 1h, 30s).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    window: Duration,
    /// Geohash length of a hot-spot cell (1–12).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u8).range(1..=12))]
    geohash_precision: u8,
    /// A merged hot spot is reported from this many pickups in a window and cell.
    #[arg(long, default_value_t = 2)]
    min_pickups: u64,
    /// A merged airport result is reported from this many trips in a window, cell and airport.
    #[arg(long, default_value_t = 2)]
    min_airport_trips: u64,
    /// How watermarks advance: bounded (max event time − max out-of-orderness) or punctuated
    /// (watermark events only).
    #[arg(long, value_enum, default_value = "bounded")]
    watermark: WatermarkStrategy,
    /// Disorder the bounded watermark tolerates.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    max_out_of_orderness: Duration,
    /// How long after its end a window still accepts trips.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    allowed_lateness: Duration,
    /// A shard without records for this long stops holding merged windows open (0 = never idle).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// A record dated more than this past the shard's latest event time is counted invalid as
    /// implausible_time and never moves the watermark (0 = no limit).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    max_time_jump: Duration,
}

impl EngineArgs {
    fn config(&self) -> EngineConfig {
        let window_ms = to_millis(self.window);
        EngineConfig {
            region: BoundingBox::NYC,
            event_time: EventTimeConfig {
                watermark: self.watermark,
                max_out_of_orderness_ms: to_millis(self.max_out_of_orderness),
                allowed_lateness_ms: to_millis(self.allowed_lateness),
                idle_timeout_ms: to_millis(self.idle_timeout),
                max_time_jump_ms: to_millis(self.max_time_jump),
            },
            hot_spots: HotSpotConfig {
                window_ms,
                geohash_precision: self.geohash_precision,
                min_pickups: self.min_pickups,
            },
            airport_trips: AirportTripsConfig {
                window_ms,
                min_trips: self.min_airport_trips,
                ..AirportTripsConfig::default()
            },
        }
    }
}

#[derive(Debug, Args)]
struct LocalArgs {
    /// Input file: JSON lines or NYC TLC yellow-trip CSV, plain, gzip or zstd.
    #[arg(long, conflicts_with = "generate")]
    input: Option<PathBuf>,
    /// Generate this many synthetic trips instead of reading a file (default: a day, ~400 000).
    #[arg(long)]
    generate: Option<u64>,
    /// Seed of the generated trips.
    #[arg(long, default_value_t = 42, requires = "generate")]
    seed: u64,
    /// Number of in-memory shards, partitioned by MD5 of trip_id as Kinesis does.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    shards: u32,
    /// Write the merged, final results here as JSON lines.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Write the run summary here as one JSON object.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Keep checkpoints in this directory (every --checkpoint-interval and on Ctrl-C).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Time between checkpoints.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    checkpoint_interval: Duration,
    /// Continue from the latest checkpoint in --checkpoint-dir.
    #[arg(long, requires = "checkpoint_dir")]
    resume: bool,
    /// Stop after this many input records (with a checkpoint when --checkpoint-dir is set).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Threads parsing input (default: the number of CPUs).
    #[arg(long)]
    parse_threads: Option<usize>,
    /// Print the progress line even when stderr is not a terminal.
    #[arg(long)]
    progress: bool,
    /// Serve the live dashboard at this address (port 0 picks a free one). Default: 127.0.0.1:8080
    /// when run from a terminal without --output or --summary.
    #[arg(long, value_name = "ADDR", conflicts_with = "no_dashboard")]
    dashboard: Option<SocketAddr>,
    /// Do not serve the dashboard.
    #[arg(long)]
    no_dashboard: bool,
    /// Replay event time at this many times wall-clock speed (6480: a day in ~13 s; 0: as fast as
    /// possible). Default: 6480 with the dashboard, as fast as possible without.
    #[arg(long, value_parser = parse_speedup)]
    speedup: Option<f64>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// The pace of a run with the dashboard: the seed's, a day of trips in about 13 s.
const DASHBOARD_SPEEDUP: f64 = 6480.0;
/// Where the dashboard listens when it is on by default.
const DEFAULT_DASHBOARD_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

fn parse_speedup(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("invalid speedup {s:?}: expected a number ≥ 0 (0 runs as fast as possible)")),
    }
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// Output file (`-` for stdout).
    #[arg(long, short, default_value = "trips.jsonl")]
    output: PathBuf,
    /// Number of trips.
    #[arg(long, default_value_t = GeneratorConfig::default().trips)]
    trips: u64,
    /// Random seed: the same seed gives the same file.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Start of the generated day (ISO-8601).
    #[arg(long, default_value = "2016-01-01T00:00:00Z", value_parser = parse_start)]
    start: i64,
    /// Maximum disorder of dropoff times (keep it below the engine's --max-out-of-orderness).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    max_disorder: Duration,
    /// Also write a watermark event every this many trips.
    #[arg(long)]
    watermark_every: Option<u64>,
    /// Fraction of invalid lines mixed in (0–1), to exercise error handling.
    #[arg(long, default_value_t = 0.0)]
    invalid_ratio: f64,
}

fn parse_start(s: &str) -> Result<i64, String> {
    parse_timestamp(s.as_bytes())
        .ok_or_else(|| format!("invalid timestamp {s:?}: expected ISO-8601 like 2016-01-01T00:00:00Z"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Local(args) => local(args),
        Command::Generate(args) => generate(&args),
        Command::Run(args) => run(*args),
        Command::Results(args) => results(&args),
        Command::Replay(args) => replay(&args),
        Command::DeadLetter(args) => dead_letter(&args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("taxi-worker: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn generate(args: &GenerateArgs) -> Result<ExitCode, String> {
    if !(0.0..=1.0).contains(&args.invalid_ratio) {
        return Err(format!("--invalid-ratio must be between 0 and 1, got {}", args.invalid_ratio));
    }
    let config = GeneratorConfig {
        trips: args.trips,
        seed: args.seed,
        start: args.start,
        max_disorder_ms: to_millis(args.max_disorder),
        watermark_every: args.watermark_every,
        invalid_ratio: args.invalid_ratio,
    };
    let started = Instant::now();
    let stats = if args.output == Path::new("-") {
        write_json_lines(&config, std::io::stdout().lock())
    } else {
        let file = std::fs::File::create(&args.output)
            .map_err(|e| format!("failed to create {}: {e}", args.output.display()))?;
        write_json_lines(&config, file)
    }
    .map_err(|e| format!("failed to write generated trips: {e}"))?;
    if args.output != Path::new("-") {
        eprintln!(
            "wrote {} trips, {} watermarks, {} invalid lines ({:.1} MB) to {} in {:.1} s",
            stats.trips,
            stats.watermarks,
            stats.invalid,
            stats.bytes as f64 / 1e6,
            args.output.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn local(args: LocalArgs) -> Result<ExitCode, String> {
    let input = match (&args.input, args.generate) {
        (Some(path), _) => {
            if !path.exists() {
                return Err(format!("input file {} does not exist", path.display()));
            }
            LocalInput::File(path.clone())
        }
        (None, trips) => LocalInput::Generate(GeneratorConfig {
            trips: trips.unwrap_or(GeneratorConfig::default().trips),
            seed: args.seed,
            ..GeneratorConfig::default()
        }),
    };
    let interactive = std::io::stderr().is_terminal();
    let show_progress = args.progress || interactive;
    // (address, whether the user chose it)
    let dashboard_addr = match (args.dashboard, args.no_dashboard) {
        (Some(addr), _) => Some((addr, true)),
        (None, true) => None,
        (None, false) => {
            (interactive && args.output.is_none() && args.summary.is_none()).then_some((DEFAULT_DASHBOARD_ADDR, false))
        }
    };
    let speedup = match args.speedup {
        Some(s) => Some(s).filter(|s| *s > 0.0),
        None => dashboard_addr.map(|_| DASHBOARD_SPEEDUP),
    };
    let options = LocalOptions {
        input,
        shards: args.shards,
        engine: args.engine.config(),
        checkpoint: args.checkpoint_dir.as_ref().map(|dir| CheckpointOptions {
            dir: dir.clone(),
            interval: args.checkpoint_interval,
            resume: args.resume,
        }),
        stop_after_records: args.stop_after,
        parse_threads: args
            .parse_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        speedup,
    };
    options.engine.validate().map_err(|e| format!("invalid configuration: {e}"))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("failed to start the runtime: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(if dashboard_addr.is_some() { Progress::keeping_results() } else { Progress::default() });
    // The dashboard and its URL, serving from here on.
    let dashboard = match dashboard_addr {
        Some((addr, chosen)) => {
            let dashboard = Arc::new(Dashboard::new(&options.engine, options.shards, speedup, progress.clone()));
            let url = runtime.block_on(start_dashboard(addr, chosen, dashboard.clone()))?;
            Some((dashboard, url))
        }
        None => None,
    };
    let run = runtime.block_on(async {
        let ctrl_c = {
            let stop = stop.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("\ninterrupted: stopping at the next record boundary");
                    stop.store(true, Ordering::Relaxed);
                }
            })
        };
        let ticker = show_progress.then(|| tokio::spawn(print_progress(progress.clone(), interactive)));
        let run = run_local(options, stop.clone(), progress.clone()).await;
        ctrl_c.abort();
        if let Some(t) = ticker {
            t.abort();
            if interactive {
                eprint!("\r\x1b[2K");
            }
        }
        run
    });
    // A failed run ends the process, and its dashboard with it.
    let run = run.map_err(|e| e.to_string())?;
    if let Some((d, _)) = &dashboard {
        d.set_state(match run.outcome {
            Outcome::Completed => RunState::Finished(run.summary.clone()),
            Outcome::Stopped { .. } => RunState::Stopped(run.summary.clone()),
        });
    }

    // A stopped run's results are incomplete: they are written by the run that completes.
    if let (Some(path), Outcome::Completed) = (&args.output, run.outcome) {
        write_results(path, &run.results).map_err(|e| format!("failed to write results to {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.summary {
        let json = serde_json::to_vec_pretty(&run.summary).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("failed to write summary to {}: {e}", path.display()))?;
    }
    print_report(&run, &args);
    // A finished run's dashboard stays up to be explored; an interrupted run just ends.
    if let (Some((_, url)), Outcome::Completed) = (&dashboard, run.outcome) {
        eprintln!("\nthe run is complete; the dashboard stays up at {url} — Ctrl-C to quit");
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// Binds the dashboard and serves it in the background; returns its URL. When the default port
/// is taken, any free port will do (the URL is printed); a chosen address must be honoured.
async fn start_dashboard(addr: SocketAddr, chosen: bool, dashboard: Arc<Dashboard>) -> Result<String, String> {
    let bound = match taxi_worker::dashboard::serve(addr, dashboard.clone()).await {
        Err(e) if !chosen && e.kind() == std::io::ErrorKind::AddrInUse => {
            let any_port = SocketAddr::new(addr.ip(), 0);
            eprintln!("{addr} is in use; serving the dashboard on another port (choose one with --dashboard ADDR)");
            taxi_worker::dashboard::serve(any_port, dashboard).await
        }
        other => other,
    };
    let (local, serve) = bound.map_err(|e| {
        format!(
            "failed to serve the dashboard on {addr}: {e} (choose another with --dashboard ADDR, or --no-dashboard)"
        )
    })?;
    tokio::spawn(serve);
    let url = format!("http://{local}/");
    eprintln!("dashboard: {url}");
    Ok(url)
}

fn write_results(path: &Path, results: &[MergedResult]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in results {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

async fn print_progress(progress: Arc<Progress>, interactive: bool) {
    let mut last = (Instant::now(), progress.records.load(Ordering::Relaxed));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    loop {
        tick.tick().await;
        let records = progress.records.load(Ordering::Relaxed);
        let rate = (records - last.1.min(records)) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), records);
        let watermark = progress.watermark.load(Ordering::Relaxed);
        let watermark = if watermark == i64::MIN { "-".to_owned() } else { format_timestamp(watermark) };
        let line = format!("{records} records  {rate:>10.0} records/s  watermark {watermark}");
        if interactive {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

/// What a person sees at the end of a run.
fn print_report(run: &LocalRun, args: &LocalArgs) {
    let s = &run.summary;
    let mut out = std::io::stdout().lock();
    let duplicates = if s.duplicates > 0 { format!(", {} duplicates", s.duplicates) } else { String::new() };
    let _ = writeln!(
        out,
        "{} records ({} trips, {} watermarks, {} invalid, {} outside NYC, {} late{duplicates}) in {:.2} s — {:.0} records/s",
        s.records, s.trips, s.watermarks, s.invalid, s.outside_region, s.late, s.elapsed_s, s.events_per_s
    );
    if let Outcome::Stopped { records } = run.outcome {
        let hint = if args.checkpoint_dir.is_some() { " — continue with the same flags and --resume" } else { "" };
        let _ = writeln!(out, "stopped after record {records}{hint}");
        return;
    }
    let _ = writeln!(out, "{} hot spots and {} airport results", s.hot_spots, s.airport_trips);
    let mut hot: Vec<&MergedResult> = run.results.iter().filter(|r| r.kind() == "hot_spot").collect();
    hot.sort_by_key(|r| match r {
        MergedResult::HotSpot { pickup_count, .. } => std::cmp::Reverse(*pickup_count),
        MergedResult::AirportTrip { .. } => std::cmp::Reverse(0),
    });
    if !hot.is_empty() {
        let _ = writeln!(out, "\nbusiest pickup cells (window, geohash, pickups):");
        for r in hot.iter().take(5) {
            if let MergedResult::HotSpot { window_start, geohash, pickup_count, .. } = r {
                let _ = writeln!(out, "  {}  {geohash}  {pickup_count}", format_timestamp(*window_start));
            }
        }
    }
    let mut by_airport: std::collections::BTreeMap<&str, (u64, f64)> = std::collections::BTreeMap::new();
    for r in &run.results {
        if let MergedResult::AirportTrip { airport, trip_count, sum_duration_min, .. } = r {
            let e = by_airport.entry(airport.as_str()).or_default();
            e.0 += trip_count;
            e.1 += sum_duration_min;
        }
    }
    if !by_airport.is_empty() {
        let _ = writeln!(out, "\naverage trip duration to the airports (over reported cells):");
        for (airport, (trips, minutes)) in by_airport {
            let _ = writeln!(out, "  {airport}: {:.1} min over {trips} trips", minutes / trips.max(1) as f64);
        }
    }
    if args.output.is_none() {
        let _ = writeln!(out, "\nwrite every result with --output results.jsonl (see --help for all flags)");
    }
}

fn run(args: RunArgs) -> Result<ExitCode, String> {
    let settings = args.settings()?;
    let env = |name: &str| std::env::var(name).ok();
    let ordinal = match (&args.assignment, args.ordinal) {
        (_, Some(ordinal)) => Some(ordinal),
        (AssignmentSource::All, None) => None,
        (AssignmentSource::File(_), None) => return Err("--assignment file:PATH needs --ordinal N".to_owned()),
        (AssignmentSource::ConfigMap, None) => {
            Some(pod_ordinal(env("POD_NAME").as_deref(), env("HOSTNAME").as_deref())?)
        }
    };
    let options = RunOptions {
        pipeline: settings.pipeline.clone(),
        namespace: settings.namespace.clone(),
        stream: settings.stream.name.clone(),
        start: settings.start_position().map_err(|e| e.to_string())?,
        checkpoint_uri: settings.checkpoint.uri.clone(),
        s3: S3Settings::for_pipeline(&settings),
        checkpoint_retain: settings.checkpoint.retain,
        opensearch: OpenSearchSettings::for_sink(&settings.sink, env).map_err(|e| e.to_string())?,
        checkpoint_interval: settings.checkpoint_interval(),
        sink_uri: settings.sink.url.clone(),
        shard_discovery_interval: settings.discovery_interval(),
        stop_when_idle: args.stop_when_idle,
        polling: PollingConfig { max_records: args.max_records, ..PollingConfig::default() },
        engine: settings.engine.clone(),
        owner_epoch: 0,
        assignment: args.assignment.clone(),
        ordinal,
        takeover_timeout: args.takeover_timeout,
        stop_after_records: None,
        consumer: settings.consumer(),
    };
    let endpoint =
        KinesisEndpoint { region: settings.stream.region.clone(), endpoint_url: settings.stream.endpoint_url.clone() };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("failed to start the runtime: {e}"))?;
    runtime.block_on(async move {
        let kinesis = Arc::new(SdkKinesis::connect(&endpoint).await);
        let state = Arc::new(WorkerState::default());
        let (addr, serve) = taxi_io::http::bind(args.http_addr, state.clone())
            .await
            .map_err(|e| format!("failed to listen on {}: {e}", args.http_addr))?;
        eprintln!("taxi-worker: serving http://{addr}/metrics, /healthz, /readyz and /status");
        let server = tokio::spawn(serve);
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let signals = tokio::spawn(async move {
            taxi_io::signals::terminated().await;
            let _ = shutdown_tx.send(true);
        });
        let started = Instant::now();
        let summary = run_worker(kinesis, options, state, shutdown_rx).await.map_err(|e| e.to_string());
        let elapsed = started.elapsed().as_secs_f64();
        signals.abort();
        server.abort();
        let summary = summary?;
        eprintln!(
            "stopped: {} records ({} trips, {} invalid, {} late) in {elapsed:.1} s — {:.0} records/s; finished shards: {}; fenced: {}",
            summary.counters.records,
            summary.counters.trips,
            summary.counters.invalid_total(),
            summary.counters.late,
            summary.counters.records as f64 / elapsed.max(0.001),
            summary.finished_shards.len(),
            summary.fenced_shards.len()
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn dead_letter(args: &DeadLetterArgs) -> Result<ExitCode, String> {
    let uri = args.checkpoint.as_deref().ok_or("give the pipeline's checkpoint store: --checkpoint URI")?;
    if let DeadLetterAction::Purge { yes: false } = args.action {
        return Err("purge discards the refused documents for good: confirm with --yes".to_owned());
    }
    let s3 = taxi_io::store::S3Settings {
        endpoint_url: args.s3_endpoint_url.clone(),
        force_path_style: args.s3_force_path_style,
        region: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("failed to start the runtime: {e}"))?;
    runtime.block_on(async {
        let store = taxi_io::store::CheckpointStore::from_uri(uri, &s3, 0).await.map_err(|e| e.to_string())?;
        let gauge =
            prometheus::IntGauge::new("taxi_sink_dead_letters", "Dead letters listed").map_err(|e| e.to_string())?;
        let letters = taxi_io::sink::dead_letter::DeadLetterStore::new(store, &args.pipeline, gauge);
        let keys = letters.list().await.map_err(|e| e.to_string())?;
        let mut documents = 0;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for key in &keys {
            let stored = letters.read(key).await.map_err(|e| e.to_string())?;
            documents += stored.len();
            match args.action {
                DeadLetterAction::List => {
                    for letter in &stored {
                        serde_json::to_writer(&mut out, letter).map_err(|e| e.to_string())?;
                        out.write_all(b"\n").map_err(|e| e.to_string())?;
                    }
                }
                DeadLetterAction::Purge { .. } => letters.delete(key).await.map_err(|e| e.to_string())?,
            }
        }
        out.flush().map_err(|e| e.to_string())?;
        let verb = if matches!(args.action, DeadLetterAction::List) { "listed" } else { "purged" };
        eprintln!("{verb} {documents} dead letters in {} objects", keys.len());
        Ok(ExitCode::SUCCESS)
    })
}

fn results(args: &ResultsArgs) -> Result<ExitCode, String> {
    let engine = args.engine.config();
    let merged = match (&args.sink, &args.opensearch_url) {
        (_, Some(url)) => {
            let pipeline = args.pipeline.as_deref().ok_or("--opensearch needs --pipeline")?;
            let settings = args.opensearch.settings(url)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("failed to start the runtime: {e}"))?;
            runtime
                .block_on(taxi_io::sink::opensearch::merged_results(&settings, pipeline, &engine))
                .map_err(|e| e.to_string())?
        }
        (Some(sink), None) => {
            let path = sink.strip_prefix("file://").unwrap_or(sink);
            let docs = read_documents(Path::new(path)).map_err(|e| e.to_string())?;
            let docs = docs.into_iter().filter(|d| args.pipeline.as_ref().is_none_or(|p| &d.pipeline == p));
            merge_documents(&engine, docs)
        }
        (None, None) => return Err("give --sink file://… or --opensearch URL".to_owned()),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for r in &merged {
        serde_json::to_writer(&mut out, r).map_err(|e| e.to_string())?;
        out.write_all(b"\n").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn replay(args: &ReplayArgs) -> Result<ExitCode, String> {
    if !args.input.exists() {
        return Err(format!("input file {} does not exist", args.input.display()));
    }
    let mut options = ReplayOptions::new(&args.input, &args.kinesis.stream);
    options.speedup = args.speedup;
    options.aggregate = args.aggregate;
    options.watermark_interval = args.watermark_interval;
    options.max_in_flight = args.max_in_flight;
    options.create_stream = args.create_stream;
    options.validate().map_err(|e| e.to_string())?;
    let interactive = std::io::stderr().is_terminal();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("failed to start the runtime: {e}"))?;
    let summary = runtime.block_on(async {
        let kinesis = Arc::new(args.kinesis.connect().await);
        let progress = Arc::new(ReplayProgress::new());
        let ticker = (args.progress || interactive).then(|| {
            let progress = progress.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    let p = progress.snapshot();
                    let rate = p.acknowledged as f64 / started.elapsed().as_secs_f64().max(0.001);
                    let at = p.event_time.map_or_else(|| "-".to_owned(), format_timestamp);
                    let line = format!(
                        "{} sent  {} stored  {rate:>8.0}/s  event time {at}  retried {}  throttled {}",
                        p.sent, p.acknowledged, p.retried, p.throttled
                    );
                    if interactive { eprint!("\r\x1b[2K{line}") } else { eprintln!("{line}") }
                }
            })
        });
        let summary = taxi_worker::replay::replay(kinesis, &options, &progress).await;
        if let Some(t) = ticker {
            t.abort();
            if interactive {
                eprint!("\r\x1b[2K");
            }
        }
        summary.map_err(|e| e.to_string())
    })?;
    println!(
        "replayed {} trips ({} invalid lines, {} watermarks) into {} in {:.1} s — {:.0} records/s; retried {}, throttled calls {}",
        summary.trips,
        summary.invalid,
        summary.watermarks_sent,
        args.kinesis.stream,
        summary.elapsed.as_secs_f64(),
        summary.records_sent as f64 / summary.elapsed.as_secs_f64().max(0.001),
        summary.retried_entries,
        summary.throttled_calls
    );
    if let Some(path) = &args.summary {
        let json = serde_json::to_vec_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("failed to write summary to {}: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

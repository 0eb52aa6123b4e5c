//! `taxi-worker run`: the pod command. The pipeline settings come from `--config` (the worker
//! ConfigMap the operator renders) or from the pipeline flags, which build the same
//! [`WorkerSettings`]; the per-process flags (address, assignment, ordinal) apply either way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use taxi_core::duration;
use taxi_core::settings::{
    ARCHIVE_FILE_AGE_MS_RANGE, ARCHIVE_FILE_BYTES_RANGE, ArchiveSettings, CheckpointSettings, ConsumerType,
    DEFAULT_ARCHIVE_MAX_FILE_AGE, DEFAULT_ARCHIVE_MAX_FILE_BYTES, DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_DISCOVERY_INTERVAL, DEFAULT_RETAIN, DEFAULT_START_POSITION, DEFAULT_TAKEOVER_TIMEOUT, SinkAuthSetting,
    SinkAuthType, SinkSettings, StreamSettings, WorkerSettings,
};
use taxi_core::start_position;
use taxi_io::kinesis::api::{KinesisEndpoint, SdkKinesis};
use taxi_io::kinesis::reader::PollingConfig;
use taxi_io::sink::opensearch::OpenSearchSettings;
use taxi_io::store::S3Settings;

use super::CommandError;
use super::common::{EngineArgs, OpenSearchArgs, millis_u64, runtime};
use crate::handoff::{AssignmentSource, pod_ordinal};
use crate::run::{RunOptions, WorkerState, run_worker};

/// `run`: the pipeline settings come either from `--config` (the operator's worker ConfigMap) or
/// from the pipeline flags; the per-process flags apply either way.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Read the pipeline settings from this JSON file (the `worker.json` the operator renders)
    /// instead of the pipeline flags below, which then must not be given.
    #[arg(long, env = "TAXI_WORKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The pipeline settings as flags, when there is no --config.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Exit after every shard has been caught up and quiet this long, writing open windows as
    /// not-final documents (a later run completes them: they stay in the checkpoints).
    #[arg(long, value_parser = duration::parse)]
    pub stop_when_idle: Option<Duration>,
    /// Records per GetRecords call (1–10 000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub max_records: i32,
    /// Address of /healthz, /readyz, /metrics and /status.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Which shards this worker owns: all, file:PATH (an assignment document, read
    /// every 250 ms) or configmap (the operator's ConfigMap PIPELINE-assignment, watched).
    #[arg(long, default_value = "all", env = "TAXI_ASSIGNMENT")]
    pub assignment: AssignmentSource,
    /// This worker's ordinal in the assignment. Required with file:PATH; with configmap it
    /// defaults to the numeric suffix of the pod name (env POD_NAME, else HOSTNAME).
    #[arg(long)]
    pub ordinal: Option<u32>,
    /// How long a new owner waits for the previous owner to release a shard before taking it over.
    #[arg(long, default_value = duration::format(DEFAULT_TAKEOVER_TIMEOUT), value_parser = duration::parse)]
    pub takeover_timeout: Duration,
}

/// The pipeline flags of `run`: another way to fill [`WorkerSettings`].
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Pipeline name: used in document ids and checkpoint keys.
    #[arg(long, env = "TAXI_PIPELINE", required_unless_present = "config", conflicts_with = "config")]
    pub pipeline: Option<String>,
    /// The pipeline's Kubernetes namespace, part of its identity: checkpoints and document ids
    /// are keyed `<namespace>/<pipeline>` (set by the operator; leave it out elsewhere).
    #[arg(long, conflicts_with = "config")]
    pub namespace: Option<String>,
    /// Kinesis stream name.
    #[arg(long, env = "TAXI_STREAM", required_unless_present = "config", conflicts_with = "config")]
    pub stream: Option<String>,
    /// AWS region (default: from the AWS configuration chain).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Kinesis endpoint, e.g. a local emulator (http://127.0.0.1:4567).
    #[arg(long, env = "TAXI_KINESIS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Polling (GetRecords) or enhanced fan-out.
    #[arg(long, value_enum, default_value_t = ConsumerType::default())]
    pub consumer: ConsumerType,
    /// Name of the enhanced fan-out consumer (default: NAMESPACE.PIPELINE, or taxi-PIPELINE outside Kubernetes).
    #[arg(long)]
    pub efo_consumer_name: Option<String>,
    /// Where a shard with nothing read yet starts: trim-horizon, latest, or an ISO-8601 timestamp.
    /// Fixed at the shard's first claim; shards created by a reshard start at trim-horizon.
    #[arg(long, default_value = DEFAULT_START_POSITION, value_parser = validate_start_position)]
    pub start_position: String,
    /// Checkpoint store: s3://bucket/prefix, file:///dir or a directory.
    #[arg(long, env = "TAXI_CHECKPOINT", required_unless_present = "config", conflicts_with = "config")]
    pub checkpoint: Option<String>,
    /// S3 endpoint for S3-compatible servers (default: AWS).
    #[arg(long, env = "TAXI_S3_ENDPOINT_URL")]
    pub s3_endpoint_url: Option<String>,
    /// Path-style S3 addressing (http://host/bucket/key), as most S3-compatible servers need.
    #[arg(long, env = "TAXI_S3_FORCE_PATH_STYLE")]
    pub s3_force_path_style: bool,
    /// Previous checkpoints kept per shard under history/ for inspection (0 = none).
    #[arg(long, default_value_t = DEFAULT_RETAIN)]
    pub checkpoint_retain: usize,
    /// Time between checkpoints of a shard.
    #[arg(long, default_value = duration::format(DEFAULT_CHECKPOINT_INTERVAL), value_parser = duration::parse)]
    pub checkpoint_interval: Duration,
    /// Where per-shard partial documents go: an OpenSearch URL (https://host:port) or
    /// file:///path/partials.jsonl.
    #[arg(long, env = "TAXI_SINK", required_unless_present = "config", conflicts_with = "config")]
    pub sink: Option<String>,
    /// How to reach OpenSearch.
    #[command(flatten)]
    pub opensearch: OpenSearchArgs,
    /// Time between ListShards calls that discover new shards.
    #[arg(long, default_value = duration::format(DEFAULT_DISCOVERY_INTERVAL), value_parser = duration::parse)]
    pub shard_discovery_interval: Duration,
    /// The analyses and event time.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Archive every trip read as Parquet files under s3://bucket/prefix/dt=YYYY-MM-DD/hour=HH/ (the
    /// hour of the trip's event time, its dropoff, in UTC), with the S3 endpoint and addressing of the
    /// checkpoints (--s3-endpoint-url, --s3-force-path-style). Default: no archive.
    #[arg(long, env = "TAXI_ARCHIVE", conflicts_with = "config", value_name = "S3_URI")]
    pub archive: Option<String>,
    /// An archive file closes at this many bytes (65536 to 1073741824).
    #[arg(long, env = "TAXI_ARCHIVE_MAX_FILE_BYTES", requires = "archive", default_value_t = DEFAULT_ARCHIVE_MAX_FILE_BYTES,
          value_parser = clap::value_parser!(u64).range(*ARCHIVE_FILE_BYTES_RANGE.start()..=*ARCHIVE_FILE_BYTES_RANGE.end()))]
    pub archive_max_file_bytes: u64,
    /// An archive file closes once it has been open this long (1s to 1h).
    #[arg(long, env = "TAXI_ARCHIVE_MAX_FILE_AGE", requires = "archive",
          default_value = duration::format(DEFAULT_ARCHIVE_MAX_FILE_AGE), value_parser = archive_file_age)]
    pub archive_max_file_age: Duration,
}

impl RunArgs {
    /// The pipeline settings, from `--config` or from the flags.
    pub fn settings(&self) -> Result<WorkerSettings, CommandError> {
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
    /// The pipeline settings these flags describe; fails on a missing required flag.
    pub fn settings(&self) -> Result<WorkerSettings, CommandError> {
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
                consumer: self.consumer,
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
                    SinkAuthType::Sigv4 => SinkAuthSetting {
                        kind: SinkAuthType::Sigv4,
                        service: Some(os.sigv4_service),
                        region: os.sigv4_region.clone(),
                    },
                    kind => SinkAuthSetting::of(kind),
                },
                ca_cert: os.sink_ca_cert.clone(),
                bulk_max_docs: os.bulk_max_docs,
                bulk_max_bytes: os.bulk_max_bytes,
                bulk_max_delay_ms: millis_u64(os.bulk_max_delay),
            },
            engine: self.engine.config(),
            archive: self.archive.as_ref().map(|uri| ArchiveSettings {
                uri: uri.clone(),
                max_file_bytes: self.archive_max_file_bytes,
                max_file_age_ms: millis_u64(self.archive_max_file_age),
            }),
        })
    }
}

fn validate_start_position(s: &str) -> Result<String, String> {
    start_position::parse(s).map(|_| s.to_owned())
}

/// A Go duration within the bounds of [`ArchiveSettings::max_file_age_ms`].
fn archive_file_age(s: &str) -> Result<Duration, String> {
    let age = duration::parse(s).map_err(|e| e.to_string())?;
    let (lo, hi) = (*ARCHIVE_FILE_AGE_MS_RANGE.start(), *ARCHIVE_FILE_AGE_MS_RANGE.end());
    if age < Duration::from_millis(lo) || age > Duration::from_millis(hi) {
        let (lo, hi) = (duration::format(Duration::from_millis(lo)), duration::format(Duration::from_millis(hi)));
        return Err(format!("must be between {lo} and {hi}"));
    }
    Ok(age)
}

/// `taxi-worker run`: reads the assigned shards until told to stop (or idle, with --stop-when-idle).
pub fn run(args: RunArgs) -> Result<ExitCode, CommandError> {
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
        efo_consumer: settings.efo_consumer_name(),
        archive: settings.archive.clone(),
    };
    let endpoint =
        KinesisEndpoint { region: settings.stream.region.clone(), endpoint_url: settings.stream.endpoint_url.clone() };
    let runtime = runtime(true)?;
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use taxi_core::settings::SigV4Service;

    use super::*;
    use crate::cli::{Cli, Command};

    fn run_args(flags: &[&str]) -> RunArgs {
        let argv = ["taxi-worker", "run"].iter().chain(flags);
        match Cli::try_parse_from(argv).expect("valid flags").command {
            Command::Run(args) => *args,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn the_flags_left_out_take_the_same_defaults_as_a_minimal_settings_document() {
        let args = run_args(&[
            "--pipeline=nyc",
            "--stream=taxi-trips",
            "--checkpoint=s3://bucket/checkpoints",
            "--sink=https://search.example.com",
        ]);
        let mut expected = WorkerSettings::from_json(
            br#"{"pipeline": "nyc", "stream": {"name": "taxi-trips"},
                "checkpoint": {"uri": "s3://bucket/checkpoints"}, "sink": {"url": "https://search.example.com"}}"#,
        )
        .expect("minimal settings");
        // The one flag the environment may fill here.
        expected.stream.region = std::env::var("AWS_REGION").ok();
        assert_eq!(args.settings().expect("settings"), expected);
        assert_eq!(args.takeover_timeout, DEFAULT_TAKEOVER_TIMEOUT);
    }

    #[test]
    fn durations_take_the_one_grammar_and_enums_their_published_names() {
        let args = run_args(&[
            "--pipeline=nyc",
            "--stream=taxi-trips",
            "--checkpoint=/tmp/checkpoints",
            "--sink=https://search.example.com",
            "--checkpoint-interval=1.5s",
            "--takeover-timeout=1m30s",
            "--consumer=efo",
            "--sink-auth=sigv4",
            "--sigv4-service=aoss",
        ]);
        let settings = args.settings().expect("settings");
        assert_eq!(settings.checkpoint.interval_ms, 1500);
        assert_eq!(args.takeover_timeout, Duration::from_secs(90));
        assert_eq!(settings.stream.consumer, ConsumerType::Efo);
        assert_eq!(
            (settings.sink.auth.kind, settings.sink.auth.service),
            (SinkAuthType::Sigv4, Some(SigV4Service::Aoss))
        );

        let argv = ["taxi-worker", "run", "--pipeline=p", "--stream=s", "--checkpoint=c", "--sink=u"];
        let day = Cli::try_parse_from(argv.iter().chain(&["--checkpoint-interval=1d"])).expect_err("no day unit");
        assert!(day.to_string().contains("unknown unit \"d\""), "{day}");
    }

    const PIPELINE_FLAGS: [&str; 4] = [
        "--pipeline=nyc",
        "--stream=taxi-trips",
        "--checkpoint=s3://bucket/checkpoints",
        "--sink=https://search.example.com",
    ];

    fn parse(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = ["taxi-worker", "run"].into_iter().chain(extra.iter().copied());
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Run(args) => *args,
            other => panic!("parsed {other:?}"),
        })
    }

    #[test]
    fn the_archive_flags_fill_the_archive_settings() {
        let flags = [&PIPELINE_FLAGS[..], &["--archive=s3://archive-bucket/trips"]].concat();
        let settings = run_args(&flags).settings().expect("settings");
        assert_eq!(settings.archive, Some(ArchiveSettings::at("s3://archive-bucket/trips")));

        let flags = [
            &PIPELINE_FLAGS[..],
            &[
                "--archive=s3://archive-bucket/trips",
                "--archive-max-file-bytes=1048576",
                "--archive-max-file-age=1m30s",
            ],
        ]
        .concat();
        let settings = run_args(&flags).settings().expect("settings");
        let expected = ArchiveSettings {
            uri: "s3://archive-bucket/trips".to_owned(),
            max_file_bytes: 1_048_576,
            max_file_age_ms: 90_000,
        };
        assert_eq!(settings.archive, Some(expected));
    }

    #[test]
    fn the_archive_flags_refuse_sizes_and_ages_beyond_their_bounds() {
        let archive = "--archive=s3://archive-bucket/trips";
        for ok in ["--archive-max-file-bytes=65536", "--archive-max-file-bytes=1073741824"] {
            assert!(parse(&[&PIPELINE_FLAGS[..], &[archive, ok]].concat()).is_ok(), "{ok}");
        }
        for ok in ["--archive-max-file-age=1s", "--archive-max-file-age=1h"] {
            assert!(parse(&[&PIPELINE_FLAGS[..], &[archive, ok]].concat()).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("--archive-max-file-bytes=65535", "65536..=1073741824"),
            ("--archive-max-file-bytes=1073741825", "65536..=1073741824"),
            ("--archive-max-file-bytes=64Mi", "invalid digit"),
            ("--archive-max-file-age=999ms", "must be between 1s and 1h"),
            ("--archive-max-file-age=1h0m1s", "must be between 1s and 1h"),
            ("--archive-max-file-age=5 minutes", "unknown unit"),
        ] {
            let error = parse(&[&PIPELINE_FLAGS[..], &[archive, bad]].concat()).expect_err(bad);
            assert!(error.to_string().contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn the_archive_file_flags_need_an_archive() {
        for flag in ["--archive-max-file-bytes=1048576", "--archive-max-file-age=1m"] {
            let error = parse(&[&PIPELINE_FLAGS[..], &[flag]].concat()).expect_err(flag);
            assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{flag}: {error}");
        }
    }

    #[test]
    fn with_a_config_file_the_archive_comes_from_the_file() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("worker.json");
        let document = r#"{"pipeline": "nyc", "stream": {"name": "taxi-trips"},
            "checkpoint": {"uri": "s3://bucket/checkpoints"}, "sink": {"url": "https://search.example.com"},
            "archive": {"uri": "s3://archive-bucket/trips", "max_file_age_ms": 60000}}"#;
        std::fs::write(&path, document).expect("write the settings");
        let config = format!("--config={}", path.display());
        let settings = parse(&[config.as_str()]).expect("flags").settings().expect("settings");
        let expected = ArchiveSettings { max_file_age_ms: 60_000, ..ArchiveSettings::at("s3://archive-bucket/trips") };
        assert_eq!(settings.archive, Some(expected));

        let error = parse(&[config.as_str(), "--archive=s3://other/trips"]).expect_err("both");
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict, "{error}");
    }

    #[test]
    fn an_archive_uri_without_a_bucket_is_refused_by_the_settings() {
        let flags = [&PIPELINE_FLAGS[..], &["--archive=s3:///trips"]].concat();
        let error = run_args(&flags).settings().expect_err("no bucket");
        assert!(error.contains("archive.uri") && error.contains("names no bucket"), "{error}");
    }
}

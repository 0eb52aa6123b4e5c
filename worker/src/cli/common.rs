//! Flag groups shared by several commands: which Kinesis stream, how to reach OpenSearch, and the
//! engine's analysis and event-time settings. Every default comes from the core's one definition
//! ([`taxi_core::settings`], [`EngineConfig::default`]), and durations use the one grammar of
//! [`taxi_core::duration`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use taxi_core::config::{
    AirportTripsConfig, EngineConfig, EventTimeConfig, HotSpotConfig, WatermarkStrategy, to_millis,
};
use taxi_core::duration;
use taxi_core::geo::BoundingBox;
use taxi_core::settings::{
    DEFAULT_BULK_MAX_BYTES, DEFAULT_BULK_MAX_DELAY, DEFAULT_BULK_MAX_DOCS, DEFAULT_INDEX_PREFIX, SigV4Service,
    SinkAuthType, check_sink_url,
};
use taxi_io::kinesis::api::{KinesisEndpoint, SdkKinesis};
use taxi_io::sink::opensearch::{BulkSettings, OpenSearchAuth, OpenSearchSettings};

use super::CommandError;

/// Which stream, and how to reach Kinesis.
#[derive(Debug, Args)]
pub struct KinesisArgs {
    /// Kinesis stream name.
    #[arg(long, env = "TAXI_STREAM")]
    pub stream: String,
    /// AWS region (default: from the AWS configuration chain).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Kinesis endpoint, e.g. a local emulator (http://127.0.0.1:4567).
    #[arg(long, env = "TAXI_KINESIS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
}

impl KinesisArgs {
    /// Connects with credentials from the default AWS chain.
    pub async fn connect(&self) -> SdkKinesis {
        SdkKinesis::connect(&KinesisEndpoint { region: self.region.clone(), endpoint_url: self.endpoint_url.clone() })
            .await
    }
}

/// How the worker talks to OpenSearch.
#[derive(Debug, Args)]
pub struct OpenSearchArgs {
    /// OpenSearch authentication.
    #[arg(long, value_enum, default_value_t = SinkAuthType::default(), env = "TAXI_SINK_AUTH")]
    pub sink_auth: SinkAuthType,
    /// User name for --sink-auth basic.
    #[arg(long, env = "TAXI_SINK_USERNAME", hide_env_values = true)]
    pub sink_username: Option<String>,
    /// Password for --sink-auth basic (from the environment only, so it never shows in `ps`).
    #[arg(skip = std::env::var("TAXI_SINK_PASSWORD").ok())]
    pub sink_password: Option<String>,
    /// SigV4 service: es (OpenSearch Service) or aoss (OpenSearch Serverless).
    #[arg(long, value_enum, default_value_t = SigV4Service::default())]
    pub sigv4_service: SigV4Service,
    /// SigV4 region (default: from the AWS configuration chain).
    #[arg(long)]
    pub sigv4_region: Option<String>,
    /// Index name prefix: documents go to PREFIX-hot-spots and PREFIX-airport-trips.
    #[arg(long, default_value = DEFAULT_INDEX_PREFIX, env = "TAXI_INDEX_PREFIX")]
    pub index_prefix: String,
    /// PEM file of CA certificates to trust for https:// (besides the system roots).
    #[arg(long, env = "TAXI_SINK_CA_CERT")]
    pub sink_ca_cert: Option<PathBuf>,
    /// A bulk request carries at most this many documents.
    #[arg(long, default_value_t = DEFAULT_BULK_MAX_DOCS)]
    pub bulk_max_docs: usize,
    /// A bulk request carries at most this many bytes.
    #[arg(long, default_value_t = DEFAULT_BULK_MAX_BYTES)]
    pub bulk_max_bytes: usize,
    /// A document waits at most this long for its bulk request.
    #[arg(long, default_value = duration::format(DEFAULT_BULK_MAX_DELAY), value_parser = duration::parse)]
    pub bulk_max_delay: Duration,
}

impl OpenSearchArgs {
    /// The sink's settings for `url`, with the basic-auth credentials from the flags and environment
    /// (never from `url`, which is refused when it carries any).
    pub fn settings(&self, url: &str) -> Result<OpenSearchSettings, CommandError> {
        check_sink_url(url).map_err(|e| e.to_string())?;
        let auth = match self.sink_auth {
            SinkAuthType::None => OpenSearchAuth::None,
            SinkAuthType::Basic => OpenSearchAuth::Basic {
                username: self.sink_username.clone().ok_or("--sink-auth basic needs TAXI_SINK_USERNAME")?,
                password: self.sink_password.clone().ok_or("--sink-auth basic needs TAXI_SINK_PASSWORD")?,
            },
            SinkAuthType::Sigv4 => {
                OpenSearchAuth::SigV4 { service: self.sigv4_service, region: self.sigv4_region.clone() }
            }
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

/// Analysis and event-time flags, shared by every command that runs the engine.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Tumbling window size of both analyses (e.g. 10m, 1h, 30s).
    #[arg(long, default_value = duration::format_millis(EngineConfig::default().hot_spots.window_ms),
          value_parser = duration::parse)]
    pub window: Duration,
    /// Geohash length of a hot-spot cell (1–12).
    #[arg(long, default_value_t = EngineConfig::default().hot_spots.geohash_precision,
          value_parser = clap::value_parser!(u8).range(1..=12))]
    pub geohash_precision: u8,
    /// A merged hot spot is reported from this many pickups in a window and cell.
    #[arg(long, default_value_t = EngineConfig::default().hot_spots.min_pickups)]
    pub min_pickups: u64,
    /// A merged airport result is reported from this many trips in a window, cell and airport.
    #[arg(long, default_value_t = EngineConfig::default().airport_trips.min_trips)]
    pub min_airport_trips: u64,
    /// How watermarks advance: bounded (max event time − max out-of-orderness) or punctuated
    /// (watermark events only).
    #[arg(long, value_enum, default_value_t = EngineConfig::default().event_time.watermark)]
    pub watermark: WatermarkStrategy,
    /// Disorder the bounded watermark tolerates.
    #[arg(long, default_value = duration::format_millis(EngineConfig::default().event_time.max_out_of_orderness_ms),
          value_parser = duration::parse)]
    pub max_out_of_orderness: Duration,
    /// How long after its end a window still accepts trips.
    #[arg(long, default_value = duration::format_millis(EngineConfig::default().event_time.allowed_lateness_ms),
          value_parser = duration::parse)]
    pub allowed_lateness: Duration,
    /// A shard without records for this long stops holding merged windows open (0 = never idle).
    #[arg(long, default_value = duration::format_millis(EngineConfig::default().event_time.idle_timeout_ms),
          value_parser = duration::parse)]
    pub idle_timeout: Duration,
    /// A record dated more than this past the shard's latest event time is counted invalid as
    /// implausible_time and never moves the watermark (0 = no limit).
    #[arg(long, default_value = duration::format_millis(EngineConfig::default().event_time.max_time_jump_ms),
          value_parser = duration::parse)]
    pub max_time_jump: Duration,
}

impl EngineArgs {
    /// The engine configuration these flags describe, over the NYC region and the default airports.
    pub fn config(&self) -> EngineConfig {
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

/// A Tokio runtime for a command: `multi_thread` for the long-running ones, one thread otherwise.
pub fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, CommandError> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| format!("failed to start the runtime: {e}"))
}

/// A duration in whole milliseconds, saturating.
pub fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

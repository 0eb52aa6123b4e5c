//! The `TaxiPipeline` custom resource: group `taxipipeline.io`, version `v1alpha1`.
//!
//! The Rust types below are the single definition of the API. `taxi-operator crd` prints the
//! CustomResourceDefinition generated from them ([`crd_yaml`]) and `crds/taxipipelines.yaml` holds
//! that output; a test fails when the file is stale.
//!
//! Every field's `///` comment becomes its `kubectl explain` text, so each says what the field does,
//! its unit and its default. Defaults live in `#[serde(default = ...)]`, so the schema carries them
//! and the API server fills them in. Checks that span fields or need parsing (durations, URIs,
//! timestamps) are CEL rules (`x-kubernetes-validations`) evaluated by the API server; simple ranges
//! and patterns are plain OpenAPI keywords.
//!
//! Durations are strings in Go's duration syntax (`500ms`, `10s`, `1m`, `1h30m`), the syntax CEL's
//! `duration()` parses on the API server; [`taxi_core::duration`] reads them the same way in Rust
//! (and the worker's flags use it too).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use taxi_core::config::EngineConfig;
pub use taxi_core::config::WatermarkStrategy;
use taxi_core::geo::{BoundingBox, Geofence};
pub use taxi_core::settings::{ConsumerType, SigV4Service, SinkAuthType};
use taxi_core::{duration, settings};

/// API group of the TaxiPipeline resource.
pub const GROUP: &str = "taxipipeline.io";
/// API version of the TaxiPipeline resource.
pub const VERSION: &str = "v1alpha1";
/// Kind of the TaxiPipeline resource.
pub const KIND: &str = "TaxiPipeline";

/// `apiVersion` of TaxiPipeline objects, `taxipipeline.io/v1alpha1` (for owner references).
pub fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

/// Condition type: the pipeline's workers run, own every open shard and are ready.
pub const READY: &str = "Ready";
/// Condition type: the operator is rolling out a change (spec, image, assignment).
pub const PROGRESSING: &str = "Progressing";
/// Condition type: the pipeline runs but something is wrong (lag, failing checkpoints, sink errors).
pub const DEGRADED: &str = "Degraded";
/// Condition type: the number of worker replicas is being changed.
pub const SCALING: &str = "Scaling";
/// Condition type: the Kinesis stream's shard count is being changed.
pub const STREAM_RESHARDING: &str = "StreamResharding";

// CEL rules shared by several fields. `self` is the field's value.
/// A Go duration greater than zero.
const POSITIVE_DURATION: &str = "duration(self) > duration('0s')";
/// A Go duration of zero or more.
const NON_NEGATIVE_DURATION: &str = "duration(self) >= duration('0s')";
/// A whole number of seconds that divides a day, so windows align to midnight UTC every day.
/// Non-positive windows pass here: [`POSITIVE_DURATION`] reports them (and `%` by zero is an error).
const DIVIDES_DAY: &str = "duration(self) <= duration('0s') || \
     (duration(self) == duration(string(duration(self).getSeconds()) + 's') && \
     86400 % duration(self).getSeconds() == 0)";
/// A bounding box with its minimums strictly below its maximums.
const BOX_ORDERED: &str = "self.minLat < self.maxLat && self.minLon < self.maxLon";
/// The event-time settings a window's content depends on did not change.
const EVENT_TIME_UNCHANGED: &str = "self.watermark == oldSelf.watermark \
    && self.maxOutOfOrderness == oldSelf.maxOutOfOrderness && self.allowedLateness == oldSelf.allowedLateness";
/// Why the analysis settings cannot change, and what to do instead.
const SETTINGS_IMMUTABLE: &str = "analyses and eventTime (watermark, maxOutOfOrderness, allowedLateness) are \
    immutable: the checkpoints hold windows computed under them. To change them, create a new TaxiPipeline with \
    the new settings beside this one, on the same stream, and delete this one once the new one has caught up";
/// Go's duration syntax without a sign (the sign is never useful here).
const DURATION_PATTERN: &str = r"^(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$";

/// Desired state of a TaxiPipeline: a Kinesis stream of taxi trips analysed by a fleet of workers
/// into an OpenSearch index, with checkpoints in S3.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[expect(clippy::duplicated_attributes, reason = "printer columns repeat `type_ = \"integer\"` and the like")]
#[kube(
    group = "taxipipeline.io",
    version = "v1alpha1",
    kind = "TaxiPipeline",
    plural = "taxipipelines",
    shortname = "tp",
    namespaced,
    status = "TaxiPipelineStatus",
    derive = "PartialEq",
    doc = "A streaming pipeline that reads NYC taxi trips from a Kinesis stream, finds pickup hot spots \
           and airport trip durations in event-time windows, and writes the results to OpenSearch.",
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Shards",
        type_ = "integer",
        json_path = ".status.openShards",
        description = "Open shards of the Kinesis stream"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas", description = "Worker pods"),
    printcolumn(
        name = "Ready-Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready worker pods"
    ),
    printcolumn(
        name = "Max-Lag-ms",
        type_ = "integer",
        json_path = ".status.maxLagMillis",
        description = "Largest millisBehindLatest over the open shards"
    ),
    printcolumn(
        name = "Watermark",
        type_ = "string",
        json_path = ".status.watermark",
        description = "Lowest shard watermark (event time)"
    ),
    printcolumn(
        name = "Last-Checkpoint",
        type_ = "date",
        json_path = ".status.lastCheckpointTime",
        description = "When the last shard checkpoint was written"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "The Ready condition"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TaxiPipelineSpec {
    /// The Kinesis data stream the trips and watermark events are read from.
    pub stream: StreamSpec,
    /// Number of worker pods (StatefulSet replicas). Default 1. 0 pauses the pipeline: the workers
    /// write a final checkpoint and stop. While `autoscaling.enabled` is true it is the floor: the
    /// autoscaler never runs fewer workers. The scale subresource (`kubectl scale`) sets this field.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 0))]
    pub parallelism: i32,
    /// Automatic scaling of the worker pods from the open shard count and the consumer lag.
    /// Disabled by default.
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,
    /// Event time: how watermarks advance and how late trips are handled.
    /// `watermark`, `maxOutOfOrderness` and `allowedLateness` decide what a window holds, so they
    /// are immutable, like `analyses`; `idleTimeout` and `maxTimeJump` may change.
    #[serde(default)]
    #[x_kube(validation = Rule::new(EVENT_TIME_UNCHANGED).message(SETTINGS_IMMUTABLE))]
    pub event_time: EventTimeSpec,
    /// What is computed: pickup hot spots and airport trip durations, within a region. Immutable:
    /// the checkpoints hold windows computed under these settings. To change them, run a new
    /// TaxiPipeline with the new analyses beside this one, on the same stream.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message(SETTINGS_IMMUTABLE))]
    pub analyses: AnalysesSpec,
    /// Where and how often the workers checkpoint their shards.
    pub checkpoint: CheckpointSpec,
    /// Where the results go.
    pub sink: SinkSpec,
    /// How the worker pods run: image, resources, scheduling, service account. All optional.
    #[serde(default)]
    pub worker: WorkerSpec,
}

/// The Kinesis data stream.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamSpec {
    /// Name of the Kinesis data stream (1 to 128 characters: letters, digits, `_`, `-`, `.`).
    /// Required and immutable: a pipeline's checkpoints only make sense for its own stream.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[a-zA-Z0-9_.-]+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("stream.name is immutable"))]
    pub name: String,
    /// AWS region of the stream, like `us-east-1`. Default: the region the pods' AWS SDK
    /// configuration resolves (environment, instance metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Kinesis endpoint URL, for emulators such as kinesis-mock or LocalStack
    /// (`http://kinesis-mock:4567`). Default: the AWS endpoint of the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Desired number of open shards, 1 to 10000. Default 4. Only acted on when `manage` is true:
    /// then the operator creates the stream with this many shards and reshards when it changes.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = 10000))]
    pub shards: i32,
    /// Whether the operator owns the stream: creates it when missing and reshards it
    /// (UpdateShardCount) when `shards` changes. Default false: the stream must exist and its shard
    /// count is left alone.
    #[serde(default)]
    pub manage: bool,
    /// Where a shard with nothing read yet starts: `trim-horizon` (default, the oldest record
    /// kept), `latest` (records that arrive after a worker first claims the shard) or an RFC 3339
    /// timestamp such as `2016-01-01T00:00:00Z` (records that arrived at or after it). The start
    /// is fixed in the shard's checkpoint at its first claim, so a restart never skips a record;
    /// shards created by a reshard always start at their oldest record.
    #[serde(default = "default_start_position")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(
        "self == 'trim-horizon' || self == 'latest' || \
         (self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$') \
         && timestamp(self) >= timestamp('1970-01-01T00:00:00Z'))"
    ).message("stream.startPosition must be trim-horizon, latest or an RFC 3339 timestamp like 2016-01-01T00:00:00Z"))]
    pub start_position: String,
    /// How records are read: `polling` (default, GetRecords; shares the shard's 2 MB/s read limit
    /// with other consumers) or `efo` (enhanced fan-out, SubscribeToShard; a dedicated 2 MB/s pipe
    /// per shard, billed per consumer-shard hour).
    #[serde(default)]
    pub consumer: ConsumerType,
    /// Name of the enhanced fan-out consumer registered on the stream when `consumer` is `efo`.
    /// Default: the pipeline's namespace and name, `<namespace>.<name>` (a namespace holds no dot,
    /// so two pipelines never share one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efo_consumer_name: Option<String>,
}

/// Automatic scaling of the worker pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("autoscaling.minReplicas must not be greater than autoscaling.maxReplicas"))]
pub struct AutoscalingSpec {
    /// Whether the operator sets the number of workers itself. Default false: `parallelism`
    /// decides. When true the operator aims at `ceil(open shards / targetShardsPerReplica)` workers;
    /// when the worst shard lag stays above `maxLag` for `scaleUpStabilization` it scales to the
    /// workers that drain the backlog within `maxLag` (sized from the measured throughput), and it
    /// scales down only after the lag stayed low for `scaleDownStabilization`. Always within
    /// `minReplicas`..`maxReplicas`, at least `parallelism`, at most the open shards.
    #[serde(default)]
    pub enabled: bool,
    /// Fewest worker pods while autoscaling, at least 1. Default 1.
    #[serde(default = "default_min_replicas")]
    #[x_kube(validation = Rule::new("self >= 1").message("autoscaling.minReplicas must be at least 1"))]
    pub min_replicas: i32,
    /// Most worker pods while autoscaling. Default 10. More workers than open shards sit idle.
    #[serde(default = "default_max_replicas")]
    pub max_replicas: i32,
    /// Open shards one worker should own, at least 1. Default 2.
    #[serde(default = "default_target_shards_per_replica")]
    #[x_kube(validation = Rule::new("self >= 1").message("autoscaling.targetShardsPerReplica must be at least 1"))]
    pub target_shards_per_replica: i32,
    /// Consumer lag (millisBehindLatest, worst shard) the autoscaler keeps the pipeline under, as a
    /// Go duration. Default `1m`. Lag above it for `scaleUpStabilization` scales up.
    #[serde(default = "default_max_lag")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message("autoscaling.maxLag must be a positive duration"))]
    pub max_lag: String,
    /// How long a higher replica count must be wanted continuously before scaling up, as a Go
    /// duration. Default `1m`. `0s` scales up at once.
    #[serde(default = "default_scale_up_stabilization")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(NON_NEGATIVE_DURATION)
        .message("autoscaling.scaleUpStabilization must be a duration of 0s or more"))]
    pub scale_up_stabilization: String,
    /// How long a lower replica count must be wanted continuously before scaling down, as a Go
    /// duration. Default `10m`. Moving shards costs a short pause, so this is longer than the
    /// scale-up window.
    #[serde(default = "default_scale_down_stabilization")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(NON_NEGATIVE_DURATION)
        .message("autoscaling.scaleDownStabilization must be a duration of 0s or more"))]
    pub scale_down_stabilization: String,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        AutoscalingSpec {
            enabled: false,
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            target_shards_per_replica: default_target_shards_per_replica(),
            max_lag: default_max_lag(),
            scale_up_stabilization: default_scale_up_stabilization(),
            scale_down_stabilization: default_scale_down_stabilization(),
        }
    }
}

/// Event-time settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventTimeSpec {
    /// Watermark strategy: `bounded` (default), `punctuated` or `arrival`.
    #[serde(default)]
    pub watermark: WatermarkStrategy,
    /// Bound on how far out of order trips arrive, as a Go duration, for the `bounded` and
    /// `arrival` strategies. Default `1m`.
    #[serde(default = "default_max_out_of_orderness")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(NON_NEGATIVE_DURATION)
        .message("eventTime.maxOutOfOrderness must be a duration of 0s or more"))]
    pub max_out_of_orderness: String,
    /// How long after its end a window still accepts trips, as a Go duration. Default `0s`. Trips
    /// arriving later are counted as late and not aggregated.
    #[serde(default = "default_allowed_lateness")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(NON_NEGATIVE_DURATION)
        .message("eventTime.allowedLateness must be a duration of 0s or more"))]
    pub allowed_lateness: String,
    /// A shard without records for this long stops holding merged windows open, as a Go duration.
    /// Default `1m`.
    #[serde(default = "default_idle_timeout")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message("eventTime.idleTimeout must be a positive duration"))]
    pub idle_timeout: String,
    /// A record dated more than this past its shard's latest event time is counted invalid as
    /// `implausible_time` and never moves the watermark, as a Go duration; `0s` turns the check
    /// off. Default `24h`. Raise it for data with longer gaps.
    #[serde(default = "default_max_time_jump")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(NON_NEGATIVE_DURATION)
        .message("eventTime.maxTimeJump must be a duration of 0s or more"))]
    pub max_time_jump: String,
}

impl Default for EventTimeSpec {
    fn default() -> Self {
        EventTimeSpec {
            watermark: WatermarkStrategy::default(),
            max_out_of_orderness: default_max_out_of_orderness(),
            allowed_lateness: default_allowed_lateness(),
            idle_timeout: default_idle_timeout(),
            max_time_jump: default_max_time_jump(),
        }
    }
}

/// The analyses.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysesSpec {
    /// Pickup hot spots: pickups counted per geohash cell and window.
    #[serde(default)]
    pub hot_spots: HotSpotsSpec,
    /// Airport trips: average duration of trips ending at an airport, per pickup cell and window.
    #[serde(default)]
    pub airport_trips: AirportTripsSpec,
    /// Trips whose pickup or dropoff lies outside this box are counted as `outside_region` and
    /// skipped. Default: New York City, latitude 40.4774 to 40.9176, longitude -74.2591 to -73.7004.
    #[serde(default = "default_region")]
    pub region: BoundingBoxSpec,
}

impl Default for AnalysesSpec {
    fn default() -> Self {
        AnalysesSpec {
            hot_spots: HotSpotsSpec::default(),
            airport_trips: AirportTripsSpec::default(),
            region: default_region(),
        }
    }
}

/// The pickup hot-spot analysis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HotSpotsSpec {
    /// Tumbling window size, as a Go duration: a whole number of seconds that divides 24h
    /// (`1m`, `5m`, `10m`, `1h`, ...). Windows are aligned to the Unix epoch. Default `10m`.
    #[serde(default = "default_hot_spot_window")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(
        validation = Rule::new(POSITIVE_DURATION).message("analyses.hotSpots.window must be a positive duration"),
        validation = Rule::new(DIVIDES_DAY)
            .message("analyses.hotSpots.window must be a whole number of seconds that divides 24h"),
    )]
    pub window: String,
    /// Length of the geohash that defines a cell, 1 to 12. Default 6 (about 1.2 km by 0.6 km).
    /// The airport analysis keys pickups by the same cells.
    #[serde(default = "default_geohash_precision")]
    #[schemars(range(min = 1, max = 12))]
    pub geohash_precision: i32,
    /// A cell is reported as a hot spot when it has at least this many pickups in a window,
    /// summed over all shards. At least 1, default 2.
    #[serde(default = "default_min_pickups")]
    #[schemars(range(min = 1))]
    pub min_pickups: i64,
}

impl Default for HotSpotsSpec {
    fn default() -> Self {
        HotSpotsSpec {
            window: default_hot_spot_window(),
            geohash_precision: default_geohash_precision(),
            min_pickups: default_min_pickups(),
        }
    }
}

/// The airport trip-duration analysis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AirportTripsSpec {
    /// Tumbling window size, as a Go duration: a whole number of seconds that divides 24h
    /// (`1m`, `5m`, `10m`, `1h`, ...). Windows are aligned to the Unix epoch. Default `10m`.
    #[serde(default = "default_airport_window")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(
        validation = Rule::new(POSITIVE_DURATION).message("analyses.airportTrips.window must be a positive duration"),
        validation = Rule::new(DIVIDES_DAY)
            .message("analyses.airportTrips.window must be a whole number of seconds that divides 24h"),
    )]
    pub window: String,
    /// A (pickup cell, airport) pair is reported when it has at least this many trips in a window,
    /// summed over all shards. At least 1, default 2.
    #[serde(default = "default_min_trips")]
    #[schemars(range(min = 1))]
    pub min_trips: i64,
    /// The airports, matched against each trip's dropoff in list order; the first match wins.
    /// Names must be unique. Default: JFK (latitude 40.632 to 40.654, longitude -73.800 to -73.761)
    /// and LGA (latitude 40.766 to 40.778, longitude -73.881 to -73.859). An empty list disables
    /// the analysis.
    #[serde(default = "default_airports")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.name == a.name))")
        .message("analyses.airportTrips.airports must have unique names"))]
    pub airports: Vec<AirportSpec>,
}

impl Default for AirportTripsSpec {
    fn default() -> Self {
        AirportTripsSpec {
            window: default_airport_window(),
            min_trips: default_min_trips(),
            airports: default_airports(),
        }
    }
}

/// A named airport geofence; all bounds are inclusive, in degrees (WGS 84).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(BOX_ORDERED).message("an airport box needs minLat < maxLat and minLon < maxLon"))]
pub struct AirportSpec {
    /// Airport name as written into the results' `airport` field, like `JFK`. Required, 1 to 63
    /// characters, unique within the list.
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self != ''").message("an airport name must not be empty"))]
    pub name: String,
    /// Southern edge, degrees of latitude, -90 to 90.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub min_lat: f64,
    /// Western edge, degrees of longitude, -180 to 180.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub min_lon: f64,
    /// Northern edge, degrees of latitude, -90 to 90.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub max_lat: f64,
    /// Eastern edge, degrees of longitude, -180 to 180.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub max_lon: f64,
}

/// A latitude/longitude box; all bounds are inclusive, in degrees (WGS 84).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(BOX_ORDERED).message("a bounding box needs minLat < maxLat and minLon < maxLon"))]
pub struct BoundingBoxSpec {
    /// Southern edge, degrees of latitude, -90 to 90.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub min_lat: f64,
    /// Western edge, degrees of longitude, -180 to 180.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub min_lon: f64,
    /// Northern edge, degrees of latitude, -90 to 90.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub max_lat: f64,
    /// Eastern edge, degrees of longitude, -180 to 180.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub max_lon: f64,
}

impl From<BoundingBox> for BoundingBoxSpec {
    fn from(b: BoundingBox) -> BoundingBoxSpec {
        BoundingBoxSpec { min_lat: b.min_lat, min_lon: b.min_lon, max_lat: b.max_lat, max_lon: b.max_lon }
    }
}

impl From<&Geofence> for AirportSpec {
    fn from(g: &Geofence) -> AirportSpec {
        let b = g.bounds;
        AirportSpec {
            name: g.name.clone(),
            min_lat: b.min_lat,
            min_lon: b.min_lon,
            max_lat: b.max_lat,
            max_lon: b.max_lon,
        }
    }
}

/// Checkpoint storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// S3 location of the pipeline's checkpoints, `s3://bucket` or `s3://bucket/prefix`. Required.
    /// Each shard gets one object below it.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')")
        .message("checkpoint.uri must be an S3 URI with a bucket, like s3://bucket/prefix"))]
    pub uri: String,
    /// How often each worker checkpoints its shards, as a Go duration. Default `10s`. After a
    /// crash at most this much input is read again (results stay exactly-once in effect).
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message("checkpoint.interval must be a positive duration"))]
    pub interval: String,
    /// Older checkpoint versions kept per shard besides the current one, 0 to 100. Default 3.
    #[serde(default = "default_retain")]
    #[schemars(range(min = 0, max = 100))]
    pub retain: i32,
    /// Whether the pipeline's checkpoints are deleted when the TaxiPipeline is deleted. Default
    /// false: they stay, and a pipeline re-created with the same name and URI resumes from them.
    /// When true the operator holds a finalizer on the TaxiPipeline until the objects are gone.
    #[serde(default)]
    pub cleanup_on_delete: bool,
    /// S3 endpoint URL, for S3-compatible stores and emulators (`http://minio:9000`).
    /// Default: the AWS endpoint of the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint_url: Option<String>,
    /// Whether to address buckets as `endpoint/bucket` instead of `bucket.endpoint`, as most
    /// S3-compatible stores and emulators need. Default false.
    #[serde(default)]
    pub s3_force_path_style: bool,
}

/// Where the results go.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SinkSpec {
    /// An OpenSearch (or Amazon OpenSearch Service / Serverless) cluster.
    pub opensearch: OpenSearchSinkSpec,
}

/// The OpenSearch sink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenSearchSinkSpec {
    /// Base URL of the cluster, `http://` or `https://`, like
    /// `https://search-taxi-abc123.us-east-1.es.amazonaws.com`. Required.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/?#]+')")
        .message("sink.opensearch.endpoint must be an http:// or https:// URL with a host"))]
    pub endpoint: String,
    /// Prefix of the index names the results are written to (`<prefix>-hot-spots`,
    /// `<prefix>-airport-trips`): lowercase letters, digits and `-`, starting and ending with a
    /// letter or digit, at most 100 characters. Default `taxi`.
    #[serde(default = "default_index_prefix")]
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"))]
    pub index_prefix: String,
    /// How requests are authenticated. Default: no authentication.
    #[serde(default)]
    pub auth: OpenSearchAuth,
    /// How results are batched into `_bulk` requests.
    #[serde(default)]
    pub bulk: BulkSpec,
    /// A Secret key holding the PEM CA bundle that signs the cluster's certificate, for private
    /// CAs. Default: the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
}

/// Authentication to OpenSearch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(self.type == 'basic') == has(self.secretRef)")
        .message("sink.opensearch.auth.secretRef is required when auth.type is basic, and only then"),
    validation = Rule::new("!has(self.sigv4) || self.type == 'sigv4'")
        .message("sink.opensearch.auth.sigv4 is only allowed when auth.type is sigv4"),
)]
pub struct OpenSearchAuth {
    /// `none` (default), `basic` (HTTP basic auth from `secretRef`) or `sigv4` (AWS Signature
    /// Version 4 with the pods' AWS credentials, for Amazon OpenSearch Service and Serverless).
    #[serde(rename = "type", default)]
    pub type_: SinkAuthType,
    /// The Secret with the basic-auth user name and password. Required when `type` is `basic`,
    /// not allowed otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<BasicAuthSecretRef>,
    /// SigV4 signing settings, only with `type: sigv4`. Default: service `es`, the stream's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigv4: Option<SigV4Spec>,
}

/// A Secret in the pipeline's namespace holding a user name and a password.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuthSecretRef {
    /// Name of the Secret, in the TaxiPipeline's namespace. Required.
    pub name: String,
    /// Key of the user name in the Secret. Default `username`.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key of the password in the Secret. Default `password`.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

/// AWS SigV4 signing of OpenSearch requests.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SigV4Spec {
    /// Service name to sign for: `es` (Amazon OpenSearch Service, default) or `aoss` (OpenSearch
    /// Serverless).
    #[serde(default)]
    pub service: SigV4Service,
    /// Region to sign for, like `us-east-1`. Default: the stream's `region`, else the pods' AWS SDK
    /// configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// Batching of `_bulk` requests; a batch is sent when any limit is reached.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BulkSpec {
    /// Most documents in one `_bulk` request, at least 1. Default 5000.
    #[serde(default = "default_bulk_max_docs")]
    #[schemars(range(min = 1))]
    pub max_docs: i32,
    /// Most bytes of request body in one `_bulk` request, at least 1. Default 5242880 (5 MiB).
    #[serde(default = "default_bulk_max_bytes")]
    #[schemars(range(min = 1))]
    pub max_bytes: i64,
    /// Longest a result waits before its batch is sent, as a Go duration. Default `1s`.
    #[serde(default = "default_bulk_max_delay")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION)
        .message("sink.opensearch.bulk.maxDelay must be a positive duration"))]
    pub max_delay: String,
}

impl Default for BulkSpec {
    fn default() -> Self {
        BulkSpec {
            max_docs: default_bulk_max_docs(),
            max_bytes: default_bulk_max_bytes(),
            max_delay: default_bulk_max_delay(),
        }
    }
}

/// A key of a Secret holding a PEM CA bundle.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Name of the Secret, in the TaxiPipeline's namespace. Required.
    pub name: String,
    /// Key of the PEM bundle in the Secret. Default `ca.crt`.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

/// How the worker pods run. Every field is optional.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Container image of the workers. Default: the image the operator was deployed with
    /// (its `--worker-image` setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `Always`, `IfNotPresent` or `Never`. Default: Kubernetes' rule (`Always` for `:latest`,
    /// else `IfNotPresent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// CPU and memory requests and limits of the worker container. Default: none set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// An existing ServiceAccount the workers run as. Default: a ServiceAccount the operator
    /// creates for the pipeline (annotated with `iamRoleArn` when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// IAM role for the workers (IRSA on EKS): written as the `eks.amazonaws.com/role-arn`
    /// annotation of the ServiceAccount the operator creates. Ignored with `serviceAccountName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_role_arn: Option<String>,
    /// Node labels the worker pods must match. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the worker pods tolerate. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Extra annotations on the worker pods. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Seconds a worker gets after SIGTERM to flush the sink and write final checkpoints before it
    /// is killed, at least 0. Default 60.
    #[serde(default = "default_termination_grace_period_seconds")]
    #[schemars(range(min = 0))]
    pub termination_grace_period_seconds: i64,
}

impl Default for WorkerSpec {
    fn default() -> Self {
        WorkerSpec {
            image: None,
            image_pull_policy: None,
            resources: None,
            service_account_name: None,
            iam_role_arn: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            pod_annotations: BTreeMap::new(),
            termination_grace_period_seconds: default_termination_grace_period_seconds(),
        }
    }
}

/// Observed state of a TaxiPipeline, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaxiPipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, Scaling and StreamResharding, one entry per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".to_owned()]))]
    pub conditions: Vec<Condition>,
    /// Worker pods that exist (the StatefulSet's replicas; the scale subresource reads it).
    #[serde(default)]
    pub replicas: i32,
    /// Worker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the worker pods, as a string (the scale subresource reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Open shards of the stream at the last reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_shards: Option<i32>,
    /// Epoch of the current shard assignment (ConfigMap `<name>-assignment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_epoch: Option<i64>,
    /// Largest millisBehindLatest over the open shards, in milliseconds, as the workers last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_millis: Option<i64>,
    /// Lowest watermark over the open shards (event time, RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// When the oldest of the shards' latest checkpoints was written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint_time: Option<Time>,
    /// Worker replicas the autoscaler wants, before stabilization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Why the autoscaler wants `desiredReplicas`, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling_reason: Option<String>,
    /// When the operator last changed the number of worker replicas (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// When the operator called UpdateShardCount on the stream in the last 24 hours (RFC 3339),
    /// oldest first; Kinesis limits how often a stream may be resharded per day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reshard_calls: Vec<Time>,
}

/// Puts `new` into `conditions`, replacing the condition of the same type. When the status value
/// (`True`/`False`/`Unknown`) did not change, the old `lastTransitionTime` is kept: a transition is
/// a change of status, not a change of reason or message.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// The CustomResourceDefinition of [`TaxiPipeline`] as YAML: exactly what `crds/taxipipelines.yaml`
/// holds and `taxi-operator crd` prints.
pub fn crd_yaml() -> String {
    let yaml = serde_norway::to_string(&TaxiPipeline::crd())
        .expect("a CustomResourceDefinition is plain strings, numbers and string-keyed maps");
    format!(
        "# Generated from operator/src/crd.rs by `taxi-operator crd`; do not edit.\n\
         # Regenerate: cargo run -p taxi-operator -- crd > crds/taxipipelines.yaml\n{yaml}"
    )
}

fn default_parallelism() -> i32 {
    1
}
fn default_shards() -> i32 {
    4
}
fn default_start_position() -> String {
    settings::DEFAULT_START_POSITION.to_owned()
}
fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_target_shards_per_replica() -> i32 {
    2
}
fn default_max_lag() -> String {
    "1m".to_owned()
}
fn default_scale_up_stabilization() -> String {
    "1m".to_owned()
}
fn default_scale_down_stabilization() -> String {
    "10m".to_owned()
}
fn default_max_out_of_orderness() -> String {
    duration::format_millis(EngineConfig::default().event_time.max_out_of_orderness_ms)
}
fn default_allowed_lateness() -> String {
    duration::format_millis(EngineConfig::default().event_time.allowed_lateness_ms)
}
fn default_idle_timeout() -> String {
    duration::format_millis(EngineConfig::default().event_time.idle_timeout_ms)
}
fn default_max_time_jump() -> String {
    duration::format_millis(EngineConfig::default().event_time.max_time_jump_ms)
}
fn default_hot_spot_window() -> String {
    duration::format_millis(EngineConfig::default().hot_spots.window_ms)
}
fn default_airport_window() -> String {
    duration::format_millis(EngineConfig::default().airport_trips.window_ms)
}
fn default_geohash_precision() -> i32 {
    i32::from(EngineConfig::default().hot_spots.geohash_precision)
}
fn default_min_pickups() -> i64 {
    i64::try_from(EngineConfig::default().hot_spots.min_pickups).unwrap_or(i64::MAX)
}
fn default_min_trips() -> i64 {
    i64::try_from(EngineConfig::default().airport_trips.min_trips).unwrap_or(i64::MAX)
}
/// The worker's NYC region filter: one definition for both.
fn default_region() -> BoundingBoxSpec {
    BoundingBox::NYC.into()
}
/// The worker's airports, JFK then LGA.
fn default_airports() -> Vec<AirportSpec> {
    Geofence::default_airports().iter().map(AirportSpec::from).collect()
}
fn default_checkpoint_interval() -> String {
    duration::format(settings::DEFAULT_CHECKPOINT_INTERVAL)
}
fn default_retain() -> i32 {
    i32::try_from(settings::DEFAULT_RETAIN).unwrap_or(i32::MAX)
}
fn default_index_prefix() -> String {
    settings::DEFAULT_INDEX_PREFIX.to_owned()
}
fn default_username_key() -> String {
    "username".to_owned()
}
fn default_password_key() -> String {
    "password".to_owned()
}
fn default_bulk_max_docs() -> i32 {
    i32::try_from(settings::DEFAULT_BULK_MAX_DOCS).unwrap_or(i32::MAX)
}
fn default_bulk_max_bytes() -> i64 {
    i64::try_from(settings::DEFAULT_BULK_MAX_BYTES).unwrap_or(i64::MAX)
}
fn default_bulk_max_delay() -> String {
    duration::format(settings::DEFAULT_BULK_MAX_DELAY)
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}
fn default_termination_grace_period_seconds() -> i64 {
    60
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str, status: &str, reason: &str, at: &str) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: format!("{reason} message"),
            observed_generation: Some(1),
            last_transition_time: Time(at.parse().expect("timestamp")),
        }
    }

    #[test]
    fn set_condition_keeps_transition_time_while_status_holds() {
        let mut conditions = vec![
            condition(READY, "False", "Starting", "2024-01-01T00:00:00Z"),
            condition(SCALING, "False", "Steady", "2024-01-01T00:00:00Z"),
        ];
        set_condition(&mut conditions, condition(READY, "False", "WaitingForPods", "2024-01-01T00:05:00Z"));
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0].reason, "WaitingForPods");
        assert_eq!(conditions[0].message, "WaitingForPods message");
        assert_eq!(conditions[0].last_transition_time, Time("2024-01-01T00:00:00Z".parse().expect("timestamp")));
        assert_eq!(conditions[1].reason, "Steady", "other types are left alone");
    }

    #[test]
    fn set_condition_moves_transition_time_when_status_changes() {
        let mut conditions = vec![condition(READY, "False", "Starting", "2024-01-01T00:00:00Z")];
        set_condition(&mut conditions, condition(READY, "True", "AllShardsOwned", "2024-01-01T00:05:00Z"));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].status, "True");
        assert_eq!(conditions[0].last_transition_time, Time("2024-01-01T00:05:00Z".parse().expect("timestamp")));
    }

    #[test]
    fn set_condition_appends_a_new_type() {
        let mut conditions = vec![condition(READY, "True", "AllShardsOwned", "2024-01-01T00:00:00Z")];
        set_condition(&mut conditions, condition(STREAM_RESHARDING, "True", "Splitting", "2024-01-01T00:01:00Z"));
        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, STREAM_RESHARDING]);
    }

    #[test]
    fn constants_match_the_derived_resource() {
        use kube::Resource;
        assert_eq!(TaxiPipeline::group(&()), GROUP);
        assert_eq!(TaxiPipeline::version(&()), VERSION);
        assert_eq!(TaxiPipeline::kind(&()), KIND);
        assert_eq!(TaxiPipeline::api_version(&()), api_version());
        assert_eq!(api_version(), "taxipipeline.io/v1alpha1");
    }

    #[test]
    fn condition_type_names() {
        assert_eq!(
            [READY, PROGRESSING, DEGRADED, SCALING, STREAM_RESHARDING],
            ["Ready", "Progressing", "Degraded", "Scaling", "StreamResharding"]
        );
    }

    #[test]
    fn default_geography_matches_design_section_3() {
        assert_eq!(
            default_region(),
            BoundingBoxSpec { min_lat: 40.4774, min_lon: -74.2591, max_lat: 40.9176, max_lon: -73.7004 }
        );
        let airports = default_airports();
        assert_eq!(airports[0].name, "JFK");
        assert_eq!((airports[0].min_lat, airports[0].max_lat), (40.632, 40.654));
        assert_eq!((airports[0].min_lon, airports[0].max_lon), (-73.800, -73.761));
        assert_eq!(airports[1].name, "LGA");
        assert_eq!((airports[1].min_lat, airports[1].max_lat), (40.766, 40.778));
        assert_eq!((airports[1].min_lon, airports[1].max_lon), (-73.881, -73.859));
    }
}

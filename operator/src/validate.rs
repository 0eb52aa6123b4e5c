//! From a TaxiPipeline to a [`ValidPipeline`], or the reason it cannot run.
//!
//! The CRD's CEL rules reject most bad specs at `kubectl apply`; this step checks again what the
//! builders rely on (an API server may run without the rules, or an object may predate them) and
//! converts the user-facing spec into the one worker settings type. The worker pods' settings,
//! pod template included, are resolved in `worker_pod`; the operator-wide [`Defaults`] and the
//! parsing of the flags that fill them are in [`defaults`].

pub mod defaults;
mod worker_pod;

use std::time::Duration;

use kube::ResourceExt;
use taxi_core::config::{AirportTripsConfig, EngineConfig, EventTimeConfig, HotSpotConfig};
use taxi_core::duration;
use taxi_core::geo::{BoundingBox, Geofence};
use taxi_core::identity::PipelineId;
use taxi_core::redact;
use taxi_core::settings::{
    self, ArchiveSettings, CheckpointSettings, SinkAuthSetting, SinkAuthType, SinkSettings, StreamSettings,
    WorkerSettings,
};
use taxi_core::start_position;

pub use self::defaults::{Defaults, FlagError, SecretKey};
use crate::crd::{ArchiveSpec, BoundingBoxSpec, TaxiPipeline, TaxiPipelineSpec};
use crate::observe::StreamRef;
use crate::resources::{CA_DIR, ValidPipeline};

/// A spec the operator cannot run, with the field and the reason (shown in the Ready condition).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidSpec {
    /// Dotted path of the field (`spec.…`).
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidSpec {
    InvalidSpec { field, reason: reason.into() }
}

/// A Go-syntax duration from the spec, in whole milliseconds.
fn millis(field: &'static str, value: &str) -> Result<u64, InvalidSpec> {
    let d = duration::parse(value).map_err(|e| invalid(field, e.to_string()))?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn positive_millis(field: &'static str, value: &str) -> Result<u64, InvalidSpec> {
    match millis(field, value)? {
        0 => Err(invalid(field, "must be longer than zero")),
        ms => Ok(ms),
    }
}

fn signed(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn bounding_box(field: &'static str, b: &BoundingBoxSpec) -> Result<BoundingBox, InvalidSpec> {
    if !(b.min_lat < b.max_lat && b.min_lon < b.max_lon) {
        return Err(invalid(field, "min must be below max for both latitude and longitude"));
    }
    Ok(BoundingBox { min_lat: b.min_lat, max_lat: b.max_lat, min_lon: b.min_lon, max_lon: b.max_lon })
}

/// Checks a TaxiPipeline and turns it into the builders' input.
pub fn validate(pipeline: &TaxiPipeline, defaults: &Defaults) -> Result<ValidPipeline, InvalidSpec> {
    let name = pipeline.name_any();
    let namespace = pipeline.namespace().ok_or_else(|| invalid("metadata.namespace", "the object has no namespace"))?;
    let uid = pipeline.uid().ok_or_else(|| invalid("metadata.uid", "the object has no uid yet"))?;
    if let Some(problem) = crate::crd::name_problem(&name) {
        return Err(invalid("metadata.name", problem.strip_prefix("metadata.name ").unwrap_or(problem)));
    }
    let spec = &pipeline.spec;
    if spec.parallelism < 0 {
        return Err(invalid("spec.parallelism", "must not be negative"));
    }
    let ca_secret = worker_pod::sink_ca_secret(spec, defaults);
    let settings = worker_settings(&namespace, &name, spec, ca_secret.as_ref())?;
    settings.validate().map_err(|e| invalid("spec", e.to_string()))?;
    Ok(ValidPipeline {
        name,
        namespace,
        uid,
        settings,
        pod: worker_pod::resolve(spec, defaults, ca_secret)?,
        network_policy: worker_pod::network_policy(spec, defaults),
    })
}

/// Desired worker replicas from the spec (the autoscaler of a later step may raise it).
pub fn desired_replicas(spec: &TaxiPipelineSpec) -> u32 {
    u32::try_from(spec.parallelism).unwrap_or(0)
}

/// The stream the pipeline reads.
pub fn stream_ref(spec: &TaxiPipelineSpec) -> StreamRef {
    StreamRef {
        name: spec.stream.name.clone(),
        region: spec.stream.region.clone(),
        endpoint_url: spec.stream.endpoint_url.clone(),
    }
}

/// Time a new owner waits for the previous owner's release before taking a shard over: the
/// workers' default, which the rollout waits out too.
pub const TAKEOVER_TIMEOUT: Duration = settings::DEFAULT_TAKEOVER_TIMEOUT;

fn worker_settings(
    namespace: &str,
    pipeline: &str,
    spec: &TaxiPipelineSpec,
    ca_secret: Option<&SecretKey>,
) -> Result<WorkerSettings, InvalidSpec> {
    let stream = &spec.stream;
    let checkpoint = &spec.checkpoint;
    let opensearch = &spec.sink.opensearch;
    let event_time = &spec.event_time;
    let analyses = &spec.analyses;
    let airports = analyses
        .airport_trips
        .airports
        .iter()
        .map(|a| {
            let bounds = bounding_box(
                "spec.analyses.airportTrips.airports",
                &BoundingBoxSpec { min_lat: a.min_lat, min_lon: a.min_lon, max_lat: a.max_lat, max_lon: a.max_lon },
            )?;
            Ok(Geofence { name: a.name.clone(), bounds })
        })
        .collect::<Result<Vec<_>, InvalidSpec>>()?;
    let precision = u8::try_from(analyses.hot_spots.geohash_precision)
        .ok()
        .filter(|p| (1..=12).contains(p))
        .ok_or(invalid("spec.analyses.hotSpots.geohashPrecision", "must be between 1 and 12"))?;
    if let Err(reason) = start_position::parse(&stream.start_position) {
        return Err(invalid("spec.stream.startPosition", reason));
    }
    if let Some(problem) = stream.efo_consumer_name.as_deref().and_then(crate::crd::efo_consumer_name_problem) {
        let reason = problem.strip_prefix("stream.efoConsumerName ").unwrap_or(problem);
        return Err(invalid("spec.stream.efoConsumerName", reason));
    }
    // The endpoint goes into the worker ConfigMap and the logs; the message must not repeat it.
    if redact::has_credentials(&opensearch.endpoint) {
        return Err(invalid(
            "spec.sink.opensearch.endpoint",
            "must not carry credentials (user:password@ or user@): put them in a Secret named by \
             spec.sink.opensearch.auth.secretRef, with auth.type basic",
        ));
    }
    let at_least_one =
        |field, n: i64| u64::try_from(n).ok().filter(|n| *n >= 1).ok_or(invalid(field, "must be at least 1"));
    Ok(WorkerSettings {
        pipeline: pipeline.to_owned(),
        namespace: Some(namespace.to_owned()),
        stream: StreamSettings {
            name: stream.name.clone(),
            region: stream.region.clone(),
            endpoint_url: stream.endpoint_url.clone(),
            start_position: stream.start_position.clone(),
            consumer: stream.consumer,
            // Unique per TaxiPipeline, so two pipelines on one stream never share a consumer.
            efo_consumer_name: Some(
                stream
                    .efo_consumer_name
                    .clone()
                    .unwrap_or_else(|| PipelineId::new(Some(namespace), pipeline).default_consumer_name()),
            ),
            discovery_interval_ms: u64::try_from(settings::DEFAULT_DISCOVERY_INTERVAL.as_millis()).unwrap_or(u64::MAX),
        },
        checkpoint: CheckpointSettings {
            uri: checkpoint.uri.clone(),
            interval_ms: positive_millis("spec.checkpoint.interval", &checkpoint.interval)?,
            retain: usize::try_from(checkpoint.retain)
                .map_err(|_| invalid("spec.checkpoint.retain", "must not be negative"))?,
            s3_endpoint_url: checkpoint.s3_endpoint_url.clone(),
            s3_force_path_style: checkpoint.s3_force_path_style,
        },
        sink: SinkSettings {
            url: opensearch.endpoint.clone(),
            index_prefix: opensearch.index_prefix.clone(),
            auth: match opensearch.auth.type_ {
                SinkAuthType::Sigv4 => {
                    let sigv4 = opensearch.auth.sigv4.clone().unwrap_or_default();
                    SinkAuthSetting {
                        kind: SinkAuthType::Sigv4,
                        service: Some(sigv4.service),
                        region: sigv4.region.or_else(|| stream.region.clone()),
                    }
                }
                kind => SinkAuthSetting::of(kind),
            },
            ca_cert: ca_secret.map(|ca| format!("{CA_DIR}/{}", ca.key).into()),
            bulk_max_docs: usize::try_from(opensearch.bulk.max_docs)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or(invalid("spec.sink.opensearch.bulk.maxDocs", "must be at least 1"))?,
            bulk_max_bytes: usize::try_from(opensearch.bulk.max_bytes)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or(invalid("spec.sink.opensearch.bulk.maxBytes", "must be at least 1"))?,
            bulk_max_delay_ms: millis("spec.sink.opensearch.bulk.maxDelay", &opensearch.bulk.max_delay)?,
        },
        engine: EngineConfig {
            region: bounding_box("spec.analyses.region", &analyses.region)?,
            event_time: EventTimeConfig {
                watermark: event_time.watermark,
                max_out_of_orderness_ms: signed(millis(
                    "spec.eventTime.maxOutOfOrderness",
                    &event_time.max_out_of_orderness,
                )?),
                allowed_lateness_ms: signed(millis("spec.eventTime.allowedLateness", &event_time.allowed_lateness)?),
                idle_timeout_ms: signed(millis("spec.eventTime.idleTimeout", &event_time.idle_timeout)?),
                max_time_jump_ms: signed(millis("spec.eventTime.maxTimeJump", &event_time.max_time_jump)?),
            },
            hot_spots: HotSpotConfig {
                window_ms: signed(positive_millis("spec.analyses.hotSpots.window", &analyses.hot_spots.window)?),
                geohash_precision: precision,
                min_pickups: at_least_one("spec.analyses.hotSpots.minPickups", analyses.hot_spots.min_pickups)?,
            },
            airport_trips: AirportTripsConfig {
                window_ms: signed(positive_millis(
                    "spec.analyses.airportTrips.window",
                    &analyses.airport_trips.window,
                )?),
                min_trips: at_least_one("spec.analyses.airportTrips.minTrips", analyses.airport_trips.min_trips)?,
                airports,
            },
        },
        archive: spec.archive.as_ref().map(archive_settings).transpose()?,
    })
}

/// `spec.archive` as worker settings, refused as the CEL rules refuse it.
fn archive_settings(archive: &ArchiveSpec) -> Result<ArchiveSettings, InvalidSpec> {
    if let Some(problem) = archive.problem() {
        return Err(invalid(problem.field, problem.reason()));
    }
    Ok(ArchiveSettings {
        uri: archive.uri.clone(),
        // Within the bounds, so never negative: `problem` checked it.
        max_file_bytes: u64::try_from(archive.max_file_bytes).unwrap_or(0),
        max_file_age_ms: millis("spec.archive.maxFileAge", &archive.max_file_age)?,
    })
}

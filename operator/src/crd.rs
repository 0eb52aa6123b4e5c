//! The `TaxiPipeline` custom resource: group `taxipipeline.io`, version `v1alpha1`.
//!
//! The Rust types here and in the submodules are the single definition of the API.
//! `taxi-operator crd` prints the CustomResourceDefinition generated from them ([`crd_yaml`]) and
//! `crds/taxipipelines.yaml` holds that output; a test fails when the file is stale.
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
//!
//! The types are grouped by spec section: [`StreamSpec`], [`AutoscalingSpec`], [`EventTimeSpec`],
//! [`AnalysesSpec`], [`CheckpointSpec`], [`SinkSpec`], [`ArchiveSpec`] and [`WorkerSpec`] (with its
//! [`WorkerPodTemplate`]) each live in a submodule with their defaults, and [`TaxiPipelineStatus`]
//! with the condition types. The module's root stays in `crd.rs` (not `crd/mod.rs`) because the
//! generated CRD's header names this file as its source.

mod analyses;
mod archive;
mod autoscaling;
mod checkpoint;
mod event_time;
mod pod_template;
mod sink;
mod status;
mod stream;
mod worker;

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};
pub use taxi_core::config::WatermarkStrategy;
pub use taxi_core::settings::{ConsumerType, SigV4Service, SinkAuthType};

pub use analyses::{AirportSpec, AirportTripsSpec, AnalysesSpec, BoundingBoxSpec, HotSpotsSpec};
pub use archive::{ArchiveProblem, ArchiveSpec};
pub use autoscaling::AutoscalingSpec;
pub use checkpoint::CheckpointSpec;
pub use event_time::EventTimeSpec;
pub use pod_template::{
    RESERVED_ENV_NAMES, RESERVED_ENV_PREFIX, RESERVED_KEY_PREFIX, RESERVED_LABEL_KEYS, WorkerPodTemplate,
};
pub use sink::{BasicAuthSecretRef, BulkSpec, CaSecretRef, OpenSearchAuth, OpenSearchSinkSpec, SigV4Spec, SinkSpec};
pub use status::{DEGRADED, PROGRESSING, READY, SCALING, STREAM_RESHARDING, TaxiPipelineStatus, set_condition};
pub use stream::{StreamSpec, efo_consumer_name_problem};
pub use worker::{WorkerNetworkPolicy, WorkerSpec};

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

/// The longest `metadata.name` a TaxiPipeline may have. The tightest limit of the names the
/// operator derives from it: the worker StatefulSet `<name>-worker` names each revision
/// `<name>-worker-<hash>` (a hash of up to 10 characters) and labels its pods with it as
/// `controller-revision-hash`, and a label value holds at most 63 characters. The others are
/// looser: the pods `<name>-worker-<ordinal>` (63), the ConfigMap
/// `<name>-worker-config` (253) and the enhanced fan-out consumer `<namespace>.<name>` (128).
pub const MAX_NAME_LENGTH: usize = LABEL_VALUE_MAX - "-worker".len() - "-".len() - REVISION_HASH_MAX;
/// Kubernetes' limit on a label value (and a DNS label).
const LABEL_VALUE_MAX: usize = 63;
/// The StatefulSet controller's revision hash: a 32-bit hash in its safe encoding, at most 10 characters.
const REVISION_HASH_MAX: usize = 10;
/// [`MAX_NAME_LENGTH`] as a CEL rule at the root, where `self.metadata.name` is visible.
const NAME_LENGTH_RULE: &str = "self.metadata.name.size() <= 45";
/// Why, with the bound.
const NAME_LENGTH_MESSAGE: &str = "metadata.name must be at most 45 characters: the worker StatefulSet \
    <name>-worker labels its pods with controller-revision-hash <name>-worker-<10-character hash>, and a label \
    value holds at most 63";
/// The headless Service `<name>-worker` and the pods' host names must be DNS labels (RFC 1035):
/// lower-case letters, digits and `-`, starting with a letter; a TaxiPipeline's own name may hold
/// dots or start with a digit, which those names cannot.
const NAME_LABEL_RULE: &str = "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
/// Why.
const NAME_LABEL_MESSAGE: &str = "metadata.name must start with a lower-case letter and hold only lower-case \
    letters, digits and '-': it names the workers' Service <name>-worker, which must be a DNS label";

/// Why `name` cannot name a TaxiPipeline, in the words of the CEL rules above, or `None`. The API
/// server enforces those rules on new objects; the operator checks again for pipelines created
/// before the rules existed, which would otherwise fail half-way through a pass.
pub fn name_problem(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    let dns_label = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if name.len() > MAX_NAME_LENGTH {
        Some(NAME_LENGTH_MESSAGE)
    } else if !dns_label {
        Some(NAME_LABEL_MESSAGE)
    } else {
        None
    }
}

/// Desired state of a TaxiPipeline: a Kinesis stream of taxi trips analysed by a fleet of workers
/// into an OpenSearch index, with checkpoints in S3.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
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
    validation = Rule::new(NAME_LENGTH_RULE).message(NAME_LENGTH_MESSAGE),
    validation = Rule::new(NAME_LABEL_RULE).message(NAME_LABEL_MESSAGE),
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
        description = "The oldest of the shards' latest checkpoints"
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
    /// An archive of every raw trip the workers read, as Parquet files in S3 partitioned by the
    /// hour of their event time. Optional: without it nothing is archived. It may change: a change
    /// restarts the workers one by one, like every settings change, and files already written stay
    /// where they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveSpec>,
    /// How the worker pods run: image, resources, scheduling, service account, pod template and
    /// NetworkPolicy. All optional.
    #[serde(default)]
    pub worker: WorkerSpec,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_checks_names_as_the_cel_rules_do() {
        for ok in ["nyc", "a", "nyc-2016", "n0", &"n".repeat(MAX_NAME_LENGTH)] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        assert_eq!(name_problem(&"n".repeat(MAX_NAME_LENGTH + 1)), Some(NAME_LENGTH_MESSAGE));
        for bad in ["", "2016", "-nyc", "nyc-", "nyc.trips", "NYC", "nyc_trips", "nÿc"] {
            assert_eq!(name_problem(bad), Some(NAME_LABEL_MESSAGE), "{bad:?}");
        }
    }

    #[test]
    fn the_name_rule_states_the_computed_bound() {
        assert_eq!(MAX_NAME_LENGTH, 45);
        assert!(NAME_LENGTH_RULE.ends_with(&format!("<= {MAX_NAME_LENGTH}")), "{NAME_LENGTH_RULE}");
        assert!(NAME_LENGTH_MESSAGE.contains(&format!("at most {MAX_NAME_LENGTH} characters")));
        let name = "n".repeat(MAX_NAME_LENGTH);
        let workers = crate::resources::names::workers(&name);
        assert_eq!(format!("{workers}-{}", "h".repeat(REVISION_HASH_MAX)).len(), LABEL_VALUE_MAX);
        // The looser limits hold at the bound: a pod name (and host name, and the pod-name label)
        // up to ordinal 9999999999, the settings ConfigMap, and the consumer in the longest namespace.
        assert!(format!("{workers}-9999999999").len() <= LABEL_VALUE_MAX);
        assert!(crate::resources::names::worker_config(&name).len() <= 253);
        let namespace = "n".repeat(LABEL_VALUE_MAX);
        let consumer = taxi_core::identity::PipelineId::new(Some(&namespace), &name).default_consumer_name();
        assert!(consumer.len() <= 128, "{} characters", consumer.len());
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
}

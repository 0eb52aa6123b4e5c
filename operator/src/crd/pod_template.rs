//! `spec.worker.podTemplate`: what a pipeline may add to its worker pods (metadata, scheduling,
//! environment, resources, security contexts), and the label, annotation and environment names
//! the operator keeps for itself.
//!
//! The reserved names are listed twice on purpose: as constants the operator's validation uses,
//! and as literals in the CEL rules the API server evaluates (a CEL rule is a string known at
//! compile time). The CRD tests check that the rules refuse every constant.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, PodSecurityContext, ResourceRequirements, SecurityContext, Toleration,
    TopologySpreadConstraint,
};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Pod label keys a pod template may not set: the operator's own labels, by which its Service,
/// PodDisruptionBudget, NetworkPolicy and StatefulSet select the pods, and those the StatefulSet
/// controller sets on each pod.
pub const RESERVED_LABEL_KEYS: [&str; 7] = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
];
/// Prefix of the label and annotation keys the operator owns (`taxipipeline.io/pipeline`,
/// `taxipipeline.io/config-hash`): a pod template may set none.
pub const RESERVED_KEY_PREFIX: &str = "taxipipeline.io/";
/// Environment variables the operator sets on the worker container: the pod's identity.
pub const RESERVED_ENV_NAMES: [&str; 2] = ["POD_NAME", "POD_NAMESPACE"];
/// Prefix of the worker's own environment: its settings and the sink credentials
/// (`TAXI_SINK_USERNAME`, `TAXI_SINK_PASSWORD`). The operator configures the worker; a pod
/// template may not.
pub const RESERVED_ENV_PREFIX: &str = "TAXI_";

/// Most labels, annotations, node selector entries and list items a pod template field holds:
/// bounds the cost the API server estimates for the CEL rules that walk them.
const MAX_ENTRIES: usize = 64;
/// Most environment variables a pod template adds.
const MAX_ENV: usize = 128;

// CEL rules: `self` is the field's value. The literals are RESERVED_LABEL_KEYS,
// RESERVED_KEY_PREFIX, RESERVED_ENV_NAMES and RESERVED_ENV_PREFIX.
const LABELS_NOT_RESERVED: &str = "self.all(k, !(k in ['app.kubernetes.io/name', 'app.kubernetes.io/instance', \
    'app.kubernetes.io/component', 'app.kubernetes.io/managed-by', 'controller-revision-hash', \
    'statefulset.kubernetes.io/pod-name', 'apps.kubernetes.io/pod-index']) && !k.startsWith('taxipipeline.io/'))";
const ANNOTATIONS_NOT_RESERVED: &str = "self.all(k, !k.startsWith('taxipipeline.io/'))";
const ENV_NOT_RESERVED: &str = "self.all(e, !(e.name in ['POD_NAME', 'POD_NAMESPACE']) && !e.name.startsWith('TAXI_'))";

/// Settings a pipeline adds to its worker pods. Every field is optional. A field set here
/// replaces the `spec.worker` field of the same meaning (`nodeSelector`, `tolerations`,
/// `podAnnotations`, `resources`) as a whole; the two are never merged.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPodTemplate {
    /// Labels added to the worker pods, at most 64. They never replace the operator's own:
    /// `app.kubernetes.io/name`, `instance`, `component` and `managed-by`, the keys the StatefulSet
    /// controller sets (`controller-revision-hash`, `statefulset.kubernetes.io/pod-name`,
    /// `apps.kubernetes.io/pod-index`) and every `taxipipeline.io/` key are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_ENTRIES))]
    #[x_kube(validation = Rule::new(LABELS_NOT_RESERVED).message(
        "worker.podTemplate.labels must not set the operator's labels (app.kubernetes.io/name, instance, component, \
         managed-by, taxipipeline.io/*) or the StatefulSet controller's"
    ))]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the worker pods, at most 64; replaces `spec.worker.podAnnotations`.
    /// They may override the Prometheus scrape annotations the operator sets by default
    /// (`prometheus.io/scrape`, `prometheus.io/port`, `prometheus.io/path`); `taxipipeline.io/`
    /// keys are refused (the operator's configuration hash, which rolls the pods, is one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_ENTRIES))]
    #[x_kube(validation = Rule::new(ANNOTATIONS_NOT_RESERVED)
        .message("worker.podTemplate.annotations must not set taxipipeline.io/ annotations: they are the operator's"))]
    pub annotations: BTreeMap<String, String>,
    /// Secrets in the pipeline's namespace to pull the worker image with. The operator appends
    /// the ones its platform configured (`--worker-image-pull-secrets`); a name in both is listed
    /// once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ENTRIES))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Node labels the worker pods must match; replaces `spec.worker.nodeSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_ENTRIES))]
    pub node_selector: BTreeMap<String, String>,
    /// Node affinity and pod (anti-)affinity of the worker pods. The pods of a pipeline carry
    /// `app.kubernetes.io/instance: <pipeline name>`, for a pod anti-affinity that keeps them on
    /// different nodes. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Taints the worker pods tolerate; replaces `spec.worker.tolerations`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ENTRIES))]
    pub tolerations: Vec<Toleration>,
    /// How the worker pods spread over zones or nodes; select them by
    /// `app.kubernetes.io/instance: <pipeline name>`. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ENTRIES))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the worker pods. Default: the cluster's default priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Environment variables added to the worker container after the operator's own, at most 128:
    /// e.g. `RUST_LOG`, `AWS_STS_REGIONAL_ENDPOINTS` or proxy settings. Anything secret belongs in
    /// a Secret, read with `valueFrom.secretKeyRef`: a plain `value` is stored in the TaxiPipeline
    /// and the StatefulSet, readable by everyone who may read those. `POD_NAME`, `POD_NAMESPACE`
    /// and names starting with `TAXI_` (the worker's settings and the sink credentials) are the
    /// operator's and are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ENV))]
    #[x_kube(validation = Rule::new(ENV_NOT_RESERVED).message(
        "worker.podTemplate.env must not set POD_NAME, POD_NAMESPACE or TAXI_* variables: the operator sets them \
         (sink credentials come from sink.opensearch.auth.secretRef)"
    ))]
    pub env: Vec<EnvVar>,
    /// CPU and memory requests and limits of the worker container; replaces
    /// `spec.worker.resources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The worker pods' security context. When set it replaces the operator's default as a whole
    /// (`runAsNonRoot: true`, `runAsUser`, `runAsGroup` and `fsGroup` 65532 — the image's `nonroot`
    /// user — and the `RuntimeDefault` seccomp profile); unset fields stay unset. Where the
    /// platform assigns the user, as OpenShift's `restricted` SCC does, set
    /// `{runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}`. The namespace's Pod
    /// Security admission applies either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<PodSecurityContext>,
    /// The worker container's security context. When set it replaces the operator's default as a
    /// whole (`allowPrivilegeEscalation: false`, `privileged: false`, `readOnlyRootFilesystem:
    /// true`, `runAsNonRoot: true`, every capability dropped); unset fields stay unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_security_context: Option<SecurityContext>,
}

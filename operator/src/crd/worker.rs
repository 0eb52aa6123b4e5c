//! `spec.worker`: how the worker pods run (image, resources, scheduling, service account, the pod
//! template and the NetworkPolicy).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::pod_template::WorkerPodTemplate;

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
    /// `podTemplate.resources` replaces it.
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
    /// Node labels the worker pods must match. Default: none. `podTemplate.nodeSelector` replaces
    /// it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the worker pods tolerate. Default: none. `podTemplate.tolerations` replaces it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Extra annotations on the worker pods. Default: none. `podTemplate.annotations` replaces it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Seconds a worker gets after SIGTERM to flush the sink and write final checkpoints before it
    /// is killed, at least 0. Default 60.
    #[serde(default = "default_termination_grace_period_seconds")]
    #[schemars(range(min = 0))]
    pub termination_grace_period_seconds: i64,
    /// Labels, annotations, scheduling, environment, resources and security contexts of the
    /// worker pods. A field set here replaces the field of the same meaning above
    /// (`nodeSelector`, `tolerations`, `podAnnotations`, `resources`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<WorkerPodTemplate>,
    /// The NetworkPolicy `<name>-worker` the operator keeps for the worker pods: traffic into them
    /// only on port 8080, from the operator's pods and the metrics scrapers the platform named.
    /// Traffic out of them is not restricted. Default: on, unless the platform turned it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<WorkerNetworkPolicy>,
}

/// The NetworkPolicy `<name>-worker` of the worker pods: traffic into them is admitted only on
/// their HTTP port 8080 (`/metrics`, `/status`, probes), from the operator's pods and from the
/// metrics scrapers the platform configured. Traffic out of them is not restricted (the stream,
/// the checkpoint bucket and the sink are arbitrary endpoints).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerNetworkPolicy {
    /// Whether the operator creates the NetworkPolicy (and deletes it when switched off).
    /// Default: the operator's `--worker-network-policy` setting, which is on unless the platform
    /// turned it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
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
            pod_template: None,
            network_policy: None,
        }
    }
}

fn default_termination_grace_period_seconds() -> i64 {
    60
}

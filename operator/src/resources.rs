//! Pure builders: from a validated pipeline to the Kubernetes objects that run it.
//!
//! Nothing here does I/O or reads a clock, so every object is unit-tested from fixtures. The
//! reconcile loop applies what [`build`] returns with server-side apply. The workers'
//! NetworkPolicy has its own module, [`network_policy`].

pub mod network_policy;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, LocalObjectReference, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Toleration, TopologySpreadConstraint, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use md5::{Digest, Md5};
use taxi_core::assignment::{ASSIGNMENT_KEY, Assignment, config_map_name};
use taxi_core::settings::{SETTINGS_KEY, SINK_PASSWORD_ENV, SINK_USERNAME_ENV, WorkerSettings};

/// Port of the workers' `/healthz`, `/readyz`, `/metrics` and `/status`.
pub const HTTP_PORT: i32 = 8080;
/// Where the image (`Dockerfile`) puts the worker binary.
pub const WORKER_BINARY: &str = "/usr/local/bin/taxi-worker";
/// Where the worker ConfigMap is mounted.
const CONFIG_DIR: &str = "/etc/taxi";
/// Where a custom CA bundle for the sink is mounted.
pub const CA_DIR: &str = "/etc/taxi-ca";
/// Pod annotation holding a hash of the worker settings: a change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "taxipipeline.io/config-hash";
/// Annotation of the assignment ConfigMap: when its epoch last changed (RFC 3339).
pub const ASSIGNED_AT_ANNOTATION: &str = "taxipipeline.io/assigned-at";
/// The IRSA annotation on the workers' ServiceAccount.
pub const IRSA_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
/// Non-root user of the worker image (distroless `nonroot`).
const RUN_AS_USER: i64 = 65532;

/// Everything the builders need, checked: the only input of [`build`].
#[derive(Clone, Debug, PartialEq)]
pub struct ValidPipeline {
    /// Name of the TaxiPipeline.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its UID, for owner references.
    pub uid: String,
    /// The worker configuration rendered into the worker ConfigMap.
    pub settings: WorkerSettings,
    /// Pod-level settings of the workers.
    pub pod: WorkerPod,
    /// Who may reach the workers, when they get a NetworkPolicy.
    pub network_policy: Option<network_policy::IngressPeers>,
}

/// Pod-level settings of the workers, with the pod template already resolved against the
/// `spec.worker` fields it replaces and the operator's defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerPod {
    /// Container image.
    pub image: String,
    /// Image pull policy, if set.
    pub image_pull_policy: Option<String>,
    /// Secrets to pull the image with, each name once.
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Container resources.
    pub resources: Option<ResourceRequirements>,
    /// An existing ServiceAccount to use instead of the one the operator creates.
    pub service_account_name: Option<String>,
    /// IAM role for IRSA, annotated on the ServiceAccount the operator creates.
    pub iam_role_arn: Option<String>,
    /// Node selector.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// Node and pod (anti-)affinity.
    pub affinity: Option<Affinity>,
    /// Topology spread constraints.
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass, if set.
    pub priority_class_name: Option<String>,
    /// Extra pod labels; the operator's own are added over them.
    pub pod_labels: BTreeMap<String, String>,
    /// Extra pod annotations; they may override the scrape annotations, never the config hash.
    pub pod_annotations: BTreeMap<String, String>,
    /// Environment variables added after the operator's own.
    pub env: Vec<EnvVar>,
    /// Replaces the default pod security context ([`default_pod_security_context`]) when set.
    pub pod_security_context: Option<PodSecurityContext>,
    /// Replaces the default container security context ([`default_container_security_context`])
    /// when set.
    pub container_security_context: Option<SecurityContext>,
    /// Time Kubernetes gives a stopping pod: enough for a sink flush and the final checkpoints.
    pub termination_grace_period_seconds: i64,
    /// Secret with the sink's basic-auth credentials: (name, username key, password key).
    pub basic_auth_secret: Option<(String, String, String)>,
    /// Secret with a CA bundle for the sink: (name, key).
    pub ca_secret: Option<(String, String)>,
}

/// The objects of one pipeline. Destructure it without `..` where it is applied, so a new object
/// cannot be forgotten.
#[derive(Clone, Debug, PartialEq)]
pub struct Resources {
    /// The workers' ServiceAccount, unless the spec names an existing one.
    pub service_account: Option<ServiceAccount>,
    /// Lets the workers read their assignment ConfigMap.
    pub role: Role,
    /// Binds [`Resources::role`] to the workers' ServiceAccount.
    pub role_binding: RoleBinding,
    /// Headless Service giving every worker pod a stable DNS name.
    pub service: Service,
    /// The worker settings (`worker.json`).
    pub worker_config: ConfigMap,
    /// The shard assignment (`assignment.json`).
    pub assignment: ConfigMap,
    /// At most one worker disrupted at a time, when there is more than one.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// Admits traffic to the workers only on their HTTP port, from the operator and the metrics
    /// scrapers; unless the pipeline or the operator switched it off.
    pub network_policy: Option<NetworkPolicy>,
    /// The workers.
    pub stateful_set: StatefulSet,
}

/// Names of a pipeline's objects.
pub mod names {
    /// StatefulSet, headless Service, ServiceAccount, Role, RoleBinding, PDB and NetworkPolicy.
    pub fn workers(pipeline: &str) -> String {
        format!("{pipeline}-worker")
    }
    /// The worker settings ConfigMap.
    pub fn worker_config(pipeline: &str) -> String {
        format!("{pipeline}-worker-config")
    }
    /// DNS name of a worker pod inside the cluster.
    pub fn pod_host(pipeline: &str, namespace: &str, ordinal: u32) -> String {
        let workers = workers(pipeline);
        format!("{workers}-{ordinal}.{workers}.{namespace}.svc")
    }
}

/// Labels every object of the pipeline carries.
pub fn labels(pipeline: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(pipeline);
    labels.insert("app.kubernetes.io/component".into(), "worker".into());
    labels.insert("app.kubernetes.io/managed-by".into(), "taxi-operator".into());
    labels
}

/// The labels selecting the pipeline's worker pods.
pub fn selector_labels(pipeline: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "taxi-worker".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), pipeline.to_owned()),
    ])
}

/// The worker pod selector as a string, for the scale subresource (`status.selector`).
pub fn selector_string(pipeline: &str) -> String {
    selector_labels(pipeline).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// A hash of the worker settings, so a changed setting changes the pod template and rolls pods.
pub fn config_hash(settings_json: &str) -> String {
    Md5::digest(settings_json.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds every object of the pipeline. `statefulset_replicas` and `assignment` come from the
/// rollout plan; `assigned_at` is when the assignment's epoch last changed.
pub fn build(
    pipeline: &ValidPipeline,
    statefulset_replicas: u32,
    assignment: &Assignment,
    assigned_at: &str,
) -> Resources {
    let workers = names::workers(&pipeline.name);
    let service_account_name = pipeline.pod.service_account_name.clone().unwrap_or_else(|| workers.clone());
    let settings_json = pipeline.settings.to_json();
    Resources {
        service_account: pipeline.pod.service_account_name.is_none().then(|| service_account(pipeline)),
        role: role(pipeline),
        role_binding: role_binding(pipeline, &service_account_name),
        service: headless_service(pipeline),
        worker_config: config_map(
            pipeline,
            names::worker_config(&pipeline.name),
            SETTINGS_KEY,
            settings_json.clone(),
            BTreeMap::new(),
        ),
        assignment: config_map(
            pipeline,
            config_map_name(&pipeline.name),
            ASSIGNMENT_KEY,
            assignment.to_json(),
            BTreeMap::from([(ASSIGNED_AT_ANNOTATION.to_owned(), assigned_at.to_owned())]),
        ),
        pod_disruption_budget: (statefulset_replicas > 1).then(|| pod_disruption_budget(pipeline)),
        network_policy: pipeline.network_policy.as_ref().map(|peers| network_policy::build(pipeline, peers)),
        stateful_set: stateful_set(pipeline, statefulset_replicas, &service_account_name, &config_hash(&settings_json)),
    }
}

fn metadata(pipeline: &ValidPipeline, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(pipeline.namespace.clone()),
        labels: Some(labels(&pipeline.name)),
        owner_references: Some(vec![OwnerReference {
            api_version: crate::crd::api_version(),
            kind: crate::crd::KIND.to_owned(),
            name: pipeline.name.clone(),
            uid: pipeline.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..ObjectMeta::default()
    }
}

fn service_account(pipeline: &ValidPipeline) -> ServiceAccount {
    let mut meta = metadata(pipeline, names::workers(&pipeline.name));
    if let Some(arn) = &pipeline.pod.iam_role_arn {
        meta.annotations = Some(BTreeMap::from([(IRSA_ANNOTATION.to_owned(), arn.clone())]));
    }
    ServiceAccount { metadata: meta, automount_service_account_token: Some(true), ..ServiceAccount::default() }
}

fn role(pipeline: &ValidPipeline) -> Role {
    Role {
        metadata: metadata(pipeline, names::workers(&pipeline.name)),
        // Only their own assignment, read-only (the worker watches it with a name field selector).
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(vec![config_map_name(&pipeline.name)]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..PolicyRule::default()
        }]),
    }
}

fn role_binding(pipeline: &ValidPipeline, service_account_name: &str) -> RoleBinding {
    let name = names::workers(&pipeline.name);
    RoleBinding {
        metadata: metadata(pipeline, name.clone()),
        role_ref: RoleRef { api_group: Some("rbac.authorization.k8s.io".into()), kind: "Role".into(), name },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: service_account_name.to_owned(),
            namespace: Some(pipeline.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

fn headless_service(pipeline: &ValidPipeline) -> Service {
    Service {
        metadata: metadata(pipeline, names::workers(&pipeline.name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(&pipeline.name)),
            // The operator reads /status of pods that are not ready yet too (e.g. draining).
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn config_map(
    pipeline: &ValidPipeline,
    name: String,
    key: &str,
    value: String,
    annotations: BTreeMap<String, String>,
) -> ConfigMap {
    let mut meta = metadata(pipeline, name);
    if !annotations.is_empty() {
        meta.annotations = Some(annotations);
    }
    ConfigMap { metadata: meta, data: Some(BTreeMap::from([(key.to_owned(), value)])), ..ConfigMap::default() }
}

fn pod_disruption_budget(pipeline: &ValidPipeline) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: metadata(pipeline, names::workers(&pipeline.name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&pipeline.name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

fn stateful_set(pipeline: &ValidPipeline, replicas: u32, service_account_name: &str, config_hash: &str) -> StatefulSet {
    let workers = names::workers(&pipeline.name);
    // Scrape annotations are defaults the user's annotations may override; the config hash is not.
    let mut annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), HTTP_PORT.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ]);
    annotations.extend(pipeline.pod.pod_annotations.clone());
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.to_owned());
    // The user's labels go first: the operator's, which its selectors match, always win.
    let mut pod_labels = pipeline.pod.pod_labels.clone();
    pod_labels.extend(operator_pod_labels(&pipeline.name));
    StatefulSet {
        metadata: metadata(pipeline, workers.clone()),
        spec: StatefulSetSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            service_name: Some(workers),
            // Workers coordinate through the assignment, not through start order.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector { match_labels: Some(selector_labels(&pipeline.name)), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(pipeline, service_account_name)),
            },
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

/// The labels the operator puts on every worker pod: [`labels`] and the pipeline's name.
pub fn operator_pod_labels(pipeline: &str) -> BTreeMap<String, String> {
    let mut pod_labels = labels(pipeline);
    pod_labels.insert("taxipipeline.io/pipeline".into(), pipeline.to_owned());
    pod_labels
}

/// The worker pods' security context unless the pod template replaces it: non-root as the
/// image's `nonroot` user, the runtime's default seccomp profile.
pub fn default_pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
        ..PodSecurityContext::default()
    }
}

/// The worker container's security context unless the pod template replaces it: no privilege,
/// no capability, a read-only root filesystem.
pub fn default_container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        privileged: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        ..SecurityContext::default()
    }
}

fn pod_spec(pipeline: &ValidPipeline, service_account_name: &str) -> PodSpec {
    let pod = &pipeline.pod;
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::worker_config(&pipeline.name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        // The root filesystem is read-only; the AWS SDK and TLS stacks may still want a /tmp.
        Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
    ];
    if let Some((secret, _)) = &pod.ca_secret {
        volumes.push(Volume {
            name: "ca".into(),
            secret: Some(SecretVolumeSource { secret_name: Some(secret.clone()), ..SecretVolumeSource::default() }),
            ..Volume::default()
        });
    }
    PodSpec {
        service_account_name: Some(service_account_name.to_owned()),
        termination_grace_period_seconds: Some(pod.termination_grace_period_seconds),
        image_pull_secrets: (!pod.image_pull_secrets.is_empty()).then(|| pod.image_pull_secrets.clone()),
        node_selector: (!pod.node_selector.is_empty()).then(|| pod.node_selector.clone()),
        tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
        affinity: pod.affinity.clone(),
        topology_spread_constraints: (!pod.topology_spread_constraints.is_empty())
            .then(|| pod.topology_spread_constraints.clone()),
        priority_class_name: pod.priority_class_name.clone(),
        security_context: Some(pod.pod_security_context.clone().unwrap_or_else(default_pod_security_context)),
        containers: vec![worker_container(pipeline)],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

fn worker_container(pipeline: &ValidPipeline) -> Container {
    let pod = &pipeline.pod;
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..ObjectFieldSelector::default() }),
        ..EnvVarSource::default()
    };
    let mut env = vec![
        EnvVar { name: "POD_NAME".into(), value_from: Some(field("metadata.name")), ..EnvVar::default() },
        EnvVar { name: "POD_NAMESPACE".into(), value_from: Some(field("metadata.namespace")), ..EnvVar::default() },
    ];
    if let Some((secret, username_key, password_key)) = &pod.basic_auth_secret {
        let from_secret = |key: &str| EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.clone(),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        };
        env.push(EnvVar {
            name: SINK_USERNAME_ENV.into(),
            value_from: Some(from_secret(username_key)),
            ..EnvVar::default()
        });
        env.push(EnvVar {
            name: SINK_PASSWORD_ENV.into(),
            value_from: Some(from_secret(password_key)),
            ..EnvVar::default()
        });
    }
    // After the operator's own, so they may refer to them as `$(POD_NAME)`.
    env.extend(pod.env.iter().cloned());
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..VolumeMount::default() },
    ];
    if pod.ca_secret.is_some() {
        mounts.push(VolumeMount {
            name: "ca".into(),
            mount_path: CA_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let probe = |path: &str, period| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    Container {
        name: "worker".into(),
        image: Some(pod.image.clone()),
        image_pull_policy: pod.image_pull_policy.clone(),
        // The image holds both binaries (its entrypoint is the operator's), so name the worker's.
        command: Some(vec![WORKER_BINARY.to_owned()]),
        args: Some(
            [
                "run",
                "--config",
                &format!("{CONFIG_DIR}/{SETTINGS_KEY}"),
                "--assignment",
                "configmap",
                "--http-addr",
                &format!("0.0.0.0:{HTTP_PORT}"),
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: pod.resources.clone(),
        security_context: Some(
            pod.container_security_context.clone().unwrap_or_else(default_container_security_context),
        ),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

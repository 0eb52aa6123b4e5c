//! From `spec.worker`, its pod template, the sink's secrets and the operator's [`Defaults`] to the
//! [`WorkerPod`] the builders take, and whether the pipeline gets a NetworkPolicy.
//!
//! A pod template field that is set replaces the `spec.worker` field of the same meaning as a
//! whole; labels, annotations and environment variables the operator owns are refused here as
//! the CRD's CEL rules refuse them, for an API server that runs without the rules or an object
//! stored before them.

use k8s_openapi::api::core::v1::LocalObjectReference;
use taxi_core::settings::SinkAuthType;

use super::{Defaults, InvalidSpec, SecretKey, invalid};
use crate::crd::{
    RESERVED_ENV_NAMES, RESERVED_ENV_PREFIX, RESERVED_KEY_PREFIX, RESERVED_LABEL_KEYS, TaxiPipelineSpec,
    WorkerPodTemplate,
};
use crate::resources::WorkerPod;
use crate::resources::network_policy::IngressPeers;

/// The worker pods' settings. `ca_secret` is the sink's CA bundle, already resolved by
/// [`sink_ca_secret`].
pub(super) fn resolve(
    spec: &TaxiPipelineSpec,
    defaults: &Defaults,
    ca_secret: Option<SecretKey>,
) -> Result<WorkerPod, InvalidSpec> {
    let worker = &spec.worker;
    let empty = WorkerPodTemplate::default();
    let template = worker.pod_template.as_ref().unwrap_or(&empty);
    check_reserved(template)?;
    let auth = &spec.sink.opensearch.auth;
    let basic_auth_secret = match (auth.type_, &auth.secret_ref) {
        (SinkAuthType::Basic, Some(secret)) => {
            Some((secret.name.clone(), secret.username_key.clone(), secret.password_key.clone()))
        }
        (SinkAuthType::Basic, None) => {
            return Err(invalid(
                "spec.sink.opensearch.auth.secretRef",
                "basic auth needs a Secret with the credentials",
            ));
        }
        _ => None,
    };
    Ok(WorkerPod {
        image: worker.image.clone().unwrap_or_else(|| defaults.worker_image.clone()),
        image_pull_policy: worker.image_pull_policy.clone(),
        image_pull_secrets: image_pull_secrets(template, defaults),
        resources: template.resources.clone().or_else(|| worker.resources.clone()),
        service_account_name: worker.service_account_name.clone(),
        iam_role_arn: worker.iam_role_arn.clone(),
        node_selector: if template.node_selector.is_empty() {
            worker.node_selector.clone()
        } else {
            template.node_selector.clone()
        },
        tolerations: if template.tolerations.is_empty() {
            worker.tolerations.clone()
        } else {
            template.tolerations.clone()
        },
        affinity: template.affinity.clone(),
        topology_spread_constraints: template.topology_spread_constraints.clone(),
        priority_class_name: template.priority_class_name.clone(),
        pod_labels: template.labels.clone(),
        pod_annotations: if template.annotations.is_empty() {
            worker.pod_annotations.clone()
        } else {
            template.annotations.clone()
        },
        env: template.env.clone(),
        pod_security_context: template.pod_security_context.clone(),
        container_security_context: template.container_security_context.clone(),
        termination_grace_period_seconds: worker.termination_grace_period_seconds,
        basic_auth_secret,
        ca_secret: ca_secret.map(|ca| (ca.name, ca.key)),
    })
}

/// The sink's CA bundle: the spec's `caSecretRef`, else the operator's default for an `https://`
/// endpoint (a plain-HTTP sink has no certificate to check, and its pods must not wait for a
/// Secret they would not use).
pub(super) fn sink_ca_secret(spec: &TaxiPipelineSpec, defaults: &Defaults) -> Option<SecretKey> {
    let opensearch = &spec.sink.opensearch;
    match &opensearch.ca_secret_ref {
        Some(ca) => Some(SecretKey { name: ca.name.clone(), key: ca.key.clone() }),
        None if opensearch.endpoint.starts_with("https://") => defaults.sink_ca_secret.clone(),
        None => None,
    }
}

/// Who the pipeline's NetworkPolicy admits, or `None` when it gets none: the pipeline's
/// `networkPolicy.enabled`, else the operator's default.
pub(super) fn network_policy(spec: &TaxiPipelineSpec, defaults: &Defaults) -> Option<IngressPeers> {
    let enabled = spec.worker.network_policy.as_ref().and_then(|policy| policy.enabled);
    enabled.unwrap_or(defaults.network_policy).then(|| defaults.ingress.clone())
}

/// The template's pull secrets, then the operator's, each name once.
fn image_pull_secrets(template: &WorkerPodTemplate, defaults: &Defaults) -> Vec<LocalObjectReference> {
    let mut secrets: Vec<LocalObjectReference> = Vec::new();
    let names = template.image_pull_secrets.iter().map(|s| &s.name).chain(&defaults.image_pull_secrets);
    for name in names {
        if !name.is_empty() && !secrets.iter().any(|s| &s.name == name) {
            secrets.push(LocalObjectReference { name: name.clone() });
        }
    }
    secrets
}

/// Refuses labels, annotations and environment variables the operator owns.
fn check_reserved(template: &WorkerPodTemplate) -> Result<(), InvalidSpec> {
    if let Some(key) =
        template.labels.keys().find(|k| RESERVED_LABEL_KEYS.contains(&k.as_str()) || k.starts_with(RESERVED_KEY_PREFIX))
    {
        return Err(invalid(
            "spec.worker.podTemplate.labels",
            format!("`{key}` is set by the operator or the StatefulSet controller, which select the pods by it"),
        ));
    }
    if let Some(key) = template.annotations.keys().find(|k| k.starts_with(RESERVED_KEY_PREFIX)) {
        return Err(invalid(
            "spec.worker.podTemplate.annotations",
            format!("`{key}`: annotations under {RESERVED_KEY_PREFIX} are the operator's"),
        ));
    }
    if let Some(var) = template
        .env
        .iter()
        .find(|var| RESERVED_ENV_NAMES.contains(&var.name.as_str()) || var.name.starts_with(RESERVED_ENV_PREFIX))
    {
        return Err(invalid(
            "spec.worker.podTemplate.env",
            format!(
                "`{}` is set by the operator: POD_NAME, POD_NAMESPACE and {RESERVED_ENV_PREFIX}* variables are \
                 reserved (sink credentials come from sink.opensearch.auth.secretRef)",
                var.name
            ),
        ));
    }
    Ok(())
}

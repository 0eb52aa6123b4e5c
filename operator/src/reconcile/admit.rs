//! The admit step, right after validation and before anything is written (the stream included):
//! whether the platform's [`WorkerPolicy`](crate::policy::WorkerPolicy) lets the pipeline run the
//! worker image and the ServiceAccount it names. The decisions are [`crate::policy`]'s; this step
//! only reads the named ServiceAccount when the policy looks at its labels.

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;

use super::Context;
use crate::crd::TaxiPipeline;
use crate::policy::Violation;
use crate::resources::ValidPipeline;

/// The named ServiceAccount could not be read (retried: the API server may answer next time).
#[derive(Debug, thiserror::Error)]
#[error("failed to read the ServiceAccount {namespace}/{name} spec.worker.serviceAccountName names: {source}")]
pub struct AdmitError {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The API error.
    #[source]
    pub source: kube::Error,
}

/// Why the pipeline is outside the policy, or `None` when it may run as specified. Only what the
/// author names is checked: the operator's own image and ServiceAccount are always allowed.
pub(super) async fn admit<S, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    valid: &ValidPipeline,
) -> Result<Option<Violation>, AdmitError> {
    let policy = &ctx.policy;
    if let Some(violation) = pipeline.spec.worker.image.as_deref().and_then(|image| policy.check_image(image)) {
        return Ok(Some(violation));
    }
    let Some(name) = valid.pod.service_account_name.as_deref() else {
        return Ok(None);
    };
    let namespace = valid.namespace.as_str();
    let found = if policy.reads_service_accounts() {
        let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
        accounts.get_opt(name).await.map_err(|source| AdmitError {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?
    } else {
        None
    };
    Ok(policy.check_service_account(namespace, name, found.as_ref()))
}

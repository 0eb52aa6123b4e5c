//! The apply step: writes the objects [`decide`](super::decide) built, in a fixed order with the
//! StatefulSet last: a forced server-side apply under [`FIELD_MANAGER`] for each, the assignment
//! ConfigMap on a precondition, and a delete for each optional object that is no longer wanted.
//!
//! It runs only once [`ownership::in_the_way`](super::ownership::in_the_way) found nothing
//! foreign among the objects it writes, so a forced apply only ever takes back fields of the
//! pipeline's own objects. An unwanted object is deleted only when the pipeline controls it, and
//! only as the object that was read (a UID precondition).

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::FIELD_MANAGER;
use super::ownership::{Holder, Ownership};
use crate::resources::{Resources, ValidPipeline, names};

/// A write to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A server-side apply failed (for the assignment ConfigMap also when it changed since it was
    /// read: 409 Conflict).
    #[error("failed to apply {kind} {namespace}/{name}: {source}")]
    Apply {
        /// Kind of the object.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Creating the assignment ConfigMap failed (it exists by now: another leader wrote it).
    #[error("failed to create the assignment ConfigMap {namespace}/{name}: {source}")]
    CreateAssignment {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting an object no longer wanted failed (one already gone is not a failure).
    #[error("failed to delete the unneeded {kind} {namespace}/{name}: {source}")]
    Delete {
        /// Kind of the object.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Server-side applies every built object and removes the ones no longer wanted that the
/// pipeline controls (`ownership`, as observed).
pub(super) async fn apply(
    client: &Client,
    valid: &ValidPipeline,
    resources: &Resources,
    ownership: &Ownership,
) -> Result<(), ApplyError> {
    // Without `..`: a new object in `Resources` must be handled here.
    let Resources {
        service_account,
        role,
        role_binding,
        service,
        worker_config,
        assignment,
        pod_disruption_budget,
        network_policy,
        stateful_set,
    } = resources;
    let ns = valid.namespace.as_str();
    let workers = names::workers(&valid.name);
    match service_account {
        Some(sa) => server_side_apply(client, ns, sa).await?,
        // The spec may name the very ServiceAccount the operator once created: it stays.
        None if valid.pod.service_account_name.as_deref() == Some(workers.as_str()) => {}
        None => delete_if_owned::<ServiceAccount>(client, ns, &workers, &ownership.service_account).await?,
    }
    server_side_apply::<Role>(client, ns, role).await?;
    server_side_apply::<RoleBinding>(client, ns, role_binding).await?;
    server_side_apply::<Service>(client, ns, service).await?;
    server_side_apply::<ConfigMap>(client, ns, worker_config).await?;
    write_assignment(client, ns, assignment).await?;
    match pod_disruption_budget {
        Some(pdb) => server_side_apply(client, ns, pdb).await?,
        None => delete_if_owned::<PodDisruptionBudget>(client, ns, &workers, &ownership.pod_disruption_budget).await?,
    }
    // Before the StatefulSet, so new pods start behind it.
    match network_policy {
        Some(policy) => server_side_apply::<NetworkPolicy>(client, ns, policy).await?,
        None => delete_if_owned::<NetworkPolicy>(client, ns, &workers, &ownership.network_policy).await?,
    }
    server_side_apply::<StatefulSet>(client, ns, stateful_set).await
}

/// The kind of `K`, for messages.
fn kind_of<K: Resource>() -> String
where
    K::DynamicType: Default,
{
    K::kind(&K::DynamicType::default()).into_owned()
}

async fn server_side_apply<K>(client: &Client, ns: &str, object: &K) -> Result<(), ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = object.name_any();
    match api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object)).await {
        Ok(_) => Ok(()),
        Err(source) => Err(ApplyError::Apply { kind: kind_of::<K>(), namespace: ns.to_owned(), name, source }),
    }
}

/// Writes the assignment ConfigMap on a precondition: over the resourceVersion it was read at
/// (an apply that carries a resourceVersion is refused with 409 when the object changed), or, when
/// it was absent, as a create (409 when it exists by now). So a leader that lost its lease after
/// reading can never put an older assignment over a newer one; the next pass reads again.
async fn write_assignment(client: &Client, ns: &str, assignment: &ConfigMap) -> Result<(), ApplyError> {
    if assignment.metadata.resource_version.is_some() {
        return server_side_apply(client, ns, assignment).await;
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
    match api.create(&params, assignment).await {
        Ok(_) => Ok(()),
        Err(source) => {
            Err(ApplyError::CreateAssignment { namespace: ns.to_owned(), name: assignment.name_any(), source })
        }
    }
}

/// Deletes the object `name` when `holder` says the pipeline controls it, and only while it is
/// still the object read (its UID): one replaced since is not deleted (409, the pass is retried
/// and reads it again). One already gone is not a failure.
async fn delete_if_owned<K>(client: &Client, ns: &str, name: &str, holder: &Holder) -> Result<(), ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let Holder::Pipeline(uid) = holder else { return Ok(()) };
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => {
            Err(ApplyError::Delete { kind: kind_of::<K>(), namespace: ns.to_owned(), name: name.to_owned(), source })
        }
    }
}

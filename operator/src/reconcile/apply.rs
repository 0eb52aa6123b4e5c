//! The apply step: writes the objects [`decide`](super::decide) built, in a fixed order with the
//! StatefulSet last: a forced server-side apply under [`FIELD_MANAGER`] for each, the assignment
//! ConfigMap on a precondition, and a delete for each optional object that is no longer wanted.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::FIELD_MANAGER;
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

/// Server-side applies every built object and removes the ones no longer wanted.
pub(super) async fn apply(client: &Client, valid: &ValidPipeline, resources: &Resources) -> Result<(), ApplyError> {
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
        None => delete_if_present::<ServiceAccount>(client, ns, &workers).await?,
    }
    server_side_apply::<Role>(client, ns, role).await?;
    server_side_apply::<RoleBinding>(client, ns, role_binding).await?;
    server_side_apply::<Service>(client, ns, service).await?;
    server_side_apply::<ConfigMap>(client, ns, worker_config).await?;
    write_assignment(client, ns, assignment).await?;
    match pod_disruption_budget {
        Some(pdb) => server_side_apply(client, ns, pdb).await?,
        None => delete_if_present::<PodDisruptionBudget>(client, ns, &workers).await?,
    }
    // Before the StatefulSet, so new pods start behind it.
    match network_policy {
        Some(policy) => server_side_apply::<NetworkPolicy>(client, ns, policy).await?,
        None => delete_if_present::<NetworkPolicy>(client, ns, &workers).await?,
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

async fn delete_if_present<K>(client: &Client, ns: &str, name: &str) -> Result<(), ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => {
            Err(ApplyError::Delete { kind: kind_of::<K>(), namespace: ns.to_owned(), name: name.to_owned(), source })
        }
    }
}

//! Which of a pipeline's objects the operator may write. An object it patches or deletes must
//! carry an owner reference with `controller: true` and the pipeline's UID; a same-named object
//! without one belongs to someone else (a person, another tool, another pipeline) and is never
//! touched: a forced server-side apply would take it over, and a delete by name would remove it.
//!
//! `read` looks at each object's metadata once per pass (the observe step calls it, reusing the
//! assignment ConfigMap and the StatefulSet it reads anyway); [`in_the_way`] is pure and finds
//! the first object the pass would write that is someone else's. There is a short window between
//! the read and the write in which an object could be replaced; a delete closes it with a UID
//! precondition.

use std::fmt;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::resources::{Resources, ValidPipeline, names};

/// Who holds the name of one of the pipeline's objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Holder {
    /// No object has the name: the pass creates it.
    #[default]
    Absent,
    /// The pipeline controls it; the object's own UID, for delete preconditions.
    Pipeline(String),
    /// Someone else: the pass neither patches nor deletes it.
    Foreign,
}

impl Holder {
    /// The holder of an object read with `meta` (`None`: absent), for the pipeline `uid`.
    pub fn of(meta: Option<&ObjectMeta>, uid: &str) -> Holder {
        let Some(meta) = meta else { return Holder::Absent };
        let controlled =
            meta.owner_references.iter().flatten().any(|owner| owner.controller == Some(true) && owner.uid == uid);
        match (controlled, &meta.uid) {
            (true, Some(own_uid)) => Holder::Pipeline(own_uid.clone()),
            // The API server always sets a UID; one without is no object we can safely delete.
            (true, None) | (false, _) => Holder::Foreign,
        }
    }

    /// Whether the object belongs to someone else.
    pub fn is_foreign(&self) -> bool {
        matches!(self, Holder::Foreign)
    }
}

/// The holder of each object of [`Resources`], field by field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ownership {
    /// The workers' ServiceAccount `<name>-worker`.
    pub service_account: Holder,
    /// The workers' Role.
    pub role: Holder,
    /// The workers' RoleBinding.
    pub role_binding: Holder,
    /// The headless Service.
    pub service: Holder,
    /// The worker settings ConfigMap.
    pub worker_config: Holder,
    /// The assignment ConfigMap.
    pub assignment: Holder,
    /// The PodDisruptionBudget.
    pub pod_disruption_budget: Holder,
    /// The workers' NetworkPolicy.
    pub network_policy: Holder,
    /// The worker StatefulSet.
    pub stateful_set: Holder,
}

/// An object of the pipeline's name that someone else holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignObject {
    /// Its kind.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl fmt::Display for ForeignObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{} exists and is not managed by this pipeline", self.kind, self.namespace, self.name)
    }
}

/// The first object the pass would write (apply) that someone else holds, in apply order. An
/// optional object the pass does not want is never in the way: it is left alone when foreign.
pub fn in_the_way(valid: &ValidPipeline, resources: &Resources, ownership: &Ownership) -> Option<ForeignObject> {
    // Without `..`: a new object in `Resources` must be checked here.
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
    let written = [
        (service_account.is_some(), &ownership.service_account, "ServiceAccount", names::workers(&valid.name)),
        (true, &ownership.role, "Role", name_of(role)),
        (true, &ownership.role_binding, "RoleBinding", name_of(role_binding)),
        (true, &ownership.service, "Service", name_of(service)),
        (true, &ownership.worker_config, "ConfigMap", name_of(worker_config)),
        (true, &ownership.assignment, "ConfigMap", name_of(assignment)),
        (
            pod_disruption_budget.is_some(),
            &ownership.pod_disruption_budget,
            "PodDisruptionBudget",
            names::workers(&valid.name),
        ),
        (network_policy.is_some(), &ownership.network_policy, "NetworkPolicy", names::workers(&valid.name)),
        (true, &ownership.stateful_set, "StatefulSet", name_of(stateful_set)),
    ];
    written
        .into_iter()
        .find(|(wanted, holder, _, _)| *wanted && holder.is_foreign())
        .map(|(_, _, kind, name)| ForeignObject { kind, namespace: valid.namespace.clone(), name })
}

fn name_of<K: Resource>(object: &K) -> String {
    object.meta().name.clone().unwrap_or_default()
}

/// Reading an object's metadata failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to read the {kind} {namespace}/{name}: {source}")]
pub struct ReadError {
    /// Kind of the object.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The API error.
    #[source]
    pub source: kube::Error,
}

/// Reads who holds each object the pass has not read yet (metadata only); `assignment` and
/// `stateful_set` are the holders of the two objects the observe step read in full.
pub(super) async fn read(
    client: &Client,
    valid: &ValidPipeline,
    assignment: Holder,
    stateful_set: Holder,
) -> Result<Ownership, ReadError> {
    let workers = names::workers(&valid.name);
    Ok(Ownership {
        service_account: holder::<ServiceAccount>(client, valid, &workers).await?,
        role: holder::<Role>(client, valid, &workers).await?,
        role_binding: holder::<RoleBinding>(client, valid, &workers).await?,
        service: holder::<Service>(client, valid, &workers).await?,
        worker_config: holder::<ConfigMap>(client, valid, &names::worker_config(&valid.name)).await?,
        assignment,
        pod_disruption_budget: holder::<PodDisruptionBudget>(client, valid, &workers).await?,
        network_policy: holder::<NetworkPolicy>(client, valid, &workers).await?,
        stateful_set,
    })
}

async fn holder<K>(client: &Client, valid: &ValidPipeline, name: &str) -> Result<Holder, ReadError>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), &valid.namespace);
    match api.get_metadata_opt(name).await {
        Ok(found) => Ok(Holder::of(found.as_ref().map(|o| &o.metadata), &valid.uid)),
        Err(source) => Err(ReadError {
            kind: K::kind(&K::DynamicType::default()).into_owned(),
            namespace: valid.namespace.clone(),
            name: name.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;
    use taxi_core::assignment::Assignment;

    use super::*;
    use crate::crd::TaxiPipeline;
    use crate::resources::build;
    use crate::validate::{Defaults, validate};

    const PIPELINE_UID: &str = "0b5e-uid";

    fn meta(owner_uid: &str, controller: Option<bool>) -> ObjectMeta {
        ObjectMeta {
            name: Some("nyc-worker".into()),
            uid: Some("object-uid".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: crate::crd::api_version(),
                kind: crate::crd::KIND.to_owned(),
                name: "nyc".into(),
                uid: owner_uid.to_owned(),
                controller,
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_a_controller_reference_to_this_pipeline_makes_an_object_ours() {
        assert_eq!(Holder::of(None, PIPELINE_UID), Holder::Absent);
        assert_eq!(
            Holder::of(Some(&meta(PIPELINE_UID, Some(true))), PIPELINE_UID),
            Holder::Pipeline("object-uid".into())
        );
        assert_eq!(Holder::of(Some(&meta(PIPELINE_UID, Some(false))), PIPELINE_UID), Holder::Foreign, "not controller");
        assert_eq!(Holder::of(Some(&meta(PIPELINE_UID, None)), PIPELINE_UID), Holder::Foreign);
        assert_eq!(
            Holder::of(Some(&meta("a-deleted-pipelines-uid", Some(true))), PIPELINE_UID),
            Holder::Foreign,
            "a same-named pipeline that was deleted and created again has a new UID"
        );
        assert_eq!(Holder::of(Some(&ObjectMeta::default()), PIPELINE_UID), Holder::Foreign, "no owner at all");
    }

    fn valid() -> ValidPipeline {
        let pipeline: TaxiPipeline = serde_json::from_value(json!({
            "apiVersion": "taxipipeline.io/v1alpha1",
            "kind": "TaxiPipeline",
            "metadata": {"name": "nyc", "namespace": "taxi", "uid": PIPELINE_UID},
            "spec": {
                "stream": {"name": "taxi-trips"},
                "checkpoint": {"uri": "s3://taxi-checkpoints/nyc"},
                "sink": {"opensearch": {"endpoint": "https://search.example.com"}}
            }
        }))
        .expect("a TaxiPipeline");
        validate(&pipeline, &Defaults::new("ghcr.io/taxipipeline/taxi:test", "taxi-system")).expect("valid")
    }

    fn owned() -> Ownership {
        let ours = Holder::Pipeline("object-uid".into());
        Ownership {
            service_account: ours.clone(),
            role: ours.clone(),
            role_binding: ours.clone(),
            service: ours.clone(),
            worker_config: ours.clone(),
            assignment: ours.clone(),
            pod_disruption_budget: ours.clone(),
            network_policy: ours.clone(),
            stateful_set: ours,
        }
    }

    #[test]
    fn a_foreign_object_the_pass_would_write_is_in_the_way() {
        let valid = valid();
        let two_workers = build(&valid, 2, &Assignment::default(), "-");
        assert_eq!(in_the_way(&valid, &two_workers, &owned()), None);
        assert_eq!(in_the_way(&valid, &two_workers, &Ownership::default()), None, "absent objects are created");

        let foreign_pdb = Ownership { pod_disruption_budget: Holder::Foreign, ..owned() };
        let found = in_the_way(&valid, &two_workers, &foreign_pdb).expect("the PDB is wanted with two workers");
        assert_eq!(found.to_string(), "PodDisruptionBudget taxi/nyc-worker exists and is not managed by this pipeline");

        let foreign_statefulset = Ownership { stateful_set: Holder::Foreign, ..owned() };
        let found = in_the_way(&valid, &two_workers, &foreign_statefulset).expect("the StatefulSet is always written");
        assert_eq!((found.kind, found.name.as_str()), ("StatefulSet", "nyc-worker"));

        let foreign_policy = Ownership { network_policy: Holder::Foreign, ..owned() };
        let found = in_the_way(&valid, &two_workers, &foreign_policy).expect("the NetworkPolicy is on by default");
        assert_eq!(found.to_string(), "NetworkPolicy taxi/nyc-worker exists and is not managed by this pipeline");

        let foreign_settings = Ownership { worker_config: Holder::Foreign, ..owned() };
        let found = in_the_way(&valid, &two_workers, &foreign_settings).expect("the settings are always written");
        assert_eq!((found.kind, found.name.as_str()), ("ConfigMap", "nyc-worker-config"));
    }

    #[test]
    fn a_foreign_object_the_pass_does_not_want_is_left_alone_without_complaint() {
        let mut valid = valid();
        valid.pod.service_account_name = Some("nyc-worker".into());
        valid.network_policy = None;
        // One worker: no PDB; a named ServiceAccount: none created; no NetworkPolicy.
        let one_named = build(&valid, 1, &Assignment::default(), "-");
        let foreign = Ownership {
            service_account: Holder::Foreign,
            pod_disruption_budget: Holder::Foreign,
            network_policy: Holder::Foreign,
            ..owned()
        };
        assert_eq!(in_the_way(&valid, &one_named, &foreign), None);
    }
}

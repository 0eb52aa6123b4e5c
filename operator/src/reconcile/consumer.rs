//! The enhanced fan-out consumer step. The operator answers for the consumer it names for a
//! pipeline (`<namespace>.<name>`, [`PipelineId::default_consumer_name`]; unique, since a
//! namespace holds no dot, and at most 63 + 1 + 45 characters, well within Kinesis' 128): the
//! workers register it, and the operator deregisters it once the pipeline stops using it, so no
//! consumer is left billing per shard-hour. That happens after a switch to polling (or to a
//! consumer the author names), here, and when the pipeline is deleted, in
//! [`cleanup`](super::cleanup) through the finalizer.
//!
//! A consumer named by `spec.stream.efoConsumerName` is the author's: it may be shared with
//! another pipeline or another application, so the operator never deregisters it.
//!
//! [`plan`] is pure and runs in [`decide`](super::decide); `settle` carries the plan out after
//! the apply step.

use kube::ResourceExt;
use kube::runtime::events::EventType;
use taxi_core::identity::PipelineId;
use taxi_core::settings::ConsumerType;

use super::observe::StatefulSetSeen;
use super::{Context, status};
use crate::crd::TaxiPipeline;
use crate::observe::{StreamRef, Streams};
use crate::resources::{ValidPipeline, config_hash};

/// The consumer the operator names for the pipeline and answers for now: `Some` while the
/// pipeline reads with enhanced fan-out without naming a consumer of its own.
pub fn named_consumer(pipeline: &TaxiPipeline) -> Option<String> {
    let stream = &pipeline.spec.stream;
    (stream.consumer == ConsumerType::Efo && stream.efo_consumer_name.is_none())
        .then(|| PipelineId::new(pipeline.namespace().as_deref(), &pipeline.name_any()).default_consumer_name())
}

/// The consumer of the operator's naming that may still exist: the one it names now, else the one
/// the status recorded before a switch away from it. While there is one, the pipeline holds the
/// finalizer, so a deletion deregisters it.
pub fn held_consumer(pipeline: &TaxiPipeline) -> Option<String> {
    named_consumer(pipeline).or_else(|| pipeline.status.as_ref().and_then(|s| s.efo_consumer.clone()))
}

/// What a pass does about the consumer of the operator's naming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerPlan {
    /// There is none.
    None,
    /// The workers read through it: the status records it.
    InUse(String),
    /// The pipeline left it, but a worker may still run the settings that use it (and register it
    /// again if it restarts): the status keeps it until the workers rolled to the new settings.
    Draining(String),
    /// No worker can use it any more: deregister it and forget it.
    Deregister(String),
}

impl ConsumerPlan {
    /// What `status.efoConsumer` holds after the pass.
    pub fn recorded(&self) -> Option<String> {
        match self {
            ConsumerPlan::InUse(name) | ConsumerPlan::Draining(name) => Some(name.clone()),
            ConsumerPlan::None | ConsumerPlan::Deregister(_) => None,
        }
    }
}

/// Decides about the consumer from the spec, the status and the worker StatefulSet as observed
/// before this pass's apply. A consumer the pipeline left is deregistered only once the
/// StatefulSet's template already carries this pass's worker settings and every pod runs it:
/// then the apply of this pass writes the same settings again and no pod can still be on the old
/// ones. Deregistering earlier would cut off workers that still read through it, and a worker
/// restarting on the old settings would register it again, after which nothing would remove it.
pub fn plan(pipeline: &TaxiPipeline, valid: &ValidPipeline, statefulset: &StatefulSetSeen) -> ConsumerPlan {
    if let Some(name) = named_consumer(pipeline) {
        return ConsumerPlan::InUse(name);
    }
    let Some(recorded) = pipeline.status.as_ref().and_then(|s| s.efo_consumer.clone()) else {
        return ConsumerPlan::None;
    };
    if statefulset.runs_only(&config_hash(&valid.settings.to_json())) {
        ConsumerPlan::Deregister(recorded)
    } else {
        ConsumerPlan::Draining(recorded)
    }
}

/// Carries out `plan` after the apply step and returns what was done: a consumer that could not
/// be deregistered stays [`ConsumerPlan::Draining`] (recorded, tried again next pass) and a
/// Warning Event says why; the pass itself goes on, the pipeline runs without it.
pub(super) async fn settle<S: Streams, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    stream: &StreamRef,
    plan: ConsumerPlan,
) -> ConsumerPlan {
    let ConsumerPlan::Deregister(name) = plan else { return plan };
    match ctx.streams.deregister_consumer(stream, &name).await {
        Ok(()) => {
            let note = format!("deregistered the enhanced fan-out consumer {name} of stream {}", stream.name);
            status::publish(ctx, pipeline, EventType::Normal, "ConsumerDeregistered", "Deregister", note).await;
            ConsumerPlan::Deregister(name)
        }
        Err(error) => {
            tracing::warn!(consumer = %name, error = %error, "failed to deregister an enhanced fan-out consumer");
            let note = format!(
                "failed to deregister the enhanced fan-out consumer {name} of stream {}; retrying: {error}",
                stream.name
            );
            status::publish(ctx, pipeline, EventType::Warning, "ConsumerNotDeregistered", "Deregister", note).await;
            ConsumerPlan::Draining(name)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::validate::{Defaults, validate};

    fn pipeline(stream: Value, status: Value) -> TaxiPipeline {
        let mut spec_stream = json!({"name": "taxi-trips"});
        if let (Some(target), Some(extra)) = (spec_stream.as_object_mut(), stream.as_object()) {
            target.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "taxipipeline.io/v1alpha1",
            "kind": "TaxiPipeline",
            "metadata": {"name": "nyc", "namespace": "taxi", "uid": "0b5e-uid"},
            "spec": {
                "stream": spec_stream,
                "checkpoint": {"uri": "s3://taxi-checkpoints/nyc"},
                "sink": {"opensearch": {"endpoint": "https://search.example.com"}}
            },
            "status": status
        }))
        .expect("a TaxiPipeline")
    }

    fn valid(pipeline: &TaxiPipeline) -> ValidPipeline {
        validate(pipeline, &Defaults::new("ghcr.io/taxipipeline/taxi:test", "taxi-system")).expect("valid")
    }

    /// The StatefulSet as a pass sees it: its pods all run `settings_of`'s settings (`rolled_out`)
    /// or are still rolling to them.
    fn workers_on(settings_of: &TaxiPipeline, rolled_out: bool) -> StatefulSetSeen {
        StatefulSetSeen {
            exists: true,
            replicas: Some(2),
            pods: 2,
            ready: 2,
            config_hash: Some(config_hash(&valid(settings_of).settings.to_json())),
            rolled_out,
        }
    }

    #[test]
    fn only_the_consumer_the_operator_names_is_its_own() {
        let efo = pipeline(json!({"consumer": "efo"}), json!({}));
        assert_eq!(named_consumer(&efo).as_deref(), Some("taxi.nyc"));
        let named = pipeline(json!({"consumer": "efo", "efoConsumerName": "shared-reader"}), json!({}));
        assert_eq!(named_consumer(&named), None, "the author's consumer may be shared: never deregistered");
        let polling = pipeline(json!({}), json!({}));
        assert_eq!((named_consumer(&polling), held_consumer(&polling)), (None, None));
        let left = pipeline(json!({}), json!({"efoConsumer": "taxi.nyc"}));
        assert_eq!(held_consumer(&left).as_deref(), Some("taxi.nyc"), "recorded until deregistered");
    }

    #[test]
    fn a_consumer_in_use_is_recorded() {
        let efo = pipeline(json!({"consumer": "efo"}), json!({}));
        let plan = plan(&efo, &valid(&efo), &workers_on(&efo, true));
        assert_eq!(plan, ConsumerPlan::InUse("taxi.nyc".into()));
        assert_eq!(plan.recorded().as_deref(), Some("taxi.nyc"));
    }

    #[test]
    fn a_switch_to_polling_deregisters_only_once_every_worker_runs_polling() {
        let efo = pipeline(json!({"consumer": "efo"}), json!({"efoConsumer": "taxi.nyc"}));
        let polling = pipeline(json!({"consumer": "polling"}), json!({"efoConsumer": "taxi.nyc"}));
        let draining = ConsumerPlan::Draining("taxi.nyc".into());
        // The pass of the edit: the pods still run the fan-out settings.
        assert_eq!(plan(&polling, &valid(&polling), &workers_on(&efo, true)), draining);
        // The template says polling, but the rollout is not through.
        assert_eq!(plan(&polling, &valid(&polling), &workers_on(&polling, false)), draining);
        assert_eq!(draining.recorded().as_deref(), Some("taxi.nyc"));
        // Every pod runs polling now.
        let done = plan(&polling, &valid(&polling), &workers_on(&polling, true));
        assert_eq!(done, ConsumerPlan::Deregister("taxi.nyc".into()));
        assert_eq!(done.recorded(), None);
        // No StatefulSet, no pod to use it.
        assert_eq!(plan(&polling, &valid(&polling), &StatefulSetSeen::default()), done);
    }

    #[test]
    fn a_switch_to_a_consumer_of_the_authors_naming_deregisters_the_operators() {
        let renamed = pipeline(
            json!({"consumer": "efo", "efoConsumerName": "shared-reader"}),
            json!({"efoConsumer": "taxi.nyc"}),
        );
        let plan = plan(&renamed, &valid(&renamed), &workers_on(&renamed, true));
        assert_eq!(plan, ConsumerPlan::Deregister("taxi.nyc".into()));
    }

    #[test]
    fn a_polling_pipeline_without_a_recorded_consumer_has_nothing_to_do() {
        let polling = pipeline(json!({}), json!({}));
        assert_eq!(plan(&polling, &valid(&polling), &workers_on(&polling, true)), ConsumerPlan::None);
    }
}

//! Who a pipeline is in the state it may share with other pipelines: checkpoint keys, dead
//! letters, document ids and the enhanced fan-out consumer. In Kubernetes two TaxiPipelines of the
//! same name may live in two namespaces and read one stream, write one index and checkpoint to one
//! bucket, so the namespace is part of the identity. Outside Kubernetes there is no namespace and
//! the identity is the name alone.

use std::fmt;

/// A pipeline's identity: its name, and its namespace when it runs in Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineId {
    namespace: Option<String>,
    name: String,
}

impl PipelineId {
    /// The pipeline `name` in `namespace` (an empty namespace is none).
    pub fn new(namespace: Option<&str>, name: &str) -> PipelineId {
        PipelineId { namespace: namespace.filter(|ns| !ns.is_empty()).map(str::to_owned), name: name.to_owned() }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pipeline's namespace, if it has one.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// `namespace/name`, or `name` without a namespace: the prefix of the pipeline's checkpoint
    /// keys and document ids, and the `pipeline` field of its documents.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{namespace}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The same pipeline as it was keyed before namespaces were part of the identity (`None`
    /// without a namespace: then nothing changed).
    pub fn legacy(&self) -> Option<PipelineId> {
        self.namespace.as_ref().map(|_| PipelineId { namespace: None, name: self.name.clone() })
    }

    /// The enhanced fan-out consumer name when none is configured: `namespace.name` (a namespace
    /// holds no dot, so no two pipelines share one), or `taxi-name` without a namespace.
    pub fn default_consumer_name(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{namespace}.{}", self.name),
            None => format!("taxi-{}", self.name),
        }
    }
}

impl fmt::Display for PipelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_keys_everything_shared_and_an_empty_one_is_none() {
        let a = PipelineId::new(Some("team-a"), "nyc");
        let b = PipelineId::new(Some("team-b"), "nyc");
        assert_eq!((a.key(), b.key()), ("team-a/nyc".to_owned(), "team-b/nyc".to_owned()));
        assert_eq!(a.default_consumer_name(), "team-a.nyc");
        // A dash in the namespace cannot make two consumer names meet.
        assert_ne!(
            PipelineId::new(Some("a-b"), "c").default_consumer_name(),
            PipelineId::new(Some("a"), "b-c").default_consumer_name()
        );
        assert_eq!(a.legacy(), Some(PipelineId::new(None, "nyc")));
        let outside = PipelineId::new(Some(""), "nyc");
        assert_eq!((outside.key(), outside.legacy()), ("nyc".to_owned(), None));
        assert_eq!(outside.default_consumer_name(), "taxi-nyc");
    }
}

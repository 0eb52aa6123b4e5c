//! The workers' NetworkPolicy: traffic into the worker pods is admitted only on their HTTP port,
//! from the operator's pods and from the metrics scrapers the platform named.
//!
//! Only ingress is restricted. The workers call the stream, the checkpoint bucket and the sink,
//! whose endpoints are arbitrary URLs (AWS service endpoints, in-cluster Services, private
//! endpoints), so an egress rule the operator could write would either be wrong or allow
//! everything; a platform that restricts egress writes its own policy (`docs/operations/security.md`).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{HTTP_PORT, ValidPipeline, metadata, names, selector_labels};

/// The namespace label every namespace carries with its own name (Kubernetes 1.21 and later).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Who may reach the workers' HTTP port: the operator, and the metrics scrapers if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngressPeers {
    /// The operator's namespace.
    pub operator_namespace: String,
    /// Labels of the operator's pods in it; empty: every pod of that namespace.
    pub operator_pod_labels: BTreeMap<String, String>,
    /// Labels of the namespaces whose pods may scrape the workers. With
    /// [`IngressPeers::metrics_pod_labels`] a scraper must match both.
    pub metrics_namespace_labels: BTreeMap<String, String>,
    /// Labels of the pods that may scrape the workers; without
    /// [`IngressPeers::metrics_namespace_labels`], pods in the pipeline's own namespace.
    pub metrics_pod_labels: BTreeMap<String, String>,
}

impl IngressPeers {
    /// The operator's pods, in its namespace.
    fn operator(&self) -> NetworkPolicyPeer {
        NetworkPolicyPeer {
            namespace_selector: Some(match_labels(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_owned(),
                self.operator_namespace.clone(),
            )]))),
            pod_selector: Some(match_labels(self.operator_pod_labels.clone())),
            ..NetworkPolicyPeer::default()
        }
    }

    /// The metrics scrapers, when any are named. A peer with both selectors admits the pods
    /// matching both; a namespace selector alone admits every pod of those namespaces; a pod
    /// selector alone, those pods of the policy's own namespace.
    fn metrics(&self) -> Option<NetworkPolicyPeer> {
        let selector = |labels: &BTreeMap<String, String>| (!labels.is_empty()).then(|| match_labels(labels.clone()));
        let peer = NetworkPolicyPeer {
            namespace_selector: selector(&self.metrics_namespace_labels),
            pod_selector: selector(&self.metrics_pod_labels),
            ..NetworkPolicyPeer::default()
        };
        (peer.namespace_selector.is_some() || peer.pod_selector.is_some()).then_some(peer)
    }
}

/// A selector of exactly these labels; no labels select everything.
fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector { match_labels: (!labels.is_empty()).then_some(labels), ..LabelSelector::default() }
}

/// The NetworkPolicy `<pipeline>-worker` over the pipeline's worker pods.
pub(super) fn build(pipeline: &ValidPipeline, peers: &IngressPeers) -> NetworkPolicy {
    let from = std::iter::once(peers.operator()).chain(peers.metrics()).collect();
    NetworkPolicy {
        metadata: metadata(pipeline, names::workers(&pipeline.name)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(selector_labels(&pipeline.name))),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(HTTP_PORT)),
                    protocol: Some("TCP".to_owned()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }
}

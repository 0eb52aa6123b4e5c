//! The TaxiPipeline operator as a library; the `taxi-operator` binary and the tests use it.
//!
//! From the pure middle outwards:
//! - [`crd`]: the `TaxiPipeline` custom resource (the CRD is generated from it);
//! - [`validate`]: a TaxiPipeline to the builders' input, or the reason it cannot run;
//! - [`policy`]: what the platform team lets pipelines ask for (worker images, ServiceAccounts);
//! - [`scaling`]: the replicas of a pass: `spec.parallelism`, or the autoscaler with it as the floor;
//! - [`rollout`]: how a replica change is staged so only moved shards pause;
//! - [`autoscale`]: the autoscaling policy, one pure function of an observation and a history;
//! - [`simulate`]: a deterministic time-stepped pipeline to compare autoscaling policies on traces;
//! - [`resources`]: pure builders of every Kubernetes object of a pipeline;
//! - [`observe`]: Kinesis shard listing and the workers' `/status`, behind traits;
//! - [`reshard`]: a managed stream's creation and resharding within Kinesis' limits, planned purely;
//! - [`reconcile`]: the reconcile pass, a driver over one module per step (the only module that
//!   calls the Kubernetes API for it);
//! - [`leader`], [`metrics`], [`controller`]: leader election, metrics and the running operator;
//! - [`cli`]: the `taxi-operator` command line, which `main.rs` parses and dispatches.
//!
//! One pass over a TaxiPipeline, step by step ([`reconcile`] draws it):
//! [`crd`] → [`validate`] → [`reconcile::admit`] ([`policy`]) → [`reconcile::observe`] →
//! [`reconcile::decide`] (pure) → [`reconcile::apply`] → [`reconcile::consumer`] →
//! [`reconcile::status`]; for a stream the operator manages, [`reconcile::stream`] creates or
//! reshards it before it is observed.

pub mod autoscale;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod error_chain;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod policy;
pub mod reconcile;
pub mod reshard;
pub mod resources;
pub mod rollout;
pub mod scaling;
pub mod simulate;
pub mod validate;

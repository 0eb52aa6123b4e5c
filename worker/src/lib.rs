//! TaxiPipeline worker library: everything around the pure core ([`taxi_core`]) that talks to the
//! world.
//!
//! - [`local`]: the whole pipeline embedded in one process (`taxi-worker local`), and
//!   [`dashboard`], its live page and JSON API; [`pace`] replays event time at a chosen speed;
//! - [`kinesis`], [`run`], [`sink`], [`opensearch`], [`dead_letter`], [`store`], [`metrics`],
//!   [`http`], [`signals`]: the pod command (`taxi-worker run`);
//! - [`settings`]: the pipeline settings the operator renders for its workers (`run --config`);
//! - [`handoff`]: where a worker's assignment comes from, and moving shards between workers;
//! - [`replay`]: the producer (`taxi-worker replay`).

pub mod dashboard;
pub mod dead_letter;
pub mod handoff;
pub mod http;
pub mod kinesis;
pub mod local;
pub mod metrics;
pub mod opensearch;
pub mod pace;
pub mod replay;
pub mod run;
pub mod settings;
pub mod signals;
pub mod sink;
pub mod store;

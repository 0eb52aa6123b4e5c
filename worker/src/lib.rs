//! TaxiPipeline worker library: the commands of `taxi-worker`, built from the pure core
//! ([`taxi_core`]) and the I/O adapters ([`taxi_io`]).
//!
//! - [`cli`]: the command line, one module per command;
//! - [`local`]: the whole pipeline embedded in one process (`taxi-worker local`), and
//!   [`dashboard`], its live page and JSON API; [`pace`] replays event time at a chosen speed;
//! - [`run`], [`metrics`]: the pod command (`taxi-worker run`);
//! - [`handoff`]: where a worker's assignment comes from, and moving shards between workers;
//! - [`replay`]: the producer (`taxi-worker replay`).

pub mod cli;
pub mod dashboard;
pub mod handoff;
pub mod local;
pub mod metrics;
pub mod pace;
pub mod replay;
pub mod run;

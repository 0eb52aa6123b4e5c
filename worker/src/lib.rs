//! TaxiPipeline worker library: the event-time analytics engine and the pieces around it.
//!
//! Layers, from the pure middle outwards:
//! - [`event`], [`time`], [`geo`], [`partition`], [`config`]: the contracts of DESIGN §2–§4;
//! - [`input`]: parsing records and reading JSON-lines / TLC CSV files (plain, gzip, zstd);
//! - [`window`], [`analysis`], [`shard`], [`merge`]: per-shard event-time aggregation and the merge;
//! - [`checkpoint`]: per-shard checkpoint state and its stores;
//! - [`generate`]: the synthetic NYC trip generator;
//! - [`local`]: the whole pipeline embedded in one process (`taxi-worker local`), and
//!   [`dashboard`], its live page and JSON API;
//! - [`kinesis`], [`run`], [`sink`], [`metrics`], [`http`], [`signals`]: the pod command
//!   (`taxi-worker run`);
//! - [`settings`]: the pipeline settings the operator renders for its workers (`run --config`);
//! - [`assignment`]: which worker owns which shard (DESIGN §7), shared with the operator;
//! - [`handoff`]: where a worker's assignment comes from, and moving shards between workers;
//! - [`replay`]: the producer (`taxi-worker replay`).

pub mod analysis;
pub mod assignment;
pub mod checkpoint;
pub mod config;
pub mod dashboard;
pub mod dead_letter;
pub mod dedupe;
pub mod event;
pub mod generate;
pub mod geo;
pub mod handoff;
pub mod http;
pub mod identity;
pub mod input;
pub mod kinesis;
pub mod local;
pub mod merge;
pub mod metrics;
pub mod opensearch;
pub mod oracle;
pub mod pace;
pub mod partition;
pub mod replay;
pub mod run;
pub mod settings;
pub mod shard;
pub mod signals;
pub mod sink;
pub mod store;
pub mod time;
pub mod window;

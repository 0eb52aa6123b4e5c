//! TaxiPipeline's pure core: everything that decides what a result is, and nothing that waits.
//! No async runtime, no cloud SDK, no network: the worker and the operator bring the I/O.
//!
//! From the inside out:
//! - [`event`], [`time`], [`geo`], [`partition`]: what a record means, event time, the geohash
//!   grid and airport geofences, and the partition key a producer sends;
//! - [`input`]: parsing records and reading JSON-lines / TLC CSV files (plain, gzip, zstd);
//! - [`config`]: event-time and analysis settings, and their fingerprint; [`duration`]: the one
//!   grammar of durations as text (Go's), shared by the flags, the CRD and the chart;
//! - [`window`], [`analysis`], [`dedupe`], [`shard`], [`merge`]: per-shard event-time aggregation
//!   and the merge across shards;
//! - [`document`]: the documents closed windows become, their ids and versions, and the merged view;
//! - [`checkpoint`]: a shard's state as it is stored, and its format;
//! - [`topology`], [`assignment`]: the stream's shards and which worker owns which;
//! - [`identity`]: how a pipeline names its state;
//! - [`settings`], [`start_position`]: the settings the operator renders for its workers, and
//!   where a shard with nothing read yet starts;
//! - [`status`]: the worker's `/status` document, read by the operator;
//! - [`redact`]: URLs with their credentials masked, for everything the pipeline shows;
//! - [`generate`]: the synthetic NYC trip generator, and [`oracle`], the batch computation every
//!   pipeline run must agree with.

pub mod analysis;
pub mod archive;
pub mod assignment;
pub mod checkpoint;
pub mod config;
pub mod dedupe;
pub mod document;
pub mod duration;
pub mod event;
pub mod generate;
pub mod geo;
pub mod identity;
pub mod input;
pub mod merge;
pub mod oracle;
pub mod partition;
pub mod redact;
pub mod settings;
pub mod shard;
pub mod start_position;
pub mod status;
pub mod time;
pub mod topology;
pub mod window;

//! TaxiPipeline's I/O edge: the adapters between the pure core ([`taxi_core`]) and the services
//! a pipeline talks to. The worker and the operator are built from these.
//!
//! - [`kinesis`]: the Kinesis API behind a trait (the SDK adapter implements it, tests fake it),
//!   KPL aggregation, and the polling and enhanced fan-out shard readers;
//! - [`s3`]: how the adapters reach S3 (settings, client); [`input`]: input objects in S3, and the
//!   resolution of an input argument (`s3://…` or a local path) into the objects to read;
//! - [`store`]: checkpoint stores, a directory and S3 side by side, with conditional writes;
//! - [`sink`]: where results go, a JSON-lines file or OpenSearch, and the dead-letter store for
//!   documents OpenSearch refuses;
//! - [`retry`]: the one back-off policy every retrying loop waits by;
//! - [`http`]: the small HTTP server behind `/healthz`, `/readyz`, `/metrics` and `/status`;
//! - [`signals`]: SIGTERM and Ctrl-C as one future.

pub mod http;
pub mod input;
pub mod kinesis;
pub mod retry;
pub mod s3;
pub mod signals;
pub mod sink;
pub mod store;

//! TaxiPipeline's test kit, shared by the tests of every crate (a dev-dependency only).
//!
//! - [`services`]: the emulators `.ci/services.sh` starts, found from the environment;
//!   [`kinesis`], [`s3`] and [`opensearch`] talk to them.
//! - [`input`]: generated trip files, split or written line by line; [`oracle`]: what the
//!   pipeline must compute from them; [`documents`]: hand-made partial documents; [`parquet`]:
//!   TLC-layout Parquet trip files written by pyarrow.
//! - [`memory`]: a Kinesis stream held in memory, for unit tests; [`fake`]: a Kinesis that
//!   fails, loses shards or slows down on request; [`proxy`]: TCP proxies that take a service
//!   down or drop its answers.
//! - [`process`]: `taxi-worker` as a child process (the binary's path comes from the caller,
//!   since the kit cannot depend on the worker).
//! - [`apiserver`]: a mocked Kubernetes API server that answers a scenario of expected calls.

pub mod apiserver;
pub mod documents;
pub mod fake;
pub mod input;
pub mod kinesis;
pub mod memory;
pub mod opensearch;
pub mod oracle;
pub mod parquet;
pub mod process;
pub mod proxy;
pub mod s3;
pub mod services;

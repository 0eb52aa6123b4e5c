//! The TaxiPipeline operator as a library: the `TaxiPipeline` custom resource ([`crd`]) and, as
//! they land, the controller's pieces. The `taxi-operator` binary and the tests use it.

pub mod crd;
pub mod leader;
pub mod metrics;

//! Kinesis: the API the worker and producer use, KPL aggregation, and the shard readers.

pub mod api;
pub mod efo;
pub mod kpl;
pub mod reader;

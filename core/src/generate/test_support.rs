//! What the generator's tests share: small configurations, and the trips, bytes and timestamps
//! they produce.

use super::format::push_timestamp;
use super::{GeneratedRecord, GeneratorConfig, TripGenerator, write_json_lines};
use crate::event::{Millis, Trip};

pub(super) fn config(trips: u64, seed: u64) -> GeneratorConfig {
    GeneratorConfig { trips, seed, ..GeneratorConfig::default() }
}

pub(super) fn trips_of(config: &GeneratorConfig) -> Vec<Trip> {
    TripGenerator::new(config)
        .filter_map(|r| match r {
            GeneratedRecord::Trip(t) => Some(t),
            _ => None,
        })
        .collect()
}

pub(super) fn bytes_of(config: &GeneratorConfig) -> Vec<u8> {
    let mut out = Vec::new();
    write_json_lines(config, &mut out).unwrap();
    out
}

pub(super) fn timestamp(at: Millis) -> String {
    let mut buf = Vec::new();
    push_timestamp(&mut buf, at);
    String::from_utf8(buf).unwrap()
}

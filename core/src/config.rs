//! Engine configuration: event time and the analyses, with their defaults.
//! One definition, used by local mode, by `taxi-worker run` and by the tests.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::Millis;
use crate::geo::{BoundingBox, Geofence, MAX_GEOHASH_PRECISION};

/// How a shard's watermark advances: the one definition used by the CRD
/// (`spec.eventTime.watermark`), the `--watermark` flag and the engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum WatermarkStrategy {
    /// Highest event time seen on the shard minus `maxOutOfOrderness`, never decreasing.
    #[default]
    Bounded,
    /// Only the producer's watermark events move the watermark.
    Punctuated,
    /// Kinesis ApproximateArrivalTimestamp minus `maxOutOfOrderness`.
    Arrival,
}

/// Event-time settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventTimeConfig {
    /// Watermark strategy.
    pub watermark: WatermarkStrategy,
    /// Bound on disorder for `bounded` and `arrival`, in milliseconds.
    pub max_out_of_orderness_ms: Millis,
    /// How long after its end a window still accepts trips, in milliseconds.
    pub allowed_lateness_ms: Millis,
    /// A shard without records for this long stops holding merged windows open.
    pub idle_timeout_ms: Millis,
    /// A record whose event time lies more than this past the shard's latest event time (or past
    /// its own arrival) is counted invalid as `implausible_time`; 0 turns the check off.
    #[serde(default = "default_max_time_jump_ms")]
    pub max_time_jump_ms: Millis,
}

/// The default of [`EventTimeConfig::max_time_jump_ms`]: one day.
pub const DEFAULT_MAX_TIME_JUMP_MS: Millis = 86_400_000;

fn default_max_time_jump_ms() -> Millis {
    DEFAULT_MAX_TIME_JUMP_MS
}

impl Default for EventTimeConfig {
    fn default() -> Self {
        EventTimeConfig {
            watermark: WatermarkStrategy::default(),
            max_out_of_orderness_ms: 60_000,
            allowed_lateness_ms: 0,
            idle_timeout_ms: 60_000,
            max_time_jump_ms: DEFAULT_MAX_TIME_JUMP_MS,
        }
    }
}

/// The pickup hot-spot analysis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HotSpotConfig {
    /// Tumbling window size in milliseconds.
    pub window_ms: Millis,
    /// Geohash length of a cell (1–12). The airport analysis keys pickups with the same cells.
    pub geohash_precision: u8,
    /// A merged cell is reported when it has at least this many pickups.
    pub min_pickups: u64,
}

impl Default for HotSpotConfig {
    fn default() -> Self {
        HotSpotConfig { window_ms: 600_000, geohash_precision: 6, min_pickups: 2 }
    }
}

/// The airport trip-duration analysis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AirportTripsConfig {
    /// Tumbling window size in milliseconds.
    pub window_ms: Millis,
    /// A merged (cell, airport) pair is reported when it has at least this many trips.
    pub min_trips: u64,
    /// Airports, matched against the dropoff in order; the first match wins.
    pub airports: Vec<Geofence>,
}

impl Default for AirportTripsConfig {
    fn default() -> Self {
        AirportTripsConfig { window_ms: 600_000, min_trips: 2, airports: Geofence::default_airports() }
    }
}

/// Everything a shard processor and the merge need to know.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Trips whose pickup or dropoff lies outside are counted as `outside_region`.
    pub region: BoundingBox,
    /// Event-time settings.
    pub event_time: EventTimeConfig,
    /// Hot spots.
    pub hot_spots: HotSpotConfig,
    /// Airport trips.
    pub airport_trips: AirportTripsConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            region: BoundingBox::NYC,
            event_time: EventTimeConfig::default(),
            hot_spots: HotSpotConfig::default(),
            airport_trips: AirportTripsConfig::default(),
        }
    }
}

/// A configuration that cannot run, with the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A window size of zero or less.
    #[error("{name} must be longer than zero")]
    NonPositiveWindow {
        /// The offending setting.
        name: &'static str,
    },
    /// A window that is not a whole number of seconds: document ids name windows by their start
    /// in seconds, so two windows would share ids.
    #[error("{name} must be a whole number of seconds, got {ms} ms")]
    FractionalWindow {
        /// The offending setting.
        name: &'static str,
        /// Its value in milliseconds.
        ms: i64,
    },
    /// A negative duration.
    #[error("{name} must not be negative")]
    NegativeDuration {
        /// The offending setting.
        name: &'static str,
    },
    /// Geohash precision outside 1–12.
    #[error("geohash precision must be 1 to {MAX_GEOHASH_PRECISION}, got {0}")]
    GeohashPrecision(u8),
    /// A box with min > max or outside the coordinate ranges.
    #[error("{name} is not a valid bounding box")]
    BadBox {
        /// The box's name.
        name: String,
    },
    /// More airports than the engine's compact key supports.
    #[error("at most 255 airports are supported, got {0}")]
    TooManyAirports(usize),
}

impl EngineConfig {
    /// A short hash of the settings a shard's state depends on: the region, the analyses
    /// (windows, precision, thresholds, airports) and how event time closes windows (watermark
    /// strategy, out-of-orderness, allowed lateness). Checkpoints carry it, so state is never
    /// restored under other settings. The idle timeout and the time-jump bound are left out: they
    /// only decide what is read, never what a window holds.
    pub fn fingerprint(&self) -> String {
        use md5::Digest;
        let et = &self.event_time;
        let identity = serde_json::json!({
            "region": self.region,
            "event_time": [et.watermark, et.max_out_of_orderness_ms, et.allowed_lateness_ms],
            "hot_spots": self.hot_spots,
            "airport_trips": self.airport_trips,
        });
        let digest = md5::Md5::digest(identity.to_string().as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Checks the configuration, returning the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, ms) in
            [("hot-spot window", self.hot_spots.window_ms), ("airport-trip window", self.airport_trips.window_ms)]
        {
            if ms <= 0 {
                return Err(ConfigError::NonPositiveWindow { name });
            }
            if ms % 1000 != 0 {
                return Err(ConfigError::FractionalWindow { name, ms });
            }
        }
        let et = &self.event_time;
        for (name, v) in [
            ("max out-of-orderness", et.max_out_of_orderness_ms),
            ("allowed lateness", et.allowed_lateness_ms),
            ("idle timeout", et.idle_timeout_ms),
            ("max time jump", et.max_time_jump_ms),
        ] {
            if v < 0 {
                return Err(ConfigError::NegativeDuration { name });
            }
        }
        if !(1..=MAX_GEOHASH_PRECISION).contains(&self.hot_spots.geohash_precision) {
            return Err(ConfigError::GeohashPrecision(self.hot_spots.geohash_precision));
        }
        if !self.region.is_valid() {
            return Err(ConfigError::BadBox { name: "region".to_owned() });
        }
        if self.airport_trips.airports.len() > usize::from(u8::MAX) {
            return Err(ConfigError::TooManyAirports(self.airport_trips.airports.len()));
        }
        if let Some(bad) = self.airport_trips.airports.iter().find(|a| !a.bounds.is_valid()) {
            return Err(ConfigError::BadBox { name: bad.name.clone() });
        }
        Ok(())
    }
}

/// A duration in whole milliseconds as event-time [`Millis`], saturating.
pub fn to_millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_design_defaults_and_valid() {
        let c = EngineConfig::default();
        assert_eq!(c.event_time.max_out_of_orderness_ms, 60_000);
        assert_eq!(c.hot_spots.window_ms, 600_000);
        assert_eq!(c.hot_spots.geohash_precision, 6);
        assert_eq!((c.hot_spots.min_pickups, c.airport_trips.min_trips), (2, 2));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn rejects_invalid_settings_with_a_reason() {
        let mut c = EngineConfig::default();
        c.hot_spots.window_ms = 0;
        assert_eq!(c.validate(), Err(ConfigError::NonPositiveWindow { name: "hot-spot window" }));
        let mut c = EngineConfig::default();
        c.hot_spots.geohash_precision = 13;
        assert_eq!(c.validate(), Err(ConfigError::GeohashPrecision(13)));
        let mut c = EngineConfig::default();
        c.airport_trips.airports[1].bounds.min_lat = 50.0;
        assert_eq!(c.validate(), Err(ConfigError::BadBox { name: "LGA".to_owned() }));
    }
}

//! Checkpoints: the state of one shard — position, watermark, open-window partials,
//! counters, owner epoch and format version — and its serialization. The stores that keep it are
//! I/O and live with the worker.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::analysis::{Aggregates, AirportAgg, AirportKey};
use crate::archive::ArchiveMarks;
use crate::config::EngineConfig;
use crate::dedupe::{SeenGroup, SeenTrips};
use crate::event::Millis;
use crate::geo::Geohash;
use crate::shard::{Counters, ShardProcessor, WatermarkState};

/// Version of the checkpoint format written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// How far a shard has been processed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Position {
    /// Nothing processed yet: read from the oldest retained record (TRIM_HORIZON).
    Start,
    /// Local mode: every input record up to and including this 1-based number was processed.
    InputRecord {
        /// Last processed record number.
        record: u64,
    },
    /// Kinesis: nothing processed yet; read from the first record that arrived at or after this
    /// instant. A `latest` or timestamp start position is resolved to this at the shard's first
    /// claim, so a restart before the first record still reads everything that arrived since.
    ArrivedFrom {
        /// Milliseconds since the epoch (Kinesis ApproximateArrivalTimestamp).
        timestamp: Millis,
    },
    /// Kinesis: processed up to and including this record (and, inside a KPL aggregate, this
    /// user record).
    Sequence {
        /// Sequence number of the last processed Kinesis record.
        sequence_number: String,
        /// Index of the last processed user record inside an aggregated record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub_sequence: Option<u64>,
    },
    /// Read to the end of a closed shard; its children may start.
    Finished,
}

/// Pickups in one open window and cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotSpotPartial {
    /// Window start (ms since epoch).
    pub window_start: Millis,
    /// Pickup cell.
    pub geohash: Geohash,
    /// Pickups so far.
    pub pickups: u64,
}

/// Airport trips in one open window, cell and airport.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AirportPartial {
    /// Window start (ms since epoch).
    pub window_start: Millis,
    /// Pickup cell.
    pub pickup_geohash: Geohash,
    /// Airport name.
    pub airport: String,
    /// Trips so far.
    pub trips: u64,
    /// Sum of their durations in milliseconds.
    pub duration_ms: i64,
}

/// Open windows of both analyses in a stable, readable form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialsState {
    /// Hot-spot partials, sorted by window and cell.
    pub hot_spots: Vec<HotSpotPartial>,
    /// Airport partials, sorted by window, cell and airport.
    pub airport_trips: Vec<AirportPartial>,
}

impl PartialsState {
    /// Captures open windows.
    pub fn capture(config: &EngineConfig, aggregates: &Aggregates) -> PartialsState {
        let mut hot_spots: Vec<HotSpotPartial> = aggregates
            .hot_spots
            .iter()
            .flat_map(|(start, cells)| {
                cells.iter().map(|(g, n)| HotSpotPartial { window_start: *start, geohash: *g, pickups: *n })
            })
            .collect();
        hot_spots.sort_by_key(|p| (p.window_start, p.geohash));
        let airports = &config.airport_trips.airports;
        let mut keyed: Vec<(Millis, AirportKey, AirportAgg)> = aggregates
            .airport_trips
            .iter()
            .flat_map(|(start, keys)| keys.iter().map(|(k, a)| (*start, *k, *a)))
            .collect();
        keyed.sort_by_key(|(s, k, _)| (*s, *k));
        let airport_trips = keyed
            .into_iter()
            .map(|(window_start, key, agg)| AirportPartial {
                window_start,
                pickup_geohash: key.pickup,
                airport: airports.get(usize::from(key.airport)).map_or_else(String::new, |a| a.name.clone()),
                trips: agg.trips,
                duration_ms: agg.duration_ms,
            })
            .collect();
        PartialsState { hot_spots, airport_trips }
    }

    /// Rebuilds open windows; airports are matched by name against `config`.
    pub fn restore(&self, config: &EngineConfig) -> Result<Aggregates, FormatError> {
        let mut aggregates = Aggregates::new(config);
        for p in &self.hot_spots {
            *aggregates.hot_spots.entry(p.window_start, p.geohash) += p.pickups;
        }
        for p in &self.airport_trips {
            let index = config
                .airport_trips
                .airports
                .iter()
                .position(|a| a.name == p.airport)
                .and_then(|i| u8::try_from(i).ok())
                .ok_or_else(|| FormatError::UnknownAirport(p.airport.clone()))?;
            let agg =
                aggregates.airport_trips.entry(p.window_start, AirportKey { pickup: p.pickup_geohash, airport: index });
            agg.trips += p.trips;
            agg.duration_ms = agg.duration_ms.saturating_add(p.duration_ms);
        }
        Ok(aggregates)
    }
}

/// Who writes checkpoints: the assignment epoch and a process identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Assignment epoch.
    pub epoch: u64,
    /// Unique per process (host name, process id and a random part).
    pub id: String,
    /// The worker ordinal of the assignment, when the worker follows one (not with `--assignment all`).
    pub ordinal: Option<u32>,
}

impl Owner {
    /// An owner identity for this process at `epoch`, without an ordinal.
    pub fn this_process(epoch: u64) -> Owner {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
        Owner { epoch, id: format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..)), ordinal: None }
    }
}

/// The checkpoint of one shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardCheckpoint {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Kinesis shard id.
    pub shard_id: String,
    /// How far the shard was processed.
    pub position: Position,
    /// Assignment epoch of the owner that wrote it.
    pub owner_epoch: u64,
    /// The process that wrote it. Two owners never write identical bytes, so a content-derived
    /// ETag (S3's MD5) still fences the previous owner after a claim that changed nothing else.
    #[serde(default)]
    pub owner_id: String,
    /// Ordinal of the worker that wrote it, when it followed an assignment (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_ordinal: Option<u32>,
    /// Set on the final checkpoint of an owner that gave the shard up because the assignment of
    /// this epoch moved it: the new owner may claim it at once. Absent in older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_epoch: Option<u64>,
    /// [`EngineConfig::fingerprint`] of the settings the state was computed under (absent in older
    /// checkpoints, which restore under any settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_fingerprint: Option<String>,
    /// Watermark and max event time.
    pub clock: WatermarkState,
    /// Record counts.
    pub counters: Counters,
    /// Open windows.
    pub partials: PartialsState,
    /// Trip ids counted in the open windows, so a duplicate after a restart still counts once
    /// (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen_trips: Vec<SeenGroup>,
    /// The archive files open or decided at this checkpoint (absent without an archive).
    #[serde(default, skip_serializing_if = "ArchiveMarks::is_empty")]
    pub archive: ArchiveMarks,
}

impl ShardCheckpoint {
    /// Captures a shard processor's state at `position`, written by `owner`.
    pub fn capture(
        shard_id: &str,
        position: Position,
        owner: &Owner,
        shard: &ShardProcessor,
        config: &EngineConfig,
    ) -> Self {
        ShardCheckpoint {
            format_version: FORMAT_VERSION,
            shard_id: shard_id.to_owned(),
            position,
            owner_epoch: owner.epoch,
            owner_id: owner.id.clone(),
            owner_ordinal: owner.ordinal,
            released_epoch: None,
            settings_fingerprint: Some(config.fingerprint()),
            clock: shard.clock(),
            counters: shard.counters().clone(),
            partials: PartialsState::capture(config, shard.aggregates()),
            seen_trips: shard.seen().capture(),
            archive: ArchiveMarks::default(),
        }
    }

    /// Rebuilds the shard processor, refusing state computed under other analysis settings.
    pub fn restore(&self, config: Arc<EngineConfig>) -> Result<ShardProcessor, FormatError> {
        if let Some(stored) = &self.settings_fingerprint {
            let current = config.fingerprint();
            if *stored != current {
                return Err(FormatError::SettingsChanged { stored: stored.clone(), current });
            }
        }
        let aggregates = self.partials.restore(&config)?;
        let seen = SeenTrips::restore(&self.seen_trips);
        Ok(ShardProcessor::restore(config, self.clock, aggregates, self.counters.clone(), seen))
    }

    /// Serializes to JSON bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        serde_json::to_vec(self).map_err(FormatError::Encode)
    }

    /// Parses JSON bytes, rejecting other format versions.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        decode_versioned(bytes)
    }
}

/// The state a new child shard starts from, given its parents' final checkpoints: the event time
/// of its slowest parent, so a record that would have been late on its parent is late on the child
/// too, and the trip ids its parents still held for open windows, so a trip that a producer
/// retried into the child after the reshard counts once. No parents: a shard with no history.
pub fn child_of(parents: &[ShardCheckpoint], config: Arc<EngineConfig>) -> ShardProcessor {
    let clock = parents.iter().map(|p| p.clock).min_by_key(|c| c.watermark).unwrap_or_default();
    let mut seen = SeenTrips::default();
    for parent in parents {
        seen.absorb(&parent.seen_trips);
    }
    let aggregates = Aggregates::new(&config);
    ShardProcessor::restore(config, clock, aggregates, Counters::default(), seen)
}

/// Parses a JSON checkpoint document whose `format_version` must be [`FORMAT_VERSION`].
pub fn decode_versioned<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let version: Version = serde_json::from_slice(bytes).map_err(FormatError::Decode)?;
    if version.format_version != FORMAT_VERSION {
        return Err(FormatError::FormatVersion { found: version.format_version });
    }
    serde_json::from_slice(bytes).map_err(FormatError::Decode)
}

/// Failures of the checkpoint format: encoding, decoding, or restoring a checkpoint's state under
/// the current settings. Failures of the stores that keep checkpoints are theirs to declare.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The checkpoint could not be serialized.
    #[error("failed to encode checkpoint: {0}")]
    Encode(#[source] serde_json::Error),
    /// The bytes are not a checkpoint.
    #[error("failed to decode checkpoint: {0}")]
    Decode(#[source] serde_json::Error),
    /// Written by an incompatible version.
    #[error("checkpoint format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    FormatVersion {
        /// The version in the document.
        found: u32,
    },
    /// An airport in the checkpoint is not configured any more.
    #[error("checkpoint refers to airport {0:?}, which is not configured")]
    UnknownAirport(String),
    /// The checkpoint was written under other analysis settings: restoring it would mix windows
    /// of different sizes, cells or airports.
    #[error(
        "the checkpoint was written under other analysis settings (fingerprint {stored}, now {current}); \
         analysis settings cannot change under a running pipeline: run the new settings as a new pipeline \
         beside this one, or restore the old settings"
    )]
    SettingsChanged {
        /// The fingerprint in the checkpoint.
        stored: String,
        /// The fingerprint of the settings now.
        current: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, GeoPoint, InvalidReason, Trip};

    fn busy_shard(config: &Arc<EngineConfig>) -> ShardProcessor {
        let mut shard = ShardProcessor::new(config.clone());
        let midtown = GeoPoint { lat: 40.7580, lon: -73.9855 };
        let jfk = GeoPoint { lat: 40.6413, lon: -73.7781 };
        let lga = GeoPoint { lat: 40.7769, lon: -73.8740 };
        for (i, (minute, to)) in [(1, midtown), (2, jfk), (3, lga), (12, jfk), (13, midtown)].into_iter().enumerate() {
            let dropoff = 1_451_606_400_000 + minute * 60_000;
            let trip = Trip {
                trip_id: i as u64,
                pickup_time: dropoff - 1_234_567,
                dropoff_time: dropoff,
                pickup: midtown,
                dropoff: to,
            };
            shard.process(&Event::Trip(trip), None);
        }
        shard.process_invalid(InvalidReason::NotJson);
        shard
    }

    #[test]
    fn shard_checkpoint_round_trips_to_an_identical_processor() {
        let config = Arc::new(EngineConfig::default());
        let shard = busy_shard(&config);
        let position = Position::Sequence { sequence_number: "4959".to_owned(), sub_sequence: Some(3) };
        let checkpoint = ShardCheckpoint::capture(
            "shardId-000000000001",
            position,
            &Owner { epoch: 7, id: "w-1".to_owned(), ordinal: Some(2) },
            &shard,
            &config,
        );
        assert_eq!(checkpoint.partials.hot_spots.len(), 2, "two windows, one cell");
        assert_eq!(checkpoint.partials.airport_trips.len(), 3, "JFK and LGA, then JFK again");
        let bytes = checkpoint.to_bytes().expect("encode");
        let decoded = ShardCheckpoint::from_bytes(&bytes).expect("decode");
        assert_eq!(decoded, checkpoint);
        let mut restored = decoded.restore(config.clone()).expect("restore");
        let mut original = shard;
        assert_eq!(restored.watermark(), original.watermark());
        assert_eq!(restored.counters(), original.counters());
        let (a, b) = (restored.take_all(), original.take_all());
        assert_eq!(
            format!("{:?}", crate::analysis::final_results(&config, &a)),
            format!("{:?}", crate::analysis::final_results(&config, &b))
        );
        assert_eq!(a.hot_spots.len(), b.hot_spots.len());
    }

    #[test]
    fn a_release_marker_round_trips_and_checkpoints_without_one_still_read() {
        let config = Arc::new(EngineConfig::default());
        let owner = Owner { epoch: 3, id: "w-0".to_owned(), ordinal: Some(1) };
        let mut checkpoint = ShardCheckpoint::capture("s", Position::Start, &owner, &busy_shard(&config), &config);
        checkpoint.released_epoch = Some(4);
        let decoded = ShardCheckpoint::from_bytes(&checkpoint.to_bytes().expect("encode")).expect("decode");
        assert_eq!((decoded.released_epoch, decoded.owner_ordinal, decoded.owner_epoch), (Some(4), Some(1), 3));

        // A checkpoint written before handoffs existed has neither field.
        let mut old: serde_json::Value = serde_json::to_value(&checkpoint).expect("json");
        let fields = old.as_object_mut().expect("object");
        fields.remove("released_epoch");
        fields.remove("owner_ordinal");
        let decoded = ShardCheckpoint::from_bytes(&serde_json::to_vec(&old).expect("bytes")).expect("old format");
        assert_eq!((decoded.released_epoch, decoded.owner_ordinal), (None, None));
        let unreleased = ShardCheckpoint { released_epoch: None, ..checkpoint };
        assert!(!String::from_utf8(unreleased.to_bytes().expect("encode")).expect("utf-8").contains("released_epoch"));
    }

    #[test]
    fn rejects_other_format_versions_and_unknown_airports() {
        let config = Arc::new(EngineConfig::default());
        let mut checkpoint =
            ShardCheckpoint::capture("s", Position::Start, &Owner::this_process(0), &busy_shard(&config), &config);
        checkpoint.format_version = 99;
        let bytes = checkpoint.to_bytes().expect("encode");
        assert!(matches!(ShardCheckpoint::from_bytes(&bytes), Err(FormatError::FormatVersion { found: 99 })));
        checkpoint.format_version = FORMAT_VERSION;
        checkpoint.partials.airport_trips[0].airport = "EWR".to_owned();
        assert!(matches!(checkpoint.restore(config), Err(FormatError::UnknownAirport(a)) if a == "EWR"));
    }
}

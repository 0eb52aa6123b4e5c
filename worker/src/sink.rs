//! Per-shard partial documents, the sinks that store them, and the merged view that
//! sums them over shards.
//!
//! Every document has a deterministic id, so re-emitting a window after a restart overwrites the
//! earlier document: results are exactly-once in effect. Every document also has a version that
//! grows with the records its shard had processed ([`document_version`]), and a document only ever
//! replaces one of the same id and a lower version: a zombie's late write, a re-driven old
//! document or a not-final document can never replace content computed from more records.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dead_letter::DeadLetterStore;
use crate::opensearch::{OpenSearchError, OpenSearchSettings, OpenSearchSink};
use taxi_core::analysis::{Aggregates, AirportAgg, AirportKey, ClosedWindows, MergedResult, final_results};
use taxi_core::config::EngineConfig;
use taxi_core::event::Millis;
use taxi_core::geo::Geohash;
use taxi_core::window::Tumbling;

/// Which analysis a document belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisKind {
    /// Pickup hot spots.
    HotSpot,
    /// Trips to an airport.
    AirportTrip,
}

/// One shard's aggregate for one window and key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartialDocument {
    /// `{pipeline}/{analysis}/{window_start_epoch_s}/{key}/{shard}`.
    pub id: String,
    /// The pipeline that produced it.
    pub pipeline: String,
    /// The analysis.
    pub analysis: AnalysisKind,
    /// Window start.
    #[serde(with = "taxi_core::time::serde_timestamp")]
    pub window_start: Millis,
    /// Window end (exclusive).
    #[serde(with = "taxi_core::time::serde_timestamp")]
    pub window_end: Millis,
    /// The pickup cell as a geo_point (a geohash string is a valid geo_point).
    pub location: String,
    /// The pickup cell.
    pub geohash: Geohash,
    /// Pickups (hot spots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickup_count: Option<u64>,
    /// Airport name (airport trips).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub airport: Option<String>,
    /// Trips (airport trips).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trip_count: Option<u64>,
    /// Sum of durations in minutes (airport trips).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum_duration_min: Option<f64>,
    /// Sum of durations in milliseconds, exact, for merging (airport trips).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum_duration_ms: Option<i64>,
    /// The shard.
    pub shard: String,
    /// Whether the shard closed the window (no more updates from it).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Orders the documents of one id: see [`document_version`]. Absent (0) in older documents.
    #[serde(default)]
    pub version: u64,
}

/// The version of a document computed after its shard processed `records` user records:
/// processing is deterministic, so a higher count means content computed from more records (a
/// restart recomputes the same count and content). A final document outranks a not-final one of
/// the same count.
pub fn document_version(records: u64, is_final: bool) -> u64 {
    records.saturating_mul(2).saturating_add(u64::from(is_final))
}

/// The documents for windows of a shard that had processed `records` user records.
pub fn documents_for(
    pipeline: &str,
    shard: &str,
    config: &EngineConfig,
    closed: &ClosedWindows,
    is_final: bool,
    records: u64,
) -> Vec<PartialDocument> {
    let version = document_version(records, is_final);
    let hot = Tumbling::new(config.hot_spots.window_ms);
    let airports = Tumbling::new(config.airport_trips.window_ms);
    let mut docs = Vec::new();
    for (start, cells) in &closed.hot_spots {
        for (cell, count) in cells {
            docs.push(PartialDocument {
                id: format!("{pipeline}/hot_spot/{}/{cell}/{shard}", start.div_euclid(1000)),
                pipeline: pipeline.to_owned(),
                analysis: AnalysisKind::HotSpot,
                window_start: *start,
                window_end: hot.end_of(*start),
                location: cell.to_string(),
                geohash: *cell,
                pickup_count: Some(*count),
                airport: None,
                trip_count: None,
                sum_duration_min: None,
                sum_duration_ms: None,
                shard: shard.to_owned(),
                is_final,
                version,
            });
        }
    }
    for (start, keys) in &closed.airport_trips {
        for (key, agg) in keys {
            let name = config.airport_trips.airports.get(usize::from(key.airport)).map_or("", |a| a.name.as_str());
            docs.push(PartialDocument {
                id: format!("{pipeline}/airport_trip/{}/{}:{name}/{shard}", start.div_euclid(1000), key.pickup),
                pipeline: pipeline.to_owned(),
                analysis: AnalysisKind::AirportTrip,
                window_start: *start,
                window_end: airports.end_of(*start),
                location: key.pickup.to_string(),
                geohash: key.pickup,
                pickup_count: None,
                airport: Some(name.to_owned()),
                trip_count: Some(agg.trips),
                sum_duration_min: Some(agg.duration_ms as f64 / 60_000.0),
                sum_duration_ms: Some(agg.duration_ms),
                shard: shard.to_owned(),
                is_final,
                version,
            });
        }
    }
    docs.sort_by(|a, b| a.id.cmp(&b.id));
    docs
}

/// The merged view: per id the document of the highest version (the later one of equal versions),
/// summed over shards, thresholds applied, in the output order of `taxi-worker local --output`.
pub fn merge_documents(config: &EngineConfig, docs: impl IntoIterator<Item = PartialDocument>) -> Vec<MergedResult> {
    let mut latest: HashMap<String, PartialDocument> = HashMap::new();
    for doc in docs {
        match latest.get(&doc.id) {
            Some(kept) if kept.version > doc.version => {}
            _ => {
                latest.insert(doc.id.clone(), doc);
            }
        }
    }
    let mut merged = Aggregates::new(config);
    for doc in latest.into_values() {
        match doc.analysis {
            AnalysisKind::HotSpot => {
                *merged.hot_spots.entry(doc.window_start, doc.geohash) += doc.pickup_count.unwrap_or(0);
            }
            AnalysisKind::AirportTrip => {
                let name = doc.airport.as_deref().unwrap_or_default();
                let Some(index) = config.airport_trips.airports.iter().position(|a| a.name == name) else {
                    tracing::warn!(id = %doc.id, airport = name, "document for an airport that is not configured");
                    continue;
                };
                let key = AirportKey { pickup: doc.geohash, airport: u8::try_from(index).unwrap_or(u8::MAX) };
                let duration_ms = doc
                    .sum_duration_ms
                    .unwrap_or_else(|| (doc.sum_duration_min.unwrap_or(0.0) * 60_000.0).round() as i64);
                let agg = merged.airport_trips.entry(doc.window_start, key);
                *agg = AirportAgg {
                    trips: agg.trips + doc.trip_count.unwrap_or(0),
                    duration_ms: agg.duration_ms.saturating_add(duration_ms),
                };
            }
        }
    }
    final_results(config, &merged.take_all())
}

/// Where a worker's partial documents go: `file://…` or an OpenSearch `http(s)://…` URL.
#[derive(Debug)]
pub enum Sink {
    /// JSON lines in a file.
    File(tokio::sync::Mutex<FileSink>),
    /// OpenSearch `_bulk`, with back-pressure and per-item error handling.
    OpenSearch(OpenSearchSink),
}

impl Sink {
    /// Opens the sink a URI names; `opensearch` supplies authentication, TLS, index prefix and
    /// batching for `http(s)://` URIs (its `url` is replaced by `uri`). Documents OpenSearch
    /// refuses go to `dead_letters` (a file sink refuses nothing).
    pub async fn open(
        uri: &str,
        opensearch: &OpenSearchSettings,
        registry: &prometheus::Registry,
        dead_letters: DeadLetterStore,
    ) -> Result<Sink, SinkError> {
        if uri.starts_with("http://") || uri.starts_with("https://") {
            let settings = OpenSearchSettings { url: uri.to_owned(), ..opensearch.clone() };
            return Ok(Sink::OpenSearch(OpenSearchSink::connect(settings, registry, Some(dead_letters)).await?));
        }
        Ok(Sink::File(tokio::sync::Mutex::new(FileSink::open(uri)?)))
    }

    /// A bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Sink::File(_) => "file",
            Sink::OpenSearch(_) => "opensearch",
        }
    }

    /// Queues documents (waits when the sink applies back-pressure).
    pub async fn write(&self, docs: Vec<PartialDocument>) -> Result<(), SinkError> {
        match self {
            Sink::File(file) => file.lock().await.write(&docs),
            Sink::OpenSearch(sink) => Ok(sink.write(docs).await?),
        }
    }

    /// Returns once every document written before the call is durable, stored by the sink or as
    /// a dead letter: only then may a checkpoint that covers them be written.
    pub async fn flush(&self) -> Result<(), SinkError> {
        match self {
            Sink::File(file) => file.lock().await.flush().map(|_| ()),
            Sink::OpenSearch(sink) => sink.flush().await.map(|_| ()).map_err(SinkError::from),
        }
    }
}

/// Failures of a sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink URI is not understood.
    #[error("unsupported sink {0:?}: expected file:///path/to/partials.jsonl or an OpenSearch http(s):// URL")]
    UnsupportedUri(String),
    /// OpenSearch failed.
    #[error(transparent)]
    OpenSearch(#[from] OpenSearchError),
    /// Writing failed.
    #[error("failed to write partial documents to {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Appends partial documents to a JSON-lines file (`--sink file://PATH`). A later line with the
/// same id replaces an earlier one in the merged view.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    pending: usize,
}

impl FileSink {
    /// Opens (appending) the file of a `file://` URI or a plain path.
    pub fn open(uri: &str) -> Result<FileSink, SinkError> {
        let path = match uri.strip_prefix("file://") {
            Some(p) => PathBuf::from(p),
            None if !uri.contains("://") && !uri.is_empty() => PathBuf::from(uri),
            None => return Err(SinkError::UnsupportedUri(uri.to_owned())),
        };
        let io = |source| SinkError::Io { path: path.clone(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io)?;
        let torn = cut_torn_tail(&file).map_err(io)?;
        if torn > 0 {
            // Never flushed, so no checkpoint covers it: the documents are written again.
            tracing::warn!(path = %path.display(), bytes = torn, "removed a torn last line left by a crash");
        }
        Ok(FileSink { path, out: std::io::BufWriter::new(file), pending: 0 })
    }

    /// Queues documents.
    pub fn write(&mut self, docs: &[PartialDocument]) -> Result<(), SinkError> {
        for doc in docs {
            serde_json::to_writer(&mut self.out, doc)
                .map_err(|e| SinkError::Io { path: self.path.clone(), source: e.into() })?;
            self.out.write_all(b"\n").map_err(|source| SinkError::Io { path: self.path.clone(), source })?;
        }
        self.pending += docs.len();
        Ok(())
    }

    /// Makes every queued document durable: after this returns, a checkpoint may cover them.
    pub fn flush(&mut self) -> Result<usize, SinkError> {
        let io = |source| SinkError::Io { path: self.path.clone(), source };
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_data().map_err(|source| SinkError::Io { path: self.path.clone(), source })?;
        Ok(std::mem::take(&mut self.pending))
    }
}

/// Truncates `file` after its last `\n`, returning how many bytes that removed: a crash in the
/// middle of a write leaves a partial line at the end of an append-only file, and only there.
fn cut_torn_tail(file: &std::fs::File) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    const BLOCK: u64 = 64 * 1024;
    let len = file.metadata()?.len();
    let mut reader = file;
    let mut end = len;
    let mut block = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        reader.seek(SeekFrom::Start(start))?;
        block.clear();
        reader.take(end - start).read_to_end(&mut block)?;
        if let Some(i) = memchr::memrchr(b'\n', &block) {
            let keep = start + i as u64 + 1;
            if keep < len {
                file.set_len(keep)?;
            }
            return Ok(len - keep);
        }
        end = start;
    }
    file.set_len(0)?;
    Ok(len)
}

/// Reads the documents of a file sink. A last line without its `\n` is a write in progress (or
/// cut short by a crash) and is left out; any other line that does not parse is an error.
pub fn read_documents(path: &Path) -> Result<Vec<PartialDocument>, SinkError> {
    let io = |source| SinkError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut docs = Vec::new();
    let mut reader = std::io::BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io)? == 0 {
            return Ok(docs);
        }
        if !line.ends_with('\n') {
            return Ok(docs);
        }
        if line.trim().is_empty() {
            continue;
        }
        docs.push(serde_json::from_str(&line).map_err(|e| io(e.into()))?);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use taxi_core::event::{Event, GeoPoint, Trip};
    use taxi_core::shard::ShardProcessor;

    fn shard_with(config: &Arc<EngineConfig>, trips: &[(u64, i64, GeoPoint)]) -> ClosedWindows {
        let mut shard = ShardProcessor::new(config.clone());
        let midtown = GeoPoint { lat: 40.7580, lon: -73.9855 };
        for &(id, dropoff, to) in trips {
            let trip = Trip {
                trip_id: id,
                pickup_time: dropoff - 1_800_123,
                dropoff_time: dropoff,
                pickup: midtown,
                dropoff: to,
            };
            shard.process(&Event::Trip(trip), None);
        }
        shard.take_all()
    }

    #[test]
    fn documents_have_deterministic_ids_and_merge_to_the_thresholded_sum() {
        let config = Arc::new(EngineConfig::default());
        let jfk = GeoPoint { lat: 40.6413, lon: -73.7781 };
        let t0 = 1_451_606_400_000;
        let a =
            documents_for("nyc", "shardId-000000000000", &config, &shard_with(&config, &[(1, t0 + 1, jfk)]), true, 1);
        let b =
            documents_for("nyc", "shardId-000000000001", &config, &shard_with(&config, &[(2, t0 + 2, jfk)]), true, 1);
        assert_eq!(a[0].id, "nyc/airport_trip/1451606400/dr5ru7:JFK/shardId-000000000000");
        assert_eq!(a[1].id, "nyc/hot_spot/1451606400/dr5ru7/shardId-000000000000");
        // Each shard alone is below the thresholds; merged they pass.
        assert!(merge_documents(&config, a.clone()).is_empty());
        let merged = merge_documents(&config, a.iter().chain(&b).cloned().chain(a.iter().cloned()));
        assert_eq!(merged.len(), 2, "re-emitted documents overwrite, not add");
        match &merged[0] {
            MergedResult::AirportTrip { trip_count, sum_duration_min, .. } => {
                assert_eq!(*trip_count, 2);
                assert_eq!(*sum_duration_min, 60.0041);
            }
            other => panic!("expected the airport result first, got {other:?}"),
        }
    }

    #[test]
    fn a_document_is_never_replaced_by_one_computed_from_fewer_records() {
        let config = Arc::new(EngineConfig::default());
        let midtown = GeoPoint { lat: 40.7580, lon: -73.9855 };
        let t0 = 1_451_606_400_000;
        let two = shard_with(&config, &[(1, t0 + 1, midtown), (2, t0 + 2, midtown)]);
        let one = shard_with(&config, &[(1, t0 + 1, midtown)]);
        let full = documents_for("nyc", "s", &config, &two, true, 2);
        let partial = documents_for("nyc", "s", &config, &one, false, 1);
        assert_eq!(full[0].id, partial[0].id);
        let pickups = |docs: Vec<PartialDocument>| match merge_documents(&config, docs).first() {
            Some(MergedResult::HotSpot { pickup_count, .. }) => *pickup_count,
            other => panic!("expected one hot spot, got {other:?}"),
        };
        // A late (zombie's, re-driven) write of fewer records loses, in either order.
        assert_eq!(pickups(full.iter().chain(&partial).cloned().collect()), 2);
        assert_eq!(pickups(partial.iter().chain(&full).cloned().collect()), 2);
        // At the same count, the final document outranks the not-final one.
        assert!(document_version(2, true) > document_version(2, false));
        assert!(document_version(2, false) > document_version(1, true));
    }

    #[test]
    fn file_sink_round_trips_documents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out/partials.jsonl");
        let config = Arc::new(EngineConfig::default());
        let docs = documents_for(
            "p",
            "s",
            &config,
            &shard_with(&config, &[(1, 5, GeoPoint { lat: 40.64, lon: -73.78 })]),
            true,
            1,
        );
        let mut sink = FileSink::open(&format!("file://{}", path.display())).expect("open");
        sink.write(&docs).expect("write");
        assert_eq!(sink.flush().expect("flush"), docs.len());
        assert_eq!(read_documents(&path).expect("read"), docs);
        assert!(matches!(FileSink::open("http://x"), Err(SinkError::UnsupportedUri(_))));
    }

    #[test]
    fn a_torn_last_line_is_cut_on_open_and_skipped_by_readers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("partials.jsonl");
        let config = Arc::new(EngineConfig::default());
        let jfk = GeoPoint { lat: 40.64, lon: -73.78 };
        let docs = documents_for("p", "s", &config, &shard_with(&config, &[(1, 5, jfk)]), true, 1);
        let mut sink = FileSink::open(&path.display().to_string()).expect("open");
        sink.write(&docs).expect("write");
        sink.flush().expect("flush");
        drop(sink);
        // A crash half-way through the next document.
        let whole = std::fs::read(&path).expect("read");
        let torn = &whole[..whole.len() / 2];
        let mut torn_file = std::fs::OpenOptions::new().append(true).open(&path).expect("append");
        torn_file.write_all(torn).expect("tear");
        drop(torn_file);
        assert_eq!(read_documents(&path).expect("a reader skips the torn line"), docs);
        // The next run cuts it off and appends whole lines after the intact ones.
        let mut sink = FileSink::open(&path.display().to_string()).expect("reopen");
        sink.write(&docs).expect("write");
        sink.flush().expect("flush");
        assert_eq!(std::fs::read(&path).expect("read"), [whole.clone(), whole].concat());
        assert_eq!(read_documents(&path).expect("read").len(), 2 * docs.len());
    }

    #[test]
    fn a_file_torn_inside_its_first_line_is_emptied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("partials.jsonl");
        std::fs::write(&path, "{\"id\":\"p/hot").expect("write");
        drop(FileSink::open(&path.display().to_string()).expect("open"));
        assert_eq!(std::fs::read(&path).expect("read"), b"");
    }
}

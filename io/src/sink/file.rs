//! The file sink (`--sink file://PATH`): partial documents as JSON lines, appended.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use super::SinkError;
use taxi_core::document::PartialDocument;
use taxi_core::redact;

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
            None => return Err(SinkError::UnsupportedUri(redact::url(uri).into_owned())),
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
    use taxi_core::config::EngineConfig;
    use taxi_core::document::documents_for;
    use taxi_core::event::{Event, GeoPoint, Trip};
    use taxi_core::shard::ShardProcessor;

    /// The documents of one closed window holding one trip to JFK.
    fn sample_documents() -> Vec<PartialDocument> {
        let config = Arc::new(EngineConfig::default());
        let mut shard = ShardProcessor::new(config.clone());
        let pickup = GeoPoint { lat: 40.7580, lon: -73.9855 };
        let dropoff = GeoPoint { lat: 40.64, lon: -73.78 };
        let trip = Trip { trip_id: 1, pickup_time: 0, dropoff_time: 1_800_000, pickup, dropoff };
        shard.process(&Event::Trip(trip), None);
        documents_for("p", "s", &config, &shard.take_all(), true, 1)
    }

    #[test]
    fn file_sink_round_trips_documents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out/partials.jsonl");
        let docs = sample_documents();
        let mut sink = FileSink::open(&format!("file://{}", path.display())).expect("open");
        sink.write(&docs).expect("write");
        assert_eq!(sink.flush().expect("flush"), docs.len());
        assert_eq!(read_documents(&path).expect("read"), docs);
        assert!(matches!(FileSink::open("http://x"), Err(SinkError::UnsupportedUri(_))));
    }

    #[test]
    fn an_unsupported_uri_is_named_without_its_credentials() {
        let Err(error) = FileSink::open("ftp://writer:s3cret@x/p") else { panic!("ftp is no sink") };
        assert!(matches!(&error, SinkError::UnsupportedUri(shown) if shown == "ftp://***@x/p"), "{error:?}");
    }

    #[test]
    fn a_torn_last_line_is_cut_on_open_and_skipped_by_readers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("partials.jsonl");
        let docs = sample_documents();
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

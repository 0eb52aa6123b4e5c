//! The sinks that store a worker's partial documents (see [`taxi_core::document`]): a JSON-lines
//! file or OpenSearch, with the dead-letter store for what OpenSearch refuses.

pub mod dead_letter;
pub mod file;
pub mod opensearch;
pub mod redrive;

use std::path::PathBuf;

use dead_letter::DeadLetterStore;
use file::FileSink;
use opensearch::{OpenSearchError, OpenSearchSettings, OpenSearchSink};
use taxi_core::document::PartialDocument;

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
    /// The sink URI is not understood (the URI as shown: credentials masked).
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

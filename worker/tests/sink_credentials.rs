//! A sink URL with credentials handed to a run in code, past the settings' check: what the run
//! reports (its error, its log lines, `/status` and `/readyz`) shows the URL with its credentials
//! masked, never the password.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use taxi_io::http::Endpoints;
use taxi_testkit::memory::{MemoryKinesis, even_shards};
use taxi_testkit::opensearch::FakeOpenSearch;
use taxi_worker::run::{RunOptions, WorkerState, run_worker};

/// The log lines written while a test runs.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One thread: every task of the run logs through the subscriber set for this test.
#[tokio::test(flavor = "current_thread")]
async fn a_run_never_shows_the_password_of_its_sink_url() {
    // A cluster that never gets ready: the run retries its start-up, logging each attempt, then fails.
    let cluster =
        FakeOpenSearch::start(|_| (503, json!({"error": {"type": "unavailable", "reason": "starting up"}}))).await;
    let address = cluster.url().strip_prefix("http://").expect("an http URL").to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = RunOptions::new(
        "nyc",
        "trips",
        format!("file://{}", dir.path().join("checkpoints").display()),
        format!("http://writer:s3cret@{address}"),
    );
    options.opensearch.startup_timeout = Duration::from_millis(300);

    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let state = Arc::new(WorkerState::default());
    let (_shutdown, rx) = tokio::sync::watch::channel(false);
    let run = run_worker(Arc::new(MemoryKinesis::new(even_shards(1))), options, state.clone(), rx);
    let error = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run gives up after its start-up timeout")
        .expect_err("the cluster never got ready");

    let shown = format!("http://***@{address}");
    let error = error.to_string();
    assert!(error.starts_with(&format!("OpenSearch at {shown} still unreachable")), "{error}");
    let logs = logs.text();
    assert!(logs.contains(&format!("url={shown}")) && logs.contains("OpenSearch not ready"), "{logs}");
    assert!(!cluster.requests().is_empty(), "the run did ask the cluster");
    let status = Endpoints::status(state.as_ref()).to_string();
    let readiness = format!("{:?}", Endpoints::readiness(state.as_ref()));
    for (what, text) in [("error", &error), ("logs", &logs), ("/status", &status), ("/readyz", &readiness)] {
        assert!(!text.contains("s3cret"), "{what}: {text}");
    }
}

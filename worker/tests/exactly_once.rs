//! Exactly-once in effect (`docs/concepts/exactly-once.md`), against the three emulators: a `taxi-worker run`
//! process with S3 checkpoints and the OpenSearch sink is killed, fenced, starved of OpenSearch or
//! of S3 — and the merged results in OpenSearch still equal the batch oracle.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use taxi_core::assignment::Assignment;
use taxi_core::config::EngineConfig;
use taxi_core::generate::GeneratorConfig;
use taxi_testkit::input::{count_records, write_generated};
use taxi_testkit::kinesis::{client, fresh_stream, put_file, wait_active};
use taxi_testkit::opensearch::{fresh_index_prefix, raw};
use taxi_testkit::oracle::{as_lines, assert_same_lines, batch_oracle};
use taxi_testkit::process::{WorkerProcess, emulator_command, publish_assignment};
use taxi_testkit::proxy::Proxy;
use taxi_testkit::s3::{fresh_bucket, read_object};
use taxi_testkit::services::{Services, services};

const BIN: &str = env!("CARGO_BIN_EXE_taxi-worker");

/// One pipeline under test: its stream, bucket, index prefix and input.
struct Pipeline {
    services: Services,
    stream: String,
    bucket: String,
    index_prefix: String,
    input: PathBuf,
    _dir: tempfile::TempDir,
}

async fn pipeline(services: Services, trips: u64, shards: u32) -> Pipeline {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("trips.jsonl");
    write_generated(
        &input,
        &GeneratorConfig { trips, seed: trips, invalid_ratio: 0.002, ..GeneratorConfig::default() },
    );
    let kinesis = client(&services.kinesis);
    let stream = fresh_stream(&kinesis, shards).await;
    put_file(&kinesis, &stream, &input).await;
    let bucket = fresh_bucket(&taxi_testkit::s3::client(&services.s3), "taxi").await;
    let index_prefix = fresh_index_prefix();
    Pipeline { services, stream, bucket, index_prefix, input, _dir: dir }
}

/// How long a worker told to stop when idle may take to do so.
const FINISH_TIMEOUT: Duration = Duration::from_secs(120);

impl Pipeline {
    fn command(&self) -> Command {
        emulator_command(BIN, &self.services)
    }

    /// Starts a worker; `sink` and `s3` override the endpoints (to put a proxy in between).
    fn start_worker(&self, extra: &[&str], sink: Option<&str>, s3: Option<&str>) -> WorkerProcess {
        self.start_worker_into(&self.index_prefix, "checkpoints", extra, sink, s3)
    }

    /// [`Pipeline::start_worker`] with its own index prefix and checkpoint folder.
    fn start_worker_into(
        &self,
        index_prefix: &str,
        checkpoints: &str,
        extra: &[&str],
        sink: Option<&str>,
        s3: Option<&str>,
    ) -> WorkerProcess {
        let mut cmd = self.command();
        if let Some(s3) = s3 {
            cmd.env("TAXI_S3_ENDPOINT_URL", s3);
        }
        cmd.args(["run", "--pipeline", "nyc", "--stream", &self.stream, "--http-addr", "127.0.0.1:0"])
            .args(["--checkpoint", &format!("s3://{}/{checkpoints}", self.bucket), "--checkpoint-interval", "300ms"])
            .args(["--sink", sink.unwrap_or(&self.services.opensearch), "--index-prefix", index_prefix])
            .args(["--bulk-max-delay", "50ms", "--shard-discovery-interval", "500ms", "--max-records", "100"])
            .args(extra);
        WorkerProcess::spawn(cmd)
    }

    /// The merged results in OpenSearch, through `taxi-worker results`.
    fn merged_results(&self) -> Vec<String> {
        let out = self
            .command()
            .args(["results", "--opensearch", &self.services.opensearch, "--pipeline", "nyc"])
            .args(["--index-prefix", &self.index_prefix])
            .output()
            .expect("results");
        assert!(out.status.success(), "results: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8").lines().map(str::to_owned).collect()
    }

    fn assert_results_equal_the_oracle(&self) {
        let expected = as_lines(&batch_oracle(&EngineConfig::default(), &self.input));
        assert!(!expected.is_empty());
        assert_same_lines(&self.merged_results(), &expected, "merged results differ from the oracle");
    }
}

/// Records processed so far by `worker` over every shard (restored counts included).
fn records(worker: &WorkerProcess) -> u64 {
    worker.status()["shards"]
        .as_object()
        .map_or(0, |shards| shards.values().filter_map(|s| s["records"].as_u64()).sum())
}

fn wait_for_records(worker: &WorkerProcess, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while records(worker) < at_least {
        assert!(Instant::now() < deadline, "the worker did not reach {at_least} records");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the worker to stop by itself; returns what it printed.
fn finish(mut worker: WorkerProcess) -> String {
    worker.wait_for_exit(FINISH_TIMEOUT, "stop when idle")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_several_points_loses_nothing_and_counts_nothing_twice() {
    let Some(services) = services() else { return };
    let p = pipeline(services, 4_000, 4).await;
    let total = count_records(&p.input);
    // Kill at growing progress, with jitter so kills land during bulks and checkpoint writes alike.
    for fraction in [0.15, 0.45, 0.75] {
        let worker = p.start_worker(&[], None, None);
        wait_for_records(&worker, (total as f64 * fraction) as u64);
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..300)));
        worker.kill_9();
    }
    let last = p.start_worker(&["--stop-when-idle", "2s"], None, None);
    let said = finish(last);
    assert!(said.contains("stopped:"), "{said}");
    p.assert_results_equal_the_oracle();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_is_fenced_once_the_new_owner_claims_its_shards() {
    let Some(services) = services() else { return };
    let p = pipeline(services, 3_000, 1).await;
    let zombie = p.start_worker(&[], None, None);
    wait_for_records(&zombie, 300);
    // The new owner claims the shard: from now on every checkpoint of the zombie fails with 412.
    let owner = p.start_worker(&["--stop-when-idle", "2s"], None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while zombie.metric("taxi_checkpoint_failures_total{reason=\"conflict\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the zombie was never fenced");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, status) = zombie.get("/status");
    assert!(status.contains("\"fenced\""), "the zombie stopped reading the shard: {status}");
    let read_when_fenced = zombie.metric("taxi_kinesis_records_read_total");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(zombie.metric("taxi_kinesis_records_read_total"), read_when_fenced, "a fenced shard is not read");
    finish(owner);
    zombie.kill_9();
    p.assert_results_equal_the_oracle();
}

/// Every document of the indices under `prefix`: id → (version, source).
async fn documents_under(url: &str, prefix: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    let query = serde_json::json!({"size": 10_000, "query": {"match_all": {}}});
    let (status, body) = raw(url, opensearch::http::Method::Post, &format!("/{prefix}-*/_search"), Some(query)).await;
    assert_eq!(status, 200, "{body}");
    let hits = body["hits"]["hits"].as_array().expect("hits");
    hits.iter().map(|h| (h["_id"].as_str().expect("id").to_owned(), h["_source"].clone())).collect()
}

/// A worker frozen (SIGSTOP) past the takeover timeout loses its shard to a new owner; thawed
/// (SIGCONT) while the new owner reads on, it may still send what it had computed. No document
/// goes back in time: the index ends exactly as one clean run over the stream leaves it, every
/// document with the same content and version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_past_the_takeover_timeout_then_thawed_sends_no_document_back_in_time() {
    let Some(services) = services() else { return };
    let p = pipeline(services, 3_000, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let assignment = dir.path().join("assignment.json");
    let publish = |epoch: u64, owner: u32| {
        let owners = [("shardId-000000000000".to_owned(), owner)].into();
        publish_assignment(&assignment, &Assignment { epoch, replicas: 2, owners });
    };
    let source = format!("file:{}", assignment.display());
    let follow =
        |ordinal: &'static str| ["--assignment", source.as_str(), "--ordinal", ordinal, "--takeover-timeout", "2s"];

    publish(1, 0);
    let frozen = p.start_worker(&follow("0"), None, None);
    wait_for_records(&frozen, 600);
    frozen.signal("-STOP");
    publish(2, 1);
    let owner = p.start_worker(&[&follow("1")[..], &["--stop-when-idle", "2s"]].concat(), None, None);
    wait_for_records(&owner, 1_500);
    frozen.signal("-CONT");
    let owner_said = tokio::task::spawn_blocking(move || finish(owner)).await.expect("join");
    assert!(owner_said.contains("stopped:"), "{owner_said}");
    // The thawed worker finds its shard taken at its next checkpoint.
    let deadline = Instant::now() + Duration::from_secs(30);
    while frozen.metric("taxi_checkpoint_failures_total{reason=\"conflict\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the thawed worker was never fenced");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    frozen.kill_9();
    p.assert_results_equal_the_oracle();

    let clean_prefix = format!("c{}", &p.index_prefix[1..]);
    let clean = p.start_worker_into(&clean_prefix, "clean-checkpoints", &["--stop-when-idle", "2s"], None, None);
    tokio::task::spawn_blocking(move || finish(clean)).await.expect("join");
    let after_faults = documents_under(&p.services.opensearch, &p.index_prefix).await;
    let clean_run = documents_under(&p.services.opensearch, &clean_prefix).await;
    assert!(!clean_run.is_empty());
    let differing: Vec<&String> =
        clean_run.iter().filter(|(id, doc)| after_faults.get(*id) != Some(doc)).map(|(id, _)| id).collect();
    assert!(
        differing.is_empty() && after_faults.len() == clean_run.len(),
        "{} of {} documents differ from a clean run, e.g. {:?}",
        differing.len(),
        clean_run.len(),
        differing.first().map(|id| (after_faults.get(*id), &clean_run[*id]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_down_for_a_while_back_pressures_and_loses_nothing() {
    let Some(services) = services() else { return };
    let p = pipeline(services, 3_000, 2).await;
    let mut proxy = Proxy::start(&p.services.opensearch).await;
    let worker = p.start_worker(&["--stop-when-idle", "2s"], Some(&proxy.url()), None);
    wait_for_records(&worker, 300);
    proxy.down().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // While OpenSearch is away, checkpoints wait for the sink: no checkpoint covers unacknowledged
    // documents.
    let retries = worker.metric("taxi_sink_retries_total") + worker.metric("taxi_sink_bulk_request_errors_total");
    proxy.up();
    let said = tokio::task::spawn_blocking(move || finish(worker)).await.expect("join");
    assert!(retries > 0.0, "the sink retried while OpenSearch was down: {said}");
    p.assert_results_equal_the_oracle();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unavailable_for_a_while_fails_checkpoints_then_recovers() {
    let Some(services) = services() else { return };
    let p = pipeline(services, 3_000, 2).await;
    let mut proxy = Proxy::start(&p.services.s3).await;
    let worker = p.start_worker(&["--stop-when-idle", "3s"], None, Some(&proxy.url()));
    wait_for_records(&worker, 300);
    proxy.down().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker.metric("taxi_checkpoint_failures_total{reason=\"io\"}") < 1.0 {
        assert!(Instant::now() < deadline, "no checkpoint failed while S3 was down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ready, body) = worker.get("/readyz");
    assert_eq!(ready, 503, "readiness reflects failing checkpoints: {body}");
    proxy.up();
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker.get("/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "readiness did not recover after S3 came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::spawn_blocking(move || finish(worker)).await.expect("join");
    p.assert_results_equal_the_oracle();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_ends_while_s3_is_down_finishes_only_once_durable_and_its_children_wait() {
    use taxi_io::kinesis::api::KinesisApi;
    let Some(services) = services() else { return };
    let p = pipeline(services, 600, 1).await;
    let mut proxy = Proxy::start(&p.services.s3).await;
    // The worker must not count as idle between reading the last record and discovering the
    // children: the reshard below takes seconds on a loaded machine, so the idle period is long.
    let worker = p.start_worker(&["--stop-when-idle", "15s"], None, Some(&proxy.url()));
    wait_for_records(&worker, count_records(&p.input));

    // S3 goes down, then the shard ends (a reshard closes it): its finished checkpoint fails.
    proxy.down().await;
    let kinesis = client(&p.services.kinesis);
    let parent = kinesis.list_shards(&p.stream).await.expect("list")[0].shard_id.clone();
    kinesis.update_shard_count(&p.stream, 2).await.expect("reshard");
    wait_active(&kinesis, &p.stream).await;
    let shard_states = || worker.status()["shards"].as_object().cloned().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while shard_states().len() < 3 {
        assert!(Instant::now() < deadline, "the worker did not discover the children: {:?}", shard_states());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Until the parent reaches its end and its finished checkpoint fails (how long that takes
    // depends on the machine's load), and after: the parent is never finished, the children wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failed_since: Option<Instant> = None;
    while failed_since.is_none_or(|t| t.elapsed() < Duration::from_secs(2)) {
        for (id, shard) in shard_states() {
            if id == parent {
                assert_ne!(shard["state"], "finished", "not finished before its checkpoint is durable: {shard}");
                if shard["checkpoint_error"].is_string() {
                    failed_since.get_or_insert_with(Instant::now);
                }
                assert!(Instant::now() < deadline, "the failing checkpoint shows: {shard}");
            } else {
                assert_eq!(shard["state"], "waiting_for_parents", "{id} waits for its parent: {shard}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // S3 returns: the parent's finished checkpoint is written, then the children are read.
    proxy.up();
    tokio::task::spawn_blocking(move || finish(worker)).await.expect("join");
    let s3 = taxi_testkit::s3::client(&p.services.s3);
    let key = format!("checkpoints/nyc/shards/{parent}.json");
    let bytes = read_object(&s3, &p.bucket, &key).await.expect("checkpoint");
    let checkpoint = taxi_core::checkpoint::ShardCheckpoint::from_bytes(&bytes).expect("decode");
    assert_eq!(checkpoint.position, taxi_core::checkpoint::Position::Finished);
    p.assert_results_equal_the_oracle();
}

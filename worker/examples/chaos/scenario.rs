//! One seed: a scenario drawn from it, run against the emulators through fault proxies, and the
//! invariants checked afterwards.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use taxi_core::assignment::{Assignment, assign};
use taxi_core::checkpoint::{Position, ShardCheckpoint};
use taxi_core::config::EngineConfig;
use taxi_core::generate::GeneratorConfig;
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{KinesisApi, PutEntry, SdkKinesis};
use taxi_testkit::input::write_generated;
use taxi_testkit::kinesis::{entries_of_lines, failed_entries, merge_shards, split_shard, wait_active_within};
use taxi_testkit::oracle::{as_lines, batch_oracle};
use taxi_testkit::process::publish_assignment;
use taxi_testkit::s3::{fresh_bucket, read_object};
use taxi_testkit::services::Services;
use tokio::time::Instant;

use crate::proxy::{FaultProxy, FaultRates, Service};

/// What every seed shares.
#[derive(Clone, Debug)]
pub struct Options {
    pub worker_bin: PathBuf,
    pub trips: u64,
    pub input: Option<PathBuf>,
    /// Outages last this fraction of their full length (OpenSearch 60 s, S3 30 s).
    pub outage_scale: f64,
}

/// What a seed did and found.
#[derive(Debug, Default)]
pub struct SeedReport {
    pub faults: BTreeMap<&'static str, u64>,
    pub violations: Vec<String>,
    pub summary: String,
    /// Where a failed seed's state was kept.
    pub kept: Option<String>,
}

/// A fault of the scenario's timeline (request faults are the proxies' own).
#[derive(Clone, Copy, Debug)]
enum Incident {
    Kill { worker: usize },
    Stop { worker: usize, secs: u64 },
    Term { worker: usize },
    OpenSearchDown,
    S3Down,
    Split,
    Merge,
    UpdateShardCount,
    Reassign { replicas: u32 },
    Duplicates,
}

impl Incident {
    fn name(self) -> &'static str {
        match self {
            Incident::Kill { .. } => "kill",
            Incident::Stop { .. } => "stop",
            Incident::Term { .. } => "term",
            Incident::OpenSearchDown => "opensearch_down",
            Incident::S3Down => "s3_down",
            Incident::Split => "split",
            Incident::Merge => "merge",
            Incident::UpdateShardCount => "update_shard_count",
            Incident::Reassign { .. } => "reassign",
            Incident::Duplicates => "duplicate_puts",
        }
    }
}

const TAKEOVER: &str = "2s";

struct Worker {
    ordinal: usize,
    child: Child,
}

/// Everything one seed runs against.
struct World {
    options: Options,
    services: Services,
    dir: tempfile::TempDir,
    stream: String,
    bucket: String,
    index_prefix: String,
    kinesis: SdkKinesis,
    proxies: [FaultProxy; 3],
    assignment: Assignment,
    workers: Vec<Worker>,
}

/// Runs one seed to the end and checks the invariants.
pub async fn run_seed(seed: u64, services: &Services, options: &Options) -> SeedReport {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut report = SeedReport::default();
    let shards = rng.u32(1..=3);
    let workers = rng.usize(1..=3);
    let rate = |rng: &mut fastrand::Rng| rng.f64() * 0.04;
    let rates = FaultRates {
        latency: rate(&mut rng),
        error: rate(&mut rng),
        reset_before: rate(&mut rng),
        reset_after: rate(&mut rng),
        hold: rate(&mut rng) / 4.0,
    };
    let mut world = World::new(seed, services, options, shards, &mut rng, rates).await;
    let input = world.input(&mut rng);
    let timeline = draw_timeline(&mut rng, workers);
    report.summary = format!(
        "{shards} shards, {workers} workers, {} events: {}",
        timeline.len(),
        timeline.iter().map(|(at, e)| format!("{}@{at:.1}s", e.name())).collect::<Vec<_>>().join(" ")
    );

    world.publish(assign(&world.shards().await, u32::try_from(workers).unwrap_or(1), None));
    for ordinal in 0..workers {
        world.start_worker(ordinal, false);
    }
    let (duplicated_tx, duplicated_rx) = tokio::sync::watch::channel(false);
    let producer = tokio::spawn(produce(
        taxi_testkit::kinesis::client(&services.kinesis),
        world.stream.clone(),
        input.clone(),
        duplicated_rx,
    ));
    let start = Instant::now();
    for (at, event) in &timeline {
        tokio::time::sleep_until(start + Duration::from_secs_f64(*at)).await;
        *report.faults.entry(event.name()).or_default() += 1;
        if let Err(e) = world.apply(*event, &mut rng, &duplicated_tx).await {
            report.violations.push(format!("{} could not be applied: {e}", event.name()));
        }
    }
    let put = match producer.await {
        Ok(put) => put,
        Err(e) => {
            report.violations.push(format!("the producer failed: {e}"));
            return report;
        }
    };

    // Outages run their full length; then heal, and one worker reads everything to the end.
    for proxy in &world.proxies {
        proxy.wait_up().await;
        proxy.heal();
        for (name, n) in proxy.counts() {
            *report.faults.entry(name).or_default() += n;
        }
    }
    for worker in std::mem::take(&mut world.workers) {
        let _ = signal(&worker.child, "-CONT");
        kill(worker);
    }
    let everything = world.shards().await;
    let mut last = assign(&everything, 1, Some(&world.assignment));
    last.epoch = world.assignment.epoch + 1;
    world.publish(last);
    world.start_worker(0, true);
    match world.wait_for_idle_stop(Duration::from_secs(240)).await {
        Ok(()) => report.violations.extend(world.check(&input, put).await),
        Err(e) => report.violations.push(e),
    }
    if report.violations.is_empty() {
        world.cleanup().await;
    } else {
        report.kept = Some(world.keep());
    }
    report
}

/// Draws 4–8 faults over the first ~12 seconds.
fn draw_timeline(rng: &mut fastrand::Rng, workers: usize) -> Vec<(f64, Incident)> {
    let n = rng.usize(4..=8);
    let mut events: Vec<(f64, Incident)> = (0..n)
        .map(|_| {
            let at = 0.5 + rng.f64() * 11.5;
            let worker = rng.usize(0..workers);
            let event = match rng.u8(0..10) {
                0 | 1 => Incident::Kill { worker },
                2 => Incident::Stop { worker, secs: rng.u64(3..=5) },
                3 => Incident::Term { worker },
                4 => Incident::OpenSearchDown,
                5 => Incident::S3Down,
                6 => [Incident::Split, Incident::Merge, Incident::UpdateShardCount][rng.usize(0..3)],
                7 => Incident::Reassign { replicas: rng.u32(1..=u32::try_from(workers).unwrap_or(1)) },
                _ => Incident::Duplicates,
            };
            (at, event)
        })
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    events
}

/// Records per PutRecords call of the producer.
const BATCH: usize = 50;
/// How long the producer takes to put the input: about the span of the faults' timeline.
const PRODUCTION: Duration = Duration::from_secs(11);

/// Puts the input in batches of [`BATCH`] over [`PRODUCTION`] (keyed as `replay` keys them), retrying failed entries; when
/// told, puts the batch just stored once more, as a producer does whose answer was lost. Returns
/// how many records went into the stream.
async fn produce(
    api: SdkKinesis,
    stream: String,
    input: PathBuf,
    mut duplicate: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    let entries = entries_of_lines(&std::fs::read_to_string(&input).expect("input"));
    // Spread over the faults' timeline, so they strike while trips still arrive.
    let batches = entries.chunks(BATCH).count().max(1);
    let gap = PRODUCTION.div_f64(batches as f64);
    let mut put = 0;
    for batch in entries.chunks(BATCH) {
        put += put_all(&api, &stream, batch.to_vec()).await;
        // A producer whose answer was lost sends the same batch again, right away.
        if duplicate.has_changed().unwrap_or(false) {
            duplicate.borrow_and_update();
            put += put_all(&api, &stream, batch.to_vec()).await;
        }
        tokio::time::sleep(gap).await;
    }
    put
}

async fn put_all(api: &SdkKinesis, stream: &str, mut pending: Vec<PutEntry>) -> u64 {
    let total = pending.len() as u64;
    for _ in 0..200 {
        let Ok(outcomes) = api.put_records(stream, pending.clone()).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        pending = failed_entries(pending, outcomes);
        if pending.is_empty() {
            return total;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("entries kept failing");
}

fn signal(child: &Child, signal: &str) -> bool {
    Command::new("kill").args([signal, &child.id().to_string()]).status().is_ok_and(|s| s.success())
}

fn kill(mut worker: Worker) {
    let _ = worker.child.kill();
    let _ = worker.child.wait();
}

impl World {
    async fn new(
        seed: u64,
        services: &Services,
        options: &Options,
        shards: u32,
        rng: &mut fastrand::Rng,
        rates: FaultRates,
    ) -> World {
        let kinesis = taxi_testkit::kinesis::client(&services.kinesis);
        let unique = fastrand::u64(..);
        let stream = format!("chaos-{seed}-{unique:016x}");
        kinesis.create_stream(&stream, shards).await.expect("create stream");
        let bucket = fresh_bucket(&taxi_testkit::s3::client(&services.s3), &format!("chaos-{seed}")).await;
        let proxies = [
            FaultProxy::start(Service::Kinesis, &services.kinesis, rng.u64(..), rates).await,
            FaultProxy::start(Service::S3, &services.s3, rng.u64(..), rates).await,
            FaultProxy::start(Service::OpenSearch, &services.opensearch, rng.u64(..), rates).await,
        ];
        let world = World {
            options: options.clone(),
            services: services.clone(),
            dir: tempfile::tempdir().expect("tempdir"),
            stream,
            bucket,
            index_prefix: format!("chaos{seed}x{unique:08x}"),
            kinesis,
            proxies,
            assignment: Assignment::default(),
            workers: Vec::new(),
        };
        world.wait_active().await;
        world
    }

    fn input(&self, rng: &mut fastrand::Rng) -> PathBuf {
        if let Some(path) = &self.options.input {
            return path.clone();
        }
        let path = self.dir.path().join("trips.jsonl");
        let config = GeneratorConfig {
            trips: self.options.trips,
            seed: rng.u64(..),
            invalid_ratio: 0.002,
            ..GeneratorConfig::default()
        };
        write_generated(&path, &config);
        path
    }

    async fn wait_active(&self) {
        wait_active_within(&self.kinesis, &self.stream, Duration::from_secs(20)).await;
    }

    async fn shards(&self) -> Vec<ShardInfo> {
        self.kinesis.list_shards(&self.stream).await.expect("list shards")
    }

    fn assignment_path(&self) -> PathBuf {
        self.dir.path().join("assignment.json")
    }

    fn publish(&mut self, assignment: Assignment) {
        publish_assignment(&self.assignment_path(), &assignment);
        self.assignment = assignment;
    }

    fn start_worker(&mut self, ordinal: usize, until_idle: bool) {
        let [kinesis, s3, opensearch] = &self.proxies;
        let mut cmd = taxi_testkit::process::command(&self.options.worker_bin);
        cmd.env("TAXI_KINESIS_ENDPOINT_URL", kinesis.url());
        cmd.env("TAXI_S3_ENDPOINT_URL", s3.url()).env("TAXI_S3_FORCE_PATH_STYLE", "true");
        cmd.env("RUST_LOG", "warn");
        cmd.args(["run", "--pipeline", "nyc", "--namespace", "chaos", "--stream", &self.stream])
            .args(["--http-addr", "127.0.0.1:0", "--checkpoint", &format!("s3://{}/ckpt", self.bucket)])
            .args(["--checkpoint-interval", "300ms", "--sink", &opensearch.url(), "--index-prefix", &self.index_prefix])
            .args(["--bulk-max-delay", "50ms", "--shard-discovery-interval", "300ms", "--max-records", "200"])
            .args(["--assignment", &format!("file:{}", self.assignment_path().display())])
            .args(["--ordinal", &ordinal.to_string(), "--takeover-timeout", TAKEOVER]);
        if until_idle {
            cmd.args(["--stop-when-idle", "3s"]);
        }
        let log = std::fs::File::create(self.dir.path().join(format!("worker-{ordinal}.log"))).expect("log");
        cmd.stdout(Stdio::null()).stderr(log);
        self.workers.push(Worker { ordinal, child: cmd.spawn().expect("start taxi-worker") });
    }

    fn take_worker(&mut self, ordinal: usize) -> Option<Worker> {
        let index = self.workers.iter().position(|w| w.ordinal == ordinal)?;
        Some(self.workers.remove(index))
    }

    async fn apply(
        &mut self,
        event: Incident,
        rng: &mut fastrand::Rng,
        duplicates: &tokio::sync::watch::Sender<bool>,
    ) -> Result<(), String> {
        match event {
            Incident::Kill { worker } => {
                if let Some(w) = self.take_worker(worker) {
                    kill(w);
                    tokio::time::sleep(Duration::from_millis(rng.u64(100..1_000))).await;
                    self.start_worker(worker, false);
                }
            }
            Incident::Stop { worker, secs } => {
                if let Some(w) = self.workers.iter().find(|w| w.ordinal == worker) {
                    signal(&w.child, "-STOP");
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    signal(&w.child, "-CONT");
                }
            }
            Incident::Term { worker } => {
                if let Some(mut w) = self.take_worker(worker) {
                    signal(&w.child, "-TERM");
                    let deadline = Instant::now() + Duration::from_secs(15);
                    while w.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    kill(w);
                    self.start_worker(worker, false);
                }
            }
            Incident::OpenSearchDown => self.proxies[2].down_for(self.outage(60.0)),
            Incident::S3Down => self.proxies[1].down_for(self.outage(30.0)),
            Incident::Split | Incident::Merge | Incident::UpdateShardCount => {
                self.reshard(event, rng).await?;
                let replicas = self.assignment.replicas.max(1);
                let mut next = assign(&self.shards().await, replicas, Some(&self.assignment));
                next.epoch = self.assignment.epoch + 1;
                self.publish(next);
            }
            Incident::Reassign { replicas } => {
                let mut next = assign(&self.shards().await, replicas, Some(&self.assignment));
                next.epoch = self.assignment.epoch + 1;
                self.publish(next);
            }
            Incident::Duplicates => {
                duplicates.send_modify(|_| {});
            }
        }
        Ok(())
    }

    fn outage(&self, full_secs: f64) -> Duration {
        Duration::from_secs_f64(full_secs * self.options.outage_scale)
    }

    async fn reshard(&self, event: Incident, rng: &mut fastrand::Rng) -> Result<(), String> {
        let open: Vec<ShardInfo> = self.shards().await.into_iter().filter(ShardInfo::is_open).collect();
        let result = match event {
            Incident::Split => {
                let shard = &open[rng.usize(0..open.len())];
                split_shard(&self.kinesis, &self.stream, shard).await
            }
            Incident::Merge => {
                let mut sorted = open.clone();
                sorted.sort_by_key(|s| s.starting_hash_key);
                let Some(pair) = sorted.windows(2).find(|p| p[0].ending_hash_key + 1 == p[1].starting_hash_key) else {
                    return Ok(());
                };
                merge_shards(&self.kinesis, &self.stream, &pair[0].shard_id, &pair[1].shard_id).await
            }
            _ => {
                let target = if open.len() >= 4 { open.len() / 2 } else { open.len() * 2 };
                self.kinesis
                    .update_shard_count(&self.stream, u32::try_from(target).unwrap_or(1))
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        self.wait_active().await;
        result
    }

    /// Waits for the last worker to stop by itself (idle), successfully.
    async fn wait_for_idle_stop(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let Some(mut worker) = self.take_worker(0) else { return Err("no final worker".to_owned()) };
        loop {
            if let Ok(Some(status)) = worker.child.try_wait() {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "the final worker failed ({status}); see {}",
                        self.dir.path().join("worker-0.log").display()
                    ))
                };
            }
            if Instant::now() > deadline {
                kill(worker);
                return Err("the final worker did not stop when idle within its time".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The invariants, as violations.
    async fn check(&self, input: &Path, put: u64) -> Vec<String> {
        let mut violations = Vec::new();
        // 1. The merged results equal the batch oracle.
        let expected = as_lines(&batch_oracle(&EngineConfig::default(), input));
        let out = Command::new(&self.options.worker_bin)
            .args(["results", "--opensearch", &self.services.opensearch, "--pipeline", "chaos/nyc"])
            .args(["--index-prefix", &self.index_prefix])
            .output();
        match out {
            Ok(out) if out.status.success() => {
                let actual: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
                if actual != expected {
                    // Both sides stay with the kept seed, to diff.
                    let _ = std::fs::write(self.dir.path().join("results.jsonl"), actual.join("\n"));
                    let _ = std::fs::write(self.dir.path().join("expected.jsonl"), expected.join("\n"));
                    let missing = expected.iter().filter(|l| !actual.contains(l)).count();
                    let wrong = actual.iter().filter(|l| !expected.contains(l)).count();
                    violations.push(format!(
                        "merged results differ from the oracle: {} vs {} results, {missing} missing, {wrong} not expected",
                        actual.len(),
                        expected.len()
                    ));
                }
            }
            Ok(out) => violations.push(format!("results failed: {}", String::from_utf8_lossy(&out.stderr))),
            Err(e) => violations.push(format!("results failed: {e}")),
        }
        // 2. No write replaced a document with older content: each stored version is the highest sent.
        let mut highest: HashMap<String, u64> = HashMap::new();
        for write in self.proxies[2].forwarded() {
            for line in String::from_utf8_lossy(&write.body).lines() {
                let Ok(action) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                let Some(index) = action.get("index") else { continue };
                if let (Some(id), Some(version)) = (index["_id"].as_str(), index["version"].as_u64()) {
                    let entry = highest.entry(id.to_owned()).or_default();
                    *entry = (*entry).max(version);
                }
            }
        }
        let stored = self.stored_versions().await;
        let behind: Vec<&String> =
            highest.iter().filter(|(id, v)| stored.get(*id) != Some(*v)).map(|(id, _)| id).collect();
        if !behind.is_empty() {
            violations.push(format!(
                "{} documents are not at the highest version written, e.g. {} (stored {:?}, highest {:?})",
                behind.len(),
                behind[0],
                stored.get(behind[0]),
                highest.get(behind[0])
            ));
        }
        // 3–4. Every record counted exactly once, and no shard left unread.
        let checkpoints = self.checkpoints().await;
        let shards = self.shards().await;
        let counted: u64 = checkpoints.values().map(|c| c.counters.records).sum();
        if counted != put {
            violations.push(format!("the checkpoints count {counted} records, {put} were put"));
        }
        for shard in &shards {
            match checkpoints.get(&shard.shard_id) {
                None => violations.push(format!("{} was never read", shard.shard_id)),
                Some(c) if !shard.is_open() && c.position != Position::Finished => {
                    violations.push(format!("closed {} was not read to its end", shard.shard_id));
                }
                Some(_) => {}
            }
        }
        // 5. Every parent was durably finished before its child started.
        let writes = self.proxies[1].forwarded();
        let key = |shard: &str| format!("/ckpt/chaos/nyc/shards/{shard}.json");
        let first_write = |shard: &str, finished_only: bool| {
            writes
                .iter()
                .filter(|w| w.path.split('?').next().is_some_and(|p| p.ends_with(&key(shard))))
                .filter(|w| {
                    !finished_only || String::from_utf8_lossy(&w.body).contains(r#""position":{"kind":"finished"}"#)
                })
                .map(|w| w.at)
                .min()
        };
        for child in &shards {
            let Some(started) = first_write(&child.shard_id, false) else { continue };
            for parent in child.parents().filter(|p| shards.iter().any(|s| s.shard_id == *p)) {
                match first_write(parent, true) {
                    Some(finished) if finished < started => {}
                    _ => violations.push(format!("{} started before its parent {parent} was finished", child.shard_id)),
                }
            }
        }
        violations
    }

    async fn stored_versions(&self) -> HashMap<String, u64> {
        let response = self
            .opensearch()
            .search(opensearch::SearchParts::Index(&[&format!("{}-*", self.index_prefix)]))
            .body(serde_json::json!({"size": 10_000, "version": true, "query": {"match_all": {}}}))
            .send()
            .await
            .expect("search");
        let body: serde_json::Value = response.json().await.expect("json");
        body["hits"]["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| Some((h["_id"].as_str()?.to_owned(), h["_version"].as_u64()?)))
            .collect()
    }

    async fn checkpoints(&self) -> HashMap<String, ShardCheckpoint> {
        let s3 = taxi_testkit::s3::client(&self.services.s3);
        let listed = s3.list_objects_v2().bucket(&self.bucket).prefix("ckpt/chaos/nyc/shards/").send().await;
        let mut out = HashMap::new();
        for object in listed.ok().and_then(|l| l.contents).unwrap_or_default() {
            let Some(key) = object.key else { continue };
            let Some(bytes) = read_object(&s3, &self.bucket, &key).await else { continue };
            if let Ok(checkpoint) = ShardCheckpoint::from_bytes(&bytes) {
                out.insert(checkpoint.shard_id.clone(), checkpoint);
            }
        }
        out
    }

    /// Keeps a failed seed's files (worker logs, trips, assignment) and says where its state is.
    fn keep(&mut self) -> String {
        self.dir.disable_cleanup(true);
        format!(
            "logs and input in {}; stream {}, bucket {}, indices {}-*",
            self.dir.path().display(),
            self.stream,
            self.bucket,
            self.index_prefix
        )
    }

    /// Drops what a passed seed created in the emulators, so a long run holds one seed's data at a
    /// time. A failed seed keeps everything for a look.
    async fn cleanup(&self) {
        let _ = self.kinesis.client().delete_stream().stream_name(&self.stream).send().await;
        let indices = format!("{}-*", self.index_prefix);
        let delete = opensearch::indices::IndicesDeleteParts::Index(&[&indices]);
        let _ = self.opensearch().indices().delete(delete).send().await;
    }

    /// A client straight to OpenSearch, past the fault proxy.
    fn opensearch(&self) -> opensearch::OpenSearch {
        opensearch::OpenSearch::new(
            opensearch::http::transport::Transport::single_node(&self.services.opensearch).expect("transport"),
        )
    }
}

//! The emulator walkthrough (`docs/getting-started/emulators.md`) as a test: `replay` →
//! `run --stop-when-idle` → `results` equals `local` over the same file, and the worker's HTTP
//! endpoints answer while it runs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use taxi_core::settings::WorkerSettings;
use taxi_testkit::kinesis::emulator;
use taxi_testkit::oracle::assert_same_lines;
use taxi_testkit::process::{WorkerProcess, command};

const BIN: &str = env!("CARGO_BIN_EXE_taxi-worker");

fn taxi_worker(endpoint: &str) -> Command {
    let mut cmd = command(BIN);
    cmd.env("TAXI_KINESIS_ENDPOINT_URL", endpoint);
    cmd
}

fn ok(output: std::process::Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn replay_run_and_results_equal_local_over_the_same_file() {
    walk_through(false);
}

#[test]
fn replay_with_kpl_aggregation_gives_the_same_results() {
    walk_through(true);
}

fn walk_through(aggregate: bool) {
    let Some(endpoint) = emulator() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
    let input = path("trips.jsonl");
    let stream = format!("taxi-cli-{:016x}", fastrand::u64(..));

    ok(
        Command::new(BIN)
            .args(["generate", "--trips", "3000", "--invalid-ratio", "0.002", "--output", &input])
            .output()
            .expect("generate"),
        "generate",
    );
    let mut replay = taxi_worker(&endpoint);
    replay.args(["replay", "--input", &input, "--stream", &stream, "--speedup", "0", "--create-stream", "4"]);
    replay.args(["--watermark-interval", "200ms"]);
    if aggregate {
        replay.arg("--aggregate");
    }
    let replayed = ok(replay.output().expect("replay"), "replay");
    assert!(replayed.contains("replayed 3000 trips"), "{replayed}");

    // The plain walk-through configures `run` with flags, the KPL one with the settings file the
    // operator renders: both must read the same.
    let mut worker = taxi_worker(&endpoint);
    worker.args(["run", "--stop-when-idle", "2s", "--http-addr", "127.0.0.1:0"]);
    if aggregate {
        let settings = serde_json::json!({
            "pipeline": "nyc",
            "stream": {"name": stream, "endpoint_url": endpoint, "discovery_interval_ms": 500},
            "checkpoint": {"uri": format!("file://{}", path("ckpt")), "interval_ms": 500},
            "sink": {"url": format!("file://{}", path("partials.jsonl"))},
        });
        let settings = WorkerSettings::from_json(settings.to_string().as_bytes()).expect("valid settings");
        std::fs::write(path("worker.json"), settings.to_json()).expect("write settings");
        worker.args(["--config", &path("worker.json")]);
    } else {
        worker
            .args(["--pipeline", "nyc", "--stream", &stream])
            .args(["--shard-discovery-interval", "500ms", "--checkpoint-interval", "500ms"])
            .args([
                "--checkpoint",
                &format!("file://{}", path("ckpt")),
                "--sink",
                &format!("file://{}", path("partials.jsonl")),
            ]);
    }
    let mut worker = WorkerProcess::spawn(worker);
    let (healthz, _) = worker.get("/healthz");
    assert_eq!(healthz, 200);
    let (_, metrics) = worker.get("/metrics");
    assert!(metrics.contains("taxi_owned_shards"), "{metrics}");
    let (_, status) = worker.get("/status");
    assert!(status.contains("\"shards\""), "{status}");
    let rest = worker.wait_for_exit(Duration::from_secs(120), "stop when idle");

    let merged = ok(
        Command::new(BIN)
            .args(["results", "--sink", &format!("file://{}", path("partials.jsonl")), "--pipeline", "nyc"])
            .output()
            .expect("results"),
        "results",
    );
    ok(
        Command::new(BIN)
            .args(["local", "--input", &input, "--shards", "4", "--output", &path("local.jsonl")])
            .output()
            .expect("local"),
        "local",
    );
    let local = std::fs::read_to_string(Path::new(&path("local.jsonl"))).expect("local output");
    assert!(!local.is_empty());
    // Compared without printing both files: they are long.
    let (merged, local): (Vec<&str>, Vec<&str>) = (merged.lines().collect(), local.lines().collect());
    assert_same_lines(
        &merged,
        &local,
        &format!("run over the replayed stream differs from local (worker said: {rest})"),
    );
}

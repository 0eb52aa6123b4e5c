//! The README's emulator walk-through as a test: `replay` → `run --stop-when-idle` → `results`
//! equals `local` over the same file, and the worker's HTTP endpoints answer while it runs.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::kinesis::emulator;
use taxi_core::settings::WorkerSettings;

const BIN: &str = env!("CARGO_BIN_EXE_taxi-worker");

fn taxi_worker(endpoint: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("AWS_ACCESS_KEY_ID", "test").env("AWS_SECRET_ACCESS_KEY", "test").env("AWS_REGION", "us-east-1");
    cmd.env("TAXI_KINESIS_ENDPOINT_URL", endpoint);
    cmd
}

fn ok(output: std::process::Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
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
    let mut worker = worker.stderr(Stdio::piped()).spawn().expect("run");
    let mut stderr = BufReader::new(worker.stderr.take().expect("stderr"));
    let mut first = String::new();
    stderr.read_line(&mut first).expect("first line");
    let addr =
        first.split("http://").nth(1).and_then(|s| s.split('/').next()).expect("the address is printed").to_owned();
    assert!(http_get(&addr, "/healthz").starts_with("HTTP/1.1 200"));
    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.contains("taxi_owned_shards"), "{metrics}");
    let status = http_get(&addr, "/status");
    assert!(status.contains("\"shards\""), "{status}");
    let status = worker.wait().expect("wait");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("stderr");
    assert!(status.success(), "run failed: {rest}");

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
    let first_difference = merged.iter().zip(&local).position(|(a, b)| a != b);
    assert!(
        merged.len() == local.len() && first_difference.is_none(),
        "run over the replayed stream differs from local: {} vs {} lines, first difference at {first_difference:?}: {:?} vs {:?}; worker said: {rest}",
        merged.len(),
        local.len(),
        first_difference.and_then(|i| merged.get(i)),
        first_difference.and_then(|i| local.get(i)),
    );
}

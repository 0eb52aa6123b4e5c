//! `local` and `replay` reading their input from S3 (moto) give the results of `local` over the
//! same local file: a gzipped JSON-lines object, its Parquet form (TLC layout with zone ids,
//! written by pyarrow) matched by a key pattern, and a replay from a prefix into kinesis-mock
//! read back by `run`.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use taxi_testkit::oracle::assert_same_lines;
use taxi_testkit::parquet::{TimeUnit, ZoneInput, python, write_centroids, write_tlc_parquet};
use taxi_testkit::process::{WorkerProcess, command};
use taxi_testkit::s3::{client, fresh_bucket};
use taxi_testkit::services::{KINESIS_ENDPOINT, S3_ENDPOINT, service_endpoint};

const BIN: &str = env!("CARGO_BIN_EXE_taxi-worker");

/// The flags that point a command at the S3 emulator.
fn s3_flags(s3: &str) -> [&str; 3] {
    ["--s3-endpoint-url", s3, "--s3-force-path-style"]
}

fn ok(output: std::process::Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).expect("compress");
    gz.finish().expect("compress")
}

/// Uploads `bytes` as `key` of a fresh bucket's, returning the bucket.
fn upload(s3: &str, objects: &[(&str, Vec<u8>)]) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let client = client(s3);
        let bucket = fresh_bucket(&client, "taxi-input").await;
        for (key, bytes) in objects {
            let body = ByteStream::from(bytes.clone());
            client.put_object().bucket(&bucket).key(*key).body(body).send().await.expect("put");
        }
        bucket
    })
}

/// `local` over `inputs` (with `extra` flags), its result lines.
fn local(s3: &str, inputs: &[&str], extra: &[&str], output: &Path) -> Vec<String> {
    let mut cmd = command(BIN);
    cmd.arg("local").args(s3_flags(s3)).arg("--input").args(inputs).args(extra);
    cmd.args(["--shards", "4", "--no-dashboard", "--output", output.to_str().expect("utf-8")]);
    ok(cmd.output().expect("local"), "local");
    std::fs::read_to_string(output).expect("results").lines().map(str::to_owned).collect()
}

#[test]
fn local_over_s3_json_and_parquet_equals_local_over_the_file() {
    let Some(s3) = service_endpoint(S3_ENDPOINT) else { return };
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name);
    let input = ZoneInput::generate(2500, 21);
    std::fs::write(path("trips.jsonl"), input.json_lines()).expect("write");
    write_centroids(&input.centroids, &path("zones.csv"));
    write_tlc_parquet(&python, &input.trips, TimeUnit::Micros, 1000, &path("trips.parquet"));
    let bucket = upload(
        &s3,
        &[
            ("day/trips.jsonl.gz", gzip(input.json_lines().as_bytes())),
            ("day/trips.parquet", std::fs::read(path("trips.parquet")).expect("read the Parquet file")),
        ],
    );

    let expected = local(&s3, &[path("trips.jsonl").to_str().expect("utf-8")], &[], &path("file.jsonl"));
    assert!(!expected.is_empty(), "the file gives results");
    let json = local(&s3, &[&format!("s3://{bucket}/day/trips.jsonl.gz")], &[], &path("json.jsonl"));
    assert_same_lines(&json, &expected, "local over the gzipped JSON object");
    let table = path("zones.csv");
    let zones = ["--zone-centroids", table.to_str().expect("utf-8")];
    let parquet = local(&s3, &[&format!("s3://{bucket}/day/*.parquet")], &zones, &path("parquet.jsonl"));
    assert_same_lines(&parquet, &expected, "local over the Parquet object");

    // A URI that names nothing fails with the URI and what to check.
    let mut cmd = command(BIN);
    cmd.arg("local").args(s3_flags(&s3)).args(["--no-dashboard", "--input", &format!("s3://{bucket}/day/*.csv")]);
    let failed = cmd.output().expect("local");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success() && stderr.contains("no object matches") && stderr.contains("aws s3 ls"),
        "{stderr}"
    );
}

#[test]
fn replay_from_an_s3_prefix_then_run_equals_local_over_the_file() {
    let Some(s3) = service_endpoint(S3_ENDPOINT) else { return };
    let Some(kinesis) = service_endpoint(KINESIS_ENDPOINT) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
    let input = path("trips.jsonl");
    ok(
        Command::new(BIN)
            .args(["generate", "--trips", "2000", "--invalid-ratio", "0.002", "--output", &input])
            .output()
            .expect("generate"),
        "generate",
    );
    let bucket = upload(&s3, &[("replay/trips.jsonl.gz", gzip(&std::fs::read(&input).expect("read")))]);
    let stream = format!("taxi-s3-{:016x}", fastrand::u64(..));

    let mut replay = command(BIN);
    replay.env("TAXI_KINESIS_ENDPOINT_URL", &kinesis);
    replay.arg("replay").args(s3_flags(&s3)).args(["--input", &format!("s3://{bucket}/replay/"), "--stream", &stream]);
    replay.args(["--speedup", "0", "--create-stream", "2", "--watermark-interval", "200ms"]);
    let replayed = ok(replay.output().expect("replay"), "replay");
    assert!(replayed.contains("replayed 2000 trips"), "{replayed}");

    let mut worker = command(BIN);
    worker.env("TAXI_KINESIS_ENDPOINT_URL", &kinesis);
    worker.args(["run", "--stop-when-idle", "2s", "--http-addr", "127.0.0.1:0", "--pipeline", "nyc"]);
    worker.args(["--stream", &stream, "--shard-discovery-interval", "500ms", "--checkpoint-interval", "500ms"]);
    worker.args(["--checkpoint", &format!("file://{}", path("ckpt"))]);
    worker.args(["--sink", &format!("file://{}", path("partials.jsonl"))]);
    let rest = WorkerProcess::spawn(worker).wait_for_exit(Duration::from_secs(120), "stop when idle");
    let merged = ok(
        Command::new(BIN)
            .args(["results", "--sink", &format!("file://{}", path("partials.jsonl")), "--pipeline", "nyc"])
            .output()
            .expect("results"),
        "results",
    );
    let merged: Vec<String> = merged.lines().map(str::to_owned).collect();
    let expected = local(&s3, &[&input], &[], Path::new(&path("local.jsonl")));
    assert!(!expected.is_empty(), "the file gives results");
    assert_same_lines(&merged, &expected, &format!("run over the stream replayed from S3 (worker said: {rest})"));
}

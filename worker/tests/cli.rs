//! The `taxi-worker` command line as a user meets it: results and summary files, clear errors.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_taxi-worker");

fn taxi_worker(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run taxi-worker")
}

#[test]
fn local_writes_sorted_results_and_a_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("results.jsonl");
    let summary = dir.path().join("summary.json");
    let run = taxi_worker(&[
        "local",
        "--generate",
        "20000",
        "--shards",
        "3",
        "--output",
        output.to_str().expect("utf-8"),
        "--summary",
        summary.to_str().expect("utf-8"),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(report.contains("20000 records") && report.contains("busiest pickup cells"), "{report}");

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .expect("results")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(!lines.is_empty());
    let key = |v: &serde_json::Value| {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        (s("window_start"), s("kind"), s("geohash") + &s("pickup_geohash"), s("airport"))
    };
    assert!(lines.windows(2).all(|w| key(&w[0]) < key(&w[1])), "sorted by (window_start, kind, key), no duplicates");
    for line in &lines {
        match line["kind"].as_str() {
            Some("hot_spot") => assert!(line["pickup_count"].as_u64() >= Some(2)),
            Some("airport_trip") => {
                let (n, sum, avg) =
                    (line["trip_count"].as_f64(), line["sum_duration_min"].as_f64(), line["avg_duration_min"].as_f64());
                let (n, sum, avg) = (n.expect("count"), sum.expect("sum"), avg.expect("avg"));
                assert!(n >= 2.0 && (sum / n - avg).abs() < 1e-3, "{line}");
                assert!(["JFK", "LGA"].contains(&line["airport"].as_str().unwrap_or_default()));
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }

    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).expect("summary")).expect("JSON");
    for field in [
        "records",
        "trips",
        "watermarks",
        "invalid",
        "outside_region",
        "late",
        "hot_spots",
        "airport_trips",
        "elapsed_s",
        "events_per_s",
    ] {
        assert!(summary.get(field).is_some(), "summary lacks {field}");
    }
    assert_eq!(summary["records"], 20000);
    assert_eq!(
        summary["hot_spots"].as_u64().unwrap_or(0) + summary["airport_trips"].as_u64().unwrap_or(0),
        lines.len() as u64
    );
}

#[test]
fn generate_is_reproducible_from_its_seed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
    for (name, seed) in [("a", "5"), ("b", "5"), ("c", "6")] {
        let run = taxi_worker(&["generate", "--trips", "500", "--seed", seed, "--output", &path(name)]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    }
    let read = |name: &str| std::fs::read(path(name)).expect("generated file");
    assert_eq!(read("a"), read("b"));
    assert_ne!(read("a"), read("c"));
    assert_eq!(read("a").iter().filter(|&&b| b == b'\n').count(), 500);
}

#[test]
fn bad_flag_values_and_missing_files_fail_with_a_clear_message() {
    let run = ["run", "--pipeline", "nyc", "--stream", "s", "--checkpoint", "/tmp/c", "--sink", "file:///tmp/p.jsonl"];
    let with = |extra: &'static [&'static str]| -> Vec<&str> { run.iter().chain(extra).copied().collect() };
    let (needs_ordinal, bad_source) = (with(&["--assignment", "file:/tmp/a.json"]), with(&["--assignment", "some"]));
    let cases: [(&[&str], &str); 14] = [
        (&needs_ordinal, "--assignment file:PATH needs --ordinal N"),
        (&bad_source, "expected all, file:PATH or configmap"),
        (&["run", "--config", "/nonexistent/worker.json"], "failed to read /nonexistent/worker.json"),
        (&["run", "--config", "w.json", "--pipeline", "nyc"], "cannot be used with"),
        (&["local", "--window", "10x"], "invalid duration \"10x\""),
        (&["local", "--window", "1500ms"], "must be a whole number of seconds, got 1500 ms"),
        (&["local", "--geohash-precision", "13"], "13 is not in 1..=12"),
        (&["local", "--shards", "0"], "0 is not in 1..=1024"),
        (&["local", "--watermark", "sometimes"], "invalid value 'sometimes'"),
        (&["local", "--input", "/nonexistent/trips.jsonl"], "input file /nonexistent/trips.jsonl does not exist"),
        (&["local", "--resume"], "--checkpoint-dir"),
        (&["local", "--speedup=-1"], "invalid speedup \"-1\""),
        (&["local", "--dashboard", "localhost"], "invalid socket address"),
        (&["local", "--dashboard", "127.0.0.1:0", "--no-dashboard"], "cannot be used with"),
    ];
    for (args, expected) in cases {
        let run = taxi_worker(args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
    }
}

#[test]
fn every_command_taking_a_sink_url_refuses_one_with_credentials_without_repeating_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = "https://writer:s3cret@search.example.com:9200";
    let config = dir.path().join("worker.json");
    let settings = serde_json::json!({
        "pipeline": "nyc", "stream": {"name": "s"}, "checkpoint": {"uri": "/tmp/c"}, "sink": {"url": url},
    });
    std::fs::write(&config, settings.to_string()).expect("write");
    let config = config.to_str().expect("utf-8");
    let cases: [&[&str]; 3] = [
        &["run", "--pipeline", "nyc", "--stream", "s", "--checkpoint", "/tmp/c", "--sink", url],
        &["run", "--config", config],
        &["results", "--opensearch", url, "--pipeline", "nyc"],
    ];
    for args in cases {
        let run = taxi_worker(args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?} should fail");
        assert!(stderr.contains("sink.url must not carry credentials (user:password@ or user@)"), "{args:?}: {stderr}");
        assert!(stderr.contains("TAXI_SINK_USERNAME and TAXI_SINK_PASSWORD"), "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{args:?}: {stderr}");
    }
}

#[test]
fn an_unreadable_input_format_is_named_in_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "hello world\nthis is not a trip file\n").expect("write");
    let run = taxi_worker(&["local", "--input", path.to_str().expect("utf-8")]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("notes.txt") || stderr.contains("hello world"), "{stderr}");
}

#[test]
fn a_tlc_file_with_zone_ids_instead_of_coordinates_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("yellow_tripdata_2019-01.csv");
    let header = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,RatecodeID,\
                  store_and_fwd_flag,PULocationID,DOLocationID,payment_type,fare_amount,extra,mta_tax,tip_amount\n";
    let row = "1,2019-01-01 00:46:40,2019-01-01 00:53:20,1,1.50,1,N,151,239,1,7,0.5,0.5,1.65\n";
    std::fs::write(&path, format!("{header}{row}")).expect("write");
    let run = taxi_worker(&["local", "--input", path.to_str().expect("utf-8")]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("yellow_tripdata_2019-01.csv places trips by taxi zone (PULocationID"), "{stderr}");
    assert!(stderr.contains("January 2009 to June 2016"), "{stderr}");
}

#[test]
fn a_scripted_local_run_has_no_dashboard_and_exits() {
    // Not on a terminal and no --dashboard: no server, full speed, and the process ends by itself.
    let run = taxi_worker(&["local", "--generate", "2000"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(!String::from_utf8_lossy(&run.stderr).contains("dashboard:"));
}

#[test]
fn a_dashboard_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let run = taxi_worker(&["local", "--generate", "2000", "--dashboard", &addr]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains(&format!("failed to serve the dashboard on {addr}")), "{stderr}");
}

#[test]
fn dead_letters_are_listed_and_purged_only_when_confirmed() {
    use taxi_core::document::PartialDocument;
    use taxi_io::sink::dead_letter::{DeadLetter, DeadLetterStore};
    use taxi_io::store::{CheckpointStore, S3Settings};
    use taxi_testkit::documents::hot_spot;

    let dir = tempfile::tempdir().expect("tempdir");
    let uri = format!("file://{}", dir.path().display());
    let letter = DeadLetter {
        status: 400,
        error_type: "mapper_parsing_exception".to_owned(),
        reason: "failed to parse field [shard]".to_owned(),
        document: PartialDocument { version: 7, ..hot_spot("nyc", "shardId-000000000000", 1_451_606_400, "dr5ru7", 3) },
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store = CheckpointStore::from_uri(&uri, &S3Settings::default(), 0).await.expect("store");
        let gauge = prometheus::IntGauge::new("g", "g").expect("gauge");
        DeadLetterStore::new(store, "nyc", gauge).put(std::slice::from_ref(&letter)).await.expect("put");
    });

    let list = taxi_worker(&["dead-letter", "list", "--pipeline", "nyc", "--checkpoint", &uri]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let listed: DeadLetter = serde_json::from_slice(&list.stdout).expect("one dead letter as a JSON line");
    assert_eq!(listed, letter);

    let unconfirmed = taxi_worker(&["dead-letter", "purge", "--pipeline", "nyc", "--checkpoint", &uri]);
    assert!(!unconfirmed.status.success());
    assert!(String::from_utf8_lossy(&unconfirmed.stderr).contains("confirm with --yes"));
    let purge = taxi_worker(&["dead-letter", "purge", "--yes", "--pipeline", "nyc", "--checkpoint", &uri]);
    assert!(purge.status.success(), "{}", String::from_utf8_lossy(&purge.stderr));
    assert!(String::from_utf8_lossy(&purge.stderr).contains("purged 1 dead letters in 1 objects"));
    let after = taxi_worker(&["dead-letter", "list", "--pipeline", "nyc", "--checkpoint", &uri]);
    assert!(after.status.success() && after.stdout.is_empty(), "nothing is left");
}

//! The archive end to end, against kinesis-mock and moto: `taxi-worker run --archive` over a
//! generated day, killed with SIGKILL mid-stream, then restarted across a reshard (2 → 4 shards).
//! Every Parquet file is read back with the `parquet` crate and with pyarrow (as Athena, Spark
//! and DuckDB would read the Hive-partitioned folder): the archive holds every trip of the input
//! exactly once, each row equal to its input trip, in the partition of its event hour.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use taxi_core::archive::Partition;
use taxi_core::checkpoint::ShardCheckpoint;
use taxi_core::event::{Event, Trip};
use taxi_core::generate::GeneratorConfig;
use taxi_core::input::parse_json_record;
use taxi_io::kinesis::api::KinesisApi;
use taxi_testkit::input::{split_at_share, write_generated};
use taxi_testkit::kinesis::{client, fresh_stream, put_file, wait_active};
use taxi_testkit::parquet::python;
use taxi_testkit::process::{WorkerProcess, emulator_command};
use taxi_testkit::s3::{fresh_bucket, read_object};
use taxi_testkit::services::services;

const BIN: &str = env!("CARGO_BIN_EXE_taxi-worker");
const TRIPS: u64 = 5_000;

/// The valid trips of a JSON-lines file, by trip id.
fn input_trips(path: &Path) -> BTreeMap<u64, Trip> {
    std::fs::read_to_string(path)
        .expect("read input")
        .lines()
        .filter_map(|line| match parse_json_record(line.as_bytes()) {
            Ok(Event::Trip(trip)) => Some((trip.trip_id, trip)),
            _ => None,
        })
        .collect()
}

/// One archived row as read back: the trip and the shard it came from.
#[derive(Debug)]
struct ArchivedRow {
    trip: Trip,
    shard_id: String,
}

/// Reads an archive file with the `parquet` crate.
fn read_with_parquet_crate(bytes: &[u8], dir: &Path) -> Vec<ArchivedRow> {
    let path = dir.join("read-back.parquet");
    std::fs::File::create(&path).and_then(|mut f| f.write_all(bytes)).expect("write temp file");
    let reader = SerializedFileReader::new(std::fs::File::open(&path).expect("open")).expect("a Parquet file");
    reader
        .get_row_iter(None)
        .expect("rows")
        .map(|row| {
            let columns: BTreeMap<String, Field> = row.expect("row").into_columns().into_iter().collect();
            let long = |name: &str| match &columns[name] {
                Field::Long(v) | Field::TimestampMillis(v) => *v,
                other => panic!("{name}: {other:?}"),
            };
            let double = |name: &str| match &columns[name] {
                Field::Double(v) => *v,
                other => panic!("{name}: {other:?}"),
            };
            let Field::Str(shard_id) = &columns["shard_id"] else { panic!("shard_id is a string") };
            let trip = Trip {
                trip_id: u64::try_from(long("trip_id")).expect("positive"),
                pickup_time: long("pickup_datetime"),
                dropoff_time: long("dropoff_datetime"),
                pickup: taxi_core::event::GeoPoint { lat: double("pickup_latitude"), lon: double("pickup_longitude") },
                dropoff: taxi_core::event::GeoPoint {
                    lat: double("dropoff_latitude"),
                    lon: double("dropoff_longitude"),
                },
            };
            ArchivedRow { trip, shard_id: shard_id.clone() }
        })
        .collect()
}

/// Reads the archive folder as one Hive-partitioned dataset with pyarrow; prints one line per
/// row: trip id, pickup and dropoff (ms), the four coordinates, dt and hour.
const READ_WITH_PYARROW: &str = r#"
import sys
import pyarrow.dataset as ds
table = ds.dataset(sys.argv[1], format="parquet", partitioning="hive").to_table()
cols = {name: table.column(name).to_pylist() for name in table.column_names}
for i in range(table.num_rows):
    print(cols["trip_id"][i],
          int(cols["pickup_datetime"][i].timestamp() * 1000),
          int(cols["dropoff_datetime"][i].timestamp() * 1000),
          repr(cols["pickup_latitude"][i]), repr(cols["pickup_longitude"][i]),
          repr(cols["dropoff_latitude"][i]), repr(cols["dropoff_longitude"][i]),
          cols["dt"][i], cols["hour"][i])
"#;

fn records(worker: &WorkerProcess) -> u64 {
    worker.status()["shards"]
        .as_object()
        .map_or(0, |shards| shards.values().filter_map(|s| s["records"].as_u64()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_resharded_run_archives_every_trip_exactly_once() {
    let Some(services) = services() else { return };
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("trips.jsonl");
    write_generated(
        &input,
        &GeneratorConfig { trips: TRIPS, seed: 16, invalid_ratio: 0.002, ..GeneratorConfig::default() },
    );
    let expected = input_trips(&input);
    let (first_half, second_half) = split_at_share(&input, dir.path(), ["first.jsonl", "second.jsonl"], (1, 2));

    let kinesis = client(&services.kinesis);
    let stream = fresh_stream(&kinesis, 2).await;
    let s3 = taxi_testkit::s3::client(&services.s3);
    let bucket = fresh_bucket(&s3, "taxi-archive").await;
    let worker = |extra: &[&str]| {
        let mut cmd = emulator_command(BIN, &services);
        cmd.args(["run", "--pipeline", "nyc", "--stream", &stream, "--http-addr", "127.0.0.1:0"])
            .args(["--checkpoint", &format!("s3://{bucket}/checkpoints"), "--checkpoint-interval", "300ms"])
            .args(["--sink", &format!("file://{}", dir.path().join("results.jsonl").display())])
            .args(["--shard-discovery-interval", "500ms", "--max-records", "100"])
            .args(["--archive", &format!("s3://{bucket}/archive"), "--archive-max-file-bytes", "65536"])
            .args(["--archive-max-file-age", "2s"])
            .args(extra);
        WorkerProcess::spawn(cmd)
    };

    // The first half, read by a worker killed part-way.
    put_file(&kinesis, &stream, &first_half).await;
    let killed = worker(&[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while records(&killed) < TRIPS / 4 {
        assert!(Instant::now() < deadline, "the first worker did not get far enough");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(fastrand::u64(0..300)));
    killed.kill_9();
    // The kill left files open (or decided and unwritten): the restart must rebuild them.
    let listed = s3.list_objects_v2().bucket(&bucket).prefix("checkpoints/").send().await.expect("list");
    let mut marked = 0;
    for key in listed.contents().iter().filter_map(|o| o.key()).filter(|k| k.contains("/shards/")) {
        let bytes = read_object(&s3, &bucket, key).await.expect("read a checkpoint");
        marked += usize::from(!ShardCheckpoint::from_bytes(&bytes).expect("a checkpoint").archive.is_empty());
    }
    assert!(marked > 0, "no checkpoint lists an archive file: the kill tested nothing");

    // A reshard, the second half into the new shards, and a worker that reads to the end.
    kinesis.update_shard_count(&stream, 4).await.expect("reshard");
    wait_active(&kinesis, &stream).await;
    put_file(&kinesis, &stream, &second_half).await;
    let mut last = worker(&["--stop-when-idle", "3s"]);
    let said = last.wait_for_exit(Duration::from_secs(180), "stop when idle");
    assert!(said.contains("stopped:"), "{said}");

    // Every file back from S3.
    let listed = s3.list_objects_v2().bucket(&bucket).prefix("archive/").send().await.expect("list");
    assert!(!listed.is_truncated().unwrap_or(false), "one page of files");
    let archive_dir = dir.path().join("archive");
    let mut by_trip: BTreeMap<u64, usize> = BTreeMap::new();
    let keys: Vec<String> = listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
    assert!(keys.len() > 4, "several files (size and age limits, four shards): {keys:?}");
    for key in &keys {
        let bytes = read_object(&s3, &bucket, key).await.expect("read the file");
        let local = archive_dir.join(key.trim_start_matches("archive/"));
        std::fs::create_dir_all(local.parent().expect("a folder")).expect("mkdir");
        std::fs::write(&local, &bytes).expect("copy");
        for row in read_with_parquet_crate(&bytes, dir.path()) {
            let want = expected
                .get(&row.trip.trip_id)
                .unwrap_or_else(|| panic!("trip {} is not in the input", row.trip.trip_id));
            assert_eq!(&row.trip, want, "row of {key} equals its input trip");
            assert!(
                key.starts_with(&format!("archive/{}/{}-", Partition::of(want).path(), row.shard_id)),
                "{key} holds a row of its partition and shard"
            );
            *by_trip.entry(row.trip.trip_id).or_default() += 1;
        }
    }
    let twice: Vec<_> = by_trip.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "trips archived more than once: {twice:?}");
    let missing: Vec<_> = expected.keys().filter(|id| !by_trip.contains_key(id)).take(10).collect();
    assert!(missing.is_empty(), "trips not archived (first 10): {missing:?}");

    // The same folder through pyarrow's Hive dataset reader.
    let out = Command::new(&python).arg("-c").arg(READ_WITH_PYARROW).arg(&archive_dir).output().expect("run python");
    assert!(out.status.success(), "pyarrow: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut seen = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let trip = &expected[&f[0].parse::<u64>().expect("trip id")];
        assert_eq!(
            (f[1].parse::<i64>().ok(), f[2].parse::<i64>().ok()),
            (Some(trip.pickup_time), Some(trip.dropoff_time)),
            "{line}"
        );
        let coords: Vec<f64> = f[3..7].iter().map(|v| v.parse().expect("a float")).collect();
        assert_eq!(coords, [trip.pickup.lat, trip.pickup.lon, trip.dropoff.lat, trip.dropoff.lon], "{line}");
        let path = Partition::of(trip).path();
        assert_eq!(format!("dt={}/hour={:02}", f[7], f[8].parse::<u32>().expect("hour")), path, "{line}");
        seen += 1;
    }
    assert_eq!(seen, expected.len(), "pyarrow reads every trip once");
}

//! S3 inputs against moto's S3 (`TAXI_TEST_S3_ENDPOINT`, started by `.ci/services.sh`): which
//! objects a key, a prefix or a pattern resolves to, the errors of a missing object or bucket,
//! ranged reads, and a streamed body that survives broken connections.
//!
//! The tests are plain (not async): the readers block, so they run on the test's thread while a
//! runtime of their own serves the requests.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use taxi_core::input::{ChunkReader, InputObject};
use taxi_io::input::{InputResolver, ReadRetry, S3InputError};
use taxi_io::retry::{BackoffPolicy, Jitter};
use taxi_io::store::S3Settings;
use taxi_testkit::proxy::{Proxy, answer_cutting};
use taxi_testkit::s3::{client, emulator, fresh_bucket};

/// A bucket of its own on the emulator, and a runtime to reach it.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    endpoint: String,
    s3: aws_sdk_s3::Client,
    bucket: String,
}

impl Fixture {
    /// `None` (after a message) when the emulator is not running outside CI.
    fn new() -> Option<Fixture> {
        let endpoint = emulator()?;
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let s3 = client(&endpoint);
        let bucket = runtime.block_on(fresh_bucket(&s3, "taxi-input"));
        Some(Fixture { runtime, endpoint, s3, bucket })
    }

    fn put(&self, key: &str, bytes: impl Into<Vec<u8>>) {
        let body = ByteStream::from(bytes.into());
        self.runtime.block_on(self.s3.put_object().bucket(&self.bucket).key(key).body(body).send()).expect("put");
    }

    /// A resolver reaching S3 at `endpoint` (the emulator or a proxy in front of it).
    fn resolver(&self, endpoint: &str, retry: ReadRetry) -> InputResolver {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(Credentials::new(
                "test", "test", None, None, "static",
            )))
            .build();
        let settings = S3Settings { endpoint_url: Some(endpoint.to_owned()), force_path_style: true, region: None };
        InputResolver::new(settings, self.runtime.handle().clone()).with_sdk_config(sdk).with_retry(retry)
    }

    fn resolve(&self, arg: &str) -> Result<Vec<Arc<dyn InputObject>>, S3InputError> {
        self.runtime.block_on(self.resolver(&self.endpoint, quick_retry()).resolve(arg))
    }

    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// Short waits, so a test of giving up takes well under a second.
fn quick_retry() -> ReadRetry {
    ReadRetry {
        attempts: 4,
        backoff: BackoffPolicy::new(Duration::from_millis(10), Duration::from_millis(50), Jitter::Equal),
    }
}

fn origins(objects: &[Arc<dyn InputObject>]) -> Vec<String> {
    objects.iter().map(|o| o.origin().to_owned()).collect()
}

fn read_all(object: &dyn InputObject) -> Vec<u8> {
    let mut bytes = Vec::new();
    object.stream().expect("stream").read_to_end(&mut bytes).expect("read");
    bytes
}

/// Bytes that differ at every offset, so a misplaced range shows.
fn numbered_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn one_key_is_one_object_read_whole() {
    let Some(fx) = Fixture::new() else { return };
    fx.put("trips/day.json", "{\"a\":1}\n{\"a\":2}\n");
    fx.put("trips/empty.json", "");
    let objects = fx.resolve(&fx.uri("trips/day.json")).expect("resolve");
    assert_eq!(origins(&objects), [fx.uri("trips/day.json")]);
    assert_eq!(read_all(objects[0].as_ref()), b"{\"a\":1}\n{\"a\":2}\n");
    let empty = fx.resolve(&fx.uri("trips/empty.json")).expect("resolve an empty object");
    assert_eq!(read_all(empty[0].as_ref()), b"");
}

#[test]
fn a_prefix_is_every_object_under_it_in_key_order() {
    let Some(fx) = Fixture::new() else { return };
    // Uploaded out of order, with a folder marker and a neighbour outside the prefix.
    for key in ["days/b.json", "days/sub/c.json", "days/a.json", "days/", "days-other/x.json"] {
        fx.put(key, key.as_bytes());
    }
    let objects = fx.resolve(&fx.uri("days/")).expect("resolve");
    assert_eq!(origins(&objects), [fx.uri("days/a.json"), fx.uri("days/b.json"), fx.uri("days/sub/c.json")]);
    assert_eq!(read_all(objects[1].as_ref()), b"days/b.json");
    let whole = fx.resolve(&format!("s3://{}", fx.bucket)).expect("the whole bucket");
    assert_eq!(whole.len(), 4, "{:?}", origins(&whole));
}

#[test]
fn a_pattern_is_the_matching_keys_in_key_order() {
    let Some(fx) = Fixture::new() else { return };
    for key in [
        "tlc/yellow_2016-03.csv.gz",
        "tlc/yellow_2016-01.csv.gz",
        "tlc/yellow_2016-04.csv.gz",
        "tlc/yellow_2016-02.parquet",
        "tlc/old/yellow_2016-01.csv.gz",
    ] {
        fx.put(key, key.as_bytes());
    }
    let months = fx.resolve(&fx.uri("tlc/yellow_2016-0[1-3]*.csv.gz")).expect("resolve");
    assert_eq!(origins(&months), [fx.uri("tlc/yellow_2016-01.csv.gz"), fx.uri("tlc/yellow_2016-03.csv.gz")]);
    let parquet = fx.resolve(&fx.uri("tlc/*.parquet")).expect("resolve");
    assert_eq!(origins(&parquet), [fx.uri("tlc/yellow_2016-02.parquet")]);
    let nested = fx.resolve(&fx.uri("tlc/*/yellow_2016-0?.csv.gz")).expect("resolve");
    assert_eq!(origins(&nested), [fx.uri("tlc/old/yellow_2016-01.csv.gz")]);
}

#[test]
fn nothing_found_is_an_error_naming_the_uri() {
    let Some(fx) = Fixture::new() else { return };
    fx.put("tlc/yellow.csv", "x");
    for selection in ["none/", "tlc/*.parquet"] {
        let uri = fx.uri(selection);
        let error = fx.resolve(&uri).expect_err(&uri);
        assert!(matches!(error, S3InputError::NoMatch { .. }), "{uri}: {error:?}");
        assert!(error.to_string().contains(&uri) && error.to_string().contains("aws s3 ls"), "{error}");
    }
    let missing = fx.uri("tlc");
    let error = fx.resolve(&missing).expect_err("a key that is only a prefix");
    assert!(matches!(error, S3InputError::NoSuchObject { .. }), "{error:?}");
    assert!(error.to_string().contains(&missing) && error.to_string().contains("end the URI with '/'"), "{error}");
}

#[test]
fn a_missing_bucket_is_named() {
    let Some(fx) = Fixture::new() else { return };
    let bucket = format!("{}-absent", fx.bucket);
    for uri in [format!("s3://{bucket}/key.json"), format!("s3://{bucket}/prefix/"), format!("s3://{bucket}/*.csv")] {
        let error = fx.resolve(&uri).expect_err(&uri);
        assert!(matches!(&error, S3InputError::NoSuchBucket { bucket: b, .. } if *b == bucket), "{uri}: {error:?}");
        assert!(error.to_string().contains("--s3-endpoint-url"), "{error}");
    }
}

#[test]
fn ranges_are_read_by_ranged_gets() {
    let Some(fx) = Fixture::new() else { return };
    let bytes = numbered_bytes(100_000);
    fx.put("trips.parquet", bytes.clone());
    let objects = fx.resolve(&fx.uri("trips.parquet")).expect("resolve");
    let ranges = objects[0].random_access().expect("ranges");
    assert_eq!(ranges.len(), 100_000);
    assert_eq!(ranges.read_at(0, 4).expect("head"), &bytes[..4]);
    assert_eq!(ranges.read_at(54_321, 1000).expect("middle"), &bytes[54_321..55_321]);
    assert_eq!(ranges.read_at(99_990, 100).expect("past the end"), &bytes[99_990..], "short at the end");
    assert_eq!(ranges.read_at(100_000, 10).expect("at the end"), b"");
    assert_eq!(ranges.read_at(5, 0).expect("nothing"), b"");
}

#[test]
fn a_gzip_object_streams_into_the_same_records_as_the_local_file() {
    let Some(fx) = Fixture::new() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let local = taxi_testkit::input::generated_input(dir.path(), 3000, 7);
    let plain = std::fs::read(&local).expect("read the generated file");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &plain).expect("compress");
    fx.put("trips.json.gz", gz.finish().expect("compress"));

    let objects = fx.resolve(&fx.uri("trips.json.gz")).expect("resolve");
    let stream = objects[0].stream().expect("stream");
    let mut reader = ChunkReader::from_reader(stream).expect("detect the format through gzip");
    let mut records = 0u64;
    while let Some(chunk) = reader.next_chunk(64 * 1024).expect("chunk") {
        records += chunk.lines().count() as u64;
    }
    assert_eq!(records, taxi_testkit::input::count_records(&local));
    assert_eq!(records, 3000);
}

#[test]
fn a_broken_body_is_resumed_from_the_byte_reached() {
    let Some(fx) = Fixture::new() else { return };
    let bytes = numbered_bytes(600_000);
    fx.put("big.json", bytes.clone());
    let objects = fx.resolve(&fx.uri("big.json")).expect("resolve");
    // Through the proxy, answers break off after 50 kB (headers included): the HEAD is shorter,
    // the first GET and the two resumes after it are cut.
    let (proxy, cuts, task) = fx.runtime.block_on(answer_cutting(&fx.endpoint, 50_000, 4));
    let through_proxy = fx.runtime.block_on(fx.resolver(&proxy, quick_retry()).resolve(&fx.uri("big.json")));
    let cut = &through_proxy.expect("resolve through the proxy")[0];
    assert_eq!(read_all(cut.as_ref()), bytes, "resumed reads fit together");
    assert_eq!(cuts.load(std::sync::atomic::Ordering::SeqCst), 3, "three bodies broke off");
    assert_eq!(read_all(objects[0].as_ref()), bytes, "a direct read agrees");
    task.abort();
}

#[test]
fn a_read_that_keeps_failing_gives_up_with_a_clear_error() {
    let Some(fx) = Fixture::new() else { return };
    fx.put("day.json", numbered_bytes(10_000));
    let mut proxy = fx.runtime.block_on(Proxy::start(&fx.endpoint));
    let objects =
        fx.runtime.block_on(fx.resolver(&proxy.url(), quick_retry()).resolve(&fx.uri("day.json"))).expect("resolve");
    // S3 goes away after the listing: every attempt to read fails, and the reads give up.
    fx.runtime.block_on(proxy.down());
    let Err(error) = objects[0].stream() else { panic!("read an object from a stopped server") };
    let text = error.to_string();
    assert!(text.contains(&fx.uri("day.json")) && text.contains("at byte 0 of 10000"), "{text}");
    assert!(text.contains("gave up after 4 attempts") && text.contains("check the connection"), "{text}");
    let ranges = objects[0].random_access().expect("ranges");
    let text = ranges.read_at(100, 10).expect_err("a range from a stopped server").to_string();
    assert!(text.contains("at byte 100 of 10000") && text.contains("gave up after 4 attempts"), "{text}");
}

#[test]
fn an_object_replaced_while_read_is_refused() {
    let Some(fx) = Fixture::new() else { return };
    fx.put("day.json", "first version\n");
    let objects = fx.resolve(&fx.uri("day.json")).expect("resolve");
    fx.put("day.json", "second version, longer\n");
    let Err(error) = objects[0].stream() else { panic!("a replaced object was read") };
    let text = error.to_string();
    assert!(text.contains("changed while it was being read"), "{text}");
    let ranges = objects[0].random_access().expect("ranges");
    assert!(ranges.read_at(0, 5).expect_err("the version changed").to_string().contains("changed"));
}

#[test]
fn objects_are_read_from_async_code_of_a_multi_thread_runtime_too() {
    let Some(fx) = Fixture::new() else { return };
    fx.put("day.json", numbered_bytes(70_000));
    let objects = fx.resolve(&fx.uri("day.json")).expect("resolve");
    // As `local` opens its input: inside the runtime's block_on, and inside one of its tasks.
    let in_block_on = fx.runtime.block_on(async { read_all(objects[0].as_ref()) });
    let object = objects[0].clone();
    let in_task = fx.runtime.block_on(fx.runtime.spawn(async move { read_all(object.as_ref()) })).expect("task");
    assert_eq!(in_block_on, numbered_bytes(70_000));
    assert_eq!(in_task, numbered_bytes(70_000));
}

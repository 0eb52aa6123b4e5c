//! The checkpoint store against moto's S3 (`TAXI_TEST_S3_ENDPOINT`, started by `.ci/services.sh`)
//! and a temporary directory: both kinds must fence writers alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use taxi_io::store::{CheckpointStore, S3Settings, S3Store};
use taxi_io::store::{DirStore, ETag, Precondition, StoreError};
use taxi_testkit::proxy::answer_dropping;
use taxi_testkit::s3::{client, emulator as s3_endpoint, fresh_bucket, read_object};

/// Static credentials and a fixed region: the default chain could otherwise reach for instance metadata.
fn sdk_config() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(Credentials::new(
            "test", "test", None, None, "static",
        )))
        .build()
}

fn settings(endpoint: &str) -> S3Settings {
    S3Settings { endpoint_url: Some(endpoint.to_owned()), force_path_style: true, region: None }
}

/// A store on a fresh bucket of its own.
async fn s3_store(endpoint: &str, retain: usize) -> CheckpointStore {
    let bucket = fresh_bucket(&client(endpoint), "taxi-test").await;
    let store = S3Store::new(&sdk_config(), &settings(endpoint), bucket, "pipelines/p1").expect("store");
    CheckpointStore::S3 { store, retain }
}

fn dir_store(dir: &tempfile::TempDir, retain: usize) -> CheckpointStore {
    CheckpointStore::Dir { store: DirStore::new(dir.path().join("checkpoints")), retain }
}

fn is_conflict(result: &Result<ETag, StoreError>) -> bool {
    matches!(result, Err(StoreError::Conflict { key }) if key == "p1/shard-1")
}

/// The conditional-put contract, the same for every kind of store.
async fn conditional_puts(store: &CheckpointStore) {
    let key = "p1/shard-1";
    assert!(store.get(key).await.expect("get absent").is_none(), "{}", store.kind());
    let first = store.put(key, b"one", &Precondition::Absent).await.expect("create");
    assert!(is_conflict(&store.put(key, b"again", &Precondition::Absent).await), "second create is fenced");
    let (bytes, tag) = store.get(key).await.expect("get").expect("present");
    assert_eq!((bytes.as_slice(), &tag), (&b"one"[..], &first), "get returns what put wrote");
    let second = store.put(key, b"two", &Precondition::Matches(tag)).await.expect("update with the read tag");
    assert_ne!(second, first);
    // A zombie still holding the first tag is fenced, and the object is untouched.
    assert!(is_conflict(&store.put(key, b"zombie", &Precondition::Matches(first.clone())).await));
    let (bytes, tag) = store.get(key).await.expect("get").expect("present");
    assert_eq!((bytes.as_slice(), &tag), (&b"two"[..], &second));
    // If-Match on a missing object is a conflict too (the shard's checkpoint was removed).
    assert!(matches!(
        store.put("p1/shard-9", b"x", &Precondition::Matches(first)).await,
        Err(StoreError::Conflict { .. })
    ));
    let third = store.put(key, b"three", &Precondition::None).await.expect("unconditional put");
    assert_eq!(store.get(key).await.expect("get").expect("present").1, third);
}

/// Keeps exactly `retain` history copies, the newest ones.
async fn retention(store: &CheckpointStore) {
    let key = "p1/shard-2";
    let mut tag = store.put(key, b"v0", &Precondition::Absent).await.expect("create");
    for i in 1..6 {
        tag = store.put(key, format!("v{i}").as_bytes(), &Precondition::Matches(tag)).await.expect("update");
    }
    let stamps = store.history(key).await.expect("history");
    assert_eq!(stamps.len(), store.retain(), "{}: {stamps:?}", store.kind());
    // The copies are the newest versions, oldest first; the last one is the current checkpoint.
    let mut copies = Vec::new();
    for stamp in &stamps {
        copies.push(read_history(store, &format!("history/{key}/{stamp}")).await);
    }
    assert_eq!(copies, [&b"v3"[..], b"v4", b"v5"], "{}", store.kind());
    assert!(matches!(store.get(&format!("history/{key}")).await, Err(StoreError::BadKey(_))), "reserved");
}

/// A history copy's bytes, read beside the store's interface (history keys are reserved in it).
async fn read_history(store: &CheckpointStore, relative: &str) -> Vec<u8> {
    match store {
        CheckpointStore::Dir { store, .. } => std::fs::read(store.root().join(relative)).expect("read copy"),
        CheckpointStore::S3 { store, .. } => {
            let key = format!("{}/{relative}", store.prefix());
            read_object(store.client(), store.bucket(), &key).await.expect("get copy").to_vec()
        }
    }
}

async fn deletes_prefixes(store: &CheckpointStore) {
    for key in ["p1/shard-a", "p1/shard-b", "p10/shard-a"] {
        store.put(key, b"x", &Precondition::Absent).await.expect("create");
    }
    store.delete_prefix("p1").await.expect("delete prefix");
    assert!(store.get("p1/shard-a").await.expect("get").is_none());
    assert!(store.get("p1/shard-b").await.expect("get").is_none());
    assert!(store.history("p1/shard-a").await.expect("history").is_empty(), "history goes too");
    assert!(store.get("p10/shard-a").await.expect("get").is_some(), "a sibling prefix is kept");
    store.delete_prefix("nothing/here").await.expect("deleting nothing is fine");
}

async fn all_cases(store: &CheckpointStore) {
    conditional_puts(store).await;
    retention(store).await;
    deletes_prefixes(store).await;
}

#[tokio::test]
async fn s3_store_fences_writers_keeps_history_and_deletes() {
    let Some(endpoint) = s3_endpoint() else { return };
    let store = s3_store(&endpoint, 3).await;
    assert_eq!(store.kind(), "s3");
    all_cases(&store).await;
}

#[tokio::test]
async fn dir_store_behaves_like_s3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir_store(&dir, 3);
    assert_eq!(store.kind(), "file");
    all_cases(&store).await;
    let opened = CheckpointStore::from_uri(&format!("file://{}", dir.path().display()), &S3Settings::default(), 2)
        .await
        .expect("from_uri");
    assert_eq!((opened.kind(), opened.retain()), ("file", 2));
}

#[tokio::test]
async fn retention_zero_keeps_no_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut stores = vec![dir_store(&dir, 0)];
    if let Some(endpoint) = s3_endpoint() {
        stores.push(s3_store(&endpoint, 0).await);
    }
    for store in &stores {
        let tag = store.put("p1/shard-1", b"a", &Precondition::Absent).await.expect("create");
        store.put("p1/shard-1", b"b", &Precondition::Matches(tag)).await.expect("update");
        assert!(store.history("p1/shard-1").await.expect("history").is_empty(), "{}", store.kind());
    }
}

/// Eight writers race with the same tag: exactly one wins, the others see a conflict.
async fn one_of_many_wins(store: Arc<CheckpointStore>) {
    let key = "p1/shard-1";
    let tag = store.put(key, b"start", &Precondition::Absent).await.expect("create");
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let (store, tag) = (store.clone(), tag.clone());
            tokio::spawn(
                async move { store.put(key, format!("writer {i}").as_bytes(), &Precondition::Matches(tag)).await },
            )
        })
        .collect();
    let mut winners = Vec::new();
    for (i, writer) in writers.into_iter().enumerate() {
        match writer.await.expect("join") {
            Ok(tag) => winners.push((i, tag)),
            Err(StoreError::Conflict { .. }) => {}
            Err(other) => panic!("writer {i}: unexpected error: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "{}: winners {winners:?}", store.kind());
    let (i, tag) = &winners[0];
    let (bytes, current) = store.get(key).await.expect("get").expect("present");
    assert_eq!((bytes, &current), (format!("writer {i}").into_bytes(), tag));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_with_the_same_tag_one_wins_on_s3() {
    let Some(endpoint) = s3_endpoint() else { return };
    one_of_many_wins(Arc::new(s3_store(&endpoint, 3).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_with_the_same_tag_one_wins_in_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    one_of_many_wins(Arc::new(dir_store(&dir, 3))).await;
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_quickly_with_a_retryable_error() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let store = CheckpointStore::S3 {
        store: S3Store::new(&sdk_config(), &settings(&endpoint), "taxi-down", "p").expect("store"),
        retain: 3,
    };
    let started = Instant::now();
    let error = store.put("p1/shard-1", b"x", &Precondition::Absent).await.expect_err("nobody listens");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let text = error.to_string();
    assert!(matches!(error, StoreError::S3 { retryable: true, .. }), "{error:?}");
    assert!(
        text.starts_with("failed to write checkpoint s3://taxi-down/p/p1/shard-1: could not reach S3")
            && text.contains("gave up after 4 attempts")
            && text.contains("transient"),
        "{text}"
    );
    eprintln!("{text}");
    let error = store.get("p1/shard-1").await.expect_err("nobody listens");
    assert!(matches!(error, StoreError::S3 { retryable: true, .. }), "{error:?}");
}

#[tokio::test]
async fn a_write_applied_but_unanswered_is_not_taken_for_a_conflict_on_retry() {
    let Some(endpoint) = s3_endpoint() else { return };
    let bucket = fresh_bucket(&client(&endpoint), "taxi-test").await;
    // The first PUT reaches moto and is applied; its answer is lost, so the client retries, and
    // the retry's If-None-Match: * fails with 412 against its own write.
    let (proxy, _task) = answer_dropping(&endpoint, 1).await;
    let store = CheckpointStore::S3 {
        store: S3Store::new(&sdk_config(), &settings(&proxy), bucket, "pipelines/p1").expect("store"),
        retain: 0,
    };
    let tag = store.put("p1/shard-1", b"mine", &Precondition::Absent).await.expect("the write succeeded");
    let (bytes, stored) = store.get("p1/shard-1").await.expect("get").expect("present");
    assert_eq!((bytes.as_slice(), stored), (&b"mine"[..], tag));
    // A real conflict is still one: another writer's bytes are there.
    assert!(is_conflict(&store.put("p1/shard-1", b"theirs", &Precondition::Absent).await));
}

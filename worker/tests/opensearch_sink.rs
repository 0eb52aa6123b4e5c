//! The OpenSearch sink against osmem-server (`TAXI_TEST_OPENSEARCH_ENDPOINT`, started by
//! `.ci/services.sh`), a TCP proxy that can be stopped (the cluster "down"), and a scripted fake
//! OpenSearch (per-item errors, refusals, SigV4 capture).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opensearch::http::Method;
use serde_json::{Value, json};
use taxi_core::config::EngineConfig;
use taxi_core::document::{AnalysisKind, PartialDocument, documents_for, merge_documents};
use taxi_core::event::{Event, GeoPoint, Trip};
use taxi_core::shard::ShardProcessor;
use taxi_io::sink::opensearch::{
    BulkSettings, OpenSearchAuth, OpenSearchSettings, OpenSearchSink, SigV4Service, index_name, merged_results,
    query_partials,
};
use taxi_testkit::documents::{hot_spot, hot_spots};
use taxi_testkit::opensearch::{FakeOpenSearch, Request, bulk_ids, count, emulator, fresh_index_prefix, raw};
use taxi_testkit::proxy::Proxy;
use tokio::net::TcpListener;

// ---- Helpers -------------------------------------------------------------------------------------

/// Settings tuned for tests: short delays and back-offs.
fn settings(url: &str, prefix: &str) -> OpenSearchSettings {
    OpenSearchSettings {
        url: url.to_owned(),
        index_prefix: prefix.to_owned(),
        bulk: BulkSettings {
            max_docs: 50,
            max_delay: Duration::from_millis(20),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(250),
            ..BulkSettings::default()
        },
        request_timeout: Duration::from_secs(5),
        startup_timeout: Duration::from_secs(10),
        ..OpenSearchSettings::default()
    }
}

fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v)))
        // A metric is either a counter or a gauge: the other reads 0.
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

// ---- With osmem --------------------------------------------------------------------------------

#[tokio::test]
async fn written_documents_are_searchable_and_rewrites_overwrite() {
    let Some(url) = emulator() else { return };
    let prefix = fresh_index_prefix();
    let s = settings(&url, &prefix);
    let registry = prometheus::Registry::new();
    let sink = OpenSearchSink::connect(s.clone(), &registry, None).await.expect("connect");

    let docs = hot_spots("p1", 120, 3);
    sink.write(docs.clone()).await.expect("write");
    let report = sink.flush().await.expect("flush");
    assert_eq!((report.acknowledged, report.rejected), (120, 0));
    let hot_index = index_name(&prefix, AnalysisKind::HotSpot);
    assert_eq!(count(&url, &hot_index).await, 120);
    let mut read = query_partials(&s, "p1").await.expect("query");
    read.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected = docs.clone();
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(read, expected, "documents round-trip");
    let (_, one) = raw(&url, Method::Get, &format!("/{hot_index}/_doc/{}", urlencode(&docs[0].id)), None).await;
    assert_eq!(one["_source"]["id"], docs[0].id.as_str(), "_id is the document id: {one}");

    // Same ids, new values: overwritten, not added.
    sink.write(hot_spots("p1", 120, 7)).await.expect("rewrite");
    sink.flush().await.expect("flush");
    assert_eq!(count(&url, &hot_index).await, 120);
    let read = query_partials(&s, "p1").await.expect("query");
    assert_eq!(read.len(), 120);
    assert!(read.iter().all(|d| d.pickup_count == Some(7)), "values updated");

    // Older versions (a zombie's late write) are acknowledged, and change nothing.
    sink.write(hot_spots("p1", 120, 5)).await.expect("late write");
    let report = sink.flush().await.expect("flush");
    assert_eq!((report.acknowledged, report.rejected), (120, 0), "an older version is no error");
    let read = query_partials(&s, "p1").await.expect("query");
    assert!(read.iter().all(|d| d.pickup_count == Some(7)), "an older version never replaces a newer one");
    assert!(query_partials(&s, "other-pipeline").await.expect("query").is_empty());
    assert!(metric(&registry, "taxi_sink_documents_acknowledged_total", &[]) >= 240.0);
    assert_eq!(metric(&registry, "taxi_sink_buffered_documents", &[]), 0.0);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn merged_results_over_three_shards_equal_merge_documents() {
    let Some(url) = emulator() else { return };
    let prefix = fresh_index_prefix();
    let s = settings(&url, &prefix);
    let sink = OpenSearchSink::connect(s.clone(), &prometheus::Registry::new(), None).await.expect("connect");
    let config = Arc::new(EngineConfig::default());
    let midtown = GeoPoint { lat: 40.7580, lon: -73.9855 };
    let jfk = GeoPoint { lat: 40.6413, lon: -73.7781 };
    let lga = GeoPoint { lat: 40.7740, lon: -73.8720 };
    let t0 = 1_451_606_400_000;
    let mut all = Vec::new();
    for shard in 0..3u64 {
        let mut processor = ShardProcessor::new(config.clone());
        for i in 0..40u64 {
            let dropoff = t0 + (i % 4) as i64 * 600_000 + shard as i64 * 1000 + i as i64;
            let to = [jfk, lga, midtown][(i % 3) as usize];
            let trip = Trip {
                trip_id: shard * 1000 + i,
                pickup_time: dropoff - 1_200_000 - i as i64 * 7_001,
                dropoff_time: dropoff,
                pickup: midtown,
                dropoff: to,
            };
            processor.process(&Event::Trip(trip), None);
        }
        let docs =
            documents_for("nyc", &format!("shardId-00000000000{shard}"), &config, &processor.take_all(), true, 1);
        sink.write(docs.clone()).await.expect("write");
        all.extend(docs);
    }
    sink.flush().await.expect("flush");
    let expected = merge_documents(&config, all.clone());
    assert!(expected.len() >= 8, "{expected:?}");
    let merged = merged_results(&s, "nyc", &config).await.expect("merged");
    assert_eq!(merged, expected);
}

#[tokio::test]
async fn templates_map_location_as_geo_point_and_counts_as_long() {
    let Some(url) = emulator() else { return };
    let prefix = fresh_index_prefix();
    let _sink =
        OpenSearchSink::connect(settings(&url, &prefix), &prometheus::Registry::new(), None).await.expect("connect");
    let (status, template) = raw(&url, Method::Get, &format!("/_index_template/{prefix}-partials"), None).await;
    assert_eq!(status, 200, "{template}");
    for (analysis, count_field) in [(AnalysisKind::HotSpot, "pickup_count"), (AnalysisKind::AirportTrip, "trip_count")]
    {
        let index = index_name(&prefix, analysis);
        let (status, mapping) = raw(&url, Method::Get, &format!("/{index}/_mapping"), None).await;
        assert_eq!(status, 200, "{mapping}");
        let props = &mapping[&index]["mappings"]["properties"];
        assert_eq!(props["location"]["type"], "geo_point", "{mapping}");
        assert_eq!(props[count_field]["type"], "long", "{mapping}");
        assert_eq!(props["window_start"]["type"], "date", "{mapping}");
        assert_eq!(props["sum_duration_min"]["type"], "double", "{mapping}");
        assert_eq!(props["final"]["type"], "boolean", "{mapping}");
        assert_eq!(props["shard"]["type"], "keyword", "{mapping}");
    }
}

#[tokio::test]
async fn a_document_refused_by_the_mapping_is_counted_and_does_not_block_the_others() {
    let Some(url) = emulator() else { return };
    let prefix = fresh_index_prefix();
    // A conflicting explicit mapping first: `shard` is a long, so "shardId-…" cannot be indexed.
    let hot_index = index_name(&prefix, AnalysisKind::HotSpot);
    let (status, body) = raw(
        &url,
        Method::Put,
        &format!("/{hot_index}"),
        Some(json!({ "mappings": { "properties": { "shard": { "type": "long" }, "id": { "type": "keyword" } } } })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let registry = prometheus::Registry::new();
    let sink = OpenSearchSink::connect(settings(&url, &prefix), &registry, None).await.expect("connect");
    let mut docs: Vec<PartialDocument> =
        (0..30).map(|i| hot_spot("p", &i.to_string(), 1_451_606_400, "dr5ru7", 2)).collect();
    docs.insert(10, hot_spot("p", "shardId-000000000001", 1_451_606_400, "dr5ru7", 2));
    sink.write(docs).await.expect("write");
    let report =
        tokio::time::timeout(Duration::from_secs(20), sink.flush()).await.expect("flush not blocked").expect("flush");
    assert_eq!((report.acknowledged, report.rejected), (30, 1));
    assert_eq!(count(&url, &hot_index).await, 30, "the other documents are all searchable");
    let dropped = [("reason", "mapper_parsing_exception"), ("action", "dropped")];
    assert_eq!(metric(&registry, "taxi_sink_item_errors_total", &dropped), 1.0);
}

#[tokio::test]
async fn documents_survive_opensearch_being_down_for_a_while() {
    let Some(url) = emulator() else { return };
    let prefix = fresh_index_prefix();
    let mut proxy = Proxy::start(&url).await;
    let registry = prometheus::Registry::new();
    let sink = OpenSearchSink::connect(settings(&proxy.url(), &prefix), &registry, None).await.expect("connect");
    proxy.down().await;

    let docs = hot_spots("down", 300, 4);
    tokio::time::timeout(Duration::from_secs(5), sink.write(docs))
        .await
        .expect("write returns while room")
        .expect("write");
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), sink.flush()).await.is_err(),
        "flush must wait while OpenSearch is down"
    );
    assert_eq!(sink.buffered(), 300);
    assert!(metric(&registry, "taxi_sink_bulk_request_errors_total", &[("category", "connection")]) >= 1.0);

    proxy.up();
    let report = tokio::time::timeout(Duration::from_secs(30), sink.flush())
        .await
        .expect("flush after recovery")
        .expect("flush");
    assert_eq!(report.rejected, 0);
    assert_eq!(count(&url, &index_name(&prefix, AnalysisKind::HotSpot)).await, 300, "nothing lost");
    assert!(metric(&registry, "taxi_sink_retries_total", &[("scope", "request")]) >= 1.0);
}

#[tokio::test]
async fn write_blocks_when_the_buffer_is_full_and_resumes_when_opensearch_returns() {
    let Some(url) = emulator() else { return };
    let prefix = fresh_index_prefix();
    let mut proxy = Proxy::start(&url).await;
    let registry = prometheus::Registry::new();
    let mut s = settings(&proxy.url(), &prefix);
    s.bulk.max_buffered_docs = 10;
    s.bulk.max_docs = 4;
    let sink = OpenSearchSink::connect(s, &registry, None).await.expect("connect");
    proxy.down().await;

    let docs = hot_spots("bp", 16, 1);
    sink.write(docs[..10].to_vec()).await.expect("fits the buffer");
    let blocked = tokio::spawn({
        let sink = sink.clone();
        let rest = docs[10..].to_vec();
        async move { sink.write(rest).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!blocked.is_finished(), "write must wait while the buffer is full");
    assert_eq!(sink.buffered(), 10);

    proxy.up();
    tokio::time::timeout(Duration::from_secs(30), blocked).await.expect("write resumes").expect("join").expect("write");
    tokio::time::timeout(Duration::from_secs(30), sink.flush()).await.expect("flush").expect("flush");
    assert_eq!(count(&url, &index_name(&prefix, AnalysisKind::HotSpot)).await, 16);
    assert!(metric(&registry, "taxi_sink_backpressure_wait_seconds_total", &[]) >= 0.5);
    assert_eq!(metric(&registry, "taxi_sink_backpressure_waits_total", &[]), 1.0);
}

// ---- With fake servers (no osmem needed) -------------------------------------------------------

#[tokio::test]
async fn item_errors_are_retried_or_dropped_by_kind() {
    // Ids containing "bad" are refused (400 mapper_parsing_exception); the first attempt of ids
    // containing "busy" is answered 429 es_rejected_execution_exception.
    let seen_busy = Arc::new(Mutex::new(0u32));
    let stored: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
    let handler = {
        let (seen_busy, stored) = (seen_busy.clone(), stored.clone());
        move |r: &Request| {
            if r.target != "/_bulk" {
                return (200, json!({ "acknowledged": true }));
            }
            let text = String::from_utf8_lossy(&r.body).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            let mut items = Vec::new();
            for pair in lines.chunks(2) {
                let id = serde_json::from_str::<Value>(pair[0]).expect("action")["index"]["_id"]
                    .as_str()
                    .expect("id")
                    .to_owned();
                let item = if id.contains("bad") {
                    json!({ "index": { "_id": id, "status": 400, "error": { "type": "mapper_parsing_exception", "reason": "failed to parse field [pickup_count]" } } })
                } else if id.contains("busy") && {
                    let mut n = seen_busy.lock().expect("lock");
                    *n += 1;
                    *n == 1
                } {
                    json!({ "index": { "_id": id, "status": 429, "error": { "type": "es_rejected_execution_exception", "reason": "queue full" } } })
                } else {
                    stored.lock().expect("lock").insert(id.clone(), serde_json::from_str(pair[1]).expect("source"));
                    json!({ "index": { "_id": id, "status": 201, "result": "created" } })
                };
                items.push(item);
            }
            (200, json!({ "errors": true, "took": 1, "items": items }))
        }
    };
    let server = FakeOpenSearch::start(handler).await;
    let registry = prometheus::Registry::new();
    let sink =
        OpenSearchSink::connect(settings(server.url(), &fresh_index_prefix()), &registry, None).await.expect("connect");
    let mut docs = hot_spots("ok", 8, 1);
    docs.insert(3, hot_spot("bad", "s", 1_451_606_400, "dr5ru7", 1));
    docs.insert(5, hot_spot("busy", "s", 1_451_606_400, "dr5ru7", 1));
    sink.write(docs).await.expect("write");
    let report = tokio::time::timeout(Duration::from_secs(10), sink.flush()).await.expect("flush").expect("flush");
    assert_eq!((report.acknowledged, report.rejected), (9, 1));
    assert_eq!(stored.lock().expect("lock").len(), 9);
    assert_eq!(*seen_busy.lock().expect("lock"), 2, "the throttled item was sent again");
    let bulks: Vec<Vec<String>> =
        server.requests().iter().filter(|r| r.target == "/_bulk").map(|r| bulk_ids(&r.body)).collect();
    assert_eq!(
        bulks.last().expect("a retry request"),
        &vec!["busy/hot_spot/1451606400/dr5ru7/s".to_owned()],
        "only the throttled item is retried: {bulks:?}"
    );
    let m = |labels: &[(&str, &str)]| metric(&registry, "taxi_sink_item_errors_total", labels);
    assert_eq!(m(&[("reason", "mapper_parsing_exception"), ("action", "dropped")]), 1.0);
    assert_eq!(m(&[("reason", "es_rejected_execution_exception"), ("action", "retried")]), 1.0);
    assert_eq!(metric(&registry, "taxi_sink_retries_total", &[("scope", "item")]), 1.0);
}

#[tokio::test]
async fn a_refused_bulk_and_a_lone_oversized_document_are_dead_lettered_before_the_flush_returns() {
    // Bodies holding an id with "reject" are answered 400 as a whole; a body holding an id with
    // "huge" is answered 413 (so alone, after the batch is halved, it is refused for good).
    let handler = |r: &Request| {
        if r.target != "/_bulk" {
            return (200, json!({ "acknowledged": true }));
        }
        let ids = bulk_ids(&r.body);
        if ids.iter().any(|id| id.contains("reject")) {
            return (400, json!({ "error": { "type": "illegal_argument_exception", "reason": "malformed action" } }));
        }
        if ids.iter().any(|id| id.contains("huge")) {
            return (413, json!({ "error": { "type": "request_too_large", "reason": "too large" } }));
        }
        let items: Vec<Value> = ids.iter().map(|id| json!({ "index": { "_id": id, "status": 201 } })).collect();
        (200, json!({ "errors": false, "took": 1, "items": items }))
    };
    let server = FakeOpenSearch::start(handler).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = taxi_io::store::CheckpointStore::from_uri(
        &dir.path().display().to_string(),
        &taxi_io::store::S3Settings::default(),
        0,
    )
    .await
    .expect("store");
    let registry = prometheus::Registry::new();
    let gauge = prometheus::IntGauge::new("taxi_sink_dead_letters", "dead letters").expect("gauge");
    let letters = taxi_io::sink::dead_letter::DeadLetterStore::new(store, "p", gauge.clone());
    let sink = OpenSearchSink::connect(settings(server.url(), &fresh_index_prefix()), &registry, Some(letters.clone()))
        .await
        .expect("connect");

    sink.write(vec![hot_spot("reject", "s", 1_451_606_400, "dr5ru7", 1)]).await.expect("write");
    sink.flush().await.expect("flush");
    sink.write(hot_spots("ok", 3, 1).into_iter().chain([hot_spot("huge", "s", 1_451_606_400, "dr5ru7", 1)]).collect())
        .await
        .expect("write");
    let report = tokio::time::timeout(Duration::from_secs(10), sink.flush()).await.expect("flush").expect("flush");
    assert_eq!((report.acknowledged, report.rejected), (3, 1));

    // Both refusals were durable when their flushes returned.
    let mut stored = Vec::new();
    for key in letters.list().await.expect("list") {
        stored.extend(letters.read(&key).await.expect("read"));
    }
    stored.sort_by_key(|l| l.status);
    let summary: Vec<(u16, &str, &str)> =
        stored.iter().map(|l| (l.status, l.error_type.as_str(), l.document.pipeline.as_str())).collect();
    assert_eq!(summary, [(400, "illegal_argument_exception", "reject"), (413, "request_too_large", "huge")]);
    assert_eq!(gauge.get(), 2);
    let m =
        |reason| metric(&registry, "taxi_sink_item_errors_total", &[("reason", reason), ("action", "dead_lettered")]);
    assert_eq!((m("bad_request"), m("request_too_large")), (1.0, 1.0));
}

#[tokio::test]
async fn connect_gives_up_with_a_clear_error_when_the_cluster_stays_unreachable() {
    let port = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
    let mut s = settings(&format!("http://127.0.0.1:{port}"), &fresh_index_prefix());
    s.startup_timeout = Duration::from_millis(600);
    let err = OpenSearchSink::connect(s, &prometheus::Registry::new(), None).await.expect_err("nothing listens");
    assert_eq!(err.category(), "unavailable");
    assert!(err.to_string().contains("still unreachable"), "{err}");
}

/// Runs [`sigv4_child`] in a child process, with AWS credentials in its environment only (this
/// crate forbids `unsafe`, so the test cannot set variables in its own process).
#[test]
fn sigv4_requests_carry_a_valid_signature() {
    let exe = std::env::current_exe().expect("test binary");
    let output = std::process::Command::new(exe)
        .args(["--exact", "sigv4_child", "--nocapture", "--test-threads=1"])
        .env("TAXI_SIGV4_CHILD", "1")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .output()
        .expect("run the child");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the child test ran: {text}");
}

#[tokio::test]
async fn sigv4_child() {
    if std::env::var("TAXI_SIGV4_CHILD").is_err() {
        return; // only meaningful inside sigv4_requests_carry_a_valid_signature
    }
    let server = FakeOpenSearch::start(|r: &Request| {
        if r.target == "/_bulk" {
            let items: Vec<Value> =
                bulk_ids(&r.body).iter().map(|id| json!({ "index": { "_id": id, "status": 201 } })).collect();
            (200, json!({ "errors": false, "items": items }))
        } else {
            (200, json!({ "acknowledged": true }))
        }
    })
    .await;
    let mut s = settings(server.url(), &fresh_index_prefix());
    s.auth = OpenSearchAuth::SigV4 { service: SigV4Service::Es, region: None };
    let sink = OpenSearchSink::connect(s, &prometheus::Registry::new(), None).await.expect("connect");
    sink.write(hot_spots("sig", 2, 1)).await.expect("write");
    assert_eq!(sink.flush().await.expect("flush").acknowledged, 2);

    let requests = server.requests();
    assert!(requests.iter().any(|r| r.target == "/_bulk"), "{requests:?}");
    for r in &requests {
        let auth = r.header("authorization").unwrap_or_else(|| panic!("unsigned request {r:?}"));
        let amz_date = r.header("x-amz-date").expect("x-amz-date");
        let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").unwrap_or_else(|| panic!("not SigV4: {auth}"));
        let fields: HashMap<&str, &str> = rest.split(", ").filter_map(|kv| kv.split_once('=')).collect();
        assert_eq!(fields["Credential"], format!("AKIDEXAMPLE/{}/eu-west-1/es/aws4_request", &amz_date[..8]));
        let signed: Vec<&str> = fields["SignedHeaders"].split(';').collect();
        assert!(signed.contains(&"host") && signed.contains(&"x-amz-date"), "{auth}");
        assert!(signed.contains(&"x-amz-content-sha256"), "payload hash signed (needed by aoss): {auth}");
        assert_eq!(fields["Signature"], recompute_signature(r, &signed, amz_date), "{} {}", r.method, r.target);
    }
}

/// The signature of a captured request, recomputed with `aws-sigv4` from what was received.
fn recompute_signature(r: &Request, signed: &[&str], amz_date: &str) -> String {
    use aws_sigv4::http_request::{
        PayloadChecksumKind, SignableBody, SignableRequest, SigningParams, SigningSettings, sign,
    };
    let creds = aws_credential_types::Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        None,
        None,
        "test",
    );
    let identity = creds.into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-west-1")
        .name("es")
        .time(parse_amz_date(amz_date))
        .settings(settings)
        .build()
        .expect("params");
    let headers: Vec<(&str, &str)> = signed
        .iter()
        .filter(|h| !matches!(**h, "x-amz-date" | "x-amz-content-sha256"))
        .map(|h| (*h, r.header(h).unwrap_or_else(|| panic!("signed header {h} missing"))))
        .collect();
    let uri = format!("http://{}{}", r.header("host").expect("host"), r.target);
    let request =
        SignableRequest::new(&r.method, &uri, headers.into_iter(), SignableBody::Bytes(&r.body)).expect("signable");
    let (_, signature) = sign(request, &SigningParams::V4(params)).expect("sign").into_parts();
    signature
}

/// `20240102T030405Z` as a time.
fn parse_amz_date(s: &str) -> SystemTime {
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().expect("digits");
    let (y, m, d) = (n(0, 4), n(4, 6), n(6, 8));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(9, 11) * 3600 + n(11, 13) * 60 + n(13, 15);
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).expect("after 1970"))
}

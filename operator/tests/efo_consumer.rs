//! Deregistering an enhanced fan-out consumer against kinesis-mock (a real Kinesis API, started
//! by `.ci/services.sh`), through the operator's [`SdkStreams`]: a registered consumer goes, and
//! deregistering one that is gone, or one of a stream that does not exist, is success (the
//! finalizer retries a cleanup that failed halfway, and a stream may be deleted before its
//! pipeline).

use std::time::Duration;

use taxi_io::kinesis::api::{KinesisApi, KinesisEndpoint};
use taxi_operator::observe::{SdkStreams, StreamRef, Streams};
use taxi_testkit::kinesis::{client, emulator, fresh_stream};

/// Waits until DescribeStreamConsumer no longer finds `name` (kinesis-mock deletes it after a
/// short DELETING phase, as Kinesis does), for up to 10 s.
async fn wait_gone(endpoint: &str, stream: &str, name: &str) {
    let api = client(endpoint);
    let summary = api.client().describe_stream_summary().stream_name(stream).send().await.expect("describe stream");
    let arn = summary.stream_description_summary().map(|s| s.stream_arn().to_owned()).expect("a stream ARN");
    for _ in 0..200 {
        match api.client().describe_stream_consumer().stream_arn(&arn).consumer_name(name).send().await {
            Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => return,
            Err(e) => panic!("describe consumer: {e:?}"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("consumer {name} is still there");
}

#[tokio::test]
async fn a_consumer_is_deregistered_and_deregistering_it_again_is_success() {
    let Some(endpoint) = emulator() else { return };
    let api = client(&endpoint);
    let stream = fresh_stream(&api, 1).await;
    let name = "taxi.nyc";
    api.register_consumer(&stream, name).await.expect("register");

    let defaults = KinesisEndpoint { region: Some("us-east-1".into()), endpoint_url: Some(endpoint.clone()) };
    let streams = SdkStreams::new(defaults.clone()).with_client(&defaults, client(&endpoint));
    let at = StreamRef { name: stream.clone(), region: None, endpoint_url: None };
    streams.deregister_consumer(&at, name).await.expect("deregister");
    wait_gone(&endpoint, &stream, name).await;

    streams.deregister_consumer(&at, name).await.expect("a consumer that is gone is success");
    let missing = StreamRef { name: format!("{stream}-never-created"), region: None, endpoint_url: None };
    streams.deregister_consumer(&missing, name).await.expect("a stream that does not exist is success");
}

//! Endpoints of the test services that `.ci/services.sh` starts.

/// The endpoint in `var`, or `None` (with a message) outside CI when the service is not running.
/// In CI a missing service fails the test: `.ci/test` must have started it.
pub fn service_endpoint(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "{var} is not set: CI must run the tests through .ci/test, which starts the services (.ci/services.sh)"
            )
        }
        _ => {
            eprintln!(
                "skipped: {var} is not set; start the test services with: eval \"$(bash .ci/services.sh start)\""
            );
            None
        }
    }
}

/// The endpoints of all three services.
pub struct Services {
    /// kinesis-mock.
    pub kinesis: String,
    /// moto's S3.
    pub s3: String,
    /// osmem-server's OpenSearch API.
    pub opensearch: String,
}

/// All three endpoints, or `None` when one is not running (outside CI; see [`service_endpoint`]).
pub fn services() -> Option<Services> {
    Some(Services {
        kinesis: service_endpoint("TAXI_TEST_KINESIS_ENDPOINT")?,
        s3: service_endpoint("TAXI_TEST_S3_ENDPOINT")?,
        opensearch: service_endpoint("TAXI_TEST_OPENSEARCH_ENDPOINT")?,
    })
}

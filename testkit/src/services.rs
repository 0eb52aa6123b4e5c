//! Endpoints of the test services that `.ci/services.sh` starts, read from the environment.
//!
//! Outside CI a test whose service is not running is skipped with a message saying how to start
//! it; in CI a missing service fails the test, since `.ci/test` must have started it.

/// The variable holding kinesis-mock's endpoint.
pub const KINESIS_ENDPOINT: &str = "TAXI_TEST_KINESIS_ENDPOINT";
/// The variable holding moto's S3 endpoint.
pub const S3_ENDPOINT: &str = "TAXI_TEST_S3_ENDPOINT";
/// The variable holding osmem-server's OpenSearch endpoint.
pub const OPENSEARCH_ENDPOINT: &str = "TAXI_TEST_OPENSEARCH_ENDPOINT";

/// The endpoint in `var`, or `None` (with a message) outside CI when the service is not running.
/// In CI a missing service fails the test: `.ci/test` must have started it.
pub fn service_endpoint(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "{var} is not set: CI must run the tests through .ci/test, which starts the services and finds the \
                 browser (.ci/services.sh)"
            )
        }
        _ => {
            // The browser is found or installed apart from the emulators, which need none.
            let command = if var.starts_with("TAXI_TEST_CHROMIUM") || var.starts_with("TAXI_TEST_PLAYWRIGHT") {
                "browser"
            } else {
                "start"
            };
            eprintln!("skipped: {var} is not set; set it up with: eval \"$(bash .ci/services.sh {command})\"");
            None
        }
    }
}

/// The endpoints of all three services.
#[derive(Clone, Debug)]
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
        kinesis: service_endpoint(KINESIS_ENDPOINT)?,
        s3: service_endpoint(S3_ENDPOINT)?,
        opensearch: service_endpoint(OPENSEARCH_ENDPOINT)?,
    })
}

impl Services {
    /// All three endpoints for a program rather than a test (the chaos suite): no skipping, an
    /// error names the first one missing.
    pub fn from_env() -> Result<Services, String> {
        let endpoint = |var: &str| {
            std::env::var(var)
                .map_err(|_| format!("{var} is not set: start the emulators with `bash .ci/services.sh start`"))
        };
        Ok(Services {
            kinesis: endpoint(KINESIS_ENDPOINT)?,
            s3: endpoint(S3_ENDPOINT)?,
            opensearch: endpoint(OPENSEARCH_ENDPOINT)?,
        })
    }
}

//! Raw requests to the OpenSearch emulator, for tests that set up or inspect indices directly.

use opensearch::OpenSearch;
use opensearch::http::Method;
use opensearch::http::headers::HeaderMap;
use opensearch::http::transport::Transport;
use serde_json::Value;

/// A raw request to the cluster: status and JSON body (`Null` when it is not JSON).
pub async fn raw(url: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = OpenSearch::new(Transport::single_node(url).expect("transport"));
    let response = client
        .transport()
        .send(method, path, HeaderMap::new(), None::<&()>, body.map(|b| b.to_string()), None)
        .await
        .expect("raw request");
    let status = response.status_code().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

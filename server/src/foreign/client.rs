//! The gateway's HTTP client: JSON requests to a foreign store over plain `http://`
//! (hyper-util's pooled client), each with a deadline and a size cap on the answer, so a
//! slow or hostile store can stall one gateway round but never the server.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::ForeignError;

/// Most bytes of one answer read from a foreign store.
const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// How long one request may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// A JSON-over-HTTP client shared by one gateway's requests.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Http {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Http { client: Client::builder(TokioExecutor::new()).build(connector) }
    }

    /// Sends `method url` with `body` as JSON; returns the status and the answer parsed as
    /// JSON (`Null` when it is empty or not JSON).
    pub async fn send(&self, method: Method, url: &str, body: Option<&Value>) -> Result<(u16, Value), ForeignError> {
        let uri: Uri = url.parse().map_err(|e| ForeignError::Request(format!("bad URL {url}: {e}")))?;
        let payload = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).map_err(|e| ForeignError::Request(e.to_string()))?),
            None => Bytes::new(),
        };
        let request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(payload))
            .map_err(|e| ForeignError::Request(e.to_string()))?;
        let go = async {
            let response = self.client.request(request).await.map_err(|e| ForeignError::Unreachable(format!("{method} {url}: {e}")))?;
            let status = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| ForeignError::Unreachable(format!("{method} {url}: reading the answer: {e}")))?
                .to_bytes();
            Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
        };
        match tokio::time::timeout(DEADLINE, go).await {
            Ok(r) => r,
            Err(_) => Err(ForeignError::Unreachable(format!("{method} {url}: no answer within {DEADLINE:?}"))),
        }
    }
}

/// `segment` percent-encoded for use as one path segment (document ids may hold `/`).
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

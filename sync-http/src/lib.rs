//! offsync's HTTP client: [`HttpTransport`], the `sync_core::Transport` that speaks the
//! wire protocol to an offsync server over HTTP (reqwest), and follows the server's
//! change notifications (Server-Sent Events) to trigger syncs. No server code is in
//! this crate's dependency tree.
//!
//! ```no_run
//! use std::sync::Arc;
//! use sync_http::HttpTransport;
//!
//! # fn demo() -> Result<(), sync_core::Error> {
//! let transport = Arc::new(HttpTransport::new("http://127.0.0.1:8787")?);
//! // Give it to `Engine::builder().transport(..)` with `.credentials(..)`; then
//! // `transport.follow_events(engine.change_notifier())` syncs on server changes.
//! # let _ = transport;
//! # Ok(()) }
//! # fn main() {}
//! ```

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sync_core::protocol::{ErrorBody, ErrorCode, PullRequest, PullResponse, PushRequest, PushResponse};
use sync_core::{Backoff, ChangeNotifier, Credentials, Error, Transport};
use tokio::task::JoinHandle;

/// Speaks the wire protocol to a server at a base URL.
///
/// Failures are classed for the engine: connection failures are
/// [`Error::Unreachable`]; timeouts, 5xx and 429 [`Error::Transient`]; 401
/// [`Error::Unauthorized`]; other 4xx [`Error::Rejected`]; an answer that is not the
/// protocol's shape [`Error::MalformedResponse`].
pub struct HttpTransport {
    base: String,
    http: reqwest::Client,
    /// For the events stream, which stays open: the same connect timeout, no overall
    /// timeout, and a read timeout well above the server's 15 s keep-alive, so that a
    /// connection that died silently (a phone that lost its radio) is noticed and
    /// reopened.
    events: reqwest::Client,
    token: RwLock<Option<String>>,
    /// The request coding the server said it decodes (its answers' `Accept-Encoding`).
    server_decodes: AtomicU8,
    /// Request body bytes sent, as they went on the wire.
    sent_bytes: AtomicU64,
    /// Whether to compress at all ([`HttpOptions::compression`]).
    compression: bool,
}

/// What the server decodes, in `server_decodes`.
const PLAIN: u8 = 0;
const GZIP: u8 = 1;
const ZSTD: u8 = 2;

/// The header carrying a request's id, which the server logs and echoes.
pub const REQUEST_ID: &str = "x-request-id";

/// Request bodies smaller than this go uncompressed.
const COMPRESS_ABOVE: usize = 1024;

/// How an [`HttpTransport`] connects.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The longest a push or pull request may take.
    pub timeout: Duration,
    /// PEM root certificates to trust for `https://` besides the platform's: a private
    /// CA's (each entry may hold several certificates).
    pub root_certificates_pem: Vec<Vec<u8>>,
    /// Ask for compressed answers (zstd, gzip) and compress request bodies over 1 KiB
    /// once the server has said it decodes them (default: yes).
    pub compression: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30), root_certificates_pem: Vec::new(), compression: true }
    }
}

/// How long the events stream may stay silent: four of the server's keep-alive periods.
const EVENTS_READ_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl HttpTransport {
    /// A transport for the server at `base_url` (such as `http://127.0.0.1:8787`), with
    /// a 30 s request timeout. It sends no token until it is given credentials: by the
    /// engine ([`sync_core::EngineBuilder::credentials`],
    /// [`sync_core::Engine::set_credentials`]), which checks that they belong to the
    /// store's account, or by [`Transport::set_credentials`] when used on its own.
    ///
    /// # Errors
    /// [`Error::Config`] when the HTTP client cannot be built.
    pub fn new(base_url: &str) -> Result<Self, Error> {
        Self::with_timeout(base_url, Duration::from_secs(30))
    }

    /// As [`HttpTransport::new`], with a request timeout.
    ///
    /// # Errors
    /// [`Error::Config`] when the HTTP client cannot be built.
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<Self, Error> {
        Self::with_options(base_url, HttpOptions { timeout, ..HttpOptions::default() })
    }

    /// A transport with `options`: the request timeout, and for `https://` the root
    /// certificates to trust besides the platform's (a private CA).
    ///
    /// # Errors
    /// [`Error::Config`] when a root certificate is not PEM or the client cannot be built.
    pub fn with_options(base_url: &str, options: HttpOptions) -> Result<Self, Error> {
        let mut roots = Vec::new();
        for pem in &options.root_certificates_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Config { message: format!("root certificate: {e}") })?;
            if certs.is_empty() {
                return Err(Error::Config { message: "root certificate: no certificate in the PEM text".into() });
            }
            roots.extend(certs);
        }
        let built = |b: reqwest::ClientBuilder| {
            // rustls, with the platform's roots and the built-in Mozilla set, plus the app's own.
            let b = roots
                .iter()
                .cloned()
                .fold(b.use_rustls_tls().tls_built_in_root_certs(true), |b, cert| b.add_root_certificate(cert));
            b.connect_timeout(CONNECT_TIMEOUT)
                .build()
                .map_err(|e| Error::Config { message: format!("HTTP client: {e}") })
        };
        let mut api = reqwest::Client::builder().timeout(options.timeout);
        if !options.compression {
            api = api.no_gzip().no_zstd();
        }
        let http = built(api)?;
        let events = built(reqwest::Client::builder().read_timeout(EVENTS_READ_TIMEOUT))?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
            events,
            token: RwLock::new(None),
            server_decodes: AtomicU8::new(PLAIN),
            sent_bytes: AtomicU64::new(0),
            compression: options.compression,
        })
    }

    /// Request body bytes sent so far, compressed where they were.
    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes.load(Ordering::Relaxed)
    }

    /// Notes which request codings the server decodes, from an answer's `Accept-Encoding`.
    fn learn_codings(&self, headers: &reqwest::header::HeaderMap) {
        let Some(accepted) = headers.get(reqwest::header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()) else {
            return;
        };
        let has = |coding: &str| accepted.split(',').any(|c| c.trim().eq_ignore_ascii_case(coding));
        let best = if has("zstd") {
            ZSTD
        } else if has("gzip") {
            GZIP
        } else {
            PLAIN
        };
        self.server_decodes.store(best, Ordering::Relaxed);
    }

    /// The body to send and its `Content-Encoding`: compressed once the server has said
    /// it decodes a coding (no request is ever refused for its coding) and the body is
    /// worth it.
    fn encode(&self, json: Vec<u8>) -> (Vec<u8>, Option<&'static str>) {
        if !self.compression || json.len() < COMPRESS_ABOVE {
            return (json, None);
        }
        let compressed = match self.server_decodes.load(Ordering::Relaxed) {
            ZSTD => zstd::encode_all(&json[..], 3).ok().map(|b| (b, "zstd")),
            GZIP => {
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut encoder, &json).and_then(|()| encoder.finish()).ok().map(|b| (b, "gzip"))
            }
            _ => None,
        };
        match compressed {
            Some((bytes, coding)) if bytes.len() < json.len() => (bytes, Some(coding)),
            _ => (json, None),
        }
    }

    fn token(&self) -> Option<String> {
        self.token.read().ok().and_then(|t| t.clone())
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match self.token() {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn post<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, Error> {
        let json = serde_json::to_vec(body).map_err(|e| Error::Config { message: format!("request body: {e}") })?;
        let (bytes, coding) = self.encode(json);
        self.sent_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let mut request =
            self.request(reqwest::Method::POST, path).header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(coding) = coding {
            request = request.header(reqwest::header::CONTENT_ENCODING, coding);
        }
        // The server logs this id with the request and echoes it: a device's log line
        // and the server's can be matched.
        let request_id = uuid::Uuid::now_v7().to_string();
        tracing::Span::current().record("request_id", request_id.as_str());
        let started = std::time::Instant::now();
        let sent = bytes.len();
        let request = request.header(REQUEST_ID, &request_id).body(bytes);
        let answer = async {
            let response = request.send().await.map_err(send_error)?;
            self.learn_codings(response.headers());
            let status = response.status();
            let bytes = response.bytes().await.map_err(send_error)?;
            Ok::<_, Error>((status, bytes))
        }
        .await;
        let took_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (status, bytes) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                tracing::debug!(%request_id, path, sent, took_ms, %error, "request failed");
                return Err(error);
            }
        };
        tracing::debug!(%request_id, path, status = status.as_u16(), sent, received = bytes.len(), took_ms, "request answered");
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| Error::MalformedResponse { message: format!("{path}: {e}") });
        }
        Err(status_error(status.as_u16(), &bytes))
    }

    /// Follows `GET /v1/events` in the background: each `change` event triggers a sync
    /// through `notifier` (from `Engine::change_notifier`); the stream is reopened with
    /// backoff when it drops. The task ends when the engine shuts down.
    pub fn follow_events(self: &Arc<Self>, notifier: ChangeNotifier) -> JoinHandle<()> {
        let transport = self.clone();
        tokio::spawn(async move {
            let backoff = Backoff::default();
            let mut failures = 0u32;
            let mut connected_before = false;
            loop {
                if notifier.is_closed() {
                    return;
                }
                match transport.read_events(&notifier, &mut connected_before).await {
                    Ok(()) => failures = 0,
                    Err(_) => failures = failures.saturating_add(1),
                }
                let delay = backoff.delay(failures.max(1), &mut rand::rng());
                tokio::time::sleep(delay).await;
            }
        })
    }

    /// Reads one events stream until it ends. When it is not the first stream, the
    /// client syncs once as soon as it is open: a change announced while the stream was
    /// down would otherwise wait for the next trigger.
    async fn read_events(&self, notifier: &ChangeNotifier, connected_before: &mut bool) -> Result<(), Error> {
        // The device's own pushes are not announced back to it.
        let mut builder = self
            .events
            .get(format!("{}/v1/events", self.base))
            .query(&[("client_id", notifier.client_id().to_string())]);
        if let Some(token) = self.token() {
            builder = builder.bearer_auth(token);
        }
        let response = builder.send().await.map_err(send_error)?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let bytes = response.bytes().await.map_err(send_error)?;
            return Err(status_error(status, &bytes));
        }
        if std::mem::replace(connected_before, true) {
            notifier.notify();
        }
        let mut body = response.bytes_stream();
        let mut parser = SseParser::default();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(send_error)?;
            for event in parser.feed(&chunk) {
                if event == "change" {
                    notifier.notify();
                }
            }
            if notifier.is_closed() {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// A minimal Server-Sent Events parser: yields each complete event's name.
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
    event: Option<String>,
}

impl SseParser {
    fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(chunk);
        let mut done = Vec::new();
        while let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if let Some(event) = self.event.take() {
                    done.push(event);
                }
            } else if let Some(name) = line.strip_prefix("event:") {
                self.event = Some(name.trim().to_owned());
            }
        }
        done
    }
}

fn send_error(e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Transient { message: format!("timed out: {e}") }
    } else if e.is_connect() || e.is_request() {
        // reqwest's own text is only "error sending request"; the cause (refused, DNS,
        // a certificate for another host) is down the chain.
        Error::Unreachable { message: with_causes(&e) }
    } else if e.is_decode() || e.is_body() {
        Error::MalformedResponse { message: e.to_string() }
    } else {
        Error::Transient { message: e.to_string() }
    }
}

/// An error's text followed by its causes': `a: b: c`.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// The client-side error for an error answer: 401 is [`Error::Unauthorized`], 429 and
/// 5xx are [`Error::Transient`], any other status is [`Error::Rejected`] with the body's
/// protocol code. In-process transports (the test kit's) use it to fail exactly as
/// `HttpTransport` does.
pub fn status_error(status: u16, body: &[u8]) -> Error {
    let detail = serde_json::from_slice::<ErrorBody>(body).ok().map(|b| b.error);
    let message = detail.as_ref().map_or_else(|| String::from_utf8_lossy(body).into_owned(), |d| d.message.clone());
    match status {
        401 => Error::Unauthorized { message },
        429 | 500..=599 => Error::Transient { message: format!("{status}: {message}") },
        _ => Error::Rejected { status, code: detail.map_or(ErrorCode::HttpError, |d| d.code), message },
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, Error> {
        self.post("/v1/push", request).await
    }

    async fn pull(&self, request: &PullRequest) -> Result<PullResponse, Error> {
        self.post("/v1/pull", request).await
    }

    async fn probe(&self) -> Result<(), Error> {
        let response = self.request(reqwest::Method::GET, "/v1/health").send().await.map_err(send_error)?;
        self.learn_codings(response.headers());
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let bytes = response.bytes().await.map_err(send_error)?;
        Err(status_error(status, &bytes))
    }

    fn set_credentials(&self, credentials: Option<Credentials>) {
        if let Ok(mut token) = self.token.write() {
            *token = credentials.map(|c| c.token().to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: cha").is_empty());
        assert!(p.feed(b"nge\ndata: {\"collections\":[\"a\"]}\n").is_empty());
        assert_eq!(p.feed(b"\n:keep-alive\n\nevent: change\r\ndata: x\r\n\r\n"), vec!["change", "change"]);
    }

    #[test]
    fn statuses_map_to_error_classes() {
        let body = br#"{"error": {"code": "batch_too_large", "message": "at most 10"}}"#;
        assert!(matches!(status_error(400, body), Error::Rejected { status: 400, code: ErrorCode::BatchTooLarge, .. }));
        assert!(matches!(status_error(401, b"{}"), Error::Unauthorized { .. }));
        assert!(matches!(status_error(429, b""), Error::Transient { .. }));
        assert!(matches!(status_error(503, b"oops"), Error::Transient { .. }));
        assert!(matches!(status_error(413, b"not json"), Error::Rejected { status: 413, .. }));
    }
}

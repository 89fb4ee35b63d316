//! The axum router: `/v1/health`, `/v1/push`, `/v1/pull`, `/v1/events`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sync_core::protocol::{ErrorBody, ErrorCode, ErrorDetail, SubscriptionPull};
use sync_core::{CollectionName, Cursor};
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::events::{ChangeHub, sse_for};
use crate::logic::{User, WireResult, json_depth};
use crate::metrics::Metrics;
use crate::rules::Rule;
use crate::store::{ActionHandler, PullItem, PullJob, PullPage, PushJob, PushRules, ServerStore, SubscriptionItem};
use crate::subscriptions::Subscription;

/// Everything the handlers share.
pub struct AppState {
    config: ServerConfig,
    users_by_token_hash: HashMap<String, User>,
    /// Collections, user names and action handlers: what pushes are checked against
    /// (and where pulls and event streams find the collections).
    rules: Arc<PushRules>,
    store: Arc<dyn ServerStore>,
    hub: ChangeHub,
    /// False when the store forwards every node's notifications into the hub itself.
    publish_locally: bool,
    metrics: Metrics,
}

impl AppState {
    /// State for a router over `store`, configured by `config`.
    pub fn new(config: ServerConfig, store: Arc<dyn ServerStore>, hub: ChangeHub) -> Self {
        let users_by_token_hash =
            config.users.iter().map(|u| (u.token_sha256.to_ascii_lowercase(), u.user())).collect();
        let rules = Arc::new(PushRules {
            collections: config.collections.clone(),
            users: config.users.iter().map(|u| u.name.clone()).collect(),
            actions: HashMap::new(),
        });
        Self { config, users_by_token_hash, rules, store, hub, publish_locally: true, metrics: Metrics::new() }
    }

    /// Registers the server side of a custom action.
    pub fn action(mut self, name: impl Into<String>, handler: impl ActionHandler) -> Self {
        Arc::make_mut(&mut self.rules).actions.insert(name.into(), Arc::new(handler));
        self
    }

    /// The configuration it serves.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics text, with the gauges (open streams, pool use) read now.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(self.hub.open_streams(), &self.store.pool_use())
    }

    /// The change hub every push's notifications go through.
    pub fn hub(&self) -> &ChangeHub {
        &self.hub
    }

    /// Wires the store's shared notifications (several nodes) into the hub, if it has
    /// any; the server then stops publishing locally, so nothing is announced twice.
    ///
    /// # Errors
    /// [`ServerError::Database`] when the store's notification channel cannot be opened.
    pub async fn connect_notifications(&mut self) -> Result<Option<tokio::task::JoinHandle<()>>, ServerError> {
        let task = self.store.forward_notifications(&self.hub).await?;
        self.publish_locally = task.is_none();
        Ok(task)
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<User, ServerError> {
        let unauthorized = |m: &str| ServerError::Unauthorized { message: m.to_owned() };
        let value = headers.get(header::AUTHORIZATION).ok_or_else(|| unauthorized("missing bearer token"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("expected 'Authorization: Bearer <token>'"))?;
        self.user_for_token(token)
    }

    /// The user of a JWT, when the server verifies them; nothing about why a token was
    /// refused reaches the client but "expired" (so that it refreshes).
    fn user_for_jwt(&self, token: &str) -> Option<Result<User, ServerError>> {
        let verifier = self.config.jwt.as_ref()?;
        // A static token has no dots; a JWT has exactly two.
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return None;
        }
        Some(verifier.verify(token).map_err(|refusal| match refusal {
            crate::jwt::Refusal::Expired => ServerError::TokenExpired,
            crate::jwt::Refusal::Invalid(why) => {
                tracing::debug!(reason = %why, "JWT refused");
                ServerError::Unauthorized { message: "invalid token".into() }
            }
        }))
    }

    /// Reads a JSON body within the size and depth limits.
    async fn json_body(&self, headers: &HeaderMap, body: Body) -> Result<Value, ServerError> {
        let limit = self.config.max_body_bytes;
        let declared =
            headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ServerError::PayloadTooLarge { limit });
        }
        let bytes: Bytes =
            axum::body::to_bytes(body, limit).await.map_err(|_| ServerError::PayloadTooLarge { limit })?;
        let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
        let decoded = crate::encoding::decode_body(encoding, &bytes, limit)?;
        self.parse_body(&decoded)
    }

    /// Parses a request body within the size and depth limits (`max_body_bytes`,
    /// `max_json_depth`).
    ///
    /// # Errors
    /// [`ServerError::PayloadTooLarge`]; [`ServerError::BadRequest`] `invalid_request` for
    /// a body that is not JSON or is nested too deep.
    pub fn parse_body(&self, bytes: &[u8]) -> Result<Value, ServerError> {
        let limit = self.config.max_body_bytes;
        if bytes.len() > limit {
            return Err(ServerError::PayloadTooLarge { limit });
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| ServerError::bad_request(ErrorCode::InvalidRequest, format!("body is not JSON: {e}")))?;
        if json_depth(&value) > self.config.max_json_depth {
            return Err(ServerError::bad_request(
                ErrorCode::InvalidRequest,
                format!("JSON nested deeper than {} levels", self.config.max_json_depth),
            ));
        }
        Ok(value)
    }
}

/// Builds the router. Body limits are enforced by the handlers, so that a body over
/// `max_body_bytes` gets the protocol's JSON error with status 413.
///
/// Every request carries an id (`x-request-id`: the client's, or a new UUID), which is
/// in the request's tracing span and echoed in the answer, so a device's log and the
/// server's can be matched.
pub fn router(state: AppState) -> Router {
    shared_router(Arc::new(state))
}

/// As [`router`], over state shared with others (the metrics listener's router).
pub fn shared_router(state: Arc<AppState>) -> Router {
    let mut routes = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/push", post(push))
        .route("/v1/pull", post(pull))
        .route("/v1/events", get(events));
    if state.config.metrics.as_ref().is_some_and(|m| m.token_sha256.is_some()) {
        routes = routes.route("/metrics", get(metrics_with_token));
    }
    routes
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        // Answers over 1 KiB in zstd or gzip, as the client accepts (never the event
        // stream); every answer says which request codings the server decodes.
        .layer(
            CompressionLayer::new()
                .no_br()
                .no_deflate()
                // The fastest levels: a pull page is made once per request, and the
                // default levels made an initial sync several times slower.
                .quality(CompressionLevel::Fastest)
                .compress_when(DefaultPredicate::new().and(SizeAbove::new(crate::encoding::COMPRESS_ABOVE))),
        )
        .layer(SetResponseHeaderLayer::if_not_present(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static(crate::encoding::ACCEPTED),
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_request))
        .layer(TraceLayer::new_for_http().make_span_with(request_span).on_response(DefaultOnResponse::new()))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// A router serving only `GET /metrics`, without a token: for `[metrics] listen`, an
/// address of its own that only the operator's network reaches.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new().route("/metrics", get(metrics_open)).fallback(not_found).with_state(state)
}

/// The request's span: method, path and request id.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
}

/// Counts the request in the metrics by the route it matched (`other` for none).
async fn count_request(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state.metrics.request(&route, response.status().as_u16(), started.elapsed());
    response
}

fn metrics_response(state: &AppState) -> Response {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.render_metrics()).into_response()
}

async fn metrics_open(State(state): State<Arc<AppState>>) -> Response {
    metrics_response(&state)
}

/// `/metrics` on the main listener: only for the configured token.
async fn metrics_with_token(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ServerError> {
    let expected = state.config.metrics.as_ref().and_then(|m| m.token_sha256.as_deref());
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| crate::config::token_sha256(t.trim()));
    match (expected, given) {
        (Some(expected), Some(given)) if expected.eq_ignore_ascii_case(&given) => Ok(metrics_response(&state)),
        _ => Err(ServerError::Unauthorized { message: "the metrics token is required".into() }),
    }
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn not_found() -> Response {
    let body = ErrorBody { error: ErrorDetail::new(ErrorCode::NotFound, "no such endpoint") };
    (axum::http::StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// `POST /v1/push`'s answer.
#[derive(Debug, serde::Serialize)]
pub struct PushAnswer {
    /// One result per mutation, in order.
    pub results: Vec<WireResult>,
}

impl AppState {
    /// The user a bearer token belongs to.
    ///
    /// # Errors
    /// [`ServerError::Unauthorized`] for an unknown token.
    pub fn user_for_token(&self, token: &str) -> Result<User, ServerError> {
        if let Some(user) = self.user_for_jwt(token.trim()) {
            return user;
        }
        self.users_by_token_hash
            .get(&crate::config::token_sha256(token.trim()))
            .cloned()
            .ok_or_else(|| ServerError::Unauthorized { message: "unknown token".into() })
    }

    /// Answers a push body (already parsed and within the size limits) for `user`:
    /// checks its shape and batch size, applies it and announces the changes. The HTTP
    /// handler and in-process servers (the test kit's) share it.
    ///
    /// # Errors
    /// [`ServerError::BadRequest`] for a body that is not a push (nothing applied),
    /// [`ServerError::Database`].
    pub async fn handle_push(&self, user: &User, body: Value) -> Result<PushAnswer, ServerError> {
        let shape = || {
            ServerError::bad_request(ErrorCode::InvalidRequest, "expected {\"client_id\": string, \"mutations\": [..]}")
        };
        let Value::Object(mut obj) = body else { return Err(shape()) };
        let client_id = obj.get("client_id").and_then(Value::as_str).ok_or_else(shape)?.to_owned();
        let Some(Value::Array(mutations)) = obj.remove("mutations") else { return Err(shape()) };
        if mutations.len() > self.config.max_batch {
            return Err(ServerError::bad_request(
                ErrorCode::BatchTooLarge,
                format!("{} mutations; at most {} per push", mutations.len(), self.config.max_batch),
            ));
        }
        let job = PushJob { user: user.clone(), rules: self.rules.clone(), mutations, client_id };
        let count = job.mutations.len();
        let (results, touched) = self.store.push(job).await?;
        if self.publish_locally {
            self.hub.publish(touched);
        }
        self.metrics.push_answered(&results);
        tracing::debug!(user = %user.name, mutations = count, "push answered");
        Ok(PushAnswer { results })
    }

    /// Answers a pull body (already parsed and within the size limits) for `user`.
    ///
    /// # Errors
    /// [`ServerError::BadRequest`] for a body that is not a pull, an invalid or unknown
    /// collection, or a bad limit or cursor; [`ServerError::Database`].
    pub async fn handle_pull(&self, user: &User, body: &Value) -> Result<PullPage, ServerError> {
        let shape = || {
            ServerError::bad_request(
                ErrorCode::InvalidRequest,
                "expected {\"client_id\": string, \"collections\": {name: cursor|null}, \"limit\": int}",
            )
        };
        let obj = body.as_object().ok_or_else(shape)?;
        obj.get("client_id").and_then(Value::as_str).ok_or_else(shape)?;
        let requested = obj.get("collections").and_then(Value::as_object).ok_or_else(shape)?;
        let limit = match obj.get("limit") {
            None | Some(Value::Null) => self.config.max_batch,
            Some(v) => match v.as_i64() {
                Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX).min(self.config.max_batch),
                Some(_) => return Err(ServerError::bad_request(ErrorCode::InvalidRequest, "limit must be at least 1")),
                None => return Err(ServerError::bad_request(ErrorCode::InvalidRequest, "limit must be an integer")),
            },
        };
        let mut items = Vec::with_capacity(requested.len());
        for (name, cursor) in requested {
            let collection = CollectionName::new(name.clone())
                .map_err(|e| ServerError::bad_request(ErrorCode::InvalidCollection, e.to_string()))?;
            let config = self.rules.collections.get(&collection).ok_or_else(|| {
                ServerError::bad_request(
                    ErrorCode::UnknownCollection,
                    format!("collection {collection} is not served here"),
                )
            })?;
            let cursor = match cursor {
                Value::Null => None,
                Value::String(s) => Some(Cursor(s.clone())),
                _ => return Err(ServerError::bad_request(ErrorCode::InvalidRequest, "a cursor is a string or null")),
            };
            items.push(PullItem::new(collection, &config.rules.read, user, cursor));
        }
        let subscriptions = match obj.get("subscriptions") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(asked)) => self.subscription_items(user, asked)?,
            Some(_) => {
                return Err(ServerError::bad_request(
                    ErrorCode::InvalidRequest,
                    "subscriptions is an object of id: subscription",
                ));
            }
        };
        let page = self.store.pull(PullJob { user: user.clone(), items, subscriptions, limit }).await?;
        self.metrics.pulled(page.count);
        tracing::debug!(user = %user.name, records = page.count, has_more = page.has_more, "pull answered");
        Ok(page)
    }
}

impl AppState {
    /// The subscriptions of a pull, each checked: a malformed one, one of a collection
    /// not served here, or one no declared index answers is refused on its own (its part
    /// of the answer says why), and the rest go on.
    fn subscription_items(
        &self,
        user: &User,
        asked: &serde_json::Map<String, Value>,
    ) -> Result<Vec<SubscriptionItem>, ServerError> {
        if asked.len() > MAX_SUBSCRIPTIONS {
            return Err(ServerError::bad_request(
                ErrorCode::InvalidRequest,
                format!("at most {MAX_SUBSCRIPTIONS} subscriptions in one pull"),
            ));
        }
        let mut items = Vec::with_capacity(asked.len());
        for (id, raw) in asked {
            if id.is_empty() || id.len() > 128 {
                return Err(ServerError::bad_request(ErrorCode::InvalidRequest, "a subscription id is 1 to 128 bytes"));
            }
            let refused = |code, message: String| {
                let error = ErrorDetail { code, message };
                SubscriptionItem::new(id.clone(), Err(error), &Rule { grants: vec![] }, user, None)
            };
            let pull: SubscriptionPull = match serde_json::from_value(raw.clone()) {
                Ok(pull) => pull,
                Err(e) => {
                    items.push(refused(ErrorCode::InvalidSubscription, format!("subscription {id}: {e}")));
                    continue;
                }
            };
            let Some(config) = self.rules.collections.get(&pull.query.collection) else {
                let message = format!("collection {} is not served here", pull.query.collection);
                items.push(refused(ErrorCode::UnknownCollection, message));
                continue;
            };
            let query = Subscription::check(&pull.query, &config.subscription_indexes);
            items.push(SubscriptionItem::new(id.clone(), query, &config.rules.read, user, pull.cursor));
        }
        Ok(items)
    }
}

/// The most subscriptions one pull may carry.
pub const MAX_SUBSCRIPTIONS: usize = 100;

async fn push(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PushAnswer>, ServerError> {
    let user = state.authenticate(&headers)?;
    let body = state.json_body(&headers, body).await?;
    Ok(Json(state.handle_push(&user, body).await?))
}

async fn pull(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PullPage>, ServerError> {
    let user = state.authenticate(&headers)?;
    let body = state.json_body(&headers, body).await?;
    Ok(Json(state.handle_pull(&user, &body).await?))
}

/// `GET /v1/events[?client_id=..]`: with the device's client id, the changes of its own
/// pushes are not announced to it.
async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ServerError> {
    let user = state.authenticate(&headers)?;
    let client = params.get("client_id").cloned();
    let sse = sse_for(user, client, &state.hub).map_err(|_full| ServerError::Overloaded {
        message: "too many event streams open".into(),
        retry_after_secs: 30,
    })?;
    Ok(sse.into_response())
}

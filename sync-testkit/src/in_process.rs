//! The reference server's logic in the test's own process: its request handling and
//! its SQLite store in a temporary file, reached through [`Transport`] calls instead of
//! sockets, with an application log for the exactly-once check.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use async_trait::async_trait;
use serde_json::Value;
use sync_core::protocol::{MutationBody, MutationOutcome, PullRequest, PullResponse, PushRequest, PushResponse};
use sync_core::{ClientId, CollectionName, Credentials, Error, MutationId, RecordId, Transport, Version};
use sync_http::status_error;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::router::AppState;
use sync_server::server::from_config;
use sync_server::store::{ActionHandler, ServerStore};
use sync_server::{ServerError, logic::User};

/// A `sync-server.toml` text with `users` (each one's bearer token is its name; a user
/// named `admin` is an admin, the others users) and `collections` as (name, access)
/// pairs, access being `owner` or `read_only`.
///
/// ```
/// let toml = sync_testkit::server_toml(&["alice"], &[("notes", "owner")]);
/// assert!(toml.contains("[collections.notes]"));
/// ```
pub fn server_toml(users: &[&str], collections: &[(&str, &str)]) -> String {
    let mut text = String::new();
    for user in users {
        let role = if *user == "admin" { "admin" } else { "user" };
        text.push_str(&format!(
            "[[users]]\nname = \"{user}\"\ntoken_sha256 = \"{}\"\nrole = \"{role}\"\n",
            token_sha256(user)
        ));
    }
    for (name, access) in collections {
        text.push_str(&format!("[collections.{name}]\naccess = \"{access}\"\n"));
    }
    text
}

/// One mutation the server applied, in the order it applied them.
#[derive(Debug, Clone, PartialEq)]
pub struct Application {
    /// The pushing client.
    pub client_id: ClientId,
    /// The mutation's id.
    pub mutation_id: MutationId,
    /// The collection.
    pub collection: CollectionName,
    /// The record as the server stored it (its own id where it assigned one).
    pub record_id: Option<RecordId>,
    /// What it did, with its data (server shape) or the action's name and arguments.
    pub body: MutationBody,
    /// The record's version after it.
    pub version: Version,
}

/// What the server did twice: a mutation id answered `applied` again with another
/// version (a repeat the ledger should have answered with the original result).
#[derive(Debug, Clone, PartialEq)]
pub struct DoubleApplication {
    /// The first application.
    pub first: Application,
    /// The version the second answer named.
    pub again: Version,
}

#[derive(Default)]
struct Log {
    applied: Vec<Application>,
    by_id: HashMap<MutationId, usize>,
    doubles: Vec<DoubleApplication>,
    pushes: u64,
    pulls: u64,
    resets: u64,
}

struct Inner {
    state: AppState,
    store: Arc<dyn ServerStore>,
    log: Mutex<Log>,
    _dir: tempfile::TempDir,
}

/// The reference server (`sync-server`'s request handling and SQLite store, in a
/// temporary file) inside the test process: no sockets, no ports, the same checks,
/// limits and answers as over HTTP. Each client gets its own [`InProcessTransport`].
///
/// ```
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use sync_testkit::InProcessServer;
///
/// let server = InProcessServer::start(&["alice", "bob"], &[("orders", "owner")]).await?;
/// let alice = server.transport("alice"); // a Transport with alice's token
/// # let _ = alice;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct InProcessServer {
    inner: Arc<Inner>,
}

impl InProcessServer {
    /// A server with `users` (role user, each one's bearer token is its name) and
    /// `collections` as (name, access) pairs, access being `owner` or `read_only`.
    /// A user named `admin` gets the admin role.
    ///
    /// # Errors
    /// [`ServerError::Config`] for a bad name or access; [`ServerError::Database`] or
    /// [`ServerError::Io`] when the temporary store cannot be made.
    pub async fn start(users: &[&str], collections: &[(&str, &str)]) -> Result<Self, ServerError> {
        Self::from_toml(&server_toml(users, collections)).await
    }

    /// A server configured by a `sync-server.toml` text (as README.md documents it); its
    /// `database` is replaced by a temporary SQLite file.
    ///
    /// # Errors
    /// As [`InProcessServer::start`].
    pub async fn from_toml(text: &str) -> Result<Self, ServerError> {
        Self::with_actions(text, Vec::new()).await
    }

    /// As [`InProcessServer::from_toml`], with custom action handlers by name.
    ///
    /// # Errors
    /// As [`InProcessServer::start`].
    pub async fn with_actions(text: &str, actions: Vec<(String, Arc<dyn ActionHandler>)>) -> Result<Self, ServerError> {
        let dir = tempfile::tempdir().map_err(|e| ServerError::Io { message: e.to_string() })?;
        let mut config = ServerConfig::from_toml(text)?;
        config.database = format!("sqlite://{}", dir.path().join("server.db").display());
        let (mut state, store) = from_config(&config).await?;
        for (name, handler) in actions {
            state = state.action(name, handler);
        }
        Ok(Self { inner: Arc::new(Inner { state, store, log: Mutex::new(Log::default()), _dir: dir }) })
    }

    /// A transport for a client of `token`'s user (see [`InProcessServer::start`]).
    pub fn transport(&self, token: &str) -> InProcessTransport {
        InProcessTransport { inner: self.inner.clone(), token: RwLock::new(Some(token.to_owned())) }
    }

    /// Every mutation the server applied, in order (replays of a repeated mutation id
    /// are not listed again).
    pub fn applications(&self) -> Vec<Application> {
        self.log().applied.clone()
    }

    /// Mutation ids the server answered `applied` a second time with another version:
    /// empty unless exactly-once is broken.
    pub fn double_applications(&self) -> Vec<DoubleApplication> {
        self.log().doubles.clone()
    }

    /// Purges every tombstone now, as the server's purge loop does once they are older
    /// than `tombstone_retention`: a client whose cursor is older than the purge then
    /// gets `reset` and resyncs the collection from scratch. Returns how many it purged.
    ///
    /// # Errors
    /// [`ServerError::Database`].
    pub async fn purge_tombstones(&self) -> Result<u64, ServerError> {
        // Tombstones of this very instant count too.
        let now = chrono::Utc::now() + chrono::Duration::seconds(1);
        self.inner.store.purge_tombstones(now).await
    }

    /// How many collections the server answered with `reset` (a cursor older than its
    /// purged tombstones), over all pulls.
    pub fn resets(&self) -> u64 {
        self.log().resets
    }

    /// How many push and pull requests reached the server.
    pub fn requests(&self) -> (u64, u64) {
        let log = self.log();
        (log.pushes, log.pulls)
    }

    /// The live records of `collection` that the user of bearer `token` may read
    /// (with [`InProcessServer::start`], a user's token is its name): id → (version,
    /// data), read through the server's own pull.
    ///
    /// # Errors
    /// [`ServerError`] as a pull would answer.
    pub async fn records(&self, token: &str, collection: &str) -> Result<BTreeMap<String, (u64, Value)>, ServerError> {
        let user = self.inner.state.user_for_token(token)?;
        let mut out = BTreeMap::new();
        let mut cursor = Value::Null;
        loop {
            let body = serde_json::json!({"client_id": "inspector", "collections": {collection: cursor}});
            let page = self.inner.state.handle_pull(&user, &body).await?.into_response()?;
            for change in page.changes {
                match change.data {
                    Some(data) if !change.deleted => {
                        out.insert(change.record_id.to_string(), (change.version.0, data));
                    }
                    _ => {
                        out.remove(change.record_id.as_str());
                    }
                }
            }
            cursor = page.cursors.values().next().map_or(Value::Null, |c| Value::String(c.0.clone()));
            if !page.has_more {
                return Ok(out);
            }
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.inner.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One client's way to an [`InProcessServer`]: requests go through JSON bytes, the
/// server's body limits, its handlers and its answers' JSON, exactly as over HTTP, and
/// fail with the same error classes (`status_error`).
pub struct InProcessTransport {
    inner: Arc<Inner>,
    token: RwLock<Option<String>>,
}

impl InProcessTransport {
    fn user(&self) -> Result<User, ServerError> {
        let token = self.token.read().unwrap_or_else(PoisonError::into_inner).clone();
        let token = token.ok_or_else(|| ServerError::Unauthorized { message: "missing bearer token".into() })?;
        self.inner.state.user_for_token(&token)
    }

    fn body<T: serde::Serialize>(&self, request: &T) -> Result<Value, ServerError> {
        let bytes = serde_json::to_vec(request).map_err(|e| ServerError::Io { message: e.to_string() })?;
        self.inner.state.parse_body(&bytes)
    }

    fn record(&self, request: &PushRequest, response: &PushResponse) {
        let mut log = self.inner.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.pushes += 1;
        for (mutation, result) in request.mutations.iter().zip(&response.results) {
            let MutationOutcome::Applied { version, record_id } = &result.outcome else { continue };
            if let Some(&first) = log.by_id.get(&mutation.mutation_id) {
                let first = log.applied[first].clone();
                if first.version != *version {
                    log.doubles.push(DoubleApplication { first, again: *version });
                }
                continue;
            }
            let index = log.applied.len();
            log.by_id.insert(mutation.mutation_id, index);
            log.applied.push(Application {
                client_id: request.client_id.clone(),
                mutation_id: mutation.mutation_id,
                collection: mutation.collection.clone(),
                record_id: record_id.clone().or_else(|| mutation.record_id.clone()),
                body: mutation.body.clone(),
                version: *version,
            });
        }
    }
}

/// The client-side error for a server error, as `HttpTransport` would report it.
fn client_error(error: &ServerError) -> Error {
    let body = serde_json::to_vec(&error.body()).unwrap_or_default();
    status_error(error.status(), &body)
}

/// Parses an answer's JSON as the client would.
fn answer<T: serde::Serialize, R: serde::de::DeserializeOwned>(value: &T) -> Result<R, Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::MalformedResponse { message: e.to_string() })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::MalformedResponse { message: e.to_string() })
}

#[async_trait]
impl Transport for InProcessTransport {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, Error> {
        let user = self.user().map_err(|e| client_error(&e))?;
        let body = self.body(request).map_err(|e| client_error(&e))?;
        let answer_ = self.inner.state.handle_push(&user, body).await.map_err(|e| client_error(&e))?;
        let response: PushResponse = answer(&answer_)?;
        self.record(request, &response);
        Ok(response)
    }

    async fn pull(&self, request: &PullRequest) -> Result<PullResponse, Error> {
        let user = self.user().map_err(|e| client_error(&e))?;
        let body = self.body(request).map_err(|e| client_error(&e))?;
        let page = self.inner.state.handle_pull(&user, &body).await.map_err(|e| client_error(&e))?;
        let response: PullResponse = answer(&page)?;
        let mut log = self.inner.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.pulls += 1;
        log.resets += response.reset.len() as u64;
        Ok(response)
    }

    async fn probe(&self) -> Result<(), Error> {
        Ok(())
    }

    fn set_credentials(&self, credentials: Option<Credentials>) {
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = credentials.map(|c| c.token().to_owned());
    }
}

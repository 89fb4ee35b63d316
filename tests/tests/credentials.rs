//! Tokens from the app's provider: one refresh answers a burst of 401s, a refused or
//! failing refresh pauses syncing without looping, and a broken provider is a typed
//! error. The reference server over HTTP, real SQLite files; a counting wrapper around
//! the HTTP transport (through the `Transport` trait) counts the requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{WorkOrder, credentials_of, quiet, wo};
use sync_core::protocol::{PullRequest, PullResponse, PushRequest, PushResponse};
use sync_core::{
    AccountId, AuthState, Backoff, CollectionSpec, Credentials, Engine, EngineOptions, Error, TOKEN_ATTEMPTS,
    TokenProvider, Transport,
};
use sync_http::HttpTransport;
use sync_patterns::ConflictDetection;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{RunningServer, from_config, start};
use sync_sqlite::SqliteStore;

async fn server(dir: &tempfile::TempDir) -> RunningServer {
    let text = format!(
        "database = \"sqlite://{}\"\n[[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n\
         [collections.work_orders]\naccess = \"owner\"\n",
        dir.path().join("server.db").display(),
        token_sha256("alice-token")
    );
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap()
}

/// The HTTP transport, counting what it sends and how often the server said 401.
struct Counting {
    inner: HttpTransport,
    requests: AtomicU64,
    refused: AtomicU64,
}

impl Counting {
    fn new(url: &str) -> Arc<Self> {
        Arc::new(Self {
            inner: HttpTransport::new(url).unwrap(),
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    fn count<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if matches!(result, Err(Error::Unauthorized { .. })) {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

#[async_trait]
impl Transport for Counting {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, Error> {
        let result = self.inner.push(request).await;
        self.count(result)
    }
    async fn pull(&self, request: &PullRequest) -> Result<PullResponse, Error> {
        let result = self.inner.pull(request).await;
        self.count(result)
    }
    async fn probe(&self) -> Result<(), Error> {
        self.inner.probe().await
    }
    fn set_credentials(&self, credentials: Option<Credentials>) {
        self.inner.set_credentials(credentials);
    }
}

/// A provider that hands out scripted answers, then repeats the last one, and counts.
struct Scripted {
    first: Mutex<VecDeque<Result<String, Error>>>,
    refreshes: Mutex<VecDeque<Result<String, Error>>>,
    token_calls: AtomicU64,
    refresh_calls: AtomicU64,
    refused_seen: Mutex<Vec<String>>,
}

impl Scripted {
    fn new(first: Vec<Result<String, Error>>, refreshes: Vec<Result<String, Error>>) -> Arc<Self> {
        Arc::new(Self {
            first: Mutex::new(first.into()),
            refreshes: Mutex::new(refreshes.into()),
            token_calls: AtomicU64::new(0),
            refresh_calls: AtomicU64::new(0),
            refused_seen: Mutex::new(Vec::new()),
        })
    }

    fn next(script: &Mutex<VecDeque<Result<String, Error>>>) -> Result<String, Error> {
        let mut script = script.lock().unwrap();
        if script.len() > 1 { script.pop_front().unwrap() } else { script.front().cloned().unwrap() }
    }

    fn token_calls(&self) -> u64 {
        self.token_calls.load(Ordering::SeqCst)
    }

    fn refresh_calls(&self) -> u64 {
        self.refresh_calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl TokenProvider for Scripted {
    async fn token(&self, _: &AccountId) -> Result<String, Error> {
        self.token_calls.fetch_add(1, Ordering::SeqCst);
        Self::next(&self.first)
    }
    async fn refresh(&self, _: &AccountId, refused: &str) -> Result<String, Error> {
        self.refresh_calls.fetch_add(1, Ordering::SeqCst);
        self.refused_seen.lock().unwrap().push(refused.to_owned());
        Self::next(&self.refreshes)
    }
}

fn options() -> EngineOptions {
    let backoff = Backoff { initial: Duration::from_millis(5), max: Duration::from_millis(20), ..Backoff::default() };
    EngineOptions { backoff, ..quiet() }
}

async fn engine(dir: &tempfile::TempDir, transport: Arc<Counting>, provider: Arc<Scripted>) -> Engine {
    Engine::builder()
        .store(Arc::new(SqliteStore::open(dir.path().join("app.db")).await.unwrap()))
        .account(AccountId::new("alice").unwrap())
        .token_provider(provider)
        .transport(transport)
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .options(options())
        .build()
        .await
        .unwrap()
}

fn ok(token: &str) -> Result<String, Error> {
    Ok(token.to_owned())
}

/// Queues `n` writes; nothing syncs until the test asks (no automatic triggers).
async fn write_offline(engine: &Engine, n: usize) {
    let orders = engine.collection::<WorkOrder>().unwrap();
    for i in 0..n {
        orders.insert(&wo(&format!("w{i}"), "queued", 1)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_401s_is_answered_by_exactly_one_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let transport = Counting::new(&server.url());
    // The token the app kept from yesterday has expired; the refresh gives a good one.
    let provider = Scripted::new(vec![ok("expired-token")], vec![ok("alice-token")]);
    let engine = engine(&dir, transport.clone(), provider.clone()).await;
    write_offline(&engine, 20).await;
    let syncs: Vec<_> = (0..10)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.sync_now().await })
        })
        .collect();
    for sync in syncs {
        sync.await.unwrap().unwrap();
    }
    assert_eq!(provider.token_calls(), 1);
    assert_eq!(provider.refresh_calls(), 1, "one refresh for every request refused together");
    assert_eq!(*provider.refused_seen.lock().unwrap(), ["expired-token"]);
    assert_eq!(transport.refused(), 1, "only the first request went out with the expired token");
    assert_eq!(engine.status().borrow().auth, AuthState::Ok);
    assert_eq!(engine.status().borrow().pending, 0);
    // Everything arrived, under alice, with the mutation ids it was queued with.
    let reader = common::http_as(&server.url(), "alice");
    let page = reader
        .pull(&PullRequest {
            client_id: sync_core::ClientId("reader".into()),
            collections: [(sync_core::CollectionName::new("work_orders").unwrap(), None)].into(),
            limit: Some(100),
            subscriptions: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 20);
    engine.shutdown().await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_the_server_refuses_too_pauses_syncing_without_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let transport = Counting::new(&server.url());
    let provider = Scripted::new(vec![ok("expired-token")], vec![ok("also-refused")]);
    let engine = engine(&dir, transport.clone(), provider.clone()).await;
    write_offline(&engine, 3).await;
    let first = engine.sync_now().await;
    assert!(matches!(first, Err(Error::Unauthorized { .. })), "{first:?}");
    assert_eq!(engine.status().borrow().auth, AuthState::Required);
    assert_eq!((provider.refresh_calls(), transport.refused()), (1, 2), "one refresh, one retry, no more");
    let requests = transport.requests();

    // Triggers, writes and time pass: nothing goes out, nothing is dropped.
    for _ in 0..5 {
        assert!(matches!(engine.sync_now().await, Err(Error::Unauthorized { .. })));
    }
    engine.collection::<WorkOrder>().unwrap().insert(&wo("later", "x", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(transport.requests(), requests, "the engine kept asking the server");
    assert_eq!(provider.refresh_calls(), 1, "the engine kept asking the provider");
    let mut status = engine.status();
    status.wait_for(|s| s.pending == 4).await.unwrap();

    // The app signs the user in again: the same queue goes out.
    engine.set_credentials(credentials_of("alice")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.pending == 0 && s.auth == AuthState::Ok))
        .await
        .unwrap()
        .unwrap();
    engine.shutdown().await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_asked_a_bounded_number_of_times() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let transport = Counting::new(&server.url());
    let identity_down = Err(Error::Unreachable { message: "identity provider unreachable".into() });
    let provider = Scripted::new(vec![ok("expired-token")], vec![identity_down]);
    let engine = engine(&dir, transport.clone(), provider.clone()).await;
    write_offline(&engine, 2).await;
    let result = engine.sync_now().await;
    assert!(matches!(result, Err(Error::TokenProvider { .. })), "{result:?}");
    assert_eq!(provider.refresh_calls(), u64::from(TOKEN_ATTEMPTS));
    assert_eq!(engine.status().borrow().auth, AuthState::Required);
    assert!(matches!(engine.sync_now().await, Err(Error::Unauthorized { .. })));
    assert_eq!(provider.refresh_calls(), u64::from(TOKEN_ATTEMPTS), "asked again after giving up");
    assert_eq!(transport.refused(), 1);
    engine.shutdown().await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_answers_nonsense_or_panics_is_a_typed_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    for (name, answer) in [("empty", ok("")), ("spaces", ok("not a token"))] {
        let dir = tempfile::tempdir_in(dir.path()).unwrap();
        let transport = Counting::new(&server.url());
        let provider = Scripted::new(vec![answer], vec![ok("alice-token")]);
        let engine = engine(&dir, transport.clone(), provider).await;
        write_offline(&engine, 1).await;
        let result = engine.sync_now().await;
        assert!(matches!(result, Err(Error::TokenProvider { .. })), "{name}: {result:?}");
        assert_eq!(transport.requests(), 0, "{name}: a request went out without a usable token");
        assert_eq!(engine.status().borrow().auth, AuthState::Required);
        engine.shutdown().await;
    }

    struct Panicking;
    #[async_trait]
    impl TokenProvider for Panicking {
        async fn token(&self, _: &AccountId) -> Result<String, Error> {
            panic!("the provider's own bug")
        }
        async fn refresh(&self, _: &AccountId, _: &str) -> Result<String, Error> {
            panic!("the provider's own bug")
        }
    }
    let transport = Counting::new(&server.url());
    let engine = Engine::builder()
        .store(Arc::new(SqliteStore::open(dir.path().join("panics.db")).await.unwrap()))
        .account(AccountId::new("alice").unwrap())
        .token_provider(Arc::new(Panicking))
        .transport(transport.clone())
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .options(options())
        .build()
        .await
        .unwrap();
    write_offline(&engine, 1).await;
    let result = engine.sync_now().await;
    assert!(matches!(result, Err(Error::TokenProvider { .. })), "{result:?}");
    // The engine lives on: the app's own credentials still work.
    engine.set_credentials(credentials_of("alice")).await.unwrap();
    let mut status = engine.status();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.pending == 0)).await.unwrap().unwrap();
    engine.shutdown().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_token_provider_needs_an_account() {
    let provider = Scripted::new(vec![ok("t")], vec![ok("t")]);
    let built = Engine::builder()
        .store(Arc::new(SqliteStore::in_memory().await.unwrap()))
        .token_provider(provider)
        .transport(Counting::new("http://127.0.0.1:9"))
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .build()
        .await;
    assert!(matches!(built, Err(Error::Config { .. })), "{:?}", built.err());
}

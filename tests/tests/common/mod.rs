//! Shared fixtures: a work-order entity and engines on real SQLite files.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sync_core::{CollectionSpec, Engine, EngineOptions, LocalEntity, SyncEvent, SyncUnit};
use sync_patterns::ConflictDetection;
use sync_sqlite::SqliteStore;
use sync_testkit::MemoryServer;
use tokio::sync::broadcast;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkOrder {
    pub id: String,
    pub title: String,
    pub n: u32,
}

impl LocalEntity for WorkOrder {
    const COLLECTION: &'static str = "work_orders";
    fn id(&self) -> &str {
        &self.id
    }
}

pub fn wo(id: &str, title: &str, n: u32) -> WorkOrder {
    WorkOrder { id: id.to_owned(), title: title.to_owned(), n }
}

/// Options for tests: no automatic triggers unless a test asks for them.
pub fn quiet() -> EngineOptions {
    EngineOptions { sync_on_start: false, debounce: Duration::from_secs(3600), ..EngineOptions::default() }
}

pub fn offline() -> EngineOptions {
    EngineOptions { start_online: false, ..quiet() }
}

pub async fn engine_on(store: SqliteStore, server: &Arc<MemoryServer>, options: EngineOptions) -> Engine {
    Engine::builder()
        .store(Arc::new(store))
        .transport(server.clone())
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .unit(SyncUnit::new("pull_orders", sync_core::Direction::Pull, &["work_orders"]))
        .unit(SyncUnit::new("push_orders", sync_core::Direction::Push, &["work_orders"]))
        .options(options)
        .build()
        .await
        .unwrap()
}

/// A quiet engine over `store` and `transport`, with work orders under conflict detection.
pub async fn engine_with(store: SqliteStore, transport: Arc<dyn sync_core::Transport>) -> Engine {
    Engine::builder()
        .store(Arc::new(store))
        .transport(transport)
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .options(quiet())
        .build()
        .await
        .unwrap()
}

pub async fn engine_at(path: &Path, server: &Arc<MemoryServer>, options: EngineOptions) -> Engine {
    engine_on(SqliteStore::open(path).await.unwrap(), server, options).await
}

/// Waits (bounded) for the first event that `pick` accepts.
pub async fn next_event<T>(rx: &mut broadcast::Receiver<SyncEvent>, pick: impl FnMut(&SyncEvent) -> Option<T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), next_event_untimed(rx, pick)).await.expect("event did not arrive")
}

/// Waits for the first event that `pick` accepts, with no tokio timer (for paused-time
/// tests, where a timeout would be the next thing time jumps to).
pub async fn next_event_untimed<T>(
    rx: &mut broadcast::Receiver<SyncEvent>,
    mut pick: impl FnMut(&SyncEvent) -> Option<T>,
) -> T {
    loop {
        match rx.recv().await {
            Ok(e) => {
                if let Some(t) = pick(&e) {
                    return t;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => panic!("event stream ended: {e}"),
        }
    }
}

/// Credentials of `user` for the test servers, whose token is `<user>-token`.
pub fn credentials_of(user: &str) -> sync_core::Credentials {
    sync_core::Credentials::new(sync_core::AccountId::new(user).unwrap(), format!("{user}-token")).unwrap()
}

/// An HTTP transport to `url` carrying `user`'s token, for tests that use it directly
/// or hand it to an engine whose store is not bound to another account.
pub fn http_as(url: &str, user: &str) -> sync_http::HttpTransport {
    use sync_core::Transport;
    let transport = sync_http::HttpTransport::new(url).unwrap();
    transport.set_credentials(Some(credentials_of(user)));
    transport
}

/// Polls `request` once and hands it back, pending: an engine request (`sync_now`,
/// `sync_unit`) has then put its command in the driver's queue, in the order of the
/// calls, and the answer is awaited later. Orders requests without sleeping.
pub async fn sent<F: std::future::Future>(request: F) -> std::pin::Pin<Box<F>> {
    let mut request = Box::pin(request);
    assert!(futures::poll!(request.as_mut()).is_pending(), "the request was answered before it was queued");
    request
}

/// The reference server's databases under test: a SQLite file in `dir`, and a fresh
/// PostgreSQL schema when `SYNC_TEST_POSTGRES_URL` is set (said on stderr when not).
pub async fn server_databases(dir: &tempfile::TempDir) -> Vec<String> {
    let mut urls = vec![format!("sqlite://{}", dir.path().join("server.db").display())];
    match std::env::var("SYNC_TEST_POSTGRES_URL") {
        Ok(base) => {
            use sqlx::Connection;
            let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
            let mut conn =
                sqlx::PgConnection::connect(&base).await.unwrap_or_else(|e| panic!("{base} unreachable: {e}"));
            sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.unwrap();
            let sep = if base.contains('?') { '&' } else { '?' };
            urls.push(format!("{base}{sep}options[search_path]={schema}"));
        }
        Err(_) => eprintln!("SYNC_TEST_POSTGRES_URL is not set: the PostgreSQL server is skipped here"),
    }
    urls
}

/// The reference server on each backend (SQLite, and PostgreSQL when configured) with
/// one collection, `jobs`: readable by their technician (`assigned_to`) and by
/// dispatchers, writable by both, subscribable by technician and due date. Users `disp`
/// (a dispatcher) and `tom`, with tokens `<name>-token`.
pub async fn job_servers(dir: &tempfile::TempDir) -> Vec<sync_server::server::RunningServer> {
    use sync_server::config::{ServerConfig, token_sha256};
    let mut out = Vec::new();
    for database in server_databases(dir).await {
        let mut text = format!("database = \"{database}\"\n");
        for (name, groups) in [("disp", "[\"dispatchers\"]"), ("tom", "[]")] {
            text.push_str(&format!(
                "[[users]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\ngroups = {groups}\n",
                token_sha256(&format!("{name}-token"))
            ));
        }
        text.push_str(
            "[collections.jobs]\nread = [\"assigned_to = user\", \"user in dispatchers\"]\n\
             write = [\"user in dispatchers\", \"assigned_to = user\"]\n\
             subscription_indexes = [[\"assigned_to\", \"due\"]]\n",
        );
        let config = ServerConfig::from_toml(&text).unwrap();
        let (state, store) = sync_server::server::from_config(&config).await.unwrap();
        out.push(sync_server::server::start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap());
    }
    out
}

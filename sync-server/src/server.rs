//! Running the server: open the store a database URL names, listen, purge tombstones,
//! stop gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::events::ChangeHub;
use crate::router::{AppState, metrics_router, shared_router};
use crate::store::ServerStore;
use crate::store::postgres::PgServerStore;
use crate::store::sqlite::SqliteServerStore;
use crate::tls::TlsListener;

/// Opens the store a database URL names: `sqlite://path` (the embedded default) or
/// `postgres://...` (several nodes).
///
/// # Errors
/// [`ServerError::Config`] for a scheme this build does not serve;
/// [`ServerError::Database`] when the database cannot be opened.
pub async fn open_store(database: &str) -> Result<Arc<dyn ServerStore>, ServerError> {
    if database.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteServerStore::open(database).await?));
    }
    if database.starts_with("postgres:") || database.starts_with("postgresql:") {
        return Ok(Arc::new(PgServerStore::open(database).await?));
    }
    Err(ServerError::config(format!("database {database:?}: expected a sqlite:// or postgres:// URL")))
}

/// A server running in the background (for tests and embedding).
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// The base URL, `http://addr` (or `https://addr` when it serves TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Stops accepting requests, lets running ones finish, and waits.
    ///
    /// # Errors
    /// The server's own error, if it failed.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.map_err(|e| ServerError::Io { message: e.to_string() })?
    }
}

/// Binds `listen` and serves `state` in the background, purging tombstones older than
/// the configured retention as it goes.
///
/// # Errors
/// [`ServerError::Io`] when the address cannot be bound.
pub async fn start(
    listen: &str,
    state: AppState,
    store: Arc<dyn ServerStore>,
    retention: Duration,
) -> Result<RunningServer, ServerError> {
    let listener =
        TcpListener::bind(listen).await.map_err(|e| ServerError::Io { message: format!("bind {listen}: {e}") })?;
    let addr = listener.local_addr().map_err(|e| ServerError::Io { message: e.to_string() })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state, store, retention, async move {
        let _ = stopped.await;
    }));
    Ok(RunningServer { addr, scheme: "http", stop: Some(stop), task })
}

/// As [`start`], serving HTTPS with `tls` (from [`crate::tls::TlsFiles::server_config`]).
///
/// # Errors
/// [`ServerError::Io`] when the address cannot be bound.
pub async fn start_tls(
    listen: &str,
    state: AppState,
    store: Arc<dyn ServerStore>,
    retention: Duration,
    tls: Arc<rustls::ServerConfig>,
) -> Result<RunningServer, ServerError> {
    let tcp =
        TcpListener::bind(listen).await.map_err(|e| ServerError::Io { message: format!("bind {listen}: {e}") })?;
    let listener = TlsListener::new(tcp, tls).map_err(|e| ServerError::Io { message: e.to_string() })?;
    let addr = axum::serve::Listener::local_addr(&listener).map_err(|e| ServerError::Io { message: e.to_string() })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state, store, retention, async move {
        let _ = stopped.await;
    }));
    Ok(RunningServer { addr, scheme: "https", stop: Some(stop), task })
}

/// Serves until `shutdown` completes, then finishes in-flight requests.
///
/// # Errors
/// [`ServerError::Io`] when serving fails.
pub async fn serve<L>(
    listener: L,
    mut state: AppState,
    store: Arc<dyn ServerStore>,
    retention: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    // The node's own limits: as many open files as the system allows, connections
    // capped below that, and a tenth of them kept free of event streams.
    let open_files = crate::limits::raise_open_files_limit();
    let connections = crate::limits::connection_cap(state.config().max_connections, open_files);
    let streams = crate::limits::stream_cap(state.config().max_event_streams, connections);
    state.hub().set_max_streams(streams);
    tracing::info!(open_files, max_connections = connections, max_event_streams = streams, "limits in force");
    let listener = crate::limits::Capped::new(listener, connections);
    let notifications = state.connect_notifications().await?;
    // Open event streams end when shutdown begins; requests in flight finish.
    let hub = state.hub().clone();
    let shutdown = async move {
        shutdown.await;
        hub.close();
    };
    let state = Arc::new(state);
    let metrics = match state.config().metrics.as_ref().and_then(|m| m.listen.clone()) {
        Some(listen) => Some(serve_metrics(&listen, state.clone()).await?),
        None => None,
    };
    let purge = tokio::spawn(purge_loop(store, retention));
    let result = axum::serve(listener, shared_router(state)).with_graceful_shutdown(shutdown).await;
    purge.abort();
    if let Some(task) = metrics {
        task.abort();
    }
    if let Some(task) = notifications {
        task.abort();
    }
    result.map_err(|e| ServerError::Io { message: e.to_string() })
}

/// Serves `/metrics` alone on `listen` in the background (`[metrics] listen`).
async fn serve_metrics(listen: &str, state: Arc<AppState>) -> Result<JoinHandle<()>, ServerError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| ServerError::Io { message: format!("bind metrics listener {listen}: {e}") })?;
    let addr = listener.local_addr().map_err(|e| ServerError::Io { message: e.to_string() })?;
    tracing::info!(listen = %addr, "metrics served at /metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, metrics_router(state)).await {
            tracing::error!(error = %e, "the metrics listener failed");
        }
    }))
}

async fn purge_loop(store: Arc<dyn ServerStore>, retention: Duration) {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let Ok(retention) = chrono::Duration::from_std(retention) else { return };
        match store.purge_tombstones(chrono::Utc::now() - retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purged old tombstones"),
            Err(e) => tracing::warn!(error = %e, "tombstone purge failed"),
        }
    }
}

/// A state and store from a configuration, with a fresh change hub; the store's
/// audience keys are brought in line with the configured rules first
/// ([`ServerStore::prepare_rules`]), and its subscription indexes with the declared
/// ones ([`ServerStore::prepare_indexes`]).
///
/// # Errors
/// As [`open_store`]; [`ServerError::Database`] when the keys cannot be built.
pub async fn from_config(config: &ServerConfig) -> Result<(AppState, Arc<dyn ServerStore>), ServerError> {
    let store = open_store(&config.database).await?;
    let keyed = store.prepare_rules(&config.collections).await?;
    if keyed > 0 {
        tracing::info!(records = keyed, "sync rules changed: audience keys built again");
    }
    store.prepare_indexes(&config.collections).await?;
    let hub = ChangeHub::with_max_streams(config.max_event_streams);
    Ok((AppState::new(config.clone(), store.clone(), hub), store))
}

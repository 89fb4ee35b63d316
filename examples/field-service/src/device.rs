//! One technician's device: an engine on its own SQLite file, syncing with the server
//! over HTTP and following its change events, and the device's web page.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sync_core::{AccountId, Credentials, Engine, EngineOptions};
use sync_http::HttpTransport;
use sync_sqlite::SqliteStore;
use tokio::task::JoinHandle;

use crate::model::specs;
use crate::web;

/// A running device.
pub struct Device {
    /// Its name ("ana's phone").
    pub name: String,
    /// Its engine (cheap to clone).
    pub engine: Engine,
    /// Where its page is served.
    pub addr: SocketAddr,
    page: JoinHandle<()>,
}

impl Device {
    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the page and the engine.
    pub async fn stop(self) {
        self.page.abort();
        self.engine.shutdown().await;
    }
}

/// Opens the device of `user` (token `token`) with its store at `db`, syncing with
/// `server`, and serves its page on 127.0.0.1:`port` (0: any free port).
///
/// # Errors
/// When the store, the engine or the listener cannot start.
pub async fn open(name: &str, user: &str, token: &str, db: &Path, server: &str, port: u16) -> anyhow::Result<Device> {
    let transport = Arc::new(HttpTransport::new(server)?);
    let mut builder = Engine::builder()
        .store(Arc::new(SqliteStore::open(db).await?))
        .credentials(Credentials::new(AccountId::new(user)?, token)?)
        .transport(transport.clone())
        // A short quiet period gathers a burst of typing into one push.
        .options(EngineOptions { debounce: Duration::from_millis(150), ..EngineOptions::default() });
    for spec in specs()? {
        builder = builder.collection(spec);
    }
    let engine = builder.build().await?;
    transport.follow_events(engine.change_notifier());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let app = web::router(name.to_owned(), engine.clone());
    let page = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the device page stopped");
        }
    });
    Ok(Device { name: name.to_owned(), engine, addr, page })
}

//! `propagation`: how fast a write on one device shows on another with the default
//! options, over loopback against the reference server (SQLite), both devices following
//! the server's events; and how many requests a burst of 1,000 writes makes.
//!
//! Run with: `cargo bench -p offsync-tests --bench propagation` (`PROPAGATION_N` writes
//! measured, default 300).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "shared/mod.rs"]
mod shared;

use shared::{ms, percentile};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sync_core::protocol::{PullRequest, PullResponse, PushRequest, PushResponse};
use sync_core::{
    AccountId, CollectionSpec, Credentials, Engine, EngineOptions, Error, LocalEntity, Origin, SyncEvent, Transport,
};
use sync_http::HttpTransport;
use sync_patterns::ConflictDetection;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{from_config, start};
use sync_sqlite::SqliteStore;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Note {
    id: String,
    text: String,
}

impl LocalEntity for Note {
    const COLLECTION: &'static str = "notes";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The HTTP transport, counting pushes and pulls.
struct Counted {
    inner: Arc<HttpTransport>,
    requests: AtomicU64,
}

#[async_trait]
impl Transport for Counted {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, Error> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.push(request).await
    }
    async fn pull(&self, request: &PullRequest) -> Result<PullResponse, Error> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.pull(request).await
    }
    async fn probe(&self) -> Result<(), Error> {
        self.inner.probe().await
    }
    fn set_credentials(&self, credentials: Option<Credentials>) {
        self.inner.set_credentials(credentials);
    }
}

async fn device(url: &str, dir: &std::path::Path, name: &str) -> (Engine, Arc<Counted>) {
    let http = Arc::new(HttpTransport::new(url).unwrap());
    let counted = Arc::new(Counted { inner: http.clone(), requests: AtomicU64::new(0) });
    let engine = Engine::builder()
        .store(Arc::new(SqliteStore::open(dir.join(format!("{name}.db"))).await.unwrap()))
        .credentials(Credentials::new(AccountId::new("alice").unwrap(), "alice-token").unwrap())
        .transport(counted.clone())
        .collection(CollectionSpec::of::<Note>(ConflictDetection::new()))
        .options(EngineOptions::default())
        .build()
        .await
        .unwrap();
    http.follow_events(engine.change_notifier());
    (engine, counted)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("PROPAGATION_N").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "database = \"sqlite://{}\"\n[[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n[collections.notes]\naccess = \"owner\"\n",
        dir.path().join("server.db").display(),
        token_sha256("alice-token")
    );
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    let server = start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap();
    let (a, a_requests) = device(&server.url(), dir.path(), "a").await;
    let (b, _) = device(&server.url(), dir.path(), "b").await;
    a.sync_now().await.unwrap();
    b.sync_now().await.unwrap();
    // Let both event streams open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let notes = a.collection::<Note>().unwrap();
    let mut seen = b.events();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("n{i:05}");
        let start = Instant::now();
        notes.insert(&Note { id: id.clone(), text: "hello".into() }).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), seen.recv()).await {
                Ok(Ok(SyncEvent::RecordChanged { id: got, origin: Origin::Remote, .. })) if got.as_str() == id => break,
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                other => panic!("note {id} never reached device B: {other:?}"),
            }
        }
        times.push(start.elapsed());
        // A person's pace, and B settles between writes.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times.sort();
    println!(
        "propagation, default options, loopback: a write on A seen on B p50 {:.1} ms, p99 {:.1} ms ({n} writes, 20 ms apart)",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99))
    );

    // A burst: 1,000 single writes as fast as they go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = a_requests.requests.load(Ordering::Relaxed);
    let start = Instant::now();
    for i in 0..1000 {
        notes.insert(&Note { id: format!("burst{i:04}"), text: "burst".into() }).await.unwrap();
    }
    let mut status = a.status();
    tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| s.pending == 0)).await.unwrap().unwrap();
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!(
        "burst of 1,000 writes on A: {} push and pull requests, all sent in {:.0} ms",
        a_requests.requests.load(Ordering::Relaxed) - before,
        ms(took)
    );
    a.shutdown().await;
    b.shutdown().await;
    server.stop().await.unwrap();
}

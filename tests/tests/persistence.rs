//! What a device writes to disk: an untrusted device nothing at all, a memory-only
//! collection nothing of its own, and a policy that contradicts itself is refused at
//! `build()`. Real SQLite files, the reference server over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{WorkOrder, credentials_of, quiet, wo};
use serde::{Deserialize, Serialize};
use sync_core::{CollectionSpec, Engine, EngineBuilder, EngineOptions, Error, LocalEntity, Resolution};
use sync_http::HttpTransport;
use sync_patterns::{ConflictDetection, LastWriteWins, ReadOnly};
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{RunningServer, from_config, start};
use sync_sqlite::{SqliteDevice, SqliteStore};

/// A catalogue entry, read-only on technicians' devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: String,
    name: String,
}

impl LocalEntity for Product {
    const COLLECTION: &'static str = "products";
    fn id(&self) -> &str {
        &self.id
    }
}

const MARKER: &str = "CATALOGUE-MARKER-51c2";

async fn server(dir: &Path) -> RunningServer {
    let mut text = format!("database = \"sqlite://{}\"\n", dir.join("server.db").display());
    for (user, role) in [("alice", "user"), ("bob", "user"), ("admin", "admin")] {
        text.push_str(&format!(
            "[[users]]\nname = \"{user}\"\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\n",
            token_sha256(&format!("{user}-token"))
        ));
    }
    text.push_str("[collections.work_orders]\naccess = \"owner\"\n[collections.products]\naccess = \"read_only\"\n");
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap()
}

fn technician(url: &str, products: CollectionSpec) -> EngineBuilder {
    Engine::builder()
        .transport(Arc::new(HttpTransport::new(url).unwrap()))
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .collection(products)
        .options(quiet())
}

/// The admin puts a few products in the catalogue.
async fn seed_catalogue(url: &str, dir: &Path) {
    let admin = Engine::builder()
        .store(Arc::new(SqliteStore::open(dir.join("admin.db")).await.unwrap()))
        .credentials(credentials_of("admin"))
        .transport(Arc::new(HttpTransport::new(url).unwrap()))
        .collection(CollectionSpec::of::<Product>(LastWriteWins))
        .options(quiet())
        .build()
        .await
        .unwrap();
    let products: Vec<_> =
        (0..5).map(|i| Product { id: format!("p{i}"), name: format!("{MARKER} valve {i}") }).collect();
    admin.collection::<Product>().unwrap().insert_many(&products).await.unwrap();
    admin.sync_now().await.unwrap();
    admin.shutdown().await;
}

/// Every file the process has open, by path (from /proc/self/fd).
fn open_files() -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .map(|entries| entries.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).collect())
        .unwrap_or_default()
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

/// No open file lives in `dir`, and none is one of SQLite's temporary files (which it
/// unlinks at once, so they show as `etilqs_...` or `(deleted)`).
fn assert_no_open_files_in(dir: &Path, when: &str) {
    let open = open_files();
    assert!(!open.is_empty(), "/proc/self/fd could not be read: this check would prove nothing");
    for file in open {
        let shown = file.to_string_lossy();
        assert!(!file.starts_with(dir), "{when}: the process holds {shown} in the device directory");
        assert!(!shown.contains("etilqs"), "{when}: SQLite holds a temporary file {shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_device_writes_nothing_to_disk_through_a_whole_session() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = server(server_dir.path()).await;
    let url = server.url();
    seed_catalogue(&url, server_dir.path()).await;
    let device_dir = tempfile::tempdir().unwrap();
    let device = Arc::new(SqliteDevice::new(device_dir.path()));

    // Everything configured to persist, but the device is not trusted.
    let engine = technician(&url, CollectionSpec::of::<Product>(ReadOnly))
        .device(device.clone())
        .credentials(credentials_of("alice"))
        .trusted_device(false)
        .options(EngineOptions { start_online: false, ..quiet() })
        .build()
        .await
        .unwrap();
    let orders = engine.collection::<WorkOrder>().unwrap();
    // Offline: writes, an update, a delete, a big bulk insert (sorts and indexes).
    let bulk: Vec<_> = (0..2000).map(|i| wo(&format!("bulk-{i}"), "offline", i)).collect();
    orders.insert_many(&bulk).await.unwrap();
    orders.insert(&wo("a", "first", 1)).await.unwrap();
    orders.update(&wo("a", "edited", 2)).await.unwrap();
    orders.delete("bulk-7").await.unwrap();
    let sorted = orders.query().order_by("title", sync_core::Order::Desc).fetch().await.unwrap();
    assert_eq!(sorted.len(), 2000);
    assert_no_open_files_in(device_dir.path(), "offline");

    // Online: push, pull the catalogue, meet and settle a conflict.
    engine.set_online(true);
    engine.sync_now().await.unwrap();
    assert_eq!(engine.collection::<Product>().unwrap().list().await.unwrap().len(), 5);
    let other_dir = tempfile::tempdir().unwrap();
    let other = technician(&url, CollectionSpec::of::<Product>(ReadOnly))
        .store(Arc::new(SqliteStore::open(other_dir.path().join("other.db")).await.unwrap()))
        .credentials(credentials_of("alice"))
        .build()
        .await
        .unwrap();
    other.sync_now().await.unwrap();
    other.collection::<WorkOrder>().unwrap().update(&wo("a", "elsewhere", 3)).await.unwrap();
    other.sync_now().await.unwrap();
    orders.update(&wo("a", "here", 4)).await.unwrap();
    engine.sync_now().await.unwrap();
    for conflict in engine.conflicts().await.unwrap() {
        engine.resolve(conflict.collection.as_str(), conflict.record_id.as_str(), Resolution::KeepLocal).await.unwrap();
    }
    engine.sync_now().await.unwrap();
    assert_eq!(engine.status().borrow().pending, 0);
    assert_no_open_files_in(device_dir.path(), "online");
    assert!(entries(device_dir.path()).is_empty(), "the device directory holds {:?}", entries(device_dir.path()));

    engine.sign_out(sync_core::SignOut::Keep).await.unwrap();
    other.shutdown().await;
    assert!(entries(device_dir.path()).is_empty(), "after sign-out: {:?}", entries(device_dir.path()));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_untrusted_device_refuses_a_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("app.db")).await.unwrap());
    let built = technician("http://127.0.0.1:9", CollectionSpec::of::<Product>(ReadOnly))
        .store(store)
        .trusted_device(false)
        .build()
        .await;
    assert!(matches!(built, Err(Error::Config { .. })), "{:?}", built.err());
    // An in-memory store is what it takes.
    let memory = Arc::new(SqliteStore::in_memory().await.unwrap());
    let built = technician("http://127.0.0.1:9", CollectionSpec::of::<Product>(ReadOnly))
        .store(memory)
        .trusted_device(false)
        .build()
        .await;
    assert!(built.is_ok(), "{:?}", built.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_only_collection_is_empty_after_a_restart_and_pulled_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let url = server.url();
    seed_catalogue(&url, dir.path()).await;
    let path = dir.path().join("technician.db");
    let open = || async {
        technician(&url, CollectionSpec::of::<Product>(ReadOnly).keep_in_memory())
            .store(Arc::new(SqliteStore::open(&path).await.unwrap()))
            .credentials(credentials_of("alice"))
            .build()
            .await
            .unwrap()
    };
    let engine = open().await;
    engine.collection::<WorkOrder>().unwrap().insert(&wo("w1", "kept on disk", 1)).await.unwrap();
    engine.sync_now().await.unwrap();
    assert_eq!(engine.collection::<Product>().unwrap().list().await.unwrap().len(), 5);
    // The catalogue never reaches the store's files.
    for suffix in ["", "-wal", "-shm"] {
        let bytes = std::fs::read(format!("{}{suffix}", path.display())).unwrap_or_default();
        assert!(!bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()), "the catalogue is in {suffix:?}");
    }
    engine.shutdown().await;

    // Restarted offline: the work order is there, the catalogue is not.
    let engine = open().await;
    engine.set_online(false);
    assert_eq!(engine.collection::<WorkOrder>().unwrap().list().await.unwrap().len(), 1);
    assert!(engine.collection::<Product>().unwrap().list().await.unwrap().is_empty());
    engine.set_online(true);
    engine.sync_now().await.unwrap();
    assert_eq!(engine.collection::<Product>().unwrap().list().await.unwrap().len(), 5, "pulled again");
    engine.shutdown().await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_policy_that_contradicts_itself_names_the_collections_at_build() {
    let dir = tempfile::tempdir().unwrap();
    // Work orders are written here, so a persisted outbox would reference them.
    let built = technician("http://127.0.0.1:9", CollectionSpec::of::<Product>(ReadOnly))
        .collection(CollectionSpec::of::<Note>(LastWriteWins).keep_in_memory())
        .store(Arc::new(SqliteStore::open(dir.path().join("a.db")).await.unwrap()))
        .build()
        .await;
    let message = built.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("notes") && message.contains("outbox"), "{message}");
    // An outbox in memory cannot serve the persisted work orders.
    let built = technician("http://127.0.0.1:9", CollectionSpec::of::<Product>(ReadOnly))
        .store(Arc::new(SqliteStore::open(dir.path().join("b.db")).await.unwrap()))
        .persist_outbox(false)
        .build()
        .await;
    let message = built.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("work_orders") && !message.contains("products"), "{message}");
    // An untrusted device keeping a token contradicts itself.
    let built = technician("http://127.0.0.1:9", CollectionSpec::of::<Product>(ReadOnly))
        .store(Arc::new(SqliteStore::in_memory().await.unwrap()))
        .trusted_device(false)
        .persist_token(true)
        .build()
        .await;
    assert!(matches!(built, Err(Error::Config { .. })), "{:?}", built.err());
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    id: String,
}

impl LocalEntity for Note {
    const COLLECTION: &'static str = "notes";
    fn id(&self) -> &str {
        &self.id
    }
}

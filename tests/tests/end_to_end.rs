//! Engine + SqliteStore + HttpTransport + the reference server on 127.0.0.1: two
//! devices write offline, reconnect, meet a conflict, resolve it and converge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{WorkOrder, quiet, wo};
use sync_core::{CollectionSpec, Engine, EngineOptions, Error, Resolution, SyncEvent};
use sync_patterns::ConflictDetection;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{RunningServer, from_config, start};
use sync_sqlite::SqliteStore;

/// A fresh PostgreSQL schema when `SYNC_TEST_POSTGRES_URL` is set.
async fn pg_url() -> Option<String> {
    use sqlx::Connection;
    let base = std::env::var("SYNC_TEST_POSTGRES_URL").ok()?;
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap_or_else(|e| panic!("{base} unreachable: {e}"));
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options[search_path]={schema}"))
}

/// The reference server on each backend under test: SQLite, and PostgreSQL when asked.
async fn servers(dir: &tempfile::TempDir) -> Vec<RunningServer> {
    let mut urls = vec![format!("sqlite://{}", dir.path().join("server.db").display())];
    urls.extend(pg_url().await);
    let mut out = Vec::new();
    for database in urls {
        let text = format!(
            "database = \"{database}\"\n[[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n[collections.work_orders]\naccess = \"owner\"\n",
            token_sha256("alice-token")
        );
        let config = ServerConfig::from_toml(&text).unwrap();
        let (state, store) = from_config(&config).await.unwrap();
        out.push(start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap());
    }
    out
}

async fn device(dir: &tempfile::TempDir, name: &str, url: &str, options: EngineOptions) -> Engine {
    let store = SqliteStore::open(dir.path().join(format!("{name}.db"))).await.unwrap();
    let transport = Arc::new(common::http_as(url, "alice"));
    Engine::builder()
        .store(Arc::new(store))
        .transport(transport)
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .options(options)
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_write_offline_reconnect_resolve_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    for server in servers(&dir).await {
        two_devices_converge(&dir, server).await;
    }
}

async fn two_devices_converge(dir: &tempfile::TempDir, server: RunningServer) {
    let dir = tempfile::tempdir_in(dir.path()).unwrap();
    let phone = device(&dir, "phone", &server.url(), quiet()).await;
    let tablet = device(&dir, "tablet", &server.url(), quiet()).await;
    let phone_orders = phone.collection::<WorkOrder>().unwrap();
    let tablet_orders = tablet.collection::<WorkOrder>().unwrap();

    phone_orders.insert(&wo("shared", "inspect pump", 1)).await.unwrap();
    phone.sync_now().await.unwrap();
    tablet.sync_now().await.unwrap();
    assert_eq!(tablet_orders.get("shared").await.unwrap(), Some(wo("shared", "inspect pump", 1)));

    // Both go offline and edit the same record; each also creates its own.
    phone.set_online(false);
    tablet.set_online(false);
    phone_orders.update(&wo("shared", "pump replaced", 2)).await.unwrap();
    phone_orders.insert(&wo("from_phone", "new", 1)).await.unwrap();
    tablet_orders.update(&wo("shared", "pump fine", 3)).await.unwrap();
    tablet_orders.insert(&wo("from_tablet", "new", 1)).await.unwrap();
    assert!(matches!(phone.sync_now().await, Err(Error::Unreachable { .. })));

    // The phone comes back first and wins the race; the tablet meets a conflict.
    phone.set_online(true);
    phone.sync_now().await.unwrap();
    // Going online starts a reconnect cycle by itself; sync_now runs after (or is) it,
    // so the conflict is read from the events and the store, not from one report.
    let mut events = tablet.events();
    tablet.set_online(true);
    tablet.sync_now().await.unwrap();
    common::next_event(&mut events, |e| matches!(e, SyncEvent::ConflictDetected { .. }).then_some(())).await;
    let conflicts = tablet.conflicts().await.unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].local.as_ref().unwrap()["title"], "pump fine");
    assert_eq!(conflicts[0].server.as_ref().unwrap().data.as_ref().unwrap()["title"], "pump replaced");
    assert_eq!(conflicts[0].base.as_ref().unwrap()["title"], "inspect pump");
    assert_eq!(tablet_orders.get("from_phone").await.unwrap(), Some(wo("from_phone", "new", 1)), "the rest synced");

    // The user merges; both devices converge on the server's state.
    let merged = serde_json::json!({"id": "shared", "title": "pump replaced, runs fine", "n": 4});
    tablet.resolve("work_orders", "shared", Resolution::Merged(merged)).await.unwrap();
    tablet.sync_now().await.unwrap();
    phone.sync_now().await.unwrap();
    let mut on_phone = phone_orders.list().await.unwrap();
    let mut on_tablet = tablet_orders.list().await.unwrap();
    on_phone.sort_by(|a, b| a.id.cmp(&b.id));
    on_tablet.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(on_phone, on_tablet);
    assert_eq!(on_phone.len(), 3);
    assert_eq!(phone_orders.get("shared").await.unwrap(), Some(wo("shared", "pump replaced, runs fine", 4)));
    assert!(tablet.conflicts().await.unwrap().is_empty());
    assert_eq!(tablet.status().borrow().pending, 0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_change_notification_makes_the_other_device_pull() {
    let dir = tempfile::tempdir().unwrap();
    let server = servers(&dir).await.remove(0);
    let writer = device(&dir, "writer", &server.url(), quiet()).await;
    let reader = device(&dir, "reader", &server.url(), quiet()).await;
    let transport = Arc::new(common::http_as(&server.url(), "alice"));
    let follower = transport.follow_events(reader.change_notifier());
    let mut events = reader.events();
    let writer_orders = writer.collection::<WorkOrder>().unwrap();
    let reader_orders = reader.collection::<WorkOrder>().unwrap();
    // The reader never syncs by itself (no start, interval or write triggers): whatever
    // it pulls, a `change` event made it pull. The stream may open after the first write,
    // so the writer writes until the reader has heard of one (a bounded number of times).
    let mut heard = false;
    for n in 0..20 {
        writer_orders.insert(&wo(&format!("w{n}"), "from the writer", n)).await.unwrap();
        writer.sync_now().await.unwrap();
        let pulled = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            common::next_event(&mut events, |e| match e {
                SyncEvent::CycleCompleted { report } if report.pulled > 0 => Some(()),
                _ => None,
            }),
        )
        .await;
        if pulled.is_ok() {
            heard = true;
            break;
        }
    }
    assert!(heard, "the reader never pulled after a change notification");
    assert!(reader_orders.get("w0").await.unwrap().is_some());
    follower.abort();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_batch_larger_than_the_server_allows_is_split_not_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "database = \"sqlite://{}\"\nmax_batch = 10\n[[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n[collections.work_orders]\naccess = \"owner\"\n",
        dir.path().join("server.db").display(),
        token_sha256("alice-token")
    );
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    let server = start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap();
    let options = EngineOptions { push_batch: 64, ..quiet() };
    let engine = device(&dir, "phone", &server.url(), options).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    let items: Vec<_> = (0..100).map(|i| wo(&format!("r{i:03}"), "x", i)).collect();
    orders.insert_many(&items).await.unwrap();
    let report = engine.sync_now().await.unwrap();
    assert_eq!(report.pushed, 100, "every mutation went out in batches the server accepts");
    assert_eq!(engine.status().borrow().pending, 0);
    server.stop().await.unwrap();
}

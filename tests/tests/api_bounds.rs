//! Compile-time checks that handles, futures and streams can cross tasks and threads.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::WorkOrder;
use sync_core::{Collection, Engine, LocalStore, SyncPattern, Transport, WatchStream};
use sync_sqlite::{SqliteStore, SqliteStoreOptions};

fn send_sync_static<T: Send + Sync + 'static>() {}
fn send_static<T: Send + 'static>(_: &T) {}

/// Never called: it only has to compile.
#[allow(dead_code)]
fn futures_and_streams_are_send(engine: Engine, orders: Collection<WorkOrder>) {
    // Each future runs inside a 'static task that owns a clone of the handle.
    let e = engine.clone();
    send_static(&async move { e.sync_now().await });
    let e = engine.clone();
    send_static(&async move { e.sync_unit("all", Default::default()).await });
    let e = engine.clone();
    send_static(&async move { e.conflicts().await });
    send_static(&engine.clone().shutdown());
    let e = engine.clone();
    send_static(&async move { e.set_credentials(common::credentials_of("alice")).await });
    send_static(&engine.clone().sign_out(sync_core::SignOut::Keep));
    send_static(&engine.clone().wipe());
    let o = orders.clone();
    send_static(&async move { o.insert(&common::wo("a", "b", 1)).await });
    send_static(&async move { orders.list().await });
    send_static(&engine.events());
    send_static(&engine.status());
}

/// Never called: the constructors' futures can be awaited inside `tokio::spawn` (an app
/// opens its store and builds its engine in a task of its own).
#[allow(dead_code)]
fn constructors_are_send(store: SqliteStore, transport: Arc<dyn Transport>) {
    send_static(&async { SqliteStore::open("app.db").await });
    send_static(&async { SqliteStore::open_with("app.db", SqliteStoreOptions::default()).await });
    send_static(&async { SqliteStore::in_memory().await });
    let s = store.clone();
    send_static(&async move { s.close().await });
    let device = sync_sqlite::SqliteDevice::new("device");
    let d = device.clone();
    send_static(&async move { d.open_store(&sync_core::AccountId::new("alice").unwrap()).await });
    send_static(&async move {
        use sync_core::DeviceStores;
        device.accounts().await
    });
    send_static(&async move {
        Engine::builder()
            .store(Arc::new(store))
            .transport(transport)
            .collection(sync_core::CollectionSpec::of::<WorkOrder>(sync_patterns::ConflictDetection::new()))
            .build()
            .await
    });
}

#[tokio::test]
async fn a_store_opens_and_an_engine_builds_inside_spawned_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let store = tokio::spawn(async move { SqliteStore::open(path).await }).await.unwrap().unwrap();
    let memory = tokio::spawn(SqliteStore::in_memory()).await.unwrap().unwrap();
    let engine = tokio::spawn(async move {
        Engine::builder()
            .store(Arc::new(store))
            .transport(Arc::new(sync_testkit::MemoryServer::new()))
            .collection(sync_core::CollectionSpec::of::<WorkOrder>(sync_patterns::ConflictDetection::new()))
            .options(common::offline())
            .build()
            .await
    })
    .await
    .unwrap()
    .unwrap();
    engine.collection::<WorkOrder>().unwrap().insert(&common::wo("a", "b", 1)).await.unwrap();
    drop(memory);
}

#[test]
fn handles_are_send_sync_and_traits_are_object_safe() {
    send_sync_static::<Engine>();
    send_sync_static::<Collection<WorkOrder>>();
    send_sync_static::<Arc<dyn LocalStore>>();
    send_sync_static::<Arc<dyn Transport>>();
    send_sync_static::<Arc<dyn SyncPattern>>();
    send_sync_static::<Arc<dyn sync_core::ConflictResolver>>();
    send_sync_static::<Arc<dyn sync_core::ServerMapping>>();
    send_sync_static::<Arc<dyn sync_core::DeviceStores>>();
    send_sync_static::<sync_sqlite::SqliteDevice>();
    send_sync_static::<sync_core::Error>();
    fn stream_is_send<T: Send + 'static>() {}
    stream_is_send::<WatchStream<WorkOrder>>();
}

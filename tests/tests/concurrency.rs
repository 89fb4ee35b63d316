//! Two engines on one database file, writing at once, never see 'database is locked'.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{WorkOrder, engine_at, offline, wo};
use sync_core::LocalStore;
use sync_sqlite::SqliteStore;
use sync_testkit::MemoryServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_file_write_concurrently_without_lock_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let server = Arc::new(MemoryServer::new());
    let a = engine_at(&path, &server, offline()).await;
    let b = engine_at(&path, &server, offline()).await;
    let mut tasks = Vec::new();
    for (name, engine) in [("a", a.clone()), ("b", b.clone())] {
        let orders = engine.collection::<WorkOrder>().unwrap();
        tasks.push(tokio::spawn(async move {
            for i in 0..300 {
                orders.insert(&wo(&format!("{name}{i}"), "x", i)).await?;
                if i % 50 == 0 {
                    let many: Vec<_> = (0..100).map(|j| wo(&format!("{name}{i}-{j}"), "bulk", j)).collect();
                    orders.insert_many(&many).await?;
                }
                if i % 3 == 0 {
                    orders.update(&wo(&format!("{name}{i}"), "edited", i)).await?;
                }
            }
            Ok::<_, sync_core::Error>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let total = a.collection::<WorkOrder>().unwrap().list().await.unwrap().len();
    assert_eq!(total, 2 * (300 + 6 * 100));
    assert_eq!(store.outbox().await.unwrap().len(), total, "updates folded into their unsent creates");
}

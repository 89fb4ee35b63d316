//! `SqliteStore`, on a file and in memory, through the store conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use sync_core::LocalStore;
use sync_sqlite::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_on_a_file_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = sync_testkit::conformance::run(|| {
        let path = dir.path().join(format!("store-{}.db", next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        async move { Arc::new(SqliteStore::open(path).await.unwrap()) as Arc<dyn LocalStore> }
    })
    .await;
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_in_memory_conforms() {
    let failures = sync_testkit::conformance::run(|| async {
        Arc::new(SqliteStore::in_memory().await.unwrap()) as Arc<dyn LocalStore>
    })
    .await;
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_suite_names_every_case_once() {
    let names: Vec<_> = sync_testkit::conformance::cases().iter().map(|c| c.name).collect();
    let unique: std::collections::BTreeSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len());
    assert!(names.len() >= 9, "{names:?}");
}

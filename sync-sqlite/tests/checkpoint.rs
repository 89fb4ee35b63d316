//! The write-ahead log is copied into the database file in the background, shortly
//! after writes, not inside the commit that crosses SQLite's 1,000-page mark (which
//! made one local write in a few hundred ten times slower; see BENCHMARKS.md,
//! local_query).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chrono::Utc;
use sync_core::store::{JsonObject, LocalWrite, WriteKind};
use sync_core::{CollectionName, LocalStore, MutationId, RecordId};
use sync_sqlite::SqliteStore;

fn size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_the_database_file_without_a_checkpoint_in_any_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let collection = CollectionName::new("notes").unwrap();
    let empty = size(&path);
    // About 1.6 MB in 800 commits: some 4,000 pages of log, under the writer's own
    // backstop (10,000 pages), so only the background checkpointer can move them.
    let text = "x".repeat(1_000);
    for i in 0..800 {
        let data = JsonObject::from_serialize(&serde_json::json!({ "id": format!("n{i}"), "text": text })).unwrap();
        store
            .write(LocalWrite {
                mutation_id: MutationId::generate(),
                collection: collection.clone(),
                record_id: Some(RecordId::new(format!("n{i}")).unwrap()),
                kind: WriteKind::Insert { data },
                versioned: true,
                at: Utc::now(),
            })
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while size(&path) < empty + 1_000_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        size(&path) >= empty + 1_000_000,
        "the database file held {} bytes (empty: {empty}) 10 s after 800 writes: the log was not copied",
        size(&path)
    );
    assert_eq!(store.counts().await.unwrap().pending, 800);
    store.close().await;
    let wal = dir.path().join("app.db-wal");
    assert!(!wal.exists() || size(&wal) == 0, "a closed store is one file");
}

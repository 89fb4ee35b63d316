//! Store files the store did not expect: a newer offsync's schema, a file that is not a
//! database. Each is a typed error, and the file is left as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sqlx::Connection;
use sync_core::{Error, StorageErrorKind};
use sync_sqlite::SqliteStore;

/// Each of the store's files that exists, with a digest of its bytes.
fn bytes_of(path: &std::path::Path) -> Vec<(String, u64)> {
    use std::hash::{Hash, Hasher};
    ["", "-wal", "-shm"]
        .iter()
        .map(|s| format!("{}{s}", path.display()))
        .filter(|p| std::path::Path::new(p).exists())
        .map(|p| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&p).unwrap().hash(&mut hasher);
            (p, hasher.finish())
        })
        .collect()
}

#[tokio::test]
async fn a_store_from_a_newer_offsync_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    SqliteStore::open(&path).await.unwrap().close().await;
    // A later release added schema step 9999.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', 1, x'00', 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let before = bytes_of(&path);
    let opened = SqliteStore::open(&path).await;
    assert!(
        matches!(&opened, Err(Error::Storage { kind: StorageErrorKind::Incompatible, .. })),
        "{:?}",
        opened.as_ref().err()
    );
    assert_eq!(bytes_of(&path), before, "the refused open changed the file");
}

#[tokio::test]
async fn a_file_that_is_not_a_store_is_a_typed_error_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "not a database at all, just the app's notes ".repeat(100)).unwrap();
    let before = bytes_of(&path);
    let opened = SqliteStore::open(&path).await;
    assert!(matches!(opened, Err(Error::EncryptionKey { .. } | Error::Storage { .. })), "{:?}", opened.err());
    assert_eq!(bytes_of(&path), before);
}

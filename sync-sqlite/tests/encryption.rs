//! Encryption at rest, on real store files: what reaches the disk, wrong keys, rekey.
//! With the `encryption` feature these run on SQLCipher; without it they check that a
//! key is refused instead of silently writing a plain file, and say that the rest was
//! not run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use sync_core::store::{JsonObject, LocalStore, LocalWrite, WriteKind};
use sync_core::{CollectionName, Error, MutationId, RecordId};
use sync_sqlite::{EncryptionKey, SqliteStore, SqliteStoreOptions};

/// Text that must not appear in any byte of an encrypted store's files.
const MARKER: &str = "PLAINTEXT-MARKER-7f3a9c";

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::raw(&[byte; 32]).unwrap()
}

fn keyed(key: EncryptionKey) -> SqliteStoreOptions {
    SqliteStoreOptions { encryption: Some(key), ..SqliteStoreOptions::default() }
}

fn write(n: usize) -> LocalWrite {
    let data = JsonObject::from_serialize(&serde_json::json!({"note": format!("{MARKER} record {n}")})).unwrap();
    LocalWrite {
        collection: CollectionName::new("notes").unwrap(),
        record_id: Some(RecordId::new(format!("r{n}")).unwrap()),
        kind: WriteKind::Insert { data },
        mutation_id: MutationId::generate(),
        versioned: true,
        at: chrono::Utc::now(),
    }
}

/// Every byte of the store's files (database, -wal, -shm) that exist now.
fn store_bytes(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", path.display())))
        .filter(|file| file.exists())
        .map(|file| {
            let bytes = std::fs::read(&file).unwrap();
            (file, bytes)
        })
        .collect()
}

#[cfg(feature = "encryption")]
/// Each existing file of the store with a digest of its bytes, for "nothing changed".
fn fingerprint(path: &Path) -> Vec<(PathBuf, u64)> {
    use std::hash::{Hash, Hasher};
    store_bytes(path)
        .into_iter()
        .map(|(file, bytes)| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            (file, hasher.finish())
        })
        .collect()
}

fn holds_marker(bytes: &[u8]) -> bool {
    bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes())
}

/// Writes records carrying the marker (one at a time and in bulk), leaving them in the
/// WAL (no checkpoint) and queued in the outbox, and returns the store still open.
async fn fill(path: &Path, options: SqliteStoreOptions) -> SqliteStore {
    let store = SqliteStore::open_with(path, options).await.unwrap();
    for n in 0..20 {
        store.write(write(n)).await.unwrap();
    }
    store.write_many((20..520).map(write).collect()).await.unwrap();
    store
}

#[cfg(feature = "encryption")]
mod with_sqlcipher {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn no_byte_of_an_encrypted_store_shows_the_data_and_a_plain_store_does() {
        let dir = tempfile::tempdir().unwrap();
        // The control: without a key, the marker is on disk (so this test can fail).
        let plain_path = dir.path().join("plain.db");
        let plain = fill(&plain_path, SqliteStoreOptions::default()).await;
        assert!(
            store_bytes(&plain_path).iter().any(|(_, bytes)| holds_marker(bytes)),
            "the control store does not show the marker: the check below proves nothing"
        );
        plain.close().await;

        let path = dir.path().join("secret.db");
        let store = fill(&path, keyed(key(1))).await;
        // While open (data in the WAL and its index) and after closing (checkpointed).
        let open_files = store_bytes(&path);
        assert!(open_files.iter().any(|(f, _)| f.to_string_lossy().ends_with("-wal")), "no WAL to check");
        for (file, bytes) in open_files {
            assert!(!holds_marker(&bytes), "{} shows the plaintext", file.display());
        }
        assert_eq!(store.outbox().await.unwrap().len(), 520);
        store.close().await;
        for (file, bytes) in store_bytes(&path) {
            assert!(!holds_marker(&bytes), "{} shows the plaintext after close", file.display());
            assert!(!bytes.starts_with(b"SQLite format 3"), "{} has a plain SQLite header", file.display());
        }
        // And it reads back with its key.
        let store = SqliteStore::open_with(&path, keyed(key(1))).await.unwrap();
        let first = store.get(&CollectionName::new("notes").unwrap(), &RecordId::new("r0").unwrap()).await.unwrap();
        assert!(first.unwrap().data["note"].as_str().unwrap_or_default().contains(MARKER));
        store.close().await;
    }

    #[tokio::test]
    async fn a_wrong_key_or_no_key_is_a_typed_error_and_changes_nothing_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.db");
        fill(&path, keyed(key(1))).await.close().await;
        let before = fingerprint(&path);
        for (name, options) in [
            ("another key", keyed(key(2))),
            ("a passphrase", keyed(EncryptionKey::passphrase("guess").unwrap())),
            ("no key", SqliteStoreOptions::default()),
        ] {
            let opened = SqliteStore::open_with(&path, options).await;
            assert!(matches!(opened, Err(Error::EncryptionKey { .. })), "{name}: {:?}", opened.err());
            assert_eq!(fingerprint(&path), before, "{name}: the refused open changed the files");
        }
        // A plain store opened with a key: refused too, and left as it was.
        let plain_path = dir.path().join("plain.db");
        fill(&plain_path, SqliteStoreOptions::default()).await.close().await;
        let plain_before = fingerprint(&plain_path);
        let opened = SqliteStore::open_with(&plain_path, keyed(key(1))).await;
        assert!(matches!(opened, Err(Error::EncryptionKey { .. })), "{:?}", opened.err());
        assert_eq!(fingerprint(&plain_path), plain_before);
    }

    #[tokio::test]
    async fn rekey_changes_the_key_and_keeps_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.db");
        fill(&path, keyed(key(1))).await.close().await;
        // The wrong old key changes nothing.
        let wrong = SqliteStore::rekey(&path, &key(9), &key(2)).await;
        assert!(matches!(wrong, Err(Error::EncryptionKey { .. })), "{wrong:?}");
        // While the store is open, the rekey waits its turn and then gives up: busy.
        let open = SqliteStore::open_with(&path, keyed(key(1))).await.unwrap();
        let busy = SqliteStore::rekey(&path, &key(1), &key(2)).await;
        assert!(matches!(busy, Err(Error::Storage { .. })), "{busy:?}");
        open.close().await;

        SqliteStore::rekey(&path, &key(1), &key(2)).await.unwrap();
        let old = SqliteStore::open_with(&path, keyed(key(1))).await;
        assert!(matches!(old, Err(Error::EncryptionKey { .. })), "the old key still opens it");
        let store = SqliteStore::open_with(&path, keyed(key(2))).await.unwrap();
        assert_eq!(store.outbox().await.unwrap().len(), 520);
        store.write(write(9999)).await.unwrap();
        store.close().await;
        for (file, bytes) in store_bytes(&path) {
            assert!(!holds_marker(&bytes), "{} shows the plaintext after rekey", file.display());
        }
    }

    #[tokio::test]
    async fn sqlx_itself_runs_on_sqlcipher_so_the_build_has_one_sqlite() {
        // Any SQLite connection sqlx makes in this build (the server's too) is SQLCipher:
        // cargo unified libsqlite3-sys on its SQLCipher variant.
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let version: Option<String> =
            sqlx::query_scalar("PRAGMA cipher_version").fetch_optional(&mut conn).await.unwrap();
        assert!(version.is_some_and(|v| !v.is_empty()), "sqlx's SQLite is not SQLCipher");
        let store = Arc::new(SqliteStore::in_memory().await.unwrap());
        assert!(store.outbox().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_device_keeps_every_account_s_store_encrypted_and_counts_them_with_the_key() {
        use sync_core::{AccountId, DeviceStores};
        let dir = tempfile::tempdir().unwrap();
        let device = sync_sqlite::SqliteDevice::with_options(dir.path(), keyed(key(5)));
        let alice = AccountId::new("alice").unwrap();
        let store = device.open_store(&alice).await.unwrap();
        for n in 0..3 {
            store.write(write(n)).await.unwrap();
        }
        let path = device.store_path(&alice);
        for (file, bytes) in store_bytes(&path) {
            assert!(!holds_marker(&bytes), "{} shows the plaintext", file.display());
        }
        store.close().await;
        let accounts = device.accounts().await.unwrap();
        assert_eq!(accounts.len(), 1);
        assert_eq!((accounts[0].account.as_str(), accounts[0].counts.pending), ("alice", 3));
        // The same directory read with another key: a typed error, nothing changed.
        let before = fingerprint(&path);
        let other = sync_sqlite::SqliteDevice::with_options(dir.path(), keyed(key(6)));
        assert!(matches!(other.accounts().await, Err(Error::EncryptionKey { .. })));
        assert!(matches!(other.open_store(&alice).await, Err(Error::EncryptionKey { .. })));
        assert_eq!(fingerprint(&path), before);
    }
}

#[cfg(not(feature = "encryption"))]
#[tokio::test]
async fn without_sqlcipher_a_key_is_refused_and_no_file_is_written() {
    eprintln!(
        "NOTE: the encryption tests proper need SQLCipher and did not run here; \
         run `cargo test -p sync-sqlite --features encryption` (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.db");
    let opened = SqliteStore::open_with(&path, keyed(key(1))).await;
    assert!(matches!(opened, Err(Error::EncryptionKey { .. })), "{:?}", opened.err());
    assert!(store_bytes(&path).is_empty(), "a plain file was written although encryption was asked for");
    let rekey = SqliteStore::rekey(&path, &key(1), &key(2)).await;
    assert!(matches!(rekey, Err(Error::EncryptionKey { .. })), "{rekey:?}");
    // The control for the disk check: a plain store does show the marker.
    let plain = fill(&dir.path().join("plain.db"), SqliteStoreOptions::default()).await;
    assert!(store_bytes(&dir.path().join("plain.db")).iter().any(|(_, b)| holds_marker(b)));
    plain.close().await;
}

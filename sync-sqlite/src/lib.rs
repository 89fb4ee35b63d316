//! The SQLite local store for offsync, on sqlx: records with their sync metadata, the
//! persisted outbox, cursors, conflicts and parked mutations, behind sync-core's
//! [`LocalStore`](sync_core::LocalStore) trait.
//!
//! - A local write is one `INSERT` into a view whose `INSTEAD OF` triggers write the
//!   record and its outbox entry (with coalescing) in one atomic statement: one hop to
//!   SQLite per write.
//! - Multi-statement transactions begin with `BEGIN IMMEDIATE`, so they never fail while
//!   upgrading a read lock to a write lock ('database is locked'); the busy timeout waits
//!   for other writers, such as a second engine on the same file.
//! - Each pulled page is applied in one transaction together with its cursor.
//!
//! ```
//! use sync_sqlite::SqliteStore;
//!
//! # async fn demo() -> Result<(), sync_core::Error> {
//! let dir = tempfile::tempdir().map_err(|e| sync_core::Error::Config { message: e.to_string() })?;
//! let store = SqliteStore::open(dir.path().join("app.db")).await?;   // WAL, migrated
//! let memory = SqliteStore::in_memory().await?;                       // nothing on disk
//! # let _ = (store, memory);
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```

mod codec;
mod conflicts;
mod errors;
mod pull;
mod push;
mod reads;
mod store_impl;
mod writes;

use std::path::Path;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sync_core::Error;

use crate::errors::storage;

/// How hard SQLite works to keep the last commits across a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode: every commit survives an app crash; the last
    /// commits before a power loss may be lost. The usual choice on devices.
    Normal,
    /// `synchronous=FULL`: every commit also survives a power loss, at one fsync per commit.
    Full,
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct SqliteStoreOptions {
    /// How long a writer waits for another writer's lock before failing with
    /// [`sync_core::StorageErrorKind::Busy`].
    pub busy_timeout: Duration,
    /// Connections for reads (file stores only; writes use one connection).
    pub read_connections: u32,
    /// Crash and power-loss durability.
    pub durability: Durability,
}

impl Default for SqliteStoreOptions {
    fn default() -> Self {
        Self { busy_timeout: Duration::from_secs(10), read_connections: 4, durability: Durability::Normal }
    }
}

/// The SQLite local store. Cheap to clone (pools are shared).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// One connection: writes of this store never contend with each other.
    writer: SqlitePool,
    /// Connections for reads (the writer pool itself for in-memory stores).
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates a store in a file, in WAL mode.
    ///
    /// # Errors
    /// [`Error::Storage`] when the file cannot be opened or migrated.
    ///
    /// # Cancel safety
    /// Safe: migrations run in transactions.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(path, SqliteStoreOptions::default()).await
    }

    /// As [`SqliteStore::open`], with options.
    ///
    /// # Errors
    /// [`Error::Storage`] when the file cannot be opened or migrated.
    ///
    /// # Cancel safety
    /// Safe: migrations run in transactions.
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteStoreOptions) -> Result<Self, Error> {
        let connect = SqliteConnectOptions::new()
            .filename(path.as_ref())
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.durability {
                Durability::Normal => SqliteSynchronous::Normal,
                Durability::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(options.busy_timeout);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.busy_timeout + Duration::from_secs(5))
            .connect_with(connect.clone())
            .await
            .map_err(storage)?;
        migrate(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .connect_with(connect.read_only(true))
            .await
            .map_err(storage)?;
        Ok(Self { writer, reader })
    }

    /// A store that keeps nothing on disk (for untrusted devices and tests). It lives as
    /// long as any clone of it.
    ///
    /// # Errors
    /// [`Error::Storage`] when SQLite cannot start.
    ///
    /// # Cancel safety
    /// Safe.
    pub async fn in_memory() -> Result<Self, Error> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(SqliteConnectOptions::new().in_memory(true))
            .await
            .map_err(storage)?;
        migrate(&pool).await?;
        Ok(Self { writer: pool.clone(), reader: pool })
    }

    /// The connection pool writes go through, for apps that keep their own tables in the
    /// same file (never write to `offsync_` tables directly).
    pub fn pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

async fn migrate(pool: &SqlitePool) -> Result<(), Error> {
    let migrator = sqlx::migrate!("./migrations");
    // Two stores opening the same new file at once may race on the first migration;
    // the loser finds it applied when it tries again.
    match migrator.run(pool).await {
        Ok(()) => Ok(()),
        Err(_) => migrator.run(pool).await.map_err(|e| Error::Storage {
            kind: sync_core::StorageErrorKind::Io,
            message: format!("migration failed: {e}"),
        }),
    }
}

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
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(demo())?;
//! #     Ok(())
//! # }
//! ```

mod accounts;
mod cache;
mod checkpoint;
mod codec;
mod conflicts;
mod device;
mod encryption;
mod errors;
mod external;
mod indexes;
mod inspect;
mod lease;
mod pull;
mod push;
mod query_sql;
mod reads;
mod renames;
mod store_impl;
mod subscriptions;
mod writes;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::MigrateError;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous, SqliteTransactionManager,
};
use sqlx::{ConnectOptions, Connection, Sqlite, SqliteConnection, SqlitePool, TransactionManager};
use sync_core::Error;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

pub use crate::device::SqliteDevice;
pub use crate::encryption::EncryptionKey;
use crate::errors::storage;
pub use crate::inspect::{CollectionSummary, QueuedMutation, RecordDetail, StoreSummary};

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
    /// Encrypts the store with SQLCipher (needs the `encryption` feature; without it,
    /// opening with a key fails instead of writing a plain file). None: a plain file.
    pub encryption: Option<EncryptionKey>,
}

impl Default for SqliteStoreOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(10),
            read_connections: 4,
            durability: Durability::Normal,
            encryption: None,
        }
    }
}

/// The SQLite local store. Cheap to clone (clones share the connections).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The one connection writes go through, behind a fair async lock: writes of this
    /// store queue in order and never contend for SQLite's lock with each other. (A
    /// one-connection sqlx pool would do the same, but its acquire timeout is a tokio
    /// timer, which paused-time tests jump past while SQLite works on another thread.)
    /// None once the store is destroyed.
    writer: Arc<Mutex<Option<SqliteConnection>>>,
    /// Connections for reads; None for in-memory stores, which read through the writer.
    reader: Option<SqlitePool>,
    /// The database file; None for in-memory stores.
    path: Option<Arc<PathBuf>>,
    /// Opened with an encryption key (SQLCipher).
    encrypted: bool,
    /// The signal of other processes' commits, started when the engine first asks.
    external: Arc<std::sync::OnceLock<Option<external::ExternalWatch>>>,
    /// Copies the write-ahead log into the database file off the write path (file
    /// stores that write only).
    checkpointer: Option<Arc<checkpoint::Checkpointer>>,
}

/// A connection to read through: a pooled reader, or the writer for in-memory stores.
pub(crate) enum ReadConn<'a> {
    Pooled(PoolConnection<Sqlite>),
    Writer(MappedMutexGuard<'a, SqliteConnection>),
}

impl Deref for ReadConn<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        match self {
            ReadConn::Pooled(c) => c,
            ReadConn::Writer(c) => c,
        }
    }
}

impl DerefMut for ReadConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            ReadConn::Pooled(c) => c,
            ReadConn::Writer(c) => c,
        }
    }
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
    /// [`Error::Storage`] when the file cannot be opened or migrated (kind
    /// [`sync_core::StorageErrorKind::Incompatible`] for a store a newer offsync wrote);
    /// [`Error::EncryptionKey`] when the key does not open the file, the file is
    /// encrypted and no key was given, or a key was given to a build without
    /// SQLCipher. Nothing on disk is changed by a failed open.
    ///
    /// # Cancel safety
    /// Safe: migrations run in transactions.
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteStoreOptions) -> Result<Self, Error> {
        if options.encryption.is_some() {
            ensure_sqlcipher().await?;
        }
        let keyed = options.encryption.is_some();
        let connect = connect_options(path.as_ref(), &options)
            .filename(path.as_ref())
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.durability {
                Durability::Normal => SqliteSynchronous::Normal,
                Durability::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(options.busy_timeout)
            // The background checkpointer copies the log; the writer only as a backstop.
            .pragma("wal_autocheckpoint", checkpoint::BACKSTOP_PAGES.to_string());
        let mut writer =
            SqliteConnection::connect_with(&connect).await.map_err(|e| encryption::open_error(e, keyed))?;
        if let Err(e) = migrate(&mut writer).await {
            // Closed, not dropped: SQLite then removes the -wal and -shm it made, and a
            // refused file is left as it was found.
            let _ = writer.close().await;
            return Err(e);
        }
        let readers = options.read_connections.max(1);
        let reader = SqlitePoolOptions::new()
            .max_connections(readers)
            .min_connections(readers)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .acquire_timeout(options.busy_timeout + Duration::from_secs(5))
            .connect_with(connect.clone().read_only(true))
            .await
            .map_err(storage)?;
        // Open every reader now, so that no read ever waits for a connection to open.
        let mut warm = Vec::new();
        for _ in 0..readers {
            warm.push(reader.acquire().await.map_err(storage)?);
        }
        drop(warm);
        // Dropped connections go back to the pool from a spawned task; wait until they
        // are idle, so the first reads find them there instead of waiting on a timer.
        for _ in 0..10_000 {
            if reader.num_idle() >= readers as usize {
                break;
            }
            tokio::task::yield_now().await;
        }
        let checkpointer = SqliteConnection::connect_with(&connect).await.map_err(storage)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(Some(writer))),
            reader: Some(reader),
            path: Some(Arc::new(path.as_ref().to_path_buf())),
            encrypted: keyed,
            external: Arc::default(),
            checkpointer: Some(Arc::new(checkpoint::Checkpointer::start(checkpointer))),
        })
    }

    /// Opens an existing store file for reading only: nothing is created, migrated or
    /// written, and every write fails with [`Error::Storage`]. For tools that look
    /// inside a device's store while its app may be running (the `offsync` CLI).
    ///
    /// # Errors
    /// [`Error::Storage`] when the file does not exist or is not a store (kind
    /// [`sync_core::StorageErrorKind::Incompatible`] when its schema is not the one
    /// this offsync writes: older, or newer); [`Error::EncryptionKey`] as for
    /// [`SqliteStore::open_with`].
    ///
    /// # Cancel safety
    /// Safe.
    pub async fn open_read_only(path: impl AsRef<Path>, options: SqliteStoreOptions) -> Result<Self, Error> {
        if options.encryption.is_some() {
            ensure_sqlcipher().await?;
        }
        let keyed = options.encryption.is_some();
        if !path.as_ref().is_file() {
            return Err(Error::Storage {
                kind: sync_core::StorageErrorKind::Io,
                message: format!("no store at {}", path.as_ref().display()),
            });
        }
        let connect = connect_options(path.as_ref(), &options)
            .create_if_missing(false)
            .read_only(true)
            .busy_timeout(options.busy_timeout);
        let mut conn = SqliteConnection::connect_with(&connect).await.map_err(|e| encryption::open_error(e, keyed))?;
        let checked = check_schema(&mut conn).await;
        if let Err(e) = checked {
            let _ = conn.close().await;
            return Err(e);
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .acquire_timeout(options.busy_timeout + Duration::from_secs(5))
            .connect_with(connect)
            .await
            .map_err(storage)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(Some(conn))),
            reader: Some(reader),
            path: Some(Arc::new(path.as_ref().to_path_buf())),
            encrypted: keyed,
            external: Arc::default(),
            checkpointer: None,
        })
    }

    /// The store at a glance: schema, identity, counts, each collection's records,
    /// queue, cursor and last page, and the sync lease.
    ///
    /// # Errors
    /// [`Error::Storage`] when the store cannot be read.
    pub async fn summary(&self) -> Result<StoreSummary, Error> {
        inspect::summary(self).await
    }

    /// One record in full (data, base, versions, state, queued mutations), deleted or
    /// not; None when the store holds no row for it.
    ///
    /// # Errors
    /// [`Error::Storage`] when the store cannot be read.
    pub async fn record_detail(
        &self,
        collection: &sync_core::CollectionName,
        id: &sync_core::RecordId,
    ) -> Result<Option<RecordDetail>, Error> {
        inspect::record(self, collection, id).await
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
        let options = SqliteConnectOptions::new().in_memory(true).pragma("temp_store", "MEMORY");
        let mut conn = SqliteConnection::connect_with(&options).await.map_err(storage)?;
        migrate(&mut conn).await?;
        Ok(Self {
            writer: Arc::new(Mutex::new(Some(conn))),
            reader: None,
            path: None,
            encrypted: false,
            external: Arc::default(),
            checkpointer: None,
        })
    }

    /// The writer, out of any transaction a cancelled call left open.
    ///
    /// A store call whose future is dropped inside sqlx's `begin_with` (after SQLite began
    /// the transaction, before sqlx handed back a `Transaction`) leaves the connection in
    /// a transaction nothing will end: the next write would run inside it and never be
    /// committed, and the next `begin_with` would fail. So whoever takes the writer first
    /// rolls back whatever is open. A `Transaction` dropped half way queues its own
    /// rollback, which runs before this one; the check is one atomic load otherwise.
    pub(crate) async fn write_conn(&self) -> Result<MappedMutexGuard<'_, SqliteConnection>, Error> {
        let guard = self.writer.lock().await;
        let mut conn = MutexGuard::try_map(guard, Option::as_mut).map_err(|_| Error::Shutdown)?;
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.wrote();
        }
        let depth = <SqliteTransactionManager as TransactionManager>::get_transaction_depth(&conn);
        if depth > 0 {
            tracing::debug!(depth, "rolling back a transaction a cancelled store call left open");
            for _ in 0..depth {
                <SqliteTransactionManager as TransactionManager>::rollback(&mut conn).await.map_err(storage)?;
            }
        }
        Ok(conn)
    }

    pub(crate) async fn read_conn(&self) -> Result<ReadConn<'_>, Error> {
        match &self.reader {
            Some(pool) if pool.is_closed() => Err(Error::Shutdown),
            Some(pool) => pool.acquire().await.map(ReadConn::Pooled).map_err(|e| match e {
                sqlx::Error::PoolClosed => Error::Shutdown,
                e => storage(e),
            }),
            None => Ok(ReadConn::Writer(self.write_conn().await?)),
        }
    }

    /// Changes the key of the encrypted store at `path`, which must be closed (no
    /// `SqliteStore` open on it, in this process or another). SQLCipher re-encrypts
    /// every page in one transaction; the store opens with `new` afterwards.
    ///
    /// # Errors
    /// [`Error::EncryptionKey`] when `old` does not open the store or the build has no
    /// SQLCipher (nothing changed); [`Error::Storage`] with kind `Busy` while the store
    /// is open elsewhere.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped during the re-encryption, the change may or may not
    /// have committed; try to open with either key.
    pub async fn rekey(path: impl AsRef<Path>, old: &EncryptionKey, new: &EncryptionKey) -> Result<(), Error> {
        ensure_sqlcipher().await?;
        let options = SqliteStoreOptions { encryption: Some(old.clone()), ..SqliteStoreOptions::default() };
        // Out of WAL mode first: SQLCipher 4 re-encrypts through the rollback journal,
        // and leaving WAL needs every other connection gone (busy otherwise).
        let connect = connect_options(path.as_ref(), &options)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Delete)
            .busy_timeout(Duration::from_secs(1));
        let mut conn = SqliteConnection::connect_with(&connect).await.map_err(|e| encryption::open_error(e, true))?;
        let rekeyed = sqlx::query(&format!("PRAGMA rekey = {}", new.pragma_value())).execute(&mut conn).await;
        let _ = conn.close().await;
        rekeyed.map_err(storage)?;
        // Check that the new key opens it before saying so.
        let check = SqliteStoreOptions { encryption: Some(new.clone()), ..SqliteStoreOptions::default() };
        let mut conn = SqliteConnection::connect_with(&connect_options(path.as_ref(), &check).create_if_missing(false))
            .await
            .map_err(|e| encryption::open_error(e, true))?;
        let read = encryption::check_key(&mut conn, true).await;
        let _ = conn.close().await;
        read
    }

    /// Closes every connection. Later calls fail with [`Error::Shutdown`].
    pub async fn close(&self) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.stop().await;
        }
        if let Some(reader) = &self.reader {
            reader.close().await;
        }
        let writer = self.writer.lock().await.take();
        if let Some(mut writer) = writer {
            // Everything into the database file now, rather than when SQLite gets to it:
            // a closed store is one file (copied, backed up or rekeyed whole).
            if self.path.is_some() {
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut writer).await {
                    tracing::debug!(error = %e, "checkpoint at close failed; SQLite checkpoints later");
                }
            }
            if let Err(e) = writer.close().await {
                tracing::warn!(error = %e, "closing the store's writer failed");
            }
        }
    }

    /// Whether the store was opened with an encryption key.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// The database file; None for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref().map(PathBuf::as_path)
    }

    /// Closes the store and removes its files (see [`sync_core::LocalStore::destroy`]).
    pub(crate) async fn destroy(&self) -> Result<(), Error> {
        self.close().await;
        match self.path() {
            Some(path) => remove_database_files(path),
            None => Ok(()),
        }
    }
}

/// Removes a database file and its `-wal`, `-shm` and `-journal` companions; a file
/// that is not there is fine.
pub(crate) fn remove_database_files(path: &Path) -> Result<(), Error> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Storage {
                    kind: sync_core::StorageErrorKind::Io,
                    message: format!("cannot remove {}: {e}", file.display()),
                });
            }
        }
    }
    Ok(())
}
/// The connection options every connection of a store file shares: the file, and the
/// key first when there is one. Statement logging is off for a keyed store, since the
/// key travels as a `PRAGMA`.
pub(crate) fn connect_options(path: &Path, options: &SqliteStoreOptions) -> SqliteConnectOptions {
    // Sorts and temporary indexes stay in memory: no temporary file holds the store's data.
    let connect = SqliteConnectOptions::new().filename(path).pragma("temp_store", "MEMORY");
    match &options.encryption {
        Some(key) => connect.pragma("key", key.pragma_value().to_owned()).disable_statement_logging(),
        None => connect,
    }
}

/// Fails unless this build's SQLite is SQLCipher, asked of a memory database so that a
/// build without it never writes the store's file in plain text.
async fn ensure_sqlcipher() -> Result<(), Error> {
    let mut probe =
        SqliteConnection::connect_with(&SqliteConnectOptions::new().in_memory(true)).await.map_err(storage)?;
    let linked = encryption::sqlcipher_linked(&mut probe).await;
    let _ = probe.close().await;
    if linked? { Ok(()) } else { Err(encryption::not_built_in()) }
}

/// Fails unless the file's schema is exactly the one this build writes: every known
/// migration applied, with the same checksum, and none it does not know.
async fn check_schema(conn: &mut SqliteConnection) -> Result<(), Error> {
    let migrator = sqlx::migrate!("./migrations");
    let incompatible = |message: String| Error::Storage { kind: sync_core::StorageErrorKind::Incompatible, message };
    let applied: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| incompatible(format!("not an offsync store: {e}")))?;
    let known: Vec<(i64, Vec<u8>)> = migrator.iter().map(|m| (m.version, m.checksum.to_vec())).collect();
    if applied == known {
        return Ok(());
    }
    let newest = |list: &[(i64, Vec<u8>)]| list.last().map_or(0, |(v, _)| *v);
    let (theirs, ours) = (newest(&applied), newest(&known));
    let advice = if theirs > ours {
        "a newer offsync wrote it; use a tool of that version"
    } else {
        "an older offsync wrote it; the app of this version upgrades it when it opens it"
    };
    Err(incompatible(format!("the store's schema is at step {theirs}, this offsync's at step {ours}: {advice}")))
}

async fn migrate(conn: &mut SqliteConnection) -> Result<(), Error> {
    let migrator = sqlx::migrate!("./migrations");
    // Two stores opening the same new file at once may race on the first migration;
    // the loser finds it applied when it tries again.
    // `run_direct` takes the connection itself: `run` goes through sqlx's `Acquire`,
    // whose impl for `&mut SqliteConnection` makes the future fail the `Send` check for
    // every lifetime ("not general enough"), so `open` could not be awaited inside
    // `tokio::spawn` (tests/tests/api_bounds.rs checks it). It is hidden from sqlx's docs
    // but public, and sqlx's own `run` is nothing but `acquire` and `run_direct`.
    let first = migrator.run_direct(&mut *conn).await;
    let second = match first {
        Ok(()) => return Ok(()),
        Err(e @ (MigrateError::VersionMissing(_) | MigrateError::VersionMismatch(_))) => Err(e),
        Err(_) => migrator.run_direct(&mut *conn).await,
    };
    second.map_err(|e| match e {
        // The file has a schema step this offsync does not know (or knows differently):
        // a newer offsync wrote it. Nothing was changed; the app needs its newer build.
        MigrateError::VersionMissing(_) | MigrateError::VersionMismatch(_) => Error::Storage {
            kind: sync_core::StorageErrorKind::Incompatible,
            message: format!("the store was written by a newer offsync ({e}); it was left as it is"),
        },
        e => Error::Storage { kind: sync_core::StorageErrorKind::Io, message: format!("migration failed: {e}") },
    })
}

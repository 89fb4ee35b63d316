//! `SqliteDevice`: one SQLite store per account in a directory, so the records, queue,
//! conflicts and cursors of one person never share a file with another's, and signing
//! one person out with discard removes their file whole instead of leaving deleted rows
//! in free pages.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::{Connection, SqliteConnection};
use sync_core::{AccountId, AccountSummary, DeviceStores, Error, LocalStore, Residence, StorageErrorKind};

use crate::{SqliteStore, SqliteStoreOptions, accounts, connect_options, encryption, reads, remove_database_files};

const PREFIX: &str = "offsync-";
const SUFFIX: &str = ".db";

/// The stores of the people using this device, one file per account in a directory.
/// A file is named after a hash of the account id, so the directory listing does not
/// show who used the device; the account itself is stored inside, and opening a file
/// for another account is refused.
///
/// ```
/// use std::sync::Arc;
/// use sync_core::{AccountId, DeviceStores, Residence};
/// use sync_sqlite::SqliteDevice;
///
/// # async fn demo() -> Result<(), sync_core::Error> {
/// # let dir = tempfile::tempdir().map_err(|e| sync_core::Error::Config { message: e.to_string() })?;
/// let device = Arc::new(SqliteDevice::new(dir.path()));
/// let alice = device.open(&AccountId::new("alice")?, Residence::Disk).await?;
/// assert_eq!(alice.account().await?, Some(AccountId::new("alice")?));
/// # Ok(()) }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(demo())?;
/// #     Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteDevice {
    dir: PathBuf,
    options: SqliteStoreOptions,
}

impl SqliteDevice {
    /// The stores in `dir` (created on first open), with default store options.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self::with_options(dir, SqliteStoreOptions::default())
    }

    /// As [`SqliteDevice::new`], opening stores with `options`.
    pub fn with_options(dir: impl AsRef<Path>, options: SqliteStoreOptions) -> Self {
        Self { dir: dir.as_ref().to_path_buf(), options }
    }

    /// The file of `account`'s store.
    pub fn store_path(&self, account: &AccountId) -> PathBuf {
        let digest = Sha256::digest(format!("offsync account\0{account}").as_bytes());
        let name: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{PREFIX}{name}{SUFFIX}"))
    }

    /// Opens (creating if needed) `account`'s store, bound to it.
    ///
    /// # Errors
    /// [`Error::AccountMismatch`] when the file holds another account's store (it is
    /// left as it is); [`Error::Storage`].
    pub async fn open_store(&self, account: &AccountId) -> Result<SqliteStore, Error> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::Storage {
            kind: StorageErrorKind::Io,
            message: format!("cannot create {}: {e}", self.dir.display()),
        })?;
        let store = SqliteStore::open_with(self.store_path(account), self.options.clone()).await?;
        if let Err(e) = accounts::bind_account(&store, account).await {
            store.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// The store files in the directory (none when it does not exist).
    fn store_files(&self) -> Result<Vec<PathBuf>, Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&self.dir, &e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&self.dir, &e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_store_file_name(name) {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(files)
    }
}

/// `offsync-` + 32 lowercase hex digits + `.db`: the stores this device made.
fn is_store_file_name(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_suffix(SUFFIX))
        .is_some_and(|hash| hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn io_error(path: &Path, e: &std::io::Error) -> Error {
    Error::Storage { kind: StorageErrorKind::Io, message: format!("{}: {e}", path.display()) }
}

/// The account and counts of one store file, through a connection of its own.
async fn summary(path: &Path, options: &SqliteStoreOptions) -> Result<Option<AccountSummary>, Error> {
    let connect = connect_options(path, options).create_if_missing(false);
    let keyed = options.encryption.is_some();
    let mut conn = SqliteConnection::connect_with(&connect).await.map_err(|e| encryption::open_error(e, keyed))?;
    let read = async {
        encryption::check_key(&mut conn, keyed).await?;
        let Some(account) = accounts::account_on(&mut conn).await? else { return Ok(None) };
        let counts = reads::counts_on(&mut conn).await?;
        Ok(Some(AccountSummary { account, counts }))
    }
    .await;
    let _ = conn.close().await;
    read
}

#[async_trait]
impl DeviceStores for SqliteDevice {
    async fn open(&self, account: &AccountId, residence: Residence) -> Result<Arc<dyn LocalStore>, Error> {
        match residence {
            Residence::Disk => Ok(Arc::new(self.open_store(account).await?)),
            // Not even the directory is made: an untrusted device leaves no trace.
            Residence::Memory => {
                let store = SqliteStore::in_memory().await?;
                accounts::bind_account(&store, account).await?;
                Ok(Arc::new(store))
            }
        }
    }

    async fn accounts(&self) -> Result<Vec<AccountSummary>, Error> {
        let mut found = Vec::new();
        for path in self.store_files()? {
            // A store never bound (opened, then the account failed to bind) holds nobody's data.
            if let Some(summary) = summary(&path, &self.options).await? {
                found.push(summary);
            }
        }
        Ok(found)
    }

    async fn wipe(&self) -> Result<(), Error> {
        for path in self.store_files()? {
            remove_database_files(&path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_device_s_own_file_names_are_stores() {
        let device = SqliteDevice::new("/tmp/x");
        let made = device.store_path(&AccountId::new("alice").expect("valid"));
        let made = made.file_name().and_then(|n| n.to_str()).expect("a name");
        assert!(is_store_file_name(made), "{made}");
        assert!(!made.contains("alice"));
        for other in [
            "offsync-.db",
            "offsync-0123456789abcdef0123456789abcdef.db-wal",
            "offsync-0123456789ABCDEF0123456789ABCDEF.db",
            "offsync-0123456789abcdef0123456789abcde.db",
            "app.db",
            "notes.txt",
        ] {
            assert!(!is_store_file_name(other), "{other}");
        }
        assert!(is_store_file_name("offsync-0123456789abcdef0123456789abcdef.db"));
    }

    #[test]
    fn accounts_get_files_of_their_own() {
        let device = SqliteDevice::new("/tmp/x");
        let a = device.store_path(&AccountId::new("alice").expect("valid"));
        let b = device.store_path(&AccountId::new("bob").expect("valid"));
        assert_ne!(a, b);
        assert_eq!(a, device.store_path(&AccountId::new("alice").expect("valid")));
    }
}

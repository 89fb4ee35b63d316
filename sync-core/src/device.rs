//! The stores of everyone who uses a device: one store per account, so one person's
//! records, queue, conflicts and cursors never share a file with another's.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Error;
use crate::ids::AccountId;
use crate::persistence::Residence;
use crate::store::{Counts, LocalStore};

/// What a device holds for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    /// The account.
    pub account: AccountId,
    /// Its queued, conflicted and parked counts.
    pub counts: Counts,
}

/// Opens the store of an account on this device (see `sync_sqlite::SqliteDevice`).
/// Give it to [`crate::EngineBuilder::device`] instead of a single store when more than
/// one person may use the device: the engine of one account then never reads another
/// account's records, its status counts what other accounts still have queued, and
/// [`crate::Engine::wipe`] removes every account's store.
#[async_trait]
pub trait DeviceStores: Send + Sync + 'static {
    /// Opens (creating if needed) the store of `account`, bound to it, on disk or in
    /// memory only (an untrusted device, memory-only collections: then nothing is
    /// written to the device's directory, not even the directory itself).
    ///
    /// # Errors
    /// [`Error::AccountMismatch`] when the store found for `account` belongs to another
    /// account (nothing is changed); [`Error::Storage`].
    async fn open(&self, account: &AccountId, residence: Residence) -> Result<Arc<dyn LocalStore>, Error>;

    /// Every account with a store on this device, with its counts.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn accounts(&self) -> Result<Vec<AccountSummary>, Error>;

    /// Deletes the stores of every account. Stores still open elsewhere must be
    /// destroyed first ([`LocalStore::destroy`]); the engine does so for its own.
    ///
    /// # Errors
    /// [`Error::Storage`] when a file cannot be removed.
    async fn wipe(&self) -> Result<(), Error>;
}

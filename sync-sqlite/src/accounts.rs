//! Which account a store belongs to: one row of `offsync_meta`, written once.

use sqlx::SqliteConnection;
use sync_core::{AccountId, Error};

use crate::SqliteStore;
use crate::errors::{corrupt, storage};

/// The account the store is bound to.
pub(crate) async fn account(store: &SqliteStore) -> Result<Option<AccountId>, Error> {
    account_on(&mut *store.read_conn().await?).await
}

/// The bound account, read through any connection to a store's database.
pub(crate) async fn account_on(conn: &mut SqliteConnection) -> Result<Option<AccountId>, Error> {
    let stored: Option<String> = sqlx::query_scalar("SELECT value FROM offsync_meta WHERE key = 'account'")
        .fetch_optional(&mut *conn)
        .await
        .map_err(storage)?;
    stored.map(|a| AccountId::new(a).map_err(|e| corrupt(format!("stored account: {e}")))).transpose()
}

/// Binds the store to `account` unless it is bound already (one statement, so of two
/// racing binds one wins), then checks that the bound account is `account`.
pub(crate) async fn bind_account(store: &SqliteStore, account: &AccountId) -> Result<(), Error> {
    let mut writer = store.write_conn().await?;
    sqlx::query("INSERT OR IGNORE INTO offsync_meta (key, value) VALUES ('account', ?)")
        .bind(account.as_str())
        .execute(&mut *writer)
        .await
        .map_err(storage)?;
    match account_on(&mut writer).await? {
        Some(bound) if &bound == account => Ok(()),
        Some(bound) => Err(Error::AccountMismatch { bound: bound.to_string(), given: account.to_string() }),
        None => Err(corrupt("the account binding was not stored")),
    }
}

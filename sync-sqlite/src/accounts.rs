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

/// Keeps the session token (an encrypted store only; the engine checks) or forgets it.
pub(crate) async fn save_token(store: &SqliteStore, token: Option<&str>) -> Result<(), Error> {
    if token.is_some() && !store.is_encrypted() {
        return Err(Error::Config { message: "a token is kept only in an encrypted store".into() });
    }
    let mut writer = store.write_conn().await?;
    let query = match token {
        Some(token) => sqlx::query("INSERT OR REPLACE INTO offsync_meta (key, value) VALUES ('token', ?)").bind(token),
        None => sqlx::query("DELETE FROM offsync_meta WHERE key = 'token'"),
    };
    query.execute(&mut *writer).await.map_err(storage)?;
    Ok(())
}

/// The kept session token.
pub(crate) async fn saved_token(store: &SqliteStore) -> Result<Option<String>, Error> {
    sqlx::query_scalar("SELECT value FROM offsync_meta WHERE key = 'token'")
        .fetch_optional(&mut *store.read_conn().await?)
        .await
        .map_err(storage)
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

//! The store's sync lease, read, decided (`sync_core::lease::decide_lease`) and written in
//! one `BEGIN IMMEDIATE` transaction, so two processes asking at once cannot both win.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Connection;
use sync_core::Error;
use sync_core::lease::{Lease, LeaseDecision, LeaseOutcome, decide_lease};

use crate::SqliteStore;
use crate::codec::{from_micros, micros};
use crate::errors::storage;

/// The name of the lease a sync cycle holds.
const SYNC: &str = "sync";

pub(crate) async fn acquire(
    store: &SqliteStore,
    holder: &str,
    now: DateTime<Utc>,
    ttl: Duration,
) -> Result<LeaseOutcome, Error> {
    let mut writer = store.write_conn().await?;
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
    let row: Option<(String, i64)> = sqlx::query_as("SELECT holder, expires_at FROM offsync_lease WHERE name = ?")
        .bind(SYNC)
        .fetch_optional(&mut *tx)
        .await
        .map_err(storage)?;
    let current = row.map(|(holder, at)| from_micros(at).map(|expires_at| Lease { holder, expires_at })).transpose()?;
    match decide_lease(current.as_ref(), holder, now) {
        LeaseDecision::Busy { until } => Ok(LeaseOutcome::HeldElsewhere { until }),
        LeaseDecision::Take | LeaseDecision::Renew => {
            let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
            let until = now.checked_add_signed(ttl).unwrap_or(DateTime::<Utc>::MAX_UTC);
            sqlx::query("INSERT OR REPLACE INTO offsync_lease (name, holder, expires_at) VALUES (?, ?, ?)")
                .bind(SYNC)
                .bind(holder)
                .bind(micros(until))
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
            tx.commit().await.map_err(storage)?;
            Ok(LeaseOutcome::Held)
        }
    }
}

pub(crate) async fn release(store: &SqliteStore, holder: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM offsync_lease WHERE name = ? AND holder = ?")
        .bind(SYNC)
        .bind(holder)
        .execute(&mut *store.write_conn().await?)
        .await
        .map_err(storage)?;
    Ok(())
}

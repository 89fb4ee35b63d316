//! `offsync`, the command-line tool for looking inside a device's store without writing
//! code: its status (counts, cursors, last sync, schema version), the outbox (queued and
//! parked mutations with attempts and errors), open conflicts with a field diff, and one
//! record in full; and `retry` or `discard` of a parked mutation. Every read command
//! takes `--json`.
//!
//! Reads open the store read-only ([`sync_sqlite::SqliteStore::open_read_only`]): nothing
//! is created, migrated or written, so it is safe beside a running app. `retry` and
//! `discard` take the store's sync lease for the moment they write, and refuse with
//! [`CliError::InUse`] while another process holds it (its engine is syncing).
//!
//! ```sh
//! offsync status app.db
//! offsync outbox app.db --json
//! offsync conflicts app.db
//! offsync record app.db work_orders wo-17
//! offsync retry app.db 0190a5b8-7a3e-7c4d-9a51-2f6b1c3d4e5f
//! ```
//!
//! The same from Rust, with the output the command prints:
//!
//! ```
//! use clap::Parser;
//! use offsync_cli::{Cli, run};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! # rt.block_on(async { sync_sqlite::SqliteStore::open(&path).await?.close().await; Ok::<_, sync_core::Error>(()) })?;
//! let cli = Cli::parse_from(["offsync", "status", path.to_str().unwrap_or_default(), "--json"]);
//! let printed = rt.block_on(run(cli))?;
//! assert!(printed.contains("\"pending\": 0"));
//! # Ok(()) }
//! ```

mod args;
pub mod text;
pub mod views;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sync_core::lease::LeaseOutcome;
use sync_core::{CollectionName, LocalStore, MutationId, RecordId};
use sync_sqlite::{SqliteStore, SqliteStoreOptions};

pub use args::{Cli, Command, Read, Write};

/// The lease holder the tool writes under, so an app's engine sees who holds it.
pub const LEASE_HOLDER: &str = "offsync-cli";

/// How long the tool holds the lease for one write at most (it gives it back at once).
const LEASE_TTL: Duration = Duration::from_secs(30);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The store could not be opened or read (a missing file, not a store, a schema of
    /// another offsync version, a damaged file).
    #[error("{0}")]
    Store(#[from] sync_core::Error),
    /// A write while another process syncs the store.
    #[error(
        "the store is in use: {holder} is syncing it (lease until {until}); try again when it is done, or stop the app"
    )]
    InUse {
        /// The lease's holder.
        holder: String,
        /// When its lease lapses unless renewed.
        until: DateTime<Utc>,
    },
    /// An argument that is not what it should be (a collection name, a record or
    /// mutation id).
    #[error("{0}")]
    Argument(String),
    /// No such record in the store.
    #[error("no record {collection}/{id} in the store")]
    NoRecord {
        /// The collection asked for.
        collection: String,
        /// The id asked for.
        id: String,
    },
    /// The report could not be written as JSON.
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Runs one command and returns what it prints.
///
/// # Errors
/// See [`CliError`].
pub async fn run(cli: Cli) -> Result<String, CliError> {
    match cli.command {
        Command::Status(read) => {
            let store = open_read(&read.store).await?;
            let status = views::Status::new(read.store.display().to_string(), store.summary().await?, Utc::now());
            store.close().await;
            render(&status, read.json, text::status)
        }
        Command::Outbox(read) => {
            let store = open_read(&read.store).await?;
            let parked: Vec<MutationId> = store.failed_mutations().await?.into_iter().map(|e| e.mutation_id).collect();
            let entries: Vec<views::Entry> = store
                .outbox()
                .await?
                .into_iter()
                .map(|e| {
                    let is_parked = parked.contains(&e.mutation_id);
                    views::Entry::new(e, is_parked)
                })
                .collect();
            store.close().await;
            let parked = entries.iter().filter(|e| e.state == "parked").count() as u64;
            let outbox = views::Outbox { queued: entries.len() as u64 - parked, parked, entries };
            render(&outbox, read.json, text::outbox)
        }
        Command::Conflicts(read) => {
            let store = open_read(&read.store).await?;
            let conflicts: Vec<views::ConflictView> =
                store.conflicts().await?.into_iter().map(views::ConflictView::from).collect();
            store.close().await;
            render(&conflicts, read.json, |c: &Vec<views::ConflictView>| text::conflicts(c))
        }
        Command::Record { read, collection, id } => {
            let name = CollectionName::new(&collection).map_err(|e| CliError::Argument(e.to_string()))?;
            let record_id = RecordId::new(id.clone()).map_err(|e| CliError::Argument(e.to_string()))?;
            let store = open_read(&read.store).await?;
            let detail = store.record_detail(&name, &record_id).await?;
            store.close().await;
            let view = views::RecordView::from(detail.ok_or(CliError::NoRecord { collection, id })?);
            render(&view, read.json, text::record)
        }
        Command::Retry(write) => {
            let id = mutation_id(&write.mutation_id)?;
            with_writer(&write.store, |store| async move { store.retry_failed(id).await }).await?;
            Ok(format!("mutation {id} queued again; it is sent at the next sync\n"))
        }
        Command::Discard(write) => {
            let id = mutation_id(&write.mutation_id)?;
            let record = with_writer(&write.store, |store| async move { store.discard_failed(id).await }).await?;
            Ok(match record {
                Some((collection, record)) => {
                    format!("mutation {id} discarded; {collection}/{record} is back to the server's version\n")
                }
                None => format!("mutation {id} discarded\n"),
            })
        }
    }
}

fn mutation_id(text: &str) -> Result<MutationId, CliError> {
    MutationId::parse(text).map_err(|e| CliError::Argument(format!("mutation id {text:?}: {e}")))
}

fn render<T: serde::Serialize>(view: &T, json: bool, as_text: impl Fn(&T) -> String) -> Result<String, CliError> {
    if json {
        let mut out = serde_json::to_string_pretty(view)?;
        out.push('\n');
        Ok(out)
    } else {
        Ok(as_text(view))
    }
}

async fn open_read(path: &Path) -> Result<SqliteStore, CliError> {
    Ok(SqliteStore::open_read_only(path, SqliteStoreOptions { read_connections: 1, ..Default::default() }).await?)
}

/// Runs `write` on the store at `path` while holding its sync lease, so no engine syncs
/// it meanwhile. The schema is checked read-only first: the tool never migrates a store
/// (an app of another version owns that).
async fn with_writer<T, F, Fut>(path: &Path, write: F) -> Result<T, CliError>
where
    F: FnOnce(SqliteStore) -> Fut,
    Fut: std::future::Future<Output = Result<T, sync_core::Error>>,
{
    open_read(path).await?.close().await;
    let options =
        SqliteStoreOptions { read_connections: 1, busy_timeout: Duration::from_secs(2), ..Default::default() };
    let store = SqliteStore::open_with(path, options).await?;
    match store.acquire_sync_lease(LEASE_HOLDER, Utc::now(), LEASE_TTL).await {
        Ok(LeaseOutcome::Held) => {}
        Ok(LeaseOutcome::HeldElsewhere { until }) => {
            let holder = store.summary().await.ok().and_then(|s| s.lease).map_or_else(String::new, |l| l.holder);
            store.close().await;
            return Err(CliError::InUse { holder, until });
        }
        Err(e) => {
            store.close().await;
            return Err(e.into());
        }
    }
    let result = write(store.clone()).await;
    if let Err(e) = store.release_sync_lease(LEASE_HOLDER).await {
        // It lapses by itself within LEASE_TTL; the write's own result matters more.
        eprintln!("note: the sync lease could not be given back ({e}); it lapses within {}s", LEASE_TTL.as_secs());
    }
    store.close().await;
    Ok(result?)
}

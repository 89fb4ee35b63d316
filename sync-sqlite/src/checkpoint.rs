//! Checkpoints off the write path.
//!
//! In WAL mode SQLite copies the write-ahead log back into the database file every
//! 1,000 pages, inside whichever commit crosses that mark, fsyncs included: one local
//! write in a few hundred took 3 ms instead of 0.3 ms (measured in the `local_query`
//! benchmark: write p99 3.3 ms with the automatic checkpoint, 0.5 ms without). Here a
//! connection of its own copies the log in the background a short while after writes,
//! with a `PASSIVE` checkpoint, which never blocks the writer or readers; the writer's
//! own automatic checkpoint stays on at a much larger size, as a backstop should this
//! task fall behind or fail.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{Notify, watch};

/// How long after a write the log is copied back: writes of that span share one
/// checkpoint (and its fsyncs).
const DELAY: Duration = Duration::from_millis(100);

/// The writer's own automatic checkpoint, in pages: the backstop (about 40 MB of log).
pub(crate) const BACKSTOP_PAGES: u32 = 10_000;

/// The background checkpointer of one file store.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Checkpointer {
    /// Starts the task on `conn`, a read-write connection to the store's file.
    pub(crate) fn start(conn: SqliteConnection) -> Self {
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(conn, wake.clone(), stopped));
        Self { wake, stop, task: tokio::sync::Mutex::new(Some(task)) }
    }

    /// Tells the task the writer was taken: a checkpoint follows within [`DELAY`].
    /// One atomic operation; many calls before the task wakes count as one.
    pub(crate) fn wrote(&self) {
        self.wake.notify_one();
    }

    /// Ends the task and closes its connection (waits for a checkpoint under way).
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.lock().await.take() {
            if let Err(e) = task.await {
                tracing::debug!(error = %e, "the checkpointer task ended abnormally");
            }
        }
    }
}

async fn run(mut conn: SqliteConnection, wake: Arc<Notify>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = wake.notified() => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        tokio::select! {
            () = tokio::time::sleep(DELAY) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        // PASSIVE copies what no reader still needs and returns; a failure (another
        // process checkpointing, a full disk) leaves the log to the next round or to the
        // writer's backstop, and loses nothing: the log holds every commit until copied.
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await {
            tracing::debug!(error = %e, "background checkpoint failed; the next write tries again");
        }
    }
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing the checkpointer's connection failed");
    }
}

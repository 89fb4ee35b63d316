//! Commits by other processes that opened the same store file (an app and its sync
//! service, two windows), as a signal the engine listens to.
//!
//! Nothing polls: the operating system's file watcher (inotify, FSEvents, ...; the
//! `notify` crate) wakes a task when the database or its write-ahead log is modified,
//! and the task asks SQLite whether someone else committed: `PRAGMA data_version` on the
//! writer connection changes only for commits made through other connections, and this
//! process writes through that one connection only, so its own writes (which modify the
//! same files) and checkpoints are told apart from another process's commits. An idle
//! store costs nothing; the events of 5 ms fold into one check, so a stream of local
//! writes costs one `PRAGMA` per 5 ms rather than one per write.

use std::path::Path;
use std::sync::Arc;

use notify::{EventKind, RecursiveMode, Watcher};
use sqlx::SqliteConnection;
use tokio::sync::{Mutex, Notify, watch};

use crate::SqliteStore;

/// How long file events gather before one `data_version` check: the delay another
/// process's commit may take to reach this one's live queries, beyond the watch's own.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(5);

/// The file watcher and the task that turns its events into the signal.
pub(crate) struct ExternalWatch {
    changes: Arc<watch::Sender<u64>>,
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ExternalWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalWatch").field("changes", &*self.changes.borrow()).finish_non_exhaustive()
    }
}

impl Drop for ExternalWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The signal for `store`, started on first use; None for an in-memory store, or when
/// the file cannot be watched (logged: the store still works, without the signal).
pub(crate) fn subscribe(store: &SqliteStore) -> Option<watch::Receiver<u64>> {
    let path = store.path()?.to_path_buf();
    let watch = store.external.get_or_init(|| match start(store.writer.clone(), &path) {
        Ok(watch) => Some(watch),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "commits by other processes will not be noticed");
            None
        }
    });
    watch.as_ref().map(|w| w.changes.subscribe())
}

fn start(writer: Arc<Mutex<Option<SqliteConnection>>>, path: &Path) -> Result<ExternalWatch, String> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or("the store path names no file")?.to_os_string();
    let mut wal = name.clone();
    wal.push("-wal");
    let wake = Arc::new(Notify::new());
    let waker = wake.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !matches!(event.kind, EventKind::Modify(_) | EventKind::Create(_)) {
            return;
        }
        if event.paths.iter().any(|p| p.file_name().is_some_and(|f| f == name || f == wal)) {
            waker.notify_one();
        }
    })
    .map_err(|e| e.to_string())?;
    watcher.watch(dir, RecursiveMode::NonRecursive).map_err(|e| e.to_string())?;
    let (sender, _) = watch::channel(0u64);
    let changes = Arc::new(sender);
    let signal = changes.clone();
    let task = runtime.spawn(async move {
        let Some(mut seen) = data_version(&writer).await else { return };
        loop {
            wake.notified().await;
            // This process's own writes modify the same files: one check per settle
            // period, not one per write, keeps the writer free for them.
            tokio::time::sleep(SETTLE).await;
            let Some(now) = data_version(&writer).await else { return };
            if now != seen {
                seen = now;
                signal.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    });
    Ok(ExternalWatch { changes, _watcher: watcher, task })
}

/// The writer's `data_version` (None once the store is closed or destroyed).
async fn data_version(writer: &Mutex<Option<SqliteConnection>>) -> Option<i64> {
    let mut guard = writer.lock().await;
    let conn = guard.as_mut()?;
    match sqlx::query_scalar("PRAGMA data_version").fetch_one(conn).await {
        Ok(version) => Some(version),
        Err(e) => {
            tracing::debug!(error = %e, "data_version could not be read");
            None
        }
    }
}

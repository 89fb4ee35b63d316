//! Declared indexes: partial expression indexes on `offsync_records`, one set per
//! collection, kept equal to what the engine declares.

use sha2::{Digest, Sha256};
use sync_core::store::IndexSpec;
use sync_core::{CollectionName, Error};

use crate::SqliteStore;
use crate::errors::storage;
use crate::query_sql::field_expr;

const PREFIX: &str = "offsync_ix_";

/// The index's name: the collection, then a hash of its fields (field paths may be long
/// and hold dots; the hash keeps names short and distinct).
pub(crate) fn index_name(spec: &IndexSpec) -> String {
    let fields: Vec<&str> = spec.fields.iter().map(|f| f.as_str()).collect();
    let digest = Sha256::digest(format!("{}\0{}", spec.collection, fields.join("\0")).as_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{}_{hash}", spec.collection)
}

/// The collection an index of ours belongs to, from its name.
fn collection_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PREFIX)?;
    let (collection, hash) = rest.rsplit_once('_')?;
    (hash.len() == 12).then_some(collection)
}

/// `CREATE INDEX` for a declared index: the collection, its fields' expressions and the
/// record id (so that a sort on the last field, tie-broken by id, is read in index
/// order), over the collection's live records only. The collection column is constant
/// in the index, but it gives SQLite's planner (which has no statistics) one more
/// equality than the primary key's `collection = ?` prefix, so it prefers the index. The collection name is validated to be
/// `[a-z][a-z0-9_]*` and the paths to be letters, digits, `_` and `.`: both are safe as
/// literals, and must be literals for SQLite to use the index.
pub(crate) fn create_sql(spec: &IndexSpec) -> String {
    let columns: Vec<String> = spec.fields.iter().map(field_expr).collect();
    format!(
        "CREATE INDEX IF NOT EXISTS \"{}\" ON offsync_records (collection, {}, id) WHERE collection = '{}' AND deleted = 0",
        index_name(spec),
        columns.join(", "),
        spec.collection
    )
}

/// Drops every declared index of `collection` (for a bulk load).
pub(crate) async fn suspend(store: &SqliteStore, collection: &CollectionName) -> Result<(), Error> {
    ensure(store, std::slice::from_ref(collection), &[]).await
}

/// Makes the indexes of `collections` exactly `specs`, in one transaction.
pub(crate) async fn ensure(
    store: &SqliteStore,
    collections: &[CollectionName],
    specs: &[IndexSpec],
) -> Result<(), Error> {
    let mut writer = store.write_conn().await?;
    let existing: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'offsync_records' AND name LIKE 'offsync\\_ix\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut *writer)
    .await
    .map_err(storage)?;
    let wanted: Vec<String> = specs.iter().map(index_name).collect();
    let stale: Vec<&String> = existing
        .iter()
        .filter(|name| !wanted.contains(name))
        .filter(|name| collection_of(name).is_some_and(|c| collections.iter().any(|m| m.as_str() == c)))
        .collect();
    let missing: Vec<&IndexSpec> = specs.iter().filter(|s| !existing.contains(&index_name(s))).collect();
    if stale.is_empty() && missing.is_empty() {
        return Ok(());
    }
    let settings = BuildSettings::for_store(store.path().is_some(), store.is_encrypted(), sort_threads());
    let first = build_with(&mut writer, &settings, &stale, &missing).await;
    match (first, settings.temp) {
        // A device without a usable temporary directory (Android has none by default)
        // fails the file sort: the same build then sorts in memory, only slower.
        (Err(_), TempStore::File) => {
            let in_memory = BuildSettings { temp: TempStore::Memory, threads: 0, ..settings };
            build_with(&mut writer, &in_memory, &stale, &missing).await
        }
        (result, _) => result,
    }
}

/// Where SQLite puts the sort of an index build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TempStore {
    /// In memory: every connection's setting, so no temporary file holds the store's data.
    Memory,
    /// In temporary files: the only way SQLite sorts on several threads, and faster
    /// even on one (3.0 against 2.0 s for 1,000,000 records here).
    File,
}

/// How one index build runs on the writer, decided from the store alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BuildSettings {
    /// Turn the writer's backstop checkpoint off for the build's commit: building an
    /// index over a first download writes tens of MB of log in one commit, which the
    /// commit would then copy back itself. The background checkpointer (woken by
    /// taking the writer) does that instead. File stores only.
    backstop_off: bool,
    temp: TempStore,
    /// SQLite's helper threads for the sort (`PRAGMA threads`; 0 = none).
    threads: usize,
}

impl BuildSettings {
    /// A plain file store sorts in temporary files on `threads` helper threads: the
    /// file itself holds the same data in plain text, so a temporary file reveals
    /// nothing more. An encrypted store sorts in memory, since SQLCipher leaves
    /// temporary files unencrypted, and a memory store has no file to protect nor a
    /// log to checkpoint.
    fn for_store(file: bool, encrypted: bool, threads: usize) -> Self {
        let sort_in_files = file && !encrypted;
        Self {
            backstop_off: file,
            temp: if sort_in_files { TempStore::File } else { TempStore::Memory },
            threads: if sort_in_files { threads } else { 0 },
        }
    }

    /// The statements that set these for the build, and those that put the writer back.
    fn pragmas(&self) -> (Vec<String>, Vec<String>) {
        let (mut set, mut reset) = (Vec::new(), Vec::new());
        if self.backstop_off {
            set.push("PRAGMA wal_autocheckpoint = 0".to_owned());
            reset.push(format!("PRAGMA wal_autocheckpoint = {}", crate::checkpoint::BACKSTOP_PAGES));
        }
        if self.temp == TempStore::File {
            set.push("PRAGMA temp_store = FILE".to_owned());
            reset.push("PRAGMA temp_store = MEMORY".to_owned());
        }
        if self.threads > 0 {
            set.push(format!("PRAGMA threads = {}", self.threads));
            reset.push("PRAGMA threads = 0".to_owned());
        }
        (set, reset)
    }
}

/// Helper threads for a sort: one fewer than the machine's cores, at least one, at most
/// three (SQLite's merge gains little beyond).
fn sort_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).clamp(1, 3)
}

/// Sets `settings` on the writer, builds, and puts the writer back whatever the build
/// did; the build's own failure is the one reported.
async fn build_with(
    writer: &mut sqlx::SqliteConnection,
    settings: &BuildSettings,
    stale: &[&String],
    missing: &[&IndexSpec],
) -> Result<(), Error> {
    let (set, reset) = settings.pragmas();
    let mut prepared = Ok(());
    for pragma in &set {
        if let Err(e) = sqlx::query(pragma).execute(&mut *writer).await {
            prepared = Err(storage(e));
            break;
        }
    }
    let built = match prepared {
        Ok(()) => build(writer, stale, missing).await,
        Err(e) => Err(e),
    };
    let mut restored = Ok(());
    for pragma in &reset {
        if let Err(e) = sqlx::query(pragma).execute(&mut *writer).await {
            restored = restored.and(Err(storage(e)));
        }
    }
    built?;
    restored
}

/// Drops `stale` and creates `missing`, in one transaction.
async fn build(writer: &mut sqlx::SqliteConnection, stale: &[&String], missing: &[&IndexSpec]) -> Result<(), Error> {
    let mut tx = sqlx::Connection::begin_with(&mut *writer, "BEGIN IMMEDIATE").await.map_err(storage)?;
    for name in stale {
        sqlx::query(&format!("DROP INDEX IF EXISTS \"{name}\"")).execute(&mut *tx).await.map_err(storage)?;
    }
    for spec in missing {
        sqlx::query(&create_sql(spec)).execute(&mut *tx).await.map_err(storage)?;
    }
    tx.commit().await.map_err(storage)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use sync_core::store::FieldPath;

    use super::*;

    fn spec(collection: &str, fields: &[&str]) -> IndexSpec {
        IndexSpec {
            collection: CollectionName::new(collection).unwrap(),
            fields: fields.iter().map(|f| FieldPath::new(f).unwrap()).collect(),
        }
    }

    async fn plan(store: &SqliteStore, query: &sync_core::store::Query) -> String {
        let sql = crate::query_sql::select(query, crate::query_sql::Columns::Tracked);
        let explain = format!("EXPLAIN QUERY PLAN {}", sql.text);
        // Not cached: an EXPLAIN statement is not prepared again when the schema changes.
        let mut q = sqlx::query(&explain).persistent(false);
        for b in &sql.binds {
            q = match b {
                crate::query_sql::Bind::Null => q.bind(None::<i64>),
                crate::query_sql::Bind::Int(i) => q.bind(*i),
                crate::query_sql::Bind::Float(f) => q.bind(*f),
                crate::query_sql::Bind::Text(t) => q.bind(t.clone()),
            };
        }
        let rows = q.fetch_all(&mut *store.read_conn().await.unwrap()).await.unwrap();
        rows.iter().map(|r| sqlx::Row::get::<String, _>(r, "detail")).collect::<Vec<_>>().join("; ")
    }

    #[tokio::test]
    async fn declared_indexes_serve_equality_range_order_and_prefix_queries() {
        use sync_core::store::{Filter, Order, Query};
        let store = SqliteStore::in_memory().await.unwrap();
        let orders = CollectionName::new("work_orders").unwrap();
        let declared = [spec("work_orders", &["status", "due"]), spec("work_orders", &["title"])];
        ensure(&store, std::slice::from_ref(&orders), &declared).await.unwrap();
        let by_status_due = index_name(&declared[0]);
        let by_title = index_name(&declared[1]);
        let list = Query {
            filter: Filter::eq("status", "open").unwrap().and(Filter::compare("due", sync_core::Cmp::Ge, 20).unwrap()),
            order_by: vec![(FieldPath::new("due").unwrap(), Order::Asc)],
            limit: Some(50),
            ..Query::all(orders.clone())
        };
        let found = plan(&store, &list).await;
        assert!(found.contains(&format!("USING INDEX {by_status_due}")), "{found}");
        assert!(!found.contains("TEMP B-TREE"), "the sort is not read in index order: {found}");
        let prefix = Query { filter: Filter::starts_with("title", "Valve").unwrap(), ..Query::all(orders.clone()) };
        let found = plan(&store, &prefix).await;
        assert!(found.contains(&format!("USING INDEX {by_title}")), "{found}");
        // Without the declaration, the same query scans.
        ensure(&store, std::slice::from_ref(&orders), &[]).await.unwrap();
        let found = plan(&store, &list).await;
        assert!(!found.contains("offsync_ix_"), "{found}");
    }

    #[tokio::test]
    async fn only_the_declared_collections_indexes_change() {
        let store = SqliteStore::in_memory().await.unwrap();
        let (a, b) = (CollectionName::new("a").unwrap(), CollectionName::new("b").unwrap());
        ensure(&store, &[a.clone(), b.clone()], &[spec("a", &["x"]), spec("b", &["y"])]).await.unwrap();
        // An engine that registers only `a`, without indexes, leaves `b`'s alone.
        ensure(&store, std::slice::from_ref(&a), &[]).await.unwrap();
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'offsync_ix_%'")
                .fetch_all(&mut *store.read_conn().await.unwrap())
                .await
                .unwrap();
        assert_eq!(names, [index_name(&spec("b", &["y"]))]);
    }

    #[test]
    fn plain_files_sort_in_files_on_helper_threads_and_encrypted_or_memory_stores_in_memory() {
        use TempStore::{File, Memory};
        // (file store, encrypted, threads offered) -> (backstop off, temp store, threads)
        let table = [
            ((true, false, 1), (true, File, 1)),
            ((true, false, 3), (true, File, 3)),
            ((true, true, 3), (true, Memory, 0)),
            ((false, false, 3), (false, Memory, 0)),
        ];
        for ((file, encrypted, threads), (backstop_off, temp, used)) in table {
            let got = BuildSettings::for_store(file, encrypted, threads);
            assert_eq!(got, BuildSettings { backstop_off, temp, threads: used }, "{file} {encrypted} {threads}");
        }
        // Each setting is put back: memory sorts, no helper threads, the backstop.
        let (set, reset) = BuildSettings::for_store(true, false, 2).pragmas();
        assert_eq!(set, ["PRAGMA wal_autocheckpoint = 0", "PRAGMA temp_store = FILE", "PRAGMA threads = 2"]);
        assert_eq!(
            reset,
            [
                format!("PRAGMA wal_autocheckpoint = {}", crate::checkpoint::BACKSTOP_PAGES),
                "PRAGMA temp_store = MEMORY".to_owned(),
                "PRAGMA threads = 0".to_owned(),
            ]
        );
        assert_eq!(BuildSettings::for_store(false, false, 2).pragmas(), (vec![], vec![]));
        assert!((1..=3).contains(&sort_threads()));
    }

    #[tokio::test]
    async fn a_build_on_a_file_store_leaves_the_writer_as_every_connection_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db")).await.unwrap();
        let orders = CollectionName::new("work_orders").unwrap();
        ensure(&store, std::slice::from_ref(&orders), &[spec("work_orders", &["status"])]).await.unwrap();
        let mut writer = store.write_conn().await.unwrap();
        let temp: i64 = sqlx::query_scalar("PRAGMA temp_store").fetch_one(&mut *writer).await.unwrap();
        let threads: i64 = sqlx::query_scalar("PRAGMA threads").fetch_one(&mut *writer).await.unwrap();
        let backstop: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint").fetch_one(&mut *writer).await.unwrap();
        assert_eq!((temp, threads, backstop), (2, 0, i64::from(crate::checkpoint::BACKSTOP_PAGES)));
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'offsync_ix_%'")
                .fetch_all(&mut *writer)
                .await
                .unwrap();
        assert_eq!(names, [index_name(&spec("work_orders", &["status"]))]);
    }

    #[test]
    fn names_are_per_collection_and_fields_and_parse_back() {
        let a = index_name(&spec("work_orders", &["status", "due"]));
        let b = index_name(&spec("work_orders", &["status_due"]));
        let c = index_name(&spec("work_orders", &["due", "status"]));
        assert!(a != b && a != c && b != c);
        assert_eq!(collection_of(&a), Some("work_orders"));
        assert_eq!(collection_of("offsync_ix_x"), None);
        assert_eq!(collection_of("other_index"), None);
        assert_eq!(
            create_sql(&spec("work_orders", &["site.city"])),
            format!(
                "CREATE INDEX IF NOT EXISTS \"{}\" ON offsync_records (collection, json_extract(data, '$.site.city'), id) \
                 WHERE collection = 'work_orders' AND deleted = 0",
                index_name(&spec("work_orders", &["site.city"]))
            )
        );
    }
}

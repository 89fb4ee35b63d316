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
    // Building an index over a first download writes tens of MB of log in one commit,
    // past the writer's backstop: the commit would then copy it all back itself. The
    // background checkpointer (woken by taking the writer) does that instead; the
    // backstop is put back whatever happens to the build.
    let backstop = crate::checkpoint::BACKSTOP_PAGES;
    if store.path().is_some() {
        sqlx::query("PRAGMA wal_autocheckpoint = 0").execute(&mut *writer).await.map_err(storage)?;
    }
    let built = build(&mut writer, &stale, &missing).await;
    if store.path().is_some() {
        let restored = sqlx::query(&format!("PRAGMA wal_autocheckpoint = {backstop}")).execute(&mut *writer).await;
        // The build's own failure is the one to report; the background checkpointer
        // still copies the log if the backstop could not be put back.
        built?;
        restored.map_err(storage)?;
        return Ok(());
    }
    built
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

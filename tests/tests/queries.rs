//! Local queries on a real store file: every filter answers what the same predicate in
//! Rust answers, keyset pages walk the whole order exactly once, counts match, states
//! come with the rows, and bad queries are typed errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{WorkOrder, quiet, wo};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sync_core::{
    Cmp, CollectionSpec, Engine, Error, Filter, LocalEntity, Order, PendingChange, QueryBuilder, RecordState,
};
use sync_patterns::LastWriteWins;
use sync_sqlite::SqliteStore;
use sync_testkit::MemoryServer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Site {
    city: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: String,
    title: String,
    status: String,
    due: Option<i64>,
    priority: f64,
    done: bool,
    site: Site,
}

impl LocalEntity for Job {
    const COLLECTION: &'static str = "jobs";
    fn id(&self) -> &str {
        &self.id
    }
}

fn jobs() -> Vec<Job> {
    let statuses = ["open", "late", "done", "open", "waiting"];
    let cities = ["Lyon", "Oslo", "Porto"];
    let titles = ["Valve check", "Valve swap", "Pump service", "Filter", "valve (lower case)"];
    (0..40)
        .map(|i: i64| Job {
            id: format!("j{i:02}"),
            title: format!("{} {i}", titles[(i % 5) as usize]),
            status: statuses[(i % 5) as usize].into(),
            due: if i % 7 == 0 { None } else { Some((i * 13) % 50) },
            priority: (i % 4) as f64 * 1.25,
            done: i % 3 == 0,
            site: Site { city: cities[(i % 3) as usize].into() },
        })
        .collect()
}

async fn engine(dir: &tempfile::TempDir) -> Engine {
    Engine::builder()
        .store(Arc::new(SqliteStore::open(dir.path().join("q.db")).await.unwrap()))
        .transport(Arc::new(MemoryServer::new()))
        .collection(CollectionSpec::of::<Job>(LastWriteWins).index(&["status", "due"]).index(&["title"]))
        .options(common::offline())
        .build()
        .await
        .unwrap()
}

fn ids(found: &[Job]) -> Vec<String> {
    found.iter().map(|j| j.id.clone()).collect()
}

type Build = fn(QueryBuilder<Job>) -> QueryBuilder<Job>;
type Model = fn(&Job) -> bool;

#[tokio::test]
async fn every_filter_answers_what_the_same_predicate_in_rust_answers() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let all = jobs();
    let collection = engine.collection::<Job>().unwrap();
    collection.insert_many(&all).await.unwrap();
    let cases: Vec<(&str, Build, Model)> = vec![
        ("eq", |q| q.filter_eq("status", "open"), |j| j.status == "open"),
        ("ne", |q| q.filter_ne("status", "open"), |j| j.status != "open"),
        ("lt (nulls out)", |q| q.filter_lt("due", 20), |j| j.due.is_some_and(|d| d < 20)),
        ("le", |q| q.filter_le("due", 20), |j| j.due.is_some_and(|d| d <= 20)),
        ("gt", |q| q.filter_gt("priority", 1.25), |j| j.priority > 1.25),
        (
            "ge + in",
            |q| q.filter_ge("due", 20).filter_in("status", ["open", "late"]),
            |j| j.due.is_some_and(|d| d >= 20) && (j.status == "open" || j.status == "late"),
        ),
        ("null", |q| q.filter_null("due"), |j| j.due.is_none()),
        ("not null", |q| q.filter_not_null("due"), |j| j.due.is_some()),
        ("prefix (case matters)", |q| q.filter_prefix("title", "Valve"), |j| j.title.starts_with("Valve")),
        ("nested field", |q| q.filter_eq("site.city", "Lyon"), |j| j.site.city == "Lyon"),
        ("bool", |q| q.filter_eq("done", true), |j| j.done),
        (
            "or",
            |q| q.filter(Ok(Filter::eq("site.city", "Oslo").unwrap().or(Filter::eq("done", true).unwrap()))),
            |j| j.site.city == "Oslo" || j.done,
        ),
        (
            "and inside or",
            |q| {
                let open_soon = Filter::eq("status", "open").unwrap().and(Filter::compare("due", Cmp::Le, 30).unwrap());
                q.filter(Ok(open_soon.or(Filter::compare("priority", Cmp::Gt, 2.5).unwrap())))
            },
            |j| (j.status == "open" && j.due.is_some_and(|d| d <= 30)) || j.priority > 2.5,
        ),
        ("empty in", |q| q.filter_in::<&str>("status", []), |_| false),
        ("missing field", |q| q.filter_eq("nowhere", "x"), |_| false),
    ];
    for (name, build, model) in cases {
        let found = build(collection.query()).fetch().await.unwrap();
        let mut expected: Vec<String> = all.iter().filter(|j| model(j)).map(|j| j.id.clone()).collect();
        expected.sort();
        assert_eq!(ids(&found), expected, "{name}");
        let counted = build(collection.query()).count().await.unwrap();
        assert_eq!(counted, expected.len() as u64, "{name}: count");
    }
    engine.shutdown().await;
}

/// The order SQLite gives: by `due` descending (nulls last), then title ascending, then id.
fn model_order(a: &Job, b: &Job) -> std::cmp::Ordering {
    let due = match (a.due, b.due) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (Some(_), None) => std::cmp::Ordering::Less,
        (Some(x), Some(y)) => y.cmp(&x),
    };
    due.then_with(|| a.title.cmp(&b.title)).then_with(|| a.id.cmp(&b.id))
}

#[tokio::test]
async fn sort_keys_offsets_and_keyset_pages_walk_the_order_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let mut all = jobs();
    // Ties on both keys, so the id decides.
    all.push(Job { id: "j99".into(), ..all[3].clone() });
    let collection = engine.collection::<Job>().unwrap();
    collection.insert_many(&all).await.unwrap();
    let ordered = || collection.query().order_by("due", Order::Desc).order_by("title", Order::Asc);
    let mut expected = all.clone();
    expected.sort_by(model_order);
    let full = ordered().fetch().await.unwrap();
    assert_eq!(ids(&full), ids(&expected));
    assert_eq!(ids(&ordered().offset(10).limit(5).fetch().await.unwrap()), ids(&expected[10..15]));

    let mut walked = Vec::new();
    let mut page = ordered().limit(3).fetch().await.unwrap();
    while let Some(last) = page.last().cloned() {
        walked.extend(page);
        page = ordered().after(&last).limit(3).fetch().await.unwrap();
    }
    assert_eq!(ids(&walked), ids(&expected), "keyset pages skipped or repeated rows");
    // Ascending with nulls first, through a filter.
    let asc = || collection.query().filter_ne("status", "done").order_by("due", Order::Asc);
    let full = asc().fetch().await.unwrap();
    let mut walked = Vec::new();
    let mut page = asc().limit(4).fetch().await.unwrap();
    while let Some(last) = page.last().cloned() {
        walked.extend(page);
        page = asc().after(&last).limit(4).fetch().await.unwrap();
    }
    assert_eq!(ids(&walked), ids(&full));
    assert!(full[0].due.is_none(), "nulls sort first ascending");
    engine.shutdown().await;
}

#[tokio::test]
async fn bad_queries_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let jobs = engine.collection::<Job>().unwrap();
    let bad: Vec<QueryBuilder<Job>> = vec![
        jobs.query().filter_eq("not a path", 1),
        jobs.query().filter_eq("status", json!({"an": "object"})),
        jobs.query().filter_in("status", [json!([1, 2])]),
        jobs.query().filter_lt("due", json!(null)),
        jobs.query().filter_in("status", [json!(null)]),
        jobs.query().order_by("due; DROP TABLE", Order::Asc),
    ];
    for query in bad {
        assert!(matches!(query.fetch().await, Err(Error::InvalidQuery { .. })));
    }
    let built = Engine::builder()
        .store(Arc::new(SqliteStore::in_memory().await.unwrap()))
        .transport(Arc::new(MemoryServer::new()))
        .collection(CollectionSpec::of::<Job>(LastWriteWins).index(&["status", "bad path"]))
        .build()
        .await;
    assert!(matches!(built, Err(Error::Config { .. })), "{:?}", built.err());
    engine.shutdown().await;
}

#[tokio::test]
async fn rows_come_with_their_sync_state_and_pending_deletes_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    // Work orders under conflict detection, with a pull-only unit (to meet the conflict).
    let engine = common::engine_at(&dir.path().join("s.db"), &server, quiet()).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    for id in ["synced", "updated", "deleted", "acted", "conflicted"] {
        orders.insert(&wo(id, "acknowledged", 1)).await.unwrap();
    }
    engine.sync_now().await.unwrap();
    server.reject_record("failed");
    orders.insert(&wo("failed", "refused", 1)).await.unwrap();
    engine.sync_now().await.unwrap();
    orders.insert(&wo("created", "new", 1)).await.unwrap();
    orders.update(&wo("updated", "edited", 2)).await.unwrap();
    orders.delete("deleted").await.unwrap();
    orders.action("mark_arrived", Some("acted"), json!({})).await.unwrap();
    orders.update(&wo("conflicted", "mine", 2)).await.unwrap();
    server.put("work_orders", "conflicted", json!({"id": "conflicted", "title": "theirs", "n": 3}));
    engine.sync_unit("pull_orders", Default::default()).await.unwrap();

    let states = |rows: Vec<sync_core::Tracked<WorkOrder>>| {
        rows.into_iter().map(|t| (t.id.to_string(), t.state, t.entity.title)).collect::<Vec<_>>()
    };
    let pending = RecordState::Pending;
    let live = states(orders.query().fetch_tracked().await.unwrap());
    assert_eq!(
        live,
        [
            ("acted".into(), pending(PendingChange::Action), "acknowledged".to_owned()),
            ("conflicted".into(), RecordState::Conflict, "mine".into()),
            ("created".into(), pending(PendingChange::Create), "new".into()),
            ("failed".into(), RecordState::Failed, "refused".into()),
            ("synced".into(), RecordState::Synced, "acknowledged".into()),
            ("updated".into(), pending(PendingChange::Update), "edited".into()),
        ]
    );
    let with_deletes = states(orders.query().include_pending_deletes().fetch_tracked().await.unwrap());
    assert_eq!(with_deletes.len(), live.len() + 1);
    assert!(with_deletes.contains(&("deleted".into(), pending(PendingChange::Delete), "acknowledged".into())));
    assert_eq!(orders.query().include_pending_deletes().count().await.unwrap(), 7);
    assert_eq!(orders.query().count().await.unwrap(), 6);
    engine.shutdown().await;
}

/// The next result of a watch within `wait`, or None.
async fn next_within(watch: &mut sync_core::WatchStream<Job>, wait: std::time::Duration) -> Option<Vec<Job>> {
    use futures::StreamExt;
    tokio::time::timeout(wait, watch.next()).await.ok().flatten().map(|r| r.unwrap())
}

fn job(id: &str, status: &str) -> Job {
    Job {
        id: id.into(),
        title: format!("job {id}"),
        status: status.into(),
        due: Some(1),
        priority: 1.0,
        done: false,
        site: Site { city: "Lyon".into() },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_runs_again_only_for_changes_that_can_affect_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let jobs = engine.collection::<Job>().unwrap();
    jobs.insert(&job("a", "open")).await.unwrap();
    jobs.insert(&job("b", "done")).await.unwrap();
    let mut open = jobs.query().filter_eq("status", "open").watch();
    let quiet = std::time::Duration::from_millis(300);
    let soon = std::time::Duration::from_secs(10);
    assert_eq!(ids(&next_within(&mut open, soon).await.unwrap()), ["a"]);

    // Records that neither are shown nor match: no new result.
    jobs.update(&job("b", "cancelled")).await.unwrap();
    jobs.insert(&job("c", "done")).await.unwrap();
    assert!(next_within(&mut open, quiet).await.is_none(), "a change that cannot matter ran the watch");
    // A record that comes to match.
    jobs.update(&job("c", "open")).await.unwrap();
    assert_eq!(ids(&next_within(&mut open, soon).await.unwrap()), ["a", "c"]);
    // A shown record that stops matching.
    jobs.update(&job("a", "done")).await.unwrap();
    assert_eq!(ids(&next_within(&mut open, soon).await.unwrap()), ["c"]);
    // A shown record deleted.
    jobs.delete("c").await.unwrap();
    assert!(next_within(&mut open, soon).await.unwrap().is_empty());
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_page_runs_again_only_for_records_that_sort_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let jobs = engine.collection::<Job>().unwrap();
    let due = |id: &str, due: i64| Job { due: Some(due), ..job(id, "open") };
    for (id, d) in [("a", 10), ("b", 20), ("c", 30), ("d", 40)] {
        jobs.insert(&due(id, d)).await.unwrap();
    }
    // The first three by due date: a full page ending at c (due 30).
    let mut first = jobs.query().filter_eq("status", "open").order_by("due", Order::Asc).limit(3).watch();
    let quiet = std::time::Duration::from_millis(300);
    let soon = std::time::Duration::from_secs(10);
    assert_eq!(ids(&next_within(&mut first, soon).await.unwrap()), ["a", "b", "c"]);

    // Matching records that sort after the page's last row cannot enter it.
    jobs.insert(&due("e", 50)).await.unwrap();
    jobs.update(&due("d", 45)).await.unwrap();
    // Same due date as the last row, but after it by id: still outside.
    jobs.insert(&due("cc", 30)).await.unwrap();
    assert!(next_within(&mut first, quiet).await.is_none(), "a record after the page ran the watch");
    // One that sorts before the last row enters the page.
    jobs.insert(&due("bb", 25)).await.unwrap();
    assert_eq!(ids(&next_within(&mut first, soon).await.unwrap()), ["a", "b", "bb"]);
    // A shown row leaving makes room: the next one after the page comes in.
    jobs.delete("a").await.unwrap();
    assert_eq!(ids(&next_within(&mut first, soon).await.unwrap()), ["b", "bb", "c"]);
    // A record moved from beyond the page into it.
    jobs.update(&due("e", 1)).await.unwrap();
    assert_eq!(ids(&next_within(&mut first, soon).await.unwrap()), ["e", "b", "bb"]);

    // A page that is not full sees every matching change.
    let mut all = jobs.query().filter_eq("status", "open").order_by("due", Order::Asc).limit(100).watch();
    let shown = next_within(&mut all, soon).await.unwrap().len();
    jobs.insert(&due("z", 99)).await.unwrap();
    assert_eq!(next_within(&mut all, soon).await.unwrap().len(), shown + 1);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_folds_into_few_runs_and_ends_on_the_final_state() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let jobs = engine.collection::<Job>().unwrap();
    let mut all = jobs.query().filter_eq("status", "open").watch();
    let soon = std::time::Duration::from_secs(10);
    assert!(next_within(&mut all, soon).await.unwrap().is_empty());
    // 3,000 single writes as fast as they go, every one of them matching.
    let writer = {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            for i in 0..3000 {
                jobs.insert(&job(&format!("w{i:04}"), "open")).await.unwrap();
            }
        })
    };
    let mut runs = 0;
    let mut last = Vec::new();
    while last.len() < 3000 {
        last = next_within(&mut all, soon).await.expect("the watch stopped before the final state");
        runs += 1;
    }
    writer.await.unwrap();
    assert_eq!(last.len(), 3000);
    assert!(runs < 3000 / 2, "{runs} runs for 3,000 writes: the burst was not folded");
    engine.shutdown().await;
}

async fn declared_index_count(path: &std::path::Path) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", path.display())).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'offsync_ix_jobs_%'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_download_loads_without_the_indexes_and_builds_them_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let server = Arc::new(MemoryServer::new());
    for j in jobs() {
        server.put("jobs", &j.id.clone(), serde_json::to_value(j).unwrap());
    }
    let build = || async {
        Engine::builder()
            .store(Arc::new(SqliteStore::open(&path).await.unwrap()))
            .transport(server.clone())
            .collection(CollectionSpec::of::<Job>(LastWriteWins).index(&["status", "due"]).index(&["title"]))
            .options(quiet())
            .build()
            .await
            .unwrap()
    };
    let engine = build().await;
    assert_eq!(declared_index_count(&path).await, 2);
    // The first download fails half way: the indexes are back all the same.
    server.fail_next_pull(Error::Transient { message: "cut".into() });
    assert!(engine.sync_now().await.is_err());
    assert_eq!(declared_index_count(&path).await, 2);
    engine.sync_now().await.unwrap();
    assert_eq!(engine.collection::<Job>().unwrap().query().count().await.unwrap(), 40);
    assert_eq!(declared_index_count(&path).await, 2, "the indexes were not rebuilt after the download");
    engine.shutdown().await;
    // Stopped in the middle of a load (indexes dropped): the next start builds them.
    let store = SqliteStore::open(&path).await.unwrap();
    sync_core::LocalStore::suspend_indexes(&store, &sync_core::CollectionName::new("jobs").unwrap()).await.unwrap();
    assert_eq!(declared_index_count(&path).await, 0);
    store.close().await;
    let engine = build().await;
    assert_eq!(declared_index_count(&path).await, 2);
    engine.shutdown().await;
}

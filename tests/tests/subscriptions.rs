//! Subscriptions seen from devices: engine + SqliteStore + HttpTransport + the reference
//! server on 127.0.0.1, on each backend. A date-window subscription holds exactly the
//! records in its window and drops those that leave it; two overlapping subscriptions
//! store a record once, and dropping one keeps what the other still needs; a released
//! subscription keeps its data for its time to live, then lets go of it, except what is
//! pending or kept synced; a server without subscriptions is reported, not guessed at.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::quiet;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sync_core::subscription::{Bound, Subscribe, SubscriptionState};
use sync_core::{CollectionSpec, Direction, Engine, LocalEntity, SyncUnit};
use sync_patterns::ConflictDetection;
use sync_server::server::RunningServer;
use sync_sqlite::SqliteStore;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: String,
    assigned_to: String,
    due: String,
    note: String,
}

impl LocalEntity for Job {
    const COLLECTION: &'static str = "jobs";
    fn id(&self) -> &str {
        &self.id
    }
}

fn day(d: u32) -> String {
    format!("2026-12-{d:02}")
}

fn job(id: &str, assigned_to: &str, d: u32) -> Job {
    Job { id: id.into(), assigned_to: assigned_to.into(), due: day(d), note: String::new() }
}

/// A device of `user`; jobs synced whole, or on demand.
async fn device(dir: &tempfile::TempDir, user: &str, url: &str, on_demand: bool) -> Engine {
    let store = SqliteStore::open(dir.path().join(format!("{user}.db"))).await.unwrap();
    let mut spec = CollectionSpec::of::<Job>(ConflictDetection::new());
    if on_demand {
        spec = spec.on_demand();
    }
    Engine::builder()
        .store(Arc::new(store))
        .transport(Arc::new(common::http_as(url, user)))
        .collection(spec)
        .options(quiet())
        .build()
        .await
        .unwrap()
}

/// Tom's jobs due from `from` (inclusive) to `to` (exclusive).
fn window(from: u32, to: u32) -> Subscribe {
    Subscribe::to("jobs")
        .unwrap()
        .eq("assigned_to", "tom")
        .unwrap()
        .range("due", [Bound::Ge(json!(day(from))), Bound::Lt(json!(day(to)))])
        .unwrap()
}

async fn held(engine: &Engine) -> BTreeSet<String> {
    engine.collection::<Job>().unwrap().list().await.unwrap().into_iter().map(|j| j.id).collect()
}

fn ids(range: std::ops::Range<u32>) -> BTreeSet<String> {
    range.map(|d| format!("t{d}")).collect()
}

/// The dispatcher's device and Tom's (on demand) against `server`, in a directory of
/// their own, after the dispatcher wrote 25 days of Tom's jobs and 25 of Ann's.
async fn seeded(dir: &tempfile::TempDir, server: &RunningServer) -> (tempfile::TempDir, Engine, Engine) {
    let dir = tempfile::tempdir_in(dir.path()).unwrap();
    let disp = device(&dir, "disp", &server.url(), false).await;
    let tom = device(&dir, "tom", &server.url(), true).await;
    seed(&disp).await;
    (dir, disp, tom)
}

/// The dispatcher writes 25 days of Tom's jobs and 25 of Ann's.
async fn seed(disp: &Engine) {
    let jobs = disp.collection::<Job>().unwrap();
    for d in 1..=25 {
        jobs.insert(&job(&format!("t{d}"), "tom", d)).await.unwrap();
        jobs.insert(&job(&format!("a{d}"), "ann", d)).await.unwrap();
    }
    disp.sync_now().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_date_window_holds_exactly_its_records_and_drops_those_that_leave_it() {
    let dir = tempfile::tempdir().unwrap();
    for server in common::job_servers(&dir).await {
        let (_dir, disp, tom) = seeded(&dir, &server).await;

        // Nothing before subscribing: an on-demand collection is not pulled whole.
        tom.sync_now().await.unwrap();
        assert!(held(&tom).await.is_empty());

        let mut sub = tom.subscribe(window(5, 15)).await.unwrap();
        tom.sync_now().await.unwrap();
        sub.synced().await.unwrap();
        assert_eq!(held(&tom).await, ids(5..15), "exactly the window");
        let status = sub.status().borrow().clone();
        assert_eq!((status.received, status.total), (10, Some(10)), "progress with the server's total: {status:?}");

        // The dispatcher moves t5 out of the window and t3 into it, deletes t6 and
        // hands t7 to Ann; Ann's jobs change too.
        let jobs = disp.collection::<Job>().unwrap();
        jobs.update(&job("t5", "tom", 20)).await.unwrap();
        jobs.update(&job("t3", "tom", 9)).await.unwrap();
        jobs.delete("t6").await.unwrap();
        jobs.update(&job("t7", "ann", 7)).await.unwrap();
        jobs.update(&job("a9", "ann", 3)).await.unwrap();
        disp.sync_now().await.unwrap();
        tom.sync_now().await.unwrap();
        let mut want = ids(5..15);
        for gone in ["t5", "t6", "t7"] {
            want.remove(gone);
        }
        want.insert("t3".into());
        assert_eq!(held(&tom).await, want, "{} moved in and out", server.url());
        assert_eq!(tom.collection::<Job>().unwrap().get("t3").await.unwrap(), Some(job("t3", "tom", 9)));
        assert!(matches!(sub.status().borrow().state, SubscriptionState::Synced { .. }));
        drop(sub);
        tom.shutdown().await;
        disp.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_store_a_record_once_and_dropping_one_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    for server in common::job_servers(&dir).await {
        let (_dir, disp, tom) = seeded(&dir, &server).await;
        let early = tom.subscribe(window(5, 15).ttl(Duration::ZERO)).await.unwrap();
        let late = tom.subscribe(window(10, 20)).await.unwrap();
        // The same subscription again is the same one, sharing its status.
        let again = tom.subscribe(window(10, 20)).await.unwrap();
        assert_eq!(again.id(), late.id());
        tom.sync_now().await.unwrap();
        assert_eq!(held(&tom).await, ids(5..20), "the union, each record once");
        assert_eq!(tom.subscriptions().await.unwrap().len(), 2);

        // Dropping the early window (no time to live) lets go of 5..9 only.
        drop(early);
        tokio::time::sleep(Duration::from_millis(100)).await; // the release is saved by a task
        tom.sync_now().await.unwrap();
        assert_eq!(held(&tom).await, ids(10..20), "what the late window needs stays");
        assert_eq!(tom.subscriptions().await.unwrap().len(), 1);

        // One of two handles on the late window going changes nothing.
        drop(again);
        tokio::time::sleep(Duration::from_millis(100)).await;
        tom.sync_now().await.unwrap();
        assert_eq!(held(&tom).await, ids(10..20));
        drop(late);
        tom.shutdown().await;
        disp.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_leaves_one_subscription_stays_for_another_that_holds_it() {
    let staying = window(10, 20);
    // The leaving window's page must be applied after the staying one's (pages go in
    // the order of subscription ids), or a removal that forgot the other holder would
    // be put right by the data that follows it: pick a window whose id sorts after.
    let leaving = (0..5)
        .map(|k| window(5, 13 + k))
        .find(|w| w.id() > staying.id())
        .expect("one of five windows has an id after the staying one's");
    let dir = tempfile::tempdir().unwrap();
    for server in common::job_servers(&dir).await {
        let (_dir, disp, tom) = seeded(&dir, &server).await;
        let _a = tom.subscribe(leaving.clone()).await.unwrap();
        let _b = tom.subscribe(staying.clone()).await.unwrap();
        tom.sync_now().await.unwrap();
        assert!(held(&tom).await.contains("t12"));
        // t12 moves to the 19th: out of the leaving window, still in the staying one.
        disp.collection::<Job>().unwrap().update(&job("t12", "tom", 19)).await.unwrap();
        disp.sync_now().await.unwrap();
        tom.sync_now().await.unwrap();
        assert_eq!(tom.collection::<Job>().unwrap().get("t12").await.unwrap(), Some(job("t12", "tom", 19)));
        tom.shutdown().await;
        disp.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_subscription_keeps_its_data_for_its_ttl_unless_kept_synced() {
    let dir = tempfile::tempdir().unwrap();
    for server in common::job_servers(&dir).await {
        let (_dir, disp, tom) = seeded(&dir, &server).await;
        let ttl = Duration::from_millis(600);
        let sub = tom.subscribe(window(5, 10).ttl(ttl)).await.unwrap();
        let mut kept = tom.subscribe(window(20, 23).ttl(Duration::ZERO)).await.unwrap();
        kept.keep_synced(true).await.unwrap();
        tom.sync_now().await.unwrap();
        let mut both = ids(5..10);
        both.extend(ids(20..23));
        assert_eq!(held(&tom).await, both);

        drop(sub);
        drop(kept);
        tokio::time::sleep(Duration::from_millis(100)).await; // the release is saved by a task
        tom.sync_now().await.unwrap();
        assert_eq!(held(&tom).await, both, "released, but within its time to live");
        // Past it: the window's records go, except what is kept synced, which still
        // syncs with no handle.
        tokio::time::sleep(ttl).await;
        disp.collection::<Job>().unwrap().insert(&job("t21b", "tom", 21)).await.unwrap();
        disp.sync_now().await.unwrap();
        tom.sync_now().await.unwrap();
        let mut left = ids(20..23);
        left.insert("t21b".into());
        let now = held(&tom).await;
        assert_eq!(now, left, "{} past the time to live; the kept subscription still syncs", server.url());
        assert_eq!(tom.subscriptions().await.unwrap().len(), 1, "only the kept one remains");
        tom.shutdown().await;
        disp.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_and_conflicted_records_outlive_their_subscription() {
    let dir = tempfile::tempdir().unwrap();
    for server in common::job_servers(&dir).await {
        let dir = tempfile::tempdir_in(dir.path()).unwrap();
        let disp = device(&dir, "disp", &server.url(), false).await;
        let store = SqliteStore::open(dir.path().join("tom.db")).await.unwrap();
        let tom = Engine::builder()
            .store(Arc::new(store))
            .transport(Arc::new(common::http_as(&server.url(), "tom")))
            .collection(CollectionSpec::of::<Job>(ConflictDetection::new()).on_demand())
            .unit(SyncUnit::new("down", Direction::Pull, &["jobs"]))
            .options(quiet())
            .build()
            .await
            .unwrap();
        seed(&disp).await;
        let sub = tom.subscribe(window(5, 9).ttl(Duration::ZERO)).await.unwrap();
        tom.sync_now().await.unwrap();
        assert_eq!(held(&tom).await, ids(5..9));
        // Tom edits t6 and t7; the dispatcher edits t7 too.
        let jobs = tom.collection::<Job>().unwrap();
        let t6 = Job { note: "parts ordered".into(), ..job("t6", "tom", 6) };
        let t7 = Job { note: "on site".into(), ..job("t7", "tom", 7) };
        jobs.update(&t6).await.unwrap();
        jobs.update(&t7).await.unwrap();
        disp.collection::<Job>()
            .unwrap()
            .update(&Job { note: "customer called".into(), ..job("t7", "tom", 7) })
            .await
            .unwrap();
        disp.sync_now().await.unwrap();
        drop(sub);
        tokio::time::sleep(Duration::from_millis(100)).await; // the release is saved by a task
        // A pull alone, the subscription gone: the clean records go, t6 (pending) stays.
        tom.sync_unit("down", Default::default()).await.unwrap();
        assert_eq!(held(&tom).await, BTreeSet::from(["t6".to_owned(), "t7".to_owned()]), "{}", server.url());
        assert_eq!(jobs.get("t6").await.unwrap(), Some(t6.clone()), "a pending write is never dropped");
        // Pushing: t6 goes out and, acknowledged and held by no subscription, goes
        // after the pull that follows; t7 conflicts and stays with its conflict.
        tom.sync_now().await.unwrap();
        assert_eq!(jobs.get("t6").await.unwrap(), None, "{}: sent, and no subscription holds it", server.url());
        assert_eq!(tom.conflicts().await.unwrap().len(), 1);
        assert_eq!(jobs.get("t7").await.unwrap(), Some(t7), "a conflicted record is never dropped");
        disp.sync_now().await.unwrap();
        assert_eq!(disp.collection::<Job>().unwrap().get("t6").await.unwrap(), Some(t6), "the edit reached the server");
        tom.shutdown().await;
        disp.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_written_here_stays_while_a_subscription_covers_it_and_goes_when_none_does() {
    let dir = tempfile::tempdir().unwrap();
    for server in common::job_servers(&dir).await {
        let (_dir, disp, tom) = seeded(&dir, &server).await;
        let _week = tom.subscribe(window(5, 10)).await.unwrap();
        tom.sync_now().await.unwrap();
        let jobs = tom.collection::<Job>().unwrap();
        // Two new jobs: one inside the window, one outside it.
        jobs.insert(&job("t7b", "tom", 7)).await.unwrap();
        jobs.insert(&job("t20b", "tom", 20)).await.unwrap();
        tom.sync_now().await.unwrap();
        let mut expected = ids(5..10);
        expected.insert("t7b".into());
        assert_eq!(held(&tom).await, expected, "{}: the window's, and only they", server.url());
        disp.sync_now().await.unwrap();
        let on_server = disp.collection::<Job>().unwrap();
        for id in ["t7b", "t20b"] {
            assert!(on_server.get(id).await.unwrap().is_some(), "{id} reached the server");
        }
        tom.shutdown().await;
        disp.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_the_cache_keeps_pending_writes_and_a_read_brings_a_record_back() {
    let dir = tempfile::tempdir().unwrap();
    for server in common::job_servers(&dir).await {
        let (_dir, disp, tom) = seeded(&dir, &server).await;
        let _week = tom.subscribe(window(5, 10)).await.unwrap();
        tom.sync_now().await.unwrap();
        assert!(tom.status().borrow().cache.bytes > 0, "the status counts what the window brought");
        let jobs = tom.collection::<Job>().unwrap();
        let t7 = Job { note: "on my way".into(), ..job("t7", "tom", 7) };
        jobs.update(&t7).await.unwrap(); // queued, not sent
        assert_eq!(tom.trim_cache(0).await.unwrap(), 4, "{}: every clean record goes", server.url());
        assert_eq!(held(&tom).await, BTreeSet::from(["t7".to_owned()]), "the pending write stays");
        assert_eq!(tom.status().borrow().cache.bytes, 0);
        // Asked for while its window is held: nothing now, then fetched again.
        assert_eq!(jobs.get("t6").await.unwrap(), None);
        tom.sync_now().await.unwrap();
        assert_eq!(jobs.get("t6").await.unwrap(), Some(job("t6", "tom", 6)), "{}: fetched again", server.url());
        assert_eq!(held(&tom).await, ids(5..10), "the window is whole again");
        assert_eq!(jobs.get("t7").await.unwrap(), Some(t7), "with the local edit, now sent");
        tom.shutdown().await;
        disp.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_synced_on_a_collection_keeps_all_its_subscriptions_until_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    for server in common::job_servers(&dir).await {
        let (_dir, disp, tom) = seeded(&dir, &server).await;
        // A whole collection is always kept: on is nothing new, off is refused.
        disp.keep_synced("jobs", true).await.unwrap();
        assert!(matches!(disp.keep_synced("jobs", false).await, Err(sync_core::Error::Config { .. })));

        let early = tom.subscribe(window(1, 3).ttl(Duration::ZERO)).await.unwrap();
        tom.sync_now().await.unwrap();
        tom.keep_synced("jobs", true).await.unwrap();
        let late = tom.subscribe(window(20, 22).ttl(Duration::ZERO)).await.unwrap();
        tom.sync_now().await.unwrap();
        drop((early, late));
        tokio::time::sleep(Duration::from_millis(100)).await; // the release is saved by a task
        // Released with no time to live, yet kept: both stay, keep syncing, and the
        // budget leaves them alone.
        disp.collection::<Job>().unwrap().insert(&job("t21b", "tom", 21)).await.unwrap();
        disp.sync_now().await.unwrap();
        tom.sync_now().await.unwrap();
        let mut kept = ids(1..3);
        kept.extend(ids(20..22));
        kept.insert("t21b".into());
        assert_eq!(held(&tom).await, kept, "{}: kept synced with no handle", server.url());
        assert_eq!(tom.trim_cache(0).await.unwrap(), 0, "kept records are never evicted");
        // Off: released subscriptions go at the next sync.
        tom.keep_synced("jobs", false).await.unwrap();
        tom.sync_now().await.unwrap();
        assert!(held(&tom).await.is_empty(), "{}: no longer kept", server.url());
        tom.shutdown().await;
        disp.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_subscriptions_is_reported_on_the_subscription() {
    let server = Arc::new(sync_testkit::MemoryServer::new());
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("d.db")).await.unwrap();
    let engine = Engine::builder()
        .store(Arc::new(store))
        .transport(server)
        .collection(CollectionSpec::of::<Job>(ConflictDetection::new()).on_demand())
        .options(quiet())
        .build()
        .await
        .unwrap();
    let mut sub = engine.subscribe(window(1, 2)).await.unwrap();
    engine.sync_now().await.unwrap();
    let err = sub.synced().await.unwrap_err();
    assert!(err.to_string().contains("does not serve subscriptions"), "{err}");
    // A collection synced whole refuses subscriptions, by name.
    let whole = Engine::builder()
        .store(Arc::new(SqliteStore::in_memory().await.unwrap()))
        .transport(Arc::new(sync_testkit::MemoryServer::new()))
        .collection(CollectionSpec::of::<Job>(ConflictDetection::new()))
        .options(quiet())
        .build()
        .await
        .unwrap();
    let refused = whole.subscribe(window(1, 2)).await.unwrap_err();
    assert!(matches!(refused, sync_core::Error::Config { .. }), "{refused}");
}

//! The cache budget seen from a device: engine + SqliteStore + HttpTransport + the
//! reference server on 127.0.0.1, on each backend. A technician browses 50 MiB of jobs,
//! a day's window at a time, on a 1 MiB budget: the store stays within the budget plus
//! one page (measured on the file, not taken from the engine), the day on screen is
//! whole, and records with an unsent write, a conflict or a kept-synced subscription
//! all survive. An evicted record
//! comes back when its subscription is held again, or when the app asks for it while its
//! subscription is held.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::quiet;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sync_core::subscription::{Bound, Subscribe};
use sync_core::{CollectionSpec, Direction, Engine, EngineOptions, LocalEntity, SyncUnit};
use sync_patterns::ConflictDetection;
use sync_sqlite::SqliteStore;

const MIB: u64 = 1024 * 1024;
/// Days of jobs on the server, and jobs per day.
const DAYS: u32 = 200;
const PER_DAY: u32 = 25;
/// Each job carries a 10 KiB note: 200 × 25 × 10 KiB = 50 MiB (stored with its
/// acknowledged base, about twice that).
const NOTE: usize = 10 * 1024;
/// Tom's pull pages: 10 records, about 200 KiB stored.
const PULL_LIMIT: u32 = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: String,
    assigned_to: String,
    due: u32,
    note: String,
}

impl LocalEntity for Job {
    const COLLECTION: &'static str = "jobs";
    fn id(&self) -> &str {
        &self.id
    }
}

fn job(day: u32, n: u32) -> Job {
    Job { id: format!("d{day}-{n}"), assigned_to: "tom".into(), due: day, note: "x".repeat(NOTE) }
}

/// The dispatcher's device, after writing every day's jobs (pushed 100 at a time, to
/// stay under the server's body limit).
async fn dispatcher(dir: &Path, url: &str) -> Engine {
    let store = SqliteStore::open(dir.join("disp.db")).await.unwrap();
    let disp = Engine::builder()
        .store(Arc::new(store))
        .transport(Arc::new(common::http_as(url, "disp")))
        .collection(CollectionSpec::of::<Job>(ConflictDetection::new()))
        .unit(SyncUnit::new("up", Direction::Push, &["jobs"]))
        .options(EngineOptions { push_batch: 100, ..quiet() })
        .build()
        .await
        .unwrap();
    let jobs = disp.collection::<Job>().unwrap();
    let all: Vec<Job> = (0..DAYS).flat_map(|d| (0..PER_DAY).map(move |n| job(d, n))).collect();
    jobs.insert_many(&all).await.unwrap();
    disp.sync_unit("up", Default::default()).await.unwrap();
    disp
}

/// Tom's device: jobs on demand, a 1 MiB budget, small pages, and a pull-only unit so
/// that a pending write stays pending while he browses.
async fn technician(dir: &Path, url: &str) -> Engine {
    let store = SqliteStore::open(dir.join("tom.db")).await.unwrap();
    Engine::builder()
        .store(Arc::new(store))
        .transport(Arc::new(common::http_as(url, "tom")))
        .collection(CollectionSpec::of::<Job>(ConflictDetection::new()).on_demand())
        .unit(SyncUnit::new("down", Direction::Pull, &["jobs"]))
        .options(EngineOptions { cache_budget: MIB, pull_limit: PULL_LIMIT, ..quiet() })
        .build()
        .await
        .unwrap()
}

/// Holds the window of days `from..to` until it has synced (through the pull-only unit).
async fn browse(tom: &Engine, from: u32, to: u32) -> sync_core::SubscriptionHandle {
    let mut window = tom.subscribe(days(from, to)).await.unwrap();
    tom.sync_unit("down", Default::default()).await.unwrap();
    window.synced().await.unwrap();
    window
}

fn days(from: u32, to: u32) -> Subscribe {
    Subscribe::to("jobs")
        .unwrap()
        .eq("assigned_to", "tom")
        .unwrap()
        .range("due", [Bound::Ge(json!(from)), Bound::Lt(json!(to))])
        .unwrap()
}

async fn on_day(engine: &Engine, day: u32) -> BTreeSet<String> {
    let jobs = engine.collection::<Job>().unwrap();
    jobs.query().filter_eq("due", day).fetch().await.unwrap().into_iter().map(|j| j.id).collect()
}

fn day_ids(day: u32) -> BTreeSet<String> {
    (0..PER_DAY).map(|n| format!("d{day}-{n}")).collect()
}

/// What the budget counts, read from the store file with a connection of its own: the
/// bytes (id, data, base) of clean records no kept-synced subscription holds.
async fn stored_bytes(file: &Path) -> u64 {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", file.display())).await.unwrap();
    let bytes: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(length(CAST(id AS BLOB)) + coalesce(length(CAST(data AS BLOB)), 0) \
                            + coalesce(length(CAST(base AS BLOB)), 0)), 0) \
           FROM offsync_records r WHERE collection = 'jobs' \
            AND NOT EXISTS (SELECT 1 FROM offsync_outbox o WHERE o.collection = r.collection AND o.record_id = r.id) \
            AND NOT EXISTS (SELECT 1 FROM offsync_conflicts c WHERE c.collection = r.collection AND c.record_id = r.id) \
            AND NOT EXISTS (SELECT 1 FROM offsync_members m JOIN offsync_subscriptions s ON s.id = m.subscription \
                             WHERE m.collection = r.collection AND m.id = r.id AND s.keep_synced)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    u64::try_from(bytes).unwrap()
}

/// One pull page of these jobs as stored: the most the cache may pass its budget by.
fn one_page() -> u64 {
    let record = serde_json::to_string(&job(DAYS, PER_DAY)).unwrap().len() as u64;
    u64::from(PULL_LIMIT) * (2 * record + 16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsing_50_mib_on_a_1_mib_budget_stays_within_a_page_of_it_and_keeps_pending_and_conflicted() {
    let dir = tempfile::tempdir().unwrap();
    for server in common::job_servers(&dir).await {
        let dir = tempfile::tempdir_in(dir.path()).unwrap();
        let disp = dispatcher(dir.path(), &server.url()).await;
        let tom = technician(dir.path(), &server.url()).await;
        let jobs = tom.collection::<Job>().unwrap();

        // Day 0: Tom edits d0-1 (pending: he only pulls from here on) and d0-2, which the
        // dispatcher edits too, so that pushing it makes a conflict.
        let first = tom.subscribe(days(0, 1)).await.unwrap();
        tom.sync_unit("down", Default::default()).await.unwrap();
        assert_eq!(on_day(&tom, 0).await, day_ids(0));
        let conflicted = Job { note: "tom was here".into(), ..job(0, 2) };
        jobs.update(&conflicted).await.unwrap();
        disp.collection::<Job>().unwrap().update(&Job { note: "dispatch too".into(), ..job(0, 2) }).await.unwrap();
        disp.sync_unit("up", Default::default()).await.unwrap();
        tom.sync_now().await.unwrap();
        assert_eq!(tom.conflicts().await.unwrap().len(), 1);
        // d0-1: Tom hands it to Ann, which the server refuses: the write stays in the
        // outbox, parked, until he retries or discards it. (A queued write is kept by
        // the same outbox rule; the store's conformance case checks both.)
        let pending = Job { assigned_to: "ann".into(), ..job(0, 1) };
        jobs.update(&pending).await.unwrap();
        tom.sync_now().await.unwrap();
        assert_eq!(tom.failed_mutations().await.unwrap().len(), 1, "{}: the server refused the write", server.url());
        drop(first);

        // Browse every day once: hold its window, read it, let it go.
        let file = dir.path().join("tom.db");
        let mut most = 0;
        for day in 1..DAYS {
            let _window = browse(&tom, day, day + 1).await;
            assert_eq!(on_day(&tom, day).await, day_ids(day), "{}: the day on screen is whole", server.url());
            let bytes = stored_bytes(&file).await;
            most = most.max(bytes);
            assert!(
                bytes <= MIB + one_page(),
                "{}: day {day}: {bytes} bytes stored, budget {MIB} + one page {}",
                server.url(),
                one_page()
            );
        }
        eprintln!("{}: at most {most} bytes stored (budget {MIB}, one page {})", server.url(), one_page());

        // The early days were evicted; what the budget never touches is all there.
        assert!(on_day(&tom, 1).await.is_empty(), "day 1 was evicted");
        // (Compared by their short fields: a failure would print the 10 KiB notes.)
        let brief = |j: Option<Job>| j.map(|j| (j.id, j.assigned_to, j.note.len()));
        assert_eq!(
            brief(jobs.get("d0-1").await.unwrap()),
            brief(Some(pending)),
            "a record with a parked write survives"
        );
        assert_eq!(
            jobs.get("d0-2").await.unwrap().map(|j| j.note),
            Some(conflicted.note),
            "a conflicted record survives"
        );
        assert_eq!(tom.conflicts().await.unwrap().len(), 1);
        assert_eq!(tom.status().borrow().cache.budget, MIB);
        assert!(tom.status().borrow().cache.bytes <= MIB, "the status shows the cache within its budget");
        tom.shutdown().await;
        disp.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_synced_data_survives_a_budget_far_smaller_than_it() {
    let dir = tempfile::tempdir().unwrap();
    for server in common::job_servers(&dir).await {
        let dir = tempfile::tempdir_in(dir.path()).unwrap();
        let disp = dispatcher(dir.path(), &server.url()).await;
        let tom = technician(dir.path(), &server.url()).await;
        // 10 days kept synced: about 5 MiB stored, five times the budget.
        let mut kept = tom.subscribe(days(0, 10)).await.unwrap();
        kept.keep_synced(true).await.unwrap();
        drop(kept);
        // Other days browsed after it push the cache past its budget again and again.
        for day in 10..30 {
            let _window = browse(&tom, day, day + 1).await;
        }
        for day in 0..10 {
            assert_eq!(on_day(&tom, day).await, day_ids(day), "{}: kept day {day} is whole", server.url());
        }
        assert!(on_day(&tom, 10).await.is_empty(), "a browsed day was evicted");
        assert!(stored_bytes(&dir.path().join("tom.db")).await <= MIB + one_page());
        tom.shutdown().await;
        disp.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_record_is_fetched_again_when_read_while_online() {
    let dir = tempfile::tempdir().unwrap();
    for server in common::job_servers(&dir).await {
        let dir = tempfile::tempdir_in(dir.path()).unwrap();
        let disp = dispatcher(dir.path(), &server.url()).await;
        let tom = technician(dir.path(), &server.url()).await;
        let jobs = tom.collection::<Job>().unwrap();
        drop(browse(&tom, 0, 1).await);
        for day in 1..6 {
            let _window = browse(&tom, day, day + 1).await;
        }
        assert!(on_day(&tom, 0).await.is_empty(), "{}: day 0 was evicted", server.url());

        // Held again: its download starts over and brings the evicted records back.
        let _early = browse(&tom, 0, 1).await;
        assert_eq!(on_day(&tom, 0).await, day_ids(0), "{}: held again, fetched again", server.url());

        // A window larger than the budget evicts its own least recently read records;
        // asking for one while online fetches it again (the answer now is what the
        // store holds; the record arrives with the sync the miss starts).
        let _wide = browse(&tom, 10, 14).await;
        let held: BTreeSet<String> = {
            let mut all = BTreeSet::new();
            for day in 10..14 {
                all.extend(on_day(&tom, day).await);
            }
            all
        };
        let evicted =
            (10..14).flat_map(day_ids).find(|id| !held.contains(id)).expect("a wide window passes the budget");
        assert_eq!(jobs.get(&evicted).await.unwrap(), None, "not stored now");
        tom.sync_unit("down", Default::default()).await.unwrap();
        assert!(jobs.get(&evicted).await.unwrap().is_some(), "{}: {evicted} fetched again", server.url());
        drop(disp);
        tom.shutdown().await;
    }
}

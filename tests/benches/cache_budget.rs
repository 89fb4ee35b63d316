//! `cache_budget`: what the cache budget costs, on a real store file.
//!
//! - Eviction of `CACHE_BENCH_N` records (default 100,000) held by subscriptions down to
//!   a 1 MiB budget: the measure and the eviction in ms, and the p50/p99/max of paced
//!   local writes made while it runs, beside the same writes with no eviction (same run).
//! - The overhead of noting reads for the least-recently-used order: `get` and a
//!   50-row list query on a collection synced on demand (reads noted) beside the same
//!   records in a whole collection (not noted), interleaved in one run; and what
//!   handing 10,000 noted reads to the store costs.
//!
//! The records are stored through `LocalStore::apply_pull_page` with subscription pages,
//! the path a pull takes, without a server: the figures are the store's and the engine's.
//!
//! Run with: `cargo bench -p offsync-tests --bench cache_budget`
//! (`CACHE_BENCH_N` records, `CACHE_BENCH_RUNS` timed reads per figure, default 20,000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "shared/mod.rs"]
mod shared;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::{Order, env, order, percentile, us};
use sync_core::pattern::{LocalRecordState, PullAction};
use sync_core::protocol::Change;
use sync_core::store::{CollectionPage, JsonObject, LocalWrite, SubscriptionPart, WriteKind};
use sync_core::subscription::{Subscribe, SubscriptionRow};
use sync_core::{
    CollectionName, CollectionSpec, Cursor, Engine, EngineOptions, LocalEntity, LocalStore, MutationId, RecordId,
    Version,
};
use sync_patterns::ConflictDetection;
use sync_sqlite::SqliteStore;
use sync_testkit::MemoryServer;

/// The same record as [`Order`], in a collection synced on demand.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job(Order);

impl LocalEntity for Job {
    const COLLECTION: &'static str = "jobs";
    fn id(&self) -> &str {
        &self.0.id
    }
}

const MIB: u64 = 1024 * 1024;
/// The pause between the paced writes.
const PACE: Duration = Duration::from_millis(2);

fn decide(_: &CollectionName, _: Option<&LocalRecordState>, _: &Change) -> PullAction {
    PullAction::Apply
}

fn change(collection: &str, n: u64) -> Change {
    let o = order(n);
    Change {
        collection: CollectionName::new(collection).unwrap(),
        record_id: RecordId::new(&o.id).unwrap(),
        version: Version(1),
        deleted: false,
        removed: false,
        data: Some(serde_json::to_value(&o).unwrap()),
        mutation_id: None,
    }
}

/// Ten subscriptions of `jobs`, the first five released: what a device that browsed ten
/// screens holds.
fn subscriptions() -> Vec<SubscriptionRow> {
    (0..10)
        .map(|i| {
            let s = Subscribe::to("jobs").unwrap().eq("screen", i).unwrap();
            SubscriptionRow {
                id: s.id(),
                query: s.query().clone(),
                cursor: None,
                ttl: Duration::from_secs(3600),
                keep_synced: false,
                active: i >= 5,
                released_at: (i < 5).then(Utc::now),
                synced_at: None,
            }
        })
        .collect()
}

/// Stores `n` jobs held by the ten subscriptions (and, with `whole`, the same records
/// in the whole collection `work_orders`), 1,000 to a page.
async fn fill(store: &SqliteStore, n: u64, whole: bool) {
    let subs = subscriptions();
    for sub in &subs {
        store.save_subscription(sub).await.unwrap();
    }
    for start in (0..n).step_by(1000) {
        let end = (start + 1000).min(n);
        let sub = &subs[(start / 1000) as usize % subs.len()];
        let mut pages = vec![CollectionPage {
            collection: CollectionName::new("jobs").unwrap(),
            stage: false,
            reset: false,
            changes: (start..end).map(|k| change("jobs", k)).collect(),
            cursor: Some(Cursor(format!("s{end}"))),
            subscription: Some(SubscriptionPart { id: sub.id.clone(), finished: true }),
        }];
        if whole {
            pages.push(CollectionPage {
                collection: CollectionName::new("work_orders").unwrap(),
                stage: false,
                reset: false,
                changes: (start..end).map(|k| change("work_orders", k)).collect(),
                cursor: Some(Cursor(format!("c{end}"))),
                subscription: None,
            });
        }
        store.apply_pull_page(pages, &decide, Utc::now()).await.unwrap();
    }
}

fn note(k: u64) -> LocalWrite {
    LocalWrite {
        mutation_id: MutationId::generate(),
        collection: CollectionName::new("notes").unwrap(),
        record_id: Some(RecordId::new(format!("note-{k}")).unwrap()),
        kind: WriteKind::Insert { data: JsonObject::from_serialize(&json!({"text": "checked", "k": k})).unwrap() },
        versioned: true,
        at: Utc::now(),
    }
}

/// Paced writes until `stop`; their latencies, sorted.
async fn paced_writes(store: Arc<SqliteStore>, first: u64, stop: Arc<tokio::sync::Notify>) -> Vec<Duration> {
    let mut took = Vec::new();
    let mut k = first;
    loop {
        let started = Instant::now();
        store.write(note(k)).await.unwrap();
        took.push(started.elapsed());
        k += 1;
        tokio::select! {
            () = stop.notified() => break,
            () = tokio::time::sleep(PACE) => {}
        }
    }
    took.sort();
    took
}

fn line(label: &str, took: &[Duration]) {
    println!(
        "{label:<44} n={:>5}  p50 {:>8.0} µs  p99 {:>8.0} µs  max {:>8.0} µs",
        took.len(),
        us(percentile(took, 0.5)),
        us(percentile(took, 0.99)),
        us(*took.last().unwrap())
    );
}

async fn eviction(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("device.db")).await.unwrap());
    let started = Instant::now();
    fill(&store, n, false).await;
    println!("stored {n} jobs held by 10 subscriptions in {:.1} s", started.elapsed().as_secs_f64());

    // Baseline: the same paced writes for a second, nothing else running.
    let stop = Arc::new(tokio::sync::Notify::new());
    let writer = tokio::spawn(paced_writes(store.clone(), 0, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.notify_one();
    let baseline = writer.await.unwrap();

    let stop = Arc::new(tokio::sync::Notify::new());
    let writer = tokio::spawn(paced_writes(store.clone(), 1_000_000, stop.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let size = store.cache_size().await.unwrap();
    let measured = started.elapsed();
    let low_water = MIB - MIB / 10;
    let evicted = store.evict(size - low_water).await.unwrap();
    let total = started.elapsed();
    stop.notify_one();
    let during = writer.await.unwrap();
    let left = store.cache_size().await.unwrap();

    println!(
        "cache {:.1} MiB -> {:.2} MiB (budget 1 MiB): {} records evicted",
        size as f64 / MIB as f64,
        left as f64 / MIB as f64,
        evicted.records.len()
    );
    println!(
        "measure {:.1} ms, measure + eviction {:.0} ms ({:.1} µs per record)",
        measured.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        us(total) / evicted.records.len() as f64
    );
    line("local write, nothing else running", &baseline);
    line("local write, during the eviction", &during);
    println!("write p99 during / alone: {:.2}", us(percentile(&during, 0.99)) / us(percentile(&baseline, 0.99)));
}

async fn read_overhead(n: u64, runs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("device.db")).await.unwrap());
    fill(&store, n, true).await;
    let engine = Engine::builder()
        .store(store.clone())
        .transport(Arc::new(MemoryServer::new()))
        .collection(CollectionSpec::of::<Order>(ConflictDetection::new()))
        .collection(CollectionSpec::of::<Job>(ConflictDetection::new()).on_demand())
        .options(EngineOptions {
            sync_on_start: false,
            start_online: false,
            cache_budget: 1024 * MIB,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let (whole, on_demand) = (engine.collection::<Order>().unwrap(), engine.collection::<Job>().unwrap());
    let id = |i: usize| order((i as u64 * 7919) % n).id;

    let (mut get_whole, mut get_noted) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs {
        let key = id(i);
        let started = Instant::now();
        assert!(whole.get(&key).await.unwrap().is_some());
        get_whole.push(started.elapsed());
        let started = Instant::now();
        assert!(on_demand.get(&key).await.unwrap().is_some());
        get_noted.push(started.elapsed());
    }
    let list_runs = runs / 10;
    let (mut list_whole, mut list_noted) = (Vec::with_capacity(list_runs), Vec::with_capacity(list_runs));
    for i in 0..list_runs {
        let after = order((i as u64 * 7919) % (n - 100));
        let started = Instant::now();
        assert_eq!(whole.query().after(&after).limit(50).fetch().await.unwrap().len(), 50);
        list_whole.push(started.elapsed());
        let started = Instant::now();
        assert_eq!(on_demand.query().after(&Job(after)).limit(50).fetch().await.unwrap().len(), 50);
        list_noted.push(started.elapsed());
    }
    for v in [&mut get_whole, &mut get_noted, &mut list_whole, &mut list_noted] {
        v.sort();
    }
    line("get, whole collection (reads not noted)", &get_whole);
    line("get, on demand (read noted)", &get_noted);
    line("list of 50, whole collection", &list_whole);
    line("list of 50, on demand (50 reads noted)", &list_noted);
    println!(
        "noted / not noted: get p50 {:.2}, p99 {:.2}; list p50 {:.2}, p99 {:.2}",
        us(percentile(&get_noted, 0.5)) / us(percentile(&get_whole, 0.5)),
        us(percentile(&get_noted, 0.99)) / us(percentile(&get_whole, 0.99)),
        us(percentile(&list_noted, 0.5)) / us(percentile(&list_whole, 0.5)),
        us(percentile(&list_noted, 0.99)) / us(percentile(&list_whole, 0.99)),
    );
    engine.shutdown().await;

    // Handing reads to the store: one UPDATE per 1,000.
    let reads: Vec<_> = (0..10_000)
        .map(|i| (CollectionName::new("jobs").unwrap(), RecordId::new(id(i)).unwrap(), Utc::now()))
        .collect();
    for round in ["first", "second"] {
        let started = Instant::now();
        store.touch(&reads).await.unwrap();
        println!(
            "handing 10,000 noted reads to the store ({round} time): {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env("CACHE_BENCH_N", 100_000) as u64;
    let runs = env("CACHE_BENCH_RUNS", 20_000);
    println!("== eviction of {n} records down to a 1 MiB budget ==");
    eviction(n).await;
    println!("\n== noting reads: {n} records, {runs} gets, {} lists ==", runs / 10);
    read_overhead(n, runs).await;
}

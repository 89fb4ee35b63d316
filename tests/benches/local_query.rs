//! `local_query`: what a list screen costs on the local store, with declared indexes,
//! beside raw sqlx running the same SQL on the same file (same index) in the same run.
//!
//! Run with: `cargo bench -p offsync-tests --bench local_query`
//! (`LOCAL_QUERY_N` records, default 100,000; `LOCAL_QUERY_RUNS` timed runs per figure,
//! default 1,000: a p99 of 300 runs is the third-worst sample, too noisy on this machine;
//! `LOCAL_QUERY_SYNC_ROUNDS` initial syncs each way, default 3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "shared/mod.rs"]
mod shared;

use shared::{env, percentile, us};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, SqliteConnection};
use sync_core::{CollectionSpec, Engine, EngineOptions, LocalEntity, Order};
use sync_patterns::ConflictDetection;
use sync_sqlite::SqliteStore;
use sync_testkit::MemoryServer;

/// About 200 bytes of JSON: five status values, a date, a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order_ {
    id: String,
    status: String,
    due: String,
    site: String,
    task: String,
    n: u64,
}

impl LocalEntity for Order_ {
    const COLLECTION: &'static str = "work_orders";
    fn id(&self) -> &str {
        &self.id
    }
}

const STATUSES: [&str; 5] = ["open", "assigned", "in_progress", "done", "cancelled"];

fn order(n: u64) -> Order_ {
    Order_ {
        id: format!("wo-{n:08}"),
        status: STATUSES[(n % 5) as usize].into(),
        due: format!("2026-{:02}-{:02}", 1 + (n * 7) % 12, 1 + (n * 13) % 28),
        site: format!("Depot {n:06} north wing"),
        task: format!("Replace the intake filter and log pressure readings #{n:08}"),
        n,
    }
}

/// The pause between a person's writes in the watch and write-with-watches figures.
const PACE: Duration = Duration::from_millis(5);

fn options() -> EngineOptions {
    EngineOptions { start_online: false, sync_on_start: false, ..EngineOptions::default() }
}

async fn engine(path: &Path, indexed: bool) -> Engine {
    let mut spec = CollectionSpec::of::<Order_>(ConflictDetection::new());
    if indexed {
        spec = spec.index(&["status", "due"]);
    }
    Engine::builder()
        .store(Arc::new(SqliteStore::open(path).await.unwrap()))
        .transport(Arc::new(MemoryServer::new()))
        .collection(spec)
        .options(options())
        .build()
        .await
        .unwrap()
}

fn report(label: &str, mut ours: Vec<Duration>, mut raw: Vec<Duration>) {
    ours.sort();
    raw.sort();
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (o, r) = (percentile(&ours, p), percentile(&raw, p));
        println!(
            "{label} {name}: offsync {:>8.1} µs | raw sqlx {:>8.1} µs | offsync/raw {:.2}",
            us(o),
            us(r),
            us(o) / us(r)
        );
    }
}

/// The list query's SQL as offsync's store writes it, minus the state column.
const RAW_LIST: &str = "SELECT id, data FROM offsync_records r WHERE r.collection = 'work_orders' AND r.deleted = 0 \
    AND (json_extract(r.data, '$.status') = ? AND json_extract(r.data, '$.due') >= ?) \
    ORDER BY json_extract(r.data, '$.due') ASC, r.id ASC LIMIT 50";

#[tokio::main]
async fn main() {
    let n = env("LOCAL_QUERY_N", 100_000);
    let runs = env("LOCAL_QUERY_RUNS", 1000);
    let dir = tempfile::tempdir().unwrap();
    println!("local_query: {n} work orders of about 200 bytes, index (status, due), {runs} runs per figure");

    // Loading: insert_many with and without the declared index.
    let items: Vec<_> = (0..n as u64).map(order).collect();
    let mut rates = Vec::new();
    for indexed in [false, true] {
        let engine = engine(&dir.path().join(format!("load-{indexed}.db")), indexed).await;
        let start = Instant::now();
        engine.collection::<Order_>().unwrap().insert_many(&items).await.unwrap();
        rates.push(n as f64 / start.elapsed().as_secs_f64());
        engine.shutdown().await;
    }
    println!(
        "insert_many {n}: without index {:>9.0} records/s | with index {:>9.0} records/s | with/without {:.2}",
        rates[0],
        rates[1],
        rates[1] / rates[0]
    );

    // Initial sync of the same records from a server, with and without the index.
    let server = Arc::new(MemoryServer::new());
    for o in &items {
        server.put("work_orders", &o.id, serde_json::to_value(o).unwrap());
    }
    // Three rounds, alternating, each on a fresh file; the figure is each side's median
    // (one run each swung from 0.68 to 0.87 between two runs of the same build).
    let rounds = env("LOCAL_QUERY_SYNC_ROUNDS", 3);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for indexed in [false, true] {
            let mut spec = CollectionSpec::of::<Order_>(ConflictDetection::new());
            if indexed {
                spec = spec.index(&["status", "due"]);
            }
            let file = dir.path().join(format!("sync-{indexed}-{round}.db"));
            let engine = Engine::builder()
                .store(Arc::new(SqliteStore::open(&file).await.unwrap()))
                .transport(server.clone())
                .collection(spec)
                .options(EngineOptions { sync_on_start: false, ..EngineOptions::default() })
                .build()
                .await
                .unwrap();
            let start = Instant::now();
            engine.sync_now().await.unwrap();
            let rate = n as f64 / start.elapsed().as_secs_f64();
            if indexed {
                with.push(rate)
            } else {
                without.push(rate)
            }
            engine.shutdown().await;
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratios: Vec<String> = with.iter().zip(&without).map(|(w, o)| format!("{:.2}", w / o)).collect();
    let (without, with) = (median(without), median(with));
    println!(
        "initial sync {n} (in-process server, median of {rounds}): without index {without:>9.0} records/s | with index {with:>9.0} records/s | with/without {:.2} (rounds: {})",
        with / without,
        ratios.join(", ")
    );

    // Reads on the indexed store, beside a raw connection to the same file.
    let path = dir.path().join("load-true.db");
    let engine = engine(&path, true).await;
    let orders = engine.collection::<Order_>().unwrap();
    let mut raw = SqliteConnection::connect(&format!("sqlite://{}?mode=ro", path.display())).await.unwrap();
    let list = || {
        orders.query().filter_eq("status", "open").filter_ge("due", "2026-06-01").order_by("due", Order::Asc).limit(50)
    };

    let (mut ours, mut theirs, mut tracked) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        let page = list().fetch().await.unwrap();
        ours.push(start.elapsed());
        assert_eq!(page.len(), 50);
        let start = Instant::now();
        let page = list().fetch_tracked().await.unwrap();
        tracked.push(start.elapsed());
        assert_eq!(page.len(), 50);
        let start = Instant::now();
        let rows = sqlx::query(RAW_LIST).bind("open").bind("2026-06-01").fetch_all(&mut raw).await.unwrap();
        theirs.push(start.elapsed());
        assert_eq!(rows.len(), 50);
    }
    report("list query (eq + range + order + limit 50)", ours, theirs.clone());
    report("list query with sync state per row", tracked, theirs);

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..runs as u64 {
        let id = format!("wo-{:08}", (i * 7919) % n as u64);
        let start = Instant::now();
        assert!(orders.get(&id).await.unwrap().is_some());
        ours.push(start.elapsed());
        let start = Instant::now();
        let row =
            sqlx::query("SELECT data FROM offsync_records WHERE collection = 'work_orders' AND id = ? AND deleted = 0")
                .bind(&id)
                .fetch_optional(&mut raw)
                .await
                .unwrap();
        theirs.push(start.elapsed());
        assert!(row.is_some());
    }
    report("get by id", ours, theirs);

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs.min(100) {
        let start = Instant::now();
        let count = orders.query().filter_eq("status", "open").filter_ge("due", "2026-06-01").count().await.unwrap();
        ours.push(start.elapsed());
        let start = Instant::now();
        let raw_count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM offsync_records r WHERE r.collection = 'work_orders' AND r.deleted = 0 \
             AND (json_extract(r.data, '$.status') = ? AND json_extract(r.data, '$.due') >= ?)",
        )
        .bind("open")
        .bind("2026-06-01")
        .fetch_one(&mut raw)
        .await
        .unwrap();
        theirs.push(start.elapsed());
        assert_eq!(count, raw_count as u64);
    }
    report("count of the filtered set", ours, theirs);

    // Watch: a local write shown in the watched list.
    let mut watch = list().watch();
    watch.next().await.unwrap().unwrap();
    let mut shown = Vec::new();
    for i in 0..runs as u64 {
        let mut item = order(n as u64 + i);
        item.status = "open".into();
        item.due = "2026-06-01".into();
        let start = Instant::now();
        orders.insert(&item).await.unwrap();
        loop {
            let page = watch.next().await.unwrap().unwrap();
            if page.iter().any(|o| o.id == item.id) {
                break;
            }
        }
        shown.push(start.elapsed());
        orders.delete(&item.id).await.unwrap();
        // The delete's own re-run, then a pause: a person does not write 200 times a second.
        watch.next().await.unwrap().unwrap();
        tokio::time::sleep(PACE).await;
    }
    shown.sort();
    println!(
        "watch: local write shown in the list p50 {:>8.1} µs | p99 {:>8.1} µs",
        us(percentile(&shown, 0.5)),
        us(percentile(&shown, 0.99))
    );
    drop(watch);

    // Writes with 10 live watches open, beside writes with none: paced as a person
    // writes (every 5 ms), and back to back.
    let write_times = |base: u64, paced: bool| {
        let orders = orders.clone();
        async move {
            let mut times = Vec::new();
            for i in 0..runs as u64 {
                let start = Instant::now();
                orders.insert(&order(base + i)).await.unwrap();
                times.push(start.elapsed());
                if paced {
                    tokio::time::sleep(PACE).await;
                }
            }
            times.sort();
            times
        }
    };
    let plain = write_times(2 * n as u64, true).await;
    let plain_burst = write_times(2 * n as u64 + runs as u64, false).await;
    let mut watches: Vec<_> = (0..10).map(|_| list().watch()).collect();
    let drains: Vec<_> =
        watches.drain(..).map(|mut w| tokio::spawn(async move { while let Some(Ok(_)) = w.next().await {} })).collect();
    let watched = write_times(3 * n as u64, true).await;
    let watched_burst = write_times(3 * n as u64 + runs as u64, false).await;
    for (label, plain, watched) in [("paced 5 ms", &plain, &watched), ("back to back", &plain_burst, &watched_burst)] {
        println!(
            "write p99 ({label}): no watches {:>8.1} µs | 10 watches {:>8.1} µs | ratio {:.2} (p50 {:.1} / {:.1} µs)",
            us(percentile(plain, 0.99)),
            us(percentile(watched, 0.99)),
            us(percentile(watched, 0.99)) / us(percentile(plain, 0.99)),
            us(percentile(plain, 0.5)),
            us(percentile(watched, 0.5))
        );
    }
    engine.shutdown().await;
    for d in drains {
        let _ = tokio::time::timeout(Duration::from_secs(5), d).await;
    }
}

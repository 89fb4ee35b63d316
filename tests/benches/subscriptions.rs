//! `subscriptions`: what syncing by subscription costs, against the reference server
//! (SQLite) over HTTP on 127.0.0.1, with a baseline in the same run.
//!
//! - Initial sync of a subscription covering a tenth of N server records (one region of
//!   ten), beside the initial sync of a collection of the same size synced whole from
//!   the same server: records/s each, and the ratio. The server's plan for the
//!   subscription's pages is printed: it reads the subscription index's range only.
//! - No-op sync with 10 active subscriptions (all caught up), beside a no-op sync of a
//!   device with none: p50 and p99.
//!
//! Run with: `cargo bench -p offsync-tests --bench subscriptions` (`SUB_BENCH_N`,
//! default 1,000,000; `SUB_BENCH_RUNS`, default 200).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "shared/mod.rs"]
mod shared;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::{env, ms, percentile};
use sync_core::{AccountId, Bound, CollectionSpec, Credentials, Engine, EngineOptions, LocalEntity, Subscribe};
use sync_http::HttpTransport;
use sync_patterns::ConflictDetection;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::logic::User;
use sync_server::rules::ReadScope;
use sync_server::server::{self, from_config};
use sync_server::store::sqlite::SqliteServerStore;
use sync_server::store::{PushJob, PushRules};
use sync_server::subscriptions::Subscription;
use sync_sqlite::SqliteStore;

const TOKEN: &str = "bench-token";

/// About 200 bytes of JSON, in one of ten regions, due on one of 28 days.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    id: String,
    region: String,
    due: String,
    site: String,
    task: String,
}

impl LocalEntity for Job {
    const COLLECTION: &'static str = "jobs";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The same shape, synced whole: the baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    id: String,
    region: String,
    due: String,
    site: String,
    task: String,
}

impl LocalEntity for Part {
    const COLLECTION: &'static str = "parts";
    fn id(&self) -> &str {
        &self.id
    }
}

fn data(n: u64) -> Value {
    json!({
        "id": format!("job-{n:012}"),
        "region": format!("r{}", n % 10),
        "due": format!("2026-12-{:02}", n % 28 + 1),
        "site": format!("Depot {n:06} north wing, second floor"),
        "task": format!("Replace the intake filter and log pressure readings #{n:08}"),
    })
}

async fn device(url: &str, dir: &std::path::Path, name: &str) -> Engine {
    let store = SqliteStore::open(dir.join(format!("{name}.db"))).await.unwrap();
    let transport = Arc::new(HttpTransport::with_timeout(url, Duration::from_secs(120)).unwrap());
    let credentials = Credentials::new(AccountId::new("bench").unwrap(), TOKEN).unwrap();
    let options = EngineOptions {
        sync_on_start: false,
        debounce: Duration::from_secs(3600),
        pull_limit: 1000,
        // The download figure is the subscription's throughput: the whole region fits
        // (at the 10 MiB default the device would keep a tenth of it; what eviction
        // costs is the cache_budget benchmark's).
        cache_budget: sync_core::engine::MAX_CACHE_BUDGET,
        ..EngineOptions::default()
    };
    Engine::builder()
        .store(Arc::new(store))
        .credentials(credentials)
        .transport(transport)
        .collection(CollectionSpec::of::<Job>(ConflictDetection::new()).on_demand())
        .collection(CollectionSpec::of::<Part>(ConflictDetection::new()))
        .options(options)
        .build()
        .await
        .unwrap()
}

/// Seeds `collection` with records `from..to` through the store's push, as an admin.
async fn seed(
    store: &Arc<dyn sync_server::store::ServerStore>,
    rules: &Arc<PushRules>,
    collection: &str,
    from: u64,
    to: u64,
) {
    let admin = User::new("root", true);
    for chunk in (from..to).collect::<Vec<_>>().chunks(1000) {
        let raw: Vec<Value> = chunk
            .iter()
            .map(|i| {
                let d = data(*i);
                json!({"mutation_id": uuid::Uuid::now_v7().to_string(), "collection": collection,
                       "record_id": d["id"], "op": "upsert", "base_version": null, "data": d})
            })
            .collect();
        store
            .push(PushJob { user: admin.clone(), rules: rules.clone(), mutations: raw, client_id: "seed".into() })
            .await
            .unwrap();
    }
}

#[tokio::main]
async fn main() {
    let n = env("SUB_BENCH_N", 1_000_000) as u64;
    let runs = env("SUB_BENCH_RUNS", 200);
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("server.db").display());
    let text = format!(
        "database = \"{database}\"\nmax_batch = 1000\nmax_body_bytes = 16777216\n\
         [[users]]\nname = \"bench\"\ntoken_sha256 = \"{}\"\n\
         [[users]]\nname = \"root\"\ntoken_sha256 = \"{}\"\nrole = \"admin\"\n\
         [collections.jobs]\naccess = \"read_only\"\nsubscription_indexes = [[\"region\", \"due\"], [\"region\"]]\n\
         [collections.parts]\naccess = \"read_only\"\n",
        token_sha256(TOKEN),
        token_sha256("root-token")
    );
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    let rules = Arc::new(PushRules {
        collections: config.collections.clone(),
        users: ["bench".to_owned(), "root".to_owned()].into_iter().collect(),
        actions: Default::default(),
    });
    let start = Instant::now();
    seed(&store, &rules, "jobs", 0, n).await;
    seed(&store, &rules, "parts", 0, n / 10).await;
    println!(
        "subscriptions: {n} jobs in 10 regions and {} parts seeded in {:.1} s",
        n / 10,
        start.elapsed().as_secs_f64()
    );

    // The server's plan for a page of the subscription's download.
    let query = Subscribe::to("jobs").unwrap().eq("region", "r3").unwrap();
    let declared = &config.collections[query.collection()].subscription_indexes;
    let checked = Subscription::check(query.query(), declared).unwrap();
    let inspector = SqliteServerStore::open(&database).await.unwrap();
    let plan = inspector.explain_subscription(&checked, &ReadScope::Everything).await.unwrap();
    println!("server plan for a page of region = r3:\n  {}", plan.replace('\n', "\n  "));

    let server = server::start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap();
    let url = server.url();

    // Initial sync: the whole `parts` collection (n/10) and the region subscription
    // (n/10 of n), alternating on fresh devices, each the median of three.
    let (mut whole, mut subscribed) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let d = tempfile::tempdir_in(dir.path()).unwrap();
        let engine = device(&url, d.path(), &format!("whole-{round}")).await;
        let start = Instant::now();
        let report = engine.sync_now().await.unwrap();
        assert_eq!(report.pulled, n / 10);
        whole.push((n / 10) as f64 / start.elapsed().as_secs_f64());
        engine.shutdown().await;

        let d = tempfile::tempdir_in(dir.path()).unwrap();
        let engine = device(&url, d.path(), &format!("sub-{round}")).await;
        // The parts first, so the timed cycle pulls the subscription alone.
        engine.sync_now().await.unwrap();
        // Subscribing triggers the sync; the time runs until the subscription is synced.
        let start = Instant::now();
        let mut sub = engine.subscribe(query.clone()).await.unwrap();
        sub.synced().await.unwrap();
        let took = start.elapsed();
        let status = sub.status().borrow().clone();
        assert_eq!((status.received, status.total), (n / 10, Some(n / 10)), "the region, and the server's total");
        let held = engine.collection::<Job>().unwrap().query().count().await.unwrap();
        assert_eq!(held, n / 10, "the subscription holds its region");
        subscribed.push((n / 10) as f64 / took.as_secs_f64());
        drop(sub);
        engine.shutdown().await;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (whole, subscribed) = (median(whole), median(subscribed));
    println!(
        "initial sync of {} records (median of 3): collection synced whole {whole:>9.0} records/s | \
         subscription (region = r3 of {n}) {subscribed:>9.0} records/s | subscription/whole {:.2}",
        n / 10,
        subscribed / whole
    );

    // No-op syncs: 10 small subscriptions caught up, beside none.
    let d = tempfile::tempdir_in(dir.path()).unwrap();
    let bare = device(&url, d.path(), "bare").await;
    bare.sync_now().await.unwrap();
    let busy = device(&url, d.path(), "busy").await;
    busy.sync_now().await.unwrap();
    let mut handles = Vec::new();
    for r in 0..10 {
        let s = Subscribe::to("jobs")
            .unwrap()
            .eq("region", format!("r{r}"))
            .unwrap()
            .range("due", [Bound::Ge(json!("2026-12-01")), Bound::Lt(json!("2026-12-02"))])
            .unwrap();
        handles.push(busy.subscribe(s).await.unwrap());
    }
    busy.sync_now().await.unwrap();
    let (mut none, mut ten) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        bare.sync_now().await.unwrap();
        none.push(start.elapsed());
        let start = Instant::now();
        let report = busy.sync_now().await.unwrap();
        ten.push(start.elapsed());
        assert_eq!(report.pulled, 0);
    }
    none.sort();
    ten.sort();
    // The server's share: the same no-op pulls sent raw over HTTP, without an engine.
    let rows = busy.subscriptions().await.unwrap();
    let subs: serde_json::Map<String, Value> = rows
        .iter()
        .map(|r| {
            let mut pull = serde_json::to_value(&r.query).unwrap();
            pull["cursor"] = json!(r.cursor.as_ref().map(|c| c.0.clone()));
            (r.id.to_string(), pull)
        })
        .collect();
    let http = reqwest::Client::new();
    let (mut raw_none, mut raw_ten) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        for (body, out) in [
            (json!({"client_id": "raw", "collections": {}}), &mut raw_none),
            (json!({"client_id": "raw", "collections": {}, "subscriptions": subs}), &mut raw_ten),
        ] {
            let start = Instant::now();
            let answer = http.post(format!("{url}/v1/pull")).bearer_auth(TOKEN).json(&body).send().await.unwrap();
            assert!(answer.status().is_success());
            answer.bytes().await.unwrap();
            out.push(start.elapsed());
        }
    }
    raw_none.sort();
    raw_ten.sort();
    println!(
        "the server's share (raw HTTP pull, no engine): no subscription p50 {:.2} ms | 10 subscriptions p50 {:.2} ms",
        ms(percentile(&raw_none, 0.5)),
        ms(percentile(&raw_ten, 0.5))
    );
    println!(
        "no-op sync, {runs} runs: no subscription p50 {:.2} ms p99 {:.2} ms | 10 subscriptions p50 {:.2} ms p99 {:.2} ms | p50 ratio {:.2}",
        ms(percentile(&none, 0.5)),
        ms(percentile(&none, 0.99)),
        ms(percentile(&ten, 0.5)),
        ms(percentile(&ten, 0.99)),
        ms(percentile(&ten, 0.5)) / ms(percentile(&none, 0.5))
    );
    drop(handles);
    bare.shutdown().await;
    busy.shutdown().await;
    server.stop().await.unwrap();
}

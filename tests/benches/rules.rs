//! `rules`: pulls and reassignments under a field sync rule, on each backend, beside the
//! same records under `access = "owner"` in the same run.
//!
//! 1,000 users; 100,000 records per collection (`jobs`: `read = ["assigned_to = user"]`;
//! `owned`: each record owned by the same user it is assigned to): u0 holds 10,000, the
//! other 90,000 are spread over u1..u999 (about 90 each).
//!
//! - a full pull of a typical user (about 90 records) and of u0 (10,000): p50 latency
//!   and records/s, rule vs owner;
//! - an incremental pull while other users' records keep changing (one change by
//!   someone else between pulls): p50/p99 latency, rule vs owner;
//! - a reassignment of u0's 10,000 jobs to u1 (admin pushes of 1,000): time for the
//!   pushes, then for u0's device (engine + SQLite over HTTP) to drop them and u1's to
//!   take them, until both have converged.
//!
//! Run with: `cargo bench -p offsync-tests --bench rules` (`RULES_RECORDS`, default
//! 100,000; PostgreSQL too when `SYNC_TEST_POSTGRES_URL` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "shared/mod.rs"]
mod shared;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::{env, ms, percentile};
use sync_core::{AccountId, CollectionSpec, Credentials, Engine, EngineOptions, LocalEntity};
use sync_http::HttpTransport;
use sync_patterns::ConflictDetection;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{self, from_config};
use sync_server::store::{PushJob, PushRules};

const USERS: usize = 1000;
const BUSY: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    id: String,
    assigned_to: String,
    site: String,
    task: String,
    n: u64,
}

impl LocalEntity for Job {
    const COLLECTION: &'static str = "jobs";
    fn id(&self) -> &str {
        &self.id
    }
}

/// Record `i`'s assignee: u0 for the first 10,000, then spread over the others.
fn assignee(i: usize) -> String {
    if i < BUSY { "u0".into() } else { format!("u{}", 1 + i % (USERS - 1)) }
}

fn job(i: usize, to: &str) -> Value {
    json!({"id": format!("job-{i:08}"), "assigned_to": to, "site": format!("Depot {i:06} north wing"),
        "task": format!("Replace the intake filter and log pressure readings #{i:08}"), "n": i})
}

fn config(database: &str) -> String {
    let mut text = format!("database = \"{database}\"\nmax_batch = 1000\nmax_body_bytes = 16777216\n");
    for u in 0..USERS {
        text.push_str(&format!(
            "[[users]]\nname = \"u{u}\"\ntoken_sha256 = \"{}\"\n",
            token_sha256(&format!("u{u}-token"))
        ));
    }
    text.push_str(&format!(
        "[[users]]\nname = \"root\"\ntoken_sha256 = \"{}\"\nrole = \"admin\"\n",
        token_sha256("root-token")
    ));
    text.push_str("[collections.jobs]\nread = [\"assigned_to = user\"]\nwrite = [\"assigned_to = user\"]\n");
    text.push_str("[collections.owned]\naccess = \"owner\"\n");
    text
}

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    /// Pulls `collection` for `user` to the end; (records received, final cursor).
    async fn pull_all(&self, user: &str, collection: &str, mut cursor: Value) -> (usize, Value) {
        let mut n = 0;
        loop {
            let body = json!({"client_id": user, "collections": {collection: cursor}, "limit": 1000});
            let resp = self.http.post(format!("{}/v1/pull", self.url)).bearer_auth(format!("{user}-token")).json(&body);
            let page: Value = resp.send().await.unwrap().json().await.unwrap();
            n += page["changes"].as_array().unwrap().len();
            cursor = page["cursors"][collection].clone();
            if page["has_more"] == false {
                return (n, cursor);
            }
        }
    }

    async fn push(&self, user: &str, mutations: Vec<Value>) {
        let body = json!({"client_id": "bench", "mutations": mutations});
        let resp = self.http.post(format!("{}/v1/push", self.url)).bearer_auth(format!("{user}-token")).json(&body);
        let answer: Value = resp.send().await.unwrap().json().await.unwrap();
        assert!(answer["results"].as_array().unwrap().iter().all(|r| r["status"] == "applied"), "{answer}");
    }
}

fn upsert(collection: &str, i: usize, to: &str, owner: Option<&str>) -> Value {
    let mut m = json!({"mutation_id": uuid::Uuid::now_v7().to_string(), "collection": collection,
        "record_id": format!("job-{i:08}"), "op": "upsert", "data": job(i, to)});
    if let Some(owner) = owner {
        m["owner"] = json!(owner);
    }
    m
}

async fn device(url: &str, dir: &std::path::Path, user: &str) -> Engine {
    let store = sync_sqlite::SqliteStore::open(dir.join(format!("{user}.db"))).await.unwrap();
    let transport = Arc::new(HttpTransport::with_timeout(url, Duration::from_secs(120)).unwrap());
    let options = EngineOptions {
        sync_on_start: false,
        debounce: Duration::from_secs(3600),
        pull_limit: 1000,
        ..EngineOptions::default()
    };
    Engine::builder()
        .store(Arc::new(store))
        .credentials(Credentials::new(AccountId::new(user).unwrap(), format!("{user}-token")).unwrap())
        .transport(transport)
        .collection(CollectionSpec::of::<Job>(ConflictDetection::new()))
        .options(options)
        .build()
        .await
        .unwrap()
}

/// p50 and records/s of `rounds` full pulls of `collection` for `user`.
async fn full_pulls(client: &Client, user: &str, collection: &str, rounds: usize) -> (Duration, f64, usize) {
    let mut times = Vec::new();
    let mut n = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        n = client.pull_all(user, collection, Value::Null).await.0;
        times.push(start.elapsed());
    }
    times.sort();
    let p50 = percentile(&times, 0.5);
    (p50, n as f64 / p50.as_secs_f64(), n)
}

/// p50/p99 of incremental pulls for `user`, each after one change to someone else's record.
async fn incremental_pulls(client: &Client, user: &str, collection: &str, rounds: usize) -> (Duration, Duration) {
    let (_, mut cursor) = client.pull_all(user, collection, Value::Null).await;
    let mut times = Vec::new();
    for r in 0..rounds {
        let i = BUSY + 500 + r % 1000;
        let owner = (collection == "owned").then(|| assignee(i));
        client.push("root", vec![upsert(collection, i, &assignee(i), owner.as_deref())]).await;
        let start = Instant::now();
        let (n, next) = client.pull_all(user, collection, cursor).await;
        times.push(start.elapsed());
        assert_eq!(n, 0, "someone else's change reached {user}");
        cursor = next;
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

async fn bench(backend: &str, database: String, records: usize) {
    let text = config(&database);
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    let root = sync_server::logic::User::new("root", true);
    let rules = Arc::new(PushRules {
        collections: config.collections.clone(),
        users: config.users.iter().map(|u| u.name.clone()).collect(),
        actions: Default::default(),
    });
    let start = Instant::now();
    for collection in ["jobs", "owned"] {
        for chunk in (0..records).collect::<Vec<_>>().chunks(1000) {
            let raw = chunk
                .iter()
                .map(|i| {
                    upsert(collection, *i, &assignee(*i), (collection == "owned").then(|| assignee(*i)).as_deref())
                })
                .collect();
            let job = PushJob { user: root.clone(), rules: rules.clone(), mutations: raw, client_id: "seed".into() };
            store.push(job).await.unwrap();
        }
    }
    println!("[{backend}] seeded 2 x {records} records in {:.1} s", start.elapsed().as_secs_f64());
    let server = server::start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap();
    let client = Client { http: reqwest::Client::new(), url: server.url() };

    for (user, label, rounds) in [("u7", "typical user", 50), ("u0", "busy user", 5)] {
        let (rule_p50, rule_rate, n) = full_pulls(&client, user, "jobs", rounds).await;
        let (owner_p50, owner_rate, m) = full_pulls(&client, user, "owned", rounds).await;
        assert_eq!(n, m);
        println!(
            "[{backend}] full pull, {label} ({n} records): rule p50 {:.2} ms ({rule_rate:.0} records/s), owner p50 {:.2} ms ({owner_rate:.0} records/s), rule/owner time {:.2}x",
            ms(rule_p50),
            ms(owner_p50),
            rule_p50.as_secs_f64() / owner_p50.as_secs_f64()
        );
    }
    let (rule_p50, rule_p99) = incremental_pulls(&client, "u7", "jobs", 200).await;
    let (owner_p50, owner_p99) = incremental_pulls(&client, "u7", "owned", 200).await;
    println!(
        "[{backend}] incremental pull (others' records changing): rule p50 {:.2} ms p99 {:.2} ms, owner p50 {:.2} ms p99 {:.2} ms, rule/owner p50 {:.2}x",
        ms(rule_p50),
        ms(rule_p99),
        ms(owner_p50),
        ms(owner_p99),
        rule_p50.as_secs_f64() / owner_p50.as_secs_f64()
    );

    // Reassignment: both devices hold their jobs, then u0's 10,000 move to u1.
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (device(&server.url(), dir.path(), "u0").await, device(&server.url(), dir.path(), "u1").await);
    from.sync_now().await.unwrap();
    to.sync_now().await.unwrap();
    let before = to.collection::<Job>().unwrap().list().await.unwrap().len();
    assert_eq!(from.collection::<Job>().unwrap().list().await.unwrap().len(), BUSY);
    let start = Instant::now();
    for chunk in (0..BUSY).collect::<Vec<_>>().chunks(1000) {
        client.push("root", chunk.iter().map(|i| upsert("jobs", *i, "u1", None)).collect()).await;
    }
    let pushed = start.elapsed();
    let (a, b) = tokio::join!(
        async {
            from.sync_now().await.unwrap();
            start.elapsed()
        },
        async {
            to.sync_now().await.unwrap();
            start.elapsed()
        }
    );
    assert_eq!(from.collection::<Job>().unwrap().list().await.unwrap().len(), 0, "u0 dropped them all");
    assert_eq!(to.collection::<Job>().unwrap().list().await.unwrap().len(), before + BUSY, "u1 took them all");
    println!(
        "[{backend}] reassignment of {BUSY} records: pushes {:.2} s; u0's device dropped them at {:.2} s, u1's took them at {:.2} s; converged in {:.2} s",
        pushed.as_secs_f64(),
        a.as_secs_f64(),
        b.as_secs_f64(),
        a.max(b).as_secs_f64()
    );
    from.shutdown().await;
    to.shutdown().await;
    server.stop().await.unwrap();
}

#[tokio::main]
async fn main() {
    let records = env("RULES_RECORDS", 100_000).max(BUSY + 2_000);
    let dir = tempfile::tempdir().unwrap();
    bench("sqlite", format!("sqlite://{}", dir.path().join("server.db").display()), records).await;
    if let Ok(base) = std::env::var("SYNC_TEST_POSTGRES_URL") {
        use sqlx::Connection;
        let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        bench("postgres", format!("{base}{sep}options[search_path]={schema}"), records).await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut conn).await.unwrap();
    }
}

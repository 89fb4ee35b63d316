//! `server_load`: many devices pushing and pulling at once against one server process on
//! its default SQLite database, over HTTP on 127.0.0.1.
//!
//! Each of C clients (its own user, so its own scope) loops for the run's length: push
//! one mutation of 5 records, then pull its collection from its cursor. The program
//! reports requests/s, errors by kind, and push and pull latency p50/p99, per server
//! binary and client count. Servers run as separate processes so that two builds (a
//! baseline and the current one) are measured by the same load in the same run.
//!
//! Run with:
//! `cargo build --release -p sync-server && cargo bench -p offsync-tests --bench server_load`
//! - `LOAD_SERVERS`: `name=path,...` of `sync-server` binaries (default: `current=` the
//!   workspace's `target/release/sync-server`);
//! - `LOAD_CLIENTS`: client counts (default `100,500`); `LOAD_SECONDS`: per run (default 20).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "shared/mod.rs"]
mod shared;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::ServerProcess;
use sync_server::config::token_sha256;

/// Starts `binary` on a fresh SQLite file with `users` users `u0..`, tokens `t0..`.
fn start(binary: &str, users: usize) -> ServerProcess {
    let mut config = String::from(
        "database = \"sqlite://{dir}/server.db\"\nlisten = \"127.0.0.1:0\"\n[collections.work_orders]\naccess = \"owner\"\n",
    );
    for u in 0..users {
        config
            .push_str(&format!("[[users]]\nname = \"u{u}\"\ntoken_sha256 = \"{}\"\n", token_sha256(&format!("t{u}"))));
    }
    ServerProcess::start(binary, &config)
}

#[derive(Default)]
struct Tally {
    pushes: Vec<Duration>,
    pulls: Vec<Duration>,
    errors: BTreeMap<String, u64>,
}

async fn client(http: reqwest::Client, url: String, user: usize, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let token = format!("t{user}");
    let mut cursor = Value::Null;
    let mut n = 0u64;
    while Instant::now() < until {
        let mutations: Vec<Value> = (0..5)
            .map(|i| {
                json!({"mutation_id": uuid::Uuid::now_v7().to_string(), "collection": "work_orders",
                    "record_id": format!("u{user}-{}", (n * 5 + i) % 50), "op": "upsert", "base_version": null,
                    "data": {"title": "inspect pump", "n": n, "i": i, "note": "x".repeat(120)}})
            })
            .collect();
        n += 1;
        let body = json!({"client_id": format!("c{user}"), "mutations": mutations});
        let started = Instant::now();
        match http.post(format!("{url}/v1/push")).bearer_auth(&token).json(&body).send().await {
            Ok(r) if r.status().is_success() => match r.bytes().await {
                Ok(_) => tally.pushes.push(started.elapsed()),
                Err(e) => *tally.errors.entry(format!("push body: {e}")).or_default() += 1,
            },
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                *tally.errors.entry(format!("push {status} {}", &text[..text.len().min(80)])).or_default() += 1;
            }
            Err(e) => *tally.errors.entry(format!("push: {e}")).or_default() += 1,
        }
        let body = json!({"client_id": format!("c{user}"), "collections": {"work_orders": cursor}, "limit": 200});
        let started = Instant::now();
        match http.post(format!("{url}/v1/pull")).bearer_auth(&token).json(&body).send().await {
            Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                Ok(page) => {
                    cursor = page["cursors"]["work_orders"].clone();
                    tally.pulls.push(started.elapsed());
                }
                Err(e) => *tally.errors.entry(format!("pull body: {e}")).or_default() += 1,
            },
            Ok(r) => *tally.errors.entry(format!("pull {}", r.status().as_u16())).or_default() += 1,
            Err(e) => *tally.errors.entry(format!("pull: {e}")).or_default() += 1,
        }
    }
    tally
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

struct Figures {
    rps: f64,
    push_p50: f64,
    push_p99: f64,
    pull_p50: f64,
    pull_p99: f64,
    errors: BTreeMap<String, u64>,
}

async fn run(binary: &str, clients: usize, seconds: u64) -> Figures {
    let server = start(binary, clients);
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> =
        (0..clients).map(|u| tokio::spawn(client(http.clone(), server.url.clone(), u, until))).collect();
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.unwrap();
        all.pushes.extend(t.pushes);
        all.pulls.extend(t.pulls);
        for (k, v) in t.errors {
            *all.errors.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.pushes.sort();
    all.pulls.sort();
    let errors: u64 = all.errors.values().sum();
    Figures {
        rps: (all.pushes.len() + all.pulls.len()) as f64 / elapsed,
        push_p50: percentile(&all.pushes, 0.5),
        push_p99: percentile(&all.pushes, 0.99),
        pull_p50: percentile(&all.pulls, 0.5),
        pull_p99: percentile(&all.pulls, 0.99),
        errors: if errors == 0 { BTreeMap::new() } else { all.errors },
    }
}

fn main() {
    let default = format!("current={}", shared::release_server_binary());
    let servers: Vec<(String, String)> = std::env::var("LOAD_SERVERS")
        .unwrap_or(default)
        .split(',')
        .map(|s| {
            let (name, path) = s.split_once('=').expect("LOAD_SERVERS is name=path,...");
            (name.to_owned(), path.to_owned())
        })
        .collect();
    let clients: Vec<usize> = std::env::var("LOAD_CLIENTS")
        .unwrap_or_else(|_| "100,500".into())
        .split(',')
        .map(|c| c.trim().parse().unwrap())
        .collect();
    let seconds: u64 = std::env::var("LOAD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let runtime = Arc::new(runtime);
    println!("server_load: {seconds} s per run; each client pushes 5 records then pulls, in a loop");
    println!(
        "{:<10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}  errors",
        "server", "clients", "req/s", "push p50", "push p99", "pull p50", "pull p99"
    );
    for &c in &clients {
        let mut first: Option<f64> = None;
        for (name, path) in &servers {
            let f = runtime.block_on(run(path, c, seconds));
            let ratio = first.map_or(String::new(), |b| format!(" ({:.2}x {} req/s)", f.rps / b, servers[0].0));
            first.get_or_insert(f.rps);
            println!(
                "{name:<10} {c:>7} {:>9.0} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms  {:?}{ratio}",
                f.rps, f.push_p50, f.push_p99, f.pull_p50, f.pull_p99, f.errors
            );
        }
    }
}

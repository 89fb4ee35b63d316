//! `capacity`: what one server node holds. 10,000 devices keep an event stream open
//! while 500 devices push and pull as fast as they are answered, for a fixed time,
//! against the release `sync-server` as a process of its own, over 127.0.0.1, on SQLite
//! and (with `SYNC_TEST_POSTGRES_URL`) on PostgreSQL.
//!
//! Per backend, two runs of the same active load on fresh servers: without idle streams
//! (the baseline) and with them. While the streams are open an admin changes a read-only
//! bulletin every 2 s; every stream may read it, so each change is announced to all
//! 10,000 and the time from the push to each stream's event is measured (`announce`),
//! and from the first stream's event to each stream's (`fanout`: the hub and the
//! network alone, without the push's wait in the write queue). Reported:
//! requests/s (and the ratio to the baseline), errors by kind, push and pull p50/p99,
//! announcement p50/p99 and events missed, server memory per idle stream, and a check
//! after each run that a fresh pull of every active user's records equals what was
//! acknowledged.
//!
//! Run with:
//! `cargo build --release -p sync-server && cargo bench -p offsync-tests --bench capacity`
//! - `CAPACITY_SECONDS` per run (default 60), `CAPACITY_IDLE` streams (default 10000),
//!   `CAPACITY_ACTIVE` devices (default 500), `CAPACITY_BACKENDS` (default `sqlite`, plus
//!   `postgres` when `SYNC_TEST_POSTGRES_URL` is set), `CAPACITY_SERVER` (a `sync-server`
//!   binary; default: this workspace's release build).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "shared/mod.rs"]
mod shared;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::{ServerProcess, env, ms, percentile};
use sync_server::config::token_sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Records per active device (upserted round-robin, so the data stays bounded).
const RECORDS_PER_DEVICE: u64 = 50;

fn config(database: &str, active: usize, idle: usize) -> String {
    let mut text = format!(
        "database = \"{database}\"\nlisten = \"127.0.0.1:0\"\n\
         [collections.work_orders]\naccess = \"owner\"\n[collections.bulletins]\naccess = \"read_only\"\n\
         [[users]]\nname = \"dispatch\"\nrole = \"admin\"\ntoken_sha256 = \"{}\"\n",
        token_sha256("dispatch-token")
    );
    for u in 0..active {
        text.push_str(&format!("[[users]]\nname = \"a{u}\"\ntoken_sha256 = \"{}\"\n", token_sha256(&format!("ta{u}"))));
    }
    for u in 0..idle {
        text.push_str(&format!("[[users]]\nname = \"i{u}\"\ntoken_sha256 = \"{}\"\n", token_sha256(&format!("ti{u}"))));
    }
    text
}

/// A fresh database for one run: a file in the server's directory, or a new schema.
async fn database(backend: &str) -> String {
    match backend {
        "postgres" => {
            use sqlx::Connection;
            let base = std::env::var("SYNC_TEST_POSTGRES_URL").expect("SYNC_TEST_POSTGRES_URL for postgres");
            let schema = format!("capacity_{}", uuid::Uuid::now_v7().simple());
            let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
            sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.unwrap();
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}options[search_path]={schema}")
        }
        _ => "sqlite://{dir}/server.db".into(),
    }
}

#[derive(Default)]
struct Tally {
    pushes: Vec<Duration>,
    pulls: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    /// Per record: the last `n` acknowledged, and the last `n` sent (a push whose answer
    /// was lost may have been applied).
    acked: HashMap<String, (u64, u64)>,
}

fn error(tally: &mut Tally, kind: String) {
    *tally.errors.entry(kind).or_default() += 1;
}

/// One active device: push 5 records, pull from its cursor, until `until`.
async fn active(http: reqwest::Client, url: String, user: usize, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let token = format!("ta{user}");
    let mut cursor = Value::Null;
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let ids: Vec<String> = (0..5).map(|i| format!("a{user}-{}", (n * 5 + i) % RECORDS_PER_DEVICE)).collect();
        let mutations: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({"mutation_id": uuid::Uuid::now_v7().to_string(), "collection": "work_orders",
                    "record_id": id, "op": "upsert", "base_version": null,
                    "data": {"title": "inspect pump", "n": n, "note": "x".repeat(120)}})
            })
            .collect();
        for id in &ids {
            tally.acked.entry(id.clone()).or_insert((0, 0)).1 = n;
        }
        let body = json!({"client_id": format!("a{user}"), "mutations": mutations});
        let started = Instant::now();
        match http.post(format!("{url}/v1/push")).bearer_auth(&token).json(&body).send().await {
            Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                Ok(answer)
                    if answer["results"].as_array().is_some_and(|r| r.iter().all(|r| r["status"] == "applied")) =>
                {
                    tally.pushes.push(started.elapsed());
                    for id in &ids {
                        tally.acked.entry(id.clone()).or_default().0 = n;
                    }
                }
                Ok(answer) => error(
                    &mut tally,
                    format!("push not applied: {}", &answer.to_string()[..80.min(answer.to_string().len())]),
                ),
                Err(e) => error(&mut tally, format!("push body: {e}")),
            },
            Ok(r) => error(&mut tally, format!("push {}", r.status().as_u16())),
            Err(e) => error(&mut tally, format!("push: {e}")),
        }
        let body = json!({"client_id": format!("a{user}"), "collections": {"work_orders": cursor}, "limit": 200});
        let started = Instant::now();
        match http.post(format!("{url}/v1/pull")).bearer_auth(&token).json(&body).send().await {
            Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                Ok(page) => {
                    cursor = page["cursors"]["work_orders"].clone();
                    tally.pulls.push(started.elapsed());
                }
                Err(e) => error(&mut tally, format!("pull body: {e}")),
            },
            Ok(r) => error(&mut tally, format!("pull {}", r.status().as_u16())),
            Err(e) => error(&mut tally, format!("pull: {e}")),
        }
    }
    tally
}

/// Pulls `user`'s whole collection and counts records whose value is not one that was
/// acknowledged or sent after the last acknowledgement.
async fn lost(http: &reqwest::Client, url: &str, user: usize, acked: &HashMap<String, (u64, u64)>) -> usize {
    let mut cursor = Value::Null;
    let mut server: HashMap<String, u64> = HashMap::new();
    loop {
        let body = json!({"client_id": "checker", "collections": {"work_orders": cursor}, "limit": 1000});
        let page: Value = http
            .post(format!("{url}/v1/pull"))
            .bearer_auth(format!("ta{user}"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for change in page["changes"].as_array().unwrap() {
            let id = change["record_id"].as_str().unwrap().to_owned();
            server.insert(id, change["data"]["n"].as_u64().unwrap_or(0));
        }
        cursor = page["cursors"]["work_orders"].clone();
        if page["has_more"] != true {
            break;
        }
    }
    acked.iter().filter(|(id, (ok, sent))| *ok > 0 && server.get(*id).is_none_or(|n| n < ok || n > sent)).count()
}

/// What the idle devices' tasks share: the latest bulletin's number, and each event's
/// arrival.
struct Heard {
    /// The latest bulletin's number.
    bulletin: AtomicU64,
    base: Instant,
    /// (bulletin, nanoseconds since `base`) per event heard.
    arrivals: Mutex<Vec<(u64, u64)>>,
}

/// The idle devices' side: the shared record and the stream readers.
struct Idle {
    heard: Arc<Heard>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Opens one event stream as idle device `i` and reads it until the task is aborted.
async fn open_stream(addr: String, i: usize, heard: Arc<Heard>) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut stream = TcpStream::connect(&addr).await.map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "GET /v1/events?client_id=idle{i} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer ti{i}\r\naccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before answering".into());
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    if !text.starts_with("HTTP/1.1 200") {
        return Err(text.lines().next().unwrap_or("").to_owned());
    }
    Ok(tokio::spawn(async move {
        let mut carry = String::new();
        loop {
            let n = match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            carry.push_str(&String::from_utf8_lossy(&buffer[..n]));
            while let Some(at) = carry.find("event: change") {
                let at_ns = heard.base.elapsed().as_nanos() as u64;
                let bulletin = heard.bulletin.load(Ordering::Acquire);
                heard.arrivals.lock().unwrap().push((bulletin, at_ns));
                carry.drain(..at + "event: change".len());
            }
            // Keep only what could be the start of the next marker.
            if carry.len() > 64 {
                let keep = carry.len() - 16;
                carry.drain(..keep);
            }
        }
    }))
}

async fn open_idle(addr: &str, count: usize, errors: &mut BTreeMap<String, u64>) -> Idle {
    let heard = Arc::new(Heard { bulletin: AtomicU64::new(0), base: Instant::now(), arrivals: Mutex::new(Vec::new()) });
    let mut tasks = Vec::with_capacity(count);
    // In batches, so that the listen backlog never overflows.
    for batch in (0..count).collect::<Vec<_>>().chunks(250) {
        let opened =
            futures::future::join_all(batch.iter().map(|&i| open_stream(addr.to_owned(), i, heard.clone()))).await;
        for o in opened {
            match o {
                Ok(task) => tasks.push(task),
                Err(e) => *errors.entry(format!("stream: {e}")).or_default() += 1,
            }
        }
    }
    Idle { heard, tasks }
}

struct Figures {
    rps: f64,
    push: (f64, f64),
    pull: (f64, f64),
    errors: BTreeMap<String, u64>,
    lost: usize,
    streams: usize,
    announce: Option<(f64, f64)>,
    fan_out: Option<(f64, f64)>,
    missed: u64,
    bytes_per_stream: Option<f64>,
}

async fn run(binary: &str, backend: &str, active_devices: usize, idle_devices: usize, seconds: u64) -> Figures {
    let server = ServerProcess::start(binary, &config(&database(backend).await, active_devices, idle_devices));
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut errors = BTreeMap::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.resident_bytes();
    let idle = if idle_devices > 0 { Some(open_idle(&addr, idle_devices, &mut errors).await) } else { None };
    let streams = idle.as_ref().map_or(0, |i| i.tasks.len());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bytes_per_stream = match (before, server.resident_bytes(), streams) {
        (Some(b), Some(a), s) if s > 0 => Some(a.saturating_sub(b) as f64 / s as f64),
        _ => None,
    };

    let http = reqwest::Client::builder().pool_max_idle_per_host(active_devices + 1).build().unwrap();
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> =
        (0..active_devices).map(|u| tokio::spawn(active(http.clone(), server.url.clone(), u, until))).collect();
    // The bulletin: every 2 s while the streams are open.
    let mut bulletins = 0u64;
    let mut sent_at: HashMap<u64, u64> = HashMap::new();
    if let Some(idle) = &idle {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        while Instant::now() + Duration::from_secs(2) < until {
            tick.tick().await;
            bulletins += 1;
            idle.heard.bulletin.store(bulletins, Ordering::Release);
            sent_at.insert(bulletins, idle.heard.base.elapsed().as_nanos() as u64);
            let body = json!({"client_id": "dispatch", "mutations": [{"mutation_id": uuid::Uuid::now_v7().to_string(),
                "collection": "bulletins", "record_id": "today", "op": "upsert", "base_version": null,
                "data": {"text": format!("bulletin {bulletins}")}}]});
            match http.post(format!("{}/v1/push", server.url)).bearer_auth("dispatch-token").json(&body).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => *errors.entry(format!("bulletin {}", r.status().as_u16())).or_default() += 1,
                Err(e) => *errors.entry(format!("bulletin: {e}")).or_default() += 1,
            }
        }
    }
    let mut all = Tally::default();
    let mut acked = Vec::new();
    for t in tasks {
        let t = t.await.unwrap();
        all.pushes.extend(t.pushes);
        all.pulls.extend(t.pulls);
        for (k, v) in t.errors {
            *errors.entry(k).or_default() += v;
        }
        acked.push(t.acked);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let the last announcement arrive, then close the streams.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (announce, fan_out, missed) = match &idle {
        Some(idle) => {
            let arrivals = idle.heard.arrivals.lock().unwrap().clone();
            let mut first: HashMap<u64, u64> = HashMap::new();
            for &(b, at) in &arrivals {
                let f = first.entry(b).or_insert(at);
                *f = (*f).min(at);
            }
            let mut from_push: Vec<Duration> = Vec::new();
            let mut from_first: Vec<Duration> = Vec::new();
            for &(b, at) in &arrivals {
                if let Some(&sent) = sent_at.get(&b) {
                    from_push.push(Duration::from_nanos(at.saturating_sub(sent)));
                    from_first.push(Duration::from_nanos(at.saturating_sub(first[&b])));
                }
            }
            from_push.sort();
            from_first.sort();
            let p = |v: &[Duration]| (!v.is_empty()).then(|| (ms(percentile(v, 0.5)), ms(percentile(v, 0.99))));
            let expected = bulletins * streams as u64;
            (p(&from_push), p(&from_first), expected.saturating_sub(arrivals.len() as u64))
        }
        None => (None, None, 0),
    };
    if let Some(idle) = idle {
        idle.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
    let mut lost_records = 0;
    for (user, acked) in acked.iter().enumerate() {
        lost_records += lost(&http, &server.url, user, acked).await;
    }
    all.pushes.sort();
    all.pulls.sort();
    let p = |v: &[Duration]| {
        if v.is_empty() { (f64::NAN, f64::NAN) } else { (ms(percentile(v, 0.5)), ms(percentile(v, 0.99))) }
    };
    Figures {
        rps: (all.pushes.len() + all.pulls.len()) as f64 / elapsed,
        push: p(&all.pushes),
        pull: p(&all.pulls),
        errors,
        lost: lost_records,
        streams,
        announce,
        fan_out,
        missed,
        bytes_per_stream,
    }
}

fn main() {
    let binary = std::env::var("CAPACITY_SERVER").unwrap_or_else(|_| shared::release_server_binary());
    let seconds = env("CAPACITY_SECONDS", 60) as u64;
    let idle = env("CAPACITY_IDLE", 10_000);
    let active_devices = env("CAPACITY_ACTIVE", 500);
    let default_backends = if std::env::var("SYNC_TEST_POSTGRES_URL").is_ok() { "sqlite,postgres" } else { "sqlite" };
    let backends = std::env::var("CAPACITY_BACKENDS").unwrap_or_else(|_| default_backends.into());
    // The streams need a descriptor each on this side too.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("capacity: {active_devices} active devices for {seconds} s, without and with {idle} idle event streams");
    println!(
        "{:<9} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>10} {:>10} {:>7} {:>10} {:>5}  errors",
        "backend",
        "streams",
        "req/s",
        "push p50",
        "push p99",
        "pull p50",
        "pull p99",
        "announce50",
        "announce99",
        "fanout50",
        "fanout99",
        "missed",
        "B/stream",
        "lost"
    );
    for backend in backends.split(',').map(str::trim) {
        let mut baseline: Option<f64> = None;
        for streams in [0, idle] {
            let f = runtime.block_on(run(&binary, backend, active_devices, streams, seconds));
            let ratio = baseline.map_or(String::new(), |b| format!("  ({:.2}x the baseline's req/s)", f.rps / b));
            baseline.get_or_insert(f.rps);
            let pair = |p: Option<(f64, f64)>| {
                p.map_or(("-".to_owned(), "-".to_owned()), |(a, b)| (format!("{a:.1}ms"), format!("{b:.1}ms")))
            };
            let (a50, a99) = pair(f.announce);
            let (f50, f99) = pair(f.fan_out);
            println!(
                "{backend:<9} {:>7} {:>8.0} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>7.1}ms {a50:>11} {a99:>11} {f50:>10} {f99:>10} {:>7} {:>10} {:>5}  {:?}{ratio}",
                f.streams,
                f.rps,
                f.push.0,
                f.push.1,
                f.pull.0,
                f.pull.1,
                f.missed,
                f.bytes_per_stream.map_or("-".into(), |b| format!("{:.1}KiB", b / 1024.0)),
                f.lost,
                f.errors,
            );
        }
    }
}

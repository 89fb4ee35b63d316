//! Several OS processes on one store file (an app and its background sync service):
//! every write from either is sent once, one process syncs at a time and another takes
//! over when it dies mid-push, a commit in one reaches the other's live queries without
//! a polling loop, and neither ever reports the database locked. The other processes
//! are the `offsync-peer` binary; the server is the reference server on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sync_core::LocalStore;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::from_config;
use sync_sqlite::SqliteStore;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Notify;

const PEER: &str = env!("CARGO_BIN_EXE_offsync-peer");

struct Server {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reference server; with `gate`, its first push waits for the gate to open after
/// announcing it has arrived (so that a test can kill its sender mid-push).
async fn server(dir: &std::path::Path, gate: Option<(Arc<Notify>, Arc<Notify>)>) -> Server {
    let text = format!(
        "database = \"sqlite://{}\"\n[[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n\
         [collections.work_orders]\naccess = \"owner\"\n[metrics]\ntoken_sha256 = \"{}\"\n",
        dir.join("server.db").display(),
        token_sha256("alice-token"),
        token_sha256("metrics-token"),
    );
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, _store) = from_config(&config).await.unwrap();
    let mut app = sync_server::router::router(state);
    if let Some((arrived, open)) = gate {
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        app = app.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let (arrived, open, first) = (arrived.clone(), open.clone(), first.clone());
                async move {
                    if request.uri().path() == "/v1/push" && first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        arrived.notify_one();
                        open.notified().await;
                    }
                    next.run(request).await
                }
            },
        ));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { url, task }
}

fn peer(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(PEER);
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).env("RUST_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().expect("the offsync-peer binary runs")
}

/// Waits for a peer to exit and returns its output; fails the test if it failed or
/// ever mentioned a locked database.
async fn finished(child: Child, name: &str) -> String {
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned());
    assert!(output.status.success(), "{name} failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(!format!("{stdout}{stderr}").to_lowercase().contains("locked"), "{name} saw a locked database:\n{stderr}");
    stdout
}

/// Every work order on the server: id -> version.
async fn on_server(url: &str) -> std::collections::BTreeMap<String, u64> {
    let http = reqwest::Client::new();
    let mut cursor = Value::Null;
    let mut all = std::collections::BTreeMap::new();
    loop {
        let body = json!({"client_id": "checker", "collections": {"work_orders": cursor}, "limit": 1000});
        let page: Value = http
            .post(format!("{url}/v1/pull"))
            .bearer_auth("alice-token")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for c in page["changes"].as_array().unwrap() {
            all.insert(c["record_id"].as_str().unwrap().to_owned(), c["version"].as_u64().unwrap());
        }
        cursor = page["cursors"]["work_orders"].clone();
        if page["has_more"] != true {
            return all;
        }
    }
}

async fn applied_total(url: &str) -> u64 {
    let text = reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .bearer_auth("metrics-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("offsync_mutations_total{outcome=\"applied\"} "))
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_writing_one_store_send_every_write_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), None).await;
    let db = dir.path().join("device.db").display().to_string();
    SqliteStore::open(&db).await.unwrap().close().await;
    let lease = [("PEER_LEASE_MS", "3000")];
    let app = peer(&["write", &db, &server.url, "app", "150"], &lease);
    let service = peer(&["write", &db, &server.url, "svc", "150"], &lease);
    let (app, service) = tokio::join!(finished(app, "app"), finished(service, "service"));
    assert!(app.contains("done") && service.contains("done"));

    let records = on_server(&server.url).await;
    assert_eq!(records.len(), 300, "every write of both processes reached the server");
    assert!(records.values().all(|v| *v == 1), "a record was applied more than once: {records:?}");
    // Every mutation was answered once: none went out from both processes (a resend
    // would be answered from the ledger and counted again).
    assert_eq!(applied_total(&server.url).await, 300);
    let store = SqliteStore::open(&db).await.unwrap();
    assert_eq!(store.counts().await.unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_push_is_taken_over_by_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (arrived, open) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let server = server(dir.path(), Some((arrived.clone(), open.clone()))).await;
    let db = dir.path().join("device.db").display().to_string();
    SqliteStore::open(&db).await.unwrap().close().await;
    let lease = [("PEER_LEASE_MS", "1500"), ("PEER_BATCH", "1")];
    let mut app = peer(&["write", &db, &server.url, "app", "40"], &lease);
    if tokio::time::timeout(Duration::from_secs(30), arrived.notified()).await.is_err() {
        app.kill().unwrap();
        let output = app.wait_with_output().unwrap();
        panic!(
            "the app never pushed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The app is killed with its push in flight and its lease held.
    app.kill().unwrap();
    let _ = app.wait();
    open.notify_one();

    let service = peer(&["write", &db, &server.url, "svc", "0"], &lease);
    let out = tokio::time::timeout(Duration::from_secs(60), finished(service, "service")).await.expect("no takeover");
    assert!(out.contains("done"));
    let records = on_server(&server.url).await;
    let mut local: Vec<String> = {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{db}")).await.unwrap();
        sqlx::query_scalar("SELECT id FROM offsync_records WHERE collection = 'work_orders'")
            .fetch_all(&mut conn)
            .await
            .unwrap()
    };
    local.sort();
    assert_eq!(local.len(), 40, "the app wrote its 40 work orders in one transaction before it pushed");
    let got: Vec<String> = records.keys().cloned().collect();
    assert_eq!(got, local, "every write of the killed process reached the server");
    assert!(records.values().all(|v| *v == 1), "a write was applied twice: {records:?}");
    let store = SqliteStore::open(&db).await.unwrap();
    assert_eq!(store.counts().await.unwrap().pending, 0);
}

/// CPU time (user + system) a process has used, in clock ticks (Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_in_one_process_reaches_the_others_live_query_without_polling() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("device.db").display().to_string();
    SqliteStore::open(&db).await.unwrap().close().await;
    let offline = [("PEER_ONLINE", "0")];
    let url = "http://127.0.0.1:9"; // never contacted
    let watcher = tokio::process::Command::new(PEER)
        .args(["watch", &db, url, "app-0"])
        .env("PEER_ONLINE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = watcher.id().unwrap();
    let mut watcher = watcher;
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap();
    assert_eq!(first.as_deref(), Some("watching"));

    // Idle, the watching process uses no CPU to speak of (nothing polls).
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    match (before, cpu_ticks(pid)) {
        (Some(b), Some(a)) => assert!(a - b <= 5, "the idle watcher used {} ticks of CPU in 2 s", a - b),
        _ => println!("note: /proc is not readable here; the idle-CPU check did not run"),
    }

    let started = std::time::Instant::now();
    let writer = peer(&["write", &db, url, "app", "1"], &offline);
    assert!(finished(writer, "writer").await.contains("written"));
    let seen = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    let seen = seen.expect("the other process's write never reached the watch").unwrap();
    assert_eq!(seen.as_deref(), Some("seen app-0"));
    println!("the write reached the other process's watch {:?} after the writer started", started.elapsed());
    let status = tokio::time::timeout(Duration::from_secs(10), watcher.wait()).await.unwrap().unwrap();
    assert!(status.success());
}

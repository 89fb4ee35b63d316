//! No missed changes under concurrent writers, two server processes on one PostgreSQL
//! database, and the binary's graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::upsert;
use futures::StreamExt;
use serde_json::{Value, json};

/// Folds pulled changes into a view: record id → (version, deleted).
fn fold(view: &mut BTreeMap<String, (u64, bool)>, changes: &[Value]) {
    for c in changes {
        view.insert(
            c["record_id"].as_str().unwrap().to_owned(),
            (c["version"].as_u64().unwrap(), c["deleted"].as_bool().unwrap()),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_and_a_continuous_puller_never_miss_a_change() {
    for s in common::servers("").await {
        let s = Arc::new(s);
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let s = s.clone();
                tokio::spawn(async move {
                    // 1,250 changes each, 25 per push, over 100 records per writer
                    // (so records are updated several times).
                    for batch in 0..50 {
                        let mutations: Vec<_> = (0..25)
                            .map(|i| {
                                upsert(
                                    "work_orders",
                                    &format!("w{w}-r{}", (batch * 25 + i) % 100),
                                    None,
                                    json!({"w": w, "b": batch, "i": i}),
                                )
                            })
                            .collect();
                        let (status, body) = s.push("root-token", mutations).await;
                        assert_eq!(status, 200, "{body}");
                    }
                })
            })
            .collect();
        let puller = {
            let s = s.clone();
            tokio::spawn(async move {
                let mut view = BTreeMap::new();
                let mut cursor = Value::Null;
                let mut pulls = 0;
                loop {
                    let (changes, next) = s.pull_all("root-token", "work_orders", cursor.clone()).await;
                    fold(&mut view, &changes);
                    cursor = next;
                    pulls += 1;
                    if view.len() == 800 && view.values().all(|(v, _)| *v >= 12) {
                        return (view, cursor, pulls);
                    }
                    assert!(pulls < 100_000, "the puller never caught up");
                }
            })
        };
        for w in writers {
            w.await.unwrap();
        }
        let (mut view, cursor, pulls) = tokio::time::timeout(Duration::from_secs(120), puller).await.unwrap().unwrap();
        // Whatever the puller still lacks comes in the next incremental pull.
        let (rest, _) = s.pull_all("root-token", "work_orders", cursor).await;
        fold(&mut view, &rest);
        let (all, _) = s.pull_all("root-token", "work_orders", Value::Null).await;
        let mut truth = BTreeMap::new();
        fold(&mut truth, &all);
        assert_eq!(truth.len(), 800);
        assert!(truth.values().all(|(v, _)| *v == 12 || *v == 13), "each record was written 12 or 13 times");
        assert_eq!(view, truth, "{} backend: the incremental view equals the database after {pulls} pulls", s.backend);
    }
}

/// A `sync-server` process; killed when dropped.
struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_node(config: &std::path::Path) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .args(["--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("the server exited before it was ready").unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Node { child, url: format!("http://{addr}") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_node_is_announced_and_served_by_the_other() {
    let Ok(base) = std::env::var("SYNC_TEST_POSTGRES_URL") else {
        eprintln!("SYNC_TEST_POSTGRES_URL is not set: two nodes need PostgreSQL; skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let database = common::fresh_pg_schema(&base).await;
    let config = dir.path().join("sync-server.toml");
    std::fs::write(&config, common::config_text(&database, "")).unwrap();
    let one = spawn_node(&config);
    let two = spawn_node(&config);
    let http = reqwest::Client::new();
    let events = http.get(format!("{}/v1/events", two.url)).bearer_auth("alice-token").send().await.unwrap();
    assert_eq!(events.status(), 200);
    let mut stream = events.bytes_stream();

    let push = json!({"client_id": "c", "mutations": [upsert("work_orders", "via_one", None, json!({"n": 1}))]});
    let written =
        http.post(format!("{}/v1/push", one.url)).bearer_auth("alice-token").json(&push).send().await.unwrap();
    assert_eq!(written.status(), 200);
    let heard = tokio::time::timeout(Duration::from_secs(1), async {
        let mut buffer = String::new();
        while let Some(chunk) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if buffer.contains("event: change") && buffer.contains("work_orders") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(heard, Ok(true), "node two announced node one's write within a second");
    let pulled: Value = http
        .post(format!("{}/v1/pull", two.url))
        .bearer_auth("alice-token")
        .json(&json!({"client_id": "c", "collections": {"work_orders": null}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pulled["changes"][0]["record_id"], "via_one");
    assert_eq!(pulled["changes"][0]["data"], json!({"n": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sync-server.toml");
    let database = format!("sqlite://{}", dir.path().join("server.db").display());
    std::fs::write(&config, common::config_text(&database, "")).unwrap();
    let mut node = spawn_node(&config);
    let health = reqwest::get(format!("{}/v1/health", node.url)).await.unwrap();
    assert_eq!(health.status(), 200);
    let pid = node.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = node.child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exited.expect("still running 5 s after SIGTERM").success());
}

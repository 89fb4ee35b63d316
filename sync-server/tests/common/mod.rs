//! Shared fixtures: a real server on 127.0.0.1 over a temporary SQLite file, and a raw
//! HTTP client that speaks the protocol as docs/protocol.md writes it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{RunningServer, from_config, start};

pub struct TestServer {
    pub backend: &'static str,
    pub server: RunningServer,
    pub store: std::sync::Arc<dyn sync_server::store::ServerStore>,
    pub url: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub const USERS: [(&str, &str, &str); 3] =
    [("alice", "alice-token", "user"), ("bob", "bob-token", "user"), ("root", "root-token", "admin")];

pub fn config_text(database: &str, extra: &str) -> String {
    let mut text =
        format!("database = \"{database}\"\nmax_batch = 50\nmax_body_bytes = 65536\nmax_json_depth = 16\n{extra}\n");
    for (name, token, role) in USERS {
        text.push_str(&format!(
            "[[users]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nrole = \"{role}\"\n",
            token_sha256(token)
        ));
    }
    text.push_str("[collections.work_orders]\naccess = \"owner\"\n[collections.products]\naccess = \"read_only\"\n");
    text
}

/// The database backends under test: SQLite always; PostgreSQL as well when
/// `SYNC_TEST_POSTGRES_URL` is set (and then it must be reachable, or the test fails).
pub fn backends() -> Vec<&'static str> {
    let mut b = vec!["sqlite"];
    if std::env::var("SYNC_TEST_POSTGRES_URL").is_ok() {
        b.push("postgres");
    }
    b
}

/// A fresh database of `backend`: a file in `dir`, or a new PostgreSQL schema.
pub async fn database_url(backend: &str, dir: &tempfile::TempDir) -> String {
    match backend {
        "postgres" => fresh_pg_schema(&std::env::var("SYNC_TEST_POSTGRES_URL").unwrap()).await,
        _ => format!("sqlite://{}", dir.path().join("server.db").display()),
    }
}

/// A new, empty schema in the test database, and a URL whose search_path points at it.
pub async fn fresh_pg_schema(base: &str) -> String {
    use sqlx::Connection;
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .unwrap_or_else(|e| panic!("SYNC_TEST_POSTGRES_URL={base} is set but unreachable: {e}"));
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options[search_path]={schema}")
}

/// One running server per backend under test.
pub async fn servers(extra: &str) -> Vec<TestServer> {
    let mut out = Vec::new();
    for backend in backends() {
        // Each server keeps its own directory (the SQLite file lives there) until dropped.
        let dir = tempfile::tempdir().unwrap();
        let url = database_url(backend, &dir).await;
        out.push(start_with(backend, &url, extra, dir).await);
    }
    out
}

pub async fn start_with(backend: &'static str, database: &str, extra: &str, dir: tempfile::TempDir) -> TestServer {
    start_config(backend, &config_text(database, extra), dir).await
}

/// A server of `backend` configured by the whole of `text`.
pub async fn start_config(backend: &'static str, text: &str, dir: tempfile::TempDir) -> TestServer {
    // Server errors go to the test's output.
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let config = ServerConfig::from_toml(text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    let server = start("127.0.0.1:0", state, store.clone(), config.tombstone_retention).await.unwrap();
    let url = server.url();
    eprintln!("testing the {backend} backend at {url}");
    TestServer { backend, server, store, url, http: reqwest::Client::new(), _dir: dir }
}

impl TestServer {
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.post_raw(path, token, body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, token: Option<&str>, body: String) -> (u16, Value) {
        let mut req =
            self.http.post(format!("{}{path}", self.url)).header("content-type", "application/json").body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn push(&self, token: &str, mutations: Vec<Value>) -> (u16, Value) {
        self.post("/v1/push", Some(token), json!({"client_id": "c1", "mutations": mutations})).await
    }

    pub async fn pull(&self, token: &str, collections: Value, limit: Option<i64>) -> (u16, Value) {
        let mut body = json!({"client_id": "c1", "collections": collections});
        if let Some(l) = limit {
            body["limit"] = json!(l);
        }
        self.post("/v1/pull", Some(token), body).await
    }

    /// Pulls one collection to the end; returns every change and the final cursor.
    pub async fn pull_all(&self, token: &str, collection: &str, mut cursor: Value) -> (Vec<Value>, Value) {
        let mut changes = Vec::new();
        for _ in 0..10_000 {
            let (status, body) = self.pull(token, json!({ collection: cursor }), Some(20)).await;
            assert_eq!(status, 200, "{body}");
            changes.extend(body["changes"].as_array().unwrap().iter().cloned());
            cursor = body["cursors"][collection].clone();
            if !body["has_more"].as_bool().unwrap() {
                return (changes, cursor);
            }
        }
        panic!("pull never ended");
    }
}

pub fn mid() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn upsert(collection: &str, id: &str, base: Option<u64>, data: Value) -> Value {
    json!({"mutation_id": mid(), "collection": collection, "record_id": id, "op": "upsert", "base_version": base, "data": data})
}

pub fn delete(collection: &str, id: &str, base: Option<u64>) -> Value {
    json!({"mutation_id": mid(), "collection": collection, "record_id": id, "op": "delete", "base_version": base, "data": null})
}

pub fn status_of(body: &Value, i: usize) -> String {
    let r = &body["results"][i];
    match r["status"].as_str().unwrap() {
        "rejected" => format!("rejected:{}", r["error"]["code"].as_str().unwrap()),
        s => s.to_owned(),
    }
}

/// Reads `change` events from an open SSE response.
pub async fn next_change<B: AsRef<[u8]>>(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<B>> + Unpin),
    buffer: &mut String,
) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                if event.contains("event: change") {
                    let data = event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            let chunk = stream.next().await.unwrap().unwrap();
            buffer.push_str(&String::from_utf8_lossy(chunk.as_ref()));
        }
    })
    .await
    .expect("no change event")
}

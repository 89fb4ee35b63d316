//! How fast a write reaches the other devices: a device's own pushes are not announced
//! back to it, and a device whose event stream was down catches up once it reconnects.
//! The reference server over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{WorkOrder, credentials_of, wo};
use futures::StreamExt;
use serde_json::json;
use sync_core::{CollectionSpec, Engine, EngineOptions};
use sync_http::HttpTransport;
use sync_patterns::ConflictDetection;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{RunningServer, from_config, start};
use sync_sqlite::SqliteStore;

fn config(database: &str) -> ServerConfig {
    let text = format!(
        "database = \"{database}\"\n[[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n[collections.work_orders]\naccess = \"owner\"\n",
        token_sha256("alice-token")
    );
    ServerConfig::from_toml(&text).unwrap()
}

async fn serve(database: &str, listen: &str) -> RunningServer {
    let config = config(database);
    let (state, store) = from_config(&config).await.unwrap();
    start(listen, state, store, config.tombstone_retention).await.unwrap()
}

/// `change` events arriving on an events stream opened as `client`, within `wait`.
async fn events_within(
    url: &str,
    client: &str,
    wait: Duration,
    during: impl std::future::Future<Output = ()>,
) -> usize {
    let response = reqwest::Client::new()
        .get(format!("{url}/v1/events?client_id={client}"))
        .header("authorization", "Bearer alice-token")
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    during.await;
    let mut text = String::new();
    let _ = tokio::time::timeout(wait, async {
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    text.matches("event: change").count()
}

async fn push_as_client(url: &str, client: &str, id: &str) {
    let status = reqwest::Client::new()
        .post(format!("{url}/v1/push"))
        .header("authorization", "Bearer alice-token")
        .json(&json!({"client_id": client, "mutations": [{"mutation_id": uuid::Uuid::now_v7().to_string(),
            "collection": "work_orders", "record_id": id, "op": "upsert", "base_version": null,
            "data": {"id": id, "title": "x", "n": 1}}]}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_not_told_about_its_own_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&format!("sqlite://{}", dir.path().join("s.db").display()), "127.0.0.1:0").await;
    let url = server.url();
    let wait = Duration::from_millis(500);
    let own = events_within(&url, "phone", wait, push_as_client(&url, "phone", "a")).await;
    assert_eq!(own, 0, "the phone was told about its own push");
    let other = events_within(&url, "phone", wait, push_as_client(&url, "tablet", "b")).await;
    assert_eq!(other, 1, "the phone missed the tablet's push");
    server.stop().await.unwrap();
}

async fn follower(url: &str, path: &std::path::Path) -> Engine {
    let transport = Arc::new(HttpTransport::new(url).unwrap());
    let engine = Engine::builder()
        .store(Arc::new(SqliteStore::open(path).await.unwrap()))
        .credentials(credentials_of("alice"))
        .transport(transport.clone())
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .options(EngineOptions::default())
        .build()
        .await
        .unwrap();
    transport.follow_events(engine.change_notifier());
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_event_stream_was_down_catches_up_when_it_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("s.db").display());
    let server = serve(&database, "127.0.0.1:0").await;
    let listen = server.addr.to_string();
    let url = server.url();
    let phone = follower(&url, &dir.path().join("phone.db")).await;
    phone.sync_now().await.unwrap();
    // Default options: a write on one device reaches the other through its event stream.
    let tablet = follower(&url, &dir.path().join("tablet.db")).await;
    tablet.collection::<WorkOrder>().unwrap().insert(&wo("t1", "from the tablet", 1)).await.unwrap();
    let orders = phone.collection::<WorkOrder>().unwrap();
    let arrived = tokio::time::timeout(Duration::from_secs(10), async {
        while orders.get("t1").await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(arrived.is_ok(), "the tablet's write never reached the phone");
    tablet.shutdown().await;

    // The server goes away; a change lands while the phone's stream is down (written
    // straight into the server's store), and the server comes back on the same address.
    server.stop().await.unwrap();
    {
        let config = config(&database);
        let (state, _store) = from_config(&config).await.unwrap();
        let body = json!({"client_id": "desk", "mutations": [{"mutation_id": uuid::Uuid::now_v7().to_string(),
            "collection": "work_orders", "record_id": "d1", "op": "upsert", "base_version": null,
            "data": {"id": "d1", "title": "while you were away", "n": 1}}]});
        let user = state.user_for_token("alice-token").unwrap();
        state.handle_push(&user, body).await.unwrap();
    }
    let server = serve(&database, &listen).await;
    let caught_up = tokio::time::timeout(Duration::from_secs(20), async {
        while orders.get("d1").await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(caught_up.is_ok(), "the phone did not catch up after its stream reconnected");
    phone.shutdown().await;
    server.stop().await.unwrap();
}

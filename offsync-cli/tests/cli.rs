//! The `offsync` binary run as a process against real store files: a device's store with
//! synced, queued, parked and conflicted records, made by an engine syncing with the
//! test kit's server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sync_core::{CollectionSpec, Engine, EngineOptions, LocalEntity, LocalStore};
use sync_patterns::ConflictDetection;
use sync_sqlite::SqliteStore;
use sync_testkit::MemoryServer;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorkOrder {
    id: String,
    title: String,
    status: String,
}

impl LocalEntity for WorkOrder {
    const COLLECTION: &'static str = "work_orders";
    fn id(&self) -> &str {
        &self.id
    }
}

fn wo(id: &str, title: &str, status: &str) -> WorkOrder {
    WorkOrder { id: id.into(), title: title.into(), status: status.into() }
}

fn offsync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_offsync")).args(args).output().expect("the offsync binary runs")
}

/// Runs a command that must succeed and returns its standard output.
fn ok(args: &[&str]) -> String {
    let out = offsync(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "offsync {args:?} failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Runs a command that must fail and returns its standard error.
fn fails(args: &[&str]) -> String {
    let out = offsync(args);
    assert!(!out.status.success(), "offsync {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    assert!(out.stdout.is_empty(), "a failure prints nothing on stdout");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_of(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).expect("--json prints JSON")
}

/// A device store holding: wo1 in conflict (title changed on both sides, status here;
/// its edit stays queued behind the conflict), wo2 synced, wo3 and wo5 parked (the
/// server refuses them), wo4 queued while offline.
async fn device_store(path: &Path) {
    let server = Arc::new(MemoryServer::new());
    let store = Arc::new(SqliteStore::open(path).await.unwrap());
    let engine = |online: bool| {
        let (server, store) = (server.clone(), store.clone());
        async move {
            let options = EngineOptions { sync_on_start: false, start_online: online, ..EngineOptions::default() };
            Engine::builder()
                .store(store)
                .transport(server)
                .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
                .options(options)
                .build()
                .await
                .unwrap()
        }
    };
    let online = engine(true).await;
    let orders = online.collection::<WorkOrder>().unwrap();
    orders.insert(&wo("wo1", "Pump", "open")).await.unwrap();
    orders.insert(&wo("wo2", "Valve", "open")).await.unwrap();
    online.sync_now().await.unwrap();
    server.put("work_orders", "wo1", json!({"id": "wo1", "title": "Pump (server)", "status": "open"}));
    server.reject_record("wo3");
    server.reject_record("wo5");
    orders.update(&wo("wo1", "Pump (device)", "done")).await.unwrap();
    orders.insert(&wo("wo3", "Refused", "open")).await.unwrap();
    orders.insert(&wo("wo5", "Refused too", "open")).await.unwrap();
    online.sync_now().await.unwrap();
    online.shutdown().await;
    // Offline from the start, so that no cycle of the first engine can carry it.
    let offline = engine(false).await;
    offline.collection::<WorkOrder>().unwrap().insert(&wo("wo4", "Queued offline", "open")).await.unwrap();
    // The status counts follow local writes within their 50 ms throttle.
    let mut status = offline.status();
    let expected = |s: &sync_core::SyncStatus| (s.pending, s.conflicts, s.failed) == (2, 1, 2);
    let reached = tokio::time::timeout(std::time::Duration::from_secs(10), status.wait_for(expected)).await.is_ok();
    assert!(reached, "the store the tests expect: {:?}", *status.borrow());
    offline.shutdown().await;
    // Closed, so that the file is one quiet file before the tool reads it.
    store.close().await;
}

fn parked_ids(outbox: &Value) -> Vec<(String, String)> {
    outbox["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "parked")
        .map(|e| (e["record_id"].as_str().unwrap().to_owned(), e["mutation_id"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_commands_show_a_device_store_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    device_store(&path).await;
    let db = path.to_str().unwrap();
    let before = std::fs::read(&path).unwrap();

    let status = json_of(&["status", db, "--json"]);
    assert_eq!(
        (status["pending"].as_u64(), status["conflicts"].as_u64(), status["failed"].as_u64()),
        (Some(2), Some(1), Some(2))
    );
    assert_eq!(status["schema_version"], 9);
    assert!(status["client_id"].is_string());
    let collection = &status["collections"][0];
    assert_eq!((collection["name"].as_str(), collection["records"].as_u64()), (Some("work_orders"), Some(5)));
    assert!(collection["cursor"].is_string() && collection["synced_at"].is_string(), "{collection}");
    assert_eq!(status["last_sync"], collection["synced_at"]);
    assert_eq!(status["syncing"], Value::Null, "no engine syncs it now");
    let text = ok(&["status", db]);
    assert!(text.contains("pending        2") && text.contains("work_orders"), "{text}");

    let outbox = json_of(&["outbox", db, "--json"]);
    assert_eq!((outbox["queued"].as_u64(), outbox["parked"].as_u64()), (Some(2), Some(2)));
    let parked: Vec<String> = parked_ids(&outbox).into_iter().map(|(record, _)| record).collect();
    assert_eq!(parked, ["wo3", "wo5"]);
    let refused = outbox["entries"].as_array().unwrap().iter().find(|e| e["record_id"] == "wo3").unwrap();
    assert!(refused["error"].as_str().unwrap().contains("refused"), "{refused}");
    assert_eq!(refused["attempts"], 1);
    let queued: Vec<_> = outbox["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "queued")
        .map(|e| (e["record_id"].as_str().unwrap(), e["op"].as_str().unwrap()))
        .collect();
    assert_eq!(queued, [("wo1", "upsert"), ("wo4", "upsert")]);

    let conflicts = json_of(&["conflicts", db, "--json"]);
    let conflict = &conflicts[0];
    assert_eq!(conflict["record_id"], "wo1");
    let fields: Vec<(String, String)> = conflict["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap().to_owned(), f["change"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(fields, [("/status".to_owned(), "local".to_owned()), ("/title".to_owned(), "conflict".to_owned())]);
    let title = conflict["fields"].as_array().unwrap().iter().find(|f| f["path"] == "/title").unwrap();
    assert_eq!(
        (&title["base"], &title["local"], &title["server"]),
        (&json!("Pump"), &json!("Pump (device)"), &json!("Pump (server)"))
    );
    let text = ok(&["conflicts", db]);
    assert!(text.contains("work_orders/wo1") && text.contains("BOTH"), "{text}");

    let record = json_of(&["record", db, "work_orders", "wo1", "--json"]);
    assert_eq!(record["state"], "conflict");
    assert_eq!(record["base"]["title"], "Pump");
    assert_eq!(record["data"]["title"], "Pump (device)");
    assert_eq!(record["server_version"], 1);
    let record = json_of(&["record", db, "work_orders", "wo3", "--json"]);
    assert_eq!((record["state"].as_str(), record["queued"][0]["state"].as_str()), (Some("failed"), Some("parked")));
    assert_eq!(json_of(&["record", db, "work_orders", "wo4", "--json"])["state"], "pending_create");

    assert!(fails(&["record", db, "work_orders", "nope"]).contains("no record work_orders/nope"));
    assert!(fails(&["record", db, "Not A Name", "x"]).contains("collection name"));
    assert_eq!(std::fs::read(&path).unwrap(), before, "reading changed the store file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_discard_change_parked_mutations_and_wait_for_a_syncing_engine() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    device_store(&path).await;
    let db = path.to_str().unwrap();
    let parked = parked_ids(&json_of(&["outbox", db, "--json"]));
    let (wo3, wo5) = (parked[0].1.clone(), parked[1].1.clone());

    // An app's engine is syncing the store (it holds the lease): both refuse, change nothing.
    let app = SqliteStore::open(&path).await.unwrap();
    let lease = app.acquire_sync_lease("app-engine-7", chrono::Utc::now(), std::time::Duration::from_secs(60)).await;
    assert_eq!(lease.unwrap(), sync_core::lease::LeaseOutcome::Held);
    let refused = fails(&["retry", db, &wo3]);
    assert!(refused.contains("in use") && refused.contains("app-engine-7"), "{refused}");
    assert!(fails(&["discard", db, &wo5]).contains("in use"));
    assert_eq!(json_of(&["outbox", db, "--json"])["parked"], 2);
    assert_eq!(json_of(&["status", db, "--json"])["syncing"]["holder"], "app-engine-7");
    app.release_sync_lease("app-engine-7").await.unwrap();

    let said = ok(&["retry", db, &wo3]);
    assert!(said.contains("queued again"), "{said}");
    let said = ok(&["discard", db, &wo5]);
    assert!(said.contains("work_orders/wo5"), "{said}");
    let outbox = json_of(&["outbox", db, "--json"]);
    assert_eq!((outbox["queued"].as_u64(), outbox["parked"].as_u64()), (Some(3), Some(0)));
    assert_eq!(json_of(&["record", db, "work_orders", "wo3", "--json"])["state"], "pending_create");
    // The app sees it: the store it holds open reads the same, and the lease is free.
    assert_eq!(app.failed_mutations().await.unwrap().len(), 0);
    assert_eq!(app.outbox().await.unwrap().len(), 3);
    let lease = app.acquire_sync_lease("app-engine-7", chrono::Utc::now(), std::time::Duration::from_secs(60)).await;
    assert_eq!(lease.unwrap(), sync_core::lease::LeaseOutcome::Held, "the tool gave the lease back");
    app.release_sync_lease("app-engine-7").await.unwrap();
    app.close().await;

    let again = fails(&["retry", db, &wo3]);
    assert!(again.contains(&format!("no failed mutation {wo3}")), "{again}");
    assert!(fails(&["discard", db, "not-a-uuid"]).contains("mutation id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_are_not_this_offsyncs_store_get_a_clear_error_and_stay_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    assert!(fails(&["status", missing.to_str().unwrap()]).contains("no store at"));
    assert!(!missing.exists(), "a read created the file");

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database at all, just words").unwrap();
    let said = fails(&["status", text.to_str().unwrap()]);
    assert!(said.contains("not a database") || said.contains("not an offsync store"), "{said}");
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "not a database at all, just words");

    // A store a newer offsync wrote (a schema step this build does not know).
    let newer = dir.path().join("newer.db");
    SqliteStore::open(&newer).await.unwrap().close().await;
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", newer.display())).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (9999, 'future', 1, x'00', 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let before = std::fs::read(&newer).unwrap();
    for args in [
        vec!["status", newer.to_str().unwrap()],
        vec!["discard", newer.to_str().unwrap(), "0190a5b8-7a3e-7c4d-9a51-2f6b1c3d4e5f"],
    ] {
        let said = fails(&args);
        assert!(said.contains("step 9999") && said.contains("newer offsync"), "{said}");
    }
    assert_eq!(std::fs::read(&newer).unwrap(), before, "the newer store was changed");
}

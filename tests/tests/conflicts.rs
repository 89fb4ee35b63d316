//! Read/write with conflict detection, end to end on a real SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{WorkOrder, engine_at, quiet, wo};
use serde_json::json;
use sync_core::store::RecordState;
use sync_core::{Resolution, SyncEvent, TriggerOptions, Version};
use sync_testkit::MemoryServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_of_a_newer_version_of_a_pending_record_makes_a_conflict_and_keeps_local_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let engine = engine_at(&dir.path().join("c.db"), &server, quiet()).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    orders.insert(&wo("r1", "original", 1)).await.unwrap();
    engine.sync_now().await.unwrap();

    orders.update(&wo("r1", "mine", 2)).await.unwrap();
    server.put("work_orders", "r1", json!({"id": "r1", "title": "theirs", "n": 3}));
    let mut events = engine.events();
    let report = engine.sync_unit("pull_orders", TriggerOptions::default()).await.unwrap();
    assert_eq!(report.conflicts, 1);
    common::next_event(&mut events, |e| matches!(e, SyncEvent::ConflictDetected { .. }).then_some(())).await;

    assert_eq!(orders.get("r1").await.unwrap(), Some(wo("r1", "mine", 2)), "local data is not overwritten");
    assert_eq!(orders.get_stored("r1").await.unwrap().unwrap().state, RecordState::Conflict);
    let conflicts = engine.conflicts().await.unwrap();
    assert_eq!(conflicts.len(), 1);
    let c = &conflicts[0];
    assert_eq!(c.local.as_ref().unwrap()["title"], "mine");
    assert_eq!(c.server.as_ref().unwrap().data.as_ref().unwrap()["title"], "theirs");
    assert_eq!(c.server.as_ref().unwrap().version, Version(2));
    assert_eq!(c.base.as_ref().unwrap()["title"], "original");
    assert_eq!(engine.status().borrow().conflicts, 1);

    // The conflict holds back only its own record.
    orders.insert(&wo("r2", "unrelated", 1)).await.unwrap();
    let report = engine.sync_now().await.unwrap();
    assert_eq!(report.pushed, 1);
    assert!(server.record("work_orders", "r2").is_some());
    assert_eq!(server.record("work_orders", "r1").unwrap().2.unwrap()["title"], "theirs");

    // Keep local: pushed with the server's version as base.
    engine.resolve("work_orders", "r1", Resolution::KeepLocal).await.unwrap();
    engine.sync_now().await.unwrap();
    let (version, _, data) = server.record("work_orders", "r1").unwrap();
    assert_eq!((version, data.unwrap()["title"].clone()), (3, json!("mine")));
    assert!(engine.conflicts().await.unwrap().is_empty());
    assert_eq!(engine.status().borrow().conflicts, 0);
    assert_eq!(orders.get_stored("r1").await.unwrap().unwrap().server_version, Some(Version(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_answer_to_a_push_is_stored_and_can_be_resolved_with_the_server_or_a_merge() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let engine = engine_at(&dir.path().join("c.db"), &server, quiet()).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    orders.insert_many(&[wo("a", "v1", 1), wo("b", "v1", 1)]).await.unwrap();
    engine.sync_now().await.unwrap();

    orders.update(&wo("a", "mine", 2)).await.unwrap();
    orders.update(&wo("b", "mine", 2)).await.unwrap();
    server.put("work_orders", "a", json!({"id": "a", "title": "theirs", "n": 9}));
    server.put("work_orders", "b", json!({"id": "b", "title": "theirs", "n": 9}));
    let report = engine.push_then_report().await;
    assert_eq!(report.conflicts, 2);
    assert_eq!(engine.conflicts().await.unwrap().len(), 2);

    engine.resolve("work_orders", "a", Resolution::KeepServer).await.unwrap();
    assert_eq!(orders.get("a").await.unwrap(), Some(wo("a", "theirs", 9)));
    let merged = json!({"id": "b", "title": "theirs", "n": 2});
    engine.resolve("work_orders", "b", Resolution::Merged(merged.clone())).await.unwrap();
    engine.sync_now().await.unwrap();
    assert_eq!(server.record("work_orders", "b").unwrap().2.unwrap(), merged);
    assert_eq!(server.record("work_orders", "a").unwrap().0, 2, "keep-server pushed nothing");
    assert!(engine.conflicts().await.unwrap().is_empty());
    assert!(matches!(
        engine.resolve("work_orders", "a", Resolution::KeepLocal).await,
        Err(sync_core::Error::NoConflict { .. })
    ));
}

/// Small helper trait so the test reads as what it does.
trait PushThenReport {
    async fn push_then_report(&self) -> sync_core::SyncReport;
}

impl PushThenReport for sync_core::Engine {
    async fn push_then_report(&self) -> sync_core::SyncReport {
        self.sync_unit("push_orders", TriggerOptions::default()).await.unwrap()
    }
}

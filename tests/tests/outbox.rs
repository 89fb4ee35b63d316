//! The persisted outbox: restarts, crashes inside a push, coalescing, parked mutations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::{engine_at, offline, quiet, wo};
use sync_core::protocol::Op;
use sync_core::{LocalStore, SyncEvent};
use sync_sqlite::SqliteStore;
use sync_testkit::MemoryServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_offline_writes_survive_a_restart_and_go_out_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.db");
    let server = Arc::new(MemoryServer::new());

    // The records exist on the server first, so that updates do not fold into creates.
    let engine = engine_at(&path, &server, quiet()).await;
    let orders = engine.collection::<common::WorkOrder>().unwrap();
    for r in 0..100 {
        orders.insert(&wo(&format!("r{r:03}"), "new", 0)).await.unwrap();
    }
    assert_eq!(engine.sync_now().await.unwrap().pushed, 100);
    engine.shutdown().await;

    // 1,000 writes offline: 10 updates to each of 100 records.
    let engine = engine_at(&path, &server, offline()).await;
    let orders = engine.collection::<common::WorkOrder>().unwrap();
    for n in 1..=10 {
        for r in 0..100 {
            orders.update(&wo(&format!("r{r:03}"), "edited", n)).await.unwrap();
        }
    }
    assert!(engine.sync_now().await.is_err(), "offline: nothing is sent");
    drop(engine);

    // Reopen from the same file and go online.
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.outbox().await.unwrap().len(), 1000);
    let engine = common::engine_on(store.clone(), &server, offline()).await;
    let before = server.received().len();
    engine.set_online(true);
    let mut report = engine.sync_now().await.unwrap();
    while report.pushed == 0 && !store.outbox().await.unwrap().is_empty() {
        report = engine.sync_now().await.unwrap();
    }

    let received = &server.received()[before..];
    assert_eq!(received.len(), 1000, "every mutation reached the transport");
    let unique: HashSet<_> = received.iter().collect();
    assert_eq!(unique.len(), 1000, "no mutation reached the transport twice");
    assert!(store.outbox().await.unwrap().is_empty(), "the outbox is empty after the acknowledgements");

    // Per-record order: each record's updates were applied 1, 2, ..., 10.
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for m in server.applied().iter().filter(|m| m.op == Op::Upsert) {
        let n = m.data.as_ref().unwrap()["n"].as_u64().unwrap();
        seen.entry(m.record_id.as_ref().unwrap().to_string()).or_default().push(n);
    }
    for (record, ns) in seen {
        assert_eq!(ns, (0..=10).collect::<Vec<_>>(), "order of {record}");
    }
    let final_state = server.record("work_orders", "r042").unwrap();
    assert_eq!(final_state.0, 11);
    assert_eq!(final_state.2.unwrap()["n"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_dropped_inside_push_resends_the_same_ids_and_nothing_applies_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.db");
    let server = Arc::new(MemoryServer::new());
    let engine = engine_at(&path, &server, quiet()).await;
    let orders = engine.collection::<common::WorkOrder>().unwrap();
    for r in 0..5 {
        orders.insert(&wo(&format!("r{r}"), "x", 0)).await.unwrap();
    }
    let hold = server.hold_next_push();
    let syncing = tokio::spawn({
        let engine = engine.clone();
        async move { engine.sync_now().await }
    });
    // The server applied the push; the answer never arrives. The app dies now.
    hold.applied.notified().await;
    syncing.abort();
    drop(orders);
    drop(engine);
    let first_ids: Vec<_> = server.received();
    assert_eq!(first_ids.len(), 5);
    assert_eq!(server.applied().len(), 5);

    let store = SqliteStore::open(&path).await.unwrap();
    let queued: Vec<_> = store.outbox().await.unwrap().into_iter().map(|e| e.mutation_id).collect();
    assert_eq!(queued, first_ids, "the unacknowledged mutations are still queued with their ids");

    let engine = common::engine_on(store.clone(), &server, quiet()).await;
    let report = engine.sync_now().await.unwrap();
    assert_eq!(report.pushed, 5);
    assert_eq!(&server.received()[5..], &first_ids[..], "the same mutation ids were sent again");
    assert_eq!(server.applied().len(), 5, "the server applied nothing twice");
    assert!(store.outbox().await.unwrap().is_empty());
    let stored = engine.collection::<common::WorkOrder>().unwrap().get_stored("r3").await.unwrap().unwrap();
    assert_eq!(stored.server_version, Some(sync_core::Version(1)));
    assert_eq!(stored.state, sync_core::store::RecordState::Synced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_fold_into_unsent_creates_and_create_then_delete_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let store = SqliteStore::open(dir.path().join("c.db")).await.unwrap();
    let engine = common::engine_on(store.clone(), &server, offline()).await;
    let orders = engine.collection::<common::WorkOrder>().unwrap();

    orders.insert(&wo("a", "draft", 1)).await.unwrap();
    orders.update(&wo("a", "second", 2)).await.unwrap();
    orders.update(&wo("a", "final", 3)).await.unwrap();
    orders.insert(&wo("b", "oops", 1)).await.unwrap();
    orders.update(&wo("b", "oops again", 2)).await.unwrap();
    orders.delete("b").await.unwrap();

    let outbox = store.outbox().await.unwrap();
    assert_eq!(outbox.len(), 1, "one create for a, nothing for b: {outbox:?}");
    assert_eq!(outbox[0].data.as_ref().unwrap()["title"], "final");
    assert_eq!(orders.get("b").await.unwrap(), None);

    engine.set_online(true);
    engine.sync_now().await.unwrap();
    assert_eq!(server.received().len(), 1);
    assert_eq!(server.record("work_orders", "a").unwrap().2.unwrap()["title"], "final");
    assert!(server.record("work_orders", "b").is_none(), "b never reached the server");

    // Once the server has seen a record, updates and deletes are sent, not folded.
    orders.update(&wo("a", "after sync", 4)).await.unwrap();
    orders.delete("a").await.unwrap();
    assert_eq!(store.outbox().await.unwrap().len(), 2);
    engine.sync_now().await.unwrap();
    assert!(server.record("work_orders", "a").unwrap().1, "a is a tombstone on the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_mutation_is_parked_and_other_records_still_go_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    server.reject_record("bad");
    let store = SqliteStore::open(dir.path().join("c.db")).await.unwrap();
    let engine = common::engine_on(store.clone(), &server, quiet()).await;
    let mut events = engine.events();
    let orders = engine.collection::<common::WorkOrder>().unwrap();
    orders.insert(&wo("bad", "refused", 1)).await.unwrap();
    orders.insert(&wo("good1", "ok", 1)).await.unwrap();
    orders.insert(&wo("good2", "ok", 1)).await.unwrap();
    // Claimed by a push, then edited: the edit is a second mutation behind the first.
    let report = engine.sync_now().await.unwrap();
    assert_eq!((report.pushed, report.rejected), (2, 1));
    assert!(server.record("work_orders", "good1").is_some());
    assert!(server.record("work_orders", "good2").is_some());

    let rejected = common::next_event(&mut events, |e| match e {
        SyncEvent::MutationRejected { record_id, code, .. } => Some((record_id.clone(), code.clone())),
        _ => None,
    })
    .await;
    assert_eq!(rejected.0.unwrap().as_str(), "bad");
    assert_eq!(rejected.1, "invalid_mutation");
    let failed = engine.failed_mutations().await.unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].last_error.as_deref().unwrap().starts_with("invalid_mutation"));
    assert_eq!(engine.status().borrow().failed, 1);

    // A later edit of the parked record waits behind it; other records keep flowing.
    orders.update(&wo("bad", "still refused", 2)).await.unwrap();
    orders.update(&wo("good1", "edited", 2)).await.unwrap();
    let report = engine.sync_now().await.unwrap();
    assert_eq!(report.pushed, 1);
    assert_eq!(server.record("work_orders", "good1").unwrap().0, 2);
    assert_eq!(store.outbox().await.unwrap().len(), 2, "the parked create and the edit waiting behind it");

    // Retrying sends the same mutation id again; discarding drops it for good.
    let parked = failed[0].mutation_id;
    engine.retry_failed(parked).await.unwrap();
    engine.sync_now().await.unwrap();
    assert_eq!(server.received().iter().filter(|id| **id == parked).count(), 2, "sent again with the same id");
    assert!(server.applied().iter().all(|m| m.mutation_id != parked), "the server replayed its rejection");
    assert_eq!(engine.failed_mutations().await.unwrap().len(), 1, "parked again");
    engine.discard_failed(parked).await.unwrap();
    assert!(engine.failed_mutations().await.unwrap().iter().all(|m| m.mutation_id != parked));
}

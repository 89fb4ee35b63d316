//! What the UI sees: change events, live queries, the status watch, slow subscribers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{WorkOrder, engine_at, offline, wo};
use futures::StreamExt;
use sync_core::store::RecordState;
use sync_core::{Network, Origin, Phase, SyncEvent};
use sync_testkit::MemoryServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_write_fires_its_event_and_updates_live_queries_before_any_network_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let engine = engine_at(&dir.path().join("c.db"), &server, offline()).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    let mut events = engine.events();
    let mut open_orders = orders.query().filter_eq("title", "open").watch();
    assert_eq!(open_orders.next().await.unwrap().unwrap(), vec![]);

    orders.insert(&wo("a", "open", 1)).await.unwrap();
    let changed = common::next_event(&mut events, |e| match e {
        SyncEvent::RecordChanged { id, origin, .. } => Some((id.to_string(), *origin)),
        _ => None,
    })
    .await;
    assert_eq!(changed, ("a".to_owned(), Origin::Local));
    let seen = tokio::time::timeout(Duration::from_secs(10), open_orders.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(seen, vec![wo("a", "open", 1)]);

    // Reads see the pending change; nothing touched the network.
    assert_eq!(orders.get("a").await.unwrap(), Some(wo("a", "open", 1)));
    assert_eq!(
        orders.get_stored("a").await.unwrap().unwrap().state,
        RecordState::Pending(sync_core::PendingChange::Create)
    );
    assert_eq!(server.calls(), (0, 0, 0));

    // Updates re-emit the result set; records leaving the filter leave the set.
    orders.update(&wo("a", "closed", 2)).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), open_orders.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(seen, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_filter_order_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let engine = engine_at(&dir.path().join("c.db"), &server, offline()).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    let items: Vec<_> =
        (0..20).map(|i| wo(&format!("id{i:02}"), if i % 2 == 0 { "even" } else { "odd" }, 20 - i)).collect();
    orders.insert_many(&items).await.unwrap();
    let got =
        orders.query().filter_eq("title", "even").order_by("n", sync_core::Order::Asc).limit(3).fetch().await.unwrap();
    assert_eq!(got.iter().map(|w| w.n).collect::<Vec<_>>(), vec![2, 4, 6]);
    let got = orders.query().filter_eq("n", 5).fetch().await.unwrap();
    assert_eq!(got, vec![wo("id15", "odd", 5)]);
    assert_eq!(orders.list().await.unwrap().len(), 20);
    let bad = orders.query().filter_eq("title'); DROP TABLE x; --", "a").fetch().await;
    assert!(matches!(bad, Err(sync_core::Error::InvalidQuery { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_goes_offline_then_syncing_with_progress_then_idle() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let engine = engine_at(&dir.path().join("c.db"), &server, offline()).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    for i in 0..3 {
        orders.insert(&wo(&format!("r{i}"), "x", i)).await.unwrap();
    }
    let mut status = engine.status();
    let offline_status = tokio::time::timeout(std::time::Duration::from_secs(30), status.wait_for(|s| s.pending == 3))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert_eq!(offline_status.network, Network::Offline);
    assert_eq!(offline_status.phase, Phase::Idle);

    let gate = server.gate_pushes();
    engine.set_online(true);
    let syncing = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        status.wait_for(|s| matches!(s.phase, Phase::Syncing { .. })),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert_eq!(syncing.network, Network::Online);
    assert!(matches!(syncing.phase, Phase::Syncing { pushed: 0, push_total: 3, .. }), "{:?}", syncing.phase);
    let mut events = engine.events();
    gate.add_permits(1000);
    // The watch keeps only the latest snapshot, so the short-lived "pushed 3" phase may
    // already be gone when we look; the progress events are all kept.
    let progress = common::next_event(&mut events, |e| match e {
        SyncEvent::CycleProgress { pushed, push_total, .. } => Some((*pushed, *push_total)),
        _ => None,
    })
    .await;
    assert_eq!(progress, (3, 3));
    let idle = tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.phase == Phase::Idle && s.last_success.is_some()),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert_eq!((idle.pending, idle.conflicts, idle.failed), (0, 0, 0));
    assert!(idle.last_pull.contains_key(&sync_core::CollectionName::new("work_orders").unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_does_not_slow_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let engine = engine_at(&dir.path().join("c.db"), &server, offline()).await;
    let mut never_read_events = engine.events();
    let _never_read_status = engine.status();
    let orders = engine.collection::<WorkOrder>().unwrap();
    // Twice the event capacity: the engine must not wait for the idle subscriber.
    let items: Vec<_> = (0..2048).map(|i| wo(&format!("r{i:04}"), "x", i)).collect();
    tokio::time::timeout(Duration::from_secs(60), orders.insert_many(&items)).await.unwrap().unwrap();
    for i in 0..50 {
        tokio::time::timeout(Duration::from_secs(10), orders.update(&wo(&format!("r{i:04}"), "y", i)))
            .await
            .unwrap()
            .unwrap();
    }
    engine.set_online(true);
    // Going online starts a reconnect cycle; sync_now runs after (or is) it.
    tokio::time::timeout(Duration::from_secs(60), engine.sync_now()).await.unwrap().unwrap();
    assert_eq!(server.live_records("work_orders").len(), 2048);
    assert_eq!(engine.status().borrow().pending, 0);
    assert!(matches!(never_read_events.try_recv(), Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))));
}

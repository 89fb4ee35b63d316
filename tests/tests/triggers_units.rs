//! Custom actions, sync units, the interval trigger, automatic retries and resolvers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{WorkOrder, engine_on, quiet, wo};
use serde_json::json;
use sync_core::protocol::{Op, PullResponse};
use sync_core::{
    CollectionName, CollectionSpec, Conflict, Direction, Engine, EngineOptions, Error, LocalStore, Resolution,
    SyncEvent, SyncUnit, TriggerOptions,
};
use sync_patterns::ConflictDetection;
use sync_sqlite::SqliteStore;
use sync_testkit::MemoryServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_actions_are_queued_like_writes_and_keep_per_record_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let store = SqliteStore::open(dir.path().join("c.db")).await.unwrap();
    let engine = engine_on(store.clone(), &server, quiet()).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    orders.insert(&wo("a", "x", 1)).await.unwrap();
    engine.sync_now().await.unwrap();

    orders.update(&wo("a", "read me", 2)).await.unwrap();
    orders.action("mark_read", Some("a"), json!({"by": "tech-7"})).await.unwrap();
    orders.update(&wo("a", "after read", 3)).await.unwrap();
    orders.action("ping", None, json!({})).await.unwrap();
    assert_eq!(orders.get("a").await.unwrap(), Some(wo("a", "after read", 3)), "an action changes no local data");
    assert_eq!(store.outbox().await.unwrap().len(), 4);

    engine.sync_now().await.unwrap();
    let applied: Vec<_> = server.applied().into_iter().skip(1).collect();
    let ops: Vec<_> = applied.iter().filter(|m| m.record_id.is_some()).map(|m| m.op).collect();
    assert_eq!(ops, vec![Op::Upsert, Op::Action, Op::Upsert], "the record's mutations in the order made");
    let read = applied.iter().find(|m| m.op == Op::Action && m.record_id.is_some()).unwrap();
    assert_eq!(read.data.as_ref().unwrap()["by"], "tech-7");
    assert!(applied.iter().any(|m| m.op == Op::Action && m.record_id.is_none()));
    assert!(store.outbox().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_units_run_alone_in_their_direction_and_can_discard_queued_units() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let store = SqliteStore::open(dir.path().join("c.db")).await.unwrap();
    let engine = engine_on(store.clone(), &server, quiet()).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    orders.insert(&wo("mine", "x", 1)).await.unwrap();
    server.put("work_orders", "theirs", json!({"id": "theirs", "title": "y", "n": 1}));

    // A pull-only unit pulls and sends nothing.
    let report = engine.sync_unit("pull_orders", TriggerOptions::default()).await.unwrap();
    assert_eq!((report.pushed, report.pulled), (0, 1));
    assert_eq!(server.calls().0, 0);
    assert_eq!(store.outbox().await.unwrap().len(), 1);
    // A push-only unit pushes and pulls nothing.
    let pulls = server.calls().1;
    let report = engine.sync_unit("push_orders", TriggerOptions::default()).await.unwrap();
    assert_eq!((report.pushed, report.pulled), (1, 0));
    assert_eq!(server.calls().1, pulls);

    // While a cycle runs, units queue behind it; a trigger with discard_queued drops them.
    let gate = server.gate_pushes();
    orders.insert(&wo("next", "x", 1)).await.unwrap();
    let mut events = engine.events();
    let running = tokio::spawn({
        let e = engine.clone();
        async move { e.sync_unit("push_orders", TriggerOptions::default()).await }
    });
    common::next_event(&mut events, |e| matches!(e, SyncEvent::CycleStarted { .. }).then_some(())).await;
    let queued = common::sent(engine.sync_unit("pull_orders", TriggerOptions::default())).await;
    let login = common::sent(engine.sync_unit("all", TriggerOptions { discard_queued: true })).await;
    gate.add_permits(100);
    running.await.unwrap().unwrap();
    assert!(matches!(queued.await, Err(Error::Discarded { ref unit }) if unit == "pull_orders"));
    assert_eq!(login.await.unwrap().unit, "all");
}

#[tokio::test]
async fn the_interval_trigger_syncs_periodically_and_transient_failures_retry_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let store = SqliteStore::open(dir.path().join("c.db")).await.unwrap();
    let options = EngineOptions { interval: Some(Duration::from_secs(60)), ..quiet() };
    let engine = engine_on(store, &server, options).await;
    tokio::time::pause();
    let mut events = engine.events();
    // Cycles are measured from their start: with time paused, tokio moves the clock to
    // the next timer whenever the runtime waits on SQLite's own thread, and during a
    // cycle that timer is the sync lease's renewal (a third of its 30 s), so a cycle's
    // end can land seconds after its start. The start is the interval's tick itself.
    let started = |e: &SyncEvent| matches!(e, SyncEvent::CycleStarted { .. }).then(tokio::time::Instant::now);
    let first = common::next_event_untimed(&mut events, started).await;
    common::next_event_untimed(&mut events, |e| matches!(e, SyncEvent::CycleCompleted { .. }).then_some(())).await;
    let second = common::next_event_untimed(&mut events, started).await;
    assert!(second - first >= Duration::from_secs(59), "{:?}", second - first);
    common::next_event_untimed(&mut events, |e| matches!(e, SyncEvent::CycleCompleted { .. }).then_some(())).await;

    // A 503 fails the cycle; the engine reruns it after a backoff without any trigger.
    server.fail_next_pull(Error::Transient { message: "503".into() });
    let failed = common::next_event_untimed(&mut events, |e| match e {
        SyncEvent::CycleFailed { retryable, .. } => Some(*retryable),
        _ => None,
    })
    .await;
    assert!(failed, "a transient failure is retried");
    let failed_at = tokio::time::Instant::now();
    let rerun_at = common::next_event_untimed(&mut events, |e| {
        matches!(e, SyncEvent::CycleStarted { .. }).then(tokio::time::Instant::now)
    })
    .await;
    // The default backoff's first delay is at most 500 ms; the interval is 60 s.
    assert!(rerun_at - failed_at <= Duration::from_millis(500), "retried after {:?}", rerun_at - failed_at);
    common::next_event_untimed(&mut events, |e| matches!(e, SyncEvent::CycleCompleted { .. }).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_resolver_settles_conflicts_during_the_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let pattern = ConflictDetection::new().resolver(|c: &Conflict| {
        // Keep the local title, take the server's counter.
        let mut merged = c.local.clone().unwrap();
        merged["n"] = c.server.as_ref().unwrap().data.as_ref().unwrap()["n"].clone();
        Resolution::Merged(merged)
    });
    let engine = Engine::builder()
        .store(Arc::new(SqliteStore::open(dir.path().join("c.db")).await.unwrap()))
        .transport(server.clone())
        .collection(CollectionSpec::of::<WorkOrder>(pattern))
        .options(quiet())
        .build()
        .await
        .unwrap();
    let orders = engine.collection::<WorkOrder>().unwrap();
    orders.insert(&wo("a", "base", 1)).await.unwrap();
    engine.sync_now().await.unwrap();
    orders.update(&wo("a", "local title", 1)).await.unwrap();
    server.put("work_orders", "a", json!({"id": "a", "title": "server title", "n": 7}));
    let mut events = engine.events();
    engine.sync_now().await.unwrap();
    common::next_event(&mut events, |e| matches!(e, SyncEvent::ConflictResolved { .. }).then_some(())).await;
    engine.sync_now().await.unwrap();
    assert_eq!(
        server.record("work_orders", "a").unwrap().2.unwrap(),
        json!({"id": "a", "title": "local title", "n": 7})
    );
    assert!(engine.conflicts().await.unwrap().is_empty());
    assert_eq!(orders.get("a").await.unwrap(), Some(wo("a", "local title", 7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_drops_clean_records_keeps_pending_ones_and_takes_the_full_set() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let store = SqliteStore::open(dir.path().join("c.db")).await.unwrap();
    let engine = engine_on(store.clone(), &server, quiet()).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    orders.insert_many(&[wo("stale", "x", 1), wo("kept", "x", 1)]).await.unwrap();
    engine.sync_now().await.unwrap();
    orders.update(&wo("kept", "local edit", 2)).await.unwrap();
    let wo_name = CollectionName::new("work_orders").unwrap();
    let fresh = sync_core::protocol::Change {
        collection: wo_name.clone(),
        record_id: sync_core::RecordId::new("fresh").unwrap(),
        version: sync_core::Version(1),
        deleted: false,
        removed: false,
        data: Some(json!({"id": "fresh", "title": "new", "n": 1})),
        mutation_id: None,
    };
    server.override_next_pull(PullResponse {
        changes: vec![fresh],
        cursors: [(wo_name.clone(), sync_core::Cursor("100".into()))].into_iter().collect(),
        has_more: false,
        reset: vec![wo_name.clone()],
        subscriptions: Default::default(),
    });
    engine.sync_unit("pull_orders", TriggerOptions::default()).await.unwrap();
    let ids: Vec<_> = orders.list().await.unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(ids, vec!["fresh", "kept"], "the clean record is gone, the pending one kept");
    assert_eq!(orders.get("kept").await.unwrap(), Some(wo("kept", "local edit", 2)));
    assert_eq!(store.cursor(&wo_name).await.unwrap(), Some(sync_core::Cursor("100".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_queries_end_when_the_engine_shuts_down() {
    use futures::StreamExt;
    let server = Arc::new(MemoryServer::new());
    let engine = engine_on(SqliteStore::in_memory().await.unwrap(), &server, quiet()).await;
    let mut watch = engine.collection::<WorkOrder>().unwrap().watch();
    assert_eq!(watch.next().await.unwrap().unwrap(), vec![]);
    engine.shutdown().await;
    let end = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap();
    assert!(end.is_none());
}

#[test]
fn units_are_checked_at_build_time() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let server = Arc::new(MemoryServer::new());
        let bad = Engine::builder()
            .store(Arc::new(SqliteStore::in_memory().await.unwrap()))
            .transport(server.clone())
            .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
            .unit(SyncUnit::new("x", Direction::Pull, &["products"]))
            .build()
            .await;
        assert!(matches!(bad, Err(Error::Config { ref message }) if message.contains("products")));
        let reserved = Engine::builder()
            .store(Arc::new(SqliteStore::in_memory().await.unwrap()))
            .transport(server)
            .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
            .unit(SyncUnit::new("all", Direction::Pull, &["work_orders"]))
            .build()
            .await;
        assert!(matches!(reserved, Err(Error::Config { .. })));
    });
}

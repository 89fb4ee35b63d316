//! Triggers in time: backoff, debounce and follow-up cycles, on paused tokio time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{WorkOrder, engine_on, quiet, wo};
use sync_core::{Backoff, EngineOptions, Network, SyncEvent};
use sync_sqlite::SqliteStore;
use sync_testkit::MemoryServer;
use tokio::time::Instant;

/// Opens the store on real time, then pauses tokio's clock: from here on tokio jumps to
/// the next timer whenever every task waits (also while SQLite works on its thread).
async fn store_then_pause(dir: &tempfile::TempDir) -> SqliteStore {
    let store = SqliteStore::open(dir.path().join("c.db")).await.unwrap();
    tokio::time::pause();
    store
}

#[tokio::test]
async fn an_unreachable_server_is_probed_with_exponential_backoff_and_jitter_then_synced() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    server.set_reachable(false);
    let backoff =
        Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(20), multiplier: 2.0, jitter: 0.5 };
    let options = EngineOptions { sync_on_start: true, backoff, ..quiet() };
    let engine = engine_on(store_then_pause(&dir).await, &server, options).await;
    let mut status = engine.status();
    status.wait_for(|s| s.network == Network::Offline).await.unwrap();

    tokio::time::sleep(Duration::from_secs(120)).await;
    let probes = server.probe_times();
    assert!(probes.len() >= 6, "probes: {}", probes.len());
    // After the k-th failed probe (1-based), the next comes after a delay in
    // [ceiling/2, ceiling], ceiling = min(1s * 2^k, 20s): exponential, jittered, capped.
    let mut gaps = Vec::new();
    for (k, pair) in probes.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let ceiling = backoff.ceiling(k as u32 + 2);
        assert!(gap <= ceiling, "gap {k}: {gap:?} > {ceiling:?}");
        assert!(gap >= ceiling / 2, "gap {k}: {gap:?} < half of {ceiling:?}");
        gaps.push(gap);
    }
    assert!(gaps.iter().all(|g| *g <= Duration::from_secs(20)), "capped: {gaps:?}");
    assert!(gaps[3] > gaps[0], "growing: {gaps:?}");

    // The server comes back: the next probe succeeds and a reconnect sync runs.
    let orders = engine.collection::<WorkOrder>().unwrap();
    orders.insert(&wo("a", "queued while away", 1)).await.unwrap();
    status.wait_for(|s| s.pending == 1).await.unwrap();
    server.set_reachable(true);
    status.wait_for(|s| s.network == Network::Online && s.pending == 0).await.unwrap();
    assert!(server.record("work_orders", "a").is_some());
}

fn cycles_started(events: &mut tokio::sync::broadcast::Receiver<SyncEvent>) -> usize {
    std::iter::from_fn(|| events.try_recv().ok()).filter(|e| matches!(e, SyncEvent::CycleStarted { .. })).count()
}

/// Runs `f` with tokio's auto-advance of paused time held off. Paused time jumps to the
/// next timer whenever every task waits, also while SQLite works on its own thread; a
/// running blocking task holds those jumps off, so the store call takes no virtual time.
async fn without_time_jumps<T>(f: impl std::future::Future<Output = T>) -> T {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let holder = tokio::task::spawn_blocking(move || {
        let _ = wait.recv();
    });
    let out = f.await;
    drop(release);
    let _ = holder.await;
    out
}

#[tokio::test]
async fn local_writes_are_debounced_into_one_cycle_after_the_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let options = EngineOptions { debounce: Duration::from_millis(200), ..quiet() };
    let store = store_then_pause(&dir).await;
    let engine = engine_on(store, &server, options).await;
    let mut events = engine.events();
    let orders = engine.collection::<WorkOrder>().unwrap();
    let mut last_write = Instant::now();
    for i in 0..5 {
        last_write = Instant::now();
        without_time_jumps(orders.insert(&wo(&format!("r{i}"), "x", i))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started =
        common::next_event_untimed(&mut events, |e| matches!(e, SyncEvent::CycleStarted { .. }).then(Instant::now))
            .await;
    let quiet_for = started - last_write;
    assert!(quiet_for >= Duration::from_millis(200), "started {quiet_for:?} after the last write");
    assert!(quiet_for < Duration::from_millis(210), "started {quiet_for:?} after the last write");
    let report = common::next_event_untimed(&mut events, |e| match e {
        SyncEvent::CycleCompleted { report } => Some(report.clone()),
        _ => None,
    })
    .await;
    assert_eq!(report.pushed, 5, "one cycle carried all five writes");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(server.calls().0, 1, "one push for five writes");
    assert_eq!(cycles_started(&mut events), 0, "no second cycle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_during_a_cycle_schedule_exactly_one_follow_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let engine = engine_on(SqliteStore::open(dir.path().join("c.db")).await.unwrap(), &server, quiet()).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    orders.insert(&wo("a", "x", 1)).await.unwrap();
    let mut events = engine.events();
    let gate = server.gate_pushes();
    let first = tokio::spawn({
        let e = engine.clone();
        async move { e.sync_now().await }
    });
    common::next_event(&mut events, |e| matches!(e, SyncEvent::CycleStarted { .. }).then_some(())).await;
    // Three more triggers while the first cycle waits on the server, queued in turn.
    let mut followers = Vec::new();
    for _ in 0..3 {
        followers.push(common::sent(engine.sync_now()).await);
    }
    gate.add_permits(100);
    first.await.unwrap().unwrap();
    let mut reports = Vec::new();
    for f in followers {
        reports.push(f.await.unwrap());
    }
    let mut started = 0;
    while let Ok(e) = events.try_recv() {
        if matches!(e, SyncEvent::CycleStarted { .. }) {
            started += 1;
        }
    }
    assert_eq!(started, 1, "exactly one follow-up cycle after the first");
    assert!(reports.iter().all(|r| r == &reports[0]), "the three callers share the follow-up's report");
}

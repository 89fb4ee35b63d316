//! The test kit's parts against real engines on SQLite files: the in-process reference
//! server (no sockets) and `FaultyTransport`'s faults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{WorkOrder, engine_with, wo};
use sync_core::{AccountId, AuthState, Credentials, Engine, Error};
use sync_sqlite::SqliteStore;
use sync_testkit::{Fault, FaultPlan, FaultyTransport, InProcessServer, InProcessTransport, MemoryServer};

type Faulty = Arc<FaultyTransport<InProcessTransport>>;

async fn server() -> InProcessServer {
    InProcessServer::start(&["alice", "bob"], &[("work_orders", "owner")]).await.unwrap()
}

async fn client(path: &std::path::Path, transport: Faulty) -> Engine {
    engine_with(SqliteStore::open(path).await.unwrap(), transport).await
}

/// A client of alice's on a store file in `dir`, with a faulty transport.
async fn alice(server: &InProcessServer, dir: &tempfile::TempDir) -> (Engine, Faulty) {
    let transport = Arc::new(FaultyTransport::new(server.transport("alice")));
    (client(&dir.path().join("alice.db"), transport.clone()).await, transport)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_server_is_the_reference_server_without_sockets() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = alice(&server, &dir).await;
    a.collection::<WorkOrder>().unwrap().insert(&wo("w1", "pump", 1)).await.unwrap();
    a.sync_now().await.unwrap();
    // The server holds it at version 1, logged once, and scope applies: bob sees nothing
    let records = server.records("alice", "work_orders").await.unwrap();
    assert_eq!(records["w1"].0, 1);
    assert_eq!(records["w1"].1["title"], "pump");
    assert!(server.records("bob", "work_orders").await.unwrap().is_empty());
    let log = server.applications();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].record_id.as_ref().unwrap().as_str(), "w1");
    // A second client of alice's pulls it
    let b = client(&dir.path().join("b.db"), Arc::new(FaultyTransport::new(server.transport("alice")))).await;
    b.sync_now().await.unwrap();
    assert_eq!(b.collection::<WorkOrder>().unwrap().get("w1").await.unwrap(), Some(wo("w1", "pump", 1)));
    // An unknown token is a 401, as over HTTP
    let stranger = client(&dir.path().join("s.db"), Arc::new(FaultyTransport::new(server.transport("mallory")))).await;
    assert!(matches!(stranger.sync_now().await, Err(Error::Unauthorized { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_duplicated_and_reordered_pushes_apply_exactly_once() {
    for fault in [Fault::DropResponse, Fault::Duplicate, Fault::Reorder, Fault::Delay(20)] {
        let server = server().await;
        let dir = tempfile::tempdir().unwrap();
        let (a, faults) = alice(&server, &dir).await;
        let orders = a.collection::<WorkOrder>().unwrap();
        orders.insert(&wo("w1", "first", 1)).await.unwrap();
        faults.inject(fault);
        let _ = a.sync_now().await;
        orders.update(&wo("w1", "second", 2)).await.unwrap();
        for _ in 0..3 {
            let _ = a.sync_now().await;
        }
        // Then both writes applied once each, in order, and nothing waits
        let log = server.applications();
        let titles: Vec<_> = log
            .iter()
            .map(|l| match &l.body {
                sync_core::protocol::MutationBody::Upsert { data } => data["title"].clone(),
                other => panic!("not an upsert: {other:?}"),
            })
            .collect();
        assert_eq!(titles, ["first", "second"], "{fault:?}");
        assert!(server.double_applications().is_empty(), "{fault:?}");
        assert_eq!(server.records("alice", "work_orders").await.unwrap()["w1"].0, 2, "{fault:?}");
        assert_eq!(a.status().borrow().pending, 0, "{fault:?}");
        assert_eq!(faults.injected().get(fault.name()), Some(&1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_server_errors_and_refused_tokens_lose_nothing() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, faults) = alice(&server, &dir).await;
    a.collection::<WorkOrder>().unwrap().insert(&wo("w1", "x", 1)).await.unwrap();
    faults.inject(Fault::CutOff(2));
    assert!(matches!(a.sync_now().await, Err(Error::Unreachable { .. })));
    assert!(matches!(a.sync_now().await, Err(Error::Unreachable { .. })));
    faults.inject(Fault::ServerError);
    assert!(matches!(a.sync_now().await, Err(Error::Transient { .. })));
    faults.inject(Fault::Unauthorized);
    assert!(matches!(a.sync_now().await, Err(Error::Unauthorized { .. })));
    assert_eq!(a.status().borrow().auth, AuthState::Required);
    assert!(server.applications().is_empty(), "no fault above reached the server");
    // When the app supplies its token again, the same mutation goes out
    a.set_credentials(Credentials::new(AccountId::new("alice").unwrap(), "alice").unwrap()).await.unwrap();
    a.sync_now().await.unwrap();
    assert_eq!(server.applications().len(), 1);
    assert_eq!(a.status().borrow().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_server_applied_a_push_resends_the_same_mutation() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, faults) = alice(&server, &dir).await;
    a.collection::<WorkOrder>().unwrap().insert(&wo("w1", "x", 1)).await.unwrap();
    faults.inject(Fault::CrashAfterApply);
    // When the push is applied and the app dies before it hears the answer
    tokio::select! {
        _ = a.sync_now() => panic!("the crashed call must not return"),
        () = faults.crashed() => {}
    }
    drop(a);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let a = client(&dir.path().join("alice.db"), faults.clone()).await;
    assert_eq!(a.status().borrow().pending, 1, "the in-doubt mutation survived the crash");
    a.sync_now().await.unwrap();
    // Then the server applied it once and the retry was answered from the ledger
    assert_eq!(server.applications().len(), 1);
    assert!(server.double_applications().is_empty());
    assert_eq!(a.status().borrow().pending, 0);
    assert_eq!(server.requests().0, 2, "the original push and its retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_gives_the_same_faults_every_time() {
    async fn run(seed: u64) -> std::collections::BTreeMap<&'static str, u64> {
        let plan = FaultPlan {
            seed,
            rate: 0.5,
            faults: vec![Fault::DropRequest, Fault::DropResponse, Fault::Duplicate, Fault::ServerError],
        };
        let transport = Arc::new(FaultyTransport::seeded(MemoryServer::new(), plan));
        let engine = engine_with(SqliteStore::in_memory().await.unwrap(), transport.clone()).await;
        let orders = engine.collection::<WorkOrder>().unwrap();
        for i in 0..20 {
            orders.insert(&wo(&format!("w{i}"), "x", i)).await.unwrap();
            let _ = engine.sync_now().await;
        }
        transport.injected()
    }
    let first = run(7).await;
    assert!(first.values().sum::<u64>() > 5, "{first:?}");
    assert_eq!(first, run(7).await);
    assert_ne!(first, run(8).await);
}

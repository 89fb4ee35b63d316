//! Work cut off half way on the device: engines dropped or shut down in the middle of a
//! push over HTTP, and store calls whose futures are dropped at random points. Nothing
//! may be left behind: no transaction open on the store's writer, no jammed server, no
//! write lost or applied twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{WorkOrder, wo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sync_core::Engine;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{RunningServer, from_config, start};
use sync_sqlite::SqliteStore;

async fn server(database: &str) -> RunningServer {
    let text = format!(
        "database = \"{database}\"\nmax_batch = 100\n[[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n\
         [collections.work_orders]\naccess = \"owner\"\n",
        token_sha256("alice-token")
    );
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap()
}

async fn databases(dir: &tempfile::TempDir) -> Vec<String> {
    let mut urls = vec![format!("sqlite://{}", dir.path().join("server.db").display())];
    match std::env::var("SYNC_TEST_POSTGRES_URL") {
        Ok(base) => {
            use sqlx::Connection;
            let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
            let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
            sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut conn).await.unwrap();
            let sep = if base.contains('?') { '&' } else { '?' };
            urls.push(format!("{base}{sep}options[search_path]={schema}"));
        }
        Err(_) => eprintln!("SYNC_TEST_POSTGRES_URL is not set: the PostgreSQL server is skipped here"),
    }
    urls
}

async fn engine(store: &SqliteStore, url: &str) -> Engine {
    common::engine_with(store.clone(), Arc::new(common::http_as(url, "alice"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_dropped_in_the_middle_of_a_push_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    for database in databases(&dir).await {
        let server = server(&database).await;
        let url = server.url();
        let file = tempfile::tempdir_in(dir.path()).unwrap();
        // One store for every engine: what a cut-off cycle leaves on it is what the next
        // engine finds.
        let store = SqliteStore::open(file.path().join("device.db")).await.unwrap();
        let mut rng = StdRng::seed_from_u64(11);
        let mut written = BTreeMap::new();
        let mut cut = 0;
        for round in 0..40 {
            let device = engine(&store, &url).await;
            let orders = device.collection::<WorkOrder>().unwrap();
            let batch: Vec<WorkOrder> = (0..250).map(|i| wo(&format!("r{round}-{i}"), "inspect", i)).collect();
            orders.insert_many(&batch).await.unwrap();
            written.extend(batch.into_iter().map(|w| (w.id.clone(), w)));
            let syncing = {
                let device = device.clone();
                tokio::spawn(async move { device.sync_now().await })
            };
            tokio::time::sleep(Duration::from_micros(rng.random_range(0..40_000))).await;
            if !syncing.is_finished() {
                cut += 1;
            }
            // Half the time the app shuts the engine down, half the time it just goes.
            syncing.abort();
            if round % 2 == 0 {
                device.shutdown().await;
            } else {
                drop(device);
            }
        }
        eprintln!("{database}: {cut} of 40 sync cycles cut off");
        assert!(cut >= 10, "the delays should cut most cycles short ({cut} of 40 were)");

        // A last engine sends what is left; each sync answers (a transaction left open
        // would hang it; 30 s leaves room for a loaded CI machine).
        let device = engine(&store, &url).await;
        for _ in 0..20 {
            let report = tokio::time::timeout(Duration::from_secs(30), device.sync_now()).await.unwrap().unwrap();
            if report.pushed == 0 && device.status().borrow().pending == 0 {
                break;
            }
        }
        assert_eq!(device.status().borrow().pending, 0);

        // Another device of alice's pulls everything: each record once, as written, at
        // version 1 (applied exactly once).
        let other_dir = tempfile::tempdir_in(dir.path()).unwrap();
        let other_store = SqliteStore::open(other_dir.path().join("other.db")).await.unwrap();
        let other = engine(&other_store, &url).await;
        other.sync_now().await.unwrap();
        let orders = other.collection::<WorkOrder>().unwrap();
        let got: BTreeMap<String, WorkOrder> =
            orders.list().await.unwrap().into_iter().map(|w| (w.id.clone(), w)).collect();
        assert_eq!(got, written, "{database}");
        for id in written.keys().step_by(97) {
            let stored = orders.get_stored(id).await.unwrap().unwrap();
            assert_eq!(stored.server_version.map(|v| v.0), Some(1), "{id} applied more than once");
        }
        server.stop().await.unwrap();
    }
}

/// An engine that never syncs: the store is all the next test is about.
async fn offline_device(store: &SqliteStore) -> Engine {
    common::engine_on(store.clone(), &Arc::new(sync_testkit::MemoryServer::new()), common::offline()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_calls_dropped_at_random_points_leave_the_store_usable_and_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let mut rng = StdRng::seed_from_u64(5);
    let mut singles = Vec::new();
    let mut batches = Vec::new();
    {
        let store = SqliteStore::open(&path).await.unwrap();
        let device = offline_device(&store).await;
        let orders = device.collection::<WorkOrder>().unwrap();
        for i in 0..400 {
            let batch: Vec<WorkOrder> = (0..60).map(|j| wo(&format!("b{i}-{j}"), "batch", j)).collect();
            let cut = Duration::from_micros(rng.random_range(0..1_500));
            let _ = tokio::time::timeout(cut, orders.insert_many(&batch)).await;
            batches.push(batch);
            // The next write must work at once, and be committed.
            let one = wo(&format!("s{i}"), "single", i);
            tokio::time::timeout(Duration::from_secs(5), orders.insert(&one)).await.unwrap().unwrap();
            singles.push(one);
        }
        device.shutdown().await;
        store.close().await;
    }
    // Opened again: every single write is there, and every batch wholly or not at all.
    let device = offline_device(&SqliteStore::open(&path).await.unwrap()).await;
    let orders = device.collection::<WorkOrder>().unwrap();
    for one in &singles {
        assert_eq!(orders.get(&one.id).await.unwrap().as_ref(), Some(one), "a single write was lost");
    }
    let mut whole = 0;
    for batch in &batches {
        let present = futures::future::join_all(batch.iter().map(|w| orders.get(&w.id))).await;
        let n = present.iter().filter(|p| matches!(p, Ok(Some(_)))).count();
        assert!(n == 0 || n == batch.len(), "a batch was stored in part ({n} of {})", batch.len());
        whole += usize::from(n > 0);
    }
    eprintln!("{whole} of {} cut-off batches had committed", batches.len());
    assert!(whole < batches.len(), "no batch was cut off: the test did not test anything");
}

//! `encryption`: what SQLCipher costs a local write, a bulk insert and opening a store,
//! beside the same work on a plain store in the same run.
//!
//! Run with: `cargo bench -p offsync-tests --bench encryption --features encryption`
//! (`ENCRYPTION_N` single writes per store, default 5,000; `ENCRYPTION_BULK` rows,
//! default 100,000). Single writes alternate between the two stores, so both see the
//! same machine noise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(not(feature = "encryption"))]
fn main() {
    println!("encryption: needs SQLCipher; run with --features encryption (nothing measured)");
}

#[cfg(feature = "encryption")]
#[tokio::main]
async fn main() {
    bench::run().await;
}

#[cfg(feature = "encryption")]
#[path = "shared/mod.rs"]
mod shared;

#[cfg(feature = "encryption")]
mod bench {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use sync_core::{CollectionSpec, Engine, EngineOptions};
    use sync_patterns::ConflictDetection;
    use sync_sqlite::{EncryptionKey, SqliteStore, SqliteStoreOptions};
    use sync_testkit::MemoryServer;

    use super::shared::{Order, env, ms, order, percentile, us};

    fn options(encrypted: bool) -> SqliteStoreOptions {
        let encryption = encrypted.then(|| EncryptionKey::raw(&[0x5a; 32]).unwrap());
        SqliteStoreOptions { encryption, ..SqliteStoreOptions::default() }
    }

    async fn engine(path: &Path, encrypted: bool) -> Engine {
        let store = SqliteStore::open_with(path, options(encrypted)).await.unwrap();
        let options = EngineOptions { start_online: false, sync_on_start: false, ..EngineOptions::default() };
        Engine::builder()
            .store(Arc::new(store))
            .transport(Arc::new(MemoryServer::new()))
            .collection(CollectionSpec::of::<Order>(ConflictDetection::new()))
            .options(options)
            .build()
            .await
            .unwrap()
    }

    pub async fn run() {
        let n = env("ENCRYPTION_N", 5000);
        let bulk = env("ENCRYPTION_BULK", 100_000);
        let dir = tempfile::tempdir().unwrap();
        println!(
            "encryption: SQLCipher (raw 256-bit key) vs plain, WAL, synchronous=NORMAL; {n} single writes each, {bulk} bulk rows"
        );

        // 1. Single writes through the engine, alternating between the two stores.
        let plain = engine(&dir.path().join("plain.db"), false).await;
        let secret = engine(&dir.path().join("secret.db"), true).await;
        let (plain_orders, secret_orders) =
            (plain.collection::<Order>().unwrap(), secret.collection::<Order>().unwrap());
        let (mut plain_times, mut secret_times) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n as u64 {
            let (a, b) = (order(i), order(i));
            let start = Instant::now();
            plain_orders.insert(&a).await.unwrap();
            plain_times.push(start.elapsed());
            let start = Instant::now();
            secret_orders.insert(&b).await.unwrap();
            secret_times.push(start.elapsed());
        }
        plain_times.sort();
        secret_times.sort();
        for (label, p) in [("p50", 0.50), ("p99", 0.99)] {
            let (pl, se) = (percentile(&plain_times, p), percentile(&secret_times, p));
            println!(
                "single write {label}: plain {:>8.1} µs | encrypted {:>8.1} µs | encrypted/plain {:.2}",
                us(pl),
                us(se),
                us(se) / us(pl)
            );
        }
        plain.shutdown().await;
        secret.shutdown().await;

        // 2. insert_many: one transaction each.
        let mut rates = Vec::new();
        for encrypted in [false, true] {
            let name = if encrypted { "bulk_secret.db" } else { "bulk_plain.db" };
            let engine = engine(&dir.path().join(name), encrypted).await;
            let items: Vec<_> = (0..bulk as u64).map(order).collect();
            let start = Instant::now();
            engine.collection::<Order>().unwrap().insert_many(&items).await.unwrap();
            rates.push(bulk as f64 / start.elapsed().as_secs_f64());
            engine.shutdown().await;
        }
        println!(
            "insert_many {bulk}: plain {:>9.0} records/s | encrypted {:>9.0} records/s | encrypted/plain time {:.2}",
            rates[0],
            rates[1],
            rates[0] / rates[1]
        );

        // 3. Opening a store of `bulk` records and reading one page of them.
        for (encrypted, name) in [(false, "bulk_plain.db"), (true, "bulk_secret.db")] {
            let path = dir.path().join(name);
            let mut times = Vec::new();
            for _ in 0..5 {
                let start = Instant::now();
                let store = SqliteStore::open_with(&path, options(encrypted)).await.unwrap();
                let engine = Engine::builder()
                    .store(Arc::new(store.clone()))
                    .transport(Arc::new(MemoryServer::new()))
                    .collection(CollectionSpec::of::<Order>(ConflictDetection::new()))
                    .options(EngineOptions { start_online: false, sync_on_start: false, ..EngineOptions::default() })
                    .build()
                    .await
                    .unwrap();
                let page = engine.collection::<Order>().unwrap().query().limit(50).fetch().await.unwrap();
                assert_eq!(page.len(), 50);
                times.push(start.elapsed());
                engine.shutdown().await;
                store.close().await;
            }
            times.sort();
            println!(
                "open {} store of {bulk} records + engine + first page of 50: median {:>7.1} ms (of 5)",
                if encrypted { "encrypted" } else { "plain    " },
                ms(times[2])
            );
        }
    }
}

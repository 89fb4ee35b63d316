//! People on one device: each account's queue goes out under its own token only, the
//! next person reads none of the previous person's records, and sign-out and wipe
//! remove what they promise. Real SQLite files, the reference server over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{WorkOrder, credentials_of, offline, quiet, wo};
use sync_core::{AccountId, CollectionSpec, DeviceStores, Engine, EngineBuilder, Error, SignOut};
use sync_patterns::ConflictDetection;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{RunningServer, from_config, start};
use sync_sqlite::{SqliteDevice, SqliteStore};

/// The reference server on a SQLite file: alice and bob, each owning what they create.
async fn server(dir: &tempfile::TempDir) -> RunningServer {
    let mut text = format!("database = \"sqlite://{}\"\n", dir.path().join("server.db").display());
    for user in ["alice", "bob"] {
        text.push_str(&format!(
            "[[users]]\nname = \"{user}\"\ntoken_sha256 = \"{}\"\n",
            token_sha256(&format!("{user}-token"))
        ));
    }
    text.push_str("[collections.work_orders]\naccess = \"owner\"\n");
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap()
}

fn builder(url: &str) -> EngineBuilder {
    Engine::builder().transport(Arc::new(sync_http::HttpTransport::new(url).unwrap())).collection(CollectionSpec::of::<
        WorkOrder,
    >(
        ConflictDetection::new(),
    ))
}

/// An engine for `user` on the shared device.
async fn on_device(device: &Arc<SqliteDevice>, url: &str, user: &str, online: bool) -> Engine {
    let options = if online { quiet() } else { offline() };
    builder(url).device(device.clone()).credentials(credentials_of(user)).options(options).build().await.unwrap()
}

/// What the server holds for `user`: a fresh device of theirs pulls everything it may see.
async fn server_ids(url: &str, user: &str) -> Vec<String> {
    let fresh = SqliteStore::in_memory().await.unwrap();
    let engine =
        builder(url).store(Arc::new(fresh)).credentials(credentials_of(user)).options(quiet()).build().await.unwrap();
    engine.sync_now().await.unwrap();
    let mut ids: Vec<String> =
        engine.collection::<WorkOrder>().unwrap().list().await.unwrap().into_iter().map(|w| w.id).collect();
    ids.sort();
    engine.shutdown().await;
    ids
}

async fn local_ids(engine: &Engine) -> Vec<String> {
    let mut ids: Vec<String> =
        engine.collection::<WorkOrder>().unwrap().list().await.unwrap().into_iter().map(|w| w.id).collect();
    ids.sort();
    ids
}

/// Waits until the status shows `n` queued writes (counts are refreshed after each write).
async fn pending_becomes(engine: &Engine, n: u64) {
    let mut status = engine.status();
    let waited = tokio::time::timeout(std::time::Duration::from_secs(10), status.wait_for(|s| s.pending == n)).await;
    assert!(waited.is_ok(), "pending stayed {} instead of {n}", engine.status().borrow().pending);
}

fn account(name: &str) -> AccountId {
    AccountId::new(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_on_one_device_each_write_reaches_the_server_under_its_own_user() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let url = server.url();
    let device = Arc::new(SqliteDevice::new(dir.path().join("device")));

    // Alice works offline, then hands the device over with her writes still queued.
    let alice = on_device(&device, &url, "alice", false).await;
    let orders = alice.collection::<WorkOrder>().unwrap();
    for id in ["a1", "a2", "a3"] {
        orders.insert(&wo(id, "alice's", 1)).await.unwrap();
    }
    pending_becomes(&alice, 3).await;
    let report = alice.sign_out(SignOut::Keep).await.unwrap();
    assert_eq!(report.discarded_pending, 0);

    // Bob reads none of Alice's records; her writes are counted as held for another user.
    let bob = on_device(&device, &url, "bob", false).await;
    assert_eq!(bob.account(), Some(account("bob")));
    assert_eq!(bob.status().borrow().held_for_other_accounts, 3);
    assert_eq!(bob.status().borrow().pending, 0);
    assert!(local_ids(&bob).await.is_empty(), "bob sees alice's records");
    assert_eq!(bob.collection::<WorkOrder>().unwrap().get("a1").await.unwrap(), None);
    let bob_orders = bob.collection::<WorkOrder>().unwrap();
    for id in ["b1", "b2"] {
        bob_orders.insert(&wo(id, "bob's", 1)).await.unwrap();
    }
    pending_becomes(&bob, 2).await;
    bob.set_online(true);
    bob.sync_now().await.unwrap();
    pending_becomes(&bob, 0).await;
    assert_eq!(server_ids(&url, "bob").await, ["b1", "b2"]);
    assert!(server_ids(&url, "alice").await.is_empty(), "alice's writes went out while she was away");
    bob.sign_out(SignOut::Keep).await.unwrap();

    // Alice signs in again: her queue goes out, under her token.
    let alice = on_device(&device, &url, "alice", true).await;
    assert_eq!(alice.status().borrow().held_for_other_accounts, 0, "bob has nothing left to send");
    assert_eq!(local_ids(&alice).await, ["a1", "a2", "a3"]);
    let report = alice.sync_now().await.unwrap();
    assert_eq!(report.pushed, 3);
    assert_eq!(local_ids(&alice).await, ["a1", "a2", "a3"], "alice's device pulled none of bob's records");
    assert_eq!(server_ids(&url, "alice").await, ["a1", "a2", "a3"]);
    assert_eq!(server_ids(&url, "bob").await, ["b1", "b2"]);
    alice.shutdown().await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_store_refuses_another_person_s_credentials_and_sends_nothing_under_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let url = server.url();
    let path = dir.path().join("app.db");

    // A store no credentials were given for is bound by the first ones.
    let engine = builder(&url).store(Arc::new(SqliteStore::open(&path).await.unwrap())).options(offline());
    let engine = engine.build().await.unwrap();
    assert_eq!(engine.account(), None);
    engine.collection::<WorkOrder>().unwrap().insert(&wo("x1", "alice's", 1)).await.unwrap();
    engine.set_credentials(credentials_of("alice")).await.unwrap();
    assert_eq!(engine.account(), Some(account("alice")));

    // Bob's token is refused: alice's queued write stays hers.
    let refused = engine.set_credentials(credentials_of("bob")).await;
    assert!(
        matches!(&refused, Err(Error::AccountMismatch { bound, given }) if bound == "alice" && given == "bob"),
        "{refused:?}"
    );
    engine.set_online(true);
    engine.sync_now().await.unwrap();
    pending_becomes(&engine, 0).await;
    assert_eq!(server_ids(&url, "alice").await, ["x1"]);
    assert!(server_ids(&url, "bob").await.is_empty(), "alice's write went out under bob's token");
    engine.shutdown().await;

    // Nor can an engine for bob be built on alice's store.
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let built = builder(&url).store(store).credentials(credentials_of("bob")).options(quiet()).build().await;
    assert!(matches!(built, Err(Error::AccountMismatch { .. })), "{:?}", built.err());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_with_discard_deletes_the_person_s_store_and_counts_what_was_unsent() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let url = server.url();
    let device = Arc::new(SqliteDevice::new(dir.path().join("device")));

    let bob = on_device(&device, &url, "bob", true).await;
    bob.collection::<WorkOrder>().unwrap().insert(&wo("b1", "bob's", 1)).await.unwrap();
    bob.sign_out(SignOut::Keep).await.unwrap();

    let alice = on_device(&device, &url, "alice", false).await;
    let orders = alice.collection::<WorkOrder>().unwrap();
    for id in ["a1", "a2", "a3", "a4"] {
        orders.insert(&wo(id, "alice's", 1)).await.unwrap();
    }
    orders.update(&wo("a1", "edited", 2)).await.unwrap();
    let file = device.store_path(&account("alice"));
    assert!(file.exists());
    let other_handle = alice.clone();
    let report = alice.sign_out(SignOut::Discard).await.unwrap();
    assert_eq!(report.discarded_pending, 4, "{report:?}");
    for suffix in ["", "-wal", "-shm"] {
        let companion = format!("{}{suffix}", file.display());
        assert!(!std::path::Path::new(&companion).exists(), "{companion} is still there");
    }
    // A handle kept elsewhere in the app cannot reach the deleted store.
    let late = other_handle.collection::<WorkOrder>().unwrap().insert(&wo("a5", "late", 1)).await;
    assert!(matches!(late, Err(Error::Shutdown)), "{late:?}");
    // Bob's store is untouched; alice starts from nothing.
    let left: Vec<_> = device.accounts().await.unwrap().into_iter().map(|a| a.account).collect();
    assert_eq!(left, [account("bob")]);
    let alice = on_device(&device, &url, "alice", false).await;
    assert!(local_ids(&alice).await.is_empty());
    pending_becomes(&alice, 0).await;
    alice.shutdown().await;
    assert!(server_ids(&url, "alice").await.is_empty(), "discarded writes reached the server");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wipe_removes_every_account_s_files_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir).await;
    let url = server.url();
    let device_dir = dir.path().join("device");
    let device = Arc::new(SqliteDevice::new(&device_dir));
    for user in ["alice", "bob"] {
        let engine = on_device(&device, &url, user, false).await;
        engine.collection::<WorkOrder>().unwrap().insert(&wo(&format!("{user}-1"), "x", 1)).await.unwrap();
        engine.sign_out(SignOut::Keep).await.unwrap();
    }
    std::fs::write(device_dir.join("notes.txt"), "the app's own file").unwrap();
    let bob = on_device(&device, &url, "bob", false).await;
    assert_eq!(bob.status().borrow().held_for_other_accounts, 1);
    bob.wipe().await.unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&device_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["notes.txt"]);
    assert!(device.accounts().await.unwrap().is_empty());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_file_of_another_account_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let device = SqliteDevice::new(dir.path());
    let alice = device.open_store(&account("alice")).await.unwrap();
    alice.close().await;
    // Alice's file put where bob's store belongs (a restored backup, a copied profile).
    let alice_file = device.store_path(&account("alice"));
    let bob_file = device.store_path(&account("bob"));
    std::fs::copy(&alice_file, &bob_file).unwrap();
    let before = std::fs::read(&bob_file).unwrap();
    let opened = device.open(&account("bob"), sync_core::Residence::Disk).await;
    assert!(
        matches!(&opened, Err(Error::AccountMismatch { bound, given }) if bound == "alice" && given == "bob"),
        "{:?}",
        opened.err()
    );
    assert_eq!(std::fs::read(&bob_file).unwrap(), before, "the refused file was changed");
}

#[tokio::test]
async fn a_device_needs_to_know_whose_store_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let device = Arc::new(SqliteDevice::new(dir.path()));
    let built = builder("http://127.0.0.1:9").device(device.clone()).options(quiet()).build().await;
    assert!(matches!(built, Err(Error::Config { .. })), "{:?}", built.err());
    let both = builder("http://127.0.0.1:9")
        .device(device.clone())
        .account(account("alice"))
        .credentials(credentials_of("bob"))
        .build()
        .await;
    assert!(matches!(both, Err(Error::AccountMismatch { .. })), "{:?}", both.err());
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let two = builder("http://127.0.0.1:9").device(device).store(store).account(account("alice")).build().await;
    assert!(matches!(two, Err(Error::Config { .. })), "{:?}", two.err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a refused build created files");
}

//! Given/When/Then scenarios for the ready-made patterns: real engines on SQLite files
//! against the real reference server over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "scenarios/world.rs"]
mod world;

use serde_json::json;
use sync_core::protocol::Op;
use sync_core::{Collection, Engine, Error, LocalStore, Resolution, SyncEvent};
use sync_patterns::ConflictDetection;
use sync_patterns::resolvers::{KeepLocal, KeepServer, Side, ThreeWayMerge};
use sync_sqlite::SqliteStore;
use world::{Customer, Device, Job, Note, Order, Product, Resolver, Task, World};

async fn two_devices(world: &World, resolver: Resolver) -> (Device, Device) {
    (world.device("a", resolver.clone()).await, world.device("b", resolver).await)
}

/// Given an order both devices have synced at version 1.
async fn shared_order(a: &Device, b: &Device) {
    a.orders().insert(&Order::new("o1", "inspect pump", 1)).await.unwrap();
    a.sync().await;
    b.sync().await;
    assert_eq!(b.orders().get("o1").await.unwrap(), Some(Order::new("o1", "inspect pump", 1)));
}

/// A world with devices A and B (orders resolved by `resolver`) sharing order o1.
async fn given_a_shared_order(resolver: Resolver) -> (World, Device, Device) {
    let world = World::new().await;
    let (a, b) = two_devices(&world, resolver).await;
    shared_order(&a, &b).await;
    (world, a, b)
}

/// Given the shared order, A's edit reached the server first and B's edit met it:
/// B holds one conflict.
async fn conflict_on_b(a: &Device, b: &Device, a_title: &str, b_title: &str) {
    a.orders().update(&Order::new("o1", a_title, 1)).await.unwrap();
    a.sync().await;
    b.orders().update(&Order::new("o1", b_title, 1)).await.unwrap();
    b.sync().await;
    assert_eq!(b.conflicts().await.len(), 1);
}

/// Given the admin published `n` products `p0..` titled `title`.
async fn publish_products(world: &World, n: u32, title: &str) -> (Engine, Collection<Product>) {
    let admin = world.admin().await;
    let products = admin.collection::<Product>().unwrap();
    for i in 0..n {
        products.insert(&Product::new(&format!("p{i}"), title, i)).await.unwrap();
    }
    admin.sync_now().await.unwrap();
    (admin, products)
}

/// Given the admin published `n` customers `c0..` titled `title`.
async fn publish_customers(world: &World, n: u32, title: &str) -> (Engine, Collection<Customer>) {
    let admin = world.admin().await;
    let customers = admin.collection::<Customer>().unwrap();
    for i in 0..n {
        customers.insert(&Customer::new(&format!("c{i}"), title, i)).await.unwrap();
    }
    admin.sync_now().await.unwrap();
    (admin, customers)
}

/// (id, title) pairs, sorted by id.
fn id_titles(records: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = records.into_iter().collect();
    pairs.sort();
    pairs
}

/// The server's (id, title) pairs of alice's `collection`.
async fn server_id_titles(world: &World, collection: &str) -> Vec<(String, String)> {
    id_titles(world.server_view(collection).await.into_iter().map(|(id, _, t)| (id, t)))
}

// ---------- conflict detection ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_edit_the_same_record_offline_and_the_second_sees_a_conflict() {
    let (world, a, b) = given_a_shared_order(Resolver::Defer).await;
    // When both edit offline and A syncs first
    a.orders().update(&Order::new("o1", "A's title", 1)).await.unwrap();
    b.orders().update(&Order::new("o1", "B's title", 1)).await.unwrap();
    a.sync().await;
    b.sync().await;
    // Then B holds a conflict showing both sides and the base, A's edit is on the server
    let conflicts = b.conflicts().await;
    assert_eq!(conflicts.len(), 1);
    let c = &conflicts[0];
    assert_eq!(c.local.as_ref().unwrap()["title"], "B's title");
    assert_eq!(c.server.as_ref().unwrap().data.as_ref().unwrap()["title"], "A's title");
    assert_eq!(c.base.as_ref().unwrap()["title"], "inspect pump");
    assert_eq!(world.server_view("orders").await, vec![("o1".into(), 2, "A's title".into())]);
    // And B's local data is still its own edit
    assert_eq!(b.orders().get("o1").await.unwrap().unwrap().title, "B's title");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_holds_back_only_its_own_record() {
    let (_world, a, b) = given_a_shared_order(Resolver::Defer).await;
    a.orders().update(&Order::new("o1", "A", 1)).await.unwrap();
    a.sync().await;
    // When B edits the conflicting record and creates another
    b.orders().update(&Order::new("o1", "B", 1)).await.unwrap();
    b.orders().insert(&Order::new("o2", "new from B", 1)).await.unwrap();
    b.sync().await;
    // Then the other record reaches the server and A
    assert_eq!(b.conflicts().await.len(), 1);
    a.sync().await;
    assert_eq!(a.orders().get("o2").await.unwrap().unwrap().title, "new from B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_made_during_a_conflict_go_into_the_resolution() {
    let (world, a, b) = given_a_shared_order(Resolver::Defer).await;
    conflict_on_b(&a, &b, "A", "B").await;
    // When B keeps editing before resolving, then keeps its side
    b.orders().update(&Order::new("o1", "B later", 7)).await.unwrap();
    assert_eq!(b.conflicts().await[0].local.as_ref().unwrap()["title"], "B later");
    b.engine.resolve("orders", "o1", Resolution::KeepLocal).await.unwrap();
    b.sync().await;
    // Then the server has the later edit, based on A's version
    assert_eq!(world.server_view("orders").await, vec![("o1".into(), 3, "B later".into())]);
    a.sync().await;
    assert_eq!(a.orders().get("o1").await.unwrap(), Some(Order::new("o1", "B later", 7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_against_delete_is_a_conflict_both_ways() {
    let (_world, a, b) = given_a_shared_order(Resolver::Defer).await;
    // When A deletes and B edits: B's update meets a tombstone
    a.orders().delete("o1").await.unwrap();
    b.orders().update(&Order::new("o1", "B edit", 1)).await.unwrap();
    a.sync().await;
    b.sync().await;
    let c = b.conflicts().await;
    assert_eq!(c.len(), 1);
    assert!(c[0].server.as_ref().unwrap().deleted);
    // When B keeps its edit, the record comes back for everyone
    b.engine.resolve("orders", "o1", Resolution::KeepLocal).await.unwrap();
    b.sync().await;
    a.sync().await;
    assert_eq!(a.orders().get("o1").await.unwrap().unwrap().title, "B edit");

    // And the other way round: A edits, B deletes: B's delete meets A's update
    a.orders().update(&Order::new("o1", "A again", 2)).await.unwrap();
    b.orders().delete("o1").await.unwrap();
    a.sync().await;
    b.sync().await;
    let c = b.conflicts().await;
    assert_eq!(c.len(), 1);
    assert!(c[0].local.is_none(), "the local side is the delete");
    assert_eq!(c[0].server.as_ref().unwrap().data.as_ref().unwrap()["title"], "A again");
    b.engine.resolve("orders", "o1", Resolution::KeepServer).await.unwrap();
    assert_eq!(b.orders().get("o1").await.unwrap().unwrap().title, "A again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_against_delete_settles_without_a_user() {
    let (world, a, b) =
        given_a_shared_order(Resolver::Pattern(ConflictDetection::new().resolver(ThreeWayMerge::new()))).await;
    a.orders().delete("o1").await.unwrap();
    b.orders().delete("o1").await.unwrap();
    a.sync().await;
    b.sync().await;
    // Then both agree the record is gone and nothing waits for the user
    assert!(b.conflicts().await.is_empty());
    assert_eq!(b.orders().get("o1").await.unwrap(), None);
    assert!(world.server_view("orders").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_created_on_two_devices_is_a_conflict() {
    let world = World::new().await;
    let (a, b) = two_devices(&world, Resolver::Defer).await;
    a.orders().insert(&Order::new("dup", "from A", 1)).await.unwrap();
    b.orders().insert(&Order::new("dup", "from B", 2)).await.unwrap();
    a.sync().await;
    b.sync().await;
    // Then B's create did not overwrite A's: it is a conflict with no base
    assert_eq!(world.server_view("orders").await, vec![("dup".into(), 1, "from A".into())]);
    let c = b.conflicts().await;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].base, None);
    assert_eq!(c[0].server.as_ref().unwrap().version.0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolution_that_conflicts_again_is_a_new_conflict() {
    let (world, a, b) = given_a_shared_order(Resolver::Defer).await;
    conflict_on_b(&a, &b, "A1", "B1").await;
    // When B resolves against version 2 while A moves the record to version 3
    b.engine
        .resolve("orders", "o1", Resolution::Merged(serde_json::json!({"id": "o1", "title": "merged", "n": 1})))
        .await
        .unwrap();
    a.orders().update(&Order::new("o1", "A2", 1)).await.unwrap();
    a.sync().await;
    b.sync().await;
    // Then the resolution itself conflicts, against version 3
    let c = b.conflicts().await;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].server.as_ref().unwrap().version.0, 3);
    assert_eq!(c[0].local.as_ref().unwrap()["title"], "merged");
    assert_eq!(c[0].base.as_ref().unwrap()["title"], "A1", "the base is what the resolution started from");
    b.engine.resolve("orders", "o1", Resolution::KeepLocal).await.unwrap();
    b.sync().await;
    assert_eq!(world.server_view("orders").await, vec![("o1".into(), 4, "merged".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_converge_through_automatic_merges() {
    let world = World::new().await;
    let merge = Resolver::Pattern(ConflictDetection::new().resolver(ThreeWayMerge::new()));
    let a = world.device("a", merge.clone()).await;
    let b = world.device("b", merge.clone()).await;
    let c = world.device("c", merge).await;
    a.orders().insert(&Order::new("o1", "pump", 1)).await.unwrap();
    a.sync().await;
    b.sync().await;
    c.sync().await;
    // When B changes the title and C the counter, offline, and all sync
    b.orders().update(&Order::new("o1", "pump, north", 1)).await.unwrap();
    c.orders().update(&Order::new("o1", "pump", 5)).await.unwrap();
    b.sync().await;
    c.sync().await;
    a.sync().await;
    b.sync().await;
    // Then everyone holds both changes, with no conflict left
    let expected = Some(Order::new("o1", "pump, north", 5));
    for d in [&a, &b, &c] {
        assert_eq!(d.orders().get("o1").await.unwrap(), expected, "device {}", d.name);
        assert!(d.conflicts().await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_server_and_keep_local_resolvers_settle_at_once() {
    let world = World::new().await;
    let a = world.device("a", Resolver::Defer).await;
    let server_wins = world.device("b", Resolver::Pattern(ConflictDetection::new().resolver(KeepServer))).await;
    let local_wins = world.device("c", Resolver::Pattern(ConflictDetection::new().resolver(KeepLocal))).await;
    shared_order(&a, &server_wins).await;
    local_wins.sync().await;
    a.orders().update(&Order::new("o1", "A", 1)).await.unwrap();
    a.sync().await;
    server_wins.orders().update(&Order::new("o1", "loses", 1)).await.unwrap();
    server_wins.sync().await;
    assert_eq!(server_wins.orders().get("o1").await.unwrap().unwrap().title, "A");
    local_wins.orders().update(&Order::new("o1", "wins", 1)).await.unwrap();
    local_wins.sync().await;
    assert!(server_wins.conflicts().await.is_empty() && local_wins.conflicts().await.is_empty());
    assert_eq!(world.server_view("orders").await, vec![("o1".into(), 3, "wins".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_true_field_conflict_under_three_way_merge_waits_for_the_user() {
    let (world, a, b) =
        given_a_shared_order(Resolver::Pattern(ConflictDetection::new().resolver(ThreeWayMerge::new()))).await;
    a.orders().update(&Order::new("o1", "A", 1)).await.unwrap();
    b.orders().update(&Order::new("o1", "B", 1)).await.unwrap();
    a.sync().await;
    b.sync().await;
    assert_eq!(b.conflicts().await.len(), 1);
    // With a preference it settles instead
    let c = world
        .device("c", Resolver::Pattern(ConflictDetection::new().resolver(ThreeWayMerge::new().prefer(Side::Local))))
        .await;
    c.sync().await;
    c.orders().update(&Order::new("o1", "C", 9)).await.unwrap();
    a.orders().update(&Order::new("o1", "A2", 1)).await.unwrap();
    a.sync().await;
    c.sync().await;
    assert!(c.conflicts().await.is_empty());
    assert_eq!(world.server_view("orders").await[0].2, "C");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolving_raises_an_event_and_updates_the_counts() {
    let (_world, a, b) = given_a_shared_order(Resolver::Defer).await;
    conflict_on_b(&a, &b, "A", "B").await;
    assert_eq!(b.engine.status().borrow().conflicts, 1);
    let mut events = b.engine.events();
    b.engine.resolve("orders", "o1", Resolution::KeepServer).await.unwrap();
    let resolved = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let Ok(sync_core::SyncEvent::ConflictResolved { id, .. }) = events.recv().await {
                return id;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(resolved.as_str(), "o1");
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut status = b.engine.status();
        while status.borrow_and_update().conflicts != 0 {
            status.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_detection_survives_a_crash_after_the_server_applied_a_push() {
    let world = World::new().await;
    let a = world.device("a", Resolver::Defer).await;
    a.orders().insert(&Order::new("o1", "first", 1)).await.unwrap();
    // When the push is applied but its answer is lost, and the device dies
    a.transport.lose_next_push_answer();
    assert!(a.engine.sync_now().await.is_err());
    let a = a.crash_and_restart(&world).await;
    a.sync().await;
    // Then the create was applied once, with no false conflict, and the device is clean
    assert_eq!(world.server_view("orders").await, vec![("o1".into(), 1, "first".into())]);
    assert!(a.conflicts().await.is_empty());
    assert_eq!(a.engine.status().borrow().pending, 0);
    assert_eq!(a.orders().get_stored("o1").await.unwrap().unwrap().server_version.unwrap().0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_value_chosen_by_the_user_reaches_every_device() {
    let (world, a, b) = given_a_shared_order(Resolver::Defer).await;
    conflict_on_b(&a, &b, "A1", "B1").await;
    // When the user on B writes a value of their own
    b.engine
        .resolve("orders", "o1", Resolution::Merged(json!({"id": "o1", "title": "A1 + B1", "n": 7})))
        .await
        .unwrap();
    assert!(b.conflicts().await.is_empty());
    b.sync().await;
    a.sync().await;
    // Then it is pushed over the server's version and both devices hold it
    assert_eq!(world.server_view("orders").await, vec![("o1".into(), 3, "A1 + B1".into())]);
    for d in [&a, &b] {
        assert_eq!(d.orders().get("o1").await.unwrap(), Some(Order::new("o1", "A1 + B1", 7)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_after_reset_keeps_a_record_in_conflict_and_its_local_edit() {
    let (world, a, b) = given_a_shared_order(Resolver::Defer).await;
    b.orders().insert(&Order::new("o2", "second", 1)).await.unwrap();
    b.sync().await;
    a.sync().await;
    // Given A's edit of o1 is in conflict with B's
    b.orders().update(&Order::new("o1", "B edit", 1)).await.unwrap();
    b.sync().await;
    a.orders().update(&Order::new("o1", "A edit", 1)).await.unwrap();
    a.engine.sync_now().await.unwrap();
    assert_eq!(a.conflicts().await.len(), 1);
    // When B deletes o2 and the tombstone is purged before A comes back
    b.orders().delete("o2").await.unwrap();
    b.sync().await;
    world.purge_tombstones().await;
    a.sync().await;
    // Then A resynced the collection: o2 is gone, o1 keeps A's edit and its conflict
    assert_eq!(a.orders().get("o2").await.unwrap(), None);
    assert_eq!(a.orders().get("o1").await.unwrap().unwrap().title, "A edit");
    let c = a.conflicts().await;
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].server.as_ref().unwrap().data.as_ref().unwrap()["title"], "B edit");
}

// ---------- last write wins ----------

/// A world with devices A and B sharing note n1 titled `title`.
async fn given_a_shared_note(title: &str) -> (World, Device, Device) {
    let world = World::new().await;
    let (a, b) = two_devices(&world, Resolver::Defer).await;
    a.notes().insert(&Note::new("n1", title, 1)).await.unwrap();
    sync_in_order(&[&a, &b]).await;
    (world, a, b)
}

async fn sync_in_order(devices: &[&Device]) {
    for d in devices {
        d.sync().await;
    }
}

/// Every device holds note n1 titled `title`, and none reported a conflict.
async fn assert_all_hold_note(devices: &[&Device], title: &str) {
    for d in devices {
        assert_eq!(d.notes().get("n1").await.unwrap().unwrap().title, title, "device {}", d.name);
        assert!(d.conflicts().await.is_empty(), "device {}", d.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_write_wins_follows_arrival_order_and_never_reports_conflicts() {
    let (world, a, b) = given_a_shared_note("from A").await;
    // When both edit offline; B's edit reaches the server last
    a.notes().update(&Note::new("n1", "A edit", 1)).await.unwrap();
    b.notes().update(&Note::new("n1", "B edit", 1)).await.unwrap();
    sync_in_order(&[&a, &b, &a]).await;
    // Then B's edit wins everywhere and nobody has a conflict
    assert_eq!(world.server_view("notes").await, vec![("n1".into(), 3, "B edit".into())]);
    assert_all_hold_note(&[&a, &b], "B edit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_write_wins_create_is_idempotent_after_a_timed_out_answer_and_a_crash() {
    let world = World::new().await;
    let a = world.device("a", Resolver::Defer).await;
    a.notes().insert(&Note::new("n1", "once", 1)).await.unwrap();
    a.transport.lose_next_push_answer();
    assert!(a.engine.sync_now().await.is_err());
    let a = a.crash_and_restart(&world).await;
    a.sync().await;
    // Then the note exists once, at version 1 (a second apply would make it version 2)
    assert_eq!(world.server_view("notes").await, vec![("n1".into(), 1, "once".into())]);
    assert_eq!(a.engine.status().borrow().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_write_wins_delete_against_edit_converges_without_a_conflict() {
    let (world, a, b) = given_a_shared_note("first").await;
    // When A deletes and B edits offline, and B's edit arrives last
    a.notes().delete("n1").await.unwrap();
    b.notes().update(&Note::new("n1", "B edit", 1)).await.unwrap();
    sync_in_order(&[&a, &b, &a]).await;
    // Then the later edit brought the note back everywhere, with no conflict anywhere
    assert_eq!(world.server_view("notes").await, vec![("n1".into(), 3, "B edit".into())]);
    assert_all_hold_note(&[&a, &b], "B edit").await;
    // And the other way round: an edit then a delete that arrives last deletes it
    a.notes().update(&Note::new("n1", "A edit", 1)).await.unwrap();
    b.notes().delete("n1").await.unwrap();
    sync_in_order(&[&a, &b, &a]).await;
    assert!(world.server_view("notes").await.is_empty());
    assert_eq!(a.notes().get("n1").await.unwrap(), None);
    assert!(a.conflicts().await.is_empty() && b.conflicts().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_write_wins_three_devices_converge_on_the_last_arrival() {
    let (world, a, b) = given_a_shared_note("first").await;
    let c = world.device("c", Resolver::Defer).await;
    c.sync().await;
    // When all three edit offline and they arrive C, A, B
    for (d, title) in [(&a, "A"), (&b, "B"), (&c, "C")] {
        d.notes().update(&Note::new("n1", title, 1)).await.unwrap();
    }
    sync_in_order(&[&c, &a, &b, &a, &c]).await;
    // Then B's write won, every device holds it, and nothing was reported
    assert_eq!(world.server_view("notes").await, vec![("n1".into(), 4, "B".into())]);
    assert_all_hold_note(&[&a, &b, &c], "B").await;
}

// ---------- read-only ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_refuses_local_edits_with_a_clear_error() {
    let world = World::new().await;
    let a = world.device("a", Resolver::Defer).await;
    let err = a.products().insert(&Product::new("p1", "mine", 1)).await.unwrap_err();
    assert!(matches!(err, Error::ReadOnlyCollection { ref collection } if collection.as_str() == "products"), "{err}");
    let err = a.customers().delete("c1").await.unwrap_err();
    assert!(matches!(err, Error::ReadOnlyCollection { .. }), "{err}");
    assert_eq!(a.engine.status().borrow().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_equals_the_server_after_each_sync() {
    let world = World::new().await;
    let (admin, products) = publish_products(&world, 5, "item").await;
    let a = world.device("a", Resolver::Defer).await;
    a.sync().await;
    assert_eq!(a.products().list().await.unwrap().len(), 5);
    // When the admin deletes one, renames one and adds one, and the tombstone is purged
    products.delete("p0").await.unwrap();
    products.update(&Product::new("p1", "renamed", 1)).await.unwrap();
    products.insert(&Product::new("p9", "new", 9)).await.unwrap();
    admin.sync_now().await.unwrap();
    world.purge_tombstones().await;
    a.sync().await;
    // Then the device holds exactly the server's set
    let got = id_titles(a.products().list().await.unwrap().into_iter().map(|p| (p.id, p.title)));
    assert_eq!(got, server_id_titles(&world, "products").await);
    assert!(!got.iter().any(|(id, _)| id == "p0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_replacement_interrupted_midway_leaves_the_old_data_whole() {
    let world = World::new().await;
    let (admin, products) = publish_products(&world, 6, "v1").await;
    let a = world.device("a", Resolver::Defer).await;
    a.sync().await;
    for i in 0..6 {
        products.update(&Product::new(&format!("p{i}"), "v2", i)).await.unwrap();
    }
    admin.sync_now().await.unwrap();
    // When the network drops after the first page of two records (pull_limit 2) and the device dies
    a.transport.fail_pulls_after(1);
    assert!(a.engine.sync_now().await.is_err());
    let a = a.crash_and_restart(&world).await;
    // Then every record is still the old one: nothing half-replaced
    let titles: Vec<_> = a.products().list().await.unwrap().into_iter().map(|p| p.title).collect();
    assert_eq!(titles, vec!["v1"; 6]);
    // And the next sync brings the new set whole
    a.sync().await;
    let titles: Vec<_> = a.products().list().await.unwrap().into_iter().map(|p| p.title).collect();
    assert_eq!(titles, vec!["v2"; 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_survives_a_crash_after_the_admins_push_was_applied() {
    let world = World::new().await;
    let (admin, faults) = world.admin_with_faults().await;
    admin.collection::<Product>().unwrap().insert(&Product::new("p1", "pump", 1)).await.unwrap();
    // When the admin's push is applied but its answer is lost, and the admin's app dies
    faults.lose_next_push_answer();
    assert!(admin.sync_now().await.is_err());
    drop(admin);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (admin, _) = world.admin_with_faults().await;
    admin.sync_now().await.unwrap();
    // Then the product exists once, at version 1, and a device reads exactly that
    assert_eq!(world.server_view("products").await, vec![("p1".into(), 1, "pump".into())]);
    assert_eq!(admin.status().borrow().pending, 0);
    let a = world.device("a", Resolver::Defer).await;
    a.sync().await;
    assert_eq!(a.products().list().await.unwrap(), vec![Product::new("p1", "pump", 1)]);
}

// ---------- read-only optimized ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_optimized_survives_a_crash_midway_through_a_pull() {
    let world = World::new().await;
    let (admin, customers) = publish_customers(&world, 7, "v1").await;
    let a = world.device("a", Resolver::Defer).await;
    // When the server has sent two pages (two records each) and the third is lost, and
    // the device dies
    a.transport.fail_pulls_after(2);
    assert!(a.engine.sync_now().await.is_err());
    let a = a.crash_and_restart(&world).await;
    // Then what was stored is whole pages, with their cursor
    assert_eq!(a.customers().list().await.unwrap().len(), 4);
    // And while it was away the server moved on; the next sync resumes from the cursor
    customers.delete("c0").await.unwrap();
    customers.update(&Customer::new("c6", "v2", 6)).await.unwrap();
    admin.sync_now().await.unwrap();
    let report = a.engine.sync_now().await.unwrap();
    assert!(report.pulled <= 5, "resumed from the stored cursor, not from scratch: {report:?}");
    let got = id_titles(a.customers().list().await.unwrap().into_iter().map(|c| (c.id, c.title)));
    assert_eq!(got, server_id_titles(&world, "customers").await);
    assert_eq!(got.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_optimized_keeps_the_servers_cursor_and_never_the_device_clock() {
    let world = World::new().await;
    let (admin, customers) = publish_customers(&world, 3, "v1").await;
    let a = world.device("a", Resolver::Defer).await;
    a.sync().await;
    // Then the stored cursor is, byte for byte, the one the server handed out for the end
    // of the feed
    let probe = world::http_as(&world.server.url(), "alice");
    let name = sync_core::CollectionName::new("customers").unwrap();
    let page = sync_core::Transport::pull(
        &probe,
        &sync_core::protocol::PullRequest {
            client_id: sync_core::ClientId("probe".into()),
            collections: [(name.clone(), None)].into(),
            limit: Some(1000),
            subscriptions: Default::default(),
        },
    )
    .await
    .unwrap();
    let store = SqliteStore::open(world.path("a")).await.unwrap();
    let stored = store.cursor(&name).await.unwrap().expect("a cursor was stored");
    assert_eq!(Some(&stored), page.cursors.get(&name));
    // And a record the server changes later arrives, whatever the device's clock says
    customers.update(&Customer::new("c1", "v2", 1)).await.unwrap();
    admin.sync_now().await.unwrap();
    let report = a.engine.sync_now().await.unwrap();
    assert_eq!(report.pulled, 1);
    assert_eq!(a.customers().get("c1").await.unwrap().unwrap().title, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_optimized_applies_a_delete_incrementally() {
    let world = World::new().await;
    let admin = world.admin().await;
    let customers = admin.collection::<Customer>().unwrap();
    customers.insert(&Customer::new("c1", "Acme", 1)).await.unwrap();
    customers.insert(&Customer::new("c2", "Globex", 1)).await.unwrap();
    admin.sync_now().await.unwrap();
    let a = world.device("a", Resolver::Defer).await;
    a.sync().await;
    assert_eq!(a.customers().list().await.unwrap().len(), 2);
    let mut events = a.engine.events();
    // When the admin deletes c1
    customers.delete("c1").await.unwrap();
    admin.sync_now().await.unwrap();
    let report = a.engine.sync_now().await.unwrap();
    // Then only the tombstone travels and c1 is gone
    assert_eq!(report.pulled, 1);
    assert_eq!(a.customers().get("c1").await.unwrap(), None);
    assert!(a.customers().get("c2").await.unwrap().is_some());
    let mut removed = false;
    while let Ok(e) = events.try_recv() {
        if let sync_core::SyncEvent::RecordChanged { id, .. } = e {
            removed |= id.as_str() == "c1";
        }
    }
    assert!(removed, "the app heard about the removal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_optimized_hard_reset_redownloads_and_leaves_nothing_stale() {
    let world = World::new().await;
    let (admin, customers) = publish_customers(&world, 5, "v1").await;
    let a = world.device("a", Resolver::Defer).await;
    a.sync().await;
    // When, while A is away, records are deleted and their tombstones purged
    customers.delete("c0").await.unwrap();
    customers.delete("c1").await.unwrap();
    customers.update(&Customer::new("c2", "v2", 2)).await.unwrap();
    admin.sync_now().await.unwrap();
    world.purge_tombstones().await;
    a.sync().await;
    // Then the server answered reset, A downloaded the full set and holds exactly it
    let got = id_titles(a.customers().list().await.unwrap().into_iter().map(|c| (c.id, c.title)));
    assert_eq!(got, vec![("c2".into(), "v2".into()), ("c3".into(), "v1".into()), ("c4".into(), "v1".into())]);
}

// ---------- one-to-many ----------

/// Given job "j-old" and its task "t1", synced: the server renamed the job.
async fn synced_job_with_task(a: &Device) -> String {
    a.jobs().insert(&Job::new("j-old", "old job", 1)).await.unwrap();
    a.tasks().insert(&Task::new("t1", "j-old", "replace seal")).await.unwrap();
    a.sync().await;
    let server_id = a.engine.server_id("jobs", "j-old").await.unwrap().expect("the server assigned an id").to_string();
    assert_ne!(server_id, "j-old");
    server_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_many_parent_created_offline_and_an_existing_child_repointed_to_it() {
    let world = World::new().await;
    let a = world.device("a", Resolver::Defer).await;
    let old_job = synced_job_with_task(&a).await;
    assert_eq!(world.server_data("tasks").await["t1"].1["job_id"], old_job.as_str());
    let mut events = a.engine.events();
    // When, offline, A creates a job, moves the existing task to it and adds a new task
    a.jobs().insert(&Job::new("j-new", "new job", 2)).await.unwrap();
    a.tasks().update(&Task::new("t1", "j-new", "replace seal")).await.unwrap();
    a.tasks().insert(&Task::new("t2", "j-new", "test run")).await.unwrap();
    let pushes_before = a.transport.pushed().len();
    // and syncs once
    a.engine.sync_now().await.unwrap();
    // Then the server gave the job its own id, and both tasks point at it there
    let new_job = a.engine.server_id("jobs", "j-new").await.unwrap().expect("renamed").to_string();
    assert_ne!(new_job, "j-new");
    let jobs = world.server_data("jobs").await;
    assert_eq!(jobs[&new_job].1["title"], "new job");
    assert!(!jobs.contains_key("j-new"));
    let tasks = world.server_data("tasks").await;
    assert_eq!(tasks["t1"].1["job_id"], new_job.as_str(), "the updated child was re-pointed");
    assert_eq!(tasks["t2"].1["job_id"], new_job.as_str(), "the created child was re-pointed");
    // And on the wire the parent went first, and no child ever carried the local id
    let pushes = &a.transport.pushed()[pushes_before..];
    let batch_of = |collection: &str| pushes.iter().position(|b| b.iter().any(|m| m.collection == collection)).unwrap();
    assert!(batch_of("jobs") < batch_of("tasks"), "{pushes:?}");
    for m in pushes.iter().flatten().filter(|m| m.collection == "tasks") {
        assert_eq!(m.data.as_ref().unwrap()["job_id"], new_job.as_str());
    }
    // And locally everything uses the server's id; the app's old id still finds the job
    let job = a.jobs().get("j-new").await.unwrap().unwrap();
    assert_eq!(job.id, new_job);
    assert_eq!(a.tasks().get("t1").await.unwrap().unwrap().job_id, new_job);
    assert_eq!(a.tasks().get("t2").await.unwrap().unwrap().job_id, new_job);
    assert_eq!(a.engine.status().borrow().pending, 0);
    let mut assigned = false;
    while let Ok(e) = events.try_recv() {
        if let SyncEvent::RecordIdAssigned { local_id, server_id, .. } = e {
            assigned |= local_id.as_str() == "j-new" && server_id.as_str() == new_job;
        }
    }
    assert!(assigned, "the app heard about the new id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_many_the_app_keeps_using_the_id_it_created_the_parent_with() {
    let world = World::new().await;
    let a = world.device("a", Resolver::Defer).await;
    let job = synced_job_with_task(&a).await;
    // When the app, still holding the job it created, edits it by that id
    a.jobs().update(&Job::new("j-old", "renamed job", 5)).await.unwrap();
    a.sync().await;
    // Then the edit went to the record under the server's id
    let jobs = world.server_data("jobs").await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[&job].1["title"], "renamed job");
    assert_eq!(a.jobs().get(&job).await.unwrap().unwrap(), Job::new(&job, "renamed job", 5));
    // And a second device sees the job under the server's id, with its id field matching
    let b = world.device("b", Resolver::Defer).await;
    b.sync().await;
    assert_eq!(b.jobs().get(&job).await.unwrap().unwrap().id, job);
    assert_eq!(b.tasks().get("t1").await.unwrap().unwrap().job_id, job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_many_deletes_go_children_first() {
    let world = World::new().await;
    let a = world.device("a", Resolver::Defer).await;
    let job = synced_job_with_task(&a).await;
    a.tasks().insert(&Task::new("t2", &job, "second")).await.unwrap();
    a.sync().await;
    // When the app deletes the job first and its tasks after it
    a.jobs().delete(&job).await.unwrap();
    a.tasks().delete("t1").await.unwrap();
    a.tasks().delete("t2").await.unwrap();
    let pushes_before = a.transport.pushed().len();
    a.engine.sync_now().await.unwrap();
    // Then the tasks' deletes went in an earlier push than the job's, all in one cycle
    let pushes = &a.transport.pushed()[pushes_before..];
    let batch = |collection: &str, id: &str| {
        pushes
            .iter()
            .position(|b| b.iter().any(|m| m.collection == collection && m.record_id == id && m.op == Op::Delete))
            .unwrap()
    };
    assert!(batch("tasks", "t1") < batch("jobs", &job), "{pushes:?}");
    assert!(batch("tasks", "t2") < batch("jobs", &job), "{pushes:?}");
    assert!(world.server_data("jobs").await.is_empty());
    assert!(world.server_data("tasks").await.is_empty());
    assert_eq!(a.engine.status().borrow().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_many_survives_a_crash_after_the_server_applied_the_parents_create() {
    let world = World::new().await;
    let a = world.device("a", Resolver::Defer).await;
    a.jobs().insert(&Job::new("j1", "job", 1)).await.unwrap();
    a.tasks().insert(&Task::new("t1", "j1", "task")).await.unwrap();
    // When the job's create is applied but the answer is lost, and the device dies
    a.transport.lose_next_push_answer();
    assert!(a.engine.sync_now().await.is_err());
    let a = a.crash_and_restart(&world).await;
    a.sync().await;
    // Then the server holds one job (the retry got the same id back, not a second job)
    let jobs = world.server_data("jobs").await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = jobs.keys().next().unwrap().clone();
    assert_eq!(a.engine.server_id("jobs", "j1").await.unwrap().unwrap().as_str(), job);
    // And the task points at it on the server and here, and nothing waits
    assert_eq!(world.server_data("tasks").await["t1"].1["job_id"], job.as_str());
    assert_eq!(a.tasks().get("t1").await.unwrap().unwrap().job_id, job);
    assert_eq!(a.engine.status().borrow().pending, 0);
    assert!(a.conflicts().await.is_empty());
}

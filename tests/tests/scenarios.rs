//! Given/When/Then scenarios for the ready-made patterns: real engines on SQLite files
//! against the real reference server over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "scenarios/world.rs"]
mod world;

use sync_core::{Error, Resolution};
use sync_patterns::ConflictDetection;
use sync_patterns::resolvers::{KeepLocal, KeepServer, Side, ThreeWayMerge};
use world::{Customer, Device, Note, Order, Product, Resolver, World};

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

/// Given that shared order, A's edit reached the server first and B's edit met it:
/// B holds one conflict.
async fn conflict_on_b(a: &Device, b: &Device, a_title: &str, b_title: &str) {
    shared_order(a, b).await;
    a.orders().update(&Order::new("o1", a_title, 1)).await.unwrap();
    a.sync().await;
    b.orders().update(&Order::new("o1", b_title, 1)).await.unwrap();
    b.sync().await;
    assert_eq!(b.conflicts().await.len(), 1);
}

// ---------- conflict detection ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_edit_the_same_record_offline_and_the_second_sees_a_conflict() {
    let world = World::new().await;
    let (a, b) = two_devices(&world, Resolver::Defer).await;
    shared_order(&a, &b).await;
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
    let world = World::new().await;
    let (a, b) = two_devices(&world, Resolver::Defer).await;
    shared_order(&a, &b).await;
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
    let world = World::new().await;
    let (a, b) = two_devices(&world, Resolver::Defer).await;
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
    let world = World::new().await;
    let (a, b) = two_devices(&world, Resolver::Defer).await;
    shared_order(&a, &b).await;
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
    let world = World::new().await;
    let (a, b) = two_devices(&world, Resolver::Pattern(ConflictDetection::new().resolver(ThreeWayMerge::new()))).await;
    shared_order(&a, &b).await;
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
    let world = World::new().await;
    let (a, b) = two_devices(&world, Resolver::Defer).await;
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
    let world = World::new().await;
    let (a, b) = two_devices(&world, Resolver::Pattern(ConflictDetection::new().resolver(ThreeWayMerge::new()))).await;
    shared_order(&a, &b).await;
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
    let world = World::new().await;
    let (a, b) = two_devices(&world, Resolver::Defer).await;
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

// ---------- last write wins ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_write_wins_follows_arrival_order_and_never_reports_conflicts() {
    let world = World::new().await;
    let (a, b) = two_devices(&world, Resolver::Defer).await;
    a.notes().insert(&Note::new("n1", "from A", 1)).await.unwrap();
    a.sync().await;
    b.sync().await;
    // When both edit offline; B's edit reaches the server last
    a.notes().update(&Note::new("n1", "A edit", 1)).await.unwrap();
    b.notes().update(&Note::new("n1", "B edit", 1)).await.unwrap();
    a.sync().await;
    b.sync().await;
    a.sync().await;
    // Then B's edit wins everywhere and nobody has a conflict
    assert_eq!(world.server_view("notes").await, vec![("n1".into(), 3, "B edit".into())]);
    for d in [&a, &b] {
        assert_eq!(d.notes().get("n1").await.unwrap().unwrap().title, "B edit");
        assert!(d.conflicts().await.is_empty());
    }
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
    let admin = world.admin().await;
    let products = admin.collection::<Product>().unwrap();
    for i in 0..5 {
        products.insert(&Product::new(&format!("p{i}"), "item", i)).await.unwrap();
    }
    admin.sync_now().await.unwrap();
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
    let mut got: Vec<_> = a.products().list().await.unwrap().into_iter().map(|p| (p.id, p.title)).collect();
    got.sort();
    let mut want: Vec<_> = world.server_view("products").await.into_iter().map(|(id, _, t)| (id, t)).collect();
    want.sort();
    assert_eq!(got, want);
    assert!(!got.iter().any(|(id, _)| id == "p0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_replacement_interrupted_midway_leaves_the_old_data_whole() {
    let world = World::new().await;
    let admin = world.admin().await;
    let products = admin.collection::<Product>().unwrap();
    for i in 0..6 {
        products.insert(&Product::new(&format!("p{i}"), "v1", i)).await.unwrap();
    }
    admin.sync_now().await.unwrap();
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

// ---------- read-only optimized ----------

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
    let admin = world.admin().await;
    let customers = admin.collection::<Customer>().unwrap();
    for i in 0..5 {
        customers.insert(&Customer::new(&format!("c{i}"), "v1", i)).await.unwrap();
    }
    admin.sync_now().await.unwrap();
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
    let mut got: Vec<_> = a.customers().list().await.unwrap().into_iter().map(|c| (c.id, c.title)).collect();
    got.sort();
    assert_eq!(got, vec![("c2".into(), "v2".into()), ("c3".into(), "v1".into()), ("c4".into(), "v1".into())]);
}

//! Example-based histories with the kit's `Scenario` builder: each reads as the story it
//! tests, and runs through the same settling and invariant checks as generated ones.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim_apps;

use serde_json::json;
use sim_apps::{ConflictApp, UserResolver};
use sync_core::{EngineBuilder, Resolution};
use sync_testkit::Fault;
use sync_testkit::sim::{A, B, C, Scenario, SimApp, Tracked, Violation};

fn three_way() -> ConflictApp {
    ConflictApp { resolver: UserResolver::ThreeWay }
}

fn note(title: &str, body: &str) -> serde_json::Value {
    json!({"title": title, "body": body, "n": 0})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_on_both_sides_show_a_conflict_with_both() {
    let outcome = Scenario::new(three_way(), 2)
        .write(A, "notes", "n1", note("pump", ""))
        .sync(A)
        .sync(B)
        .offline(A)
        .write(A, "notes", "n1", note("pump (A)", ""))
        .write(B, "notes", "n1", note("pump (B)", ""))
        .sync(B)
        .online(A)
        .resolve(A)
        .run()
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome}");
    // The title changed on both sides: the three-way merge leaves it to the user
    let seen = &outcome.conflicts[0];
    assert_eq!((seen.client, seen.step), (A, Some(9)));
    assert_eq!(seen.resolution, Resolution::Defer);
    assert_eq!(seen.conflict.local.as_ref().unwrap()["title"], "pump (A)");
    assert_eq!(seen.conflict.server.as_ref().unwrap().data.as_ref().unwrap()["title"], "pump (B)");
    assert_eq!(seen.conflict.base.as_ref().unwrap()["title"], "pump");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_of_different_fields_merge_without_asking() {
    let outcome = Scenario::new(three_way(), 2)
        .write(A, "notes", "n1", note("pump", "old"))
        .sync(A)
        .sync(B)
        .write(A, "notes", "n1", note("valve", "old"))
        .write(B, "notes", "n1", note("pump", "new"))
        .sync(B)
        .sync(A)
        .resolve(A)
        .sync(A)
        .sync(B)
        .run()
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome}");
    let merged = &outcome.conflicts[0].resolution;
    assert_eq!(*merged, Resolution::Merged(json!({"id": "n1", "title": "valve", "body": "new", "n": 0})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_a_push_the_server_applied_sends_it_once() {
    let outcome = Scenario::new(three_way(), 2)
        .write(A, "notes", "n1", note("pump", ""))
        .action(A, "notes", "n1", "touch")
        .crash_after_request(A, 1)
        .fault(A, Fault::DropResponse)
        .sync(A)
        .sync(A)
        .run()
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome}");
    assert_eq!(outcome.crashes, 1);
    assert_eq!(outcome.faults.get("crash_after_apply"), Some(&1));
    assert_eq!(outcome.applied, 2, "the write and the action, once each");
}

/// Client B signs in with a token the server does not know: its pushes meet 401
/// forever, and its queue can never drain.
struct RevokedB;

impl SimApp for RevokedB {
    fn server_config(&self) -> String {
        three_way().server_config()
    }
    fn token(&self, client: usize) -> String {
        if client == B { "revoked".into() } else { "alice".into() }
    }
    fn register(&self, client: usize, builder: EngineBuilder) -> EngineBuilder {
        three_way().register(client, builder)
    }
    fn tracked(&self) -> Vec<Tracked> {
        three_way().tracked()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_cannot_drain_is_a_liveness_failure_not_a_timeout() {
    let started = std::time::Instant::now();
    let outcome = Scenario::new(RevokedB, 2).write(B, "notes", "n1", note("pump", "")).run().await.unwrap();
    assert!(!outcome.is_ok());
    assert_eq!(outcome.rounds, 0, "it never settled");
    let stuck: Vec<_> = outcome.liveness.iter().map(ToString::to_string).collect();
    assert!(
        matches!(&outcome.liveness[..], [Violation::Stuck { client: B, .. }]) && stuck[0].contains("1 pending"),
        "{stuck:?}"
    );
    // And nothing was silently dropped: the write is still queued, not lost
    assert!(outcome.violations.is_empty(), "{outcome}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_drops_a_field_fails_its_scenario() {
    let app = ConflictApp { resolver: UserResolver::Custom(sim_apps::title_dropping_resolver()) };
    let outcome = Scenario::new(app, 2)
        .write(B, "notes", "n1", note("pump", ""))
        .write(A, "notes", "n1", note("pump", ""))
        .run()
        .await
        .unwrap();
    let found: Vec<_> = outcome.violations.iter().map(Violation::invariant).collect();
    assert!(found.contains(&1), "{outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_behind_purged_tombstones_resyncs_and_keeps_its_open_conflict() {
    let outcome = Scenario::new(three_way(), 2)
        .write(A, "notes", "n1", note("pump", ""))
        .write(A, "notes", "n2", note("valve", ""))
        .sync(A)
        .sync(B)
        .delete(A, "notes", "n1")
        .write(A, "notes", "n2", note("valve (A)", ""))
        .sync(A)
        .purge_tombstones()
        .write(B, "notes", "n2", note("valve", "B's note"))
        // B's push meets A's edit (a conflict); its pull is reset: the tombstone of n1
        // is gone, so only the resync can tell B that n1 was deleted
        .sync(B)
        .resolve(B)
        .sync(B)
        .run()
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome}");
    assert_eq!(outcome.resets, 1, "B's pull met the purge");
    let seen = &outcome.conflicts[0];
    assert_eq!(seen.conflict.local.as_ref().unwrap()["body"], "B's note", "the resync kept B's side");
    assert_eq!(
        seen.resolution,
        Resolution::Merged(json!({"id": "n2", "title": "valve (A)", "body": "B's note", "n": 0}))
    );
}

/// Found by the generated histories (seed 16037729801865259186, shrunk by hand): a record
/// created again after its tombstone was purged came back at version 1, which A, still
/// remembering the record at version 1, skipped as stale: A never converged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_created_again_after_a_purge_reaches_a_device_that_knew_the_old_one() {
    let outcome = Scenario::new(three_way(), 3)
        .write(A, "notes", "n1", note("pump", ""))
        .sync(A)
        .sync(B)
        .offline(C)
        .write(C, "notes", "n1", note("", "C's create"))
        .delete(B, "notes", "n1")
        .sync(B)
        .purge_tombstones()
        .offline(A)
        .write(A, "notes", "n1", note("pump (A)", ""))
        .run()
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome}");
}

/// Found by the generated histories (seed 1056080440176514035): A's create was applied
/// but A crashed before hearing it; B deleted the record and the server purged the
/// tombstone before A ever pulled. A's retry was answered from the ledger (applied), so
/// A held an acknowledged record that its first download, from no cursor, never
/// mentioned: only a staged replacement sweeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_download_sweeps_an_acknowledged_record_whose_tombstone_was_purged() {
    let outcome = Scenario::new(three_way(), 2)
        .write(A, "notes", "n1", note("pump", ""))
        .crash_after_request(A, 1)
        .sync(B)
        .delete(B, "notes", "n1")
        .sync(B)
        .purge_tombstones()
        .run()
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome}");
    assert_eq!(outcome.crashes, 1);
}

/// Found by the generated histories (seed 183369287314774586): B's create met A's record
/// (a conflict) but B lost the answer; A then deleted the record and the server purged
/// the tombstone. B's retry was answered from the ledger with the record as it had
/// been, B's user kept the server's side, and B held a record nobody else had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_answered_again_shows_the_server_as_it_is_now() {
    let outcome = Scenario::new(three_way(), 2)
        .write(A, "notes", "n1", note("A's", ""))
        .write(B, "notes", "n1", note("B's", ""))
        .sync(A)
        .fault(B, Fault::DropResponse)
        .sync(B)
        .delete(A, "notes", "n1")
        .sync(A)
        .purge_tombstones()
        .run()
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome}");
    let seen = &outcome.conflicts[0];
    assert_eq!(seen.conflict.server, None, "the retry's answer: the record is gone");
}

/// Found by the generated histories (seed 14004044144919353130): B's create met A's
/// record and the conflict stayed open; A deleted the record and the server purged the
/// tombstone. B's resync (reset) no longer saw the record, but the open conflict still
/// showed it live, and B's user kept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_marks_an_open_conflict_whose_record_is_gone() {
    let outcome = Scenario::new(three_way(), 2)
        .write(A, "notes", "n1", note("A's", ""))
        .sync(A)
        .write(B, "notes", "n1", note("B's", ""))
        .sync(B)
        .delete(A, "notes", "n1")
        .sync(A)
        .purge_tombstones()
        .sync(B)
        .resolve(B)
        .run()
        .await
        .unwrap();
    assert!(outcome.is_ok(), "{outcome}");
    assert_eq!(outcome.resets, 1);
    let at_resolve = outcome.conflicts.iter().find(|c| c.step == Some(9)).expect("B met its conflict at step 9");
    assert_eq!(at_resolve.conflict.server, None, "the resync says the record is gone");
}

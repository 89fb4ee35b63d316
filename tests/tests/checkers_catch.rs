//! Proof that the kit's checkers fail: a client whose transport breaks a promise (fresh
//! mutation ids on a retry; a conflict answer taken as applied) is caught by the
//! invariant it breaks, in a written scenario and in generated histories.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim_apps;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::json;
use sim_apps::{ConflictApp, UserResolver};
use sync_core::protocol::{MutationOutcome, PullRequest, PullResponse, PushRequest, PushResponse};
use sync_core::{ConflictResolver, Credentials, EngineBuilder, Error, MutationId, Transport};
use sync_server::store::ActionHandler;
use sync_testkit::Fault;
use sync_testkit::sim::{A, B, HistoryOptions, Outcome, RunOptions, Scenario, SimApp, Tracked, check_app};

/// How the broken client's transport misbehaves.
#[derive(Clone, Copy)]
enum Bug {
    /// A mutation sent before goes out under a fresh id (the server cannot recognize
    /// the retry); the answers are mapped back so the engine notices nothing.
    FreshIdOnRetry,
    /// A conflict answer is reported as applied at the server's version.
    ConflictAsApplied,
}

struct Broken {
    inner: Arc<dyn Transport>,
    bug: Bug,
    sent: Mutex<HashSet<MutationId>>,
}

#[async_trait]
impl Transport for Broken {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, Error> {
        let mut request = request.clone();
        let mut original = Vec::new();
        if let Bug::FreshIdOnRetry = self.bug {
            let mut sent = self.sent.lock().unwrap();
            for mutation in &mut request.mutations {
                original.push(mutation.mutation_id);
                if !sent.insert(mutation.mutation_id) {
                    mutation.mutation_id = MutationId::generate();
                }
            }
        }
        let mut response = self.inner.push(&request).await?;
        for (i, result) in response.results.iter_mut().enumerate() {
            if let Some(id) = original.get(i) {
                result.mutation_id = *id;
            }
            if let (Bug::ConflictAsApplied, MutationOutcome::Conflict { server: Some(server) }) =
                (self.bug, &result.outcome)
            {
                result.outcome = MutationOutcome::Applied { version: server.version, record_id: None };
            }
        }
        Ok(response)
    }
    async fn pull(&self, request: &PullRequest) -> Result<PullResponse, Error> {
        self.inner.pull(request).await
    }
    async fn probe(&self) -> Result<(), Error> {
        self.inner.probe().await
    }
    fn set_credentials(&self, credentials: Option<Credentials>) {
        self.inner.set_credentials(credentials);
    }
}

/// The conflict-detection app, with every client on a broken transport.
struct BrokenClients(Bug);

impl SimApp for BrokenClients {
    fn server_config(&self) -> String {
        app().server_config()
    }
    fn actions(&self) -> Vec<(String, Arc<dyn ActionHandler>)> {
        app().actions()
    }
    fn token(&self, client: usize) -> String {
        app().token(client)
    }
    fn transport(&self, _: usize, kit: Arc<dyn Transport>) -> Arc<dyn Transport> {
        Arc::new(Broken { inner: kit, bug: self.0, sent: Mutex::new(HashSet::new()) })
    }
    fn register(&self, client: usize, builder: EngineBuilder) -> EngineBuilder {
        app().register(client, builder)
    }
    fn tracked(&self) -> Vec<Tracked> {
        app().tracked()
    }
    fn resolver(&self) -> Arc<dyn ConflictResolver> {
        app().resolver()
    }
}

fn app() -> ConflictApp {
    ConflictApp { resolver: UserResolver::ThreeWay }
}

fn invariants(outcome: &Outcome) -> Vec<u8> {
    outcome.violations.iter().map(|v| v.invariant()).collect()
}

fn touch(scenario: Scenario) -> Scenario {
    scenario.action(A, "notes", "n1", "touch")
}

/// A does `what`, its push's answer is lost, and it syncs again (a retry).
async fn answer_lost_then_retried(scenario: Scenario, what: impl FnOnce(Scenario) -> Scenario) -> Outcome {
    what(scenario).fault(A, Fault::DropResponse).sync(A).sync(A).run().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_under_a_fresh_id_breaks_exactly_once() {
    // An action: versions cannot stop a second application, only the ledger can
    let outcome = answer_lost_then_retried(Scenario::new(BrokenClients(Bug::FreshIdOnRetry), 2), touch).await;
    assert_eq!(invariants(&outcome), [2], "{outcome}");
    assert_eq!(outcome.applied, 2, "the server applied the action twice");
    // The same story with an honest retry passes
    let outcome = answer_lost_then_retried(Scenario::new(app(), 2), touch).await;
    assert!(outcome.is_ok(), "{outcome}");
    assert_eq!(outcome.applied, 1);
    // A versioned write retried under a fresh id meets its own first application as a
    // conflict (base 0, the record exists): conflict detection turns the bug into a
    // spurious conflict instead of a double write, which rule 6 catches (no other client
    // wrote the record)
    let outcome = answer_lost_then_retried(Scenario::new(BrokenClients(Bug::FreshIdOnRetry), 2), |s| {
        s.write(A, "notes", "n1", json!({"title": "pump"}))
    })
    .await;
    assert_eq!(outcome.conflicts.len(), 1, "{outcome}");
    assert_eq!(invariants(&outcome), [6], "{outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_taken_as_applied_loses_a_write_and_diverges() {
    let outcome = Scenario::new(BrokenClients(Bug::ConflictAsApplied), 2)
        .write(B, "notes", "n1", json!({"title": "B's"}))
        .sync(B)
        .write(A, "notes", "n1", json!({"title": "A's"}))
        .sync(A)
        .run()
        .await
        .unwrap();
    let found = invariants(&outcome);
    assert!(found.contains(&1) && found.contains(&5), "{outcome}");
}

#[test]
fn generated_histories_find_the_broken_retry_and_shrink_it() {
    let options = RunOptions {
        cases: 256,
        seed: Some(7),
        history: HistoryOptions { steps: 1..25, ..HistoryOptions::default() },
        ..RunOptions::default()
    };
    let failure = check_app(BrokenClients(Bug::FreshIdOnRetry), &options).expect_err("the bug must be found");
    // Either as a double application (actions, last write wins) or as the spurious
    // conflict a versioned write meets with its own first application (rule 6); the
    // shortest story decides which.
    assert!(
        failure.reason.contains("invariant 2 (exactly once)") || failure.reason.contains("rule 6 (conflicts"),
        "{failure}"
    );
    assert!(failure.history.steps.len() <= 6, "not shrunk to a handful of steps: {failure}");
}

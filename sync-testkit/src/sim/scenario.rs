//! `Scenario`: example-based histories written as a story ("A goes offline and edits;
//! B edits; A comes online; expect a conflict showing both").

use std::sync::Arc;

use serde_json::Value;

use super::app::SimApp;
use super::history::{History, Step};
use super::world::{Outcome, SimError, run_history};
use crate::Fault;

/// Client A (the first).
pub const A: usize = 0;
/// Client B.
pub const B: usize = 1;
/// Client C.
pub const C: usize = 2;

/// A history written step by step, run like a generated one: the same server, engines,
/// quiescence and invariant checks.
///
/// ```
/// # async fn run(app: impl sync_testkit::sim::SimApp) -> Result<(), sync_testkit::sim::SimError> {
/// use serde_json::json;
/// use sync_testkit::sim::{A, B, Scenario};
///
/// let outcome = Scenario::new(app, 2)
///     .write(A, "notes", "n1", json!({"text": "draft"}))
///     .sync(A)
///     .sync(B)
///     .offline(A)
///     .write(A, "notes", "n1", json!({"text": "A's edit"}))
///     .write(B, "notes", "n1", json!({"text": "B's edit"}))
///     .sync(B)
///     .online(A) // A pushes, meets B's edit
///     .resolve(A)
///     .run()
///     .await?;
/// assert!(outcome.is_ok(), "{outcome}");
/// let conflict = &outcome.conflicts[0].conflict;
/// let server = conflict.server.as_ref().and_then(|s| s.data.as_ref());
/// assert_eq!(conflict.local.as_ref().map(|l| &l["text"]), Some(&json!("A's edit")));
/// assert_eq!(server.map(|s| &s["text"]), Some(&json!("B's edit")));
/// # Ok(())
/// # }
/// ```
pub struct Scenario {
    app: Arc<dyn SimApp>,
    history: History,
}

impl Scenario {
    /// A scenario of `app` with `clients` clients (A, B, C, ...).
    pub fn new(app: impl SimApp, clients: usize) -> Self {
        Self { app: Arc::new(app), history: History { clients, steps: Vec::new() } }
    }

    /// Adds any step.
    pub fn step(mut self, step: Step) -> Self {
        self.history.steps.push(step);
        self
    }

    /// `client` writes `data` as record `record` of `collection`.
    pub fn write(self, client: usize, collection: &str, record: &str, data: Value) -> Self {
        self.step(Step::Write { client, collection: collection.to_owned(), record: record.to_owned(), data })
    }

    /// `client` deletes record `record` of `collection`.
    pub fn delete(self, client: usize, collection: &str, record: &str) -> Self {
        self.step(Step::Delete { client, collection: collection.to_owned(), record: record.to_owned() })
    }

    /// `client` sends custom action `name` on record `record` of `collection`.
    pub fn action(self, client: usize, collection: &str, record: &str, name: &str) -> Self {
        self.step(Step::Action {
            client,
            collection: collection.to_owned(),
            record: record.to_owned(),
            name: name.to_owned(),
        })
    }

    /// `client` goes offline.
    pub fn offline(self, client: usize) -> Self {
        self.step(Step::Offline { client })
    }

    /// `client` comes online and syncs.
    pub fn online(self, client: usize) -> Self {
        self.step(Step::Online { client })
    }

    /// `client` syncs.
    pub fn sync(self, client: usize) -> Self {
        self.step(Step::Sync { client })
    }

    /// `client`'s next request meets `fault`.
    pub fn fault(self, client: usize, fault: Fault) -> Self {
        self.step(Step::Fault { client, fault })
    }

    /// `client` crashes while idle and restarts.
    pub fn crash(self, client: usize) -> Self {
        self.step(Step::Crash { client, after_request: 0 })
    }

    /// `client` syncs and crashes once the server handled the cycle's `request`-th
    /// request (1: the first push), then restarts.
    pub fn crash_after_request(self, client: usize, request: u32) -> Self {
        self.step(Step::Crash { client, after_request: request })
    }

    /// `client` settles its conflicts with the app's resolver.
    pub fn resolve(self, client: usize) -> Self {
        self.step(Step::Resolve { client })
    }

    /// The server purges its tombstones: clients with older cursors resync.
    pub fn purge_tombstones(self) -> Self {
        self.step(Step::PurgeTombstones)
    }

    /// The history so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Runs it from a fresh server and clients, settles, and checks every invariant.
    ///
    /// # Errors
    /// [`SimError`] when the app's configuration is refused.
    pub async fn run(self) -> Result<Outcome, SimError> {
        run_history(self.app, &self.history).await
    }
}

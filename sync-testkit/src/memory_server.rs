//! `MemoryServer`: the server contract in memory, as a `Transport`, with fault injection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde_json::Value;
use sync_core::protocol::{
    Change, ErrorCode, ErrorDetail, MutationBody, MutationOutcome, MutationResult, Op, PullRequest, PullResponse,
    PushRequest, PushResponse, WireMutation,
};
use sync_core::{CollectionName, Cursor, Error, MutationId, RecordId, Transport, Version};
use sync_server::config::{Access, CollectionConfig};
use sync_server::logic::StoredRecord;
use sync_server::store::{PushContext, VersionFloors, plan_push};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// A record as the server holds it.
#[derive(Debug, Clone)]
struct Rec {
    version: u64,
    deleted: bool,
    data: Option<Value>,
    /// Its position in the change feed.
    seq: u64,
    /// The mutation that wrote it (None: written by the test directly).
    mutation: Option<MutationId>,
}

/// One mutation the server applied, in application order.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedMutation {
    /// The mutation's id.
    pub mutation_id: MutationId,
    /// The collection.
    pub collection: CollectionName,
    /// The record.
    pub record_id: Option<RecordId>,
    /// What it did.
    pub op: Op,
    /// Its data (or args for actions).
    pub data: Option<Value>,
    /// The record's version after it.
    pub version: u64,
}

/// A hook that makes the next push hang after the server applied it, as if the
/// connection died before the answer reached the client.
#[derive(Debug, Default)]
pub struct PushHold {
    /// Notified once the held push has been applied.
    pub applied: Notify,
}

#[derive(Default)]
struct State {
    records: HashMap<(CollectionName, RecordId), Rec>,
    feed: BTreeMap<u64, (CollectionName, RecordId)>,
    seq: u64,
    /// First answers by mutation id, as the reference server's ledger.
    ledger: HashMap<uuid::Uuid, MutationOutcome>,
    applied: Vec<AppliedMutation>,
    received: Vec<MutationId>,
    reachable: bool,
    fail_pushes: Vec<Error>,
    fail_pulls: Vec<Error>,
    pull_overrides: Vec<PullResponse>,
    hold: Option<Arc<PushHold>>,
    reject_records: HashSet<String>,
    token: Option<String>,
    required_token: Option<String>,
    gate: Option<Arc<Semaphore>>,
    probe_times: Vec<Instant>,
    push_calls: usize,
    pull_calls: usize,
    probe_calls: usize,
}

/// The server contract in memory. Thread-safe; share it as `Arc<MemoryServer>`, which is
/// also an `Arc<dyn Transport>` for any number of client engines.
pub struct MemoryServer {
    state: Mutex<State>,
}

impl Default for MemoryServer {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryServer {
    /// An empty, reachable server.
    pub fn new() -> Self {
        Self { state: Mutex::new(State { reachable: true, ..State::default() }) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock can only come from a test's own assertion.
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Makes every request fail with [`Error::Unreachable`] (false) or work again (true).
    pub fn set_reachable(&self, reachable: bool) {
        self.state().reachable = reachable;
    }

    /// The next push fails with `error` before the server looks at it.
    pub fn fail_next_push(&self, error: Error) {
        self.state().fail_pushes.push(error);
    }

    /// The next pull fails with `error`.
    pub fn fail_next_pull(&self, error: Error) {
        self.state().fail_pulls.push(error);
    }

    /// The next pull answers `response` as it is (to test malformed pages).
    pub fn override_next_pull(&self, response: PullResponse) {
        self.state().pull_overrides.push(response);
    }

    /// The next push is applied, then hangs forever; `hold.applied` is notified.
    pub fn hold_next_push(&self) -> Arc<PushHold> {
        let hold = Arc::new(PushHold::default());
        self.state().hold = Some(hold.clone());
        hold
    }

    /// From now on each push waits for one permit of the returned semaphore (it starts
    /// with none) before the server looks at it; `add_permits` lets pushes through.
    pub fn gate_pushes(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        self.state().gate = Some(gate.clone());
        gate
    }

    /// When each probe arrived, in tokio time (paused-time tests read backoff from it).
    pub fn probe_times(&self) -> Vec<Instant> {
        self.state().probe_times.clone()
    }

    /// Mutations of this record are rejected with `invalid_mutation`.
    pub fn reject_record(&self, record_id: &str) {
        self.state().reject_records.insert(record_id.to_owned());
    }

    /// Requests without this bearer token fail with [`Error::Unauthorized`].
    pub fn require_token(&self, token: Option<&str>) {
        self.state().required_token = token.map(str::to_owned);
    }

    /// Writes a record as another client would (last write wins); returns its version.
    pub fn put(&self, collection: &str, id: &str, data: Value) -> u64 {
        let (Ok(c), Ok(id)) = (CollectionName::new(collection), RecordId::new(id)) else { return 0 };
        let mut s = self.state();
        let record = next_state(&s, &c, &id, Some(data));
        apply_write(&mut s, &c, &id, &record, None)
    }

    /// Deletes a record as another client would; returns the tombstone's version.
    pub fn remove(&self, collection: &str, id: &str) -> u64 {
        let (Ok(c), Ok(id)) = (CollectionName::new(collection), RecordId::new(id)) else { return 0 };
        let mut s = self.state();
        let record = next_state(&s, &c, &id, None);
        apply_write(&mut s, &c, &id, &record, None)
    }

    /// A record's (version, deleted, data).
    pub fn record(&self, collection: &str, id: &str) -> Option<(u64, bool, Option<Value>)> {
        let c = CollectionName::new(collection).ok()?;
        let id = RecordId::new(id).ok()?;
        self.state().records.get(&(c, id)).map(|r| (r.version, r.deleted, r.data.clone()))
    }

    /// Every live record of a collection, by id.
    pub fn live_records(&self, collection: &str) -> BTreeMap<String, Value> {
        let s = self.state();
        s.records
            .iter()
            .filter(|((c, _), r)| c.as_str() == collection && !r.deleted)
            .filter_map(|((_, id), r)| r.data.clone().map(|d| (id.to_string(), d)))
            .collect()
    }

    /// Every mutation applied, in order (each `mutation_id` at most once).
    pub fn applied(&self) -> Vec<AppliedMutation> {
        self.state().applied.clone()
    }

    /// Every mutation id received in a push, in order, repeats included.
    pub fn received(&self) -> Vec<MutationId> {
        self.state().received.clone()
    }

    /// How many push, pull and probe calls reached the server.
    pub fn calls(&self) -> (usize, usize, usize) {
        let s = self.state();
        (s.push_calls, s.pull_calls, s.probe_calls)
    }

    fn gate(s: &State) -> Result<(), Error> {
        if !s.reachable {
            return Err(Error::Unreachable { message: "memory server set unreachable".into() });
        }
        if s.required_token.is_some() && s.token != s.required_token {
            return Err(Error::Unauthorized { message: "missing or wrong token".into() });
        }
        Ok(())
    }
}

/// A record's next state when the test writes it directly (None: a delete).
fn next_state(s: &State, c: &CollectionName, id: &RecordId, data: Option<Value>) -> StoredRecord {
    let version = s.records.get(&(c.clone(), id.clone())).map_or(1, |r| r.version + 1);
    StoredRecord { version, deleted: data.is_none(), owner: "memory".into(), data }
}

/// Stores a record's new state at the next feed position.
fn apply_write(
    s: &mut State,
    c: &CollectionName,
    id: &RecordId,
    record: &StoredRecord,
    mutation: Option<MutationId>,
) -> u64 {
    s.seq += 1;
    let seq = s.seq;
    let key = (c.clone(), id.clone());
    if let Some(old) = s.records.get(&key) {
        s.feed.remove(&old.seq);
    }
    s.feed.insert(seq, key.clone());
    let rec = Rec { version: record.version, deleted: record.deleted, data: record.data.clone(), seq, mutation };
    s.records.insert(key, rec);
    record.version
}

fn rejected(code: ErrorCode, message: &str) -> MutationOutcome {
    MutationOutcome::Rejected { error: ErrorDetail::new(code, message) }
}

/// Accepts any action, as a server whose handlers all succeed.
struct AnyAction;

impl sync_server::store::ActionHandler for AnyAction {
    fn apply(
        &self,
        _: &sync_server::logic::User,
        _: &CollectionName,
        _: Option<&RecordId>,
        _: &Value,
    ) -> Result<(), ErrorDetail> {
        Ok(())
    }
}

/// One mutation, decided by the reference server's own push planning
/// (`sync_server::store::plan_push`: ledger replay, shape checks, versions, conflicts),
/// for an admin of a server that serves every collection it is sent and accepts every
/// action; only the test's refused records are answered here.
fn push_one(s: &mut State, m: &WireMutation) -> MutationOutcome {
    let refused = m.record_id.as_ref().is_some_and(|id| s.reject_records.contains(id.as_str()));
    if refused && !s.ledger.contains_key(&m.mutation_id.0) {
        let outcome = rejected(ErrorCode::InvalidMutation, "this record is refused by the test server");
        s.ledger.insert(m.mutation_id.0, outcome.clone());
        return outcome;
    }
    let raw = serde_json::to_value(m).unwrap_or(Value::Null);
    let user = sync_server::logic::User::new("memory", true);
    let collections = [(m.collection.clone(), CollectionConfig::new(Access::Owner))].into();
    let actions: HashMap<String, Arc<dyn sync_server::store::ActionHandler>> = match &m.body {
        MutationBody::Action { name, .. } => [(name.clone(), Arc::new(AnyAction) as _)].into(),
        _ => HashMap::new(),
    };
    let ctx = PushContext {
        user: &user,
        collections: &collections,
        users: &HashSet::new(),
        actions: &actions,
        client_id: "",
    };
    let current = m
        .record_id
        .as_ref()
        .and_then(|id| {
            let key = (m.collection.clone(), id.clone());
            let r = s.records.get(&key)?;
            Some((
                key,
                StoredRecord { version: r.version, deleted: r.deleted, owner: "memory".into(), data: r.data.clone() },
            ))
        })
        .into_iter()
        .collect();
    // Only this mutation's ledger entry: the plan needs no other, and copying the whole
    // ledger per mutation made long histories quadratic.
    let ledger = s.ledger.get(&m.mutation_id.0).map(|o| (m.mutation_id.0, o.clone())).into_iter().collect();
    let plan = plan_push(&ctx, &[raw], ledger, current, &VersionFloors::new());
    for w in &plan.writes {
        let version = apply_write(s, &w.collection, &w.id, &w.record, Some(m.mutation_id));
        s.applied.push(AppliedMutation {
            mutation_id: m.mutation_id,
            collection: w.collection.clone(),
            record_id: Some(w.id.clone()),
            op: m.body.op(),
            data: w.record.data.clone(),
            version,
        });
    }
    if let (MutationBody::Action { args, .. }, Some((_, MutationOutcome::Applied { version, .. }))) =
        (&m.body, plan.ledger.first())
    {
        s.applied.push(AppliedMutation {
            mutation_id: m.mutation_id,
            collection: m.collection.clone(),
            record_id: m.record_id.clone(),
            op: Op::Action,
            data: Some(Value::Object(args.clone())),
            version: version.0,
        });
    }
    s.ledger.extend(plan.ledger);
    plan.results.into_iter().next().map_or_else(|| rejected(ErrorCode::InvalidMutation, "no answer"), |r| r.outcome)
}

fn parse_cursor(c: &Option<Cursor>) -> Result<u64, Error> {
    match c {
        None => Ok(0),
        Some(Cursor(text)) => text.parse().map_err(|_| Error::Rejected {
            status: 400,
            code: ErrorCode::InvalidRequest,
            message: format!("bad cursor {text:?}"),
        }),
    }
}

#[async_trait]
impl Transport for MemoryServer {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, Error> {
        let gate = self.state().gate.clone();
        if let Some(gate) = gate {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
        }
        let (response, hold) = {
            let mut s = self.state();
            s.push_calls += 1;
            Self::gate(&s)?;
            if !s.fail_pushes.is_empty() {
                return Err(s.fail_pushes.remove(0));
            }
            let results = request
                .mutations
                .iter()
                .map(|m| {
                    s.received.push(m.mutation_id);
                    MutationResult { mutation_id: m.mutation_id, outcome: push_one(&mut s, m) }
                })
                .collect();
            (PushResponse { results }, s.hold.take())
        };
        if let Some(hold) = hold {
            hold.applied.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(response)
    }

    async fn pull(&self, request: &PullRequest) -> Result<PullResponse, Error> {
        let mut s = self.state();
        s.pull_calls += 1;
        Self::gate(&s)?;
        if !s.fail_pulls.is_empty() {
            return Err(s.fail_pulls.remove(0));
        }
        if !s.pull_overrides.is_empty() {
            return Ok(s.pull_overrides.remove(0));
        }
        let limit = usize::try_from(request.limit.unwrap_or(1000).max(1)).unwrap_or(1000);
        let mut cursors = BTreeMap::new();
        for (c, cursor) in &request.collections {
            cursors.insert(c.clone(), parse_cursor(cursor)?);
        }
        let start = cursors.values().copied().min().unwrap_or(0);
        let mut changes = Vec::new();
        let mut reached = s.seq;
        let mut has_more = false;
        for (seq, (c, id)) in s.feed.range(start + 1..) {
            let Some(after) = cursors.get(c) else { continue };
            if *seq <= *after {
                continue;
            }
            if changes.len() == limit {
                has_more = true;
                reached = seq - 1;
                break;
            }
            if let Some(r) = s.records.get(&(c.clone(), id.clone())) {
                changes.push(Change {
                    collection: c.clone(),
                    record_id: id.clone(),
                    version: Version(r.version),
                    deleted: r.deleted,
                    removed: false,
                    data: r.data.clone(),
                    mutation_id: r.mutation,
                });
            }
        }
        let cursors = cursors.into_iter().map(|(c, k)| (c, Cursor(k.max(reached).to_string()))).collect();
        Ok(PullResponse { changes, cursors, has_more, reset: Vec::new(), subscriptions: Default::default() })
    }

    async fn probe(&self) -> Result<(), Error> {
        let mut s = self.state();
        s.probe_calls += 1;
        s.probe_times.push(Instant::now());
        if s.reachable { Ok(()) } else { Err(Error::Unreachable { message: "memory server set unreachable".into() }) }
    }

    fn set_credentials(&self, credentials: Option<sync_core::Credentials>) {
        self.state().token = credentials.map(|c| c.token().to_owned());
    }
}

//! `Simulation`: the in-process reference server and real client engines on SQLite
//! files, driven step by step, then brought to quiescence and checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sync_core::protocol::Op;
use sync_core::{
    AccountId, Backoff, ClientId, Conflict, Credentials, Engine, EngineOptions, Error, Resolution, Subscribe,
    SubscriptionHandle, SyncEvent, SyncReport,
};
use sync_server::ServerError;
use sync_sqlite::SqliteStore;
use tokio::sync::broadcast;

use super::app::{SimApp, Tracked};
use super::check::{
    Ack, Intent, Seen, Source, Thread, Violation, check_conflict_explained, check_convergence, check_resolution,
    check_thread,
};
use super::history::{History, Step};
use crate::{FaultyTransport, InProcessServer, InProcessTransport};

/// How many full rounds (every client syncs and settles) quiescence may take before a
/// client that still has work is a liveness failure.
pub const QUIESCENCE_ROUNDS: u32 = 8;

/// The longest one `sync_now` may take before the engine counts as stuck. Every request
/// is in-process, so a healthy cycle takes milliseconds.
const CYCLE_BOUND: Duration = Duration::from_secs(30);

/// Why a simulation could not be set up (the app's configuration, not offsync, failed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The server configuration was refused or its store could not be made.
    #[error("the in-process server did not start: {0}")]
    Server(#[from] ServerError),
    /// A client's store or engine could not be made at the start.
    #[error("client {client}'s engine did not start: {error}")]
    Client {
        /// The client.
        client: usize,
        /// The error.
        error: Error,
    },
    /// The temporary folder for the clients' stores could not be made.
    #[error("temporary folder: {0}")]
    Io(#[from] std::io::Error),
}

/// A conflict a client's user met (at a `resolve` step or while settling at the end),
/// and what the app's resolver made of it.
#[derive(Debug, Clone)]
pub struct SeenConflict {
    /// The client.
    pub client: usize,
    /// The step it was resolved at (None: while settling after the history).
    pub step: Option<usize>,
    /// The conflict, with local, server and base side by side.
    pub conflict: Conflict,
    /// The resolver's answer.
    pub resolution: Resolution,
}

/// What a history did: the invariant violations (expected: none), the liveness
/// failures (expected: none) and what happened along the way.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Safety violations (invariants 1-5, resolver soundness).
    pub violations: Vec<Violation>,
    /// Liveness failures: work left after the faults stopped and the bounded rounds ran.
    pub liveness: Vec<Violation>,
    /// Faults injected, by name, over all clients (crashes included).
    pub faults: BTreeMap<&'static str, u64>,
    /// Client restarts.
    pub crashes: u64,
    /// Conflicts the users met, in order.
    pub conflicts: Vec<SeenConflict>,
    /// Rounds quiescence took (0 when it did not settle).
    pub rounds: u32,
    /// Mutations the server applied.
    pub applied: usize,
    /// Collections the server answered with `reset` (after a tombstone purge).
    pub resets: u64,
}

impl Outcome {
    /// No violation and no liveness failure.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty() && self.liveness.is_empty()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} violations, {} liveness failures, {} applied, {} conflicts, {} crashes, {} resets, settled in {} rounds, faults {:?}",
            self.violations.len(),
            self.liveness.len(),
            self.applied,
            self.conflicts.len(),
            self.crashes,
            self.resets,
            self.rounds,
            self.faults
        )?;
        for violation in self.violations.iter().chain(&self.liveness) {
            writeln!(f, "  - {violation}")?;
        }
        Ok(())
    }
}

/// What the kit observed: acknowledgements and events, on one counter.
#[derive(Default)]
struct Log {
    seq: u64,
    acks: Vec<Ack>,
    events: Vec<Seen>,
}

impl Log {
    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

struct SimClient {
    token: String,
    path: PathBuf,
    transport: Arc<FaultyTransport<InProcessTransport>>,
    engine: Option<Engine>,
    online: bool,
    client_ids: BTreeSet<String>,
    /// The engine's events, drained into the log before every acknowledgement so that
    /// the log's order is the order things happened in.
    events: Option<broadcast::Receiver<SyncEvent>>,
    /// The subscriptions the app holds, by (collection, value); a crash loses them.
    handles: BTreeMap<(String, String), SubscriptionHandle>,
}

/// The server and the clients of one history. Drive it with [`Simulation::apply`], then
/// [`Simulation::finish`] heals every fault, settles, and checks the invariants.
///
/// ```
/// # async fn run(app: impl sync_testkit::sim::SimApp) -> Result<(), sync_testkit::sim::SimError> {
/// use sync_testkit::sim::{Simulation, Step};
///
/// let mut sim = Simulation::start(app, 2).await?;
/// sim.apply(&Step::Offline { client: 0 }).await;
/// let outcome = sim.finish().await;
/// assert!(outcome.is_ok(), "{outcome}");
/// # Ok(())
/// # }
/// ```
pub struct Simulation {
    app: Arc<dyn SimApp>,
    tracked: Vec<Tracked>,
    server: InProcessServer,
    clients: Vec<SimClient>,
    log: Log,
    steps: usize,
    actions: u64,
    crashes: u64,
    violations: Vec<Violation>,
    conflicts: Vec<SeenConflict>,
    _dir: tempfile::TempDir,
}

/// The engine options the kit runs apps with: no automatic triggers and hour-long
/// backoffs, so that only the history's steps (and going online) run cycles.
pub fn sim_options(online: bool) -> EngineOptions {
    let hour = Duration::from_secs(3600);
    EngineOptions {
        debounce: hour,
        interval: None,
        sync_on_start: false,
        start_online: online,
        // The kit drains events between steps; a cycle never makes this many.
        event_capacity: 1 << 16,
        backoff: Backoff { initial: hour, max: hour, multiplier: 1.0, jitter: 0.0 },
        ..EngineOptions::default()
    }
}

impl Simulation {
    /// A fresh server and `clients` clients of `app`, each on its own store file.
    ///
    /// # Errors
    /// [`SimError`] when the app's server configuration or an engine is refused.
    pub async fn start(app: impl SimApp, clients: usize) -> Result<Self, SimError> {
        Self::start_shared(Arc::new(app), clients).await
    }

    /// As [`Simulation::start`], with the app behind an `Arc` (one app, many histories).
    ///
    /// # Errors
    /// As [`Simulation::start`].
    pub async fn start_shared(app: Arc<dyn SimApp>, clients: usize) -> Result<Self, SimError> {
        let server = InProcessServer::with_actions(&app.server_config(), app.actions()).await?;
        let dir = tempfile::tempdir()?;
        let tracked = app.tracked();
        let mut sim = Self {
            tracked,
            server,
            clients: Vec::new(),
            log: Log::default(),
            steps: 0,
            actions: 0,
            crashes: 0,
            violations: Vec::new(),
            conflicts: Vec::new(),
            _dir: dir,
            app,
        };
        for client in 0..clients {
            let token = sim.app.token(client);
            let path = sim._dir.path().join(format!("client-{client}.db"));
            let transport = Arc::new(FaultyTransport::new(sim.server.transport(&token)));
            sim.clients.push(SimClient {
                token,
                path,
                transport,
                engine: None,
                online: true,
                client_ids: BTreeSet::new(),
                events: None,
                handles: BTreeMap::new(),
            });
            sim.boot(client).await.map_err(|error| SimError::Client { client, error })?;
        }
        Ok(sim)
    }

    /// The in-process server.
    pub fn server(&self) -> &InProcessServer {
        &self.server
    }

    /// Client `client`'s engine (None only between a crash and its restart).
    pub fn engine(&self, client: usize) -> Option<&Engine> {
        self.clients.get(client).and_then(|c| c.engine.as_ref())
    }

    /// Starts client `client`'s engine on its store file.
    async fn boot(&mut self, client: usize) -> Result<(), Error> {
        let c = &self.clients[client];
        let store = SqliteStore::open(&c.path).await?;
        let transport = self.app.transport(client, c.transport.clone());
        let builder = Engine::builder().store(Arc::new(store)).transport(transport).options(sim_options(c.online));
        let engine = self.app.register(client, builder).build().await?;
        self.drain(client);
        let c = &mut self.clients[client];
        c.events = Some(engine.events());
        c.client_ids.insert(engine.client_id().0.clone());
        c.engine = Some(engine);
        Ok(())
    }

    fn tracked(&self, name: &str) -> Option<Tracked> {
        self.tracked.iter().find(|t| t.name == name).cloned()
    }

    /// Moves the events client `client`'s engines broadcast so far into the log.
    fn drain(&mut self, client: usize) {
        let Some(events) = &mut self.clients[client].events else { return };
        let log = &mut self.log;
        loop {
            match events.try_recv() {
                Ok(event) => {
                    let seq = log.next();
                    log.events.push(Seen { seq, client, event });
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    }

    fn drain_all(&mut self) {
        for client in 0..self.clients.len() {
            self.drain(client);
        }
    }

    fn ack(&mut self, client: usize, collection: &str, record: &str, intent: Intent, source: Source) {
        self.drain_all();
        let seq = self.log.next();
        self.log.acks.push(Ack {
            client,
            collection: collection.to_owned(),
            record: record.to_owned(),
            intent,
            seq,
            source,
        });
    }

    fn local_first(&mut self, client: usize, collection: &str, record: &str, detail: String) {
        self.violations.push(Violation::LocalFirst {
            client,
            collection: collection.to_owned(),
            record: record.to_owned(),
            detail,
        });
    }

    /// Takes one step. What goes wrong inside offsync is recorded as a violation, never
    /// returned: the history goes on. A step of a client the simulation does not have,
    /// or on a collection the app does not track, is skipped.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping it midway leaves the step half taken.
    pub async fn apply(&mut self, step: &Step) {
        self.steps += 1;
        let Some(client) = step.client() else {
            // The server's own steps.
            if let Step::PurgeTombstones = step
                && let Err(e) = self.server.purge_tombstones().await
            {
                self.violations.push(Violation::Stuck { client: 0, detail: format!("server purge failed: {e}") });
            }
            return;
        };
        if client >= self.clients.len() {
            return;
        }
        if self.clients[client].engine.is_none() {
            self.restart(client).await;
        }
        let Some(engine) = self.clients[client].engine.clone() else { return };
        match step {
            Step::Write { collection, record, data, .. } => self.write(client, &engine, collection, record, data).await,
            Step::Delete { collection, record, .. } => self.delete(client, &engine, collection, record).await,
            Step::Recreate { collection, record, data, sync_between, .. } => {
                self.delete(client, &engine, collection, record).await;
                if *sync_between {
                    self.sync(client, &engine).await;
                }
                self.write(client, &engine, collection, record, data).await;
            }
            Step::Action { collection, record, name, .. } => {
                let Some(tracked) = self.tracked(collection) else { return };
                self.actions += 1;
                let args = json!({ "n": self.actions });
                match (tracked.ops.action)(&engine, name, record, args.clone()).await {
                    Ok(()) => {
                        self.ack(client, collection, record, Intent::Action { name: name.clone(), args }, Source::Write)
                    }
                    Err(e) if refused(&e) => {}
                    Err(e) => self.local_first(client, collection, record, format!("action failed: {e}")),
                }
            }
            Step::Offline { .. } => {
                self.clients[client].online = false;
                engine.set_online(false);
            }
            Step::Online { .. } => {
                self.clients[client].online = true;
                engine.set_online(true);
                // Going online runs a reconnect cycle; wait for it (or the one after).
                self.sync(client, &engine).await;
            }
            Step::Sync { .. } => {
                self.sync(client, &engine).await;
            }
            Step::Fault { fault, .. } => self.clients[client].transport.inject(*fault),
            Step::Crash { after_request, .. } => {
                if *after_request > 0 {
                    let transport = self.clients[client].transport.clone();
                    transport.crash_after(*after_request);
                    tokio::select! {
                        _ = tokio::time::timeout(CYCLE_BOUND, engine.sync_now()) => {}
                        () = transport.crashed() => {}
                    }
                    transport.cancel_crash();
                }
                drop(engine);
                self.crash(client).await;
            }
            Step::Resolve { .. } => {
                let step = Some(self.steps);
                self.resolve_all(client, &engine, step, false).await;
            }
            Step::Subscribe { collection, value, .. } => self.subscribe(client, &engine, collection, value).await,
            Step::Unsubscribe { collection, value, .. } => {
                self.clients[client].handles.remove(&(collection.clone(), value.clone()));
            }
            Step::Evict { .. } => self.evict(client, &engine).await,
            Step::PurgeTombstones => {}
        }
    }

    /// Holds the subscription of `collection` whose field equals `value` (no time to
    /// live: released, it lets go of its records at the next pull).
    async fn subscribe(&mut self, client: usize, engine: &Engine, collection: &str, value: &str) {
        let key = (collection.to_owned(), value.to_owned());
        if self.clients[client].handles.contains_key(&key) {
            return;
        }
        let Some((field, _)) = self.tracked(collection).and_then(|t| t.subscribe_by) else { return };
        let subscription = Subscribe::to(collection).and_then(|s| s.eq(&field, value)).map(|s| s.ttl(Duration::ZERO));
        match subscription {
            Ok(subscription) => match engine.subscribe(subscription).await {
                Ok(handle) => {
                    self.clients[client].handles.insert(key, handle);
                }
                Err(e) => self.violations.push(Violation::Stuck { client, detail: format!("subscribe failed: {e}") }),
            },
            Err(e) => self.violations.push(Violation::Stuck { client, detail: format!("bad subscription: {e}") }),
        }
    }

    /// Evicts everything evictable and checks that every record that was not synced (a
    /// pending write, a conflict, a parked write) still reads as it did.
    async fn evict(&mut self, client: usize, engine: &Engine) {
        let mut before = Vec::new();
        for tracked in self.tracked.iter().filter(|t| t.subscribe_by.is_some()) {
            match (tracked.ops.unsynced)(engine).await {
                Ok(records) => before.push((tracked.clone(), records)),
                Err(e) => self.violations.push(Violation::Stuck { client, detail: format!("read failed: {e}") }),
            }
        }
        if let Err(e) = engine.trim_cache(0).await {
            self.violations.push(Violation::Stuck { client, detail: format!("trim_cache failed: {e}") });
            return;
        }
        for (tracked, records) in before {
            for (record, value) in records {
                match (tracked.ops.get)(engine, &record).await {
                    Ok(Some(now)) if now == value => {}
                    other => self.local_first(
                        client,
                        &tracked.name,
                        &record,
                        format!("not synced ({value}), evicted: read back {other:?}"),
                    ),
                }
            }
        }
    }

    /// One cycle, bounded; its error (offline, faults) is part of the history.
    async fn sync(&mut self, client: usize, engine: &Engine) -> Option<SyncReport> {
        match tokio::time::timeout(CYCLE_BOUND, engine.sync_now()).await {
            Ok(result) => result.ok(),
            Err(_) => {
                self.violations.push(Violation::Stuck {
                    client,
                    detail: format!("sync_now did not return within {CYCLE_BOUND:?}"),
                });
                None
            }
        }
    }

    /// Drops the engine (abandoning whatever it was doing) and starts it again on the
    /// same store file.
    async fn crash(&mut self, client: usize) {
        self.crashes += 1;
        // The app's screens go with it; the restarted engine releases what they held.
        self.clients[client].handles.clear();
        if let Some(engine) = self.clients[client].engine.take()
            && tokio::time::timeout(CYCLE_BOUND, engine.shutdown()).await.is_err()
        {
            self.violations.push(Violation::Stuck { client, detail: "the engine did not stop".into() });
        }
        self.drain(client);
        self.restart(client).await;
    }

    /// A local write: inserts the record, or updates it when it is stored.
    async fn write(&mut self, client: usize, engine: &Engine, collection: &str, record: &str, data: &Value) {
        let Some(tracked) = self.tracked(collection) else { return };
        let value = tracked.with_id(data, record);
        let source = match (tracked.ops.get)(engine, record).await {
            Ok(None) => Source::Create,
            _ => Source::Write,
        };
        match (tracked.ops.put)(engine, value.clone()).await {
            Ok(()) => {
                self.ack(client, collection, record, Intent::Upsert(value.clone()), source);
                let expected = (tracked.ops.normalize)(&value).ok();
                match (tracked.ops.get)(engine, record).await {
                    Ok(read) if read == expected => {}
                    Ok(read) => {
                        self.local_first(client, collection, record, format!("wrote {value}, read back {read:?}"))
                    }
                    Err(e) => self.local_first(client, collection, record, format!("read back failed: {e}")),
                }
            }
            Err(e) if refused(&e) => {}
            Err(e) => self.local_first(client, collection, record, format!("write failed: {e}")),
        }
    }

    /// A local delete (refused when the record is not stored).
    async fn delete(&mut self, client: usize, engine: &Engine, collection: &str, record: &str) {
        let Some(tracked) = self.tracked(collection) else { return };
        match (tracked.ops.delete)(engine, record).await {
            Ok(()) => {
                self.ack(client, collection, record, Intent::Delete, Source::Write);
                match (tracked.ops.get)(engine, record).await {
                    Ok(None) => {}
                    other => self.local_first(client, collection, record, format!("deleted, read back {other:?}")),
                }
            }
            Err(e) if refused(&e) => {}
            Err(e) => self.local_first(client, collection, record, format!("delete failed: {e}")),
        }
    }

    async fn restart(&mut self, client: usize) {
        if let Err(e) = self.boot(client).await {
            self.violations.push(Violation::Stuck { client, detail: format!("restart failed: {e}") });
        }
    }

    /// Settles every open conflict of `client` with the app's resolver (at the end, a
    /// deferred one is kept as the server has it).
    async fn resolve_all(&mut self, client: usize, engine: &Engine, step: Option<usize>, settle: bool) {
        let conflicts = match engine.conflicts().await {
            Ok(conflicts) => conflicts,
            Err(e) => {
                self.violations.push(Violation::Stuck { client, detail: format!("conflicts() failed: {e}") });
                return;
            }
        };
        let resolver = self.app.resolver();
        for conflict in conflicts {
            let mut resolution = resolver.resolve(&conflict);
            self.violations.extend(check_resolution(client, &conflict, &resolution));
            self.conflicts.push(SeenConflict {
                client,
                step,
                conflict: conflict.clone(),
                resolution: resolution.clone(),
            });
            if resolution == Resolution::Defer {
                if !settle {
                    continue;
                }
                resolution = Resolution::KeepServer;
            }
            let intent = match &resolution {
                Resolution::KeepLocal => match &conflict.local {
                    Some(value) => Intent::Upsert(value.clone()),
                    // Deleted on both sides: the intent already holds, nothing travels.
                    None if conflict.server.as_ref().is_none_or(|s| s.deleted) => Intent::Settled,
                    None => Intent::Delete,
                },
                Resolution::Merged(value) => Intent::Upsert(value.clone()),
                Resolution::KeepServer | Resolution::Defer => Intent::Settled,
            };
            let (collection, record) = (conflict.collection.as_str(), conflict.record_id.as_str());
            match engine.resolve(collection, record, resolution).await {
                Ok(()) => self.ack(client, collection, record, intent, Source::Resolution),
                Err(e) => self
                    .violations
                    .push(Violation::Stuck { client, detail: format!("resolving {collection}/{record} failed: {e}") }),
            }
        }
    }

    /// Heals every fault, brings every client online with its credentials, runs rounds
    /// (each client syncs, settles its conflicts, discards its rejected mutations) until
    /// a round in which nothing is pushed and nothing is left, then checks invariants
    /// 1-5 against the server's application log and stores.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping it midway leaves the clients half settled.
    pub async fn finish(mut self) -> Outcome {
        for client in 0..self.clients.len() {
            let c = &self.clients[client];
            c.transport.heal();
            c.transport.cancel_crash();
            if c.engine.is_none() {
                self.restart(client).await;
            }
            let c = &mut self.clients[client];
            c.online = true;
            if let Some(engine) = &c.engine {
                engine.set_online(true);
                // The token names the user in the in-process server, so it is the account too.
                let credentials =
                    AccountId::new(c.token.clone()).and_then(|account| Credentials::new(account, c.token.clone()));
                let set = match credentials {
                    Ok(credentials) => engine.set_credentials(credentials).await,
                    Err(error) => Err(error),
                };
                if let Err(e) = set {
                    self.violations.push(Violation::Stuck { client, detail: format!("set_credentials failed: {e}") });
                }
            }
        }
        let mut rounds = 0;
        for round in 1..=QUIESCENCE_ROUNDS {
            // Quiet means the server applied nothing in the whole round (a report may
            // belong to a cycle after the one that pushed, such as a reconnect's), so
            // every client's pull in it saw the final state.
            let applied_before = self.server.applications().len();
            let mut busy = false;
            for client in 0..self.clients.len() {
                let Some(engine) = self.clients[client].engine.clone() else { continue };
                busy |= self.sync(client, &engine).await.is_none();
                let resolved = self.conflicts.len();
                self.resolve_all(client, &engine, None, true).await;
                busy |= self.conflicts.len() > resolved;
                busy |= self.discard_failed(client, &engine).await;
            }
            busy |= self.server.applications().len() != applied_before;
            if !busy && self.settled() {
                rounds = round;
                break;
            }
        }
        let mut outcome = Outcome { rounds, crashes: self.crashes, ..Outcome::default() };
        if rounds == 0 {
            outcome.liveness = self.leftovers();
        } else {
            self.fetch_evicted().await;
            self.check_convergence().await;
        }
        self.check_threads(rounds > 0).await;
        self.check_conflicts_explained();
        let (liveness, safety): (Vec<_>, Vec<_>) = self.violations.drain(..).partition(Violation::is_liveness);
        outcome.violations = safety;
        outcome.liveness.extend(liveness);
        for c in &self.clients {
            for (name, count) in c.transport.injected() {
                *outcome.faults.entry(name).or_insert(0) += count;
            }
        }
        outcome.conflicts = std::mem::take(&mut self.conflicts);
        outcome.applied = self.server.applications().len();
        outcome.resets = self.server.resets();
        for client in &mut self.clients {
            if let Some(engine) = client.engine.take() {
                let _ = tokio::time::timeout(CYCLE_BOUND, engine.shutdown()).await;
            }
        }
        outcome
    }

    /// Discards the client's parked mutations (the app's user gives them up); true when
    /// there were some.
    async fn discard_failed(&mut self, client: usize, engine: &Engine) -> bool {
        let Ok(failed) = engine.failed_mutations().await else { return true };
        for entry in &failed {
            if engine.discard_failed(entry.mutation_id).await.is_ok()
                && let Some(record) = &entry.record_id
            {
                self.ack(client, entry.collection.as_str(), record.as_str(), Intent::Settled, Source::Resolution);
            }
        }
        !failed.is_empty()
    }

    /// Every client's queue empty, no conflict open, nothing parked.
    fn settled(&self) -> bool {
        for c in &self.clients {
            let Some(engine) = &c.engine else { return false };
            let status = engine.status().borrow().clone();
            if status.pending + status.conflicts + status.failed > 0 {
                return false;
            }
        }
        true
    }

    fn leftovers(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        for (client, c) in self.clients.iter().enumerate() {
            let Some(engine) = &c.engine else {
                out.push(Violation::Stuck { client, detail: "no engine".into() });
                continue;
            };
            let status = engine.status().borrow().clone();
            if status.pending + status.conflicts + status.failed > 0 {
                out.push(Violation::Stuck {
                    client,
                    detail: format!(
                        "after {QUIESCENCE_ROUNDS} rounds: {} pending, {} conflicts, {} failed, auth {:?}, last error {:?}",
                        status.pending, status.conflicts, status.failed, status.auth, status.last_error
                    ),
                });
            }
        }
        if out.is_empty() {
            out.push(Violation::Stuck {
                client: 0,
                detail: format!("pushes still applied in round {QUIESCENCE_ROUNDS}"),
            });
        }
        out
    }

    fn normalize(&self, collection: &str, value: &Value) -> Value {
        self.tracked
            .iter()
            .find(|t| t.name == collection)
            .and_then(|t| (t.ops.normalize)(value).ok())
            .unwrap_or_else(|| value.clone())
    }

    /// The server's live records of `collection` for `token`, normalized.
    async fn server_records(&self, token: &str, collection: &str) -> Option<BTreeMap<String, Value>> {
        let records = self.server.records(token, collection).await.ok()?;
        Some(records.into_iter().map(|(id, (_, data))| (id, self.normalize(collection, &data))).collect())
    }

    /// Before convergence is checked: each held subscription is held once more, which
    /// brings back what an eviction took (as the app's screen would on opening again),
    /// and each client syncs.
    async fn fetch_evicted(&mut self) {
        for client in 0..self.clients.len() {
            let Some(engine) = self.clients[client].engine.clone() else { continue };
            let held: Vec<(String, String)> = self.clients[client].handles.keys().cloned().collect();
            if held.is_empty() {
                continue;
            }
            let mut again = Vec::new();
            for (collection, value) in &held {
                let Some((field, _)) = self.tracked(collection).and_then(|t| t.subscribe_by) else { continue };
                let subscription = Subscribe::to(collection).and_then(|s| s.eq(&field, value.as_str()));
                match subscription {
                    Ok(s) => match engine.subscribe(s.ttl(Duration::ZERO)).await {
                        Ok(handle) => again.push(handle),
                        Err(e) => {
                            self.violations.push(Violation::Stuck { client, detail: format!("subscribe failed: {e}") })
                        }
                    },
                    Err(e) => {
                        self.violations.push(Violation::Stuck { client, detail: format!("bad subscription: {e}") })
                    }
                }
            }
            self.sync(client, &engine).await;
            drop(again);
        }
    }

    async fn check_convergence(&mut self) {
        let mut found = Vec::new();
        for (client, c) in self.clients.iter().enumerate() {
            let Some(engine) = &c.engine else { continue };
            for tracked in &self.tracked {
                let Some(mut server) = self.server_records(&c.token, &tracked.name).await else { continue };
                if let Some((field, _)) = &tracked.subscribe_by {
                    // On demand: what the client's held subscriptions cover, and only that.
                    let held: BTreeSet<&str> = c
                        .handles
                        .keys()
                        .filter(|(collection, _)| *collection == tracked.name)
                        .map(|(_, value)| value.as_str())
                        .collect();
                    server.retain(|_, data| data.get(field).and_then(Value::as_str).is_some_and(|v| held.contains(v)));
                }
                let local = match (tracked.ops.list)(engine).await {
                    Ok(list) => list.into_iter().collect(),
                    Err(e) => {
                        found.push(Violation::Stuck { client, detail: format!("list failed: {e}") });
                        continue;
                    }
                };
                found.extend(check_convergence(client, &tracked.name, &local, &server));
            }
        }
        self.violations.extend(found);
    }

    /// Rule 6 for every conflict a user met: another client's write explains it. In a
    /// collection synced on demand the client's own earlier write explains it too: the
    /// device let go of the record once no subscription held it, so it no longer knows
    /// the version its own write made.
    fn check_conflicts_explained(&mut self) {
        let applications = self.server.applications();
        let owner = |id: &ClientId| self.clients.iter().position(|c| c.client_ids.contains(&id.0));
        let mut found = Vec::new();
        for seen in &self.conflicts {
            let (collection, record) = (seen.conflict.collection.as_str(), seen.conflict.record_id.as_str());
            let on_demand = self.tracked.iter().any(|t| t.name == collection && t.subscribe_by.is_some());
            let others: Vec<u64> = applications
                .iter()
                .filter(|a| {
                    (on_demand || owner(&a.client_id) != Some(seen.client))
                        && a.collection.as_str() == collection
                        && a.record_id.as_ref().is_some_and(|r| r.as_str() == record)
                        && a.body.op() != Op::Action
                })
                .map(|a| a.version.0)
                .collect();
            found.extend(check_conflict_explained(seen.client, &seen.conflict, &others));
        }
        self.violations.extend(found);
    }

    /// Invariants 1-4 per (client, collection, record).
    async fn check_threads(&mut self, settled: bool) {
        self.drain_all();
        let applications = self.server.applications();
        let Log { acks, events, .. } = std::mem::take(&mut self.log);
        let owner = |id: &ClientId| self.clients.iter().position(|c| c.client_ids.contains(&id.0));
        let mut keys: BTreeSet<(usize, String, String)> = BTreeSet::new();
        for ack in &acks {
            keys.insert((ack.client, ack.collection.clone(), ack.record.clone()));
        }
        let mut finals: BTreeMap<(usize, String), Option<BTreeMap<String, Value>>> = BTreeMap::new();
        let mut found = Vec::new();
        for (client, collection, record) in &keys {
            let key = (*client, collection.clone());
            if !finals.contains_key(&key) {
                let records = self.server_records(&self.clients[*client].token, collection).await;
                finals.insert(key.clone(), records);
            }
            let server_final = finals.get(&key).cloned().flatten().and_then(|r| r.get(record).cloned());
            let thread = Thread {
                client: *client,
                collection,
                record,
                acks: acks
                    .iter()
                    .filter(|a| a.client == *client && &a.collection == collection && &a.record == record)
                    .collect(),
                applied: applications
                    .iter()
                    .filter(|a| {
                        owner(&a.client_id) == Some(*client)
                            && a.collection.as_str() == collection
                            && a.record_id.as_ref().is_some_and(|r| r.as_str() == record)
                    })
                    .collect(),
                events: events.iter().filter(|e| e.client == *client && about(&e.event, collection, record)).collect(),
                server_final,
                settled,
            };
            let normalize = |collection: &str, value: &Value| self.normalize(collection, value);
            found.extend(check_thread(&thread, &normalize));
        }
        self.violations.extend(found);
    }
}

/// A write the store refuses for its input (the record is missing or exists, the
/// collection is read-only here): the app sees an error and nothing is acknowledged.
fn refused(error: &Error) -> bool {
    matches!(error, Error::NotFound { .. } | Error::AlreadyExists { .. } | Error::ReadOnlyCollection { .. })
}

/// Whether `event` is about record `record` of `collection`.
fn about(event: &SyncEvent, collection: &str, record: &str) -> bool {
    match event {
        SyncEvent::RecordChanged { collection: c, id, .. }
        | SyncEvent::ConflictDetected { collection: c, id }
        | SyncEvent::ConflictResolved { collection: c, id } => c.as_str() == collection && id.as_str() == record,
        SyncEvent::MutationRejected { collection: c, record_id, .. } => {
            c.as_str() == collection && record_id.as_ref().is_some_and(|r| r.as_str() == record)
        }
        _ => false,
    }
}

/// Runs `history` against `app` from a fresh server and fresh clients, then settles
/// and checks it.
///
/// # Errors
/// [`SimError`] when the app's configuration is refused.
pub async fn run_history(app: Arc<dyn SimApp>, history: &History) -> Result<Outcome, SimError> {
    let mut sim = Simulation::start_shared(app, history.clients).await?;
    for step in &history.steps {
        sim.apply(step).await;
    }
    Ok(sim.finish().await)
}

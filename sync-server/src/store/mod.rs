//! The server-store boundary (`ServerStore`) and the push planning both stores share.

pub mod postgres;
mod skeleton;
pub mod sqlite;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::pool::PoolOptions;
use sqlx::{Connection, TransactionManager};
use sync_core::protocol::{ErrorCode, ErrorDetail, MutationBody, MutationOutcome, PullResponse, SubscriptionPage};
use sync_core::{CollectionName, Cursor, RecordId, Version};
use uuid::Uuid;

use crate::config::{CollectionConfig, Ids};
use crate::cursor::Position;
use crate::error::ServerError;
use crate::events::ChangeHub;
use crate::logic::{self, Decision, StoredRecord, User, WireResult};
use crate::rules::{Grant, ReadScope, Rule};
use crate::subscriptions::Subscription;

/// `POST /v1/pull`'s answer as the store builds it: the wire shape of
/// [`PullResponse`], with the page's changes as one JSON array the database assembled
/// (SQLite's `json_group_array`, PostgreSQL's `json_agg`). The server hands the records'
/// stored JSON to the client as it is: parsing and re-serializing every record, and
/// moving it row by row out of the driver, was most of an initial sync's server time.
#[derive(Debug, Serialize)]
pub struct PullPage {
    /// The changes of this page: a JSON array of `{"collection", "record_id",
    /// "version", "deleted", "data"}` objects, in feed order.
    pub changes: Box<RawValue>,
    /// The new cursor of each pulled collection.
    pub cursors: BTreeMap<CollectionName, Cursor>,
    /// More pages follow.
    pub has_more: bool,
    /// Collections whose cursor was too old.
    pub reset: Vec<CollectionName>,
    /// How many changes `changes` holds, the subscriptions' too (not on the wire).
    #[serde(skip)]
    pub count: usize,
    /// Each subscription pulled, by the device's id for it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub subscriptions: BTreeMap<String, SubscriptionPart>,
}

/// One subscription's part of a [`PullPage`]: the wire shape of
/// [`SubscriptionPage`], with its changes as the JSON array the database assembled.
#[derive(Debug, Serialize)]
pub struct SubscriptionPart {
    /// Its changes (see [`PullPage::changes`]).
    pub changes: Box<RawValue>,
    /// Its new cursor (None when refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
    /// More pages follow for it.
    pub has_more: bool,
    /// Its cursor could not go on: the full set follows.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// How many records match, on a download's first page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Why the server refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

impl SubscriptionPart {
    /// The part of a refused subscription.
    pub(crate) fn refused(error: ErrorDetail) -> Result<Self, ServerError> {
        Ok(Self {
            changes: join_arrays(&[])?,
            cursor: None,
            has_more: false,
            reset: false,
            total: None,
            error: Some(error),
        })
    }
}

impl PullPage {
    /// The page as the protocol type, parsing the changes (for callers in the same
    /// process, such as test kits; the HTTP router serializes the page directly).
    ///
    /// # Errors
    /// [`ServerError::Database`] when the stored changes do not parse as changes.
    pub fn into_response(self) -> Result<PullResponse, ServerError> {
        let changes = serde_json::from_str(self.changes.get())
            .map_err(|e| ServerError::Database { message: format!("stored change: {e}"), retryable: false })?;
        let mut subscriptions = BTreeMap::new();
        for (id, part) in self.subscriptions {
            let changes = serde_json::from_str(part.changes.get())
                .map_err(|e| ServerError::Database { message: format!("stored change: {e}"), retryable: false })?;
            let page = SubscriptionPage {
                changes,
                cursor: part.cursor,
                has_more: part.has_more,
                reset: part.reset,
                total: part.total,
                error: part.error,
            };
            subscriptions.insert(id, page);
        }
        Ok(PullResponse { changes, cursors: self.cursors, has_more: self.has_more, reset: self.reset, subscriptions })
    }
}

/// Joins JSON arrays (as text) into one, without parsing their elements.
pub(crate) fn join_arrays(parts: &[String]) -> Result<Box<RawValue>, ServerError> {
    let mut joined = String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + 2);
    joined.push('[');
    let mut first = true;
    for part in parts {
        let inner = part
            .trim()
            .strip_prefix('[')
            .and_then(|p| p.strip_suffix(']'))
            .ok_or_else(|| ServerError::Database { message: "page is not a JSON array".into(), retryable: false })?;
        if inner.trim().is_empty() {
            continue;
        }
        if !first {
            joined.push(',');
        }
        first = false;
        joined.push_str(inner);
    }
    joined.push(']');
    RawValue::from_string(joined)
        .map_err(|e| ServerError::Database { message: format!("page JSON: {e}"), retryable: false })
}

/// Collects the per-collection page parts of one pull into a [`PullPage`].
#[derive(Default)]
pub(crate) struct PageBuilder {
    /// The JSON arrays of each collection's changes, in order.
    parts: Vec<String>,
    pub(crate) count: usize,
    pub(crate) cursors: BTreeMap<CollectionName, Cursor>,
    pub(crate) has_more: bool,
    pub(crate) reset: Vec<CollectionName>,
    pub(crate) subscriptions: BTreeMap<String, SubscriptionPart>,
}

impl PageBuilder {
    /// Adds one collection's changes, a JSON array of `n` change objects.
    pub(crate) fn add(&mut self, array: String, n: usize) {
        if n > 0 {
            self.parts.push(array);
            self.count += n;
        }
    }

    /// Joins the collections' arrays into one.
    pub(crate) fn finish(self) -> Result<PullPage, ServerError> {
        let changes = join_arrays(&self.parts)?;
        Ok(PullPage {
            changes,
            cursors: self.cursors,
            has_more: self.has_more,
            reset: self.reset,
            count: self.count,
            subscriptions: self.subscriptions,
        })
    }
}

/// A custom action's server side, registered per action name.
pub trait ActionHandler: Send + Sync + 'static {
    /// Applies the action for `user`, or refuses it with an error the client sees.
    ///
    /// # Errors
    /// The `ErrorDetail` answered as `rejected`.
    fn apply(
        &self,
        user: &User,
        collection: &CollectionName,
        record_id: Option<&RecordId>,
        args: &Value,
    ) -> Result<(), ErrorDetail>;
}

/// A shared handler is a handler (so one can be registered from an `Arc`).
impl<H: ActionHandler + ?Sized> ActionHandler for Arc<H> {
    fn apply(
        &self,
        user: &User,
        collection: &CollectionName,
        record_id: Option<&RecordId>,
        args: &Value,
    ) -> Result<(), ErrorDetail> {
        (**self).apply(user, collection, record_id, args)
    }
}

/// The rules every push is checked against, built once from the configuration and
/// shared by all requests.
#[derive(Clone, Default)]
pub struct PushRules {
    /// The served collections.
    pub collections: BTreeMap<CollectionName, CollectionConfig>,
    /// Every configured user name (for `owner`).
    pub users: HashSet<String>,
    /// Action handlers by name.
    pub actions: HashMap<String, Arc<dyn ActionHandler>>,
}

/// A push as a store receives it. It owns everything, so that the store can finish it in
/// a task of its own whatever happens to the request that asked for it (see
/// [`ServerStore`]'s cancel safety).
pub struct PushJob {
    /// Who pushes.
    pub user: User,
    /// The rules to check it against.
    pub rules: Arc<PushRules>,
    /// The raw mutations, in order.
    pub mutations: Vec<Value>,
    /// The pushing device's `client_id`.
    pub client_id: String,
}

impl PushJob {
    /// The borrowed view [`plan_push`] decides with.
    pub fn context(&self) -> PushContext<'_> {
        PushContext {
            user: &self.user,
            collections: &self.rules.collections,
            users: &self.rules.users,
            actions: &self.rules.actions,
            client_id: &self.client_id,
        }
    }
}

/// A pull as a store receives it (owned, like [`PushJob`]).
#[derive(Debug, Clone)]
pub struct PullJob {
    /// Who pulls.
    pub user: User,
    /// The collections, with their access and the client's cursors.
    pub items: Vec<PullItem>,
    /// The subscriptions, after the collections.
    pub subscriptions: Vec<SubscriptionItem>,
    /// The most changes in the page, the subscriptions' included.
    pub limit: usize,
}

/// One subscription to pull: the query as checked (or why it was refused), which rows
/// the user reads of its collection, and the device's cursor.
#[derive(Debug, Clone)]
pub struct SubscriptionItem {
    /// The device's id for it.
    pub id: String,
    /// The checked query, or the refusal to answer.
    pub query: Result<Subscription, ErrorDetail>,
    /// The rows this user reads ([`Rule::scope`]).
    pub scope: ReadScope,
    /// Names the read rule and the scope (as [`PullItem::tag`]).
    pub tag: String,
    /// The device's cursor.
    pub cursor: Option<Cursor>,
}

impl SubscriptionItem {
    /// The item for `user`'s pull of a subscription `query` under `read`, from `cursor`.
    pub fn new(
        id: String,
        query: Result<Subscription, ErrorDetail>,
        read: &Rule,
        user: &User,
        cursor: Option<Cursor>,
    ) -> Self {
        let scope = read.scope(user);
        let tag = scope_tag(read, &scope);
        Self { id, query, scope, tag, cursor }
    }
}

/// Everything a push is checked against, borrowed.
pub struct PushContext<'a> {
    /// Who pushes.
    pub user: &'a User,
    /// The served collections.
    pub collections: &'a BTreeMap<CollectionName, CollectionConfig>,
    /// Every configured user name (for `owner`).
    pub users: &'a HashSet<String>,
    /// Action handlers by name.
    pub actions: &'a HashMap<String, Arc<dyn ActionHandler>>,
    /// The pushing device's `client_id`.
    pub client_id: &'a str,
}

/// A record write decided by a push, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordWrite {
    /// The collection.
    pub collection: CollectionName,
    /// The record.
    pub id: RecordId,
    /// Its new state.
    pub record: StoredRecord,
    /// The mutation that writes it.
    pub mutation_id: Uuid,
    /// The audience keys to store for it (see [`crate::rules::key`]), when its
    /// collection's read rule needs them ([`Rule::needs_keys`]): the keys of its new
    /// state; a tombstone keeps those of the record it deletes, so that its readers
    /// hear of the delete.
    pub keys: Option<BTreeSet<String>>,
    /// Who hears of the write: the audience keys of the record before and after it.
    pub told: BTreeSet<String>,
}

/// The audience keys of a record before a write (`current`) and after it (`record`)
/// under the collection's read rule: (after, before and after together).
pub fn audience_change(
    read: &Rule,
    current: Option<&StoredRecord>,
    record: &StoredRecord,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let keys_of = |r: &StoredRecord| read.record_keys(&r.owner, if r.deleted { None } else { r.data.as_ref() });
    let before = current.map(keys_of).unwrap_or_default();
    let after = if record.deleted { before.clone() } else { keys_of(record) };
    let told = before.union(&after).cloned().collect();
    (after, told)
}

/// What a push does: the answers, the record writes and the new ledger entries.
#[derive(Debug, Default)]
pub struct PushPlan {
    /// One answer per mutation, in order.
    pub results: Vec<WireResult>,
    /// Record writes in order (a record may appear more than once).
    pub writes: Vec<RecordWrite>,
    /// First answers to remember.
    pub ledger: Vec<(Uuid, MutationOutcome)>,
}

/// The ids and record keys a push needs looked up before it can be planned.
pub fn prefetch_keys(raw: &[Value]) -> (Vec<Uuid>, Vec<(String, String)>) {
    let mut ids = Vec::new();
    let mut keys = Vec::new();
    for m in raw {
        if let Ok(id) = logic::mutation_id(m) {
            ids.push(id);
        }
        if let (Some(c), Some(r)) =
            (m.get("collection").and_then(Value::as_str), m.get("record_id").and_then(Value::as_str))
        {
            keys.push((c.to_owned(), r.to_owned()));
        }
    }
    (ids, keys)
}

/// Per collection, the highest version among its purged tombstones (missing: none
/// purged). A record created where none exists starts above it.
pub type VersionFloors = HashMap<CollectionName, u64>;

/// Reads [`VersionFloors`] from `sync_purged` rows of (collection, max_version).
pub(crate) fn version_floors(rows: Vec<(String, i64)>) -> VersionFloors {
    rows.into_iter().filter_map(|(c, v)| Some((CollectionName::new(c).ok()?, u64::try_from(v).ok()?))).collect()
}

/// The (collection, record) a raw mutation names, when both parse.
fn raw_key(m: &Value) -> Option<(CollectionName, RecordId)> {
    let collection = CollectionName::new(m.get("collection")?.as_str()?).ok()?;
    let record = RecordId::new(m.get("record_id")?.as_str()?).ok()?;
    Some((collection, record))
}

/// Plans a push from the ledger entries, the current records found for its keys, and
/// the collections' version floors.
pub fn plan_push(
    ctx: &PushContext<'_>,
    raw: &[Value],
    mut ledger: HashMap<Uuid, MutationOutcome>,
    mut current: HashMap<(CollectionName, RecordId), StoredRecord>,
    floors: &VersionFloors,
) -> PushPlan {
    let mut plan = PushPlan::default();
    for m in raw {
        let echo = m.get("mutation_id").cloned().unwrap_or(Value::Null);
        let id = match logic::mutation_id(m) {
            Ok(id) => id,
            Err(outcome) => {
                plan.results.push(WireResult { mutation_id: echo, outcome });
                continue;
            }
        };
        if let Some(original) = ledger.get(&id) {
            // The same decision again, and nothing applied. A conflict shows the record
            // as it is now, not as it was: a device that lost the first answer must not
            // settle on a server side that has since changed, or been deleted and purged
            // (no pull would ever correct it then; found by the property tests).
            let outcome = match original {
                MutationOutcome::Conflict { .. } => {
                    let key = raw_key(m);
                    logic::conflict(key.as_ref().and_then(|k| current.get(k)))
                }
                other => other.clone(),
            };
            plan.results.push(WireResult { mutation_id: echo, outcome });
            continue;
        }
        let outcome = match logic::check(id, m, ctx.collections) {
            Err(outcome) => outcome,
            Ok((mutation, config)) => {
                let key = mutation.record_id.clone().map(|r| (mutation.collection.clone(), r));
                let cur = key.as_ref().and_then(|k| current.get(k));
                match logic::decide(ctx.user, &config.rules, &mutation, cur, |n| ctx.users.contains(n)) {
                    Decision::Answer(outcome) => outcome,
                    Decision::Action => run_action(ctx, &mutation, cur),
                    Decision::Write(mut record) => {
                        // A record created again after its tombstone was purged must not
                        // reuse a version a client may remember (it would skip the create
                        // as stale): it starts above every purged version.
                        if cur.is_none() {
                            record.version = floors.get(&mutation.collection).copied().unwrap_or(0) + 1;
                        }
                        let version = record.version;
                        // A create in a collection whose ids the server assigns is stored
                        // under a new id, answered with it (and replayed by the ledger).
                        let assigned = (cur.is_none()
                            && matches!(mutation.body, MutationBody::Upsert { .. })
                            && ctx.collections.get(&mutation.collection).is_some_and(|c| c.ids == Ids::Server))
                        .then(|| RecordId::new(Uuid::now_v7().to_string()))
                        .and_then(Result::ok);
                        if let Some((collection, rid)) = key {
                            let read = &config.rules.read;
                            let (after, told) = audience_change(read, cur, &record);
                            let keys = read.needs_keys().then_some(after);
                            let rid = assigned.clone().unwrap_or(rid);
                            current.insert((collection.clone(), rid.clone()), record.clone());
                            plan.writes.push(RecordWrite { collection, id: rid, record, mutation_id: id, keys, told });
                        }
                        MutationOutcome::Applied { version: Version(version), record_id: assigned }
                    }
                }
            }
        };
        ledger.insert(id, outcome.clone());
        plan.ledger.push((id, outcome.clone()));
        plan.results.push(WireResult { mutation_id: echo, outcome });
    }
    plan
}

fn run_action(ctx: &PushContext<'_>, m: &logic::Mutation, current: Option<&StoredRecord>) -> MutationOutcome {
    let MutationBody::Action { name, args } = &m.body else {
        return logic::rejected(ErrorCode::InvalidMutation, "only an action runs a handler");
    };
    let Some(handler) = ctx.actions.get(name.as_str()) else {
        return logic::rejected(ErrorCode::UnknownAction, format!("no handler for action {name:?}"));
    };
    let args = Value::Object(args.clone());
    match handler.apply(ctx.user, &m.collection, m.record_id.as_ref(), &args) {
        Ok(()) => MutationOutcome::Applied { version: Version(current.map_or(0, |c| c.version)), record_id: None },
        Err(error) => MutationOutcome::Rejected { error },
    }
}

/// One collection to pull: which of its rows the user reads, and the client's cursor.
#[derive(Debug, Clone)]
pub struct PullItem {
    /// The collection.
    pub collection: CollectionName,
    /// The rows this user reads ([`Rule::scope`] of the collection's read rule).
    pub scope: ReadScope,
    /// Names the read rule and the scope in the collection's cursors
    /// ([`scope_tag`]): a cursor made under another rule, or for a user whose groups or
    /// attributes have changed since, resets.
    pub tag: String,
    /// The client's cursor.
    pub cursor: Option<Cursor>,
    /// The read rule is `owner` or `everyone` alone (today's `access` kinds), under
    /// which a cursor made before scope tags still reads what the user may read.
    pub legacy: bool,
}

impl PullItem {
    /// The item for `user`'s pull of a collection under `read`, from `cursor`.
    pub fn new(collection: CollectionName, read: &Rule, user: &User, cursor: Option<Cursor>) -> Self {
        let scope = read.scope(user);
        let tag = scope_tag(read, &scope);
        let legacy = read.grants == [Grant::Owner] || read.grants == [Grant::Everyone];
        Self { collection, scope, tag, cursor, legacy }
    }
}

/// A short fingerprint of a read rule and a user's scope under it. Cursors carry it
/// beside the database's epoch, so that a change of either (a rule edited in the
/// configuration; a user who joined a team, moved region or became an admin) resets the
/// collection: the device then takes the full set it may read now and drops what it
/// may no longer read, which no feed position could tell it.
pub fn scope_tag(read: &Rule, scope: &ReadScope) -> String {
    short_hash(&format!("{:?}\n{scope:?}", read.grants), 6)
}

/// The first `bytes` bytes of `text`'s SHA-256, in hex.
fn short_hash(text: &str, bytes: usize) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..bytes])
}

/// A mark of a read rule, kept beside the audience keys built for it: when the rule in
/// the configuration no longer matches, the keys are built again at start
/// ([`ServerStore::prepare_rules`]).
pub fn rule_mark(read: &Rule) -> String {
    short_hash(&format!("{:?}", read.grants), 8)
}

/// The change notifications a push causes: which collection changed, for whom.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Touched {
    /// The collection.
    pub collection: CollectionName,
    /// The audience keys of the changed records, before and after the change: the
    /// users holding one of them hear of it (admins always do).
    pub keys: BTreeSet<String>,
    /// The device whose push changed it: its own event stream is not told (it knows).
    pub client: Option<String>,
}

/// One database connection pool's use, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUse {
    /// Which pool (`writer`, `readers`, `main`).
    pub pool: &'static str,
    /// Connections open.
    pub size: u32,
    /// Of those, idle.
    pub idle: u32,
    /// The most it opens.
    pub max: u32,
}

impl PoolUse {
    /// The use of a sqlx pool.
    pub fn of<DB: sqlx::Database>(pool: &'static str, p: &sqlx::Pool<DB>) -> Self {
        let idle = u32::try_from(p.num_idle()).unwrap_or(u32::MAX);
        Self { pool, size: p.size(), idle, max: p.options().get_max_connections() }
    }
}

/// The server's storage. Object-safe; implementations: [`sqlite::SqliteServerStore`],
/// [`postgres::PgServerStore`].
///
/// # Cancel safety
/// Every method may be dropped at any await (an HTTP handler's future is dropped when
/// its client disconnects) without cutting a transaction short: an implementation
/// finishes, commits or rolls back what it started whatever happens to the caller, and
/// never returns a connection to its pool inside a transaction. The bundled stores run
/// each operation in a task of its own ([`detached`]) and check every connection that
/// comes back to a pool ([`rolling_back_on_release`]). A push dropped by its caller may
/// therefore still be applied; the client, which heard no answer, sends it again with
/// the same mutation ids and the ledger answers it.
#[async_trait]
pub trait ServerStore: Send + Sync + 'static {
    /// Applies a push atomically: ledger replays, checks, writes, new ledger entries.
    ///
    /// # Errors
    /// [`ServerError::Database`]; nothing is applied then.
    async fn push(&self, job: PushJob) -> Result<(Vec<WireResult>, Vec<Touched>), ServerError>;

    /// One page of changes the user may read, after the given cursors.
    ///
    /// # Errors
    /// 400 for a malformed cursor; [`ServerError::Database`].
    async fn pull(&self, job: PullJob) -> Result<PullPage, ServerError>;

    /// Brings each collection's stored audience keys in line with its read rule (see
    /// [`crate::rules::key`]): at start, after the configuration's rules changed,
    /// records written before are keyed again (or their keys dropped when the rule no
    /// longer needs them). Returns how many records were keyed; nothing to do costs
    /// one lookup per collection.
    ///
    /// # Errors
    /// [`ServerError::Database`].
    async fn prepare_rules(&self, collections: &BTreeMap<CollectionName, CollectionConfig>)
    -> Result<u64, ServerError>;

    /// Makes the database's subscription indexes exactly those the collections declare
    /// (`subscription_indexes`): missing ones are built, undeclared ones dropped. At
    /// start, before serving. Every node of a shared database must declare the same.
    ///
    /// # Errors
    /// [`ServerError::Database`].
    async fn prepare_indexes(
        &self,
        collections: &BTreeMap<CollectionName, CollectionConfig>,
    ) -> Result<(), ServerError>;

    /// Deletes tombstones last changed before `older_than`; returns how many.
    ///
    /// # Errors
    /// [`ServerError::Database`].
    async fn purge_tombstones(&self, older_than: DateTime<Utc>) -> Result<u64, ServerError>;

    /// For stores shared by several server nodes: starts forwarding every node's change
    /// notifications (this node's included) into `hub` and returns the task; the server
    /// then publishes nothing itself. Stores of one node return None (the default), and
    /// the server publishes each push's changes locally.
    ///
    /// # Errors
    /// [`ServerError::Database`] when the notification channel cannot be opened.
    async fn forward_notifications(&self, hub: &ChangeHub) -> Result<Option<tokio::task::JoinHandle<()>>, ServerError> {
        let _ = hub;
        Ok(None)
    }

    /// The use of the store's connection pools now (for the metrics); none by default.
    fn pool_use(&self) -> Vec<PoolUse> {
        Vec::new()
    }
}

/// Runs one store operation in a task of its own and waits for its answer. This is the
/// first line of the stores' cancel safety: the caller's future may be dropped at any
/// await, but the task runs its transaction to commit or rollback, so no connection is
/// left inside a transaction and no lock is held for a request nobody waits for. The
/// task is told through [`Asker`] whether anyone still waits, so that work queued behind
/// a busy writer for a client that has gone is skipped before it begins rather than done
/// for nobody (after a storm of dropped connections, a backlog of such work delayed every
/// live push by seconds). The alternative that lost: making every await inside the stores
/// cancel-safe by hand; sqlx's own `begin` is not (see [`rolling_back_on_release`]).
///
/// # Errors
/// The operation's own error; [`ServerError::Database`] (retryable) when the task
/// panicked or the runtime is shutting down.
pub async fn detached<T, F, Fut>(work: F) -> Result<T, ServerError>
where
    T: Send + 'static,
    F: FnOnce(Asker) -> Fut,
    Fut: Future<Output = Result<T, ServerError>> + Send + 'static,
{
    let waiting = Arc::new(());
    let task = tokio::spawn(work(Asker(Arc::downgrade(&waiting))));
    let answer = task.await.map_err(|e| {
        tracing::error!(error = %e, "a store task did not finish");
        ServerError::Database { message: format!("store task did not finish: {e}"), retryable: true }
    });
    drop(waiting);
    answer?
}

/// Whether the caller of a [`detached`] operation still waits for its answer.
#[derive(Debug, Clone)]
pub struct Asker(Weak<()>);

impl Asker {
    /// The caller has gone (its future was dropped): work not yet begun may be skipped,
    /// since nobody heard an answer and the client will send the request again.
    pub fn gone(&self) -> bool {
        self.0.strong_count() == 0
    }

    /// `Err` when the caller has gone; stores call it after waiting for a connection and
    /// before beginning a transaction.
    ///
    /// # Errors
    /// [`ServerError::Database`] (retryable), which nobody receives.
    pub fn still_waiting(&self) -> Result<(), ServerError> {
        if self.gone() {
            return Err(ServerError::Database {
                message: "the request went away before its transaction began".into(),
                retryable: true,
            });
        }
        Ok(())
    }
}

/// Pool options that roll back a connection that comes back to the pool inside a
/// transaction, before anyone else can use it (so no lock it holds outlives the request
/// that took it). The second line of the stores' cancel safety, behind [`detached`]:
/// sqlx 0.8 can leave a connection in a transaction when the future of a
/// `BEGIN IMMEDIATE` is dropped after the database began it, and on SQLite that
/// connection then held the write lock until the pool recycled it, 30 minutes later.
/// Logged as an error, because behind [`detached`] it should not happen. A connection
/// whose rollback fails is closed (which rolls back too).
pub(crate) fn rolling_back_on_release<DB: sqlx::Database>(options: PoolOptions<DB>) -> PoolOptions<DB> {
    options.after_release(|conn, _meta| {
        Box::pin(async move {
            let depth = <DB::TransactionManager as TransactionManager>::get_transaction_depth(conn);
            if depth > 0 {
                tracing::error!(depth, "a connection came back to the pool inside a transaction; rolling it back");
                for _ in 0..depth {
                    <DB::TransactionManager as TransactionManager>::rollback(conn).await?;
                }
            }
            Ok(!conn.is_in_transaction())
        })
    })
}

/// Where a collection's pull starts, from the client's parsed cursor (position, and
/// whether its epoch is this database's) and the collection's purged-tombstone mark;
/// true when the client must reset.
pub(crate) fn start_position(parsed: Option<(Position, bool)>, purged: i64) -> (Position, bool) {
    match parsed {
        None => (Position { seq: 0, full: true }, false),
        Some((pos, true)) if pos.full || pos.seq >= purged => (pos, false),
        // Too old (tombstones purged past it) or from another database: start over.
        Some(_) => (Position { seq: 0, full: true }, true),
    }
}

/// The position after a page: the last change sent when more follow, else the feed
/// head read in the same snapshot. A full download keeps its mark only until it has
/// caught up.
pub(crate) fn next_position(start: Position, last_sent: i64, more: bool, head: i64) -> Position {
    let seq = if more { last_sent } else { head.max(start.seq) };
    Position { seq, full: start.full && more }
}

/// Touched collections of a plan, for notifications: per collection, everyone who may
/// read one of its written records before or after the write.
pub(crate) fn touched(plan: &PushPlan, client: &str) -> Vec<Touched> {
    let mut keys: BTreeMap<&CollectionName, BTreeSet<String>> = BTreeMap::new();
    for w in &plan.writes {
        keys.entry(&w.collection).or_default().extend(w.told.iter().cloned());
    }
    keys.into_iter()
        .map(|(collection, keys)| Touched { collection: collection.clone(), keys, client: Some(client.to_owned()) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(seq: i64, full: bool) -> Position {
        Position { seq, full }
    }

    #[test]
    fn where_pulls_start_and_when_they_reset() {
        let cases = [
            (None, 10, (p(0, true), false)),
            (Some((p(12, false), true)), 10, (p(12, false), false)),
            (Some((p(10, false), true)), 10, (p(10, false), false)),
            (Some((p(9, false), true)), 10, (p(0, true), true)),
            (Some((p(3, true), true)), 10, (p(3, true), false)),
            (Some((p(50, false), false)), 10, (p(0, true), true)),
        ];
        for (parsed, purged, expected) in cases {
            assert_eq!(start_position(parsed, purged), expected, "{parsed:?} purged {purged}");
        }
        assert_eq!(next_position(p(0, true), 1000, true, 5000), p(1000, true));
        assert_eq!(next_position(p(1000, true), 1500, false, 5000), p(5000, false));
        assert_eq!(next_position(p(7000, false), 7000, false, 5000), p(7000, false));
    }

    #[test]
    fn a_write_is_heard_by_its_readers_before_and_after_and_a_tombstone_keeps_them() {
        let read = Rule::parse(&["assigned_to = user".into(), "owner".into()], &BTreeSet::new()).unwrap();
        let rec = |to: &str, deleted: bool| StoredRecord {
            version: 1,
            deleted,
            owner: "disp".into(),
            data: (!deleted).then(|| serde_json::json!({ "assigned_to": to })),
        };
        let keys = |k: &[&str]| k.iter().map(|k| (*k).to_owned()).collect::<BTreeSet<_>>();
        // Reassigned from tom to ann: ann's keys are stored, both hear of it.
        let (after, told) = audience_change(&read, Some(&rec("tom", false)), &rec("ann", false));
        assert_eq!(after, keys(&["u:ann", "u:disp"]));
        assert_eq!(told, keys(&["u:ann", "u:disp", "u:tom"]));
        // Deleted: the tombstone keeps tom's keys, so tom hears of the delete.
        let (after, told) = audience_change(&read, Some(&rec("tom", false)), &rec("", true));
        assert_eq!(after, keys(&["u:disp", "u:tom"]));
        assert_eq!(told, after);
        // Created: only its new readers.
        let (after, told) = audience_change(&read, None, &rec("tom", false));
        assert_eq!((after.clone(), told), (keys(&["u:disp", "u:tom"]), after));
    }

    #[tokio::test]
    async fn detached_work_runs_to_the_end_when_its_caller_goes() {
        let (finished, done) = tokio::sync::oneshot::channel();
        let call = detached(|asker| async move {
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            let _ = finished.send(asker.gone());
            Ok(())
        });
        // The caller gives up (as an HTTP handler does when its client disconnects)...
        assert!(tokio::time::timeout(std::time::Duration::from_millis(1), call).await.is_err());
        // ...and the work still finishes, knowing nobody waits for it.
        assert_eq!(done.await.ok(), Some(true));
    }

    #[tokio::test]
    async fn an_asker_is_waiting_while_its_caller_is() {
        let answer = detached(|asker| async move { Ok((asker.gone(), asker.still_waiting().is_ok())) }).await;
        assert_eq!(answer.ok(), Some((false, true)));
    }

    #[tokio::test]
    async fn a_store_task_that_panics_is_a_retryable_database_error() {
        #[allow(clippy::panic)]
        let answer: Result<(), ServerError> = detached(|_| async { panic!("store bug") }).await;
        assert!(matches!(answer, Err(ServerError::Database { retryable: true, .. })), "{answer:?}");
    }
}

//! The server-store boundary (`ServerStore`) and the push planning both stores share.

pub mod postgres;
pub mod sqlite;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sync_core::protocol::{ErrorDetail, MutationOutcome, Op, PullResponse};
use sync_core::{CollectionName, Cursor, RecordId, Version};
use uuid::Uuid;

use crate::config::{Access, CollectionConfig, Ids};
use crate::cursor::Position;
use crate::error::ServerError;
use crate::events::ChangeHub;
use crate::logic::{self, Decision, StoredRecord, User, WireResult};

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
    /// How many changes `changes` holds (not on the wire).
    #[serde(skip)]
    pub count: usize,
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
        Ok(PullResponse { changes, cursors: self.cursors, has_more: self.has_more, reset: self.reset })
    }
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
        let mut joined = String::with_capacity(self.parts.iter().map(|p| p.len()).sum::<usize>() + 2);
        joined.push('[');
        for (i, part) in self.parts.iter().enumerate() {
            let inner = part.trim().strip_prefix('[').and_then(|p| p.strip_suffix(']')).ok_or_else(|| {
                ServerError::Database { message: "page is not a JSON array".into(), retryable: false }
            })?;
            if i > 0 {
                joined.push(',');
            }
            joined.push_str(inner);
        }
        joined.push(']');
        let changes = RawValue::from_string(joined)
            .map_err(|e| ServerError::Database { message: format!("page JSON: {e}"), retryable: false })?;
        Ok(PullPage { changes, cursors: self.cursors, has_more: self.has_more, reset: self.reset, count: self.count })
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

/// Everything a push is checked against.
pub struct PushContext<'a> {
    /// Who pushes.
    pub user: &'a User,
    /// The served collections.
    pub collections: &'a BTreeMap<CollectionName, CollectionConfig>,
    /// Every configured user name (for `owner`).
    pub users: &'a HashSet<String>,
    /// Action handlers by name.
    pub actions: &'a HashMap<String, Arc<dyn ActionHandler>>,
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
            Ok((mutation, access)) => {
                let key = mutation.record_id.clone().map(|r| (mutation.collection.clone(), r));
                let cur = key.as_ref().and_then(|k| current.get(k));
                match logic::decide(ctx.user, access, &mutation, cur, |n| ctx.users.contains(n)) {
                    Decision::Answer(outcome) => outcome,
                    Decision::Action => run_action(ctx, &mutation, cur, access),
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
                            && mutation.op == Op::Upsert
                            && ctx.collections.get(&mutation.collection).is_some_and(|c| c.ids == Ids::Server))
                        .then(|| RecordId::new(Uuid::now_v7().to_string()))
                        .and_then(Result::ok);
                        if let Some((collection, rid)) = key {
                            let rid = assigned.clone().unwrap_or(rid);
                            current.insert((collection.clone(), rid.clone()), record.clone());
                            plan.writes.push(RecordWrite { collection, id: rid, record });
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

fn run_action(
    ctx: &PushContext<'_>,
    m: &logic::Mutation,
    current: Option<&StoredRecord>,
    _access: Access,
) -> MutationOutcome {
    let name = m.action.as_deref().unwrap_or_default();
    let Some(handler) = ctx.actions.get(name) else {
        return logic::rejected("unknown_action", format!("no handler for action {name:?}"));
    };
    let args = m.args.clone().unwrap_or(Value::Null);
    match handler.apply(ctx.user, &m.collection, m.record_id.as_ref(), &args) {
        Ok(()) => MutationOutcome::Applied { version: Version(current.map_or(0, |c| c.version)), record_id: None },
        Err(error) => MutationOutcome::Rejected { error },
    }
}

/// One collection to pull: its access and the client's cursor.
#[derive(Debug, Clone)]
pub struct PullItem {
    /// The collection.
    pub collection: CollectionName,
    /// Who may read what.
    pub access: Access,
    /// The client's cursor.
    pub cursor: Option<Cursor>,
}

/// The change notifications a push causes: who may hear about which collection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Touched {
    /// The collection.
    pub collection: CollectionName,
    /// The owner of the changed record.
    pub owner: String,
}

/// The server's storage. Object-safe; implementations: [`sqlite::SqliteServerStore`].
#[async_trait]
pub trait ServerStore: Send + Sync + 'static {
    /// Applies a push atomically: ledger replays, checks, writes, new ledger entries.
    ///
    /// # Errors
    /// [`ServerError::Database`]; nothing is applied then.
    async fn push(&self, ctx: &PushContext<'_>, raw: &[Value]) -> Result<(Vec<WireResult>, Vec<Touched>), ServerError>;

    /// One page of changes the user may read, after the given cursors.
    ///
    /// # Errors
    /// 400 for a malformed cursor; [`ServerError::Database`].
    async fn pull(&self, user: &User, items: &[PullItem], limit: usize) -> Result<PullPage, ServerError>;

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

/// Touched collections of a plan, for notifications.
pub(crate) fn touched(plan: &PushPlan) -> Vec<Touched> {
    let set: HashSet<Touched> = plan
        .writes
        .iter()
        .map(|w| Touched { collection: w.collection.clone(), owner: w.record.owner.clone() })
        .collect();
    set.into_iter().collect()
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
}

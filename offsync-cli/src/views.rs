//! What each read command reports, as plain serializable structs: `--json` prints them
//! as they are, and `text.rs` lays them out for people.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sync_core::store::{Conflict, OutboxEntry, PendingChange, RecordState};
use sync_patterns::diff::{FieldDiff, field_diff};
use sync_sqlite::{RecordDetail, StoreSummary};

/// `offsync status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// The store file.
    pub store: String,
    /// The newest schema step applied to it.
    pub schema_version: i64,
    /// The device's client id (None until an engine first ran on it).
    pub client_id: Option<String>,
    /// The account it is bound to.
    pub account: Option<String>,
    /// Queued mutations (not parked).
    pub pending: u64,
    /// Open conflicts.
    pub conflicts: u64,
    /// Parked mutations.
    pub failed: u64,
    /// The most recent page any collection took from the server.
    pub last_sync: Option<DateTime<Utc>>,
    /// Each collection.
    pub collections: Vec<CollectionStatus>,
    /// Who syncs the store now, if anyone (a lapsed lease is shown as None).
    pub syncing: Option<Syncing>,
}

/// One collection in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionStatus {
    /// Its name.
    pub name: String,
    /// Live records.
    pub records: u64,
    /// Queued mutations.
    pub pending: u64,
    /// The server's cursor (None: never pulled).
    pub cursor: Option<String>,
    /// When it last took a page from the server.
    pub synced_at: Option<DateTime<Utc>>,
}

/// The sync lease's holder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Syncing {
    /// The engine instance holding it.
    pub holder: String,
    /// When it lapses unless renewed.
    pub until: DateTime<Utc>,
}

impl Status {
    /// The status of the store at `store`, from its summary, at `now` (a lease that has
    /// lapsed by then syncs nothing).
    pub fn new(store: String, summary: StoreSummary, now: DateTime<Utc>) -> Self {
        let last_sync = summary.collections.iter().filter_map(|c| c.synced_at).max();
        Self {
            store,
            schema_version: summary.schema_version,
            client_id: summary.client_id,
            account: summary.account,
            pending: summary.counts.pending,
            conflicts: summary.counts.conflicts,
            failed: summary.counts.failed,
            last_sync,
            collections: summary
                .collections
                .into_iter()
                .map(|c| CollectionStatus {
                    name: c.name.to_string(),
                    records: c.records,
                    pending: c.pending,
                    cursor: c.cursor.map(|c| c.0),
                    synced_at: c.synced_at,
                })
                .collect(),
            syncing: summary
                .lease
                .filter(|l| l.expires_at > now)
                .map(|l| Syncing { holder: l.holder, until: l.expires_at }),
        }
    }
}

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Its place in the outbox.
    pub seq: i64,
    /// The mutation id (what `retry` and `discard` take).
    pub mutation_id: String,
    /// `queued` or `parked`.
    pub state: &'static str,
    /// The collection.
    pub collection: String,
    /// The record, if any.
    pub record_id: Option<String>,
    /// `upsert`, `delete` or `action`.
    pub op: &'static str,
    /// The action's name.
    pub action: Option<String>,
    /// The data (local shape) or the action's arguments.
    pub data: Option<Value>,
    /// The base version it was last sent with.
    pub base_version: Option<u64>,
    /// How many pushes carried it.
    pub attempts: u32,
    /// The server's error, for a parked entry.
    pub error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
}

impl Entry {
    /// The view of `entry`; `parked` says whether it waits for retry or discard.
    pub fn new(entry: OutboxEntry, parked: bool) -> Self {
        Self {
            seq: entry.seq,
            mutation_id: entry.mutation_id.to_string(),
            state: if parked { "parked" } else { "queued" },
            collection: entry.collection.to_string(),
            record_id: entry.record_id.map(|r| r.to_string()),
            op: entry.op.as_str(),
            action: entry.action,
            data: entry.data,
            base_version: entry.base_version.map(|v| v.0),
            attempts: entry.attempts,
            error: entry.last_error,
            created_at: entry.created_at,
        }
    }
}

/// `offsync outbox`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outbox {
    /// Queued entries.
    pub queued: u64,
    /// Parked entries.
    pub parked: u64,
    /// Every entry, in outbox order.
    pub entries: Vec<Entry>,
}

/// One open conflict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConflictView {
    /// The collection.
    pub collection: String,
    /// The record.
    pub record_id: String,
    /// The local mutation that met it, when a push found it.
    pub mutation_id: Option<String>,
    /// When it was found.
    pub detected_at: DateTime<Utc>,
    /// The server's version (None: the record is gone there).
    pub server_version: Option<u64>,
    /// The version of the base.
    pub base_version: Option<u64>,
    /// The device's data (None: deleted here).
    pub local: Option<Value>,
    /// The server's data (None: deleted or missing there).
    pub server: Option<Value>,
    /// The data both started from.
    pub base: Option<Value>,
    /// The fields that differ, and who changed them.
    pub fields: Vec<FieldDiff>,
}

impl From<Conflict> for ConflictView {
    fn from(c: Conflict) -> Self {
        let server = c.server.as_ref().and_then(|s| if s.deleted { None } else { s.data.clone() });
        Self {
            fields: field_diff(c.base.as_ref(), c.local.as_ref(), server.as_ref()),
            collection: c.collection.to_string(),
            record_id: c.record_id.to_string(),
            mutation_id: c.mutation_id.map(|m| m.to_string()),
            detected_at: c.detected_at,
            server_version: c.server.as_ref().map(|s| s.version.0),
            base_version: c.base_version.map(|v| v.0),
            local: c.local,
            server,
            base: c.base,
        }
    }
}

/// `offsync record`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordView {
    /// The collection.
    pub collection: String,
    /// The record id.
    pub id: String,
    /// `synced`, `pending_create`, `pending_update`, `pending_delete`, `pending_action`,
    /// `conflict` or `failed`.
    pub state: &'static str,
    /// Deleted here.
    pub deleted: bool,
    /// The server version the local data is based on.
    pub server_version: Option<u64>,
    /// When it last changed.
    pub modified_at: DateTime<Utc>,
    /// The local data.
    pub data: Option<Value>,
    /// The last data the server acknowledged.
    pub base: Option<Value>,
    /// Its mutations in the outbox.
    pub queued: Vec<Entry>,
}

impl From<RecordDetail> for RecordView {
    fn from(r: RecordDetail) -> Self {
        Self {
            collection: r.collection.to_string(),
            id: r.id.to_string(),
            state: state_name(r.state),
            deleted: r.deleted,
            server_version: r.server_version.map(|v| v.0),
            modified_at: r.modified_at,
            data: r.data,
            base: r.base,
            queued: r.queued.into_iter().map(|q| Entry::new(q.entry, q.parked)).collect(),
        }
    }
}

/// The name a record state is shown by.
pub fn state_name(state: RecordState) -> &'static str {
    match state {
        RecordState::Synced => "synced",
        RecordState::Pending(PendingChange::Create) => "pending_create",
        RecordState::Pending(PendingChange::Update) => "pending_update",
        RecordState::Pending(PendingChange::Delete) => "pending_delete",
        RecordState::Pending(PendingChange::Action) => "pending_action",
        RecordState::Conflict => "conflict",
        RecordState::Failed => "failed",
    }
}

//! The storage boundary: the `LocalStore` trait and the records, outbox entries and
//! conflicts that cross it. The engine never sees SQL.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::Error;
use crate::ids::{AccountId, ClientId, CollectionName, Cursor, MutationId, RecordId, Version};
use crate::pattern::{LocalRecordState, PullAction};
use crate::protocol::{Change, MutationOutcome, Op, ServerRecord};
pub use crate::query::{After, Cmp, Filter, IndexSpec, Order, Query, Scalar};
use crate::subscription::{SubscriptionId, SubscriptionRow};

/// The JSON text of a record's data, checked once to be an object. Writes carry text,
/// not a `serde_json::Value`, so an entity is serialized exactly once on its way to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonObject(String);

impl JsonObject {
    /// Serializes `value`, which must serialize to a JSON object.
    ///
    /// # Errors
    /// serde's message, or a note that the value is not an object.
    pub fn from_serialize<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, String> {
        let text = serde_json::to_string(value).map_err(|e| e.to_string())?;
        if text.starts_with('{') { Ok(Self(text)) } else { Err("an entity must serialize to a JSON object".into()) }
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a local write does to its record.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteKind {
    /// Create a record; fails with [`Error::AlreadyExists`] when it exists.
    Insert {
        /// The record's data (local shape).
        data: JsonObject,
    },
    /// Replace an existing record; fails with [`Error::NotFound`] when it does not exist.
    Update {
        /// The record's data (local shape).
        data: JsonObject,
    },
    /// Delete an existing record; fails with [`Error::NotFound`] when it does not exist.
    Delete,
    /// Queue a named custom action; the record (if any) is not changed locally.
    Action {
        /// The action's name.
        name: String,
        /// Its arguments.
        args: Value,
    },
}

/// One local write: the record change and the outbox entry it queues, committed together.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalWrite {
    /// The outbox entry's idempotency key.
    pub mutation_id: MutationId,
    /// The collection.
    pub collection: CollectionName,
    /// The record (optional for actions).
    pub record_id: Option<RecordId>,
    /// What happens.
    pub kind: WriteKind,
    /// Whether the push carries the record's server version as `base_version`
    /// (the pattern decides).
    pub versioned: bool,
    /// When the write was made.
    pub at: DateTime<Utc>,
}

/// The sync state of a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    /// Equal to the server's last known version.
    Synced,
    /// Local changes wait in the outbox; the newest one is of this kind.
    Pending(PendingChange),
    /// An open conflict holds the record.
    Conflict,
    /// The server refused one of its changes for good (parked); later changes wait
    /// behind it until the app retries or discards it.
    Failed,
}

/// The kind of the newest local change waiting to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingChange {
    /// The record was created here and the server has not acknowledged it yet.
    Create,
    /// The record was changed here.
    Update,
    /// The record was deleted here (shown only when a query asks for pending deletes).
    Delete,
    /// A custom action on the record waits; its data is unchanged here.
    Action,
}

/// A record as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    /// The collection.
    pub collection: CollectionName,
    /// The record id.
    pub id: RecordId,
    /// The app's data (local shape).
    pub data: Value,
    /// The server version the local data is based on (None: never synced).
    pub server_version: Option<Version>,
    /// Its sync state.
    pub state: RecordState,
    /// When it last changed locally or from the server.
    pub modified_at: DateTime<Utc>,
}

/// A record's id and its data as the store holds it (JSON text), for reads that decode
/// straight into the app's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordData {
    /// The record id.
    pub id: RecordId,
    /// The app's data (local shape), as JSON text.
    pub json: String,
}

/// A dotted path into a record's JSON data, such as `status` or `site.city`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    /// Parses a path of `.`-separated names of ASCII letters, digits and `_`.
    ///
    /// # Errors
    /// [`Error::InvalidQuery`] for anything else (so that paths can never inject SQL).
    pub fn new(path: &str) -> Result<Self, Error> {
        let ok = !path.is_empty()
            && path.len() <= 256
            && path
                .split('.')
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if ok {
            Ok(Self(path.to_owned()))
        } else {
            Err(Error::InvalidQuery { message: format!("invalid field path {path:?}") })
        }
    }

    /// The path as written, `a.b`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Sets the field at this path in `value` to `new`, creating missing objects on the
    /// way. Returns false (and changes nothing) when a step is not an object.
    pub fn set(&self, value: &mut Value, new: Value) -> bool {
        let mut parts = self.0.split('.').peekable();
        let mut node = value;
        while let Some(part) = parts.next() {
            let Some(object) = node.as_object_mut() else { return false };
            if parts.peek().is_none() {
                object.insert(part.to_owned(), new);
                return true;
            }
            node = object.entry(part.to_owned()).or_insert_with(|| Value::Object(serde_json::Map::new()));
        }
        false
    }

    /// The value at this path in `value`, if any.
    pub fn get<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        self.0.split('.').try_fold(value, |node, part| node.get(part))
    }

    /// The JSON path form, `$.a.b`.
    pub fn json_path(&self) -> String {
        format!("$.{}", self.0)
    }
}

/// One entry of the persisted outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Its position in the outbox (increasing with time).
    pub seq: i64,
    /// The idempotency key.
    pub mutation_id: MutationId,
    /// The collection.
    pub collection: CollectionName,
    /// The record (optional for actions).
    pub record_id: Option<RecordId>,
    /// What it does.
    pub op: Op,
    /// The action name, for actions.
    pub action: Option<String>,
    /// The data (local shape) for upserts, the args for actions, None for deletes.
    pub data: Option<Value>,
    /// The base version sent with it (filled in when the entry is claimed for a push).
    pub base_version: Option<Version>,
    /// Whether it is pushed with a base version.
    pub versioned: bool,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// How many pushes carried it.
    pub attempts: u32,
    /// The last error the server gave it (for parked entries).
    pub last_error: Option<String>,
}

/// A stored conflict: both sides and the base, for a resolver or a UI.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The collection.
    pub collection: CollectionName,
    /// The record.
    pub record_id: RecordId,
    /// The local mutation that met the conflict, if it was detected by a push.
    pub mutation_id: Option<MutationId>,
    /// The local data now (None: deleted locally).
    pub local: Option<Value>,
    /// The server's record (None: it does not exist on the server), in local shape.
    pub server: Option<ServerRecord>,
    /// The last server-acknowledged data the local edits started from.
    pub base: Option<Value>,
    /// The version of `base`.
    pub base_version: Option<Version>,
    /// When it was detected.
    pub detected_at: DateTime<Utc>,
}

/// How a conflict is settled in the store.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreResolution {
    /// Push the local data (or delete) over the server's version.
    KeepLocal,
    /// Take the server's record and drop the local edits.
    KeepServer,
    /// Push this merged value over the server's version.
    Merged(Value),
}

/// What [`LocalStore::evict`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evicted {
    /// The records evicted.
    pub records: Vec<(CollectionName, RecordId)>,
    /// The bytes they freed, as [`LocalStore::cache_size`] counted them.
    pub bytes: u64,
}

/// The changes of one collection in one pull page, in local shape.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionPage {
    /// The collection.
    pub collection: CollectionName,
    /// The changes go to the collection's staging area, not into its records: the
    /// collection is being replaced (a read-only pattern, or a resync after `reset`) and
    /// its records stay whole until [`LocalStore::finish_replacement`]. The page's cursor
    /// is then not stored either.
    pub stage: bool,
    /// A replacement starts with this page: empty the staging area first (it may hold
    /// what an interrupted replacement left).
    pub reset: bool,
    /// The changes.
    pub changes: Vec<Change>,
    /// The cursor to store with them.
    pub cursor: Option<Cursor>,
    /// The changes are a subscription's (never staged): `reset` then marks its records
    /// for a new download, the cursor is the subscription's, and a removal lets go of a
    /// record only for this subscription.
    pub subscription: Option<SubscriptionPart>,
}

/// A subscription's page, as [`CollectionPage::subscription`].
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionPart {
    /// The subscription.
    pub id: SubscriptionId,
    /// Its download ends with this page: the records a reset marked and the server did
    /// not send again are let go of, and the subscription counts as synced at the
    /// page's time.
    pub finished: bool,
}

/// What applying a pull page did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PageApplied {
    /// Records whose local data changed.
    pub changed: Vec<(CollectionName, RecordId)>,
    /// Records that now have a new conflict.
    pub conflicts: Vec<(CollectionName, RecordId)>,
}

/// What applying push results did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushApplied {
    /// Mutations the server applied.
    pub applied: usize,
    /// Records that now have a new conflict.
    pub conflicts: Vec<(CollectionName, RecordId)>,
    /// Mutations parked as failed, with their code and message.
    pub rejected: Vec<(OutboxEntry, crate::protocol::ErrorCode, String)>,
    /// Records the server gave ids of its own: renamed from the local id to the server's.
    pub renamed: Vec<IdAssigned>,
    /// Records whose foreign keys were rewritten to a renamed parent's new id.
    pub repointed: Vec<(CollectionName, RecordId)>,
}

/// A record the server stored under an id of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdAssigned {
    /// The collection.
    pub collection: CollectionName,
    /// The id it was created with on this device.
    pub local_id: RecordId,
    /// The id the server gave it, which it has locally from now on.
    pub server_id: RecordId,
}

/// A one-to-many link between two collections, as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// The collection whose records hold the key.
    pub child: CollectionName,
    /// The child's field holding the parent's id.
    pub field: FieldPath,
    /// The collection the key points into.
    pub parent: CollectionName,
}

/// What the store must know of how collections relate when it claims pushes and
/// records their answers: the foreign keys (parents are pushed before children, deletes
/// go children first, keys follow a renamed parent) and the collections whose ids the
/// server assigns (with the field of the data that holds the record's own id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relations {
    /// Every foreign key between registered collections.
    pub foreign_keys: Vec<ForeignKey>,
    /// Collections whose created records the server may rename, with their id field.
    pub server_ids: Vec<(CollectionName, Option<FieldPath>)>,
}

impl Relations {
    /// True when a push answer may rename records of `collection`.
    pub fn server_assigns_ids(&self, collection: &CollectionName) -> bool {
        self.server_ids.iter().any(|(c, _)| c == collection)
    }
}

/// Counts shown in the sync status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Queued mutations (not parked).
    pub pending: u64,
    /// Open conflicts.
    pub conflicts: u64,
    /// Parked (failed) mutations.
    pub failed: u64,
}

/// Decides, inside the store's page transaction, what an incoming change does.
pub type PullDecider<'a> =
    &'a (dyn Fn(&CollectionName, Option<&LocalRecordState>, &Change) -> PullAction + Send + Sync);

/// The local store the engine runs on. Object-safe: the engine holds an
/// `Arc<dyn LocalStore>`. Every method is atomic: it either commits entirely or changes
/// nothing.
#[async_trait]
pub trait LocalStore: Send + Sync + 'static {
    /// This device's client id, created on first use and kept.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn client_id(&self) -> Result<ClientId, Error>;

    /// The account this store belongs to; None until [`LocalStore::bind_account`].
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn account(&self) -> Result<Option<AccountId>, Error>;

    /// Binds the store to `account` the first time (atomically: of two racing calls one
    /// wins), and afterwards checks that `account` is the one it is bound to. The engine
    /// calls it before any token of `account` may carry this store's queue.
    ///
    /// # Errors
    /// [`Error::AccountMismatch`] when the store belongs to another account (nothing
    /// changes); [`Error::Storage`].
    async fn bind_account(&self, account: &AccountId) -> Result<(), Error>;

    /// Whether the store writes to disk. The default says yes, which is the safe
    /// answer for [`crate::EngineBuilder::trusted_device`]`(false)`: an untrusted device
    /// then refuses the store instead of writing to disk.
    fn on_disk(&self) -> bool {
        true
    }

    /// A new, empty store of the same kind that keeps nothing on disk, for the
    /// collections the app keeps in memory only ([`crate::CollectionSpec::keep_in_memory`]).
    ///
    /// # Errors
    /// [`Error::Config`] from a store that has no such thing (the default).
    async fn in_memory_sibling(&self) -> Result<Arc<dyn LocalStore>, Error> {
        Err(Error::Config { message: "this store cannot make a memory-only store for memory-only collections".into() })
    }

    /// Whether the store encrypts what it writes to disk. A session token is kept in a
    /// store only when it is ([`crate::EngineBuilder::persist_token`]).
    fn encrypted(&self) -> bool {
        false
    }

    /// Keeps the session token with the store's data, or forgets it (None). Asked only
    /// of stores that are [`LocalStore::encrypted`]; the default keeps nothing and
    /// refuses to.
    ///
    /// # Errors
    /// [`Error::Config`] from a store that cannot keep secrets; [`Error::Storage`].
    async fn save_token(&self, token: Option<&str>) -> Result<(), Error> {
        match token {
            None => Ok(()),
            Some(_) => Err(Error::Config { message: "this store cannot keep a token".into() }),
        }
    }

    /// The token kept by [`LocalStore::save_token`], if any.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn saved_token(&self) -> Result<Option<String>, Error> {
        Ok(None)
    }

    /// Closes the store and deletes everything it holds: for a file store, the database
    /// file and its `-wal` and `-shm` companions. Every later call fails with
    /// [`Error::Shutdown`].
    ///
    /// # Errors
    /// [`Error::Storage`] when a file cannot be removed (the store is closed anyway).
    async fn destroy(&self) -> Result<(), Error>;

    /// Applies one local write and queues its mutation in one transaction, coalescing
    /// as ARCHITECTURE.md describes: an update folds into an unsent create; deleting a record the
    /// server never saw drops its queued mutations and queues nothing.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::AlreadyExists`], [`Error::Storage`].
    async fn write(&self, write: LocalWrite) -> Result<(), Error>;

    /// Applies many writes in one transaction: all or none.
    ///
    /// # Errors
    /// As [`LocalStore::write`]; on error nothing is written.
    async fn write_many(&self, writes: Vec<LocalWrite>) -> Result<(), Error>;

    /// One live record (None when missing or deleted).
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<StoredRecord>, Error>;

    /// The records matching a query, in its order, each with its sync state.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn query(&self, query: &Query) -> Result<Vec<StoredRecord>, Error>;

    /// The ids and JSON text of the records matching a query, in its order, without
    /// their sync state: what `fetch` and live queries read. A store can answer it with
    /// less work than [`LocalStore::query`] (no state lookups, no parsed JSON); the
    /// default takes the query's records and writes their data back out.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn query_data(&self, query: &Query) -> Result<Vec<RecordData>, Error> {
        self.query(query).await?.into_iter().map(|r| Ok(RecordData { json: r.data.to_string(), id: r.id })).collect()
    }

    /// Those of `ids` that match the query's filter and follow its keyset position, if it
    /// has one (its order, limit and offset ignored): how a live query tells whether a
    /// change can affect it without running it. The default runs the query; a store can
    /// look the ids up directly.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn matching(&self, query: &Query, ids: &[RecordId]) -> Result<Vec<RecordId>, Error> {
        let all = Query { limit: None, offset: None, ..query.clone() };
        let wanted: std::collections::HashSet<&RecordId> = ids.iter().collect();
        Ok(self.query(&all).await?.into_iter().map(|r| r.id).filter(|id| wanted.contains(id)).collect())
    }

    /// [`LocalStore::matching`] for several queries at once, answers in the same order:
    /// how the live queries woken by one change ask in one trip. The default asks one by
    /// one; a store can answer all in one statement.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn matching_each(&self, asks: &[(Query, Vec<RecordId>)]) -> Result<Vec<Vec<RecordId>>, Error> {
        let mut answers = Vec::with_capacity(asks.len());
        for (query, ids) in asks {
            answers.push(self.matching(query, ids).await?);
        }
        Ok(answers)
    }

    /// How many records match a query (its limit, offset and order ignored).
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn count(&self, query: &Query) -> Result<u64, Error> {
        let all = Query { limit: None, offset: None, ..query.clone() };
        Ok(self.query(&all).await?.len() as u64)
    }

    /// Takes or renews the store's sync lease for `holder` until `now + ttl`, unless
    /// another holder's lease is still live ([`crate::lease::decide_lease`]). Stores that
    /// several processes can open keep it in the store; the default (a store only this
    /// process can open) always grants it.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn acquire_sync_lease(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<crate::lease::LeaseOutcome, Error> {
        let _ = (holder, now, ttl);
        Ok(crate::lease::LeaseOutcome::Held)
    }

    /// Gives the sync lease back if `holder` holds it (nothing otherwise).
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn release_sync_lease(&self, holder: &str) -> Result<(), Error> {
        let _ = holder;
        Ok(())
    }

    /// A signal that changes whenever another process commits to this store, for stores
    /// that several processes can open (None: only this process writes it, the default).
    /// The engine then re-runs its live queries and pushes what the other process queued.
    fn external_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Drops `collection`'s declared indexes for a bulk load (a first download): building
    /// an index once over sorted data is cheaper than keeping it up to date row by row.
    /// The engine puts them back with [`LocalStore::ensure_indexes`] when the load ends,
    /// and at its next start if it stopped half way. The default does nothing.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn suspend_indexes(&self, collection: &CollectionName) -> Result<(), Error> {
        let _ = collection;
        Ok(())
    }

    /// Makes the store's indexes of `collections` exactly `indexes`: creates the missing
    /// ones and drops those no longer declared (other collections' are left alone). The
    /// engine calls it when it starts. The default keeps no indexes.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn ensure_indexes(&self, collections: &[CollectionName], indexes: &[IndexSpec]) -> Result<(), Error> {
        let _ = (collections, indexes);
        Ok(())
    }

    /// Takes the next mutations to push: for each record only its oldest entry, and only
    /// when that entry is queued (not parked) and the record has no open conflict; in
    /// outbox order, at most `limit`. Claiming counts an attempt and fixes the base
    /// version, in the same statement, so a local write can no longer fold into them.
    ///
    /// Along `relations`' foreign keys, a child's upsert waits while the parent it
    /// points at is stored locally and the server never acknowledged it (parents first),
    /// and a parent's delete waits while a child that points at it (in its local data
    /// or its acknowledged base) has mutations queued or parked (children first).
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn claim_push_batch(
        &self,
        collections: &[CollectionName],
        limit: usize,
        relations: &Relations,
    ) -> Result<Vec<OutboxEntry>, Error>;

    /// Records the server's answers to a push in one transaction. `outcomes` pairs each
    /// pushed entry with its answer (server data already in local shape).
    ///
    /// An applied upsert answered with another `record_id` (a collection in
    /// `relations.server_ids`) renames the record, its queued mutations and its id
    /// field to the server's id, rewrites the foreign keys of every child pointing at
    /// the local id (records and queued mutations), and remembers the mapping.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn record_push_results(
        &self,
        outcomes: Vec<(OutboxEntry, MutationOutcome)>,
        relations: &Relations,
        at: DateTime<Utc>,
    ) -> Result<PushApplied, Error>;

    /// The id the server gave a record created here as `local_id` (None: it was never
    /// renamed).
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn server_id(&self, collection: &CollectionName, local_id: &RecordId) -> Result<Option<RecordId>, Error>;

    /// The stored cursor of a collection.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn cursor(&self, collection: &CollectionName) -> Result<Option<Cursor>, Error>;

    /// Whether the collection holds any record the server acknowledged (a server
    /// version). A pull from no cursor is then staged and swapped in like a resync, so
    /// that acknowledged records the server no longer has (deleted, and the tombstone
    /// purged, before this device ever pulled) are swept. The default says yes, which
    /// is always correct; a store that can tell saves a fresh device's first download
    /// from being written twice.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn holds_acknowledged(&self, collection: &CollectionName) -> Result<bool, Error> {
        let _ = collection;
        Ok(true)
    }

    /// Applies a pull page and stores its cursors in one transaction. `decide` says for
    /// each change whether it applies, is skipped or makes a conflict.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn apply_pull_page(
        &self,
        pages: Vec<CollectionPage>,
        decide: PullDecider<'_>,
        at: DateTime<Utc>,
    ) -> Result<PageApplied, Error>;

    /// Ends a collection's replacement in one transaction: applies the staged records
    /// (through `decide`, as a pull page would), deletes the collection's clean records
    /// the server no longer has, stores `cursor` and empties the staging area. Records
    /// with pending mutations or an open conflict are never swept. A crash before this
    /// call leaves the old records whole.
    ///
    /// # Errors
    /// [`Error::Storage`]; nothing changes then.
    async fn finish_replacement(
        &self,
        collection: &CollectionName,
        cursor: Option<Cursor>,
        decide: PullDecider<'_>,
        at: DateTime<Utc>,
    ) -> Result<PageApplied, Error>;

    /// Saves a subscription the app made or changed: its query, time to live,
    /// keep-synced, held and released marks. A stored one keeps its cursor and its
    /// synced time. The default refuses: a store that keeps no subscriptions serves no
    /// collection on demand.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn save_subscription(&self, row: &SubscriptionRow) -> Result<(), Error> {
        Err(Error::Config { message: format!("this store keeps no subscriptions ({})", row.id) })
    }

    /// Every stored subscription.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn subscriptions(&self) -> Result<Vec<SubscriptionRow>, Error> {
        Ok(Vec::new())
    }

    /// Forgets subscriptions: their rows, their hold on records, and the records no
    /// other subscription holds that have no pending write or open conflict. Returns
    /// the records dropped.
    ///
    /// # Errors
    /// [`Error::Storage`]; nothing changes then.
    async fn drop_subscriptions(&self, ids: &[SubscriptionId]) -> Result<Vec<(CollectionName, RecordId)>, Error> {
        let _ = ids;
        Ok(Vec::new())
    }

    /// Notes when the app last read records of collections synced on demand (the engine
    /// gathers reads in memory and hands them over in batches): eviction goes by these
    /// marks, least recently used first. A mark never moves back in time.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn touch(&self, used: &[(CollectionName, RecordId, DateTime<Utc>)]) -> Result<(), Error> {
        let _ = used;
        Ok(())
    }

    /// The size the cache budget counts, in bytes: the records subscriptions hold that
    /// could be evicted (no pending write, no open conflict, held by no kept-synced
    /// subscription), each counted once.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn cache_size(&self) -> Result<u64, Error> {
        Ok(0)
    }

    /// Evicts records until at least `excess` bytes of the size [`LocalStore::cache_size`]
    /// counts are freed (or nothing evictable is left): first those held only by
    /// released subscriptions, then those of held ones, least recently used first. A
    /// record with a pending write, an open conflict or a kept-synced subscription is
    /// never evicted, even when it became so after the choice was made. The evicted
    /// records' memberships stay, marked: holding such a subscription again downloads it
    /// again. Local writes may run between the chunks an eviction works in.
    ///
    /// # Errors
    /// [`Error::Storage`]; what was evicted before the error stays evicted.
    async fn evict(&self, excess: u64) -> Result<Evicted, Error> {
        let _ = excess;
        Ok(Evicted::default())
    }

    /// The app asked for a record that is not stored: if the budget evicted it from a
    /// held or kept-synced subscription, that subscription downloads again from the
    /// start (as [`LocalStore::save_subscription`] does for one held again). Returns
    /// whether any will.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn fetch_again(&self, collection: &CollectionName, id: &RecordId) -> Result<bool, Error> {
        let _ = (collection, id);
        Ok(false)
    }

    /// Drops every record of `collections` (synced on demand) that no subscription
    /// holds and that has no pending write and no open conflict; returns them. The
    /// engine calls it once at start, for what an earlier run left (a crash between a
    /// write's acknowledgement and the pull after it).
    ///
    /// # Errors
    /// [`Error::Storage`]; nothing changes then.
    async fn let_go_all_unheld(
        &self,
        collections: &[CollectionName],
    ) -> Result<Vec<(CollectionName, RecordId)>, Error> {
        let _ = collections;
        Ok(Vec::new())
    }

    /// Drops those of `records` that no subscription holds and that have no pending
    /// write and no open conflict (records of on-demand collections the device wrote,
    /// once acknowledged and pulled after); returns them.
    ///
    /// # Errors
    /// [`Error::Storage`]; nothing changes then.
    async fn let_go_unheld(
        &self,
        records: &[(CollectionName, RecordId)],
    ) -> Result<Vec<(CollectionName, RecordId)>, Error> {
        let _ = records;
        Ok(Vec::new())
    }

    /// Pending, conflict and failed counts.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn counts(&self) -> Result<Counts, Error>;

    /// All open conflicts.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn conflicts(&self) -> Result<Vec<Conflict>, Error>;

    /// The open conflict of one record.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn conflict(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<Conflict>, Error>;

    /// Settles a conflict: the record's queued upserts and deletes are replaced by the
    /// resolution (pushed with the server's version as base) or dropped (keep server).
    ///
    /// # Errors
    /// [`Error::NoConflict`], [`Error::Storage`].
    async fn resolve_conflict(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        resolution: StoreResolution,
        mutation_id: MutationId,
        at: DateTime<Utc>,
    ) -> Result<(), Error>;

    /// The parked (permanently rejected) mutations.
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn failed_mutations(&self) -> Result<Vec<OutboxEntry>, Error>;

    /// Queues a parked mutation again, with the same id.
    ///
    /// # Errors
    /// [`Error::NoFailedMutation`], [`Error::Storage`].
    async fn retry_failed(&self, id: MutationId) -> Result<(), Error>;

    /// Drops a parked mutation. When the record has nothing else queued, its local data
    /// goes back to the last server-acknowledged data.
    ///
    /// # Errors
    /// [`Error::NoFailedMutation`], [`Error::Storage`].
    async fn discard_failed(&self, id: MutationId) -> Result<Option<(CollectionName, RecordId)>, Error>;

    /// The whole outbox in order (for diagnostics and tests).
    ///
    /// # Errors
    /// [`Error::Storage`].
    async fn outbox(&self) -> Result<Vec<OutboxEntry>, Error>;
}

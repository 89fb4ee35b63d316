//! Typed collection handles: local reads and writes, queries and live queries.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use futures::Stream;
use serde_json::Value;
use tokio::sync::broadcast;

use super::Shared;
use super::builder::CollectionEntry;
use crate::entity::LocalEntity;
use crate::error::Error;
use crate::ids::{MutationId, RecordId};
use crate::status::{Origin, SyncEvent};
use crate::store::{
    After, Cmp, FieldPath, Filter, JsonObject, LocalWrite, Order, Query, RecordData, RecordState, Scalar, StoredRecord,
    WriteKind,
};

/// A typed handle on one collection. Writes land in the local store first (record and
/// outbox entry in one transaction) and fire [`SyncEvent::RecordChanged`] at once,
/// online or not; reads see pending local changes.
pub struct Collection<E> {
    shared: Arc<Shared>,
    entry: Arc<CollectionEntry>,
    _entity: PhantomData<fn() -> E>,
}

impl<E> Clone for Collection<E> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone(), entry: self.entry.clone(), _entity: PhantomData }
    }
}

/// A live query: the current result set, then again after every change to the collection.
pub type WatchStream<E> = Pin<Box<dyn Stream<Item = Result<Vec<E>, Error>> + Send + 'static>>;

impl<E: LocalEntity> Collection<E> {
    pub(super) fn new(shared: Arc<Shared>, entry: Arc<CollectionEntry>) -> Self {
        Self { shared, entry, _entity: PhantomData }
    }

    fn to_data(&self, entity: &E) -> Result<(RecordId, JsonObject), Error> {
        let id = RecordId::new(entity.id())?;
        let data = JsonObject::from_serialize(entity).map_err(|message| self.invalid(&id, message))?;
        Ok((id, data))
    }

    fn invalid(&self, id: &RecordId, message: String) -> Error {
        Error::InvalidRecord { collection: self.entry.name.clone(), id: id.to_string(), message }
    }

    fn local_write(&self, record_id: Option<RecordId>, kind: WriteKind) -> Result<LocalWrite, Error> {
        if !self.entry.pattern.accepts_local_writes() {
            return Err(Error::ReadOnlyCollection { collection: self.entry.name.clone() });
        }
        Ok(LocalWrite {
            mutation_id: MutationId::generate(),
            collection: self.entry.name.clone(),
            record_id,
            kind,
            versioned: self.entry.pattern.sends_base_version(),
            at: Utc::now(),
        })
    }

    async fn write(&self, id: RecordId, kind: WriteKind) -> Result<(), Error> {
        // Only collections whose ids the server assigns may need the write again.
        let retry =
            (self.entry.server_assigns_ids() && !matches!(kind, WriteKind::Insert { .. })).then(|| kind.clone());
        let write = self.local_write(Some(id.clone()), kind)?;
        let id = match (self.shared.store.write(write).await, retry) {
            (Ok(()), _) => id,
            // The server may have renamed the record since the app read it: follow the
            // new id (only looked up on this error path).
            (Err(not_found @ Error::NotFound { .. }), Some(kind)) => {
                let Some((server_id, id_field)) = self.renamed(&id).await? else {
                    return Err(not_found);
                };
                let kind = match kind {
                    WriteKind::Update { data } => WriteKind::Update {
                        data: with_id(data, id_field, &server_id).map_err(|message| self.invalid(&id, message))?,
                    },
                    other => other,
                };
                self.shared.store.write(self.local_write(Some(server_id.clone()), kind)?).await?;
                server_id
            }
            (Err(e), _) => return Err(e),
        };
        self.shared.record_changed(&self.entry.name, &id, Origin::Local);
        self.shared.local_write_happened();
        Ok(())
    }

    /// The id the server gave a record created here as `id`, with the field of the data
    /// that holds it; None unless the server assigns this collection's ids and renamed it.
    async fn renamed(&self, id: &RecordId) -> Result<Option<(RecordId, Option<FieldPath>)>, Error> {
        if !self.entry.server_assigns_ids() {
            return Ok(None);
        }
        let id_field = self.entry.server_id_field().cloned();
        Ok(self.shared.store.server_id(&self.entry.name, id).await?.map(|server_id| (server_id, id_field)))
    }

    /// Creates a record.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::ReadOnlyCollection`], [`Error::InvalidRecord`]
    /// (not a JSON object), [`Error::InvalidRecordId`], [`Error::Storage`].
    ///
    /// # Cancel safety
    /// Safe: the write commits entirely or not at all; if the future is dropped after it
    /// committed, the change event may not fire.
    pub async fn insert(&self, entity: &E) -> Result<(), Error> {
        let (id, data) = self.to_data(entity)?;
        self.write(id, WriteKind::Insert { data }).await
    }

    /// Replaces an existing record.
    ///
    /// # Errors
    /// [`Error::NotFound`] and as [`Collection::insert`].
    ///
    /// # Cancel safety
    /// As [`Collection::insert`].
    pub async fn update(&self, entity: &E) -> Result<(), Error> {
        let (id, data) = self.to_data(entity)?;
        self.write(id, WriteKind::Update { data }).await
    }

    /// Deletes a record.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::ReadOnlyCollection`], [`Error::InvalidRecordId`], [`Error::Storage`].
    ///
    /// # Cancel safety
    /// As [`Collection::insert`].
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        let id = RecordId::new(id)?;
        self.write(id, WriteKind::Delete).await
    }

    /// Queues a named custom action (such as "mark read") with JSON arguments, in order
    /// with the other mutations of `record_id`. The local record is not changed.
    ///
    /// # Errors
    /// [`Error::ReadOnlyCollection`], [`Error::InvalidRecordId`], [`Error::Storage`].
    ///
    /// # Cancel safety
    /// As [`Collection::insert`].
    pub async fn action(&self, name: &str, record_id: Option<&str>, args: Value) -> Result<(), Error> {
        let record_id = record_id.map(RecordId::new).transpose()?;
        let write = self.local_write(record_id, WriteKind::Action { name: name.to_owned(), args })?;
        self.shared.store.write(write).await?;
        self.shared.local_write_happened();
        Ok(())
    }

    /// Creates many records in one transaction: all or none.
    ///
    /// # Errors
    /// As [`Collection::insert`]; on error nothing is written.
    ///
    /// # Cancel safety
    /// As [`Collection::insert`].
    pub async fn insert_many(&self, entities: &[E]) -> Result<(), Error> {
        let mut writes = Vec::with_capacity(entities.len());
        let mut ids = Vec::with_capacity(entities.len());
        for entity in entities {
            let (id, data) = self.to_data(entity)?;
            writes.push(self.local_write(Some(id.clone()), WriteKind::Insert { data })?);
            ids.push(id);
        }
        self.shared.store.write_many(writes).await?;
        for id in &ids {
            self.shared.record_changed(&self.entry.name, id, Origin::Local);
        }
        self.shared.local_write_happened();
        Ok(())
    }

    fn decode(&self, record: StoredRecord) -> Result<E, Error> {
        serde_json::from_value(record.data).map_err(|e| self.invalid(&record.id, e.to_string()))
    }

    /// Decodes stored JSON text straight into `E`, with no `Value` in between.
    fn decode_data(&self, record: &RecordData) -> Result<E, Error> {
        serde_json::from_str(&record.json).map_err(|e| self.invalid(&record.id, e.to_string()))
    }

    /// One record, with its pending local changes (None when missing or deleted). An id
    /// the server has since replaced with its own still finds the record.
    ///
    /// # Errors
    /// [`Error::InvalidRecordId`], [`Error::InvalidRecord`] (stored data that no longer
    /// fits `E`), [`Error::Storage`].
    ///
    /// # Cancel safety
    /// Safe: it only reads.
    pub async fn get(&self, id: &str) -> Result<Option<E>, Error> {
        match self.get_stored(id).await? {
            Some(record) => self.decode(record).map(Some),
            None => Ok(None),
        }
    }

    /// The raw stored record with its sync metadata (server version, state).
    ///
    /// # Errors
    /// [`Error::InvalidRecordId`], [`Error::Storage`].
    ///
    /// # Cancel safety
    /// Safe: it only reads.
    pub async fn get_stored(&self, id: &str) -> Result<Option<StoredRecord>, Error> {
        let id = RecordId::new(id)?;
        let found = match self.shared.store.get(&self.entry.name, &id).await? {
            Some(record) => Some(record),
            None => match self.renamed(&id).await? {
                Some((server_id, _)) => self.shared.store.get(&self.entry.name, &server_id).await?,
                None => None,
            },
        };
        if let Some(record) = &found {
            self.read(std::iter::once(&record.id));
        } else if self.entry.on_demand && self.online() && self.shared.store.fetch_again(&self.entry.name, &id).await? {
            // Evicted by the cache budget: its subscription fetches it again, and watches
            // see it arrive (the answer now is what the store holds). Read now, so the
            // download that brings it back does not evict it first.
            self.read(std::iter::once(&id));
            self.shared.sync_soon();
        }
        Ok(found)
    }

    fn online(&self) -> bool {
        let net = self.shared.net();
        net.app_online && net.reachable
    }

    /// Notes a read for the cache budget's least-recently-used order (collections
    /// synced on demand only; a map insert, no store write).
    fn read<'a>(&self, ids: impl IntoIterator<Item = &'a RecordId>) {
        if self.entry.on_demand {
            self.shared.cache.read(&self.entry.name, ids);
        }
    }

    /// Every live record, by id.
    ///
    /// # Errors
    /// As [`Collection::get`].
    ///
    /// # Cancel safety
    /// Safe: it only reads.
    pub async fn list(&self) -> Result<Vec<E>, Error> {
        self.query().fetch().await
    }

    /// Starts a query: filters, sort keys, pagination; see [`QueryBuilder`].
    pub fn query(&self) -> QueryBuilder<E> {
        QueryBuilder { collection: self.clone(), query: Ok(Query::all(self.entry.name.clone())) }
    }

    /// A live query of the whole collection (see [`QueryBuilder::watch`]).
    pub fn watch(&self) -> WatchStream<E> {
        self.query().watch()
    }
}

/// An entity with its sync state, as [`QueryBuilder::fetch_tracked`] returns them.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked<E> {
    /// The record's id.
    pub id: RecordId,
    /// The entity (for a pending delete: as the server last acknowledged it).
    pub entity: E,
    /// Synced, pending (and with what), in conflict or failed.
    pub state: RecordState,
}

/// A query under construction. Filters combine with AND (use [`QueryBuilder::filter`]
/// with [`Filter::or`] for OR); values are bound as parameters; a bad field path or a
/// value that cannot compare surfaces as [`Error::InvalidQuery`] when the query runs.
/// Fields a collection declares with [`crate::CollectionSpec::index`] are answered from
/// an index.
pub struct QueryBuilder<E> {
    collection: Collection<E>,
    query: Result<Query, Error>,
}

impl<E: LocalEntity> QueryBuilder<E> {
    fn with(mut self, change: impl FnOnce(&mut Query) -> Result<(), Error>) -> Self {
        self.query = self.query.and_then(|mut q| {
            change(&mut q)?;
            Ok(q)
        });
        self
    }

    /// Keeps the records that match `filter` too.
    pub fn filter(self, filter: Result<Filter, Error>) -> Self {
        self.with(|q| {
            let filter = filter?;
            q.filter = std::mem::replace(&mut q.filter, Filter::All(Vec::new())).and(filter);
            Ok(())
        })
    }

    /// Keeps records whose `field` (a dotted path) equals `value` (null: is null or missing).
    pub fn filter_eq(self, field: &str, value: impl Into<Value>) -> Self {
        self.filter(Filter::eq(field, value))
    }

    /// Keeps records whose `field` differs from `value` (null: is present and not null).
    pub fn filter_ne(self, field: &str, value: impl Into<Value>) -> Self {
        self.filter(Filter::compare(field, Cmp::Ne, value))
    }

    /// Keeps records whose `field` is less than `value`.
    pub fn filter_lt(self, field: &str, value: impl Into<Value>) -> Self {
        self.filter(Filter::compare(field, Cmp::Lt, value))
    }

    /// Keeps records whose `field` is at most `value`.
    pub fn filter_le(self, field: &str, value: impl Into<Value>) -> Self {
        self.filter(Filter::compare(field, Cmp::Le, value))
    }

    /// Keeps records whose `field` is greater than `value`.
    pub fn filter_gt(self, field: &str, value: impl Into<Value>) -> Self {
        self.filter(Filter::compare(field, Cmp::Gt, value))
    }

    /// Keeps records whose `field` is at least `value`.
    pub fn filter_ge(self, field: &str, value: impl Into<Value>) -> Self {
        self.filter(Filter::compare(field, Cmp::Ge, value))
    }

    /// Keeps records whose `field` equals one of `values`.
    pub fn filter_in<V: Into<Value>>(self, field: &str, values: impl IntoIterator<Item = V>) -> Self {
        self.filter(Filter::one_of(field, values))
    }

    /// Keeps records whose `field` is null or missing.
    pub fn filter_null(self, field: &str) -> Self {
        self.filter(Filter::is_null(field))
    }

    /// Keeps records whose `field` is present and not null.
    pub fn filter_not_null(self, field: &str) -> Self {
        self.filter(Filter::not_null(field))
    }

    /// Keeps records whose `field` is a string starting with `prefix`.
    pub fn filter_prefix(self, field: &str, prefix: impl Into<String>) -> Self {
        self.filter(Filter::starts_with(field, prefix))
    }

    /// Sorts by `field` (a dotted path), after any sort keys given before.
    pub fn order_by(self, field: &str, order: Order) -> Self {
        self.with(|q| {
            q.order_by.push((FieldPath::new(field)?, order));
            Ok(())
        })
    }

    /// Returns at most `limit` records.
    pub fn limit(self, limit: u32) -> Self {
        self.with(|q| {
            q.limit = Some(limit);
            Ok(())
        })
    }

    /// Skips the first `offset` records.
    pub fn offset(self, offset: u32) -> Self {
        self.with(|q| {
            q.offset = Some(offset);
            Ok(())
        })
    }

    /// Keyset pagination: only the records after `last` (the last row of the previous
    /// page) in this query's order. Cheaper than an offset on deep pages, and stable
    /// while records are added before the position.
    pub fn after(self, last: &E) -> Self {
        let value = serde_json::to_value(last).map_err(|e| Error::InvalidQuery { message: e.to_string() });
        let id = RecordId::new(last.id());
        self.with(move |q| {
            let value = value?;
            let keys = q
                .order_by
                .iter()
                .map(|(field, _)| Scalar::from_json(field.get(&value).unwrap_or(&Value::Null)))
                .collect::<Result<Vec<_>, _>>()?;
            q.after = Some(After { keys, id: id? });
            Ok(())
        })
    }

    /// Includes records deleted here whose delete is not sent yet (with the data the
    /// server last acknowledged); see them with [`QueryBuilder::fetch_tracked`].
    pub fn include_pending_deletes(self) -> Self {
        self.with(|q| {
            q.include_pending_deletes = true;
            Ok(())
        })
    }

    /// Runs the query once.
    ///
    /// # Errors
    /// [`Error::InvalidQuery`], [`Error::InvalidRecord`], [`Error::Storage`].
    ///
    /// # Cancel safety
    /// Safe: it only reads.
    pub async fn fetch(self) -> Result<Vec<E>, Error> {
        let query = self.query?;
        fetch(&self.collection, &query).await
    }

    /// Runs the query once, each entity with its sync state (read in the same query,
    /// no extra read per row).
    ///
    /// # Errors
    /// As [`QueryBuilder::fetch`].
    ///
    /// # Cancel safety
    /// Safe: it only reads.
    pub async fn fetch_tracked(self) -> Result<Vec<Tracked<E>>, Error> {
        let query = self.query?;
        fetch_tracked(&self.collection, &query).await
    }

    /// How many records match (limit and offset ignored).
    ///
    /// # Errors
    /// [`Error::InvalidQuery`], [`Error::Storage`].
    ///
    /// # Cancel safety
    /// Safe: it only reads.
    pub async fn count(self) -> Result<u64, Error> {
        let query = self.query?;
        self.collection.shared.store.count(&query).await
    }

    /// A stream that yields the result set now and again whenever a change can affect
    /// it: a change to a record in the current result, or to one that matches the
    /// query's filter now (checked with one indexed lookup for all the changed records,
    /// not by running the query). A burst of changes (a pull page, an initial sync) is
    /// folded into one re-run, and re-runs are spaced by twice the last one's duration,
    /// so a watch never takes more than a third of a core; the last change is always
    /// followed by a re-run, so the stream ends on the final state. A subscriber that
    /// falls behind skips to the latest result; it never slows the engine. The stream
    /// ends when the engine shuts down.
    pub fn watch(self) -> WatchStream<E> {
        let collection = self.collection;
        let query = match self.query {
            Ok(q) => q,
            Err(e) => return Box::pin(futures::stream::once(async move { Err(e) })),
        };
        // Subscribe before the first read so no change between the two is missed.
        let events = collection.shared.events.subscribe();
        let shutdown = collection.shared.shutdown.clone();
        let watcher = Watcher { collection, query, events, shutdown, shown: None, boundary: None, next_run: None };
        Box::pin(futures::stream::unfold(watcher, |mut w| async move {
            let result = w.next().await?;
            Some((result, w))
        }))
    }
}

/// More changed records than this in one burst re-run the query without checking each.
const WATCH_CHECK_LIMIT: usize = 256;

/// The state of one live query between its re-runs.
struct Watcher<E> {
    collection: Collection<E>,
    query: Query,
    events: broadcast::Receiver<SyncEvent>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// The ids in the last result (None before the first run).
    shown: Option<std::collections::HashSet<RecordId>>,
    /// When the last result was a full page (as many records as the limit, no offset):
    /// its last row's position. A record that sorts after it cannot enter the page
    /// unless a shown record changes, which is a change of its own.
    boundary: Option<After>,
    /// No re-run before this instant (twice the last run's duration after it ended).
    next_run: Option<tokio::time::Instant>,
}

/// What a burst of events asks of a watch.
enum Burst {
    /// Re-run the query.
    Rerun,
    /// Check whether any of these changed records matter.
    Check(Vec<RecordId>),
    /// The engine stopped.
    Closed,
}

impl<E: LocalEntity> Watcher<E> {
    /// The next result to yield (None: the stream ends).
    async fn next(&mut self) -> Option<Result<Vec<E>, Error>> {
        if self.shown.is_some() {
            loop {
                let burst = self.wait_for_changes().await;
                let changed = match burst {
                    Burst::Closed => return None,
                    Burst::Rerun => true,
                    Burst::Check(ids) => self.matters(&ids).await,
                };
                if changed {
                    break;
                }
            }
            if let Some(at) = self.next_run {
                tokio::time::sleep_until(at).await;
            }
            // Whatever arrived while waiting is folded into this run.
            while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = self.events.try_recv() {}
        }
        let started = tokio::time::Instant::now();
        let result = self.collection.shared.store.query_data(&self.query).await;
        let ended = tokio::time::Instant::now();
        self.next_run = Some(ended + (ended - started) * 2);
        Some(match result {
            Ok(records) => {
                self.collection.read(records.iter().map(|r| &r.id));
                self.shown = Some(records.iter().map(|r| r.id.clone()).collect());
                self.boundary = page_boundary(&self.query, &records);
                records.iter().map(|r| self.collection.decode_data(r)).collect()
            }
            Err(e) => {
                // The next change runs it again.
                self.shown = Some(Default::default());
                self.boundary = None;
                Err(e)
            }
        })
    }

    /// Waits for changes to this collection and gathers the burst that came with them.
    async fn wait_for_changes(&mut self) -> Burst {
        let mut ids = Vec::new();
        loop {
            let event = tokio::select! {
                event = self.events.recv() => event,
                _ = self.shutdown.wait_for(|stopped| *stopped) => return Burst::Closed,
            };
            match event {
                Ok(SyncEvent::RecordChanged { collection, id, .. }) if collection == self.collection.entry.name => {
                    ids.push(id);
                    break;
                }
                Ok(SyncEvent::StoreChangedElsewhere) => return Burst::Rerun,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return Burst::Rerun,
                Err(broadcast::error::RecvError::Closed) => return Burst::Closed,
            }
        }
        loop {
            match self.events.try_recv() {
                Ok(SyncEvent::RecordChanged { collection, id, .. }) if collection == self.collection.entry.name => {
                    ids.push(id);
                }
                Ok(SyncEvent::StoreChangedElsewhere) => return Burst::Rerun,
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(_)) => return Burst::Rerun,
                Err(_) => break,
            }
            if ids.len() > WATCH_CHECK_LIMIT {
                return Burst::Rerun;
            }
        }
        Burst::Check(ids)
    }

    /// Whether changes to `ids` can change the result: one of them is shown, or matches
    /// the filter now and, when the result is a full page, sorts before its last row.
    /// A failed check counts as a change.
    async fn matters(&self, ids: &[RecordId]) -> bool {
        if self.shown.as_ref().is_none_or(|shown| ids.iter().any(|id| shown.contains(id))) {
            return true;
        }
        let shared = &self.collection.shared;
        let matching = match shared.checks.matching(&shared.store, self.query.clone(), ids.to_vec()).await {
            Ok(matching) => matching,
            Err(_) => return true,
        };
        let Some(boundary) = &self.boundary else { return !matching.is_empty() };
        if matching.is_empty() {
            return false;
        }
        let beyond = Query { after: Some(boundary.clone()), ..self.query.clone() };
        match shared.checks.matching(&shared.store, beyond, matching.clone()).await {
            Ok(after_the_page) => after_the_page.len() < matching.len(),
            Err(_) => true,
        }
    }
}

/// The position of a full page's last row (see `Watcher::boundary`); None when the
/// result is not a full page, skips rows (offset), or a sort key is not a scalar.
fn page_boundary(query: &Query, records: &[RecordData]) -> Option<After> {
    let limit = usize::try_from(query.limit?).ok()?;
    if query.offset.is_some() || limit == 0 || records.len() < limit {
        return None;
    }
    let last = records.last()?;
    let data: Value = serde_json::from_str(&last.json).ok()?;
    let keys = query
        .order_by
        .iter()
        .map(|(field, _)| Scalar::from_json(field.get(&data).unwrap_or(&Value::Null)).ok())
        .collect::<Option<Vec<_>>>()?;
    Some(After { keys, id: last.id.clone() })
}

/// `data` with the field at `path` (if any) set to `id`.
fn with_id(data: JsonObject, path: Option<FieldPath>, id: &RecordId) -> Result<JsonObject, String> {
    let Some(path) = path else { return Ok(data) };
    let mut value: Value = serde_json::from_str(data.as_str()).map_err(|e| e.to_string())?;
    path.set(&mut value, Value::String(id.to_string()));
    JsonObject::from_serialize(&value)
}

async fn fetch<E: LocalEntity>(collection: &Collection<E>, query: &Query) -> Result<Vec<E>, Error> {
    let records = collection.shared.store.query_data(query).await?;
    collection.read(records.iter().map(|r| &r.id));
    records.iter().map(|r| collection.decode_data(r)).collect()
}

async fn fetch_tracked<E: LocalEntity>(collection: &Collection<E>, query: &Query) -> Result<Vec<Tracked<E>>, Error> {
    let records = collection.shared.store.query(query).await?;
    collection.read(records.iter().map(|r| &r.id));
    records
        .into_iter()
        .map(|r| {
            let (id, state) = (r.id.clone(), r.state);
            Ok(Tracked { id, entity: collection.decode(r)?, state })
        })
        .collect()
}

impl<E> Collection<E> {
    /// The collection's name.
    pub fn name(&self) -> &str {
        self.entry.name.as_str()
    }
}

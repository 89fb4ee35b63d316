//! What a simulation runs: the app under test ([`SimApp`]) and the collections its
//! histories write to ([`Tracked`]), with their entity types erased behind JSON.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use proptest::strategy::{BoxedStrategy, Strategy};
use serde_json::Value;
use sync_core::{ConflictResolver, EngineBuilder, Error, LocalEntity, Resolution, Transport};
use sync_server::store::ActionHandler;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The app under test: its server configuration, which user each simulated client
/// signs in as, the collections and patterns each client's engine registers, and the
/// resolver its user applies to conflicts.
///
/// The kit builds every engine itself (a SQLite file per client, a
/// [`crate::FaultyTransport`] over an [`crate::InProcessServer`], no automatic triggers,
/// long backoffs so that only the history's `sync` steps run cycles) and hands the
/// builder to [`SimApp::register`] to add the app's collections.
pub trait SimApp: Send + Sync + 'static {
    /// The server's `sync-server.toml` text: users (with the sha256 of their tokens, see
    /// `sync_server::config::token_sha256`) and collections. Its `database` is replaced
    /// by a temporary SQLite file.
    fn server_config(&self) -> String;

    /// The server's custom action handlers, by name. Histories send actions only when
    /// there are some.
    fn actions(&self) -> Vec<(String, Arc<dyn ActionHandler>)> {
        Vec::new()
    }

    /// The bearer token client `client` (0-based) signs in with.
    fn token(&self, client: usize) -> String;

    /// The transport client `client`'s engine uses, given the kit's (a
    /// [`crate::FaultyTransport`] over the in-process server): wrap it to test the app's
    /// own transport middleware (headers, mapping, compression). The kit's as it is by
    /// default.
    fn transport(&self, client: usize, kit: Arc<dyn Transport>) -> Arc<dyn Transport> {
        let _ = client;
        kit
    }

    /// Registers client `client`'s collections (and units, options) on `builder`.
    fn register(&self, client: usize, builder: EngineBuilder) -> EngineBuilder;

    /// The collections histories write to, and how to make their records.
    fn tracked(&self) -> Vec<Tracked>;

    /// What the app's user does with a stored conflict at a `resolve` step. At the end
    /// of a history, a conflict this defers is settled with
    /// [`Resolution::KeepServer`], so that the clients can converge.
    fn resolver(&self) -> Arc<dyn ConflictResolver> {
        Arc::new(|_: &sync_core::Conflict| Resolution::KeepServer)
    }
}

/// A typed operation's future.
type Op<'a, T> = BoxFuture<'a, Result<T, Error>>;
type Engine = sync_core::Engine;
/// A collection's records as (id, data) pairs.
type Records = Vec<(String, Value)>;

/// Typed operations on one collection, behind JSON values.
#[derive(Clone, Copy)]
pub(crate) struct ErasedOps {
    pub(crate) put: for<'a> fn(&'a Engine, Value) -> Op<'a, ()>,
    pub(crate) delete: for<'a> fn(&'a Engine, &'a str) -> Op<'a, ()>,
    pub(crate) get: for<'a> fn(&'a Engine, &'a str) -> Op<'a, Option<Value>>,
    pub(crate) list: for<'a> fn(&'a Engine) -> Op<'a, Records>,
    /// The records that are not synced (a pending write, a conflict, a parked write).
    pub(crate) unsynced: for<'a> fn(&'a Engine) -> Op<'a, Records>,
    pub(crate) action: for<'a> fn(&'a Engine, &'a str, &'a str, Value) -> Op<'a, ()>,
    pub(crate) normalize: fn(&Value) -> Result<Value, String>,
}

/// One collection that histories write to: its entity type, where its records keep
/// their id, and a proptest strategy for the records' contents.
///
/// ```
/// use proptest::prelude::*;
/// use serde::{Deserialize, Serialize};
/// use sync_core::LocalEntity;
/// use sync_testkit::sim::Tracked;
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Note { id: String, text: String, pinned: bool }
/// impl LocalEntity for Note {
///     const COLLECTION: &'static str = "notes";
///     fn id(&self) -> &str { &self.id }
/// }
///
/// // The kit overwrites `id` with the record the step touches.
/// let notes = Tracked::of::<Note>(("[a-c]{1,2}", any::<bool>())
///     .prop_map(|(text, pinned)| Note { id: String::new(), text, pinned }));
/// # let _ = notes;
/// ```
#[derive(Clone)]
pub struct Tracked {
    pub(crate) name: String,
    pub(crate) id_field: String,
    pub(crate) data: BoxedStrategy<Value>,
    pub(crate) ops: ErasedOps,
    /// For a collection synced on demand: the field its subscriptions filter on, and
    /// the values histories subscribe to.
    pub(crate) subscribe_by: Option<(String, Vec<String>)>,
}

impl fmt::Debug for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracked").field("name", &self.name).field("id_field", &self.id_field).finish()
    }
}

impl Tracked {
    /// Entity `E`, with records made by `records` (their id is replaced by the kit's),
    /// keeping their id in the field `id`.
    pub fn of<E>(records: impl Strategy<Value = E> + 'static) -> Self
    where
        E: LocalEntity + fmt::Debug + Clone,
    {
        let data = records.prop_map(|entity| serde_json::to_value(entity).unwrap_or(Value::Null)).boxed();
        Self {
            name: E::COLLECTION.to_owned(),
            id_field: "id".to_owned(),
            data,
            ops: ErasedOps {
                put: put::<E>,
                delete: delete::<E>,
                get: get::<E>,
                list: list::<E>,
                unsynced: unsynced::<E>,
                action: action::<E>,
                normalize: normalize::<E>,
            },
            subscribe_by: None,
        }
    }

    /// The collection is synced on demand (the app registers it with
    /// `CollectionSpec::on_demand()` and the server declares `subscription_indexes =
    /// [[field]]`): histories subscribe to the records whose `field` equals one of
    /// `values`, let go of them and evict, and at the end each client must hold exactly
    /// the server's records its held subscriptions cover.
    pub fn on_demand(mut self, field: &str, values: &[&str]) -> Self {
        self.subscribe_by = Some((field.to_owned(), values.iter().map(|v| (*v).to_owned()).collect()));
        self
    }

    /// The records keep their id in `field` instead of `id`.
    pub fn id_field(mut self, field: &str) -> Self {
        self.id_field = field.to_owned();
        self
    }

    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `data` with the record id written into the id field.
    pub(crate) fn with_id(&self, data: &Value, id: &str) -> Value {
        let mut data = data.clone();
        if let Value::Object(map) = &mut data {
            map.insert(self.id_field.clone(), Value::String(id.to_owned()));
        }
        data
    }
}

fn invalid<E: LocalEntity>(id: &str, error: &serde_json::Error) -> Error {
    match sync_core::CollectionName::new(E::COLLECTION) {
        Ok(collection) => Error::InvalidRecord { collection, id: id.to_owned(), message: error.to_string() },
        Err(e) => e,
    }
}

fn decode<E: LocalEntity>(value: Value) -> Result<E, Error> {
    serde_json::from_value(value).map_err(|e| invalid::<E>("", &e))
}

fn encode<E: LocalEntity>(entity: &E) -> Result<Value, Error> {
    serde_json::to_value(entity).map_err(|e| invalid::<E>(entity.id(), &e))
}

/// Inserts the record, or updates it when it is stored (a deleted record is created anew).
fn put<E: LocalEntity>(engine: &sync_core::Engine, data: Value) -> BoxFuture<'_, Result<(), Error>> {
    Box::pin(async move {
        let collection = engine.collection::<E>()?;
        let entity: E = decode(data)?;
        if collection.get(entity.id()).await?.is_some() {
            collection.update(&entity).await
        } else {
            collection.insert(&entity).await
        }
    })
}

fn delete<'a, E: LocalEntity>(engine: &'a sync_core::Engine, id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
    Box::pin(async move { engine.collection::<E>()?.delete(id).await })
}

fn get<'a, E: LocalEntity>(engine: &'a sync_core::Engine, id: &'a str) -> BoxFuture<'a, Result<Option<Value>, Error>> {
    Box::pin(async move {
        match engine.collection::<E>()?.get(id).await? {
            Some(entity) => Ok(Some(encode(&entity)?)),
            None => Ok(None),
        }
    })
}

fn list<E: LocalEntity>(engine: &sync_core::Engine) -> BoxFuture<'_, Result<Vec<(String, Value)>, Error>> {
    Box::pin(async move {
        let mut out = Vec::new();
        for entity in engine.collection::<E>()?.list().await? {
            out.push((entity.id().to_owned(), encode(&entity)?));
        }
        Ok(out)
    })
}

fn unsynced<E: LocalEntity>(engine: &sync_core::Engine) -> BoxFuture<'_, Result<Vec<(String, Value)>, Error>> {
    Box::pin(async move {
        let mut out = Vec::new();
        for tracked in engine.collection::<E>()?.query().fetch_tracked().await? {
            if tracked.state != sync_core::RecordState::Synced {
                out.push((tracked.id.to_string(), encode(&tracked.entity)?));
            }
        }
        Ok(out)
    })
}

fn action<'a, E: LocalEntity>(
    engine: &'a sync_core::Engine,
    name: &'a str,
    id: &'a str,
    args: Value,
) -> BoxFuture<'a, Result<(), Error>> {
    Box::pin(async move { engine.collection::<E>()?.action(name, Some(id), args).await })
}

/// The value as the entity type reads and writes it (defaults filled in), so that the
/// server's JSON and the local JSON compare field by field.
fn normalize<E: LocalEntity>(value: &Value) -> Result<Value, String> {
    let entity: E = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&entity).map_err(|e| e.to_string())
}

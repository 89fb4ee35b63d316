//! `EngineBuilder`: collects and validates the engine's configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::auth::TokenProvider;
use crate::backoff::Backoff;
use crate::device::DeviceStores;
use crate::entity::{IdAssignment, IdentityMapping, LocalEntity, ServerMapping};
use crate::error::Error;
use crate::ids::{AccountId, CollectionName};
use crate::pattern::SyncPattern;
use crate::persistence::{Placed, Placement, Policy, Residence, place};
use crate::split_store::SplitStore;
use crate::store::{FieldPath, ForeignKey, IndexSpec, LocalStore, Relations};
use crate::transport::{Credentials, Transport};

use super::{Engine, Parts};

/// The name of the sync unit that covers every collection in both directions; it is the
/// one `sync_now`, the start, reconnect, interval and local-write triggers run.
pub const ALL_UNIT: &str = "all";

/// The reserved unit that only pushes, every collection.
pub(crate) const PUSH_UNIT: &str = "all:push";

/// Checks that a JSON value deserializes into the collection's entity type.
pub(crate) type Validator = fn(&Value) -> Result<(), String>;

fn validate_as<E: LocalEntity>(value: &Value) -> Result<(), String> {
    E::deserialize(value).map(|_| ()).map_err(|e| e.to_string())
}

/// One collection's registration: its entity type, pattern and mapping.
pub struct CollectionSpec {
    pub(crate) name: String,
    pub(crate) pattern: Arc<dyn SyncPattern>,
    pub(crate) mapping: Arc<dyn ServerMapping>,
    pub(crate) validate: Validator,
    pub(crate) in_memory: bool,
    pub(crate) indexes: Vec<Vec<String>>,
    pub(crate) on_demand: bool,
}

impl CollectionSpec {
    /// Registers entity type `E` with a pattern and the identity mapping.
    pub fn of<E: LocalEntity>(pattern: impl SyncPattern) -> Self {
        Self {
            name: E::COLLECTION.to_owned(),
            pattern: Arc::new(pattern),
            mapping: Arc::new(IdentityMapping),
            validate: validate_as::<E>,
            in_memory: false,
            indexes: Vec::new(),
            on_demand: false,
        }
    }

    /// Syncs this collection by subscriptions only ([`Engine::subscribe`]): the engine
    /// pulls what the app's subscriptions cover instead of the whole collection (local
    /// writes are pushed as always). The server must declare indexes for the fields
    /// subscriptions use. Not for patterns that pull a collection whole each time.
    ///
    /// [`Engine::subscribe`]: crate::Engine::subscribe
    pub fn on_demand(mut self) -> Self {
        self.on_demand = true;
        self
    }

    /// Declares an index on `fields` (dotted paths, most selective first: equality
    /// fields, then one range or sort field), so that queries filtering and sorting by
    /// them are answered from the index instead of scanning the collection. The store
    /// creates it when the engine starts and drops indexes no longer declared.
    pub fn index(mut self, fields: &[&str]) -> Self {
        self.indexes.push(fields.iter().map(|f| (*f).to_owned()).collect());
        self
    }

    /// Keeps this collection in memory only: nothing of it is written to disk, it is
    /// empty again after a restart and pulled again. A collection the app writes to
    /// needs [`EngineBuilder::persist_outbox`]`(false)`, since the queue lives with the
    /// records it refers to.
    pub fn keep_in_memory(mut self) -> Self {
        self.in_memory = true;
        self
    }

    /// Uses `mapping` between the local and the server shape.
    pub fn mapping(mut self, mapping: impl ServerMapping) -> Self {
        self.mapping = Arc::new(mapping);
        self
    }
}

/// A registered collection, after validation.
pub(crate) struct CollectionEntry {
    pub(crate) name: CollectionName,
    pub(crate) pattern: Arc<dyn SyncPattern>,
    pub(crate) mapping: Arc<dyn ServerMapping>,
    pub(crate) validate: Validator,
    /// Who chooses created records' ids (the mapping's answer, asked once).
    pub(crate) ids: IdAssignment,
    /// Its declared indexes.
    pub(crate) indexes: Vec<IndexSpec>,
    /// Synced by subscriptions only.
    pub(crate) on_demand: bool,
    /// On demand: every subscription of the collection is kept synced (set at run time
    /// by `Engine::keep_synced`).
    pub(crate) kept: std::sync::atomic::AtomicBool,
}

impl CollectionEntry {
    /// Where the data holds the record's own id, when the server assigns ids: pulled
    /// data gets the record's id written there, so the two never disagree.
    pub(crate) fn server_id_field(&self) -> Option<&FieldPath> {
        match &self.ids {
            IdAssignment::Server { id_field } => id_field.as_ref(),
            IdAssignment::Client => None,
        }
    }

    /// The server assigns the ids of records created here (renamed records are followed).
    pub(crate) fn server_assigns_ids(&self) -> bool {
        matches!(self.ids, IdAssignment::Server { .. })
    }
}

/// Which way a sync unit moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Push the outbox only.
    Push,
    /// Pull only.
    Pull,
    /// Push, then pull.
    Both,
}

impl Direction {
    pub(crate) fn pushes(self) -> bool {
        matches!(self, Direction::Push | Direction::Both)
    }

    pub(crate) fn pulls(self) -> bool {
        matches!(self, Direction::Pull | Direction::Both)
    }
}

/// A named subset of collections and a direction, run on its own (e.g. `login` pulls
/// everything needed offline; `send_visits` only pushes one collection).
#[derive(Debug, Clone)]
pub struct SyncUnit {
    name: String,
    collections: Vec<String>,
    direction: Direction,
}

impl SyncUnit {
    /// A unit named `name` over `collections`, moving data in `direction`.
    pub fn new(name: impl Into<String>, direction: Direction, collections: &[&str]) -> Self {
        Self { name: name.into(), collections: collections.iter().map(|c| (*c).to_owned()).collect(), direction }
    }
}

/// A validated sync unit.
#[derive(Debug, Clone)]
pub(crate) struct UnitSpec {
    pub(crate) name: String,
    pub(crate) collections: Vec<CollectionName>,
    pub(crate) direction: Direction,
}

/// Timing and sizing options; the defaults suit a phone on a mobile network.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Quiet time after the last local write before the write trigger syncs. The default
    /// is none: an idle engine pushes a write at once, and writes made while a cycle runs
    /// go out together in the next one, so a burst still makes few requests.
    pub debounce: Duration,
    /// Sync this often while online (None: no periodic trigger).
    pub interval: Option<Duration>,
    /// Sync once when the engine starts.
    pub sync_on_start: bool,
    /// Whether the app allows the network at start (see `Engine::set_online`).
    pub start_online: bool,
    /// The most mutations in one push request.
    pub push_batch: usize,
    /// The `limit` sent with each pull.
    pub pull_limit: u32,
    /// Retry and probe delays.
    pub backoff: Backoff,
    /// How many events a subscriber may fall behind before it loses the oldest.
    pub event_capacity: usize,
    /// How long this engine's hold on a store shared by several processes lasts without
    /// renewal (renewed every third of it while a cycle runs). A process that dies
    /// mid-cycle blocks the others' syncing for at most this long.
    pub sync_lease: Duration,
    /// The cache budget in bytes, for the records subscriptions bring (collections
    /// synced [`on_demand`](CollectionSpec::on_demand)): past it, the least recently
    /// read clean records are evicted, those of released subscriptions first. Pending,
    /// conflicted and kept-synced records are never evicted and not counted. From
    /// [`MIN_CACHE_BUDGET`](crate::engine::MIN_CACHE_BUDGET) (1 MiB) to
    /// [`MAX_CACHE_BUDGET`](crate::engine::MAX_CACHE_BUDGET) (1 GiB); the default is
    /// [`DEFAULT_CACHE_BUDGET`](crate::engine::DEFAULT_CACHE_BUDGET) (10 MiB).
    pub cache_budget: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::ZERO,
            interval: None,
            sync_on_start: true,
            start_online: true,
            push_batch: 500,
            pull_limit: 1000,
            backoff: Backoff::default(),
            event_capacity: 1024,
            sync_lease: Duration::from_secs(30),
            cache_budget: super::cache::DEFAULT_CACHE_BUDGET,
        }
    }
}

/// Builds an [`Engine`]; `build` checks the configuration.
#[derive(Default)]
pub struct EngineBuilder {
    store: Option<Arc<dyn LocalStore>>,
    device: Option<Arc<dyn DeviceStores>>,
    account: Option<AccountId>,
    credentials: Option<Credentials>,
    token_provider: Option<Arc<dyn TokenProvider>>,
    policy: Policy,
    transport: Option<Arc<dyn Transport>>,
    collections: Vec<CollectionSpec>,
    units: Vec<SyncUnit>,
    options: EngineOptions,
}

impl EngineBuilder {
    /// The local store, for a device one person uses (this or [`EngineBuilder::device`]
    /// is required). The store is bound to the account of the first credentials it
    /// sees, and refuses any other account's from then on.
    pub fn store(mut self, store: Arc<dyn LocalStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The stores of everyone who uses the device, one per account (this or
    /// [`EngineBuilder::store`] is required). The engine opens the store of the account
    /// given with [`EngineBuilder::account`] or [`EngineBuilder::credentials`] and
    /// serves that account only: to change person, [`Engine::sign_out`] and build an
    /// engine for the other account.
    pub fn device(mut self, device: Arc<dyn DeviceStores>) -> Self {
        self.device = Some(device);
        self
    }

    /// The account the engine serves, when its token is not known yet (an app started
    /// offline; the token comes later through [`Engine::set_credentials`]).
    pub fn account(mut self, account: AccountId) -> Self {
        self.account = Some(account);
        self
    }

    /// The credentials to start with; the engine serves their account.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Where the engine gets a token when it has none, and a new one when the server
    /// answers 401 (see [`TokenProvider`]). Needs the account: from
    /// [`EngineBuilder::account`], [`EngineBuilder::credentials`] or a store already
    /// bound to one.
    pub fn token_provider(mut self, provider: Arc<dyn TokenProvider>) -> Self {
        self.token_provider = Some(provider);
        self
    }

    /// Keeps the session token in the store (default: no), so that an app restarted
    /// offline syncs as soon as the network returns without asking the person to sign
    /// in again. Allowed only with an encrypted store ([`LocalStore::encrypted`]): a
    /// token is never written to disk in plain text. [`Engine::sign_out`] forgets it.
    pub fn persist_token(mut self, persist: bool) -> Self {
        self.policy.persist_token = persist;
        self
    }

    /// Whether this is a trusted device (default: yes). An untrusted one (a shared
    /// kiosk, a borrowed phone) writes nothing to disk at all, whatever else is
    /// configured: with [`EngineBuilder::device`] its stores are in memory, and a file
    /// store given with [`EngineBuilder::store`] is refused. Everything is gone when
    /// the process ends, unsent writes included.
    pub fn trusted_device(mut self, trusted: bool) -> Self {
        self.policy.trusted_device = trusted;
        self
    }

    /// Whether the outbox survives a restart (default: yes). It lives with the
    /// collections the app writes to, so `true` needs all of them on disk and `false`
    /// all of them in memory ([`CollectionSpec::keep_in_memory`]); `build` names the
    /// collections that break the rule.
    pub fn persist_outbox(mut self, persist: bool) -> Self {
        self.policy.persist_outbox = persist;
        self
    }

    /// The transport to the server (required).
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Registers a collection.
    pub fn collection(mut self, spec: CollectionSpec) -> Self {
        self.collections.push(spec);
        self
    }

    /// Registers a sync unit.
    pub fn unit(mut self, unit: SyncUnit) -> Self {
        self.units.push(unit);
        self
    }

    /// Replaces the options.
    pub fn options(mut self, options: EngineOptions) -> Self {
        self.options = options;
        self
    }

    /// Checks the configuration and starts the engine's background tasks on the current
    /// tokio runtime.
    ///
    /// # Errors
    /// [`Error::Config`] for a missing store or transport (or both a store and a
    /// device, or a device without an account), no collections, duplicate
    /// collections or units, a unit or a pattern's parent naming an unregistered
    /// collection, or zero batch
    /// sizes; [`Error::InvalidCollectionName`] for a bad name; [`Error::Storage`] when
    /// the store cannot give its client id; [`Error::AccountMismatch`] when the store
    /// belongs to another account than the one given (or `account` and `credentials`
    /// name different accounts).
    ///
    /// # Cancel safety
    /// Safe: nothing is started until the last await has returned.
    pub async fn build(self) -> Result<Engine, Error> {
        let config = |message: &str| Error::Config { message: message.to_owned() };
        let account = match (self.account, self.credentials.as_ref().map(|c| c.account().clone())) {
            (Some(account), Some(given)) if account != given => {
                return Err(Error::AccountMismatch { bound: account.to_string(), given: given.to_string() });
            }
            (account, given) => account.or(given),
        };
        if self.store.is_some() && self.device.is_some() {
            return Err(config("both .store(..) and .device(..): give one"));
        }
        if self.store.is_none() && self.device.is_none() {
            return Err(config("no store: call .store(..) or .device(..)"));
        }
        if self.device.is_some() && account.is_none() {
            return Err(config("a device holds one store per account: name it with .account(..) or .credentials(..)"));
        }
        let transport = self.transport.ok_or_else(|| config("no transport: call .transport(..)"))?;
        if self.collections.is_empty() {
            return Err(config("no collections: register at least one with .collection(..)"));
        }
        if self.options.push_batch == 0 || self.options.pull_limit == 0 || self.options.event_capacity == 0 {
            return Err(config("push_batch, pull_limit and event_capacity must be at least 1"));
        }
        if !(super::cache::MIN_CACHE_BUDGET..=super::cache::MAX_CACHE_BUDGET).contains(&self.options.cache_budget) {
            return Err(config("cache_budget must be from 1 MiB to 1 GiB"));
        }
        let mut collections = BTreeMap::new();
        let mut placed = Vec::new();
        let mut indexes: Vec<IndexSpec> = Vec::new();
        for spec in self.collections {
            let name = CollectionName::new(spec.name)?;
            placed.push(Placed {
                name: name.clone(),
                writable: spec.pattern.accepts_local_writes(),
                in_memory: spec.in_memory,
            });
            for fields in &spec.indexes {
                let fields = fields
                    .iter()
                    .map(|f| FieldPath::new(f))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Error::Config { message: format!("an index of collection {name}: {e}") })?;
                if fields.is_empty() {
                    return Err(Error::Config { message: format!("an index of collection {name} names no field") });
                }
                indexes.push(IndexSpec { collection: name.clone(), fields });
            }
            let ids = spec.mapping.id_assignment();
            if spec.on_demand && spec.pattern.pull_mode() == crate::pattern::PullMode::Replace {
                return Err(Error::Config {
                    message: format!(
                        "collection {name} is pulled whole each time by its pattern; it cannot be on_demand"
                    ),
                });
            }
            let entry = CollectionEntry {
                name: name.clone(),
                pattern: spec.pattern,
                mapping: spec.mapping,
                validate: spec.validate,
                ids,
                indexes: indexes.iter().filter(|i| i.collection == name).cloned().collect(),
                on_demand: spec.on_demand,
                kept: std::sync::atomic::AtomicBool::new(false),
            };
            if collections.insert(name.clone(), Arc::new(entry)).is_some() {
                return Err(Error::Config { message: format!("collection {name} is registered twice") });
            }
        }
        let relations = relations(&collections)?;
        let mut units = BTreeMap::new();
        units.insert(
            ALL_UNIT.to_owned(),
            UnitSpec {
                name: ALL_UNIT.to_owned(),
                collections: collections.keys().cloned().collect(),
                direction: Direction::Both,
            },
        );
        // Pushes what another process sharing the store queued (no pull: a pull that
        // brings nothing still writes its cursor, and two processes would wake each
        // other forever).
        units.insert(
            PUSH_UNIT.to_owned(),
            UnitSpec {
                name: PUSH_UNIT.to_owned(),
                collections: collections.keys().cloned().collect(),
                direction: Direction::Push,
            },
        );
        for unit in self.units {
            let mut names = BTreeSet::new();
            for c in &unit.collections {
                let name = CollectionName::new(c.clone())?;
                if !collections.contains_key(&name) {
                    return Err(Error::Config {
                        message: format!("sync unit {:?} names collection {name}, which is not registered", unit.name),
                    });
                }
                names.insert(name);
            }
            if names.is_empty() {
                return Err(Error::Config { message: format!("sync unit {:?} names no collection", unit.name) });
            }
            let spec = UnitSpec {
                name: unit.name.clone(),
                collections: names.into_iter().collect(),
                direction: unit.direction,
            };
            if units.insert(unit.name.clone(), spec).is_some() {
                return Err(Error::Config {
                    message: format!(
                        "sync unit {:?} is defined twice (or is a reserved one, {ALL_UNIT:?} or {PUSH_UNIT:?})",
                        unit.name
                    ),
                });
            }
        }
        let placement = place(&self.policy, &placed)?;
        let store = open_store(self.store, self.device.as_ref(), account.as_ref(), &placement).await?;
        let names: Vec<CollectionName> = collections.keys().cloned().collect();
        store.ensure_indexes(&names, &indexes).await?;
        let account = store.account().await?;
        if self.policy.persist_token && !store.encrypted() {
            return Err(config(
                "persist_token(true) keeps the token only in an encrypted store: open the store with an encryption key \
                 (sync-sqlite's `encryption` feature), or leave the token to the app",
            ));
        }
        let mut credentials = self.credentials;
        match (&credentials, &account, self.policy.persist_token) {
            (Some(given), _, true) => store.save_token(Some(given.token())).await?,
            (None, Some(account), true) => {
                if let Some(token) = store.saved_token().await? {
                    // A kept token that no longer parses is dropped, not fatal: the
                    // provider or the app supplies a new one.
                    credentials = Credentials::new(account.clone(), token).ok();
                }
            }
            _ => {}
        }
        if self.token_provider.is_some() && account.is_none() {
            return Err(config(
                "a token provider needs to know whose tokens to ask for: name the account with .account(..)",
            ));
        }
        let client_id = store.client_id().await?;
        super::subscriptions::release_held(&*store, chrono::Utc::now()).await?;
        // The first status already tells the truth about what waits on disk, here and
        // in the other accounts' stores.
        let counts = store.counts().await?;
        let on_demand: Vec<CollectionName> =
            collections.values().filter(|e| e.on_demand).map(|e| e.name.clone()).collect();
        // What an earlier run wrote and had acknowledged but did not see pulled (a
        // crash in between) goes now if no subscription holds it.
        store.let_go_all_unheld(&on_demand).await?;
        let cache_bytes = if on_demand.is_empty() { None } else { Some(store.cache_size().await?) };
        let held_for_other_accounts = match (&self.device, &account) {
            // A count for display: another account's unreadable store must not keep
            // this person from working.
            (Some(device), Some(account)) => match device.accounts().await {
                Ok(accounts) => held_for_others(&accounts, account),
                Err(e) => {
                    tracing::warn!(error = %e, "the other accounts' stores could not be read; held count shown as 0");
                    0
                }
            },
            _ => 0,
        };
        Ok(Engine::start(Parts {
            store,
            device: self.device,
            account,
            credentials,
            token_provider: self.token_provider,
            persist_token: self.policy.persist_token,
            transport,
            collections,
            units,
            relations,
            options: self.options,
            client_id,
            counts,
            cache_bytes,
            held_for_other_accounts,
        }))
    }
}

/// The engine's store, where the placement says: the app's store (refused when it is
/// on disk and nothing may be), the device's store of `account` on disk or in memory,
/// or both, split by collection.
async fn open_store(
    store: Option<Arc<dyn LocalStore>>,
    device: Option<&Arc<dyn DeviceStores>>,
    account: Option<&AccountId>,
    placement: &Placement,
) -> Result<Arc<dyn LocalStore>, Error> {
    let config = |message: &str| Error::Config { message: message.to_owned() };
    type Side = Option<Arc<dyn LocalStore>>;
    let (disk, memory): (Side, Side) = match (store, device, account) {
        (Some(store), _, _) if placement.all_in_memory => {
            if store.on_disk() {
                return Err(config(
                    "nothing may be written to disk (trusted_device(false), or every collection in memory), but the \
                     store given with .store(..) is on disk: give an in-memory store, or a device",
                ));
            }
            (None, Some(store))
        }
        (Some(store), _, _) if placement.all_on_disk() => (Some(store), None),
        (Some(store), _, _) => {
            let memory = store.in_memory_sibling().await?;
            (Some(store), Some(memory))
        }
        (None, Some(device), Some(account)) => {
            let disk = if placement.all_in_memory { None } else { Some(device.open(account, Residence::Disk).await?) };
            let memory =
                if placement.all_on_disk() { None } else { Some(device.open(account, Residence::Memory).await?) };
            (disk, memory)
        }
        (None, _, _) => return Err(config("no store: call .store(..) or .device(..)")),
    };
    let store: Arc<dyn LocalStore> = match (disk, memory) {
        (Some(disk), Some(memory)) => Arc::new(SplitStore { disk, memory, in_memory: placement.memory.clone() }),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => return Err(config("no store")),
    };
    if let Some(account) = account {
        store.bind_account(account).await?;
    }
    Ok(store)
}

/// What the other accounts on the device still have to send (queued and parked).
fn held_for_others(accounts: &[crate::device::AccountSummary], account: &AccountId) -> u64 {
    accounts
        .iter()
        .filter(|a| &a.account != account)
        .map(|a| a.counts.pending.saturating_add(a.counts.failed))
        .fold(0, u64::saturating_add)
}

/// Collects the patterns' foreign keys and the mappings' id assignment; a key into an
/// unregistered collection is a configuration error.
fn relations(collections: &BTreeMap<CollectionName, Arc<CollectionEntry>>) -> Result<Relations, Error> {
    let mut relations = Relations::default();
    for (name, entry) in collections {
        for parent in entry.pattern.parents() {
            if !collections.contains_key(&parent.collection) {
                return Err(Error::Config {
                    message: format!(
                        "collection {name} points at {} through {:?}, which is not registered",
                        parent.collection,
                        parent.field.as_str()
                    ),
                });
            }
            relations.foreign_keys.push(ForeignKey {
                child: name.clone(),
                field: parent.field,
                parent: parent.collection,
            });
        }
        if entry.server_assigns_ids() {
            relations.server_ids.push((name.clone(), entry.server_id_field().cloned()));
        }
    }
    Ok(relations)
}

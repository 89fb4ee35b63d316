//! The engine: the handle apps hold, its shared state and its public API.

mod builder;
mod cache;
mod checks;
mod collection;
mod cycle;
mod driver;
mod schedule;
mod subscriptions;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::Utc;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use builder::{ALL_UNIT, CollectionSpec, Direction, EngineBuilder, EngineOptions, SyncUnit};
pub use cache::{DEFAULT_CACHE_BUDGET, MAX_CACHE_BUDGET, MIN_CACHE_BUDGET};
pub use collection::{Collection, QueryBuilder, Tracked, WatchStream};
pub use subscriptions::SubscriptionHandle;

use crate::auth::TokenProvider;
use crate::device::DeviceStores;
use crate::entity::LocalEntity;
use crate::error::Error;
use crate::ids::{AccountId, ClientId, CollectionName, MutationId, RecordId};
use crate::pattern::Resolution;
use crate::status::{AuthState, Network, Origin, SyncEvent, SyncReport, SyncStatus};
use crate::store::{Conflict, Counts, LocalStore, OutboxEntry, Relations, StoreResolution};
use crate::transport::{Credentials, Transport};
use builder::{CollectionEntry, UnitSpec};
use driver::Command;

/// Options for triggering a sync unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TriggerOptions {
    /// Drop the units queued behind the running one (their callers get
    /// [`Error::Discarded`]).
    pub discard_queued: bool,
}

/// Connectivity as the engine tracks it: what the app allows and what it has seen.
#[derive(Debug, Clone, Copy)]
struct NetState {
    app_online: bool,
    reachable: bool,
}

impl NetState {
    fn network(self) -> Network {
        if self.app_online && self.reachable { Network::Online } else { Network::Offline }
    }
}

/// How [`Engine::sign_out`] leaves the person's data on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignOut {
    /// Keep the store (records, queue, conflicts): the queue goes out when the same
    /// account signs in again.
    Keep,
    /// Delete the store, unsent writes included (counted in the [`SignOutReport`]).
    Discard,
}

/// What [`Engine::sign_out`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignOutReport {
    /// Queued writes deleted unsent ([`SignOut::Discard`]); 0 for [`SignOut::Keep`].
    pub discarded_pending: u64,
    /// Parked (rejected) writes deleted.
    pub discarded_failed: u64,
    /// Open conflicts deleted unsettled.
    pub discarded_conflicts: u64,
}

/// Everything [`Engine::start`] needs, checked by the builder.
pub(crate) struct Parts {
    pub(crate) store: Arc<dyn LocalStore>,
    pub(crate) device: Option<Arc<dyn DeviceStores>>,
    pub(crate) account: Option<AccountId>,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) token_provider: Option<Arc<dyn TokenProvider>>,
    pub(crate) persist_token: bool,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) collections: BTreeMap<CollectionName, Arc<CollectionEntry>>,
    pub(crate) units: BTreeMap<String, UnitSpec>,
    pub(crate) relations: Relations,
    pub(crate) options: EngineOptions,
    pub(crate) client_id: ClientId,
    pub(crate) counts: Counts,
    pub(crate) held_for_other_accounts: u64,
    /// The cache's size at start (None without collections synced on demand).
    pub(crate) cache_bytes: Option<u64>,
}

/// State shared by the handle and the background tasks.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn LocalStore>,
    /// The stores of the device's other accounts (None for a single store).
    device: Option<Arc<dyn DeviceStores>>,
    /// The account whose store this is; None while a single store is not bound yet.
    account: Mutex<Option<AccountId>>,
    /// The credentials the transport holds, as far as the engine gave them.
    credentials: Mutex<Option<Credentials>>,
    pub(crate) token_provider: Option<Arc<dyn TokenProvider>>,
    /// Whether the token is kept in the (encrypted) store.
    persist_token: bool,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) collections: BTreeMap<CollectionName, Arc<CollectionEntry>>,
    pub(crate) units: BTreeMap<String, UnitSpec>,
    /// Foreign keys and server-assigned ids, for the store's push calls.
    pub(crate) relations: Relations,
    pub(crate) options: EngineOptions,
    pub(crate) client_id: ClientId,
    pub(crate) status: watch::Sender<SyncStatus>,
    pub(crate) events: broadcast::Sender<SyncEvent>,
    pub(crate) commands: mpsc::Sender<Command>,
    /// Set when a trigger found the command channel full (see [`request`]): the driver
    /// then syncs everything, so a dropped command never means a sync that does not run.
    pub(crate) overflow: Arc<Notify>,
    pub(crate) local_writes: Notify,
    /// When the last local write committed; the debounce counts from it.
    /// This and `net` hold plain `Copy` state that is whole at every point, so a lock
    /// poisoned by a panic elsewhere still holds a valid value: it is read through
    /// (`PoisonError::into_inner`), never taken as "offline" or "no write".
    last_local_write: Mutex<Option<tokio::time::Instant>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    net: Mutex<NetState>,
    /// This engine instance's name on the store's sync lease (unique per process and
    /// engine, unlike the client id, which the processes sharing a store share).
    pub(crate) lease_holder: String,
    /// The live queries' change checks, gathered into one store call per moment.
    pub(crate) checks: Arc<checks::Checks>,
    /// The subscriptions' handles and statuses.
    pub(crate) subscriptions: subscriptions::Subscriptions,
    /// The cache budget's meter and the reads not yet handed to the store.
    pub(crate) cache: cache::Cache,
}

impl Shared {
    /// Gives the transport `credentials` (None: forget the token) and remembers them.
    pub(crate) fn install_credentials(&self, credentials: Option<Credentials>) {
        let mut held = self.credentials.lock().unwrap_or_else(PoisonError::into_inner);
        self.transport.set_credentials(credentials.clone());
        *held = credentials;
    }

    /// Gives the transport `credentials` and, when the token is persisted, keeps it in
    /// the store (forgets it for None). A token that cannot be kept is logged: it still
    /// serves this run, and the next start asks the provider or the app.
    pub(crate) async fn adopt_credentials(&self, credentials: Option<Credentials>) {
        let token = credentials.as_ref().map(|c| c.token().to_owned());
        self.install_credentials(credentials);
        if self.persist_token {
            if let Err(e) = self.store.save_token(token.as_deref()).await {
                tracing::warn!(error = %e, "the session token could not be kept in the store");
            }
        }
    }

    /// The token the transport holds, as the engine gave it.
    pub(crate) fn current_token(&self) -> Option<String> {
        self.credentials.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|c| c.token().to_owned())
    }

    /// The account the engine serves.
    pub(crate) fn account(&self) -> Option<AccountId> {
        self.account.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn emit(&self, event: SyncEvent) {
        // No receiver is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }

    /// Tells the driver that a local write committed (it debounces a sync and refreshes
    /// the status counts).
    pub(crate) fn local_write_happened(&self) {
        *self.last_local_write.lock().unwrap_or_else(PoisonError::into_inner) = Some(tokio::time::Instant::now());
        self.local_writes.notify_one();
    }

    /// When the last local write committed.
    pub(crate) fn last_local_write(&self) -> Option<tokio::time::Instant> {
        *self.last_local_write.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks for a sync of everything the way a local write does: after the debounce
    /// quiet time (none by default, so at once). An app that turned automatic syncs off
    /// with a long debounce (as the simulator does) gets no cycle it did not ask for.
    pub(crate) fn sync_soon(&self) {
        self.local_write_happened();
    }

    pub(crate) fn record_changed(&self, collection: &CollectionName, id: &RecordId, origin: Origin) {
        self.emit(SyncEvent::RecordChanged { collection: collection.clone(), id: id.clone(), origin });
    }

    pub(crate) fn net(&self) -> NetStateView {
        let net = *self.net.lock().unwrap_or_else(PoisonError::into_inner);
        NetStateView { app_online: net.app_online, reachable: net.reachable }
    }

    /// Updates the connectivity state; publishes and returns the new network state when it changed.
    pub(crate) fn update_net(&self, f: impl FnOnce(&mut NetStateView)) -> Option<Network> {
        let (before, after) = {
            let mut net = self.net.lock().unwrap_or_else(PoisonError::into_inner);
            let before = net.network();
            let mut view = NetStateView { app_online: net.app_online, reachable: net.reachable };
            f(&mut view);
            net.app_online = view.app_online;
            net.reachable = view.reachable;
            (before, net.network())
        };
        if before == after {
            return None;
        }
        self.status.send_modify(|s| s.network = after);
        self.emit(SyncEvent::NetworkChanged { network: after });
        Some(after)
    }

    /// Reads the store's counts into the status.
    /// Reads the pending, conflict and failed counts into the status. A failed read is
    /// logged and leaves the last counts in place: they are a display, not a decision, the
    /// next write or cycle reads them again, and an operation that already succeeded
    /// (a resolution, a retry) must not be reported as failed because of them.
    pub(crate) async fn refresh_counts(&self) {
        let counts = match self.store.counts().await {
            Ok(counts) => counts,
            Err(e) => {
                tracing::warn!(error = %e, "status counts could not be read; the status keeps the last ones");
                return;
            }
        };
        self.status.send_if_modified(|s| {
            let changed = s.pending != counts.pending || s.conflicts != counts.conflicts || s.failed != counts.failed;
            s.pending = counts.pending;
            s.conflicts = counts.conflicts;
            s.failed = counts.failed;
            changed
        });
    }

    pub(crate) fn collection(&self, name: &str) -> Result<&Arc<CollectionEntry>, Error> {
        CollectionName::new(name)
            .and_then(|n| self.collections.get(&n).ok_or(Error::UnknownCollection { name: name.to_owned() }))
    }

    /// Applies a resolution to a stored conflict.
    pub(crate) async fn apply_resolution(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        resolution: Resolution,
    ) -> Result<bool, Error> {
        let store_resolution = match resolution {
            Resolution::Defer => return Ok(false),
            Resolution::KeepLocal => StoreResolution::KeepLocal,
            Resolution::KeepServer => StoreResolution::KeepServer,
            Resolution::Merged(value) => StoreResolution::Merged(value),
        };
        let origin = if store_resolution == StoreResolution::KeepServer { Origin::Remote } else { Origin::Local };
        self.store.resolve_conflict(collection, id, store_resolution, MutationId::generate(), Utc::now()).await?;
        self.emit(SyncEvent::ConflictResolved { collection: collection.clone(), id: id.clone() });
        self.record_changed(collection, id, origin);
        self.may_be_unheld(collection, id);
        Ok(true)
    }

    /// A record of an on-demand collection may have become clean with no subscription
    /// holding it (its conflict settled, its parked write discarded): the next pull
    /// decides whether it stays (see the cycle's `sweep_unheld`).
    pub(crate) fn may_be_unheld(&self, collection: &CollectionName, id: &RecordId) {
        if self.collections.get(collection).is_some_and(|e| e.on_demand) {
            self.subscriptions.note_written(vec![(collection.clone(), id.clone())]);
        }
    }
}

/// A copy of the connectivity flags, for reading and updating.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NetStateView {
    pub(crate) app_online: bool,
    pub(crate) reachable: bool,
}

/// Lets a transport tell the engine that the server has changes (the "server change
/// notification" trigger). Cheap to clone; it never keeps the engine alive.
#[derive(Clone)]
pub struct ChangeNotifier {
    client_id: ClientId,
    commands: mpsc::Sender<Command>,
    overflow: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
}

impl ChangeNotifier {
    /// Triggers a sync of everything (coalesced with any already queued).
    pub fn notify(&self) {
        let command = Command::Trigger { unit: ALL_UNIT.to_owned(), discard_queued: false, reply: None };
        request(&self.commands, &self.overflow, command);
    }

    /// The engine's client id (a transport that follows the server's notifications
    /// sends it, so that the server does not announce this device's own pushes to it).
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// True once the engine has shut down: the notifier's owner can stop listening.
    pub fn is_closed(&self) -> bool {
        *self.shutdown.borrow() || self.commands.is_closed()
    }
}

/// Hands an automatic trigger to the driver without waiting. When the channel is full
/// the command is not queued, but `overflow` is flagged and the driver syncs everything
/// when it gets to it: the trigger is folded into a larger one instead of lost. When the
/// engine has shut down there is nothing left to run it.
fn request(commands: &mpsc::Sender<Command>, overflow: &Notify, command: Command) {
    if let Err(mpsc::error::TrySendError::Full(_)) = commands.try_send(command) {
        tracing::debug!("engine command channel full; a sync of everything is flagged instead");
        overflow.notify_one();
    }
}

/// Stops the background tasks when the last [`Engine`] clone is dropped.
struct Lifetime {
    shutdown: watch::Sender<bool>,
    driver: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// The sync engine. Cheap to clone; every clone is the same engine. Dropping the last
/// clone stops it at once: a cycle in flight is abandoned, and every store operation is
/// atomic, so nothing acknowledged is lost and the next start resends the same mutation ids.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    lifetime: Arc<Lifetime>,
}

impl Engine {
    /// Starts configuring an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    fn start(parts: Parts) -> Self {
        let Parts {
            store,
            device,
            account,
            credentials,
            token_provider,
            persist_token,
            transport,
            collections,
            units,
            relations,
            options,
            client_id,
            counts,
            held_for_other_accounts,
            cache_bytes,
        } = parts;
        if let Some(credentials) = &credentials {
            transport.set_credentials(Some(credentials.clone()));
        }
        let net = NetState { app_online: options.start_online, reachable: true };
        let mut initial = SyncStatus::initial(net.network());
        (initial.pending, initial.conflicts, initial.failed) = (counts.pending, counts.conflicts, counts.failed);
        initial.held_for_other_accounts = held_for_other_accounts;
        initial.cache = crate::status::CacheUsage { bytes: cache_bytes.unwrap_or(0), budget: options.cache_budget };
        let cache = cache::Cache::new(options.cache_budget, cache_bytes);
        let (status, _) = watch::channel(initial);
        let (events, _) = broadcast::channel(options.event_capacity);
        let (commands, command_rx) = mpsc::channel(64);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            store,
            device,
            account: Mutex::new(account),
            credentials: Mutex::new(credentials),
            token_provider,
            persist_token,
            transport,
            collections,
            units,
            relations,
            options,
            client_id,
            status,
            events,
            commands,
            overflow: Arc::new(Notify::new()),
            local_writes: Notify::new(),
            last_local_write: Mutex::new(None),
            shutdown: shutdown_rx.clone(),
            net: Mutex::new(net),
            lease_holder: uuid::Uuid::now_v7().to_string(),
            checks: Arc::default(),
            subscriptions: subscriptions::Subscriptions::default(),
            cache,
        });
        let driver = driver::spawn(shared.clone(), command_rx, shutdown_rx);
        Self { shared, lifetime: Arc::new(Lifetime { shutdown, driver: Mutex::new(Some(driver)) }) }
    }

    /// A typed handle on the collection of entity `E`.
    ///
    /// # Errors
    /// [`Error::UnknownCollection`] when `E`'s collection was not registered.
    pub fn collection<E: LocalEntity>(&self) -> Result<Collection<E>, Error> {
        let entry = self.shared.collection(E::COLLECTION)?.clone();
        Ok(Collection::new(self.shared.clone(), entry))
    }

    /// The status, as a `watch` receiver: always the latest snapshot, never blocking the engine.
    pub fn status(&self) -> watch::Receiver<SyncStatus> {
        self.shared.status.subscribe()
    }

    /// A receiver of every event from now on.
    pub fn events(&self) -> broadcast::Receiver<SyncEvent> {
        self.shared.events.subscribe()
    }

    /// This device's client id.
    pub fn client_id(&self) -> &ClientId {
        &self.shared.client_id
    }

    /// Runs the `all` unit now (or right after the running cycle) and returns its report.
    ///
    /// # Errors
    /// The cycle's error ([`Error::Unreachable`] when offline, [`Error::Unauthorized`]
    /// while credentials are refused, ...); nothing queued is lost on any error.
    ///
    /// # Cancel safety
    /// Safe: dropping the future does not cancel the cycle, only the wait for its report.
    pub async fn sync_now(&self) -> Result<SyncReport, Error> {
        self.sync_unit(ALL_UNIT, TriggerOptions::default()).await
    }

    /// Runs one sync unit alone and returns its report. A unit triggered while it runs
    /// runs once more afterwards.
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown unit; [`Error::Discarded`] when a later trigger
    /// discarded it; otherwise as [`Engine::sync_now`].
    ///
    /// # Cancel safety
    /// Safe, as [`Engine::sync_now`].
    pub async fn sync_unit(&self, unit: &str, options: TriggerOptions) -> Result<SyncReport, Error> {
        if !self.shared.units.contains_key(unit) {
            return Err(Error::Config { message: format!("unknown sync unit {unit:?}") });
        }
        let (reply, answer) = oneshot::channel();
        let command =
            Command::Trigger { unit: unit.to_owned(), discard_queued: options.discard_queued, reply: Some(reply) };
        self.shared.commands.send(command).await.map_err(|_| Error::Shutdown)?;
        answer.await.map_err(|_| Error::Shutdown)?
    }

    /// A handle for transports that hear the server announce changes (such as an SSE
    /// stream): each `notify` triggers a sync. It does not keep the engine alive.
    pub fn change_notifier(&self) -> ChangeNotifier {
        ChangeNotifier {
            client_id: self.shared.client_id.clone(),
            commands: self.shared.commands.clone(),
            overflow: self.shared.overflow.clone(),
            shutdown: self.shared.shutdown.clone(),
        }
    }

    /// Tells the engine whether the app allows the network. Going online triggers a
    /// reconnect sync; going offline stops network use (local writes go on).
    pub fn set_online(&self, online: bool) {
        let changed = self.shared.update_net(|n| {
            n.app_online = online;
            if online {
                // The app knows better than our last failure: try at once.
                n.reachable = true;
            }
        });
        if changed == Some(Network::Online) {
            request(&self.shared.commands, &self.shared.overflow, Command::Reconnected);
        }
    }

    /// Whether the app has the engine online ([`Engine::set_online`]); the network
    /// state in the status also says whether the server was reachable.
    pub fn is_online(&self) -> bool {
        self.shared.net().app_online
    }

    /// The account the engine serves: the one its store is bound to (None for a single
    /// store no credentials have been given for yet).
    pub fn account(&self) -> Option<AccountId> {
        self.shared.account()
    }

    /// Supplies new credentials (a refreshed token, or the first one): the transport
    /// gets them, pushes resume, and the same queued mutations go out with the same ids.
    ///
    /// Credentials of another account than the store's are refused: this store's queue
    /// never goes out under another person's token, and the transport keeps the token
    /// it had. A single store not bound yet is bound to their account now.
    ///
    /// # Errors
    /// [`Error::AccountMismatch`] for another account's credentials (nothing changes);
    /// [`Error::Storage`] when the binding cannot be stored.
    ///
    /// # Cancel safety
    /// Safe: the binding is one atomic store call, and the transport gets the token
    /// only after it.
    pub async fn set_credentials(&self, credentials: Credentials) -> Result<(), Error> {
        let bound = self.account();
        match bound {
            Some(bound) if &bound != credentials.account() => {
                return Err(Error::AccountMismatch {
                    bound: bound.to_string(),
                    given: credentials.account().to_string(),
                });
            }
            Some(_) => {}
            None => {
                self.shared.store.bind_account(credentials.account()).await?;
                *self.shared.account.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(credentials.account().clone());
            }
        }
        self.shared.adopt_credentials(Some(credentials)).await;
        let was_required = self.shared.status.send_if_modified(|s| {
            let changed = s.auth == AuthState::Required;
            s.auth = AuthState::Ok;
            changed
        });
        if was_required {
            request(&self.shared.commands, &self.shared.overflow, Command::Reconnected);
        }
        Ok(())
    }

    /// Signs the person out: the engine stops (a cycle in flight is abandoned, as on
    /// shutdown) and the transport forgets the token. [`SignOut::Keep`] leaves the store
    /// whole for the person's next sign-in; [`SignOut::Discard`] deletes it, files and
    /// all, and reports what was deleted unsent. Other clones of this engine fail with
    /// [`Error::Shutdown`] from then on. To let another person in, build an engine for
    /// their account (with [`EngineBuilder::device`], each account has its own store).
    ///
    /// # Errors
    /// [`Error::Storage`] when a kept token cannot be removed from the store, the
    /// counts cannot be read or a file cannot be removed; the engine has stopped and
    /// the transport has forgotten the token either way.
    ///
    /// # Cancel safety
    /// Not cancel safe for [`SignOut::Discard`]: dropped half way, the store may be
    /// closed without its files removed. Call it again on a fresh engine, or
    /// [`Engine::wipe`].
    pub async fn sign_out(self, mode: SignOut) -> Result<SignOutReport, Error> {
        self.stop().await;
        self.shared.install_credentials(None);
        if self.shared.persist_token {
            // Forgetting a kept token is what sign-out promises: its failure is reported.
            self.shared.store.save_token(None).await?;
        }
        match mode {
            SignOut::Keep => Ok(SignOutReport::default()),
            SignOut::Discard => {
                let counts = self.shared.store.counts().await?;
                self.shared.store.destroy().await?;
                Ok(SignOutReport {
                    discarded_pending: counts.pending,
                    discarded_failed: counts.failed,
                    discarded_conflicts: counts.conflicts,
                })
            }
        }
    }

    /// Deletes everything offsync keeps on this device: this engine's store and, with
    /// [`EngineBuilder::device`], the stores of every other account, files and all. The
    /// engine stops first and the transport forgets the token; queued writes of every
    /// account are lost (read [`SyncStatus::pending`] and
    /// [`SyncStatus::held_for_other_accounts`] first to warn the user).
    ///
    /// # Errors
    /// [`Error::Storage`] when a file cannot be removed.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped half way, some stores may remain; call it again.
    pub async fn wipe(self) -> Result<(), Error> {
        self.stop().await;
        self.shared.install_credentials(None);
        self.shared.store.destroy().await?;
        if let Some(device) = &self.shared.device {
            device.wipe().await?;
        }
        Ok(())
    }

    /// The id the server gave a record created here as `local_id`, for a collection
    /// whose ids the server assigns ([`crate::IdAssignment::Server`]); None when it was
    /// never renamed. [`Collection::get`], `update` and `delete` follow it already.
    ///
    /// # Errors
    /// [`Error::UnknownCollection`], [`Error::InvalidRecordId`], [`Error::Storage`].
    ///
    /// # Cancel safety
    /// Safe: it only reads.
    pub async fn server_id(&self, collection: &str, local_id: &str) -> Result<Option<RecordId>, Error> {
        let entry = self.shared.collection(collection)?;
        self.shared.store.server_id(&entry.name, &RecordId::new(local_id)?).await
    }

    /// Every open conflict, with local, server and base data side by side.
    ///
    /// # Errors
    /// [`Error::Storage`].
    ///
    /// # Cancel safety
    /// Safe: it only reads.
    pub async fn conflicts(&self) -> Result<Vec<Conflict>, Error> {
        self.shared.store.conflicts().await
    }

    /// Settles the conflict of one record. `Resolution::Defer` leaves it open.
    ///
    /// # Errors
    /// [`Error::UnknownCollection`], [`Error::InvalidRecordId`], [`Error::NoConflict`],
    /// [`Error::Storage`].
    ///
    /// # Cancel safety
    /// Safe: the store applies the resolution in one transaction or not at all.
    pub async fn resolve(&self, collection: &str, id: &str, resolution: Resolution) -> Result<(), Error> {
        let entry = self.shared.collection(collection)?.clone();
        let id = RecordId::new(id)?;
        if self.shared.apply_resolution(&entry.name, &id, resolution).await? {
            self.shared.refresh_counts().await;
            self.shared.local_write_happened();
        }
        Ok(())
    }

    /// The parked (permanently rejected) mutations.
    ///
    /// # Errors
    /// [`Error::Storage`].
    ///
    /// # Cancel safety
    /// Safe: it only reads.
    pub async fn failed_mutations(&self) -> Result<Vec<OutboxEntry>, Error> {
        self.shared.store.failed_mutations().await
    }

    /// Queues a parked mutation again with the same id; later mutations of its record follow it.
    ///
    /// # Errors
    /// [`Error::NoFailedMutation`], [`Error::Storage`].
    ///
    /// # Cancel safety
    /// Safe: one atomic store operation.
    pub async fn retry_failed(&self, id: MutationId) -> Result<(), Error> {
        self.shared.store.retry_failed(id).await?;
        self.shared.refresh_counts().await;
        self.shared.local_write_happened();
        Ok(())
    }

    /// Drops a parked mutation; when nothing else is queued for its record, the record
    /// returns to the last server-acknowledged data.
    ///
    /// # Errors
    /// [`Error::NoFailedMutation`], [`Error::Storage`].
    ///
    /// # Cancel safety
    /// Safe: one atomic store operation.
    pub async fn discard_failed(&self, id: MutationId) -> Result<(), Error> {
        if let Some((collection, record)) = self.shared.store.discard_failed(id).await? {
            self.shared.record_changed(&collection, &record, Origin::Remote);
            self.shared.may_be_unheld(&collection, &record);
        }
        self.shared.refresh_counts().await;
        self.shared.local_write_happened();
        Ok(())
    }

    /// Stops the engine and waits for its background tasks to end. A cycle in flight is
    /// abandoned; nothing is lost (see [`Engine`]).
    ///
    /// # Cancel safety
    /// Safe: the engine stops either way.
    pub async fn shutdown(self) {
        self.stop().await;
    }

    /// Stops the background tasks and waits for them.
    async fn stop(&self) {
        let _ = self.lifetime.shutdown.send(true);
        let handle = self.lifetime.driver.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trigger_that_finds_the_channel_full_flags_a_full_sync_instead() {
        let (commands, mut received) = mpsc::channel(1);
        let overflow = Notify::new();
        request(&commands, &overflow, Command::Reconnected);
        // Queued: nothing flagged.
        let flagged = tokio::time::timeout(std::time::Duration::ZERO, overflow.notified()).await;
        assert!(flagged.is_err());
        // The channel is full now: the next one is flagged, not lost.
        request(&commands, &overflow, Command::Reconnected);
        let flagged = tokio::time::timeout(std::time::Duration::ZERO, overflow.notified()).await;
        assert!(flagged.is_ok());
        assert!(matches!(received.try_recv(), Ok(Command::Reconnected)));
        assert!(received.try_recv().is_err());
        // Shut down (the driver is gone): nothing to flag.
        drop(received);
        request(&commands, &overflow, Command::Reconnected);
        let flagged = tokio::time::timeout(std::time::Duration::ZERO, overflow.notified()).await;
        assert!(flagged.is_err());
    }
}

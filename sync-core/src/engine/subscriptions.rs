//! The app's side of subscriptions: [`Engine::subscribe`], the handles that hold a
//! subscription while the app shows its data, and the statuses the cycle updates.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{Engine, Shared};
use crate::error::Error;
use crate::ids::{CollectionName, RecordId};
use crate::subscription::{Subscribe, SubscriptionId, SubscriptionRow, SubscriptionState, SubscriptionStatus};

/// The subscriptions this engine knows of: how many handles hold each, and its status.
#[derive(Default)]
pub(crate) struct Subscriptions {
    entries: Mutex<BTreeMap<SubscriptionId, Entry>>,
    /// Taken to save a subscription's held or released mark: a release saved by a
    /// dropped handle's task checks, under it, that no new handle came meanwhile.
    saving: tokio::sync::Mutex<()>,
    /// Records of on-demand collections pushed since the last pull of their collection.
    written: Mutex<BTreeSet<(CollectionName, RecordId)>>,
}

struct Entry {
    handles: usize,
    status: watch::Sender<SubscriptionStatus>,
}

impl Subscriptions {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<SubscriptionId, Entry>) -> T) -> T {
        // The map holds counts and channels, whole at every point: a panic elsewhere
        // leaves it usable.
        f(&mut self.entries.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The status channel of `id`, made from its stored row when first asked.
    pub(crate) fn status(
        &self,
        id: &SubscriptionId,
        synced_at: Option<DateTime<Utc>>,
    ) -> watch::Sender<SubscriptionStatus> {
        self.with(|entries| {
            entries
                .entry(id.clone())
                .or_insert_with(|| {
                    let state = match synced_at {
                        Some(at) => SubscriptionState::Synced { at },
                        None => SubscriptionState::Pending,
                    };
                    Entry { handles: 0, status: watch::channel(SubscriptionStatus::new(id.clone(), state)).0 }
                })
                .status
                .clone()
        })
    }

    /// One more handle on `id`; returns how many hold it now.
    fn hold(&self, id: &SubscriptionId) -> usize {
        self.with(|entries| {
            entries.get_mut(id).map_or(0, |e| {
                e.handles += 1;
                e.handles
            })
        })
    }

    /// How many handles hold `id`.
    pub(crate) fn handles(&self, id: &SubscriptionId) -> usize {
        self.with(|entries| entries.get(id).map_or(0, |e| e.handles))
    }

    /// Notes records of on-demand collections a push carried.
    pub(crate) fn note_written(&self, records: Vec<(CollectionName, RecordId)>) {
        if !records.is_empty() {
            self.written.lock().unwrap_or_else(PoisonError::into_inner).extend(records);
        }
    }

    /// Takes the noted records of `collections`.
    pub(crate) fn take_written(&self, collections: &[CollectionName]) -> Vec<(CollectionName, RecordId)> {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        let (taken, kept): (BTreeSet<_>, BTreeSet<_>) =
            std::mem::take(&mut *written).into_iter().partition(|(c, _)| collections.contains(c));
        *written = kept;
        taken.into_iter().collect()
    }

    /// One handle fewer on `id`; returns how many still hold it.
    fn let_go(&self, id: &SubscriptionId) -> usize {
        self.with(|entries| {
            entries.get_mut(id).map_or(0, |e| {
                e.handles = e.handles.saturating_sub(1);
                e.handles
            })
        })
    }
}

/// Holds a subscription while the app shows its data. Dropping the last handle of a
/// subscription releases it: its data stays for the subscription's time to live (unless
/// kept synced), then goes at the next sync. It does not keep the engine alive.
pub struct SubscriptionHandle {
    shared: Arc<Shared>,
    subscription: Subscribe,
    status: watch::Receiver<SubscriptionStatus>,
}

impl std::fmt::Debug for SubscriptionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionHandle").field("id", &self.subscription.id()).finish_non_exhaustive()
    }
}

impl SubscriptionHandle {
    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.subscription.id()
    }

    /// The subscription's status, as it changes.
    pub fn status(&self) -> watch::Receiver<SubscriptionStatus> {
        self.status.clone()
    }

    /// Keeps the subscription synced, and its records, even after its last handle goes
    /// (`false` gives it back its time to live from then).
    ///
    /// # Errors
    /// [`Error::Storage`].
    pub async fn keep_synced(&mut self, keep: bool) -> Result<(), Error> {
        self.subscription.keep_synced = keep;
        let _saving = self.shared.subscriptions.saving.lock().await;
        self.shared.store.save_subscription(&row(&self.shared, &self.subscription, true, None)).await
    }

    /// Waits until the subscription has caught up with the server (or failed).
    ///
    /// # Errors
    /// [`Error::Rejected`] when the server refused it or its sync failed;
    /// [`Error::Shutdown`] when the engine stopped first.
    pub async fn synced(&mut self) -> Result<DateTime<Utc>, Error> {
        let state = self
            .status
            .wait_for(|s| matches!(s.state, SubscriptionState::Synced { .. } | SubscriptionState::Error { .. }))
            .await
            .map_err(|_| Error::Shutdown)?
            .state
            .clone();
        match state {
            SubscriptionState::Synced { at } => Ok(at),
            SubscriptionState::Error { code, message } => Err(Error::Rejected {
                // The server refused the subscription within a pull it answered.
                status: 400,
                code: code.unwrap_or(crate::protocol::ErrorCode::Internal),
                message,
            }),
            SubscriptionState::Pending | SubscriptionState::Syncing => Err(Error::Shutdown),
        }
    }
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        let id = self.subscription.id();
        if self.shared.subscriptions.let_go(&id) > 0 {
            return;
        }
        // The last handle: the subscription is released now; its time to live runs
        // from here. Without a runtime (the app is exiting) the next start releases it.
        let released = row(&self.shared, &self.subscription, false, Some(Utc::now()));
        let shared = self.shared.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _saving = shared.subscriptions.saving.lock().await;
                if shared.subscriptions.handles(&released.id) > 0 {
                    return; // held again meanwhile
                }
                if let Err(e) = shared.store.save_subscription(&released).await {
                    tracing::warn!(subscription = %released.id, error = %e, "a released subscription was not saved");
                }
            });
        }
    }
}

/// The row of `subscription` as the app holds it now (the store keeps its cursor): kept
/// synced when the app asked for it or its collection is kept synced.
fn row(shared: &Shared, subscription: &Subscribe, active: bool, released_at: Option<DateTime<Utc>>) -> SubscriptionRow {
    let collection_kept = shared
        .collections
        .get(&subscription.query.collection)
        .is_some_and(|e| e.kept.load(std::sync::atomic::Ordering::Relaxed));
    SubscriptionRow {
        id: subscription.id(),
        query: subscription.query.clone(),
        cursor: None,
        ttl: subscription.ttl,
        keep_synced: subscription.keep_synced || collection_kept,
        active,
        released_at,
        synced_at: None,
    }
}

impl Engine {
    /// Subscribes to part of a collection declared
    /// [`on_demand`](crate::CollectionSpec::on_demand): the engine syncs what the
    /// subscription covers, from now on, starting with a sync asked for as a local write
    /// asks (after the debounce quiet time, none by default). The same subscription made twice
    /// is one (handles share it); a record several cover is stored once. Queries and
    /// watches read the local store as always.
    ///
    /// # Errors
    /// [`Error::UnknownCollection`]; [`Error::Config`] for a collection that is not on
    /// demand; [`Error::Storage`].
    pub async fn subscribe(&self, subscription: Subscribe) -> Result<SubscriptionHandle, Error> {
        let entry = self.shared.collection(subscription.collection().as_str())?;
        if !entry.on_demand {
            return Err(Error::Config {
                message: format!(
                    "collection {} is synced whole; declare it on_demand() to sync it by subscriptions",
                    entry.name
                ),
            });
        }
        let id = subscription.id();
        let status = {
            let _saving = self.shared.subscriptions.saving.lock().await;
            self.shared.store.save_subscription(&row(&self.shared, &subscription, true, None)).await?;
            let stored = self.shared.store.subscriptions().await?;
            let stored = stored.iter().find(|r| r.id == id);
            let synced_at = stored.and_then(|r| r.synced_at);
            let status = self.shared.subscriptions.status(&id, synced_at);
            if stored.is_some_and(|r| r.cursor.is_none()) {
                // It downloads (again: the budget evicted some of its records) from the start.
                status.send_modify(|s| {
                    if matches!(s.state, SubscriptionState::Synced { .. }) {
                        s.state = SubscriptionState::Pending;
                    }
                });
            }
            let status = status.subscribe();
            self.shared.subscriptions.hold(&id);
            status
        };
        self.shared.sync_soon();
        Ok(SubscriptionHandle { shared: self.shared.clone(), subscription, status })
    }

    /// Keeps a whole collection's data synced, or stops, at run time. A collection
    /// synced whole always is (it is pulled whole and never evicted), so `true` changes
    /// nothing and `false` is refused. For a collection synced
    /// [`on_demand`](crate::CollectionSpec::on_demand), `true` keeps every subscription
    /// of it synced with no handle and out of the cache budget, those the store keeps now
    /// and those made from now on (for this engine's run: set it again at start);
    /// `false` takes keep-synced off all of them, those kept one by one too, so released
    /// ones go when their time to live ends.
    ///
    /// # Errors
    /// [`Error::UnknownCollection`]; [`Error::Config`] for `false` on a collection synced
    /// whole; [`Error::Storage`].
    pub async fn keep_synced(&self, collection: &str, keep: bool) -> Result<(), Error> {
        let entry = self.shared.collection(collection)?.clone();
        if !entry.on_demand {
            if keep {
                return Ok(());
            }
            return Err(Error::Config {
                message: format!(
                    "collection {} is synced whole and always kept; declare it on_demand() to cache it by subscriptions",
                    entry.name
                ),
            });
        }
        entry.kept.store(keep, std::sync::atomic::Ordering::Relaxed);
        let _saving = self.shared.subscriptions.saving.lock().await;
        for mut row in self.shared.store.subscriptions().await? {
            if row.query.collection == entry.name && row.keep_synced != keep {
                row.keep_synced = keep;
                if !keep && !row.active && row.released_at.is_none() {
                    // Kept with no handle since it was released: its time to live runs from now.
                    row.released_at = Some(Utc::now());
                }
                self.shared.store.save_subscription(&row).await?;
            }
        }
        Ok(())
    }

    /// Evicts now, down to `target` bytes of what the cache budget counts (0: all of
    /// it), least recently read first, released subscriptions' records before held
    /// ones': for an app told that memory or storage is short. Records with pending
    /// writes or conflicts and kept-synced ones stay, as in any eviction. Returns how
    /// many records went; watches see them go, and a held subscription brings one back
    /// when the app asks for it while online.
    ///
    /// # Errors
    /// [`Error::Storage`]; what was evicted before the error stays evicted.
    pub async fn trim_cache(&self, target: u64) -> Result<usize, Error> {
        let evicted = self.shared.cache.evict_down(&self.shared, |size| size.saturating_sub(target)).await?;
        for (collection, id) in &evicted {
            self.shared.record_changed(collection, id, crate::status::Origin::Remote);
        }
        Ok(evicted.len())
    }

    /// Every subscription the store keeps, held or released (until its time to live
    /// ends), with its cursor and synced time.
    ///
    /// # Errors
    /// [`Error::Storage`].
    pub async fn subscriptions(&self) -> Result<Vec<SubscriptionRow>, Error> {
        self.shared.store.subscriptions().await
    }
}

/// At start: no handle exists yet, so every stored subscription still marked held was
/// held by a run that ended; it is released now (its time to live runs from here).
pub(crate) async fn release_held(store: &dyn crate::store::LocalStore, now: DateTime<Utc>) -> Result<(), Error> {
    for mut stored in store.subscriptions().await? {
        if stored.active {
            stored.active = false;
            stored.released_at = Some(now);
            store.save_subscription(&stored).await?;
        }
    }
    Ok(())
}

//! What the UI sees: the `SyncStatus` snapshot and the `SyncEvent` stream.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::ids::{CollectionName, MutationId, RecordId};

/// Whether the engine can reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The app allows the network and the last contact succeeded.
    Online,
    /// The app set the engine offline, or the server could not be reached.
    Offline,
}

/// Whether the server accepts the current credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthState {
    /// No 401 since the credentials were last set.
    Ok,
    /// The server answered 401 and the token provider (if any) could not help: pushes
    /// and pulls are paused (nothing is dropped) until `Engine::set_credentials`.
    Required,
}

/// What the engine is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No cycle runs.
    Idle,
    /// A cycle runs.
    Syncing {
        /// The sync unit.
        unit: String,
        /// Mutations answered so far in this cycle.
        pushed: u64,
        /// Mutations that were queued when the cycle started.
        push_total: u64,
        /// Changes pulled so far in this cycle.
        pulled: u64,
    },
}

/// A snapshot of the sync state, published through a `tokio::sync::watch` channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    /// Online or offline.
    pub network: Network,
    /// Idle or syncing with progress.
    pub phase: Phase,
    /// Queued mutations.
    pub pending: u64,
    /// Open conflicts.
    pub conflicts: u64,
    /// Parked (rejected) mutations.
    pub failed: u64,
    /// Writes (queued and parked) of the device's other accounts, held until their own
    /// person signs in again; they never go out under this account's token. Read when
    /// the engine starts; 0 for an engine on a single store.
    pub held_for_other_accounts: u64,
    /// When a cycle last completed without error.
    pub last_success: Option<DateTime<Utc>>,
    /// The last cycle's error, cleared by the next success.
    pub last_error: Option<String>,
    /// Whether the credentials are accepted.
    pub auth: AuthState,
    /// When each collection was last pulled to completion.
    pub last_pull: BTreeMap<CollectionName, DateTime<Utc>>,
    /// What the cache budget counts, as last measured, and the budget.
    pub cache: CacheUsage,
}

/// The cache budget's figures (see [`EngineOptions::cache_budget`](crate::EngineOptions::cache_budget)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// The bytes of evictable records subscriptions brought, as last measured (after
    /// the last eviction); pending, conflicted and kept-synced records are not counted.
    pub bytes: u64,
    /// The budget, in bytes.
    pub budget: u64,
}

impl SyncStatus {
    pub(crate) fn initial(network: Network) -> Self {
        Self {
            network,
            phase: Phase::Idle,
            pending: 0,
            conflicts: 0,
            failed: 0,
            held_for_other_accounts: 0,
            last_success: None,
            last_error: None,
            auth: AuthState::Ok,
            last_pull: BTreeMap::new(),
            cache: CacheUsage::default(),
        }
    }
}

/// Where a record change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A write through a collection handle on this device.
    Local,
    /// A pull, a push acknowledgement or a conflict resolution taking the server's data.
    Remote,
}

/// The result of one sync cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The sync unit that ran.
    pub unit: String,
    /// Mutations the server applied.
    pub pushed: u64,
    /// New conflicts.
    pub conflicts: u64,
    /// Mutations rejected and parked.
    pub rejected: u64,
    /// Changes pulled and applied locally.
    pub pulled: u64,
    /// Pages pulled.
    pub pages: u64,
}

/// Something that happened, broadcast to every subscriber. A subscriber that falls
/// behind loses the oldest events (it sees `RecvError::Lagged`); it never slows the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncEvent {
    /// A cycle began.
    CycleStarted {
        /// The sync unit.
        unit: String,
    },
    /// A cycle made progress.
    CycleProgress {
        /// The sync unit.
        unit: String,
        /// Mutations answered so far.
        pushed: u64,
        /// Mutations queued at the start.
        push_total: u64,
        /// Changes pulled so far.
        pulled: u64,
    },
    /// A cycle completed.
    CycleCompleted {
        /// What it did.
        report: SyncReport,
    },
    /// A cycle stopped on an error; what it had done is kept.
    CycleFailed {
        /// The sync unit.
        unit: String,
        /// The error.
        error: String,
        /// Whether it will be retried without the app's help.
        retryable: bool,
    },
    /// Another process that opened the same store committed changes to it (which
    /// records is not known): live queries run again.
    StoreChangedElsewhere,
    /// A record changed in the local store.
    RecordChanged {
        /// The collection.
        collection: CollectionName,
        /// The record.
        id: RecordId,
        /// Local write or server data.
        origin: Origin,
    },
    /// The server gave a record created here an id of its own: the record, its queued
    /// mutations and the foreign keys pointing at it now use `server_id`
    /// ([`crate::IdAssignment::Server`]). A UI holding `local_id` follows it here.
    RecordIdAssigned {
        /// The collection.
        collection: CollectionName,
        /// The id the record was created with.
        local_id: RecordId,
        /// The id it has from now on.
        server_id: RecordId,
    },
    /// A conflict was stored.
    ConflictDetected {
        /// The collection.
        collection: CollectionName,
        /// The record.
        id: RecordId,
    },
    /// A conflict was settled.
    ConflictResolved {
        /// The collection.
        collection: CollectionName,
        /// The record.
        id: RecordId,
    },
    /// The server rejected a mutation; it is parked until retried or discarded.
    MutationRejected {
        /// The mutation.
        mutation_id: MutationId,
        /// The collection.
        collection: CollectionName,
        /// The record, if any.
        record_id: Option<RecordId>,
        /// The server's error code.
        code: crate::protocol::ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The network state changed.
    NetworkChanged {
        /// The new state.
        network: Network,
    },
    /// The server refused the credentials; pushes pause.
    AuthRequired,
}

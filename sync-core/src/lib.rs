//! offsync's core: the traits an app implements, the wire protocol types, and the sync
//! engine (persisted outbox, one sync cycle at a time, triggers, connectivity, status and
//! events). It does no I/O of its own: storage sits behind [`LocalStore`] (see the
//! `sync-sqlite` crate) and the network behind [`Transport`].
//!
//! Every local write lands in the store first, with its outbox entry in the same
//! transaction, and fires [`SyncEvent::RecordChanged`] at once; the engine pushes the
//! outbox in order when it can, pulls what changed, and lets the collection's
//! [`SyncPattern`] decide what an incoming change does to a record with pending edits.
//!
//! ```
//! use std::sync::Arc;
//! use serde::{Deserialize, Serialize};
//! use sync_core::{CollectionSpec, Engine, LocalEntity, LocalStore, PullAction, SyncPattern, Transport};
//! use sync_core::protocol::Change;
//! use sync_core::pattern::{LocalRecordState, standard_pull_decision};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Note { id: String, text: String }
//!
//! impl LocalEntity for Note {
//!     const COLLECTION: &'static str = "notes";
//!     fn id(&self) -> &str { &self.id }
//! }
//!
//! /// Last write wins: push without base versions; pending local edits win over pulls.
//! struct Lww;
//! impl SyncPattern for Lww {
//!     fn name(&self) -> &'static str { "lww" }
//!     fn sends_base_version(&self) -> bool { false }
//!     fn on_incoming(&self, local: Option<&LocalRecordState>, change: &Change) -> PullAction {
//!         standard_pull_decision(local, change, |_| PullAction::Skip)
//!     }
//! }
//!
//! async fn run(store: Arc<dyn LocalStore>, transport: Arc<dyn Transport>) -> Result<(), sync_core::Error> {
//!     let engine = Engine::builder()
//!         .store(store)
//!         .transport(transport)
//!         .collection(CollectionSpec::of::<Note>(Lww))
//!         .build()
//!         .await?;
//!     let notes = engine.collection::<Note>()?;
//!     notes.insert(&Note { id: sync_core::RecordId::generate().to_string(), text: "hi".into() }).await?;
//!     let report = engine.sync_now().await?;
//!     println!("pushed {}", report.pushed);
//!     Ok(())
//! }
//! ```

pub mod auth;
pub mod backoff;
pub mod device;
pub mod engine;
pub mod entity;
pub mod error;
pub mod ids;
pub mod lease;
pub mod page_fold;
pub mod pattern;
pub mod persistence;
pub mod protocol;
pub mod query;
mod split_store;
pub mod status;
pub mod store;
pub mod subscription;
pub mod transport;

pub use auth::{TOKEN_ATTEMPTS, TokenProvider};
pub use backoff::Backoff;
pub use device::{AccountSummary, DeviceStores};
pub use engine::{
    ALL_UNIT, ChangeNotifier, Collection, CollectionSpec, Direction, Engine, EngineBuilder, EngineOptions,
    QueryBuilder, SignOut, SignOutReport, SubscriptionHandle, SyncUnit, Tracked, TriggerOptions, WatchStream,
};
pub use entity::{IdAssignment, IdentityMapping, LocalEntity, MappingError, ServerMapping};
pub use error::{Error, StorageErrorKind};
pub use ids::{AccountId, ClientId, CollectionName, Cursor, MutationId, RecordId, Version};
pub use pattern::{ConflictDetector, ConflictResolver, Parent, PullAction, PullMode, Resolution, SyncPattern};
pub use persistence::Residence;
pub use query::{Cmp, Filter, Order};
pub use status::{AuthState, CacheUsage, Network, Origin, Phase, SyncEvent, SyncReport, SyncStatus};
pub use store::{Conflict, FieldPath, LocalStore, PendingChange, RecordState, StoredRecord};
pub use subscription::{Bound, Subscribe, SubscriptionId, SubscriptionState, SubscriptionStatus};
pub use transport::{Credentials, Transport};

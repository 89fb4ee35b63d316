//! Ready-made sync patterns for offsync, each a [`SyncPattern`] the engine runs per
//! collection, and conflict resolvers.
//!
//! | pattern | use it for |
//! | --- | --- |
//! | [`ReadOnly`] | small server-owned data, replaced whole on each sync |
//! | [`ReadOnlyOptimized`] | large server-owned data, pulled incrementally with tombstones |
//! | [`LastWriteWins`] | data where the latest write is right; never reports conflicts |
//! | [`ConflictDetection`] | shared records whose concurrent edits must not be lost |
//! | [`OneToMany`] | children that point at parents (parents first, ids remapped) |
//!
//! Resolvers ([`resolvers`]): keep local, keep server, three-way field merge, a closure,
//! or defer to the user.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use sync_core::{CollectionSpec, LocalEntity};
//! use sync_patterns::ConflictDetection;
//!
//! #[derive(Serialize, Deserialize)]
//! struct WorkOrder { id: String, title: String }
//! impl LocalEntity for WorkOrder {
//!     const COLLECTION: &'static str = "work_orders";
//!     fn id(&self) -> &str { &self.id }
//! }
//!
//! // Conflicts are stored and shown to the user (the default resolver defers).
//! let spec = CollectionSpec::of::<WorkOrder>(ConflictDetection::new());
//! # let _ = spec;
//! ```

mod conflict_detection;
pub mod diff;
mod last_write_wins;
mod one_to_many;
mod read_only;
pub mod resolvers;

pub use conflict_detection::ConflictDetection;
pub use last_write_wins::LastWriteWins;
pub use one_to_many::OneToMany;
pub use read_only::{ReadOnly, ReadOnlyOptimized};
pub use sync_core::SyncPattern;

//! Read-only patterns: the server's data, never edited on the device.

use sync_core::SyncPattern;
use sync_core::pattern::{LocalRecordState, PullAction, PullMode, standard_pull_decision};
use sync_core::protocol::Change;

/// Read-only: every sync replaces the local collection with the server's.
///
/// **When to use it:** small reference data the app only reads (product catalogues,
/// price lists, lookup tables), where a full download is cheap and the server keeps no
/// change feed, or where the set changes wholesale.
///
/// **What the server needs:** to serve the whole collection from no cursor (the
/// reference server does; `reset` cannot happen as no cursor is sent).
///
/// **Behaviour:** each sync downloads the full set into a staging area and swaps it in
/// with one transaction at the end: after each sync the collection equals the
/// server's, and a crash or network failure midway leaves the old data whole. Local
/// writes are refused with [`sync_core::Error::ReadOnlyCollection`].
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use sync_core::{CollectionSpec, LocalEntity};
/// use sync_patterns::ReadOnly;
///
/// #[derive(Serialize, Deserialize)]
/// struct Product { id: String, name: String, price_cents: u64 }
/// impl LocalEntity for Product {
///     const COLLECTION: &'static str = "products";
///     fn id(&self) -> &str { &self.id }
/// }
///
/// let spec = CollectionSpec::of::<Product>(ReadOnly);
/// # let _ = spec;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOnly;

impl SyncPattern for ReadOnly {
    fn name(&self) -> &'static str {
        "read_only"
    }

    fn accepts_local_writes(&self) -> bool {
        false
    }

    fn pull_mode(&self) -> PullMode {
        PullMode::Replace
    }

    fn sends_base_version(&self) -> bool {
        false
    }

    fn on_incoming(&self, local: Option<&LocalRecordState>, incoming: &Change) -> PullAction {
        // Nothing is ever pending here; a record already at this version is unchanged.
        standard_pull_decision(local, incoming, |_| PullAction::Apply)
    }
}

/// Read-only optimized: incremental by cursor, tombstones applied.
///
/// **When to use it:** large server-owned data the app only reads (customer lists,
/// asset registers), where downloading everything on each sync costs too much.
///
/// **What the server needs:** a change feed with cursors and tombstones, and `reset`
/// when a cursor is older than what it retains (the reference server has all three).
///
/// **Behaviour:** each sync pulls only what changed since the stored cursor, applying
/// deletions. Cursors come only from the server; the device clock is never used. On
/// `reset` the full set is downloaded into a staging area and swapped in at the end, so
/// nothing stale survives and the app never sees a half-empty collection. Local writes
/// are refused with [`sync_core::Error::ReadOnlyCollection`].
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use sync_core::{CollectionSpec, LocalEntity};
/// use sync_patterns::ReadOnlyOptimized;
///
/// #[derive(Serialize, Deserialize)]
/// struct Customer { id: String, name: String }
/// impl LocalEntity for Customer {
///     const COLLECTION: &'static str = "customers";
///     fn id(&self) -> &str { &self.id }
/// }
///
/// let spec = CollectionSpec::of::<Customer>(ReadOnlyOptimized);
/// # let _ = spec;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOnlyOptimized;

impl SyncPattern for ReadOnlyOptimized {
    fn name(&self) -> &'static str {
        "read_only_optimized"
    }

    fn accepts_local_writes(&self) -> bool {
        false
    }

    fn sends_base_version(&self) -> bool {
        false
    }

    fn on_incoming(&self, local: Option<&LocalRecordState>, incoming: &Change) -> PullAction {
        standard_pull_decision(local, incoming, |_| PullAction::Apply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_patterns_refuse_writes_and_pull_as_documented() {
        assert!(!ReadOnly.accepts_local_writes());
        assert!(!ReadOnlyOptimized.accepts_local_writes());
        assert_eq!(ReadOnly.pull_mode(), PullMode::Replace);
        assert_eq!(ReadOnlyOptimized.pull_mode(), PullMode::Incremental);
    }
}

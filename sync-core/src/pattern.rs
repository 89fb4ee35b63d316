//! The per-collection strategy the engine runs (`SyncPattern`) and its pure decisions.

use serde_json::Value;

use crate::ids::{CollectionName, Version};
use crate::protocol::Change;
use crate::store::{Conflict, FieldPath};

/// What the store knows of a local record when a change for it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalRecordState {
    /// The server version the local record is based on (None: never synced).
    pub server_version: Option<Version>,
    /// Local mutations for it wait in the outbox.
    pub has_pending: bool,
    /// An open conflict holds it.
    pub in_conflict: bool,
    /// It is deleted locally.
    pub deleted: bool,
}

/// What an incoming change does to the local store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullAction {
    /// Overwrite the local record with the server's (or delete it).
    Apply,
    /// Ignore it (stale, or our own write echoed back).
    Skip,
    /// Keep the local data and store a conflict with the server's side.
    Conflict,
    /// The record is already in conflict: refresh the stored server side.
    RefreshConflict,
}

/// How a pattern pulls a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullMode {
    /// From the stored cursor: only what changed, tombstones applied.
    #[default]
    Incremental,
    /// The whole collection every time, from no cursor, staged and swapped in with one
    /// transaction at the end (the read-only pattern).
    Replace,
}

/// How a conflict is settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Push the local data over the server's.
    KeepLocal,
    /// Take the server's record.
    KeepServer,
    /// Push this value.
    Merged(Value),
    /// Leave it stored for the user to decide.
    Defer,
}

/// Decides whether a change that arrives for a record with pending local edits is a
/// conflict. Object-safe.
pub trait ConflictDetector: Send + Sync + 'static {
    /// True when `incoming` conflicts with the pending local record `local`.
    fn is_conflict(&self, local: &LocalRecordState, incoming: &Change) -> bool;
}

/// The default detector: a conflict whenever the server moved past the version the
/// local edits are based on.
#[derive(Debug, Clone, Copy, Default)]
pub struct VersionConflictDetector;

impl ConflictDetector for VersionConflictDetector {
    fn is_conflict(&self, local: &LocalRecordState, incoming: &Change) -> bool {
        local.server_version.is_none_or(|v| incoming.version > v)
    }
}

/// Settles conflicts automatically, or defers them to the user. Object-safe.
pub trait ConflictResolver: Send + Sync + 'static {
    /// The resolution of `conflict`.
    fn resolve(&self, conflict: &Conflict) -> Resolution;
}

/// Leaves every conflict stored for the app's UI to settle.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeferToUser;

impl ConflictResolver for DeferToUser {
    fn resolve(&self, _conflict: &Conflict) -> Resolution {
        Resolution::Defer
    }
}

impl<F> ConflictResolver for F
where
    F: Fn(&Conflict) -> Resolution + Send + Sync + 'static,
{
    fn resolve(&self, conflict: &Conflict) -> Resolution {
        self(conflict)
    }
}

/// A per-collection sync strategy. Object-safe: the engine holds one
/// `Arc<dyn SyncPattern>` per collection. Its methods are pure decisions; the engine
/// does the I/O.
pub trait SyncPattern: Send + Sync + 'static {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;

    /// Whether the app may write to the collection locally.
    fn accepts_local_writes(&self) -> bool {
        true
    }

    /// How the collection is pulled; incremental by default.
    fn pull_mode(&self) -> PullMode {
        PullMode::Incremental
    }

    /// Whether pushes carry `base_version` (conflict detection) or not (last write wins).
    fn sends_base_version(&self) -> bool;

    /// What an incoming change does, given the local record (None: not stored).
    fn on_incoming(&self, local: Option<&LocalRecordState>, incoming: &Change) -> PullAction;

    /// How a stored conflict is settled; [`Resolution::Defer`] leaves it to the user.
    fn resolve(&self, conflict: &Conflict) -> Resolution {
        let _ = conflict;
        Resolution::Defer
    }

    /// The collections this collection's records point at (one-to-many: the child's side).
    /// The engine then pushes a child's change only once the server knows its parent,
    /// pushes a parent's delete only after its children's changes, and rewrites the
    /// foreign keys when the server assigns the parent an id. None by default.
    fn parents(&self) -> Vec<Parent> {
        Vec::new()
    }
}

/// A foreign key: a field of a child record that holds the id of a parent record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// The child's field holding the parent's id (such as `order_id`).
    pub field: FieldPath,
    /// The parent's collection.
    pub collection: CollectionName,
}

/// The decision every pattern shares: stale changes and echoes of our own acknowledged
/// writes are skipped; records already in conflict get their server side refreshed;
/// records with pending edits go to `on_pending`; everything else applies.
pub fn standard_pull_decision(
    local: Option<&LocalRecordState>,
    incoming: &Change,
    on_pending: impl FnOnce(&LocalRecordState) -> PullAction,
) -> PullAction {
    let Some(local) = local else {
        return PullAction::Apply;
    };
    if local.server_version.is_some_and(|v| incoming.version <= v) {
        return PullAction::Skip;
    }
    if local.in_conflict {
        return PullAction::RefreshConflict;
    }
    if local.has_pending {
        return on_pending(local);
    }
    PullAction::Apply
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RecordId;

    fn change(version: u64) -> Change {
        Change {
            collection: CollectionName::new("c").unwrap(),
            record_id: RecordId::new("r").unwrap(),
            version: Version(version),
            deleted: false,
            removed: false,
            data: None,
            mutation_id: None,
        }
    }

    fn state(server_version: Option<u64>, has_pending: bool, in_conflict: bool) -> LocalRecordState {
        LocalRecordState { server_version: server_version.map(Version), has_pending, in_conflict, deleted: false }
    }

    fn check(local: Option<LocalRecordState>, version: u64, expected: PullAction) {
        let detector = VersionConflictDetector;
        let got = standard_pull_decision(local.as_ref(), &change(version), |l| {
            if detector.is_conflict(l, &change(version)) { PullAction::Conflict } else { PullAction::Skip }
        });
        assert_eq!(got, expected, "local {local:?}, incoming v{version}");
    }

    #[test]
    fn pull_decisions() {
        check(None, 1, PullAction::Apply);
        check(Some(state(Some(3), false, false)), 4, PullAction::Apply);
        check(Some(state(Some(3), false, false)), 3, PullAction::Skip);
        check(Some(state(Some(3), false, false)), 2, PullAction::Skip);
        check(Some(state(Some(3), true, false)), 4, PullAction::Conflict);
        check(Some(state(Some(4), true, false)), 4, PullAction::Skip);
        check(Some(state(None, true, false)), 1, PullAction::Conflict);
        check(Some(state(Some(3), true, true)), 5, PullAction::RefreshConflict);
        check(Some(state(Some(5), true, true)), 5, PullAction::Skip);
    }
}

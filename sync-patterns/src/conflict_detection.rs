//! Read/write with conflict detection: pushes carry `base_version`; conflicts are stored.

use std::sync::Arc;

use sync_core::pattern::{
    ConflictDetector, ConflictResolver, DeferToUser, LocalRecordState, PullAction, VersionConflictDetector,
    standard_pull_decision,
};
use sync_core::protocol::Change;
use sync_core::{Conflict, Resolution, SyncPattern};

/// Read/write with conflict detection.
///
/// **When to use it:** records several people or devices edit (work orders,
/// inspections), where silently losing one side's edit is unacceptable.
///
/// **What the server needs:** versioned writes: it applies a mutation only when the
/// record is still at the mutation's `base_version`, and otherwise answers `conflict` with
/// its current record (the reference server does this).
///
/// **Behaviour:** every push carries the version the local edit was based on. A
/// `conflict` answer, or a pull that brings a newer server version of a record with
/// pending local edits, stores a conflict (local, server and base side by side) and holds
/// back only that record. The resolver decides: by default the conflict waits for the
/// user (`Engine::conflicts`, `Engine::resolve`).
///
/// ```
/// use sync_core::{Resolution, Conflict};
/// use sync_patterns::ConflictDetection;
///
/// // Server wins automatically:
/// let pattern = ConflictDetection::new().resolver(|_: &Conflict| Resolution::KeepServer);
/// # let _ = pattern;
/// ```
#[derive(Clone)]
pub struct ConflictDetection {
    detector: Arc<dyn ConflictDetector>,
    resolver: Arc<dyn ConflictResolver>,
}

impl Default for ConflictDetection {
    fn default() -> Self {
        Self::new()
    }
}

impl ConflictDetection {
    /// Version-based detection; conflicts deferred to the user.
    pub fn new() -> Self {
        Self { detector: Arc::new(VersionConflictDetector), resolver: Arc::new(DeferToUser) }
    }

    /// Uses another conflict detector for pulls that meet pending edits.
    pub fn detector(mut self, detector: impl ConflictDetector) -> Self {
        self.detector = Arc::new(detector);
        self
    }

    /// Uses another resolver (a closure `Fn(&Conflict) -> Resolution` works).
    pub fn resolver(mut self, resolver: impl ConflictResolver) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }
}

impl SyncPattern for ConflictDetection {
    fn name(&self) -> &'static str {
        "read_write_conflict_detection"
    }

    fn sends_base_version(&self) -> bool {
        true
    }

    fn on_incoming(&self, local: Option<&LocalRecordState>, incoming: &Change) -> PullAction {
        standard_pull_decision(local, incoming, |state| {
            if self.detector.is_conflict(state, incoming) { PullAction::Conflict } else { PullAction::Skip }
        })
    }

    fn resolve(&self, conflict: &Conflict) -> Resolution {
        self.resolver.resolve(conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::{CollectionName, RecordId, Version};

    fn change(version: u64) -> Change {
        Change {
            collection: CollectionName::new("c").unwrap(),
            record_id: RecordId::new("r").unwrap(),
            version: Version(version),
            deleted: false,
            removed: false,
            data: Some(serde_json::json!({})),
            mutation_id: None,
        }
    }

    #[test]
    fn a_newer_server_version_of_a_pending_record_is_a_conflict() {
        let p = ConflictDetection::new();
        let pending = LocalRecordState {
            server_version: Some(Version(2)),
            has_pending: true,
            in_conflict: false,
            deleted: false,
        };
        assert_eq!(p.on_incoming(Some(&pending), &change(3)), PullAction::Conflict);
        assert_eq!(p.on_incoming(Some(&pending), &change(2)), PullAction::Skip);
        let clean = LocalRecordState { has_pending: false, ..pending };
        assert_eq!(p.on_incoming(Some(&clean), &change(3)), PullAction::Apply);
        assert_eq!(p.on_incoming(None, &change(1)), PullAction::Apply);
        assert!(p.sends_base_version());
    }
}

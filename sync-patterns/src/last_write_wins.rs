//! Read/write, last write wins.

use sync_core::SyncPattern;
use sync_core::pattern::{LocalRecordState, PullAction, standard_pull_decision};
use sync_core::protocol::Change;

/// Read/write, last write wins: pushes carry no base version and the server applies
/// them in arrival order.
///
/// **When to use it:** data where the latest write is the right answer and a lost
/// concurrent edit does no harm (user preferences, presence, "last seen" fields,
/// single-owner records edited on one device at a time).
///
/// **What the server needs:** to accept writes with `base_version: null` as overwrites
/// (the reference server does), and idempotency by `mutation_id`, so a create retried
/// after a timed-out answer is applied once.
///
/// **Behaviour:** pending changes are pushed without a base version; whatever reaches
/// the server last wins. It never reports conflicts: a pulled change for a record with
/// pending local edits is skipped (the local edit is on its way and will win), and the
/// record converges on the next pull.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use sync_core::{CollectionSpec, LocalEntity};
/// use sync_patterns::LastWriteWins;
///
/// #[derive(Serialize, Deserialize)]
/// struct Preference { id: String, value: String }
/// impl LocalEntity for Preference {
///     const COLLECTION: &'static str = "preferences";
///     fn id(&self) -> &str { &self.id }
/// }
///
/// let spec = CollectionSpec::of::<Preference>(LastWriteWins);
/// # let _ = spec;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct LastWriteWins;

impl SyncPattern for LastWriteWins {
    fn name(&self) -> &'static str {
        "read_write_last_write_wins"
    }

    fn sends_base_version(&self) -> bool {
        false
    }

    fn on_incoming(&self, local: Option<&LocalRecordState>, incoming: &Change) -> PullAction {
        standard_pull_decision(local, incoming, |_| PullAction::Skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::{CollectionName, RecordId, Version};

    #[test]
    fn pending_records_keep_their_edit_and_clean_ones_take_the_server() {
        let change = Change {
            collection: CollectionName::new("c").unwrap(),
            record_id: RecordId::new("r").unwrap(),
            version: Version(5),
            deleted: false,
            removed: false,
            data: Some(serde_json::json!({})),
            mutation_id: None,
        };
        let pending = LocalRecordState {
            server_version: Some(Version(2)),
            has_pending: true,
            in_conflict: false,
            deleted: false,
        };
        assert_eq!(LastWriteWins.on_incoming(Some(&pending), &change), PullAction::Skip);
        let clean = LocalRecordState { has_pending: false, ..pending };
        assert_eq!(LastWriteWins.on_incoming(Some(&clean), &change), PullAction::Apply);
        assert!(!LastWriteWins.sends_base_version());
    }
}

//! A conflict settled field by field, as the person chose on the conflicts panel.

use std::collections::HashMap;

use serde_json::Value;
use sync_core::store::Conflict;
use sync_patterns::diff::{FieldChange, field_diff};

/// The record made of the device's version with, for each differing field, the side
/// `choices` names (`true`: the server's) and, for a field only one side changed, that
/// side's value (as a three-way merge takes it). A field not in `choices` that both
/// sides changed keeps the device's value.
///
/// # Errors
/// When the record was deleted on one side (there are no fields to choose between:
/// keep mine or keep theirs), or a path is not in the record.
pub fn by_field(conflict: &Conflict, choices: &HashMap<String, bool>) -> anyhow::Result<Value> {
    let server = conflict.server.as_ref().and_then(|s| if s.deleted { None } else { s.data.clone() });
    let (Some(local), Some(server)) = (conflict.local.clone(), server) else {
        anyhow::bail!("the record was deleted on one side: keep mine or keep theirs");
    };
    let mut merged = local;
    for field in field_diff(conflict.base.as_ref(), Some(&merged.clone()), Some(&server)) {
        let take_server = match field.change {
            FieldChange::Server => true,
            FieldChange::Local | FieldChange::Same => false,
            FieldChange::Conflict => choices.get(&field.path).copied().unwrap_or(false),
        };
        if take_server {
            set(&mut merged, &field.path, field.server)?;
        }
    }
    Ok(merged)
}

/// Sets (or, for None, removes) the value at JSON Pointer `path` in `target`, creating
/// objects on the way.
fn set(target: &mut Value, path: &str, value: Option<Value>) -> anyhow::Result<()> {
    if path.is_empty() {
        anyhow::bail!("the whole record differs: keep mine or keep theirs");
    }
    let parts: Vec<String> = path.split('/').skip(1).map(|p| p.replace("~1", "/").replace("~0", "~")).collect();
    let Some((last, parents)) = parts.split_last() else { anyhow::bail!("empty path") };
    let mut node = target;
    for part in parents {
        let object = node.as_object_mut().ok_or_else(|| anyhow::anyhow!("{path} is not in an object"))?;
        node = object.entry(part.clone()).or_insert_with(|| Value::Object(Default::default()));
    }
    let object = node.as_object_mut().ok_or_else(|| anyhow::anyhow!("{path} is not in an object"))?;
    match value {
        Some(value) => object.insert(last.clone(), value),
        None => object.remove(last),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;
    use sync_core::protocol::ServerRecord;
    use sync_core::{CollectionName, RecordId, Version};

    fn conflict(base: Value, local: Option<Value>, server: Option<Value>) -> Conflict {
        Conflict {
            collection: CollectionName::new("work_orders").unwrap(),
            record_id: RecordId::new("wo-1").unwrap(),
            mutation_id: None,
            local,
            server: Some(ServerRecord { version: Version(3), deleted: server.is_none(), data: server }),
            base: Some(base),
            base_version: Some(Version(2)),
            detected_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn each_field_comes_from_the_side_chosen_and_one_sided_changes_merge() {
        let c = conflict(
            json!({"title": "Pump", "status": "open", "notes": "", "site": {"city": "Ghent"}}),
            Some(json!({"title": "Pump (mine)", "status": "done", "notes": "", "site": {"city": "Ghent"}})),
            Some(json!({"title": "Pump (theirs)", "status": "open", "notes": "gate B", "site": {"city": "Gent"}})),
        );
        let table = [
            (vec![], json!({"title": "Pump (mine)", "status": "done", "notes": "gate B", "site": {"city": "Gent"}})),
            (
                vec![("/title", true)],
                json!({"title": "Pump (theirs)", "status": "done", "notes": "gate B", "site": {"city": "Gent"}}),
            ),
            (
                vec![("/title", false)],
                json!({"title": "Pump (mine)", "status": "done", "notes": "gate B", "site": {"city": "Gent"}}),
            ),
        ];
        for (choices, expected) in table {
            let choices = choices.into_iter().map(|(p, s)| (p.to_owned(), s)).collect();
            assert_eq!(by_field(&c, &choices).unwrap(), expected, "{choices:?}");
        }
    }

    #[test]
    fn a_field_removed_on_the_chosen_side_goes_and_a_deleted_record_has_no_fields() {
        let c = conflict(json!({"a": 1, "b": 1}), Some(json!({"a": 2, "b": 1})), Some(json!({"b": 1})));
        let choices = [("/a".to_owned(), true)].into();
        assert_eq!(by_field(&c, &choices).unwrap(), json!({"b": 1}));
        let deleted = conflict(json!({"a": 1}), Some(json!({"a": 2})), None);
        assert!(by_field(&deleted, &HashMap::new()).is_err());
    }
}

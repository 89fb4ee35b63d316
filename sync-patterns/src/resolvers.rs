//! Conflict resolvers: keep local, keep server, three-way field merge. A closure
//! `Fn(&Conflict) -> Resolution` is a resolver too, and [`DeferToUser`] leaves every
//! conflict stored for the app's UI.

use serde_json::{Map, Value};
use sync_core::pattern::ConflictResolver;
use sync_core::{Conflict, Resolution};

pub use sync_core::pattern::DeferToUser;

/// The device's side wins: its data (or its delete) is pushed over the server's
/// version.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepLocal;

impl ConflictResolver for KeepLocal {
    fn resolve(&self, _conflict: &Conflict) -> Resolution {
        Resolution::KeepLocal
    }
}

/// The server's side wins: the local edits are dropped and the server's record taken.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepServer;

impl ConflictResolver for KeepServer {
    fn resolve(&self, _conflict: &Conflict) -> Resolution {
        Resolution::KeepServer
    }
}

/// Which side a merge takes for a field both sides changed differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The device's value.
    Local,
    /// The server's value.
    Server,
}

/// The result of [`three_way_merge`].
#[derive(Debug, Clone, PartialEq)]
pub struct MergeOutcome {
    /// The merged value. For fields in `conflicts` it holds the preferred side's value.
    pub merged: Value,
    /// JSON Pointer paths (RFC 6901, e.g. `/address/city`) of the fields both sides
    /// changed to different values: true conflicts. Empty when the merge is clean.
    pub conflicts: Vec<String>,
}

/// Merges `local` and `server` field by field against `base`, the version both started
/// from (None when there is none, e.g. two creates of the same id: every field then
/// counts as added on both sides).
///
/// A field changed on one side only takes that side's value (a removed field counts
/// as a change). Fields changed on both sides to the same value merge. Nested objects
/// merge recursively; arrays, strings, numbers and the like are values, compared whole.
/// A field changed on both sides to different values is a true conflict: its path is
/// reported and `prefer` picks the value kept in `merged`.
///
/// ```
/// use serde_json::json;
/// use sync_patterns::resolvers::{three_way_merge, Side};
///
/// let base = json!({"title": "Pump", "status": "open", "site": {"city": "Ghent"}});
/// let local = json!({"title": "Pump", "status": "done", "site": {"city": "Ghent"}});
/// let server = json!({"title": "Pump 2", "status": "open", "site": {"city": "Gent"}});
/// let out = three_way_merge(Some(&base), &local, &server, Side::Local);
/// assert!(out.conflicts.is_empty());
/// assert_eq!(out.merged, json!({"title": "Pump 2", "status": "done", "site": {"city": "Gent"}}));
/// ```
pub fn three_way_merge(base: Option<&Value>, local: &Value, server: &Value, prefer: Side) -> MergeOutcome {
    let mut conflicts = Vec::new();
    let merged = merge_value(base, local, server, prefer, "", &mut conflicts);
    MergeOutcome { merged, conflicts }
}

fn merge_value(
    base: Option<&Value>,
    local: &Value,
    server: &Value,
    prefer: Side,
    path: &str,
    conflicts: &mut Vec<String>,
) -> Value {
    if local == server {
        return local.clone();
    }
    if Some(local) == base {
        return server.clone();
    }
    if Some(server) == base {
        return local.clone();
    }
    match (local, server, base) {
        // Two objects merge field by field when they grew from an object (or from
        // nothing); replacing a scalar base with two different objects is a conflict.
        (Value::Object(l), Value::Object(s), None | Some(Value::Object(_))) => {
            Value::Object(merge_objects(base.and_then(Value::as_object), l, s, prefer, path, conflicts))
        }
        _ => {
            conflicts.push(path.to_owned());
            match prefer {
                Side::Local => local.clone(),
                Side::Server => server.clone(),
            }
        }
    }
}

fn merge_objects(
    base: Option<&Map<String, Value>>,
    local: &Map<String, Value>,
    server: &Map<String, Value>,
    prefer: Side,
    path: &str,
    conflicts: &mut Vec<String>,
) -> Map<String, Value> {
    let mut keys: Vec<&String> = local.keys().collect();
    keys.extend(server.keys().filter(|k| !local.contains_key(*k)));
    let mut out = Map::new();
    for key in keys {
        let (l, s, b) = (local.get(key), server.get(key), base.and_then(|b| b.get(key)));
        let child = format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"));
        let value = match (l, s) {
            (Some(l), Some(s)) => Some(merge_value(b, l, s, prefer, &child, conflicts)),
            // Present on one side only: added there, or removed on the other side.
            (Some(only), None) | (None, Some(only)) => {
                let removed_by_other = b.is_some();
                let changed_here = b != Some(only);
                match (removed_by_other, changed_here) {
                    (false, _) => Some(only.clone()),
                    (true, false) => None,
                    (true, true) => {
                        conflicts.push(child);
                        let local_side = l.is_some();
                        match (prefer, local_side) {
                            (Side::Local, true) | (Side::Server, false) => Some(only.clone()),
                            _ => None,
                        }
                    }
                }
            }
            (None, None) => None,
        };
        if let Some(value) = value {
            out.insert(key.clone(), value);
        }
    }
    out
}

/// Resolves by three-way field merge against the stored base: fields changed on one
/// side only merge automatically. A true conflict (a field changed on both sides to
/// different values, or a delete against an edit) goes to the fallback: by default the
/// conflict stays stored for the user; [`ThreeWayMerge::prefer`] settles it with one
/// side's values instead.
///
/// ```
/// use sync_patterns::{ConflictDetection, resolvers::{Side, ThreeWayMerge}};
///
/// // Merge what can be merged; true conflicts wait for the user.
/// let pattern = ConflictDetection::new().resolver(ThreeWayMerge::new());
/// // Or: merge, and let the device win on fields both sides changed.
/// let eager = ConflictDetection::new().resolver(ThreeWayMerge::new().prefer(Side::Local));
/// # let _ = (pattern, eager);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreeWayMerge {
    prefer: Option<Side>,
}

impl ThreeWayMerge {
    /// Merges; true conflicts are deferred to the user.
    pub fn new() -> Self {
        Self { prefer: None }
    }

    /// Settles true conflicts with `side`'s values (and, for a delete against an edit,
    /// with that side's whole record).
    pub fn prefer(mut self, side: Side) -> Self {
        self.prefer = Some(side);
        self
    }

    fn fallback(&self) -> Resolution {
        match self.prefer {
            None => Resolution::Defer,
            Some(Side::Local) => Resolution::KeepLocal,
            Some(Side::Server) => Resolution::KeepServer,
        }
    }
}

impl ConflictResolver for ThreeWayMerge {
    fn resolve(&self, conflict: &Conflict) -> Resolution {
        let server = conflict.server.as_ref().filter(|s| !s.deleted).and_then(|s| s.data.as_ref());
        let (Some(local), Some(server)) = (conflict.local.as_ref(), server) else {
            // Delete against edit (or delete against delete): nothing to merge field by field.
            if conflict.local.is_none() && server.is_none() {
                return Resolution::KeepServer;
            }
            return self.fallback();
        };
        let out = three_way_merge(conflict.base.as_ref(), local, server, self.prefer.unwrap_or(Side::Local));
        if out.conflicts.is_empty() || self.prefer.is_some() {
            Resolution::Merged(out.merged)
        } else {
            Resolution::Defer
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_sided_changes_merge_and_two_sided_ones_conflict() {
        let base = json!({"a": 1, "b": 1, "c": {"x": 1, "y": 1}, "tags": ["p"], "gone": 1});
        let local = json!({"a": 2, "b": 1, "c": {"x": 2, "y": 1}, "tags": ["p", "q"], "gone": 1});
        let server = json!({"a": 1, "b": 3, "c": {"x": 1, "y": 3}, "tags": ["r"]});
        let out = three_way_merge(Some(&base), &local, &server, Side::Server);
        assert_eq!(out.conflicts, vec!["/tags".to_owned()]);
        assert_eq!(out.merged, json!({"a": 2, "b": 3, "c": {"x": 2, "y": 3}, "tags": ["r"]}));
    }

    #[test]
    fn removal_against_an_edit_is_a_conflict_and_paths_are_escaped() {
        let base = json!({"a/b": 1, "k": 1});
        let local = json!({"k": 1});
        let server = json!({"a/b": 2, "k": 1});
        let out = three_way_merge(Some(&base), &local, &server, Side::Local);
        assert_eq!(out.conflicts, vec!["/a~1b".to_owned()]);
        assert_eq!(out.merged, json!({"k": 1}));
        let out = three_way_merge(Some(&base), &local, &server, Side::Server);
        assert_eq!(out.merged, json!({"a/b": 2, "k": 1}));
    }

    #[test]
    fn without_a_base_equal_additions_merge_and_different_ones_conflict() {
        let out = three_way_merge(None, &json!({"a": 1, "b": 2}), &json!({"a": 1, "c": 3}), Side::Local);
        assert!(out.conflicts.is_empty());
        assert_eq!(out.merged, json!({"a": 1, "b": 2, "c": 3}));
        let out = three_way_merge(None, &json!({"a": 1}), &json!({"a": 2}), Side::Local);
        assert_eq!(out.conflicts, vec!["/a".to_owned()]);
    }
}

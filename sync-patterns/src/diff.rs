//! The fields of a conflict that differ, side by side: what a conflict screen highlights
//! and what a person chooses between, field by field. It walks the three versions the
//! way [`three_way_merge`](crate::resolvers::three_way_merge) merges them, so the fields
//! it calls conflicting are the ones the merge reports.

use serde::Serialize;
use serde_json::{Map, Value};

/// Who changed a field since the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldChange {
    /// Only the device: the merge takes the device's value.
    Local,
    /// Only the server: the merge takes the server's value.
    Server,
    /// Both, to the same value: nothing to choose.
    Same,
    /// Both, to different values: a person (or a rule) chooses.
    Conflict,
}

/// One field that differs between the base, the device's and the server's version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldDiff {
    /// A JSON Pointer (RFC 6901) to the field, such as `/site/city`; `""` is the whole
    /// record (a record deleted on one side, or two values that are not objects).
    pub path: String,
    /// The value in the base (None: absent, or no base).
    pub base: Option<Value>,
    /// The device's value (None: absent or deleted).
    pub local: Option<Value>,
    /// The server's value (None: absent or deleted).
    pub server: Option<Value>,
    /// Who changed it.
    pub change: FieldChange,
}

/// The fields that differ between `base`, `local` and `server` (None: no base, or the
/// record deleted on that side), in the order of the records' keys (the device's,
/// then those only the server has). Nested objects are compared field by field; any other value whole.
///
/// ```
/// use serde_json::json;
/// use sync_patterns::diff::{FieldChange, field_diff};
///
/// let base = json!({"title": "Pump", "status": "open"});
/// let local = json!({"title": "Pump", "status": "done"});
/// let server = json!({"title": "Pump 2", "status": "waiting"});
/// let diff = field_diff(Some(&base), Some(&local), Some(&server));
/// let changes: Vec<_> = diff.iter().map(|d| (d.path.as_str(), d.change)).collect();
/// assert_eq!(changes, [("/status", FieldChange::Conflict), ("/title", FieldChange::Server)]);
/// ```
pub fn field_diff(base: Option<&Value>, local: Option<&Value>, server: Option<&Value>) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    diff_value(base, local, server, "", &mut out);
    out
}

fn diff_value(
    base: Option<&Value>,
    local: Option<&Value>,
    server: Option<&Value>,
    path: &str,
    out: &mut Vec<FieldDiff>,
) {
    if local == server && local == base {
        return;
    }
    if let (Some(Value::Object(l)), Some(Value::Object(s)), None | Some(Value::Object(_))) = (local, server, base) {
        diff_objects(base.and_then(Value::as_object), l, s, path, out);
        return;
    }
    let change = if local == server {
        FieldChange::Same
    } else if local == base {
        FieldChange::Server
    } else if server == base {
        FieldChange::Local
    } else {
        FieldChange::Conflict
    };
    out.push(FieldDiff {
        path: path.to_owned(),
        base: base.cloned(),
        local: local.cloned(),
        server: server.cloned(),
        change,
    });
}

fn diff_objects(
    base: Option<&Map<String, Value>>,
    local: &Map<String, Value>,
    server: &Map<String, Value>,
    path: &str,
    out: &mut Vec<FieldDiff>,
) {
    let mut keys: Vec<&String> = local.keys().collect();
    keys.extend(server.keys().filter(|k| !local.contains_key(*k)));
    for key in keys {
        let child = format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"));
        diff_value(base.and_then(|b| b.get(key)), local.get(key), server.get(key), &child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolvers::{Side, three_way_merge};
    use serde_json::json;

    fn changes(base: Option<Value>, local: Option<Value>, server: Option<Value>) -> Vec<(String, FieldChange)> {
        field_diff(base.as_ref(), local.as_ref(), server.as_ref()).into_iter().map(|d| (d.path, d.change)).collect()
    }

    fn c(path: &str, change: FieldChange) -> (String, FieldChange) {
        (path.to_owned(), change)
    }

    #[test]
    fn which_fields_differ_and_who_changed_them() {
        use FieldChange::*;
        let base = json!({"a": 1, "b": 1, "c": 1, "d": 1, "site": {"city": "Ghent", "zip": "9000"}});
        let local = json!({"a": 2, "b": 1, "c": 3, "d": 5, "site": {"city": "Gent", "zip": "9000"}, "new": true});
        let server = json!({"a": 1, "b": 2, "c": 4, "d": 5, "site": {"city": "Ghent", "zip": "9001"}});
        let table = [
            // Equal everywhere: nothing.
            (Some(json!({"a": 1})), Some(json!({"a": 1})), Some(json!({"a": 1})), vec![]),
            (
                Some(base),
                Some(local),
                Some(server),
                vec![
                    c("/a", Local),
                    c("/b", Server),
                    c("/c", Conflict),
                    c("/d", Same),
                    c("/new", Local),
                    c("/site/city", Local),
                    c("/site/zip", Server),
                ],
            ),
            // A field removed on the server while the device kept it.
            (Some(json!({"x": 1})), Some(json!({"x": 1})), Some(json!({})), vec![c("/x", Server)]),
            // Deleted on the server, edited here: the whole record.
            (Some(json!({"x": 1})), Some(json!({"x": 2})), None, vec![c("", Conflict)]),
            // Two creates of one id (no base): every differing field is a conflict.
            (
                None,
                Some(json!({"x": 1, "y": 1})),
                Some(json!({"x": 2, "y": 1})),
                vec![c("/x", Conflict), c("/y", Same)],
            ),
            // Keys with `/` and `~` are escaped as JSON Pointer says.
            (Some(json!({"a/b": 1})), Some(json!({"a/b": 2})), Some(json!({"a/b": 1})), vec![c("/a~1b", Local)]),
        ];
        for (base, local, server, expected) in table {
            assert_eq!(changes(base.clone(), local.clone(), server.clone()), expected, "{base:?} {local:?} {server:?}");
        }
    }

    #[test]
    fn the_conflicting_fields_are_the_ones_the_merge_reports() {
        let cases = [
            (json!({"a": 1, "b": {"c": 1}}), json!({"a": 2, "b": {"c": 3}}), json!({"a": 3, "b": {"c": 1}})),
            (json!({"a": [1]}), json!({"a": [2]}), json!({"a": [3], "z": 1})),
            (json!({"a": "x"}), json!({"a": {"n": 1}}), json!({"a": {"n": 2}})),
        ];
        for (base, local, server) in cases {
            let merge = three_way_merge(Some(&base), &local, &server, Side::Local);
            let conflicting: Vec<String> = field_diff(Some(&base), Some(&local), Some(&server))
                .into_iter()
                .filter(|d| d.change == FieldChange::Conflict)
                .map(|d| d.path)
                .collect();
            assert_eq!(conflicting, merge.conflicts, "{base} {local} {server}");
        }
    }
}

//! Properties of the three-way field merge, over random records and random edits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sync_patterns::resolvers::{Side, three_way_merge};

/// Leaf values: numbers, strings, booleans, null and arrays (arrays are values).
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        "[a-z]{0,6}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        prop::collection::vec(any::<i8>().prop_map(Value::from), 0..3).prop_map(Value::Array),
    ]
}

/// A field value: a leaf or a nested object of leaves.
fn field() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => leaf(),
        1 => prop::collection::btree_map("[a-c]", leaf(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
    ]
}

/// A base record of 2-8 fields `f0..`, plus, for each field, who edits it (0 nobody,
/// 1 local, 2 server) and the new value each editor writes.
fn history() -> impl Strategy<Value = (Map<String, Value>, Vec<(u8, Value)>)> {
    prop::collection::vec(field(), 2..8).prop_flat_map(|values| {
        let n = values.len();
        let base: Map<String, Value> = values.into_iter().enumerate().map(|(i, v)| (format!("f{i}"), v)).collect();
        (Just(base), prop::collection::vec((0u8..3, field()), n))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Disjoint changes: both sides' edits are in the merge and nothing is a conflict.
    #[test]
    fn disjoint_changes_merge_without_conflict((base, edits) in history()) {
        let mut local = base.clone();
        let mut server = base.clone();
        let mut expected = base.clone();
        for (i, (who, value)) in edits.iter().enumerate() {
            let key = format!("f{i}");
            match who {
                1 => { local.insert(key.clone(), value.clone()); expected.insert(key, value.clone()); }
                2 => { server.insert(key.clone(), value.clone()); expected.insert(key, value.clone()); }
                _ => {}
            }
        }
        for side in [Side::Local, Side::Server] {
            let out = three_way_merge(Some(&Value::Object(base.clone())), &Value::Object(local.clone()), &Value::Object(server.clone()), side);
            prop_assert!(out.conflicts.is_empty(), "conflicts {:?}", out.conflicts);
            prop_assert_eq!(&out.merged, &Value::Object(expected.clone()));
        }
    }

    /// Both sides change one field (a top-level one, or one inside a nested object) to
    /// different values: the conflict is always reported at that field's path, and the
    /// other fields still merge.
    #[test]
    fn same_field_changed_differently_is_always_a_conflict(
        (base, edits) in history(),
        pick in any::<prop::sample::Index>(),
        mine in leaf(),
        theirs in leaf(),
        nested in any::<bool>(),
    ) {
        let key = format!("f{}", pick.index(base.len()));
        prop_assume!(mine != theirs && Some(&mine) != base.get(&key) && Some(&theirs) != base.get(&key));
        let mut local = base.clone();
        let mut server = base.clone();
        for (i, (who, value)) in edits.iter().enumerate() {
            let k = format!("f{i}");
            if k == key { continue; }
            match who {
                1 => { local.insert(k, value.clone()); }
                2 => { server.insert(k, value.clone()); }
                _ => {}
            }
        }
        let (base, path) = if nested {
            // The field is inside an object both sides keep: {"inner": base value}.
            let mut base = base;
            let old = base.get(&key).cloned().unwrap_or(Value::Null);
            base.insert(key.clone(), json!({"inner": old}));
            local.insert(key.clone(), json!({"inner": mine}));
            server.insert(key.clone(), json!({"inner": theirs}));
            (base, format!("/{key}/inner"))
        } else {
            local.insert(key.clone(), mine);
            server.insert(key.clone(), theirs);
            (base, format!("/{key}"))
        };
        let out = three_way_merge(Some(&Value::Object(base.clone())), &Value::Object(local.clone()), &Value::Object(server.clone()), Side::Server);
        prop_assert_eq!(&out.conflicts, &vec![path.clone()]);
        for (k, v) in &out.merged.as_object().unwrap().clone() {
            if k != &key {
                let expected = if local.get(k) != base.get(k) { local.get(k) } else { server.get(k) };
                prop_assert_eq!(Some(v), expected);
            }
        }
    }
}

#[test]
fn a_leaf_changed_on_both_sides_to_the_same_value_is_not_a_conflict() {
    let base = json!({"a": 1});
    let out = three_way_merge(Some(&base), &json!({"a": 2}), &json!({"a": 2}), Side::Local);
    assert!(out.conflicts.is_empty());
    assert_eq!(out.merged, json!({"a": 2}));
}

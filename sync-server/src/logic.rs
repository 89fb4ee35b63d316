//! The server's pure decisions: checking one pushed mutation and deciding what it does
//! to the record, given who asks and what the record is now. Both stores call these.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};
use sync_core::protocol::{ErrorCode, ErrorDetail, MutationBody, MutationOutcome, ServerRecord};
use sync_core::{CollectionName, RecordId, Version};
use uuid::Uuid;

use crate::config::CollectionConfig;
use crate::rules::CollectionRules;

pub use crate::rules::User;

/// One answer in a push response; `mutation_id` echoes what the client sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WireResult {
    /// The mutation's id as sent.
    pub mutation_id: Value,
    /// What happened.
    #[serde(flatten)]
    pub outcome: MutationOutcome,
}

/// A mutation that passed the id, collection and shape checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// The idempotency key.
    pub mutation_id: Uuid,
    /// The collection.
    pub collection: CollectionName,
    /// The record (always present for upsert and delete).
    pub record_id: Option<RecordId>,
    /// What it does, with the fields of its kind.
    pub body: MutationBody,
    /// Apply only at this version (None: overwrite).
    pub base_version: Option<u64>,
    /// Admins only: who a created record belongs to.
    pub owner: Option<String>,
}

/// A record as the server stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    /// Its version.
    pub version: u64,
    /// True for a tombstone.
    pub deleted: bool,
    /// Who owns it (never changes).
    pub owner: String,
    /// Its data (None for a tombstone).
    pub data: Option<Value>,
}

/// What a mutation does.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Answer without writing.
    Answer(MutationOutcome),
    /// Write this record state and answer `applied` with its version.
    Write(StoredRecord),
    /// Run the named action's handler.
    Action,
}

pub(crate) fn rejected(code: ErrorCode, message: impl Into<String>) -> MutationOutcome {
    MutationOutcome::Rejected { error: ErrorDetail::new(code, message) }
}

/// The first check: the mutation id. Returns the UUID, or the rejection (with the id as
/// sent, or null) for a value that is not one.
pub fn mutation_id(raw: &Value) -> Result<Uuid, MutationOutcome> {
    raw.get("mutation_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| rejected(ErrorCode::InvalidMutation, "mutation_id must be a UUID string"))
}

/// The collection and shape checks, after the ledger lookup.
pub fn check<'c>(
    id: Uuid,
    raw: &Value,
    collections: &'c BTreeMap<CollectionName, CollectionConfig>,
) -> Result<(Mutation, &'c CollectionConfig), MutationOutcome> {
    let Some(obj) = raw.as_object() else {
        return Err(rejected(ErrorCode::InvalidMutation, "a mutation must be an object"));
    };
    let name = obj.get("collection").and_then(Value::as_str).unwrap_or_default();
    let collection = CollectionName::new(name).map_err(|e| rejected(ErrorCode::InvalidCollection, e.to_string()))?;
    let config = collections
        .get(&collection)
        .ok_or_else(|| rejected(ErrorCode::UnknownCollection, format!("collection {collection} is not served here")))?;
    let invalid = |m: &str| rejected(ErrorCode::InvalidMutation, m.to_owned());
    let op = obj.get("op").and_then(Value::as_str);
    if !matches!(op, Some("upsert" | "delete" | "action")) {
        return Err(invalid("op must be \"upsert\", \"delete\" or \"action\""));
    }
    let record_id = match obj.get("record_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(RecordId::new(s.clone()).map_err(|e| invalid(&e.to_string()))?),
        Some(_) => return Err(invalid("record_id must be a string")),
    };
    let base_version = match obj.get("base_version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| invalid("base_version must be a non-negative integer or null"))?),
    };
    let data = obj.get("data").filter(|d| !d.is_null());
    let owner = match obj.get("owner") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("owner must be a string")),
    };
    let body = if op == Some("action") {
        let action = obj.get("action").and_then(Value::as_str).filter(|a| !a.is_empty());
        let Some(action) = action else { return Err(invalid("an action needs a non-empty \"action\" name")) };
        let args = match obj.get("args") {
            None => Map::new(),
            Some(Value::Object(args)) => args.clone(),
            Some(_) => return Err(invalid("args must be an object")),
        };
        MutationBody::Action { name: action.to_owned(), args }
    } else {
        if record_id.is_none() {
            return Err(invalid("record_id is required for upsert and delete"));
        }
        match (op, data) {
            (Some("upsert"), Some(Value::Object(data))) => MutationBody::Upsert { data: data.clone() },
            (Some("delete"), None) => MutationBody::Delete,
            _ => return Err(invalid("data must be an object for upsert and null for delete")),
        }
    };
    Ok((Mutation { mutation_id: id, collection, record_id, body, base_version, owner }, config))
}

/// Scope, then the write: what `m` does to `current` when `user` sends it, under the
/// collection's `rules`.
///
/// The write rule is checked on the record as it is (a tombstone keeps no data, so only
/// grants that need none, such as `owner`, hold for it) and, for an upsert, on the
/// record as it would be: a write that would put the record outside the writer's rule
/// (a technician reassigning their job) is `forbidden` like one outside it from the
/// start, and neither answer says anything of the record. An upsert whose rule fields
/// hold the wrong type (a number where a name is compared) is `invalid_mutation`.
pub fn decide(
    user: &User,
    rules: &CollectionRules,
    m: &Mutation,
    current: Option<&StoredRecord>,
    user_exists: impl Fn(&str) -> bool,
) -> Decision {
    let forbidden = || Decision::Answer(rejected(ErrorCode::Forbidden, "outside your scope"));
    if let Some(cur) = current {
        let data = if cur.deleted { None } else { cur.data.as_ref() };
        if !rules.write.grants(user, &cur.owner, data) {
            return forbidden();
        }
    }
    if let Some(owner) = &m.owner {
        if !user.admin && owner != &user.name {
            return forbidden();
        }
        if !user_exists(owner) {
            return Decision::Answer(rejected(ErrorCode::InvalidMutation, format!("unknown user {owner:?}")));
        }
        if current.is_some_and(|c| &c.owner != owner) {
            return Decision::Answer(rejected(ErrorCode::InvalidMutation, "a record's owner never changes"));
        }
    }
    let owner = current.map(|c| c.owner.clone()).or_else(|| m.owner.clone()).unwrap_or_else(|| user.name.clone());
    let data = match (&m.body, current) {
        // An action on no record: the handler decides, for anyone the rule lets write.
        (MutationBody::Action { .. }, None) if rules.write.grants.is_empty() && !user.admin => return forbidden(),
        (MutationBody::Action { .. }, _) => return Decision::Action,
        (MutationBody::Upsert { data }, _) => {
            let data = Value::Object(data.clone());
            if let Some(error) = rules.read.type_error(&data).or_else(|| rules.write.type_error(&data)) {
                return Decision::Answer(rejected(ErrorCode::InvalidMutation, error));
            }
            if !rules.write.grants(user, &owner, Some(&data)) {
                return forbidden();
            }
            Some(data)
        }
        (MutationBody::Delete, None) if !rules.write.grants(user, &owner, None) => return forbidden(),
        (MutationBody::Delete, _) => None,
    };
    if let Some(base) = m.base_version {
        if !base_matches(base, current.map(|c| (c.version, c.deleted))) {
            return Decision::Answer(conflict(current));
        }
    }
    let version = current.map_or(1, |c| c.version + 1);
    Decision::Write(StoredRecord { version, deleted: data.is_none(), owner, data })
}

/// Whether a write based on version `base` may apply to the record as it is now
/// (`current`: its version and whether it is a tombstone; None when there is none).
///
/// A number matches the record at exactly that version, live or deleted. Base 0 is
/// "create only if absent": it matches a missing record and a tombstone, and conflicts
/// only with a live record. A device that saw a record deleted (its own delete
/// acknowledged, or the tombstone pulled) and creates the id again knows of no live
/// record: the tombstone is what it saw, not a concurrent change, and after the server
/// purges the tombstone the record is simply missing, so the same write must apply
/// either way. (CouchDB lets a document be created again over its tombstone the same
/// way.) Any other number on a missing record is a conflict, as the protocol says.
pub fn base_matches(base: u64, current: Option<(u64, bool)>) -> bool {
    match current {
        None => base == 0,
        Some((version, deleted)) => base == version || (base == 0 && deleted),
    }
}

/// A `conflict` answer showing the record as it is now (None: missing; a tombstone
/// carries no data).
pub fn conflict(current: Option<&StoredRecord>) -> MutationOutcome {
    let server = current.map(|c| ServerRecord {
        version: Version(c.version),
        deleted: c.deleted,
        data: if c.deleted { None } else { c.data.clone() },
    });
    MutationOutcome::Conflict { server }
}

/// The depth of a JSON value (a scalar is 1), computed without recursion.
pub fn json_depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, d + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, d + 1))),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {

    #[test]
    fn which_bases_match_which_records() {
        let cases = [
            // (base, current (version, deleted), matches)
            (0, None, true),
            (3, None, false),
            (0, Some((2, false)), false),
            (2, Some((2, false)), true),
            (1, Some((2, false)), false),
            (0, Some((2, true)), true),
            (2, Some((2, true)), true),
            (1, Some((2, true)), false),
            (3, Some((2, true)), false),
        ];
        for (base, current, expected) in cases {
            assert_eq!(base_matches(base, current), expected, "base {base} on {current:?}");
        }
    }

    use super::*;
    use crate::config::Access;
    use serde_json::json;
    use sync_core::protocol::Op;

    fn collections() -> BTreeMap<CollectionName, CollectionConfig> {
        [
            (CollectionName::new("orders").unwrap(), CollectionConfig::new(Access::Owner)),
            (CollectionName::new("products").unwrap(), CollectionConfig::new(Access::ReadOnly)),
        ]
        .into_iter()
        .collect()
    }

    const ID: &str = "0190a5b8-7a3e-7c4d-9a51-2f6b1c3d4e5f";

    fn code(outcome: &MutationOutcome) -> &str {
        match outcome {
            MutationOutcome::Rejected { error } => error.code.as_str(),
            MutationOutcome::Applied { .. } => "applied",
            MutationOutcome::Conflict { .. } => "conflict",
        }
    }

    fn check_shape(raw: Value, expected: &str) {
        let got = mutation_id(&raw).and_then(|id| check(id, &raw, &collections()).map(|_| ()));
        let got = match &got {
            Ok(()) => "ok",
            Err(o) => code(o),
        };
        assert_eq!(got, expected, "{raw}");
    }

    #[test]
    fn checks_come_in_the_design_order() {
        check_shape(
            json!({"mutation_id": ID, "collection": "orders", "record_id": "r", "op": "upsert", "data": {}}),
            "ok",
        );
        check_shape(json!({"mutation_id": "nope", "collection": "Bad!", "op": "x"}), "invalid_mutation");
        check_shape(json!({"mutation_id": ID, "collection": "Bad!", "op": "x"}), "invalid_collection");
        check_shape(json!({"mutation_id": ID, "collection": "nope", "op": "x"}), "unknown_collection");
        check_shape(
            json!({"mutation_id": ID, "collection": "orders", "record_id": "r", "op": "x"}),
            "invalid_mutation",
        );
        check_shape(
            json!({"mutation_id": ID, "collection": "orders", "record_id": "r", "op": "upsert", "data": [1]}),
            "invalid_mutation",
        );
        check_shape(
            json!({"mutation_id": ID, "collection": "orders", "record_id": "r", "op": "delete", "data": {}}),
            "invalid_mutation",
        );
        check_shape(json!({"mutation_id": ID, "collection": "orders", "op": "upsert", "data": {}}), "invalid_mutation");
        check_shape(
            json!({"mutation_id": ID, "collection": "orders", "record_id": "r", "op": "upsert", "data": {}, "base_version": -1}),
            "invalid_mutation",
        );
        check_shape(json!({"mutation_id": ID, "collection": "orders", "op": "action", "action": "ping"}), "ok");
        check_shape(json!({"mutation_id": ID, "collection": "orders", "op": "action"}), "invalid_mutation");
        check_shape(
            json!({"mutation_id": ID, "collection": "orders", "record_id": "", "op": "delete"}),
            "invalid_mutation",
        );
    }

    fn m(op: Op, base: Option<u64>, owner: Option<&str>) -> Mutation {
        Mutation {
            mutation_id: Uuid::nil(),
            collection: CollectionName::new("orders").unwrap(),
            record_id: Some(RecordId::new("r").unwrap()),
            body: match op {
                Op::Upsert => MutationBody::Upsert { data: object(json!({"a": 1})) },
                Op::Delete => MutationBody::Delete,
                Op::Action => MutationBody::Action { name: "ping".into(), args: Map::new() },
            },
            base_version: base,
            owner: owner.map(str::to_owned),
        }
    }

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn rec(version: u64, owner: &str, deleted: bool) -> StoredRecord {
        StoredRecord { version, deleted, owner: owner.into(), data: if deleted { None } else { Some(json!({"b": 2})) } }
    }

    fn outcome(d: &Decision) -> String {
        match d {
            Decision::Answer(o) => code(o).to_owned(),
            Decision::Write(r) => format!("write v{} {} deleted={}", r.version, r.owner, r.deleted),
            Decision::Action => "action".into(),
        }
    }

    #[test]
    fn decisions() {
        let alice = User::new("alice", false);
        let admin = User::new("root", true);
        let exists = |n: &str| ["alice", "bob", "root"].contains(&n);
        let cases: Vec<(&User, Access, Mutation, Option<StoredRecord>, &str)> = vec![
            (&alice, Access::Owner, m(Op::Upsert, None, None), None, "write v1 alice deleted=false"),
            (
                &alice,
                Access::Owner,
                m(Op::Upsert, None, None),
                Some(rec(3, "alice", false)),
                "write v4 alice deleted=false",
            ),
            (
                &alice,
                Access::Owner,
                m(Op::Upsert, Some(3), None),
                Some(rec(3, "alice", false)),
                "write v4 alice deleted=false",
            ),
            (&alice, Access::Owner, m(Op::Upsert, Some(2), None), Some(rec(3, "alice", false)), "conflict"),
            (&alice, Access::Owner, m(Op::Upsert, Some(1), None), None, "conflict"),
            (&alice, Access::Owner, m(Op::Upsert, Some(0), None), None, "write v1 alice deleted=false"),
            (&alice, Access::Owner, m(Op::Upsert, Some(0), None), Some(rec(1, "alice", false)), "conflict"),
            // Create only if absent: a tombstone is absent (the record is created again).
            (
                &alice,
                Access::Owner,
                m(Op::Upsert, Some(0), None),
                Some(rec(2, "alice", true)),
                "write v3 alice deleted=false",
            ),
            (&alice, Access::Owner, m(Op::Upsert, Some(0), None), Some(rec(2, "bob", true)), "forbidden"),
            (&alice, Access::Owner, m(Op::Upsert, Some(0), None), Some(rec(1, "bob", false)), "forbidden"),
            (&alice, Access::Owner, m(Op::Delete, None, None), None, "write v1 alice deleted=true"),
            (
                &alice,
                Access::Owner,
                m(Op::Delete, Some(3), None),
                Some(rec(3, "alice", true)),
                "write v4 alice deleted=true",
            ),
            (&alice, Access::Owner, m(Op::Upsert, None, None), Some(rec(3, "bob", false)), "forbidden"),
            (&alice, Access::Owner, m(Op::Upsert, Some(3), None), Some(rec(3, "bob", false)), "forbidden"),
            (&alice, Access::Owner, m(Op::Upsert, None, None), Some(rec(3, "bob", true)), "forbidden"),
            (&alice, Access::Owner, m(Op::Upsert, None, Some("bob")), None, "forbidden"),
            (&alice, Access::Owner, m(Op::Upsert, None, Some("alice")), None, "write v1 alice deleted=false"),
            (&alice, Access::ReadOnly, m(Op::Upsert, None, None), None, "forbidden"),
            (&admin, Access::ReadOnly, m(Op::Upsert, None, None), None, "write v1 root deleted=false"),
            (&admin, Access::Owner, m(Op::Upsert, None, Some("bob")), None, "write v1 bob deleted=false"),
            (&admin, Access::Owner, m(Op::Upsert, None, Some("carol")), None, "invalid_mutation"),
            (&admin, Access::Owner, m(Op::Upsert, None, Some("alice")), Some(rec(1, "bob", false)), "invalid_mutation"),
            (
                &admin,
                Access::Owner,
                m(Op::Upsert, None, None),
                Some(rec(1, "bob", false)),
                "write v2 bob deleted=false",
            ),
            (&alice, Access::Owner, m(Op::Action, None, None), None, "action"),
            (&alice, Access::ReadOnly, m(Op::Action, None, None), None, "forbidden"),
        ];
        for (user, access, mutation, current, expected) in cases {
            let d = decide(user, &CollectionConfig::new(access).rules, &mutation, current.as_ref(), exists);
            assert_eq!(
                outcome(&d),
                expected,
                "{} {access:?} {:?} base {:?} on {current:?}",
                user.name,
                mutation.body,
                mutation.base_version
            );
        }
    }

    #[test]
    fn decisions_under_field_rules() {
        // Dispatchers write every job; a technician updates the jobs assigned to them.
        let rules = CollectionRules::parse(
            &["assigned_to = user".into()],
            &["user in dispatchers".into(), "assigned_to = user".into()],
            &Default::default(),
        )
        .unwrap();
        let tom = User::new("tom", false);
        let mut disp = User::new("disp", false);
        disp.groups.insert("dispatchers".into());
        let job = |to: Value| StoredRecord {
            version: 1,
            deleted: false,
            owner: "disp".into(),
            data: Some(json!({"assigned_to": to})),
        };
        let write = |to: Value| Mutation {
            body: MutationBody::Upsert { data: object(json!({"assigned_to": to})) },
            ..m(Op::Upsert, None, None)
        };
        let cases: Vec<(&User, Mutation, Option<StoredRecord>, &str)> = vec![
            (&tom, write(json!("tom")), Some(job(json!("tom"))), "write v2 disp deleted=false"),
            // Moving his job out of his own rule, or touching someone else's.
            (&tom, write(json!("ann")), Some(job(json!("tom"))), "forbidden"),
            (&tom, write(json!("tom")), Some(job(json!("ann"))), "forbidden"),
            (&tom, write(json!("ann")), None, "forbidden"),
            (&tom, write(json!("tom")), None, "write v1 tom deleted=false"),
            (&disp, write(json!("ann")), Some(job(json!("tom"))), "write v2 disp deleted=false"),
            // Wrong types are named, whoever writes; a stored one grants nothing.
            (&disp, write(json!(5)), None, "invalid_mutation"),
            (&tom, write(json!("tom")), Some(job(json!(5))), "forbidden"),
            // Deletes: of his job yes; of a missing record or a tombstone, only
            // data-free grants (the dispatchers' group) hold.
            (&tom, m(Op::Delete, None, None), Some(job(json!("tom"))), "write v2 disp deleted=true"),
            (&tom, m(Op::Delete, None, None), None, "forbidden"),
            (&tom, m(Op::Delete, None, None), Some(rec(2, "disp", true)), "forbidden"),
            (&disp, m(Op::Delete, None, None), Some(rec(2, "disp", true)), "write v3 disp deleted=true"),
            (&tom, m(Op::Action, None, None), None, "action"),
        ];
        for (user, mutation, current, expected) in cases {
            let d = decide(user, &rules, &mutation, current.as_ref(), |_| true);
            assert_eq!(outcome(&d), expected, "{} {:?} on {current:?}", user.name, mutation.body);
        }
        let admins_only = CollectionRules::parse(&["everyone".into()], &[], &Default::default()).unwrap();
        assert_eq!(outcome(&decide(&tom, &admins_only, &m(Op::Action, None, None), None, |_| true)), "forbidden");
    }

    #[test]
    fn conflicts_carry_tombstones_and_forbidden_carries_nothing() {
        let alice = User::new("alice", false);
        let d = decide(
            &alice,
            &CollectionConfig::new(Access::Owner).rules,
            &m(Op::Upsert, Some(1), None),
            Some(&rec(2, "alice", true)),
            |_| true,
        );
        assert_eq!(
            d,
            Decision::Answer(MutationOutcome::Conflict {
                server: Some(ServerRecord { version: Version(2), deleted: true, data: None })
            })
        );
        let d = decide(
            &alice,
            &CollectionConfig::new(Access::Owner).rules,
            &m(Op::Upsert, Some(1), None),
            Some(&rec(2, "bob", false)),
            |_| true,
        );
        let Decision::Answer(MutationOutcome::Rejected { error }) = d else { panic!("{d:?}") };
        assert!(!error.message.contains('2') && !error.message.contains('b'));
    }

    #[test]
    fn depth_is_counted_without_recursion() {
        assert_eq!(json_depth(&json!(1)), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": 2}]})), 4);
        let mut deep = json!(0);
        for _ in 0..1_000 {
            deep = json!([deep]);
        }
        assert_eq!(json_depth(&deep), 1_001);
    }
}

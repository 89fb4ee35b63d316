//! The server's pure decisions: checking one pushed mutation and deciding what it does
//! to the record, given who asks and what the record is now. Both stores call these.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use sync_core::protocol::{ErrorDetail, MutationOutcome, Op, ServerRecord};
use sync_core::{CollectionName, RecordId, Version};
use uuid::Uuid;

use crate::config::{Access, CollectionConfig};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The name records are owned by.
    pub name: String,
    /// Admins read and write everything.
    pub admin: bool,
}

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
    /// The record (required for upsert and delete).
    pub record_id: Option<RecordId>,
    /// What it does.
    pub op: Op,
    /// Apply only at this version (None: overwrite).
    pub base_version: Option<u64>,
    /// The data of an upsert.
    pub data: Option<Value>,
    /// The action name.
    pub action: Option<String>,
    /// The action's arguments.
    pub args: Option<Value>,
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

pub(crate) fn rejected(code: &str, message: impl Into<String>) -> MutationOutcome {
    MutationOutcome::Rejected { error: ErrorDetail { code: code.to_owned(), message: message.into() } }
}

/// The first check: the mutation id. Returns the UUID, or the rejection (with the id as
/// sent, or null) for a value that is not one.
pub fn mutation_id(raw: &Value) -> Result<Uuid, MutationOutcome> {
    raw.get("mutation_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| rejected("invalid_mutation", "mutation_id must be a UUID string"))
}

/// The collection and shape checks, after the ledger lookup.
pub fn check(
    id: Uuid,
    raw: &Value,
    collections: &BTreeMap<CollectionName, CollectionConfig>,
) -> Result<(Mutation, Access), MutationOutcome> {
    let Some(obj) = raw.as_object() else {
        return Err(rejected("invalid_mutation", "a mutation must be an object"));
    };
    let name = obj.get("collection").and_then(Value::as_str).unwrap_or_default();
    let collection = CollectionName::new(name).map_err(|e| rejected("invalid_collection", e.to_string()))?;
    let access = collections
        .get(&collection)
        .map(|c| c.access)
        .ok_or_else(|| rejected("unknown_collection", format!("collection {collection} is not served here")))?;
    let invalid = |m: &str| rejected("invalid_mutation", m.to_owned());
    let op = match obj.get("op").and_then(Value::as_str) {
        Some("upsert") => Op::Upsert,
        Some("delete") => Op::Delete,
        Some("action") => Op::Action,
        _ => return Err(invalid("op must be \"upsert\", \"delete\" or \"action\"")),
    };
    let record_id = match obj.get("record_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(RecordId::new(s.clone()).map_err(|e| invalid(&e.to_string()))?),
        Some(_) => return Err(invalid("record_id must be a string")),
    };
    let base_version = match obj.get("base_version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| invalid("base_version must be a non-negative integer or null"))?),
    };
    let data = obj.get("data").filter(|d| !d.is_null()).cloned();
    let owner = match obj.get("owner") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("owner must be a string")),
    };
    let (action, args) = match op {
        Op::Upsert | Op::Delete => {
            if record_id.is_none() {
                return Err(invalid("record_id is required for upsert and delete"));
            }
            match (op, &data) {
                (Op::Upsert, Some(d)) if d.is_object() => {}
                (Op::Delete, None) => {}
                _ => return Err(invalid("data must be an object for upsert and null for delete")),
            }
            (None, None)
        }
        Op::Action => {
            let action = obj.get("action").and_then(Value::as_str).filter(|a| !a.is_empty());
            let Some(action) = action else { return Err(invalid("an action needs a non-empty \"action\" name")) };
            let args = obj.get("args").cloned().unwrap_or(Value::Object(Default::default()));
            if !args.is_object() {
                return Err(invalid("args must be an object"));
            }
            (Some(action.to_owned()), Some(args))
        }
    };
    Ok((Mutation { mutation_id: id, collection, record_id, op, base_version, data, action, args, owner }, access))
}

/// Scope, then the write: what `m` does to `current` when `user` sends it.
pub fn decide(
    user: &User,
    access: Access,
    m: &Mutation,
    current: Option<&StoredRecord>,
    user_exists: impl Fn(&str) -> bool,
) -> Decision {
    let forbidden = || Decision::Answer(rejected("forbidden", "outside your scope"));
    if access == Access::ReadOnly && !user.admin {
        return forbidden();
    }
    if let Some(cur) = current {
        if access == Access::Owner && cur.owner != user.name && !user.admin {
            return forbidden();
        }
    }
    if let Some(owner) = &m.owner {
        if !user.admin && owner != &user.name {
            return forbidden();
        }
        if !user_exists(owner) {
            return Decision::Answer(rejected("invalid_mutation", format!("unknown user {owner:?}")));
        }
        if current.is_some_and(|c| &c.owner != owner) {
            return Decision::Answer(rejected("invalid_mutation", "a record's owner never changes"));
        }
    }
    if m.op == Op::Action {
        return Decision::Action;
    }
    if let Some(base) = m.base_version {
        if !base_matches(base, current.map(|c| (c.version, c.deleted))) {
            return Decision::Answer(conflict(current));
        }
    }
    let owner = current.map(|c| c.owner.clone()).or_else(|| m.owner.clone()).unwrap_or_else(|| user.name.clone());
    let version = current.map_or(1, |c| c.version + 1);
    let deleted = m.op == Op::Delete;
    Decision::Write(StoredRecord { version, deleted, owner, data: if deleted { None } else { m.data.clone() } })
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

/// Who may read a record: everyone (read-only collections), or its owner; admins read
/// everything either way. Pulls check it per user and change notifications are routed
/// by it, so the two can never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience<'a> {
    /// Every user.
    Everyone,
    /// The user of this name (and admins).
    Owner(&'a str),
}

impl Audience<'_> {
    /// Whether `user` is in this audience.
    pub fn includes(&self, user: &User) -> bool {
        user.admin
            || match self {
                Audience::Everyone => true,
                Audience::Owner(owner) => *owner == user.name,
            }
    }
}

/// The audience of a record owned by `owner` in a collection with `access`.
pub fn audience(access: Access, owner: &str) -> Audience<'_> {
    match access {
        Access::ReadOnly => Audience::Everyone,
        Access::Owner => Audience::Owner(owner),
    }
}

/// Whether `user` may read a record owned by `owner` in a collection with `access`.
pub fn may_read(user: &User, access: Access, owner: &str) -> bool {
    audience(access, owner).includes(user)
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
    use crate::config::Ids;
    use serde_json::json;

    fn collections() -> BTreeMap<CollectionName, CollectionConfig> {
        [
            (CollectionName::new("orders").unwrap(), CollectionConfig { access: Access::Owner, ids: Ids::Client }),
            (CollectionName::new("products").unwrap(), CollectionConfig { access: Access::ReadOnly, ids: Ids::Client }),
        ]
        .into_iter()
        .collect()
    }

    const ID: &str = "0190a5b8-7a3e-7c4d-9a51-2f6b1c3d4e5f";

    fn code(outcome: &MutationOutcome) -> &str {
        match outcome {
            MutationOutcome::Rejected { error } => &error.code,
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
            op,
            base_version: base,
            data: if op == Op::Upsert { Some(json!({"a": 1})) } else { None },
            action: None,
            args: None,
            owner: owner.map(str::to_owned),
        }
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
        let alice = User { name: "alice".into(), admin: false };
        let admin = User { name: "root".into(), admin: true };
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
            let d = decide(user, access, &mutation, current.as_ref(), exists);
            assert_eq!(
                outcome(&d),
                expected,
                "{} {access:?} {:?} base {:?} on {current:?}",
                user.name,
                mutation.op,
                mutation.base_version
            );
        }
    }

    #[test]
    fn conflicts_carry_tombstones_and_forbidden_carries_nothing() {
        let alice = User { name: "alice".into(), admin: false };
        let d = decide(&alice, Access::Owner, &m(Op::Upsert, Some(1), None), Some(&rec(2, "alice", true)), |_| true);
        assert_eq!(
            d,
            Decision::Answer(MutationOutcome::Conflict {
                server: Some(ServerRecord { version: Version(2), deleted: true, data: None })
            })
        );
        let d = decide(&alice, Access::Owner, &m(Op::Upsert, Some(1), None), Some(&rec(2, "bob", false)), |_| true);
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

//! Wire protocol version 1 (HTTP + JSON) as serde types, shared by clients and servers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{ClientId, CollectionName, Cursor, MutationId, RecordId, Version};

/// The kind of a mutation: the `"op"` of its [`MutationBody`], and what a local
/// outbox entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Create or replace the record with `data`.
    Upsert,
    /// Delete the record.
    Delete,
    /// A named custom action with JSON `args`, e.g. "mark read".
    Action,
}

impl Op {
    /// The kind as it is written on the wire (`"upsert"`, `"delete"`, `"action"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
            Op::Action => "action",
        }
    }
}

/// What a pushed mutation does, with exactly the fields its kind has on the wire:
/// `{"op": "upsert", "data": {..}}`, `{"op": "delete"}`,
/// `{"op": "action", "action": "mark_read", "args": {..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MutationBody {
    /// Create or replace the record with `data` (the server's shape).
    Upsert {
        /// The record's fields.
        data: Map<String, Value>,
    },
    /// Delete the record (a server keeps a tombstone).
    Delete,
    /// Run the server's handler for the named action.
    Action {
        /// The action's name (`action` on the wire), never empty.
        #[serde(rename = "action")]
        name: String,
        /// Its arguments (`{}` when absent).
        #[serde(default)]
        args: Map<String, Value>,
    },
}

impl MutationBody {
    /// The kind of mutation.
    pub fn op(&self) -> Op {
        match self {
            MutationBody::Upsert { .. } => Op::Upsert,
            MutationBody::Delete => Op::Delete,
            MutationBody::Action { .. } => Op::Action,
        }
    }
}

/// One mutation in a push request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireMutation {
    /// The idempotency key.
    pub mutation_id: MutationId,
    /// The collection it touches.
    pub collection: CollectionName,
    /// The record it touches (required for upsert and delete; optional for actions).
    #[serde(default)]
    pub record_id: Option<RecordId>,
    /// What it does: `op` and the fields of that kind.
    #[serde(flatten)]
    pub body: MutationBody,
    /// `null`: overwrite (last write wins); a number: apply only at this version.
    #[serde(default)]
    pub base_version: Option<Version>,
    /// Admins only: the user a created record belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The machine-readable `code` of an error: of a whole request refused, or of one
/// mutation rejected in a push. On the wire it is the snake_case name; a code this
/// version does not know (a newer server's) is kept as [`ErrorCode::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `invalid_request`: the body is not JSON or not the request's shape.
    InvalidRequest,
    /// `batch_too_large`: more mutations than the server takes in one push.
    BatchTooLarge,
    /// `unknown_collection`: a collection the server does not serve.
    UnknownCollection,
    /// `invalid_collection`: a name that is not a collection name.
    InvalidCollection,
    /// `invalid_mutation`: a mutation of the wrong shape, or data the rules cannot read.
    InvalidMutation,
    /// `forbidden`: outside the user's write rule.
    Forbidden,
    /// `unknown_action`: no handler for the action's name.
    UnknownAction,
    /// `unauthorized`: no token, or one the server does not know.
    Unauthorized,
    /// `token_expired`: a signed token that has expired.
    TokenExpired,
    /// `body_too_large`: a body past the server's limit.
    BodyTooLarge,
    /// `unsupported_encoding`: a request body in a coding the server does not decode.
    UnsupportedEncoding,
    /// `not_found`: no such endpoint.
    NotFound,
    /// `unavailable`: the database is busy; retry later.
    Unavailable,
    /// `overloaded`: the server is at a limit it sets itself; retry later.
    Overloaded,
    /// `internal`: anything else; the details stay in the server's log.
    Internal,
    /// `conflict`: an action on no record answered `conflict`, which nothing can
    /// settle; the client parks it under this code.
    Conflict,
    /// `mapping_failed`: the collection's mapping could not put the record in the
    /// server's shape; the client parks it under this code without sending it.
    MappingFailed,
    /// `http_error`: an error answer without a protocol body (a proxy's, say).
    HttpError,
    /// `invalid_subscription`: a subscription of the wrong shape (a bad field path, a
    /// value that is not a string or a number, a range without bounds).
    InvalidSubscription,
    /// `unindexed_subscription`: no index the server declares answers the
    /// subscription's fields.
    UnindexedSubscription,
    /// A code this version does not know, as sent (an action handler's own, a newer
    /// server's).
    Other(String),
}

impl ErrorCode {
    const NAMED: [(ErrorCode, &'static str); 20] = [
        (ErrorCode::InvalidRequest, "invalid_request"),
        (ErrorCode::BatchTooLarge, "batch_too_large"),
        (ErrorCode::UnknownCollection, "unknown_collection"),
        (ErrorCode::InvalidCollection, "invalid_collection"),
        (ErrorCode::InvalidMutation, "invalid_mutation"),
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::UnknownAction, "unknown_action"),
        (ErrorCode::Unauthorized, "unauthorized"),
        (ErrorCode::TokenExpired, "token_expired"),
        (ErrorCode::BodyTooLarge, "body_too_large"),
        (ErrorCode::UnsupportedEncoding, "unsupported_encoding"),
        (ErrorCode::NotFound, "not_found"),
        (ErrorCode::Unavailable, "unavailable"),
        (ErrorCode::Overloaded, "overloaded"),
        (ErrorCode::Internal, "internal"),
        (ErrorCode::Conflict, "conflict"),
        (ErrorCode::MappingFailed, "mapping_failed"),
        (ErrorCode::HttpError, "http_error"),
        (ErrorCode::InvalidSubscription, "invalid_subscription"),
        (ErrorCode::UnindexedSubscription, "unindexed_subscription"),
    ];

    /// The code as it is written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Other(code) => code,
            known => Self::NAMED.iter().find(|(c, _)| c == known).map_or("internal", |(_, name)| name),
        }
    }

    /// The code written `name` on the wire.
    pub fn from_name(name: &str) -> Self {
        Self::NAMED
            .iter()
            .find(|(_, n)| *n == name)
            .map_or_else(|| ErrorCode::Other(name.to_owned()), |(code, _)| code.clone())
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(ErrorCode::from_name(&name))
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// `POST /v1/push` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRequest {
    /// The device's id.
    pub client_id: ClientId,
    /// The mutations, applied in this order.
    pub mutations: Vec<WireMutation>,
}

/// `POST /v1/push` answer: one result per mutation, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushResponse {
    /// One result per pushed mutation, in the order pushed.
    pub results: Vec<MutationResult>,
}

/// The server's answer for one mutation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MutationResult {
    /// Which mutation this answers.
    pub mutation_id: MutationId,
    /// What happened.
    #[serde(flatten)]
    pub outcome: MutationOutcome,
}

/// What happened to one pushed mutation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum MutationOutcome {
    /// Applied; the record is now at `version`.
    Applied {
        /// The record's new version.
        version: Version,
        /// The id the server stored a created record under, when it assigned one itself
        /// (a collection whose [`crate::ServerMapping::id_assignment`] is
        /// [`crate::IdAssignment::Server`]); absent when it kept the mutation's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        record_id: Option<RecordId>,
    },
    /// Not applied: the record moved on. `server` is its current state (None: missing).
    Conflict {
        /// The server's current record, or None when it does not exist.
        server: Option<ServerRecord>,
    },
    /// Refused permanently; retrying the same mutation will not help.
    Rejected {
        /// Why.
        error: ErrorDetail,
    },
}

/// A record as the server holds it, in a conflict answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Its version.
    pub version: Version,
    /// True for a tombstone.
    pub deleted: bool,
    /// Its data; null for a tombstone.
    pub data: Option<Value>,
}

/// `POST /v1/pull` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    /// The device's id.
    pub client_id: ClientId,
    /// Each collection to pull, with its cursor (null: from the beginning).
    pub collections: BTreeMap<CollectionName, Option<Cursor>>,
    /// The most changes wanted in this page (the server caps it), across the
    /// collections and the subscriptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Subscriptions to pull, by the id the device gave each (servers before
    /// subscriptions ignore the field, and answer none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subscriptions: BTreeMap<String, SubscriptionPull>,
}

/// What a subscription asks of one collection: equality on some fields and at most one
/// range, on top of the user's read rule. The server answers it from an index it
/// declares, or refuses it (`unindexed_subscription`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionQuery {
    /// The collection.
    pub collection: CollectionName,
    /// Fields (dotted paths) and the value each must equal: a string or a number.
    #[serde(default, rename = "where", skip_serializing_if = "BTreeMap::is_empty")]
    pub equals: BTreeMap<String, Value>,
    /// A window on one more field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<RangeBounds>,
}

/// A window on one field: each bound optional, at least one given, values strings or
/// numbers (strings compare byte by byte, so ISO 8601 dates compare as dates).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RangeBounds {
    /// The field (a dotted path).
    pub field: String,
    /// Greater than.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<Value>,
    /// Greater than or equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<Value>,
    /// Less than.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<Value>,
    /// Less than or equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<Value>,
}

/// One subscription in a pull: what it asks, and its cursor (null: from the beginning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionPull {
    /// What it asks.
    #[serde(flatten)]
    pub query: SubscriptionQuery,
    /// Its cursor.
    pub cursor: Option<Cursor>,
}

/// One subscription's part of a pull answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SubscriptionPage {
    /// Its changes: records that match (with data), tombstones, and removals of records
    /// that no longer match or left the user's scope.
    #[serde(default)]
    pub changes: Vec<Change>,
    /// Its new cursor (absent with `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
    /// More pages follow for it.
    #[serde(default)]
    pub has_more: bool,
    /// Its cursor could not go on: the full set follows, and the device drops what it
    /// held only for this subscription and does not receive again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// On the first page of a download: how many records match, as the server counted
    /// them when it began (an estimate: others write meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// The server refused the subscription (`unknown_collection`,
    /// `invalid_subscription`, `unindexed_subscription`); nothing else is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// One change in a pull page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The collection.
    pub collection: CollectionName,
    /// The record.
    pub record_id: RecordId,
    /// Its version after the change.
    pub version: Version,
    /// True for a tombstone, and for a removal.
    pub deleted: bool,
    /// A removal: the record still exists, but the server's sync rules no longer let
    /// this user read it (reassigned to someone else, moved to another region). It
    /// comes with `deleted: true` and no data, so a device that does not know the field
    /// drops the record as it would for a delete; its `version` is the record's current
    /// one. Absent (false) otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// Its data; null for a tombstone.
    pub data: Option<Value>,
    /// The mutation that made this version, when a client's push did (absent from older
    /// servers). A device whose push of that mutation went unanswered knows the change
    /// for its own write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutation_id: Option<MutationId>,
}

/// `POST /v1/pull` answer: one page of changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullResponse {
    /// The changes of this page.
    pub changes: Vec<Change>,
    /// The new cursor of each pulled collection.
    pub cursors: BTreeMap<CollectionName, Cursor>,
    /// More pages follow.
    pub has_more: bool,
    /// Collections whose cursor was too old: drop what is clean and take the full set.
    #[serde(default)]
    pub reset: Vec<CollectionName>,
    /// Each subscription asked for, by its id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subscriptions: BTreeMap<String, SubscriptionPage>,
}

/// The `error` member of every error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// What kind of error, for code to match on.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl ErrorDetail {
    /// An error of kind `code`, explained by `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// An error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// `GET /v1/events` `change` event data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeNotification {
    /// The collections that changed.
    pub collections: Vec<CollectionName>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::json;

    /// Parses literal JSON, checks it equals `expected`, and that it serializes back
    /// to the same JSON value.
    fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(literal: Value, expected: T) {
        let parsed: T = serde_json::from_value(literal.clone()).unwrap();
        assert_eq!(parsed, expected);
        assert_eq!(serde_json::to_value(&parsed).unwrap(), literal);
    }

    const M1: &str = "0190a5b8-7a3e-7c4d-9a51-2f6b1c3d4e5f";

    fn mid() -> MutationId {
        MutationId::parse(M1).unwrap()
    }

    fn wo() -> CollectionName {
        CollectionName::new("work_orders").unwrap()
    }

    #[test]
    fn push_request_round_trips() {
        check(
            json!({"client_id": "c1", "mutations": [
                {"mutation_id": M1, "collection": "work_orders", "record_id": "r1",
                 "op": "upsert", "base_version": 3, "data": {"title": "fix"}},
                {"mutation_id": M1, "collection": "work_orders", "record_id": "r2",
                 "op": "delete", "base_version": null},
                {"mutation_id": M1, "collection": "work_orders", "record_id": null,
                 "op": "action", "base_version": null,
                 "action": "mark_read", "args": {"ids": ["r1"]}}
            ]}),
            PushRequest {
                client_id: ClientId("c1".into()),
                mutations: vec![
                    WireMutation {
                        mutation_id: mid(),
                        collection: wo(),
                        record_id: Some(RecordId::new("r1").unwrap()),
                        body: MutationBody::Upsert { data: object(json!({"title": "fix"})) },
                        base_version: Some(Version(3)),
                        owner: None,
                    },
                    WireMutation {
                        mutation_id: mid(),
                        collection: wo(),
                        record_id: Some(RecordId::new("r2").unwrap()),
                        body: MutationBody::Delete,
                        base_version: None,
                        owner: None,
                    },
                    WireMutation {
                        mutation_id: mid(),
                        collection: wo(),
                        record_id: None,
                        body: MutationBody::Action { name: "mark_read".into(), args: object(json!({"ids": ["r1"]})) },
                        base_version: None,
                        owner: None,
                    },
                ],
            },
        );
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn mutation_bodies_take_what_older_clients_send_and_refuse_the_wrong_shape() {
        let mutation = |body: Value| {
            let mut m = json!({"mutation_id": M1, "collection": "work_orders", "record_id": "r1"});
            m.as_object_mut().unwrap().extend(object(body));
            serde_json::from_value::<WireMutation>(m).map(|m| m.body)
        };
        // Older clients send `"data": null` with deletes and actions, and no `args`.
        assert_eq!(mutation(json!({"op": "delete", "data": null})).unwrap(), MutationBody::Delete);
        assert_eq!(
            mutation(json!({"op": "action", "data": null, "action": "ping"})).unwrap(),
            MutationBody::Action { name: "ping".into(), args: Map::new() }
        );
        for wrong in [
            json!({"op": "upsert"}),
            json!({"op": "upsert", "data": null}),
            json!({"op": "upsert", "data": [1]}),
            json!({"op": "action"}),
            json!({"op": "action", "action": "ping", "args": [1]}),
            json!({"op": "rename"}),
            json!({}),
        ] {
            assert!(mutation(wrong.clone()).is_err(), "{wrong} parsed");
        }
        assert_eq!(MutationBody::Delete.op(), Op::Delete);
        for op in [Op::Upsert, Op::Delete, Op::Action] {
            assert_eq!(serde_json::to_value(op).unwrap(), json!(op.as_str()));
        }
    }

    #[test]
    fn error_codes_are_named_on_the_wire_and_unknown_ones_kept() {
        for (code, _) in ErrorCode::NAMED {
            let wire = serde_json::to_value(&code).unwrap();
            assert_eq!(wire, json!(code.as_str()));
            assert_eq!(serde_json::from_value::<ErrorCode>(wire).unwrap(), code);
        }
        let custom: ErrorCode = serde_json::from_value(json!("out_of_stock")).unwrap();
        assert_eq!(custom, ErrorCode::Other("out_of_stock".into()));
        assert_eq!(serde_json::to_value(&custom).unwrap(), json!("out_of_stock"));
        assert_eq!(ErrorCode::Forbidden.to_string(), "forbidden");
        assert!(ErrorCode::BatchTooLarge == "batch_too_large");
    }

    #[test]
    fn push_results_round_trip() {
        check(
            json!({"results": [
                {"mutation_id": M1, "status": "applied", "version": 4},
                {"mutation_id": M1, "status": "applied", "version": 1, "record_id": "srv-9"},
                {"mutation_id": M1, "status": "conflict",
                 "server": {"version": 7, "deleted": false, "data": {"title": "theirs"}}},
                {"mutation_id": M1, "status": "conflict", "server": null},
                {"mutation_id": M1, "status": "conflict",
                 "server": {"version": 2, "deleted": true, "data": null}},
                {"mutation_id": M1, "status": "rejected",
                 "error": {"code": "forbidden", "message": "not yours"}}
            ]}),
            PushResponse {
                results: vec![
                    MutationResult {
                        mutation_id: mid(),
                        outcome: MutationOutcome::Applied { version: Version(4), record_id: None },
                    },
                    MutationResult {
                        mutation_id: mid(),
                        outcome: MutationOutcome::Applied {
                            version: Version(1),
                            record_id: Some(RecordId::new("srv-9").unwrap()),
                        },
                    },
                    MutationResult {
                        mutation_id: mid(),
                        outcome: MutationOutcome::Conflict {
                            server: Some(ServerRecord {
                                version: Version(7),
                                deleted: false,
                                data: Some(json!({"title": "theirs"})),
                            }),
                        },
                    },
                    MutationResult { mutation_id: mid(), outcome: MutationOutcome::Conflict { server: None } },
                    MutationResult {
                        mutation_id: mid(),
                        outcome: MutationOutcome::Conflict {
                            server: Some(ServerRecord { version: Version(2), deleted: true, data: None }),
                        },
                    },
                    MutationResult {
                        mutation_id: mid(),
                        outcome: MutationOutcome::Rejected {
                            error: ErrorDetail::new(ErrorCode::Forbidden, "not yours"),
                        },
                    },
                ],
            },
        );
    }

    #[test]
    fn pull_round_trips() {
        check(
            json!({"client_id": "c1", "collections": {"work_orders": null, "products": "17"}, "limit": 500}),
            PullRequest {
                client_id: ClientId("c1".into()),
                collections: [(wo(), None), (CollectionName::new("products").unwrap(), Some(Cursor("17".into())))]
                    .into_iter()
                    .collect(),
                limit: Some(500),
                subscriptions: Default::default(),
            },
        );
        check(
            json!({"changes": [
                {"collection": "work_orders", "record_id": "r1", "version": 2, "deleted": false, "data": {"a": 1},
                 "mutation_id": "0195f3a4-0000-7000-8000-000000000001"},
                {"collection": "work_orders", "record_id": "r2", "version": 5, "deleted": true, "data": null}
            ], "cursors": {"work_orders": "e1:42"}, "has_more": true, "reset": ["work_orders"]}),
            PullResponse {
                changes: vec![
                    Change {
                        collection: wo(),
                        record_id: RecordId::new("r1").unwrap(),
                        version: Version(2),
                        deleted: false,
                        removed: false,
                        data: Some(json!({"a": 1})),
                        mutation_id: Some(MutationId::parse("0195f3a4-0000-7000-8000-000000000001").unwrap()),
                    },
                    Change {
                        collection: wo(),
                        record_id: RecordId::new("r2").unwrap(),
                        version: Version(5),
                        deleted: true,
                        removed: false,
                        data: None,
                        mutation_id: None,
                    },
                ],
                cursors: [(wo(), Cursor("e1:42".into()))].into_iter().collect(),
                has_more: true,
                reset: vec![wo()],
                subscriptions: Default::default(),
            },
        );
    }

    #[test]
    fn error_body_and_events_round_trip() {
        check(
            json!({"error": {"code": "batch_too_large", "message": "at most 1000"}}),
            ErrorBody { error: ErrorDetail::new(ErrorCode::BatchTooLarge, "at most 1000") },
        );
        check(json!({"collections": ["work_orders"]}), ChangeNotification { collections: vec![wo()] });
    }

    #[test]
    fn bad_pages_are_errors_not_panics() {
        for bad in [
            json!({"changes": [{"collection": "Bad Name", "record_id": "r", "version": 1, "deleted": false, "data": null}], "cursors": {}, "has_more": false}),
            json!({"changes": [{"collection": "a", "record_id": "", "version": 1, "deleted": false, "data": null}], "cursors": {}, "has_more": false}),
            json!({"changes": [{"collection": "a", "record_id": "r", "version": -1, "deleted": false, "data": null}], "cursors": {}, "has_more": false}),
            json!({"changes": "nope", "cursors": {}, "has_more": false}),
            json!({"cursors": {}, "has_more": false}),
        ] {
            assert!(serde_json::from_value::<PullResponse>(bad).is_err());
        }
    }
}

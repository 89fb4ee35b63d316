//! Subscriptions on the server: a device's query on one collection, checked against the
//! indexes the collection declares for subscriptions (`subscription_indexes`), its
//! fingerprint, and its cursor. Pure; each store turns a [`Subscription`] into its SQL.
//!
//! A subscription downloads in two phases. First the records that match now, in the
//! order of the index that answers it (its range field, then the id), a keyset page at a
//! time, remembering the feed's head when it began. Then, from that head, every change
//! in the user's scope in commit order: a record that matches comes with its data, one
//! that does not as a removal, a tombstone as a delete. A record changed during the first
//! phase may be sent twice; its version tells the device which is newer.

use std::collections::BTreeMap;

use serde_json::Value;
use sync_core::protocol::{ErrorCode, ErrorDetail, RangeBounds, SubscriptionQuery};
use sync_core::store::FieldPath;
use sync_core::{CollectionName, Cursor};

use crate::config::CollectionConfig;
use crate::error::ServerError;

/// The most equality fields a subscription may name.
pub const MAX_EQUALS: usize = 8;

/// An index a collection declares for subscriptions: its fields, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionIndex {
    /// The collection.
    pub collection: CollectionName,
    /// The fields, in index order.
    pub fields: Vec<FieldPath>,
}

impl SubscriptionIndex {
    /// The index's name in the database: `sync_sub_<collection>_<hash of the fields>`.
    pub fn name(&self) -> String {
        let fields: Vec<&str> = self.fields.iter().map(FieldPath::as_str).collect();
        format!("{PREFIX}{}_{}", self.collection, short_hash(&format!("{}\0{}", self.collection, fields.join("\0"))))
    }
}

/// The prefix of every subscription index's name.
pub const PREFIX: &str = "sync_sub_";

/// Every subscription index the collections declare.
pub fn declared(collections: &BTreeMap<CollectionName, CollectionConfig>) -> Vec<SubscriptionIndex> {
    collections
        .iter()
        .flat_map(|(name, config)| {
            config
                .subscription_indexes
                .iter()
                .map(|fields| SubscriptionIndex { collection: name.clone(), fields: fields.clone() })
        })
        .collect()
}

/// Which of the database's subscription indexes (`existing`, by name) to drop, and
/// which of the `wanted` to build.
pub fn plan_indexes<'a>(
    existing: &[String],
    wanted: &'a [SubscriptionIndex],
) -> (Vec<String>, Vec<&'a SubscriptionIndex>) {
    let names: Vec<String> = wanted.iter().map(SubscriptionIndex::name).collect();
    let stale = existing.iter().filter(|name| name.starts_with(PREFIX) && !names.contains(name)).cloned().collect();
    let missing =
        wanted.iter().zip(&names).filter(|(_, name)| !existing.contains(name)).map(|(index, _)| index).collect();
    (stale, missing)
}

/// How a range bound compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
}

impl Bound {
    /// The SQL operator.
    pub fn sql(self) -> &'static str {
        match self {
            Bound::Gt => ">",
            Bound::Ge => ">=",
            Bound::Lt => "<",
            Bound::Le => "<=",
        }
    }
}

/// A checked subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// The collection.
    pub collection: CollectionName,
    /// Fields that must equal a value (a string or a number), in path order.
    pub equals: Vec<(FieldPath, Value)>,
    /// The range field and its bounds (one or two).
    pub range: Option<(FieldPath, Vec<(Bound, Value)>)>,
    /// The index that answers it; None when it names no field (the primary key does).
    pub index: Option<SubscriptionIndex>,
    /// Names the query in its cursors: a cursor made for other parameters resets.
    pub fingerprint: String,
}

/// A refusal of one subscription, for its part of the answer.
fn refuse(code: ErrorCode, message: String) -> ErrorDetail {
    ErrorDetail { code, message }
}

fn invalid(message: String) -> ErrorDetail {
    refuse(ErrorCode::InvalidSubscription, message)
}

/// A value a subscription compares with: a string or a number.
fn comparable(field: &str, value: &Value) -> Result<Value, ErrorDetail> {
    match value {
        Value::String(_) | Value::Number(_) => Ok(value.clone()),
        other => Err(invalid(format!("{field}: {other} does not compare; use a string or a number"))),
    }
}

fn path(field: &str) -> Result<FieldPath, ErrorDetail> {
    FieldPath::new(field).map_err(|_| invalid(format!("{field:?} is not a field path")))
}

impl Subscription {
    /// Checks `query` against the collection's declared `indexes` (field lists).
    ///
    /// # Errors
    /// `invalid_subscription` for a bad field path, a value that is not a string or a
    /// number, too many fields, a range without bounds or with two on one side, or a
    /// range on a field also given a value; `unindexed_subscription` when no declared
    /// index is exactly the equality fields (in any order) followed by the range field.
    pub fn check(query: &SubscriptionQuery, indexes: &[Vec<FieldPath>]) -> Result<Self, ErrorDetail> {
        if query.equals.len() > MAX_EQUALS {
            return Err(invalid(format!("at most {MAX_EQUALS} fields may be given values")));
        }
        let mut equals = Vec::with_capacity(query.equals.len());
        for (field, value) in &query.equals {
            equals.push((path(field)?, comparable(field, value)?));
        }
        let range = match &query.range {
            None => None,
            Some(bounds) => Some(check_range(bounds)?),
        };
        if let Some((field, _)) = &range
            && equals.iter().any(|(f, _)| f == field)
        {
            return Err(invalid(format!("{} has a value and a range", field.as_str())));
        }
        let index = match (equals.is_empty(), &range) {
            (true, None) => None,
            _ => Some(choose_index(&query.collection, &equals, range.as_ref().map(|r| &r.0), indexes)?),
        };
        let fingerprint = fingerprint(query);
        Ok(Self { collection: query.collection.clone(), equals, range, index, fingerprint })
    }

    /// The field the first phase pages by after the equality fields (the range field),
    /// if any; the record id follows it.
    pub fn key_field(&self) -> Option<&FieldPath> {
        self.range.as_ref().map(|(field, _)| field)
    }

    /// Every condition as (field, operator, value), equalities first.
    pub fn terms(&self) -> Vec<(&FieldPath, &'static str, &Value)> {
        let mut terms: Vec<_> = self.equals.iter().map(|(f, v)| (f, "=", v)).collect();
        if let Some((field, bounds)) = &self.range {
            terms.extend(bounds.iter().map(|(b, v)| (field, b.sql(), v)));
        }
        terms
    }
}

fn check_range(bounds: &RangeBounds) -> Result<(FieldPath, Vec<(Bound, Value)>), ErrorDetail> {
    let field = path(&bounds.field)?;
    let side = |a: &Option<Value>, ab: Bound, b: &Option<Value>, bb: Bound| match (a, b) {
        (Some(_), Some(_)) => Err(invalid(format!("{}: one lower and one upper bound at most", bounds.field))),
        (Some(v), None) => Ok(Some((ab, comparable(&bounds.field, v)?))),
        (None, Some(v)) => Ok(Some((bb, comparable(&bounds.field, v)?))),
        (None, None) => Ok(None),
    };
    let lower = side(&bounds.gt, Bound::Gt, &bounds.gte, Bound::Ge)?;
    let upper = side(&bounds.lt, Bound::Lt, &bounds.lte, Bound::Le)?;
    let all: Vec<_> = lower.into_iter().chain(upper).collect();
    if all.is_empty() {
        return Err(invalid(format!("the range on {} has no bound", bounds.field)));
    }
    Ok((field, all))
}

/// The first declared index whose fields are exactly the equality fields (in any
/// order), then the range field when there is one. Exactly: the first phase pages in
/// index order by the range field (never null, the range excludes it) and the id; an
/// index with more fields would order rows by those too, and a keyset page over them
/// would need a sort of every match per page (and trip over records missing a field).
fn choose_index(
    collection: &CollectionName,
    equals: &[(FieldPath, Value)],
    range: Option<&FieldPath>,
    indexes: &[Vec<FieldPath>],
) -> Result<SubscriptionIndex, ErrorDetail> {
    let n = equals.len();
    let fits = |fields: &Vec<FieldPath>| {
        fields.len() == n + usize::from(range.is_some())
            && equals.iter().all(|(f, _)| fields[..n].contains(f))
            && range.is_none_or(|r| &fields[n] == r)
    };
    match indexes.iter().find(|fields| fits(fields)) {
        Some(fields) => Ok(SubscriptionIndex { collection: collection.clone(), fields: fields.clone() }),
        None => {
            let mut wanted: Vec<String> = equals.iter().map(|(f, _)| format!("{:?}", f.as_str())).collect();
            wanted.extend(range.map(|r| format!("{:?}", r.as_str())));
            Err(refuse(
                ErrorCode::UnindexedSubscription,
                format!(
                    "no subscription index of {collection} answers this subscription: the server would \
                     declare subscription_indexes = [[{}]] for it",
                    wanted.join(", ")
                ),
            ))
        }
    }
}

/// A short, stable name of the query's parameters.
fn fingerprint(query: &SubscriptionQuery) -> String {
    short_hash(&serde_json::to_string(query).unwrap_or_default())
}

fn short_hash(text: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..6])
}

/// Where the first phase stands: after this record (the range field's value, when the
/// subscription has one, and the id).
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The range field's value (None without a range field).
    pub value: Option<Value>,
    /// The record id.
    pub id: String,
}

/// A subscription's position.
#[derive(Debug, Clone, PartialEq)]
pub enum SubPosition {
    /// Downloading what matches, begun when the feed's head was `head`; after `after`.
    Initial {
        /// The feed's head when the download began: the changes phase starts there.
        head: i64,
        /// The last record sent (None: none yet).
        after: Option<Key>,
    },
    /// Sending changes after this feed position.
    Changes(i64),
}

/// The text cursors of a subscription carry before the position: the database, the
/// user's scope (as collection cursors) and the parameters.
pub fn epoch(tagged: &str, subscription: &Subscription) -> String {
    format!("{tagged}.{}", subscription.fingerprint)
}

/// Formats a subscription's cursor.
pub fn format_cursor(epoch: &str, position: &SubPosition) -> Cursor {
    Cursor(match position {
        SubPosition::Changes(seq) => format!("{epoch}:c:{seq}"),
        SubPosition::Initial { head, after: None } => format!("{epoch}:i:{head}:"),
        SubPosition::Initial { head, after: Some(key) } => {
            let json = Value::from(vec![key.value.clone().unwrap_or(Value::Null), Value::from(key.id.clone())]);
            format!("{epoch}:i:{head}:{}", hex::encode(json.to_string()))
        }
    })
}

/// Parses a subscription's cursor: None for a null cursor, else its position and
/// whether it was made for this database, scope and parameters (`epoch`).
///
/// # Errors
/// 400 `invalid_request` for a cursor this server never makes.
pub fn parse_cursor(cursor: Option<&Cursor>, epoch: &str) -> Result<Option<(SubPosition, bool)>, ServerError> {
    let Some(Cursor(text)) = cursor else { return Ok(None) };
    let bad = || ServerError::bad_request(ErrorCode::InvalidRequest, format!("malformed subscription cursor {text:?}"));
    let parts: Vec<&str> = text.split(':').collect();
    let number = |s: &str| s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(bad);
    let position = match parts.as_slice() {
        [_, "c", seq] => SubPosition::Changes(number(seq)?),
        [_, "i", head, ""] => SubPosition::Initial { head: number(head)?, after: None },
        [_, "i", head, key] => {
            let bytes = hex::decode(key).map_err(|_| bad())?;
            let json: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
            let (value, id) = match json.as_array().map(Vec::as_slice) {
                Some([value, Value::String(id)]) => (value.clone(), id.clone()),
                _ => return Err(bad()),
            };
            let value = match value {
                Value::Null => None,
                Value::String(_) | Value::Number(_) => Some(value),
                _ => return Err(bad()),
            };
            SubPosition::Initial { head: number(head)?, after: Some(Key { value, id }) }
        }
        _ => return Err(bad()),
    };
    Ok(Some((position, parts[0] == epoch)))
}

/// Where a pull of the subscription starts, given its parsed cursor and the position
/// through which its collection's tombstones were purged: (position, reset). A null
/// cursor starts the download at `head`; a cursor of other parameters, scope or
/// database, or one whose changes phase is older than the purge, starts over with
/// `reset` (a download in its first phase sends live records only, so a purge does not
/// touch it; its changes phase starts at the head it began at, which the purge may
/// have passed: then it starts over too).
pub fn start(parsed: Option<(SubPosition, bool)>, purged: i64, head: i64) -> (SubPosition, bool) {
    let over = SubPosition::Initial { head, after: None };
    match parsed {
        None => (over, false),
        Some((_, false)) => (over, true),
        Some((SubPosition::Changes(seq), true)) if seq < purged => (over, true),
        Some((SubPosition::Initial { head: began, .. }, true)) if began < purged => (over, true),
        Some((position, true)) => (position, false),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn fields(names: &[&str]) -> Vec<FieldPath> {
        names.iter().map(|n| FieldPath::new(n).unwrap()).collect()
    }

    fn query(equals: &[(&str, Value)], range: Option<RangeBounds>) -> SubscriptionQuery {
        SubscriptionQuery {
            collection: CollectionName::new("jobs").unwrap(),
            equals: equals.iter().map(|(f, v)| ((*f).to_owned(), v.clone())).collect::<BTreeMap<_, _>>(),
            range,
        }
    }

    fn window(field: &str, gte: Value, lt: Value) -> Option<RangeBounds> {
        Some(RangeBounds { field: field.into(), gte: Some(gte), lt: Some(lt), ..RangeBounds::default() })
    }

    #[test]
    fn an_index_answers_when_its_fields_are_the_equalities_then_the_range() {
        let declared = [fields(&["region"]), fields(&["assigned_to", "status", "due"]), fields(&["assigned_to"])];
        let code = |q: &SubscriptionQuery| Subscription::check(q, &declared).map(|s| s.index.map(|i| i.fields));
        type Chosen = Result<Option<Vec<FieldPath>>, ErrorCode>;
        let table: Vec<(SubscriptionQuery, Chosen)> = vec![
            (query(&[], None), Ok(None)),
            (query(&[("region", json!("north"))], None), Ok(Some(declared[0].clone()))),
            (query(&[("assigned_to", json!("ana"))], None), Ok(Some(declared[2].clone()))),
            // The equalities in any order, then the range.
            (
                query(
                    &[("status", json!("open")), ("assigned_to", json!("ana"))],
                    window("due", json!("a"), json!("b")),
                ),
                Ok(Some(declared[1].clone())),
            ),
            // A range that is not the next field, or a gap before it: no index.
            (
                query(&[("assigned_to", json!("ana"))], window("due", json!("a"), json!("b"))),
                Err(ErrorCode::UnindexedSubscription),
            ),
            (query(&[("status", json!("open"))], None), Err(ErrorCode::UnindexedSubscription)),
            // An index with more fields than the subscription names does not answer it.
            (
                query(&[("assigned_to", json!("ana")), ("status", json!("open"))], None),
                Err(ErrorCode::UnindexedSubscription),
            ),
            (query(&[], window("due", json!(1), json!(2))), Err(ErrorCode::UnindexedSubscription)),
        ];
        for (q, want) in table {
            assert_eq!(code(&q).map_err(|e| e.code), want, "{q:?}");
        }
    }

    #[test]
    fn bad_shapes_are_invalid_subscriptions() {
        let declared = [fields(&["a", "b"])];
        let bad = [
            query(&[("a..b", json!("x"))], None),
            query(&[("a", json!(true))], None),
            query(&[("a", json!(null))], None),
            query(&[("a", json!({"x": 1}))], None),
            query(&[("a", json!("x"))], Some(RangeBounds { field: "b".into(), ..RangeBounds::default() })),
            query(
                &[("a", json!("x"))],
                Some(RangeBounds {
                    field: "b".into(),
                    gt: Some(json!(1)),
                    gte: Some(json!(2)),
                    ..RangeBounds::default()
                }),
            ),
            query(&[("a", json!("x"))], window("a", json!(1), json!(2))),
            query(&[("a", json!("x"))], window("b", json!([1]), json!(2))),
        ];
        for q in bad {
            let err = Subscription::check(&q, &declared).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidSubscription, "{q:?}: {}", err.message);
        }
        let many: Vec<(String, Value)> = (0..=MAX_EQUALS).map(|i| (format!("f{i}"), json!(i))).collect();
        let q = SubscriptionQuery {
            collection: CollectionName::new("jobs").unwrap(),
            equals: many.into_iter().collect(),
            range: None,
        };
        assert_eq!(Subscription::check(&q, &declared).unwrap_err().code, ErrorCode::InvalidSubscription);
    }

    #[test]
    fn terms_and_fingerprints_follow_the_parameters() {
        let declared = [fields(&["a", "b"])];
        let one =
            Subscription::check(&query(&[("a", json!("x"))], window("b", json!(1), json!(5))), &declared).unwrap();
        let terms: Vec<(&str, &str, Value)> =
            one.terms().into_iter().map(|(f, o, v)| (f.as_str(), o, v.clone())).collect();
        assert_eq!(terms, [("a", "=", json!("x")), ("b", ">=", json!(1)), ("b", "<", json!(5))]);
        assert_eq!(one.key_field().map(FieldPath::as_str), Some("b"));
        let other =
            Subscription::check(&query(&[("a", json!("x"))], window("b", json!(1), json!(6))), &declared).unwrap();
        assert_ne!(one.fingerprint, other.fingerprint);
        let again =
            Subscription::check(&query(&[("a", json!("x"))], window("b", json!(1), json!(5))), &declared).unwrap();
        assert_eq!(one.fingerprint, again.fingerprint);
        assert!(one.index.unwrap().name().starts_with("sync_sub_jobs_"));
    }

    #[test]
    fn cursors_round_trip_and_strangers_are_refused() {
        let positions = [
            SubPosition::Changes(42),
            SubPosition::Initial { head: 7, after: None },
            SubPosition::Initial {
                head: 7,
                after: Some(Key { value: Some(json!("2026-12-01:08")), id: "r:1".into() }),
            },
            SubPosition::Initial { head: 7, after: Some(Key { value: Some(json!(3.5)), id: "r2".into() }) },
            SubPosition::Initial { head: 7, after: Some(Key { value: None, id: "r3".into() }) },
        ];
        for p in positions {
            let c = format_cursor("e.t.f", &p);
            assert_eq!(parse_cursor(Some(&c), "e.t.f").unwrap(), Some((p.clone(), true)), "{c:?}");
            assert_eq!(parse_cursor(Some(&c), "e.t.g").unwrap(), Some((p, false)));
        }
        assert_eq!(parse_cursor(None, "e").unwrap(), None);
        for bad in ["", "e", "e:c", "e:c:-1", "e:c:x", "e:i:1", "e:i:1:zz", "e:i:1:5b5d", "e:x:1", "e:c:1:2"] {
            assert!(parse_cursor(Some(&Cursor(bad.into())), "e").is_err(), "{bad}");
        }
    }

    #[test]
    fn undeclared_indexes_go_and_declared_ones_come() {
        let index =
            |c: &str, f: &[&str]| SubscriptionIndex { collection: CollectionName::new(c).unwrap(), fields: fields(f) };
        let wanted = [index("jobs", &["a", "b"]), index("sites", &["region"])];
        let kept = wanted[0].name();
        let existing = vec![kept.clone(), "sync_sub_jobs_000000000000".to_owned(), "sync_records_feed".to_owned()];
        let (stale, missing) = plan_indexes(&existing, &wanted);
        assert_eq!(stale, ["sync_sub_jobs_000000000000"]);
        assert_eq!(missing, [&wanted[1]]);
        assert_eq!(plan_indexes(&[kept, wanted[1].name()], &wanted), (vec![], vec![]));
    }

    #[test]
    fn where_a_pull_starts() {
        let initial = |head, after| SubPosition::Initial { head, after };
        let key = Some(Key { value: None, id: "r".into() });
        // (parsed, purged through, head) -> (start, reset)
        let table = [
            (None, 0, 9, (initial(9, None), false)),
            (Some((SubPosition::Changes(5), true)), 0, 9, (SubPosition::Changes(5), false)),
            (Some((SubPosition::Changes(5), true)), 6, 9, (initial(9, None), true)),
            (Some((SubPosition::Changes(5), false)), 0, 9, (initial(9, None), true)),
            (Some((initial(4, key.clone()), true)), 3, 9, (initial(4, key.clone()), false)),
            (Some((initial(4, key), true)), 5, 9, (initial(9, None), true)),
        ];
        for (parsed, purged, head, want) in table {
            assert_eq!(start(parsed.clone(), purged, head), want, "{parsed:?} {purged}");
        }
    }
}

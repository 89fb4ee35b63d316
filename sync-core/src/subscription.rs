//! Subscriptions: the part of a collection the app asks the server for. A collection
//! declared [`on_demand`](crate::CollectionSpec::on_demand) is not synced whole; the
//! engine pulls what the app's subscriptions cover, each with its own cursor and status,
//! and a record two subscriptions cover is stored once.
//!
//! A subscription is data ([`Subscribe`]); its id is a hash of its parameters, so the
//! same subscription made twice is one, shared. The app holds a
//! [`SubscriptionHandle`](crate::engine::SubscriptionHandle) while it shows the data;
//! after the last handle goes, the data stays for the subscription's time to live (so
//! switching screens does not download again), then the records no other subscription
//! holds are dropped, unless they are pending or the subscription is kept synced.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::Error;
use crate::ids::CollectionName;
use crate::protocol::{ErrorDetail, RangeBounds, SubscriptionQuery};
use crate::store::FieldPath;

/// How long a subscription's data stays after the app drops its last handle, unless
/// told otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The most equality fields one subscription may name (the server's limit too).
pub const MAX_EQUALS: usize = 8;

/// A bound of a subscription's range.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    /// Greater than.
    Gt(Value),
    /// Greater than or equal.
    Ge(Value),
    /// Less than.
    Lt(Value),
    /// Less than or equal.
    Le(Value),
}

/// A subscription as the app describes it: a collection, equality on fields, at most
/// one range, a time to live and whether to keep it synced. Built with checked methods;
/// the server answers it from an index its configuration declares for those fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub(crate) query: SubscriptionQuery,
    pub(crate) ttl: Duration,
    pub(crate) keep_synced: bool,
}

fn invalid(message: String) -> Error {
    Error::InvalidQuery { message }
}

/// A string or a number: what a subscription compares with.
fn comparable(field: &str, value: Value) -> Result<Value, Error> {
    match value {
        Value::String(_) | Value::Number(_) => Ok(value),
        other => Err(invalid(format!("{field}: a subscription compares with strings and numbers, not {other}"))),
    }
}

impl Subscribe {
    /// A subscription to the whole of `collection` (narrow it with [`Subscribe::eq`]
    /// and [`Subscribe::range`]).
    ///
    /// # Errors
    /// [`Error::InvalidCollectionName`].
    pub fn to(collection: &str) -> Result<Self, Error> {
        let collection = CollectionName::new(collection)?;
        Ok(Self {
            query: SubscriptionQuery { collection, equals: Default::default(), range: None },
            ttl: DEFAULT_TTL,
            keep_synced: false,
        })
    }

    /// Only records whose `field` equals `value` (a string or a number).
    ///
    /// # Errors
    /// [`Error::InvalidQuery`] for a bad field path, another kind of value, a field
    /// already given a value or a range, or more than [`MAX_EQUALS`] fields.
    pub fn eq(mut self, field: &str, value: impl Into<Value>) -> Result<Self, Error> {
        let path = FieldPath::new(field)?;
        let taken = self.query.equals.contains_key(path.as_str())
            || self.query.range.as_ref().is_some_and(|r| r.field == path.as_str());
        if taken {
            return Err(invalid(format!("{field} is already in the subscription")));
        }
        if self.query.equals.len() >= MAX_EQUALS {
            return Err(invalid(format!("at most {MAX_EQUALS} fields may be given values")));
        }
        let value = comparable(field, value.into())?;
        self.query.equals.insert(path.as_str().to_owned(), value);
        Ok(self)
    }

    /// Only records whose `field` lies between the bounds: at most one lower
    /// ([`Bound::Gt`], [`Bound::Ge`]) and one upper ([`Bound::Lt`], [`Bound::Le`]),
    /// strings or numbers (ISO 8601 dates compare as dates).
    ///
    /// # Errors
    /// [`Error::InvalidQuery`] for a bad path, no bound, two bounds on one side, a
    /// value that is not a string or a number, or a second range.
    pub fn range(mut self, field: &str, bounds: impl IntoIterator<Item = Bound>) -> Result<Self, Error> {
        let path = FieldPath::new(field)?;
        if self.query.range.is_some() || self.query.equals.contains_key(path.as_str()) {
            return Err(invalid(format!("a subscription has one range, on a field without a value ({field})")));
        }
        let mut range = RangeBounds { field: path.as_str().to_owned(), ..RangeBounds::default() };
        let mut any = false;
        for bound in bounds {
            any = true;
            let (slot, other, value) = match bound {
                Bound::Gt(v) => (&mut range.gt, range.gte.is_some(), v),
                Bound::Ge(v) => (&mut range.gte, range.gt.is_some(), v),
                Bound::Lt(v) => (&mut range.lt, range.lte.is_some(), v),
                Bound::Le(v) => (&mut range.lte, range.lt.is_some(), v),
            };
            if slot.is_some() || other {
                return Err(invalid(format!("{field}: one lower and one upper bound at most")));
            }
            *slot = Some(comparable(field, value)?);
        }
        if !any {
            return Err(invalid(format!("the range on {field} has no bound")));
        }
        self.query.range = Some(range);
        Ok(self)
    }

    /// How long the data stays after the last handle is dropped ([`DEFAULT_TTL`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Keep it synced, and its records, even with no handle (see
    /// [`SubscriptionHandle::keep_synced`](crate::engine::SubscriptionHandle::keep_synced)).
    pub fn keep_synced(mut self, keep: bool) -> Self {
        self.keep_synced = keep;
        self
    }

    /// The collection.
    pub fn collection(&self) -> &CollectionName {
        &self.query.collection
    }

    /// What is sent to the server.
    pub fn query(&self) -> &SubscriptionQuery {
        &self.query
    }

    /// The subscription's id: a hash of its parameters (not of its time to live or
    /// keep-synced), so the same subscription made twice is one.
    pub fn id(&self) -> SubscriptionId {
        SubscriptionId::of(&self.query)
    }
}

/// A subscription's id, a hash of its parameters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(String);

impl SubscriptionId {
    /// The id of a subscription with these parameters.
    pub fn of(query: &SubscriptionQuery) -> Self {
        use sha2::Digest;
        // The canonical text: serde_json writes maps in key order (BTreeMap).
        let text = serde_json::to_string(query).unwrap_or_default();
        let digest = sha2::Sha256::digest(text.as_bytes());
        Self(format!("s{}", hex::encode(&digest[..10])))
    }

    /// An id as stored.
    pub fn from_stored(id: String) -> Self {
        Self(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subscription as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionRow {
    /// Its id.
    pub id: SubscriptionId,
    /// What it asks.
    pub query: SubscriptionQuery,
    /// Its cursor (None: not downloaded yet).
    pub cursor: Option<crate::ids::Cursor>,
    /// How long it stays after its release.
    pub ttl: Duration,
    /// Kept synced with no handle.
    pub keep_synced: bool,
    /// The app holds a handle.
    pub active: bool,
    /// When the last handle went (None while active, or never released).
    pub released_at: Option<DateTime<Utc>>,
    /// When it last caught up with the server.
    pub synced_at: Option<DateTime<Utc>>,
}

impl SubscriptionRow {
    /// Whether the engine still syncs it at `now`: held, kept synced, or released less
    /// than its time to live ago.
    pub fn live_at(&self, now: DateTime<Utc>) -> bool {
        match (self.active, self.keep_synced, self.released_at) {
            (true, _, _) | (_, true, _) | (false, false, None) => true,
            (false, false, Some(at)) => chrono::Duration::from_std(self.ttl).is_ok_and(|ttl| now < at + ttl),
        }
    }
}

/// Where a subscription stands, for the UI.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscriptionState {
    /// Not downloaded yet (offline, or waiting for its first sync).
    Pending,
    /// Downloading ([`SubscriptionStatus::received`] of
    /// [`SubscriptionStatus::total`] so far).
    Syncing,
    /// Up to date as of `at`.
    Synced {
        /// When it last caught up.
        at: DateTime<Utc>,
    },
    /// The server refused it, or its last sync failed; `error` says why.
    Error {
        /// The server's code, when it refused the subscription itself.
        code: Option<crate::protocol::ErrorCode>,
        /// What went wrong.
        message: String,
    },
}

/// A subscription's status.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionStatus {
    /// Its id.
    pub id: SubscriptionId,
    /// Where it stands.
    pub state: SubscriptionState,
    /// Records received in its current (or last) download, for "1,240 of 3,000".
    pub received: u64,
    /// How many records the server counted for that download when it began (an
    /// estimate: others write meanwhile); None before the server said.
    pub total: Option<u64>,
}

impl SubscriptionStatus {
    /// A status with no download counted.
    pub(crate) fn new(id: SubscriptionId, state: SubscriptionState) -> Self {
        Self { id, state, received: 0, total: None }
    }

    /// The state for a refusal by the server.
    pub(crate) fn refused(error: &ErrorDetail) -> SubscriptionState {
        SubscriptionState::Error { code: Some(error.code.clone()), message: error.message.clone() }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn a_subscription_is_built_checked_and_named_by_its_parameters() {
        let a = Subscribe::to("jobs")
            .unwrap()
            .eq("assigned_to", "ana")
            .unwrap()
            .range("due", [Bound::Ge(json!("2026-12-01")), Bound::Lt(json!("2026-12-15"))])
            .unwrap();
        let wire = serde_json::to_value(a.query()).unwrap();
        assert_eq!(
            wire,
            json!({"collection": "jobs", "where": {"assigned_to": "ana"},
                   "range": {"field": "due", "gte": "2026-12-01", "lt": "2026-12-15"}})
        );
        // The same parameters, built in another order, with another ttl: the same id.
        let b = Subscribe::to("jobs")
            .unwrap()
            .range("due", [Bound::Lt(json!("2026-12-15")), Bound::Ge(json!("2026-12-01"))])
            .unwrap()
            .eq("assigned_to", "ana")
            .unwrap()
            .ttl(Duration::from_secs(5));
        assert_eq!(a.id(), b.id());
        let c = Subscribe::to("jobs").unwrap().eq("assigned_to", "bob").unwrap();
        assert_ne!(a.id(), c.id());
    }

    #[test]
    fn bad_subscriptions_are_typed_errors() {
        let base = || Subscribe::to("jobs").unwrap();
        assert!(Subscribe::to("Jobs!").is_err());
        let bad: Vec<Result<Subscribe, Error>> = vec![
            base().eq("a..b", "x"),
            base().eq("a", true),
            base().eq("a", json!(null)),
            base().eq("a", "x").and_then(|s| s.eq("a", "y")),
            base().range("due", []),
            base().range("due", [Bound::Gt(json!(1)), Bound::Ge(json!(2))]),
            base().range("due", [Bound::Lt(json!([1]))]),
            base().eq("due", "x").and_then(|s| s.range("due", [Bound::Lt(json!(1))])),
            base().range("due", [Bound::Lt(json!(1))]).and_then(|s| s.range("at", [Bound::Lt(json!(1))])),
            (0..=MAX_EQUALS).try_fold(base(), |s, i| s.eq(&format!("f{i}"), i)),
        ];
        for b in bad {
            assert!(matches!(b, Err(Error::InvalidQuery { .. })), "{b:?}");
        }
    }

    #[test]
    fn a_released_subscription_lives_until_its_ttl_unless_kept() {
        let at = DateTime::<Utc>::from_timestamp(1_000, 0).unwrap();
        let row = |active, keep_synced, released_at| SubscriptionRow {
            id: SubscriptionId::from_stored("s1".into()),
            query: Subscribe::to("jobs").unwrap().query,
            cursor: None,
            ttl: Duration::from_secs(60),
            keep_synced,
            active,
            released_at,
            synced_at: None,
        };
        let later = |s| at + chrono::Duration::seconds(s);
        // (active, keep_synced, released_at, now) -> live
        let table = [
            (true, false, None, later(1_000), true),
            (false, false, Some(at), later(59), true),
            (false, false, Some(at), later(60), false),
            (false, true, Some(at), later(1_000), true),
            (false, false, None, later(1_000), true),
        ];
        for (active, keep, released, now, live) in table {
            assert_eq!(row(active, keep, released).live_at(now), live, "{active} {keep} {released:?} {now}");
        }
    }
}

//! Newtypes for the strings and numbers that cross the wire: parsed once at the edge.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;

/// The longest record id accepted, in bytes.
pub const MAX_RECORD_ID_LEN: usize = 256;

/// A validated collection name: `[a-z][a-z0-9_]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CollectionName(String);

impl CollectionName {
    /// Parses a collection name.
    ///
    /// # Errors
    /// [`Error::InvalidCollectionName`] when `name` does not match `[a-z][a-z0-9_]{0,62}`.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        match collection_name_problem(&name) {
            None => Ok(Self(name)),
            Some(reason) => Err(Error::InvalidCollectionName { name, reason }),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn collection_name_problem(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Some("is empty"),
        Some(c) if !c.is_ascii_lowercase() => return Some("must start with a lowercase ASCII letter"),
        Some(_) => {}
    }
    if name.len() > 63 {
        return Some("is longer than 63 characters");
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Some("may hold only lowercase ASCII letters, digits and '_'");
    }
    None
}

impl<'de> Deserialize<'de> for CollectionName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CollectionName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A record id: a non-empty string of at most [`MAX_RECORD_ID_LEN`] bytes with no control
/// characters. Devices generate UUIDv7 ids by default ([`RecordId::generate`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RecordId(String);

impl RecordId {
    /// Parses a record id.
    ///
    /// # Errors
    /// [`Error::InvalidRecordId`] when the id is empty, too long or holds control characters.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        match bounded_text_problem(&id) {
            None => Ok(Self(id)),
            Some(reason) => Err(Error::InvalidRecordId { id, reason }),
        }
    }

    /// A fresh, time-ordered UUIDv7 id, as devices create them offline.
    pub fn generate() -> Self {
        Self(Uuid::now_v7().to_string())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an id-like string (record id, account id) is refused: empty, longer than
/// [`MAX_RECORD_ID_LEN`] bytes, or holding control characters.
fn bounded_text_problem(text: &str) -> Option<&'static str> {
    if text.is_empty() {
        Some("is empty")
    } else if text.len() > MAX_RECORD_ID_LEN {
        Some("is longer than 256 bytes")
    } else if text.chars().any(char::is_control) {
        Some("holds control characters")
    } else {
        None
    }
}

/// The person a store, its queue and a token belong to, in the app's own terms (a user
/// id or e-mail address from the sign-in): a non-empty string of at most
/// [`MAX_RECORD_ID_LEN`] bytes with no control characters. A store bound to one account
/// never sends its queue under another account's token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    /// Parses an account id.
    ///
    /// # Errors
    /// [`Error::InvalidAccountId`] when the id is empty, too long or holds control characters.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        match bounded_text_problem(&id) {
            None => Ok(Self(id)),
            Some(reason) => Err(Error::InvalidAccountId { id, reason }),
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The idempotency key of one outbox entry (a UUIDv7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MutationId(pub Uuid);

impl MutationId {
    /// A fresh UUIDv7 mutation id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses a mutation id from its hyphenated UUID form.
    ///
    /// # Errors
    /// [`Error::InvalidMutationId`] when `s` is not a UUID.
    pub fn parse(s: &str) -> Result<Self, Error> {
        Uuid::parse_str(s).map(Self).map_err(|_| Error::InvalidMutationId { id: s.to_owned() })
    }
}

impl fmt::Display for MutationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A server-assigned record version: 1 on create, +1 per applied change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub u64);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The id this device sends as `client_id`; generated once and kept by the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(pub String);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An opaque per-collection checkpoint returned by the server. Only the server makes
/// cursors; the client stores and sends them back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn check_collection(name: &str, valid: bool) {
        assert_eq!(CollectionName::new(name).is_ok(), valid, "{name:?}");
    }

    #[test]
    fn collection_names_follow_the_design_grammar() {
        check_collection("work_orders", true);
        check_collection("a", true);
        check_collection(&format!("a{}", "b".repeat(62)), true);
        check_collection(&format!("a{}", "b".repeat(63)), false);
        check_collection("", false);
        check_collection("1abc", false);
        check_collection("_abc", false);
        check_collection("Work", false);
        check_collection("work-orders", false);
        check_collection("wörk", false);
    }

    #[test]
    fn collection_names_are_checked_when_deserialized() {
        assert!(serde_json::from_str::<CollectionName>("\"ok_name\"").is_ok());
        assert!(serde_json::from_str::<CollectionName>("\"Bad Name\"").is_err());
    }

    #[test]
    fn record_ids_are_bounded() {
        assert!(RecordId::new("r1").is_ok());
        assert!(RecordId::new("").is_err());
        assert!(RecordId::new("x".repeat(257)).is_err());
        assert!(RecordId::new("a\nb").is_err());
        assert_ne!(RecordId::generate(), RecordId::generate());
    }

    #[test]
    fn account_ids_are_bounded_like_record_ids() {
        for (id, valid) in
            [("alice", true), ("alice@example.com", true), ("", false), ("a\nb", false), ("tab\there", false)]
        {
            assert_eq!(AccountId::new(id).is_ok(), valid, "{id:?}");
        }
        assert!(AccountId::new("x".repeat(256)).is_ok());
        assert!(matches!(AccountId::new("x".repeat(257)), Err(Error::InvalidAccountId { .. })));
        assert!(serde_json::from_str::<AccountId>("\"\"").is_err());
    }
}

//! Sync rules: who may read and who may write each record, decided from the record's
//! fields and the user's name, groups and attributes.
//!
//! A collection's `read` and `write` are lists of grants; a user is granted a record when
//! any grant of the list holds (admins always are; an empty list grants no one else).
//! Each grant is one short sentence:
//!
//! | grant | holds when |
//! | --- | --- |
//! | `everyone` | always |
//! | `owner` | the user created the record (the server records who) |
//! | `<field> = user` | the field holds the user's name |
//! | `<field> = user.<attribute>` | the field equals the user's attribute |
//! | `<field> in user.groups` | the field holds the name of one of the user's groups |
//! | `<field> contains user` | the field is a list holding the user's name |
//! | `<field> contains user.groups` | the field is a list holding one of the user's groups |
//! | `user in <group>` | the user belongs to the group (whatever the record) |
//!
//! Fields are dotted paths into the record's data (`site.region`). A field that is
//! missing, or of another type than the grant compares (a number where a name is
//! expected), grants nothing: such a record is visible to admins only, never to someone
//! by accident. A list field is read up to [`MAX_LIST`] members; a longer list grants
//! nothing. The rules are parsed and checked when the server starts
//! ([`CollectionRules::parse`]); evaluation ([`Rule::grants`]) is a pure function.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The most members of a list field a grant reads; a longer list grants nothing (a
/// record with a huge member list must not make every check slow).
pub const MAX_LIST: usize = 1000;

/// A user as the rules see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// The user's name.
    pub name: String,
    /// Admins are granted everything.
    pub admin: bool,
    /// The groups the user belongs to.
    pub groups: BTreeSet<String>,
    /// Named attributes (`region = "north"`).
    pub attributes: BTreeMap<String, String>,
}

/// One grant of a rule (see the module docs for the sentences).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// `everyone`.
    Everyone,
    /// `owner`.
    Owner,
    /// `<field> = user`.
    FieldIsUser(Vec<String>),
    /// `<field> = user.<attribute>`.
    FieldIsAttribute(Vec<String>, String),
    /// `<field> in user.groups`.
    FieldInGroups(Vec<String>),
    /// `<field> contains user`.
    ListHasUser(Vec<String>),
    /// `<field> contains user.groups`.
    ListHasGroup(Vec<String>),
    /// `user in <group>`.
    UserInGroup(String),
}

/// A list of grants: any one of them grants the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// The grants, as written.
    pub grants: Vec<Grant>,
}

/// The read and write rules of one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionRules {
    /// Who receives the records.
    pub read: Rule,
    /// Who may create, change and delete them.
    pub write: Rule,
}

/// What is wrong with a rule, for the start-up error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule:?}: {reason}")]
pub struct RuleError {
    /// The grant as written.
    pub rule: String,
    /// Why it was refused.
    pub reason: String,
}

fn field(path: &str, rule: &str) -> Result<Vec<String>, RuleError> {
    let ok = !path.is_empty()
        && path.len() <= 256
        && path.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if ok {
        Ok(path.split('.').map(str::to_owned).collect())
    } else {
        Err(RuleError {
            rule: rule.to_owned(),
            reason: format!("{path:?} is not a field path (names of letters, digits and _ joined by dots)"),
        })
    }
}

impl Grant {
    /// Parses one grant. `attributes` are the user attributes the configuration declares.
    ///
    /// # Errors
    /// [`RuleError`] naming the grant: an unknown form, a bad field path, an attribute
    /// no user can have.
    pub fn parse(text: &str, attributes: &BTreeSet<String>) -> Result<Self, RuleError> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let error = |reason: &str| RuleError { rule: text.to_owned(), reason: reason.to_owned() };
        Ok(match words[..] {
            ["everyone"] => Grant::Everyone,
            ["owner"] => Grant::Owner,
            ["user", "in", group] => Grant::UserInGroup(group.to_owned()),
            [path, "=", "user"] => Grant::FieldIsUser(field(path, text)?),
            [path, "in", "user.groups"] => Grant::FieldInGroups(field(path, text)?),
            [path, "contains", "user"] => Grant::ListHasUser(field(path, text)?),
            [path, "contains", "user.groups"] => Grant::ListHasGroup(field(path, text)?),
            [path, "=", value] => match value.strip_prefix("user.") {
                Some(attribute) if attributes.contains(attribute) => {
                    Grant::FieldIsAttribute(field(path, text)?, attribute.to_owned())
                }
                Some(attribute) => {
                    return Err(error(&format!(
                        "user.{attribute} is not a declared user attribute (declare it in user_attributes)"
                    )));
                }
                None => return Err(error("the right side must be user or user.<attribute>")),
            },
            _ => {
                return Err(error(
                    "expected everyone, owner, user in <group>, <field> = user, <field> = user.<attribute>, \
                     <field> in user.groups, <field> contains user, or <field> contains user.groups",
                ));
            }
        })
    }

    /// Whether this grant gives `user` the record created by `owner` holding `data`.
    pub fn holds(&self, user: &Subject, owner: &str, data: Option<&Value>) -> bool {
        let at = |path: &[String]| path.iter().try_fold(data?, |node, key| node.get(key));
        let list = |path: &[String]| {
            at(path)
                .and_then(Value::as_array)
                .filter(|items| items.len() <= MAX_LIST)
                .map(|items| items.iter().filter_map(Value::as_str).map(str::to_owned).collect::<Vec<_>>())
        };
        match self {
            Grant::Everyone => true,
            Grant::Owner => owner == user.name,
            Grant::UserInGroup(group) => user.groups.contains(group),
            Grant::FieldIsUser(path) => at(path).and_then(Value::as_str) == Some(user.name.as_str()),
            Grant::FieldIsAttribute(path, attribute) => match user.attributes.get(attribute) {
                Some(value) => at(path).and_then(Value::as_str) == Some(value.as_str()),
                // A user without the attribute is granted nothing by it.
                None => false,
            },
            Grant::FieldInGroups(path) => at(path).and_then(Value::as_str).is_some_and(|g| user.groups.contains(g)),
            Grant::ListHasUser(path) => list(path).is_some_and(|items| items.contains(&user.name)),
            Grant::ListHasGroup(path) => list(path).is_some_and(|items| items.iter().any(|i| user.groups.contains(i))),
        }
    }
}

impl Rule {
    /// Parses a list of grants.
    ///
    /// # Errors
    /// The first grant's [`RuleError`].
    pub fn parse(texts: &[String], attributes: &BTreeSet<String>) -> Result<Self, RuleError> {
        let grants = texts.iter().map(|t| Grant::parse(t, attributes)).collect::<Result<_, _>>()?;
        Ok(Self { grants })
    }

    /// Whether `user` is granted the record created by `owner` holding `data` (None: a
    /// tombstone or a record not yet written; only data-free grants can hold then).
    pub fn grants(&self, user: &Subject, owner: &str, data: Option<&Value>) -> bool {
        user.admin || self.grants.iter().any(|g| g.holds(user, owner, data))
    }
}

impl CollectionRules {
    /// Today's `access = "owner"`: each user reads and writes what they created.
    pub fn owner() -> Self {
        Self { read: Rule { grants: vec![Grant::Owner] }, write: Rule { grants: vec![Grant::Owner] } }
    }

    /// Today's `access = "read_only"`: everyone reads, admins write.
    pub fn read_only() -> Self {
        Self { read: Rule { grants: vec![Grant::Everyone] }, write: Rule::default() }
    }

    /// Parses a collection's `read` and `write` lists.
    ///
    /// # Errors
    /// The first bad grant's [`RuleError`].
    pub fn parse(read: &[String], write: &[String], attributes: &BTreeSet<String>) -> Result<Self, RuleError> {
        Ok(Self { read: Rule::parse(read, attributes)?, write: Rule::parse(write, attributes)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str], attributes: &[(&str, &str)]) -> Subject {
        Subject {
            name: name.into(),
            admin: false,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            attributes: attributes.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    fn declared() -> BTreeSet<String> {
        ["region".to_owned()].into()
    }

    #[test]
    fn every_sentence_parses_to_its_grant() {
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        for (text, grant) in [
            ("everyone", Grant::Everyone),
            ("owner", Grant::Owner),
            ("user in dispatchers", Grant::UserInGroup("dispatchers".into())),
            ("assigned_to = user", Grant::FieldIsUser(path("assigned_to"))),
            ("site.region = user.region", Grant::FieldIsAttribute(path("site.region"), "region".into())),
            ("team in user.groups", Grant::FieldInGroups(path("team"))),
            ("members contains user", Grant::ListHasUser(path("members"))),
            ("  teams   contains user.groups ", Grant::ListHasGroup(path("teams"))),
        ] {
            assert_eq!(Grant::parse(text, &declared()), Ok(grant), "{text}");
        }
    }

    #[test]
    fn malformed_grants_are_refused_with_the_reason() {
        for (text, reason) in [
            ("", "expected everyone"),
            ("anyone", "expected everyone"),
            ("region = user.team", "not a declared user attribute"),
            ("region = north", "right side must be user"),
            ("a..b = user", "not a field path"),
            ("x'; DROP TABLE = user", "expected everyone"),
            ("$.a = user", "not a field path"),
            ("assigned_to == user", "expected everyone"),
        ] {
            let error = Grant::parse(text, &declared()).unwrap_err();
            assert!(error.reason.contains(reason), "{text:?}: {error}");
            assert_eq!(error.rule, text);
        }
    }

    #[test]
    fn who_is_granted_which_record() {
        let tom = user("tom", &["north-team"], &[("region", "north")]);
        let ann = user("ann", &["dispatchers"], &[]);
        let admin = Subject { name: "root".into(), admin: true, ..Subject::default() };
        let record = json!({
            "assigned_to": "tom", "team": "north-team", "site": {"region": "north"},
            "members": ["ann", "tom"], "teams": ["south-team", "north-team"], "count": 3,
            "huge": (0..=MAX_LIST).map(|i| format!("u{i}")).chain(["tom".to_owned()]).collect::<Vec<_>>(),
        });
        let cases: Vec<(&str, &Subject, bool)> = vec![
            ("everyone", &ann, true),
            ("owner", &tom, false),
            ("owner", &ann, true),
            ("user in dispatchers", &ann, true),
            ("user in dispatchers", &tom, false),
            ("assigned_to = user", &tom, true),
            ("assigned_to = user", &ann, false),
            ("site.region = user.region", &tom, true),
            // ann has no region: the grant gives her nothing.
            ("site.region = user.region", &ann, false),
            ("team in user.groups", &tom, true),
            ("team in user.groups", &ann, false),
            ("members contains user", &ann, true),
            ("teams contains user.groups", &tom, true),
            ("teams contains user.groups", &ann, false),
            // Wrong types and missing fields grant nothing.
            ("count = user", &tom, false),
            ("missing = user", &tom, false),
            ("assigned_to contains user", &tom, false),
            ("members = user", &ann, false),
            ("site = user", &tom, false),
            // A list longer than MAX_LIST grants nothing, even to a member.
            ("huge contains user", &tom, false),
            // Admins are granted everything, whatever the rule.
            ("assigned_to = user", &admin, true),
        ];
        for (text, who, expected) in cases {
            let rule = Rule::parse(&[text.to_owned()], &declared()).unwrap();
            assert_eq!(rule.grants(who, "ann", Some(&record)), expected, "{text} for {}", who.name);
        }
        // No grant: admins only. No data (a tombstone): only grants that need none.
        assert!(!Rule::default().grants(&tom, "tom", Some(&record)));
        assert!(Rule::default().grants(&admin, "tom", Some(&record)));
        let assigned = Rule::parse(&["assigned_to = user".into(), "owner".into()], &declared()).unwrap();
        assert!(!assigned.grants(&tom, "ann", None));
        assert!(assigned.grants(&ann, "ann", None));
    }

    #[test]
    fn todays_access_kinds_are_rules_too() {
        let tom = user("tom", &[], &[]);
        let data = json!({});
        assert!(CollectionRules::owner().read.grants(&tom, "tom", Some(&data)));
        assert!(!CollectionRules::owner().write.grants(&tom, "ann", Some(&data)));
        assert!(CollectionRules::read_only().read.grants(&tom, "ann", Some(&data)));
        assert!(!CollectionRules::read_only().write.grants(&tom, "tom", Some(&data)));
    }
}

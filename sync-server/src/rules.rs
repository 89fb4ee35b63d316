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

/// An authenticated user, as the rules see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// The user's name (records are owned by names).
    pub name: String,
    /// Admins read and write everything.
    pub admin: bool,
    /// The groups the user belongs to.
    pub groups: BTreeSet<String>,
    /// Named attributes (`region = "north"`).
    pub attributes: BTreeMap<String, String>,
}

impl User {
    /// A user with no groups and no attributes.
    pub fn new(name: impl Into<String>, admin: bool) -> Self {
        Self { name: name.into(), admin, ..Self::default() }
    }

    /// The audience keys this user reads under: a record is theirs when it carries one
    /// of them (see [`Rule::record_keys`]).
    pub fn keys(&self) -> BTreeSet<String> {
        let mut keys = BTreeSet::from([key::EVERYONE.to_owned(), key::user(&self.name)]);
        keys.extend(self.groups.iter().map(|g| key::group(g)));
        keys.extend(self.attributes.iter().map(|(a, v)| key::attribute(a, v)));
        keys
    }
}

/// Audience keys: the index form of the grants. A record carries the keys of everyone
/// its read rule grants it to, a user holds the keys of who they are, and the user is
/// granted the record exactly when the two sets meet (a property test holds
/// [`Rule::grants`] and the keys to that). Pulls read a user's rows by key through an
/// index, and change notifications are routed by the same keys.
pub mod key {
    /// Every user holds it; records of an `everyone` grant carry it.
    pub const EVERYONE: &str = "*";

    /// The key of the user of this name.
    pub fn user(name: &str) -> String {
        format!("u:{name}")
    }

    /// The key of the members of this group.
    pub fn group(group: &str) -> String {
        format!("g:{group}")
    }

    /// The key of the users whose `attribute` is `value` (attribute names hold no `=`).
    pub fn attribute(attribute: &str, value: &str) -> String {
        format!("a:{attribute}={value}")
    }
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
    pub fn holds(&self, user: &User, owner: &str, data: Option<&Value>) -> bool {
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

impl Grant {
    /// The audience keys this grant gives a record created by `owner` holding `data`
    /// (see [`key`]): the users it grants the record to, as keys.
    fn add_keys(&self, owner: &str, data: Option<&Value>, keys: &mut BTreeSet<String>) {
        let at = |path: &[String]| path.iter().try_fold(data?, |node, key| node.get(key));
        let names = |path: &[String]| -> Vec<String> {
            at(path)
                .and_then(Value::as_array)
                .filter(|items| items.len() <= MAX_LIST)
                .map(|items| items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        match self {
            Grant::Everyone => {
                keys.insert(key::EVERYONE.to_owned());
            }
            Grant::Owner => {
                keys.insert(key::user(owner));
            }
            Grant::UserInGroup(group) => {
                keys.insert(key::group(group));
            }
            Grant::FieldIsUser(path) => keys.extend(at(path).and_then(Value::as_str).map(key::user)),
            Grant::FieldIsAttribute(path, attribute) => {
                keys.extend(at(path).and_then(Value::as_str).map(|v| key::attribute(attribute, v)));
            }
            Grant::FieldInGroups(path) => keys.extend(at(path).and_then(Value::as_str).map(key::group)),
            Grant::ListHasUser(path) => keys.extend(names(path).iter().map(|n| key::user(n))),
            Grant::ListHasGroup(path) => keys.extend(names(path).iter().map(|g| key::group(g))),
        }
    }

    /// The keys of `user` that records can carry through this grant: a pull reads
    /// only those (one key, for `<field> = user`, reads straight down an index range).
    fn user_keys(&self, user: &User) -> Vec<String> {
        match self {
            Grant::Everyone => vec![key::EVERYONE.to_owned()],
            Grant::Owner | Grant::FieldIsUser(_) | Grant::ListHasUser(_) => vec![key::user(&user.name)],
            Grant::UserInGroup(group) => {
                if user.groups.contains(group) {
                    vec![key::group(group)]
                } else {
                    Vec::new()
                }
            }
            Grant::FieldInGroups(_) | Grant::ListHasGroup(_) => user.groups.iter().map(|g| key::group(g)).collect(),
            Grant::FieldIsAttribute(_, attribute) => {
                user.attributes.get(attribute).map(|v| key::attribute(attribute, v)).into_iter().collect()
            }
        }
    }

    /// Why `data` cannot be judged by this grant: its field holds another type than the
    /// grant compares (a name is a string, a list a JSON array of at most [`MAX_LIST`]
    /// strings). A missing or null field is no error (it grants nothing).
    fn type_error(&self, data: &Value) -> Option<String> {
        let (path, list) = match self {
            Grant::FieldIsUser(p) | Grant::FieldIsAttribute(p, _) | Grant::FieldInGroups(p) => (p, false),
            Grant::ListHasUser(p) | Grant::ListHasGroup(p) => (p, true),
            Grant::Everyone | Grant::Owner | Grant::UserInGroup(_) => return None,
        };
        let value = path.iter().try_fold(data, |node, key| node.get(key)).filter(|v| !v.is_null())?;
        let field = path.join(".");
        if !list {
            return (!value.is_string()).then(|| format!("{field} must be a string (a sync rule compares it)"));
        }
        match value.as_array() {
            Some(items) if items.len() > MAX_LIST => {
                Some(format!("{field} holds {} members; a sync rule reads at most {MAX_LIST}", items.len()))
            }
            Some(items) if items.iter().all(Value::is_string) => None,
            _ => Some(format!("{field} must be a list of strings (a sync rule reads it)")),
        }
    }
}

/// Which rows of a collection a user's pull reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// Every record (admins; rules with `everyone`).
    Everything,
    /// The records this user created (a rule of `owner` alone): the records' owner
    /// column, no audience keys needed.
    Owned(String),
    /// The records carrying one of these audience keys (none: no record).
    Keys(BTreeSet<String>),
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
    pub fn grants(&self, user: &User, owner: &str, data: Option<&Value>) -> bool {
        user.admin || self.grants.iter().any(|g| g.holds(user, owner, data))
    }

    /// The audience keys of the record created by `owner` holding `data` (None: a
    /// tombstone): a user is granted it when they hold one of them, or are an admin.
    pub fn record_keys(&self, owner: &str, data: Option<&Value>) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for grant in &self.grants {
            grant.add_keys(owner, data, &mut keys);
        }
        keys
    }

    /// Whether the records' audience keys must be stored for pulls to find them by key:
    /// every rule but `everyone` (no filter), `owner` alone (the owner column) and no
    /// grant at all (admins only, no filter).
    pub fn needs_keys(&self) -> bool {
        !self.grants.is_empty() && !self.grants.contains(&Grant::Everyone) && self.grants != [Grant::Owner]
    }

    /// Which rows `user`'s pull of a collection under this read rule reads.
    pub fn scope(&self, user: &User) -> ReadScope {
        if user.admin || self.grants.contains(&Grant::Everyone) {
            ReadScope::Everything
        } else if self.grants == [Grant::Owner] {
            ReadScope::Owned(user.name.clone())
        } else {
            ReadScope::Keys(self.grants.iter().flat_map(|g| g.user_keys(user)).collect())
        }
    }

    /// Why a record holding `data` cannot be judged by this rule (a rule field of the
    /// wrong type, or a list too long), or None.
    pub fn type_error(&self, data: &Value) -> Option<String> {
        self.grants.iter().find_map(|g| g.type_error(data))
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

    fn user(name: &str, groups: &[&str], attributes: &[(&str, &str)]) -> User {
        User {
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
        let admin = User { name: "root".into(), admin: true, ..User::default() };
        let record = json!({
            "assigned_to": "tom", "team": "north-team", "site": {"region": "north"},
            "members": ["ann", "tom"], "teams": ["south-team", "north-team"], "count": 3,
            "huge": (0..=MAX_LIST).map(|i| format!("u{i}")).chain(["tom".to_owned()]).collect::<Vec<_>>(),
        });
        let cases: Vec<(&str, &User, bool)> = vec![
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

    #[test]
    fn rule_fields_of_the_wrong_type_are_named() {
        let rule = Rule::parse(
            &["assigned_to = user".into(), "members contains user".into(), "site.region = user.region".into()],
            &declared(),
        )
        .unwrap();
        let long: Vec<String> = (0..=MAX_LIST).map(|i| format!("u{i}")).collect();
        for (data, error) in [
            (json!({"assigned_to": "tom", "members": ["a"], "site": {"region": "north"}}), None),
            (json!({}), None),
            (json!({"assigned_to": null, "members": null}), None),
            (json!({"assigned_to": 5}), Some("assigned_to must be a string")),
            (json!({"members": "tom"}), Some("members must be a list of strings")),
            (json!({"members": ["tom", 3]}), Some("members must be a list of strings")),
            (json!({"members": long}), Some("members holds 1001 members")),
            (json!({"site": {"region": ["north"]}}), Some("site.region must be a string")),
        ] {
            let got = rule.type_error(&data);
            match error {
                None => assert_eq!(got, None, "{data}"),
                Some(e) => assert!(got.as_deref().is_some_and(|g| g.contains(e)), "{data}: {got:?}"),
            }
        }
    }

    #[test]
    fn which_rows_a_pull_reads() {
        let tom = user("tom", &["north-team"], &[("region", "north")]);
        let admin = User::new("root", true);
        let parse = |texts: &[&str]| {
            Rule::parse(&texts.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>(), &declared()).unwrap()
        };
        assert_eq!(parse(&["everyone", "owner"]).scope(&tom), ReadScope::Everything);
        assert_eq!(parse(&["owner"]).scope(&tom), ReadScope::Owned("tom".into()));
        assert_eq!(parse(&[]).scope(&tom), ReadScope::Keys(BTreeSet::new()));
        let keys = |k: &[&str]| ReadScope::Keys(k.iter().map(|k| (*k).to_owned()).collect());
        assert_eq!(parse(&["owner", "assigned_to = user"]).scope(&tom), keys(&["u:tom"]));
        assert_eq!(
            parse(&["team in user.groups", "region = user.region"]).scope(&tom),
            keys(&["a:region=north", "g:north-team"])
        );
        assert_eq!(parse(&["user in dispatchers"]).scope(&tom), keys(&[]));
        assert_eq!(parse(&["assigned_to = user"]).scope(&admin), ReadScope::Everything);
        assert_eq!(
            tom.keys(),
            ["*", "a:region=north", "g:north-team", "u:tom"].into_iter().map(str::to_owned).collect()
        );
        assert!(!parse(&["everyone"]).needs_keys());
        assert!(!parse(&["owner"]).needs_keys());
        assert!(!parse(&[]).needs_keys());
        assert!(parse(&["owner", "user in dispatchers"]).needs_keys());
        assert!(parse(&["region = user.region"]).needs_keys());
    }

    mod keys_agree_with_grants {
        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 4] = ["ann", "bob", "tom", "eve"];
        const GROUPS: [&str; 3] = ["north-team", "south-team", "dispatchers"];
        const REGIONS: [&str; 3] = ["north", "south", "east"];

        fn grant() -> impl Strategy<Value = Grant> {
            let path = prop_oneof![Just(vec!["f".to_owned()]), Just(vec!["site".to_owned(), "f".to_owned()])];
            prop_oneof![
                Just(Grant::Everyone),
                Just(Grant::Owner),
                proptest::sample::select(GROUPS.to_vec()).prop_map(|g| Grant::UserInGroup(g.into())),
                path.clone().prop_map(Grant::FieldIsUser),
                path.clone().prop_map(|p| Grant::FieldIsAttribute(p, "region".into())),
                path.clone().prop_map(Grant::FieldInGroups),
                path.clone().prop_map(Grant::ListHasUser),
                path.prop_map(Grant::ListHasGroup),
            ]
        }

        /// A field value: a name, a group, a region, a list of those, or the wrong type.
        fn value() -> impl Strategy<Value = Value> {
            let word = proptest::sample::select([&NAMES[..], &GROUPS[..], &REGIONS[..]].concat());
            prop_oneof![
                5 => word.clone().prop_map(|w| json!(w)),
                3 => proptest::collection::vec(word, 0..4).prop_map(|w| json!(w)),
                1 => Just(json!(7)),
                1 => Just(json!([1, "ann"])),
                1 => Just(Value::Null),
            ]
        }

        fn data() -> impl Strategy<Value = Option<Value>> {
            proptest::option::weighted(0.9, (value(), value()).prop_map(|(f, g)| json!({"f": f, "site": {"f": g}})))
        }

        fn subject() -> impl Strategy<Value = User> {
            (
                proptest::sample::select(NAMES.to_vec()),
                proptest::sample::subsequence(GROUPS.to_vec(), 0..=3),
                proptest::option::of(proptest::sample::select(REGIONS.to_vec())),
            )
                .prop_map(|(name, groups, region)| User {
                    name: name.into(),
                    admin: false,
                    groups: groups.into_iter().map(str::to_owned).collect(),
                    attributes: region.map(|r| ("region".to_owned(), r.to_owned())).into_iter().collect(),
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]
            /// A user is granted a record exactly when their keys meet the record's: the
            /// indexed pull and the routed notification decide what the rule decides.
            #[test]
            fn for_every_rule_user_and_record(
                grants in proptest::collection::vec(grant(), 0..4),
                user in subject(),
                owner in proptest::sample::select(NAMES.to_vec()),
                data in data(),
            ) {
                let rule = Rule { grants };
                let by_keys = !rule.record_keys(owner, data.as_ref()).is_disjoint(&user.keys());
                prop_assert_eq!(rule.grants(&user, owner, data.as_ref()), by_keys);
                let scoped = match rule.scope(&user) {
                    ReadScope::Everything => true,
                    ReadScope::Owned(name) => owner == name,
                    ReadScope::Keys(keys) => !rule.record_keys(owner, data.as_ref()).is_disjoint(&keys),
                };
                prop_assert_eq!(scoped, by_keys, "the pull's scope reads what the rule grants");
            }
        }
    }
}

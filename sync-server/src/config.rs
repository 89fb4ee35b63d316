//! The server's configuration file (TOML), parsed and checked once at start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use sync_core::CollectionName;
use sync_core::store::FieldPath;

use crate::error::ServerError;
use crate::rules::{CollectionRules, User};

/// Who may do what in a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Each user reads and writes only their own records; admins all.
    Owner,
    /// Everyone reads; only admins write.
    ReadOnly,
}

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads and writes within their scope.
    User,
    /// Reads and writes every record of every collection.
    Admin,
}

/// One configured user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user's name (record owners are names).
    pub name: String,
    /// Hex SHA-256 of the user's bearer token.
    pub token_sha256: String,
    /// The role.
    #[serde(default = "default_role")]
    pub role: Role,
    /// The groups the user belongs to (for sync rules: `team in user.groups`).
    #[serde(default)]
    pub groups: BTreeSet<String>,
    /// Named attributes (for sync rules: `region = user.region`).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

impl UserConfig {
    /// The user as the rules see them.
    pub fn user(&self) -> User {
        User {
            name: self.name.clone(),
            admin: self.role == Role::Admin,
            groups: self.groups.clone(),
            attributes: self.attributes.clone(),
        }
    }
}

fn default_role() -> Role {
    Role::User
}

/// Who chooses the ids of created records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ids {
    /// The client: records are stored under the ids they were pushed with.
    #[default]
    Client,
    /// The server: an upsert of an id the server has never stored creates the record
    /// under a new id (a UUIDv7) and answers `applied` with it as `record_id`; the ledger
    /// replays that answer, so a retried create never makes a second record.
    Server,
}

/// One collection as written: today's `access` shorthand, or `read` and `write` rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollection {
    #[serde(default)]
    access: Option<Access>,
    #[serde(default)]
    read: Option<Vec<String>>,
    #[serde(default)]
    write: Option<Vec<String>>,
    #[serde(default)]
    ids: Ids,
    #[serde(default)]
    subscription_indexes: Vec<Vec<String>>,
}

/// One configured collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionConfig {
    /// Who may read and write its records (`access = "owner"` and `"read_only"` are
    /// shorthands for two rule pairs).
    pub rules: CollectionRules,
    /// Who chooses created records' ids (`ids = "server"`; the client by default).
    pub ids: Ids,
    /// The indexes subscriptions may use, each a list of fields
    /// (`subscription_indexes = [["assigned_to", "due"]]`): a subscription's equality
    /// fields then its range field must be exactly one of them. None by default.
    pub subscription_indexes: Vec<Vec<FieldPath>>,
}

impl CollectionConfig {
    /// A collection with `access` rules and client-chosen ids.
    pub fn new(access: Access) -> Self {
        let rules = match access {
            Access::Owner => CollectionRules::owner(),
            Access::ReadOnly => CollectionRules::read_only(),
        };
        Self { rules, ids: Ids::Client, subscription_indexes: Vec::new() }
    }

    /// Checks one collection as written; `attributes` are the user attributes known.
    fn parse(name: &str, raw: RawCollection, attributes: &BTreeSet<String>) -> Result<Self, ServerError> {
        let named = |reason: String| ServerError::config(format!("collection {name}: {reason}"));
        let rules = match (raw.access, raw.read, raw.write) {
            (Some(access), None, None) => Self::new(access).rules,
            (None, Some(read), Some(write)) => {
                CollectionRules::parse(&read, &write, attributes).map_err(|e| named(e.to_string()))?
            }
            (None, None, None) => {
                return Err(named("say who may read and write it: `access`, or `read` and `write`".into()));
            }
            (Some(_), _, _) => {
                return Err(named("`access` is a shorthand for `read` and `write`; give one or the other".into()));
            }
            (None, _, _) => {
                return Err(named("`read` and `write` come together (`write = []`: admins only)".into()));
            }
        };
        let mut subscription_indexes = Vec::with_capacity(raw.subscription_indexes.len());
        for fields in &raw.subscription_indexes {
            if fields.is_empty() {
                return Err(named("a subscription index names at least one field".into()));
            }
            let parsed = fields
                .iter()
                .map(|f| FieldPath::new(f).map_err(|_| named(format!("{f:?} is not a field path"))))
                .collect::<Result<Vec<_>, _>>()?;
            subscription_indexes.push(parsed);
        }
        Ok(Self { rules, ids: raw.ids, subscription_indexes })
    }
}

/// The file as written (README.md shows an example).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_database")]
    database: String,
    #[serde(default = "default_retention")]
    tombstone_retention: String,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    #[serde(default = "default_max_batch")]
    max_batch: usize,
    #[serde(default = "default_max_depth")]
    max_json_depth: usize,
    #[serde(default = "default_max_event_streams")]
    max_event_streams: usize,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default)]
    users: Vec<UserConfig>,
    #[serde(default)]
    collections: BTreeMap<String, RawCollection>,
    /// User attributes the rules may name beyond those some user has (for identity
    /// tokens that carry them).
    #[serde(default)]
    user_attributes: BTreeSet<String>,
    #[serde(default)]
    tls: Option<crate::tls::TlsFiles>,
    #[serde(default)]
    jwt: Option<crate::jwt::JwtConfig>,
    #[serde(default)]
    metrics: Option<MetricsConfig>,
}

/// The `[metrics]` table: where `/metrics` is served. Off without it; with it, on a
/// listener of its own (`listen`, for a private network or a sidecar), or on the main
/// listener to holders of a token (`token_sha256`), or both. Never open to everyone on
/// the public listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A separate address serving only `/metrics`, without a token.
    #[serde(default)]
    pub listen: Option<String>,
    /// The hex SHA-256 of the bearer token that may read `/metrics` on the main listener.
    #[serde(default)]
    pub token_sha256: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8787".into()
}
fn default_database() -> String {
    "sqlite://sync-server.db".into()
}
fn default_retention() -> String {
    "30d".into()
}
fn default_max_body() -> usize {
    4 * 1024 * 1024
}
fn default_max_batch() -> usize {
    1000
}
fn default_max_depth() -> usize {
    32
}
fn default_max_connections() -> usize {
    50_000
}
fn default_max_event_streams() -> usize {
    crate::events::ChangeHub::DEFAULT_MAX_STREAMS
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// `sqlite://path` or `postgres://...`.
    pub database: String,
    /// How long tombstones are kept before they may be purged.
    pub tombstone_retention: Duration,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Most mutations per push, and the cap on pull's `limit`.
    pub max_batch: usize,
    /// Deepest JSON nesting accepted in a request body.
    pub max_json_depth: usize,
    /// Most event streams open at once; beyond, `GET /v1/events` is answered 503 with
    /// `Retry-After`.
    pub max_event_streams: usize,
    /// Most connections open at once (lowered at start to what the open-files limit
    /// allows); beyond, a new connection is answered 503 with `Retry-After` and closed.
    pub max_connections: usize,
    /// Users by name.
    pub users: Vec<UserConfig>,
    /// Collections by name.
    pub collections: BTreeMap<CollectionName, CollectionConfig>,
    /// Serve HTTPS with these files (None: plain HTTP, for local development).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Accept JWT identity tokens (besides the static tokens of `users`), checked with
    /// these keys (read and validated when the configuration is).
    pub jwt: Option<std::sync::Arc<crate::jwt::JwtVerifier>>,
    /// Where `/metrics` is served (None: nowhere).
    pub metrics: Option<MetricsConfig>,
}

impl ServerConfig {
    /// Parses and checks a configuration from TOML text.
    ///
    /// # Errors
    /// [`ServerError::Config`] naming what is wrong.
    pub fn from_toml(text: &str) -> Result<Self, ServerError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ServerError::config(e.to_string()))?;
        let tombstone_retention = humantime::parse_duration(&raw.tombstone_retention)
            .map_err(|e| ServerError::config(format!("tombstone_retention {:?}: {e}", raw.tombstone_retention)))?;
        if [raw.max_batch, raw.max_body_bytes, raw.max_json_depth, raw.max_connections, raw.max_event_streams]
            .contains(&0)
        {
            return Err(ServerError::config(
                "max_batch, max_body_bytes, max_json_depth, max_connections and max_event_streams must be at least 1",
            ));
        }
        let mut names = BTreeSet::new();
        let mut attributes = raw.user_attributes.clone();
        for u in &raw.users {
            if !names.insert(u.name.as_str()) {
                return Err(ServerError::config(format!("user {:?} is listed twice", u.name)));
            }
            if !is_sha256_hex(&u.token_sha256) {
                return Err(ServerError::config(format!("user {:?}: token_sha256 must be 64 hex digits", u.name)));
            }
            attributes.extend(u.attributes.keys().cloned());
        }
        if let Some(bad) =
            attributes.iter().find(|a| a.is_empty() || !a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(ServerError::config(format!("user attribute {bad:?}: names are letters, digits and _")));
        }
        let mut collections = BTreeMap::new();
        for (name, c) in raw.collections {
            let parsed = CollectionConfig::parse(&name, c, &attributes)?;
            let name = CollectionName::new(name).map_err(|e| ServerError::config(e.to_string()))?;
            collections.insert(name, parsed);
        }
        if let Some(m) = &raw.metrics {
            if m.listen.is_none() && m.token_sha256.is_none() {
                return Err(ServerError::config(
                    "[metrics] needs `listen` (a listener of its own) or `token_sha256` (on the main listener)",
                ));
            }
            if m.token_sha256.as_deref().is_some_and(|t| !is_sha256_hex(t)) {
                return Err(ServerError::config("[metrics] token_sha256 must be 64 hex digits"));
            }
        }
        Ok(Self {
            listen: raw.listen,
            database: raw.database,
            tombstone_retention,
            max_body_bytes: raw.max_body_bytes,
            max_batch: raw.max_batch,
            max_json_depth: raw.max_json_depth,
            max_event_streams: raw.max_event_streams,
            max_connections: raw.max_connections,
            users: raw.users,
            collections,
            tls: raw.tls,
            metrics: raw.metrics,
            jwt: raw.jwt.as_ref().map(crate::jwt::JwtVerifier::from_config).transpose()?.map(std::sync::Arc::new),
        })
    }

    /// Reads and checks a configuration file.
    ///
    /// # Errors
    /// [`ServerError::Config`] when the file cannot be read or is invalid.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// The hex SHA-256 of a token, as `token_sha256` holds it.
pub fn token_sha256(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_design_example_parses() {
        let text = format!(
            r#"
listen = "127.0.0.1:8787"
database = "sqlite://sync-server.db"
tombstone_retention = "30d"
max_body_bytes = 4194304
max_batch = 1000

[[users]]
name = "alice"
token_sha256 = "{}"
role = "user"

[collections.work_orders]
access = "owner"

[collections.products]
access = "read_only"
"#,
            token_sha256("alice-token")
        );
        let c = ServerConfig::from_toml(&text).unwrap();
        assert_eq!(c.tombstone_retention, Duration::from_secs(30 * 86400));
        assert_eq!(c.collections.len(), 2);
        assert_eq!(c.users[0].role, Role::User);
    }

    /// The first configuration README.md shows parses as it is written (the production
    /// one names files this machine does not have).
    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").unwrap() + "```toml\n".len();
        let text = &readme[start..start + readme[start..].find("```").unwrap()];
        let text = text.replace("<hex sha256 of alice's bearer token>", &token_sha256("t"));
        let c = ServerConfig::from_toml(&text).unwrap();
        assert_eq!(c.collections.len(), 4);
        assert!(c.collections.values().any(|c| c.rules.read.needs_keys()));
    }

    #[test]
    fn rules_are_checked_at_start_and_named_when_wrong() {
        let user =
            |extra: &str| format!("[[users]]\nname = \"tom\"\ntoken_sha256 = \"{}\"\n{extra}\n", token_sha256("t"));
        let good = format!(
            "{}[collections.jobs]\nread = [\"region = user.region\", \"user in dispatchers\"]\nwrite = []\n",
            user("attributes = { region = \"north\" }")
        );
        let c = ServerConfig::from_toml(&good).unwrap();
        assert_eq!(c.users[0].user().attributes["region"], "north");
        assert!(c.collections.values().next().unwrap().rules.write.grants.is_empty());
        // Declared without any user having it: tokens may carry it.
        let declared = "user_attributes = [\"region\"]\n[collections.a]\nread = [\"r = user.region\"]\nwrite = []\n";
        assert!(ServerConfig::from_toml(declared).is_ok());
        for (bad, named) in [
            ("[collections.a]\nread = [\"r = user.region\"]\nwrite = []", "user.region is not a declared"),
            ("[collections.a]\nread = [\"assigned_to == user\"]\nwrite = []", "collection a: rule"),
            ("[collections.a]\nread = [\"owner\"]", "`read` and `write` come together"),
            ("[collections.a]\naccess = \"owner\"\nread = [\"owner\"]\nwrite = []", "give one or the other"),
            ("[collections.a]\nids = \"server\"", "say who may read and write it"),
            ("[collections.a]\nread = [\"x.y..z = user\"]\nwrite = []", "not a field path"),
        ] {
            let text = format!("{}{bad}\n", user(""));
            match ServerConfig::from_toml(&text) {
                Err(ServerError::Config { message }) => assert!(message.contains(named), "{bad}: {message}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_files_are_config_errors() {
        for bad in [
            "max_batch = 0",
            "tombstone_retention = \"soon\"",
            "[collections.Bad-Name]\naccess = \"owner\"",
            "[collections.a]\naccess = \"public\"",
            "[[users]]\nname = \"a\"\ntoken_sha256 = \"xyz\"",
            "unknown_key = 1",
        ] {
            assert!(matches!(ServerConfig::from_toml(bad), Err(ServerError::Config { .. })), "{bad}");
        }
    }
}

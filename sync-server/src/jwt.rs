//! Identity tokens: JWT bearer tokens verified with a shared secret (HS256) or the public
//! keys of a JWKS file (RS256, ES256), with `exp` and `nbf` checked, issuer and audience
//! when configured, and the user's name and role read from configured claims.
//!
//! The algorithm a token may use is decided by the key that verifies it, never by the
//! token alone: an HS256 token is checked only against the shared secret, an RS256 or
//! ES256 token only against a JWKS key of that algorithm. So `alg: none` and the key
//! confusion attack (an HS256 token "signed" with an RSA public key) fail like any
//! forged token.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ServerError;
use crate::logic::User;

/// The longest token accepted, in bytes: anything longer is refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The `[jwt]` table of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The HS256 shared secret (at least 32 bytes).
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// A JWKS file with the public keys of RS256 and ES256 (P-256) tokens.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The `iss` tokens must carry.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The `aud` tokens must carry.
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (humantime, default "30s").
    #[serde(default = "default_leeway")]
    pub leeway: String,
    /// The claim holding the user's name (default `sub`).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// The claim holding the user's role (default `role`); the value `admin` makes an admin.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
}

fn default_leeway() -> String {
    "30s".into()
}
fn default_user_claim() -> String {
    "sub".into()
}
fn default_role_claim() -> String {
    "role".into()
}

/// Why a token was refused. The client hears only `token_expired` or `unauthorized`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Valid but expired: the client should refresh it.
    Expired,
    /// Anything else (for the server's log only).
    Invalid(String),
}

/// Verifies tokens against the configured keys.
pub struct JwtVerifier {
    secret: Option<DecodingKey>,
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    user_claim: String,
    role_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.secret.is_some())
            .field("public_keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl JwtVerifier {
    /// Reads and checks the configuration: at least one key, a long enough secret, a
    /// JWKS file whose every key is RS256 or ES256.
    ///
    /// # Errors
    /// [`ServerError::Config`] naming what is wrong.
    pub fn from_config(config: &JwtConfig) -> Result<Self, ServerError> {
        let secret = match &config.hs256_secret {
            Some(s) if s.len() < 32 => {
                return Err(ServerError::config("jwt.hs256_secret must be at least 32 bytes"));
            }
            Some(s) => Some(DecodingKey::from_secret(s.as_bytes())),
            None => None,
        };
        let mut keys = Vec::new();
        if let Some(path) = &config.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ServerError::config(format!("jwt.jwks_file {}: {e}", path.display())))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| ServerError::config(format!("jwt.jwks_file {}: {e}", path.display())))?;
            for jwk in &set.keys {
                let algorithm = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
                    _ => {
                        return Err(ServerError::config(format!(
                            "jwt.jwks_file {}: only RSA (RS256) and P-256 (ES256) keys are accepted",
                            path.display()
                        )));
                    }
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| ServerError::config(format!("jwt.jwks_file {}: {e}", path.display())))?;
                keys.push((jwk.common.key_id.clone(), algorithm, key));
            }
        }
        if secret.is_none() && keys.is_empty() {
            return Err(ServerError::config("[jwt] needs hs256_secret or jwks_file"));
        }
        let leeway = humantime::parse_duration(&config.leeway)
            .map_err(|e| ServerError::config(format!("jwt.leeway {:?}: {e}", config.leeway)))?;
        Ok(Self {
            secret,
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: leeway.min(Duration::from_secs(3600)).as_secs(),
            user_claim: config.user_claim.clone(),
            role_claim: config.role_claim.clone(),
        })
    }

    /// The user a token names, when it verifies.
    ///
    /// # Errors
    /// [`Refusal::Expired`] for an expired token, [`Refusal::Invalid`] for any other.
    pub fn verify(&self, token: &str) -> Result<User, Refusal> {
        let invalid = |why: &str| Refusal::Invalid(why.to_owned());
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("token too long"));
        }
        let header = decode_header(token).map_err(|e| Refusal::Invalid(format!("header: {e}")))?;
        // The key decides the algorithm: HS256 only with the secret, RS256/ES256 only
        // with a public key of that algorithm (and the token's kid, when it has one).
        let candidates: Vec<&DecodingKey> = match header.alg {
            Algorithm::HS256 => self.secret.iter().collect(),
            Algorithm::RS256 | Algorithm::ES256 => self
                .keys
                .iter()
                .filter(|(kid, alg, _)| *alg == header.alg && (header.kid.is_none() || header.kid == *kid))
                .map(|(_, _, key)| key)
                .collect(),
            _ => Vec::new(),
        };
        if candidates.is_empty() {
            return Err(invalid("no key for this token's algorithm"));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let mut last = invalid("no key verified it");
        for key in candidates {
            match decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => return self.user(&data.claims),
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                    return Err(Refusal::Expired);
                }
                Err(e) => last = Refusal::Invalid(e.to_string()),
            }
        }
        Err(last)
    }

    fn user(&self, claims: &Map<String, Value>) -> Result<User, Refusal> {
        let name = claims
            .get(&self.user_claim)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty() && n.len() <= 256 && !n.chars().any(char::is_control))
            .ok_or_else(|| Refusal::Invalid(format!("claim {:?} is not a user name", self.user_claim)))?;
        let admin = claims.get(&self.role_claim).and_then(Value::as_str) == Some("admin");
        // Sync rules' groups and attributes: `groups` (a list of names) and `attributes`
        // (an object of strings); anything else in them is ignored, never an error, and
        // a token cannot name more groups than a rule reads of a list.
        let groups = claims
            .get("groups")
            .and_then(Value::as_array)
            .map(|g| g.iter().filter_map(Value::as_str).take(crate::rules::MAX_LIST).map(str::to_owned).collect())
            .unwrap_or_default();
        let attributes = claims
            .get("attributes")
            .and_then(Value::as_object)
            .map(|a| a.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
            .unwrap_or_default();
        Ok(User { name: name.to_owned(), admin, groups, attributes })
    }
}

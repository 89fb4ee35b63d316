//! The transport boundary: the send (`push`) and receive (`pull`) actions.

use std::fmt;

use async_trait::async_trait;

use crate::error::Error;
use crate::ids::AccountId;
use crate::protocol::{PullRequest, PullResponse, PushRequest, PushResponse};

/// A bearer token for the server, and the account it belongs to. The engine sends a
/// store's queue only under credentials of the store's own account. Its `Debug` form
/// never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    account: AccountId,
    token: String,
}

impl Credentials {
    /// Credentials of `account`.
    ///
    /// # Errors
    /// [`Error::InvalidCredentials`] when the token is empty or holds anything but
    /// printable ASCII without spaces (what a bearer token may be on the wire).
    pub fn new(account: AccountId, token: impl Into<String>) -> Result<Self, Error> {
        let token = token.into();
        let reason = if token.is_empty() {
            Some("the token is empty")
        } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
            Some("the token holds characters other than printable ASCII without spaces")
        } else {
            None
        };
        match reason {
            None => Ok(Self { account, token }),
            Some(reason) => Err(Error::InvalidCredentials { account: account.to_string(), reason }),
        }
    }

    /// Whose credentials these are.
    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("account", &self.account).field("token", &"<redacted>").finish()
    }
}

/// How the engine talks to the server. Object-safe (the engine holds an
/// `Arc<dyn Transport>`); implementations classify failures into the error classes
/// the engine acts on:
///
/// - [`Error::Unreachable`]: the server cannot be reached; the engine goes offline and probes.
/// - [`Error::Transient`]: timeout, 5xx, 429; retried with backoff.
/// - [`Error::Unauthorized`]: 401; the engine asks its token provider for one new token,
///   or pauses until the app gives new credentials.
/// - [`Error::Rejected`]: any other 4xx for the whole request.
/// - [`Error::MalformedResponse`]: an answer that is not the protocol's shape.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends a batch of mutations (`POST /v1/push`).
    ///
    /// # Errors
    /// One of the classes above; the engine keeps every mutation queued on any error.
    ///
    /// # Cancel safety
    /// The engine may drop this future (shutdown); the server may or may not have applied
    /// the batch, which is why every mutation carries its idempotency key.
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, Error>;

    /// Fetches one page of changes (`POST /v1/pull`).
    ///
    /// # Errors
    /// One of the classes above.
    ///
    /// # Cancel safety
    /// Safe: a pull changes nothing on the server.
    async fn pull(&self, request: &PullRequest) -> Result<PullResponse, Error>;

    /// Checks that the server is reachable (`GET /v1/health`).
    ///
    /// # Errors
    /// [`Error::Unreachable`] or [`Error::Transient`] while it is not.
    ///
    /// # Cancel safety
    /// Safe.
    async fn probe(&self) -> Result<(), Error>;

    /// Replaces the credentials sent with every request. The default ignores them, for
    /// transports that need none.
    fn set_credentials(&self, credentials: Option<Credentials>) {
        let _ = credentials;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> AccountId {
        AccountId::new("alice").expect("valid account")
    }

    #[test]
    fn tokens_must_be_sendable_as_bearer_tokens() {
        for (token, valid) in [
            ("abc.def-ghi_jkl~+/=", true),
            ("", false),
            ("two words", false),
            ("line\nbreak", false),
            ("t\u{e9}l\u{e9}phone", false),
        ] {
            let made = Credentials::new(alice(), token);
            assert_eq!(made.is_ok(), valid, "{token:?}");
            if let Err(e) = made {
                assert!(matches!(e, Error::InvalidCredentials { .. }));
                assert!(token.is_empty() || !e.to_string().contains(token), "the error shows the token: {e}");
            }
        }
    }

    #[test]
    fn debug_shows_the_account_never_the_token() {
        let credentials = Credentials::new(alice(), "s3cret-token").expect("valid");
        let shown = format!("{credentials:?} {credentials:#?}");
        assert!(shown.contains("alice"));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}

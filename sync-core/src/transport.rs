//! The transport boundary: the send (`push`) and receive (`pull`) actions.

use std::fmt;

use async_trait::async_trait;

use crate::error::Error;
use crate::protocol::{PullRequest, PullResponse, PushRequest, PushResponse};

/// A bearer token for the server. Its `Debug` form never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The bearer token.
    pub token: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials { token: <redacted> }")
    }
}

/// How the engine talks to the server. Object-safe (the engine holds an
/// `Arc<dyn Transport>`); implementations classify failures into the error classes
/// the engine acts on:
///
/// - [`Error::Unreachable`]: the server cannot be reached; the engine goes offline and probes.
/// - [`Error::Transient`]: timeout, 5xx, 429; retried with backoff.
/// - [`Error::Unauthorized`]: 401; pushes pause until [`Transport::set_credentials`].
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

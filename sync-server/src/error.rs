//! The server's error type; each variant knows its HTTP status and protocol code.

use sync_core::protocol::ErrorCode;

/// Every error the server library returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid.
    #[error("invalid configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
    /// The request is malformed (400): `code` is the protocol's error code.
    #[error("{code}: {message}")]
    BadRequest {
        /// `invalid_request`, `batch_too_large`, `unknown_collection`, `invalid_collection`.
        code: ErrorCode,
        /// What is wrong.
        message: String,
    },
    /// The body is larger than `max_body_bytes` (413).
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// A request body in a content coding the server does not decode (415).
    #[error("unsupported content encoding {encoding:?}")]
    UnsupportedEncoding {
        /// The coding as sent.
        encoding: String,
    },
    /// A JWT that verified but has expired (401 `token_expired`): refresh it.
    #[error("token expired")]
    TokenExpired,
    /// No valid bearer token (401).
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// Why.
        message: String,
    },
    /// The database failed (500; 503 when retrying may help).
    #[error("database failure: {message}")]
    Database {
        /// The database's explanation.
        message: String,
        /// Whether the client should retry.
        retryable: bool,
    },
    /// The server is at a limit it sets itself (503 with `Retry-After`): too many event
    /// streams or connections open. Retrying later helps.
    #[error("server busy: {message}")]
    Overloaded {
        /// Which limit.
        message: String,
        /// Seconds the client should wait before retrying.
        retry_after_secs: u32,
    },
    /// The listener or another I/O resource failed.
    #[error("i/o failure: {message}")]
    Io {
        /// The explanation.
        message: String,
    },
}

impl ServerError {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        ServerError::Config { message: message.into() }
    }

    pub(crate) fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerError::BadRequest { code, message: message.into() }
    }

    /// The error body the client sees, `{"error": {"code", "message"}}`; internal
    /// details (database, I/O, configuration) stay in the log.
    pub fn body(&self) -> sync_core::protocol::ErrorBody {
        let message = match self {
            ServerError::Database { .. } | ServerError::Io { .. } | ServerError::Config { .. } => {
                "internal server error".to_owned()
            }
            other => other.to_string(),
        };
        sync_core::protocol::ErrorBody { error: sync_core::protocol::ErrorDetail::new(self.code(), message) }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            ServerError::BadRequest { .. } => 400,
            ServerError::Unauthorized { .. } | ServerError::TokenExpired => 401,
            ServerError::PayloadTooLarge { .. } => 413,
            ServerError::UnsupportedEncoding { .. } => 415,
            ServerError::Database { retryable: true, .. } | ServerError::Overloaded { .. } => 503,
            ServerError::Config { .. } | ServerError::Database { .. } | ServerError::Io { .. } => 500,
        }
    }

    /// The protocol's error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ServerError::BadRequest { code, .. } => code.clone(),
            ServerError::Unauthorized { .. } => ErrorCode::Unauthorized,
            ServerError::TokenExpired => ErrorCode::TokenExpired,
            ServerError::PayloadTooLarge { .. } => ErrorCode::BodyTooLarge,
            ServerError::UnsupportedEncoding { .. } => ErrorCode::UnsupportedEncoding,
            ServerError::Database { retryable: true, .. } => ErrorCode::Unavailable,
            ServerError::Overloaded { .. } => ErrorCode::Overloaded,
            ServerError::Config { .. } | ServerError::Database { .. } | ServerError::Io { .. } => ErrorCode::Internal,
        }
    }
}

#[cfg(feature = "server")]
impl From<sqlx::Error> for ServerError {
    fn from(e: sqlx::Error) -> Self {
        let retryable = match &e {
            sqlx::Error::Database(db) => {
                // SQLite busy/locked; PostgreSQL serialization failure and deadlock.
                matches!(db.code().as_deref(), Some("5" | "6" | "517" | "40001" | "40P01"))
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => true,
            _ => false,
        };
        ServerError::Database { message: e.to_string(), retryable }
    }
}

#[cfg(feature = "server")]
impl axum::response::IntoResponse for ServerError {
    fn into_response(self) -> axum::response::Response {
        let status =
            axum::http::StatusCode::from_u16(self.status()).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        if let ServerError::Overloaded { retry_after_secs, .. } = &self {
            tracing::warn!(error = %self, "request refused");
            let retry_after = [(axum::http::header::RETRY_AFTER, retry_after_secs.to_string())];
            return (status, retry_after, axum::Json(self.body())).into_response();
        }
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (status, axum::Json(self.body())).into_response()
    }
}

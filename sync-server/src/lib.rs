//! offsync's reference sync server.
//!
//! Feature `server` (default): an axum [`router`](router::router) implementing the wire
//! protocol over a [`ServerStore`](store::ServerStore) (SQLite by default, PostgreSQL
//! for several nodes), configuration from TOML, tombstone purging, change notifications
//! over Server-Sent Events, and the `sync-server` binary. Devices talk to it through
//! `sync_http::HttpTransport`, a crate of its own with no server code in it.
//!
//! ```no_run
//! # #[cfg(feature = "server")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sync_server::config::{ServerConfig, token_sha256};
//! use sync_server::server::{from_config, start};
//!
//! let config = ServerConfig::from_toml(&format!(
//!     "database = \"sqlite://server.db\"\n[[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n\
//!      [collections.work_orders]\naccess = \"owner\"\n",
//!     token_sha256("alice-secret")
//! ))?;
//! let (state, store) = from_config(&config).await?;
//! let server = start("127.0.0.1:0", state, store, config.tombstone_retention).await?;
//! println!("serving on {}", server.url());
//! server.stop().await?;
//! # Ok(()) }
//! ```

#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod cursor;
#[cfg(feature = "server")]
pub mod encoding;
pub mod error;
#[cfg(feature = "server")]
pub mod events;
#[cfg(feature = "server")]
pub mod jwt;
#[cfg(feature = "server")]
pub mod limits;
#[cfg(feature = "server")]
pub mod logic;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod router;
#[cfg(feature = "server")]
pub mod rules;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod subscriptions;
#[cfg(feature = "server")]
pub mod tls;

pub use error::ServerError;

//! offsync's test kit: parts for testing apps (and offsync itself) end to end in one
//! process, with the faults a real network and real crashes produce.
//!
//! - [`InProcessServer`]: the reference server's request handling and SQLite store in a
//!   temporary file, reached through [`Transport`] calls instead of sockets; it logs
//!   every mutation it applies ([`InProcessServer::applications`]) and every mutation id
//!   answered `applied` twice with different versions
//!   ([`InProcessServer::double_applications`], the exactly-once check).
//! - [`FaultyTransport`]: wraps any transport and injects [`Fault`]s (request or answer
//!   lost, duplicated, delayed, reordered, client cut off, 503, 401, crash after the
//!   server applied a push), scheduled one by one or drawn from a [`FaultPlan`]'s seed.
//! - [`MemoryServer`]: the server contract in memory, for faults the reference server
//!   cannot produce on demand (malformed pages, pushes held mid-flight).
//!
//! ```
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use sync_testkit::{Fault, FaultyTransport, InProcessServer};
//!
//! let server = InProcessServer::start(&["alice"], &[("orders", "owner")]).await?;
//! let transport = Arc::new(FaultyTransport::new(server.transport("alice")));
//! transport.inject(Fault::DropResponse); // the next push is applied, its answer lost
//! // ... build an Engine with `.transport(transport.clone())`, write, sync, and check
//! // `server.applications()` and `server.double_applications()`.
//! # Ok(())
//! # }
//! ```

mod faulty;
mod in_process;
mod memory_server;
pub mod sim;

pub use faulty::{Fault, FaultPlan, FaultyTransport};
pub use in_process::{Application, DoubleApplication, InProcessServer, InProcessTransport};
pub use memory_server::{AppliedMutation, MemoryServer, PushHold};
pub use sync_core::Transport;

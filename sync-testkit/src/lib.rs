//! offsync's test kit: parts for testing apps (and offsync itself) end to end in one
//! process. This release has [`MemoryServer`], an in-memory implementation of the wire
//! protocol's server contract (versions, idempotency by `mutation_id`, conflict answers,
//! a change feed with cursors and tombstones) that is also a [`Transport`], with faults
//! injected on demand: unreachable, transient and auth failures, a push that hangs after
//! the server applied it, rejections and malformed pages.
//!
//! ```
//! use std::sync::Arc;
//! use sync_core::Transport;
//! use sync_testkit::MemoryServer;
//!
//! let server = Arc::new(MemoryServer::new());
//! let transport: Arc<dyn Transport> = server.clone();
//! server.set_reachable(false); // the next request fails as if the network were down
//! # let _ = transport;
//! ```

mod memory_server;

pub use memory_server::{AppliedMutation, MemoryServer, PushHold};
pub use sync_core::Transport;

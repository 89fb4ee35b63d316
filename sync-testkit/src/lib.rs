//! offsync's test kit: parts for testing apps (and offsync itself) end to end in one
//! process, with the faults a real network and real crashes produce, and a
//! property-based simulator that checks the sync invariants (listed in ARCHITECTURE.md) on random histories.
//!
//! - [`sim`]: generated histories of 2 to 5 clients (writes, deletes, a record deleted
//!   and created again, custom actions, offline and online, syncs, faults, crashes,
//!   conflict resolution), run against real engines on SQLite files and the reference
//!   server's logic, then settled and checked: nothing acknowledged is lost, exactly
//!   once, per-record order, local first, convergence, every conflict explained by
//!   another client's write, and liveness (every outbox drains within a bounded number
//!   of rounds).
//!   proptest shrinks a failure to a short, printed story; [`sim::Scenario`] writes one
//!   by hand.
//! - [`InProcessServer`]: the reference server's request handling and SQLite store in a
//!   temporary file, reached through [`Transport`] calls instead of sockets; it logs
//!   every mutation it applies ([`InProcessServer::applications`]) and every mutation id
//!   answered `applied` twice with different versions
//!   ([`InProcessServer::double_applications`], the exactly-once check).
//! - [`FaultyTransport`]: wraps any transport and injects [`Fault`]s (request or answer
//!   lost, duplicated, delayed, reordered, client cut off, 503, 401, crash after the
//!   server applied a request), scheduled one by one or drawn from a [`FaultPlan`]'s seed.
//! - [`MemoryServer`]: the server contract in memory, for faults the reference server
//!   cannot produce on demand (malformed pages, pushes held mid-flight).
//! - [`conformance`]: the rules every `LocalStore` keeps (write folding, claim order,
//!   renames, parked rejections, page conflicts, replacements), checked through the
//!   trait alone; run your own store through [`conformance::run`].
//!
//! # Guide: test your own conflict resolver
//!
//! Describe the app (server collections, the pattern, how to make records, the
//! resolver your user applies) as a [`sim::SimApp`], and hand it to
//! [`sim::check_app`]: 256 random histories by default (`PROPTEST_CASES` for more),
//! each checked against every invariant, a failure shrunk to a minimal history and
//! reproducible with the printed `OFFSYNC_SEED`.
//!
//! ```
//! use std::sync::Arc;
//! use proptest::prelude::*;
//! use serde::{Deserialize, Serialize};
//! use serde_json::json;
//! use sync_core::{CollectionSpec, Conflict, ConflictResolver, EngineBuilder, LocalEntity, Resolution};
//! use sync_patterns::ConflictDetection;
//! use sync_testkit::sim::{RunOptions, SimApp, Tracked, check_app};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct Visit { id: String, notes: String, minutes: u32 }
//! impl LocalEntity for Visit { const COLLECTION: &'static str = "visits"; fn id(&self) -> &str { &self.id } }
//!
//! /// The app's rule: the longer visit counts; different notes are both kept.
//! fn longest_visit(c: &Conflict) -> Resolution {
//!     let (Some(local), Some(server)) = (&c.local, c.server.as_ref().and_then(|s| s.data.as_ref())) else {
//!         return Resolution::KeepServer;
//!     };
//!     let notes = if local["notes"] == server["notes"] { local["notes"].clone() }
//!         else { json!(format!("{} / {}", local["notes"], server["notes"])) };
//!     let minutes = local["minutes"].as_u64().max(server["minutes"].as_u64());
//!     Resolution::Merged(json!({"id": local["id"], "notes": notes, "minutes": minutes}))
//! }
//!
//! struct App;
//! impl SimApp for App {
//!     fn server_config(&self) -> String { sync_testkit::server_toml(&["tech"], &[("visits", "owner")]) }
//!     fn token(&self, _client: usize) -> String { "tech".into() }
//!     fn register(&self, _client: usize, builder: EngineBuilder) -> EngineBuilder {
//!         builder.collection(CollectionSpec::of::<Visit>(ConflictDetection::new()))
//!     }
//!     fn tracked(&self) -> Vec<Tracked> {
//!         vec![Tracked::of::<Visit>(("[ab]", 0u32..3).prop_map(|(notes, minutes)| Visit { id: String::new(), notes, minutes }))]
//!     }
//!     fn resolver(&self) -> Arc<dyn ConflictResolver> { Arc::new(longest_visit) }
//! }
//!
//! // In the app's tests: `#[test] fn visits_never_lose_a_write() { ... }`
//! let summary = check_app(App, &RunOptions { cases: 8, ..RunOptions::default() }).unwrap_or_else(|f| panic!("{f}"));
//! assert_eq!(summary.cases, 8);
//! ```
//!
//! The parts one by one:
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

pub mod conformance;
mod faulty;
mod in_process;
mod memory_server;
pub mod sim;

pub use faulty::{Fault, FaultPlan, FaultyTransport};
pub use in_process::{Application, DoubleApplication, InProcessServer, InProcessTransport, server_toml};
pub use memory_server::{AppliedMutation, MemoryServer, PushHold};
pub use sync_core::Transport;

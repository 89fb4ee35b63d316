//! Property-based conflict-scenario testing: generated multi-client histories with
//! faults and crashes, run against real engines and the reference server's logic, then
//! settled and checked against the invariants 1-5 of ARCHITECTURE.md and liveness.
//!
//! - [`SimApp`] describes the app under test; [`Tracked`] its collections.
//! - [`histories`] generates [`History`]s (proptest, shrinking to a short story).
//! - [`Simulation`] runs one: [`Simulation::apply`] each [`Step`], then
//!   [`Simulation::finish`] heals the faults, settles within [`QUIESCENCE_ROUNDS`], and
//!   returns an [`Outcome`] with every [`Violation`].
//! - [`check_app`] runs many from a printed seed; [`Scenario`] writes one by hand.

mod app;
mod check;
mod history;
mod runner;
mod scenario;
mod strategy;
mod world;

pub use app::{SimApp, Tracked};
pub use check::Violation;
pub use history::{History, Step, client_name};
pub use runner::{Failure, RunOptions, Summary, check_app, check_shared, generate, seeded_runner};
pub use scenario::{A, B, C, Scenario};
pub use strategy::{HistoryOptions, StepWeights, faults, histories};
pub use world::{Outcome, QUIESCENCE_ROUNDS, SeenConflict, SimError, Simulation, run_history, sim_options};

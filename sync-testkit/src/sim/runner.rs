//! Runs many generated histories of an app under proptest, from a printed seed, and
//! shrinks a failing one to a minimal history.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use super::app::SimApp;
use super::history::History;
use super::strategy::{HistoryOptions, histories};
use super::world::{Outcome, run_history};

/// How many histories to run and what they hold.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Cases to run. The default is `PROPTEST_CASES` from the environment, else 256; a
    /// number set here explicitly wins over the environment.
    pub cases: u32,
    /// The seed; `OFFSYNC_SEED` in the environment overrides it; None: a random one.
    /// It is printed either way, and the same seed generates the same histories.
    pub seed: Option<u64>,
    /// What the histories hold.
    pub history: HistoryOptions,
    /// The most shrinking steps after a failure.
    pub max_shrink_iters: u32,
}

impl Default for RunOptions {
    fn default() -> Self {
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
        Self { cases, seed: None, history: HistoryOptions::default(), max_shrink_iters: 2048 }
    }
}

impl RunOptions {
    /// The cases and the seed, with `OFFSYNC_SEED` from the environment applied (a seed to
    /// replay wins over the one in the code).
    fn resolved(&self) -> (u32, u64) {
        let seed =
            std::env::var("OFFSYNC_SEED").ok().and_then(|v| v.parse().ok()).or(self.seed).unwrap_or_else(rand::random);
        (self.cases, seed)
    }
}

/// What a passing run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The seed the histories came from.
    pub seed: u64,
    /// Histories run.
    pub cases: u32,
    /// Steps taken over all histories.
    pub steps: u64,
    /// Faults injected, by name (crashes included).
    pub faults: BTreeMap<&'static str, u64>,
    /// Client restarts.
    pub crashes: u64,
    /// Conflicts met.
    pub conflicts: u64,
    /// Mutations the server applied.
    pub applied: u64,
    /// Collections the server answered with `reset`.
    pub resets: u64,
}

impl Summary {
    /// Adds one history's outcome.
    pub fn add(&mut self, history: &History, outcome: &Outcome) {
        self.cases += 1;
        self.steps += history.steps.len() as u64;
        for (name, count) in &outcome.faults {
            *self.faults.entry(name).or_insert(0) += count;
        }
        self.crashes += outcome.crashes;
        self.conflicts += outcome.conflicts.len() as u64;
        self.applied += outcome.applied as u64;
        self.resets += outcome.resets;
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {} histories, {} steps, {} applied, {} conflicts, {} crashes, {} resets, faults {:?}",
            self.seed, self.cases, self.steps, self.applied, self.conflicts, self.crashes, self.resets, self.faults
        )
    }
}

/// A failing history, shrunk.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed that found it (`OFFSYNC_SEED=<seed>` runs the same histories again).
    pub seed: u64,
    /// The minimal history proptest shrank it to.
    pub history: History,
    /// What that history broke.
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "offsync-testkit: a history broke an invariant (rerun with OFFSYNC_SEED={}).\nMinimal history: {}\n{}",
            self.seed, self.history, self.reason
        )
    }
}

impl std::error::Error for Failure {}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| Failure {
        seed: 0,
        history: History { clients: 0, steps: Vec::new() },
        reason: format!("no tokio runtime: {e}"),
    })
}

fn rng(seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Runs generated histories of `app` and checks every invariant after each. Call it
/// from a plain `#[test]` (it makes its own tokio runtime). It prints the seed first;
/// on a failure it returns the history shrunk to a minimum.
///
/// # Errors
/// The shrunk [`Failure`].
pub fn check_app(app: impl SimApp, options: &RunOptions) -> Result<Summary, Failure> {
    check_shared(Arc::new(app), options)
}

/// As [`check_app`], with the app behind an `Arc`.
///
/// # Errors
/// As [`check_app`].
pub fn check_shared(app: Arc<dyn SimApp>, options: &RunOptions) -> Result<Summary, Failure> {
    let (cases, seed) = options.resolved();
    println!("offsync-testkit: {cases} histories from seed {seed} (rerun with OFFSYNC_SEED={seed})");
    let runtime = runtime()?;
    let strategy = histories(app.as_ref(), &options.history);
    let config =
        Config { cases, max_shrink_iters: options.max_shrink_iters, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, rng(seed));
    let summary = Mutex::new(Summary { seed, ..Summary::default() });
    let result = runner.run(&strategy, |history| {
        let outcome = runtime
            .block_on(run_history(app.clone(), &history))
            .map_err(|e| TestCaseError::fail(format!("setup: {e}")))?;
        summary.lock().unwrap_or_else(PoisonError::into_inner).add(&history, &outcome);
        if outcome.is_ok() { Ok(()) } else { Err(TestCaseError::fail(outcome.to_string())) }
    });
    let summary = summary.into_inner().unwrap_or_else(PoisonError::into_inner);
    match result {
        Ok(()) => Ok(summary),
        Err(TestError::Fail(reason, history)) => {
            let failure = Failure { seed, history, reason: reason.to_string() };
            println!("{failure}");
            Err(failure)
        }
        Err(TestError::Abort(reason)) => Err(Failure {
            seed,
            history: History { clients: 0, steps: Vec::new() },
            reason: format!("aborted: {reason}"),
        }),
    }
}

/// Generates one history of `app` from `rng` (for soak programs that run histories
/// for a given time rather than a given count).
///
/// # Errors
/// A message when the strategy cannot generate (it always can for a valid app).
pub fn generate(app: &dyn SimApp, options: &HistoryOptions, runner: &mut TestRunner) -> Result<History, String> {
    let tree = histories(app, options).new_tree(runner).map_err(|e| e.to_string())?;
    Ok(tree.current())
}

/// A proptest runner seeded with `seed` (ChaCha), for [`generate`].
pub fn seeded_runner(seed: u64) -> TestRunner {
    TestRunner::new_with_rng(Config::default(), rng(seed))
}

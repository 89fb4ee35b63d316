//! Soak: random histories of every bundled pattern under the fault model, for a given
//! time, then a report of cases run, faults injected, invariant violations and
//! liveness failures (both expected to be 0). Exits non-zero on any.
//!
//! `SOAK_SECONDS=600 cargo bench -p offsync-tests --bench soak` (default 60 s;
//! `OFFSYNC_SEED` fixes the seed).

#[path = "../tests/sim_apps/mod.rs"]
mod sim_apps;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sim_apps::{ConflictApp, LwwApp, OneToManyApp, ReadOnlyApp, UserResolver};
use sync_testkit::sim::{HistoryOptions, SimApp, Summary, generate, run_history, seeded_runner};

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed: u64 = std::env::var("OFFSYNC_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand_seed);
    let apps: Vec<(&str, Arc<dyn SimApp>)> = vec![
        ("conflict_detection+three_way", Arc::new(ConflictApp { resolver: UserResolver::ThreeWay })),
        ("conflict_detection+keep_local", Arc::new(ConflictApp { resolver: UserResolver::KeepLocal })),
        ("last_write_wins", Arc::new(LwwApp)),
        ("read_only", Arc::new(ReadOnlyApp { optimized: false })),
        ("read_only_optimized", Arc::new(ReadOnlyApp { optimized: true })),
        ("one_to_many", Arc::new(OneToManyApp)),
    ];
    let options = HistoryOptions::default();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut runner = seeded_runner(seed);
    println!("soak: {seconds} s of random histories from seed {seed} (OFFSYNC_SEED={seed} replays them)");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut total = Summary { seed, ..Summary::default() };
    let mut per_app: BTreeMap<&str, u32> = BTreeMap::new();
    let (mut violations, mut liveness, mut false_conflicts) = (0usize, 0usize, 0usize);
    let started = Instant::now();
    let mut index = 0;
    while Instant::now() < deadline {
        let (name, app) = &apps[index % apps.len()];
        index += 1;
        let history = generate(app.as_ref(), &options, &mut runner).map_err(anyhow::Error::msg)?;
        let outcome = runtime.block_on(run_history(app.clone(), &history))?;
        total.add(&history, &outcome);
        *per_app.entry(name).or_insert(0) += 1;
        if !outcome.is_ok() {
            violations += outcome.violations.len();
            liveness += outcome.liveness.len();
            false_conflicts += outcome.violations.iter().filter(|v| v.invariant() == 6).count();
            println!("{name}: history {} broke an invariant:\n{history}{outcome}", total.cases);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let injected: u64 = total.faults.values().sum();
    println!("cases run:          {} ({:.1}/s), {} steps", total.cases, f64::from(total.cases) / elapsed, total.steps);
    println!("per pattern:        {per_app:?}");
    println!("faults injected:    {injected} {:?}", total.faults);
    println!("crashes (restarts): {}", total.crashes);
    println!("conflicts met:      {}", total.conflicts);
    println!("resets (resyncs):   {}", total.resets);
    println!("mutations applied:  {}", total.applied);
    println!("invariant violations: {violations} (of which false conflicts, rule 6: {false_conflicts})");
    println!("liveness failures:    {liveness}");
    if violations + liveness > 0 {
        anyhow::bail!("{violations} invariant violations, {liveness} liveness failures");
    }
    Ok(())
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

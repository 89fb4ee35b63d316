//! The driver task: carries out what the scheduler (`schedule.rs`) decides. It runs one
//! cycle at a time, answers the callers waiting for a unit, probes the server, reads
//! the status counts, and sleeps until the scheduler's next deadline or the next event.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use super::Shared;
use super::schedule::{Action, Connection, CycleOutcome, Event, Scheduler, Verdict, verdict};
use crate::error::Error;
use crate::status::{AuthState, SyncEvent, SyncReport};

type Reply = oneshot::Sender<Result<SyncReport, Error>>;

/// What the handle asks of the driver.
pub(crate) enum Command {
    /// Run a unit (once more if it is running); `reply` waits for its report.
    Trigger { unit: String, discard_queued: bool, reply: Option<Reply> },
    /// The app went online or supplied credentials: sync everything now.
    Reconnected,
}

struct Driver {
    shared: Arc<Shared>,
    scheduler: Scheduler,
    /// Everyone waiting for the report of a queued unit, by unit.
    waiters: HashMap<String, Vec<Reply>>,
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let scheduler = Scheduler::new(shared.options.debounce, shared.options.backoff);
    let driver = Driver { shared, scheduler, waiters: HashMap::new() };
    tokio::spawn(driver.run(commands, shutdown))
}

impl Driver {
    async fn run(mut self, commands: mpsc::Receiver<Command>, shutdown: watch::Receiver<bool>) {
        self.run_until_shutdown(commands, shutdown).await;
        // A cycle cut short by the shutdown leaves the lease held; give it back so that
        // another process sharing the store need not wait for it to lapse.
        if let Err(e) = self.shared.store.release_sync_lease(&self.shared.lease_holder).await {
            tracing::debug!(error = %e, "the sync lease could not be given back; it lapses by itself");
        }
    }

    async fn run_until_shutdown(&mut self, mut commands: mpsc::Receiver<Command>, mut shutdown: watch::Receiver<bool>) {
        if *shutdown.borrow() {
            return;
        }
        // Commits by another process sharing the store (None: nobody else writes it).
        let mut external = self.shared.store.external_changes();
        self.shared.refresh_counts().await;
        if self.shared.options.sync_on_start {
            self.on(Event::Trigger { unit: super::ALL_UNIT.to_owned(), manual: false, discard_queued: false });
        }
        let mut interval = self.shared.options.interval.map(|d| {
            let mut interval = tokio::time::interval_at(Instant::now() + d, d);
            // After a long cycle, one tick is enough; a burst would only queue the same unit.
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            interval
        });
        loop {
            // Everything that arrived while a cycle ran joins the queue first, so that
            // any number of triggers during a cycle makes exactly one follow-up.
            while let Ok(command) = commands.try_recv() {
                self.command(command);
            }
            if let Some(next) = self.scheduler.next() {
                let waiters = self.waiters.remove(&next.unit).unwrap_or_default();
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => return,
                    () = self.run_queued(&next.unit, next.manual, waiters) => {}
                }
                continue;
            }
            let deadline = self.scheduler.next_deadline();
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => return,
                },
                () = self.shared.overflow.notified() => self.on(Event::Reconnected),
                changed = external_change(&mut external), if external.is_some() => {
                    if changed {
                        self.changed_elsewhere().await;
                    } else {
                        external = None;
                    }
                }
                () = self.shared.local_writes.notified() => {
                    let at = self.shared.last_local_write().unwrap_or_else(Instant::now);
                    self.on(Event::LocalWrite { at });
                }
                () = sleep_until_opt(deadline), if deadline.is_some() => {
                    let actions = self.scheduler.due(Instant::now(), self.shared.net().app_online);
                    tokio::select! {
                        biased;
                        _ = shutdown.changed() => return,
                        () = self.carry_out(actions) => {}
                    }
                }
                _ = tick(&mut interval), if interval.is_some() => self.on(Event::IntervalTick),
            }
        }
    }

    /// Hands `event` to the scheduler and answers the waiters of the units it discarded
    /// (probes and counts come only from deadlines, in `carry_out`).
    fn on(&mut self, event: Event) {
        for unit in self.scheduler.on(event, Instant::now(), &mut rand::rng()) {
            let error = Error::Discarded { unit: unit.clone() };
            for waiter in self.waiters.remove(&unit).unwrap_or_default() {
                // The caller may have stopped waiting; nobody else needs the answer.
                let _ = waiter.send(Err(error.clone()));
            }
        }
    }

    /// Carries out the actions of deadlines that passed.
    async fn carry_out(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::RefreshCounts => self.shared.refresh_counts().await,
                Action::Probe => {
                    let reachable = self.shared.transport.probe().await.is_ok();
                    if reachable {
                        self.shared.update_net(|n| n.reachable = true);
                    }
                    self.on(Event::ProbeFinished { reachable });
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Trigger { unit, discard_queued, reply } => {
                let manual = reply.is_some();
                // Discarded units are answered before the new waiter joins its unit.
                self.on(Event::Trigger { unit: unit.clone(), manual, discard_queued });
                self.waiters.entry(unit).or_default().extend(reply);
            }
            Command::Reconnected => self.on(Event::Reconnected),
        }
    }

    /// Runs a queued unit if the network, reachability and credentials allow, and
    /// answers its waiters.
    async fn run_queued(&mut self, unit: &str, manual: bool, waiters: Vec<Reply>) {
        let net = self.shared.net();
        let connection = Connection {
            app_online: net.app_online,
            reachable: net.reachable,
            credentials_required: self.shared.status.borrow().auth == AuthState::Required,
        };
        let result = match verdict(connection, manual) {
            Verdict::Run => self.run_cycle(unit).await,
            Verdict::RefuseOffline => Err(Error::Unreachable { message: "the app set the engine offline".into() }),
            Verdict::RefuseCredentials => {
                Err(Error::Unauthorized { message: "credentials required: call Engine::set_credentials".into() })
            }
            Verdict::Skip => return,
        };
        for waiter in waiters {
            // The caller may have stopped waiting; nobody else needs the answer.
            let _ = waiter.send(result.clone());
        }
    }

    /// Another process committed to the store: live queries run again, the counts are
    /// read, and what that process queued is pushed (it may not be syncing itself).
    async fn changed_elsewhere(&mut self) {
        self.shared.emit(SyncEvent::StoreChangedElsewhere);
        self.shared.refresh_counts().await;
        let pending = self.shared.status.borrow().pending;
        self.on(Event::ChangedElsewhere { pending });
    }

    async fn run_cycle(&mut self, unit_name: &str) -> Result<SyncReport, Error> {
        let Some(unit) = self.shared.units.get(unit_name).cloned() else {
            return Err(Error::Config { message: format!("unknown sync unit {unit_name:?}") });
        };
        let result = self.run_with_token(&unit).await;
        let outcome = match &result {
            Ok(_) => {
                self.shared.update_net(|n| n.reachable = true);
                CycleOutcome::Synced
            }
            Err(Error::Unauthorized { .. } | Error::TokenProvider { .. }) => {
                self.shared.status.send_modify(|s| s.auth = AuthState::Required);
                self.shared.emit(SyncEvent::AuthRequired);
                CycleOutcome::Stopped
            }
            Err(Error::Unreachable { .. }) => {
                self.shared.update_net(|n| n.reachable = false);
                CycleOutcome::Unreachable
            }
            // Another process sharing the store syncs it now (and pushes what this one
            // queued): try again when its lease lapses, in case it died.
            Err(Error::SyncedElsewhere { until }) => {
                CycleOutcome::SyncedElsewhere { wait: (*until - chrono::Utc::now()).to_std().unwrap_or_default() }
            }
            Err(error) if error.is_retryable() => CycleOutcome::Retryable,
            Err(_) => CycleOutcome::Stopped,
        };
        self.on(Event::CycleFinished { unit: unit.name.clone(), outcome });
        result
    }

    /// Runs the cycle with a token from the app's provider, if it has one: asks for a
    /// first token when the engine holds none, and after a 401 for one new token and
    /// runs the cycle once more. A second 401 is the cycle's answer: the engine never
    /// loops on 401, it waits for the app.
    async fn run_with_token(&mut self, unit: &super::UnitSpec) -> Result<SyncReport, Error> {
        if self.shared.token_provider.is_some() && self.shared.current_token().is_none() {
            self.obtain_token(None).await?;
        }
        let result = super::cycle::run(&self.shared, unit).await;
        match (&result, self.shared.token_provider.is_some()) {
            (Err(Error::Unauthorized { .. }), true) => {
                let refused = self.shared.current_token().unwrap_or_default();
                self.obtain_token(Some(&refused)).await?;
                super::cycle::run(&self.shared, unit).await
            }
            _ => result,
        }
    }

    /// Asks the provider for a token (a refresh of `refused`, or a first one), at most
    /// [`crate::auth::TOKEN_ATTEMPTS`] times with backoff, and installs it.
    async fn obtain_token(&mut self, refused: Option<&str>) -> Result<(), Error> {
        let (Some(provider), Some(account)) = (self.shared.token_provider.clone(), self.shared.account()) else {
            return Err(Error::Unauthorized { message: "no token provider or account".into() });
        };
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            match crate::auth::ask(provider.as_ref(), &account, refused).await {
                Ok(credentials) => {
                    self.shared.adopt_credentials(Some(credentials)).await;
                    return Ok(());
                }
                Err(error) => match crate::auth::after_failure(attempt, &error) {
                    crate::auth::AfterFailure::AskAgain => {
                        tracing::debug!(attempt, %error, "the token provider failed; asking again");
                        let delay = self.shared.options.backoff.delay(attempt, &mut rand::rng());
                        tokio::time::sleep(delay).await;
                    }
                    crate::auth::AfterFailure::GiveUp => {
                        tracing::warn!(attempt, %error, "no usable token; syncing waits for the app");
                        return Err(match error {
                            Error::TokenProvider { .. } | Error::Unauthorized { .. } => error,
                            other => {
                                Error::TokenProvider { message: format!("gave up after {attempt} attempts: {other}") }
                            }
                        });
                    }
                },
            }
        }
    }
}

/// Waits for the next commit by another process; false when the signal has ended.
async fn external_change(external: &mut Option<watch::Receiver<u64>>) -> bool {
    match external {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

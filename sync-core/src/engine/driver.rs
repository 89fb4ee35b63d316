//! The driver task: one cycle at a time, the trigger queue, debounce, interval, retries
//! and reachability probes.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use super::builder::PUSH_UNIT;
use super::{ALL_UNIT, Shared};
use crate::error::Error;
use crate::status::{AuthState, SyncEvent, SyncReport};

type Reply = oneshot::Sender<Result<SyncReport, Error>>;

/// Local writes update the status counts at most this often: reading them after every
/// write would put a query beside each write and spoil its latency.
const COUNTS_THROTTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// A retry after another process's sync lease waits this much past its lapse, so that
/// the lease has surely lapsed when it is asked for again.
const LEASE_MARGIN: std::time::Duration = std::time::Duration::from_millis(10);

/// What the handle asks of the driver.
pub(crate) enum Command {
    /// Run a unit (once more if it is running); `reply` waits for its report.
    Trigger { unit: String, discard_queued: bool, reply: Option<Reply> },
    /// The app went online or supplied credentials: sync everything now.
    Reconnected,
}

/// A unit waiting to run, with everyone waiting for its report.
struct Queued {
    unit: String,
    waiters: Vec<Reply>,
    /// Asked for by the app (`sync_now`), as opposed to an automatic trigger.
    manual: bool,
}

/// What the driver does when its retry timer fires.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Retry {
    /// The server was unreachable: probe it.
    Probe,
    /// A transient failure: run the unit again.
    Rerun(String),
}

struct Driver {
    shared: Arc<Shared>,
    queue: VecDeque<Queued>,
    write_deadline: Option<Instant>,
    /// When the status counts are next read after local writes.
    counts_due: Option<Instant>,
    retry: Option<(Instant, Retry)>,
    failures: u32,
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let driver =
        Driver { shared, queue: VecDeque::new(), write_deadline: None, counts_due: None, retry: None, failures: 0 };
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
            self.enqueue(ALL_UNIT.to_owned(), None, false, false);
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
                self.handle(command);
            }
            if let Some(next) = self.queue.pop_front() {
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => return,
                    () = self.run_queued(next) => {}
                }
                continue;
            }
            let write_deadline = self.write_deadline;
            let counts_due = self.counts_due;
            let retry_at = self.retry.as_ref().map(|(at, _)| *at);
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => return,
                },
                () = self.shared.overflow.notified() => self.handle(Command::Reconnected),
                changed = external_change(&mut external), if external.is_some() => {
                    if changed {
                        self.changed_elsewhere().await;
                    } else {
                        external = None;
                    }
                }
                () = self.shared.local_writes.notified() => {
                    // The quiet period counts from the write itself, not from when this
                    // task got to it (it may have been busy with a cycle).
                    let now = Instant::now();
                    let written = self.shared.last_local_write().unwrap_or(now);
                    self.write_deadline = Some(written + self.shared.options.debounce);
                    self.counts_due.get_or_insert(now + COUNTS_THROTTLE);
                }
                () = sleep_until_opt(counts_due), if counts_due.is_some() => {
                    self.counts_due = None;
                    self.shared.refresh_counts().await;
                }
                () = sleep_until_opt(write_deadline), if write_deadline.is_some() => {
                    self.write_deadline = None;
                    self.enqueue(ALL_UNIT.to_owned(), None, false, false);
                }
                _ = tick(&mut interval), if interval.is_some() => {
                    self.enqueue(ALL_UNIT.to_owned(), None, false, false);
                }
                () = sleep_until_opt(retry_at), if retry_at.is_some() => {
                    tokio::select! {
                        biased;
                        _ = shutdown.changed() => return,
                        () = self.fire_retry() => {}
                    }
                }
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Trigger { unit, discard_queued, reply } => {
                let manual = reply.is_some();
                self.enqueue(unit, reply, manual, discard_queued);
            }
            Command::Reconnected => {
                self.failures = 0;
                self.retry = None;
                self.enqueue(ALL_UNIT.to_owned(), None, false, false);
            }
        }
    }

    fn enqueue(&mut self, unit: String, reply: Option<Reply>, manual: bool, discard_queued: bool) {
        if discard_queued {
            for queued in self.queue.drain(..) {
                let error = Error::Discarded { unit: queued.unit.clone() };
                for waiter in queued.waiters {
                    let _ = waiter.send(Err(error.clone()));
                }
            }
        }
        if let Some(queued) = self.queue.iter_mut().find(|q| q.unit == unit) {
            queued.waiters.extend(reply);
            queued.manual |= manual;
            return;
        }
        self.queue.push_back(Queued { unit, waiters: reply.into_iter().collect(), manual });
    }

    /// Runs a queued unit if the network, reachability and credentials allow, and
    /// answers its waiters.
    async fn run_queued(&mut self, queued: Queued) {
        let net = self.shared.net();
        let refusal = if !net.app_online {
            Some(Error::Unreachable { message: "the app set the engine offline".into() })
        } else if self.shared.status.borrow().auth == AuthState::Required {
            Some(Error::Unauthorized { message: "credentials required: call Engine::set_credentials".into() })
        } else {
            None
        };
        // An automatic trigger while the server is unreachable waits for the probe.
        if refusal.is_none() && !net.reachable && !queued.manual {
            return;
        }
        let result = match refusal {
            Some(error) => Err(error),
            None => self.run_cycle(&queued.unit).await,
        };
        for waiter in queued.waiters {
            let _ = waiter.send(result.clone());
        }
    }

    /// Another process committed to the store: live queries run again, the counts are
    /// read, and what that process queued is pushed (it may not be syncing itself).
    async fn changed_elsewhere(&mut self) {
        self.shared.emit(SyncEvent::StoreChangedElsewhere);
        self.shared.refresh_counts().await;
        if self.shared.status.borrow().pending > 0 {
            self.enqueue(PUSH_UNIT.to_owned(), None, false, false);
        }
    }

    async fn run_cycle(&mut self, unit_name: &str) -> Result<SyncReport, Error> {
        let Some(unit) = self.shared.units.get(unit_name).cloned() else {
            return Err(Error::Config { message: format!("unknown sync unit {unit_name:?}") });
        };
        let result = self.run_with_token(&unit).await;
        match &result {
            Ok(_) => {
                self.failures = 0;
                self.retry = None;
                self.shared.update_net(|n| n.reachable = true);
            }
            Err(Error::Unauthorized { .. } | Error::TokenProvider { .. }) => {
                self.shared.status.send_modify(|s| s.auth = AuthState::Required);
                self.shared.emit(SyncEvent::AuthRequired);
            }
            Err(Error::Unreachable { .. }) => {
                self.shared.update_net(|n| n.reachable = false);
                self.schedule(Retry::Probe);
            }
            // Another process sharing the store syncs it now (and pushes what this one
            // queued): try again when its lease lapses, in case it died.
            Err(Error::SyncedElsewhere { until }) => {
                let wait = (*until - chrono::Utc::now()).to_std().unwrap_or_default();
                self.retry = Some((Instant::now() + wait + LEASE_MARGIN, Retry::Rerun(unit.name.clone())));
            }
            Err(error) if error.is_retryable() => self.schedule(Retry::Rerun(unit.name.clone())),
            Err(_) => {}
        }
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

    fn schedule(&mut self, retry: Retry) {
        self.failures = self.failures.saturating_add(1);
        let delay = self.shared.options.backoff.delay(self.failures, &mut rand::rng());
        self.retry = Some((Instant::now() + delay, retry));
    }

    async fn fire_retry(&mut self) {
        let Some((_, retry)) = self.retry.take() else { return };
        match retry {
            Retry::Rerun(unit) => self.enqueue(unit, None, false, false),
            Retry::Probe => {
                if !self.shared.net().app_online {
                    return;
                }
                match self.shared.transport.probe().await {
                    Ok(()) => {
                        self.shared.update_net(|n| n.reachable = true);
                        self.enqueue(ALL_UNIT.to_owned(), None, false, false);
                    }
                    Err(_) => self.schedule(Retry::Probe),
                }
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

//! When the engine syncs, as a state machine: the trigger queue, debounce after local
//! writes, the throttle on status counts, retries with backoff and reachability probes.
//!
//! Events and the time go in; what to run and what to do come out. Nothing here awaits,
//! sleeps or touches the store: the driver task (`driver.rs`) carries the actions out
//! and sleeps until [`Scheduler::next_deadline`]. So every rule of "when" is read and
//! tested here, with the clock in the test's hand.

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::ALL_UNIT;
use super::builder::PUSH_UNIT;
use crate::backoff::Backoff;

/// Local writes update the status counts at most this often: reading them after every
/// write would put a query beside each write and spoil its latency.
pub(crate) const COUNTS_THROTTLE: Duration = Duration::from_millis(50);

/// A retry after another process's sync lease waits this much past its lapse, so that
/// the lease has surely lapsed when it is asked for again.
pub(crate) const LEASE_MARGIN: Duration = Duration::from_millis(10);

/// Something that happened, for the scheduler to take into account.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// A unit was asked for: by the app (`manual`, someone waits for its report) or by
    /// an automatic trigger. `discard_queued` drops what waits in the queue first.
    Trigger { unit: String, manual: bool, discard_queued: bool },
    /// The app went online or supplied credentials, or events were missed: everything
    /// now, with the backoff forgotten.
    Reconnected,
    /// A local write was committed at `at`.
    LocalWrite { at: Instant },
    /// The periodic interval ticked.
    IntervalTick,
    /// Another process committed to the store; `pending` writes are queued now.
    ChangedElsewhere { pending: u64 },
    /// A cycle of `unit` ended.
    CycleFinished { unit: String, outcome: CycleOutcome },
    /// A reachability probe ended.
    ProbeFinished { reachable: bool },
}

/// How a cycle ended, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CycleOutcome {
    /// It synced: the server is reachable and the backoff starts over.
    Synced,
    /// The server could not be reached: probe it with backoff.
    Unreachable,
    /// Another process holds the sync lease for `wait` more: run the unit again after.
    SyncedElsewhere { wait: Duration },
    /// A transient failure: run the unit again with backoff.
    Retryable,
    /// Credentials are needed, or a failure retrying will not mend: wait for the app.
    Stopped,
}

/// What a passed deadline asks of the driver, besides running queued units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Read the status counts again.
    RefreshCounts,
    /// Ask the server whether it is reachable, then report `ProbeFinished`.
    Probe,
}

/// What to do with the unit at the head of the queue, given the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Run its cycle.
    Run,
    /// Answer its waiters with "offline": the app set the engine offline.
    RefuseOffline,
    /// Answer its waiters with "credentials required".
    RefuseCredentials,
    /// Drop it: an automatic trigger while the server is unreachable waits for the probe.
    Skip,
}

/// The connection as the engine sees it when a unit comes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Connection {
    /// The app allows syncing (`set_online(true)`).
    pub(crate) app_online: bool,
    /// The last cycle or probe reached the server.
    pub(crate) reachable: bool,
    /// The engine waits for the app's credentials.
    pub(crate) credentials_required: bool,
}

/// Whether a unit asked for `manual`ly (or not) runs on `connection`.
pub(crate) fn verdict(connection: Connection, manual: bool) -> Verdict {
    if !connection.app_online {
        Verdict::RefuseOffline
    } else if connection.credentials_required {
        Verdict::RefuseCredentials
    } else if !connection.reachable && !manual {
        Verdict::Skip
    } else {
        Verdict::Run
    }
}

/// A unit waiting to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Queued {
    /// The unit's name.
    pub(crate) unit: String,
    /// Asked for by the app (`sync_now`), as opposed to an automatic trigger.
    pub(crate) manual: bool,
}

/// What the retry timer does when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Retry {
    /// The server was unreachable: probe it.
    Probe,
    /// Run the unit again.
    Rerun(String),
}

/// The scheduling state: see the module's documentation.
#[derive(Debug)]
pub(crate) struct Scheduler {
    debounce: Duration,
    backoff: Backoff,
    queue: VecDeque<Queued>,
    /// When the debounced cycle after local writes is due.
    write_deadline: Option<Instant>,
    /// When the status counts are next read after local writes.
    counts_due: Option<Instant>,
    retry: Option<(Instant, Retry)>,
    /// Failures in a row, for the backoff.
    failures: u32,
}

impl Scheduler {
    /// A scheduler that waits `debounce` after the last local write and backs off
    /// failures by `backoff`.
    pub(crate) fn new(debounce: Duration, backoff: Backoff) -> Self {
        Self {
            debounce,
            backoff,
            queue: VecDeque::new(),
            write_deadline: None,
            counts_due: None,
            retry: None,
            failures: 0,
        }
    }

    /// Takes `event` into account at `now`; returns the queued units it discarded,
    /// whose waiters the driver answers with `Error::Discarded`.
    pub(crate) fn on(&mut self, event: Event, now: Instant, rng: &mut impl Rng) -> Vec<String> {
        let mut discarded = Vec::new();
        match event {
            Event::Trigger { unit, manual, discard_queued } => {
                if discard_queued {
                    discarded.extend(self.queue.drain(..).map(|q| q.unit));
                }
                self.enqueue(unit, manual);
            }
            Event::Reconnected => {
                self.failures = 0;
                self.retry = None;
                self.enqueue(ALL_UNIT.to_owned(), false);
            }
            Event::LocalWrite { at } => {
                // The quiet period counts from the write itself, not from when the
                // driver got to it (it may have been busy with a cycle).
                self.write_deadline = Some(at + self.debounce);
                self.counts_due.get_or_insert(now + COUNTS_THROTTLE);
            }
            Event::IntervalTick => self.enqueue(ALL_UNIT.to_owned(), false),
            // What another process queued is pushed here: it may not be syncing itself.
            Event::ChangedElsewhere { pending } => {
                if pending > 0 {
                    self.enqueue(PUSH_UNIT.to_owned(), false);
                }
            }
            Event::CycleFinished { unit, outcome } => match outcome {
                CycleOutcome::Synced => {
                    self.failures = 0;
                    self.retry = None;
                }
                CycleOutcome::Unreachable => self.back_off(Retry::Probe, now, rng),
                // Not a failure of this device: no backoff step, just the lease's lapse.
                CycleOutcome::SyncedElsewhere { wait } => {
                    self.retry = Some((now + wait + LEASE_MARGIN, Retry::Rerun(unit)));
                }
                CycleOutcome::Retryable => self.back_off(Retry::Rerun(unit), now, rng),
                CycleOutcome::Stopped => {}
            },
            Event::ProbeFinished { reachable: true } => self.enqueue(ALL_UNIT.to_owned(), false),
            Event::ProbeFinished { reachable: false } => self.back_off(Retry::Probe, now, rng),
        }
        discarded
    }

    /// Fires every deadline that has passed at `now`. A probe is only asked for while
    /// the app is online; offline, probing waits for the app's `Reconnected`.
    pub(crate) fn due(&mut self, now: Instant, app_online: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.counts_due.is_some_and(|at| at <= now) {
            self.counts_due = None;
            actions.push(Action::RefreshCounts);
        }
        if self.write_deadline.is_some_and(|at| at <= now) {
            self.write_deadline = None;
            self.enqueue(ALL_UNIT.to_owned(), false);
        }
        if self.retry.as_ref().is_some_and(|(at, _)| *at <= now) {
            match self.retry.take().map(|(_, retry)| retry) {
                Some(Retry::Rerun(unit)) => self.enqueue(unit, false),
                Some(Retry::Probe) if app_online => actions.push(Action::Probe),
                Some(Retry::Probe) | None => {}
            }
        }
        actions
    }

    /// The earliest deadline still to come: the driver sleeps until then.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [self.counts_due, self.write_deadline, self.retry.as_ref().map(|(at, _)| *at)].into_iter().flatten().min()
    }

    /// The next unit to run, in the order asked for.
    pub(crate) fn next(&mut self) -> Option<Queued> {
        self.queue.pop_front()
    }

    /// Queues `unit` unless it already waits: any number of triggers while a cycle runs
    /// make one follow-up (manual if any of them was).
    fn enqueue(&mut self, unit: String, manual: bool) {
        if let Some(queued) = self.queue.iter_mut().find(|q| q.unit == unit) {
            queued.manual |= manual;
            return;
        }
        self.queue.push_back(Queued { unit, manual });
    }

    fn back_off(&mut self, retry: Retry, now: Instant, rng: &mut impl Rng) {
        self.failures = self.failures.saturating_add(1);
        self.retry = Some((now + self.backoff.delay(self.failures, rng), retry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MS: Duration = Duration::from_millis(1);

    /// Backoff without jitter, so that every delay is its ceiling: 1 s, 2 s, 4 s, 8 s.
    fn scheduler() -> Scheduler {
        let backoff =
            Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(8), multiplier: 2.0, jitter: 0.0 };
        Scheduler::new(200 * MS, backoff)
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn trigger(unit: &str, manual: bool) -> Event {
        Event::Trigger { unit: unit.into(), manual, discard_queued: false }
    }

    fn drain(s: &mut Scheduler) -> Vec<(String, bool)> {
        std::iter::from_fn(|| s.next()).map(|q| (q.unit, q.manual)).collect()
    }

    fn finished(unit: &str, outcome: CycleOutcome) -> Event {
        Event::CycleFinished { unit: unit.into(), outcome }
    }

    #[test]
    fn triggers_while_a_cycle_runs_make_one_follow_up_in_the_order_asked() {
        let (mut s, t0, mut r) = (scheduler(), Instant::now(), rng());
        s.on(trigger("all", false), t0, &mut r);
        assert_eq!(s.next().map(|q| q.unit), Some("all".into()), "the first runs");
        // While it runs: three more of the same, one of them manual, and another unit.
        s.on(trigger("all", false), t0, &mut r);
        s.on(trigger("pull_orders", false), t0, &mut r);
        s.on(trigger("all", true), t0, &mut r);
        s.on(trigger("all", false), t0, &mut r);
        assert_eq!(drain(&mut s), [("all".into(), true), ("pull_orders".into(), false)]);
    }

    #[test]
    fn discard_queued_drops_what_waits_and_keeps_the_new_unit() {
        let (mut s, t0, mut r) = (scheduler(), Instant::now(), rng());
        s.on(trigger("push_orders", true), t0, &mut r);
        s.next(); // running
        s.on(trigger("pull_orders", true), t0, &mut r);
        s.on(trigger("all", false), t0, &mut r);
        let discarded = s.on(Event::Trigger { unit: "all".into(), manual: true, discard_queued: true }, t0, &mut r);
        assert_eq!(discarded, ["pull_orders", "all"]);
        assert_eq!(drain(&mut s), [("all".into(), true)]);
    }

    #[test]
    fn local_writes_are_debounced_from_the_last_write_and_counts_throttled_from_the_first() {
        let (mut s, t0, mut r) = (scheduler(), Instant::now(), rng());
        for i in 0..5 {
            let at = t0 + 50 * MS * i;
            assert!(s.on(Event::LocalWrite { at }, at, &mut r).is_empty());
        }
        let last = t0 + 200 * MS;
        assert_eq!(s.next_deadline(), Some(t0 + COUNTS_THROTTLE), "the counts come first");
        assert_eq!(s.due(t0 + COUNTS_THROTTLE, true), [Action::RefreshCounts]);
        assert_eq!(s.next_deadline(), Some(last + 200 * MS), "the cycle waits for 200 ms of quiet");
        assert!(s.due(last + 199 * MS, true).is_empty());
        assert_eq!(drain(&mut s), []);
        assert!(s.due(last + 200 * MS, true).is_empty());
        assert_eq!(drain(&mut s), [("all".into(), false)]);
        assert_eq!(s.next_deadline(), None, "nothing more is due");
    }

    #[test]
    fn a_write_seen_late_still_counts_its_quiet_period_from_the_write() {
        let (mut s, t0, mut r) = (scheduler(), Instant::now(), rng());
        // The driver was busy for 150 ms when it learned of the write.
        s.on(Event::LocalWrite { at: t0 }, t0 + 150 * MS, &mut r);
        assert!(s.due(t0 + 199 * MS, true).is_empty());
        assert_eq!(s.due(t0 + 200 * MS, true), [Action::RefreshCounts], "counts: 150 ms + the throttle's 50");
        assert_eq!(drain(&mut s), [("all".into(), false)]);
    }

    #[test]
    fn an_unreachable_server_is_probed_with_growing_delays_until_it_answers() {
        let (mut s, t0, mut r) = (scheduler(), Instant::now(), rng());
        s.on(finished("all", CycleOutcome::Unreachable), t0, &mut r);
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..5 {
            let at = s.next_deadline().expect("a probe is scheduled");
            gaps.push(at - now);
            assert!(s.due(at - MS, true).is_empty(), "not before its time");
            assert_eq!(s.due(at, true), [Action::Probe]);
            now = at;
            s.on(Event::ProbeFinished { reachable: false }, now, &mut r);
        }
        let secs: Vec<_> = gaps.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 8], "exponential, capped at the maximum");
        assert_eq!(drain(&mut s), [], "nothing runs while unreachable");
        let at = s.next_deadline().unwrap();
        s.due(at, true);
        s.on(Event::ProbeFinished { reachable: true }, at, &mut r);
        assert_eq!(drain(&mut s), [("all".into(), false)], "the answer brings a full sync");
        s.on(finished("all", CycleOutcome::Synced), at, &mut r);
        s.on(finished("all", CycleOutcome::Unreachable), at, &mut r);
        assert_eq!(s.next_deadline(), Some(at + Duration::from_secs(1)), "a success starts the backoff over");
    }

    #[test]
    fn offline_the_probe_waits_for_the_app_and_reconnecting_forgets_the_backoff() {
        let (mut s, t0, mut r) = (scheduler(), Instant::now(), rng());
        s.on(finished("all", CycleOutcome::Unreachable), t0, &mut r);
        s.on(Event::ProbeFinished { reachable: false }, t0, &mut r);
        let at = s.next_deadline().unwrap();
        assert!(s.due(at, false).is_empty(), "no probe while the app is offline");
        assert_eq!(s.next_deadline(), None);
        s.on(Event::Reconnected, at, &mut r);
        assert_eq!(drain(&mut s), [("all".into(), false)]);
        s.on(finished("all", CycleOutcome::Unreachable), at, &mut r);
        assert_eq!(s.next_deadline(), Some(at + Duration::from_secs(1)), "the backoff started over");
    }

    #[test]
    fn transient_failures_rerun_the_same_unit_and_a_lease_held_elsewhere_waits_for_its_lapse() {
        let (mut s, t0, mut r) = (scheduler(), Instant::now(), rng());
        s.on(finished("push_orders", CycleOutcome::Retryable), t0, &mut r);
        s.due(t0 + Duration::from_secs(1), true);
        assert_eq!(drain(&mut s), [("push_orders".into(), false)]);
        let t1 = t0 + Duration::from_secs(1);
        s.on(finished("push_orders", CycleOutcome::Retryable), t1, &mut r);
        assert_eq!(s.next_deadline(), Some(t1 + Duration::from_secs(2)), "the second failure waits longer");

        let (mut s, t0) = (scheduler(), Instant::now());
        let wait = Duration::from_secs(30);
        s.on(finished("all", CycleOutcome::SyncedElsewhere { wait }), t0, &mut r);
        assert_eq!(s.next_deadline(), Some(t0 + wait + LEASE_MARGIN));
        s.due(t0 + wait + LEASE_MARGIN, true);
        assert_eq!(drain(&mut s), [("all".into(), false)]);
        s.on(finished("all", CycleOutcome::Retryable), t0, &mut r);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(1)), "the lease was no failure of ours");
    }

    #[test]
    fn a_stopped_cycle_schedules_nothing() {
        let (mut s, t0, mut r) = (scheduler(), Instant::now(), rng());
        assert!(s.on(finished("all", CycleOutcome::Stopped), t0, &mut r).is_empty());
        assert_eq!((s.next_deadline(), drain(&mut s)), (None, vec![]));
    }

    #[test]
    fn the_interval_and_other_processes_queue_units() {
        let (mut s, t0, mut r) = (scheduler(), Instant::now(), rng());
        s.on(Event::ChangedElsewhere { pending: 0 }, t0, &mut r);
        assert_eq!(drain(&mut s), [], "nothing to push");
        s.on(Event::ChangedElsewhere { pending: 3 }, t0, &mut r);
        s.on(Event::IntervalTick, t0, &mut r);
        assert_eq!(drain(&mut s), [(PUSH_UNIT.into(), false), ("all".into(), false)]);
    }

    #[test]
    fn what_runs_on_which_connection() {
        let on =
            |app_online, reachable, credentials_required| Connection { app_online, reachable, credentials_required };
        let table = [
            (on(true, true, false), false, Verdict::Run),
            (on(true, true, false), true, Verdict::Run),
            (on(true, false, false), false, Verdict::Skip),
            (on(true, false, false), true, Verdict::Run),
            (on(false, true, false), true, Verdict::RefuseOffline),
            (on(false, false, true), false, Verdict::RefuseOffline),
            (on(true, true, true), true, Verdict::RefuseCredentials),
            (on(true, false, true), false, Verdict::RefuseCredentials),
        ];
        for (connection, manual, expected) in table {
            assert_eq!(verdict(connection, manual), expected, "{connection:?}, manual {manual}");
        }
    }
}

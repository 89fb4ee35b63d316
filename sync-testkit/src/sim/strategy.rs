//! proptest strategies for histories: 2 to 5 clients, the records they touch, and
//! operation sequences with faults and crashes, shrinking towards a short story.

use std::ops::{Range, RangeInclusive};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;

use super::app::{SimApp, Tracked};
use super::history::{History, Step};
use crate::Fault;

/// What generated histories may contain.
#[derive(Debug, Clone)]
pub struct HistoryOptions {
    /// How many clients (the issue's range: 2 to 5).
    pub clients: RangeInclusive<usize>,
    /// How many distinct record ids per collection (`r0`, `r1`, ...): few ids make
    /// clients meet on the same records.
    pub records: usize,
    /// How many steps.
    pub steps: Range<usize>,
    /// How often each kind of step comes (0: never).
    pub weights: StepWeights,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        Self { clients: 2..=5, records: 3, steps: 1..30, weights: StepWeights::default() }
    }
}

/// The relative frequency of each kind of step; 0 leaves it out. Writes, deletes and
/// actions count per tracked collection (actions only when the app has handlers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepWeights {
    /// [`Step::Write`].
    pub write: u32,
    /// [`Step::Delete`].
    pub delete: u32,
    /// [`Step::Recreate`].
    pub recreate: u32,
    /// [`Step::Action`].
    pub action: u32,
    /// [`Step::Sync`].
    pub sync: u32,
    /// [`Step::Offline`] and, as often, [`Step::Online`].
    pub offline_online: u32,
    /// [`Step::Resolve`].
    pub resolve: u32,
    /// [`Step::Fault`], drawn from [`faults`].
    pub fault: u32,
    /// [`Step::Crash`], idle or after the 1st to 3rd request of a cycle.
    pub crash: u32,
    /// [`Step::PurgeTombstones`].
    pub purge: u32,
    /// [`Step::Subscribe`] and, half as often, [`Step::Unsubscribe`] (on-demand
    /// collections only).
    pub subscribe: u32,
    /// [`Step::Evict`] (when a collection is on demand).
    pub evict: u32,
}

impl Default for StepWeights {
    fn default() -> Self {
        Self {
            write: 5,
            delete: 2,
            recreate: 2,
            action: 1,
            sync: 4,
            offline_online: 1,
            resolve: 1,
            fault: 3,
            crash: 1,
            purge: 1,
            subscribe: 4,
            evict: 2,
        }
    }
}

impl StepWeights {
    /// No faults, crashes or purges: only what the app's users do.
    pub fn calm() -> Self {
        Self { fault: 0, crash: 0, purge: 0, ..Self::default() }
    }
}

/// Every fault of the model, with small delays and cut-offs.
pub fn faults() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::DropRequest),
        Just(Fault::DropResponse),
        Just(Fault::Duplicate),
        (1u64..15).prop_map(Fault::Delay),
        Just(Fault::Reorder),
        (1u32..4).prop_map(Fault::CutOff),
        Just(Fault::ServerError),
        Just(Fault::Unauthorized),
    ]
}

/// The steps of one client among `clients`, over `tracked` collections and the app's
/// `actions`.
fn step(clients: usize, tracked: &[Tracked], actions: &[String], options: &HistoryOptions) -> BoxedStrategy<Step> {
    let client = 0..clients;
    let records = options.records.max(1);
    let record = (0..records).prop_map(|r| format!("r{r}"));
    let w = options.weights;
    let mut choices: Vec<(u32, BoxedStrategy<Step>)> = Vec::new();
    for t in tracked {
        let name = t.name.clone();
        let write = (client.clone(), record.clone(), t.data.clone())
            .prop_map(move |(client, record, data)| Step::Write { client, collection: name.clone(), record, data });
        choices.push((w.write, write.boxed()));
        let name = t.name.clone();
        let delete = (client.clone(), record.clone()).prop_map(move |(client, record)| Step::Delete {
            client,
            collection: name.clone(),
            record,
        });
        choices.push((w.delete, delete.boxed()));
        let name = t.name.clone();
        let recreate = (client.clone(), record.clone(), t.data.clone(), proptest::bool::ANY).prop_map(
            move |(client, record, data, sync_between)| Step::Recreate {
                client,
                collection: name.clone(),
                record,
                data,
                sync_between,
            },
        );
        choices.push((w.recreate, recreate.boxed()));
        if let Some((_, values)) = &t.subscribe_by
            && !values.is_empty()
        {
            let name = t.name.clone();
            let subscribe = (client.clone(), proptest::sample::select(values.clone()))
                .prop_map(move |(client, value)| Step::Subscribe { client, collection: name.clone(), value });
            choices.push((w.subscribe, subscribe.boxed()));
            let name = t.name.clone();
            let unsubscribe = (client.clone(), proptest::sample::select(values.clone()))
                .prop_map(move |(client, value)| Step::Unsubscribe { client, collection: name.clone(), value });
            choices.push((w.subscribe / 2, unsubscribe.boxed()));
            choices.push((w.evict, client.clone().prop_map(|client| Step::Evict { client }).boxed()));
        }
        if !actions.is_empty() {
            let name = t.name.clone();
            let action = (client.clone(), record.clone(), proptest::sample::select(actions.to_vec())).prop_map(
                move |(client, record, action)| Step::Action { client, collection: name.clone(), record, name: action },
            );
            choices.push((w.action, action.boxed()));
        }
    }
    choices.push((w.sync, client.clone().prop_map(|client| Step::Sync { client }).boxed()));
    choices.push((w.offline_online, client.clone().prop_map(|client| Step::Offline { client }).boxed()));
    choices.push((w.offline_online, client.clone().prop_map(|client| Step::Online { client }).boxed()));
    choices.push((w.resolve, client.clone().prop_map(|client| Step::Resolve { client }).boxed()));
    let fault = (client.clone(), faults()).prop_map(|(client, fault)| Step::Fault { client, fault });
    choices.push((w.fault, fault.boxed()));
    let crash = (client.clone(), 0u32..4).prop_map(|(client, after_request)| Step::Crash { client, after_request });
    choices.push((w.crash, crash.boxed()));
    choices.push((w.purge, Just(Step::PurgeTombstones).boxed()));
    choices.retain(|(weight, _)| *weight > 0);
    if choices.is_empty() {
        choices.push((1, client.prop_map(|client| Step::Sync { client }).boxed()));
    }
    Union::new_weighted(choices).boxed()
}

/// Histories of `app` as `options` describe them. Shrinking removes steps and clients'
/// differences first, so a failure reads as a short story.
///
/// ```
/// # fn run(app: &dyn sync_testkit::sim::SimApp) {
/// use sync_testkit::sim::{HistoryOptions, histories};
/// let strategy = histories(app, &HistoryOptions { steps: 1..10, ..HistoryOptions::default() });
/// # let _ = strategy;
/// # }
/// ```
pub fn histories(app: &dyn SimApp, options: &HistoryOptions) -> BoxedStrategy<History> {
    let tracked = app.tracked();
    let actions: Vec<String> = app.actions().into_iter().map(|(name, _)| name).collect();
    let options = options.clone();
    let clients = options.clients.clone();
    let steps = options.steps.clone();
    clients
        .prop_flat_map(move |clients| {
            let clients = clients.max(1);
            vec(step(clients, &tracked, &actions, &options), steps.clone())
                .prop_map(move |steps| History { clients, steps })
        })
        .boxed()
}

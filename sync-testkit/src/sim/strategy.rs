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
    /// Whether steps may inject network and server faults.
    pub faults: bool,
    /// Whether steps may crash clients (idle or inside a cycle).
    pub crashes: bool,
    /// Whether the server may purge its tombstones (clients then meet `reset`).
    pub purges: bool,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        Self { clients: 2..=5, records: 3, steps: 1..30, faults: true, crashes: true, purges: true }
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
    let mut choices: Vec<(u32, BoxedStrategy<Step>)> = Vec::new();
    for t in tracked {
        let name = t.name.clone();
        let write = (client.clone(), record.clone(), t.data.clone())
            .prop_map(move |(client, record, data)| Step::Write { client, collection: name.clone(), record, data });
        choices.push((5, write.boxed()));
        let name = t.name.clone();
        let delete = (client.clone(), record.clone()).prop_map(move |(client, record)| Step::Delete {
            client,
            collection: name.clone(),
            record,
        });
        choices.push((1, delete.boxed()));
        if !actions.is_empty() {
            let name = t.name.clone();
            let action = (client.clone(), record.clone(), proptest::sample::select(actions.to_vec())).prop_map(
                move |(client, record, action)| Step::Action { client, collection: name.clone(), record, name: action },
            );
            choices.push((1, action.boxed()));
        }
    }
    choices.push((4, client.clone().prop_map(|client| Step::Sync { client }).boxed()));
    choices.push((1, client.clone().prop_map(|client| Step::Offline { client }).boxed()));
    choices.push((1, client.clone().prop_map(|client| Step::Online { client }).boxed()));
    choices.push((1, client.clone().prop_map(|client| Step::Resolve { client }).boxed()));
    if options.faults {
        let fault = (client.clone(), faults()).prop_map(|(client, fault)| Step::Fault { client, fault });
        choices.push((3, fault.boxed()));
    }
    if options.crashes {
        let crash = (client, 0u32..4).prop_map(|(client, after_request)| Step::Crash { client, after_request });
        choices.push((1, crash.boxed()));
    }
    if options.purges {
        choices.push((1, Just(Step::PurgeTombstones).boxed()));
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

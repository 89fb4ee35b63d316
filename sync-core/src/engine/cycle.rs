//! One sync cycle of one unit: push the outbox in order, then pull until `has_more` is false.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::Utc;
use std::convert::Infallible;
use tokio::sync::mpsc;

use serde_json::{Map, Value};
use tracing::Instrument;
use tracing::field::Empty;

use super::Shared;
use super::builder::UnitSpec;
use crate::error::Error;
use crate::ids::{CollectionName, Cursor, RecordId};
use crate::lease::LeaseOutcome;
use crate::pattern::{LocalRecordState, PullAction, PullMode};
use crate::protocol::{
    Change, ErrorCode, ErrorDetail, MutationBody, MutationOutcome, Op, PullRequest, PullResponse, PushRequest,
    ServerRecord, SubscriptionPage, SubscriptionPull, WireMutation,
};
use crate::status::{Origin, Phase, SyncEvent, SyncReport};
use crate::store::{CollectionPage, OutboxEntry, SubscriptionPart};
use crate::subscription::{SubscriptionId, SubscriptionState, SubscriptionStatus};

/// Runs one cycle and keeps the status and events true whatever the outcome.
///
/// The cycle holds the store's sync lease (see [`crate::lease`]): one process of the
/// device syncs a store that several open at a time. When another holds it, the cycle
/// fails at once with [`Error::SyncedElsewhere`] (and the driver tries again when that
/// lease lapses). The lease is renewed while the
/// cycle runs and given back before the final status is published.
pub(super) async fn run(shared: &Arc<Shared>, unit: &UnitSpec) -> Result<SyncReport, Error> {
    shared.emit(SyncEvent::CycleStarted { unit: unit.name.clone() });
    let ttl = shared.options.sync_lease;
    let holder = shared.lease_holder.as_str();
    let refused = match shared.store.acquire_sync_lease(holder, Utc::now(), ttl).await {
        Ok(LeaseOutcome::Held) => None,
        Ok(LeaseOutcome::HeldElsewhere { until }) => Some(Error::SyncedElsewhere { until }),
        Err(error) => Some(error),
    };
    if let Some(error) = refused {
        shared.emit(SyncEvent::CycleFailed {
            unit: unit.name.clone(),
            error: error.to_string(),
            retryable: error.is_retryable(),
        });
        return Err(error);
    }
    let push_total = shared.store.counts().await.map(|c| c.pending).unwrap_or(0);
    shared.status.send_modify(|s| {
        s.phase = Phase::Syncing { unit: unit.name.clone(), pushed: 0, push_total, pulled: 0 };
    });
    let mut cycle = Cycle {
        shared,
        unit,
        report: SyncReport { unit: unit.name.clone(), ..SyncReport::default() },
        push_total,
        answered: 0,
    };
    // Every cycle is a span (push and pull requests are spans inside it, each with the
    // request id the server logs), closed with its counts, duration and outcome.
    let span = tracing::info_span!(
        "sync_cycle",
        unit = %unit.name,
        pushed = Empty,
        pulled = Empty,
        conflicts = Empty,
        rejected = Empty,
        outcome = Empty,
        duration_ms = Empty,
    );
    let started = std::time::Instant::now();
    let result = tokio::select! {
        result = cycle.run().instrument(span.clone()) => result,
        never = renew_lease(&*shared.store, holder, ttl) => match never {},
    };
    match shared.cache.settle(shared).await {
        Ok(evicted) => {
            for (collection, id) in evicted {
                shared.record_changed(&collection, &id, Origin::Remote);
            }
        }
        Err(e) => tracing::debug!(error = %e, "the cache was not measured; the next sync measures it"),
    }
    if let Err(e) = shared.store.release_sync_lease(holder).await {
        tracing::debug!(error = %e, "the sync lease could not be given back; it lapses by itself");
    }
    span.record("pushed", cycle.report.pushed);
    span.record("pulled", cycle.report.pulled);
    span.record("conflicts", cycle.report.conflicts);
    span.record("rejected", cycle.report.rejected);
    span.record("outcome", outcome(&result));
    span.record("duration_ms", millis(started));
    shared.refresh_counts().await;
    let now = Utc::now();
    shared.status.send_modify(|s| {
        s.phase = Phase::Idle;
        match &result {
            Ok(()) => {
                s.last_success = Some(now);
                s.last_error = None;
                if unit.direction.pulls() {
                    for c in &unit.collections {
                        s.last_pull.insert(c.clone(), now);
                    }
                }
            }
            Err(e) => s.last_error = Some(e.to_string()),
        }
    });
    match result {
        Ok(()) => {
            shared.emit(SyncEvent::CycleCompleted { report: cycle.report.clone() });
            Ok(cycle.report)
        }
        Err(error) => {
            shared.emit(SyncEvent::CycleFailed {
                unit: unit.name.clone(),
                error: error.to_string(),
                retryable: error.is_retryable(),
            });
            Err(error)
        }
    }
}

struct Cycle<'a> {
    shared: &'a Arc<Shared>,
    unit: &'a UnitSpec,
    report: SyncReport,
    push_total: u64,
    answered: u64,
}

impl Cycle<'_> {
    async fn run(&mut self) -> Result<(), Error> {
        if self.unit.direction.pushes() {
            self.push().await?;
        }
        if self.unit.direction.pulls() {
            self.pull().await?;
        }
        Ok(())
    }

    fn progress(&self) {
        let (pushed, pulled) = (self.answered, self.report.pulled);
        let push_total = self.push_total.max(pushed);
        self.shared.status.send_modify(|s| {
            s.phase = Phase::Syncing { unit: self.unit.name.clone(), pushed, push_total, pulled };
        });
        self.shared.emit(SyncEvent::CycleProgress { unit: self.unit.name.clone(), pushed, push_total, pulled });
    }

    /// Pushes batches until no claimable mutation is left. Each round sends at most one
    /// mutation per record, so per-record order holds whatever the server does in a batch.
    async fn push(&mut self) -> Result<(), Error> {
        let mut batch_limit = self.shared.options.push_batch;
        loop {
            let batch =
                self.shared.store.claim_push_batch(&self.unit.collections, batch_limit, &self.shared.relations).await?;
            if batch.is_empty() {
                return Ok(());
            }
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut sent = Vec::with_capacity(batch.len());
            let mut wire = Vec::with_capacity(batch.len());
            for entry in batch {
                match self.to_wire(&entry) {
                    Ok(mutation) => {
                        wire.push(mutation);
                        sent.push(entry);
                    }
                    // A record the mapping refuses is parked like a rejection: it can never
                    // be sent, and it must not block the others.
                    Err(error) => outcomes.push((
                        entry,
                        MutationOutcome::Rejected {
                            error: crate::protocol::ErrorDetail::new(ErrorCode::MappingFailed, error.to_string()),
                        },
                    )),
                }
            }
            let span = tracing::debug_span!(
                "push",
                mutations = wire.len(),
                request_id = Empty,
                applied = Empty,
                conflicts = Empty,
                rejected = Empty,
                outcome = Empty,
                duration_ms = Empty,
            );
            if !wire.is_empty() {
                let request = PushRequest { client_id: self.shared.client_id.clone(), mutations: wire };
                let started = std::time::Instant::now();
                let answer = self.shared.transport.push(&request).instrument(span.clone()).await;
                span.record("outcome", outcome(&answer));
                span.record("duration_ms", millis(started));
                let response = match answer {
                    // The server's limits are smaller than our batch (body size or count):
                    // the same entries go again in halves; nothing was applied.
                    Err(Error::Rejected { status, code, .. })
                        if batch_limit > 1 && (status == 413 || code == ErrorCode::BatchTooLarge) =>
                    {
                        batch_limit /= 2;
                        continue;
                    }
                    other => other?,
                };
                if response.results.len() != sent.len() {
                    return Err(Error::malformed(format!(
                        "push answered {} results for {} mutations",
                        response.results.len(),
                        sent.len()
                    )));
                }
                for (entry, result) in sent.into_iter().zip(response.results) {
                    if result.mutation_id != entry.mutation_id {
                        return Err(Error::malformed(format!(
                            "push result for {} where {} was expected",
                            result.mutation_id, entry.mutation_id
                        )));
                    }
                    let outcome = self.localize_outcome(&entry, result.outcome)?;
                    outcomes.push((entry, outcome));
                }
            }
            // What this device wrote to on-demand collections: once acknowledged, the
            // pull after it decides whether a subscription holds it (`sweep_unheld`).
            let on_demand = |c: &CollectionName| self.shared.collections.get(c).is_some_and(|e| e.on_demand);
            self.shared.subscriptions.note_written(
                outcomes
                    .iter()
                    .filter(|(entry, _)| on_demand(&entry.collection))
                    .filter_map(|(entry, outcome)| {
                        let id = match outcome {
                            MutationOutcome::Applied { record_id: Some(server_id), .. } => Some(server_id.clone()),
                            _ => entry.record_id.clone(),
                        };
                        Some((entry.collection.clone(), id?))
                    })
                    .collect(),
            );
            let answered = outcomes.len() as u64;
            let applied = self.shared.store.record_push_results(outcomes, &self.shared.relations, Utc::now()).await?;
            span.record("applied", applied.applied);
            span.record("conflicts", applied.conflicts.len());
            span.record("rejected", applied.rejected.len());
            for assigned in applied.renamed {
                self.shared.record_changed(&assigned.collection, &assigned.server_id, Origin::Remote);
                self.shared.emit(SyncEvent::RecordIdAssigned {
                    collection: assigned.collection,
                    local_id: assigned.local_id,
                    server_id: assigned.server_id,
                });
            }
            for (collection, id) in &applied.repointed {
                self.shared.record_changed(collection, id, Origin::Remote);
            }
            self.report.pushed += applied.applied as u64;
            self.report.rejected += applied.rejected.len() as u64;
            for (entry, code, message) in applied.rejected {
                self.shared.emit(SyncEvent::MutationRejected {
                    mutation_id: entry.mutation_id,
                    collection: entry.collection,
                    record_id: entry.record_id,
                    code,
                    message,
                });
            }
            self.conflicts_found(applied.conflicts).await?;
            self.answered += answered;
            // The counts are read once at the end of the cycle: a `count(*)` per batch
            // costs more than the progress (pushed / push_total) already tells.
            self.progress();
        }
    }

    fn to_wire(&self, entry: &OutboxEntry) -> Result<WireMutation, Error> {
        let collection = self.shared.collection(entry.collection.as_str())?;
        let mapping_error = |message: String| Error::Mapping { collection: entry.collection.clone(), message };
        let body = match (entry.op, &entry.data) {
            (Op::Upsert, Some(local)) => match collection.mapping.to_server(local).map_err(|e| mapping_error(e.0))? {
                Value::Object(data) => MutationBody::Upsert { data },
                other => {
                    return Err(mapping_error(format!("the server's shape of a record is an object, not {other}")));
                }
            },
            (Op::Upsert, None) => return Err(corrupt_entry(entry, "an upsert without data")),
            (Op::Delete, _) => MutationBody::Delete,
            (Op::Action, args) => MutationBody::Action {
                name: entry.action.clone().ok_or_else(|| corrupt_entry(entry, "an action without a name"))?,
                args: match args {
                    Some(Value::Object(args)) => args.clone(),
                    None | Some(Value::Null) => Map::new(),
                    Some(_) => return Err(corrupt_entry(entry, "an action's args that are not an object")),
                },
            },
        };
        Ok(WireMutation {
            mutation_id: entry.mutation_id,
            collection: entry.collection.clone(),
            record_id: entry.record_id.clone(),
            body,
            base_version: entry.base_version,
            owner: None,
        })
    }

    /// Brings the server's side of a conflict answer into the local shape.
    fn localize_outcome(&self, entry: &OutboxEntry, outcome: MutationOutcome) -> Result<MutationOutcome, Error> {
        if let MutationOutcome::Applied { record_id: Some(server_id), .. } = &outcome {
            // Only a create in a collection whose ids the server assigns may come back
            // under another id; anything else would silently fork the record.
            let renamed = entry.record_id.as_ref() != Some(server_id);
            if renamed && (entry.op != Op::Upsert || !self.shared.relations.server_assigns_ids(&entry.collection)) {
                return Err(Error::malformed(format!(
                    "push answered mutation {} of {} with record id {server_id}, but this collection's ids are not \
                     assigned by the server",
                    entry.mutation_id, entry.collection
                )));
            }
        }
        let MutationOutcome::Conflict { server: Some(server) } = outcome else {
            return Ok(outcome);
        };
        let data = match (server.deleted, server.data) {
            (true, _) => None,
            (false, Some(data)) => Some(to_local(self.shared, &entry.collection, entry.record_id.as_ref(), data)?),
            (false, None) => return Err(Error::malformed("a conflict answer's live server record has no data")),
        };
        Ok(MutationOutcome::Conflict {
            server: Some(ServerRecord { version: server.version, deleted: server.deleted, data }),
        })
    }

    async fn conflicts_found(&mut self, conflicts: Vec<(CollectionName, RecordId)>) -> Result<(), Error> {
        self.report.conflicts += conflicts.len() as u64;
        for (collection, id) in conflicts {
            self.shared.emit(SyncEvent::ConflictDetected { collection: collection.clone(), id: id.clone() });
            let Some(conflict) = self.shared.store.conflict(&collection, &id).await? else {
                continue;
            };
            let entry = self.shared.collection(collection.as_str())?;
            let resolution = entry.pattern.resolve(&conflict);
            self.shared.apply_resolution(&collection, &id, resolution).await?;
        }
        Ok(())
    }

    /// Pulls every collection of the unit from its cursor until the server has no more.
    /// A fetcher task runs ahead of the writer: it asks for the next page as soon as the
    /// current one has arrived (the cursors come from the answer, not from the store),
    /// checks it and maps it to the local shape, while this task writes the previous
    /// page. Network, JSON and disk work on both cores at once; memory holds at most
    /// three pages (one written, one queued, one being fetched). Collections being
    /// replaced (read-only pattern, or `reset`) are staged and swapped in at the end.
    async fn pull(&mut self) -> Result<(), Error> {
        let mut cursors: BTreeMap<CollectionName, Option<Cursor>> = BTreeMap::new();
        let mut replacing = BTreeSet::new();
        for c in &self.unit.collections {
            let entry = self.shared.collection(c.as_str())?;
            if entry.on_demand {
                // Pulled through its subscriptions only.
                continue;
            }
            if entry.pattern.pull_mode() == PullMode::Replace {
                // The whole collection, every time: no cursor, staged, swapped at the end.
                cursors.insert(c.clone(), None);
                replacing.insert(c.clone());
            } else {
                let cursor = self.shared.store.cursor(c).await?;
                // Never pulled to the end, yet holding acknowledged records (pushed, and
                // the answers heard): the server may have deleted one and purged its
                // tombstone before this first download, so only a replacement, which
                // sweeps clean records the server no longer has, can converge. A fresh
                // device holds none, so its first download is not written twice.
                if cursor.is_none() && self.shared.store.holds_acknowledged(c).await? {
                    replacing.insert(c.clone());
                }
                cursors.insert(c.clone(), cursor);
            }
        }
        // A first download of a collection with declared indexes loads without them and
        // builds them once at the end (put back on failure too, and at the next start).
        let bulk: Vec<CollectionName> = cursors
            .iter()
            .filter(|(c, cursor)| cursor.is_none() && !replacing.contains(*c))
            .filter(|(c, _)| self.shared.collections.get(*c).is_some_and(|e| !e.indexes.is_empty()))
            .map(|(c, _)| c.clone())
            .collect();
        for c in &bulk {
            self.shared.store.suspend_indexes(c).await?;
        }
        let subscriptions = self.live_subscriptions().await?;
        let pulled = if cursors.is_empty() && subscriptions.is_empty() {
            Ok(())
        } else {
            self.pull_pages(cursors, replacing, subscriptions).await
        };
        for c in &bulk {
            let declared = self.shared.collections.get(c).map(|e| e.indexes.clone()).unwrap_or_default();
            let restored = self.shared.store.ensure_indexes(std::slice::from_ref(c), &declared).await;
            if pulled.is_ok() {
                restored?;
            } else if let Err(e) = restored {
                tracing::warn!(collection = %c, error = %e, "indexes not rebuilt after a failed download; the next start rebuilds them");
            }
        }
        pulled?;
        self.sweep_unheld().await
    }

    /// Lets go of the records of on-demand collections this device wrote and the server
    /// has acknowledged, when the pull that followed put them in no subscription: the
    /// device holds what its subscriptions cover, and such a record would otherwise
    /// stay, never updated again.
    async fn sweep_unheld(&mut self) -> Result<(), Error> {
        let records = self.shared.subscriptions.take_written(&self.unit.collections);
        if records.is_empty() {
            return Ok(());
        }
        match self.shared.store.let_go_unheld(&records).await {
            Ok(dropped) => {
                for (collection, id) in dropped {
                    self.shared.record_changed(&collection, &id, Origin::Remote);
                }
                Ok(())
            }
            Err(e) => {
                self.shared.subscriptions.note_written(records);
                Err(e)
            }
        }
    }

    /// The held and kept-synced subscriptions of this unit's collections, to pull, after
    /// forgetting those whose time to live has ended (no handle, not kept synced) and
    /// letting go of the records only they held.
    async fn live_subscriptions(&mut self) -> Result<BTreeMap<SubscriptionId, SubscriptionPull>, Error> {
        let now = Utc::now();
        let stored = self.shared.store.subscriptions().await?;
        let (live, expired): (Vec<_>, Vec<_>) =
            stored.into_iter().partition(|row| row.live_at(now) || self.shared.subscriptions.handles(&row.id) > 0);
        let expired: Vec<SubscriptionId> = expired.into_iter().map(|row| row.id).collect();
        for (collection, id) in self.shared.store.drop_subscriptions(&expired).await? {
            self.shared.record_changed(&collection, &id, Origin::Remote);
        }
        let mut pulls = BTreeMap::new();
        for row in live {
            // A released subscription keeps its records (until its time to live ends or
            // the budget evicts them) but is not pulled: held again, it catches up
            // from its cursor. Held and kept-synced ones are pulled.
            let pulled = row.active || row.keep_synced || self.shared.subscriptions.handles(&row.id) > 0;
            let ours = pulled
                && self.unit.collections.contains(&row.query.collection)
                && self.shared.collections.get(&row.query.collection).is_some_and(|e| e.on_demand);
            if ours {
                let synced_at = row.synced_at;
                let status = self.shared.subscriptions.status(&row.id, synced_at);
                if row.cursor.is_none() {
                    // A download begins: counted from nothing.
                    status.send_modify(|s| {
                        s.state = SubscriptionState::Syncing;
                        s.received = 0;
                        s.total = None;
                    });
                }
                pulls.insert(row.id, SubscriptionPull { query: row.query, cursor: row.cursor });
            }
        }
        Ok(pulls)
    }

    /// The page loop of [`Cycle::pull`].
    async fn pull_pages(
        &mut self,
        cursors: BTreeMap<CollectionName, Option<Cursor>>,
        replacing: BTreeSet<CollectionName>,
        subscriptions: BTreeMap<SubscriptionId, SubscriptionPull>,
    ) -> Result<(), Error> {
        let (pages_tx, mut pages_rx) = mpsc::channel(1);
        let fetch = fetch_pages(Arc::clone(self.shared), cursors, replacing, subscriptions, pages_tx);
        let fetcher = AbortOnDrop(tokio::spawn(fetch.instrument(tracing::Span::current())));
        while let Some(fetched) = pages_rx.recv().await {
            let collections = &self.shared.collections;
            let decide =
                |c: &CollectionName, local: Option<&LocalRecordState>, change: &Change| match collections.get(c) {
                    Some(entry) => entry.pattern.on_incoming(local, change),
                    None => PullAction::Skip,
                };
            let applied = match fetched? {
                Fetched::Page(pages, progress) => {
                    self.report.pages += 1;
                    let mut applied = self.shared.store.apply_pull_page(pages, &decide, Utc::now()).await?;
                    if !progress.is_empty() {
                        // What subscriptions bring counts against the cache budget; an
                        // eviction after the page keeps the store within a page of it.
                        self.shared.cache.received(self.shared, progress.iter().map(SubscriptionProgress::bytes).sum());
                        applied.changed.extend(self.shared.cache.keep_within(self.shared).await?);
                    }
                    self.subscriptions_progressed(progress);
                    applied
                }
                Fetched::Replaced(collection, cursor) => {
                    self.shared.store.finish_replacement(&collection, cursor, &decide, Utc::now()).await?
                }
            };
            self.report.pulled += applied.changed.len() as u64;
            for (collection, id) in &applied.changed {
                self.shared.record_changed(collection, id, Origin::Remote);
            }
            self.conflicts_found(applied.conflicts).await?;
            self.progress();
        }
        drop(fetcher);
        Ok(())
    }
}

impl Cycle<'_> {
    /// Shows the subscriptions' progress once their page is stored.
    fn subscriptions_progressed(&self, progress: Vec<SubscriptionProgress>) {
        let known = &self.shared.subscriptions;
        for p in progress {
            match p {
                SubscriptionProgress::Page { id, received, total, finished, .. } => {
                    known.status(&id, None).send_modify(|s| {
                        if matches!(s.state, SubscriptionState::Syncing) {
                            s.received += received;
                            s.total = total.or(s.total);
                        }
                        if finished {
                            s.state = SubscriptionState::Synced { at: Utc::now() };
                        }
                    });
                }
                SubscriptionProgress::Refused { id, error } => {
                    known.status(&id, None).send_modify(|s| s.state = SubscriptionStatus::refused(&error));
                }
            }
        }
    }
}

/// What a page did for one subscription.
enum SubscriptionProgress {
    /// A page of it: `received` records with data (estimated at `bytes` once stored),
    /// the server's total on a first page, and whether its download ended.
    Page { id: SubscriptionId, received: u64, bytes: u64, total: Option<u64>, finished: bool },
    /// The server refused it (or does not serve subscriptions).
    Refused { id: SubscriptionId, error: ErrorDetail },
}

impl SubscriptionProgress {
    fn bytes(&self) -> u64 {
        match self {
            Self::Page { bytes, .. } => *bytes,
            Self::Refused { .. } => 0,
        }
    }
}

/// What the fetcher hands to the page writer.
enum Fetched {
    /// A pulled page, checked and mapped to the local shape, ready for the store, and
    /// what it did for each subscription in it.
    Page(Vec<CollectionPage>, Vec<SubscriptionProgress>),
    /// The pull is complete: swap in this collection's staged replacement, with its cursor.
    Replaced(CollectionName, Option<Cursor>),
}

/// Aborts the fetcher when the cycle ends early (an error, or the engine dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The fetcher: pulls pages until `has_more` is false and hands each over, checked;
/// then one `Replaced` for each collection that was being replaced. Stops at the first
/// error (handed over too) or when the writer stops listening.
///
/// `replacing` starts with the collections pulled whole; a `reset` from the server adds
/// its collection: from then on its pages are staged and its records stay whole until
/// the swap, so a resync never shows the app a half-empty collection.
async fn fetch_pages(
    shared: Arc<Shared>,
    mut cursors: BTreeMap<CollectionName, Option<Cursor>>,
    mut replacing: BTreeSet<CollectionName>,
    mut subscriptions: BTreeMap<SubscriptionId, SubscriptionPull>,
    pages: mpsc::Sender<Result<Fetched, Error>>,
) {
    let requested: BTreeSet<CollectionName> = cursors.keys().cloned().collect();
    // Collections whose staging area the next page must empty first.
    let mut fresh = replacing.clone();
    loop {
        let request = pull_request(&shared, &cursors, &subscriptions);
        let span = tracing::debug_span!(
            "pull",
            collections = request.collections.len(),
            request_id = Empty,
            records = Empty,
            has_more = Empty,
            outcome = Empty,
            duration_ms = Empty,
        );
        let started = std::time::Instant::now();
        let answer = shared.transport.pull(&request).instrument(span.clone()).await;
        span.record("outcome", outcome(&answer));
        span.record("duration_ms", millis(started));
        if let Ok(response) = &answer {
            span.record("records", response.changes.len());
            span.record("has_more", response.has_more);
        }
        let page = match answer {
            Ok(mut response) => {
                let parts = std::mem::take(&mut response.subscriptions);
                let mut progressed = false;
                let subs = check_subscriptions(&shared, &mut subscriptions, parts, &mut progressed);
                match subs {
                    Ok((sub_pages, progress)) => {
                        check_page(&shared, &requested, &mut cursors, &mut replacing, &mut fresh, response, progressed)
                            .map(|(mut page, more)| {
                                page.extend(sub_pages);
                                (page, progress, more)
                            })
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let (page, more) = match page {
            Ok((page, progress, more)) => (Ok(Fetched::Page(page, progress)), more),
            Err(e) => (Err(e), false),
        };
        let failed = page.is_err();
        if pages.send(page).await.is_err() || failed {
            return;
        }
        if !more {
            break;
        }
    }
    for collection in replacing {
        let cursor = cursors.get(&collection).cloned().flatten();
        if pages.send(Ok(Fetched::Replaced(collection, cursor))).await.is_err() {
            return;
        }
    }
}

/// Renews the sync lease every third of its time to live, for as long as it is polled.
async fn renew_lease(store: &dyn crate::store::LocalStore, holder: &str, ttl: std::time::Duration) -> Infallible {
    loop {
        tokio::time::sleep(ttl / 3).await;
        if let Err(e) = store.acquire_sync_lease(holder, Utc::now(), ttl).await {
            tracing::warn!(error = %e, "the sync lease could not be renewed");
        }
    }
}

/// A span's `outcome` field: `ok`, or the error's class.
fn outcome<T>(result: &Result<T, Error>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) if e.is_retryable() => "retryable_error",
        Err(_) => "error",
    }
}

fn millis(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn pull_request(
    shared: &Shared,
    cursors: &BTreeMap<CollectionName, Option<Cursor>>,
    subscriptions: &BTreeMap<SubscriptionId, SubscriptionPull>,
) -> PullRequest {
    PullRequest {
        client_id: shared.client_id.clone(),
        collections: cursors.clone(),
        limit: Some(i64::from(shared.options.pull_limit)),
        subscriptions: subscriptions.iter().map(|(id, pull)| (id.as_str().to_owned(), pull.clone())).collect(),
    }
}

/// Checks the subscriptions' parts of a pull answer: each asked-for subscription's
/// changes mapped to the local shape as a page of its own, its cursor advanced, and
/// those that ended (caught up, or refused) taken off the next request. A subscription
/// the answer does not mention was asked of a server that does not serve them.
fn check_subscriptions(
    shared: &Shared,
    asked: &mut BTreeMap<SubscriptionId, SubscriptionPull>,
    mut parts: BTreeMap<String, SubscriptionPage>,
    progressed: &mut bool,
) -> Result<(Vec<CollectionPage>, Vec<SubscriptionProgress>), Error> {
    for id in parts.keys() {
        if !asked.keys().any(|a| a.as_str() == id) {
            return Err(Error::malformed(format!("pull answered for subscription {id}, which was not asked for")));
        }
    }
    let (mut pages, mut progress, mut ended) = (Vec::new(), Vec::new(), Vec::new());
    for (id, pull) in asked.iter_mut() {
        let Some(part) = parts.remove(id.as_str()) else {
            let error = ErrorDetail {
                code: ErrorCode::UnknownCollection,
                message: "the server answered no part for this subscription: it does not serve subscriptions".into(),
            };
            progress.push(SubscriptionProgress::Refused { id: id.clone(), error });
            ended.push(id.clone());
            continue;
        };
        if let Some(error) = part.error {
            progress.push(SubscriptionProgress::Refused { id: id.clone(), error });
            ended.push(id.clone());
            continue;
        }
        let collection = pull.query.collection.clone();
        let only: BTreeSet<CollectionName> = BTreeSet::from([collection.clone()]);
        let mut changes = Vec::with_capacity(part.changes.len());
        for change in part.changes {
            changes.push(localize_change(shared, &only, change)?);
        }
        let Some(cursor) = part.cursor else {
            return Err(Error::malformed(format!("subscription {id} answered without a cursor")));
        };
        *progressed |= !changes.is_empty() || part.reset || pull.cursor.as_ref() != Some(&cursor);
        let received = changes.iter().filter(|c| !c.deleted).count() as u64;
        let bytes =
            changes.iter().filter_map(|c| Some(super::cache::estimated_size(&c.record_id, c.data.as_ref()?))).sum();
        let finished = !part.has_more;
        progress.push(SubscriptionProgress::Page { id: id.clone(), received, bytes, total: part.total, finished });
        pages.push(CollectionPage {
            collection,
            stage: false,
            reset: part.reset,
            changes,
            cursor: Some(cursor.clone()),
            subscription: Some(SubscriptionPart { id: id.clone(), finished }),
        });
        pull.cursor = Some(cursor);
        if finished {
            ended.push(id.clone());
        }
    }
    for id in ended {
        asked.remove(&id);
    }
    Ok((pages, progress))
}

/// Checks one pull answer, maps its changes to the local shape and advances `cursors`.
/// Returns the store's pages and whether more follow.
fn check_page(
    shared: &Shared,
    requested: &BTreeSet<CollectionName>,
    cursors: &mut BTreeMap<CollectionName, Option<Cursor>>,
    replacing: &mut BTreeSet<CollectionName>,
    fresh: &mut BTreeSet<CollectionName>,
    response: PullResponse,
    subscriptions_moved: bool,
) -> Result<(Vec<CollectionPage>, bool), Error> {
    for c in response.cursors.keys().chain(&response.reset) {
        if !requested.contains(c) {
            return Err(Error::malformed(format!("pull answered for collection {c}, which was not asked for")));
        }
    }
    let mut pages: BTreeMap<CollectionName, CollectionPage> = BTreeMap::new();
    let mut progressed = subscriptions_moved || !response.changes.is_empty() || !response.reset.is_empty();
    for change in response.changes {
        let change = localize_change(shared, requested, change)?;
        page_of(&mut pages, &change.collection).changes.push(change);
    }
    for c in &response.reset {
        // The cursor was too old: the full set follows, staged and swapped in at the end.
        page_of(&mut pages, c);
        cursors.insert(c.clone(), None);
        replacing.insert(c.clone());
        fresh.insert(c.clone());
    }
    for (c, cursor) in response.cursors {
        if cursors.get(&c).and_then(Option::as_ref) != Some(&cursor) {
            progressed = true;
        }
        page_of(&mut pages, &c).cursor = Some(cursor.clone());
        cursors.insert(c, Some(cursor));
    }
    if response.has_more && !progressed {
        return Err(Error::malformed("pull page has more to come but moved no cursor"));
    }
    for page in pages.values_mut() {
        page.stage = replacing.contains(&page.collection);
        page.reset = fresh.remove(&page.collection);
    }
    Ok((pages.into_values().collect(), response.has_more))
}

/// Checks a pulled change and brings its data into the local shape.
fn localize_change(shared: &Shared, requested: &BTreeSet<CollectionName>, change: Change) -> Result<Change, Error> {
    if !requested.contains(&change.collection) {
        return Err(Error::malformed(format!(
            "pull returned a change for collection {}, which was not asked for",
            change.collection
        )));
    }
    if change.version.0 == 0 {
        return Err(Error::malformed(format!("change {}/{} has version 0", change.collection, change.record_id)));
    }
    let Change { collection, record_id, version, deleted, removed, data, mutation_id } = change;
    if removed && !deleted {
        return Err(Error::malformed(format!("change {collection}/{record_id}: a removal must be deleted")));
    }
    let data = match (deleted, data) {
        (true, None) => None,
        (false, Some(data)) if data.is_object() => Some(to_local(shared, &collection, Some(&record_id), data)?),
        _ => {
            return Err(Error::malformed(format!(
                "change {collection}/{record_id}: data must be an object for a live record and null for a tombstone"
            )));
        }
    };
    Ok(Change { collection, record_id, version, deleted, removed, data, mutation_id })
}

/// Maps server data to the local shape and checks it fits the entity type.
fn to_local(
    shared: &Shared,
    collection: &CollectionName,
    id: Option<&RecordId>,
    data: serde_json::Value,
) -> Result<serde_json::Value, Error> {
    let entry = shared.collection(collection.as_str())?;
    let mut local =
        entry.mapping.to_local(data).map_err(|e| Error::Mapping { collection: collection.clone(), message: e.0 })?;
    // Where the server assigns ids, the record's id field follows the record id (the
    // server may still hold the id the record was created with in its data).
    if let (Some(field), Some(id)) = (entry.server_id_field(), id) {
        field.set(&mut local, serde_json::Value::String(id.to_string()));
    }
    (entry.validate)(&local).map_err(|message| Error::InvalidRecord {
        collection: collection.clone(),
        id: id.map(|i| i.to_string()).unwrap_or_default(),
        message,
    })?;
    Ok(local)
}

fn page_of<'p>(pages: &'p mut BTreeMap<CollectionName, CollectionPage>, c: &CollectionName) -> &'p mut CollectionPage {
    pages.entry(c.clone()).or_insert_with(|| CollectionPage {
        collection: c.clone(),
        stage: false,
        reset: false,
        changes: Vec::new(),
        cursor: None,
        subscription: None,
    })
}

/// An outbox entry that cannot be what its kind says: the store is damaged (a local
/// store writes each kind whole), so the push stops instead of sending a guess.
fn corrupt_entry(entry: &OutboxEntry, what: &str) -> Error {
    Error::Storage {
        kind: crate::error::StorageErrorKind::Corrupt,
        message: format!("outbox entry {} of {}: {what}", entry.mutation_id, entry.collection),
    }
}

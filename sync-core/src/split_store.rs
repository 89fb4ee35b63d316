//! `SplitStore`: the engine's store when some collections live on disk and others in
//! memory only. Each collection lives wholly in one of the two (records, queued writes,
//! conflicts, cursor), so every single-collection call goes to its store; calls over
//! several collections ask both and merge. The persistence rule puts every collection
//! the outbox can reference in the same store, so the claim order (parents first) and
//! a record's queue never straddle the two.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Error;
use crate::ids::{AccountId, ClientId, CollectionName, Cursor, MutationId, RecordId};
use crate::protocol::MutationOutcome;
use crate::store::{
    CollectionPage, Conflict, Counts, Evicted, IndexSpec, LocalStore, LocalWrite, OutboxEntry, PageApplied,
    PullDecider, PushApplied, Query, RecordData, Relations, StoreResolution, StoredRecord,
};
use crate::subscription::{SubscriptionId, SubscriptionRow};

pub(crate) struct SplitStore {
    pub(crate) disk: Arc<dyn LocalStore>,
    pub(crate) memory: Arc<dyn LocalStore>,
    pub(crate) in_memory: BTreeSet<CollectionName>,
}

impl SplitStore {
    fn of(&self, collection: &CollectionName) -> &Arc<dyn LocalStore> {
        if self.in_memory.contains(collection) { &self.memory } else { &self.disk }
    }

    fn both(&self) -> [&Arc<dyn LocalStore>; 2] {
        [&self.disk, &self.memory]
    }

    /// Splits items by the store of their collection: (disk, memory).
    fn split<T>(&self, items: Vec<T>, collection: impl Fn(&T) -> &CollectionName) -> (Vec<T>, Vec<T>) {
        items.into_iter().partition(|item| !self.in_memory.contains(collection(item)))
    }
}

#[async_trait]
impl LocalStore for SplitStore {
    async fn client_id(&self) -> Result<ClientId, Error> {
        // The persisted one: the device keeps its id across restarts.
        self.disk.client_id().await
    }

    async fn account(&self) -> Result<Option<AccountId>, Error> {
        self.disk.account().await
    }

    async fn bind_account(&self, account: &AccountId) -> Result<(), Error> {
        self.disk.bind_account(account).await?;
        self.memory.bind_account(account).await
    }

    fn encrypted(&self) -> bool {
        self.disk.encrypted()
    }

    fn on_disk(&self) -> bool {
        true
    }

    async fn save_token(&self, token: Option<&str>) -> Result<(), Error> {
        self.disk.save_token(token).await
    }

    // Other processes can only share the disk side.
    async fn acquire_sync_lease(
        &self,
        holder: &str,
        now: chrono::DateTime<chrono::Utc>,
        ttl: std::time::Duration,
    ) -> Result<crate::lease::LeaseOutcome, Error> {
        self.disk.acquire_sync_lease(holder, now, ttl).await
    }

    async fn release_sync_lease(&self, holder: &str) -> Result<(), Error> {
        self.disk.release_sync_lease(holder).await
    }

    fn external_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.disk.external_changes()
    }

    async fn saved_token(&self) -> Result<Option<String>, Error> {
        self.disk.saved_token().await
    }

    async fn destroy(&self) -> Result<(), Error> {
        let memory = self.memory.destroy().await;
        self.disk.destroy().await?;
        memory
    }

    async fn write(&self, write: LocalWrite) -> Result<(), Error> {
        self.of(&write.collection).write(write).await
    }

    async fn write_many(&self, writes: Vec<LocalWrite>) -> Result<(), Error> {
        let (disk, memory) = self.split(writes, |w| &w.collection);
        // The engine's writes come one collection at a time, so one side is empty and
        // the call stays atomic.
        if !disk.is_empty() {
            self.disk.write_many(disk).await?;
        }
        if !memory.is_empty() {
            self.memory.write_many(memory).await?;
        }
        Ok(())
    }

    async fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<StoredRecord>, Error> {
        self.of(collection).get(collection, id).await
    }

    async fn query(&self, query: &Query) -> Result<Vec<StoredRecord>, Error> {
        self.of(&query.collection).query(query).await
    }

    async fn query_data(&self, query: &Query) -> Result<Vec<RecordData>, Error> {
        self.of(&query.collection).query_data(query).await
    }

    async fn matching(&self, query: &Query, ids: &[RecordId]) -> Result<Vec<RecordId>, Error> {
        self.of(&query.collection).matching(query, ids).await
    }

    async fn matching_each(&self, asks: &[(Query, Vec<RecordId>)]) -> Result<Vec<Vec<RecordId>>, Error> {
        // Each store answers its own collections' asks in one call; the answers go back
        // in the order asked.
        let mut answers = vec![Vec::new(); asks.len()];
        for store in self.both() {
            let mine: Vec<usize> =
                (0..asks.len()).filter(|i| std::ptr::eq(self.of(&asks[*i].0.collection), store)).collect();
            if mine.is_empty() {
                continue;
            }
            let questions: Vec<(Query, Vec<RecordId>)> = mine.iter().map(|i| asks[*i].clone()).collect();
            for (i, answer) in mine.into_iter().zip(store.matching_each(&questions).await?) {
                answers[i] = answer;
            }
        }
        Ok(answers)
    }

    async fn count(&self, query: &Query) -> Result<u64, Error> {
        self.of(&query.collection).count(query).await
    }

    async fn suspend_indexes(&self, collection: &CollectionName) -> Result<(), Error> {
        self.of(collection).suspend_indexes(collection).await
    }

    async fn ensure_indexes(&self, collections: &[CollectionName], indexes: &[IndexSpec]) -> Result<(), Error> {
        for store in self.both() {
            let mine: Vec<CollectionName> =
                collections.iter().filter(|c| std::ptr::eq(self.of(c), store)).cloned().collect();
            let theirs: Vec<IndexSpec> =
                indexes.iter().filter(|i| std::ptr::eq(self.of(&i.collection), store)).cloned().collect();
            store.ensure_indexes(&mine, &theirs).await?;
        }
        Ok(())
    }

    async fn claim_push_batch(
        &self,
        collections: &[CollectionName],
        limit: usize,
        relations: &Relations,
    ) -> Result<Vec<OutboxEntry>, Error> {
        let (disk, memory): (Vec<_>, Vec<_>) = collections.iter().cloned().partition(|c| !self.in_memory.contains(c));
        let mut claimed = Vec::new();
        if !disk.is_empty() {
            claimed = self.disk.claim_push_batch(&disk, limit, relations).await?;
        }
        let left = limit.saturating_sub(claimed.len());
        if !memory.is_empty() && left > 0 {
            claimed.extend(self.memory.claim_push_batch(&memory, left, relations).await?);
        }
        Ok(claimed)
    }

    async fn record_push_results(
        &self,
        outcomes: Vec<(OutboxEntry, MutationOutcome)>,
        relations: &Relations,
        at: DateTime<Utc>,
    ) -> Result<PushApplied, Error> {
        let (disk, memory) = self.split(outcomes, |(entry, _)| &entry.collection);
        let mut applied = PushApplied::default();
        for (store, outcomes) in [(&self.disk, disk), (&self.memory, memory)] {
            if outcomes.is_empty() {
                continue;
            }
            let part = store.record_push_results(outcomes, relations, at).await?;
            applied.applied += part.applied;
            applied.conflicts.extend(part.conflicts);
            applied.rejected.extend(part.rejected);
            applied.renamed.extend(part.renamed);
            applied.repointed.extend(part.repointed);
        }
        Ok(applied)
    }

    async fn server_id(&self, collection: &CollectionName, local_id: &RecordId) -> Result<Option<RecordId>, Error> {
        self.of(collection).server_id(collection, local_id).await
    }

    async fn cursor(&self, collection: &CollectionName) -> Result<Option<Cursor>, Error> {
        self.of(collection).cursor(collection).await
    }

    async fn holds_acknowledged(&self, collection: &CollectionName) -> Result<bool, Error> {
        self.of(collection).holds_acknowledged(collection).await
    }

    async fn apply_pull_page(
        &self,
        pages: Vec<CollectionPage>,
        decide: PullDecider<'_>,
        at: DateTime<Utc>,
    ) -> Result<PageApplied, Error> {
        let (disk, memory) = self.split(pages, |p| &p.collection);
        let mut applied = PageApplied::default();
        for (store, pages) in [(&self.disk, disk), (&self.memory, memory)] {
            if pages.is_empty() {
                continue;
            }
            // Each store commits its pages with their cursors: a failure in the second
            // leaves the first applied, and its cursors say so.
            let part = store.apply_pull_page(pages, decide, at).await?;
            applied.changed.extend(part.changed);
            applied.conflicts.extend(part.conflicts);
        }
        Ok(applied)
    }

    async fn finish_replacement(
        &self,
        collection: &CollectionName,
        cursor: Option<Cursor>,
        decide: PullDecider<'_>,
        at: DateTime<Utc>,
    ) -> Result<PageApplied, Error> {
        self.of(collection).finish_replacement(collection, cursor, decide, at).await
    }

    async fn save_subscription(&self, row: &SubscriptionRow) -> Result<(), Error> {
        self.of(&row.query.collection).save_subscription(row).await
    }

    async fn subscriptions(&self) -> Result<Vec<SubscriptionRow>, Error> {
        let mut all = self.disk.subscriptions().await?;
        all.extend(self.memory.subscriptions().await?);
        Ok(all)
    }

    async fn drop_subscriptions(&self, ids: &[SubscriptionId]) -> Result<Vec<(CollectionName, RecordId)>, Error> {
        // Each store forgets the ones it holds and ignores the others.
        let mut dropped = self.disk.drop_subscriptions(ids).await?;
        dropped.extend(self.memory.drop_subscriptions(ids).await?);
        Ok(dropped)
    }

    async fn touch(&self, used: &[(CollectionName, RecordId, DateTime<Utc>)]) -> Result<(), Error> {
        let (memory, disk): (Vec<_>, Vec<_>) = used.iter().cloned().partition(|(c, _, _)| self.in_memory.contains(c));
        self.disk.touch(&disk).await?;
        self.memory.touch(&memory).await
    }

    async fn cache_size(&self) -> Result<u64, Error> {
        Ok(self.disk.cache_size().await? + self.memory.cache_size().await?)
    }

    async fn evict(&self, excess: u64) -> Result<Evicted, Error> {
        // One budget over both stores: the file's records go first (the memory store's
        // are gone at exit anyway), then the memory store's for what is left.
        let mut evicted = self.disk.evict(excess).await?;
        if evicted.bytes < excess {
            let more = self.memory.evict(excess - evicted.bytes).await?;
            evicted.records.extend(more.records);
            evicted.bytes += more.bytes;
        }
        Ok(evicted)
    }

    async fn fetch_again(&self, collection: &CollectionName, id: &RecordId) -> Result<bool, Error> {
        self.of(collection).fetch_again(collection, id).await
    }

    async fn let_go_all_unheld(
        &self,
        collections: &[CollectionName],
    ) -> Result<Vec<(CollectionName, RecordId)>, Error> {
        let (memory, disk): (Vec<_>, Vec<_>) = collections.iter().cloned().partition(|c| self.in_memory.contains(c));
        let mut dropped = self.disk.let_go_all_unheld(&disk).await?;
        dropped.extend(self.memory.let_go_all_unheld(&memory).await?);
        Ok(dropped)
    }

    async fn let_go_unheld(
        &self,
        records: &[(CollectionName, RecordId)],
    ) -> Result<Vec<(CollectionName, RecordId)>, Error> {
        let (memory, disk): (Vec<_>, Vec<_>) = records.iter().cloned().partition(|(c, _)| self.in_memory.contains(c));
        let mut dropped = self.disk.let_go_unheld(&disk).await?;
        dropped.extend(self.memory.let_go_unheld(&memory).await?);
        Ok(dropped)
    }

    async fn counts(&self) -> Result<Counts, Error> {
        let (a, b) = (self.disk.counts().await?, self.memory.counts().await?);
        Ok(Counts { pending: a.pending + b.pending, conflicts: a.conflicts + b.conflicts, failed: a.failed + b.failed })
    }

    async fn conflicts(&self) -> Result<Vec<Conflict>, Error> {
        let mut all = self.disk.conflicts().await?;
        all.extend(self.memory.conflicts().await?);
        Ok(all)
    }

    async fn conflict(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<Conflict>, Error> {
        self.of(collection).conflict(collection, id).await
    }

    async fn resolve_conflict(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        resolution: StoreResolution,
        mutation_id: MutationId,
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        self.of(collection).resolve_conflict(collection, id, resolution, mutation_id, at).await
    }

    async fn failed_mutations(&self) -> Result<Vec<OutboxEntry>, Error> {
        let mut all = self.disk.failed_mutations().await?;
        all.extend(self.memory.failed_mutations().await?);
        Ok(all)
    }

    async fn retry_failed(&self, id: MutationId) -> Result<(), Error> {
        for store in self.both() {
            match store.retry_failed(id).await {
                Err(Error::NoFailedMutation { .. }) => continue,
                other => return other,
            }
        }
        Err(Error::NoFailedMutation { id })
    }

    async fn discard_failed(&self, id: MutationId) -> Result<Option<(CollectionName, RecordId)>, Error> {
        for store in self.both() {
            match store.discard_failed(id).await {
                Err(Error::NoFailedMutation { .. }) => continue,
                other => return other,
            }
        }
        Err(Error::NoFailedMutation { id })
    }

    async fn outbox(&self) -> Result<Vec<OutboxEntry>, Error> {
        let mut all = self.disk.outbox().await?;
        all.extend(self.memory.outbox().await?);
        Ok(all)
    }
}

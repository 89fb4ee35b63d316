//! `LocalStore` for `SqliteStore`: each method delegates to the module that owns it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sync_core::protocol::MutationOutcome;
use sync_core::store::{
    CollectionPage, Conflict, Counts, Evicted, IndexSpec, LocalStore, LocalWrite, OutboxEntry, PageApplied,
    PullDecider, PushApplied, Query, RecordData, Relations, StoreResolution, StoredRecord,
};
use sync_core::subscription::{SubscriptionId, SubscriptionRow};
use sync_core::{AccountId, ClientId, CollectionName, Cursor, Error, MutationId, RecordId};

use crate::{SqliteStore, accounts, conflicts, external, indexes, lease, pull, push, reads, renames, writes};

#[async_trait]
impl LocalStore for SqliteStore {
    async fn client_id(&self) -> Result<ClientId, Error> {
        reads::client_id(self).await
    }

    async fn account(&self) -> Result<Option<AccountId>, Error> {
        accounts::account(self).await
    }

    async fn bind_account(&self, account: &AccountId) -> Result<(), Error> {
        accounts::bind_account(self, account).await
    }

    fn on_disk(&self) -> bool {
        self.path().is_some()
    }

    async fn in_memory_sibling(&self) -> Result<std::sync::Arc<dyn LocalStore>, Error> {
        Ok(std::sync::Arc::new(SqliteStore::in_memory().await?))
    }

    fn encrypted(&self) -> bool {
        self.is_encrypted()
    }

    async fn save_token(&self, token: Option<&str>) -> Result<(), Error> {
        accounts::save_token(self, token).await
    }

    async fn saved_token(&self) -> Result<Option<String>, Error> {
        accounts::saved_token(self).await
    }

    async fn destroy(&self) -> Result<(), Error> {
        SqliteStore::destroy(self).await
    }

    async fn write(&self, write: LocalWrite) -> Result<(), Error> {
        writes::write(self, write).await
    }

    async fn write_many(&self, writes: Vec<LocalWrite>) -> Result<(), Error> {
        writes::write_many(self, writes).await
    }

    async fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<StoredRecord>, Error> {
        reads::get(self, collection, id).await
    }

    async fn query(&self, query: &Query) -> Result<Vec<StoredRecord>, Error> {
        reads::query(self, query).await
    }

    async fn query_data(&self, query: &Query) -> Result<Vec<RecordData>, Error> {
        reads::query_data(self, query).await
    }

    async fn matching_each(&self, asks: &[(Query, Vec<RecordId>)]) -> Result<Vec<Vec<RecordId>>, Error> {
        reads::matching_each(self, asks).await
    }

    async fn matching(&self, query: &Query, ids: &[RecordId]) -> Result<Vec<RecordId>, Error> {
        reads::matching(self, query, ids).await
    }

    async fn count(&self, query: &Query) -> Result<u64, Error> {
        reads::count(self, query).await
    }

    async fn acquire_sync_lease(
        &self,
        holder: &str,
        now: chrono::DateTime<chrono::Utc>,
        ttl: std::time::Duration,
    ) -> Result<sync_core::lease::LeaseOutcome, Error> {
        lease::acquire(self, holder, now, ttl).await
    }

    async fn release_sync_lease(&self, holder: &str) -> Result<(), Error> {
        lease::release(self, holder).await
    }

    fn external_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        external::subscribe(self)
    }

    async fn suspend_indexes(&self, collection: &CollectionName) -> Result<(), Error> {
        indexes::suspend(self, collection).await
    }

    async fn ensure_indexes(&self, collections: &[CollectionName], indexes: &[IndexSpec]) -> Result<(), Error> {
        indexes::ensure(self, collections, indexes).await
    }

    async fn claim_push_batch(
        &self,
        collections: &[CollectionName],
        limit: usize,
        relations: &Relations,
    ) -> Result<Vec<OutboxEntry>, Error> {
        push::claim(self, collections, limit, relations).await
    }

    async fn record_push_results(
        &self,
        outcomes: Vec<(OutboxEntry, MutationOutcome)>,
        relations: &Relations,
        at: DateTime<Utc>,
    ) -> Result<PushApplied, Error> {
        push::record_results(self, outcomes, relations, at).await
    }

    async fn server_id(&self, collection: &CollectionName, local_id: &RecordId) -> Result<Option<RecordId>, Error> {
        renames::server_id(self, collection, local_id).await
    }

    async fn cursor(&self, collection: &CollectionName) -> Result<Option<Cursor>, Error> {
        reads::cursor(self, collection).await
    }

    async fn holds_acknowledged(&self, collection: &CollectionName) -> Result<bool, Error> {
        reads::holds_acknowledged(self, collection).await
    }

    async fn apply_pull_page(
        &self,
        pages: Vec<CollectionPage>,
        decide: PullDecider<'_>,
        at: DateTime<Utc>,
    ) -> Result<PageApplied, Error> {
        pull::apply_page(self, pages, decide, at).await
    }

    async fn finish_replacement(
        &self,
        collection: &CollectionName,
        cursor: Option<Cursor>,
        decide: PullDecider<'_>,
        at: DateTime<Utc>,
    ) -> Result<PageApplied, Error> {
        pull::finish_replacement(self, collection, cursor.as_ref(), decide, at).await
    }

    async fn save_subscription(&self, row: &SubscriptionRow) -> Result<(), Error> {
        crate::subscriptions::save(self, row).await
    }

    async fn subscriptions(&self) -> Result<Vec<SubscriptionRow>, Error> {
        crate::subscriptions::all(self).await
    }

    async fn drop_subscriptions(&self, ids: &[SubscriptionId]) -> Result<Vec<(CollectionName, RecordId)>, Error> {
        crate::subscriptions::drop_all(self, ids).await
    }

    async fn touch(&self, used: &[(CollectionName, RecordId, DateTime<Utc>)]) -> Result<(), Error> {
        crate::cache::touch(self, used).await
    }

    async fn cache_size(&self) -> Result<u64, Error> {
        crate::cache::size(self).await
    }

    async fn evict(&self, excess: u64) -> Result<Evicted, Error> {
        crate::cache::evict(self, excess).await
    }

    async fn let_go_all_unheld(
        &self,
        collections: &[CollectionName],
    ) -> Result<Vec<(CollectionName, RecordId)>, Error> {
        crate::subscriptions::let_go_all_unheld(self, collections).await
    }

    async fn let_go_unheld(
        &self,
        records: &[(CollectionName, RecordId)],
    ) -> Result<Vec<(CollectionName, RecordId)>, Error> {
        crate::subscriptions::let_go_unheld(self, records).await
    }

    async fn fetch_again(&self, collection: &CollectionName, id: &RecordId) -> Result<bool, Error> {
        crate::subscriptions::fetch_again(self, collection, id).await
    }

    async fn counts(&self) -> Result<Counts, Error> {
        reads::counts(self).await
    }

    async fn conflicts(&self) -> Result<Vec<Conflict>, Error> {
        conflicts::list(self).await
    }

    async fn conflict(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<Conflict>, Error> {
        conflicts::get(self, collection, id).await
    }

    async fn resolve_conflict(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        resolution: StoreResolution,
        mutation_id: MutationId,
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        conflicts::resolve(self, collection, id, resolution, mutation_id, at).await
    }

    async fn failed_mutations(&self) -> Result<Vec<OutboxEntry>, Error> {
        reads::outbox(self, true).await
    }

    async fn retry_failed(&self, id: MutationId) -> Result<(), Error> {
        conflicts::retry_failed(self, id).await
    }

    async fn discard_failed(&self, id: MutationId) -> Result<Option<(CollectionName, RecordId)>, Error> {
        conflicts::discard_failed(self, id).await
    }

    async fn outbox(&self) -> Result<Vec<OutboxEntry>, Error> {
        reads::outbox(self, false).await
    }
}

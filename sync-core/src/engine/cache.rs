//! The cache budget: how much of what subscriptions brought the device keeps, and which
//! records go first when it passes the budget.
//!
//! Reads of collections synced on demand are noted in memory (a map insert, no store
//! write on the read path) and handed to the store in one batch before the cache is
//! measured. Measuring reads every membership, so the engine measures only when its
//! running estimate (the last measure plus what pages brought since) passes the budget,
//! and then evicts down to [`low_water`], a tenth below the budget, so the next measure
//! waits for a tenth of the budget to arrive. A cycle that brought records ends with a
//! measure, so the status shows the size between syncs (and the estimate during one).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

use super::Shared;
use crate::error::Error;
use crate::ids::{CollectionName, RecordId};
use crate::status::CacheUsage;

/// The default budget: 10 MiB.
pub const DEFAULT_CACHE_BUDGET: u64 = 10 * 1024 * 1024;
/// The smallest budget an app may set: 1 MiB.
pub const MIN_CACHE_BUDGET: u64 = 1024 * 1024;
/// The largest budget an app may set: 1 GiB.
pub const MAX_CACHE_BUDGET: u64 = 1024 * 1024 * 1024;

/// The most reads kept between flushes; past it, new reads are not noted until the next
/// flush (the least-recently-used order then knows less, and nothing else changes).
const MAX_NOTED_READS: usize = 200_000;

/// The engine's side of the budget.
pub(crate) struct Cache {
    budget: u64,
    meter: Mutex<Meter>,
    reads: Mutex<HashMap<(CollectionName, RecordId), DateTime<Utc>>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Meter {
    /// The store's last measure (None before the first).
    measured: Option<u64>,
    /// Bytes pages brought since (an upper bound: an update replaces what it counts).
    since: u64,
}

/// Whether the cache must be measured now: never measured, or the estimate passed the budget.
fn must_measure(meter: Meter, budget: u64) -> bool {
    meter.measured.is_none_or(|m| m.saturating_add(meter.since) > budget)
}

/// Where an eviction brings the cache: a tenth below the budget.
fn low_water(budget: u64) -> u64 {
    budget - budget / 10
}

/// How many bytes to evict from a cache of `size`: none within the budget, else down to
/// [`low_water`].
fn excess(size: u64, budget: u64) -> u64 {
    if size <= budget { 0 } else { size - low_water(budget) }
}

impl Cache {
    /// A budget, with the size measured at start if there was one.
    pub(crate) fn new(budget: u64, measured: Option<u64>) -> Self {
        Self { budget, meter: Mutex::new(Meter { measured, since: 0 }), reads: Mutex::new(HashMap::new()) }
    }

    /// Notes that the app read `ids` of `collection` now.
    pub(crate) fn read<'a>(&self, collection: &CollectionName, ids: impl IntoIterator<Item = &'a RecordId>) {
        let now = Utc::now();
        // The map holds plain values, whole at every point: a panic elsewhere leaves it usable.
        let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            if reads.len() >= MAX_NOTED_READS {
                break;
            }
            reads.insert((collection.clone(), id.clone()), now);
        }
    }

    /// Notes `bytes` more brought by a page (the status shows the estimate until the
    /// next measure).
    pub(crate) fn received(&self, shared: &Shared, bytes: u64) {
        let estimate = {
            let mut meter = self.meter.lock().unwrap_or_else(PoisonError::into_inner);
            meter.since = meter.since.saturating_add(bytes);
            meter.measured.unwrap_or(0).saturating_add(meter.since)
        };
        shared.status.send_modify(|s| s.cache = CacheUsage { bytes: estimate, budget: self.budget });
    }

    /// At the end of a cycle: hands the noted reads to the store and, when pages brought
    /// records since the last measure, measures (and evicts past the budget), so the
    /// status shows the size, not the estimate.
    pub(crate) async fn settle(&self, shared: &Shared) -> Result<Vec<(CollectionName, RecordId)>, Error> {
        let since = self.meter.lock().unwrap_or_else(PoisonError::into_inner).since;
        if since == 0 {
            self.flush_reads(shared).await?;
            return Ok(Vec::new());
        }
        self.measure_and_evict(shared).await
    }

    /// Hands the noted reads to the store.
    pub(crate) async fn flush_reads(&self, shared: &Shared) -> Result<(), Error> {
        let reads: Vec<_> = {
            let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *reads).into_iter().map(|((c, id), at)| (c, id, at)).collect()
        };
        if reads.is_empty() {
            return Ok(());
        }
        shared.store.touch(&reads).await
    }

    /// Measures the cache when the estimate says it may be over the budget, and evicts
    /// down to a tenth below it when it is. Returns the records evicted.
    pub(crate) async fn keep_within(&self, shared: &Shared) -> Result<Vec<(CollectionName, RecordId)>, Error> {
        let meter = *self.meter.lock().unwrap_or_else(PoisonError::into_inner);
        if !must_measure(meter, self.budget) {
            return Ok(Vec::new());
        }
        self.measure_and_evict(shared).await
    }

    /// Measures the cache, evicts what passes the budget, and shows the size in the status.
    pub(crate) async fn measure_and_evict(&self, shared: &Shared) -> Result<Vec<(CollectionName, RecordId)>, Error> {
        self.evict_down(shared, |size| excess(size, self.budget)).await
    }

    /// Measures the cache and evicts what `excess` says of its size.
    pub(crate) async fn evict_down(
        &self,
        shared: &Shared,
        excess: impl FnOnce(u64) -> u64,
    ) -> Result<Vec<(CollectionName, RecordId)>, Error> {
        self.flush_reads(shared).await?;
        let size = shared.store.cache_size().await?;
        let excess = excess(size);
        let evicted = if excess > 0 { shared.store.evict(excess).await? } else { Default::default() };
        let size = size.saturating_sub(evicted.bytes);
        *self.meter.lock().unwrap_or_else(PoisonError::into_inner) = Meter { measured: Some(size), since: 0 };
        if !evicted.records.is_empty() {
            tracing::debug!(records = evicted.records.len(), bytes = evicted.bytes, size, "cache evicted");
        }
        shared.status.send_modify(|s| s.cache = CacheUsage { bytes: size, budget: self.budget });
        Ok(evicted.records)
    }
}

/// The bytes a record brought by a page is counted for before the store measures it:
/// its id and twice its data (the store keeps the acknowledged base beside the data).
pub(crate) fn estimated_size(id: &RecordId, data: &serde_json::Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len() as u64;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, data);
    id.as_str().len() as u64 + 2 * count.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn the_cache_is_measured_first_and_then_when_the_estimate_passes_the_budget() {
        // (measured, since, budget) -> measure now?
        let cases = [
            (None, 0, MIB, true),
            (Some(0), 0, MIB, false),
            (Some(MIB / 2), MIB / 2, MIB, false),
            (Some(MIB / 2), MIB / 2 + 1, MIB, true),
            (Some(2 * MIB), 0, MIB, true),
            (Some(u64::MAX), u64::MAX, MIB, true),
        ];
        for (measured, since, budget, expected) in cases {
            assert_eq!(must_measure(Meter { measured, since }, budget), expected, "{measured:?} + {since} of {budget}");
        }
    }

    #[test]
    fn an_eviction_goes_a_tenth_below_the_budget_and_only_when_over_it() {
        // (size, budget) -> bytes to evict
        let cases = [
            (0, 10 * MIB, 0),
            (10 * MIB, 10 * MIB, 0),
            (10 * MIB + 1, 10 * MIB, MIB + 1),
            (50 * MIB, MIB, 50 * MIB - low_water(MIB)),
        ];
        for (size, budget, expected) in cases {
            assert_eq!(excess(size, budget), expected, "{size} of {budget}");
        }
        assert_eq!(low_water(10 * MIB), 9 * MIB);
    }

    #[test]
    fn a_record_is_estimated_at_its_id_and_twice_its_data() {
        let id = RecordId::new("abc").unwrap();
        let data = serde_json::json!({"a": 1});
        assert_eq!(estimated_size(&id, &data), 3 + 2 * 7);
    }
}

//! What a device writes to disk: the persistence policy's rule (a pure function with
//! table tests) deciding where each collection lives.

use std::collections::BTreeSet;

use crate::error::Error;
use crate::ids::CollectionName;

/// Where a store keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residence {
    /// In files (the default on a trusted device).
    Disk,
    /// In memory only: gone when the process ends, nothing written to disk.
    Memory,
}

/// The policy as the builder collected it.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// False: nothing at all is written to disk.
    pub(crate) trusted_device: bool,
    /// Whether the outbox (the queue of local writes) survives a restart.
    pub(crate) persist_outbox: bool,
    /// Whether the session token is kept in the store.
    pub(crate) persist_token: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self { trusted_device: true, persist_outbox: true, persist_token: false }
    }
}

/// One collection as the rule sees it.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    pub(crate) name: CollectionName,
    /// The app writes to it, so the outbox can reference it.
    pub(crate) writable: bool,
    /// The app asked to keep it in memory only.
    pub(crate) in_memory: bool,
}

/// Where the collections live: the ones kept in memory, the rest on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) memory: BTreeSet<CollectionName>,
    /// Every collection is in memory: one memory store serves them all.
    pub(crate) all_in_memory: bool,
}

impl Placement {
    /// Nothing is in memory: one disk store serves them all.
    pub(crate) fn all_on_disk(&self) -> bool {
        self.memory.is_empty()
    }
}

/// The rule. An untrusted device keeps everything in memory. Otherwise a collection is
/// in memory when the app asks; the outbox lives with the collections it references
/// (a record and its queued write commit together), so a persisted outbox may not
/// reference a memory-only collection, and an outbox kept in memory may not reference
/// a persisted one (its records would say "pending" after a restart, with the queued
/// write gone).
pub(crate) fn place(policy: &Policy, collections: &[Placed]) -> Result<Placement, Error> {
    let config = |message: String| Error::Config { message };
    if !policy.trusted_device {
        if policy.persist_token {
            return Err(config(
                "an untrusted device keeps nothing on disk, so persist_token(true) contradicts trusted_device(false)"
                    .into(),
            ));
        }
        return Ok(Placement { memory: collections.iter().map(|c| c.name.clone()).collect(), all_in_memory: true });
    }
    let names = |pick: &dyn Fn(&Placed) -> bool| -> Vec<String> {
        collections.iter().filter(|c| pick(c)).map(|c| c.name.to_string()).collect()
    };
    if policy.persist_outbox {
        let memory_writable = names(&|c| c.writable && c.in_memory);
        if !memory_writable.is_empty() {
            return Err(config(format!(
                "the outbox is persisted, but it can reference collections kept in memory only: {}; keep them on \
                 disk, or call persist_outbox(false)",
                memory_writable.join(", ")
            )));
        }
    } else {
        let disk_writable = names(&|c| c.writable && !c.in_memory);
        if !disk_writable.is_empty() {
            return Err(config(format!(
                "the outbox is kept in memory, but it can reference persisted collections: {}; their records would \
                 say \"pending\" after a restart with the queued writes gone; keep them in memory too, or persist \
                 the outbox",
                disk_writable.join(", ")
            )));
        }
    }
    let memory: BTreeSet<CollectionName> = collections.iter().filter(|c| c.in_memory).map(|c| c.name.clone()).collect();
    let all_in_memory = !collections.is_empty() && memory.len() == collections.len();
    Ok(Placement { memory, all_in_memory })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(name: &str, writable: bool, in_memory: bool) -> Placed {
        Placed { name: CollectionName::new(name).expect("valid"), writable, in_memory }
    }

    fn policy(trusted_device: bool, persist_outbox: bool, persist_token: bool) -> Policy {
        Policy { trusted_device, persist_outbox, persist_token }
    }

    fn memory_of(result: &Result<Placement, Error>) -> Option<Vec<String>> {
        result.as_ref().ok().map(|p| p.memory.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn where_each_collection_lives() {
        let orders = placed("orders", true, false);
        let orders_in_memory = placed("orders", true, true);
        let catalogue = placed("catalogue", false, false);
        let catalogue_in_memory = placed("catalogue", false, true);
        // (case, policy, collections, collections in memory or None for an error, what the error names)
        type Case<'a> = (&'a str, Policy, Vec<Placed>, Option<Vec<&'a str>>, &'a str);
        let cases: Vec<Case<'_>> = vec![
            ("defaults: all on disk", Policy::default(), vec![orders.clone(), catalogue.clone()], Some(vec![]), ""),
            (
                "a read-only catalogue in memory",
                Policy::default(),
                vec![orders.clone(), catalogue_in_memory.clone()],
                Some(vec!["catalogue"]),
                "",
            ),
            (
                "a persisted outbox cannot reference a memory collection",
                Policy::default(),
                vec![orders_in_memory.clone(), catalogue.clone()],
                None,
                "orders",
            ),
            (
                "an outbox in memory with its writable collections in memory",
                policy(true, false, false),
                vec![orders_in_memory.clone(), catalogue.clone()],
                Some(vec!["orders"]),
                "",
            ),
            (
                "an outbox in memory cannot serve a persisted writable collection",
                policy(true, false, false),
                vec![orders.clone(), catalogue.clone()],
                None,
                "orders",
            ),
            (
                "untrusted: everything in memory, whatever else is asked",
                policy(false, true, false),
                vec![orders.clone(), catalogue.clone()],
                Some(vec!["catalogue", "orders"]),
                "",
            ),
            (
                "untrusted with a persisted token contradicts itself",
                policy(false, true, true),
                vec![orders],
                None,
                "persist_token",
            ),
        ];
        for (name, policy, collections, expected, error_names) in cases {
            let result = place(&policy, &collections);
            let expected: Option<Vec<String>> = expected.map(|e| e.iter().map(|s| (*s).to_owned()).collect());
            assert_eq!(memory_of(&result), expected, "{name}");
            if let Err(e) = result {
                assert!(matches!(e, Error::Config { .. }), "{name}: {e:?}");
                assert!(e.to_string().contains(error_names), "{name}: the error does not name {error_names}: {e}");
            }
        }
    }

    #[test]
    fn all_in_memory_only_when_every_collection_is() {
        let split = place(&Policy::default(), &[placed("a", true, false), placed("b", false, true)]).expect("valid");
        assert!(!split.all_in_memory && !split.all_on_disk());
        let untrusted = place(&policy(false, true, false), &[placed("a", true, false)]).expect("valid");
        assert!(untrusted.all_in_memory);
        let disk = place(&Policy::default(), &[placed("a", true, false)]).expect("valid");
        assert!(disk.all_on_disk());
    }
}

//! A history: what the simulated clients do, step by step, printable so that a shrunk
//! failing case reads as a story.

use std::fmt;

use serde_json::Value;

use crate::Fault;

/// One thing a client does. Clients are numbered from 0; records are named by id.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Writes a record locally: inserts it, or updates it when stored.
    Write {
        /// The client.
        client: usize,
        /// The collection.
        collection: String,
        /// The record id.
        record: String,
        /// The record's contents (the kit writes `record` into its id field).
        data: Value,
    },
    /// Deletes a record locally (refused when it is not stored).
    Delete {
        /// The client.
        client: usize,
        /// The collection.
        collection: String,
        /// The record id.
        record: String,
    },
    /// Deletes a record (when it is stored) and writes it again under the same id, with
    /// a sync in between when `sync_between`: the delete acknowledged (and perhaps its
    /// echo pulled) before the id is created again.
    Recreate {
        /// The client.
        client: usize,
        /// The collection.
        collection: String,
        /// The record id.
        record: String,
        /// The new record's contents.
        data: Value,
        /// Sync between the delete and the new write.
        sync_between: bool,
    },
    /// Queues a custom action on a record; the kit gives each one unique arguments.
    Action {
        /// The client.
        client: usize,
        /// The collection.
        collection: String,
        /// The record id.
        record: String,
        /// The action's name (one of the app's handlers).
        name: String,
    },
    /// The app switches the network off (`Engine::set_online(false)`).
    Offline {
        /// The client.
        client: usize,
    },
    /// The app switches the network on again.
    Online {
        /// The client.
        client: usize,
    },
    /// The client runs one sync cycle (`sync_now`).
    Sync {
        /// The client.
        client: usize,
    },
    /// The client's next request meets `fault`.
    Fault {
        /// The client.
        client: usize,
        /// The fault.
        fault: Fault,
    },
    /// The client's app dies and starts again on the same store file. With
    /// `after_request` n > 0 it dies during a sync cycle, right after the server handled
    /// the cycle's n-th request (a push applied, a page served) and before the answer
    /// arrives; with 0, while idle.
    Crash {
        /// The client.
        client: usize,
        /// The request of the cycle after which it dies (0: no cycle).
        after_request: u32,
    },
    /// The client's user settles every open conflict with the app's resolver.
    Resolve {
        /// The client.
        client: usize,
    },
    /// The server purges every tombstone (as it does once they are older than its
    /// retention): clients whose cursors are older get `reset` and resync.
    PurgeTombstones,
    /// Holds a subscription of an on-demand collection (see [`Tracked::on_demand`](super::Tracked::on_demand)):
    /// the records whose subscription field equals `value`. Held already: nothing happens.
    Subscribe {
        /// The client.
        client: usize,
        /// The collection.
        collection: String,
        /// The value of the collection's subscription field.
        value: String,
    },
    /// Drops the handle of that subscription. The kit's subscriptions have no time to
    /// live, so its records go at the next pull unless another holds them or they are
    /// pending.
    Unsubscribe {
        /// The client.
        client: usize,
        /// The collection.
        collection: String,
        /// The value of the collection's subscription field.
        value: String,
    },
    /// Evicts everything the cache budget may evict (`Engine::trim_cache(0)`).
    Evict {
        /// The client.
        client: usize,
    },
}

impl Step {
    /// The client that takes the step (None: the server takes it).
    pub fn client(&self) -> Option<usize> {
        Some(match self {
            Step::Write { client, .. }
            | Step::Delete { client, .. }
            | Step::Recreate { client, .. }
            | Step::Action { client, .. }
            | Step::Offline { client }
            | Step::Online { client }
            | Step::Sync { client }
            | Step::Fault { client, .. }
            | Step::Crash { client, .. }
            | Step::Resolve { client }
            | Step::Subscribe { client, .. }
            | Step::Unsubscribe { client, .. }
            | Step::Evict { client } => *client,
            Step::PurgeTombstones => return None,
        })
    }
}

/// A client's name in printed histories: A, B, C, ...
pub fn client_name(client: usize) -> String {
    match u8::try_from(client) {
        Ok(n) if n < 26 => char::from(b'A' + n).to_string(),
        _ => format!("#{client}"),
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = self.client().map_or_else(|| "the server".to_owned(), client_name);
        match self {
            Step::Write { collection, record, data, .. } => write!(f, "{who} writes {collection}/{record} = {data}"),
            Step::Delete { collection, record, .. } => write!(f, "{who} deletes {collection}/{record}"),
            Step::Recreate { collection, record, data, sync_between: true, .. } => {
                write!(f, "{who} deletes {collection}/{record}, syncs, and creates it again = {data}")
            }
            Step::Recreate { collection, record, data, sync_between: false, .. } => {
                write!(f, "{who} deletes {collection}/{record} and creates it again = {data}")
            }
            Step::Action { collection, record, name, .. } => {
                write!(f, "{who} sends action {name} on {collection}/{record}")
            }
            Step::Offline { .. } => write!(f, "{who} goes offline"),
            Step::Online { .. } => write!(f, "{who} comes online"),
            Step::Sync { .. } => write!(f, "{who} syncs"),
            Step::Fault { fault, .. } => write!(f, "{who}'s next request meets {fault:?}"),
            Step::Crash { after_request: 0, .. } => write!(f, "{who} crashes and restarts"),
            Step::Crash { after_request, .. } => {
                write!(f, "{who} syncs and crashes after the server handled request {after_request}, then restarts")
            }
            Step::Resolve { .. } => write!(f, "{who} resolves its conflicts"),
            Step::PurgeTombstones => write!(f, "{who} purges its tombstones"),
            Step::Subscribe { collection, value, .. } => write!(f, "{who} subscribes to {collection} = {value}"),
            Step::Unsubscribe { collection, value, .. } => write!(f, "{who} lets go of {collection} = {value}"),
            Step::Evict { .. } => write!(f, "{who} evicts its cache"),
        }
    }
}

/// A whole history: how many clients, and their steps in order.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// The number of clients (2 to 5 in generated histories).
    pub clients: usize,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} clients, {} steps:", self.clients, self.steps.len())?;
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "  {:>2}. {step}", i + 1)?;
        }
        Ok(())
    }
}

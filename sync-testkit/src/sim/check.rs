//! The invariant checkers (ARCHITECTURE.md's invariants 1-5, plus resolver soundness and
//! liveness): pure functions over what a simulation observed and the server's log.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;
use sync_core::protocol::{MutationBody, Op};
use sync_core::{Conflict, Resolution, SyncEvent};

use super::history::client_name;
use crate::Application;

/// Something a history did that offsync promises never happens.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Violation {
    /// Invariant 1: a client's last intent for a record (a write, delete, action or a
    /// resolution's value) was neither applied on the server nor surfaced to the app
    /// as a conflict or a rejection.
    Lost {
        /// The client.
        client: usize,
        /// The collection.
        collection: String,
        /// The record.
        record: String,
        /// What was lost.
        intent: String,
    },
    /// Invariant 1: a resolution dropped or changed a field that both sides of the
    /// conflict hold (a field both sides have can only be kept, and a value both sides
    /// agree on can only be kept as it is).
    ResolutionLostField {
        /// The client.
        client: usize,
        /// The collection.
        collection: String,
        /// The record.
        record: String,
        /// The field.
        field: String,
        /// The resolution's value.
        merged: Value,
    },
    /// Invariant 2: the server applied one client's intent more than once.
    AppliedTwice {
        /// The client.
        client: usize,
        /// The collection.
        collection: String,
        /// The record.
        record: String,
        /// What was applied twice, or how many times.
        detail: String,
    },
    /// Invariant 3: the server applied one client's mutations of a record out of order.
    OutOfOrder {
        /// The client.
        client: usize,
        /// The collection.
        collection: String,
        /// The record.
        record: String,
        /// The application that came too late.
        detail: String,
    },
    /// Invariant 4: a local write failed for another reason than bad input, was not
    /// readable at once, or fired no change event.
    LocalFirst {
        /// The client.
        client: usize,
        /// The collection.
        collection: String,
        /// The record.
        record: String,
        /// What went wrong.
        detail: String,
    },
    /// Invariant 5: after quiescence a client's record differs from the server's.
    Diverged {
        /// The client.
        client: usize,
        /// The collection.
        collection: String,
        /// The record.
        record: String,
        /// The client's data (None: it does not hold the record).
        local: Option<Value>,
        /// The server's data (None: the client may not read it, or it is deleted).
        server: Option<Value>,
    },
    /// Rule 6 (the kit's own): a conflict that no other client's write explains. A
    /// conflict says someone else changed the record since this client's write was
    /// based on it; with one client, or none other writing the record since, it is a
    /// false alarm (and a keep-server choice then throws the user's write away).
    UnexplainedConflict {
        /// The client that met it.
        client: usize,
        /// The collection.
        collection: String,
        /// The record.
        record: String,
        /// The versions involved.
        detail: String,
    },
    /// Liveness: once the faults stopped, the client still had work queued, conflicts
    /// open or an engine that would not answer after the bounded number of cycles.
    Stuck {
        /// The client.
        client: usize,
        /// What was left.
        detail: String,
    },
}

impl Violation {
    /// Whether this is a liveness failure (the rest are safety violations).
    pub fn is_liveness(&self) -> bool {
        matches!(self, Violation::Stuck { .. })
    }

    /// The invariant it breaks: 1-5 as the protocol numbers them, 6 for the kit's rule
    /// that conflicts are explained, 0 for liveness.
    pub fn invariant(&self) -> u8 {
        match self {
            Violation::Lost { .. } | Violation::ResolutionLostField { .. } => 1,
            Violation::AppliedTwice { .. } => 2,
            Violation::OutOfOrder { .. } => 3,
            Violation::LocalFirst { .. } => 4,
            Violation::Diverged { .. } => 5,
            Violation::UnexplainedConflict { .. } => 6,
            Violation::Stuck { .. } => 0,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Lost { client, collection, record, intent } => write!(
                f,
                "invariant 1 (nothing acknowledged is lost): {}'s {intent} of {collection}/{record} was neither \
                 applied nor surfaced",
                client_name(*client)
            ),
            Violation::ResolutionLostField { client, collection, record, field, merged } => write!(
                f,
                "invariant 1 (nothing acknowledged is lost): {}'s resolution of {collection}/{record} dropped \
                 or changed field {field:?} that both sides hold: {merged}",
                client_name(*client)
            ),
            Violation::AppliedTwice { client, collection, record, detail } => {
                write!(f, "invariant 2 (exactly once): {}'s {collection}/{record}: {detail}", client_name(*client))
            }
            Violation::OutOfOrder { client, collection, record, detail } => {
                write!(f, "invariant 3 (order): {}'s {collection}/{record}: {detail}", client_name(*client))
            }
            Violation::LocalFirst { client, collection, record, detail } => {
                write!(f, "invariant 4 (local first): {}'s {collection}/{record}: {detail}", client_name(*client))
            }
            Violation::Diverged { client, collection, record, local, server } => write!(
                f,
                "invariant 5 (convergence): {} holds {collection}/{record} = {} but the server has {}",
                client_name(*client),
                show(local.as_ref()),
                show(server.as_ref())
            ),
            Violation::UnexplainedConflict { client, collection, record, detail } => write!(
                f,
                "rule 6 (conflicts are explained): {} met a conflict on {collection}/{record} that no other \
                 client's write explains: {detail}",
                client_name(*client)
            ),
            Violation::Stuck { client, detail } => {
                write!(f, "liveness: {} did not settle after the faults stopped: {detail}", client_name(*client))
            }
        }
    }
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "nothing".to_owned(), Value::to_string)
}

/// Rule 6 for one conflict a client met: some other client must have had a write to the
/// record applied at a version above the one this client's write was based on (a write
/// it had not seen). `others` are the versions of the other clients' applications to the
/// record. What the client had seen is taken from the conflict's base version: what the
/// device knew of the record when it claimed the write (a remembered tombstone's version
/// included), so a deletion it pulled and forgot is not caught by this rule.
pub(crate) fn check_conflict_explained(client: usize, conflict: &Conflict, others: &[u64]) -> Option<Violation> {
    let based_on = conflict.base_version.map_or(0, |v| v.0);
    if others.iter().any(|&v| v > based_on) {
        return None;
    }
    let server = conflict.server.as_ref().map_or_else(
        || "missing".to_owned(),
        |s| format!("version {}{}", s.version.0, if s.deleted { " (deleted)" } else { "" }),
    );
    Some(Violation::UnexplainedConflict {
        client,
        collection: conflict.collection.to_string(),
        record: conflict.record_id.to_string(),
        detail: format!(
            "its write was based on version {based_on}, the server has {server}, other clients' writes: {others:?}"
        ),
    })
}

/// What a client meant to happen to a record, in the order it meant it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Intent {
    /// The record's data (local shape).
    Upsert(Value),
    /// The record deleted.
    Delete,
    /// A custom action with unique arguments.
    Action { name: String, args: Value },
    /// The app gave its side up (keep server, a discarded rejection): nothing to send.
    Settled,
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Intent::Upsert(value) => write!(f, "write {value}"),
            Intent::Delete => write!(f, "delete"),
            Intent::Action { name, args } => write!(f, "action {name} {args}"),
            Intent::Settled => write!(f, "settlement"),
        }
    }
}

/// What made an acknowledged intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A local write that created the record (it was not stored on the device).
    Create,
    /// Any other local write.
    Write,
    /// A conflict resolution, or the kit settling a parked mutation.
    Resolution,
}

impl Source {
    /// A local write (not a resolution): it must fire a local change event.
    pub(crate) fn is_local_write(self) -> bool {
        self != Source::Resolution
    }
}

/// One acknowledged intent: a local write that returned Ok, or a resolution applied.
#[derive(Debug, Clone)]
pub(crate) struct Ack {
    pub(crate) client: usize,
    pub(crate) collection: String,
    pub(crate) record: String,
    pub(crate) intent: Intent,
    /// Its place among everything observed (acks and events share the counter).
    pub(crate) seq: u64,
    /// Where it came from.
    pub(crate) source: Source,
}

/// An event a client's engine broadcast, in the order the kit received them.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) seq: u64,
    pub(crate) client: usize,
    pub(crate) event: SyncEvent,
}

/// Resolver soundness: a merged value keeps every field both sides hold, and keeps a
/// value both sides agree on.
pub(crate) fn check_resolution(client: usize, conflict: &Conflict, resolution: &Resolution) -> Vec<Violation> {
    let Resolution::Merged(merged) = resolution else { return Vec::new() };
    let local = conflict.local.as_ref().and_then(Value::as_object);
    let server = conflict.server.as_ref().and_then(|s| s.data.as_ref()).and_then(Value::as_object);
    let (Some(local), Some(server)) = (local, server) else { return Vec::new() };
    let mut out = Vec::new();
    for (field, local_value) in local {
        let Some(server_value) = server.get(field) else { continue };
        let kept = merged.get(field);
        let sound = match kept {
            None => false,
            Some(kept) => local_value != server_value || kept == local_value,
        };
        if !sound {
            out.push(Violation::ResolutionLostField {
                client,
                collection: conflict.collection.to_string(),
                record: conflict.record_id.to_string(),
                field: field.clone(),
                merged: merged.clone(),
            });
        }
    }
    out
}

/// The applications of one client to one record, in server order.
pub(crate) type Applied<'a> = Vec<&'a Application>;

/// Everything the checks need about one (client, collection, record).
pub(crate) struct Thread<'a> {
    pub(crate) client: usize,
    pub(crate) collection: &'a str,
    pub(crate) record: &'a str,
    pub(crate) acks: Vec<&'a Ack>,
    pub(crate) applied: Applied<'a>,
    /// Events about the record on this client.
    pub(crate) events: Vec<&'a Seen>,
    /// The server's final data of the record (None: deleted or missing), normalized.
    pub(crate) server_final: Option<Value>,
    /// Quiescence was reached: what is not applied by now is lost, not stuck (when it
    /// was not, the liveness failure says so and nothing counts as lost).
    pub(crate) settled: bool,
}

/// `value` as the entity type reads it, or as it is when it does not fit.
pub(crate) type Normalize<'a> = &'a dyn Fn(&str, &Value) -> Value;

fn matches(intent: &Intent, application: &Application, collection: &str, normalize: Normalize<'_>) -> bool {
    match (intent, &application.body) {
        (Intent::Upsert(value), MutationBody::Upsert { data }) => {
            normalize(collection, &Value::Object(data.clone())) == normalize(collection, value)
        }
        (Intent::Delete, MutationBody::Delete) => true,
        (Intent::Action { name, args }, MutationBody::Action { name: applied, args: applied_args }) => {
            applied == name && args.as_object() == Some(applied_args)
        }
        _ => false,
    }
}

/// Invariants 1-4 for one thread (the convergence check runs on whole stores).
pub(crate) fn check_thread(thread: &Thread<'_>, normalize: Normalize<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let (client, collection, record) = (thread.client, thread.collection.to_owned(), thread.record.to_owned());
    let sent: Vec<&Ack> = thread.acks.iter().copied().filter(|a| a.intent != Intent::Settled).collect();

    // Invariant 3: the applications that are this client's intents come in its order.
    // Greedy: each one takes the earliest intent at or after the last one matched (a
    // keep-local resolution sends the same value again, so the position may stay).
    let mut position = 0;
    for application in &thread.applied {
        if let Some(offset) =
            sent[position..].iter().position(|a| matches(&a.intent, application, &collection, normalize))
        {
            position += offset;
        } else if sent[..position].iter().any(|a| matches(&a.intent, application, &collection, normalize)) {
            out.push(Violation::OutOfOrder {
                client,
                collection: collection.clone(),
                record: record.clone(),
                detail: format!(
                    "{:?} at version {} was applied after a later intent of the same client",
                    application.body.op(),
                    application.version.0
                ),
            });
        }
    }

    // Invariant 2: an action (unique arguments) applies at most once; upserts and
    // deletes apply at most once per intent (plus one per resolution the engine made).
    for ack in &sent {
        if let Intent::Action { .. } = ack.intent {
            let times = thread.applied.iter().filter(|a| matches(&ack.intent, a, &collection, normalize)).count();
            if times > 1 {
                out.push(Violation::AppliedTwice {
                    client,
                    collection: collection.clone(),
                    record: record.clone(),
                    detail: format!("{} applied {times} times", ack.intent),
                });
            }
        }
    }
    let writes = sent.iter().filter(|a| matches!(a.intent, Intent::Upsert(_) | Intent::Delete)).count();
    let resolutions = thread.events.iter().filter(|e| matches!(e.event, SyncEvent::ConflictResolved { .. })).count();
    let applied_writes = thread.applied.iter().filter(|a| matches!(a.body.op(), Op::Upsert | Op::Delete)).count();
    if applied_writes > writes + resolutions {
        out.push(Violation::AppliedTwice {
            client,
            collection: collection.clone(),
            record: record.clone(),
            detail: format!(
                "{applied_writes} writes applied for {writes} acknowledged writes and {resolutions} resolutions"
            ),
        });
    }

    // Invariant 1: every action, and the last intent, is applied or surfaced.
    let surfaced_after = |seq: u64| {
        thread.events.iter().any(|e| {
            e.seq > seq
                && matches!(
                    e.event,
                    SyncEvent::ConflictDetected { .. }
                        | SyncEvent::ConflictResolved { .. }
                        | SyncEvent::MutationRejected { .. }
                )
        })
    };
    // The last of this client's intents the server applied (intents in order, so if
    // the last intent was applied, it is this one).
    let last_applied =
        thread.applied.iter().rev().find(|a| sent.iter().any(|ack| matches(&ack.intent, a, &collection, normalize)));
    let last_delete = sent.iter().rposition(|a| a.intent == Intent::Delete);
    // The intent at `index` deletes a record this client created locally (the record
    // was not stored here), when nothing of it reached the server in between: none of
    // the intents since the create was applied, and no change came from the server.
    let deletes_an_unsent_create = |index: usize| {
        let Some(create) = sent[..index].iter().rposition(|a| a.source == Source::Create) else { return false };
        let (from, to) = (sent[create].seq, sent[index].seq);
        // Applications are matched by value, so an earlier intent with the same value
        // (the record written, deleted elsewhere and created again with the same data)
        // accounts for as many of them as it has copies; only applications beyond those
        // show that something since the create reached the server.
        let sent_since = sent[create..index].iter().any(|a| {
            let applied =
                thread.applied.iter().filter(|applied| matches(&a.intent, applied, &collection, normalize)).count();
            let earlier_copies = sent[..create].iter().filter(|b| b.intent == a.intent).count();
            applied > earlier_copies
        });
        let heard_since = thread.events.iter().any(|e| {
            e.seq > from
                && e.seq < to
                && matches!(
                    e.event,
                    SyncEvent::RecordChanged { origin: sync_core::Origin::Remote, .. }
                        | SyncEvent::ConflictDetected { .. }
                )
        });
        !sent_since && !heard_since
    };
    for (index, ack) in sent.iter().enumerate() {
        let last = index + 1 == sent.len() && thread.acks.last().is_some_and(|a| std::ptr::eq(*a, *ack));
        let is_action = matches!(ack.intent, Intent::Action { .. });
        if !(last || is_action) {
            continue;
        }
        let applied = if is_action {
            thread.applied.iter().any(|a| matches(&ack.intent, a, &collection, normalize))
        } else {
            last_applied.is_some_and(|a| matches(&ack.intent, a, &collection, normalize))
        };
        let holds_at_end = match &ack.intent {
            Intent::Upsert(value) => thread.server_final.as_ref().is_some_and(|s| *s == normalize(&collection, value)),
            // A delete of a record this client created and never sent has nothing to
            // delete: the store drops it with the queued create, and a record the
            // server holds under that id is someone else's (created concurrently).
            Intent::Delete => thread.server_final.is_none() || deletes_an_unsent_create(index),
            // A delete of a record the server never saw drops its queued actions.
            Intent::Action { .. } => last_delete.is_some_and(|d| d > index),
            Intent::Settled => true,
        };
        if thread.settled && !(applied || holds_at_end || surfaced_after(ack.seq)) {
            out.push(Violation::Lost {
                client,
                collection: collection.clone(),
                record: record.clone(),
                intent: ack.intent.to_string(),
            });
        }
    }

    // Invariant 4: every local write fired a local change event.
    let local_writes =
        thread.acks.iter().filter(|a| a.source.is_local_write() && !matches!(a.intent, Intent::Action { .. })).count();
    let local_events = thread
        .events
        .iter()
        .filter(|e| matches!(e.event, SyncEvent::RecordChanged { origin: sync_core::Origin::Local, .. }))
        .count();
    if local_events < local_writes {
        out.push(Violation::LocalFirst {
            client,
            collection,
            record,
            detail: format!("{local_writes} local writes fired {local_events} local change events"),
        });
    }
    out
}

/// The records a client holds and the server's, both normalized: one violation per
/// record that differs.
pub(crate) fn check_convergence(
    client: usize,
    collection: &str,
    local: &BTreeMap<String, Value>,
    server: &BTreeMap<String, Value>,
) -> Vec<Violation> {
    let ids: BTreeSet<&String> = local.keys().chain(server.keys()).collect();
    ids.into_iter()
        .filter(|id| local.get(*id) != server.get(*id))
        .map(|id| Violation::Diverged {
            client,
            collection: collection.to_owned(),
            record: id.clone(),
            local: local.get(id).cloned(),
            server: server.get(id).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::Utc;
    use serde_json::json;
    use sync_core::protocol::ServerRecord;
    use sync_core::{ClientId, CollectionName, MutationId, RecordId, Version};

    fn conflict(local: Value, server: Value) -> Conflict {
        Conflict {
            collection: CollectionName::new("c").unwrap(),
            record_id: RecordId::new("r").unwrap(),
            mutation_id: None,
            local: Some(local),
            server: Some(ServerRecord { version: Version(2), deleted: false, data: Some(server) }),
            base: None,
            base_version: None,
            detected_at: Utc::now(),
        }
    }

    fn check(local: Value, server: Value, merged: Value, bad_fields: &[&str]) {
        let got = check_resolution(0, &conflict(local, server), &Resolution::Merged(merged));
        let fields: Vec<_> = got
            .iter()
            .map(|v| match v {
                Violation::ResolutionLostField { field, .. } => field.as_str(),
                _ => "?",
            })
            .collect();
        assert_eq!(fields, bad_fields);
    }

    #[test]
    fn a_resolution_keeps_what_both_sides_hold() {
        check(json!({"a": 1, "b": 2}), json!({"a": 1, "b": 3}), json!({"a": 1, "b": 3}), &[]);
        check(json!({"a": 1, "b": 2}), json!({"a": 1, "b": 3}), json!({"a": 1, "b": 9}), &[]);
        check(json!({"a": 1, "b": 2}), json!({"a": 1, "b": 3}), json!({"b": 3}), &["a"]);
        check(json!({"a": 1, "b": 2}), json!({"a": 1, "b": 3}), json!({"a": 5, "b": 2}), &["a"]);
        check(json!({"a": 1, "b": 2}), json!({"a": 1, "b": 3}), json!({"a": 1}), &["b"]);
        // A field only one side holds may go (the other side removed it).
        check(json!({"a": 1, "x": 2}), json!({"a": 1}), json!({"a": 1}), &[]);
        assert!(check_resolution(0, &conflict(json!({"a": 1}), json!({"a": 1})), &Resolution::KeepServer).is_empty());
    }

    fn application(op: Op, data: Option<Value>, version: u64) -> Application {
        Application {
            client_id: ClientId("c1".into()),
            mutation_id: MutationId::generate(),
            collection: CollectionName::new("c").unwrap(),
            record_id: Some(RecordId::new("r").unwrap()),
            body: match (op, data) {
                (Op::Upsert, Some(Value::Object(data))) => MutationBody::Upsert { data },
                (Op::Delete, None) => MutationBody::Delete,
                other => panic!("no such application in these tests: {other:?}"),
            },
            version: Version(version),
        }
    }

    fn ack(intent: Intent, seq: u64) -> Ack {
        Ack { client: 0, collection: "c".into(), record: "r".into(), intent, seq, source: Source::Resolution }
    }

    fn thread_check(acks: &[Ack], applied: &[Application], server_final: Option<Value>) -> Vec<u8> {
        let thread = Thread {
            client: 0,
            collection: "c",
            record: "r",
            acks: acks.iter().collect(),
            applied: applied.iter().collect(),
            events: Vec::new(),
            server_final,
            settled: true,
        };
        let identity = |_: &str, v: &Value| v.clone();
        check_thread(&thread, &identity).iter().map(Violation::invariant).collect()
    }

    #[test]
    fn threads_are_checked_for_loss_order_and_repeats() {
        let (v1, v2) = (json!({"n": 1}), json!({"n": 2}));
        let acks = [ack(Intent::Upsert(v1.clone()), 1), ack(Intent::Upsert(v2.clone()), 2)];
        let up = |v: &Value, version| application(Op::Upsert, Some(v.clone()), version);
        assert_eq!(thread_check(&acks, &[up(&v1, 1), up(&v2, 2)], Some(v2.clone())), Vec::<u8>::new());
        // The last write folded away or lost, and the server holds something else
        assert_eq!(thread_check(&acks, &[up(&v1, 1)], Some(v1.clone())), [1]);
        // ... but if the server ends up holding it anyway, nothing is lost
        assert_eq!(thread_check(&acks, &[up(&v1, 1)], Some(v2.clone())), Vec::<u8>::new());
        assert_eq!(thread_check(&acks, &[up(&v2, 1), up(&v1, 2)], Some(v1.clone())), [3, 1]);
        assert_eq!(thread_check(&acks, &[up(&v1, 1), up(&v2, 2), up(&v2, 3)], Some(v2.clone())), [2]);
        // A settlement (keep server) as the last intent loses nothing
        let settled = [ack(Intent::Upsert(v1.clone()), 1), ack(Intent::Settled, 2)];
        assert_eq!(thread_check(&settled, &[], Some(v2)), Vec::<u8>::new());
    }

    #[test]
    fn a_delete_of_an_unsent_create_has_nothing_to_delete() {
        let (mine, theirs) = (json!({"n": 1}), json!({"n": 9}));
        let made = |source| Ack { source, ..ack(Intent::Upsert(mine.clone()), 1) };
        let delete = Ack { source: Source::Write, ..ack(Intent::Delete, 2) };
        let up = |v: &Value, version| application(Op::Upsert, Some(v.clone()), version);
        // No events are given here: invariant 4 (local change events) is not the point.
        let thread_check = |acks: &[Ack], applied: &[Application], server_final| -> Vec<u8> {
            thread_check(acks, applied, server_final).into_iter().filter(|&v| v != 4).collect()
        };
        // Created here, deleted here, never sent: the server's record is another client's.
        assert_eq!(thread_check(&[made(Source::Create), delete.clone()], &[], Some(theirs.clone())), Vec::<u8>::new());
        // Created here and sent: the delete had something to delete, and it is lost.
        assert_eq!(thread_check(&[made(Source::Create), delete.clone()], &[up(&mine, 1)], Some(theirs.clone())), [1]);
        // An update, not a create: the record was there to delete.
        assert_eq!(thread_check(&[made(Source::Write), delete], &[], Some(theirs)), [1]);
    }

    #[test]
    fn a_conflict_needs_a_write_of_another_client_it_had_not_seen() {
        let conflict = |base: Option<u64>, server: Option<(u64, bool)>| Conflict {
            collection: CollectionName::new("c").unwrap(),
            record_id: RecordId::new("r").unwrap(),
            mutation_id: None,
            local: Some(json!({"n": 1})),
            server: server.map(|(v, deleted)| ServerRecord { version: Version(v), deleted, data: None }),
            base: None,
            base_version: base.map(Version),
            detected_at: chrono::Utc::now(),
        };
        // (the version the write was based on, the server's (version, deleted), the
        // other clients' application versions, explained)
        type Case = (Option<u64>, Option<(u64, bool)>, &'static [u64], bool);
        let cases: [Case; 6] = [
            // Another client wrote version 2 after this one's write based on 1: explained.
            (Some(1), Some((2, false)), &[1, 2], true),
            // Created here while another client created the same id: explained.
            (None, Some((1, false)), &[1], true),
            // Nobody else ever wrote it (own delete, then created again): a false alarm.
            (None, Some((2, true)), &[], false),
            // The only other write is one this client's write was already based on.
            (Some(3), Some((3, true)), &[1, 3], false),
            // The record is gone and nobody else touched it.
            (Some(2), None, &[], false),
            (Some(2), None, &[3], true),
        ];
        for (base, server, others, explained) in cases {
            let found = check_conflict_explained(0, &conflict(base, server), others);
            assert_eq!(found.is_none(), explained, "base {base:?}, server {server:?}, others {others:?}: {found:?}");
        }
    }
}

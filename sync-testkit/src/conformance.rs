//! A conformance suite for [`LocalStore`] implementations: the store's own rules,
//! checked through the trait alone, without an engine or a server. Any store can be run
//! through it ([`run`]); offsync runs it against `SqliteStore` on a file and in memory.
//!
//! The cases pin what the engine relies on:
//! - writes to a record nobody has sent yet fold into its one queued create; once a
//!   push has claimed an entry, later writes queue behind it; a record created and
//!   deleted before any push leaves nothing to send; a failed write changes nothing;
//! - a push claims parents before children that point at them, and a parent's delete
//!   after its children's;
//! - an answer renames a record the server gave an id of its own, and repoints its
//!   children; a rejection parks its entry until retried;
//! - a pull page applies, skips or makes conflicts record by record (a conflict holds
//!   its record only) and stores its cursor with the changes;
//! - a replacement sweeps the clean records the server no longer has and never one with
//!   a pending write;
//! - a subscription keeps its cursor and synced time when the app saves it again; a
//!   record two subscriptions hold is stored once and goes only when neither holds it
//!   (a removal lets go for its own subscription only), never while it has a pending
//!   write, and a reset's download drops what it did not send again;
//! - eviction takes released subscriptions' records before held ones', least recently
//!   read first, counts what it frees in the cache size, never takes a record with a
//!   pending write or one a kept-synced subscription holds, and a held subscription
//!   asked for an evicted record downloads again; letting go of unheld records takes
//!   only clean ones no subscription holds.
//!
//! A case reports a broken rule, or an error from the store, by panicking, as `assert!`
//! does (the helpers' `expect`s are such reports, or name constants that always parse).
//! [`run`] runs each case in a task of its own and returns its panic as a failure, so
//! nothing panics through `run`.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use sync_core::LocalStore;
//!
//! let failures = sync_testkit::conformance::run(|| async {
//!     Arc::new(sync_sqlite::SqliteStore::in_memory().await.unwrap()) as Arc<dyn LocalStore>
//! })
//! .await;
//! assert!(failures.is_empty(), "{failures:#?}");
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use serde_json::{Value, json};
use sync_core::pattern::{LocalRecordState, PullAction};
use sync_core::protocol::{Change, ErrorCode, ErrorDetail, MutationOutcome, Op};
use sync_core::store::SubscriptionPart;
use sync_core::store::{
    CollectionPage, FieldPath, Filter, ForeignKey, JsonObject, LocalWrite, Order, PendingChange, Query, RecordState,
    Relations, WriteKind,
};
use sync_core::subscription::{Subscribe, SubscriptionRow};
use sync_core::{CollectionName, Cursor, Error, LocalStore, MutationId, RecordId, Version};

/// A case's check on a store: panics, saying why, when the store breaks the rule.
type Check = fn(Arc<dyn LocalStore>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// One case: a name and its check.
pub struct Case {
    /// What the case checks.
    pub name: &'static str,
    check: Check,
}

impl Case {
    /// Runs the case on `store` (a fresh one: cases assume nothing is stored).
    pub async fn check(&self, store: Arc<dyn LocalStore>) {
        (self.check)(store).await;
    }
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case of the suite.
        pub fn cases() -> Vec<Case> {
            vec![$(Case { name: stringify!($name), check: |store| Box::pin($name(store)) }),*]
        }
    };
}

cases!(
    writes_fold_into_a_create_nobody_has_sent,
    a_record_created_and_deleted_before_any_push_leaves_nothing_to_send,
    writes_after_a_claim_queue_behind_it,
    a_write_that_fails_changes_nothing,
    parents_are_claimed_before_their_children_and_deleted_after_them,
    an_answer_with_a_server_id_renames_the_record_and_repoints_its_children,
    a_rejection_parks_its_entry_until_retried,
    a_page_conflict_holds_only_its_record_and_the_cursor_comes_with_the_page,
    a_replacement_sweeps_clean_records_the_server_no_longer_has_and_keeps_pending_ones,
    data_only_reads_return_what_full_reads_return,
    gathered_checks_answer_each_ask_as_it_alone_would_be,
    a_subscription_keeps_its_cursor_and_synced_time_across_saves,
    a_record_goes_only_when_no_subscription_holds_it_and_never_while_pending,
    eviction_takes_the_least_recently_used_clean_records_and_never_pending_or_kept_ones,
);

/// Runs every case, each on a fresh store from `make`, and returns the failures: the
/// case's name and what it reported. Empty when the store conforms.
pub async fn run<F, Fut>(make: F) -> Vec<(&'static str, String)>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn LocalStore>>,
{
    let mut failures = Vec::new();
    for case in cases() {
        let store = make().await;
        let check = (case.check)(store);
        if let Err(error) = tokio::spawn(check).await {
            let message = match error.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panicked".into()),
                Err(error) => error.to_string(),
            };
            failures.push((case.name, message));
        }
    }
    failures
}

fn name(text: &str) -> CollectionName {
    CollectionName::new(text).expect("a valid collection name")
}

fn id(text: &str) -> RecordId {
    RecordId::new(text).expect("a valid record id")
}

fn write(collection: &str, record: &str, kind: WriteKind) -> LocalWrite {
    LocalWrite {
        mutation_id: MutationId::generate(),
        collection: name(collection),
        record_id: Some(id(record)),
        kind,
        versioned: true,
        at: Utc::now(),
    }
}

fn object(value: Value) -> JsonObject {
    JsonObject::from_serialize(&value).expect("an object")
}

fn insert(collection: &str, record: &str, data: Value) -> LocalWrite {
    write(collection, record, WriteKind::Insert { data: object(data) })
}

fn update(collection: &str, record: &str, data: Value) -> LocalWrite {
    write(collection, record, WriteKind::Update { data: object(data) })
}

fn delete(collection: &str, record: &str) -> LocalWrite {
    write(collection, record, WriteKind::Delete)
}

async fn must(store: &dyn LocalStore, w: LocalWrite) {
    let what = format!("{w:?}");
    store.write(w).await.unwrap_or_else(|e| panic!("write {what} failed: {e}"));
}

/// The outbox as (record, op, data).
async fn queued(store: &dyn LocalStore) -> Vec<(String, Op, Option<Value>)> {
    let outbox = store.outbox().await.expect("outbox");
    outbox.into_iter().map(|e| (e.record_id.map(|r| r.to_string()).unwrap_or_default(), e.op, e.data)).collect()
}

fn change(collection: &str, record: &str, version: u64, data: Option<Value>) -> Change {
    Change {
        collection: name(collection),
        record_id: id(record),
        version: Version(version),
        deleted: data.is_none(),
        removed: false,
        data,
        mutation_id: None,
    }
}

fn page(collection: &str, changes: Vec<Change>, cursor: &str) -> CollectionPage {
    CollectionPage {
        collection: name(collection),
        stage: false,
        reset: false,
        changes,
        cursor: Some(Cursor(cursor.to_owned())),
        subscription: None,
    }
}

/// What the engine's patterns decide, reduced: a change to a record with a pending
/// write or an open conflict is a conflict; an older version is skipped; else applied.
fn decide(_: &CollectionName, state: Option<&LocalRecordState>, change: &Change) -> PullAction {
    match state {
        Some(s) if s.in_conflict => PullAction::RefreshConflict,
        Some(s) if s.has_pending => PullAction::Conflict,
        Some(s) if s.server_version.is_some_and(|v| change.version <= v) => PullAction::Skip,
        _ => PullAction::Apply,
    }
}

/// Stores `records` as the server's at version 1, as a pull would.
async fn synced(store: &dyn LocalStore, collection: &str, records: &[(&str, Value)]) {
    let changes = records.iter().map(|(r, d)| change(collection, r, 1, Some(d.clone()))).collect();
    store.apply_pull_page(vec![page(collection, changes, "c1")], &decide, Utc::now()).await.expect("a pull page");
}

async fn data_of(store: &dyn LocalStore, collection: &str, record: &str) -> Option<Value> {
    store.get(&name(collection), &id(record)).await.expect("get").map(|r| r.data)
}

async fn writes_fold_into_a_create_nobody_has_sent(store: Arc<dyn LocalStore>) {
    must(&*store, insert("notes", "n1", json!({"id": "n1", "t": 1}))).await;
    must(&*store, update("notes", "n1", json!({"id": "n1", "t": 2}))).await;
    must(&*store, update("notes", "n1", json!({"id": "n1", "t": 3}))).await;
    assert_eq!(
        queued(&*store).await,
        [("n1".to_owned(), Op::Upsert, Some(json!({"id": "n1", "t": 3})))],
        "three writes to an unsent create are one upsert with the last data"
    );
    let record = store.get(&name("notes"), &id("n1")).await.expect("get").expect("stored");
    assert_eq!(record.state, RecordState::Pending(PendingChange::Create));
    // A record the server knows queues every write: each is a change it must see.
    synced(&*store, "notes", &[("n2", json!({"id": "n2", "t": 0}))]).await;
    must(&*store, update("notes", "n2", json!({"id": "n2", "t": 1}))).await;
    must(&*store, update("notes", "n2", json!({"id": "n2", "t": 2}))).await;
    let n2: Vec<_> = queued(&*store).await.into_iter().filter(|(r, _, _)| r == "n2").collect();
    assert_eq!(n2.len(), 2, "updates of an acknowledged record each queue: {n2:?}");
}

async fn a_record_created_and_deleted_before_any_push_leaves_nothing_to_send(store: Arc<dyn LocalStore>) {
    must(&*store, insert("notes", "n1", json!({"id": "n1"}))).await;
    must(&*store, update("notes", "n1", json!({"id": "n1", "t": 2}))).await;
    must(&*store, delete("notes", "n1")).await;
    assert_eq!(queued(&*store).await, [], "the server never needs to hear of it");
    assert_eq!(data_of(&*store, "notes", "n1").await, None);
    assert_eq!(store.counts().await.expect("counts").pending, 0);
}

async fn writes_after_a_claim_queue_behind_it(store: Arc<dyn LocalStore>) {
    must(&*store, insert("notes", "n1", json!({"id": "n1", "t": 1}))).await;
    let claimed = store.claim_push_batch(&[name("notes")], 10, &Relations::default()).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempts, 1, "a claim counts an attempt");
    must(&*store, update("notes", "n1", json!({"id": "n1", "t": 2}))).await;
    let outbox = queued(&*store).await;
    assert_eq!(
        outbox,
        [
            ("n1".to_owned(), Op::Upsert, Some(json!({"id": "n1", "t": 1}))),
            ("n1".to_owned(), Op::Upsert, Some(json!({"id": "n1", "t": 2})))
        ],
        "a claimed entry keeps what was sent; the new write queues behind it"
    );
    // One entry per record per round: the second waits for the first's answer.
    let again = store.claim_push_batch(&[name("notes")], 10, &Relations::default()).await.expect("claim");
    assert!(again.iter().all(|e| e.mutation_id == claimed[0].mutation_id), "{again:?}");
}

async fn a_write_that_fails_changes_nothing(store: Arc<dyn LocalStore>) {
    must(&*store, insert("notes", "n1", json!({"id": "n1"}))).await;
    let before = queued(&*store).await;
    let twice = store.write(insert("notes", "n1", json!({"id": "n1", "t": 9}))).await;
    assert!(matches!(twice, Err(Error::AlreadyExists { .. })), "{twice:?}");
    let missing = store.write(update("notes", "nope", json!({"id": "nope"}))).await;
    assert!(matches!(missing, Err(Error::NotFound { .. })), "{missing:?}");
    let gone = store.write(delete("notes", "nope")).await;
    assert!(matches!(gone, Err(Error::NotFound { .. })), "{gone:?}");
    // A batch with one bad write applies none of it.
    let batch = vec![insert("notes", "n2", json!({"id": "n2"})), insert("notes", "n1", json!({"id": "n1"}))];
    assert!(store.write_many(batch).await.is_err());
    assert_eq!(queued(&*store).await, before, "failed writes queued nothing");
    assert_eq!(data_of(&*store, "notes", "n1").await, Some(json!({"id": "n1"})));
    assert_eq!(data_of(&*store, "notes", "n2").await, None, "the batch is all or nothing");
}

fn order_lines() -> Relations {
    Relations {
        foreign_keys: vec![ForeignKey {
            child: name("lines"),
            field: FieldPath::new("order_id").expect("a field path"),
            parent: name("orders"),
        }],
        server_ids: Vec::new(),
    }
}

async fn parents_are_claimed_before_their_children_and_deleted_after_them(store: Arc<dyn LocalStore>) {
    let relations = order_lines();
    let both = [name("orders"), name("lines")];
    // The child is written first; the parent it points at is not on the server yet.
    must(&*store, insert("orders", "o1", json!({"id": "o1"}))).await;
    must(&*store, insert("lines", "l1", json!({"id": "l1", "order_id": "o1"}))).await;
    let first = store.claim_push_batch(&both, 10, &relations).await.expect("claim");
    let ids: Vec<_> = first.iter().map(|e| e.record_id.as_ref().map(RecordId::to_string)).collect();
    assert_eq!(ids, [Some("o1".to_owned())], "the child waits for its parent");
    let answers =
        first.into_iter().map(|e| (e, MutationOutcome::Applied { version: Version(1), record_id: None })).collect();
    store.record_push_results(answers, &relations, Utc::now()).await.expect("answers");
    let second = store.claim_push_batch(&both, 10, &relations).await.expect("claim");
    let ids: Vec<_> = second.iter().map(|e| e.record_id.as_ref().map(RecordId::to_string)).collect();
    assert_eq!(ids, [Some("l1".to_owned())], "then the child goes");
    let answers =
        second.into_iter().map(|e| (e, MutationOutcome::Applied { version: Version(1), record_id: None })).collect();
    store.record_push_results(answers, &relations, Utc::now()).await.expect("answers");
    // Deleted together, the parent first: the child's delete goes first.
    must(&*store, delete("orders", "o1")).await;
    must(&*store, delete("lines", "l1")).await;
    let third = store.claim_push_batch(&both, 10, &relations).await.expect("claim");
    let ids: Vec<_> = third.iter().map(|e| (e.collection.to_string(), e.op)).collect();
    assert_eq!(ids, [("lines".to_owned(), Op::Delete)], "the parent's delete waits for its child's");
}

async fn an_answer_with_a_server_id_renames_the_record_and_repoints_its_children(store: Arc<dyn LocalStore>) {
    let mut relations = order_lines();
    relations.server_ids = vec![(name("orders"), Some(FieldPath::new("id").expect("a field path")))];
    must(&*store, insert("orders", "local-1", json!({"id": "local-1"}))).await;
    must(&*store, insert("lines", "l1", json!({"id": "l1", "order_id": "local-1"}))).await;
    let claimed = store.claim_push_batch(&[name("orders"), name("lines")], 10, &relations).await.expect("claim");
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    let renamed = MutationOutcome::Applied { version: Version(1), record_id: Some(id("srv-9")) };
    let applied =
        store.record_push_results(vec![(claimed[0].clone(), renamed)], &relations, Utc::now()).await.expect("answers");
    assert_eq!(applied.renamed.len(), 1, "{applied:?}");
    assert_eq!(data_of(&*store, "orders", "local-1").await, None, "the local id is gone");
    assert_eq!(data_of(&*store, "orders", "srv-9").await, Some(json!({"id": "srv-9"})), "renamed, id field too");
    assert_eq!(data_of(&*store, "lines", "l1").await, Some(json!({"id": "l1", "order_id": "srv-9"})));
    let line = store.outbox().await.expect("outbox");
    assert_eq!(line.len(), 1);
    assert_eq!(line[0].data.as_ref().map(|d| d["order_id"].clone()), Some(json!("srv-9")), "the queued child too");
    assert_eq!(store.server_id(&name("orders"), &id("local-1")).await.expect("server id"), Some(id("srv-9")));
}

async fn a_rejection_parks_its_entry_until_retried(store: Arc<dyn LocalStore>) {
    must(&*store, insert("notes", "n1", json!({"id": "n1"}))).await;
    let claimed = store.claim_push_batch(&[name("notes")], 10, &Relations::default()).await.expect("claim");
    let refused = MutationOutcome::Rejected { error: ErrorDetail::new(ErrorCode::Forbidden, "outside your scope") };
    let applied = store
        .record_push_results(vec![(claimed[0].clone(), refused)], &Relations::default(), Utc::now())
        .await
        .expect("answers");
    assert_eq!(applied.rejected.len(), 1);
    let counts = store.counts().await.expect("counts");
    assert_eq!((counts.pending, counts.failed), (0, 1), "parked, not pending");
    let parked = store.failed_mutations().await.expect("failed");
    assert_eq!(parked.len(), 1);
    assert_eq!(data_of(&*store, "notes", "n1").await, Some(json!({"id": "n1"})), "the local write is kept");
    assert!(store.claim_push_batch(&[name("notes")], 10, &Relations::default()).await.expect("claim").is_empty());
    store.retry_failed(parked[0].mutation_id).await.expect("retry");
    let counts = store.counts().await.expect("counts");
    assert_eq!((counts.pending, counts.failed), (1, 0), "queued again");
}

async fn a_page_conflict_holds_only_its_record_and_the_cursor_comes_with_the_page(store: Arc<dyn LocalStore>) {
    synced(&*store, "notes", &[("a", json!({"v": 1})), ("b", json!({"v": 1}))]).await;
    assert_eq!(store.cursor(&name("notes")).await.expect("cursor"), Some(Cursor("c1".into())));
    must(&*store, update("notes", "b", json!({"v": "mine"}))).await;
    let changes = vec![change("notes", "a", 2, Some(json!({"v": 2}))), change("notes", "b", 2, Some(json!({"v": 2})))];
    let applied =
        store.apply_pull_page(vec![page("notes", changes, "c2")], &decide, Utc::now()).await.expect("a pull page");
    assert_eq!(applied.conflicts, [(name("notes"), id("b"))]);
    assert_eq!(data_of(&*store, "notes", "a").await, Some(json!({"v": 2})), "the other record applied");
    assert_eq!(data_of(&*store, "notes", "b").await, Some(json!({"v": "mine"})), "the local side is kept");
    let conflicts = store.conflicts().await.expect("conflicts");
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].server.as_ref().and_then(|s| s.data.clone()), Some(json!({"v": 2})));
    assert_eq!(store.cursor(&name("notes")).await.expect("cursor"), Some(Cursor("c2".into())));
    // An older version than the one held is skipped.
    let stale = vec![change("notes", "a", 1, Some(json!({"v": "old"})))];
    store.apply_pull_page(vec![page("notes", stale, "c3")], &decide, Utc::now()).await.expect("a pull page");
    assert_eq!(data_of(&*store, "notes", "a").await, Some(json!({"v": 2})));
}

async fn a_replacement_sweeps_clean_records_the_server_no_longer_has_and_keeps_pending_ones(
    store: Arc<dyn LocalStore>,
) {
    synced(&*store, "notes", &[("kept", json!({"v": 1})), ("mine", json!({"v": 1})), ("gone", json!({"v": 1}))]).await;
    must(&*store, update("notes", "mine", json!({"v": "edited"}))).await;
    must(&*store, insert("notes", "new", json!({"v": "created here"}))).await;
    let mut staged = page("notes", vec![change("notes", "kept", 2, Some(json!({"v": 2})))], "r1");
    staged.stage = true;
    staged.reset = true;
    store.apply_pull_page(vec![staged], &decide, Utc::now()).await.expect("a staged page");
    // Until the replacement ends, the old records stand whole.
    assert_eq!(data_of(&*store, "notes", "gone").await, Some(json!({"v": 1})));
    store
        .finish_replacement(&name("notes"), Some(Cursor("r2".into())), &decide, Utc::now())
        .await
        .expect("the replacement");
    assert_eq!(data_of(&*store, "notes", "kept").await, Some(json!({"v": 2})));
    assert_eq!(data_of(&*store, "notes", "gone").await, None, "swept: the server no longer has it");
    assert_eq!(data_of(&*store, "notes", "mine").await, Some(json!({"v": "edited"})), "a pending write survives");
    assert_eq!(data_of(&*store, "notes", "new").await, Some(json!({"v": "created here"})), "an unsent create too");
    assert_eq!(store.cursor(&name("notes")).await.expect("cursor"), Some(Cursor("r2".into())));
    assert_eq!(store.counts().await.expect("counts").pending, 2);
}

/// `query_data` (what `fetch` and `watch` read) is `query` without the states: the same
/// records, in the same order, with the same data, pending deletes included or not.
async fn data_only_reads_return_what_full_reads_return(store: Arc<dyn LocalStore>) {
    synced(&*store, "notes", &[("a", json!({"n": 3})), ("b", json!({"n": 1})), ("c", json!({"n": 2}))]).await;
    must(&*store, update("notes", "b", json!({"n": 5, "edited": true}))).await;
    must(&*store, delete("notes", "c")).await;
    must(&*store, insert("notes", "d", json!({"n": 0}))).await;
    for include_pending_deletes in [false, true] {
        let mut query = Query::all(name("notes"));
        query.order_by = vec![(FieldPath::new("n").expect("path"), Order::Desc)];
        query.include_pending_deletes = include_pending_deletes;
        let full: Vec<(RecordId, Value)> =
            store.query(&query).await.expect("query").into_iter().map(|r| (r.id, r.data)).collect();
        let data: Vec<(RecordId, Value)> = store
            .query_data(&query)
            .await
            .expect("query_data")
            .into_iter()
            .map(|r| (r.id, serde_json::from_str(&r.json).expect("stored JSON")))
            .collect();
        assert_eq!(data, full, "pending deletes included: {include_pending_deletes}");
        let ids: Vec<&str> = data.iter().map(|(id, _)| id.as_str()).collect();
        let expected: &[&str] = if include_pending_deletes { &["b", "a", "c", "d"] } else { &["b", "a", "d"] };
        assert_eq!(ids, expected, "in the query's order");
    }
}

/// `matching_each` (how the watches woken by one change ask in one trip) answers every
/// ask as `matching` answers it alone, in the order asked, the empty ones included.
async fn gathered_checks_answer_each_ask_as_it_alone_would_be(store: Arc<dyn LocalStore>) {
    synced(&*store, "notes", &[("a", json!({"n": 1})), ("b", json!({"n": 2})), ("c", json!({"n": 3}))]).await;
    synced(&*store, "tasks", &[("a", json!({"n": 2}))]).await;
    must(&*store, delete("notes", "c")).await;
    let with = |collection: &str, filter: Option<Filter>| {
        let mut query = Query::all(name(collection));
        if let Some(filter) = filter {
            query.filter = filter;
        }
        query
    };
    let ids = |list: &[&str]| list.iter().map(|i| id(i)).collect::<Vec<_>>();
    let at_least_two = || Filter::compare("n", sync_core::Cmp::Ge, 2).expect("filter");
    let mut asks = vec![
        (with("notes", None), ids(&["a", "b", "c", "zz"])),
        (with("notes", Some(at_least_two())), ids(&["a", "b", "c"])),
        (with("tasks", Some(at_least_two())), ids(&["a", "b"])),
        (with("notes", None), Vec::new()),
    ];
    // More asks than one statement takes, so the answers cross statements.
    for i in 0..150 {
        asks.push((with("notes", Some(Filter::eq("n", i % 3 + 1).expect("filter"))), ids(&["a", "b"])));
    }
    let gathered = store.matching_each(&asks).await.expect("matching_each");
    assert_eq!(gathered.len(), asks.len(), "one answer per ask");
    for (i, (query, ask)) in asks.iter().enumerate() {
        let mut alone = store.matching(query, ask).await.expect("matching");
        let mut together = gathered[i].clone();
        alone.sort();
        together.sort();
        assert_eq!(together, alone, "ask {i}");
    }
    assert_eq!(gathered[0].len(), 2, "the deleted record and an unknown id do not match");
    assert_eq!(gathered[2], vec![id("a")], "each ask keeps its own collection");
}

/// A subscription of `notes` whose `k` equals `value`, and its row as the app saves it.
fn subscription(value: &str) -> SubscriptionRow {
    let s = Subscribe::to("notes").expect("a collection").eq("k", value).expect("a field");
    SubscriptionRow {
        id: s.id(),
        query: s.query().clone(),
        cursor: None,
        ttl: std::time::Duration::from_secs(60),
        keep_synced: false,
        active: true,
        released_at: None,
        synced_at: None,
    }
}

/// A page of a subscription's changes.
fn sub_page(sub: &SubscriptionRow, changes: Vec<Change>, cursor: &str, finished: bool) -> CollectionPage {
    CollectionPage {
        subscription: Some(SubscriptionPart { id: sub.id.clone(), finished }),
        ..page("notes", changes, cursor)
    }
}

fn removal(record: &str, version: u64) -> Change {
    Change { removed: true, ..change("notes", record, version, None) }
}

async fn a_subscription_keeps_its_cursor_and_synced_time_across_saves(store: Arc<dyn LocalStore>) {
    let sub = subscription("a");
    store.save_subscription(&sub).await.expect("save");
    let page = sub_page(&sub, vec![change("notes", "n1", 1, Some(json!({"k": "a"})))], "s1", true);
    store.apply_pull_page(vec![page], &decide, Utc::now()).await.expect("a subscription page");
    let released = SubscriptionRow { active: false, released_at: Some(Utc::now()), ..sub.clone() };
    store.save_subscription(&released).await.expect("save");
    let rows = store.subscriptions().await.expect("subscriptions");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].cursor, Some(Cursor("s1".into())), "the cursor stays");
    assert!(rows[0].synced_at.is_some(), "a finished download is a synced time");
    assert!(!rows[0].active && rows[0].released_at.is_some(), "the release is saved");
    assert_eq!(rows[0].query, sub.query);
    assert_eq!(store.cursor(&name("notes")).await.expect("cursor"), None, "not the collection's cursor");
}

async fn a_record_goes_only_when_no_subscription_holds_it_and_never_while_pending(store: Arc<dyn LocalStore>) {
    let (a, b) = (subscription("a"), subscription("b"));
    for sub in [&a, &b] {
        store.save_subscription(sub).await.expect("save");
    }
    let v = |n: u64, record: &str| change("notes", record, n, Some(json!({"r": record})));
    let pages = vec![
        sub_page(&a, vec![v(1, "both"), v(1, "only_a"), v(1, "mine"), v(1, "moves")], "a1", true),
        sub_page(&b, vec![v(1, "both"), v(1, "moves")], "b1", true),
    ];
    store.apply_pull_page(pages, &decide, Utc::now()).await.expect("subscription pages");
    // A removal from `a` of a record `b` still holds keeps it.
    let page = sub_page(&a, vec![removal("moves", 2)], "a2", true);
    store.apply_pull_page(vec![page], &decide, Utc::now()).await.expect("a removal");
    assert!(data_of(&*store, "notes", "moves").await.is_some(), "b still holds it");
    // `mine` gets a pending write; then `a` is dropped.
    must(&*store, update("notes", "mine", json!({"r": "edited"}))).await;
    let dropped = store.drop_subscriptions(std::slice::from_ref(&a.id)).await.expect("drop");
    assert_eq!(dropped, [(name("notes"), id("only_a"))], "only what a alone held and nothing pending");
    assert_eq!(data_of(&*store, "notes", "mine").await, Some(json!({"r": "edited"})), "a pending write stays");
    assert!(data_of(&*store, "notes", "both").await.is_some());
    assert_eq!(store.subscriptions().await.expect("subscriptions").len(), 1);
    // `b` starts over and its download sends `both` only: `moves` goes when it ends.
    let mut restart = sub_page(&b, vec![v(1, "both")], "b2", false);
    restart.reset = true;
    store.apply_pull_page(vec![restart], &decide, Utc::now()).await.expect("a reset page");
    assert!(data_of(&*store, "notes", "moves").await.is_some(), "kept until the download ends");
    let last = sub_page(&b, vec![], "b3", true);
    store.apply_pull_page(vec![last], &decide, Utc::now()).await.expect("the last page");
    assert_eq!(data_of(&*store, "notes", "moves").await, None, "not sent again: let go");
    assert!(data_of(&*store, "notes", "both").await.is_some());
}

async fn eviction_takes_the_least_recently_used_clean_records_and_never_pending_or_kept_ones(
    store: Arc<dyn LocalStore>,
) {
    let released = SubscriptionRow { active: false, released_at: Some(Utc::now()), ..subscription("a") };
    let held = subscription("b");
    let kept = SubscriptionRow { keep_synced: true, active: false, ..subscription("k") };
    for sub in [&released, &held, &kept] {
        store.save_subscription(sub).await.expect("save");
    }
    let v = |record: &str| change("notes", record, 1, Some(json!({"r": record, "pad": "x".repeat(100)})));
    let pages = vec![
        sub_page(&released, vec![v("r1"), v("r2")], "a1", true),
        sub_page(&held, vec![v("r3"), v("r4"), v("r5")], "b1", true),
        sub_page(&kept, vec![v("r6")], "k1", true),
    ];
    store.apply_pull_page(pages, &decide, Utc::now()).await.expect("subscription pages");
    // r1 gets a pending write; r3 is read after r5, r4 after both.
    must(&*store, update("notes", "r1", json!({"r": "edited"}))).await;
    let later = |s: i64| Utc::now() + chrono::Duration::seconds(s);
    store.touch(&[(name("notes"), id("r3"), later(10)), (name("notes"), id("r4"), later(20))]).await.expect("touch");
    let size = store.cache_size().await.expect("cache size");
    assert!(size > 0, "clean records held by subscriptions are counted");

    let order =
        [("r2", "a released subscription's record goes first"), ("r5", "then the held one's least recently read")];
    let mut left = size;
    for (record, why) in order {
        let evicted = store.evict(1).await.expect("evict");
        assert_eq!(evicted.records, [(name("notes"), id(record))], "{why}");
        assert!(evicted.bytes > 0 && evicted.bytes <= left, "what it frees is counted");
        left -= evicted.bytes;
        assert_eq!(store.cache_size().await.expect("cache size"), left, "the size drops by what was freed");
        assert_eq!(data_of(&*store, "notes", record).await, None, "{record} is gone");
    }
    let evicted = store.evict(u64::MAX).await.expect("evict");
    let mut rest: Vec<_> = evicted.records.iter().map(|(_, i)| i.to_string()).collect();
    rest.sort();
    assert_eq!(rest, ["r3", "r4"], "everything evictable, and nothing else");
    assert_eq!(store.cache_size().await.expect("cache size"), 0);
    assert_eq!(data_of(&*store, "notes", "r1").await, Some(json!({"r": "edited"})), "a pending write stays");
    assert!(data_of(&*store, "notes", "r6").await.is_some(), "a kept-synced record stays");

    // Asked for while its subscription is held, an evicted record is fetched again: the
    // subscription downloads from the start. A released one's record is not.
    assert!(!store.fetch_again(&name("notes"), &id("r2")).await.expect("fetch again"), "released: not fetched");
    assert!(store.fetch_again(&name("notes"), &id("r3")).await.expect("fetch again"), "held: fetched again");
    let rows = store.subscriptions().await.expect("subscriptions");
    let restarted = rows.iter().find(|r| r.id == held.id).expect("the held subscription");
    assert_eq!((restarted.cursor.as_ref(), restarted.synced_at), (None, None), "it downloads again");
    let page = sub_page(&held, vec![v("r3"), v("r4"), v("r5")], "b2", true);
    store.apply_pull_page(vec![page], &decide, Utc::now()).await.expect("the download again");
    assert!(data_of(&*store, "notes", "r3").await.is_some(), "back");
    assert!(store.cache_size().await.expect("cache size") > 0, "and counted again");

    // Letting go of what no subscription holds: a clean record goes, a pending one stays.
    synced(&*store, "notes", &[("plain", json!({"r": "plain"}))]).await;
    must(&*store, insert("notes", "mine", json!({"r": "mine"}))).await;
    let pending = store.let_go_unheld(&[(name("notes"), id("mine"))]).await.expect("let go");
    assert!(pending.is_empty(), "a pending record stays");
    let dropped = store.let_go_all_unheld(&[name("notes")]).await.expect("let go of all");
    assert_eq!(dropped, [(name("notes"), id("plain"))], "only the clean record no subscription holds");
    assert!(data_of(&*store, "notes", "mine").await.is_some());
    assert!(data_of(&*store, "notes", "r6").await.is_some(), "held by a subscription: stays");
}

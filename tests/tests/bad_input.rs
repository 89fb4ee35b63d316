//! Bad input gets typed errors and loses nothing from the outbox or the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{WorkOrder, engine_on, engine_with, quiet, wo};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sync_core::protocol::{Change, PullResponse};
use sync_core::{CollectionName, CollectionSpec, Engine, Error, LocalEntity, LocalStore, RecordId, Version};
use sync_patterns::ConflictDetection;
use sync_sqlite::SqliteStore;
use sync_testkit::MemoryServer;

#[derive(Serialize, Deserialize)]
struct BadName {
    id: String,
}
impl LocalEntity for BadName {
    const COLLECTION: &'static str = "Work-Orders";
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Serialize, Deserialize)]
struct NotRegistered {
    id: String,
}
impl LocalEntity for NotRegistered {
    const COLLECTION: &'static str = "not_registered";
    fn id(&self) -> &str {
        &self.id
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_unknown_collection_names_are_typed_errors() {
    let server = Arc::new(MemoryServer::new());
    let built = Engine::builder()
        .store(Arc::new(SqliteStore::in_memory().await.unwrap()))
        .transport(server.clone())
        .collection(CollectionSpec::of::<BadName>(ConflictDetection::new()))
        .build()
        .await;
    assert!(matches!(built, Err(Error::InvalidCollectionName { ref name, .. }) if name == "Work-Orders"));

    let dup = Engine::builder()
        .store(Arc::new(SqliteStore::in_memory().await.unwrap()))
        .transport(server.clone())
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .build()
        .await;
    assert!(matches!(dup, Err(Error::Config { .. })));
    let no_store = Engine::builder().transport(server.clone()).build().await;
    assert!(matches!(no_store, Err(Error::Config { .. })));

    let engine = engine_on(SqliteStore::in_memory().await.unwrap(), &server, quiet()).await;
    assert!(matches!(engine.collection::<NotRegistered>(), Err(Error::UnknownCollection { .. })));
    assert!(matches!(
        engine.resolve("nope", "r", sync_core::Resolution::KeepLocal).await,
        Err(Error::UnknownCollection { .. })
    ));
    assert!(matches!(
        engine.resolve("Bad Name", "r", sync_core::Resolution::KeepLocal).await,
        Err(Error::InvalidCollectionName { .. })
    ));
    assert!(matches!(engine.sync_unit("no_such_unit", Default::default()).await, Err(Error::Config { .. })));
    let orders = engine.collection::<WorkOrder>().unwrap();
    assert!(matches!(orders.insert(&wo("", "x", 1)).await, Err(Error::InvalidRecordId { .. })));
    assert!(matches!(orders.update(&wo("missing", "x", 1)).await, Err(Error::NotFound { .. })));
    assert!(matches!(orders.delete("missing").await, Err(Error::NotFound { .. })));
    orders.insert(&wo("a", "x", 1)).await.unwrap();
    assert!(matches!(orders.insert(&wo("a", "again", 2)).await, Err(Error::AlreadyExists { .. })));
    // insert_many is all or none.
    let batch = [wo("b", "x", 1), wo("a", "dup", 1), wo("c", "x", 1)];
    assert!(matches!(orders.insert_many(&batch).await, Err(Error::AlreadyExists { ref id, .. }) if id.as_str() == "a"));
    assert_eq!(orders.list().await.unwrap(), vec![wo("a", "x", 1)]);
}

/// Sets up a client with one synced record and one pending write, for pages to break.
async fn client_with_state(dir: &tempfile::TempDir, server: &Arc<MemoryServer>) -> (Engine, SqliteStore) {
    let store = SqliteStore::open(dir.path().join("c.db")).await.unwrap();
    let engine = engine_on(store.clone(), server, quiet()).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    orders.insert(&wo("synced", "ok", 1)).await.unwrap();
    engine.sync_now().await.unwrap();
    orders.insert(&wo("pending", "queued", 1)).await.unwrap();
    (engine, store)
}

async fn assert_nothing_lost(engine: &Engine, store: &SqliteStore) {
    let orders = engine.collection::<WorkOrder>().unwrap();
    assert_eq!(orders.get("synced").await.unwrap(), Some(wo("synced", "ok", 1)));
    assert_eq!(orders.get("pending").await.unwrap(), Some(wo("pending", "queued", 1)));
    let outbox = store.outbox().await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].record_id.as_ref().unwrap().as_str(), "pending");
}

fn change(collection: &str, id: &str, version: u64, data: Option<serde_json::Value>) -> Change {
    Change {
        collection: CollectionName::new(collection).unwrap(),
        record_id: RecordId::new(id).unwrap(),
        version: Version(version),
        deleted: data.is_none(),
        removed: false,
        data,
        mutation_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pages_are_refused_whole_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let (engine, store) = client_with_state(&dir, &server).await;
    let cursor_before = store.cursor(&CollectionName::new("work_orders").unwrap()).await.unwrap();
    let wo_name = CollectionName::new("work_orders").unwrap();
    let pages = [
        // A collection that was not asked for.
        PullResponse {
            changes: vec![change("products", "p", 1, Some(json!({})))],
            cursors: Default::default(),
            has_more: false,
            reset: vec![],
            subscriptions: Default::default(),
        },
        // A live record without data, and data that is not an object.
        PullResponse {
            changes: vec![Change { deleted: false, ..change("work_orders", "synced", 5, None) }],
            cursors: Default::default(),
            has_more: false,
            reset: vec![],
            subscriptions: Default::default(),
        },
        PullResponse {
            changes: vec![change("work_orders", "synced", 5, Some(json!([1, 2])))],
            cursors: Default::default(),
            has_more: false,
            reset: vec![],
            subscriptions: Default::default(),
        },
        // Version 0 does not exist.
        PullResponse {
            changes: vec![change("work_orders", "synced", 0, Some(json!({"id": "synced", "title": "x", "n": 1})))],
            cursors: Default::default(),
            has_more: false,
            reset: vec![],
            subscriptions: Default::default(),
        },
        // has_more forever without moving.
        PullResponse {
            changes: vec![],
            cursors: Default::default(),
            has_more: true,
            reset: vec![],
            subscriptions: Default::default(),
        },
        // A cursor for a collection that was not asked for.
        PullResponse {
            changes: vec![],
            cursors: [(CollectionName::new("products").unwrap(), sync_core::Cursor("1".into()))].into_iter().collect(),
            has_more: false,
            reset: vec![],
            subscriptions: Default::default(),
        },
    ];
    for page in pages {
        server.override_next_pull(page.clone());
        let result = engine.sync_unit("pull_orders", Default::default()).await;
        assert!(matches!(result, Err(Error::MalformedResponse { .. })), "{page:?} gave {result:?}");
        assert_nothing_lost(&engine, &store).await;
        assert_eq!(store.cursor(&wo_name).await.unwrap(), cursor_before, "the cursor did not move");
    }
    assert!(engine.status().borrow().last_error.as_deref().unwrap().contains("malformed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_record_that_does_not_fit_the_entity_is_a_typed_error_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let (engine, store) = client_with_state(&dir, &server).await;
    let wo_name = CollectionName::new("work_orders").unwrap();
    let cursor_before = store.cursor(&wo_name).await.unwrap();
    server.put("work_orders", "other", json!({"id": "other", "title": "fine", "n": 2}));
    server.put("work_orders", "broken", json!({"id": "broken", "title": 5, "n": "five"}));
    let result = engine.sync_unit("pull_orders", Default::default()).await;
    assert!(matches!(result, Err(Error::InvalidRecord { ref id, .. }) if id == "broken"), "{result:?}");
    assert_nothing_lost(&engine, &store).await;
    assert_eq!(
        engine.collection::<WorkOrder>().unwrap().get("other").await.unwrap(),
        None,
        "the page was refused whole"
    );
    assert_eq!(store.cursor(&wo_name).await.unwrap(), cursor_before);

    // Once the server fixes the record, the same pull goes through.
    server.put("work_orders", "broken", json!({"id": "broken", "title": "fixed", "n": 5}));
    engine.sync_unit("pull_orders", Default::default()).await.unwrap();
    assert_eq!(engine.collection::<WorkOrder>().unwrap().get("broken").await.unwrap(), Some(wo("broken", "fixed", 5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_push_answer_keeps_every_mutation_queued() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    let (engine, store) = client_with_state(&dir, &server).await;
    server.fail_next_push(Error::MalformedResponse { message: "not JSON".into() });
    assert!(matches!(engine.sync_now().await, Err(Error::MalformedResponse { .. })));
    assert_nothing_lost(&engine, &store).await;
    server.fail_next_push(Error::Transient { message: "503".into() });
    assert!(matches!(engine.sync_now().await, Err(Error::Transient { .. })));
    assert_nothing_lost(&engine, &store).await;
    engine.sync_now().await.unwrap();
    assert!(store.outbox().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_pauses_pushes_and_new_credentials_send_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(MemoryServer::new());
    server.require_token(Some("good"));
    let store = SqliteStore::open(dir.path().join("c.db")).await.unwrap();
    let engine = engine_on(store.clone(), &server, quiet()).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    orders.insert(&wo("a", "x", 1)).await.unwrap();
    let queued: Vec<_> = store.outbox().await.unwrap().into_iter().map(|e| e.mutation_id).collect();
    assert!(matches!(engine.sync_now().await, Err(Error::Unauthorized { .. })));
    assert_eq!(engine.status().borrow().auth, sync_core::AuthState::Required);
    // Writes go on; syncing waits for credentials without touching the server.
    orders.insert(&wo("b", "x", 1)).await.unwrap();
    let calls = server.calls();
    assert!(matches!(engine.sync_now().await, Err(Error::Unauthorized { .. })));
    assert_eq!(server.calls(), calls);
    assert_eq!(store.outbox().await.unwrap().len(), 2, "nothing dropped");

    let mut status = engine.status();
    let good = sync_core::Credentials::new(sync_core::AccountId::new("good").unwrap(), "good").unwrap();
    engine.set_credentials(good).await.unwrap();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        status.wait_for(|s| s.pending == 0 && s.auth == sync_core::AuthState::Ok),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(server.applied()[0].mutation_id, queued[0], "the same mutation id went out");
    assert_eq!(server.applied().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_pointing_at_an_unregistered_parent_is_a_configuration_error() {
    let server = Arc::new(MemoryServer::new());
    let built = Engine::builder()
        .store(Arc::new(SqliteStore::in_memory().await.unwrap()))
        .transport(server)
        .collection(CollectionSpec::of::<WorkOrder>(
            sync_patterns::OneToMany::new(ConflictDetection::new()).belongs_to("site_id", "sites").unwrap(),
        ))
        .build()
        .await;
    assert!(
        matches!(built, Err(Error::Config { ref message }) if message.contains("sites") && message.contains("site_id")),
        "{:?}",
        built.err()
    );
}

/// Answers every applied push as if the server had renamed the record.
struct RenamingServer(Arc<MemoryServer>);

#[async_trait::async_trait]
impl sync_core::Transport for RenamingServer {
    async fn push(
        &self,
        request: &sync_core::protocol::PushRequest,
    ) -> Result<sync_core::protocol::PushResponse, Error> {
        let mut response = self.0.push(request).await?;
        for r in &mut response.results {
            if let sync_core::protocol::MutationOutcome::Applied { record_id, .. } = &mut r.outcome {
                *record_id = Some(RecordId::new("forged").unwrap());
            }
        }
        Ok(response)
    }
    async fn pull(&self, request: &sync_core::protocol::PullRequest) -> Result<PullResponse, Error> {
        self.0.pull(request).await
    }
    async fn probe(&self) -> Result<(), Error> {
        self.0.probe().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_in_a_collection_with_client_ids_is_malformed_and_renames_nothing() {
    let server = Arc::new(MemoryServer::new());
    let engine = engine_with(SqliteStore::in_memory().await.unwrap(), Arc::new(RenamingServer(server))).await;
    let orders = engine.collection::<WorkOrder>().unwrap();
    orders.insert(&wo("w1", "mine", 1)).await.unwrap();
    let err = engine.sync_now().await.unwrap_err();
    assert!(matches!(err, Error::MalformedResponse { .. }), "{err}");
    // The record keeps its id, nothing was recorded as renamed, and the create stays queued
    assert_eq!(orders.get("w1").await.unwrap(), Some(wo("w1", "mine", 1)));
    assert_eq!(orders.get("forged").await.unwrap(), None);
    assert_eq!(engine.server_id("work_orders", "w1").await.unwrap(), None);
    assert_eq!(engine.status().borrow().pending, 1);
}

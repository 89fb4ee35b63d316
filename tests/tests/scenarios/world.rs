//! The scenario world: the reference server over HTTP on 127.0.0.1 (SQLite) and devices
//! with real engines on SQLite files, one collection per pattern.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sync_core::entity::MappingError;
use sync_core::protocol::{Op, PullRequest, PullResponse, PushRequest, PushResponse};
use sync_core::{
    CollectionSpec, Conflict, Credentials, Engine, EngineOptions, Error, FieldPath, IdAssignment, LocalEntity,
    ServerMapping, Transport,
};
use sync_http::HttpTransport;
use sync_patterns::{ConflictDetection, LastWriteWins, OneToMany, ReadOnly, ReadOnlyOptimized};
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{RunningServer, from_config, start};
use sync_server::store::ServerStore;
use sync_sqlite::SqliteStore;

macro_rules! entity {
    ($name:ident, $collection:literal) => {
        /// A record of the scenario collection.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            pub id: String,
            pub title: String,
            #[serde(default)]
            pub n: u32,
        }

        impl LocalEntity for $name {
            const COLLECTION: &'static str = $collection;
            fn id(&self) -> &str {
                &self.id
            }
        }

        impl $name {
            pub fn new(id: &str, title: &str, n: u32) -> Self {
                Self { id: id.to_owned(), title: title.to_owned(), n }
            }
        }
    };
}

entity!(Order, "orders");
entity!(Note, "notes");
entity!(Product, "products");
entity!(Customer, "customers");
entity!(Job, "jobs");

/// A task of a job (one-to-many: `job_id` points at a job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub job_id: String,
    pub title: String,
}

impl LocalEntity for Task {
    const COLLECTION: &'static str = "tasks";
    fn id(&self) -> &str {
        &self.id
    }
}

impl Task {
    pub fn new(id: &str, job_id: &str, title: &str) -> Self {
        Self { id: id.to_owned(), job_id: job_id.to_owned(), title: title.to_owned() }
    }
}

/// Jobs get their ids from the server (`ids = "server"`); the job's id is its `id` field.
struct JobMapping;

impl ServerMapping for JobMapping {
    fn to_server(&self, local: &Value) -> Result<Value, MappingError> {
        Ok(local.clone())
    }
    fn to_local(&self, server: Value) -> Result<Value, MappingError> {
        Ok(server)
    }
    fn id_assignment(&self) -> IdAssignment {
        IdAssignment::Server { id_field: FieldPath::new("id").ok() }
    }
}

/// Which resolver the device's conflict-detection collection uses.
#[derive(Clone)]
pub enum Resolver {
    Defer,
    Pattern(ConflictDetection),
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub server: RunningServer,
    pub store: Arc<dyn ServerStore>,
}

impl World {
    /// Users alice and bob (role user) and admin; orders and notes owned per user,
    /// products and customers read-only.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite://{}", dir.path().join("server.db").display());
        let text = format!(
            "database = \"{database}\"\ntombstone_retention = \"1s\"\n\
             [[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n\
             [[users]]\nname = \"admin\"\ntoken_sha256 = \"{}\"\nrole = \"admin\"\n\
             [collections.orders]\naccess = \"owner\"\n[collections.notes]\naccess = \"owner\"\n\
             [collections.products]\naccess = \"read_only\"\n[collections.customers]\naccess = \"read_only\"\n\
             [collections.jobs]\naccess = \"owner\"\nids = \"server\"\n[collections.tasks]\naccess = \"owner\"\n",
            token_sha256("alice-token"),
            token_sha256("admin-token"),
        );
        let config = ServerConfig::from_toml(&text).unwrap();
        let (state, store) = from_config(&config).await.unwrap();
        // A long purge interval: scenarios purge tombstones themselves.
        let server = start("127.0.0.1:0", state, store.clone(), std::time::Duration::from_secs(3600)).await.unwrap();
        World { dir, server, store }
    }

    /// The file of device `name`'s store.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.db"))
    }

    /// Alice's device `name`, orders resolved by `resolver`.
    pub async fn device(&self, name: &str, resolver: Resolver) -> Device {
        let transport = Arc::new(Faulty::new(http_as(&self.server.url(), "alice")));
        self.device_with(name, resolver, transport).await
    }

    /// Opens (or reopens, after a crash) the device's store with `transport`.
    pub async fn device_with(&self, name: &str, resolver: Resolver, transport: Arc<Faulty>) -> Device {
        let orders = match &resolver {
            Resolver::Defer => ConflictDetection::new(),
            Resolver::Pattern(p) => p.clone(),
        };
        let engine = Engine::builder()
            .store(Arc::new(SqliteStore::open(self.path(name)).await.unwrap()))
            .transport(transport.clone())
            .collection(CollectionSpec::of::<Order>(orders))
            .collection(CollectionSpec::of::<Note>(LastWriteWins))
            .collection(CollectionSpec::of::<Product>(ReadOnly))
            .collection(CollectionSpec::of::<Customer>(ReadOnlyOptimized))
            .collection(CollectionSpec::of::<Job>(ConflictDetection::new()).mapping(JobMapping))
            .collection(CollectionSpec::of::<Task>(
                OneToMany::new(ConflictDetection::new()).belongs_to("job_id", "jobs").unwrap(),
            ))
            .options(EngineOptions {
                sync_on_start: false,
                debounce: std::time::Duration::from_secs(3600),
                pull_limit: 2,
                ..EngineOptions::default()
            })
            .build()
            .await
            .unwrap();
        Device { name: name.to_owned(), engine, transport, resolver }
    }

    /// The admin's device: writes the read-only collections (last write wins).
    pub async fn admin(&self) -> Engine {
        self.admin_with_faults().await.0
    }

    /// The admin's device (reopened from its file if it existed) and its transport.
    pub async fn admin_with_faults(&self) -> (Engine, Arc<Faulty>) {
        let transport = Arc::new(Faulty::new(http_as(&self.server.url(), "admin")));
        let engine = Engine::builder()
            .store(Arc::new(SqliteStore::open(self.path("admin")).await.unwrap()))
            .collection(CollectionSpec::of::<Product>(LastWriteWins))
            .collection(CollectionSpec::of::<Customer>(LastWriteWins))
            .transport(transport.clone())
            .options(EngineOptions {
                sync_on_start: false,
                debounce: std::time::Duration::from_secs(3600),
                ..EngineOptions::default()
            })
            .build()
            .await
            .unwrap();
        (engine, transport)
    }

    /// Purges every tombstone on the server now (as the retention loop would later).
    pub async fn purge_tombstones(&self) {
        self.store.purge_tombstones(Utc::now() + chrono::Duration::seconds(1)).await.unwrap();
    }

    /// What the server holds of alice's `collection`: (id, version, title) of live records.
    pub async fn server_view(&self, collection: &str) -> Vec<(String, u64, String)> {
        self.server_data(collection)
            .await
            .into_iter()
            .map(|(id, (v, data))| {
                let title = data["title"].as_str().unwrap_or_default().to_owned();
                (id, v, title)
            })
            .collect()
    }

    /// The live records of alice's `collection` on the server: id → (version, data).
    pub async fn server_data(&self, collection: &str) -> std::collections::BTreeMap<String, (u64, Value)> {
        let probe = http_as(&self.server.url(), "alice");
        let mut cursor = None;
        let mut out = std::collections::BTreeMap::new();
        loop {
            let request = PullRequest {
                client_id: sync_core::ClientId("probe".into()),
                collections: [(sync_core::CollectionName::new(collection).unwrap(), cursor.clone())].into(),
                limit: Some(1000),
                subscriptions: Default::default(),
            };
            let page = probe.pull(&request).await.unwrap();
            for c in page.changes {
                match c.data {
                    Some(data) if !c.deleted => {
                        out.insert(c.record_id.to_string(), (c.version.0, data));
                    }
                    _ => {
                        out.remove(c.record_id.as_str());
                    }
                }
            }
            cursor = page.cursors.values().next().cloned();
            if !page.has_more {
                break;
            }
        }
        out
    }
}

pub struct Device {
    pub name: String,
    pub engine: Engine,
    pub transport: Arc<Faulty>,
    pub resolver: Resolver,
}

impl Device {
    pub fn orders(&self) -> sync_core::Collection<Order> {
        self.engine.collection::<Order>().unwrap()
    }
    pub fn notes(&self) -> sync_core::Collection<Note> {
        self.engine.collection::<Note>().unwrap()
    }
    pub fn products(&self) -> sync_core::Collection<Product> {
        self.engine.collection::<Product>().unwrap()
    }
    pub fn customers(&self) -> sync_core::Collection<Customer> {
        self.engine.collection::<Customer>().unwrap()
    }
    pub fn jobs(&self) -> sync_core::Collection<Job> {
        self.engine.collection::<Job>().unwrap()
    }
    pub fn tasks(&self) -> sync_core::Collection<Task> {
        self.engine.collection::<Task>().unwrap()
    }

    /// Syncs until nothing is left to push and no follow-up is needed (resolutions
    /// queued by a resolver go out in the next cycle).
    pub async fn sync(&self) {
        for _ in 0..3 {
            self.engine.sync_now().await.unwrap();
        }
    }

    pub async fn conflicts(&self) -> Vec<Conflict> {
        self.engine.conflicts().await.unwrap()
    }

    /// Kills the device (engine dropped without shutdown) and reopens its store file
    /// with a healthy transport.
    pub async fn crash_and_restart(self, world: &World) -> Device {
        let Device { name, engine, resolver, .. } = self;
        drop(engine);
        // The driver task ends on its own; give it a moment to let go of the file.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        world.device(&name, resolver).await
    }
}

/// `HttpTransport` with faults the real server cannot produce on demand: the answer to a
/// push lost after the server applied it, or a pull failing after some pages.
/// It also logs what each push carried, so scenarios can check the order on the wire.
pub struct Faulty {
    inner: HttpTransport,
    lose_push_answers: AtomicUsize,
    fail_pull_after: AtomicUsize,
    pushed: std::sync::Mutex<Vec<Vec<Pushed>>>,
}

/// One mutation as it went over the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    pub collection: String,
    pub record_id: String,
    pub op: Op,
    pub data: Option<Value>,
}

impl Faulty {
    pub fn new(inner: HttpTransport) -> Self {
        Self {
            inner,
            lose_push_answers: AtomicUsize::new(0),
            fail_pull_after: AtomicUsize::new(usize::MAX),
            pushed: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Every push request so far, in order, each with its mutations in order.
    pub fn pushed(&self) -> Vec<Vec<Pushed>> {
        self.pushed.lock().unwrap().clone()
    }

    /// The next push reaches the server, which applies it; its answer is lost.
    pub fn lose_next_push_answer(&self) {
        self.lose_push_answers.store(1, Ordering::SeqCst);
    }

    /// Pulls fail after `pages` more succeed.
    pub fn fail_pulls_after(&self, pages: usize) {
        self.fail_pull_after.store(pages, Ordering::SeqCst);
    }
}

#[async_trait]
impl Transport for Faulty {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, Error> {
        self.pushed.lock().unwrap().push(
            request
                .mutations
                .iter()
                .map(|m| Pushed {
                    collection: m.collection.to_string(),
                    record_id: m.record_id.as_ref().map(|r| r.to_string()).unwrap_or_default(),
                    op: m.body.op(),
                    data: match &m.body {
                        sync_core::protocol::MutationBody::Upsert { data } => Some(Value::Object(data.clone())),
                        _ => None,
                    },
                })
                .collect(),
        );
        let response = self.inner.push(request).await?;
        if self.lose_push_answers.swap(0, Ordering::SeqCst) > 0 {
            return Err(Error::Unreachable { message: "answer lost after the server applied the push".into() });
        }
        Ok(response)
    }

    async fn pull(&self, request: &PullRequest) -> Result<PullResponse, Error> {
        let left = self.fail_pull_after.load(Ordering::SeqCst);
        if left == 0 {
            return Err(Error::Unreachable { message: "network cut during the pull".into() });
        }
        if left != usize::MAX {
            self.fail_pull_after.store(left - 1, Ordering::SeqCst);
        }
        self.inner.pull(request).await
    }

    async fn probe(&self) -> Result<(), Error> {
        self.inner.probe().await
    }

    fn set_credentials(&self, credentials: Option<Credentials>) {
        self.inner.set_credentials(credentials);
    }
}

/// An HTTP transport to `url` carrying `user`'s token (`<user>-token`).
pub fn http_as(url: &str, user: &str) -> HttpTransport {
    let transport = HttpTransport::new(url).unwrap();
    let account = sync_core::AccountId::new(user).unwrap();
    transport.set_credentials(Some(Credentials::new(account, format!("{user}-token")).unwrap()));
    transport
}

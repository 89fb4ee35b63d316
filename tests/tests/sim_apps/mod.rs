//! The apps the property tests and the soak program run: one per bundled pattern, each
//! a `SimApp` over the in-process reference server.
#![allow(dead_code)]

use std::sync::Arc;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sync_core::protocol::ErrorDetail;
use sync_core::{CollectionName, CollectionSpec, Conflict, ConflictResolver, EngineBuilder, LocalEntity, RecordId};
use sync_patterns::resolvers::ThreeWayMerge;
use sync_patterns::{ConflictDetection, LastWriteWins, OneToMany, ReadOnly, ReadOnlyOptimized};
use sync_server::config::token_sha256;
use sync_server::logic::User;
use sync_server::store::ActionHandler;
use sync_testkit::sim::{SimApp, Tracked};

/// Each entity keeps its id in `id`.
macro_rules! local_entity {
    ($name:ident, $collection:literal) => {
        impl LocalEntity for $name {
            const COLLECTION: &'static str = $collection;
            fn id(&self) -> &str {
                &self.id
            }
        }
    };
}

/// A note: a few short fields, so that histories often write the same values and
/// three-way merges have something to merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub id: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub n: u32,
}

local_entity!(Note, "notes");

/// A product of the read-only catalogue, written by the admin's device only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub price: u32,
}

local_entity!(Product, "products");

/// A job (the parent side of one-to-many).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub title: String,
}

local_entity!(Job, "jobs");

/// A task of a job (the child side: `job_id` points at a job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub job_id: String,
    pub done: bool,
}

local_entity!(Task, "tasks");

fn notes() -> Tracked {
    Tracked::of::<Note>(("[ab]{0,1}", "[xy]{0,1}", 0u32..3).prop_map(|(title, body, n)| Note {
        id: String::new(),
        title,
        body,
        n,
    }))
}

/// The server side of the `touch` action: accepts every call (the log counts them).
struct Touch;

impl ActionHandler for Touch {
    fn apply(&self, _: &User, _: &CollectionName, _: Option<&RecordId>, _: &Value) -> Result<(), ErrorDetail> {
        Ok(())
    }
}

fn users(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| {
            let role = if *name == "admin" { "admin" } else { "user" };
            format!("[[users]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nrole = \"{role}\"\n", token_sha256(name))
        })
        .collect()
}

/// Which resolver the user of [`ConflictApp`] applies.
#[derive(Clone)]
pub enum UserResolver {
    /// Three-way field merge; a field both sides changed stays for the user (then kept
    /// as the server has it when the history settles).
    ThreeWay,
    /// Keeps the local side.
    KeepLocal,
    /// Any resolver (such as a deliberately wrong one).
    Custom(Arc<dyn ConflictResolver>),
}

/// Read/write with conflict detection: every device of one technician edits notes;
/// conflicts are stored and the user settles them with `resolver`.
#[derive(Clone)]
pub struct ConflictApp {
    pub resolver: UserResolver,
}

impl SimApp for ConflictApp {
    fn server_config(&self) -> String {
        users(&["alice"]) + "[collections.notes]\naccess = \"owner\"\n"
    }
    fn actions(&self) -> Vec<(String, Arc<dyn ActionHandler>)> {
        vec![("touch".to_owned(), Arc::new(Touch))]
    }
    fn token(&self, _: usize) -> String {
        "alice".into()
    }
    fn register(&self, _: usize, builder: EngineBuilder) -> EngineBuilder {
        builder.collection(CollectionSpec::of::<Note>(ConflictDetection::new()))
    }
    fn tracked(&self) -> Vec<Tracked> {
        vec![notes()]
    }
    fn resolver(&self) -> Arc<dyn ConflictResolver> {
        match &self.resolver {
            UserResolver::ThreeWay => Arc::new(ThreeWayMerge::new()),
            UserResolver::KeepLocal => Arc::new(sync_patterns::resolvers::KeepLocal),
            UserResolver::Custom(resolver) => resolver.clone(),
        }
    }
}

/// Read/write with conflict detection, synced on demand: each device holds the notes
/// of the titles it subscribes to ("a", "b"), lets go of them and evicts its cache;
/// the three-way merge settles conflicts.
pub struct OnDemandApp;

impl SimApp for OnDemandApp {
    fn server_config(&self) -> String {
        users(&["alice"]) + "[collections.notes]\naccess = \"owner\"\nsubscription_indexes = [[\"title\"]]\n"
    }
    fn token(&self, _: usize) -> String {
        "alice".into()
    }
    fn register(&self, _: usize, builder: EngineBuilder) -> EngineBuilder {
        builder.collection(CollectionSpec::of::<Note>(ConflictDetection::new()).on_demand())
    }
    fn tracked(&self) -> Vec<Tracked> {
        vec![notes().on_demand("title", &["a", "b"])]
    }
    fn resolver(&self) -> Arc<dyn ConflictResolver> {
        Arc::new(ThreeWayMerge::new())
    }
}

/// Read/write, last write wins: no conflicts are ever reported. The same notes, users
/// and actions as [`ConflictApp`]; only the pattern differs.
pub struct LwwApp;

impl SimApp for LwwApp {
    fn server_config(&self) -> String {
        three_way().server_config()
    }
    fn actions(&self) -> Vec<(String, Arc<dyn ActionHandler>)> {
        three_way().actions()
    }
    fn token(&self, client: usize) -> String {
        three_way().token(client)
    }
    fn register(&self, _: usize, builder: EngineBuilder) -> EngineBuilder {
        builder.collection(CollectionSpec::of::<Note>(LastWriteWins))
    }
    fn tracked(&self) -> Vec<Tracked> {
        three_way().tracked()
    }
}

fn three_way() -> ConflictApp {
    ConflictApp { resolver: UserResolver::ThreeWay }
}

/// Read-only (replaced whole) or read-only optimized (incremental with tombstones):
/// client A is the admin's device, writing the catalogue (last write wins); the others
/// are technicians' devices that only read it (their writes are refused locally).
pub struct ReadOnlyApp {
    pub optimized: bool,
}

impl SimApp for ReadOnlyApp {
    fn server_config(&self) -> String {
        users(&["admin", "alice"]) + "[collections.products]\naccess = \"read_only\"\n"
    }
    fn token(&self, client: usize) -> String {
        if client == 0 { "admin".into() } else { "alice".into() }
    }
    fn register(&self, client: usize, builder: EngineBuilder) -> EngineBuilder {
        let spec = match (client, self.optimized) {
            (0, _) => CollectionSpec::of::<Product>(LastWriteWins),
            (_, true) => CollectionSpec::of::<Product>(ReadOnlyOptimized),
            (_, false) => CollectionSpec::of::<Product>(ReadOnly),
        };
        builder.collection(spec)
    }
    fn tracked(&self) -> Vec<Tracked> {
        vec![Tracked::of::<Product>(("[pq]", 1u32..4).prop_map(|(name, price)| Product {
            id: String::new(),
            name,
            price,
        }))]
    }
}

/// One-to-many: jobs and their tasks (conflict detection on both); a task's `job_id`
/// points at one of the jobs the history touches, so parents go first and deletes go
/// children first.
pub struct OneToManyApp;

impl SimApp for OneToManyApp {
    fn server_config(&self) -> String {
        users(&["alice"]) + "[collections.jobs]\naccess = \"owner\"\n[collections.tasks]\naccess = \"owner\"\n"
    }
    fn token(&self, _: usize) -> String {
        "alice".into()
    }
    fn register(&self, _: usize, builder: EngineBuilder) -> EngineBuilder {
        let tasks = OneToMany::new(ConflictDetection::new()).belongs_to("job_id", "jobs");
        let builder = builder.collection(CollectionSpec::of::<Job>(ConflictDetection::new()));
        match tasks {
            Ok(tasks) => builder.collection(CollectionSpec::of::<Task>(tasks)),
            // A bad field path is the test's own mistake; build() then names the
            // missing collection.
            Err(_) => builder,
        }
    }
    fn tracked(&self) -> Vec<Tracked> {
        vec![
            Tracked::of::<Job>("[ab]".prop_map(|title| Job { id: String::new(), title })),
            Tracked::of::<Task>((0..3u8, any::<bool>()).prop_map(|(job, done)| Task {
                id: String::new(),
                job_id: format!("r{job}"),
                done,
            })),
        ]
    }
    fn resolver(&self) -> Arc<dyn ConflictResolver> {
        Arc::new(ThreeWayMerge::new())
    }
}

/// A resolver that merges by taking the local side and forgetting its title: the kind
/// of bug the kit exists to catch.
pub fn title_dropping_resolver() -> Arc<dyn ConflictResolver> {
    Arc::new(|conflict: &Conflict| {
        let mut merged = conflict.local.clone().unwrap_or(Value::Null);
        if let Value::Object(map) = &mut merged {
            map.remove("title");
        }
        sync_core::Resolution::Merged(merged)
    })
}

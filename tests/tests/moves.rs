//! Records that move in and out of a user's scope under the server's sync rules, seen
//! from devices: engine + SqliteStore + HttpTransport + the reference server on
//! 127.0.0.1, on each backend. A job reassigned away disappears from the technician's
//! device (it still exists for others); one with the technician's unsent edit is not
//! silently dropped: the edit is parked as a rejection and the removal stored as a
//! conflict, both of which the app can list; a job reassigned to them appears.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{WorkOrder, quiet, wo};
use sync_core::{CollectionSpec, Engine, SyncEvent};
use sync_patterns::ConflictDetection;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{RunningServer, from_config, start};
use sync_sqlite::SqliteStore;

/// The title names the technician a work order is assigned to (a field rule); the
/// dispatchers' group reads and writes every one.
async fn servers(dir: &tempfile::TempDir) -> Vec<RunningServer> {
    let urls = common::server_databases(dir).await;
    let mut out = Vec::new();
    for database in urls {
        let mut text = format!("database = \"{database}\"\n");
        for (name, groups) in [("disp", "[\"dispatchers\"]"), ("tom", "[]"), ("ann", "[]")] {
            text.push_str(&format!(
                "[[users]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\ngroups = {groups}\n",
                token_sha256(&format!("{name}-token"))
            ));
        }
        text.push_str(
            "[collections.work_orders]\nread = [\"title = user\", \"user in dispatchers\"]\n\
             write = [\"user in dispatchers\", \"title = user\"]\n",
        );
        let config = ServerConfig::from_toml(&text).unwrap();
        let (state, store) = from_config(&config).await.unwrap();
        out.push(start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap());
    }
    out
}

async fn device(dir: &tempfile::TempDir, user: &str, url: &str) -> Engine {
    let store = SqliteStore::open(dir.path().join(format!("{user}.db"))).await.unwrap();
    Engine::builder()
        .store(Arc::new(store))
        .transport(Arc::new(common::http_as(url, user)))
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .options(quiet())
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reassigned_records_leave_one_device_and_reach_another_and_unsent_edits_surface() {
    let dir = tempfile::tempdir().unwrap();
    for server in servers(&dir).await {
        let dir = tempfile::tempdir_in(dir.path()).unwrap();
        let disp = device(&dir, "disp", &server.url()).await;
        let tom = device(&dir, "tom", &server.url()).await;
        let ann = device(&dir, "ann", &server.url()).await;
        let (disp_jobs, tom_jobs, ann_jobs) = (
            disp.collection::<WorkOrder>().unwrap(),
            tom.collection::<WorkOrder>().unwrap(),
            ann.collection::<WorkOrder>().unwrap(),
        );
        disp_jobs.insert(&wo("w1", "tom", 1)).await.unwrap();
        disp_jobs.insert(&wo("w2", "tom", 1)).await.unwrap();
        disp_jobs.insert(&wo("w3", "ann", 1)).await.unwrap();
        disp.sync_now().await.unwrap();
        tom.sync_now().await.unwrap();
        ann.sync_now().await.unwrap();
        assert_eq!(tom_jobs.list().await.unwrap().len(), 2);
        assert_eq!(ann_jobs.list().await.unwrap(), vec![wo("w3", "ann", 1)]);

        // Tom edits w2 without sending it; the dispatcher reassigns both to Ann.
        tom_jobs.update(&wo("w2", "tom", 7)).await.unwrap();
        disp_jobs.update(&wo("w1", "ann", 2)).await.unwrap();
        disp_jobs.update(&wo("w2", "ann", 2)).await.unwrap();
        disp.sync_now().await.unwrap();

        let mut events = tom.events();
        let report = tom.sync_now().await.unwrap();
        // w1 left Tom's device; w2's edit was refused and is kept, parked, for the app.
        assert_eq!(tom_jobs.get("w1").await.unwrap(), None, "a job reassigned away leaves the device");
        assert_eq!(report.rejected, 1, "{report:?}");
        let parked = tom.failed_mutations().await.unwrap();
        assert_eq!(parked.len(), 1, "{parked:?}");
        assert_eq!(parked[0].record_id.as_ref().map(|r| r.as_str()), Some("w2"));
        assert_eq!(parked[0].data.as_ref().unwrap()["n"], 7, "the unsent edit is kept");
        let rejected = std::iter::from_fn(|| events.try_recv().ok())
            .find_map(|e| match e {
                SyncEvent::MutationRejected { code, record_id, .. } => Some((code, record_id)),
                _ => None,
            })
            .expect("the app is told");
        // Until the app settles it, the device keeps its copy with the edit, beside a
        // conflict whose server side is the removal.
        assert_eq!(tom_jobs.get("w2").await.unwrap(), Some(wo("w2", "tom", 7)));
        let conflicts = tom.conflicts().await.unwrap();
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].record_id.as_str(), "w2");
        assert_eq!(rejected.0, "forbidden");
        assert_eq!(rejected.1.as_ref().map(|r| r.as_str()), Some("w2"));

        // Ann's device gains both, with the dispatcher's data, not Tom's edit.
        ann.sync_now().await.unwrap();
        let mut held = ann_jobs.list().await.unwrap();
        held.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(held, vec![wo("w1", "ann", 2), wo("w2", "ann", 2), wo("w3", "ann", 1)]);
        // The records still exist for the dispatcher.
        disp.sync_now().await.unwrap();
        assert_eq!(disp_jobs.list().await.unwrap().len(), 3);

        for engine in [disp, tom, ann] {
            engine.shutdown().await;
        }
        server.stop().await.unwrap();
    }
}

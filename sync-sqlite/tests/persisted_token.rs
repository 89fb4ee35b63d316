//! The session token kept in the store: only in an encrypted one, so that an app
//! restarted offline syncs when the network returns without a new sign-in; never in
//! plain text; forgotten on sign-out. The engine against the reference server over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sync_core::{AccountId, CollectionSpec, Credentials, Engine, EngineBuilder, EngineOptions, Error, LocalEntity};
use sync_patterns::ConflictDetection;
use sync_sqlite::SqliteStore;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    id: String,
    text: String,
}

impl LocalEntity for Note {
    const COLLECTION: &'static str = "notes";
    fn id(&self) -> &str {
        &self.id
    }
}

/// The token, distinctive enough to search the files for.
const TOKEN: &str = "alice-session-token-3b7e11d0";

fn alice() -> Credentials {
    Credentials::new(AccountId::new("alice").unwrap(), TOKEN).unwrap()
}

fn builder(url: &str, store: SqliteStore, online: bool) -> EngineBuilder {
    let options = EngineOptions {
        start_online: online,
        sync_on_start: false,
        debounce: std::time::Duration::from_secs(3600),
        ..EngineOptions::default()
    };
    Engine::builder()
        .store(Arc::new(store))
        .transport(Arc::new(sync_http::HttpTransport::new(url).unwrap()))
        .collection(CollectionSpec::of::<Note>(ConflictDetection::new()))
        .options(options)
}

#[tokio::test]
async fn a_plain_store_does_not_keep_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("plain.db")).await.unwrap();
    let built = builder("http://127.0.0.1:9", store, false).credentials(alice()).persist_token(true).build().await;
    assert!(matches!(built, Err(Error::Config { .. })), "{:?}", built.err());
    if !cfg!(feature = "encryption") {
        eprintln!(
            "NOTE: the persisted-token tests on an encrypted store need SQLCipher and did not run here; \
             run `cargo test -p sync-sqlite --features encryption` (CI does)"
        );
    }
}

#[cfg(feature = "encryption")]
mod encrypted {
    use super::*;
    use sync_server::config::{ServerConfig, token_sha256};
    use sync_server::server::{RunningServer, from_config, start};
    use sync_sqlite::{EncryptionKey, SqliteStoreOptions};

    async fn server(dir: &tempfile::TempDir) -> RunningServer {
        let text = format!(
            "database = \"sqlite://{}\"\n[[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n\
             [collections.notes]\naccess = \"owner\"\n",
            dir.path().join("server.db").display(),
            token_sha256(TOKEN)
        );
        let config = ServerConfig::from_toml(&text).unwrap();
        let (state, store) = from_config(&config).await.unwrap();
        start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap()
    }

    fn keyed() -> SqliteStoreOptions {
        SqliteStoreOptions { encryption: Some(EncryptionKey::raw(&[0x42; 32]).unwrap()), ..Default::default() }
    }

    fn files_hold(path: &std::path::Path, needle: &str) -> bool {
        ["", "-wal", "-shm"].iter().any(|s| {
            std::fs::read(format!("{}{s}", path.display()))
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
    }

    #[tokio::test]
    async fn an_app_restarted_offline_syncs_with_the_kept_token_when_the_network_returns() {
        let dir = tempfile::tempdir().unwrap();
        let server = server(&dir).await;
        let path = dir.path().join("app.db");

        // Day one: signed in, then the network drops.
        let store = SqliteStore::open_with(&path, keyed()).await.unwrap();
        let engine =
            builder(&server.url(), store, false).credentials(alice()).persist_token(true).build().await.unwrap();
        let notes = engine.collection::<Note>().unwrap();
        notes.insert(&Note { id: "n1".into(), text: "before the restart".into() }).await.unwrap();
        engine.shutdown().await;
        assert!(!files_hold(&path, TOKEN), "the token reached the disk in plain text");

        // The app restarts offline: no credentials from the app, no sign-in.
        let store = SqliteStore::open_with(&path, keyed()).await.unwrap();
        let engine = builder(&server.url(), store, false).persist_token(true).build().await.unwrap();
        assert_eq!(engine.account(), Some(AccountId::new("alice").unwrap()));
        let notes = engine.collection::<Note>().unwrap();
        notes.insert(&Note { id: "n2".into(), text: "after the restart".into() }).await.unwrap();
        engine.set_online(true);
        engine.sync_now().await.unwrap();
        let mut status = engine.status();
        status.wait_for(|s| s.pending == 0).await.unwrap();

        // Sign-out forgets it: the next start has no token.
        engine.sign_out(sync_core::SignOut::Keep).await.unwrap();
        let store = SqliteStore::open_with(&path, keyed()).await.unwrap();
        let engine = builder(&server.url(), store, true).persist_token(true).build().await.unwrap();
        let refused = engine.sync_now().await;
        assert!(matches!(refused, Err(Error::Unauthorized { .. })), "{refused:?}");
        engine.shutdown().await;
        server.stop().await.unwrap();

        // What reached the server went under alice's token: a fresh device of hers sees both.
        let server = self::server(&dir).await;
        let fresh = SqliteStore::in_memory().await.unwrap();
        let reader = builder(&server.url(), fresh, true).credentials(alice()).build().await.unwrap();
        reader.sync_now().await.unwrap();
        let mut ids: Vec<_> =
            reader.collection::<Note>().unwrap().list().await.unwrap().into_iter().map(|n| n.id).collect();
        ids.sort();
        assert_eq!(ids, ["n1", "n2"]);
        reader.shutdown().await;
        server.stop().await.unwrap();
    }
}

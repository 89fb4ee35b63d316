//! A device's cycles, pushes and pulls are tracing spans with their counts, durations
//! and outcomes, and each request's id is in the device's span and the server's: one
//! id finds both sides of a request. A real server over HTTP, a real SQLite store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use common::{WorkOrder, credentials_of, quiet, wo};
use sync_core::{CollectionSpec, Engine};
use sync_http::HttpTransport;
use sync_patterns::ConflictDetection;
use sync_server::config::{ServerConfig, token_sha256};
use sync_server::server::{from_config, start};
use sync_sqlite::SqliteStore;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, filter::LevelFilter};

/// A closed span: its name and its fields as text.
#[derive(Debug, Clone)]
struct Closed {
    name: &'static str,
    fields: BTreeMap<String, String>,
}

impl Closed {
    fn get(&self, field: &str) -> &str {
        self.fields.get(field).map_or("", String::as_str)
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// Records every span as it closes, with the fields it was given and recorded later.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Closed>>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            let fields = span.extensions_mut().remove::<Fields>().unwrap_or_default();
            self.0.lock().unwrap().push(Closed { name: span.name(), fields: fields.0 });
        }
    }
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone().with_filter(LevelFilter::DEBUG));
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber in this test binary");
        capture
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_names_the_devices_span_and_the_servers() {
    let capture = capture();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "database = \"sqlite://{}\"\n[[users]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n[collections.work_orders]\naccess = \"owner\"\n",
        dir.path().join("server.db").display(),
        token_sha256("alice-token")
    );
    let config = ServerConfig::from_toml(&text).unwrap();
    let (state, store) = from_config(&config).await.unwrap();
    let server = start("127.0.0.1:0", state, store, config.tombstone_retention).await.unwrap();

    let engine = Engine::builder()
        .store(Arc::new(SqliteStore::open(&dir.path().join("device.db")).await.unwrap()))
        .credentials(credentials_of("alice"))
        .transport(Arc::new(HttpTransport::new(&server.url()).unwrap()))
        .collection(CollectionSpec::of::<WorkOrder>(ConflictDetection::new()))
        .options(quiet())
        .build()
        .await
        .unwrap();
    let orders = engine.collection::<WorkOrder>().unwrap();
    for i in 0..3 {
        orders.insert(&wo(&format!("o{i}"), "inspect", i)).await.unwrap();
    }
    engine.sync_now().await.unwrap();
    engine.shutdown().await;
    server.stop().await.unwrap();

    let spans = capture.0.lock().unwrap().clone();
    let cycle = spans.iter().find(|s| s.name == "sync_cycle" && s.get("pushed") == "3").expect("no cycle span");
    assert_eq!((cycle.get("outcome"), cycle.get("conflicts"), cycle.get("rejected")), ("ok", "0", "0"), "{cycle:?}");
    assert!(cycle.get("duration_ms").parse::<f64>().is_ok(), "{cycle:?}");

    let push = spans.iter().find(|s| s.name == "push" && s.get("mutations") == "3").expect("no push span");
    assert_eq!((push.get("outcome"), push.get("applied"), push.get("rejected")), ("ok", "3", "0"), "{push:?}");
    let server_side = |id: &str, path: &str| {
        spans.iter().any(|s| s.name == "request" && s.get("request_id") == id && s.get("path") == path)
    };
    let push_id = push.get("request_id");
    assert!(uuid::Uuid::parse_str(push_id).is_ok(), "the push span has no request id: {push:?}");
    assert!(server_side(push_id, "/v1/push"), "the server logged no request {push_id}");

    let pull = spans.iter().find(|s| s.name == "pull" && s.get("outcome") == "ok").expect("no pull span");
    assert_eq!(pull.get("has_more"), "false", "{pull:?}");
    assert!(pull.get("records").parse::<u64>().is_ok(), "{pull:?}");
    assert!(server_side(pull.get("request_id"), "/v1/pull"), "the server logged no request for {pull:?}");
    // Two requests, two ids.
    assert_ne!(push_id, pull.get("request_id"));
}
